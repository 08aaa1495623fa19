"""A trace's figures: span, stream busy time, per-class and per-phase statistics (`summarise`), from the events
`validation/trace.py` loads; interval arithmetic and the attribution of device events to annotated phases (see
trace.py's docstring for the rules)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from gpuhours.validation.trace import KNOWN_PHASES, OP_CLASSES, Annotation, DeviceEvent, Trace, _ms

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
