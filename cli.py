"""gpuhours command line: what-if estimates, schedules, steps, collectives, routing and calibration.

Every command prints a human table by default and one JSON object with --json. Bad input ends with one line
on stderr naming the field and what is allowed, and exit status 2.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Simulate LLM training steps on GPU clusters and price the whole run.")
calibrate_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Write calibration profiles from microbenchmarks or measured traces.")
app.add_typer(calibrate_app, name="calibrate")


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


@contextmanager
def user_errors():
    try:
        yield
    except (ValueError, UsageError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _output_path(path: Path, suffixes: tuple[str, ...], field: str) -> Path:
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{field} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    if not path.parent.exists():
        raise UsageError(f"{field}: folder {str(path.parent)!r} does not exist")
    return path


# ------------------------------------------------------------------------------------------------- estimate
SCENARIO_OPTIONS = dict(
    model=typer.Option(None, "--model", "-m", help="Preset name (see `gpuhours presets`) or a TOML / HF config.json"),
    gpu=typer.Option(None, "--gpu", help="GPU type: H800, H100, H200, A100"),
    gpus=typer.Option(None, "--gpus", help="Number of GPUs"),
    pp=typer.Option(None, "--pp", help="Pipeline-parallel size"),
    ep=typer.Option(None, "--ep", help="Expert-parallel size"),
    tp=typer.Option(None, "--tp", help="Tensor-parallel size"),
    vpp=typer.Option(None, "--vpp", help="Virtual stages per rank (interleaved-1f1b)"),
    schedule=typer.Option(None, "--schedule", help="1f1b, interleaved-1f1b, zb1p, dualpipe, dualpipev"),
    micro_batch_size=typer.Option(None, "--micro-batch-size", help="Sequences per micro-batch"),
    tokens=typer.Option(None, "--tokens", help="Training tokens, e.g. 14.8T"),
    seq_len=typer.Option(None, "--seq-len", help="Sequence length"),
    price=typer.Option(None, "--price", help="Dollars per GPU-hour"),
    calibration=typer.Option(None, "--calibration", help="Calibration profile name or JSON file"),
    precision=typer.Option(None, "--precision", help="fp8 (DeepSeek-V3 recipe) or bf16"),
    batch=typer.Option(None, "--batch", help="Constant global batch in sequences (replaces the ramp)"),
)


def _scenario(model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, tokens, seq_len, price, calibration,
              precision, batch):
    from gpuhours.simulator.scenario import load_scenario

    if precision is not None and precision not in ("fp8", "bf16"):
        raise UsageError(f"precision must be fp8 or bf16, got {precision!r}")
    return load_scenario(model=model, gpu=gpu, gpus=gpus, pp=pp, ep=ep, tp=tp, vpp=vpp, schedule=schedule,
                         micro_batch_size=micro_batch_size, tokens=tokens, seq_len=seq_len, price=price,
                         calibration=calibration, fp8=None if precision is None else precision == "fp8",
                         batch=batch)


@app.command()
def estimate(
    model: Optional[str] = SCENARIO_OPTIONS["model"],
    gpu: Optional[str] = SCENARIO_OPTIONS["gpu"],
    gpus: Optional[int] = SCENARIO_OPTIONS["gpus"],
    pp: Optional[int] = SCENARIO_OPTIONS["pp"],
    ep: Optional[int] = SCENARIO_OPTIONS["ep"],
    tp: Optional[int] = SCENARIO_OPTIONS["tp"],
    vpp: Optional[int] = SCENARIO_OPTIONS["vpp"],
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    tokens: Optional[str] = SCENARIO_OPTIONS["tokens"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    price: Optional[float] = SCENARIO_OPTIONS["price"],
    calibration: Optional[str] = SCENARIO_OPTIONS["calibration"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    batch: Optional[int] = SCENARIO_OPTIONS["batch"],
    compare_schedules: bool = typer.Option(False, "--compare-schedules", help="Also estimate every other schedule"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
):
    """GPU-hours, days and dollars of a training run (default: DeepSeek-V3 pre-training on 2,048 H800)."""
    from gpuhours.reports.estimate_table import estimate_dict, render_estimate
    from gpuhours.simulator.scenario import estimate as run_estimate

    with user_errors():
        scenario = _scenario(model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, tokens, seq_len, price,
                             calibration, precision, batch)
        result = run_estimate(scenario)
        data = estimate_dict(scenario, result)
        if compare_schedules:
            data["schedules"] = _compare_schedules(scenario)
    if as_json:
        _echo_json(data)
    else:
        typer.echo(render_estimate(data))


def _compare_schedules(scenario) -> dict:
    from dataclasses import replace

    from gpuhours.simulator.scenario import estimate as run_estimate
    from gpuhours.workloads.parallel import SCHEDULES

    out = {}
    for name in SCHEDULES:
        vpp = 2 if name == "interleaved-1f1b" else 1
        try:
            parallel = replace(scenario.parallel, schedule=name, vpp=vpp, stage_layers=None)
            parallel.check_model(scenario.model)
            est = run_estimate(replace(scenario, parallel=parallel))
        except ValueError as exc:
            out[name] = {"error": str(exc)}
            continue
        steady = est.steady.step
        out[name] = {"gpu_hours": est.gpu_hours, "wall_clock_days": est.wall_clock_days, "step_time_s":
                     steady.step_time, "bubble_share": steady.bubble_share, "mfu_bf16": steady.mfu("bf16")}
    return out


@app.command()
def presets(as_json: bool = typer.Option(False, "--json")):
    """List the built-in model presets and run plans."""
    from gpuhours.simulator.scenario import list_plans
    from gpuhours.workloads.params import param_breakdown
    from gpuhours.workloads.presets import list_presets, load_preset

    rows = []
    for name in list_presets():
        m = load_preset(name)
        b = param_breakdown(m)
        rows.append({"name": name, "params_total": b.total, "params_active": b.active,
                     "layers": m.n_layers, "hidden": m.hidden, "moe": m.moe is not None})
    if as_json:
        _echo_json({"models": rows, "plans": list_plans()})
        return
    typer.echo(f"{'model':<16}{'total':>10}{'active':>10}{'layers':>8}{'hidden':>8}  kind")
    for r in rows:
        typer.echo(f"{r['name']:<16}{r['params_total'] / 1e9:>9.1f}B{r['params_active'] / 1e9:>9.1f}B"
                   f"{r['layers']:>8}{r['hidden']:>8}  {'MoE' if r['moe'] else 'dense'}")
    typer.echo(f"plans: {', '.join(list_plans())}")


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
        if gantt is not None:
            _output_path(gantt, (".png", ".svg"), "--gantt")
        if trace is not None:
            _output_path(trace, (".json",), "--trace")
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
    if gantt is not None:
        from gpuhours.reports.gantt import draw_gantt

        draw_gantt(result.spans, gantt, title=f"{name}: {pp} ranks x {microbatches} micro-batches", unit="units")
    if trace is not None:
        from gpuhours.reports.chrome_trace import write_chrome_trace

        write_chrome_trace(result.spans, trace, time_unit_s=1e-3)
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
    vpp: Optional[int] = SCENARIO_OPTIONS["vpp"],
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    calibration: Optional[str] = SCENARIO_OPTIONS["calibration"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    microbatches: Optional[int] = typer.Option(None, "--microbatches",
                                               help="Micro-batches per pipeline (default: the plan's final batch)"),
    gantt: Optional[Path] = typer.Option(None, "--gantt", help="Write a Gantt chart of the step (.png or .svg)"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write a Chrome/Perfetto trace of the step (.json)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Simulate one training step in detail: compute and communication streams of every pipeline rank."""
    from gpuhours.reports.estimate_table import step_dict
    from gpuhours.simulator.run import microbatches_for

    with user_errors():
        if gantt is not None:
            _output_path(gantt, (".png", ".svg"), "--gantt")
        if trace is not None:
            _output_path(trace, (".json",), "--trace")
        scenario = _scenario(model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, None, seq_len, None,
                             calibration, precision, None)
        m = microbatches or microbatches_for(scenario.plan.batch.end, scenario.parallel)[0]
        result = scenario.simulator().step(m, detail=gantt is not None or trace is not None)
    data = step_dict(result)
    if gantt is not None:
        from gpuhours.reports.gantt import draw_gantt

        draw_gantt(result.pipeline.spans, gantt, title=f"{scenario.model.name} step: {result.schedule}, "
                   f"pp={scenario.parallel.pp}, {m} micro-batches", streams=("pipeline", "compute", "comm"),
                   unit="s")
    if trace is not None:
        from gpuhours.reports.chrome_trace import write_chrome_trace

        write_chrome_trace(result.pipeline.spans, trace)
    if as_json:
        _echo_json(data)
        return
    typer.echo(f"step of {m} micro-batches ({result.schedule}): {result.step_time:.3f} s; pipeline "
               f"{result.pipeline_time:.3f} s + data-parallel tail {result.dp_sync_time:.3f} s")
    typer.echo(f"bubble {result.bubble_share:.1%}, exposed communication {result.exposed_comm_share:.1%}, "
               f"MFU {result.mfu('bf16'):.1%} of BF16 peak")
    typer.echo(f"{'rank':>4} {'compute s':>10} {'comm s':>8} {'idle s':>8} {'peak act':>9}")
    for r in range(len(result.busy_per_rank)):
        typer.echo(f"{r:>4} {result.busy_per_rank[r]:>10.3f} {result.comm_busy_per_rank[r]:>8.3f} "
                   f"{result.bubble_per_rank[r]:>8.3f} {result.peak_activations_per_rank[r]:>9}")
    for path in (gantt, trace):
        if path is not None:
            typer.echo(f"wrote {path}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
