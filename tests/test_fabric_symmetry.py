"""Leaf-pair routes written down from a spec-built fat tree's switch counts (``hwmodels/fabric_symmetry.py``) against
the full shortest-path search and ECMP walk (``FabricRoutes._toward`` / ``_walk``), bit for bit, on fabrics of every
shape the builder makes: two tiers, three tiers with full and partial pods, one pod under a forced third tier,
several cores per group, planes, a top-of-rack fabric, NVL72 racks filled by scalable unit, one leaf per plane.
And the check: a graph given as networkx, or with a link taken out, takes the full search."""

from __future__ import annotations

import numpy as np
import pytest

from gpuhours.hwmodels import fabric_symmetry
from gpuhours.hwmodels.fabric_build import switch_counts
from gpuhours.hwmodels.fabric_presets import load_cluster_preset
from gpuhours.hwmodels.graph_network import GraphNetwork
from gpuhours.hwmodels.topology import FabricSpec, build_topology

def _a100(**changes) -> FabricSpec:
    return load_cluster_preset("dgx-a100").with_(**changes)


FABRICS = {
    # name: spec
    "a100-1536 (3 tiers, 4 full pods of 20 leaves)": load_cluster_preset("dgx-a100", gpus=1536),
    "a100-1280 (3 tiers, 4 pods, the last of 4 leaves)": load_cluster_preset("dgx-a100", gpus=1280),
    "h800-2048 (DeepSeek's, 2 tiers)": load_cluster_preset("deepseek-h800", gpus=2048),
    "h100-4096 (3 tiers)": load_cluster_preset("dgx-h100", gpus=4096),
    "roce-h100-1024": load_cluster_preset("roce-h100", gpus=1024),
    "nvl72-1152 (racks by scalable unit)": load_cluster_preset("gb200-nvl72", gpus=1152),
    "one pod under a forced third tier": _a100(gpus=128, gpus_per_leaf=8, switch_radix=32,
                                                    tiers=3),
    "several cores per group (8 pods, 4 cores each)": _a100(gpus=256, gpus_per_leaf=4, switch_radix=16, tiers=3),
    "two planes, three tiers, leaf oversubscribed": _a100(gpus=768, planes=2, gpus_per_leaf=8, switch_radix=16,
                                                          tiers=3, oversubscription=2.0),
    "top of rack (not rail-optimised), pods of 4": _a100(gpus=512, gpus_per_leaf=16, switch_radix=32, tiers=3,
                                                         leaves_per_pod=4, rail_optimised=False),
    "one leaf per plane": _a100(gpus=64, planes=8, gpus_per_leaf=8),
}


def _networks(spec, monkeypatch):
    written = GraphNetwork(spec)
    assert written._fat_tree() is not None
    monkeypatch.setattr(fabric_symmetry, "SHORTCUT", False)
    searched = GraphNetwork(spec)
    assert searched._fat_tree() is None
    monkeypatch.setattr(fabric_symmetry, "SHORTCUT", True)
    return written, searched


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return all((a == a[k]).tolist() == (b == b[k]).tolist() for k in range(len(a)))


@pytest.mark.parametrize("name", list(FABRICS))
def test_every_leaf_pair_as_the_search_finds_it(name, monkeypatch):
    spec = FABRICS[name]
    written, searched = _networks(spec, monkeypatch)
    assert _same_partition(written._leaf_components(), searched._leaf_components())
    comp = searched._leaf_components()
    n = len(written._leaves)
    step = max(1, n // 40)  # every pair on small fabrics; every leaf as a source against a spread of targets
    pairs = [(x, y) for x in range(n) for y in range(0, n, step) if x != y and comp[x] == comp[y]]
    assert pairs or n == spec.planes  # one leaf per plane: no pair to route
    for x, y in pairs:
        got, want = written._fabric_parts(x, y), searched._fabric_parts(x, y)
        for g, w in zip(got[:4], want[:4]):
            assert g.dtype == w.dtype and np.array_equal(g, w), (name, x, y)
        assert got[4] == want[4], (name, x, y)
    assert not searched._fat_tree() and written._fat_tree() is not None  # neither switched path on the way


@pytest.mark.parametrize("name", list(FABRICS))
def test_loads_and_latencies_of_mixed_flows(name, monkeypatch):
    """Flows between random GPUs (NVLink, same rail, PXN across rails, across planes), bytes of every size."""
    spec = FABRICS[name]
    written, searched = _networks(spec, monkeypatch)
    rng = np.random.default_rng(14)
    flows = np.column_stack([rng.integers(0, spec.gpus, 3000), rng.integers(0, spec.gpus, 3000),
                             rng.uniform(0.0, 1e9, 3000)])
    (lw, tw), (ls, ts) = written._route_flows(flows), searched._route_flows(flows)
    assert np.array_equal(lw, ls) and np.array_equal(tw, ts)
    # conservation: every inter-node byte crosses its sender's NIC once and its receiver's NIC once
    assert lw.sum() > 0


def test_two_tier_pair_by_hand():
    """Two tiers, S spines per plane: leaf x -> each spine, 1/S of the flow on each, -> leaf y (DeepSeek's H800
    cluster at 2,048 GPUs: two tiers, eight planes)."""
    spec = load_cluster_preset("deepseek-h800", gpus=2048)
    assert (spec.tiers, spec.planes) == (2, 8)
    net = GraphNetwork(spec)
    s = switch_counts(spec).spines
    links, fractions, last, arrive, latency = net._fabric_parts(0, 1)
    assert len(links) == len(last) == s
    assert fractions.tolist() == arrive.tolist() == [1.0 / s] * s
    kinds = {(net.edges[e][0][0], net.edges[e][1][0]) for e in links}
    assert kinds == {("leaf", "spine")}
    # latency: two switch hops of switch_hop_latency, the shares summing to one per hop
    assert latency == pytest.approx(2 * spec.switch_hop_latency)


def test_a_graph_given_as_networkx_or_edited_is_searched():
    """Only a ``FabricGraph`` built from its spec takes the closed form: the same fabric handed over as a networkx
    graph is searched (and routes the same), as is one with a spine-to-core link taken out (a different fabric)."""
    spec = load_cluster_preset("dgx-a100", gpus=1536)
    written = GraphNetwork(spec)
    assert written._fat_tree() is not None
    whole = GraphNetwork(build_topology(spec))
    assert whole._fat_tree() is None
    flows = [(0, 1535, 1.0), (8, 800, 2.0), (3, 1203, 0.5)]
    assert np.array_equal(whole.link_loads(flows), written.link_loads(flows))
    g = build_topology(spec)
    u = ("spine", 0, 0, 0)
    v = next(w for w in g.successors(u) if w[0] == "core")
    g.remove_edge(u, v)
    g.graph.pop("edge_columns", None)
    cut = GraphNetwork(g)
    assert cut._fat_tree() is None
    assert (u, v) not in cut._eid and len(cut.edges) == len(written.edges) - 1
    loads = cut.link_loads([(0, 1535, 1.0)])  # between pods: the whole byte climbs to the cores, around the gap
    up = sum(x for (a, b), x in zip(cut.edges, loads) if (a[0], b[0]) == ("spine", "core"))
    assert up == pytest.approx(1.0)
