"""The flows of a collective algorithm: who sends to whom, and how many bytes per byte of the collective's chunk.

A flow is (src GPU, dst GPU, bytes); a phase's flows all run at once and `graph_network.GraphNetwork` routes them
over the fabric. Groups usually hold the same number of GPUs on each of their nodes (a tensor-parallel group in
one node, a data-parallel group with one GPU per node, DeepSeek's EP64 as 8 x 8): then every group is a block of
r nodes x q GPUs (`node_blocks`) and the flows of all groups are built as arrays at once. Groups straddling nodes
unevenly (a stage across NVL72 racks) take the per-group path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def node_blocks(groups: Sequence[Sequence[int]], node_of: np.ndarray) -> np.ndarray | None:
    """Groups as an array (groups, r nodes, q GPUs): each group's GPUs sorted by node, then by id, when every
    group holds q GPUs on each of its r nodes; None otherwise."""
    g = np.asarray(groups, dtype=np.int64)
    if g.ndim != 2 or not g.size:
        return None
    nodes = node_of[g]
    order = np.lexsort((g, nodes), axis=1)
    g, nodes = np.take_along_axis(g, order, axis=1), np.take_along_axis(nodes, order, axis=1)
    starts = np.ones(nodes.shape, dtype=bool)
    starts[:, 1:] = nodes[:, 1:] != nodes[:, :-1]
    r = int(starts[0].sum())
    if (starts.sum(axis=1) != r).any() or g.shape[1] % r:
        return None
    q = g.shape[1] // r
    blocks = g.reshape(len(g), r, q)
    if (node_of[blocks] != node_of[blocks[:, :, :1]]).any():  # each row of q must sit on one node
        return None
    return blocks


def by_node(group: Sequence[int], node_of: np.ndarray) -> list[list[int]]:
    """One group's GPUs per node, nodes in order, GPUs sorted."""
    nodes: dict[int, list[int]] = {}
    for x in group:
        nodes.setdefault(int(node_of[x]), []).append(int(x))
    return [sorted(v) for _, v in sorted(nodes.items())]


def ring_flows(groups: Sequence[Sequence[int]], node_of: np.ndarray) -> np.ndarray:
    """One step of NCCL-like rings as an (N, 3) array: per group one ring per GPU a node holds (channel c starts
    every node at its c-th GPU), each carrying 1/channels of the chunk."""
    blocks = node_blocks(groups, node_of)
    if blocks is None:
        return _ring_flows_per_group(groups, node_of)
    n, r, q = blocks.shape
    # channel c visits, node after node, that node's GPUs starting from its c-th
    rings = np.stack([np.roll(blocks, -c, axis=2).reshape(n, r * q) for c in range(q)], axis=1)  # (n, q, rq)
    src = rings.reshape(-1)
    dst = np.roll(rings, -1, axis=2).reshape(-1)
    return np.column_stack([src, dst, np.full(len(src), 1.0 / q)])


def _ring_flows_per_group(groups, node_of) -> np.ndarray:
    flows = []
    for grp in groups:
        per_node = by_node(grp, node_of)
        ch = len(per_node[0])
        for c in range(ch):
            order = [n[(c + j) % len(n)] for n in per_node for j in range(len(n))]
            flows += [(order[i], order[(i + 1) % len(order)], 1.0 / ch) for i in range(len(order))]
    return np.asarray(flows, dtype=float).reshape(-1, 3)


def split(groups: Sequence[Sequence[int]], node_of: np.ndarray):
    """(intra-node sub-groups: the ranks of a group on one node, per-rail inter-node sub-groups: the ranks with
    the same in-node position across the group's nodes)."""
    blocks = node_blocks(groups, node_of)
    if blocks is not None:
        n, r, q = blocks.shape
        return blocks.reshape(n * r, q), blocks.transpose(0, 2, 1).reshape(n * q, r)
    intra, inter = [], []
    for grp in groups:
        per_node = by_node(grp, node_of)
        intra += per_node
        inter += [list(col) for col in zip(*per_node)]
    return intra, inter


def tree_flows(groups: Sequence[Sequence[int]]) -> tuple[list, int]:
    """Double binary tree over each group: the bit-pattern tree on the ranks, and its mirror (p even) or its
    shift by one (p odd), so a rank that is a leaf in one tree is interior in the other. Each tree reduces
    half the data up and broadcasts it down, pipelined, so all flows run together."""
    flows, depth = [], 0
    for grp in groups:
        p = len(grp)
        edges, depth = binary_tree(p)
        second = (lambda r: p - 1 - r) if p % 2 == 0 else (lambda r: (r + 1) % p)
        for relabel in (lambda r: r, second):
            for parent, child in edges:
                a, b = int(grp[relabel(parent)]), int(grp[relabel(child)])
                flows += [(b, a, 0.5), (a, b, 0.5)]
    return flows, depth


def binary_tree(p: int) -> tuple[list[tuple[int, int]], int]:
    """(parent, child) edges and depth of the bit-pattern binary tree NCCL's double binary tree starts from:
    rank r > 0 with lowest set bit b hangs under (r ^ b) | 2b, or under r ^ b when that is out of range;
    rank 0 is the root and the odd ranks are the leaves."""
    edges, parent = [], {0: None}
    for r in range(1, p):
        b = r & -r
        up = (r ^ b) | (b << 1)
        parent[r] = up if up < p else r ^ b
        edges.append((parent[r], r))

    def depth(r: int) -> int:
        d = 0
        while parent[r] is not None:
            r, d = parent[r], d + 1
        return d

    return edges, max(depth(r) for r in range(p))


def ep_flows(groups: Sequence[Sequence[int]], node_of: np.ndarray, top_k: int,
             nodes_per_token) -> tuple[np.ndarray, np.ndarray]:
    """DeepEP dispatch flows per byte of one rank's tokens (tokens * bytes_per_token): (ib, nvlink), (N, 3) each.

    A token goes to d distinct nodes of the group's r, uniformly (d drawn from ``nodes_per_token``, capped at
    r): over IB once to each target node other than its own, to the GPU with its in-node index -- the flow
    (n, i) -> (m, i) carries E[d] / r per byte. That GPU forwards it over NVLink to every other GPU of node m
    holding one of its e = top_k / d experts there; a given GPU is hit with probability
    h = 1 - (1 - 1/g)^e (independent uniform placement), and (m, i) receives E[d]/r per byte from each of
    the r senders of its index, so (m, i) -> (m, j) carries sum_d P(d) * d * h(top_k / d).
    Combine is the same flows reversed.
    """
    dist = nodes_distribution(nodes_per_token, top_k)
    blocks = node_blocks(groups, node_of)
    if blocks is None:
        return _ep_flows_per_group(groups, node_of, top_k, dist)
    n, r, q = blocks.shape
    capped = _capped(dist, r)
    mean_d = sum(d * w for d, w in capped.items())
    # IB: (node a, index i) -> (node b, index i) for a != b
    a_idx, b_idx = np.nonzero(~np.eye(r, dtype=bool))
    src = blocks[:, a_idx, :].reshape(-1)
    dst = blocks[:, b_idx, :].reshape(-1)
    ib = np.column_stack([src, dst, np.full(len(src), mean_d / r)])
    if q > 1:
        w_fwd = sum(w * d * (1 - (1 - 1 / q) ** (top_k / d)) for d, w in capped.items())
        i_idx, j_idx = np.nonzero(~np.eye(q, dtype=bool))
        src = blocks[:, :, i_idx].reshape(-1)
        dst = blocks[:, :, j_idx].reshape(-1)
        nvl = np.column_stack([src, dst, np.full(len(src), w_fwd)])
    else:
        nvl = np.zeros((0, 3))
    return ib, nvl


def _capped(dist: dict[int, float], r: int) -> dict[int, float]:
    capped: dict[int, float] = {}
    for d, w in dist.items():
        capped[min(d, r)] = capped.get(min(d, r), 0.0) + w
    return capped


def _ep_flows_per_group(groups, node_of, top_k: int, dist: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    ib, nvl = [], []
    for grp in groups:
        per_node = by_node(grp, node_of)
        r = len(per_node)
        capped = _capped(dist, r)
        mean_d = sum(d * w for d, w in capped.items())
        for n, src_node in enumerate(per_node):
            g = len(src_node)  # a group straddling nodes unevenly (a stage across NVL72 racks) has several g
            w_fwd = sum(w * d * (1 - (1 - 1 / g) ** (top_k / d)) for d, w in capped.items()) if g > 1 else 0.0
            for i, a in enumerate(src_node):
                for m, dst_node in enumerate(per_node):
                    if m != n:
                        ib.append((a, dst_node[i % len(dst_node)], mean_d / r))
                nvl += [(a, b, w_fwd) for b in src_node if b != a]
    return np.asarray(ib, dtype=float).reshape(-1, 3), np.asarray(nvl, dtype=float).reshape(-1, 3)


def nodes_distribution(nodes_per_token, top_k: int) -> dict[int, float]:
    """{distinct target nodes: probability} from an int, a mean (split between floor and ceil) or a mapping."""
    if isinstance(nodes_per_token, Mapping):
        total = float(sum(nodes_per_token.values()))
        if total <= 0 or any(w < 0 for w in nodes_per_token.values()):
            raise ValueError("nodes_per_token distribution needs non-negative weights with a positive sum")
        out = {int(d): w / total for d, w in nodes_per_token.items() if w > 0}
    else:
        x = float(nodes_per_token)
        if not 1 <= x <= top_k:
            raise ValueError(f"nodes_per_token must lie in [1, top_k={top_k}], got {nodes_per_token!r}")
        lo = math.floor(x)
        out = {lo: 1.0} if x == lo else {lo: lo + 1 - x, lo + 1: x - lo}
    if any(not 1 <= d <= top_k for d in out):
        raise ValueError(f"nodes_per_token values must lie in [1, top_k={top_k}], got {sorted(out)}")
    return out


def group_limited_nodes_distribution(num_nodes: int = 8, max_nodes: int = 4, top_k: int = 8,
                                     experts_per_node: int = 32, samples: int = 4096,
                                     seed: int = 0) -> dict[int, float]:
    """Distribution of distinct target nodes per token under node-limited routing with random scores, as in
    DeepEP's internode test: scores |N(0,1)| + 1, a node's score = its best expert, the best ``max_nodes``
    nodes kept, top_k experts among them (Monte Carlo, ``samples`` tokens)."""
    if not (1 <= max_nodes <= num_nodes and 1 <= top_k <= max_nodes * experts_per_node):
        raise ValueError(f"need 1 <= max_nodes <= num_nodes and top_k <= max_nodes * experts_per_node, got "
                         f"max_nodes={max_nodes}, num_nodes={num_nodes}, top_k={top_k}")
    rng = np.random.default_rng(seed)
    scores = np.abs(rng.standard_normal((samples, num_nodes, experts_per_node))) + 1
    node_score = scores.max(axis=2)
    keep = np.argsort(-node_score, axis=1)[:, :max_nodes]
    mask = np.full((samples, num_nodes), -np.inf)
    np.put_along_axis(mask, keep, 0.0, axis=1)
    masked = (scores + mask[:, :, None]).reshape(samples, -1)
    top = np.argpartition(-masked, top_k - 1, axis=1)[:, :top_k] // experts_per_node
    distinct = np.array([len(set(row)) for row in top.tolist()])
    vals, counts = np.unique(distinct, return_counts=True)
    return {int(v): c / samples for v, c in zip(vals, counts)}
