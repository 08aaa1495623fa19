"""gpuhours commands that measure and check: calibration profiles, validation against PyTorch pieces, the
accuracy suite."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gpuhours.cli_support import (SCENARIO_OPTIONS, UsageError, _echo_json, _output_path, _stderr_console,
                                  _write_atomically, app, calibrate_app, user_errors)


@calibrate_app.command("bench")
def calibrate_bench(
    output: Path = typer.Option(..., "-o", "--output", help="Profile JSON to write"),
    device: str = typer.Option("cuda", "--device", help="cuda (real DeepSeek-V3 shapes) or cpu (tiny, tests the path)"),
    quick: bool = typer.Option(False, "--quick", help="Small shapes and few repeats"),
):
    """Time the simulator's op classes with PyTorch and write a calibration profile (GEMMs, per-tensor FP8
    speed-ups, attention, memory-bound classes, launch overhead, NCCL within the node)."""
    with user_errors():
        _output_path(output, (".json",), "--output")
        if device not in ("cuda", "cpu"):
            raise UsageError(f"device must be cuda or cpu, got {device!r}")
        try:
            import torch
        except ImportError:
            raise UsageError("calibrate bench needs PyTorch: pip install torch==2.13.0 (or '.[validation]')") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError("device cuda: no CUDA GPU is visible here; use --device cpu to test the path")
        from gpuhours.hwmodels.calibration import CalibrationProfile
        from gpuhours.validation.bench import run_benchmarks

        profile = CalibrationProfile.from_dict(run_benchmarks(device, quick or device == "cpu"))
        _write_atomically(output, profile.save)
    typer.echo(f"wrote {output} ({profile.source} on {profile.provenance.device})")


@calibrate_app.command("trace")
def calibrate_trace(
    trace: List[Path] = typer.Argument(..., help="PyTorch-profiler Chrome trace: DeepSeek-V3's DualPipe F&B pair, "
                                                 "or with --model any model's training steps (one file per rank, "
                                                 "or several GPUs in one file)"),
    output: Path = typer.Option(..., "-o", "--output", help="Profile JSON to write"),
    base: str = typer.Option("default-h800", "--base", help="Profile whose GEMM shape curves are rescaled"),
    name: Optional[str] = typer.Option(None, "--name", help="With --model: the profile's name "
                                                            "(default kineto-<model>-<gpu>)"),
    plan: Optional[str] = typer.Option(None, "--plan", help="With --model: a plan (name or TOML) holding the "
                                                            "traced run's layout"),
    model: Optional[str] = SCENARIO_OPTIONS["model"],
    gpu: Optional[str] = SCENARIO_OPTIONS["gpu"],
    gpus: Optional[int] = SCENARIO_OPTIONS["gpus"],
    pp: Optional[int] = SCENARIO_OPTIONS["pp"],
    ep: Optional[int] = SCENARIO_OPTIONS["ep"],
    tp: Optional[int] = SCENARIO_OPTIONS["tp"],
    cp: Optional[int] = SCENARIO_OPTIONS["cp"],
    vpp: Optional[int] = SCENARIO_OPTIONS["vpp"],
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    batch: Optional[int] = SCENARIO_OPTIONS["batch"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    fp8_recipe: Optional[str] = SCENARIO_OPTIONS["fp8_recipe"],
    recompute: Optional[str] = SCENARIO_OPTIONS["recompute"],
    zero_stage: Optional[int] = SCENARIO_OPTIONS["zero_stage"],
    sequence_parallel: Optional[bool] = SCENARIO_OPTIONS["sequence_parallel"],
    network: Optional[str] = SCENARIO_OPTIONS["network"],
    cluster: Optional[str] = SCENARIO_OPTIONS["cluster"],
):
    """Derive a calibration profile from a measured trace: DeepSeek-V3's overlapped F&B pair, or (--model and
    the traced layout) any model's training steps, fitted per kernel class."""
    from gpuhours.validation.calibrate_trace import profile_from_traced_case

    layout = dict(gpu=gpu, gpus=gpus, pp=pp, ep=ep, tp=tp, cp=cp, vpp=vpp, schedule=schedule,
                  micro_batch_size=micro_batch_size, seq_len=seq_len, batch=batch, fp8_recipe=fp8_recipe,
                  recompute=recompute, zero_stage=zero_stage, sequence_parallel=sequence_parallel,
                  network=network, cluster=cluster)
    with user_errors():
        _output_path(output, (".json",), "--output")
        _check_traces(trace)
        if model is not None:
            from gpuhours.validation.kineto_calibrate import calibrate
            from gpuhours.validation.kineto_report import render_calibration

            profile, report = calibrate(trace, model, base, name=name, plan=plan, precision=precision, **layout)
            _write_atomically(output, profile.save)
            typer.echo(render_calibration(report))
        else:
            _deepseek_trace_only(trace, layout | dict(name=name, plan=plan, precision=precision))
            profile = profile_from_traced_case(trace[0], base)
            _write_atomically(output, profile.save)
    typer.echo(f"wrote {output}: {profile.name} ({profile.source}, {profile.provenance.device})")


def _check_traces(traces) -> None:
    for t in traces:
        if not t.exists():
            raise UsageError(f"trace: no such file {str(t)!r}")


def _deepseek_trace_only(traces, options: dict) -> None:
    """Without --model the trace is DeepSeek-V3's F&B pair: one file, and no layout options."""
    if len(traces) > 1:
        raise UsageError(f"trace: DeepSeek-V3's F&B pair is one file, got {len(traces)}; give --model for a trace "
                         f"of several ranks")
    given = [k for k, v in options.items() if v is not None]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')}: layout options describe a traced run of --model; "
                         f"give --model")


@app.command()
def validate(
    out: Path = typer.Option(Path("."), "--out", help="Folder for validation.md and its plots (default: the current "
                                                     "folder; the committed page: --out reports/validation)"),
    bench: Optional[Path] = typer.Option(None, "--bench", help="Also compare this microbenchmark profile JSON"),
    trace: Optional[List[Path]] = typer.Option(None, "--trace", help=(
        "Measured trace (default: where GPUHOURS_PROFILE_TRACE points, else the trace-derived profile's figures); "
        "with --model, any model's training steps, repeated for several ranks")),
    as_json: bool = typer.Option(False, "--json"),
    plan: Optional[str] = typer.Option(None, "--plan", help="With --model: a plan (name or TOML) holding the traced "
                                                            "run's layout"),
    model: Optional[str] = SCENARIO_OPTIONS["model"],
    calibration: Optional[str] = SCENARIO_OPTIONS["calibration"],
    gpu: Optional[str] = SCENARIO_OPTIONS["gpu"],
    gpus: Optional[int] = SCENARIO_OPTIONS["gpus"],
    pp: Optional[int] = SCENARIO_OPTIONS["pp"],
    ep: Optional[int] = SCENARIO_OPTIONS["ep"],
    tp: Optional[int] = SCENARIO_OPTIONS["tp"],
    cp: Optional[int] = SCENARIO_OPTIONS["cp"],
    vpp: Optional[int] = SCENARIO_OPTIONS["vpp"],
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    batch: Optional[int] = SCENARIO_OPTIONS["batch"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    fp8_recipe: Optional[str] = SCENARIO_OPTIONS["fp8_recipe"],
    recompute: Optional[str] = SCENARIO_OPTIONS["recompute"],
    zero_stage: Optional[int] = SCENARIO_OPTIONS["zero_stage"],
    sequence_parallel: Optional[bool] = SCENARIO_OPTIONS["sequence_parallel"],
    network: Optional[str] = SCENARIO_OPTIONS["network"],
    cluster: Optional[str] = SCENARIO_OPTIONS["cluster"],
):
    """Simulate the traced DeepSeek-V3 F&B pair under each calibration source and compare with the trace; with
    --model, the simulated training step of that model and layout against its measured trace."""
    from gpuhours.reports.validation_page import write_validation_page
    from gpuhours.validation.compare import compare_all

    layout = dict(gpu=gpu, gpus=gpus, pp=pp, ep=ep, tp=tp, cp=cp, vpp=vpp, schedule=schedule,
                  micro_batch_size=micro_batch_size, seq_len=seq_len, batch=batch, fp8_recipe=fp8_recipe,
                  recompute=recompute, zero_stage=zero_stage, sequence_parallel=sequence_parallel,
                  network=network, cluster=cluster, calibration=calibration)
    with user_errors():
        if model is not None:
            from gpuhours.validation.kineto_calibrate import compare_step
            from gpuhours.validation.kineto_report import render_comparison

            if not trace:
                raise UsageError("trace: --model compares a measured trace of that model; give --trace")
            _check_traces(trace)
            step = compare_step(trace, model, plan=plan, precision=precision, **layout)
        else:
            _deepseek_trace_only(trace or [], layout | dict(plan=plan, precision=precision))
            trace = trace[0] if trace else None
    if model is not None:
        _echo_json(step) if as_json else typer.echo(render_comparison(step))
        return
    with user_errors():
        if bench is not None and not bench.exists():
            raise UsageError(f"bench: no such file {str(bench)!r}")
        if trace is not None and not trace.exists():
            raise UsageError(f"trace: no such file {str(trace)!r}")
        results = compare_all(bench_profile=bench, trace_path=trace)
        page = write_validation_page(results, out)
    if as_json:
        _echo_json(results)
        return
    typer.echo(f"traced pair: {results['measured']['span_ms']:.1f} ms measured")
    for name, r in results["sources"].items():
        if r.get("error"):
            typer.echo(f"  {name:<16} error: {r['error']}")
            continue
        typer.echo(f"  {name:<16} simulated {r['simulated_span_ms']:.1f} ms; default estimate "
                   f"{r.get('gpu_hours', float('nan')) / 1e6:.3f}M GPU-hours "
                   f"(published {results['published_gpu_hours'] / 1e6:.3f}M)"
                   + _validate_case_label(name, bench, trace))
    typer.echo(f"wrote {page}")


def _validate_case_label(name: str, bench: Path | None, trace: Path | None) -> str:
    """For `validate`'s rows: a profile fitted to the traced pair's own model and GPU (DeepSeek-V3 on H800) is
    a calibration case there, not a check."""
    from gpuhours.hwmodels.calibration import load_profile

    try:
        profile = load_profile(bench if bench is not None and bench.stem == name else name)
    except ValueError:
        return ""
    on = profile.calibrated_on
    if on.get("model") != "deepseek-v3" or profile.gpu_key != "h800":
        return ""
    if profile.source == "trace" and trace is None:
        return "  [calibration case: derived from this very trace]"
    return "  [calibration case: fitted to this model on this GPU]"


@app.command()
def accuracy(
    case: Optional[str] = typer.Option(None, "--case", help="Only cases whose name matches this glob"),
    group: Optional[str] = typer.Option(None, "--group", help="Only this group (a source table)"),
    out: Path = typer.Option(Path("."), "--out", help="Folder for accuracy.md and accuracy.png (default: the current "
                                                     "folder; the committed page: --out reports/accuracy)"),
    page: bool = typer.Option(True, "--page/--no-page", help="Write the page and the scatter plot"),
    as_json: bool = typer.Option(False, "--json"),
    profile: Optional[str] = typer.Option(None, "--profile", help="Run every selected case under this calibration "
                                          "profile instead of its own (e.g. --group korthikanti-2022 --profile "
                                          "default-a100)"),
):
    """Published, measured training runs simulated as published: prediction, error and gaps per case."""
    from rich.progress import Progress

    from gpuhours.reports.accuracy_page import render_table, write_page
    from gpuhours.validation.accuracy import run_suite, select, suite_dict
    from gpuhours.validation.cases import load_cases

    with user_errors():
        all_cases = load_cases()
        cases = select(all_cases, case, group)
        with Progress(transient=True, console=_stderr_console()) as bar:
            task = bar.add_task("accuracy suite", total=None)

            def progress(done, total, what):
                bar.update(task, completed=done, total=total, description=what)

            rows = run_suite(cases, progress=progress, profile=profile)
        written = None
        if page:
            note = "" if (case is None and group is None) else \
                f"Filtered run: --case {case or '*'} --group {group or 'all'}."
            if profile:
                note = f"{note} Every case under --profile {profile}.".strip()
            written = write_page(rows, all_cases, out, note)
    if as_json:
        _echo_json(suite_dict(rows) | {"page": str(written) if written else None})
        return
    typer.echo(render_table(rows))
    if written:
        typer.echo(f"wrote {written}")
