"""The "clt" balancing method's pool (workloads/routing_dynamics.py): M tokens whose gate scores are drawn once and
routed again under each step's bias, incrementally.

A step must give the same selections as routing the whole pool again (tests/test_routing_dynamics.py checks it
against routing._top_k), but only a few percent of the tokens change their selection when every bias moves by
gamma (1.7-1.8% at DeepSeek-V3 EP64 under uniform and Zipf 0.5 popularity, measured with
bench/bench_routing.py's case).  Two tests, cheapest first, find the tokens that may have changed:

1. The coarse margin (one number a token): min((tg-th - (tg+1)-th group score) / 4, (k-th - (k+1)-th kept
   score) / 2).  A group score is a sum of at most two biased scores, so a comparison of two of them moves by at
   most 4 max|db - c|, one of two expert scores by at most 2 max|db - c|; adding one constant c to every bias
   changes no selection, so the change that counts is half the range of db.  About 14-19% of the tokens fail it
   after a step of the balancing (db = +-gamma for every expert already spans the whole range).
2. The fine test, on those only, with each bias's own change d_e (a token's record of its routing):
   - experts: the R = k + RECORD_SPARE largest kept scores s_j with their experts, and the (R+1)-th, s_tail.
     The selection holds when min_{j <= k}(s_j + d_j) > max(max_{k < j <= R}(s_j + d_j), s_tail + max_e d_e):
     every kept expert beyond the R-th scored at most s_tail and moved by at most max d.
   - groups: each group's two largest scores with their experts (a1, a2 after the change) and its third, s3
     (every other expert of the group is at most s3 + max_{e in group} d_e = t after the change).  A kept group
     scores at least a1 + a2 (sigmoid; a1 for softmax); a dropped group at most max(a1 + a2, max(a1, a2) + t,
     2 t) (softmax: max(a1, a2, t)).  The kept groups hold when the least kept bound exceeds the largest
     dropped one.
   A token that passes keeps its record (and the bias it was routed under) and takes the slack the test found,
   min(expert slack / 2, group slack / 4), as its coarse margin from the current bias on (the same argument as
   in 1: from there every score moves by at most the half range of the next changes).  The test is tight: only
   the tokens that fail both are routed again, 1.8-2% of the pool a step at the default size (1.01-1.08 times the
   tokens whose selection did change, measured in tests/test_routing_dynamics.py); the fine test itself reads
   ~30 numbers for each of the 14-21% that fail the coarse margin.  Before (coarse margin only): 14-19% routed.
Assumption: FINE_EPS = 4e-6 of score covers the float32 rounding of a stored score plus a bias change against
the score routed afresh (a score of at most ~2 has an ulp of 2.4e-7; a group score adds a rounding per term).
"""

from __future__ import annotations

import math

import numpy as np

from gpuhours.workloads.model import MoESpec
from gpuhours.workloads.routing import EPGroup, RoutingConfig, popularity
from gpuhours.workloads.routing_select import _scores, _top_k_reference

# Assumption: kept scores recorded beyond the k-th (the k+1-th .. k+4-th); it changes how many tokens the fine test
# passes, never a selection (4: 1.01-1.08 times the tokens that did change are routed again).
RECORD_SPARE = 4
FINE_EPS = 4e-6    # see the module docstring


class _Pool:
    """M tokens whose gate scores (without bias) are drawn once and routed again under each step's bias.

    Each token remembers the bias it was routed under (an epoch, an index into the live snapshots) and its record
    (see the module docstring); a step routes again only the tokens that fail both tests, so `route` gives the
    same selections as routing the whole pool."""

    def __init__(self, moe: MoESpec, group: EPGroup, config: RoutingConfig, M: int) -> None:
        E, k = moe.n_routed_experts, moe.top_k
        self.moe, self.M, self.E = moe, M, E
        self.node_of = np.arange(E) // (group.experts_per_rank(E) * group.gpus_per_node)
        p = popularity(config, E)
        weight = np.exp(math.log(E / k) - np.log(E * p)[None, :]).astype(np.float32)  # as in route(), u = 0
        rng = np.random.default_rng([config.seed, 2])  # the pool's gate noise, apart from route()'s streams
        self.base = rng.standard_exponential((M, E), dtype=np.float32)
        _scores(moe, self.base, weight, None, np.zeros(M, dtype=np.int64))
        self.experts = np.zeros((M, k), dtype=np.int64)
        self.n_nodes = np.zeros(M, dtype=np.int64)
        self.margin = np.full(M, -1.0)           # < 0: never routed
        self.epoch = np.zeros(M, dtype=np.int64)  # index into self.snaps of the bias each token was routed under
        self.cepoch = np.zeros(M, dtype=np.int64)  # ... and of the bias its coarse margin was measured at
        self.snaps: list[np.ndarray] = []
        self.counts = np.zeros(E, dtype=np.int64)
        self.record = _Record(moe, M)
        self.rerouted = 0                          # tokens routed in all (a cost figure for tests and benchmarks)

    def route(self, bias: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """(q per expert, mean nodes per token, (M, k) experts, nodes per token minus their mean) at `bias`."""
        b = bias.astype(np.float32)
        now = len(self.snaps)  # the index `b` gets in self.snaps
        if self.snaps:
            change = b[None, :] - np.stack(self.snaps)  # a shift common to all experts changes no selection:
            drift = (change.max(axis=1) - change.min(axis=1)) / 2  # max |db - c| at its best c
            # Assumption: 1e-6 covers float32 rounding of base + bias (scores ~1, ulp 1.2e-7)
            due = np.flatnonzero(self.margin <= drift[self.cepoch] + 1e-6)
            if due.size:
                ok, slack = self.record.holds(due, self.epoch[due], change)
                self.margin[due[ok]] = slack  # the coarse margin again, now at `b`
                self.cepoch[due[ok]] = now
                due = due[~ok]
        else:
            due = np.arange(self.M)
        if due.size:
            old = self.experts[due]
            routed = self.margin[due] >= 0
            self.counts -= np.bincount(old[routed].ravel(), minlength=self.E)
            x = self.base[due] + b[None, :]
            experts, margin = self.record.route(due, x)
            self.experts[due] = experts
            self.margin[due] = margin
            self.epoch[due] = now
            self.cepoch[due] = now
            self.counts += np.bincount(experts.ravel(), minlength=self.E)
            nodes = np.sort(self.node_of[experts], axis=1)
            self.n_nodes[due] = 1 + np.count_nonzero(np.diff(nodes, axis=1), axis=1)
            self.rerouted += due.size
        self.snaps.append(b)
        used = np.bincount(self.epoch, minlength=len(self.snaps)) + np.bincount(self.cepoch, minlength=len(self.snaps))
        live = np.flatnonzero(used)
        if live.size < len(self.snaps):  # forget biases no token refers to any more
            remap = np.zeros(len(self.snaps), dtype=np.int64)
            remap[live] = np.arange(live.size)
            self.snaps = [self.snaps[i] for i in live]
            self.epoch, self.cepoch = remap[self.epoch], remap[self.cepoch]
        mean = float(self.n_nodes.mean())
        return self.counts / self.M, mean, self.experts, self.n_nodes - mean


class _Record:
    """Per token: the scores the fine test needs (module docstring), as routed under the token's epoch's bias.

    Columns of `value` / `expert`: the R largest kept scores (largest first), then each group's two largest
    (grouped routing); `bound`: the (R+1)-th kept score, then each group's third largest."""

    def __init__(self, moe: MoESpec, M: int) -> None:
        E, k, G, tg, epg = moe.n_routed_experts, moe.top_k, moe.n_groups, moe.topk_groups, moe.experts_per_group
        self.moe = moe
        self.grouped = G > 1 and tg < G
        self.pair = moe.score_func == "sigmoid" and epg > 1  # group score: the two largest (else the largest)
        n = tg * epg if self.grouped else E  # candidate experts once the groups are chosen
        self.R = min(k + RECORD_SPARE, n)
        width = self.R + (2 * G if self.grouped else 0)
        self.valid = np.zeros(M, dtype=bool)
        self.value = np.zeros((M, width), dtype=np.float32)
        self.expert = np.zeros((M, width), dtype=np.int32)
        self.bound = np.full((M, 1 + (G if self.grouped else 0)), -np.inf, dtype=np.float32)
        self.gkeep = np.zeros((M, G), dtype=bool) if self.grouped else None

    def route(self, rows: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k experts (C, k) of tokens `rows` with biased scores x (C, E), group limit honoured as in
        routing._top_k, and each one's coarse margin (module docstring); records them for the fine test.  A row
        with a tie at a threshold (margin 0) takes routing._top_k_reference's experts and fails the fine test."""
        C, E = x.shape
        k, G, tg, epg, R = self.moe.top_k, self.moe.n_groups, self.moe.topk_groups, self.moe.experts_per_group, self.R
        value = np.full((C, self.value.shape[1]), -np.inf, dtype=np.float32)
        expert = np.zeros((C, self.value.shape[1]), dtype=np.int32)
        bound = np.full((C, self.bound.shape[1]), -np.inf, dtype=np.float32)
        margin = np.full(C, np.inf)
        if self.grouped:
            # each group's m largest, largest first: the R+1 largest kept scores are among them
            m = min(R + 1, epg)
            xg = x.reshape(C, G, epg)
            idx = _top_sorted(xg, m) + (np.arange(G) * epg)[None, :, None]  # experts
            v = np.take_along_axis(x, idx.reshape(C, G * m), axis=1).reshape(C, G, m)
            two = min(2, m)
            value[:, R:].reshape(C, G, 2)[..., :two] = v[..., :two]
            expert[:, R:].reshape(C, G, 2)[..., :two] = idx[..., :two]
            if m > 2:
                bound[:, 1:] = v[..., 2]
            gscore = v[..., 0] + v[..., 1] if self.pair else v[..., 0]  # the float32 sum routing._top_k takes
            gs = np.sort(gscore, axis=1)
            margin = (gs[:, G - tg].astype(float) - gs[:, G - tg - 1]) / 4  # tg-th minus (tg+1)-th group score
            gkeep = gscore >= gs[:, G - tg:G - tg + 1]
            tie = np.count_nonzero(gkeep, axis=1) != tg
            gkeep[tie] = False
            gkeep[tie, :tg] = True  # placeholder groups; the row takes the reference below
            self.gkeep[rows] = gkeep
            cand, cid = v[gkeep].reshape(C, tg * m), idx[gkeep].reshape(C, tg * m)
            n = tg * epg
        else:
            cand, cid, n = x, None, E
        top = _top_sorted(cand, min(R + 1, cand.shape[1]))
        tv = np.take_along_axis(cand, top, axis=1)
        value[:, :R] = tv[:, :R]
        expert[:, :R] = top[:, :R] if cid is None else np.take_along_axis(cid, top[:, :R], axis=1)
        if R < n:
            bound[:, 0] = tv[:, R]
        if k < n:  # k-th minus (k+1)-th kept score
            margin = np.minimum(margin, (tv[:, k - 1].astype(float) - tv[:, k]) / 2)
        bad = ~(margin > 0)
        self.valid[rows] = ~bad
        self.value[rows], self.expert[rows], self.bound[rows] = value, expert, bound
        out = expert[:, :k].astype(np.int64)
        if bad.any():
            out[bad] = _top_k_reference(self.moe, x[bad])
            margin[bad] = 0.0
        return out, margin

    def holds(self, rows: np.ndarray, epoch: np.ndarray, change: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ok, margin): ok where token `rows`' selection provably holds after each bias moved by change[epoch, e]
        (one row per live snapshot) since the token was routed; for those, the coarse margin at the new bias,
        min(expert slack / 2, group slack / 4) (the module docstring's bounds, FINE_EPS below them)."""
        k, E, R = self.moe.top_k, self.moe.n_routed_experts, self.R
        up = change.max(axis=1, keepdims=True)  # per snapshot: the largest rise, overall and per group
        if self.grouped:
            up = np.concatenate((up, change.reshape(len(change), self.moe.n_groups, -1).max(axis=2)), axis=1)
        s = self.value[rows] + change.ravel()[self.expert[rows] + (epoch * E)[:, None]]
        u = self.bound[rows] + up[epoch]
        high = u[:, 0].copy()
        for j in range(k, R):  # column by column: numpy reduces short rows slowly
            np.maximum(high, s[:, j], out=high)
        low = s[:, 0].copy()
        for j in range(1, k):
            np.minimum(low, s[:, j], out=low)
        slack = (low - high) / 2
        if self.grouped:
            a1, a2, t = s[:, R::2], s[:, R + 1::2], u[:, 1:]
            top = np.maximum(a1, a2)
            if self.pair:
                lo = a1 + a2
                hi = np.maximum(np.maximum(lo, top + t), 2 * t)
            else:
                lo = a1
                hi = np.maximum(top, t)
            keep = self.gkeep[rows]
            lo[~keep] = np.inf
            hi[keep] = -np.inf
            kept_low, dropped_high = lo[:, 0].copy(), hi[:, 0].copy()
            for j in range(1, lo.shape[1]):
                np.minimum(kept_low, lo[:, j], out=kept_low)
                np.maximum(dropped_high, hi[:, j], out=dropped_high)
            np.minimum(slack, (kept_low - dropped_high) / 4, out=slack)
        ok = self.valid[rows] & (slack > FINE_EPS)
        return ok, slack[ok] - FINE_EPS


def _top_sorted(x: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest entries along the last axis, largest first."""
    n = x.shape[-1]
    if n <= 64:  # a full sort of a short axis is cheaper than a partition and a sort of its part
        return np.argsort(-x, axis=-1)[..., :m]
    idx = np.argpartition(x, n - m, axis=-1)[..., n - m:] if m < n else np.broadcast_to(np.arange(n), x.shape)
    v = np.take_along_axis(x, idx, axis=-1)
    return np.take_along_axis(idx, np.argsort(-v, axis=-1), axis=-1)


def _select_with_margin(moe: MoESpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts of each row of biased scores x (C, E) and each row's coarse margin, as the pool routes them
    (_Record.route)."""
    return _Record(moe, x.shape[0]).route(np.arange(x.shape[0]), x)
