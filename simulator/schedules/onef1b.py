"""1F1B (one-forward-one-backward, PipeDream-Flush / Megatron non-interleaved).

Stage ``s`` lives on rank ``s``; ``num_stages = pp``. Rank ``r`` runs ``min(pp-1-r, M)`` warm-up forwards,
then alternates ``F`` and a full backward ``BW`` (steady state), then drains the remaining backwards.

Unit costs (f forward, b full backward), ``M >= pp``: makespan ``(M + pp - 1)(f + b)``, so every rank idles
``(pp - 1)(f + b)`` (the README's 1F1B row). Activations in flight on rank ``r`` peak at ``pp - r``
(``pp`` on rank 0). For ``M < pp`` the schedule is still valid (pure GPipe-like fill and drain); it is allowed,
and the same bubble formula holds because the critical path is unchanged (rank ``r`` waits ``r f`` at the
front and ``(pp-1-r) b`` at the back).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuhours.simulator.instructions import Instruction, Schedule


@dataclass(frozen=True)
class RoundRobinPlacement:
    """Stage ``s`` on rank ``s % pp`` for every micro-batch (1F1B, ZB1P, interleaved 1F1B)."""

    pp: int

    def __call__(self, microbatch: int, stage: int) -> int:
        return stage % self.pp


def check_common(pp: int, num_microbatches: int) -> None:
    """One-line ValueErrors for the arguments every schedule shares."""
    if not isinstance(pp, int) or pp < 1:
        raise ValueError(f"pp must be an integer >= 1, got {pp!r}")
    if not isinstance(num_microbatches, int) or num_microbatches < 1:
        raise ValueError(f"num_microbatches must be an integer >= 1, got {num_microbatches!r}")


def build_1f1b(pp: int, num_microbatches: int) -> Schedule:
    """Per-rank programs: warm-up F's, steady (F, BW) pairs, cool-down BW's; any ``num_microbatches >= 1``."""
    check_common(pp, num_microbatches)
    m = num_microbatches
    programs = []
    for r in range(pp):
        warmup = min(pp - 1 - r, m)
        prog = [Instruction("F", i, r) for i in range(warmup)]
        for i in range(m - warmup):
            prog.append(Instruction("F", warmup + i, r))
            prog.append(Instruction("BW", i, r))
        prog.extend(Instruction("BW", i, r) for i in range(m - warmup, m))
        programs.append(tuple(prog))
    return Schedule(
        name="1f1b",
        pp=pp,
        num_microbatches=m,
        num_stages=pp,
        programs=tuple(programs),
        placement=RoundRobinPlacement(pp),
        split_backward=False,
        params_per_rank=(1.0,) * pp,
    )
