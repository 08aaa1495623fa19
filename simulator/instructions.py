"""Pipeline instructions: what a rank does, in order, with no notion of cost.

A model is cut into ``num_stages`` consecutive *stages* (chunks of layers), numbered along the forward
direction. A schedule says, for each micro-batch, which rank holds each stage (``Schedule.rank_of``) and, for
each rank, the ordered list of instructions it executes (``Schedule.programs``).

Instruction kinds
- ``F``  forward of one stage for one micro-batch.
- ``B``  backward for inputs only (activation gradients); its ``W`` comes later (zero-bubble split).
- ``W``  backward for weights of one stage for one micro-batch.
- ``BW`` a full backward (``B`` followed at once by ``W``) as one instruction.
- ``FB`` an overlapped pair: the forward ``(microbatch, stage)`` and the full backward
  ``(b_microbatch, b_stage)`` of a different micro-batch, run mutually overlapped (DualPipe's F&B).

Dependencies (enforced by the engine, checked by ``validate``):
F(m, s) after F(m, s-1); B/BW(m, s) after B/BW(m, s+1) (for the last stage: after F(m, S-1)) and after F(m, s);
W(m, s) after B(m, s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

KINDS = ("F", "B", "W", "BW", "FB")


@dataclass(frozen=True)
class Instruction:
    kind: str
    microbatch: int
    stage: int
    b_microbatch: int | None = None  # only for FB: the backward half
    b_stage: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"instruction kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "FB") != (self.b_microbatch is not None):
            raise ValueError("b_microbatch is given exactly for FB instructions")

    def parts(self) -> tuple[tuple[str, int, int], ...]:
        """The elementary (kind, microbatch, stage) parts: FB is (F, m, s) and (BW, bm, bs)."""
        if self.kind == "FB":
            return (("F", self.microbatch, self.stage), ("BW", self.b_microbatch, self.b_stage))
        return ((self.kind, self.microbatch, self.stage),)

    def label(self) -> str:
        if self.kind == "FB":
            return f"F{self.microbatch}.{self.stage}&B{self.b_microbatch}.{self.b_stage}"
        return f"{self.kind}{self.microbatch}.{self.stage}"


@dataclass(frozen=True)
class Schedule:
    """A pure pipeline schedule: per-rank ordered instruction lists plus the stage placement."""

    name: str
    pp: int  # number of ranks (devices) in the pipeline
    num_microbatches: int
    num_stages: int
    programs: tuple[tuple[Instruction, ...], ...]  # one per rank
    placement: Callable[[int, int], int] = field(compare=False)  # (microbatch, stage) -> rank
    split_backward: bool = False  # whether B and W appear as separate instructions
    params_per_rank: tuple[float, ...] = ()  # parameter copies held by each rank, in units of one stage's share

    def rank_of(self, microbatch: int, stage: int) -> int:
        return self.placement(microbatch, stage)
