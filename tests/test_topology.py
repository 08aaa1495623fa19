"""Fabric graph, presets and rank placement."""

from __future__ import annotations

import networkx as nx
import pytest

from gpuhours.hwmodels.placement import Placement
from gpuhours.hwmodels.fabric_presets import list_cluster_presets, load_cluster_preset
from gpuhours.hwmodels.topology import FabricSpec, build_topology, describe, leaf_of_nic


def test_presets_carry_the_published_figures():
    ds = load_cluster_preset("deepseek-h800")
    assert (ds.gpus, ds.gpus_per_node, ds.planes, ds.tiers) == (2048, 8, 8, 2)
    assert ds.nvlink_bw == pytest.approx(160e9) and ds.nic_bw == pytest.approx(50e9)
    dgx = load_cluster_preset("dgx-h100")
    assert dgx.nvlink_bw == pytest.approx(0.8 * 450e9) and dgx.planes == 1
    assert all(dict(load_cluster_preset(n).sources) for n in list_cluster_presets())


def test_deepseek_multiplane_switch_counts():
    # per plane 256 NICs: 256 / 32 = 8 leaves, 8 * 32 uplinks / 64 ports = 4 spines; 8 planes
    d = describe(build_topology(load_cluster_preset("deepseek-h800")))
    assert (d["gpus"], d["nodes"], d["nics"]) == (2048, 256, 2048)
    assert d["switches"] == {"nvswitch": 256, "leaf": 64, "spine": 32, "core": 0}
    assert d["bisection_Bps"] == pytest.approx(2048 * 50e9 / 2)
    assert d["tier_bandwidth_Bps"]["leaf_spine"] == pytest.approx(2048 * 50e9)


def test_dgx_superpod_has_16_spines_for_4_units():
    d = describe(build_topology(load_cluster_preset("dgx-h100")))
    assert d["switches"]["leaf"] == 32 and d["switches"]["spine"] == 16


def test_oversubscription_halves_uplinks_and_bisection():
    spec = load_cluster_preset("dgx-h100", oversubscription=2.0)
    d = describe(build_topology(spec))
    assert d["tier_bandwidth_Bps"]["leaf_spine"] == pytest.approx(1024 * 50e9 / 2)
    assert d["bisection_Bps"] == pytest.approx(1024 * 50e9 / 4)


def test_three_tier_build_and_two_tier_limit():
    spec = load_cluster_preset("dgx-h100", gpus=8192, tiers=3)
    g = build_topology(spec)
    d = describe(g)
    assert d["switches"]["core"] > 0
    assert d["tier_bandwidth_Bps"]["spine_core"] == pytest.approx(8192 * 50e9)
    with pytest.raises(ValueError, match="tiers=3"):
        build_topology(load_cluster_preset("dgx-h100", gpus=8192, tiers=2))


def test_rail_optimised_leaves():
    spec = load_cluster_preset("dgx-h100", gpus=128, gpus_per_leaf=8)
    g = build_topology(spec)
    leaf = {x: next(v for v in g.successors(("nic", x)) if v[0] == "leaf") for x in range(128)}
    # NIC r of nodes 0..7 (one block) share a leaf; different rails never do
    assert len({leaf[n * 8 + 3] for n in range(8)}) == 1
    assert len({leaf[3], leaf[4]}) == 2
    assert leaf[8 * 8 + 3] != leaf[3]          # next block of nodes, next leaf
    tor = build_topology(spec.with_(rail_optimised=False))
    assert len({next(v for v in tor.successors(("nic", x)) if v[0] == "leaf") for x in range(8)}) == 1


def test_links_are_symmetric_and_planes_disjoint():
    g = build_topology(load_cluster_preset("deepseek-h800", gpus=64))
    for u, v, c in g.edges(data="capacity"):
        assert c > 0 and g.edges[v, u]["capacity"] == c
    switches = g.subgraph(n for n, k in g.nodes(data="kind") if k in ("leaf", "spine"))
    assert nx.number_weakly_connected_components(switches) == 8
    assert leaf_of_nic(load_cluster_preset("deepseek-h800"), 9)[0] == 1


def test_bad_input_raises():
    with pytest.raises(ValueError, match="preset"):
        load_cluster_preset("nope")
    with pytest.raises(ValueError, match="planes"):
        load_cluster_preset("deepseek-h800", planes=3)
    with pytest.raises(ValueError, match="tiers"):
        load_cluster_preset("deepseek-h800", tiers=4)
    with pytest.raises(ValueError, match="unknown FabricSpec"):
        load_cluster_preset("deepseek-h800", colour="red")
    assert isinstance(load_cluster_preset("dgx-h100"), FabricSpec)


# ---------------------------------------------------------------------------------------------- placement
def test_deepseek_placement_groups():
    p = Placement(pp=16, dp=2, ep=64, tp=1)
    assert p.world == 2048
    assert p.ep_group(0) == list(range(64))                  # EP64 = 8 whole nodes
    assert p.nodes_of(p.ep_group(0)) == list(range(8))
    assert p.dp_group(0) == [0, 64]
    assert p.pp_group(5) == [5 + 128 * s for s in range(16)]
    assert p.group(0, "dp", "ep") == list(range(128))        # dense-weight data parallel group
    assert p.shape(0, "ep") == (64, 8) and p.shape(0, "dp") == (2, 1)
    assert len(p.all_groups("ep")) == 32
    assert p.rank_of(**p.coords(1234)) == 1234


def test_tp_stays_in_node_and_order_is_configurable():
    p = Placement(pp=2, dp=2, ep=4, tp=4)
    assert p.nodes_of(p.tp_group(9)) == [1]
    q = Placement(pp=2, dp=2, ep=4, tp=4, order=("tp", "pp", "ep", "dp"))
    assert q.pp_group(0) == [0, 4]
    with pytest.raises(ValueError, match="order"):
        Placement(order=("tp", "ep"))
    with pytest.raises(ValueError, match="rank"):
        p.coords(64)
