"""Bias balancing over steps: the "clt" method (normal law of a step's loads, pool of re-routed tokens) against
the "exact" one (every token routed every step), its incremental pool against a full re-route, and validation.

Statistical comparisons are seeded and use two independent runs of 300 steps; a statistic's standard error in
each run comes from batch means (10 batches, which absorbs the step-to-step correlation of the bias dynamics),
and the tolerance is 4 standard errors of the difference (a 4-sigma two-sided bound: a false failure about
once in 16,000 comparisons)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuhours.workloads.model import MoESpec
from gpuhours.workloads.routing import EPGroup, RoutingConfig, _top_k, route, simulate_balancing
from gpuhours.workloads.routing_dynamics import _Pool, balancing_loads, balancing_method

# DeepSeek-V3 routing (config_671B.json): 256 routed experts, top-8, 8 groups, 4 groups per token, sigmoid.
V3 = MoESpec(n_routed_experts=256, n_shared_experts=1, expert_intermediate=2048, top_k=8, n_groups=8,
             topk_groups=4, score_func="sigmoid", route_scale=2.5)
SMALL = MoESpec(n_routed_experts=64, n_shared_experts=0, expert_intermediate=256, top_k=6, n_groups=8,
                topk_groups=3)
SMALL_EP16 = EPGroup(ep=16, gpus_per_node=4)  # 4 nodes of 16 experts, 2 groups per node
STEPS = 300
TOKENS_PER_RANK = 256  # T = 4,096 tokens per step
POOL = 1024            # T / M = 4, the default share (routing_dynamics.POOL_SHARE)


def batch_mean(x, batches: int = 10) -> tuple[float, float]:
    """Mean and its standard error from `batches` consecutive batch means."""
    x = np.asarray(x, dtype=float)
    b = x[:len(x) // batches * batches].reshape(batches, -1).mean(axis=1)
    return float(x.mean()), float(b.std(ddof=1) / math.sqrt(batches))


def assert_same_mean(a, b, extra_var: float = 0.0, sigmas: float = 4.0):
    (ma, sa), (mb, sb) = batch_mean(a), batch_mean(b)
    tol = sigmas * math.sqrt(sa ** 2 + sb ** 2 + extra_var)
    assert abs(ma - mb) <= tol, (ma, mb, tol)


@pytest.fixture(scope="module")
def runs():
    """(exact, clt) trajectories for a uniform and a skewed popularity at DeepSeek-V3's update speed."""
    out = {}
    for name, cfg in (("uniform", RoutingConfig("uniform", seed=3)), ("zipf", RoutingConfig("zipf", 1.0, seed=1))):
        out[name] = tuple(simulate_balancing(SMALL, SMALL_EP16, TOKENS_PER_RANK, cfg, STEPS, 0.001, method=m,
                                             pool_tokens=POOL) for m in ("exact", "clt"))
    return out


@pytest.mark.parametrize("name", ["uniform", "zipf"])
def test_clt_step_zero_is_the_exact_routing(runs, name):
    exact, clt = runs[name]
    assert clt[0] == exact[0]


@pytest.mark.parametrize("name", ["uniform", "zipf"])
@pytest.mark.parametrize("field", ["imbalance", "expert_imbalance"])
def test_clt_imbalance_matches_exact(runs, name, field):
    """Same mean max/mean load, per window of steps (the skewed run converges over the first ~100 steps)."""
    exact, clt = runs[name]
    windows = ((1, 101), (101, STEPS)) if name == "zipf" else ((1, STEPS),)
    for a, b in windows:
        assert_same_mean([getattr(s, field) for s in exact[a:b]], [getattr(s, field) for s in clt[a:b]])


def test_clt_imbalance_spread_matches_exact(runs):
    """The steady state's step-to-step spread of the imbalance: standard deviations agree within 25% (the
    standard deviation of a sample standard deviation of ~30 effectively independent steps is ~13%)."""
    exact, clt = runs["uniform"]
    sa = np.std([s.imbalance for s in exact[50:]])
    sb = np.std([s.imbalance for s in clt[50:]])
    assert abs(sa / sb - 1) < 0.25, (sa, sb)


@pytest.mark.parametrize("name", ["uniform", "zipf"])
def test_clt_nodes_per_token_matches_exact(runs, name):
    """Nodes per token are not fed back, so the pool's own sampling error stays: the tolerance adds the variance
    of the difference of two pool means, 2 var(nodes) / M, with var(nodes) measured on an exact routing."""
    exact, clt = runs[name]
    cfg = RoutingConfig("uniform", seed=3) if name == "uniform" else RoutingConfig("zipf", 1.0, seed=1)
    var = float(np.var(route(SMALL, SMALL_EP16, TOKENS_PER_RANK, cfg).nodes_per_token))
    assert_same_mean([s.mean_nodes_per_token for s in exact[50:]], [s.mean_nodes_per_token for s in clt[50:]],
                     extra_var=2 * var / POOL)


def test_clt_bias_bounds_and_row_conservation():
    """Every step moves each bias by at most gamma, so after s steps
    bias_min and bias_max are within s * gamma; the loads sum to T * k rows (the noise sums to zero per token)."""
    cfg, gamma, T = RoutingConfig("zipf", 0.5, seed=2), 0.002, 16 * TOKENS_PER_RANK
    for s, bias, load, nodes in balancing_loads(SMALL, SMALL_EP16, TOKENS_PER_RANK, cfg, 40, gamma, method="clt",
                                                pool_tokens=POOL):
        assert np.all(np.abs(bias) <= s * gamma + 1e-12)
        assert load.sum() == pytest.approx(T * SMALL.top_k, rel=1e-9)
        assert 1.0 <= nodes <= 3.0  # at most topk_groups = 3 groups, 2 per node: 1 to 3 nodes


@pytest.mark.parametrize("walk", ["sign", "normal"])
@pytest.mark.parametrize("moe", [V3, SMALL, MoESpec(256, 1, 2048, 8, n_groups=8, topk_groups=4, score_func="softmax"),
                                 MoESpec(64, 0, 256, 6)])
def test_incremental_pool_equals_full_reroute(moe, walk):
    """Routing only the tokens that fail the coarse and the fine test gives the same selections as routing the whole
    pool again (the plain algorithm, routing._top_k), step after step of a random walk of the biases (+-0.002
    each, as the balancing moves them, or N(0, 0.01) each); and it routes again few more tokens than those whose
    selection did change (the fine test is tight: measured 1.01-1.08 times as many)."""
    E = moe.n_routed_experts
    pool = _Pool(moe, EPGroup(16, 8), RoutingConfig("zipf", 0.7, seed=4), 2000)
    rng = np.random.default_rng(0)
    bias = np.zeros(E)
    changed, before = 0, None
    for _ in range(25):
        q, nodes, experts, _ = pool.route(bias)
        full = np.sort(_top_k(moe, pool.base + bias.astype(np.float32)[None, :]), axis=1)
        assert np.array_equal(np.sort(experts, axis=1), full)
        counts = np.bincount(full.ravel().astype(np.int64), minlength=E)
        assert np.array_equal(pool.counts, counts) and np.allclose(q, counts / 2000, rtol=0, atol=1e-12)
        if before is not None:
            changed += int(np.count_nonzero(np.any(before != full, axis=1)))
        before = full
        bias += 0.002 * rng.choice([-1.0, 1.0], E) if walk == "sign" else rng.normal(0.0, 0.01, E)
    assert 0 < changed <= pool.rerouted - 2000 <= 1.2 * changed + 20


def test_pool_size():
    """A quarter of the micro-batch, at most 16,384 tokens: DeepSeek-V3 EP64 x 4,096 tokens -> 16,384."""
    from gpuhours.workloads.routing_dynamics import pool_size

    assert pool_size(4096) == 1024 and pool_size(4097) == 1025 and pool_size(65536) == 16384
    assert pool_size(262144) == 16384


def test_clt_with_capped_pool_matches_exact():
    """T / M = 16, the ratio the pool cap gives at the CLI's default size: the 64-expert model, 1,024 tokens per rank
    (T = 16,384) against a pool of 1,024, uniform popularity: same mean imbalance per rank and per expert as
    "exact" within 4 standard errors of the difference (batch means, 200 steps; measured z +0.4 per rank and +2.4
    per expert: the capped pool reads the maximum per expert slightly high, routing_dynamics.POOL_MAX_TOKENS)."""
    cfg = RoutingConfig("uniform", seed=3)
    exact, clt = (simulate_balancing(SMALL, SMALL_EP16, 1024, cfg, 200, 0.001, method=m, pool_tokens=1024)
                  for m in ("exact", "clt"))
    assert clt[0] == exact[0]
    for field in ("imbalance", "expert_imbalance"):
        assert_same_mean([getattr(s, field) for s in exact[1:]], [getattr(s, field) for s in clt[1:]])


def test_method_choice_and_validation():
    cfg = RoutingConfig("zipf", 0.5)
    assert balancing_method(cfg, 262144) == "clt"          # the CLI default micro-batch: 64 x 4,096 tokens
    assert balancing_method(cfg, 4096) == "exact"          # fewer than 32,768 tokens
    assert balancing_method(RoutingConfig("zipf", 0.5, seq_sigma=0.3), 262144) == "exact"
    with pytest.raises(ValueError, match="allowed values are auto, exact, clt"):
        simulate_balancing(SMALL, SMALL_EP16, 16, cfg, 2, method="fast")
    with pytest.raises(ValueError, match="seq_sigma"):
        simulate_balancing(SMALL, SMALL_EP16, 16, RoutingConfig("zipf", 0.5, capacity_factor=1.2), 2, method="clt")
    with pytest.raises(ValueError, match="pool_tokens"):
        simulate_balancing(SMALL, SMALL_EP16, 16, cfg, 2, method="clt", pool_tokens=0)


def test_routing_command_reports_method():
    import json

    from typer.testing import CliRunner

    from gpuhours.cli import app

    args = ["routing", "--ep", "8", "--tokens", "64", "--skew", "0.8", "--steps", "3", "--json"]
    r = CliRunner().invoke(app, args + ["--balancing-method", "clt"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["balancing_method"] == "clt" and [b["step"] for b in d["balancing"]] == [0, 1, 2]
    r = CliRunner().invoke(app, args + ["--balancing-method", "fast"])
    assert r.exit_code == 2 and "allowed values are auto, exact, clt" in r.output


@pytest.mark.parametrize("moe", [V3, SMALL, MoESpec(256, 1, 2048, 8, n_groups=8, topk_groups=4, score_func="softmax"),
                                 MoESpec(64, 0, 256, 6), MoESpec(16, 0, 64, 1, n_groups=4, topk_groups=2),
                                 MoESpec(64, 0, 64, 2, n_groups=8, topk_groups=3)])
def test_select_with_margin_matches_top_k_and_margin_holds(moe):
    """The pool's selection picks the sets routing._top_k picks (continuous scores and heavy ties), and moving
    every biased score by less than the margin changes no selection (the margin's definition)."""
    from gpuhours.workloads.routing_dynamics import _select_with_margin

    rng = np.random.default_rng(1)
    E = moe.n_routed_experts
    for x in (rng.random((500, E), dtype=np.float32),
              (np.floor(rng.random((500, E)) * 8) / 8).astype(np.float32)):
        picked, margin = _select_with_margin(moe, x.copy())
        assert np.array_equal(np.sort(picked, axis=1), np.sort(_top_k(moe, x.copy()), axis=1))
        assert np.all(margin >= 0)
    x = rng.random((500, E), dtype=np.float32)
    picked, margin = _select_with_margin(moe, x.copy())
    shift = rng.uniform(-1, 1, (500, E)) * (0.999 * margin)[:, None]  # |shift| < margin, each score its own
    moved, _ = _select_with_margin(moe, (x + shift).astype(np.float32))
    finite = np.isfinite(margin) & (margin > 1e-5)  # far from float32 rounding
    assert np.array_equal(np.sort(picked, axis=1)[finite], np.sort(moved, axis=1)[finite])
