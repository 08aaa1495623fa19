"""Timeline: what ran where and when. The engine writes it; reports (Gantt, Chrome trace) read it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    rank: int            # pipeline rank (device)
    stream: str          # "compute" or "comm"
    start: float         # seconds (unit-cost mode: cost units)
    end: float
    name: str            # e.g. "F3.0", "F3.0&B1.7", "layer4.moe.ep_dispatch"
    kind: str            # instruction kind (F, B, W, BW, FB) or op kind (gemm, collective, ...)
    microbatch: int | None = None
    stage: int | None = None
    args: tuple[tuple[str, object], ...] = field(default=())  # extra key/values (flops, bytes, layer, ...)

    @property
    def duration(self) -> float:
        return self.end - self.start
