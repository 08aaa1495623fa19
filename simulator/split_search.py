"""Choosing layers per stage by simulating a few candidate splits, where the balancing proxy cannot decide.

The proxy (`simulator.balance`) scores a split by its busiest rank's load: the sum of the solo times of the
units its stages hold. A pipeline's step is not that sum. Work on the end stages (the embedding on the first; the
output head, its loss and the MTP modules on the last) sits where the pipeline fills and drains, and under
DualPipe a rank's two stages run as overlapped forward-and-backward pairs whose length depends on how the two
chunks match, so a split can be slower by the proxy and faster as simulated. DeepSeek-V3 on PP16 DualPipe is the
case in point: the proxy's 4 x6, 5, 4 x8, 0 (the head and MTP alone on the last stage) against 4 x15, 1, which
simulates 4.7% faster at 32 micro-batches and holds 9 GiB less on its fullest rank.

What the proxy cannot weigh is the end stages' extra work, so the candidates are the proxy's splits with that
work weighed at other multiples of its cost (`EXTRA_WEIGHTS_DOWN`, `EXTRA_WEIGHTS_UP`); each multiple gives a
split through the same balancing (time, ranks, memory), and the step simulation decides among them: a short
step (a full pipeline's fewest micro-batches) for the walk, the run's own for near ties (`NEAR`). The walk
goes down from 1 while the simulated step gets faster, and up only when the first step down did not help
(Assumption: the step time is unimodal along the weight, which held in every case tried: DeepSeek-V3 under
DualPipe, 1F1B and interleaved 1F1B). Splits equal to one already seen cost nothing; a model whose candidates are
all one split is not simulated at all.
"""

from __future__ import annotations

from typing import Callable

# Multiples of the end stages' extra cost that the candidates are balanced with, in the order they are tried.
# Assumption: steps of a quarter of the extra work; 0 treats it as free, 2 as twice its cost. They are search
# points, not a model: every figure printed comes from simulating the split that wins. (Half steps found fewer
# splits: the Zero Bubble 6.2B case at 2 micro-batches lost 2.2%.)
EXTRA_WEIGHTS_DOWN = (0.75, 0.5, 0.25, 0.0)
EXTRA_WEIGHTS_UP = (1.25, 1.5, 2.0)

# A candidate replaces the best so far only when its simulated step is shorter by more than this share (so that
# rounding never flips a tie away from the proxy's own split).
MIN_GAIN = 1e-9

# The walk compares candidates on a short step (`screen_time`: a full pipeline's fewest micro-batches); those
# within this share of the best there are compared again on the run's own step (`final_time`), where fill and
# drain weigh less. Assumption: 1%; the short and long rankings of the splits tried disagreed by up to 0.1%
# (DeepSeek-V3's layout on 256 GPUs at sequence 1,024: 16, 15, 16, 14 led by 0.09% at 8 micro-batches and lost
# at the run's 32).
NEAR = 0.01


def search_split(split_at: Callable[[float], tuple[int, ...]],
                 screen_time: Callable[[tuple[int, ...]], float],
                 final_time: Callable[[tuple[int, ...]], float] | None = None) -> tuple[int, ...]:
    """The split with the shortest simulated step among those `split_at(weight)` gives along the weight walk.

    `split_at(w)`: the balanced split with the end stages' extra work weighed at w times its cost.
    `screen_time(split)`: its simulated short step, which the walk compares (called at most once per distinct
    split, and only when some other candidate differs from the proxy's own, `split_at(1.0)`).
    `final_time(split)`: its simulated step as the run takes it, asked only of the candidates within `NEAR` of
    the best short step when there are several; None: the short step decides."""
    proxy = split_at(1.0)
    times: dict[tuple[int, ...], float] = {}

    def time_of(split: tuple[int, ...]) -> float:
        if split not in times:
            times[split] = screen_time(split)
        return times[split]

    best = proxy

    def walk(weights: tuple[float, ...]) -> bool:
        """Go along `weights` while each new split beats the best; True if the first new split did."""
        nonlocal best
        previous, first = proxy, True
        for w in weights:
            split = split_at(w)
            if split == previous:
                continue
            previous = split
            if time_of(split) < time_of(best) * (1.0 - MIN_GAIN):
                best, first = split, False
                continue
            return not first
        return not first

    if not walk(EXTRA_WEIGHTS_DOWN):
        walk(EXTRA_WEIGHTS_UP)
    contenders = [s for s in times if times[s] <= times[best] * (1.0 + NEAR)] if times else [best]
    if final_time is None or len(contenders) < 2:
        return best
    finals = {s: final_time(s) for s in contenders}
    for split in contenders:  # in the order the walk tried them, the proxy's first
        if finals[split] < finals[best] * (1.0 - MIN_GAIN):
            best = split
    return best


# Under DualPipeV one rank holds both end stages (rank 0: stage 0 with the embedding and stage 2pp-1 with the head
# and MTP), so weighing the end work up or down moves layers at both ends at once, where the best split may load
# them unevenly (DeepSeek-V3 on PP16: the walk's 0, 2, 2, 3, 2 ... 2, 0 against 1, 2 ... 2, 0, 3.5% faster). After
# the walk, `refine_ends` moves one layer at a time into or out of each end stage (from the fullest stage, to the
# emptiest) while the simulated step gets shorter. Assumption: at most END_STEPS moves.
END_STEPS = 4


def end_moves(split: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The splits one layer away at each end stage: it takes one from the stage holding the most layers, or gives
    one to the stage holding the fewest (ties: the stage nearest to it). Layers stay contiguous: only the stage
    boundaries between the two stages shift by one."""
    n, out = len(split), []
    for end in ((0, n - 1) if n > 1 else ()):
        others = sorted((i for i in range(n) if i != end), key=lambda i: abs(i - end))
        donor = max(others, key=lambda i: split[i])          # max keeps the first (nearest) of equals
        receiver = min(others, key=lambda i: split[i])
        for give, take in ((donor, end), (end, receiver)):
            if split[give] > 0:
                moved = list(split)
                moved[give] -= 1
                moved[take] += 1
                out.append(tuple(moved))
    return out


def refine_ends(split: tuple[int, ...], step_time: Callable[[tuple[int, ...]], float],
                fits: Callable[[tuple[int, ...]], bool]) -> tuple[int, ...]:
    """Hill-climb from `split` over `end_moves` (those that `fits`), keeping a move only when its simulated step
    (`step_time`) is shorter by more than MIN_GAIN; at most END_STEPS moves."""
    best, best_time = split, step_time(split)
    for _ in range(END_STEPS):
        tried = [(step_time(s), s) for s in end_moves(best) if fits(s)]
        if not tried:
            break
        t, s = min(tried)
        if not t < best_time * (1.0 - MIN_GAIN):
            break
        best, best_time = s, t
    return best


# True: the losing candidates' simulators are emptied once a split is chosen (`release`); False: left to the
# cyclic collector (the same figures; for benchmarks).
RELEASE_LOSERS = True


def release(simulator) -> None:
    """Empty a step simulator that lost the split search, and its costers: their memoised methods refer back to
    them, so they would wait for the cyclic collector (a sweep pauses it inside a point, `sweep.evaluate_point`);
    emptied, reference counting frees them at once. Only objects of its own are emptied: what it shares (the
    model, the network, stage-class profiles) is only let go."""
    for obj in (getattr(simulator, "_shared", None), getattr(simulator, "_plain_coster", None),
                getattr(simulator, "coster", None), simulator):
        if isinstance(getattr(obj, "__dict__", None), dict):
            obj.__dict__.clear()
