"""Unit-cost bubbles and activation peaks against closed forms (DualPipe README table, derived where exact
schedules differ; derivations in each generator's docstring)."""

from __future__ import annotations

import itertools
import random

import pytest

from gpuhours.simulator.engine import UnitCosts, run_unit
from gpuhours.simulator.schedules import build_schedule

TOL = 1e-9
COSTS = [UnitCosts(f, b, w) for f, b, w in itertools.product((0.5, 1.0, 2.0), (1.0, 2.0, 3.5), (0.25, 0.5, 1.0))
         if w < b]


def _bubbles(name, pp, m, costs, vpp=1):
    return run_unit(build_schedule(name, pp, m, vpp=vpp), costs)


@pytest.mark.parametrize("pp,m", [(pp, m) for pp in (1, 2, 3, 4, 8) for m in (1, pp, pp + 1, 2 * pp + 3)])
def test_1f1b_bubble_and_memory(pp, m):
    for c in COSTS[::3]:
        res = _bubbles("1f1b", pp, m, c)
        assert all(abs(x - (pp - 1) * (c.f + c.b)) < TOL for x in res.bubble_per_rank)
        assert res.peak_activations_per_rank == tuple(min(pp - r, m) for r in range(pp))
    assert max(res.peak_activations_per_rank) == min(pp, m)  # README: PP


@pytest.mark.parametrize("pp,m", [(pp, m) for pp in (1, 2, 3, 4, 8) for m in (pp, pp + 1, 2 * pp + 3)])
def test_zb1p_bubble_exact_and_readme_regime(pp, m):
    for c in COSTS:
        res = _bubbles("zb1p", pp, m, c)
        bp = c.b - c.w
        exact = (pp - 1) * (c.f + bp - min(c.f, bp, c.w))
        assert all(abs(x - exact) < TOL for x in res.bubble_per_rank), (c, res.bubble_per_rank, exact)
        if c.w <= min(c.f, bp):  # README's (PP-1)(F+B-2W)
            assert abs(exact - (pp - 1) * (c.f + c.b - 2 * c.w)) < TOL
        assert res.peak_activations_per_rank == (pp,) * pp  # README: PP on every rank


def test_zb1p_beats_1f1b_by_w_per_hop():
    c = UnitCosts(1.0, 2.0, 1.0)
    z, o = _bubbles("zb1p", 8, 24, c), _bubbles("1f1b", 8, 24, c)
    assert abs((o.makespan - z.makespan) - 7 * 2 * c.w) < TOL


@pytest.mark.parametrize("pp,k,v", [(pp, k, v) for pp in (1, 2, 3, 4, 8) for k in (1, 2, 3) for v in (1, 2, 4)])
def test_interleaved_bubble(pp, k, v):
    """(PP-1)(F+B)/v with F = v f, B = v b the per-rank costs, i.e. (pp-1)(f+b) in per-chunk units."""
    m = k * pp
    for c in COSTS[::4]:
        res = _bubbles("interleaved-1f1b", pp, m, c, vpp=v)
        per_rank_f, per_rank_b = v * c.f, v * c.b
        assert all(abs(x - (pp - 1) * (per_rank_f + per_rank_b) / v) < TOL for x in res.bubble_per_rank)
        assert res.peak_activations_per_rank == tuple(
            min(2 * (pp - 1 - r) + (v - 1) * pp + 1, m * v) for r in range(pp))


def _dual_makespan(K, n, c):
    bp, fb = c.b - c.w, (c.f + c.b if c.fb is None else c.fb)
    return ((K - n - 2) * fb + 2 * n * c.f + (n + 2) * bp + 3 * c.w
            + max(n * c.f, (n - 1) * bp) + (n - 1) * max(bp, c.w))


def _dual_pairs(K, n, h):
    return K - 3 * n + h + 1 - (1 if h == n - 1 else 0)


def _random_costs(rng, count):
    out = []
    for _ in range(count):
        f, bp, w = rng.uniform(0.2, 2.0), rng.uniform(0.1, 3.0), rng.uniform(0.05, 2.0)
        b = bp + w
        out.append(UnitCosts(f, b, w, fb=rng.uniform(max(f, b), f + b)))
    return out


DUAL = ([("dualpipe", pp, m) for pp in (2, 4, 6, 8) for m in (2 * pp, 2 * pp + 2, 20)]
        + [("dualpipev", pp, m) for pp in (1, 2, 3, 4, 5) for m in (2 * pp, 2 * pp + 1, 20)])


@pytest.mark.parametrize("name,pp,m", DUAL)
def test_dual_exact_makespan_and_bubbles(name, pp, m):
    n, K = (pp // 2, m) if name == "dualpipe" else (pp, 2 * m)
    rng = random.Random(pp * 100 + m)
    for c in _random_costs(rng, 12) + [UnitCosts(1.0, 2.0, 1.0), UnitCosts(1.0, 3.0, 0.5, fb=3.2)]:
        fb = c.f + c.b if c.fb is None else c.fb
        res = _bubbles(name, pp, m, c)
        assert abs(res.makespan - _dual_makespan(K, n, c)) < 1e-9 * K
        for r, bubble in enumerate(res.bubble_per_rank):
            h = min(r, pp - 1 - r) if name == "dualpipe" else r
            P = _dual_pairs(K, n, h)
            busy = P * fb + (K - P) * (c.f + c.b)
            assert abs(res.busy_per_rank[r] - busy) < 1e-9 * K
            assert abs(bubble - (res.makespan - busy)) < 1e-9 * K
        # middle-rank bubble in closed form, independent of M
        bp = c.b - c.w
        mid = (n - 1) * (fb - 2 * c.w + max(0.0, c.w - bp)) + max((n - 1) * c.f, (n - 1) * bp - c.f)
        mid_rank = n - 1
        assert abs(res.bubble_per_rank[mid_rank] - mid) < 1e-9 * K


@pytest.mark.parametrize("name,pp", [("dualpipe", 4), ("dualpipe", 8), ("dualpipe", 16), ("dualpipev", 4)])
def test_dual_readme_bubble_in_its_regime(name, pp):
    """Long backward (b' >= w, (n-1) b' >= n f; max(f, b) <= fb <= f + b): middle ranks idle the README's (PP/2-1)(F&B+B-3W) minus F."""
    n = pp // 2 if name == "dualpipe" else pp
    c = UnitCosts(f=1.0, b=4.0, w=1.0, fb=4.5)
    res = _bubbles(name, pp, 4 * pp, c)
    readme = (n - 1) * (c.fb + c.b - 3 * c.w)
    assert abs(res.bubble_per_rank[n - 1] - (readme - c.f)) < TOL
    # outer ranks run n-2 fewer overlapped pairs, i.e. (n-2)(f+b-fb) more work and less idle
    assert abs(res.bubble_per_rank[0] - (readme - c.f - (n - 2) * (c.f + c.b - c.fb))) < TOL
    assert max(res.bubble_per_rank) == res.bubble_per_rank[n - 1]


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 8), (8, 20), (16, 32)])
def test_dualpipe_activation_peak_is_pp_plus_one_everywhere(pp, m):
    res = _bubbles("dualpipe", pp, m, UnitCosts())
    assert res.peak_activations_per_rank == (pp + 1,) * pp  # README: PP+1


@pytest.mark.parametrize("pp,m", [(1, 2), (4, 8), (4, 20)])
def test_dualpipev_activation_peak(pp, m):
    res = _bubbles("dualpipev", pp, m, UnitCosts())
    assert res.peak_activations_per_rank == (2 * pp + 1,) * pp  # PP+1 with PP = 2 pp half-size stages


def test_dualpipe_beats_1f1b_and_zb1p_at_deepseek_scale():
    """pp=16, 32 micro-batches, overlapped pair cheaper than F+B: DualPipe's makespan is the smallest."""
    c = UnitCosts(f=1.0, b=2.0, w=1.0, fb=2.4)
    mk = {n: run_unit(build_schedule(n, 16, 32), c).makespan for n in ("1f1b", "zb1p", "dualpipe")}
    assert mk["dualpipe"] < mk["zb1p"] < mk["1f1b"]
