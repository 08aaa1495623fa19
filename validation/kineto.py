"""Read any model's PyTorch-profiler (Kineto / Chrome) trace: GPU kernels by class, per rank and per step.

Unlike `validation.trace` (DeepSeek's annotated DualPipe pair), nothing here assumes a model or annotations.

Input: one or several trace files; every GPU with device events in a file is one rank (a file per rank, as
`torch.profiler.tensorboard_trace_handler` writes them, or several GPUs merged into one file as separate pids).
Device events are Kineto's cat "kernel", "gpu_memcpy" and "gpu_memset" (ts, dur in microseconds; the GPU is
args.device, else pid; the stream args.stream, else tid).

Kernel classes (`KERNEL_RULES`, regex searched in the kernel name, first match wins), each in a family:
- gemm_fp8 / gemm_bf16 (family gemm): cuBLAS (`*gemm*`, `sm90_xmma*`, `nvjet*`), CUTLASS (`cutlass*`), DeepGEMM
  (`fp8_gemm*`, `deep_gemm`), Triton matmul templates (`triton_tem_*mm*`); FP8 when the name says so (e4m3,
  e5m2, fp8), else BF16 (Assumption: an FP8 GEMM whose name carries no FP8 marker is counted as BF16);
- attn_fwd / attn_bwd (attention): FlashAttention 2/3 (`flash*`), cuDNN / xFormers / TE fused attention (`fmha*`,
  `*sdpa*`, `*attn*`, `*attention*`); backward when the name says bwd, backward, bprop or dgrad;
- nccl_all_reduce, nccl_reduce_scatter, nccl_all_gather, nccl_send_recv, nccl_other (nccl): `ncclDevKernel_<Op>`
  and `ncclKernel_<Op>` (Send, Recv and SendRecv are point-to-point; NCCL runs all-to-all as SendRecv);
- deepep_dispatch, deepep_combine, deepep_notify (deepep): kernels in DeepEP's `deep_ep::` namespaces;
- elementwise (elementwise): Triton (`triton_*`), ATen (`elementwise*`, `vectorized_elementwise*`, `at::native`),
  norms, reductions, softmax, activations, casts, copies, optimizer (`multi_tensor_apply`);
- memcpy, memset (memcpy): by event category; other (other): anything else.

Per rank and step figures (span, class times, busy and overlap): `validation.kineto_figures`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from gpuhours.validation.trace import _read_json

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
STEP_ANNOTATION = re.compile(r"^ProfilerStep#(\d+)$")
STEP_CATEGORIES = ("user_annotation", "gpu_user_annotation", "cpu_op", "python_function")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")

_FP8 = r"(?i:e4m3|e5m2|fp8|f8f6f4)"
KERNEL_RULES: tuple[tuple[str, str], ...] = (
    (r"^nccl(?:Dev)?Kernel_AllReduce", "nccl_all_reduce"),
    (r"^nccl(?:Dev)?Kernel_ReduceScatter", "nccl_reduce_scatter"),
    (r"^nccl(?:Dev)?Kernel_AllGather", "nccl_all_gather"),
    (r"^nccl(?:Dev)?Kernel_(?:SendRecv|Send|Recv)", "nccl_send_recv"),
    (r"^nccl(?:Dev)?Kernel_", "nccl_other"),
    (r"deep_ep::\w+::(?:notify_dispatch|notify_combine|cached_notify|get_dispatch_layout)", "deepep_notify"),
    (r"deep_ep::\w+::\w*dispatch", "deepep_dispatch"),
    (r"deep_ep::\w+::\w*combine", "deepep_combine"),
    (r"(?i:(?:flash|fmha|sdpa|attn|attention|mha)\w*?(?:bwd|backward|bprop|dgrad))"
     r"|(?i:(?:bwd|backward|bprop)\w*(?:flash|fmha|attn|attention))", "attn_bwd"),
    (r"(?i:flash|fmha|sdpa|_attn_|attn_fwd|attention|mha_fwd)", "attn_fwd"),
    (rf"(?i:fp8_gemm|deep_gemm|gemm\w*{_FP8}|{_FP8}\w*gemm|xmma\w*{_FP8}|nvjet\w*{_FP8}|cutlass\w*{_FP8}"
     rf"|{_FP8}\w*cutlass)", "gemm_fp8"),
    (r"(?i:gemm|cutlass|xmma|nvjet|cublas|wgmma|s16816|h16816|matmul|triton_tem_\w*mm)", "gemm_bf16"),
    (r"(?i:triton_|elementwise|vectorized|at::native|norm|reduce|softmax|silu|gelu|swiglu|rotary|rope|cast|"
     r"copy|fill|cat_|index|multi_tensor_apply|adam|cross_entropy|embedding|transpose|quant|topk|sort|scatter|"
     r"gather|cunn_|unrolled)", "elementwise"),
)
KERNEL_CLASSES = ("gemm_fp8", "gemm_bf16", "attn_fwd", "attn_bwd", "elementwise",
                  "nccl_all_reduce", "nccl_reduce_scatter", "nccl_all_gather", "nccl_send_recv", "nccl_other",
                  "deepep_dispatch", "deepep_combine", "deepep_notify", "memcpy", "memset", "other")
_RULES = tuple((re.compile(p), c) for p, c in KERNEL_RULES)


def family(kernel_class: str) -> str:
    """The family of a kernel class: gemm, attention, nccl, deepep, elementwise, memcpy or other."""
    if kernel_class.startswith("gemm_"):
        return "gemm"
    if kernel_class.startswith("attn_"):
        return "attention"
    if kernel_class.startswith(("nccl_", "deepep_")):
        return kernel_class.split("_", 1)[0]
    if kernel_class in ("memcpy", "memset"):
        return "memcpy"
    return kernel_class


COMPUTE_FAMILIES = ("gemm", "attention", "elementwise", "other")
COMM_FAMILIES = ("nccl", "deepep")


def classify_kernel(name: str, cat: str = "kernel") -> str:
    """The class (KERNEL_CLASSES) of a device event from its category and kernel name."""
    if cat == "gpu_memcpy":
        return "memcpy"
    if cat == "gpu_memset":
        return "memset"
    for pattern, kernel_class in _RULES:
        if pattern.search(name):
            return kernel_class
    return "other"


@dataclass(frozen=True)
class Kernel:
    name: str
    kernel_class: str
    stream: int
    start: float     # seconds from the rank's first device event
    duration: float  # seconds
    step: int        # ProfilerStep number, -1 without step annotations
    launch: float | None = None  # start of its launch call (s from the rank's first device event), None unknown

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class RankTrace:
    label: str                      # "file.json" or "file.json:device"
    rank: int | None                # distributedInfo.rank (one GPU per file), else None
    device_name: str | None         # deviceProperties name
    sm_count: int | None
    kernels: tuple[Kernel, ...]     # sorted by start; only those inside a step when steps are annotated
    steps: tuple[int, ...]          # step numbers; (-1,) when the trace has no step annotations
    outside_steps: int              # device events outside every annotated step (dropped)
    backend: str | None = None
    world_size: int | None = None


def _num(e: dict, key: str) -> float:
    v = float(e[key])
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError
    return v


def load_ranks(paths: Sequence[str | Path]) -> list[RankTrace]:
    """Every rank (GPU with device events) of the given trace files. ValueError naming the file and field."""
    if not paths:
        raise ValueError("trace: give at least one trace file")
    ranks: list[RankTrace] = []
    for path in paths:
        ranks += _load_file(Path(path))
    return ranks


def _load_file(path: Path) -> list[RankTrace]:
    try:
        doc, _ = _read_json(path)
    except ValueError as exc:  # named "path" there; here the CLI argument is the trace
        raise ValueError(f"trace: {str(exc).removeprefix('path: ')}") from None
    if isinstance(doc, list):
        doc = {"traceEvents": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise ValueError(f"trace: {path.name!r} has no traceEvents list (not a Chrome trace)")
    device_events: dict[int, list[dict]] = defaultdict(list)
    steps_gpu: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    steps_cpu: list[tuple[int, float, float]] = []
    launches: dict[int, float] = {}
    try:
        for e in doc["traceEvents"]:
            if not isinstance(e, dict) or e.get("ph") != "X":
                continue
            cat, args = e.get("cat"), e.get("args") if isinstance(e.get("args"), dict) else {}
            if cat in DEVICE_CATEGORIES:
                device_events[int(args.get("device", e.get("pid", 0)))].append(e)
            elif cat in LAUNCH_CATEGORIES and args.get("correlation") is not None:
                launches[int(args["correlation"])] = _num(e, "ts")
            elif cat in STEP_CATEGORIES:
                m = STEP_ANNOTATION.match(str(e.get("name", "")))
                if m:
                    item = (int(m.group(1)), _num(e, "ts"), _num(e, "ts") + _num(e, "dur"))
                    if cat == "gpu_user_annotation":
                        steps_gpu[int(e.get("pid", 0))].append(item)
                    else:
                        steps_cpu.append(item)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ValueError(f"traceEvents: {path.name!r} has events without numeric ts/dur/device/correlation") from None
    kernels = {d: [e for e in evs if e.get("cat") == "kernel"] for d, evs in device_events.items()}
    if not any(kernels.values()):
        raise ValueError(f"trace: {path.name!r} has no GPU kernels (cat \"kernel\"); profile with "
                         f"ProfilerActivity.CUDA")
    props = [p for p in doc.get("deviceProperties") or [] if isinstance(p, dict)]
    info = doc.get("distributedInfo") if isinstance(doc.get("distributedInfo"), dict) else {}
    out = []
    for device in sorted(d for d, k in kernels.items() if k):
        prop = next((p for p in props if p.get("id") == device), props[0] if len(props) == 1 else {})
        steps = sorted(steps_gpu.get(device) or steps_cpu, key=lambda s: s[1])
        out.append(_rank(path, device, len(kernels) > 1, device_events[device], steps,
                         bool(steps_gpu.get(device)), launches, prop, info))
    return out


def _rank(path: Path, device: int, several: bool, events: list[dict], steps: list[tuple[int, float, float]],
          on_gpu: bool, launches: dict[int, float], prop: dict, info: dict) -> RankTrace:
    def step_of(e: dict) -> int:
        if not steps:
            return -1
        corr = (e.get("args") or {}).get("correlation")
        t = _num(e, "ts") if on_gpu or corr is None or int(corr) not in launches else launches[int(corr)]
        for number, start, end in steps:
            if start <= t < end:
                return number
        return -2  # outside every step

    try:
        origin = min(_num(e, "ts") for e in events)
        kernels, outside = [], 0
        for e in events:
            dur = _num(e, "dur") * 1e-6
            if dur < 0:
                raise ValueError
            step = step_of(e)
            if step == -2:
                outside += 1
                continue
            args = e.get("args") or {}
            name = str(e.get("name", ""))
            call = launches.get(int(args["correlation"])) if args.get("correlation") is not None else None
            kernels.append(Kernel(name, classify_kernel(name, e["cat"]), int(args.get("stream", e.get("tid", 0))),
                                  (_num(e, "ts") - origin) * 1e-6, dur, step,
                                  None if call is None else (call - origin) * 1e-6))
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ValueError(f"traceEvents: {path.name!r} device {device}: events need finite ts, dur >= 0 and an "
                         f"integer stream") from None
    if not kernels:
        raise ValueError(f"trace: {path.name!r} device {device} has no device events inside its ProfilerStep "
                         f"annotations")
    kernels.sort(key=lambda k: (k.start, k.stream))
    rank = info.get("rank")
    sms = prop.get("numSms")
    return RankTrace(
        label=f"{path.name}:{device}" if several else path.name,
        rank=int(rank) if isinstance(rank, int) and not several else None,
        device_name=str(prop["name"]) if prop.get("name") else None,
        sm_count=int(sms) if isinstance(sms, int) else None,
        kernels=tuple(kernels), steps=tuple(sorted({k.step for k in kernels})), outside_steps=outside,
        backend=info.get("backend"), world_size=info.get("world_size"))


def kernel_table(ranks: Sequence[RankTrace]) -> dict[str, Any]:
    """Distinct kernel names per class with their count (for checking the classification of a new trace)."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in ranks:
        for k in r.kernels:
            table[k.kernel_class][k.name] += 1
    return {c: dict(v) for c, v in table.items()}
