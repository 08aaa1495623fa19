"""Collective flows built as arrays for groups of equal shape are the flows the per-group construction gives,
and they follow the algorithms' closed forms."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gpuhours.hwmodels.collective_flows import (
    _ep_flows_per_group,
    _ring_flows_per_group,
    ep_flows,
    node_blocks,
    nodes_distribution,
    ring_flows,
    split,
)

NODE_OF = np.repeat(np.arange(8), 8)  # 64 GPUs, 8 per node


def _multiset(flows) -> Counter:
    return Counter((int(a), int(b), round(float(w), 12)) for a, b, w in flows)


# a TP group in a node, a DP group across nodes (one GPU per node), EP 4 nodes x 4 GPUs given out of order
GROUPS = {
    "in a node": [[8 * n + j for j in range(8)] for n in range(8)],
    "across nodes": [[8 * n + j for n in range(8)] for j in range(8)],
    "blocks": [[8 * n + j for n in (3, 1, 0, 2) for j in (7, 5, 4, 6)], [8 * n + j for n in (4, 5, 6, 7)
                                                                       for j in (0, 1, 2, 3)]],
}


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_ring_flows_as_arrays_equal_the_per_group_rings(name):
    groups = GROUPS[name]
    assert node_blocks(groups, NODE_OF) is not None
    assert _multiset(ring_flows(groups, NODE_OF)) == _multiset(_ring_flows_per_group(groups, NODE_OF))


def test_ring_closed_form():
    """q channels per group, each a ring over all r q ranks carrying 1/q of the chunk: every rank sends and
    receives exactly one chunk per step in all."""
    flows = ring_flows(GROUPS["blocks"], NODE_OF)
    assert len(flows) == 2 * 4 * 16  # groups x channels x ring length
    sent = np.bincount(flows[:, 0].astype(int), weights=flows[:, 2], minlength=64)
    received = np.bincount(flows[:, 1].astype(int), weights=flows[:, 2], minlength=64)
    members = sorted(x for g in GROUPS["blocks"] for x in g)
    assert sent[members] == pytest.approx(1.0) and received[members] == pytest.approx(1.0)


@pytest.mark.parametrize("nodes_per_token", [1, 2.5, {3: 0.3, 4: 0.7}])
def test_ep_flows_as_arrays_equal_the_per_group_flows(nodes_per_token):
    groups = GROUPS["blocks"]
    ib, nvl = ep_flows(groups, NODE_OF, 8, nodes_per_token)
    ib2, nvl2 = _ep_flows_per_group(groups, NODE_OF, 8, nodes_distribution(nodes_per_token, 8))
    assert _multiset(ib) == _multiset(ib2) and _multiset(nvl) == _multiset(nvl2)


def test_split_gives_the_node_rows_and_the_rails():
    intra, inter = split(GROUPS["blocks"], NODE_OF)
    # group 0: nodes 0-3, in-node GPUs 4-7; group 1: nodes 4-7, in-node GPUs 0-3
    assert {tuple(r) for r in np.asarray(intra).tolist()} == (
        {tuple(8 * n + j for j in (4, 5, 6, 7)) for n in range(4)} | {tuple(8 * n + j for j in range(4)) for n in range(4, 8)})
    assert {tuple(r) for r in np.asarray(inter).tolist()} == (
        {tuple(8 * n + j for n in range(4)) for j in (4, 5, 6, 7)} | {tuple(8 * n + j for n in range(4, 8)) for j in range(4)})
    assert np.asarray(intra).shape == (8, 4) and np.asarray(inter).shape == (8, 4)


def test_groups_uneven_across_nodes_take_the_per_group_path():
    uneven = [[0, 1, 2, 8, 9, 10, 11, 12]]  # 3 GPUs on node 0, 5 on node 1
    assert node_blocks(uneven, NODE_OF) is None
    flows = ring_flows(uneven, NODE_OF)
    assert _multiset(flows) == _multiset(_ring_flows_per_group(uneven, NODE_OF))
