"""Walks that share their part past the first hop (``FabricSearch._walk_tail``, hwmodels/fabric_search.py): on the
DGX A100 SuperPOD fabric of 1,536 GPUs (hwmodels/data/clusters.toml: 3 tiers, pods of 20 leaves, so 80 leaves in
4 pods) the leaves of one pod reach the same spines with the same shares, so every walk to one pod's spines from
one pod is computed once, and the routes are the same, bit for bit, as walking every leaf on its own."""

from __future__ import annotations

import numpy as np
import pytest

from gpuhours.hwmodels import fabric_search, fabric_symmetry
from gpuhours.hwmodels.fabric_presets import load_cluster_preset
from gpuhours.hwmodels.graph_network import GraphNetwork

GPUS, LEAVES, PODS = 1536, 80, 4  # 192 DGX A100 x 8 rails = 1,536 NICs, 20 per leaf (clusters.toml gpus_per_leaf)


@pytest.fixture(autouse=True)
def searched(monkeypatch):
    """These are the search's walks: the spec-built fabric's closed form (``fabric_symmetry``) stays off here
    (tests/test_fabric_symmetry.py compares the two)."""
    monkeypatch.setattr(fabric_symmetry, "SHORTCUT", False)


@pytest.fixture(scope="module")
def spec():
    s = load_cluster_preset("dgx-a100", gpus=GPUS)
    assert s.tiers == 3
    return s


def _one_gpu_per_leaf(net) -> list[int]:
    first: dict[int, int] = {}
    for gpu, leaf in enumerate(net._leaf_id.tolist()):
        first.setdefault(leaf, gpu)
    assert len(first) == LEAVES
    return [first[k] for k in range(LEAVES)]


def _all_leaf_pairs(net) -> list[tuple[int, int, float]]:
    gpus = _one_gpu_per_leaf(net)
    return [(a, b, 1.0 + 0.25 * k) for k, (a, b) in enumerate((a, b) for a in gpus for b in gpus if a != b)]


def test_one_tail_per_pair_of_pods(spec):
    net = GraphNetwork(spec)
    net.link_loads(_all_leaf_pairs(net))
    assert len(net._walks) == LEAVES * PODS        # one walk per (source leaf, destination pod's spines)
    assert len(net._tails) == PODS * PODS          # shared by the 20 leaves of the source pod


def test_same_loads_and_latencies_as_walking_every_leaf(spec, monkeypatch):
    flows = _all_leaf_pairs(GraphNetwork(spec))
    shared = GraphNetwork(spec)._route_flows(flows)
    monkeypatch.setattr(fabric_search, "SHARE_WALK_TAILS", False)
    own = GraphNetwork(spec)
    alone = own._route_flows(flows)
    assert own._tails and all(len(k) == 2 for k in own._tails)  # computed, but never reused
    assert np.array_equal(shared[0], alone[0]) and np.array_equal(shared[1], alone[1])


def test_walk_conserves_the_flow(spec):
    """A leaf-to-leaf route between pods climbs leaf -> spine -> core and descends core -> spine -> leaf: four switch
    links, each tier carrying the whole flow (fractions summing to 1); inside a pod, leaf -> spine -> leaf: two."""
    net = GraphNetwork(spec)
    pods = [next(w for w in net._g._succ[leaf] if w[0] == "spine")[2] for leaf in net._leaves]  # (spine, plane, pod, k)
    assert sorted(set(pods)) == list(range(PODS)) and all(pods.count(p) == LEAVES // PODS for p in range(PODS))
    x = 0
    other = pods.index(1)
    same = next(k for k in range(1, LEAVES) if pods[k] == pods[x])
    for y, hops in ((other, 4), (same, 2)):
        links, fractions, _ = net._fabric(net._leaves[x], net._leaves[y])
        assert sum(fractions) == pytest.approx(hops)
        assert len(set(links)) == len(links)
        kinds = {}
        for e, f in zip(links, fractions):
            u, v = net.edges[e]
            kinds[(u[0], v[0])] = kinds.get((u[0], v[0]), 0.0) + f
        expected = {("leaf", "spine"): 1.0, ("spine", "leaf"): 1.0}
        if hops == 4:
            expected.update({("spine", "core"): 1.0, ("core", "spine"): 1.0})
        assert kinds == pytest.approx(expected)
