"""Interleaved 1F1B (Megatron-LM virtual pipeline).

``num_stages = pp * vpp``; stage ``s`` lives on rank ``s % pp`` (rank ``r`` holds the model chunks
``r, r + pp, ..., r + (vpp-1) pp``).

Order (Megatron-Core's schedule table, megatron/core/pipeline_parallel/schedules.py `get_schedule_table`, derived
here in our words): the micro-batches are cut into consecutive groups of ``N`` (``microbatch_group_size_per_vp_
stage``, default ``pp``); the last group holds what is left (``M mod N`` micro-batches when N does not divide M).
Each rank walks ``M * vpp`` *virtual* forwards: group by group, and inside a group chunk 0 for every micro-batch of
the group, then chunk 1 for every one, ..., chunk vpp-1. Backwards walk the same sequence with the chunks reversed
(chunk ``vpp - 1 - c``). Rank ``r`` runs ``min(2 (pp-1-r) + (vpp-1) N, M vpp)`` warm-up forwards, then
(F, BW) pairs, then drains. With ``M`` a multiple of ``pp`` and ``N = pp`` the ``k``-th virtual forward is chunk
``(k // pp) % vpp`` of micro-batch ``(k // (pp vpp)) pp + k % pp``.

Group size: Megatron-Core accepts ``pp <= N <= M`` and refuses a last group of fewer than ``pp`` micro-batches
(``0 < M mod N < pp``: its ranks would wait on each other; with this order and warm-up our token simulation
deadlocks there, e.g. pp 4, vpp 3, M 5, N 4). So any ``M >= pp`` is built with ``N = pp`` when ``pp`` divides
``M``, else (Assumption: the group size a Megatron-Core user would have to set) the smallest ``N >= pp`` that
Megatron-Core accepts, which always exists (``N = M``: one group); an explicit ``group_size`` must meet the same
rules.

Unit costs per chunk (f, b = one virtual stage), ``M`` a multiple of ``pp``: the measured bubble of every rank is
``(pp - 1)(f + b)``, i.e. the README's ``(PP-1)(F+B)/v`` with ``F = v f``, ``B = v b`` the per-rank costs (tested
for f/b from 1/7 to 4). Activations in flight on rank ``r`` peak at its warm-up count plus one,
``min(2(pp-1-r) + (vpp-1) N + 1, M vpp)`` chunks, each ``1/vpp`` of a 1F1B stage's activations.
"""

from __future__ import annotations

from gpuhours.simulator.instructions import Instruction, Schedule
from gpuhours.simulator.schedules.onef1b import RoundRobinPlacement, check_common


def megatron_accepts(pp: int, num_microbatches: int, group_size: int) -> bool:
    """Megatron-Core's rule for microbatch_group_size_per_vp_stage N: pp <= N <= M, and the last group empty
    or of at least pp micro-batches."""
    rest = num_microbatches % group_size
    return pp <= group_size <= num_microbatches and not 0 < rest < pp


def default_group_size(pp: int, num_microbatches: int) -> int:
    """pp when it divides the micro-batches (Megatron-Core's default), else the smallest group size it accepts."""
    return next(n for n in range(pp, num_microbatches + 1) if megatron_accepts(pp, num_microbatches, n))


def virtual_order(num_microbatches: int, vpp: int, group_size: int) -> list[tuple[int, int]]:
    """(micro-batch, chunk) of each virtual forward of a rank, in order (the module docstring's table)."""
    order = []
    for low in range(0, num_microbatches, group_size):
        group = range(low, min(low + group_size, num_microbatches))
        order.extend((mb, chunk) for chunk in range(vpp) for mb in group)
    return order


def build_interleaved(pp: int, num_microbatches: int, vpp: int, group_size: int | None = None) -> Schedule:
    """Megatron-style interleaved 1F1B; ``vpp >= 1`` chunks per rank, any ``num_microbatches >= pp``; micro-batches
    move in groups of ``group_size`` (None: `default_group_size`)."""
    check_common(pp, num_microbatches)
    if not isinstance(vpp, int) or vpp < 1:
        raise ValueError(f"vpp must be an integer >= 1, got {vpp!r}")
    if num_microbatches < pp:
        raise ValueError(f"num_microbatches must be at least pp={pp} for interleaved-1f1b, got {num_microbatches}")
    m = num_microbatches
    n = default_group_size(pp, m) if group_size is None else group_size
    if isinstance(n, bool) or not isinstance(n, int) or not megatron_accepts(pp, m, n):
        raise ValueError(f"group_size must be a whole number from pp={pp} to the {m} micro-batches leaving a last "
                         f"group of 0 or at least pp micro-batches (Megatron-Core's rule), got {group_size!r}")
    order = virtual_order(m, vpp, n)
    total = m * vpp
    programs = []
    for r in range(pp):
        warmup = min(2 * (pp - 1 - r) + (vpp - 1) * n, total)

        def fwd(k: int) -> Instruction:
            mb, c = order[k]
            return Instruction("F", mb, c * pp + r)

        def bwd(k: int) -> Instruction:
            mb, c = order[k]
            return Instruction("BW", mb, (vpp - 1 - c) * pp + r)

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
