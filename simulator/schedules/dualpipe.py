"""DualPipe (DeepSeek-V3 report section 3.2.1; reference: github.com/deepseek-ai/DualPipe, ``dualpipe/dualpipe.py``).

Bidirectional pipeline on ``pp`` ranks (``pp`` even), ``num_stages = pp``. Micro-batches ``0 .. M/2-1`` form
direction 0: stage ``s`` on rank ``s`` (enter at rank 0). Micro-batches ``M/2 .. M-1`` form direction 1: stage
``s`` on rank ``pp-1-s`` (enter at rank ``pp-1``). Each rank therefore holds two stages' parameters (2x).

Rank ``r`` has a *near* phase (the direction entering at its own end: direction 0 for ``r < pp/2``) and a *far*
phase; with ``h = min(r, pp-1-r)`` and ``n = pp/2`` its program follows the reference's eight steps
(``P0`` near phase, ``P1`` far phase; ``B*`` a zero-bubble split B whose W is queued FIFO):

1. ``2(n-h-1)`` x F(P0)
2. ``h+1`` x [F(P0), F(P1)]
3. ``n-h-1`` x [B*(P1), W, F(P1)]
4. ``M/2 - pp + h + 1`` x [F(P0)&B(P1), F(P1)&B(P0)]   (middle ranks ``h = n-1`` run the very first pair
   un-overlapped as F(P0), BW(P1))
5. ``n-h-1`` x [BW(P1), F(P1)&B(P0)]
6. ``h+1`` x [B(P1), B(P0)], full backwards for the first half and B* from the middle on
7. ``n-h-1`` x [W, B*(P0)]
8. ``h+1`` x W

Unit costs f, b (full backward), w, fb (the F&B pair; default ``f + b``); ``b' = b - w``, ``n = pp/2``,
``K = M`` chunk pairs per rank (DualPipeV: ``n = pp``, ``K = 2M``). The order is fixed, so the makespan is the
longest path of a max-plus system, a maximum of linear forms. Collecting the forms by local linear fits at random
cost points and then checking the result against the engine on fresh random points (``M >= 2 pp``,
``max(f, b) <= fb <= f + b``; ``tests/test_schedule_closed_forms.py``) gives exactly

    makespan = (K - n - 2) fb + 2n f + (n+2) b' + 3w + max(n f, (n-1) b') + (n-1) max(b', w)

(for ``pp = 2``: ``(M - 3) fb + 3(f + b)``). Rank ``r`` (``h = min(r, pp-1-r)``) runs
``P(h) = K - 3n + h + 1 - [h = n-1]`` F&B pairs and ``K - P(h)`` lone F's and backwards (BW or B + W), so its bubble is
``makespan - P(h) fb - (K - P(h))(f + b)``, independent of ``M``. On the middle ranks (``h = n - 1``):

    bubble_mid = (n-1) (fb - 2w + max(0, w - b')) + max((n-1) f, (n-1) b' - f)

which, when ``b' >= w`` and ``(n-1) b' >= n f`` (a long backward), is the README's ``(PP/2-1)(F&B+B-3W)`` minus
one forward ``f``; with ``b' >= w`` and ``(n-1) b' <= n f`` (e.g. the default f=1, b=2, w=1) it is
``(n-1)(fb + f - 2w)``, which equals the README's value when ``b - w = f``. The outer ranks run
``n - 2 - h`` fewer pairs, i.e. more work: ``bubble(h) = bubble_mid - (n - 2 - h)(f + b - fb)`` for ``h < n - 1``
(so the middle ranks idle most when ``fb < f + b``; equal everywhere for ``fb = f + b``). Activations in flight peak at
``pp + 1`` chunks on every rank (the README's PP+1; DualPipeV: ``2 pp + 1`` half-size chunks).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gpuhours.simulator.instructions import Instruction, Schedule
from gpuhours.simulator.schedules.onef1b import check_common


@dataclass(frozen=True)
class DualDirectionPlacement:
    """Direction 0 (micro-batch < M/2): stage s on rank s; direction 1: stage s on rank pp-1-s."""

    pp: int
    half: int  # M/2: first micro-batch of direction 1

    def __call__(self, microbatch: int, stage: int) -> int:
        return stage if microbatch < self.half else self.pp - 1 - stage


class _Emitter:
    """Builds one rank's program phase by phase, as the reference's step loop does.

    ``phase_of(p)`` maps the rank's local phase (0 near, 1 far) to a stream id; ``chunk(stream, k)`` gives the
    (micro-batch, stage) of the ``k``-th chunk of that stream on this rank.
    """

    def __init__(self, stream_of_phase, chunk) -> None:
        self.stream_of_phase = stream_of_phase
        self.chunk = chunk
        self.n_f = {0: 0, 1: 0}
        self.n_b = {0: 0, 1: 0}
        self.w_queue: deque[tuple[int, int]] = deque()
        self.program: list[Instruction] = []

    def _next_f(self, phase: int) -> tuple[int, int]:
        st = self.stream_of_phase(phase)
        mb, stage = self.chunk(st, self.n_f[st])
        self.n_f[st] += 1
        return mb, stage

    def _next_b(self, phase: int) -> tuple[int, int]:
        st = self.stream_of_phase(phase)
        mb, stage = self.chunk(st, self.n_b[st])
        self.n_b[st] += 1
        return mb, stage

    def f(self, phase: int) -> None:
        self.program.append(Instruction("F", *self._next_f(phase)))

    def b(self, phase: int, zero_bubble: bool = False) -> None:
        mb, stage = self._next_b(phase)
        if zero_bubble:
            self.program.append(Instruction("B", mb, stage))
            self.w_queue.append((mb, stage))
        else:
            self.program.append(Instruction("BW", mb, stage))

    def fb(self, f_phase: int, b_phase: int) -> None:
        mb, stage = self._next_f(f_phase)
        bmb, bstage = self._next_b(b_phase)
        self.program.append(Instruction("FB", mb, stage, b_microbatch=bmb, b_stage=bstage))

    def w(self) -> None:
        self.program.append(Instruction("W", *self.w_queue.popleft()))


def dual_steps(e: _Emitter, n: int, h: int, main_steps: int, unoverlapped_first: bool) -> None:
    """The reference's eight steps for one rank (``n`` pairs of ranks or ranks; ``h`` distance to the entry)."""
    for _ in range(2 * (n - h - 1)):               # 1: fill with the near phase
        e.f(0)
    for _ in range(h + 1):                          # 2: both phases
        e.f(0)
        e.f(1)
    for _ in range(n - h - 1):                      # 3: B*, W, F of the far phase
        e.b(1, zero_bubble=True)
        e.w()
        e.f(1)
    for i in range(main_steps):                     # 4: main loop of overlapped pairs
        if i == 0 and unoverlapped_first:
            e.f(0)
            e.b(1)
        else:
            e.fb(0, 1)
        e.fb(1, 0)
    for _ in range(n - h - 1):                      # 5
        e.b(1)
        e.fb(1, 0)
    zero_bubble = False                             # 6: second half of these backwards split
    for i in range(h + 1):
        if i == (h + 1) // 2 and h % 2 == 1:
            zero_bubble = True
        e.b(1, zero_bubble)
        if i == (h + 1) // 2 and h % 2 == 0:
            zero_bubble = True
        e.b(0, zero_bubble)
    for _ in range(n - h - 1):                      # 7
        e.w()
        e.b(0, zero_bubble=True)
    for _ in range(h + 1):                          # 8
        e.w()
    if e.w_queue:
        raise AssertionError("DualPipe step walk left weight-gradient chunks queued")


def build_dualpipe(pp: int, num_microbatches: int) -> Schedule:
    """DualPipe programs; ``pp`` even, ``num_microbatches`` even and ``>= 2 pp``."""
    check_common(pp, num_microbatches)
    if pp % 2:
        raise ValueError(f"pp must be even for dualpipe, got {pp}")
    if num_microbatches % 2 or num_microbatches < 2 * pp:
        raise ValueError(f"num_microbatches must be even and >= 2*pp={2 * pp} for dualpipe, got {num_microbatches}")
    m, n, half = num_microbatches, pp // 2, num_microbatches // 2
    programs = []
    for r in range(pp):
        second_half = r >= n
        h = min(r, pp - 1 - r)

        def chunk(direction: int, k: int, r: int = r) -> tuple[int, int]:
            return (k, r) if direction == 0 else (half + k, pp - 1 - r)

        e = _Emitter(lambda phase, s=second_half: phase ^ s, chunk)
        dual_steps(e, n, h, main_steps=half - pp + h + 1, unoverlapped_first=(h == n - 1))
        programs.append(tuple(e.program))
    return Schedule(
        name="dualpipe",
        pp=pp,
        num_microbatches=m,
        num_stages=pp,
        programs=tuple(programs),
        placement=DualDirectionPlacement(pp, half),
        split_backward=True,
        params_per_rank=(2.0,) * pp,
    )
