"""The start-up and 16,384-GPU speed work (issue 14) changes how things are computed, never what: the fabric
without networkx is the networkx fabric, leaf pairs routed in parts load the links as flow by flow, groups
computed as arrays are the hand-counted groups, the paused collector comes back on, and the command line leaves
networkx and pydantic unimported yet still rejects bad values. Nothing here is timed."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.fabric_graph import FabricGraph
from gpuhours.hwmodels.graph_network import GraphNetwork
from gpuhours.hwmodels.placement import RankLayout
from gpuhours.hwmodels.fabric_presets import load_cluster_preset
from gpuhours.hwmodels.topology import build_topology, fabric_graph
from gpuhours.simulator.collector import collector_paused

SPECS = [
    load_cluster_preset("deepseek-h800", gpus=512),                          # 8 planes, 2 tiers
    load_cluster_preset("dgx-h100", gpus=4096, tiers=3),                     # 3 tiers, pods under a core
    load_cluster_preset("dgx-h100", gpus=1024, oversubscription=2.0),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_fabric_graph_holds_the_networkx_fabric(spec):
    light, g = fabric_graph(spec), build_topology(spec)
    assert isinstance(light, FabricGraph) and isinstance(g, nx.DiGraph)
    assert light._node == dict(g.nodes(data=True))
    assert [(u, v, d) for u, nbrs in light._succ.items() for v, d in nbrs.items()] == list(g.edges(data=True))
    assert light.number_of_edges() == g.number_of_edges() and light.number_of_nodes() == g.number_of_nodes()
    assert g.graph["spec"] == spec and light.graph["spec"] == spec
    # one data dict per edge, seen from both ends, as networkx keeps it
    for u, v in list(g.edges)[::997]:
        assert g._succ[u][v] is g._pred[v][u]


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.name)
def test_network_from_the_spec_prices_as_the_network_from_its_graph(spec):
    from_spec, from_graph = GraphNetwork(spec), GraphNetwork(build_topology(spec))
    assert from_spec.edges == from_graph.edges  # same edge ids: insertion order
    rng = np.random.default_rng(11)
    n = from_spec.num_gpus
    flows = [(int(s), int(d), float(b)) for s, d, b in
             zip(rng.integers(0, n, 400), rng.integers(0, n, 400), rng.uniform(0, 1e6, 400))]
    assert np.array_equal(from_spec.link_loads(flows), from_graph.link_loads(flows))
    assert isinstance(from_spec.graph, nx.DiGraph)  # made on demand, over the same adjacency
    assert set(from_spec.graph.edges) == set(from_spec.edges)


def test_leaf_pairs_in_parts_load_the_links_as_flow_by_flow_on_three_tiers():
    """Flows between pods climb to the core: the batched route (walk to the destination's spines, then the last
    hop, cached in parts) must put on every link what each flow's own route (GraphNetwork.route) puts there."""
    net = GraphNetwork(load_cluster_preset("dgx-h100", gpus=1536, tiers=3, leaves_per_pod=6), cross_rail="fabric")
    rng = np.random.default_rng(5)
    n = net.num_gpus
    flows = [(int(s), int(d), float(b)) for s, d, b in
             zip(rng.integers(0, n, 500), rng.integers(0, n, 500), rng.uniform(0, 1e6, 500))]
    expected = np.zeros(len(net.edges))
    latency = 0.0
    for s, d, b in flows:
        if s != d:
            r = net.route(s, d)
            np.add.at(expected, r.links, r.fractions * b)
            latency = max(latency, r.latency)
    assert net.link_loads(flows) == pytest.approx(expected, rel=1e-12, abs=1e-6)
    assert net.price_flows(flows).latency_s == pytest.approx(latency, rel=1e-12)
    assert any(net.edges[e][1][0] == "core" for e in np.flatnonzero(expected))  # some flows crossed pods


def test_two_tier_split_is_even_over_the_spines():
    """A leaf-to-leaf flow on a one-plane leaf/spine fabric splits evenly over every spine: bytes / spines on
    each up and down link (the ECMP split, by hand)."""
    net = GraphNetwork(load_cluster_preset("dgx-h100", gpus=1024))
    a, b = 0, 8 * 64  # GPU 0 of nodes 0 and 64: rail 0 of blocks 0 and 2 of 32 nodes, two leaves of one plane
    loads = net.link_loads([(a, b, 1.0)])
    assert net._leaf[a] != net._leaf[b] and net.spec.planes == 1 and net.spec.tiers == 2
    spines = [n for n in net.graph.nodes if n[0] == "spine"]
    up = [loads[net.edges.index((net._leaf[a], s))] for s in spines]
    down = [loads[net.edges.index((s, net._leaf[b]))] for s in spines]
    assert up == pytest.approx([1 / len(spines)] * len(spines)) and down == pytest.approx(up)


def test_dense_groups_by_hand():
    """TP2 CP2 DP2 PP2, order tp-cp-dp-pp: GPU = tp + 2 cp + 4 dp + 8 pp. The dp group (dp x cp ranks) of
    stage 0 that holds GPU 0 is {0, 2, 4, 6}; tp groups pair neighbours; cp groups are 2 apart."""
    lay = RankLayout(tp=2, cp=2, dp=2, pp=2)
    assert lay.groups("dp") == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    assert lay.groups("tp") == [[2 * i, 2 * i + 1] for i in range(8)]
    assert lay.groups("cp")[:2] == [[0, 2], [1, 3]]
    # dp innermost: the dp group of GPU 0 is consecutive ranks
    inner = RankLayout(tp=2, cp=1, dp=4, pp=1, order=("dp", "tp", "cp", "pp"))
    assert inner.groups("dp") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(type(g) is int for grp in lay.groups("dp") for g in grp)


def test_collector_comes_back_as_it_was():
    was = gc.isenabled()
    try:
        gc.enable()
        with collector_paused():
            assert not gc.isenabled()
            with collector_paused():
                assert not gc.isenabled()
            assert not gc.isenabled()  # the inner block does not switch it on early
        assert gc.isenabled()
        with pytest.raises(RuntimeError), collector_paused():
            raise RuntimeError
        assert gc.isenabled()
        gc.disable()
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off: left off
    finally:
        (gc.enable if was else gc.disable)()


def test_default_estimate_imports_neither_networkx_nor_pydantic():
    code = ("import sys, json\nfrom gpuhours.cli import app\n"
            "try:\n    app(['estimate', '--json'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(['networkx' in sys.modules, 'pydantic' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [False, False]


def test_options_given_a_value_are_still_checked_and_converted():
    runner = CliRunner()
    r = runner.invoke(app, ["estimate", "--pp", "abc"])
    assert r.exit_code == 2 and "--pp" in r.output
    r = runner.invoke(app, ["estimate", "--redundant-experts", "x"])
    assert r.exit_code == 2 and "--redundant-experts" in r.output
    r = runner.invoke(app, ["estimate", "--gpus", "1024", "--pp", "16", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["gpus"] == 1024


def test_fabric_graph_bulk_insert_by_hand():
    g = FabricGraph(name="two")
    ab, ba = {"capacity": 1.0}, {"capacity": 2.0}
    g._node["a"], g._succ["a"], g._pred["a"] = {"kind": "x"}, {"b": ab}, {"b": ba}  # written by a builder
    g.add_bulk([("b", {"kind": "y"})], [("b", "a", ba)], done=(["a"], ["b"], [ab]),
               adjacency=({"b": {}}, {"b": {"a": ab}}))
    assert g._succ == {"a": {"b": ab}, "b": {"a": ba}} and g._pred == {"a": {"b": ba}, "b": {"a": ab}}
    assert g.graph["edge_columns"] == (("a", "b"), ("b", "a"), (ab, ba)) and g.graph["name"] == "two"
    assert g.number_of_edges() == 2 and g.number_of_nodes() == 2
    h = g.to_networkx()
    assert list(h.edges(data="capacity")) == [("a", "b", 1.0), ("b", "a", 2.0)]
    with pytest.raises(ValueError, match="twice"):
        g.add_bulk([("a", {})], [])
    with pytest.raises(ValueError, match="never added"):
        FabricGraph().add_bulk([], [], adjacency=({"c": {"d": {}}}, {}))
