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
Cov(X | b) are estimated on a fixed pool of M = min(T / POOL_SHARE, POOL_MAX_TOKENS) tokens whose gate noise is
drawn once (its own stream) and routed again under each step's bias: common random numbers, so the estimate moves
smoothly with b, and only the tokens whose selection the bias change can have flipped are routed again (about 2%
a step; workloads/routing_pool.py).
    q~(b) = q_pool(b) + (q_ref - q_pool(b_0))
removes the pool's own error at b_0.  q_ref = k / E exactly when the experts are exchangeable (equal popularity,
equal initial bias); otherwise the pooled mean of step 0 and the pool at b_0 (independent samples of T and M
tokens).  Step 0 itself is the exact routing of `route`: the same figures as "exact".  A step's sampling noise is
    sqrt(T / M) * sum_i z_i (X_i - q_pool),  z_i ~ N(0, 1) per pool token,
whose covariance is exactly T times the pool's covariance of X; the same z gives the step's mean nodes per
token its noise (and its correlation with the loads).  Loads sum to T k (unless a draw is clipped at 0).
What is not exact: the pool's error is absorbed by the bias feedback for the loads, not for nodes per token
(it keeps the pool's standard error, sd(nodes) / sqrt(M): 0.16 / 256 = 0.0006 nodes at the CLI's default
size), under a strong skew the pool's error at b_0 leaves the converging imbalance slightly low, and the fixed
pool's q(b) is a step function of b (its tokens flip one by one), whose steps the feedback feels as extra noise:
the larger T / M, the higher the steady maximum per expert reads (see POOL_SHARE, POOL_MAX_TOKENS).
tests/test_routing_dynamics.py compares the two methods, seeded, with tolerances from batch means of 200-300 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from gpuhours.workloads.model import MoESpec
from gpuhours.workloads.routing import EPGroup, RoutingConfig, _is_number, _max_over_mean, popularity, route
from gpuhours.workloads.routing_pool import _Pool, _select_with_margin  # noqa: F401  (tests use both)

# DeepSeek-V3 technical report (arXiv 2412.19437), section 4.2: bias update speed 0.001 for the first 14.3T tokens.
DEEPSEEK_V3_BIAS_UPDATE_SPEED = 0.001

# Tokens in the "clt" pool: a quarter of the micro-batch.  Measured against "exact" over 300 steps (batch-mean
# z-scores of the mean imbalance per window of steps): DeepSeek-V3 EP64, 256 tokens per rank, uniform and Zipf
# 0.5: |z| <= 1.6 with T / M = 4 and <= 2.3 with T / M = 8; the 64-expert test model under Zipf 1.0: while the
# bias converges, "clt" is 1-2% low with T / M = 4 (|z| <= 1.9) and 2-4% low with T / M = 8 (|z| up to 3.3).
# POOL_MAX_TOKENS caps it so that a step's work does not grow with the micro-batch: at the CLI's default size
# (DeepSeek-V3 EP64, 4,096 tokens per rank, T = 262,144) the pool is 16,384 tokens, T / M = 16, and 1,000 steps
# take ~10 s of CPU (bench/bench_routing.py).  Measured there against "exact" (one run of 250 steps; "clt" the mean
# of 4 pools, seeds 0-3), uniform popularity, mean of steps 1-249:
#     imbalance per rank      exact 1.01476 +- 0.00020; clt M = 65,536 1.01500, 32,768 1.01487, 16,384 1.01514
#                             (z +1.7), 8,192 1.01546 (z +3.2)
#     imbalance per expert    exact 1.03559 +- 0.00034; clt 1.03530, 1.03529, 1.03574 (z +0.4), 1.03705 (z +3.7)
# and under Zipf 0.5 (still converging at step 250; seed 0) steps 150-249 per rank: exact 1.3474, clt 1.3368
# (65,536), 1.3452 (32,768), 1.3574 (16,384).  The 64-expert test model at T / M = 16 (T = 16,384, uniform, 200
# steps): per rank z +0.4, per expert z +2.4 (+0.003), +0.9 at T / M = 4: the step-function error above.
# Assumption: 16,384 is the trade; 8,192 reads +0.0007 per rank at the default size (+3 standard errors).
# "auto" uses "clt" from AUTO_CLT_TOKENS tokens per micro-batch.
POOL_SHARE = 4
POOL_MAX_TOKENS = 16384
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


# Assumption: a "clt" step's work in tokens routed against every expert, as a share of the pool, for work bounds
# only.  Measured at the CLI's default size (pool 16,384): 6.5-7 ms of CPU a step (about 2% of the pool routed
# again, the fine test on 15-21%, the noise), against ~3.6 us of CPU a token for route() (250 "exact" steps of
# 262,144 tokens on one thread: 249 s): about 1,900 tokens, 12% of the pool.
CLT_REROUTE_SHARE = 0.12


def pool_size(tokens: int) -> int:
    """Tokens in the "clt" pool of a micro-batch of `tokens` tokens: a POOL_SHARE-th of them, at most
    POOL_MAX_TOKENS."""
    return min(-(-tokens // POOL_SHARE), POOL_MAX_TOKENS)


def balancing_work(config: RoutingConfig, tokens: int, steps: int, method: str = "auto") -> int:
    """Tokens routed (each against every expert) by `steps` steps of a micro-batch of `tokens` tokens: every token
    every step for "exact"; step 0, the pool once, then the equivalent of CLT_REROUTE_SHARE of it a step for
    "clt"."""
    if balancing_method(config, tokens, method) == "exact":
        return steps * tokens
    M = pool_size(tokens)
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
    M = pool_tokens or pool_size(T)
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
            nodes = mean_nodes + control[1] + scale / T * float((z * node_dev).sum())  # not BLAS: its threads spin
        yield s, bias.copy(), load, float(nodes)
        bias += gamma * np.sign(load.mean() - load)


def _symmetric(config: RoutingConfig, n_experts: int, bias: np.ndarray) -> bool:
    """Equal popularity (uniform, zipf 0, equal weights), no sequence offsets and one bias for all experts:
    the experts are exchangeable, so each is picked with probability k / E."""
    p = popularity(config, n_experts)
    return config.seq_sigma == 0 and bool(np.all(p == p[0])) and bool(np.all(bias == bias[0]))
