"""ZB1P: zero-bubble ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024).

Stage ``s`` on rank ``s``, ``num_stages = pp``; the backward is split into ``B`` (input gradients, on the
critical path) and ``W`` (weight gradients, off it). Rank ``r`` runs the 1F1B skeleton (``min(pp-1-r, M)``
warm-up forwards, then F/B pairs, then the remaining B's) and lets its ``W``'s lag its ``B``'s by ``r``:
after each B it runs the oldest pending W only if more than ``r`` are pending; the last ``r`` W's close the
program. Since activations are freed at W, every rank peaks at ``min(pp, M)`` micro-batches in flight (1F1B:
``pp - r``), the README's "PP" for ZB1P; the W's of the later ranks fill their cool-down idle time.

Unit costs f, b (full backward), w (its weight part; split B costs ``b' = b - w``). Exact per-rank bubble,
the same on every rank, for every ``M >= pp`` (checked over a grid of costs in
``tests/test_schedule_closed_forms.py``):

    bubble = (pp - 1) (f + b' - min(f, b', w))

Sketch: as in 1F1B there are ``pp - 1`` pipeline hops on each of the fill and drain paths, each costing a slot of
``f + b'`` (W has left the critical path); in each slot a rank can hide one pending W, but a W only fits whole
into a gap no longer than the forward (fill side) or the B hop (drain side), so each slot shrinks by
``min(f, b', w)``. With ``w <= min(f, b')`` (the usual case: W about half of a full backward) this is the
README's ``(PP-1)(F+B-2W)`` with ``B = b`` the full backward.

``M < pp`` is accepted (the programs stay valid) but there are too few W's to fill the drain, so the bubble is
larger than the formula; the closed form is promised for ``M >= pp`` only.
"""

from __future__ import annotations

from gpuhours.simulator.instructions import Instruction, Schedule
from gpuhours.simulator.schedules.onef1b import RoundRobinPlacement, check_common


def build_zb1p(pp: int, num_microbatches: int) -> Schedule:
    """ZB-H1 programs with W lagging B by ``r`` on rank ``r``; any ``num_microbatches >= 1``."""
    check_common(pp, num_microbatches)
    m = num_microbatches
    programs = []
    for r in range(pp):
        warmup = min(pp - 1 - r, m)
        prog = [Instruction("F", i, r) for i in range(warmup)]
        n_b = n_w = 0

        def backward() -> None:
            nonlocal n_b, n_w
            prog.append(Instruction("B", n_b, r))
            n_b += 1
            if n_b - n_w > r:
                prog.append(Instruction("W", n_w, r))
                n_w += 1

        for i in range(m - warmup):
            prog.append(Instruction("F", warmup + i, r))
            backward()
        while n_b < m:
            backward()
        prog.extend(Instruction("W", i, r) for i in range(n_w, m))
        programs.append(tuple(prog))
    return Schedule(
        name="zb1p",
        pp=pp,
        num_microbatches=m,
        num_stages=pp,
        programs=tuple(programs),
        placement=RoundRobinPlacement(pp),
        split_backward=True,
        params_per_rank=(1.0,) * pp,
    )
