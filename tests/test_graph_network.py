"""GraphNetwork: closed forms on uniform fabrics, conservation, DeepEP figures, oversubscription."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuhours.hwmodels.cluster import CommGroup, deepseek_h800_cluster
from gpuhours.hwmodels.collectives import AlphaBetaNetwork, NetworkModel, bf16_bytes_per_token, fp8_bytes_per_token
from gpuhours.hwmodels.collective_flows import group_limited_nodes_distribution
from gpuhours.hwmodels.collective_report import collective_report
from gpuhours.hwmodels.graph_network import GraphNetwork
from gpuhours.hwmodels.fabric_presets import load_cluster_preset

N = 1e9  # bytes


@pytest.fixture(scope="module")
def ds():  # the graph's own latency model; NCCL's protocol choice on top of it: tests/test_nccl.py
    return GraphNetwork(load_cluster_preset("deepseek-h800"), nccl=False)


def ring(p, steps, n, bw, alpha):
    return steps * ((p - 1) / p * n / bw + (p - 1) * alpha)


def test_implements_protocol(ds):
    assert isinstance(ds, NetworkModel)


@pytest.mark.parametrize("group", [CommGroup(8, 8), CommGroup(16, 1), CommGroup(4, 4)])
def test_ring_collectives_match_alpha_beta_closed_forms(ds, group):
    spec = ds.spec
    bw, alpha = (spec.nvlink_bw, spec.nvlink_latency) if group.nodes == 1 else (spec.nic_bw, spec.ib_latency)
    p = group.size
    assert ds.all_reduce(N, group, "ring") == pytest.approx(ring(p, 2, N, bw, alpha), rel=1e-9)
    assert ds.reduce_scatter(N, group) == pytest.approx(ring(p, 1, N, bw, alpha), rel=1e-9)
    assert ds.all_gather(N, group) == pytest.approx(ring(p, 1, N, bw, alpha), rel=1e-9)
    ab = AlphaBetaNetwork(deepseek_h800_cluster())   # same figures: 160 / 50 GB/s, 3.4 / 14 us
    assert ds.all_reduce(N, group) == pytest.approx(ab.all_reduce(N, group), rel=1e-9)
    assert ds.reduce_scatter(N, group) == pytest.approx(ab.reduce_scatter(N, group), rel=1e-9)


def test_hierarchical_all_reduce_matches_its_closed_form(ds):
    s, g = ds.spec, CommGroup(64, 8)
    q, r = 8, 8
    expect = 2 * ring(q, 1, N, s.nvlink_bw, s.nvlink_latency) + ring(r, 2, N / q, s.nic_bw, s.ib_latency)
    assert ds.all_reduce(N, g, "hierarchical") == pytest.approx(expect, rel=1e-9)


def test_p2p(ds):
    s = ds.spec
    assert ds.p2p(N, True) == pytest.approx(N / s.nvlink_bw + s.nvlink_latency)
    assert ds.p2p(N, False) == pytest.approx(N / s.nic_bw + s.ib_latency)


def test_tree_all_reduce_moves_twice_the_buffer(ds):
    s = ds.spec
    # double binary tree, one GPU per node: the busiest NIC carries 2 * n (half the data in each tree)
    t = ds.all_reduce(N, CommGroup(16, 1), "tree")
    depth = math.floor(math.log2(16))
    assert t == pytest.approx(2 * N / s.nic_bw + 2 * depth * s.ib_latency, rel=1e-9)


def test_all_to_all_in_one_node_is_bounded_by_nvlink(ds):
    s = ds.spec
    t = ds.all_to_all(N, CommGroup(8, 8))
    assert t >= 7 / 8 * N / s.nvlink_bw
    assert t == pytest.approx(7 / 8 * N / s.nvlink_bw + s.nvlink_latency, rel=1e-9)


def _net_flow(net, loads):
    flow = {}
    for (u, v), b in zip(net.edges, loads):
        flow[u] = flow.get(u, 0.0) - b
        flow[v] = flow.get(v, 0.0) + b
    return flow


def test_bytes_sent_equal_bytes_received(ds):
    ib, nvl = ds.ep_flows(ds.groups_for(CommGroup(64, 8)), 8, {3: 0.3, 4: 0.7})
    flows = [(int(a), int(b), w * 1e6) for a, b, w in np.concatenate([ib, nvl])]
    loads = ds.link_loads(flows)
    flow = _net_flow(ds, loads)
    for node, net_in in flow.items():   # switches and NICs forward what they receive
        if node[0] != "gpu":
            assert net_in == pytest.approx(0.0, abs=1e-3), node
    out_of_gpus = sum(b for (u, _), b in zip(ds.edges, loads) if u[0] == "gpu")
    into_gpus = sum(b for (_, v), b in zip(ds.edges, loads) if v[0] == "gpu")
    assert out_of_gpus == pytest.approx(into_gpus) and out_of_gpus >= sum(b for *_, b in flows)
    # cross-rail (PXN relay) and cross-plane flows: only the endpoints gain or lose bytes
    flow = _net_flow(ds, ds.link_loads([(0, 1000, 5e6), (3, 77, 2e6)]))
    nonzero = {k: v for k, v in flow.items() if abs(v) > 1e-6}
    assert nonzero == pytest.approx({("gpu", 0): -5e6, ("gpu", 1000): 5e6, ("gpu", 3): -2e6, ("gpu", 77): 2e6})


def test_ep_traffic_matches_alpha_beta_per_rank_bytes(ds):
    ab = AlphaBetaNetwork(deepseek_h800_cluster())
    tr = ab.ep_traffic(4096, 7392, 8, 4, CommGroup(64, 8))
    ib, nvl = ds.ep_flows(ds.groups_for(CommGroup(64, 8))[:1], 8, 4)
    unit = 4096 * 7392
    assert sum(w for a, _, w in ib if a == 0) * unit == pytest.approx(tr.ib_bytes)
    assert sum(w for a, _, w in nvl if a == 0) * unit == pytest.approx(tr.nvlink_bytes)


def test_deepep_ep64_bandwidth_near_published(ds):
    """DeepEP on H800, EP64, 4096 tokens x 7168, top-8 over at most 4 nodes: 51 GB/s dispatch (FP8) and
    50 GB/s combine (BF16) of RDMA bottleneck bandwidth, counted as tokens x target nodes x bytes / time."""
    dist = group_limited_nodes_distribution(num_nodes=8, max_nodes=4, top_k=8, experts_per_node=32)
    assert max(dist) <= 4 and sum(dist.values()) == pytest.approx(1.0)
    for kind, published in (("ep_dispatch", 51.0), ("ep_combine", 50.0)):
        rep = collective_report(kind, ds, group_size=64, tokens=4096, hidden=7168, top_k=8, max_nodes=4,
                                nodes_per_token=dist)
        assert rep["rdma_GBps"] == pytest.approx(published, rel=0.15), rep
        assert rep["bottleneck_link"][0][0] in ("nic", "gpu")
    assert fp8_bytes_per_token(7168) == 7392 and bf16_bytes_per_token(7168) == 14336


def test_ep_inside_one_node_is_nvlink_bound(ds):
    t = ds.ep_all_to_all(4096, 7392, 8, 1, CommGroup(8, 8))
    fwd = 4096 * 7 * (1 - (7 / 8) ** 8) * 7392
    assert t == pytest.approx(fwd / ds.spec.nvlink_bw + ds.spec.nvlink_latency, rel=1e-9)


@pytest.mark.parametrize("ratio", [2.0, 4.0])
def test_oversubscription_slows_only_traffic_crossing_the_spine(ratio):
    base = load_cluster_preset("dgx-h100", gpus=128, gpus_per_leaf=4)   # blocks of 4 nodes per leaf
    flat, over = GraphNetwork(base), GraphNetwork(base.with_(oversubscription=ratio))

    def shift(k):  # every GPU sends 1 GB to the same rail k nodes further on
        return [(g, (g + 8 * k) % 128, N) for g in range(128)]

    cross, local = shift(4), [(g, (g // 32) * 32 + (g + 8) % 32, N) for g in range(128)]
    t_flat, t_over = flat.price_flows(cross).bandwidth_s, over.price_flows(cross).bandwidth_s
    assert t_flat == pytest.approx(N / base.nic_bw)
    assert t_over / t_flat == pytest.approx(ratio)
    assert over.price_flows(local).bandwidth_s == pytest.approx(flat.price_flows(local).bandwidth_s)


def test_calls_are_cached_and_bad_input_raises(ds):
    g = CommGroup(64, 8)
    ds.ep_all_to_all(4096, 7392, 8, 4, g)
    n = len(ds._phases)
    assert ds.ep_all_to_all(8192, 7392, 8, 4, g) > ds.ep_all_to_all(4096, 7392, 8, 4, g)
    assert len(ds._phases) == n
    with pytest.raises(ValueError, match="algorithm"):
        ds.all_reduce(N, g, "butterfly")
    with pytest.raises(ValueError, match="nodes_per_token"):
        ds.ep_all_to_all(4096, 7392, 8, 9, g)
    with pytest.raises(ValueError, match="kind"):
        collective_report("broadcast", ds, nbytes=N)
    with pytest.raises(ValueError, match="dtype"):
        collective_report("ep_dispatch", ds, tokens=1, hidden=128, dtype="fp4")


def test_report_busbw_convention(ds):
    rep = collective_report("all_reduce", ds, group_size=8, nbytes=N, algorithm="ring")
    assert rep["busbw_GBps"] == pytest.approx(rep["algbw_GBps"] * 2 * 7 / 8)
    assert rep["busbw_GBps"] < ds.spec.nvlink_bw / 1e9
    rep = collective_report("all_gather", ds, group_size=8, nbytes=N)
    assert rep["busbw_GBps"] == pytest.approx(rep["algbw_GBps"] * 7 / 8)
    assert np.isfinite(rep["time_s"])


def _loads_flow_by_flow(net, flows):
    """The reference: each flow's own route (GraphNetwork.route), its bytes added link by link."""
    loads = np.zeros(len(net.edges))
    latency = 0.0
    for s, d, b in flows:
        if s != d and b > 0:
            r = net.route(s, d)
            np.add.at(loads, r.links, r.fractions * b)
            latency = max(latency, r.latency)
    return loads, latency


@pytest.mark.parametrize("preset, overrides, cross_rail", [
    ("deepseek-h800", {"gpus": 512}, "pxn"),                             # 8 planes: cross-rail flows relay
    ("dgx-h100", {"gpus": 256, "oversubscription": 2.0}, "fabric"),      # one plane, climb to the spine
    ("dgx-h100", {"gpus": 256}, "pxn"),
])
def test_flows_routed_together_load_the_links_as_flow_by_flow(preset, overrides, cross_rail):
    """link_loads and price_flows route all flows at once; the per-flow routes must give the same bytes on every
    link and the same slowest-path latency (random flows: inside nodes, same rail, across rails)."""
    net = GraphNetwork(load_cluster_preset(preset, **overrides), cross_rail=cross_rail)
    rng = np.random.default_rng(7)
    n = net.num_gpus
    flows = [(int(s), int(d), float(b)) for s, d, b in
             zip(rng.integers(0, n, 600), rng.integers(0, n, 600), rng.uniform(0, 1e6, 600))]
    flows += [(3, 3, 1e6), (5, 9, 0.0)]  # to itself, empty: carry nothing
    expected, latency = _loads_flow_by_flow(net, flows)
    assert net.link_loads(flows) == pytest.approx(expected, rel=1e-12, abs=1e-6)
    assert net.price_flows(flows).latency_s == pytest.approx(latency, rel=1e-12)
    assert expected.sum() > 0


def test_routing_refuses_bad_flows(ds):
    with pytest.raises(ValueError, match="flow bytes"):
        ds.link_loads([(0, 9, -1.0)])
    with pytest.raises(ValueError, match="GPU ids"):
        ds.link_loads([(0, ds.num_gpus, 1.0)])


def _ecmp_reference(net, a, b):
    """ECMP split a -> b by the definition: networkx hop distances to b on the switch graph, every switch splitting
    its share evenly over the neighbours one hop closer."""
    import networkx as nx

    switches = net.graph.subgraph(n for n, k in net.graph.nodes(data="kind") if k in ("leaf", "spine", "core"))
    dist = nx.shortest_path_length(switches.reverse(copy=False), source=b)
    loads, frontier = {}, {a: 1.0}
    while frontier:
        nxt = {}
        for u, share in frontier.items():
            if u == b:
                continue
            hops = [v for v in switches.successors(u) if dist.get(v, -1) == dist[u] - 1]
            for v in hops:
                loads[(u, v)] = loads.get((u, v), 0.0) + share / len(hops)
                nxt[v] = nxt.get(v, 0.0) + share / len(hops)
        frontier = nxt
    return loads


@pytest.mark.parametrize("preset, gpus, tiers", [("deepseek-h800", 2048, 2), ("dgx-h100", 4096, 3)])
def test_fabric_routes_split_as_ecmp_by_definition(preset, gpus, tiers):
    net = GraphNetwork(load_cluster_preset(preset, gpus=gpus, tiers=tiers))
    leaves = sorted(n for n, k in net.graph.nodes(data="kind") if k == "leaf")
    rng = np.random.default_rng(3)
    checked = 0
    for i, j in rng.integers(0, len(leaves), (40, 2)):
        a, b = leaves[i], leaves[j]
        got = net._fabric(a, b)
        if got is None:  # different planes share no switch
            assert a[1] != b[1]
            continue
        links, fractions, _ = got
        mine = {net.edges[e]: f for e, f in zip(links, fractions)}
        assert mine == pytest.approx(_ecmp_reference(net, a, b), rel=1e-12)
        checked += 1
    assert checked >= 5


def test_rails_connect_exactly_within_a_plane(ds):
    """DeepSeek's fabric has 8 planes, GPU i of every node on plane i: a NIC reaches another through the
    switches only on its own plane (cross-plane traffic needs PXN over NVLink first)."""
    assert len(set(ds._leaf_components().tolist())) == 8
    same = ds._rails_connect(np.array([0, 0, 3]), np.array([8, 16, 11]))    # GPU 0 of nodes 0, 1, 2; GPU 3
    other = ds._rails_connect(np.array([0, 1, 3]), np.array([9, 8, 8]))      # planes 0->1, 1->0, 3->0
    assert same.tolist() == [True, True, True] and other.tolist() == [False, False, False]
