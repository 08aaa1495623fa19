"""Chrome trace (chrome://tracing, Perfetto) of a timeline.

``{"traceEvents": [...]}``: one complete event (``ph: "X"``, ``ts``/``dur`` in microseconds) per span; a
process per rank (``pid = rank``, named by a ``process_name`` metadata event) and a thread per stream
(``tid`` in first-seen order, named by ``thread_name``). ``args`` carry micro-batch, stage and ``Span.args``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from gpuhours.simulator.timeline import Span

US_PER_S = 1e6


def _jsonable(value: object) -> object:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def to_chrome_trace(spans: Iterable[Span], time_unit_s: float = 1.0) -> dict:
    """Trace dict of ``spans``; a span time ``t`` is ``t * time_unit_s`` seconds (unit-cost timelines: pick a scale)."""
    if not time_unit_s > 0:
        raise ValueError(f"time_unit_s must be > 0, got {time_unit_s!r}")
    spans = list(spans)
    scale = time_unit_s * US_PER_S
    streams: dict[str, int] = {}
    for s in spans:
        streams.setdefault(s.stream, len(streams))
    events: list[dict] = []
    for rank in sorted({s.rank for s in spans}):
        events.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
        for stream, tid in streams.items():
            events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": stream}})
    for s in spans:
        args = {"microbatch": s.microbatch, "stage": s.stage}
        args.update({str(k): _jsonable(v) for k, v in s.args})
        events.append({
            "ph": "X", "name": s.name, "cat": s.kind, "pid": s.rank, "tid": streams[s.stream],
            "ts": s.start * scale, "dur": (s.end - s.start) * scale, "args": args,
        })
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(spans: Iterable[Span], path: str | Path, time_unit_s: float = 1.0) -> Path:
    """Write ``to_chrome_trace(spans)`` as JSON to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_chrome_trace(spans, time_unit_s)))
    return path
