"""Import a measured PyTorch-profiler (Kineto) trace: kernels by stream, op class and annotated phase.

A Kineto Chrome trace holds device events (cat "kernel", "gpu_memcpy", "gpu_memset"; ts/dur in
microseconds, tid = CUDA stream), CPU-side launch calls (cat "cuda_runtime"/"cuda_driver") that share
`args.correlation` with the device event they launched, and user annotations (record_function ranges:
cat "user_annotation" on CPU threads, "gpu_user_annotation" on streams).

Figures (all SI, seconds inside; `TraceSummary.to_dict` gives milliseconds):
- span: last device-event end - first device-event start;
- busy time of a stream: length of the union of its event intervals (overlaps counted once);
- per op class: count and summed duration (classes from `CLASS_RULES`, first match wins);
- per phase (annotation name): each device event belongs to the innermost annotation that contains it --
  GPU annotations on its stream when the trace has them, else the CPU annotation that contains its launch
  call (same thread first, else any thread of the process: autograd launches backward kernels from its
  own thread while the annotating thread waits). A phase instance lasts from its first event start to its
  last event end.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


SCHEMA = "gpuhours.calibration/1"
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
CPU_ANNOTATION = "user_annotation"
GPU_ANNOTATION = "gpu_user_annotation"
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
# Annotations the profiler adds on its own; never a phase.
IGNORED_ANNOTATION = re.compile(r"^ProfilerStep#")
# The phases DualPipe's overlapped F&B pair annotates (DeepSeek profile-data); listed first in summaries.
KNOWN_PHASES = (
    "attn(F)", "mlp(F)", "attn(B)", "mlp(B)", "attn(W)", "mlp(W)",
    "dispatch(F)", "combine(F)", "dispatch(B)", "combine(B)",
)

# Op classes of device events: ordered (regex searched in the kernel name, class); first match wins.
# Written from the kernel names of profile-data/train.json (DeepEP, DeepSeek's FP8 grouped_gemm library,
# FlashAttention-3, cuBLAS, ATen) plus the public names of DeepGEMM / FlashMLA kernels.
CLASS_RULES: tuple[tuple[str, str], ...] = (
    (r"^(Memcpy|Memset)\b", "memcpy"),
    (r"(?:\b|deep_)ep::\w+::(notify_dispatch|notify_combine|cached_notify)|get_dispatch_layout", "a2a_notify"),
    (r"(?:\b|deep_)ep::\w+::dispatch\b", "a2a_dispatch"),
    (r"(?:\b|deep_)ep::\w+::combine\b", "a2a_combine"),
    (r"(?i:flash\w*bwd|flash\w*::\w*bwd|mla\w*bwd|mla\w*backward)", "attn_bwd"),
    (r"(?i:flash\w*::compute_attn|flash_fwd|flash_mla|mla\w*fwd|mla\w*forward)", "attn_fwd"),
    (r"m_grouped|k_grouped|Grouped(Contiguous|Masked|WithOffset)", "gemm_grouped"),
    (r"fp8\w*::GemmKernel|fp8_gemm|deep_gemm|gemm\w*e4m3|e4m3\w*gemm", "gemm_fp8"),
    (r"tensormap", "other"),  # TMA descriptor set-up for the grouped GEMMs: a few microseconds
    (r"cast_to_fp8|cast_and_transpose|cast_back|_cast_|fp8x2|quant", "quant"),
    (r"layer_norm|rms_?norm|RMSNorm|LayerNorm", "norm"),
    (r"(?i:topk)|get_fused_mapping|count_expert|unique_group_indices|aux_fi_|gating", "routing"),
    (r"reduce_kernel|reduce_fused|\breduce_", "reduce"),
    (r"at::native::|at6native|elementwise|rotary|swiglu|silu|copy|transpose|expand_to_fused|fill", "elementwise"),
    (r"gemm|xmma|cublas|cutlass", "gemm_bf16"),
)
OP_CLASSES = (
    "gemm_fp8", "gemm_grouped", "gemm_bf16", "attn_fwd", "attn_bwd",
    "a2a_dispatch", "a2a_combine", "a2a_notify",
    "quant", "norm", "routing", "reduce", "elementwise", "memcpy", "other",
)
COMM_CLASSES = ("a2a_dispatch", "a2a_combine", "a2a_notify")
_RULES = tuple((re.compile(p), c) for p, c in CLASS_RULES)


def _ms(seconds: float) -> float:
    """Milliseconds, rounded to the nanosecond (Kineto stamps are microseconds)."""
    return round(seconds * 1e3, 6)


def classify(name: str, cat: str = "kernel") -> str:
    """Op class of a device event: memcpy/memset by category, kernels by the first matching rule."""
    if cat in ("gpu_memcpy", "gpu_memset"):
        return "memcpy"
    for pattern, op_class in _RULES:
        if pattern.search(name):
            return op_class
    return "other"


@dataclass(frozen=True)
class DeviceEvent:
    name: str
    cat: str            # "kernel", "gpu_memcpy" or "gpu_memset"
    device: int
    stream: int         # trace tid (CUDA stream id)
    start: float        # seconds from Trace.origin_us
    duration: float     # seconds
    correlation: int | None
    op_class: str

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Annotation:
    name: str
    on_gpu: bool        # gpu_user_annotation (per stream) or user_annotation (CPU thread)
    pid: int | str
    tid: int | str
    start: float        # seconds from Trace.origin_us
    duration: float
    external_id: int | None

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Trace:
    file_name: str
    file_bytes: int
    trace_name: str | None
    schema_version: Any                    # the trace's own "schemaVersion"
    origin_us: float                       # absolute trace timestamp of t = 0
    device: int                            # the GPU whose events were kept
    events: tuple[DeviceEvent, ...]        # sorted by start
    annotations: tuple[Annotation, ...]    # sorted by start
    launches: Mapping[int, tuple[Any, Any, float]] = field(hash=False)  # correlation -> (pid, tid, start s)
    device_properties: Mapping[str, Any] = field(hash=False)           # deviceProperties entry of `device`
    distributed_info: Mapping[str, Any] = field(hash=False)

    def kernel_names(self) -> dict[str, int]:
        """Distinct device-event names and how often each occurs."""
        counts: dict[str, int] = defaultdict(int)
        for e in self.events:
            counts[e.name] += 1
        return dict(counts)


# ----------------------------------------------------------------------------------------------- loading

def _read_json(path: Path) -> tuple[Any, int]:
    """Parsed JSON and the file's size in bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"path: cannot read trace file {str(path)!r} ({exc.strerror})") from None
    size = len(raw)
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return json.loads(raw), size
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"path: {path.name!r} is not Chrome trace JSON (plain or gzipped)") from None


def _int_or_str(value: Any) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)


def _args(event: dict) -> dict:
    """An event's args object ({} when absent); anything else is a damaged trace."""
    args = event.get("args")
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ValueError(f"traceEvents: event {str(event.get('name'))[:60]!r} has args of type "
                         f"{type(args).__name__}; expected an object")
    return args


def load_trace(path: str | Path, device: int | None = None) -> Trace:
    """Parse a Kineto Chrome trace; keep the device events of one GPU, annotations, launch calls, properties.

    `device` picks the GPU when the trace holds events of several; ValueError for unreadable input.
    """
    path = Path(path)
    doc, size = _read_json(path)
    if isinstance(doc, list):
        doc = {"traceEvents": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise ValueError(f"traceEvents: {path.name!r} has no traceEvents list (not a Chrome trace)")

    device_raw, annotations_raw, launches_raw = [], [], []
    for e in doc["traceEvents"]:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat = e.get("cat")
        if cat in DEVICE_CATEGORIES:
            device_raw.append(e)
        elif cat in (CPU_ANNOTATION, GPU_ANNOTATION):
            annotations_raw.append(e)
        elif cat in LAUNCH_CATEGORIES:
            launches_raw.append(e)
    if not device_raw:
        raise ValueError(f"traceEvents: {path.name!r} has no device events (cat {'/'.join(DEVICE_CATEGORIES)})")

    def device_of(e: dict) -> int:
        return int(_args(e).get("device", e.get("pid", 0)))

    try:
        devices = sorted({device_of(e) for e in device_raw})
    except (TypeError, ValueError, OverflowError):
        raise ValueError("traceEvents: device events carry a non-integer device/pid") from None
    if device is None:
        if len(devices) > 1:
            raise ValueError(f"device: the trace holds events of devices {devices}; pass one of them")
        device = devices[0]
    elif device not in devices:
        raise ValueError(f"device: {device} has no events; allowed values {devices}")

    try:
        device_raw = [e for e in device_raw if device_of(e) == device]
        origin = min(float(e["ts"]) for e in device_raw)
        launches: dict[int, tuple[Any, Any, float]] = {}
        for e in launches_raw:
            corr = _args(e).get("correlation")
            if corr is not None:
                launches[int(corr)] = (_int_or_str(e.get("pid")), _int_or_str(e.get("tid")),
                                       (float(e["ts"]) - origin) * 1e-6)
        names: dict[tuple[str, str], str] = {}
        events = []
        for e in device_raw:
            name, cat = str(e.get("name", "")), e["cat"]
            op_class = names.get((name, cat))
            if op_class is None:
                op_class = names[(name, cat)] = classify(name, cat)
            corr = _args(e).get("correlation")
            events.append(DeviceEvent(
                name=name, cat=cat, device=device, stream=int(e.get("tid", 0)),
                start=(float(e["ts"]) - origin) * 1e-6, duration=float(e.get("dur", 0.0)) * 1e-6,
                correlation=None if corr is None else int(corr), op_class=op_class))
        annotations = []
        for e in annotations_raw:
            name = str(e.get("name", ""))
            if IGNORED_ANNOTATION.search(name):
                continue
            on_gpu = e["cat"] == GPU_ANNOTATION
            if on_gpu and _int_or_str(e.get("pid")) != device:
                continue
            ext = _args(e).get("External id")
            annotations.append(Annotation(
                name=name, on_gpu=on_gpu, pid=_int_or_str(e.get("pid")), tid=_int_or_str(e.get("tid")),
                start=(float(e["ts"]) - origin) * 1e-6, duration=float(e.get("dur", 0.0)) * 1e-6,
                external_id=None if ext is None else int(ext)))
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ValueError(f"traceEvents: {path.name!r} has X events without numeric ts/dur/tid") from None
    _check_times(path, events, "device event")
    _check_times(path, annotations, "annotation")
    _check_times(path, [_Timed(t) for _, _, t in launches.values()], "launch call")

    props_list = doc.get("deviceProperties") or []
    props = next((p for p in props_list if isinstance(p, dict) and p.get("id") == device),
                 props_list[0] if props_list and isinstance(props_list[0], dict) else {})
    events.sort(key=lambda ev: (ev.start, ev.stream))
    annotations.sort(key=lambda a: (a.start, -a.duration))
    return Trace(
        file_name=path.name, file_bytes=size, trace_name=doc.get("traceName"),
        schema_version=doc.get("schemaVersion"), origin_us=origin,
        device=device, events=tuple(events), annotations=tuple(annotations), launches=launches,
        device_properties=dict(props), distributed_info=dict(doc.get("distributedInfo") or {}))


@dataclass(frozen=True)
class _Timed:
    start: float
    duration: float = 0.0
    name: str = ""


def _check_times(path: Path, items, what: str) -> None:
    """ts and dur must be finite and dur >= 0 (Kineto writes microseconds; NaN, inf or a negative duration is a
    damaged file, and would turn every span and efficiency derived from it into NaN or nonsense)."""
    for item in items:
        if not (math.isfinite(item.start) and math.isfinite(item.duration)) or item.duration < 0:
            raise ValueError(f"traceEvents: {path.name!r}: {what} {item.name[:60]!r} has ts/dur "
                             f"{item.start * 1e6:g}/{item.duration * 1e6:g} us relative to the first device event; "
                             f"ts must be finite, dur finite and >= 0")
