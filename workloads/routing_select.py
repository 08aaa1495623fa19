"""Expert selection for one chunk of tokens: gate scores from exponential noise, the group-limited top-k (a fast
value-threshold version and the plain reference), round-robin balanced routing, capacity dropping.

The affinity model and the selection rule (DeepSeek-V3 `noaux_tc`) are described in workloads/routing.py's module
docstring; split out of routing.py (same behaviour, same names re-exported there).
"""

from __future__ import annotations

import math

import numpy as np

from gpuhours.workloads.model import MoESpec


def _balanced_experts(moe: MoESpec, tokens: int, experts_per_rank: int) -> np.ndarray:
    """Round-robin routing honouring the group limit: every expert gets the same rows when divisibility allows.

    Visit v = t * topk_groups + j (j-th group slot of token t) goes to group v % n_groups and takes
    n_j = ceil((top_k - j) / topk_groups) experts there, continuing that group's round-robin cursor.  Cursor
    positions are dealt across the group's ranks first (position c -> rank c % R, local expert c // R), so the
    picks of one visit land on different GPUs, as random routing mostly does.
    """
    G, tg, k, epg = moe.n_groups, moe.topk_groups, moe.top_k, moe.experts_per_group
    tg = min(tg, k)  # a token cannot use more groups than experts
    v = np.arange(tokens * tg, dtype=np.int64)
    group = v % G
    j = v % tg
    n = (k - j + tg - 1) // tg  # picks made in this visit
    order = np.argsort(group, kind="stable")
    cum = np.cumsum(n[order]) - n[order]  # picks before this visit, over all groups in sorted order
    starts = np.zeros(G, dtype=np.int64)
    counts = np.bincount(group, weights=n, minlength=G).astype(np.int64)
    starts[1:] = np.cumsum(counts)[:-1]
    cursor = np.empty_like(cum)
    cursor[order] = cum - starts[group[order]]
    out = np.empty((tokens, k), dtype=np.int64)
    # slot i of token t: visit j = i % tg, pick q = i // tg
    for i in range(k):
        jj, q = i % tg, i // tg
        vis = np.arange(tokens, dtype=np.int64) * tg + jj
        out[:, i] = group[vis] * epg + (cursor[vis] + q) % epg
    R = epg // experts_per_rank if epg % experts_per_rank == 0 else 1  # ranks a group spans
    if R > 1:
        c = out % epg
        out = (out - c) + (c % R) * experts_per_rank + c // R
    return out.astype(np.int16)


def _scale_by_sequence(x: np.ndarray, weight: np.ndarray, seq_of_token: np.ndarray, divide: bool) -> None:
    """x[t] *= weight[seq(t)] (or /=) in place, one slice per run of equal sequence ids."""
    op = np.divide if divide else np.multiply
    cuts = np.flatnonzero(np.diff(seq_of_token)) + 1
    if cuts.size > 64:  # short sequences: one gather is cheaper than many slices
        op(x, weight[seq_of_token], out=x)
        return
    for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [seq_of_token.size]))):
        op(x[a:b], weight[seq_of_token[a]], out=x[a:b])


def _scores(moe: MoESpec, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
            seq_of_token: np.ndarray) -> None:
    """In place: x (C, E) standard exponentials -> selection scores (gate score plus bias).

    weight[s, e] = exp(log(E/k) - log(E p_e) - u[s, e]) (see the module docstring)."""
    if moe.score_func == "sigmoid":
        _scale_by_sequence(x, weight, seq_of_token, divide=False)
        x += 1.0
        np.reciprocal(x, out=x)  # sigmoid(z)
    else:
        np.reciprocal(x, out=x)
        _scale_by_sequence(x, weight, seq_of_token, divide=True)  # exp(z) up to a per-token constant
        x /= x.sum(axis=1, keepdims=True)
    if bias is not None:
        x += bias


def _top_k_reference(moe: MoESpec, x: np.ndarray) -> np.ndarray:
    """Top-k experts of each row of selection scores x (C, E), group limit honoured: the plain algorithm
    (argmax / argpartition).  `_top_k` gives the same sets faster and falls back to this on rows with ties."""
    C = x.shape[0]
    k, G, tg, epg = moe.top_k, moe.n_groups, moe.topk_groups, moe.experts_per_group
    if G > 1 and tg < G:
        xg = x.reshape(C, G, epg)
        best = xg.argmax(axis=2)
        gscore = np.take_along_axis(xg, best[..., None], axis=2)[..., 0]
        if moe.score_func == "sigmoid" and epg > 1:
            y = xg.copy()
            np.put_along_axis(y, best[..., None], -np.inf, axis=2)
            gscore = gscore + y.max(axis=2)
        keep = np.argpartition(gscore, G - tg, axis=1)[:, G - tg:]  # (C, tg) kept groups
        cand = np.take_along_axis(xg, keep[..., None], axis=1).reshape(C, tg * epg)
    else:
        keep, cand = None, x
    n = cand.shape[1]
    pick = np.argpartition(cand, n - k, axis=1)[:, n - k:] if k < n else np.broadcast_to(np.arange(n), (C, n))
    if keep is not None:
        pick = np.take_along_axis(keep, pick // epg, axis=1) * epg + pick % epg
    return pick.astype(np.int16)


def _top_k(moe: MoESpec, x: np.ndarray) -> np.ndarray:
    """Top-k experts of each row of x (C, E), group limit honoured: (C, k) int16 (order within a row arbitrary).

    Selects by value thresholds (a value partition is several times faster than an index partition): the
    group score is the sum of each group's two largest scores (sigmoid) or its largest (softmax); the kept
    groups are those at or above the tg-th largest group score; the experts those of kept groups at or above
    the k-th largest score among them.  A row with a tie at either threshold is handed to
    `_top_k_reference`, so every row gets exactly the set the reference algorithm picks.
    """
    C, E = x.shape
    k, G, tg, epg = moe.top_k, moe.n_groups, moe.topk_groups, moe.experts_per_group
    grouped = G > 1 and tg < G
    if (grouped and tg * epg <= k) or (not grouped and E <= k):
        return _top_k_reference(moe, x)
    if grouped:
        xg = x.reshape(C, G, epg)
        sigmoid_pair = moe.score_func == "sigmoid" and epg > 1
        kt = min(max(k, 2) if sigmoid_pair else k, epg)  # largest scores needed from each group
        tops = np.partition(xg, epg - kt, axis=2)[..., epg - kt:] if kt < epg else xg
        if sigmoid_pair:
            two = tops if kt == 2 else np.partition(tops, kt - 2, axis=2)[..., kt - 2:]
            gscore = two[..., 1] + two[..., 0]  # the two largest, as the reference sums them
        else:
            gscore = tops.max(axis=2)
        gth = np.partition(gscore, G - tg, axis=1)[:, G - tg]
        gkeep = gscore >= gth[:, None]
        bad = np.count_nonzero(gkeep, axis=1) != tg
        cand = np.where(gkeep[..., None], tops, -np.inf).reshape(C, G * kt)
        th = np.partition(cand, G * kt - k, axis=1)[:, G * kt - k]
        sel = xg >= th[:, None, None]
        sel &= gkeep[..., None]
        sel = sel.reshape(C, E)
    else:
        th = np.partition(x, E - k, axis=1)[:, E - k]
        sel = x >= th[:, None]
        bad = np.zeros(C, dtype=bool)
    bad |= np.count_nonzero(sel, axis=1) != k
    out = np.empty((C, k), dtype=np.int16)
    if bad.any():
        good = ~bad
        out[good] = (np.flatnonzero(sel[good]) % E).reshape(-1, k)
        out[bad] = _top_k_reference(moe, x[bad])
    else:
        out[:] = (np.flatnonzero(sel) % E).reshape(C, k)
    return out


def _drop_over_capacity(experts: np.ndarray, n_experts: int, capacity_factor: float) -> tuple[np.ndarray, int]:
    """Keep at most ceil(c * T * k / E) rows per expert, earlier tokens first; dropped entries become -1."""
    T, k = experts.shape
    cap = math.ceil(capacity_factor * T * k / n_experts)
    flat = experts.reshape(-1).astype(np.int64)
    order = np.argsort(flat, kind="stable")  # stable: token order inside each expert
    counts = np.bincount(flat, minlength=n_experts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.empty_like(order)
    pos[order] = np.arange(flat.size) - starts[flat[order]]
    out = experts.copy().reshape(-1)
    dropped = pos >= cap
    out[dropped] = -1
    return out.reshape(T, k), int(dropped.sum())
