"""DualPipeV ("cut-in-half" DualPipe; reference: github.com/deepseek-ai/DualPipe, ``dualpipe/dualpipev.py``).

``pp`` here is the number of *devices*; the model has ``2 pp`` stages in a V: stage ``s`` on rank ``s`` for
``s < pp`` and on rank ``2 pp - 1 - s`` after, so rank 0 holds the first and the last stage (one direction of
micro-batches, each rank holds two different stages: 1x parameters, ``params_per_rank`` 2 stage shares of
``1 / (2 pp)`` of the model). The phase-0 chunk of rank ``r`` is stage ``r``, its phase-1 chunk stage
``2 pp - 1 - r``; the program is DualPipe's eight steps with ``h = r`` and ``n = pp`` (the last rank, where the
V turns, runs the first main-loop pair un-overlapped). Constraint: ``num_microbatches >= 2 pp``.

The README's bubble ``(PP/2-1)(F&B+B-3W)`` counts ``PP = 2 pp`` stages, i.e. ``(pp - 1)(fb + b - 3w)`` in
per-stage unit costs. The exact makespan and per-rank bubble are DualPipe's (see ``dualpipe``'s docstring) with
``n = pp`` and ``K = 2M`` chunk pairs per rank; rank ``r`` plays ``h = r`` (the middle rank is the last one).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuhours.simulator.instructions import Schedule
from gpuhours.simulator.schedules.dualpipe import _Emitter, dual_steps
from gpuhours.simulator.schedules.onef1b import check_common


@dataclass(frozen=True)
class VShapePlacement:
    """Stage s on rank s for s < pp, on rank 2 pp - 1 - s otherwise (same for every micro-batch)."""

    pp: int

    def __call__(self, microbatch: int, stage: int) -> int:
        return stage if stage < self.pp else 2 * self.pp - 1 - stage


def build_dualpipev(pp: int, num_microbatches: int) -> Schedule:
    """DualPipeV programs on ``pp`` devices (``2 pp`` stages); ``num_microbatches >= 2 pp``."""
    check_common(pp, num_microbatches)
    if num_microbatches < 2 * pp:
        raise ValueError(f"num_microbatches must be >= 2*pp={2 * pp} for dualpipev, got {num_microbatches}")
    m = num_microbatches
    programs = []
    for r in range(pp):

        def chunk(phase: int, k: int, r: int = r) -> tuple[int, int]:
            return (k, r) if phase == 0 else (k, 2 * pp - 1 - r)

        e = _Emitter(lambda phase: phase, chunk)
        dual_steps(e, pp, r, main_steps=m - 2 * pp + r + 1, unoverlapped_first=(r == pp - 1))
        programs.append(tuple(e.program))
    return Schedule(
        name="dualpipev",
        pp=pp,
        num_microbatches=m,
        num_stages=2 * pp,
        programs=tuple(programs),
        placement=VShapePlacement(pp),
        split_backward=True,
        params_per_rank=(2.0,) * pp,
    )
