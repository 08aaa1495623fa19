"""The commands around one layout or a search of them: `plan` (search a model's layouts on N GPUs), `presets`
(what a layout is built from), `schedule` (a pipeline schedule with unit costs), `step` (one training step in
detail) and `sweep` (a grid of layouts and clusters). They register on `app` when `cli.py` imports this module,
after `estimate`, so `gpuhours --help` lists them in the same order."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gpuhours.cli_scenario import _scenario
from gpuhours.cli_support import (SCENARIO_OPTIONS, UsageError, _check_picture_paths, _count_progress, _echo_json,
                                  _output_path, _write_atomically, _write_pictures, app, user_errors)


@app.command("plan")
def plan_command(
    model: str = typer.Option(..., "--model", help="A preset, or a TOML / Hugging Face config.json"),
    gpus: int = typer.Option(..., "--gpus", help="GPUs to lay the model out on"),
    gpu: str = typer.Option("h800", "--gpu", help="GPU type (`gpuhours presets` lists them)"),
    seq_len: int = typer.Option(4096, "--seq-len", help="Sequence length"),
    tokens: str = typer.Option("1T", "--tokens", help="Training tokens, e.g. 15T"),
    batch: Optional[int] = typer.Option(None, "--batch", help="Global batch in sequences (default: the largest "
                                                                "multiple of gpus/8 within 4M tokens)"),
    goal: str = typer.Option("cost", "--goal", help="cost, days or tokens-per-dollar (the same ranking on a fixed "
                                                    "GPU count and token budget)"),
    max_days: Optional[float] = typer.Option(None, "--max-days", help="Refuse layouts slower than this"),
    budget: Optional[float] = typer.Option(None, "--budget", help="Refuse layouts dearer than this many dollars"),
    cluster: Optional[str] = SCENARIO_OPTIONS["cluster"],
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
                              executor=executor, budget=budget, cluster=cluster)
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
    tp_comm_overlap_impl: Optional[str] = SCENARIO_OPTIONS["tp_comm_overlap_impl"],
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    calibration: Optional[str] = SCENARIO_OPTIONS["calibration"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    fp8_recipe: Optional[str] = SCENARIO_OPTIONS["fp8_recipe"],
    host_dispatch: Optional[str] = SCENARIO_OPTIONS["host_dispatch"],
    elementwise_kernels: Optional[str] = SCENARIO_OPTIONS["elementwise_kernels"],
    fp8_gemm_kernels: Optional[str] = SCENARIO_OPTIONS["fp8_gemm_kernels"],
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
    link_sharing: Optional[str] = SCENARIO_OPTIONS["link_sharing"],
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
                             fp8_recipe=fp8_recipe, comm_sms=comm_sms, host_dispatch=host_dispatch,
                             elementwise_kernels=elementwise_kernels, link_sharing=link_sharing,
                             fp8_gemm_kernels=fp8_gemm_kernels, tp_comm_overlap_impl=tp_comm_overlap_impl)
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
