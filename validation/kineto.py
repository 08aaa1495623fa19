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

Per rank and step (`ProfilerStep#N` annotations when the trace has them: GPU-side ones by kernel start, else
CPU-side ones by the time of the kernel's launch call, matched by args.correlation; without them the whole
trace is one step):
- span: last kernel end - first kernel start of the step;
- class time: summed kernel durations per class (and per stream: `stream_classes`);
- compute busy (union of gemm, attention, elementwise and other kernels), comm busy (union of nccl and deepep
  kernels), their overlap (compute + comm - union of both) and the exposed comm (comm - overlap).
A rank's figures are the means over its steps; the trace's (`KinetoMeasure`) the mean over ranks, with the step
time the longest rank's mean span (a synchronous step ends when its slowest rank does).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from gpuhours.validation.trace import _read_json
from gpuhours.validation.trace_summary import interval_union

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
            kernels.append(Kernel(name, classify_kernel(name, e["cat"]), int(args.get("stream", e.get("tid", 0))),
                                  (_num(e, "ts") - origin) * 1e-6, dur, step))
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


# ----------------------------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class StepFigures:
    step: int
    span: float                                  # s
    classes: dict[str, float]                    # class -> summed kernel time (s)
    stream_classes: dict[int, dict[str, float]]  # stream -> class -> summed kernel time (s)
    compute_busy: float
    comm_busy: float
    overlap: float                               # compute and comm kernels running at once (s)
    kernels: dict[str, int] | None = None        # class -> number of kernels

    @property
    def exposed_comm(self) -> float:
        return self.comm_busy - self.overlap


def step_figures(kernels: Iterable[Kernel], step: int) -> StepFigures:
    """Span, class times, per-stream class times and compute/comm overlap of one step's kernels."""
    ks = [k for k in kernels if k.step == step]
    classes: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    streams: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for k in ks:
        classes[k.kernel_class] += k.duration
        counts[k.kernel_class] += 1
        streams[k.stream][k.kernel_class] += k.duration
    compute = [(k.start, k.end) for k in ks if family(k.kernel_class) in COMPUTE_FAMILIES]
    comm = [(k.start, k.end) for k in ks if family(k.kernel_class) in COMM_FAMILIES]
    c, m = interval_union(compute), interval_union(comm)
    both = interval_union(compute + comm)
    return StepFigures(step, max(k.end for k in ks) - min(k.start for k in ks), _ordered(classes),
                       {s: _ordered(v) for s, v in sorted(streams.items())}, c, m, c + m - both, _ordered(counts))


def _ordered(classes: dict[str, float]) -> dict[str, float]:
    return {c: classes[c] for c in KERNEL_CLASSES if c in classes}


def _mean_of(per_class: list[dict[str, float]]) -> dict[str, float]:
    """The mean of class -> figure tables (a class absent from one counts 0 there)."""
    acc: dict[str, float] = defaultdict(float)
    for d in per_class:
        for c, v in d.items():
            acc[c] += v / len(per_class)
    return _ordered(acc)


@dataclass(frozen=True)
class RankFigures:
    label: str
    rank: int | None
    steps: tuple[StepFigures, ...]

    def mean(self, attr: str) -> float:
        return sum(getattr(s, attr) for s in self.steps) / len(self.steps)

    @property
    def classes(self) -> dict[str, float]:
        """Mean kernel time per step per class (s)."""
        return _mean_of([s.classes for s in self.steps])

    @property
    def kernels(self) -> dict[str, float]:
        """Mean number of kernels per step per class."""
        return _mean_of([s.kernels or {} for s in self.steps])

    @property
    def stream_classes(self) -> dict[int, dict[str, float]]:
        """Mean kernel time per step per stream and class (s)."""
        streams = sorted({st for s in self.steps for st in s.stream_classes})
        return {st: _mean_of([s.stream_classes.get(st, {}) for s in self.steps]) for st in streams}


@dataclass(frozen=True)
class KinetoMeasure:
    ranks: tuple[RankFigures, ...]
    device_name: str | None
    sm_count: int | None
    files: tuple[str, ...]
    backend: str | None
    world_size: int | None

    @property
    def step_time(self) -> float:
        """The longest rank's mean step span (s)."""
        return max(r.mean("span") for r in self.ranks)

    @property
    def classes(self) -> dict[str, float]:
        """Per class: mean over ranks of the mean kernel time per step (s)."""
        return _mean_of([r.classes for r in self.ranks])

    @property
    def kernels(self) -> dict[str, float]:
        """Per class: mean over ranks of the mean number of kernels per step."""
        return _mean_of([r.kernels for r in self.ranks])

    def families(self) -> dict[str, float]:
        acc: dict[str, float] = defaultdict(float)
        for c, t in self.classes.items():
            acc[family(c)] += t
        return dict(acc)

    def mean(self, attr: str) -> float:
        return sum(r.mean(attr) for r in self.ranks) / len(self.ranks)

    @property
    def kernel_time(self) -> float:
        return sum(self.classes.values())

    def to_dict(self) -> dict:
        ms = lambda s: round(s * 1e3, 6)  # noqa: E731
        return {
            "files": list(self.files), "device": self.device_name, "sm_count": self.sm_count,
            "backend": self.backend, "world_size": self.world_size,
            "step_time_ms": ms(self.step_time), "kernel_ms": ms(self.kernel_time),
            "class_ms": {c: ms(t) for c, t in self.classes.items()},
            "class_kernels": {c: round(n, 4) for c, n in self.kernels.items()},
            "family_ms": {f: ms(t) for f, t in self.families().items()},
            "compute_busy_ms": ms(self.mean("compute_busy")), "comm_busy_ms": ms(self.mean("comm_busy")),
            "overlap_ms": ms(self.mean("overlap")), "exposed_comm_ms": ms(self.mean("exposed_comm")),
            "ranks": [{"label": r.label, "rank": r.rank, "steps": [s.step for s in r.steps],
                       "step_span_ms": [ms(s.span) for s in r.steps],
                       "class_ms": {c: ms(t) for c, t in r.classes.items()},
                       "stream_class_ms": {str(st): {c: ms(t) for c, t in cs.items()}
                                           for st, cs in r.stream_classes.items()}}
                      for r in self.ranks],
        }


def measure(ranks: Sequence[RankTrace]) -> KinetoMeasure:
    """Per-rank, per-step figures of loaded ranks (see the module docstring)."""
    if not ranks:
        raise ValueError("trace: no ranks to measure")
    figures = tuple(RankFigures(r.label, r.rank, tuple(step_figures(r.kernels, s) for s in r.steps)) for r in ranks)
    names = {r.device_name for r in ranks if r.device_name}
    if len(names) > 1:
        raise ValueError(f"trace: ranks ran on different GPUs ({', '.join(sorted(names))}); give one GPU type")
    sms = next((r.sm_count for r in ranks if r.sm_count), None)
    return KinetoMeasure(figures, names.pop() if names else None, sms,
                         tuple(dict.fromkeys(r.label.split(":")[0] for r in ranks)),
                         next((r.backend for r in ranks if r.backend), None),
                         next((r.world_size for r in ranks if r.world_size), None))


def measure_files(paths: Sequence[str | Path]) -> KinetoMeasure:
    return measure(load_ranks(paths))


def kernel_table(ranks: Sequence[RankTrace]) -> dict[str, Any]:
    """Distinct kernel names per class with their count (for checking the classification of a new trace)."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in ranks:
        for k in r.kernels:
            table[k.kernel_class][k.name] += 1
    return {c: dict(v) for c, v in table.items()}
