"""MoE routing of one micro-batch over an expert-parallel (EP) group: which experts each token picks, and the
per-rank expert rows the simulator takes from it (`ep_rank_loads`).

Placement and the tally of a routed micro-batch (rows per rank, nodes per token, IB and NVLink copies) are in
routing_tally.py: EPGroup and RoutingResult, re-exported here.

Affinity model (a modelling assumption, not a measurement): token t's gate logit for expert e is
    z[t, e] = log(E * p_e) + u[seq(t), e] + g[t, e] - log(E / k)
with p_e the expert popularity (sums to 1; uniform p_e = 1/E gives 0), u ~ N(0, seq_sigma) a per-sequence
offset, g ~ Gumbel(0, 1) per token.  With Gumbel noise, top-1 on z picks expert e with probability p_e exactly
(Gumbel-max), and top-k is Plackett-Luce sampling of k experts by p.  The shift log(E / k) puts the expected k-th
largest logit near 0, i.e. the selection threshold near sigmoid score 0.5, where the gate is most sensitive.
Scores: sigmoid(z) (DeepSeek-V3) or softmax(z) over experts (DeepSeek-V2).  Because exp(-g) ~ Exp(1),
sigmoid(z) = 1 / (1 + X * exp(log(E/k) - log(E p_e) - u)) with X ~ Exp(1): no logarithm on the big array.

Selection (DeepSeek-V3 `noaux_tc`): a per-expert bias is added to the score for selection only;
with n_groups > 1 a token keeps the topk_groups groups with the largest group score (sum of the top-2 biased
scores for sigmoid, the top-1 for softmax as in DeepSeek-V2's device-limited routing), then the top_k experts
among them.  A unit of bias is a unit of score: sigmoid scores lie in (0, 1) and at the threshold
d(score)/d(logit) = 1/4, so a bias b shifts an expert's logit by about 4 b there, which multiplies its
selection odds by about exp(4 b).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from gpuhours.workloads.model import MoESpec
from gpuhours.workloads.routing_loads import MeasuredLoads, load_expert_loads  # noqa: F401  (re-exported)
from gpuhours.workloads.routing_select import (  # noqa: F401  (re-exported: tests and routing_dynamics use them)
    _balanced_experts,
    _drop_over_capacity,
    _scale_by_sequence,
    _scores,
    _top_k,
    _top_k_reference,
)
from gpuhours.workloads.routing_tally import EPGroup, RoutingResult, _max_over_mean, _tally  # (also re-exported)

SKEW_KINDS = ("balanced", "uniform", "zipf", "dirichlet", "weights")


@dataclass(frozen=True)
class RoutingConfig:
    """How tokens pick experts.

    skew: "balanced" (deterministic round-robin, every expert the same rows), "uniform" (random, p_e = 1/E),
    "zipf" (p_e proportional to rank^-value over a seeded random order of experts; value = s >= 0),
    "dirichlet" (p ~ Dirichlet(value * 1); value = alpha > 0, smaller is more skewed),
    "weights" (p proportional to `weights`).
    bias: per-expert score correction added for selection (score units, see module docstring).
    seq_len / seq_sigma: per-sequence logit offsets N(0, seq_sigma) for each run of seq_len tokens.
    capacity_factor: None (no dropping, DeepSeek-V3) or c > 0: each expert keeps at most
    ceil(c * tokens * top_k / n_experts) rows, earlier tokens first; the rest are dropped.
    """

    skew: str = "uniform"
    value: float = 0.0
    seed: int = 0
    bias: tuple[float, ...] | None = None
    seq_len: int = 4096
    seq_sigma: float = 0.0
    capacity_factor: float | None = None
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.skew not in SKEW_KINDS:
            raise ValueError(f"RoutingConfig.skew = {self.skew!r}: allowed values are {', '.join(SKEW_KINDS)}")
        if not _is_number(self.value) or not math.isfinite(self.value) or self.value < 0:
            raise ValueError(f"RoutingConfig.value = {self.value!r}: expected a finite number >= 0")
        if self.skew == "dirichlet" and not self.value > 0:
            raise ValueError(f"RoutingConfig.value = {self.value!r}: dirichlet needs alpha > 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"RoutingConfig.seed = {self.seed!r}: expected an integer >= 0")
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"RoutingConfig.seq_len = {self.seq_len!r}: expected an integer >= 1")
        if not _is_number(self.seq_sigma) or not self.seq_sigma >= 0:
            raise ValueError(f"RoutingConfig.seq_sigma = {self.seq_sigma!r}: expected a number >= 0")
        if self.capacity_factor is not None and (not _is_number(self.capacity_factor) or not self.capacity_factor > 0):
            raise ValueError(f"RoutingConfig.capacity_factor = {self.capacity_factor!r}: expected None or a number > 0")
        if self.skew == "weights":
            w = np.asarray(self.weights if self.weights is not None else (), dtype=float)
            if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
                raise ValueError("RoutingConfig.weights: skew 'weights' needs a sequence of finite weights >= 0 "
                                 "with a positive sum")
        if self.bias is not None and not np.all(np.isfinite(np.asarray(self.bias, dtype=float))):
            raise ValueError("RoutingConfig.bias: expected finite numbers, one per expert")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------------- popularity

P_FLOOR = 1e-30  # popularity floor: weights exp(log(E/k) - log(E p)) stay below float32's 3.4e38 for any E < 1e6


def popularity(config: RoutingConfig, n_experts: int) -> np.ndarray:
    """Expert popularity p (sums to 1), fixed by config.seed: stationary across steps."""
    rng = np.random.default_rng([config.seed, 0])
    if config.skew in ("balanced", "uniform"):
        return np.full(n_experts, 1.0 / n_experts)
    if config.skew == "zipf":
        p = np.arange(1, n_experts + 1, dtype=float) ** -config.value
        p = p[rng.permutation(n_experts)]  # heavy experts land on random ranks
    elif config.skew == "dirichlet":
        p = rng.dirichlet(np.full(n_experts, float(config.value)))
        p = np.maximum(p, 1e-300)
    else:  # weights
        p = np.asarray(config.weights, dtype=float)
        if p.size != n_experts:
            raise ValueError(f"RoutingConfig.weights: {p.size} weights for {n_experts} experts")
        p = np.maximum(p, 1e-300)
    p = np.maximum(p / p.sum(), P_FLOOR)  # a vanishing expert stays finite in the float32 race weights below
    return p / p.sum()


# ----------------------------------------------------------------------------------------------- route

def route(moe: MoESpec, group: EPGroup, tokens_per_rank: int, config: RoutingConfig = RoutingConfig(), *,
          bytes_per_token: float = 0.0, bias: np.ndarray | None = None, step: int = 0,
          chunk_tokens: int = 8192) -> RoutingResult:
    """Route one micro-batch of `tokens_per_rank` tokens on each of the group's ranks.

    `bias` (per expert, score units) overrides config.bias; `step` selects fresh per-token noise while the
    popularity stays fixed by config.seed.  The score matrix is built `chunk_tokens` rows at a time: the noise
    of each chunk is drawn in order from one generator (so the result does not depend on the thread count),
    and the chunks are scored and selected on a pool of threads (numpy releases the GIL there).
    """
    if not isinstance(moe, MoESpec):
        raise ValueError(f"route: moe must be a MoESpec, got {type(moe).__name__}")
    if isinstance(tokens_per_rank, bool) or not isinstance(tokens_per_rank, int) or tokens_per_rank < 1:
        raise ValueError(f"route: tokens_per_rank = {tokens_per_rank!r}: expected an integer >= 1")
    if not _is_number(bytes_per_token) or bytes_per_token < 0:
        raise ValueError(f"route: bytes_per_token = {bytes_per_token!r}: expected a number >= 0")
    E, k = moe.n_routed_experts, moe.top_k
    epr = group.experts_per_rank(E)
    T = tokens_per_rank * group.ep
    b = config.bias if bias is None else bias
    b = None if b is None else np.asarray(b, dtype=np.float32)
    if b is not None and b.shape != (E,):
        raise ValueError(f"route: bias has shape {b.shape}: expected ({E},), one per expert")

    if config.skew == "balanced":
        experts = _balanced_experts(moe, T, epr)
    else:
        p = popularity(config, E)
        rng = np.random.default_rng([config.seed, 1, step])
        n_seq = -(-T // config.seq_len)
        u = rng.normal(0.0, config.seq_sigma, (n_seq, E)) if config.seq_sigma > 0 else np.zeros((1, E))
        weight = np.exp(math.log(E / k) - np.log(E * p)[None, :] - u).astype(np.float32)
        experts = np.empty((T, k), dtype=np.int16)

        def select(start: int, x: np.ndarray) -> None:
            t = np.arange(start, start + x.shape[0])
            seq = t // config.seq_len if config.seq_sigma > 0 else np.zeros(t.size, dtype=np.int64)
            _scores(moe, x, weight, b, seq)
            experts[start:start + x.shape[0]] = _top_k(moe, x)

        starts = range(0, T, chunk_tokens)
        draw = lambda start: rng.standard_exponential((min(T, start + chunk_tokens) - start, E),  # noqa: E731
                                                      dtype=np.float32)
        workers = min(len(starts), _threads())
        if workers <= 1:
            for start in starts:
                select(start, draw(start))
        else:
            _run_chunks(starts, draw, select, workers)

    dropped = 0
    if config.capacity_factor is not None:
        experts, dropped = _drop_over_capacity(experts, E, config.capacity_factor)
    return _tally(experts, group, tokens_per_rank, epr, E, float(bytes_per_token), dropped)


MAX_THREADS = 16  # routing threads at most (one chunk of 8,192 tokens x 256 experts is 8 MB of float32)


def _threads() -> int:
    """Routing threads: the CPUs this process may use, at most MAX_THREADS; GPUHOURS_ROUTING_THREADS=N caps it
    (e.g. 1 inside a pool of worker processes).  The result does not depend on it."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    cap = os.environ.get("GPUHOURS_ROUTING_THREADS", "")
    if cap.strip().isdigit() and int(cap) >= 1:
        n = min(n, int(cap))
    return max(1, min(n, MAX_THREADS))


def _run_chunks(starts, draw, select, workers: int) -> None:
    """Draw each chunk's noise here, in order, and select it on a worker; at most 2 x workers chunks in flight."""
    slots = threading.BoundedSemaphore(2 * workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="routing") as pool:
        futures = []
        for start in starts:
            slots.acquire()
            try:
                fut = pool.submit(select, start, draw(start))
            except BaseException:
                slots.release()
                raise
            fut.add_done_callback(lambda _f: slots.release())
            futures.append(fut)
        for fut in futures:
            fut.result()


# ----------------------------------------------------------------------------------------------- simulator entry

@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class RankLoads:
    """Rows of expert GEMM work per EP rank for one micro-batch, and how far tokens spread."""

    rows_per_rank: np.ndarray = field(repr=False)
    imbalance: float
    mean_nodes_per_token: float
    max_nodes_per_token: int
    routing: str = ""

    def summary(self) -> dict:
        return {
            "routing": self.routing,
            "ep": int(self.rows_per_rank.size),
            "rows_total": float(self.rows_per_rank.sum()),
            "rows_max": float(self.rows_per_rank.max()),
            "rows_mean": float(self.rows_per_rank.mean()),
            "imbalance": self.imbalance,
            "mean_nodes_per_token": self.mean_nodes_per_token,
            "max_nodes_per_token": self.max_nodes_per_token,
        }


def ep_rank_loads(moe: MoESpec, ep: int, gpus_per_node: int, tokens_per_rank: int, routing: str,
                  seed: int = 0) -> RankLoads:
    """Per-rank expert rows for the simulator.

    routing: "balanced" (round-robin, imbalance 1), "skew:<s>" (Zipf exponent s >= 0, zero bias; s = 0 is
    uniform random routing), or "file:<path>" (measured expert loads; see `load_expert_loads`).
    For a file, each (step, layer) slice is scaled to the micro-batch's rows (tokens * top_k), its per-rank
    rows are sorted descending and the profiles averaged, so rows_per_rank is the mean order-statistic profile
    and imbalance is the mean over slices of max/mean (the sum of per-layer maxima sets the step time).
    Nodes per token come from routing with the file's mean expert popularity.  Non-file results are cached.
    """
    if isinstance(routing, str) and routing.startswith("file:"):
        return _ep_rank_loads_uncached(moe, ep, gpus_per_node, tokens_per_rank, routing, seed)  # file may change
    return _ep_rank_loads_cached(moe, ep, gpus_per_node, tokens_per_rank, routing, seed)


BALANCED_SAMPLE_TOKENS = 256  # tokens per rank routed to characterise balanced routing (see below)


def _ep_rank_loads_uncached(moe: MoESpec, ep: int, gpus_per_node: int, tokens_per_rank: int, routing: str,
                            seed: int) -> RankLoads:
    group = EPGroup(ep, gpus_per_node)
    if not isinstance(routing, str):
        raise ValueError(f"ep_rank_loads: routing = {routing!r}: allowed values are balanced, skew:<s>, file:<path>")
    if routing == "balanced":
        # Round-robin routing repeats with a short period: route a sample of the micro-batch and scale its rows
        # (the sample is used only when it is itself exactly balanced, so nothing is lost).
        sample = min(tokens_per_rank, BALANCED_SAMPLE_TOKENS)
        r = route(moe, group, sample, RoutingConfig(skew="balanced", seed=seed))
        if sample < tokens_per_rank and r.imbalance != 1.0:
            r, sample = route(moe, group, tokens_per_rank, RoutingConfig(skew="balanced", seed=seed)), tokens_per_rank
        return _rank_loads(r.rank_rows * (tokens_per_rank / sample), r, routing)
    if routing.startswith("skew:"):
        try:
            s = float(routing[5:])
        except ValueError:
            raise ValueError(f"ep_rank_loads: routing = {routing!r}: skew needs a number, e.g. skew:0.8") from None
        r = route(moe, group, tokens_per_rank, RoutingConfig(skew="zipf", value=s, seed=seed))
        return _rank_loads(r.rank_rows, r, routing)
    if routing.startswith("file:"):
        m = load_expert_loads(routing[5:])
        if m.n_experts != moe.n_routed_experts:
            raise ValueError(f"ep_rank_loads: {routing[5:]} has {m.n_experts} experts, "
                             f"the model {moe.n_routed_experts}")
        rows = m.rank_rows(ep).reshape(-1, ep)
        rows = rows / rows.sum(axis=1, keepdims=True) * (tokens_per_rank * ep * moe.top_k)
        profile = -np.sort(-rows, axis=1).mean(axis=0)
        frac = m.loads.reshape(-1, m.n_experts)
        frac = (frac / frac.sum(axis=1, keepdims=True)).mean(axis=0)
        r = route(moe, group, tokens_per_rank, RoutingConfig(skew="weights", weights=tuple(frac), seed=seed))
        return _rank_loads(profile, r, routing)
    raise ValueError(f"ep_rank_loads: routing = {routing!r}: allowed values are balanced, skew:<s>, file:<path>")


_ep_rank_loads_cached = lru_cache(maxsize=64)(_ep_rank_loads_uncached)


def _rank_loads(rows: np.ndarray, r: RoutingResult, routing: str) -> RankLoads:
    rows = np.asarray(rows)
    rows.setflags(write=False)
    return RankLoads(rows_per_rank=rows, imbalance=_max_over_mean(rows),
                     mean_nodes_per_token=r.mean_nodes_per_token, max_nodes_per_token=r.max_nodes_per_token,
                     routing=routing)


# The balancing dynamics over steps live in routing_dynamics (which builds on route() above); their public names
# stay importable from here, resolved on first use so that neither module needs the other half-built.
_DYNAMICS_NAMES = ("DEEPSEEK_V3_BIAS_UPDATE_SPEED", "BalanceStep", "simulate_balancing")


def __getattr__(name: str):
    if name in _DYNAMICS_NAMES:
        from gpuhours.workloads import routing_dynamics

        return getattr(routing_dynamics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
