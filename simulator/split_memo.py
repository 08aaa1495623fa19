"""Memos for `balance.split_memory`, which `balance.fit_memory` asks of dozens of candidate splits that differ by
one layer move: each stage's activation bytes (`memory.chunk_bytes`) and each rank's parameters
(`step.rank_params`) computed once per what they read, so every split's figures are the ones computed directly.
Kept per process, per (model, layout, sequence, recipe, options), the oldest key out beyond `_CHUNK_MEMO_LIMIT`;
`clear_split_memos()` empties them.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from gpuhours.workloads.parallel import ParallelSpec


def clear_split_memos() -> None:
    _CHUNK_MEMO.clear()
    _RANK_PARAMS.clear()
    _RANK_MEMORY.clear()


def rank_memory_memo(model, p: ParallelSpec, seq_len: int, recipe, opts, num_microbatches: int) -> dict | None:
    """The dict `split_memory` keeps each rank's memory in, keyed by (rank, its held stages' (start, end, first,
    last) in the set's order): a rank's figure reads of the split only its own stages (their activation bytes,
    `stage_chunk_bytes`, which reads a stage's first layer, length and end flags; the parameters `rank_params`
    and `gathered_params` read the same), so a split one layer move away recomputes only the ranks holding the
    two stages that changed (`fit_memory` asks every move of a split). Per (model, layout, sequence, recipe, the
    options `chunk_bytes` reads, micro-batches); None when a field is unhashable (no memo)."""
    key = (model, p, seq_len, recipe, opts.fp8, opts.recompute, opts.kept_imbalance, opts.attention_impl,
           num_microbatches)
    try:
        memo = _RANK_MEMORY.get(key)
    except TypeError:  # an unhashable field (none today): no memo
        return None
    if memo is None:
        if len(_RANK_MEMORY) >= _CHUNK_MEMO_LIMIT:
            _RANK_MEMORY.pop(next(iter(_RANK_MEMORY)))
        memo = _RANK_MEMORY[key] = {}
    return memo


def held_params_memo(model, p: ParallelSpec) -> dict:
    """The dict `split_memory` keeps `rank_params` results in for (model, p), keyed by the held stages' (start,
    end, first, last) in the set's order (all that `rank_params` reads of a split); a fresh one when the key is
    unhashable."""
    try:
        params = _RANK_PARAMS.setdefault((model, p), {})
    except TypeError:  # an unhashable field (none today): no memo
        return {}
    if len(_RANK_PARAMS) > _CHUNK_MEMO_LIMIT:
        _RANK_PARAMS.pop(next(iter(_RANK_PARAMS)))
    return params


# Per (model, layout, sequence, recipe, options): each stage's chunk bytes by (first layer, layers, first, last).
# Candidate splits of `fit_memory` differ from each other by one layer move, so most of their stages recur.
# Assumption (our bound): a few dozen layouts per worker; each entry holds a few hundred floats.
_CHUNK_MEMO: dict[tuple, dict | None] = {}
_RANK_PARAMS: dict[tuple, dict] = {}  # per (model, layout): `rank_params` by the held stages' ranges
_RANK_MEMORY: dict[tuple, dict] = {}  # per (model, layout, ...): each rank's `split_memory` figure (`rank_memory_memo`)
_CHUNK_MEMO_LIMIT = 32


def stage_chunk_bytes(model, p: ParallelSpec, seq_len: int, stage_layers: tuple[int, ...], recipe, opts,
                      stages: set[int] | None = None) -> tuple[float, ...]:
    """`memory.chunk_bytes(model, p, seq_len, stage_layers, recipe, opts...)`, each stage's figure computed once
    per (first layer, layer count, first stage, last stage): `chunk_bytes` computes a stage from exactly these
    (`unit_bytes_per_token` of its layer range and `stage_holds`), and `unit_bytes_per_token` is the sum, layer
    by layer, of each layer's `layer_terms` (kept per (layer, policy): `_layer_bytes`) plus what the stage holds
    besides its layers, added in the same order here. The first split asked for under a key is
    also computed by `chunk_bytes` itself; when the two differ (chunk_bytes reading something else) that key
    always calls `chunk_bytes`. `stages`: only those stages' figures are needed (the others may read 0.0, once
    the key has been checked)."""
    from gpuhours.workloads.memory import chunk_bytes, unit_bytes_per_token
    from gpuhours.workloads.pipeline_layout import stage_holds
    from gpuhours.workloads.recompute import layer_policy, recompute_policy

    key = (model, p, seq_len, recipe, opts.fp8, opts.recompute, opts.kept_imbalance)
    direct = (model, p, seq_len, stage_layers, recipe, opts.fp8, opts.recompute, opts.kept_imbalance,
              opts.attention_impl)
    if opts.attention_impl != "flash":  # the unfused core's score bytes are not in the per-layer rows: direct
        return chunk_bytes(*direct)
    try:
        memo = _CHUNK_MEMO.get(key, {})
    except TypeError:  # an unhashable field (none today): no memo
        memo = None
    if memo is None:
        return chunk_bytes(*direct)
    tokens = p.micro_batch_size * seq_len // p.cp
    tp_replicas = 1 if p.sequence_parallel else p.tp
    policy = partial(layer_policy, recompute_policy(opts.recompute))
    out, start, last = [], 0, len(stage_layers) - 1
    checked = key in _CHUNK_MEMO
    for s, n in enumerate(stage_layers):
        if checked and stages is not None and s not in stages:
            out.append(0.0)
            start += n
            continue
        at = (start, n, s == 0, s == last)
        figure = memo.get(at)
        if figure is None:
            layers = range(start, start + n)
            # unit_bytes_per_token: the sum, layer by layer, of each layer's kept terms (each stage start's row of
            # them kept, so a stage one layer longer or shorter reads it: the same values summed the same way),
            # plus what the stage holds besides its layers (head, MTP), which is that function over no layers
            # (it reads only the end flags and `holds` then: kept by them)
            row = memo.setdefault(("row", start), [])
            while len(row) < n:
                i = start + len(row)
                row.append(_layer_bytes(model, i, policy(i - start), recipe, opts, tp_replicas, p.etp, memo))
            per_layer = sum(row[:n])
            holds = stage_holds(p, layers, s == 0, s == last)
            extra = memo.get(("extra", s == 0, s == last, holds))
            if extra is None:
                extra = memo[("extra", s == 0, s == last, holds)] = unit_bytes_per_token(
                    model, range(start, start), s == 0, s == last, recipe, opts.fp8, opts.recompute,
                    opts.kept_imbalance, tp_replicas, p.etp, holds)
            figure = memo[at] = tokens * (per_layer + extra) / p.tp
        out.append(figure)
        start += n
    if key not in _CHUNK_MEMO:  # the check, once per key
        if len(_CHUNK_MEMO) >= _CHUNK_MEMO_LIMIT:
            _CHUNK_MEMO.pop(next(iter(_CHUNK_MEMO)))
        if tuple(out) != chunk_bytes(*direct):
            _CHUNK_MEMO[key] = None
            return chunk_bytes(*direct)
        _CHUNK_MEMO[key] = memo
    return tuple(out)


def _layer_bytes(model, layer: int, policy: str, recipe, opts, tp_replicas: int, etp: int, memo: dict) -> float:
    """sum(memory.layer_terms(...).values()) of one layer under its resolved policy, memoised by (layer, policy)
    in the key's memo (its other arguments are the key's)."""
    from gpuhours.workloads.memory import layer_terms

    at = ("layer", layer, policy)
    hit = memo.get(at)
    if hit is None:
        hit = memo[at] = sum(layer_terms(model, layer, recipe, opts.fp8, policy, opts.kept_imbalance, tp_replicas,
                                         etp).values())
    return hit


# Per schedule shape: every rank's allocating and freeing stages, padded to the longest program (`_stacked_events`)
_STACKED: dict[tuple, tuple] = {}


def peak_bytes(schedule, stage_bytes: tuple[float, ...], ranks: list[int] | None = None) -> tuple[float, ...]:
    """`memory.peak_in_flight(schedule, stage_bytes)[0]`, every rank at once: the same sums in the same order
    (per instruction the bytes of the chunks it allocates, and frees, added in part order; a running sum of their
    difference along the program, plus what the instruction frees; its largest value, at least 0), with the
    programs padded at the end by instructions that allocate and free nothing (each adds 0.0 to the running sum,
    so it repeats the program's last value, already counted). `fit_memory` asks it of dozens of splits of one
    schedule: one array operation each instead of one per rank. `ranks`: those ranks' peaks only, in that order
    (each row is summed on its own, so a rank's figure is the same whichever rows are asked; `split_memory` asks
    only the ranks a layer move touched)."""
    alloc, free, empty = _stacked_events(schedule)
    if ranks is not None:
        alloc, free, empty = alloc[ranks], free[ranks], tuple(empty[r] for r in ranks)
    weights = np.append(np.asarray(stage_bytes, dtype=float), 0.0)  # index -1: no stage
    a = weights[alloc].sum(axis=2)
    f = weights[free].sum(axis=2)
    peaks = (np.cumsum(a - f, axis=1) + f).max(axis=1)
    return tuple(0.0 if e else max(float(x), 0.0) for x, e in zip(peaks, empty))


def _stacked_events(schedule) -> tuple[np.ndarray, np.ndarray, tuple[bool, ...]]:
    from gpuhours.workloads.in_flight import _live_events

    key = (schedule.name, schedule.pp, schedule.num_microbatches, schedule.num_stages)  # as `_live_events`
    hit = _STACKED.get(key)
    if hit is None:
        events = _live_events(schedule)
        longest = max([len(a) for a, _ in events] + [1])
        alloc = np.full((len(events), longest, 2), -1)
        free = np.full((len(events), longest, 2), -1)
        for r, (a, f) in enumerate(events):
            alloc[r, :len(a)] = a
            free[r, :len(f)] = f
        if len(_STACKED) >= 32:
            _STACKED.pop(next(iter(_STACKED)))
        hit = _STACKED[key] = (alloc, free, tuple(len(a) == 0 for a, _ in events))
    return hit
