"""Interleaved 1F1B (Megatron-LM virtual pipeline).

``num_stages = pp * vpp``; stage ``s`` lives on rank ``s % pp`` (rank ``r`` holds the model chunks
``r, r + pp, ..., r + (vpp-1) pp``). Each rank walks a sequence of ``M * vpp`` *virtual* forwards: the
``k``-th one is chunk ``c = (k // pp) % vpp`` of micro-batch ``(k // (pp vpp)) pp + k % pp``; backwards walk the
same sequence with chunks reversed (``vpp - 1 - c``). Micro-batches therefore move in groups of ``pp``.
Rank ``r`` runs ``min(2 (pp-1-r) + (vpp-1) pp, M vpp)`` warm-up forwards, then (F, BW) pairs, then drains.

Constraint: ``M`` a multiple of ``pp`` (the group walk above needs whole groups), as in Megatron-LM.

Unit costs per chunk (f, b = one virtual stage), ``M`` a multiple of ``pp``: the measured bubble of every rank is
``(pp - 1)(f + b)``, i.e. the README's ``(PP-1)(F+B)/v`` with ``F = v f``, ``B = v b`` the per-rank costs (tested
for f/b from 1/7 to 4). Activations in flight on rank ``r`` peak at its warm-up count plus one,
``min(2(pp-1-r) + (vpp-1) pp + 1, M vpp)`` chunks, each ``1/vpp`` of a 1F1B stage's activations.
"""

from __future__ import annotations

from gpuhours.simulator.instructions import Instruction, Schedule
from gpuhours.simulator.schedules.onef1b import RoundRobinPlacement, check_common


def _virtual(k: int, pp: int, vpp: int, backward: bool) -> tuple[int, int]:
    """(micro-batch, chunk) of the ``k``-th virtual forward/backward of a rank."""
    chunk = (k // pp) % vpp
    if backward:
        chunk = vpp - 1 - chunk
    microbatch = (k // (pp * vpp)) * pp + k % pp
    return microbatch, chunk


def build_interleaved(pp: int, num_microbatches: int, vpp: int) -> Schedule:
    """Megatron-style interleaved 1F1B; ``vpp >= 1`` chunks per rank, ``num_microbatches % pp == 0``."""
    check_common(pp, num_microbatches)
    if not isinstance(vpp, int) or vpp < 1:
        raise ValueError(f"vpp must be an integer >= 1, got {vpp!r}")
    if num_microbatches % pp != 0:
        raise ValueError(f"num_microbatches must be a multiple of pp={pp} for interleaved-1f1b, got {num_microbatches}")
    m = num_microbatches
    total = m * vpp
    programs = []
    for r in range(pp):
        warmup = min(2 * (pp - 1 - r) + (vpp - 1) * pp, total)

        def fwd(k: int) -> Instruction:
            mb, c = _virtual(k, pp, vpp, backward=False)
            return Instruction("F", mb, c * pp + r)

        def bwd(k: int) -> Instruction:
            mb, c = _virtual(k, pp, vpp, backward=True)
            return Instruction("BW", mb, c * pp + r)

        prog = [fwd(k) for k in range(warmup)]
        for i in range(total - warmup):
            prog.append(fwd(warmup + i))
            prog.append(bwd(i))
        prog.extend(bwd(k) for k in range(total - warmup, total))
        programs.append(tuple(prog))
    return Schedule(
        name="interleaved-1f1b",
        pp=pp,
        num_microbatches=m,
        num_stages=pp * vpp,
        programs=tuple(programs),
        placement=RoundRobinPlacement(pp),
        split_backward=False,
        params_per_rank=(float(vpp),) * pp,
    )
