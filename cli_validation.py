"""gpuhours commands that measure and check: calibration profiles, validation against PyTorch pieces, the
accuracy suite."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gpuhours.cli_support import (UsageError, _echo_json, _output_path, _stderr_console, _write_atomically, app,
                                  calibrate_app, user_errors)


@calibrate_app.command("bench")
def calibrate_bench(
    output: Path = typer.Option(..., "-o", "--output", help="Profile JSON to write"),
    device: str = typer.Option("cuda", "--device", help="cuda (real DeepSeek-V3 shapes) or cpu (tiny, tests the path)"),
    quick: bool = typer.Option(False, "--quick", help="Small shapes and few repeats"),
):
    """Time the simulator's op classes with PyTorch and write a calibration profile."""
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
    trace: Path = typer.Argument(..., help="PyTorch-profiler Chrome trace of one DualPipe F&B pair"),
    output: Path = typer.Option(..., "-o", "--output", help="Profile JSON to write"),
    base: str = typer.Option("default-h800", "--base", help="Profile whose GEMM shape curves are rescaled"),
):
    """Derive a calibration profile from a measured trace of DeepSeek-V3's overlapped F&B pair."""
    from gpuhours.validation.calibrate_trace import profile_from_traced_case

    with user_errors():
        _output_path(output, (".json",), "--output")
        if not trace.exists():
            raise UsageError(f"trace: no such file {str(trace)!r}")
        profile = profile_from_traced_case(trace, base)
        _write_atomically(output, profile.save)
    typer.echo(f"wrote {output}: {profile.name} ({profile.source}, {profile.provenance.device})")


@app.command()
def validate(
    out: Path = typer.Option(Path("."), "--out", help="Folder for validation.md and its plots (default: the current "
                                                     "folder; the committed page: --out reports/validation)"),
    bench: Optional[Path] = typer.Option(None, "--bench", help="Also compare this microbenchmark profile JSON"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Measured trace (default: shared profile-data)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Simulate the traced DeepSeek-V3 F&B pair under each calibration source and compare with the trace."""
    from gpuhours.reports.validation_page import write_validation_page
    from gpuhours.validation.compare import compare_all

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

            rows = run_suite(cases, progress=progress)
        written = None
        if page:
            note = "" if (case is None and group is None) else \
                f"Filtered run: --case {case or '*'} --group {group or 'all'}."
            written = write_page(rows, all_cases, out, note)
    if as_json:
        _echo_json(suite_dict(rows) | {"page": str(written) if written else None})
        return
    typer.echo(render_table(rows))
    if written:
        typer.echo(f"wrote {written}")
