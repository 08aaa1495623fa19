"""gpuhours command line: what-if estimates, schedules, steps, collectives, routing and calibration.

This module holds the entry point (`main`, `app`) and `estimate` with its phased-plan and goodput paths; the
other commands live in cli_layouts.py (plan, presets, schedule, step, sweep), cli_network.py and
cli_validation.py, and share cli_support.py and cli_scenario.py (scenario options -> Scenario).

Every command prints a human table by default and one JSON object with --json. Bad input ends with one line
on stderr naming the field and what is allowed, and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from gpuhours.cli_scenario import _scenario, _wants_planned_layout
from gpuhours.cli_support import (SCENARIO_OPTIONS, UsageError, _count_progress, _echo_json, _output_path,
                                  _write_atomically, app, user_errors)
from gpuhours.cli_support import _finite  # noqa: F401 (re-exported: what --json prints passes through it)


@app.command()
def estimate(
    model: Optional[str] = SCENARIO_OPTIONS["model"],
    gpu: Optional[str] = SCENARIO_OPTIONS["gpu"],
    gpus: Optional[int] = SCENARIO_OPTIONS["gpus"],
    pp: Optional[int] = SCENARIO_OPTIONS["pp"],
    ep: Optional[int] = SCENARIO_OPTIONS["ep"],
    tp: Optional[int] = SCENARIO_OPTIONS["tp"],
    cp: Optional[int] = SCENARIO_OPTIONS["cp"],
    cp_comm: Optional[str] = SCENARIO_OPTIONS["cp_comm"],
    vpp: Optional[int] = SCENARIO_OPTIONS["vpp"],
    attention_kernel: Optional[str] = SCENARIO_OPTIONS["attention_kernel"],
    tp_comm_overlap: Optional[bool] = SCENARIO_OPTIONS["tp_comm_overlap"],
    tp_comm_overlap_impl: Optional[str] = SCENARIO_OPTIONS["tp_comm_overlap_impl"],
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    tokens: Optional[str] = SCENARIO_OPTIONS["tokens"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    price: Optional[float] = SCENARIO_OPTIONS["price"],
    calibration: Optional[str] = SCENARIO_OPTIONS["calibration"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    fp8_recipe: Optional[str] = SCENARIO_OPTIONS["fp8_recipe"],
    host_dispatch: Optional[str] = SCENARIO_OPTIONS["host_dispatch"],
    elementwise_kernels: Optional[str] = SCENARIO_OPTIONS["elementwise_kernels"],
    fp8_gemm_kernels: Optional[str] = SCENARIO_OPTIONS["fp8_gemm_kernels"],
    comm_sms: Optional[int] = SCENARIO_OPTIONS["comm_sms"],
    batch: Optional[int] = SCENARIO_OPTIONS["batch"],
    network: Optional[str] = SCENARIO_OPTIONS["network"],
    cluster: Optional[str] = SCENARIO_OPTIONS["cluster"],
    nic_gbps: Optional[float] = SCENARIO_OPTIONS["nic_gbps"],
    oversubscription: Optional[float] = SCENARIO_OPTIONS["oversubscription"],
    order: Optional[str] = SCENARIO_OPTIONS["order"],
    tiers: Optional[int] = SCENARIO_OPTIONS["tiers"],
    link_sharing: Optional[str] = SCENARIO_OPTIONS["link_sharing"],
    capacity_factor: Optional[float] = SCENARIO_OPTIONS["capacity_factor"],
    routing: Optional[str] = SCENARIO_OPTIONS["routing"],
    etp: Optional[int] = SCENARIO_OPTIONS["etp"],
    moe_dispatch: Optional[str] = SCENARIO_OPTIONS["moe_dispatch"],
    max_nodes_per_token: Optional[int] = SCENARIO_OPTIONS["max_nodes_per_token"],
    redundant_experts: int = SCENARIO_OPTIONS["redundant_experts"],
    stage_layers: Optional[str] = SCENARIO_OPTIONS["stage_layers"],
    pipeline_layout: Optional[str] = SCENARIO_OPTIONS["pipeline_layout"],
    recompute: Optional[str] = SCENARIO_OPTIONS["recompute"],
    sequence_parallel: Optional[bool] = SCENARIO_OPTIONS["sequence_parallel"],
    reshard_after_forward: Optional[bool] = SCENARIO_OPTIONS["reshard_after_forward"],
    dp_bucket_params: Optional[int] = SCENARIO_OPTIONS["dp_bucket_params"],
    overlap_grad_reduce: Optional[bool] = SCENARIO_OPTIONS["overlap_grad_reduce"],
    overlap_param_gather: Optional[bool] = SCENARIO_OPTIONS["overlap_param_gather"],
    zero_stage: Optional[int] = SCENARIO_OPTIONS["zero_stage"],
    grad_reduce_dtype: Optional[str] = SCENARIO_OPTIONS["grad_reduce_dtype"],
    ramp_micro_batch_size: Optional[str] = SCENARIO_OPTIONS["ramp_micro_batch_size"],
    compare_schedules: bool = typer.Option(False, "--compare-schedules", help="Also estimate every other schedule"),
    plan: Optional[str] = typer.Option(None, "--plan", help="Run plan: a built-in name (see `gpuhours presets`) or "
                                                             "a TOML file; plans with [[phase]] tables are "
                                                             "estimated phase by phase"),
    allow_oom: bool = typer.Option(False, "--allow-oom", help="Estimate layouts that do not fit in GPU memory"),
    goodput: bool = typer.Option(False, "--goodput", help="Also simulate failures, checkpoints and restarts: "
                                                          "expected GPU-hours with P10/P50/P90 (the plan's "
                                                          "[goodput] table sets its inputs)"),
    goodput_chart: Optional[Path] = typer.Option(None, "--goodput-chart",
                                                 help="Histogram of GPU-hours over the goodput runs (.png or "
                                                      ".svg); implies --goodput"),
    goodput_timeline: Optional[Path] = typer.Option(None, "--goodput-timeline",
                                                    help="Progress, failures and restarts of the first goodput "
                                                         "run over the days (.png or .svg); implies --goodput"),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="Also re-estimate with each calibrated rate "
                                                                  "(GEMM, attention, HBM, NIC, NVLink) 10% slower "
                                                                  "and faster, one at a time (about 20 estimates)"),
    sensitivity_chart: Optional[Path] = typer.Option(None, "--sensitivity-chart",
                                                     help="Tornado chart of the sensitivity table (.png or .svg); "
                                                          "implies --sensitivity"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
):
    """GPU-hours, days and dollars of a training run (default: DeepSeek-V3 pre-training on 2,048 H800)."""
    from gpuhours.reports.estimate_table import estimate_dict, render_estimate
    from gpuhours.simulator import comparisons
    from gpuhours.simulator.scenario import estimate as run_estimate
    from gpuhours.simulator.scenario import is_phased

    with user_errors():
        for path, field in ((goodput_chart, "--goodput-chart"), (goodput_timeline, "--goodput-timeline")):
            if path is not None:
                _output_path(path, (".png", ".svg"), field)
                goodput = True
        if sensitivity_chart is not None:
            _output_path(sensitivity_chart, (".png", ".svg"), "--sensitivity-chart")
            sensitivity = True
        if sensitivity and plan is not None and is_phased(plan):
            raise UsageError("--sensitivity: a phased plan's phases are estimated one by one; run it on one phase")
        if plan is not None and is_phased(plan):
            if goodput_timeline is not None:
                raise UsageError("--goodput-timeline: one run's timeline is drawn for single-phase plans only")
            _estimate_phased(plan, allow_oom, as_json, _goodput_config(plan) if goodput else None, goodput_chart)
            return
        goodput_config = _goodput_config(plan) if goodput else None
        layout_note = None
        if _wants_planned_layout(plan, model, pp, ep, tp, cp, vpp, schedule, micro_batch_size, stage_layers,
                                 pipeline_layout,
                                 recompute, zero_stage, tp_comm_overlap, etp):
            from gpuhours.simulator.planner import planned_layout

            chosen, layout_note = planned_layout(model, gpu, gpus, seq_len, tokens, batch,
                                                 _count_progress("choosing a layout: simulated",
                                                                 as_json or not sys.stderr.isatty()))
            pp, ep, tp, cp, vpp = chosen["pp"], chosen["ep"], chosen["tp"], chosen["cp"], chosen["vpp"]
            schedule, micro_batch_size, batch = chosen["schedule"], chosen["micro_batch_size"], chosen["batch"]
            recompute, zero_stage, tp_comm_overlap = chosen["recompute"], chosen["zero_stage"], chosen["tp_comm_overlap"]
            etp = chosen.get("etp", etp)
        scenario = _scenario(plan, model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, tokens, seq_len, price,
                             calibration, precision, batch, network, cluster, nic_gbps, oversubscription, routing,
                             redundant_experts, stage_layers, recompute, overlap_grad_reduce,
                             overlap_param_gather, zero_stage, cp, attention_kernel, tp_comm_overlap, order,
                             capacity_factor, tiers, etp=etp, moe_dispatch=moe_dispatch,
                             max_nodes_per_token=max_nodes_per_token, grad_reduce_dtype=grad_reduce_dtype,
                             ramp_micro_batch_size=ramp_micro_batch_size, cp_comm=cp_comm,
                             pipeline_layout=pipeline_layout, sequence_parallel=sequence_parallel,
                             reshard_after_forward=reshard_after_forward, dp_bucket_params=dp_bucket_params,
                             fp8_recipe=fp8_recipe, comm_sms=comm_sms, host_dispatch=host_dispatch,
                             elementwise_kernels=elementwise_kernels, link_sharing=link_sharing,
                             fp8_gemm_kernels=fp8_gemm_kernels, tp_comm_overlap_impl=tp_comm_overlap_impl)
        result = run_estimate(scenario)
        from gpuhours.simulator.micro_batch_ramp import run_memory
        memory = run_memory(scenario, result)  # every micro-batch size the run uses must fit
        if not memory.fits and not allow_oom:
            raise UsageError(f"{memory.reason()}; change the layout or pass --allow-oom")
        data = estimate_dict(scenario, result)
        data["memory"] = memory.to_dict()
        data["layout_chosen_by_plan"] = layout_note
        if scenario.routing != "balanced" or scenario.redundant_experts:
            from dataclasses import replace

            balanced = run_estimate(replace(scenario, routing="balanced", redundant_experts=0))
            data["routing"]["gpu_hours_balanced"] = balanced.gpu_hours
        if compare_schedules:
            data["schedules"] = comparisons.compare_schedules(scenario)
        data["hardware_only"] = comparisons.hardware_only(scenario, result) if data["calibration_case"] else None
        data["published"] = comparisons.published(plan, scenario)
        rows = None
        if sensitivity:
            from gpuhours.simulator.sensitivity import sensitivity as run_sensitivity

            rows = run_sensitivity(scenario, base_gpu_hours=result.gpu_hours,
                                   progress=_count_progress("sensitivity: quantities", as_json))
            data["sensitivity"] = [r.to_dict() for r in rows]
        gp = None
        if goodput_config is not None:
            from gpuhours.simulator.goodput import goodput_estimate

            gp = goodput_estimate(result, scenario, goodput_config)
            data["goodput"] = gp.to_dict()
    if as_json:
        _echo_json(data)
    else:
        typer.echo(render_estimate(data))
        if layout_note:
            typer.echo(f"note: {layout_note}")
        if rows is not None:
            from gpuhours.simulator.sensitivity import sensitivity_lines

            for line in sensitivity_lines(rows):
                typer.echo(line)
        for line in gp.lines() if gp is not None else ():
            typer.echo(line)
    if sensitivity_chart is not None and rows:
        from gpuhours.reports.sensitivity_chart import tornado

        _write_atomically(sensitivity_chart, lambda path: tornado(rows, str(path),
                                                                   title=f"{scenario.model.name}: sensitivity of "
                                                                         f"GPU-hours, one rate at a time"))
        if not as_json:
            typer.echo(f"wrote {sensitivity_chart}")
    if gp is not None:
        from gpuhours.reports.goodput_chart import histogram, timeline

        for out, draw in ((goodput_chart, lambda path: histogram(gp, str(path))),
                          (goodput_timeline, lambda path: timeline(result, scenario, goodput_config, str(path)))):
            if out is not None:
                _write_atomically(out, draw)
                if not as_json:
                    typer.echo(f"wrote {out}")


def _goodput_config(plan: Optional[str]):
    """The plan's [goodput] table as a GoodputConfig (defaults where it has none)."""
    from gpuhours.simulator.goodput import GoodputConfig, goodput_from_plan
    from gpuhours.simulator.scenario import DEFAULT_PLAN, _read_plan

    return goodput_from_plan(_read_plan(plan or DEFAULT_PLAN)) or GoodputConfig()


def _estimate_phased(plan: str, allow_oom: bool, as_json: bool, goodput_config=None, goodput_chart=None) -> None:
    from gpuhours.reports.estimate_table import render_phases
    from gpuhours.simulator.comparisons import phased_calibration
    from gpuhours.simulator.phases import estimate_phases

    # redrawn in place on a terminal, else one line at the end: a later error stays the only line of a failure
    progress = _count_progress("phases done", as_json)
    result = estimate_phases(plan, allow_oom=allow_oom, progress=progress)
    data = result.to_dict()
    data.update(phased_calibration(plan))
    gp = None
    if goodput_config is not None:
        from gpuhours.simulator.goodput_phases import phased_goodput_estimate

        gp = phased_goodput_estimate(result, plan, goodput_config)
        data["goodput"] = gp.to_dict()
    if goodput_chart is not None:
        from gpuhours.reports.goodput_chart import histogram

        _write_atomically(goodput_chart, lambda path: histogram(gp, str(path)))
    if as_json:
        _echo_json(data)
        return
    typer.echo(render_phases(data))
    cases = data["calibration_case_phases"]
    if cases:
        which = ("every phase is" if len(cases) == len(data["phases"])
                 else f"phase{'s' if len(cases) > 1 else ''} {', '.join(cases)} {'are' if len(cases) > 1 else 'is'}")
        profiles = " and ".join(data["calibration_case_profiles"])
        typer.echo(f"note: {which} a calibration case: kernel times from {profiles} fitted to a trace of this "
                   f"very model on this GPU, not a prediction (`gpuhours estimate` sets the hardware-only figure "
                   f"beside it)")
    for name, lines in data["warnings"].items():
        for w in lines:
            typer.echo(f"warning ({name}): {w}")
    for line in gp.lines() if gp is not None else ():
        typer.echo(line)
    if goodput_chart is not None:
        typer.echo(f"wrote {goodput_chart}")


# ------------------------------------------------------------------------------------------------- commands
# The other commands (plan, presets, schedule, step, sweep in cli_layouts.py) register themselves on `app`
# when their modules load.
from gpuhours import cli_layouts, cli_network, cli_validation  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
