"""gpuhours command line: what-if estimates, schedules, steps, collectives, routing and calibration.

Every command prints a human table by default and one JSON object with --json. Bad input ends with one line
on stderr naming the field and what is allowed, and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from gpuhours.cli_support import (SCENARIO_OPTIONS, UsageError, _check_picture_paths, _count_progress, _echo_json,
                                  _output_path, _write_atomically, _write_pictures, app, user_errors)
from gpuhours.cli_support import _finite  # noqa: F401 (re-exported: what --json prints passes through it)


def _wants_planned_layout(plan, model, *layout) -> bool:
    """`estimate --model M` with no plan and no layout option: the planner chooses the layout, unless the model
    has a built-in plan of its own (DeepSeek-V3's plan carries its published layout)."""
    from gpuhours.simulator.scenario import list_plans

    if model is not None and not model.strip():  # '' would plan the default model's layout, then run the default
        raise UsageError("--model: empty; give a preset name (`gpuhours presets`) or a .toml / config.json file")
    return (model is not None and plan is None and all(v is None for v in layout)
            and model not in list_plans())


def _scenario(plan, model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, tokens, seq_len, price,
              calibration, precision, batch, network=None, cluster=None, nic_gbps=None, oversubscription=None,
              routing=None, redundant_experts=0, stage_layers=None, recompute=None, overlap_grad_reduce=None,
              overlap_param_gather=None, zero_stage=None, cp=None, attention_kernel=None, tp_comm_overlap=None,
              order=None, capacity_factor=None, tiers=None, etp=None, moe_dispatch=None, max_nodes_per_token=None,
              grad_reduce_dtype=None, ramp_micro_batch_size=None, cp_comm=None, pipeline_layout=None,
              sequence_parallel=None, reshard_after_forward=None, dp_bucket_params=None, fp8_recipe=None,
              comm_sms=None):
    from gpuhours.simulator.scenario import load_scenario
    from gpuhours.workloads.ops import recompute_policy

    if precision is not None and precision not in ("fp8", "bf16"):
        raise UsageError(f"precision must be fp8 or bf16, got {precision!r}")
    if recompute is not None:  # names, selective:<modules>, full:N (workloads.recompute)
        try:
            recompute = recompute_policy(recompute)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if zero_stage is not None and zero_stage not in (0, 1, 2, 3):
        raise UsageError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if stage_layers is not None:
        try:
            stage_layers = tuple(int(x) for x in stage_layers.split(","))
        except ValueError:
            raise UsageError(f"stage-layers must be comma-separated whole numbers, got {stage_layers!r}") from None
    from gpuhours.simulator.scenario import DEFAULT_PLAN

    return load_scenario(plan or DEFAULT_PLAN, model=model, gpu=gpu, gpus=gpus, pp=pp, ep=ep, tp=tp, vpp=vpp, schedule=schedule,
                         micro_batch_size=micro_batch_size, tokens=tokens, seq_len=seq_len, price=price,
                         calibration=calibration, fp8=None if precision is None else precision == "fp8",
                         batch=batch, network=network, cluster=cluster, nic_gbps=nic_gbps,
                         oversubscription=oversubscription, routing=routing,
                         redundant_experts=redundant_experts, stage_layers=stage_layers, recompute=recompute,
                         overlap_grad_reduce=overlap_grad_reduce, overlap_param_gather=overlap_param_gather,
                         zero_stage=zero_stage, cp=cp, attention_kernel=attention_kernel,
                         tp_comm_overlap=tp_comm_overlap, order=order, capacity_factor=capacity_factor,
                         tiers=tiers, etp=etp, moe_dispatch=moe_dispatch, max_nodes_per_token=max_nodes_per_token,
                         grad_reduce_dtype=grad_reduce_dtype, ramp_micro_batch_size=ramp_micro_batch_size,
                         cp_comm=cp_comm, pipeline_layout=pipeline_layout,
                         sequence_parallel=sequence_parallel, reshard_after_forward=reshard_after_forward,
                         dp_bucket_params=dp_bucket_params, fp8_recipe=fp8_recipe, comm_sms=comm_sms)


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
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    tokens: Optional[str] = SCENARIO_OPTIONS["tokens"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    price: Optional[float] = SCENARIO_OPTIONS["price"],
    calibration: Optional[str] = SCENARIO_OPTIONS["calibration"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    fp8_recipe: Optional[str] = SCENARIO_OPTIONS["fp8_recipe"],
    comm_sms: Optional[int] = SCENARIO_OPTIONS["comm_sms"],
    batch: Optional[int] = SCENARIO_OPTIONS["batch"],
    network: Optional[str] = SCENARIO_OPTIONS["network"],
    cluster: Optional[str] = SCENARIO_OPTIONS["cluster"],
    nic_gbps: Optional[float] = SCENARIO_OPTIONS["nic_gbps"],
    oversubscription: Optional[float] = SCENARIO_OPTIONS["oversubscription"],
    order: Optional[str] = SCENARIO_OPTIONS["order"],
    tiers: Optional[int] = SCENARIO_OPTIONS["tiers"],
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
                             fp8_recipe=fp8_recipe, comm_sms=comm_sms)
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


@app.command("plan")
def plan_command(
    model: str = typer.Option(..., "--model", help="A preset, or a TOML / Hugging Face config.json"),
    gpus: int = typer.Option(..., "--gpus", help="GPUs to lay the model out on"),
    gpu: str = typer.Option("h800", "--gpu", help="GPU type (`gpuhours presets` lists them)"),
    seq_len: int = typer.Option(4096, "--seq-len", help="Sequence length"),
    tokens: str = typer.Option("1T", "--tokens", help="Training tokens, e.g. 15T"),
    batch: Optional[int] = typer.Option(None, "--batch", help="Global batch in sequences (default: the largest "
                                                                "multiple of gpus/8 within 4M tokens)"),
    goal: str = typer.Option("cost", "--goal", help="cost or days (the same ranking on a fixed GPU count)"),
    max_days: Optional[float] = typer.Option(None, "--max-days", help="Refuse layouts slower than this"),
    max_simulated: int = typer.Option(48, "--max-simulated", help="Layouts simulated after pruning"),
    workers: int = typer.Option(2, "--workers", help="Processes simulating layouts (the sweep's executors)"),
    executor: str = typer.Option("process", "--executor", help="process, serial, or ray (a Ray cluster: pip "
                                                                "install -e '.[ray]')"),
    top: int = typer.Option(8, "--top", help="Rows of the table"),
    chart: Optional[Path] = typer.Option(None, "--chart", help="Days against cost of the simulated layouts "
                                                              "(.png or .svg)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Search the parallel layouts of a model on N GPUs: prune by memory and a cheap score, simulate the
    survivors, print the best with why each runner-up loses."""
    from gpuhours.simulator.planner import plan_layouts

    with user_errors():
        if chart is not None:
            _output_path(chart, (".png", ".svg"), "--chart")

        result = plan_layouts(model, gpu, gpus, seq_len=seq_len, tokens=tokens, batch=batch, goal=goal,
                              max_days=max_days, max_simulated=max_simulated,
                              progress=_count_progress("simulated layouts", as_json), workers=workers,
                              executor=executor)
    if as_json:
        _echo_json(result.to_dict())
    else:
        for line in result.lines(top):
            typer.echo(line)
    if chart is not None:
        from gpuhours.reports.plan_chart import plot_plan

        _write_atomically(chart, lambda path: plot_plan(result, path))
        if not as_json:
            typer.echo(f"wrote {chart}")


@app.command()
def presets(as_json: bool = typer.Option(False, "--json")):
    """List the built-in model presets, run plans and GPUs."""
    from gpuhours.simulator.scenario import list_plans
    from gpuhours.workloads.params import param_breakdown
    from gpuhours.workloads.presets import list_presets, load_preset

    rows = []
    for name in list_presets():
        m = load_preset(name)
        b = param_breakdown(m)
        rows.append({"name": name, "params_total": b.total, "params_active": b.active,
                     "layers": m.n_layers, "hidden": m.hidden, "moe": m.moe is not None})
    from gpuhours.hwmodels.gpus import list_gpus

    if as_json:
        _echo_json({"models": rows, "plans": list_plans(), "gpus": list_gpus()})
        return
    typer.echo(f"{'model':<16}{'total':>10}{'active':>10}{'layers':>8}{'hidden':>8}  kind")
    for r in rows:
        typer.echo(f"{r['name']:<16}{r['params_total'] / 1e9:>9.1f}B{r['params_active'] / 1e9:>9.1f}B"
                   f"{r['layers']:>8}{r['hidden']:>8}  {'MoE' if r['moe'] else 'dense'}")
    typer.echo(f"plans: {', '.join(list_plans())}")
    typer.echo(f"gpus: {', '.join(list_gpus())}")


# ------------------------------------------------------------------------------------------------- schedules
@app.command()
def schedule(
    name: str = typer.Argument(..., help="1f1b, interleaved-1f1b, zb1p, dualpipe, dualpipev"),
    pp: int = typer.Option(8, "--pp", help="Pipeline ranks (devices)"),
    microbatches: int = typer.Option(20, "--microbatches", help="Micro-batches per step"),
    vpp: int = typer.Option(1, "--vpp", help="Virtual stages per rank (interleaved-1f1b)"),
    f: float = typer.Option(1.0, "--f", help="Cost of a forward chunk"),
    b: float = typer.Option(2.0, "--b", help="Cost of a full backward chunk (input + weight gradients)"),
    w: float = typer.Option(1.0, "--w", help="Cost of the weight-gradient part of b"),
    fb: Optional[float] = typer.Option(None, "--fb", help="Cost of an overlapped F&B pair (default f + b)"),
    gantt: Optional[Path] = typer.Option(None, "--gantt", help="Write a Gantt chart (.png or .svg)"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write a Chrome/Perfetto trace (.json)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Run a pipeline schedule with uniform chunk costs and no hardware: makespan, bubbles, activations."""
    from gpuhours.simulator.engine import UnitCosts, run_unit
    from gpuhours.simulator.schedules import build_schedule

    with user_errors():
        _check_picture_paths(gantt, trace)
        sched = build_schedule(name, pp, microbatches, vpp=vpp)
        result = run_unit(sched, UnitCosts(f, b, w, fb))
    data = {
        "schedule": name, "pp": pp, "microbatches": microbatches, "vpp": vpp,
        "costs": {"f": f, "b": b, "w": w, "fb": f + b if fb is None else fb},
        "makespan": result.makespan,
        "bubble_per_rank": list(result.bubble_per_rank),
        "peak_activations_per_rank": list(result.peak_activations_per_rank),
        "params_per_rank": list(sched.params_per_rank),
    }
    _write_pictures(result.spans, gantt, trace, title=f"{name}: {pp} ranks x {microbatches} micro-batches",
                    streams=("compute",), unit="units", trace_unit_s=1e-3)
    if as_json:
        _echo_json(data)
        return
    typer.echo(f"{name}: pp={pp} micro-batches={microbatches} vpp={vpp}  makespan {result.makespan:g}")
    typer.echo(f"{'rank':>4} {'bubble':>8} {'peak act':>9} {'params':>7}")
    for r in range(pp):
        typer.echo(f"{r:>4} {result.bubble_per_rank[r]:>8g} {result.peak_activations_per_rank[r]:>9} "
                   f"{sched.params_per_rank[r] if sched.params_per_rank else 1:>7g}")
    for path in (gantt, trace):
        if path is not None:
            typer.echo(f"wrote {path}")


@app.command()
def step(
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
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    calibration: Optional[str] = SCENARIO_OPTIONS["calibration"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    fp8_recipe: Optional[str] = SCENARIO_OPTIONS["fp8_recipe"],
    comm_sms: Optional[int] = SCENARIO_OPTIONS["comm_sms"],
    network: Optional[str] = SCENARIO_OPTIONS["network"],
    cluster: Optional[str] = SCENARIO_OPTIONS["cluster"],
    routing: Optional[str] = SCENARIO_OPTIONS["routing"],
    recompute: Optional[str] = SCENARIO_OPTIONS["recompute"],
    sequence_parallel: Optional[bool] = SCENARIO_OPTIONS["sequence_parallel"],
    reshard_after_forward: Optional[bool] = SCENARIO_OPTIONS["reshard_after_forward"],
    dp_bucket_params: Optional[int] = SCENARIO_OPTIONS["dp_bucket_params"],
    overlap_grad_reduce: Optional[bool] = SCENARIO_OPTIONS["overlap_grad_reduce"],
    overlap_param_gather: Optional[bool] = SCENARIO_OPTIONS["overlap_param_gather"],
    zero_stage: Optional[int] = SCENARIO_OPTIONS["zero_stage"],
    grad_reduce_dtype: Optional[str] = SCENARIO_OPTIONS["grad_reduce_dtype"],
    microbatches: Optional[int] = typer.Option(None, "--microbatches",
                                               help="Micro-batches per pipeline (default: the plan's final batch)"),
    gantt: Optional[Path] = typer.Option(None, "--gantt", help="Write a Gantt chart of the step (.png or .svg): "
                                         "the whole step with one lane of pipeline instructions per rank, over a "
                                         "detail window with every rank's pipeline, compute and communication "
                                         "lanes"),
    gantt_window: Optional[str] = typer.Option(None, "--gantt-window",
                                               help="Detail window of --gantt: N instructions of rank 0 from its "
                                                    "first F&B pair or first instruction (default 4), or 'all': "
                                                    "every span of every lane over the whole step in one wide chart"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write a Chrome/Perfetto trace of the step (.json): "
                                                               "every span, for ui.perfetto.dev"),
    order: Optional[str] = SCENARIO_OPTIONS["order"],
    oversubscription: Optional[float] = SCENARIO_OPTIONS["oversubscription"],
    etp: Optional[int] = SCENARIO_OPTIONS["etp"],
    moe_dispatch: Optional[str] = SCENARIO_OPTIONS["moe_dispatch"],
    max_nodes_per_token: Optional[int] = SCENARIO_OPTIONS["max_nodes_per_token"],
    pipeline_layout: Optional[str] = SCENARIO_OPTIONS["pipeline_layout"],
    as_json: bool = typer.Option(False, "--json"),
):
    """Simulate one training step in detail: compute and communication streams of every pipeline rank."""
    from gpuhours.reports.estimate_table import step_dict
    from gpuhours.simulator.run import microbatches_for

    with user_errors():
        _check_picture_paths(gantt, trace)
        window = None
        if gantt_window is not None:
            if gantt is None:
                raise UsageError("--gantt-window sets the window of --gantt: give --gantt F.png too")
            text = gantt_window.strip().lower()
            if text != "all" and not (text.isdigit() and 1 <= int(text) <= 10_000):
                raise UsageError(f"--gantt-window: {gantt_window!r} is not 'all' or an integer from 1 to 10000")
            window = "all" if text == "all" else int(text)
        scenario = _scenario(None, model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, None, seq_len, None,
                             calibration, precision, None, network, cluster, None, oversubscription, routing,
                             recompute=recompute, overlap_grad_reduce=overlap_grad_reduce,
                             overlap_param_gather=overlap_param_gather, zero_stage=zero_stage, cp=cp,
                             attention_kernel=attention_kernel, tp_comm_overlap=tp_comm_overlap, order=order,
                             etp=etp, moe_dispatch=moe_dispatch, max_nodes_per_token=max_nodes_per_token,
                             grad_reduce_dtype=grad_reduce_dtype, cp_comm=cp_comm,
                             pipeline_layout=pipeline_layout, sequence_parallel=sequence_parallel,
                             reshard_after_forward=reshard_after_forward, dp_bucket_params=dp_bucket_params,
                             fp8_recipe=fp8_recipe, comm_sms=comm_sms)
        m = microbatches or microbatches_for(scenario.plan.batch.end, scenario.parallel)[0]
        result = scenario.simulator().step(m, detail=gantt is not None or trace is not None)
    data = step_dict(result)
    from gpuhours.reports.placement_table import placement_lines, placement_rows

    data["groups"] = placement_rows(scenario.simulator().coster)
    title = f"{scenario.model.name} step: {result.schedule}, pp={scenario.parallel.pp}, {m} micro-batches"
    _write_pictures(result.pipeline.spans, None, trace, title=title, streams=("pipeline", "compute", "comm"),
                    unit="s", trace_unit_s=1.0)
    if gantt is not None:  # drawn here, not by _write_pictures: the window and the note are the step's own
        from gpuhours.reports.gantt import draw_gantt

        note = (f"every span of every rank: {trace} (open it in ui.perfetto.dev)" if trace is not None else
                "every span of every rank: add --trace F.json and open it in ui.perfetto.dev")
        _write_atomically(gantt, lambda path: draw_gantt(result.pipeline.spans, path, title=title,
                                                         streams=("pipeline", "compute", "comm"), unit="s",
                                                         window=window, note=note))
    if as_json:
        _echo_json(data)
        return
    typer.echo(f"step of {m} micro-batches ({result.schedule}): {result.step_time:.3f} s; pipeline "
               f"{result.pipeline_time:.3f} s + data-parallel tail {result.dp_sync_time:.3f} s")
    typer.echo(f"bubble {result.bubble_share:.1%} ({result.imbalance_share:.1%} uneven work), exposed communication "
               f"{result.exposed_comm_share:.1%}, "
               f"MFU {result.mfu('bf16'):.1%} of BF16 peak")
    typer.echo(f"{'rank':>4} {'compute s':>10} {'comm s':>8} {'idle s':>8} {'peak act':>9}")
    for r in range(len(result.busy_per_rank)):
        typer.echo(f"{r:>4} {result.busy_per_rank[r]:>10.3f} {result.comm_busy_per_rank[r]:>8.3f} "
                   f"{result.bubble_per_rank[r]:>8.3f} {result.peak_activations_per_rank[r]:>9}")
    for line in placement_lines(data["groups"], scenario.parallel.order):
        typer.echo(line)
    for path in (gantt, trace):
        if path is not None:
            typer.echo(f"wrote {path}")


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="Sweep spec TOML (see examples/sweep-deepseek-v3.toml)"),
    out: Path = typer.Option(Path("sweep-out"), "--out", help="Folder for results.csv, pareto.png"),
    workers: int = typer.Option(2, "--workers", help="Worker processes"),
    executor: str = typer.Option("process", "--executor", help="process, serial or ray"),
    rank_by: str = typer.Option("wall_clock_days", "--rank-by", help="Column to rank the table by"),
    parquet: bool = typer.Option(False, "--parquet", help="Also write results.parquet (needs pyarrow)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Estimate every point of a grid of layouts and clusters; resumes an interrupted sweep from its CSV."""
    from gpuhours.simulator.sweep import run_sweep

    progress = _count_progress("points", as_json)

    with user_errors():
        if not spec.exists():
            raise UsageError(f"spec: no such file {str(spec)!r}")
        if spec.is_dir():
            raise UsageError(f"spec: {spec}: Is a directory; give a sweep spec .toml file")
        try:
            result = run_sweep(spec, out, workers=workers, executor=executor, progress=progress, parquet=parquet,
                               rank_by=rank_by)
        except RuntimeError as exc:
            raise UsageError(str(exc)) from None
    if as_json:
        _echo_json(result.to_dict())
        return
    import pandas as pd

    table = result.table
    grid = list(result.spec.keys)
    expected = ["expected_gpu_hours", "goodput"] if table.get("goodput") is not None \
        and table["goodput"].notna().any() else []
    shown = [c for c in ["rank", *grid, "feasible", "step_time_s", "gpu_hours", "wall_clock_days", "cost_usd",
                         *expected, "memory_gib"] if c in table.columns]
    view = table[shown].copy()
    if "reason" in table.columns:
        view["reason"] = table["reason"].fillna("").astype(str).str.slice(0, 48)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:,.2f}".format):
        typer.echo(view.head(20).to_string(index=False, na_rep="-"))  # an infeasible point has no figures
    for goal, row in result.best.items():
        if row:
            where = f"{row['layout']} on {row['gpus']} GPUs" if "gpus" in row else row["layout"]
            point = ", ".join(f"{k} {row[k]}" for k in grid if k in row)
            if goal == "cheapest_expected":
                figures = (f"{row['expected_days']:.2f} days, {row['expected_gpu_hours']:,.0f} GPU-hours, "
                           f"${row['expected_cost_usd']:,.0f} expected ({row['goodput']:.1%} goodput)")
            else:
                figures = (f"{row['wall_clock_days']:.2f} days, {row['gpu_hours']:,.0f} GPU-hours, "
                           f"${row['cost_usd']:,.0f}")
            typer.echo(f"best ({goal.replace('_', ' ')}): {where} ({point}): {figures}")
    for path in (result.csv_path, result.parquet_path, result.plot_path):
        if path:
            typer.echo(f"wrote {path}")


# ------------------------------------------------------------------------------------------------- network
# The other commands register themselves on `app` when their modules load.
from gpuhours import cli_network, cli_validation  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
