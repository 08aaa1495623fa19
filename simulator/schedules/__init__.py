"""Pipeline schedule registry: ``build_schedule(name, pp, num_microbatches, vpp=1) -> Schedule``.

Names and constraints (each violation is a one-line ValueError):
- ``1f1b``: any ``num_microbatches >= 1`` (closed-form bubble ``(pp-1)(f+b)``);
- ``interleaved-1f1b``: ``vpp >= 1`` chunks per rank, any ``num_microbatches >= pp`` (groups of micro-batches as
  Megatron-Core's ``microbatch_group_size_per_vp_stage``, see ``interleaved``);
- ``zb1p``: any ``num_microbatches >= 1`` (closed form promised for ``>= pp``);
- ``dualpipe``: ``pp`` even, ``num_microbatches`` even and ``>= 2 pp``;
- ``dualpipev``: ``pp`` devices, ``2 pp`` stages, ``num_microbatches >= 2 pp``.
``vpp`` other than 1 is only meaningful for ``interleaved-1f1b``.

``params_per_rank[r]`` counts the stages rank ``r`` holds; one stage holds ``1 / num_stages`` of the model, so
a rank's parameter bytes are ``params_per_rank[r] / num_stages`` of the model's.
"""

from __future__ import annotations

from functools import lru_cache

from gpuhours.simulator.instructions import Schedule
from gpuhours.simulator.schedules.dualpipe import build_dualpipe
from gpuhours.simulator.schedules.dualpipev import build_dualpipev
from gpuhours.simulator.schedules.interleaved import build_interleaved
from gpuhours.simulator.schedules.onef1b import build_1f1b
from gpuhours.simulator.schedules.validate import validate
from gpuhours.simulator.schedules.zb1p import build_zb1p

SCHEDULE_NAMES = ("1f1b", "interleaved-1f1b", "zb1p", "dualpipe", "dualpipev")


MAX_CHUNKS = 100_000  # micro-batches x virtual stages x ranks per step: about 20 s of simulation at the most


def build_schedule(name: str, pp: int, num_microbatches: int, vpp: int = 1) -> Schedule:
    """Build the named schedule for ``pp`` ranks and ``num_microbatches`` micro-batches. A step of more than
    MAX_CHUNKS forward chunks (micro-batches x vpp x pp) is refused: it would run for minutes or exhaust memory, and
    no training step has that many (DeepSeek-V3's has 120 x 16)."""
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"schedule name must be one of {SCHEDULE_NAMES}, got {name!r}")
    for field, v in (("pp", pp), ("microbatches", num_microbatches), ("vpp", vpp)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{field} must be a positive integer, got {v!r}")
    if num_microbatches * vpp * pp > MAX_CHUNKS:
        raise ValueError(f"microbatches: {num_microbatches} micro-batches x {vpp} virtual stages x {pp} ranks is "
                         f"more than {MAX_CHUNKS:,} chunks a step; allowed: fewer micro-batches (a larger "
                         f"micro-batch size or more data-parallel replicas)")
    if name != "interleaved-1f1b" and vpp != 1:
        raise ValueError(f"vpp must be 1 for schedule {name!r} (only interleaved-1f1b has virtual stages), got {vpp!r}")
    return _build(name, pp, num_microbatches, vpp)


@lru_cache(maxsize=16)
def _build(name: str, pp: int, num_microbatches: int, vpp: int) -> Schedule:
    """Schedules are pure and immutable: one build serves every layout that shares (name, pp, m, vpp)."""
    if name == "interleaved-1f1b":
        return build_interleaved(pp, num_microbatches, vpp)
    builder = {"1f1b": build_1f1b, "zb1p": build_zb1p, "dualpipe": build_dualpipe, "dualpipev": build_dualpipev}[name]
    return builder(pp, num_microbatches)


__all__ = ["SCHEDULE_NAMES", "build_schedule", "validate"]
