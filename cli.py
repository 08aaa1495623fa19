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
from typer.core import TyperGroup


def _is_usage_error(exc: BaseException) -> bool:
    """Click's exception protocol (typer vendors click in recent versions, so the classes are matched by what
    they offer, not imported): a message to show and an exit status."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def usage_line(exc) -> str:
    """A command-line parsing error as one line naming the option: "--pp: 'abc' is not a valid integer."."""
    param = getattr(exc, "param", None)
    text = " ".join(exc.format_message().split())
    if param is not None and getattr(exc, "message", ""):
        name = param.opts[0] if getattr(param, "opts", None) else param.name
        return f"{name}: {exc.message}"
    return text


class OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, an unknown option, a missing argument) as one `error:` line and exit
    status 2, like every other bad input of this CLI, instead of a boxed message."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            rc = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only the usage-error protocol is handled, the rest re-raised
            if not standalone_mode or not (_is_usage_error(exc) or type(exc).__name__ == "Abort"):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as written
                typer.echo(exc.format_message())
                sys.exit(0)
            if type(exc).__name__ == "Abort":
                typer.echo("aborted", err=True)
                sys.exit(1)
            typer.echo(f"error: {usage_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        if standalone_mode:
            sys.exit(rc if isinstance(rc, int) else 0)
        return rc


# rich_markup_mode=None: help texts render as written (a plan's `[[phase]]` is not markup)
app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Simulate LLM training steps on GPU clusters and price the whole run.")
calibrate_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                            help="Write calibration profiles from microbenchmarks or measured traces.")
app.add_typer(calibrate_app, name="calibrate")


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


@contextmanager
def user_errors():
    try:
        yield
    except (ValueError, UsageError, OSError, KeyError) as exc:
        typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(2)


def _one_line(exc: Exception) -> str:
    """What went wrong, naming the file or key (an OSError's args are an errno, a KeyError's a bare key)."""
    if isinstance(exc, UnicodeDecodeError):
        return (f"an input file is not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset {exc.start} "
                f"({exc.reason})")
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    return str(exc.args[0]) if exc.args else str(exc)


def _echo_json(obj) -> None:
    """Strict JSON: a non-finite number becomes null (JSON has no Infinity or NaN)."""
    typer.echo(json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False))


def _finite(obj):
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not hasattr(obj, "__len__"):  # numpy scalars
        return _finite(obj.item())
    return obj


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


def _check_picture_paths(gantt: Path | None, trace: Path | None) -> None:
    """Refuse a bad --gantt / --trace path before any work is done."""
    if gantt is not None:
        _output_path(gantt, (".png", ".svg"), "--gantt")
    if trace is not None:
        _output_path(trace, (".json",), "--trace")


def _write_pictures(spans, gantt: Path | None, trace: Path | None, *, title: str, streams: tuple[str, ...],
                    unit: str, trace_unit_s: float) -> None:
    """The Gantt chart and the Chrome/Perfetto trace of a timeline, where asked for."""
    if gantt is not None:
        from gpuhours.reports.gantt import draw_gantt

        draw_gantt(spans, gantt, title=title, streams=streams, unit=unit)
    if trace is not None:
        from gpuhours.reports.chrome_trace import write_chrome_trace

        write_chrome_trace(spans, trace, time_unit_s=trace_unit_s)


# ------------------------------------------------------------------------------------------------- estimate
SCENARIO_OPTIONS = dict(
    model=typer.Option(None, "--model", "-m", help="Preset name (see `gpuhours presets`) or a TOML / HF config.json"),
    gpu=typer.Option(None, "--gpu", help="GPU type (`gpuhours presets` lists them): H800, H100, H200, A100, "
                                         "B200, GB200, MI300X, ..."),
    gpus=typer.Option(None, "--gpus", help="Number of GPUs"),
    pp=typer.Option(None, "--pp", help="Pipeline-parallel size"),
    ep=typer.Option(None, "--ep", help="Expert-parallel size"),
    tp=typer.Option(None, "--tp", help="Tensor-parallel size"),
    cp=typer.Option(None, "--cp", help="Context-parallel size (all-gather K/V, causal load balancing); "
                                       "GPUs = pp x tp x cp x dp"),
    vpp=typer.Option(None, "--vpp", help="Virtual stages per rank (interleaved-1f1b)"),
    attention_kernel=typer.Option(None, "--attention-kernel",
                                  help="Price the attention core at a measured kernel (flash2, cudnn; "
                                       "hwmodels/data/attention_kernels.toml) instead of the profile's"),
    schedule=typer.Option(None, "--schedule", help="1f1b, interleaved-1f1b, zb1p, dualpipe, dualpipev"),
    micro_batch_size=typer.Option(None, "--micro-batch-size", help="Sequences per micro-batch"),
    tokens=typer.Option(None, "--tokens", help="Training tokens, e.g. 14.8T"),
    seq_len=typer.Option(None, "--seq-len", help="Sequence length"),
    price=typer.Option(None, "--price", help="Dollars per GPU-hour"),
    calibration=typer.Option(None, "--calibration", help="Calibration profile name or JSON file"),
    precision=typer.Option(None, "--precision", help="fp8 (DeepSeek-V3 recipe) or bf16"),
    batch=typer.Option(None, "--batch", help="Constant global batch in sequences (replaces the ramp)"),
    network=typer.Option(None, "--network", help="Network model: graph (fabric graph) or alpha-beta"),
    cluster=typer.Option(None, "--cluster", help="Fabric for the graph model: a preset (deepseek-h800, dgx-h100, "
                                                 "dgx-h200, dgx-a100, roce-h100, gb200-nvl72) or a cluster .toml "
                                                 "file with a preset's keys (hwmodels/data/clusters.toml)"),
    nic_gbps=typer.Option(None, "--nic-gbps", help="NIC bandwidth per GPU in Gb/s (e.g. 200)"),
    oversubscription=typer.Option(None, "--oversubscription", help="Leaf downlink:uplink ratio (e.g. 2)"),
    order=typer.Option(None, "--order", help="Rank placement, innermost first: a permutation of tp, cp, dp, pp "
                                             "(default tp-cp-dp-pp; tp-cp-ep-dp-pp accepted); decides the links "
                                             "every collective and pipeline send uses"),
    routing=typer.Option(None, "--routing", help="MoE routing: balanced, skew:<zipf s>, file:<loads.csv|npy>"),
    redundant_experts=typer.Option(0, "--redundant-experts", help="EPLB: extra expert replicas per EP group"),
    stage_layers=typer.Option(None, "--stage-layers", help="Layers per pipeline stage, e.g. 4,4,...,5,0 "
                                                            "(default: balanced by simulated cost)"),
    recompute=typer.Option(None, "--recompute", help="Activation recomputation: none, deepseek (RMSNorm and MLA "
                                                      "up-projections), selective (attention core), full (whole layer)"),
    tp_comm_overlap=typer.Option(None, "--tp-comm-overlap/--no-tp-comm-overlap",
                                 help="Pipeline tensor-parallel collectives with their GEMMs (Megatron "
                                      "tp_comm_overlap, PyTorch AsyncTP)"),
    overlap_grad_reduce=typer.Option(None, "--overlap-grad-reduce/--no-overlap-grad-reduce",
                                     help="Reduce gradients in buckets during the last backward (Megatron-Core)"),
    overlap_param_gather=typer.Option(None, "--overlap-param-gather/--no-overlap-param-gather",
                                      help="Gather updated parameters bucket by bucket under the next forward"),
    zero_stage=typer.Option(None, "--zero-stage", help="ZeRO stage over data parallelism: 0, 1 (distributed "
                                                        "optimizer), 2 (+ gradients), 3 (FSDP: + weights)"),
)



def _count_progress(label: str, quiet: bool):
    """A done/total counter on stderr: redrawn in place on a terminal, else one line at the end."""
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if quiet or not (tty or done == total):
            return
        typer.echo(f"\r  {label} {done}/{total}", err=True, nl=done == total)

    return progress


def _wants_planned_layout(plan, model, *layout) -> bool:
    """`estimate --model M` with no plan and no layout option: the planner chooses the layout, unless the model
    has a built-in plan of its own (DeepSeek-V3's plan carries its published layout)."""
    from gpuhours.simulator.scenario import list_plans

    return (model is not None and plan is None and all(v is None for v in layout)
            and model not in list_plans())


def _scenario(plan, model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, tokens, seq_len, price,
              calibration, precision, batch, network=None, cluster=None, nic_gbps=None, oversubscription=None,
              routing=None, redundant_experts=0, stage_layers=None, recompute=None, overlap_grad_reduce=None,
              overlap_param_gather=None, zero_stage=None, cp=None, attention_kernel=None, tp_comm_overlap=None,
              order=None):
    from gpuhours.simulator.scenario import load_scenario
    from gpuhours.workloads.ops import RECOMPUTE_POLICIES

    if precision is not None and precision not in ("fp8", "bf16"):
        raise UsageError(f"precision must be fp8 or bf16, got {precision!r}")
    if recompute is not None and recompute not in RECOMPUTE_POLICIES:
        raise UsageError(f"recompute must be one of {', '.join(RECOMPUTE_POLICIES)}, got {recompute!r}")
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
                         tp_comm_overlap=tp_comm_overlap, order=order)


@app.command()
def estimate(
    model: Optional[str] = SCENARIO_OPTIONS["model"],
    gpu: Optional[str] = SCENARIO_OPTIONS["gpu"],
    gpus: Optional[int] = SCENARIO_OPTIONS["gpus"],
    pp: Optional[int] = SCENARIO_OPTIONS["pp"],
    ep: Optional[int] = SCENARIO_OPTIONS["ep"],
    tp: Optional[int] = SCENARIO_OPTIONS["tp"],
    cp: Optional[int] = SCENARIO_OPTIONS["cp"],
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
    batch: Optional[int] = SCENARIO_OPTIONS["batch"],
    network: Optional[str] = SCENARIO_OPTIONS["network"],
    cluster: Optional[str] = SCENARIO_OPTIONS["cluster"],
    nic_gbps: Optional[float] = SCENARIO_OPTIONS["nic_gbps"],
    oversubscription: Optional[float] = SCENARIO_OPTIONS["oversubscription"],
    order: Optional[str] = SCENARIO_OPTIONS["order"],
    routing: Optional[str] = SCENARIO_OPTIONS["routing"],
    redundant_experts: int = SCENARIO_OPTIONS["redundant_experts"],
    stage_layers: Optional[str] = SCENARIO_OPTIONS["stage_layers"],
    recompute: Optional[str] = SCENARIO_OPTIONS["recompute"],
    overlap_grad_reduce: Optional[bool] = SCENARIO_OPTIONS["overlap_grad_reduce"],
    overlap_param_gather: Optional[bool] = SCENARIO_OPTIONS["overlap_param_gather"],
    zero_stage: Optional[int] = SCENARIO_OPTIONS["zero_stage"],
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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
):
    """GPU-hours, days and dollars of a training run (default: DeepSeek-V3 pre-training on 2,048 H800)."""
    from gpuhours.reports.estimate_table import estimate_dict, render_estimate
    from gpuhours.simulator import comparisons
    from gpuhours.simulator.scenario import estimate as run_estimate
    from gpuhours.simulator.scenario import is_phased
    from gpuhours.workloads.memory import memory_breakdown

    with user_errors():
        for path, field in ((goodput_chart, "--goodput-chart"), (goodput_timeline, "--goodput-timeline")):
            if path is not None:
                _output_path(path, (".png", ".svg"), field)
                goodput = True
        if plan is not None and is_phased(plan):
            if goodput_timeline is not None:
                raise UsageError("--goodput-timeline: one run's timeline is drawn for single-phase plans only")
            _estimate_phased(plan, allow_oom, as_json, _goodput_config(plan) if goodput else None, goodput_chart)
            return
        goodput_config = _goodput_config(plan) if goodput else None
        layout_note = None
        if _wants_planned_layout(plan, model, pp, ep, tp, cp, vpp, schedule, micro_batch_size, stage_layers,
                                 recompute, zero_stage, tp_comm_overlap):
            from gpuhours.simulator.planner import planned_layout

            chosen, layout_note = planned_layout(model, gpu, gpus, seq_len, tokens, batch,
                                                 _count_progress("choosing a layout: simulated", as_json))
            pp, ep, tp, cp, vpp = chosen["pp"], chosen["ep"], chosen["tp"], chosen["cp"], chosen["vpp"]
            schedule, micro_batch_size, batch = chosen["schedule"], chosen["micro_batch_size"], chosen["batch"]
            recompute, zero_stage, tp_comm_overlap = chosen["recompute"], chosen["zero_stage"], chosen["tp_comm_overlap"]
        scenario = _scenario(plan, model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, tokens, seq_len, price,
                             calibration, precision, batch, network, cluster, nic_gbps, oversubscription, routing,
                             redundant_experts, stage_layers, recompute, overlap_grad_reduce,
                             overlap_param_gather, zero_stage, cp, attention_kernel, tp_comm_overlap, order)
        result = run_estimate(scenario)
        memory = memory_breakdown(scenario, result.steady.step)
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
        for line in gp.lines() if gp is not None else ():
            typer.echo(line)
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

    def progress(done, total):
        if not as_json:
            typer.echo(f"  phase {done}/{total} done", err=True)

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
                              progress=_count_progress("simulated layouts", as_json))
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
    vpp: Optional[int] = SCENARIO_OPTIONS["vpp"],
    attention_kernel: Optional[str] = SCENARIO_OPTIONS["attention_kernel"],
    tp_comm_overlap: Optional[bool] = SCENARIO_OPTIONS["tp_comm_overlap"],
    schedule: Optional[str] = SCENARIO_OPTIONS["schedule"],
    micro_batch_size: Optional[int] = SCENARIO_OPTIONS["micro_batch_size"],
    seq_len: Optional[int] = SCENARIO_OPTIONS["seq_len"],
    calibration: Optional[str] = SCENARIO_OPTIONS["calibration"],
    precision: Optional[str] = SCENARIO_OPTIONS["precision"],
    network: Optional[str] = SCENARIO_OPTIONS["network"],
    cluster: Optional[str] = SCENARIO_OPTIONS["cluster"],
    routing: Optional[str] = SCENARIO_OPTIONS["routing"],
    recompute: Optional[str] = SCENARIO_OPTIONS["recompute"],
    overlap_grad_reduce: Optional[bool] = SCENARIO_OPTIONS["overlap_grad_reduce"],
    overlap_param_gather: Optional[bool] = SCENARIO_OPTIONS["overlap_param_gather"],
    zero_stage: Optional[int] = SCENARIO_OPTIONS["zero_stage"],
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
                             attention_kernel=attention_kernel, tp_comm_overlap=tp_comm_overlap, order=order)
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

    def progress(done, total):
        if not as_json:
            typer.echo(f"\r  {done}/{total} points", err=True, nl=done == total)

    with user_errors():
        if not spec.exists():
            raise UsageError(f"spec: no such file {str(spec)!r}")
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
        typer.echo(view.head(20).to_string(index=False))
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
CLUSTER_HELP = ("Fabric preset (deepseek-h800, dgx-h100, dgx-h200, dgx-a100, roce-h100, gb200-nvl72) or a cluster "
                ".toml file with a preset's keys (hwmodels/data/clusters.toml)")
TIERS_HELP = "Force 2 (leaf/spine) or 3 (with a core tier) switch tiers; default: the preset's (auto: from the size)"


@app.command()
def collective(
    kind: str = typer.Argument(..., help="p2p, all_reduce, reduce_scatter, all_gather, all_to_all, ep_dispatch, "
                                         "ep_combine"),
    cluster: str = typer.Option("deepseek-h800", "--cluster", help=CLUSTER_HELP),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Resize the cluster to this many GPUs"),
    tiers: Optional[int] = typer.Option(None, "--tiers", help=TIERS_HELP),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Ranks in the group"),
    per_node: Optional[int] = typer.Option(None, "--per-node", help="Ranks of the group per node"),
    nbytes: Optional[str] = typer.Option(None, "--bytes", help="Buffer size, e.g. 1G or 256M"),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="EP: tokens per rank"),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="EP: hidden size"),
    top_k: int = typer.Option(8, "--top-k", help="EP: experts per token"),
    max_nodes: int = typer.Option(4, "--max-nodes", help="EP: most nodes a token may reach"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="EP payload: fp8 (dispatch) or bf16 (combine)"),
    algorithm: str = typer.Option("auto", "--algorithm", help="auto, ring, tree, hierarchical"),
    nic_gbps: Optional[float] = typer.Option(None, "--nic-gbps", help="NIC bandwidth per GPU in Gb/s"),
    oversubscription: Optional[float] = typer.Option(None, "--oversubscription", help="Leaf downlink:uplink"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Time and algorithm/bus bandwidth of one collective on a cluster's fabric graph."""
    from gpuhours.hwmodels.graph_network import GraphNetwork, collective_report
    from gpuhours.hwmodels.topology import load_cluster_preset
    from gpuhours.workloads.run import parse_count

    with user_errors():
        overrides = {}
        if gpus is not None:
            overrides["gpus"] = gpus
        if nic_gbps is not None:
            overrides["nic_bw"] = nic_gbps / 8 * 1e9
        if oversubscription is not None:
            overrides["oversubscription"] = oversubscription
        if tiers is not None:
            overrides["tiers"] = tiers
        net = GraphNetwork(load_cluster_preset(cluster, **overrides))
        size = None if nbytes is None else parse_count(nbytes.upper().replace("B", "") or "0", "bytes")
        data = collective_report(kind, net, group_size=group_size, per_node=per_node, nbytes=size, tokens=tokens,
                                 hidden=hidden, top_k=top_k, max_nodes=max_nodes, dtype=dtype, algorithm=algorithm)
    if as_json:
        _echo_json(data)
        return
    typer.echo(f"{kind} on {data['cluster']}: {data['group_size']} ranks ({data['per_node']} per node, "
               f"{data['nodes']} nodes), algorithm {data['algorithm']}")
    typer.echo(f"time {data['time_s'] * 1e3:.3f} ms  algbw {data['algbw_GBps']:.1f} GB/s  "
               f"busbw {data['busbw_GBps']:.1f} GB/s")
    if "rdma_GBps" in data:
        typer.echo(f"DeepEP-style figures: RDMA {data['rdma_GBps']:.1f} GB/s, NVLink {data['nvl_GBps']:.1f} GB/s, "
                   f"{data['mean_nodes_per_token']:.2f} nodes per token")
    if data.get("bottleneck_link"):
        typer.echo(f"bottleneck link: {data['bottleneck_link'][0]} -> {data['bottleneck_link'][1]}")


@app.command()
def topology(
    cluster: str = typer.Option("deepseek-h800", "--cluster", help=CLUSTER_HELP),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Resize the cluster to this many GPUs"),
    tiers: Optional[int] = typer.Option(None, "--tiers", help=TIERS_HELP),
    png: Optional[Path] = typer.Option(None, "--png", help="Draw a small cluster of the same kind (.png)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """GPUs, nodes, switches per tier, per-tier and bisection bandwidth of a cluster's fabric."""
    from gpuhours.hwmodels.topology import build_topology, describe, load_cluster_preset

    with user_errors():
        if png is not None:
            _output_path(png, (".png",), "--png")
        spec = load_cluster_preset(cluster, **({"gpus": gpus} if gpus else {}),
                                   **({"tiers": tiers} if tiers is not None else {}))
        info = describe(build_topology(spec))
        info["cluster"] = cluster
        if png is not None:
            from gpuhours.reports.topology_plot import draw_topology

            gpn = spec.gpus_per_node  # up to four nodes, at most 128 GPUs (one NVL72 rack)
            small = spec.with_(gpus=min(spec.gpus, max(gpn, 128 // gpn * gpn) if gpn > 32 else 4 * gpn))
            draw_topology(small, png, title=f"{cluster}: {small.gpus} of {spec.gpus} GPUs drawn")
    if as_json:
        _echo_json(info)
        return
    sw = ", ".join(f"{n} {k}" for k, n in info["switches"].items() if n)
    typer.echo(f"{cluster}: {info['gpus']} GPUs in {info['nodes']} nodes, {info['nics']} NICs; {spec.tiers} switch "
               f"tiers: {sw}")
    for tier, bw in info["tier_bandwidth_Bps"].items():
        if bw:
            typer.echo(f"  {tier:<11} {bw / 1e12:9.2f} TB/s (one direction, all links)")
    typer.echo(f"  bisection   {info['bisection_Bps'] / 1e12:9.2f} TB/s")
    if png is not None:
        typer.echo(f"wrote {png}")


# ------------------------------------------------------------------------------------------------- routing
@app.command()
def routing(
    model: str = typer.Option("deepseek-v3", "--model", "-m", help="MoE preset or model file"),
    ep: int = typer.Option(64, "--ep", help="Expert-parallel size"),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    tokens: int = typer.Option(4096, "--tokens", help="Tokens per EP rank (one micro-batch)"),
    skew: float = typer.Option(0.0, "--skew", help="Zipf exponent of expert popularity (0: uniform)"),
    routing_: Optional[str] = typer.Option(None, "--routing", help="balanced, skew:<s> or file:<path> "
                                                                  "(overrides --skew)"),
    steps: int = typer.Option(0, "--steps", help="Simulate this many steps of bias balancing"),
    gamma: float = typer.Option(0.001, "--gamma", help="Bias update speed (DeepSeek-V3: 0.001)"),
    redundant: int = typer.Option(0, "--redundant", help="EPLB: redundant expert slots to add"),
    seed: int = typer.Option(0, "--seed"),
    detail: bool = typer.Option(False, "--detail", help="Price every rank of one EP group: stragglers and waits"),
    png: Optional[Path] = typer.Option(None, "--png", help="Plot imbalance per balancing step (.png)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Expert load imbalance of one micro-batch, its bias balancing over steps, and what EPLB recovers."""
    from gpuhours.simulator.scenario import resolve_model
    from gpuhours.workloads.routing import EPGroup, RoutingConfig, ep_rank_loads, route, simulate_balancing

    with user_errors():
        if png is not None:
            _output_path(png, (".png",), "--png")
            if steps < 1:
                raise UsageError("--png plots the balancing steps: give --steps N (N >= 1)")
        spec = resolve_model(model)
        if spec.moe is None:
            raise UsageError(f"model {spec.name!r} has no experts: routing needs an MoE model")
        choice = routing_ or (f"skew:{skew}" if skew else "skew:0")
        loads = ep_rank_loads(spec.moe, ep, gpus_per_node, tokens, choice, seed=seed)
        data = {"model": spec.name, "ep": ep, "tokens_per_rank": tokens, **loads.summary()}
        if steps:
            from rich.progress import Progress

            config = RoutingConfig(skew="zipf", value=skew, seed=seed)
            with Progress(transient=True, console=_stderr_console()) as bar:
                task = bar.add_task("bias balancing", total=steps)

                def progress(done, total):
                    bar.update(task, completed=done, total=total, description=f"bias balancing: step {done}")

                stats = simulate_balancing(spec.moe, EPGroup(ep, gpus_per_node), tokens, config, steps, gamma,
                                           progress=progress)
            data["balancing"] = [{"step": b.step, "imbalance": b.imbalance} for b in stats]
            if png is not None:
                from gpuhours.reports.routing_plot import draw_balancing

                draw_balancing(stats, png, title=f"{spec.name}: EP{ep}, Zipf {skew}, gamma {gamma}")
        if redundant:
            from gpuhours.workloads.eplb import balance_experts

            r = route(spec.moe, EPGroup(ep, gpus_per_node), tokens,
                      RoutingConfig(skew="zipf" if skew else "uniform", value=skew, seed=seed))
            plan = balance_experts(r.expert_rows, ep, gpus_per_node, redundant)
            data["eplb"] = {"redundant": redundant, "imbalance_before": plan.imbalance_before,
                            "imbalance_after": plan.imbalance_after}
        if detail:
            from gpuhours.simulator.ep_detail import ep_group_detail
            from gpuhours.simulator.scenario import load_scenario

            data["detail"] = ep_group_detail(load_scenario(model=model, ep=ep, routing=choice))
    if as_json:
        _echo_json(data)
        return
    typer.echo(f"{spec.name} EP{ep}, {tokens} tokens per rank, routing {data['routing']}")
    typer.echo(f"imbalance (max/mean rows per rank) {data['imbalance']:.3f}; nodes per token mean "
               f"{data['mean_nodes_per_token']:.2f}, max {data['max_nodes_per_token']}")
    if steps:
        traj = data["balancing"]
        picks = sorted({0, len(traj) // 4, len(traj) // 2, 3 * len(traj) // 4, len(traj) - 1})
        typer.echo("balancing: " + ", ".join(f"step {traj[i]['step']}: {traj[i]['imbalance']:.3f}" for i in picks))
    if redundant:
        e = data["eplb"]
        typer.echo(f"EPLB with {redundant} redundant experts: imbalance {e['imbalance_before']:.3f} -> "
                   f"{e['imbalance_after']:.3f}")
    if detail:
        d = data["detail"]
        busiest = sorted(d["ranks"], key=lambda r: -r["mlp_forward_ms"])[:4]
        typer.echo(f"layer {d['layer']} MoE forward: slowest rank {d['slowest_rank']} {d['slowest_ms']:.2f} ms; "
                   f"the others wait {d['mean_wait_ms']:.2f} ms on average in the combine")
        typer.echo("  busiest ranks: " + ", ".join(f"{r['rank']} ({r['rows']:.0f} rows, {r['mlp_forward_ms']:.2f} ms)"
                                                   for r in busiest))
    if png is not None:
        typer.echo(f"wrote {png}")


# ------------------------------------------------------------------------------------------------- calibration
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


def _write_atomically(path: Path, save) -> None:
    """Write through a temporary file beside `path`, so a failure leaves nothing half-written."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix kept: writers pick formats by it
    try:
        save(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


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


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
