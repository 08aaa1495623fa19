"""Link sharing of a phase's flows (hwmodels/link_sharing.py): max-min fair fluid runs against hand-worked
examples and closed forms, conservation, and the option through GraphNetwork, Scenario, plan files and sweeps."""

from __future__ import annotations

import numpy as np
import pytest

from gpuhours.hwmodels.fabric_presets import load_cluster_preset
from gpuhours.hwmodels.graph_network import GraphNetwork
from gpuhours.hwmodels.link_sharing import (FlowLinks, bottleneck_makespan, flows_on_routes, max_min_rates,
                                            max_min_schedule, phase_makespan, shared_seconds)


def links(entries, sizes, caps):
    """FlowLinks from (flow, link, fraction) triples."""
    f, l, a = zip(*entries)
    return FlowLinks(np.array(f), np.array(l), np.array(a, dtype=float), np.array(sizes, dtype=float),
                     np.array(caps, dtype=float))


def random_phase(rng, n_flows, n_links, equal):
    entries = []
    for f in range(n_flows):
        used = rng.choice(n_links, size=rng.integers(1, min(4, n_links) + 1), replace=False)
        for l in used:
            entries.append((f, int(l), float(rng.choice([1.0, 0.5, 0.25]))))
    sizes = np.full(n_flows, 3.0) if equal else rng.uniform(0.1, 5.0, n_flows)
    return links(entries, sizes, rng.uniform(0.5, 4.0, n_links)), entries


# ------------------------------------------------------------------------------------------ hand-worked examples
def test_two_links_unequal_flows_by_hand():
    """Link 0 (1 B/s) carries A (0.1 B) and B (1.2 B); link 1 (0.6 B/s) carries B only. Fair share on link 0 is
    0.5 < 0.6, so both run at 0.5 until A ends at 0.2 s (B has sent 0.1 B); B then runs alone at 0.6 B/s for
    1.1 / 0.6 s. Bottleneck bound: link 1's 1.2 / 0.6 = 2 s; max-min ends 1/30 s later."""
    fl = links([(0, 0, 1), (1, 0, 1), (1, 1, 1)], [0.1, 1.2], [1.0, 0.6])
    s = max_min_schedule(fl)
    assert bottleneck_makespan(fl) == pytest.approx(2.0, rel=1e-12)
    assert s.finish == pytest.approx([0.2, 0.2 + 1.1 / 0.6], rel=1e-12)
    assert s.makespan == pytest.approx(61 / 30, rel=1e-12)
    assert s.rates[0] == pytest.approx([0.5, 0.5])
    assert s.rates[1] == pytest.approx([0.0, 0.6])
    assert phase_makespan(fl, "max-min") == pytest.approx(61 / 30, rel=1e-12)
    assert phase_makespan(fl, "bottleneck") == pytest.approx(2.0, rel=1e-12)


def test_ecmp_fraction_by_hand():
    """X (4 B) splits half and half over links 0 and 1 (1 B/s each); Y (1 B) uses link 0. Link 0 fills when
    0.5 r + r = 1: both at 2/3 B/s; Y ends at 1.5 s, X has 3 B left and runs at 2 B/s (0.5 x 2 = each link's
    capacity) for 1.5 s more: 3 s, which is link 0's 3 B / 1 B/s."""
    fl = links([(0, 0, 0.5), (0, 1, 0.5), (1, 0, 1.0)], [4.0, 1.0], [1.0, 1.0])
    s = max_min_schedule(fl)
    assert s.rates[0] == pytest.approx([2 / 3, 2 / 3])
    assert s.rates[1] == pytest.approx([2.0, 0.0])
    assert s.finish == pytest.approx([3.0, 1.5])
    assert bottleneck_makespan(fl) == pytest.approx(3.0)


def test_max_min_rates_by_hand():
    """Link 0 (1 B/s): flows 0, 1, 2; link 1 (1 B/s): flows 2, 3. Link 0's fair share 1/3 is the smaller:
    flows 0-2 at 1/3, flow 3 takes what link 1 has left, 2/3 (Bertsekas and Gallager's progressive filling)."""
    fl = links([(0, 0, 1), (1, 0, 1), (2, 0, 1), (2, 1, 1), (3, 1, 1)], [1, 1, 1, 1], [1.0, 1.0])
    assert max_min_rates(fl, np.ones(4, dtype=bool)) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3])
    # flow 0 finished: link 0 splits between 1 and 2 (1/2 each), link 1 gives flow 3 the other 1/2
    assert max_min_rates(fl, np.array([False, True, True, True])) == pytest.approx([0, 0.5, 0.5, 0.5])


# ------------------------------------------------------------------------------------------ closed forms, laws
@pytest.mark.parametrize("seed", range(6))
def test_equal_flows_end_at_the_bottleneck(seed):
    """Flows of one size: max-min fair sharing ends exactly when the most loaded link has carried its bytes
    (that link's bytes summed here by hand over the entries)."""
    rng = np.random.default_rng(seed)
    fl, entries = random_phase(rng, 12, 6, equal=True)
    load = np.zeros(6)
    for f, l, a in entries:
        load[l] += a * 3.0
    expected = max(load[l] / fl.capacity[l] for l in range(6))
    assert max_min_schedule(fl).makespan == pytest.approx(expected, rel=1e-9)
    assert phase_makespan(fl, "max-min") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_conservation_capacity_and_fairness(seed):
    """Unequal flows: every flow delivers its bytes, no link runs over capacity in any interval, every running
    flow crosses a full link (nothing could go faster without slowing a slower flow), and the run lasts at
    least the bottleneck bound."""
    rng = np.random.default_rng(100 + seed)
    fl, entries = random_phase(rng, 15, 7, equal=False)
    s = max_min_schedule(fl)
    dt = np.diff(s.times)
    assert (dt > 0).all()
    assert (s.rates * dt[:, None]).sum(axis=0) == pytest.approx(fl.size, rel=1e-9)
    for k, rates in enumerate(s.rates):
        use = np.zeros(7)
        for f, l, a in entries:
            use[l] += a * rates[f]
        assert (use <= fl.capacity * (1 + 1e-9)).all()
        full = use >= fl.capacity * (1 - 1e-9)
        for f in np.flatnonzero(rates > 0):
            assert any(full[l] for g, l, _ in entries if g == f)
    assert s.makespan >= bottleneck_makespan(fl) * (1 - 1e-12)
    assert s.finish.max() == pytest.approx(s.makespan)


def test_bad_option_names_the_field():
    fl = links([(0, 0, 1)], [1.0], [1.0])
    with pytest.raises(ValueError, match="link_sharing must be one of bottleneck, max-min"):
        phase_makespan(fl, "fair")
    with pytest.raises(ValueError, match="link_sharing"):
        GraphNetwork("dgx-h100", link_sharing="fair")


# ------------------------------------------------------------------------------------------ on the fabric graph
@pytest.fixture(scope="module")
def net():
    return GraphNetwork(load_cluster_preset("deepseek-h800", gpus=16), link_sharing="max-min")


def test_routes_agree_with_link_loads(net):
    """The per-flow incidence the fluid run reads carries the same bytes per link as the router's loads."""
    rng = np.random.default_rng(7)
    flows = [(int(a), int(b), float(w)) for a, b, w in zip(rng.integers(0, 16, 40), rng.integers(0, 16, 40),
                                                             rng.uniform(0.1, 2.0, 40))]
    fl = flows_on_routes(net, flows, net._cap)
    assert fl.loads() == pytest.approx(net.link_loads(flows), rel=1e-12, abs=1e-12)


def test_pxn_flow_held_back_on_nvlink(net):
    """GPUs 2..7 each send a (small) to GPU 0 over NVLink while GPU 1 sends b to GPU 8 on the next node by PXN
    (NVLink to GPU 0, then GPU 0's NIC). The seven flows into GPU 0 share its NVLink port at nvl / 7, below the
    NIC's rate, until the small ones end at 7a / nvl; the PXN flow then runs at the NIC's rate:
    7a / nvl + (b - a) / nic, later than the bottleneck bound b / nic."""
    nvl, nic = net.spec.nvlink_bw, net.spec.nic_bw
    assert nvl / 7 < nic
    a, b = 1.0, 4.0
    flows = [(k, 0, a) for k in range(2, 8)] + [(1, 8, b)]
    bound = net.price_flows(flows).bandwidth_s
    assert bound == pytest.approx(max(b / nic, (6 * a + b) / nvl), rel=1e-12)
    got = shared_seconds(net, flows, bound, "max-min")
    assert got == pytest.approx(7 * a / nvl + (b - a) / nic, rel=1e-9)
    assert shared_seconds(net, flows, bound, "bottleneck") == bound


def test_equal_flow_phases_are_bit_identical():
    """Rings, all-to-alls, pipeline sends and DeepEP's phases (equal flows, or sizes on disjoint links) cost
    exactly the same under both options."""
    spec = load_cluster_preset("deepseek-h800", gpus=32)
    a, b = GraphNetwork(spec), GraphNetwork(spec, link_sharing="max-min")
    groups = [list(range(0, 32, 2)), list(range(1, 32, 2))]
    for kind in ("all_reduce", "reduce_scatter", "all_gather", "all_to_all"):
        assert [p.coef for p in a.phases(kind, groups)] == [p.coef for p in b.phases(kind, groups)]
    assert a.ep_phase([list(range(32))], 8, 3.0).coef == b.ep_phase([list(range(32))], 8, 3.0).coef


# ------------------------------------------------------------------------------------------ the option
def test_scenario_plan_and_sweep_option(tmp_path):
    from gpuhours.simulator.scenario import load_scenario
    from gpuhours.simulator.sweep_spec import _check_value

    assert load_scenario().link_sharing == "bottleneck"
    sc = load_scenario(link_sharing="max-min")
    assert sc.network().link_sharing == "max-min"
    with pytest.raises(ValueError, match="link_sharing must be one of"):
        load_scenario(link_sharing="fair")
    plan = tmp_path / "p.toml"
    text = (__import__("importlib.resources").resources.files("gpuhours.workloads")
            .joinpath("plans", "deepseek-v3.toml").read_text())
    plan.write_text(text.replace("[network]", "[network]\nlink_sharing = \"max-min\"", 1) if "[network]" in text
                    else text + "\n[network]\nlink_sharing = \"max-min\"\n")
    assert load_scenario(str(plan)).link_sharing == "max-min"
    _check_value("link_sharing", "max-min", "grid")
    with pytest.raises(ValueError, match="grid.link_sharing must be one of"):
        _check_value("link_sharing", "fair", "grid")


def test_estimate_help_shows_the_option():
    from typer.testing import CliRunner

    from gpuhours.cli import app

    out = CliRunner().invoke(app, ["estimate", "--help"], env={"COLUMNS": "200"}).output
    assert "--link-sharing" in out
