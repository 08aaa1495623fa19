"""Activations in flight: how many chunks (and bytes) each pipeline rank holds at its peak under a schedule,
walking its program in the engine's order (`workloads.memory` sums them into a rank's memory).
"""

from __future__ import annotations

import numpy as np


def peak_in_flight(schedule, stage_bytes: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Per rank: (peak live activation bytes, peak live chunks), walking each program in order. A chunk becomes
    live when its F starts and is freed when its W or BW ends (the engine's rule): after instruction i the live
    total is C_i = sum over j <= i of (allocated_j - freed_j), and it peaks inside instruction i at C_i + freed_i."""
    weights = np.append(np.asarray(stage_bytes, dtype=float), 0.0)  # index -1: no stage
    peaks_b, peaks_n = [], []
    for alloc, free in _live_events(schedule):
        for w, out in ((weights, peaks_b), (None, peaks_n)):
            a = (alloc >= 0).sum(axis=1) if w is None else w[alloc].sum(axis=1)
            f = (free >= 0).sum(axis=1) if w is None else w[free].sum(axis=1)
            peak = float((np.cumsum(a - f) + f).max()) if len(a) else 0.0
            out.append(max(peak, 0.0) if w is not None else int(max(peak, 0)))
    return tuple(peaks_b), tuple(peaks_n)


_LIVE_EVENTS: dict[tuple, list] = {}


def _live_events(schedule) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per rank, per instruction: the stages whose chunk it allocates (F parts) and frees (W, BW parts), as
    (instructions x 2) arrays padded with -1. Cached per schedule shape (schedules are pure)."""
    key = (schedule.name, schedule.pp, schedule.num_microbatches, schedule.num_stages)
    hit = _LIVE_EVENTS.get(key)
    if hit is None:
        hit = []
        for program in schedule.programs:
            alloc = np.full((len(program), 2), -1)
            free = np.full((len(program), 2), -1)
            for i, ins in enumerate(program):
                for j, (kind, _, stage) in enumerate(ins.parts()):
                    if kind == "F":
                        alloc[i, j] = stage
                    elif kind in ("W", "BW"):
                        free[i, j] = stage
            hit.append((alloc, free))
        if len(_LIVE_EVENTS) >= 32:
            _LIVE_EVENTS.pop(next(iter(_LIVE_EVENTS)))
        _LIVE_EVENTS[key] = hit
    return hit
