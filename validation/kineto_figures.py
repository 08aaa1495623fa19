"""Per-rank, per-step figures of a Kineto trace's kernels (loaded and classified by `validation.kineto`).

Per rank and step (`ProfilerStep#N` annotations when the trace has them: GPU-side ones by kernel start, else
CPU-side ones by the time of the kernel's launch call, matched by args.correlation; without them the whole
trace is one step):
- span: last kernel end - first kernel start of the step;
- class time: summed kernel durations per class (and per stream: `stream_classes`), and kernels per class;
- the idle time before each queued compute kernel (`validation.trace_launch.queued_gaps`);
- compute busy (union of gemm, attention, elementwise and other kernels), comm busy (union of nccl and deepep
  kernels), their overlap (compute + comm - union of both) and the exposed comm (comm - overlap).
A rank's figures are the means over its steps; the trace's (`KinetoMeasure`) the mean over ranks, with the step
time the longest rank's mean span (a synchronous step ends when its slowest rank does).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from gpuhours.validation.kineto import (COMM_FAMILIES, COMPUTE_FAMILIES, KERNEL_CLASSES, Kernel, RankTrace, family,
                                        load_ranks)
from gpuhours.validation.trace_launch import gap_figure, queued_gaps
from gpuhours.validation.trace_summary import interval_union


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
    queued_gaps: tuple[float, ...] = ()          # s idle before each queued compute kernel (trace_launch)

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
                       {s: _ordered(v) for s, v in sorted(streams.items())}, c, m, c + m - both, _ordered(counts),
                       tuple(queued_gaps((k.stream, k.start, k.end, k.launch) for k in ks
                                         if family(k.kernel_class) in COMPUTE_FAMILIES)))


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

    def queued_gaps(self) -> list[float]:
        """Every step's idle seconds before queued compute kernels, all ranks (`trace_launch.queued_gaps`)."""
        return [g for r in self.ranks for s in r.steps for g in s.queued_gaps]

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
            "queued_kernels": len(self.queued_gaps()), "queued_gap_median_us": gap_figure(self.queued_gaps()),
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
