"""MoE routing: exact balance, the group limit, conservation of rows, link copy counts against a brute-force
count, skew monotonicity, bias dynamics, measured-load files and the simulator entry point."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuhours.workloads.model import MoESpec
from gpuhours.workloads.routing import (
    EPGroup,
    RoutingConfig,
    ep_rank_loads,
    load_expert_loads,
    route,
    simulate_balancing,
)

# DeepSeek-V3 routing (config_671B.json): 256 routed experts, top-8, 8 groups, 4 groups per token, sigmoid.
V3 = MoESpec(n_routed_experts=256, n_shared_experts=1, expert_intermediate=2048, top_k=8, n_groups=8,
             topk_groups=4, score_func="sigmoid", route_scale=2.5)
V3_EP64 = EPGroup(ep=64, gpus_per_node=8)  # 8 nodes: one expert group per node
SMALL = MoESpec(n_routed_experts=64, n_shared_experts=0, expert_intermediate=256, top_k=6, n_groups=8,
                topk_groups=3)
SMALL_EP16 = EPGroup(ep=16, gpus_per_node=4)  # 4 nodes of 16 experts, 2 groups per node


def groups_per_token(experts: np.ndarray, experts_per_group: int) -> np.ndarray:
    return np.array([len({int(e) // experts_per_group for e in row if e >= 0}) for row in experts])


# --- balanced routing ---------------------------------------------------------------------------------------

def test_balanced_routing_is_exactly_uniform():
    r = route(V3, V3_EP64, 64, RoutingConfig(skew="balanced"))
    tokens = 64 * 64
    assert r.imbalance == 1.0 and r.expert_imbalance == 1.0
    assert np.all(r.expert_rows == tokens * 8 // 256)       # T * k / E rows for every expert
    assert np.all(r.rank_rows == tokens * 8 // 64)
    assert all(len(set(row)) == 8 for row in r.experts.tolist())  # k distinct experts per token
    assert groups_per_token(r.experts, 32).max() <= 4


def test_balanced_entry_point_imbalance_one_and_rows_closed_form():
    rl = ep_rank_loads(V3, 64, 8, 4096, "balanced")
    assert rl.imbalance == 1.0
    assert rl.rows_per_rank.sum() == 4096 * 64 * 8
    assert rl.max_nodes_per_token <= 4
    s = rl.summary()
    assert s["imbalance"] == 1.0 and s["ep"] == 64 and s["rows_total"] == 4096 * 64 * 8


# --- group limit, conservation ------------------------------------------------------------------------------

@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
def test_no_token_exceeds_topk_groups_or_nodes(score_func):
    moe = MoESpec(256, 1, 2048, 8, n_groups=8, topk_groups=4, score_func=score_func)
    r = route(moe, V3_EP64, 32, RoutingConfig(skew="zipf", value=0.8, seed=3, seq_sigma=0.5, seq_len=256))
    assert all(len(set(row)) == 8 for row in r.experts.tolist())
    g = groups_per_token(r.experts, 32)
    assert g.max() <= 4
    # groups coincide with nodes here (32 experts per node), so nodes per token equal groups per token
    assert np.array_equal(r.nodes_per_token, g)
    assert r.max_nodes_per_token <= 4
    assert r.nodes_histogram.sum() == r.tokens
    assert math.isclose(r.mean_nodes_per_token, float(np.dot(np.arange(9), r.nodes_histogram)) / r.tokens)


def test_group_limit_with_groups_smaller_than_nodes():
    r = route(SMALL, SMALL_EP16, 64, RoutingConfig(skew="dirichlet", value=0.5, seed=1))
    assert groups_per_token(r.experts, 8).max() <= 3
    assert r.max_nodes_per_token <= 3


def test_rows_sent_equal_rows_received():
    r = route(SMALL, SMALL_EP16, 128, RoutingConfig(skew="zipf", value=1.2, seed=2))
    assert r.rank_rows_sent.sum() == r.rank_rows.sum() == r.expert_rows.sum() == 16 * 128 * 6
    assert np.all(r.rank_rows_sent == 128 * 6)  # every token sends top_k rows from its home rank
    assert np.array_equal(r.rank_rows, r.expert_rows.reshape(16, 4).sum(axis=1))


def test_capacity_factor_drops_and_conserves():
    cf = 1.1
    r = route(SMALL, SMALL_EP16, 128, RoutingConfig(skew="zipf", value=1.0, seed=4, capacity_factor=cf))
    cap = math.ceil(cf * 16 * 128 * 6 / 64)
    assert r.expert_rows.max() <= cap
    assert r.dropped_rows > 0
    assert r.rank_rows_sent.sum() == r.rank_rows.sum() == 16 * 128 * 6 - r.dropped_rows
    assert (r.experts < 0).sum() == r.dropped_rows


def test_link_copies_match_brute_force_count():
    group = EPGroup(ep=16, gpus_per_node=4)
    tpr = 8
    r = route(SMALL, group, tpr, RoutingConfig(skew="zipf", value=0.5, seed=5), bytes_per_token=100.0)
    ib_s, ib_r, nv_s, nv_r = (np.zeros(16, int) for _ in range(4))
    for t, row in enumerate(r.experts.tolist()):
        src = t // tpr
        targets = {e // 4 for e in row}  # 4 experts per rank
        for node in {q // 4 for q in targets}:
            land = node * 4 + src % 4  # same in-node index as the source
            if node != src // 4:
                ib_s[src] += 1
                ib_r[land] += 1
            for q in targets:
                if q // 4 == node and q != land:
                    nv_s[land] += 1
                    nv_r[q] += 1
    assert np.array_equal(r.ib_sent, ib_s) and np.array_equal(r.ib_received, ib_r)
    assert np.array_equal(r.nvlink_sent, nv_s) and np.array_equal(r.nvlink_received, nv_r)
    assert r.ib_bytes == 100.0 * ib_s.sum() and r.nvlink_bytes == 100.0 * nv_s.sum()


# --- the affinity model -------------------------------------------------------------------------------------

@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
def test_top1_selection_follows_popularity(score_func):
    """Gumbel-max: with top-1 and no group limit, expert e is chosen with probability p_e."""
    moe = MoESpec(8, 0, 64, 1, score_func=score_func)
    w = (8, 4, 2, 1, 1, 1, 0.5, 0.5)
    p = np.array(w) / sum(w)
    r = route(moe, EPGroup(8, 8), 8192, RoutingConfig(skew="weights", weights=w, seed=7))
    n = r.tokens
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(r.expert_rows - n * p) < 5 * sigma)


def test_higher_skew_gives_higher_imbalance():
    skews = (0.0, 0.3, 0.6, 1.0, 1.4)
    mean_imb = [np.mean([route(SMALL, SMALL_EP16, 64, RoutingConfig(skew="zipf", value=s, seed=seed)).imbalance
                         for seed in range(3)]) for s in skews]
    assert all(b > a for a, b in zip(mean_imb, mean_imb[1:])), mean_imb


def test_same_seed_same_routing_and_steps_differ():
    cfg = RoutingConfig(skew="zipf", value=0.7, seed=11)
    a, b = route(SMALL, SMALL_EP16, 32, cfg), route(SMALL, SMALL_EP16, 32, cfg)
    c = route(SMALL, SMALL_EP16, 32, cfg, step=1)
    assert np.array_equal(a.experts, b.experts)
    assert not np.array_equal(a.experts, c.experts)


# --- balancing dynamics -------------------------------------------------------------------------------------

def test_bias_dynamics_converge_under_stationary_skew():
    gamma = 0.01
    stats = simulate_balancing(SMALL, SMALL_EP16, 256, RoutingConfig(skew="zipf", value=1.0, seed=1),
                               steps=120, gamma=gamma)
    assert stats[0].imbalance > 1.8  # strongly skewed before the bias adapts
    assert stats[1].bias_max == pytest.approx(gamma) and stats[1].bias_min == pytest.approx(-gamma)
    tail = [s.imbalance for s in stats[-20:]]
    assert np.mean(tail) < 1.12  # sampling noise of 4,096 tokens x 6 rows over 16 ranks sets the floor
    assert max(tail) < 1.25


def test_zero_gamma_keeps_imbalance():
    stats = simulate_balancing(SMALL, SMALL_EP16, 64, RoutingConfig(skew="zipf", value=1.0, seed=1), 5, gamma=0.0)
    assert all(s.bias_min == s.bias_max == 0.0 for s in stats)
    assert min(s.imbalance for s in stats) > 1.5


# --- measured loads -----------------------------------------------------------------------------------------

def test_csv_round_trip_and_rank_rows(tmp_path):
    rng = np.random.default_rng(0)
    loads = rng.integers(0, 1000, size=(2, 3, 16)).astype(float)  # steps x layers x experts
    path = tmp_path / "loads.csv"
    lines = ["step,layer," + ",".join(f"e{i}" for i in range(16))]
    for s in range(2):
        for l in range(3):
            lines.append(f"{s},{l}," + ",".join(str(int(v)) for v in loads[s, l]))
    path.write_text("\n".join(lines) + "\n")
    m = load_expert_loads(path)
    assert np.array_equal(m.loads, loads)
    rr = m.rank_rows(4)
    assert rr.shape == (2, 3, 4)
    assert np.array_equal(rr.sum(axis=2), loads.sum(axis=2))
    assert np.array_equal(rr[..., 0], loads[..., :4].sum(axis=2))


def test_plain_csv_and_npy(tmp_path):
    a = np.arange(1, 9, dtype=float).reshape(2, 4)
    (tmp_path / "a.csv").write_text("\n".join(",".join(str(v) for v in row) for row in a))
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(load_expert_loads(tmp_path / "a.csv").loads, a[None])
    assert np.array_equal(load_expert_loads(tmp_path / "a.npy").loads, a[None])


@pytest.mark.parametrize("content", ["", "1,2,x\n", "1,2,3\n4,5\n", "1,-2,3\n", "0,0,0\n"])
def test_bad_csv_raises(tmp_path, content):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(ValueError):
        load_expert_loads(p)


def test_bad_path_and_type_raise(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        load_expert_loads(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(ValueError, match="allowed file types"):
        load_expert_loads(tmp_path / "x.txt")
    (tmp_path / "x.npy").write_text("not numpy")
    with pytest.raises(ValueError):
        load_expert_loads(tmp_path / "x.npy")


def test_file_routing_entry_point(tmp_path):
    loads = np.ones((2, 64))
    loads[0, :4] = 5.0  # layer 0: rank 0 has 20 rows, the other 15 ranks 4: mean 5, max/mean 4
    loads[1] = 1.0      # layer 1: balanced, max/mean 1
    p = tmp_path / "l.csv"
    p.write_text("\n".join(",".join(str(v) for v in row) for row in loads))
    rl = ep_rank_loads(SMALL, 16, 4, 32, f"file:{p}")
    assert rl.imbalance == pytest.approx((4.0 + 1.0) / 2)  # mean over layers of max/mean
    assert rl.rows_per_rank.sum() == pytest.approx(16 * 32 * 6)


def test_skew_entry_point_and_bad_spec():
    assert ep_rank_loads(SMALL, 16, 4, 64, "skew:0.8").imbalance > 1.2
    for bad in ("zipf", "skew:abc", "file:/nonexistent.csv"):
        with pytest.raises(ValueError):
            ep_rank_loads(SMALL, 16, 4, 64, bad)


@pytest.mark.parametrize("kwargs", [dict(skew="pareto"), dict(value=-1.0), dict(skew="dirichlet", value=0.0),
                                    dict(seq_len=0), dict(capacity_factor=0.0), dict(skew="weights")])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        RoutingConfig(**kwargs)


def test_group_validation():
    with pytest.raises(ValueError, match="ep"):
        EPGroup(ep=12, gpus_per_node=8)
    with pytest.raises(ValueError, match="divide"):
        route(SMALL, EPGroup(ep=24, gpus_per_node=8), 4)


def test_draw_balancing_writes_png(tmp_path):
    from gpuhours.reports.routing_plot import draw_balancing

    stats = simulate_balancing(SMALL, SMALL_EP16, 16, RoutingConfig(skew="zipf", value=0.5), 3, gamma=0.01)
    path = draw_balancing(stats, tmp_path / "b.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        draw_balancing([], tmp_path / "c.png")


# --- the fast selection and the threaded route ----------------------------------------------------------------

def _brute_top_k(moe: MoESpec, x: np.ndarray) -> list[set[int]]:
    """Per row, by sorting in Python: group score = sum of the top-2 (sigmoid) or the top-1 (softmax) scores of
    the group; keep the topk_groups best groups; take the top_k experts among them."""
    out = []
    for row in x.tolist():
        groups = [row[g * moe.experts_per_group:(g + 1) * moe.experts_per_group] for g in range(moe.n_groups)]
        n_top = 2 if moe.score_func == "sigmoid" else 1
        gscore = [sum(sorted(g, reverse=True)[:n_top]) for g in groups]
        kept = sorted(range(moe.n_groups), key=lambda g: -gscore[g])[:moe.topk_groups]
        cand = [e for g in kept for e in range(g * moe.experts_per_group, (g + 1) * moe.experts_per_group)]
        out.append(set(sorted(cand, key=lambda e: -row[e])[:moe.top_k]))
    return out


@pytest.mark.parametrize("moe", [V3, SMALL, MoESpec(256, 1, 2048, 8, n_groups=8, topk_groups=4, score_func="softmax"),
                                 MoESpec(64, 0, 256, 6), MoESpec(16, 0, 64, 1, n_groups=4, topk_groups=2)])
def test_fast_top_k_matches_brute_force_and_reference(moe):
    from gpuhours.workloads.routing import _top_k, _top_k_reference

    rng = np.random.default_rng(0)
    x = rng.random((300, moe.n_routed_experts), dtype=np.float32)  # continuous: no ties, one right answer
    fast = _top_k(moe, x.copy())
    assert fast.shape == (300, moe.top_k)
    assert [set(r) for r in fast.tolist()] == _brute_top_k(moe, x)
    # heavy ties (scores on a grid of 8 values): the same sets as the plain argpartition algorithm
    xt = (np.floor(rng.random((2000, moe.n_routed_experts)) * 8) / 8).astype(np.float32)
    assert np.array_equal(np.sort(_top_k(moe, xt.copy()), axis=1), np.sort(_top_k_reference(moe, xt.copy()), axis=1))


def test_route_independent_of_chunking_and_threads(monkeypatch):
    """The noise is drawn in order from one generator: chunk size and thread count change nothing."""
    import gpuhours.workloads.routing as routing_module

    cfg = RoutingConfig(skew="zipf", value=0.8, seed=5, seq_sigma=0.3, seq_len=100)
    one = route(V3, V3_EP64, 40, cfg, step=2, chunk_tokens=10**6)
    many = route(V3, V3_EP64, 40, cfg, step=2, chunk_tokens=97)
    monkeypatch.setattr(routing_module, "MAX_THREADS", 1)
    serial = route(V3, V3_EP64, 40, cfg, step=2, chunk_tokens=97)
    for r in (many, serial):
        assert np.array_equal(np.sort(r.experts, axis=1), np.sort(one.experts, axis=1))
        for f in ("expert_rows", "rank_rows", "nodes_per_token", "ib_sent", "ib_received", "nvlink_sent",
                  "nvlink_received", "rank_tokens_received"):
            assert np.array_equal(getattr(r, f), getattr(one, f)), f


def test_balancing_conserves_rows_and_reports_progress():
    calls = []
    stats = simulate_balancing(SMALL, SMALL_EP16, 64, RoutingConfig(skew="zipf", value=0.5, seed=2), 6,
                               gamma=0.01, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]
    assert [s.step for s in stats] == list(range(6))
    # each step routes tokens x top_k rows whatever the bias (here the bias of step 5 after 5 updates)
    bias = np.zeros(64)
    for s in range(6):
        r = route(SMALL, SMALL_EP16, 64, RoutingConfig(skew="zipf", value=0.5, seed=2), bias=bias, step=s)
        assert r.expert_rows.sum() == r.rank_rows.sum() == 16 * 64 * 6
        assert r.imbalance == pytest.approx(stats[s].imbalance)
        bias += 0.01 * np.sign(r.expert_rows.mean() - r.expert_rows)


def test_zero_skew_stays_balanced():
    """Uniform popularity: the bias only chases sampling noise; imbalance stays at the noise floor, about
    1 + 1.8 sigma/mean for the largest of 16 ranks with mean 1,536 rows (sigma/mean ~ 2.5%)."""
    stats = simulate_balancing(SMALL, SMALL_EP16, 256, RoutingConfig(skew="uniform", seed=3), 30, gamma=0.001)
    imb = [s.imbalance for s in stats]
    assert np.mean(imb) < 1.08 and max(imb) < 1.15
    assert all(abs(s.bias_min) <= 0.001 * s.step + 1e-12 and s.bias_max <= 0.001 * s.step + 1e-12 for s in stats)


def test_routing_command_steps_json():
    import json

    from typer.testing import CliRunner

    from gpuhours.cli import app

    r = CliRunner().invoke(app, ["routing", "--ep", "8", "--tokens", "64", "--skew", "0.8", "--steps", "4",
                                 "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert [b["step"] for b in d["balancing"]] == [0, 1, 2, 3]
    assert all(b["imbalance"] >= 1.0 for b in d["balancing"])
