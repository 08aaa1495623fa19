"""Auxiliary-loss-free bias balancing over many steps (what `gpuhours routing --steps N` runs).

After each step (one micro-batch of the EP group standing in for the global batch):
    bias_e += gamma * sign(mean_e(load) - load_e)
The popularity is fixed by config.seed; each step draws fresh gate noise.  Stats are taken with the bias in force
during that step (step 0: config.bias or zeros).

Two ways to draw a step's expert loads:

"exact": route every token of the micro-batch against every expert (`routing.route`, its random stream):
tokens x experts gate scores per step, 262,144 x 256 at DeepSeek-V3 EP64 with 4,096 tokens per rank.

"clt" (what "auto" picks from AUTO_CLT_TOKENS tokens per micro-batch, without sequence offsets or dropping): a
step's loads are a sum over T independent tokens, n = sum_t X_t, X_t in {0, 1}^E the experts token t picks.  By
the central limit theorem
    n ~ Normal(T q(b), T Cov(X | b)),   q(b) = E[X | b],
accurate to a small fraction of a row's sampling error when T q_e is in the thousands of rows.  q(b) and
Cov(X | b) are estimated on a fixed pool of M = T / POOL_SHARE tokens whose gate noise is drawn once (its own
stream) and routed again under each step's bias: common random numbers, so the estimate moves smoothly with b,
and only the tokens whose selection the bias change can have flipped are routed again (see _Pool).
    q~(b) = q_pool(b) + (q_ref - q_pool(b_0))
removes the pool's own error at b_0.  q_ref = k / E exactly when the experts are exchangeable (equal popularity,
equal initial bias); otherwise the pooled mean of step 0 and the pool at b_0 (independent samples of T and M
tokens).  Step 0 itself is the exact routing of `route`: the same figures as "exact".  A step's sampling noise is
    sqrt(T / M) * sum_i z_i (X_i - q_pool),  z_i ~ N(0, 1) per pool token,
whose covariance is exactly T times the pool's covariance of X; the same z gives the step's mean nodes per
token its noise (and its correlation with the loads).  Loads sum to T k (unless a draw is clipped at 0).
What is not exact: the pool's error is absorbed by the bias feedback for the loads, not for nodes per token
(it keeps the pool's standard error, sd(nodes) / sqrt(M): 0.16 / 256 = 0.0006 nodes at the CLI's default
size), and under a strong skew the pool's error at b_0 leaves the converging imbalance slightly low (see POOL_SHARE).
tests/test_routing_dynamics.py compares the two methods, seeded, with tolerances from batch means of 300 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from gpuhours.workloads.model import MoESpec
from gpuhours.workloads.routing import EPGroup, RoutingConfig, _is_number, _max_over_mean, popularity, route
from gpuhours.workloads.routing_select import _scores, _top_k_reference

# DeepSeek-V3 technical report (arXiv 2412.19437), section 4.2: bias update speed 0.001 for the first 14.3T tokens.
DEEPSEEK_V3_BIAS_UPDATE_SPEED = 0.001

# Tokens in the "clt" pool: a quarter of the micro-batch.  Measured against "exact" over 300 steps (batch-mean
# z-scores of the mean imbalance per window of steps): DeepSeek-V3 EP64, 256 tokens per rank, uniform and Zipf
# 0.5: |z| <= 1.6 with T / M = 4 and <= 2.3 with T / M = 8; the 64-expert test model under Zipf 1.0: while the
# bias converges, "clt" is 1-2% low with T / M = 4 (|z| <= 1.9) and 2-4% low with T / M = 8 (|z| up to 3.3).
# "auto" uses "clt" from AUTO_CLT_TOKENS tokens per micro-batch.
POOL_SHARE = 4
AUTO_CLT_TOKENS = 32768
BALANCING_METHODS = ("auto", "exact", "clt")


@dataclass(frozen=True)
class BalanceStep:
    step: int
    imbalance: float          # max / mean rows per EP rank
    expert_imbalance: float   # max / mean rows per expert
    bias_min: float
    bias_max: float
    mean_nodes_per_token: float


def balancing_method(config: RoutingConfig, tokens: int, method: str = "auto",
                     ) -> str:
    """The method `simulate_balancing` uses: "clt" needs independent tokens (seq_sigma 0, no capacity factor);
    "auto" takes it when the micro-batch has at least AUTO_CLT_TOKENS tokens, else "exact"."""
    if method not in BALANCING_METHODS:
        raise ValueError(f"simulate_balancing: method = {method!r}: allowed values are {', '.join(BALANCING_METHODS)}")
    clt_ok = config.seq_sigma == 0 and config.capacity_factor is None
    if method == "clt" and not clt_ok:
        raise ValueError("simulate_balancing: method = 'clt' needs independent tokens: seq_sigma = 0 and "
                         "capacity_factor = None; allowed methods here are auto, exact")
    if method == "auto":
        return "clt" if clt_ok and tokens >= AUTO_CLT_TOKENS else "exact"
    return method


# Assumption: share of the pool a "clt" step routes again, for work bounds only (measured at DeepSeek-V3 EP64,
# 4,096 tokens per rank: 15% a step under uniform popularity, 20% under a random walk of the biases).
CLT_REROUTE_SHARE = 0.2


def balancing_work(config: RoutingConfig, tokens: int, steps: int, method: str = "auto") -> int:
    """Tokens routed (each against every expert) by `steps` steps of a micro-batch of `tokens` tokens: every token
    every step for "exact"; step 0, the pool once, then about CLT_REROUTE_SHARE of it a step for "clt"."""
    if balancing_method(config, tokens, method) == "exact":
        return steps * tokens
    M = -(-tokens // POOL_SHARE)
    return tokens + M + math.ceil(steps * M * CLT_REROUTE_SHARE)


def simulate_balancing(moe: MoESpec, group: EPGroup, tokens_per_rank: int, config: RoutingConfig, steps: int,
                       gamma: float = DEEPSEEK_V3_BIAS_UPDATE_SPEED,
                       progress: Callable[[int, int], None] | None = None, *, method: str = "auto",
                       pool_tokens: int | None = None) -> list[BalanceStep]:
    """Auxiliary-loss-free balancing under a stationary skew (see the module docstring for the two methods).
    `progress(done, steps)` is called after each step."""
    out = []
    for s, bias, load, nodes in balancing_loads(moe, group, tokens_per_rank, config, steps, gamma, method=method,
                                                pool_tokens=pool_tokens):
        ep_rows = load.reshape(group.ep, -1).sum(axis=1)
        out.append(BalanceStep(s, _max_over_mean(ep_rows), _max_over_mean(load), float(bias.min()),
                               float(bias.max()), nodes))
        if progress is not None:
            progress(s + 1, steps)
    return out


def balancing_loads(moe: MoESpec, group: EPGroup, tokens_per_rank: int, config: RoutingConfig, steps: int,
                    gamma: float = DEEPSEEK_V3_BIAS_UPDATE_SPEED, *, method: str = "auto",
                    pool_tokens: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray, float]]:
    """Yield (step, bias in force, rows per expert, mean nodes per token) for each step; the bias update follows
    each yield (the bias array yielded is a copy)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"simulate_balancing: steps = {steps!r}: expected an integer >= 1")
    if not _is_number(gamma) or not gamma >= 0:
        raise ValueError(f"simulate_balancing: gamma = {gamma!r}: expected a number >= 0")
    if pool_tokens is not None and (isinstance(pool_tokens, bool) or not isinstance(pool_tokens, int)
                                    or pool_tokens < 1):
        raise ValueError(f"simulate_balancing: pool_tokens = {pool_tokens!r}: expected None or an integer >= 1")
    if config.skew == "balanced":
        raise ValueError("simulate_balancing: config.skew = 'balanced' has no scores to bias; "
                         "allowed values are uniform, zipf, dirichlet, weights")
    if isinstance(tokens_per_rank, bool) or not isinstance(tokens_per_rank, int) or tokens_per_rank < 1:
        raise ValueError(f"simulate_balancing: tokens_per_rank = {tokens_per_rank!r}: expected an integer >= 1")
    T = tokens_per_rank * group.ep
    how = balancing_method(config, T, method)
    E = moe.n_routed_experts
    bias = np.zeros(E) if config.bias is None else np.asarray(config.bias, dtype=float).copy()
    if bias.shape != (E,):
        raise ValueError(f"simulate_balancing: config.bias has {bias.size} values: expected {E}, one per expert")
    M = pool_tokens or -(-T // POOL_SHARE)
    pool = _Pool(moe, group, config, M) if how == "clt" else None
    control = None
    rng = np.random.default_rng([config.seed, 3])  # the clt steps' sampling noise
    for s in range(steps):
        if pool is None or s == 0:
            r = route(moe, group, tokens_per_rank, config, bias=bias, step=s)
            load, nodes = r.expert_rows.astype(float), r.mean_nodes_per_token
            if pool is not None:  # control term: the pool's error at b_0 (see the module docstring)
                q0, nodes0, _, _ = pool.route(bias)
                w = T / (T + pool.M)  # step 0 and the pool are independent samples at b_0: pool them
                q_ref = w * load / T + (1 - w) * q0
                if _symmetric(config, E, bias):
                    q_ref = np.full(E, moe.top_k / E)  # every expert alike: q = k / E exactly
                control = (q_ref - q0, w * (nodes - nodes0))
        else:
            q, mean_nodes, experts, node_dev = pool.route(bias)
            z = rng.standard_normal(pool.M)
            scale = math.sqrt(T / pool.M)
            hits = np.bincount(experts.ravel(), weights=np.repeat(z, moe.top_k), minlength=E)
            load = T * (q + control[0]) + scale * (hits - q * z.sum())
            np.maximum(load, 0.0, out=load)  # Assumption: a negative draw (expected rows < ~4 sd) is no rows
            nodes = mean_nodes + control[1] + scale / T * float(np.dot(z, node_dev))
        yield s, bias.copy(), load, float(nodes)
        bias += gamma * np.sign(load.mean() - load)


def _symmetric(config: RoutingConfig, n_experts: int, bias: np.ndarray) -> bool:
    """Equal popularity (uniform, zipf 0, equal weights), no sequence offsets and one bias for all experts:
    the experts are exchangeable, so each is picked with probability k / E."""
    p = popularity(config, n_experts)
    return config.seq_sigma == 0 and bool(np.all(p == p[0])) and bool(np.all(bias == bias[0]))


class _Pool:
    """M tokens whose gate scores (without bias) are drawn once and routed again under each step's bias.

    Incremental: a token's selection cannot change while every biased score moves by less than its margin,
    min((4th - 5th group score) / 4, (k-th - (k+1)-th kept score) / 2) (a group score is a sum of two biased
    scores, so a comparison of two of them moves by at most 4 max|db|; one of two scores by at most 2 max|db|).
    Adding one constant to every bias changes no selection, so the change that counts is max|db - c| at its best
    c, half the range of db.  Each token remembers the bias it was routed under; a step routes again only the
    tokens whose change reached their margin, so `route` gives the same selections as routing the whole pool."""

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
        self.snaps: list[np.ndarray] = []
        self.counts = np.zeros(E, dtype=np.int64)
        self.rerouted = 0                          # tokens routed in all (a cost figure for tests and benchmarks)

    def route(self, bias: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """(q per expert, mean nodes per token, (M, k) experts, nodes per token minus their mean) at `bias`."""
        b = bias.astype(np.float32)
        if self.snaps:
            d = b[None, :] - np.stack(self.snaps)  # a shift common to all experts changes no selection:
            drift = (d.max(axis=1) - d.min(axis=1)) / 2  # max |db - c| at its best c
            # Assumption: 1e-6 covers float32 rounding of base + bias (scores ~1, ulp 1.2e-7)
            due = np.flatnonzero(self.margin <= drift[self.epoch] + 1e-6)
        else:
            due = np.arange(self.M)
        if due.size:
            old = self.experts[due]
            routed = self.margin[due] >= 0
            self.counts -= np.bincount(old[routed].ravel(), minlength=self.E)
            x = self.base[due] + b[None, :]
            experts, margin = _select_with_margin(self.moe, x)
            self.experts[due] = experts
            self.margin[due] = margin
            self.epoch[due] = len(self.snaps)
            self.snaps.append(b)
            self.counts += np.bincount(experts.ravel(), minlength=self.E)
            nodes = np.sort(self.node_of[experts], axis=1)
            self.n_nodes[due] = 1 + np.count_nonzero(np.diff(nodes, axis=1), axis=1)
            self.rerouted += due.size
            live = np.flatnonzero(np.bincount(self.epoch, minlength=len(self.snaps)))
            if live.size < len(self.snaps):  # forget biases no token refers to any more
                remap = np.zeros(len(self.snaps), dtype=np.int64)
                remap[live] = np.arange(live.size)
                self.snaps = [self.snaps[i] for i in live]
                self.epoch = remap[self.epoch]
        mean = float(self.n_nodes.mean())
        return self.counts / self.M, mean, self.experts, self.n_nodes - mean


def _select_with_margin(moe: MoESpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts of each row of biased scores x (C, E), group limit honoured as in routing._top_k (by value
    thresholds), and each row's margin (see _Pool).  Rows with a tie at a threshold go to
    routing._top_k_reference with margin 0 (routed again next step)."""
    C, E = x.shape
    k, G, tg, epg = moe.top_k, moe.n_groups, moe.topk_groups, moe.experts_per_group
    margin = np.full(C, np.inf)
    if G > 1 and tg < G:
        xg = x.reshape(C, G, epg)
        # the k+1 largest kept scores are among their groups' k+1 largest: partition each group once
        kt = min(k + 1, epg)
        tops = np.partition(xg, epg - kt, axis=2)[..., epg - kt:] if kt < epg else xg  # unordered
        if moe.score_func == "sigmoid" and kt > 1:  # the two largest of each group, summed in either order:
            two = np.partition(tops, kt - 2, axis=2)[..., kt - 2:] if kt > 2 else tops  # the same float32 sum
            gscore = two[..., 0] + two[..., 1]
        else:
            gscore = tops.max(axis=2)
        g2 = np.partition(gscore, (G - tg - 1, G - tg), axis=1)
        margin = (g2[:, G - tg].astype(float) - g2[:, G - tg - 1]) / 4  # tg-th minus (tg+1)-th group score
        gkeep = gscore >= g2[:, G - tg:G - tg + 1]
        bad = np.count_nonzero(gkeep, axis=1) != tg  # a tie at the group threshold
        gkeep[bad] = False
        gkeep[bad, :tg] = True  # placeholder groups; the row goes to the reference below
        cand = xg[gkeep].reshape(C, tg * epg)  # the kept groups' scores, in group order
        short = tops[gkeep].reshape(C, tg * kt)  # their k+1 largest each
        first = (np.flatnonzero(gkeep) % G).reshape(C, tg) * epg  # first expert of each kept group
    else:
        cand, short, first, bad = x, x, None, np.zeros(C, dtype=bool)
    n, ns = cand.shape[1], short.shape[1]
    if k < n:
        v = np.partition(short, (ns - k - 1, ns - k), axis=1)
        th = v[:, ns - k]
        margin = np.minimum(margin, (th.astype(float) - v[:, ns - k - 1]) / 2)  # k-th minus (k+1)-th kept score
        sel = cand >= th[:, None]
    else:
        sel = np.ones_like(cand, dtype=bool)
    bad |= (np.count_nonzero(sel, axis=1) != k) | ~(margin > 0)
    out = np.empty((C, k), dtype=np.int64)
    good = ~bad
    col = (np.flatnonzero(sel[good]) % n).reshape(-1, k)
    out[good] = col if first is None else np.take_along_axis(first[good], col // epg, axis=1) + col % epg
    if bad.any():
        out[bad] = _top_k_reference(moe, x[bad])
        margin[bad] = 0.0
    return out, margin
