"""Pipeline stage balancing: layers per stage by simulated time, then by memory where time alone does not fit.

`partition_layers` (dynamic programming over contiguous runs) and `rebalance_for_ranks` (hill climbing on the
busiest rank's load) give the time-balanced split; `fit_memory` moves layers off the ranks over the GPU's memory
when another split of nearly the same time fits (`MEMORY_TIME_SLACK`); `split_memory` is the busiest rank's memory
of a split by `workloads.memory`'s formulas (the sum `memory_breakdown` reports).
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import Callable

import numpy as np

from gpuhours.simulator.split_memo import held_params_memo, peak_bytes, rank_memory_memo, stage_chunk_bytes
from gpuhours.workloads.parallel import ParallelSpec

# Assumption: a split up to 5% slower (busiest rank's simulated load) than the time-balanced one still counts as
# "similar time". Past that, a layout that does not fit is the planner's problem (more stages, recomputation,
# ZeRO), not a balancing choice, so the time-balanced split is kept and the memory report says it does not fit.
MEMORY_TIME_SLACK = 0.05

# `split_memory` keeps each rank's figure per its held stages (`split_memo.rank_memory_memo`); False: every rank
# computed every time (the same figures; for benchmarks and tests).
SPLIT_RANK_MEMO = True


def partition_layers(layer_cost: list[float], num_stages: int, first_extra: float = 0.0,
                     last_extra: float = 0.0, *, head_cost: list[float] | None = None,
                     head_layers: int = 0) -> tuple[int, ...]:
    """Split layers into `num_stages` contiguous, non-empty runs minimising the largest stage cost.

    The first stage also pays `first_extra` and the last `last_extra`; a stage with such extra work may hold no
    layer at all (a last stage of just the head and MTP), every other stage holds at least one.
    O(stages x layers^2) dynamic programming (one array operation per stage); ties go to the earliest split, so
    equal layers give the balanced split with the remainders on the last stages (10 layers on 3 stages: 3, 3, 4).
    `head_cost[i]`: what layer i costs more when it is among the first `head_layers` layers of its stage ("full:N"
    recomputation, `workloads.recompute`: those layers run their forward again), so a stage of layers i..j-1 costs
    sum(layer_cost[i:j]) + sum(head_cost[i:min(i + head_layers, j)]).
    """
    n = len(layer_cost)
    if not 1 <= num_stages <= n:
        raise ValueError(f"stages ({num_stages}) must be between 1 and the number of layers ({n})")
    min_layers = _min_layers(num_stages, first_extra, last_extra)
    prefix = list(accumulate(layer_cost, initial=0.0))  # 0.0, c0, c0 + c1, ... added one at a time

    # best[s][j]: the least largest stage cost of layers 0..j-1 on stages 0..s-1; cut[s][j] the first layer of
    # stage s-1 in that split. Each row is one (j, i) array: stage s-1 holds layers i..j-1.
    inf = float("inf")
    pre = np.array(prefix)
    j_idx, i_idx = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
    head = _head_prefix(head_cost, n)
    head_extra = head[np.minimum(i_idx + head_layers, j_idx).clip(min=0)] - head[i_idx] if head_layers else 0.0
    span = pre[:, None] - pre[None, :] + head_extra  # layers i..j-1 as one stage, before its extra work
    # stages that would hold fewer layers than they must: inf added (every cost is finite, x + 0.0 is x)
    blocked = {m: np.where(i_idx > j_idx - m, inf, 0.0) for m in set(min_layers)}
    best = np.full((num_stages + 1, n + 1), inf)
    cut = np.zeros((num_stages + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    value = np.empty((n + 1, n + 1))  # one buffer for every stage's (j, i) table
    tolerance = 1e-12 * max(pre[-1], 1e-300)
    for s in range(1, num_stages + 1):
        extra = (first_extra if s == 1 else 0.0) + (last_extra if s == num_stages else 0.0)
        mask = blocked[min_layers[s - 1]]
        if s == 1:  # best[0] is inf past i = 0: the first column alone, every cut 0 (as `cut` starts)
            best[1] = np.maximum(span[:, 0] + extra, best[0, 0]) + mask[:, 0]
            continue
        if s == num_stages:  # nothing reads the last stage's rows but j = n (all the layers)
            row = np.maximum(span[n] + extra, best[s - 1]) + mask[n]
            best[s, n] = low = row.min()
            cut[s, n] = (row <= low + tolerance).argmax() if np.isfinite(low) else 0
            continue
        np.maximum(np.add(span, extra, out=value), best[s - 1][None, :], out=value)
        value += mask
        low = value.min(axis=1)
        # ties go to the earliest split: the first i within rounding (1e-12 of the total) of the minimum
        tie = value <= (low + tolerance)[:, None]
        best[s] = low
        cut[s] = np.where(np.isfinite(low), tie.argmax(axis=1), 0)
    if best[num_stages][n] == inf:
        raise ValueError(f"cannot split {n} layers into {num_stages} stages")
    sizes, j = [], n
    for s in range(num_stages, 0, -1):
        i = cut[s][j]
        sizes.append(j - i)
        j = i
    return tuple(reversed(sizes))


def _head_prefix(head_cost: list[float] | None, n: int) -> np.ndarray:
    """Prefix sums of `head_cost` (zeros without one), n + 1 entries."""
    return np.concatenate(([0.0], np.cumsum(np.asarray(head_cost if head_cost is not None else [0.0] * n, float))))


def stage_ranks(parallel: ParallelSpec) -> tuple[tuple[int, ...], ...]:
    """The ranks that hold each stage: rank s (1F1B, ZB1P), s mod pp (interleaved), s and pp-1-s (DualPipe),
    the V of DualPipeV (s for s < pp, 2pp-1-s after)."""
    pp, n = parallel.pp, parallel.num_stages
    if parallel.schedule == "dualpipe":
        return tuple((s, pp - 1 - s) for s in range(n))
    if parallel.schedule == "dualpipev":
        return tuple((s if s < pp else 2 * pp - 1 - s,) for s in range(n))
    return tuple((s % pp,) for s in range(n))


def _min_layers(num_stages: int, first_extra: float, last_extra: float) -> list[int]:
    """Layers each stage must hold: one, except an end stage that already carries embedding or head work."""
    mins = [1] * num_stages
    if num_stages > 1:
        mins[0] = 0 if first_extra > 0 else 1
        mins[-1] = 0 if last_extra > 0 else 1
    return mins


def rebalance_for_ranks(sizes: tuple[int, ...], layer_cost: list[float], holders: tuple[tuple[int, ...], ...],
                        first_extra: float = 0.0, last_extra: float = 0.0, *, head_cost: list[float] | None = None,
                        head_layers: int = 0) -> tuple[int, ...]:
    """Move one layer at a time from one stage to another while that lowers the busiest rank's load.

    A rank's load is the sum of the costs of the stages it holds (DualPipe's rank r holds stages r and PP-1-r,
    so balancing stages alone leaves rank 0, with the embedding and the head, the busiest). Stages stay
    contiguous: only their sizes change. Hill climbing on (max rank load, max stage cost); every stage keeps the
    layers `partition_layers` requires of it (`head_cost`, `head_layers`: as there).
    """
    mins = _min_layers(len(sizes), first_extra, last_extra)
    if sorted(r for rs in holders for r in rs) == list(range(len(holders))):  # one stage per rank, one rank each
        cost = _stage_coster(layer_cost, len(sizes), first_extra, last_extra, head_cost, head_layers)
        return _rebalance_one_per_rank(tuple(sizes), mins, cost, sum(layer_cost) + first_extra + last_extra or 1.0)
    score = time_scorer(layer_cost, holders, first_extra, last_extra, head_cost=head_cost, head_layers=head_layers)
    best, best_score = tuple(sizes), score(tuple(sizes))
    improved = True
    while improved:
        improved = False
        for a in range(len(best)):
            for b in range(len(best)):
                if a == b or best[a] == mins[a]:
                    continue
                sz = list(best)
                sz[a] -= 1
                sz[b] += 1
                sc = score(tuple(sz))
                if sc < best_score:
                    best, best_score, improved = tuple(sz), sc, True
    return best


def _rebalance_one_per_rank(sizes: tuple[int, ...], mins: list[int], cost, scale: float) -> tuple[int, ...]:
    """`rebalance_for_ranks` where every rank holds one stage: a rank's load is its stage's cost, so a split's
    score is (M, M) for its most expensive stage M (over the total, rounded as `time_scorer` does). The moves are
    tried in the same order and the first that lowers the score is taken, as there; what changes is the cost of
    trying one: for a layer moved from stage a to stage b, only the stages between them change (each shifts by one
    layer), so with the most expensive stage before and after that range known, a's moves to every b cost one pass
    over the stages rather than one per b. Stage costs come from `cost(stage, first layer, layers)`, the same
    memoised sums `time_scorer` adds."""
    n = len(sizes)
    best = list(sizes)

    def value(m: float) -> float:
        return round(m / scale, 9)

    def state():
        starts, c = [], []
        start = 0
        for s, k in enumerate(best):
            starts.append(start)
            c.append(cost(s, start, k))
            start += k
        before = [-math.inf] * (n + 1)  # before[s]: most expensive of stages 0..s-1
        for s in range(n):
            before[s + 1] = max(before[s], c[s])
        after = [-math.inf] * (n + 1)   # after[s]: most expensive of stages s..n-1
        for s in range(n - 1, -1, -1):
            after[s] = max(after[s + 1], c[s])
        return starts, c, before, after

    def later(a: int) -> list[float]:
        """later[b] for b < a: the most expensive of stages b+1..a-1 each one layer later."""
        out = [-math.inf] * max(a, 1)
        for s in range(a - 2, -1, -1):
            out[s] = max(out[s + 1], cost(s + 1, starts[s + 1] + 1, best[s + 1]))
        return out

    starts, c, before, after = state()
    best_value = value(max(c))
    improved = True
    while improved:
        improved = False
        for a in range(n):
            if best[a] == mins[a]:
                continue
            down, earlier = later(a), -math.inf  # earlier: the most expensive of stages a+1..b-1, one layer earlier
            for b in range(n):
                if best[a] == mins[a]:
                    break
                if b > a + 1:
                    earlier = max(earlier, cost(b - 1, starts[b - 1] - 1, best[b - 1]))
                if a == b:
                    continue
                if b > a:
                    top = max(before[a], after[b + 1], cost(a, starts[a], best[a] - 1),
                              cost(b, starts[b] - 1, best[b] + 1), earlier)
                else:
                    top = max(before[b], after[a + 1], cost(b, starts[b], best[b] + 1),
                              cost(a, starts[a] + 1, best[a] - 1), down[b])
                v = value(top)
                if v < best_value:
                    best[a] -= 1
                    best[b] += 1
                    best_value, improved = v, True
                    starts, c, before, after = state()
                    if best[a] > mins[a]:  # otherwise no more moves from a
                        down = later(a)
                        earlier = max((cost(s, starts[s] - 1, best[s]) for s in range(a + 1, b + 1)),
                                      default=-math.inf)
    return tuple(best)


def _stage_coster(layer_cost: list[float], num_stages: int, first_extra: float, last_extra: float,
                  head_cost: list[float] | None, head_layers: int):
    """cost(stage, first layer, layers): a stage's cost as `time_scorer` adds it (its layers' sums memoised per
    run, the first stage's `first_extra`, the last's `last_extra`)."""
    head = _head_prefix(head_cost, len(layer_cost))
    run_sums: dict[tuple[int, int], float] = {}
    last = num_stages - 1

    def cost(s: int, start: int, n: int) -> float:
        key = (start, n)
        total = run_sums.get(key)
        if total is None:
            total = run_sums[key] = sum(layer_cost[start:start + n]) + (
                float(head[start + min(n, head_layers)] - head[start]) if head_layers else 0.0)
        c = total + (first_extra if s == 0 else 0.0)
        c += last_extra if s == last else 0.0
        return c

    return cost


def _moves(sizes: tuple[int, ...], mins: list[int]):
    """Every split one layer away from `sizes` (a layer taken from stage a, given to stage b), a then b ascending."""
    for a in range(len(sizes)):
        for b in range(len(sizes)):
            if a == b or sizes[a] == mins[a]:
                continue
            sz = list(sizes)
            sz[a] -= 1
            sz[b] += 1
            yield tuple(sz)


def time_scorer(layer_cost: list[float], holders: tuple[tuple[int, ...], ...], first_extra: float = 0.0,
                last_extra: float = 0.0, *, head_cost: list[float] | None = None, head_layers: int = 0):
    """score(sizes) -> (busiest rank's load, most expensive stage), both over the total cost and rounded to 1e-9
    so that sums of equal layers grouped differently tie exactly. A rank's load is the sum of its stages' costs
    (`holders[s]`: the ranks holding stage s); stage costs are memoised per run of layers. A run's first
    `head_layers` layers also cost their `head_cost` (`partition_layers`)."""
    num_ranks = 1 + max(r for rs in holders for r in rs)
    scale = sum(layer_cost) + first_extra + last_extra or 1.0
    cost = _stage_coster(layer_cost, len(holders), first_extra, last_extra, head_cost, head_layers)

    def score(sz: tuple[int, ...]) -> tuple[float, float]:
        stage_cost, start = [], 0
        for s, n in enumerate(sz):
            stage_cost.append(cost(s, start, n))
            start += n
        load = [0.0] * num_ranks
        for s, c in enumerate(stage_cost):
            for r in holders[s]:
                load[r] += c
        return round(max(load) / scale, 9), round(max(stage_cost) / scale, 9)

    return score


def fit_memory(sizes: tuple[int, ...], layer_cost: list[float], holders: tuple[tuple[int, ...], ...],
               memory: Callable[[tuple[int, ...]], tuple[float, ...]], capacity: float, first_extra: float = 0.0,
               last_extra: float = 0.0, slack: float = MEMORY_TIME_SLACK, *, head_cost: list[float] | None = None,
               head_layers: int = 0) -> tuple[int, ...]:
    """A split that fits in `capacity` bytes, if the time-balanced `sizes` do not and one of similar time does.

    Rule: keep `sizes` when every rank's memory (`memory(split)`: bytes per rank) is within `capacity`.
    Otherwise look for a fitting split one layer move at a time (stages stay contiguous and keep the layers
    `partition_layers` requires). A split's slowdown is the larger of its busiest rank's load and its most
    expensive stage over those of `sizes` (`time_scorer`; the rank load alone would let a DualPipe rank swap a
    layer between its two stages and lengthen the pipeline's slowest stage). First, while some rank is over,
    take the move that most lowers (busiest rank's memory over capacity, slowdown), among the moves of a layer
    off a stage of a rank that is over (a rank's memory depends only on the stages it holds); then, while some
    move lowers the slowdown and still fits, take the one lowering it most. Return that split when it fits with
    a slowdown of at most 1 + `slack`; else return `sizes` (no split of similar time fits: the layout, not the
    balance, must change)."""
    sizes = tuple(sizes)
    seen: dict[tuple[int, ...], tuple[float, ...]] = {}

    def per_rank(sz: tuple[int, ...]) -> tuple[float, ...]:
        if sz not in seen:
            seen[sz] = tuple(memory(sz))
        return seen[sz]

    def over(sz: tuple[int, ...]) -> float:
        return max(0.0, max(per_rank(sz)) - capacity)

    if over(sizes) == 0:
        return sizes
    score = time_scorer(layer_cost, holders, first_extra, last_extra, head_cost=head_cost, head_layers=head_layers)
    base = score(sizes)

    def slowdown(sz: tuple[int, ...]) -> tuple[float, tuple[float, float]]:
        sc = score(sz)
        return round(max(sc[0] / base[0] if base[0] else 1.0, sc[1] / base[1] if base[1] else 1.0), 9), sc

    mins = _min_layers(len(sizes), first_extra, last_extra)
    best, best_key = sizes, (over(sizes), slowdown(sizes))
    while best_key[0] > 0:  # phase 1: get under the capacity
        full = {r for r, b in enumerate(per_rank(best)) if b > capacity}
        donors = {s for s, rs in enumerate(holders) if full & set(rs)}
        options = [(over(sz), slowdown(sz), sz) for sz in _moves(best, mins)
                   if any(a in donors and sz[a] < best[a] for a in range(len(sz)))]
        if not options or min(o[:2] for o in options) >= best_key:
            return sizes
        o, key, best = min(options, key=lambda x: x[:2])
        best_key = (o, key)
    improved = True
    while improved:  # phase 2: the fastest fitting split nearby
        improved = False
        for key, sz in sorted((slowdown(sz), sz) for sz in _moves(best, mins)):
            if key >= best_key[1]:
                break
            if over(sz) == 0:
                best, best_key, improved = sz, (0.0, key), True
                break
    return best if best_key[1][0] <= 1 + slack else sizes


def split_memory(model, p: ParallelSpec, seq_len: int, stage_layers: tuple[int, ...], recipe, opts,
                 num_microbatches: int | None = None) -> tuple[float, ...]:
    """Per-rank memory (bytes: state, peak in-flight activations, context-parallel K/V buffer and headroom) of
    `stage_layers`, summed as `workloads.memory.memory_breakdown` does, at `num_microbatches` (default 2 pp: past
    every schedule's warm-up, so in-flight activations have reached their peak). Stage activations and rank
    parameters come through `simulator.split_memo` (the same figures, each computed once per what it reads)."""
    from gpuhours.simulator.schedules import build_schedule
    from gpuhours.simulator.step import _stages_per_rank, rank_params
    from gpuhours.workloads.memory import cp_gathered_kv_bytes, gathered_params, rank_state_bytes

    m = num_microbatches or 2 * p.pp
    schedule = build_schedule(p.schedule, p.pp, m, vpp=p.vpp)
    starts = [0]
    for n in stage_layers:
        starts.append(starts[-1] + n)
    last = len(stage_layers) - 1
    held = _stages_per_rank(schedule)
    # a rank's figure reads only its own stages: kept per (rank, their ranges) (`split_memo.rank_memory_memo`)
    ats = [tuple((starts[s], starts[s + 1], s == 0, s == last) for s in stages) for stages in held]
    memo = rank_memory_memo(model, p, seq_len, recipe, opts, m) if SPLIT_RANK_MEMO else None
    out = [None if memo is None else memo.get((r, at)) for r, at in enumerate(ats)]
    todo = [r for r, x in enumerate(out) if x is None]
    if not todo:
        return tuple(out)
    part = len(todo) < len(held)  # the other ranks' stages are not read
    per_stage = (stage_chunk_bytes(model, p, seq_len, stage_layers, recipe, opts,
                                   stages=set().union(*(held[r] for r in todo))) if part
                 else stage_chunk_bytes(model, p, seq_len, stage_layers, recipe, opts))
    # `memory.peak_in_flight`'s bytes, every rank to compute at once
    act = dict(zip(todo, peak_bytes(schedule, per_stage, todo if part else None)))
    kv = cp_gathered_kv_bytes(model, p, seq_len)
    params = held_params_memo(model, p)  # `simulator.split_memo`
    for rank in todo:
        stages, at = held[rank], ats[rank]
        # `rank_params` reads of the split only each held stage's layer range and whether it is the first or
        # last, in the set's order: memoised by exactly that (neighbouring candidate splits share most ranks)
        if at not in params:
            params[at] = rank_params(model, p, stage_layers, stages)
        dense, expert = params[at]
        state = rank_state_bytes(dense, expert, p, recipe, gathered_params(model, p, stage_layers, stages))
        allocated = sum(state.values()) + act[rank] + kv
        out[rank] = allocated + recipe.reserved_bytes + recipe.fragmentation * allocated
        if memo is not None:
            memo[(rank, at)] = out[rank]
    return tuple(out)
