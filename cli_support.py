"""What every gpuhours command shares: the app and its one-line errors, JSON output, output paths and
atomic writes, pictures, progress, and the scenario options."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from typer.core import TyperGroup

from gpuhours.cli_lazy_coercion import install as _defer_option_coercion

_defer_option_coercion()  # typer's pydantic coercion only for options given a value (start-up time)


def _is_usage_error(exc: BaseException) -> bool:
    """Click's exception protocol (typer vendors click in recent versions, so the classes are matched by what
    they offer, not imported): a message to show and an exit status."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def usage_line(exc) -> str:
    """A command-line parsing error as one line naming the option: "--pp: 'abc' is not a valid integer."."""
    param = getattr(exc, "param", None)
    text = " ".join(exc.format_message().split())
    if text.startswith("Got unexpected extra argument") and text.endswith(")"):  # click names no field here
        extra = text[len("Got unexpected extra argument(s) ("):-1] if "(s) (" in text else text
        cmd = getattr(getattr(exc, "ctx", None), "command_path", None) or "the command"
        return f"arguments: {extra!r} is more than {cmd} takes (see {cmd} --help)"
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
                                       "hwmodels/data/attention_kernels.toml) instead of the profile's; "
                                       "megatron-unfused: Megatron-LM 2021-22's unfused s x s core"),
    schedule=typer.Option(None, "--schedule", help="1f1b, interleaved-1f1b, zb1p, dualpipe, dualpipev"),
    micro_batch_size=typer.Option(None, "--micro-batch-size", help="Sequences per micro-batch"),
    tokens=typer.Option(None, "--tokens", help="Training tokens, e.g. 14.8T"),
    seq_len=typer.Option(None, "--seq-len", help="Sequence length"),
    price=typer.Option(None, "--price", help="Dollars per GPU-hour"),
    calibration=typer.Option(None, "--calibration", help="Calibration profile name or JSON file"),
    precision=typer.Option(None, "--precision", help="fp8 (DeepSeek-V3 recipe) or bf16"),
    host_dispatch=typer.Option(None, "--host-dispatch",
                               help="How the host launches kernels: eager (PyTorch eager, default: 2 us GPU gap "
                                    "per kernel and the host's 10 us per kernel bounds an instruction), graphs "
                                    "(CUDA graphs: the gap only) or none (no launch overhead); hwmodels/launch.py"),
    elementwise_kernels=typer.Option(None, "--elementwise-kernels",
                                     help="fused (default: one kernel per norm, RoPE, activation) or eager "
                                          "(unfused PyTorch ops and their autograd kernels, torchtitan's Llama "
                                          "without torch.compile); workloads/eager_ops.py"),
    fp8_gemm_kernels=typer.Option(None, "--fp8-gemm-kernels",
                                  help="The FP8 GEMM kernels the run uses: deepgemm or deepseek-cutlass (DeepSeek's "
                                       "internal kernels, the DeepSeek-V3 plan's); the profile's FP8 points are "
                                       "carried over at DeepGEMM's published speed-ups; hwmodels/gemm_kernels.py"),
    fp8_recipe=typer.Option(None, "--fp8-recipe", help="FP8 scaling: blockwise (DeepSeek-V3, default), delayed "
                                                       "or current (per-tensor, Transformer Engine / torchao, "
                                                       "casts fused into their producers), tensorwise (torchao's "
                                                       "Float8Linear: as current, weights cast again in every "
                                                       "pass), or mxfp8 (OCP MX: "
                                                       "1x32 E8M0 scales, Blackwell GPUs only; "
                                                       "hwmodels/mxfp8.py)"),
    comm_sms=typer.Option(None, "--comm-sms", help="SMs DeepEP's all-to-all kernels run on, reserved beside "
                                                   "compute under dualpipe / dualpipev; 0 prices the all-to-alls "
                                                   "at wire time (default: the plan's, 20 for DeepSeek-V3)"),
    batch=typer.Option(None, "--batch", help="Constant global batch in sequences (replaces the ramp)"),
    network=typer.Option(None, "--network", help="Network model: graph (fabric graph) or alpha-beta"),
    cluster=typer.Option(None, "--cluster", help="Fabric for the graph model: a preset (deepseek-h800, dgx-h100, "
                                                 "dgx-h200, dgx-a100, roce-h100, gb200-nvl72) or a cluster .toml "
                                                 "file with a preset's keys (hwmodels/data/clusters.toml)"),
    nic_gbps=typer.Option(None, "--nic-gbps", help="NIC bandwidth per GPU in Gb/s (e.g. 200)"),
    oversubscription=typer.Option(None, "--oversubscription", help="Leaf downlink:uplink ratio (e.g. 2)"),
    link_sharing=typer.Option(None, "--link-sharing",
                              help="How a phase's flows share the graph fabric's links: bottleneck (default: the "
                                   "most loaded link's bytes / capacity) or max-min (fluid max-min fair sharing, "
                                   "rates recomputed as flows end; hwmodels/link_sharing.py)"),
    tiers=typer.Option(None, "--tiers", help="Switch tiers of the graph fabric: 2 (leaf/spine) or 3 (with a "
                                             "core); default: chosen from the cluster's size"),
    order=typer.Option(None, "--order", help="Rank placement, innermost first: a permutation of tp, cp, dp, pp "
                                             "(default tp-cp-dp-pp; tp-cp-ep-dp-pp accepted); decides the links "
                                             "every collective and pipeline send uses"),
    capacity_factor=typer.Option(None, "--capacity-factor", help="MoE: rows an EP rank keeps over its mean "
                                                                 "(e.g. 1.25); the rest are dropped. Default: "
                                                                 "dropless"),
    routing=typer.Option(None, "--routing", help="MoE routing: balanced, skew:<zipf s>, file:<loads.csv|npy>"),
    etp=typer.Option(None, "--etp", help="MoE: expert tensor parallelism, each expert's weights split over etp "
                                         "ranks (Megatron-Core expert_tensor_parallel_size; ep x etp must divide "
                                         "dp x tp x cp). Default 1"),
    moe_dispatch=typer.Option(None, "--moe-dispatch", help="MoE token dispatcher: alltoall (default) or "
                                                           "allgather (every rank gathers the ep x etp block's "
                                                           "tokens, Megatron-Core's allgather dispatcher)"),
    max_nodes_per_token=typer.Option(None, "--max-nodes-per-token",
                                     help="MoE node-limited routing: nodes a token may be sent to (0: unlimited; "
                                          "default: the model's rule, DeepSeek-V3 4)"),
    redundant_experts=typer.Option(0, "--redundant-experts", help="EPLB: extra expert replicas per EP group"),
    stage_layers=typer.Option(None, "--stage-layers", help="Layers per pipeline stage, e.g. 4,4,...,5,0 "
                                                            "(default: balanced by simulated cost)"),
    pipeline_layout=typer.Option(None, "--pipeline-layout",
                                 help="What each pipeline stage holds, Megatron-Core's layout notation: E embedding, "
                                      "t layer, m MTP module, L head and loss, '|' between stages, x*n and (...)*n "
                                      "repeats, e.g. 'E|t*3|t*4|t*4|t*3,L' (sets the layers per stage)"),
    recompute=typer.Option(None, "--recompute", help="Activation recomputation: none, deepseek (RMSNorm and MLA "
                                                      "up-projections), selective (attention core), full (whole layer), "
                                                      "torchtitan-op (torchtitan's op-level SAC), "
                                                      "full:N (first N layers of every pipeline stage), or "
                                                      "selective:<modules> from core_attn, layernorm, mla_up_proj, "
                                                      "mlp, moe_act, moe, shared_experts (e.g. "
                                                      "selective:core_attn,layernorm)"),
    cp_comm=typer.Option(None, "--cp-comm", help="Context-parallel K/V exchange: all_gather (default; gathered "
                                                   "before the attention core), ring (ring attention: P2P K/V "
                                                   "blocks under the core's blocks) or torch (PyTorch's "
                                                   "context_parallel, late 2024: K/V at the query heads "
                                                   "all-gathered under the diagonal block, fp32 dK/dV ring "
                                                   "and merges)"),
    tp_comm_overlap=typer.Option(None, "--tp-comm-overlap/--no-tp-comm-overlap",
                                 help="Pipeline tensor-parallel collectives with their GEMMs (Megatron "
                                      "tp_comm_overlap, PyTorch AsyncTP)"),
    tp_comm_overlap_impl=typer.Option(None, "--tp-comm-overlap-impl",
                                      help="Who runs --tp-comm-overlap: asynctp (default; PyTorch AsyncTP, copy "
                                           "engines, GEMMs keep every SM) or te-userbuffers (Megatron-Core with "
                                           "Transformer Engine's userbuffers: pipeline/bulk overlaps run their "
                                           "GEMM on SMs - 16; needs sequence parallelism)"),
    sequence_parallel=typer.Option(None, "--sequence-parallel/--no-sequence-parallel",
                                   help="Tensor parallelism with sequence parallelism (norms and element-wise work "
                                        "on 1/tp of the sequence, all-gather / reduce-scatter around each block) "
                                        "or without (all-reduce after each block; the default is on)"),
    reshard_after_forward=typer.Option(None, "--reshard-after-forward/--no-reshard-after-forward",
                                       help="FSDP (--zero-stage 3): free the gathered parameters after the forward "
                                            "and gather them again for the backward (default on)"),
    dp_bucket_params=typer.Option(None, "--dp-bucket-params", help="Parameters per data-parallel bucket with "
                                                                   "--overlap-grad-reduce / --overlap-param-gather "
                                                                   "(0: Megatron-Core's default, max(40M, 1M x dp))"),
    overlap_grad_reduce=typer.Option(None, "--overlap-grad-reduce/--no-overlap-grad-reduce",
                                     help="Reduce gradients in buckets during the last backward (Megatron-Core)"),
    overlap_param_gather=typer.Option(None, "--overlap-param-gather/--no-overlap-param-gather",
                                      help="Gather updated parameters bucket by bucket under the next forward"),
    zero_stage=typer.Option(None, "--zero-stage", help="ZeRO stage over data parallelism: 0, 1 (distributed "
                                                        "optimizer), 2 (+ gradients), 3 (FSDP: + weights)"),
    grad_reduce_dtype=typer.Option(None, "--grad-reduce-dtype",
                                   help="Dtype of data-parallel gradient reduction and accumulation: fp32 or bf16 "
                                        "(Megatron-Core grad_reduce_in_fp32; default: the memory recipe's, fp32)"),
    ramp_micro_batch_size=typer.Option(None, "--ramp-micro-batch-size",
                                       help="Micro-batch size switches along the run, TOKENS:SIZE pairs, e.g. "
                                            "200B:2,1T:4 (each size simulated and memory-checked)"),
)



def _count_progress(label: str, quiet: bool):
    """A done/total counter on stderr: redrawn in place on a terminal, else one line at the end."""
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if quiet or not (tty or done == total):
            return
        typer.echo(f"\r  {label} {done}/{total}", err=True, nl=done == total)

    return progress


def _write_atomically(path: Path, save) -> None:
    """Write through a temporary file beside `path`, so a failure leaves nothing half-written."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix kept: writers pick formats by it
    try:
        save(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
