"""Figures set beside an estimate: the hardware-only run of a calibration case, the plan's published figure,
the same run under every other schedule, and which phases of a phased plan are calibration cases."""

from __future__ import annotations

from dataclasses import replace

from gpuhours.simulator.phases import load_phased_plan, phase_scenario
from gpuhours.simulator.scenario import (DEFAULT_PLAN, estimate, hardware_only_scenario, is_calibration_case,
                                         load_scenario, plan_reference, scenario_warnings)
from gpuhours.workloads.parallel import SCHEDULES


def hardware_only(scenario, result) -> dict | None:
    """A calibration case's run priced again with the hardware-only sibling profile (about a second), on the
    same pipeline split as ``result``."""
    sibling = hardware_only_scenario(scenario, stage_layers=result.steady.step.stage_layers)
    if sibling is None:
        return None
    est = estimate(sibling)
    return {"profile": scenario.profile.hardware_only_sibling(), "basis": sibling.profile.provenance.basis or None,
            "gpu_hours": est.gpu_hours, "step_time_s": est.steady.step.step_time,
            "wall_clock_days": est.wall_clock_days, "cost_usd": est.cost_usd}


def published(plan: str | None, scenario) -> dict | None:
    """The plan's published GPU-hours, when the scenario runs the plan's own workload (model, GPU, tokens,
    sequence length, batch and precision as planned: the layout, network and calibration may differ)."""
    ref = plan_reference(plan or DEFAULT_PLAN)
    if "pretraining_gpu_hours" not in ref:
        return None
    planned = load_scenario(plan or DEFAULT_PLAN)
    same = (scenario.model == planned.model and scenario.cluster.gpu.key == planned.cluster.gpu.key
            and scenario.plan.tokens == planned.plan.tokens and scenario.plan.seq_len == planned.plan.seq_len
            and scenario.plan.batch == planned.plan.batch and scenario.opts.fp8 == planned.opts.fp8)
    if not same:
        return None
    return {"gpu_hours": float(ref["pretraining_gpu_hours"]), "source": ref.get("source")}


def phased_calibration(plan: str) -> dict:
    """Per phase of a phased plan: whether it is a calibration case, and its warnings (scenario_warnings)."""

    phased = load_phased_plan(plan)
    cases, profiles, warnings = [], [], {}
    for phase in phased.phases:
        scenario = phase_scenario(phased.base, phase)
        if is_calibration_case(scenario):
            cases.append(phase.name)
            if scenario.profile.name not in profiles:
                profiles.append(scenario.profile.name)
        if found := scenario_warnings(scenario):
            warnings[phase.name] = found
    return {"calibration_case": bool(cases), "calibration_case_phases": cases,
            "calibration_case_profiles": profiles, "warnings": warnings}


def compare_schedules(scenario) -> dict:

    out = {}
    for name in SCHEDULES:
        vpp = 2 if name == "interleaved-1f1b" else 1
        try:
            parallel = replace(scenario.parallel, schedule=name, vpp=vpp, stage_layers=None, pipeline_layout=None)
            parallel.check_model(scenario.model)
            est = estimate(replace(scenario, parallel=parallel))
        except ValueError as exc:
            out[name] = {"error": str(exc)}
            continue
        steady = est.steady.step
        out[name] = {"gpu_hours": est.gpu_hours, "wall_clock_days": est.wall_clock_days, "step_time_s":
                     steady.step_time, "bubble_share": steady.bubble_share, "mfu_bf16": steady.mfu("bf16")}
    return out
