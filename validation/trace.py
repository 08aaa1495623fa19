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

import datetime
import gzip
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

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


@dataclass(frozen=True)
class ClassStat:
    count: int
    time: float  # seconds, summed event durations

    @property
    def mean(self) -> float:
        return self.time / self.count if self.count else 0.0

    def to_dict(self) -> dict:
        return {"count": self.count, "time_ms": _ms(self.time), "mean_ms": _ms(self.mean)}


@dataclass(frozen=True)
class PhaseStat:
    name: str
    count: int                  # annotation instances of this name
    spans: tuple[float, ...]    # per instance with device events: first start to last end (s)
    kernel_times: tuple[float, ...]  # per instance: summed device-event durations (s)

    @property
    def total_span(self) -> float:
        return sum(self.spans)

    @property
    def mean_span(self) -> float:
        return self.total_span / len(self.spans) if self.spans else 0.0

    @property
    def total_kernel_time(self) -> float:
        return sum(self.kernel_times)

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "span_ms": [_ms(s) for s in self.spans],
            "mean_span_ms": _ms(self.mean_span),
            "total_span_ms": _ms(self.total_span),
            "kernel_ms": [_ms(s) for s in self.kernel_times],
            "total_kernel_ms": _ms(self.total_kernel_time),
        }


@dataclass(frozen=True)
class TraceSummary:
    file_name: str
    file_bytes: int
    trace_name: str | None
    trace_schema_version: Any
    backend: str | None                 # distributedInfo.backend
    device_name: str | None
    sm_count: int | None
    world_size: int | None
    rank: int | None
    annotation_source: str              # "gpu", "cpu" or "none"
    event_count: int
    event_time: float                   # sum of all device-event durations (s)
    span: float                         # first start to last end over all device events (s)
    stream_busy: dict[int, float]       # union of intervals per stream (s)
    stream_classes: dict[int, dict[str, ClassStat]]
    classes: dict[str, ClassStat]
    phases: dict[str, PhaseStat]
    phase_classes: dict[str, dict[str, ClassStat]]
    unannotated: ClassStat              # device events in no annotation

    def to_dict(self) -> dict:
        def classes_dict(stats: Mapping[str, ClassStat]) -> dict:
            return {c: s.to_dict() for c, s in stats.items()}

        return {
            "file": self.file_name,
            "file_bytes": self.file_bytes,
            "trace_name": self.trace_name,
            "trace_schema_version": self.trace_schema_version,
            "backend": self.backend,
            "device": self.device_name,
            "sm_count": self.sm_count,
            "world_size": self.world_size,
            "rank": self.rank,
            "annotation_source": self.annotation_source,
            "event_count": self.event_count,
            "event_time_ms": _ms(self.event_time),
            "span_ms": _ms(self.span),
            "stream_busy_ms": {str(s): _ms(t) for s, t in self.stream_busy.items()},
            "stream_classes": {str(s): classes_dict(c) for s, c in self.stream_classes.items()},
            "classes": classes_dict(self.classes),
            "phases": {p: s.to_dict() for p, s in self.phases.items()},
            "phase_classes": {p: classes_dict(c) for p, c in self.phase_classes.items()},
            "unannotated": self.unannotated.to_dict(),
        }


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


# ------------------------------------------------------------------------------------------- arithmetic

def interval_union(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: overlapping parts count once."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        elif end > cur_end:
            cur_end = end
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def _snap(times) -> np.ndarray:
    """Seconds rounded to the picosecond. An end is start + dur converted separately, so a range ending where the
    next kernel starts in the file's microseconds can end one float ulp after it in seconds (about one such
    boundary in nine for integer stamps); snapping makes them equal again. Kineto stamps are at most ns-precise.
    Times too large to round (beyond about 1e296 s) are kept as they are."""
    t = np.asarray(times, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        snapped = np.round(t, 12)
    return np.where(np.isfinite(snapped), snapped, t)


class _Innermost:
    """Innermost (shortest) of a set of intervals covering a time: paint longest first, shortest last."""

    def __init__(self, intervals: list[tuple[float, float, int]]):
        self.bounds = np.unique(_snap([t for s, e, _ in intervals for t in (s, e)]))
        self.owner = np.full(max(len(self.bounds) - 1, 0), -1, dtype=np.int64)
        for s, e, idx in sorted(intervals, key=lambda it: it[1] - it[0], reverse=True):
            i0, i1 = np.searchsorted(self.bounds, _snap([s, e]))
            self.owner[i0:i1] = idx

    def lookup(self, times: np.ndarray) -> np.ndarray:
        seg = np.searchsorted(self.bounds, _snap(times), side="right") - 1
        ok = (seg >= 0) & (seg < len(self.owner))
        out = np.full(len(times), -1, dtype=np.int64)
        out[ok] = self.owner[seg[ok]]
        return out


def _groups(items: list[tuple[Any, float, float, int]]) -> dict[Any, _Innermost]:
    by_key: dict[Any, list] = defaultdict(list)
    for key, s, e, idx in items:
        by_key[key].append((s, e, idx))
    return {k: _Innermost(v) for k, v in by_key.items()}


def attribute_phases(trace: Trace) -> tuple[list[int], list[Annotation], str]:
    """Index into the returned annotation list (or -1) for each device event, and the source used.

    GPU annotations when present: the innermost one on the event's stream containing its start.
    Otherwise CPU annotations: the innermost one containing the launch call, on the launching thread,
    else on any thread of the launching process.
    """
    gpu = [a for a in trace.annotations if a.on_gpu]
    if gpu:
        lookup = _groups([(a.tid, a.start, a.end, i) for i, a in enumerate(gpu)])
        owners = [-1] * len(trace.events)
        by_stream: dict[Any, list[int]] = defaultdict(list)
        for j, e in enumerate(trace.events):
            by_stream[e.stream].append(j)
        for stream, idxs in by_stream.items():
            if stream in lookup:
                found = lookup[stream].lookup(np.array([trace.events[j].start for j in idxs]))
                for j, o in zip(idxs, found):
                    owners[j] = int(o)
        return owners, gpu, "gpu"
    cpu = [a for a in trace.annotations if not a.on_gpu]
    if not cpu:
        return [-1] * len(trace.events), [], "none"
    per_thread = _groups([((a.pid, a.tid), a.start, a.end, i) for i, a in enumerate(cpu)])
    per_process = _groups([(a.pid, a.start, a.end, i) for i, a in enumerate(cpu)])
    owners = [-1] * len(trace.events)
    by_thread: dict[Any, list[tuple[int, float]]] = defaultdict(list)
    for j, e in enumerate(trace.events):
        launch = trace.launches.get(e.correlation) if e.correlation is not None else None
        if launch is not None:
            by_thread[launch[:2]].append((j, launch[2]))
    for (pid, tid), items in by_thread.items():
        times = np.array([t for _, t in items])
        found = per_thread[(pid, tid)].lookup(times) if (pid, tid) in per_thread else np.full(len(items), -1)
        if pid in per_process and (found < 0).any():
            found = np.where(found < 0, per_process[pid].lookup(times), found)
        for (j, _), o in zip(items, found):
            owners[j] = int(o)
    return owners, cpu, "cpu"


# -------------------------------------------------------------------------------------------- summary

def _class_stats(events: Iterable[DeviceEvent]) -> dict[str, ClassStat]:
    count: dict[str, int] = defaultdict(int)
    time: dict[str, float] = defaultdict(float)
    for e in events:
        count[e.op_class] += 1
        time[e.op_class] += e.duration
    order = [c for c in OP_CLASSES if c in count] + sorted(c for c in count if c not in OP_CLASSES)
    return {c: ClassStat(count[c], time[c]) for c in order}


def _instance_key(a: Annotation, index: int) -> Any:
    # Kineto writes one GPU annotation per stream for one CPU range; they share the External id.
    return (a.name, a.external_id) if a.on_gpu and a.external_id is not None else (a.name, "#", index)


def summarise(trace: Trace) -> TraceSummary:
    """Span, per-stream busy time, per-class and per-phase figures of one trace (see module docstring)."""
    events = trace.events
    span = max(e.end for e in events) - min(e.start for e in events)
    by_stream: dict[int, list[DeviceEvent]] = defaultdict(list)
    for e in events:
        by_stream[e.stream].append(e)
    streams = sorted(by_stream)

    owners, annotations, source = attribute_phases(trace)
    instance_events: dict[Any, list[DeviceEvent]] = defaultdict(list)
    unannotated = []
    for e, o in zip(events, owners):
        if o < 0:
            unannotated.append(e)
        else:
            instance_events[_instance_key(annotations[o], o)].append(e)
    instances_of: dict[str, list[Any]] = defaultdict(list)
    for i, a in enumerate(annotations):
        key = _instance_key(a, i)
        if key not in instances_of[a.name]:
            instances_of[a.name].append(key)

    phases: dict[str, PhaseStat] = {}
    phase_classes: dict[str, dict[str, ClassStat]] = {}
    names = [p for p in KNOWN_PHASES if p in instances_of] + [p for p in instances_of if p not in KNOWN_PHASES]
    for name in names:
        spans, kernel_times, members = [], [], []
        for key in instances_of[name]:
            evs = instance_events.get(key)
            if not evs:
                continue
            spans.append(max(e.end for e in evs) - min(e.start for e in evs))
            kernel_times.append(sum(e.duration for e in evs))
            members.extend(evs)
        if not members and name not in KNOWN_PHASES:
            continue  # an enclosing range (e.g. "1F1B") that launched nothing itself
        phases[name] = PhaseStat(name, len(instances_of[name]), tuple(spans), tuple(kernel_times))
        phase_classes[name] = _class_stats(members)

    props = trace.device_properties
    info = trace.distributed_info
    return TraceSummary(
        file_name=trace.file_name, file_bytes=trace.file_bytes, trace_name=trace.trace_name,
        trace_schema_version=trace.schema_version, backend=info.get("backend"),
        device_name=props.get("name"), sm_count=props.get("numSms"),
        world_size=info.get("world_size"), rank=info.get("rank"),
        annotation_source=source, event_count=len(events), event_time=sum(e.duration for e in events),
        span=span,
        stream_busy={s: interval_union((e.start, e.end) for e in by_stream[s]) for s in streams},
        stream_classes={s: _class_stats(by_stream[s]) for s in streams},
        classes=_class_stats(events), phases=phases, phase_classes=phase_classes,
        unannotated=ClassStat(len(unannotated), sum(e.duration for e in unannotated)))


# ---------------------------------------------------------------------------------- calibration profile

def _measured_time(summary: TraceSummary, key: str) -> float:
    """Time behind an expected-FLOP key: a class, a phase, or "phase/class" (summed kernel time, s)."""
    if key in summary.classes:
        return summary.classes[key].time
    if key in summary.phases:
        return summary.phases[key].total_kernel_time
    phase, _, op_class = key.rpartition("/")
    if phase in summary.phase_classes and op_class in summary.phase_classes[phase]:
        return summary.phase_classes[phase][op_class].time
    allowed = list(summary.classes) + list(summary.phases) + ["<phase>/<class>"]
    raise ValueError(f"expected_flops: key {key!r} names no measured class or phase; allowed values {allowed}")


def _peak_for(peak_flops: Mapping[str, float], key: str) -> float:
    for candidate in (key, key.rpartition("/")[2], "default"):
        if candidate in peak_flops:
            value = float(peak_flops[candidate])
            if value <= 0:
                raise ValueError(f"peak_flops: {candidate!r} must be positive, got {value}")
            return value
    raise ValueError(f"peak_flops: no entry for {key!r}; give that key, its class, or 'default'")


def profile_from_trace(summary: TraceSummary, expected_flops: dict[str, float] | None = None,
                       peak_flops: dict | None = None, name: str | None = None) -> dict:
    """Calibration profile (schema gpuhours.calibration/1, source "trace") from a trace summary.

    The measured times go to a "trace" section (per class, per phase, per phase and class, comm; ms) and
    the comm kernel times also to the free-form "comm". With `expected_flops` (FLOP; keys: an op class, a
    phase, or "phase/class") and `peak_flops` (FLOP/s; keyed alike, by class, or "default"):
    tflops = flops / time and efficiency = flops / (time * peak), time the summed kernel time of the key;
    attn_fwd / attn_bwd keys fill attention.forward/backward_efficiency (pass the dense BF16 peak).
    What the trace cannot give (GEMM shape points, element-wise bandwidth) is left out, not invented.
    """
    comm: dict[str, dict] = {c: summary.classes[c].to_dict() for c in COMM_CLASSES if c in summary.classes}
    for phase, stats in summary.phase_classes.items():
        per_phase = {c: s.to_dict() for c, s in stats.items() if c in COMM_CLASSES}
        if per_phase:
            comm[phase] = per_phase
    trace_section: dict[str, Any] = {
        "span_ms": _ms(summary.span),
        "event_time_ms": _ms(summary.event_time),
        "stream_busy_ms": {str(s): _ms(t) for s, t in summary.stream_busy.items()},
        "classes": {c: s.to_dict() for c, s in summary.classes.items()},
        "phases": {p: s.to_dict() for p, s in summary.phases.items()},
        "phase_classes": {p: {c: s.to_dict() for c, s in cs.items()} for p, cs in summary.phase_classes.items()},
        "comm": comm,
    }
    software = {"profiler": "PyTorch profiler (Kineto) Chrome trace"}
    if summary.trace_schema_version is not None:
        software["trace_schema_version"] = summary.trace_schema_version
    if summary.backend:
        software["distributed_backend"] = summary.backend
    provenance: dict[str, Any] = {
        "device": summary.device_name,
        "sm_count": None if summary.sm_count is None else int(summary.sm_count),
        "date": datetime.date.today().isoformat(),
        "software": software,
        "method": ("trace import (gpuhours.validation.trace): device events classified by kernel name, "
                   f"attributed to phases by {summary.annotation_source} annotations; times are summed kernel "
                   "durations, busy time the union of intervals per stream"),
        "references": [f"trace file {summary.file_name} ({summary.file_bytes} bytes)"]
                      + ([f"traceName {summary.trace_name}"] if summary.trace_name else []),
    }
    profile: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name or f"trace-{Path(summary.file_name).stem}",
        "source": "trace",
        "provenance": {k: v for k, v in provenance.items() if v is not None},
        "comm": comm,
        "trace": trace_section,
        "notes": (f"Measured on {summary.device_name or 'an unnamed device'}: span {summary.span * 1e3:.1f} ms, "
                  f"{summary.event_count} device events; rank {summary.rank} of {summary.world_size}."),
    }
    if expected_flops:
        if not peak_flops:
            raise ValueError("peak_flops: required (FLOP/s per key, class or 'default') when expected_flops is given")
        efficiency = {}
        for key, flops in expected_flops.items():
            time = _measured_time(summary, key)
            peak = _peak_for(peak_flops, key)
            efficiency[key] = {
                "flops": float(flops), "time_ms": _ms(time), "peak_flops": peak,
                "tflops": float(flops) / time * 1e-12 if time > 0 else None,
                "efficiency": float(flops) / (time * peak) if time > 0 else None}
        trace_section["efficiency"] = efficiency
        attention = {f"{direction}_efficiency": efficiency[key]["efficiency"]
                     for direction, key in (("forward", "attn_fwd"), ("backward", "attn_bwd"))
                     if key in efficiency and efficiency[key]["efficiency"] is not None}
        if attention:
            attention["provenance"] = f"trace {summary.file_name}: summed attention-kernel time vs expected FLOPs"
            profile["attention"] = attention
    return profile
