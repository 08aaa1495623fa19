"""Calibrate from the user's own measured run: any model's Kineto trace against our ops of the same step.

Given the model and layout the trace ran (the scenario options `estimate` takes), `modelled_step` lists what
one training step runs on a mean rank: every op of every pipeline stage times micro-batches / pp (m =
batch / (dp x micro-batch size), `simulator.run.microbatches_for`), the data-parallel gradient reduction and
parameter gather of the step (`StepSimulator._dp_collectives` over all stages, / pp) and the pipeline sends
(2 (pp - 1) / pp transfers per micro-batch). Assumption: with pp > 1 the traced ranks cover the stages evenly
(trace one rank per stage, or all), since their mean is compared with the mean rank.

Our op -> kernel class (`validation.kineto`): GEMMs by dtype -> gemm_fp8 / gemm_bf16; attention core forward
-> attn_fwd, backward -> attn_bwd; element-wise and embedding ops -> elementwise; collectives by kind ->
nccl_all_reduce, nccl_reduce_scatter, nccl_all_gather, nccl_send_recv (p2p, all-to-all), deepep_dispatch /
deepep_combine (EP dispatch / combine).

Derivation (`derive_profile`), per class with enough measured time (>= MIN_SHARE of the step's kernel time)
and work in our ops; the others keep the base profile's figures:
- gemm_<dtype>: time ratio r = measured / the base profile's compute term (FLOPs / (peak x efficiency x
  sm_fraction)) of our GEMMs of that dtype; every point of the base's gemm and grouped_gemm tables of that
  dtype (and of its weight-gradient tables, hwmodels/wgrad.py) is divided by r, so the shape dependence of the
  base curves is kept and the compute term of our ops equals the measured time (a point would pass the peak is
  capped at it, and recorded);
- attn_fwd / attn_bwd: efficiency = our attention FLOPs / (measured x BF16 peak x sm_fraction);
- elementwise: ratio r = measured / our element-wise memory term (bytes / (HBM bandwidth x efficiency));
  the general and every per-class bandwidth efficiency are divided by r (capped at 1, and recorded);
- nccl_* / deepep_*: measured / modelled wire time, recorded in "comm" only: the network model prices
  collectives from the fabric, the profile has no collective efficiency (kernels also wait for peers).
- launch: the traced stack's kernels per op of ours by kind (`validation.trace_launch`; every class but the
  collectives' and those with no op of ours, such as memcpy and other, which are reported as unmatched).
Residuals (`residuals`): measured - modelled per class, ms and % of modelled, modelled per op as its kernels
alone (`ComputeModel.duration`, no launch gap: the full roofline, max of the compute and memory terms).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from gpuhours.hwmodels.calibration import CalibrationProfile, gpu_key, load_profile
from gpuhours.hwmodels.compute import elementwise_class
from gpuhours.validation.kineto import family
from gpuhours.validation.kineto_figures import KinetoMeasure, measure_files
from gpuhours.validation.trace_launch import kernels_per_op, launch_section
from gpuhours.workloads.ops import Op

BASE_PROFILE = "default-h800"
# Assumption: a class below 1% of the step's kernel time is too small to fit (launch gaps and the tails of
# small kernels dominate it); it keeps the base profile's figure.
MIN_SHARE = 0.01
FITTED = ("gemm_fp8", "gemm_bf16", "attn_fwd", "attn_bwd", "elementwise")
_COLLECTIVE_CLASS = {"all_reduce": "nccl_all_reduce", "reduce_scatter": "nccl_reduce_scatter",
                     "all_gather": "nccl_all_gather", "p2p": "nccl_send_recv", "all_to_all": "nccl_send_recv",
                     "ep_dispatch": "deepep_dispatch", "ep_combine": "deepep_combine"}


def op_class(op: Op) -> str:
    """The kernel class (validation.kineto.KERNEL_CLASSES) our op is measured in."""
    if op.kind in ("gemm", "grouped_gemm"):
        return f"gemm_{op.dtype}"
    if op.kind == "attention":
        return "attn_fwd" if op.phase == "F" else "attn_bwd"
    if op.kind in ("elementwise", "embedding"):
        return "elementwise"
    if op.kind == "collective":
        return _COLLECTIVE_CLASS.get(op.collective, "nccl_other")
    raise ValueError(f"op {op.name!r}: kind {op.kind!r} has no kernel class")


# ------------------------------------------------------------------------------------------- the scenario
def scenario_for_trace(measured: KinetoMeasure, model: str, plan: str | None = None, precision: str | None = None,
                       **overrides):
    """The scenario of the traced run: the plan (default: the built-in one) with `model` and the overrides
    (`simulator.scenario.load_scenario`'s keywords). Unset, the GPU is the trace's, the GPU count its world
    size and the precision fp8 when it ran FP8 GEMMs, else bf16. A given GPU or GPU count that contradicts the
    trace is refused."""
    from gpuhours.simulator.scenario import DEFAULT_PLAN, load_scenario

    if not model or not str(model).strip():
        raise ValueError("model: give the traced model (a preset name or a .toml / config.json file)")
    traced_gpu = gpu_key(measured.device_name)
    if overrides.get("gpu") is None:
        overrides["gpu"] = traced_gpu
    elif traced_gpu is not None and gpu_key(overrides["gpu"]) != traced_gpu:
        raise ValueError(f"gpu: the trace ran on {measured.device_name} ({traced_gpu}), not {overrides['gpu']}")
    if overrides.get("gpus") is None and measured.world_size:
        overrides["gpus"] = int(measured.world_size)
    elif measured.world_size and overrides["gpus"] != measured.world_size:
        raise ValueError(f"gpus: the trace's world size is {measured.world_size}, the layout has {overrides['gpus']}")
    if precision is None:
        precision = "fp8" if measured.classes.get("gemm_fp8", 0.0) > 0 else "bf16"
    if precision not in ("fp8", "bf16"):
        raise ValueError(f"precision must be fp8 or bf16, got {precision!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return load_scenario(plan or DEFAULT_PLAN, model=model, fp8=precision == "fp8", **overrides)


def layout_label(scenario) -> str:
    p = scenario.parallel
    parts = [f"{p.num_gpus} {scenario.cluster.gpu.name}", f"TP{p.tp}", f"PP{p.pp}", f"DP{p.dp}"]
    parts += [f"CP{p.cp}"] if p.cp > 1 else []
    parts += [f"EP{p.ep}"] if p.ep > 1 else []
    parts += [p.schedule, f"micro-batch {p.micro_batch_size}", f"{scenario.plan.seq_len} tokens",
              f"batch {scenario.plan.batch.end}", "fp8" if scenario.opts.fp8 else "bf16",
              f"recompute {scenario.opts.recompute}", f"ZeRO-{p.zero_stage}"]
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------- our step
@dataclass(frozen=True)
class ModelledStep:
    microbatches: int
    ops: tuple[tuple[Op, float], ...]   # (op, times it runs per step on the mean rank)
    comm: dict[str, float]              # DP and pipeline communication per step on the mean rank (s), by class
    simulator: object                   # the StepSimulator (its coster prices the ops)

    @property
    def coster(self):
        return self.simulator.coster


def modelled_step(scenario, profile: CalibrationProfile | None = None) -> ModelledStep:
    """What one step runs on the mean rank under `profile` (default: the scenario's); see the module docstring."""
    from gpuhours.simulator.run import microbatches_for

    if profile is not None:
        scenario = replace(scenario, profile=profile)
    ramp = scenario.plan.batch
    if ramp.start != ramp.end:
        raise ValueError(f"batch: give the traced step's global batch in sequences (the plan's batch ramps from "
                         f"{ramp.start} to {ramp.end})")
    sim = scenario.simulator()
    p = scenario.parallel
    m, _ = microbatches_for(ramp.end, p)
    coster = sim.coster
    weight = m / p.pp
    ops = [(op, weight) for units in coster.stages for unit in units
           for seg in unit.forward + unit.backward + unit.weight for op in seg.ops]
    reduce, gather, _ = sim._dp_collectives(set(range(len(sim.stage_layers))))
    comm: dict[str, float] = {}
    if p.zero_stage in (1, 2, 3):
        comm["nccl_reduce_scatter"], comm["nccl_all_gather"] = reduce / p.pp, gather / p.pp
    else:
        comm["nccl_all_reduce"] = reduce / p.pp
    if p.pp > 1:
        send = coster.transfer(0, 1, "F", 0, 0)
        comm["nccl_send_recv"] = 2 * m * send * (p.pp - 1) / p.pp
    return ModelledStep(m, tuple(ops), comm, sim)


def class_times(step: ModelledStep) -> dict[str, float]:
    """Modelled seconds per kernel class per step on the mean rank (each op's full roofline time)."""
    out: dict[str, float] = {}
    for op, n in step.ops:
        c = op_class(op)
        # the kernel alone: a trace's kernel durations hold no launch gap (hwmodels.launch)
        out[c] = out.get(c, 0.0) + n * step.coster.compute.duration(op, sm_fraction=step.coster.sm_fraction)
    for c, t in step.comm.items():
        out[c] = out.get(c, 0.0) + t
    return out


def _fit_terms(step: ModelledStep) -> dict[str, dict[str, float]]:
    """Per fitted class: the term the fit scales (compute term of GEMMs and attention, memory term of
    element-wise ops, s per step), FLOPs and bytes."""
    cm, sm = step.coster.compute, step.coster.sm_fraction
    gpu, prof = cm.gpu, cm.profile
    out = {c: {"time": 0.0, "flops": 0.0, "bytes": 0.0} for c in FITTED}
    for op, n in step.ops:
        if op.kind == "collective":
            continue
        c = op_class(op)
        if op.kind in ("gemm", "grouped_gemm", "attention"):
            t = op.flops / (gpu.peak_flops(op.dtype) * cm.efficiency(op) * sm)
        else:
            t = op.bytes / (gpu.hbm_bw * prof.elementwise_efficiency(elementwise_class(op)))
        a = out[c]
        a["time"] += n * t
        a["flops"] += n * op.flops
        a["bytes"] += n * op.bytes
    return out


# ------------------------------------------------------------------------------------------- derivation
def derive_profile(base: CalibrationProfile, step: ModelledStep, measured: KinetoMeasure) -> tuple[dict, dict]:
    """(profile dict without provenance, derivation record); see the module docstring."""
    gpu, sm = step.coster.compute.gpu, step.coster.sm_fraction
    terms = _fit_terms(step)
    got = measured.classes
    floor = MIN_SHARE * measured.kernel_time
    d = base.to_dict()
    d.pop("notes", None), d.pop("comm", None), d.pop("trace", None)
    derived, kept, capped, ratios = [], [], [], {}
    for c in FITTED:
        t, w = got.get(c, 0.0), terms[c]
        if t < floor or t <= 0 or w["time"] <= 0:
            kept.append(c)
            continue
        derived.append(c)
        if c.startswith("gemm_"):
            dtype = c.split("_")[1]
            r = ratios[c] = t / w["time"]
            ref = base.reference_peak(dtype) or gpu.peak_flops(dtype) * base.sm_count / gpu.sms
            tables = [(s, d[s]) for s in ("gemm", "grouped_gemm")]  # and the weight-gradient points, if any
            tables += [(f"wgrad.{s}", t) for s, t in d.get("wgrad", {}).items() if s != "provenance"]
            for section, table in tables:
                for q in table.get(dtype, []):
                    new = q["tflops"] / r
                    if new * 1e12 > ref:
                        capped.append(f"{section}.{dtype} ({q['m']}, {q['n']}, {q['k']})")
                        new = ref * 1e-12
                    q["provenance"] = (f"{base.name!r} point ({q['tflops']} TFLOP/s) / {r:.4f}: measured over "
                                       f"modelled {c} time of the traced step")
                    q["tflops"] = round(new, 6)
        elif c.startswith("attn_"):
            eff = w["flops"] / (t * gpu.peak_flops("bf16") * sm)
            if not 0 < eff <= 1:
                raise ValueError(f"trace: {c} kernels ran {t * 1e3:.3f} ms per step for our {w['flops']:.4g} "
                                 f"attention FLOP: efficiency {eff:.3f} is outside (0, 1]; check --model, "
                                 f"--seq-len and the layout")
            key = "forward_efficiency" if c == "attn_fwd" else "backward_efficiency"
            ratios[c] = t / w["time"]
            d["attention"][key] = eff
        else:
            r = ratios[c] = t / w["time"]
            e = d["elementwise"]
            e["bandwidth_efficiency"] = min(1.0, e["bandwidth_efficiency"] / r)
            if e["bandwidth_efficiency"] == 1.0:
                capped.append("elementwise.bandwidth_efficiency")
            for k, v in (e.get("classes") or {}).items():
                e["classes"][k] = min(1.0, v / r)
    modelled = class_times(step)
    comm = {c: {"measured_ms": got.get(c, 0.0) * 1e3, "modelled_ms": modelled[c] * 1e3,
                "ratio": got[c] / modelled[c] if got.get(c) and modelled[c] > 0 else None}
            for c in sorted(set(modelled) | set(got)) if family(c) in ("nccl", "deepep")}
    record = {"sm_fraction": sm, "microbatches": step.microbatches, "min_share": MIN_SHARE,
              "derived": derived, "kept_from_base": kept, "time_ratio": ratios, "capped": capped,
              "fit_terms_ms": {c: w["time"] * 1e3 for c, w in terms.items()},
              "work": {c: {"flops": w["flops"], "bytes": w["bytes"]} for c, w in terms.items()}}
    d["comm"] = {"collectives": comm, "provenance": "kernel time measured / wire time modelled per class; "
                                                    "recorded, not used by the network model"}
    compute_kernels = {c: n for c, n in measured.kernels.items() if family(c) not in ("nccl", "deepep")}
    per_op, record["launch"] = kernels_per_op(compute_kernels, [(op, n) for op, n in step.ops
                                                                if op.kind != "collective"], op_class)
    if per_op:  # the base's measured gap and host figures stay; the traced stack's kernel counts join them
        section = launch_section(per_op, record["launch"], "kineto trace, every stream", measured.queued_gaps())
        if d.get("launch"):
            section["provenance"] = d["launch"]["provenance"] + "; kernels_per_op: " + section["provenance"]
        d["launch"] = (d.get("launch") or {}) | section
    return d, record


def residuals(measured: KinetoMeasure, modelled: dict[str, float]) -> dict[str, dict]:
    """Per class: measured, modelled, measured - modelled (ms) and that as % of modelled (None when 0)."""
    got = measured.classes
    out = {}
    for c in list(got) + [c for c in modelled if c not in got]:
        t, mo = got.get(c, 0.0), modelled.get(c, 0.0)
        out[c] = {"measured_ms": t * 1e3, "modelled_ms": mo * 1e3, "residual_ms": (t - mo) * 1e3,
                  "residual_pct": 100 * (t - mo) / mo if mo > 0 else None}
    return out


def calibrate(trace_paths: Sequence[str | Path], model: str, base: str | CalibrationProfile = BASE_PROFILE,
              name: str | None = None, date: str | None = None, plan: str | None = None,
              precision: str | None = None, **overrides) -> tuple[CalibrationProfile, dict]:
    """(the derived CalibrationProfile, report {measured, residuals before and after, derivation})."""
    measured = measure_files(trace_paths)
    base = load_profile(base) if isinstance(base, (str, Path)) else base
    scenario = scenario_for_trace(measured, model, plan, precision, **overrides)
    step = modelled_step(scenario, base)
    before = class_times(step)
    d, record = derive_profile(base, step, measured)
    date = date or datetime.date.today().isoformat()
    layout = layout_label(scenario)
    gkey = scenario.cluster.gpu.key
    d["name"] = name or f"kineto-{scenario.model.name}-{gkey}"
    d["source"] = "trace"
    on = {"model": scenario.model.name, "gpu": gkey, "precision": "fp8" if scenario.opts.fp8 else "bf16",
          "attention": scenario.model.attention.kind, "moe": scenario.model.moe is not None}
    if scenario.opts.fp8:
        on["fp8_recipe"] = scenario.opts.fp8_recipe
    d["provenance"] = {
        "device": measured.device_name or scenario.cluster.gpu.name,
        "sm_count": base.sm_count, "date": date,
        "software": {"profiler": "PyTorch profiler (Kineto) Chrome trace", "distributed_backend": measured.backend,
                     "world_size": measured.world_size, "ranks": len(measured.ranks), "base_profile": base.name,
                     "trace_sm_count": measured.sm_count},
        "method": (f"kineto trace of {scenario.model.name} {layout}: per-class kernel time per step (mean over "
                   f"{len(measured.ranks)} rank(s)) vs our ops of the same step under {base.name!r} "
                   f"(gpuhours.validation.kineto_calibrate); derived {', '.join(record['derived']) or 'nothing'}; "
                   f"kept from the base: {', '.join(record['kept_from_base']) or 'nothing'}"),
        "references": [f"trace file(s) {', '.join(measured.files)}, device {measured.device_name}, imported {date}",
                       f"base profile {base.name!r} (source {base.source}, {base.provenance.date})"]
                      + list(base.provenance.references),
        "calibrated_on": on,
        "basis": f"kernel times of the user's own profiler trace of {scenario.model.name} on "
                 f"{scenario.cluster.gpu.name}, over the base profile {base.name!r}",
    }
    d["provenance"]["software"] = {k: v for k, v in d["provenance"]["software"].items() if v is not None}
    if base.provenance.peak_tflops:
        d["provenance"]["peak_tflops"] = dict(base.provenance.peak_tflops)
    profile = CalibrationProfile.from_dict(d | {"trace": {"measured": measured.to_dict(), "derivation": record}})
    after = class_times(modelled_step(scenario, profile))
    report = {"profile": profile.name, "layout": layout, "model": scenario.model.name,
              "kernels_per_op": dict(profile.launch.kernels_per_op) if profile.launch else {},
              "measured": measured.to_dict(), "derivation": record,
              "residuals_base": residuals(measured, before), "residuals_derived": residuals(measured, after)}
    notes = [f"classes derived from the trace: {', '.join(record['derived']) or 'none'}; kept from "
             f"{base.name!r}: {', '.join(record['kept_from_base']) or 'none'}",
             "residuals per class (measured - modelled, ms) under the base profile: "
             + ", ".join(f"{c} {r['residual_ms']:+.3f}" for c, r in report["residuals_base"].items())]
    profile = CalibrationProfile.from_dict(profile.to_dict() | {"notes": notes})
    return profile, report


def compare_step(trace_paths: Sequence[str | Path], model: str, plan: str | None = None,
                 precision: str | None = None, **overrides) -> dict:
    """The simulated step beside the measured one: step time and per-class busy time (ms), under the
    scenario's calibration profile (`calibration=`)."""
    measured = measure_files(trace_paths)
    scenario = scenario_for_trace(measured, model, plan, precision, **overrides)
    step = modelled_step(scenario)
    sim = step.simulator.step(step.microbatches)
    modelled = class_times(step)
    err = (sim.step_time - measured.step_time) / measured.step_time if measured.step_time > 0 else math.nan
    return {"model": scenario.model.name, "layout": layout_label(scenario), "profile": scenario.profile.name,
            "microbatches": step.microbatches, "measured_step_ms": measured.step_time * 1e3,
            "simulated_step_ms": sim.step_time * 1e3, "step_error_pct": 100 * err,
            "classes": residuals(measured, modelled), "measured": measured.to_dict()}
