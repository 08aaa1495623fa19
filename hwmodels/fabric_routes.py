"""Routing on the fabric graph: every flow (src GPU, dst GPU, bytes) follows the shortest paths of the graph,
split evenly (ECMP) over the next hops on a shortest path at every switch, and adds its bytes to every link it
uses. NVLink inside a node; between nodes the sender's NIC, the fabric and the receiver's NIC on the same rail, or
PXN (NVLink to the sending node's GPU on the receiver's rail first). Flows are routed as arrays: per-GPU edge ids
for the NVLink, NIC and PXN hops; between leaves one ECMP walk per source leaf up to the switches the destination
hangs under (its anchors) and one set of last hops per destination, so a pair of leaves costs a lookup; one
shortest-path search per set of leaves under the same switches. The graph is read through its adjacency
dictionaries only (a networkx.DiGraph, or a ``fabric_graph.FabricGraph`` that needs no networkx).
`graph_network.GraphNetwork` builds collectives on it."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gpuhours.hwmodels.fabric_index import FabricIndex
from gpuhours.hwmodels.topology import SWITCH_KINDS

if TYPE_CHECKING:
    import networkx as nx

    from gpuhours.hwmodels.fabric_graph import FabricGraph

CROSS_RAIL = ("pxn", "fabric")
# Whether walks share their part past the first hop (`FabricRoutes._walk_tail`); off only to measure the saving
SHARE_WALK_TAILS = True


@dataclass(frozen=True)
class Route:
    """Links of one src -> dst flow with the fraction of its bytes on each (ECMP splits), and path latency."""

    links: np.ndarray     # edge ids
    fractions: np.ndarray
    latency: float


@dataclass(frozen=True)
class FlowCost:
    time_s: float
    bandwidth_s: float
    latency_s: float
    bottleneck: tuple | None   # (u, v) of the most loaded link relative to capacity
    loads: np.ndarray          # bytes per edge id


class FabricRoutes(FabricIndex):
    """Routes and link loads on a fabric graph (GPU nodes ("gpu", 0..N-1), NVSwitches, NICs, leaf / spine / core
    switches; every link with a capacity and a latency); the graph's edge ids and per-GPU links come from
    ``FabricIndex`` (``hwmodels/fabric_index.py``)."""

    def __init__(self, graph: nx.DiGraph | FabricGraph, cross_rail: str = "pxn") -> None:
        if cross_rail not in CROSS_RAIL:
            raise ValueError(f"cross_rail must be one of {CROSS_RAIL}, got {cross_rail!r}")
        self._g = graph  # routing reads only the adjacency dictionaries, which both kinds keep alike
        self.cross_rail = cross_rail
        was_enabled = gc.isenabled()
        gc.disable()  # the index allocates ~10^5 tuples and no cycles: collector passes would double its time
        try:
            self._index_graph()
        finally:
            if was_enabled:
                gc.enable()
        self._components: np.ndarray | None = None  # per leaf id: its connected part of the fabric
        self._routes: dict[tuple[int, int], Route] = {}
        self._fabric_routes: dict[tuple, tuple[list, list, float] | None] = {}
        self._next_hops: dict[tuple, dict] = {}
        self._walks: dict[tuple, tuple] = {}
        self._tails: dict[tuple, tuple] = {}     # (anchors, shares after a walk's first hop) -> its rest
        self._anchors: dict = {}
        self._anchor_sets: dict = {}
        self._walk_np: dict[tuple, tuple] = {}   # (leaf id, anchors) -> the walk and its arrival, as arrays
        self._orders: dict[tuple, int] = {}      # anchors in a walk's order of arrival -> an id
        self._last_np: dict[tuple, tuple] = {}   # (leaf id, order id) -> last-hop edge ids, their latencies
        self._dist: dict[tuple, dict] = {}
        self._pred_sw: dict | None = None          # switch -> its switch predecessors and their edge ids

    # ------------------------------------------------------------------------------------------ routing
    def _toward(self, target) -> tuple[frozenset, dict, dict]:
        """Shortest switch paths toward leaf ``target``: (its switch neighbours N, distance D of every switch to
        N, each switch's next hops toward N). Every path into ``target`` ends with a hop from N, so its distance
        is 1 + D and its next hops are those toward N; leaves under the same switches (a plane of a leaf/spine
        fabric, a pod of a three-tier one) share one search."""
        anchors = self._anchors.get(target)
        if anchors is None:
            anchors = frozenset(w for w in self._g._pred[target] if w[0] in SWITCH_KINDS)
            # one object per set: a cache keyed by an equal but distinct set compares it element by element
            anchors = self._anchors[target] = self._anchor_sets.setdefault(anchors, anchors)
        hit = self._dist.get(anchors)
        if hit is None:
            dist = {a: 0 for a in anchors}
            hops: dict = {}
            frontier = sorted(anchors)
            pred = self._switch_pred()
            while frontier:
                nxt = []
                for u in frontier:
                    du = dist[u] + 1
                    for w, e in pred[u]:
                        dw = dist.get(w)
                        if dw is None:  # first reached: from u, one step farther than u
                            dist[w] = du
                            nxt.append(w)
                            hops[w] = [(u, e)]
                        elif dw == du:
                            hops[w].append((u, e))
                frontier = nxt
            hit = self._dist[anchors] = (dist, hops)
        return (anchors,) + hit

    def _switch_pred(self) -> dict:
        """Per switch, (switch w, edge id of w -> it) for every switch link into it, in the graph's order: what a
        search toward a set of anchors reads (computed once; each search would otherwise skip the NICs and look
        the edge ids up again)."""
        if self._pred_sw is None:
            eid, kinds = self._eid, SWITCH_KINDS
            self._pred_sw = {u: [(w, eid[(w, u)]) for w in nbrs if w[0] in kinds]
                             for u, nbrs in self._g._pred.items() if u[0] in kinds}
        return self._pred_sw

    def _walk(self, src_leaf, dst_leaf, anchors: frozenset):
        """The ECMP split from ``src_leaf`` up to the switches under which ``dst_leaf`` hangs (its anchors):
        (edge ids, fractions, latency, share arriving at each anchor). Every leaf under the same anchors shares it,
        so a leaf pair costs only its last hops. Past its first hop the walk is cached per (anchors, shares
        reached): the leaves of one pod of a fat-tree reach the same switches with the same shares, so their
        walks to one pod differ only in that hop (``_walk_tail``)."""
        key = (src_leaf, anchors)
        hit = self._walks.get(key)
        if hit is None:
            hops_of = self._toward(dst_leaf)[2]
            acc: dict[int, float] = {}
            arrive: dict = {}
            frontier: dict = {}
            if src_leaf in anchors:
                arrive[src_leaf] = 1.0
            else:  # the first hop, then the rest from the switches it reaches
                hops = hops_of.get(src_leaf, [])
                share = 1.0 / len(hops)
                for v, e in hops:
                    acc[e] = acc.get(e, 0.0) + share
                    frontier[v] = frontier.get(v, 0.0) + share
            links = list(acc)
            fr = [acc[e] for e in links]
            if frontier:
                tail_links, tail_fr, arrive = self._walk_tail(frontier, anchors, hops_of)
                links, fr = links + tail_links, fr + tail_fr
            hit = self._walks[key] = (links, fr, float(np.dot(self._lat[links], fr)) if links else 0.0, arrive)
        return hit

    def _walk_tail(self, frontier: dict, anchors: frozenset, hops_of: dict):
        """The ECMP walk from switches ``frontier`` (switch -> share of the flow, all at one distance from the
        anchors) to ``anchors``: (edge ids in order of first use, their fractions, share arriving at each anchor).
        Each hop goes one step nearer the anchors, so no edge is used at two steps and a walk's edges after its
        first hop are exactly these: the same sums in the same order as one walk from the leaf."""
        key = (anchors, tuple(frontier.items()))
        hit = self._tails.get(key) if SHARE_WALK_TAILS else None
        if hit is None:
            acc: dict[int, float] = {}
            arrive: dict = {}
            while frontier:
                nxt: dict = {}
                for u, f in frontier.items():
                    if u in anchors:
                        arrive[u] = arrive.get(u, 0.0) + f
                        continue
                    hops = hops_of.get(u, [])
                    share = f / len(hops)
                    for v, e in hops:
                        acc[e] = acc.get(e, 0.0) + share
                        nxt[v] = nxt.get(v, 0.0) + share
                frontier = nxt
            links = list(acc)
            hit = self._tails[key] = (links, [acc[e] for e in links], arrive)
        return hit

    def _fabric(self, src_leaf, dst_leaf):
        """ECMP split over all shortest switch paths src_leaf -> dst_leaf: (edge ids, fractions, latency)."""
        key = (src_leaf, dst_leaf)
        if key in self._fabric_routes:
            return self._fabric_routes[key]
        if src_leaf == dst_leaf:
            res = ([], [], 0.0)
        else:
            anchors, dist, _ = self._toward(dst_leaf)
            if src_leaf not in dist and src_leaf not in anchors:
                res = None
            else:
                walk_links, walk_fr, walk_lat, arrive = self._walk(src_leaf, dst_leaf, anchors)
                eid = self._eid
                last = [eid[(a, dst_leaf)] for a in arrive]
                links, fr = walk_links + last, walk_fr + list(arrive.values())
                res = (links, fr, walk_lat + float(np.dot(self._lat[last], list(arrive.values()))))
        self._fabric_routes[key] = res
        return res

    def _nvlink_hop(self, a: int, b: int) -> tuple[list, list, float]:
        nvs = self._nvswitch[a]
        e1, e2 = self._eid[(("gpu", a), nvs)], self._eid[(nvs, ("gpu", b))]
        return [e1, e2], [1.0, 1.0], float(self._lat[e1] + self._lat[e2])

    def _rail_hop(self, a: int, b: int):
        """a's NIC -> fabric -> b's NIC, or None when the two NICs share no fabric (different planes)."""
        la, lb = self._leaf.get(a), self._leaf.get(b)
        if la is None or lb is None:
            return None
        mid = self._fabric(la, lb)
        if mid is None:
            return None
        nic_a, nic_b = ("nic", a), ("nic", b)
        head = [self._eid[(("gpu", a), nic_a)], self._eid[(nic_a, la)]]
        tail = [self._eid[(lb, nic_b)], self._eid[(nic_b, ("gpu", b))]]
        links = head + mid[0] + tail
        fr = [1.0, 1.0] + mid[1] + [1.0, 1.0]
        lat = float(self._lat[head].sum() + self._lat[tail].sum()) + mid[2]
        return links, fr, lat

    def route(self, src: int, dst: int) -> Route:
        """The (cached) route of a flow from GPU ``src`` to GPU ``dst``."""
        key = (src, dst)
        r = self._routes.get(key)
        if r is not None:
            return r
        if not (0 <= src < self.num_gpus and 0 <= dst < self.num_gpus):
            raise ValueError(f"GPU ids must lie in [0, {self.num_gpus}), got {src} -> {dst}")
        if src == dst:
            parts = [([], [], 0.0)]
        elif self._node_of[src] == self._node_of[dst]:
            parts = [self._nvlink_hop(src, dst)]
        else:
            direct = None
            if self._local_of[src] == self._local_of[dst] or self.cross_rail == "fabric":
                direct = self._rail_hop(src, dst)
            if direct is not None:
                parts = [direct]
            else:   # PXN: NVLink to the sending node's GPU on the destination's rail, then that rail
                relay = self.gpu_at(int(self._node_of[src]), int(self._local_of[dst]))
                rail = self._rail_hop(relay, dst)
                if rail is None:
                    raise ValueError(f"no network path from GPU {src} to GPU {dst}")
                parts = [self._nvlink_hop(src, relay), rail]
        links = np.array([e for p in parts for e in p[0]], dtype=np.int64)
        fr = np.array([f for p in parts for f in p[1]], dtype=float)
        r = Route(links, fr, sum(p[2] for p in parts))
        self._routes[key] = r
        return r

    # ------------------------------------------------------------------------------------------ flows
    def link_loads(self, flows: Sequence[tuple[int, int, float]]) -> np.ndarray:
        """Bytes carried by every edge (indexed like ``self.edges``) when all ``flows`` run together."""
        return self._route_flows(flows)[0]

    def _route_flows(self, flows) -> tuple[np.ndarray, np.ndarray]:
        """(bytes per edge, latency per flow) of ``flows`` (src, dst, bytes), routed all at once as ``route``
        routes one: NVLink inside a node; between nodes the sender's NIC, the fabric (ECMP, one cached split per
        pair of leaves) and the receiver's NIC, where that rail connects them; else PXN, NVLink to the sending
        node's GPU on the receiver's rail first. Flows with no bytes or to themselves carry nothing."""
        f = np.asarray(flows, dtype=float).reshape(-1, 3)
        if (f[:, 2] < 0).any() or np.isnan(f[:, 2]).any():
            bad = f[:, 2][(f[:, 2] < 0) | np.isnan(f[:, 2])][0]
            raise ValueError(f"flow bytes must be >= 0, got {bad!r}")
        src, dst, nbytes = f[:, 0].astype(np.int64), f[:, 1].astype(np.int64), f[:, 2]
        keep = (src != dst) & (nbytes > 0)
        src, dst, nbytes = src[keep], dst[keep], nbytes[keep]
        loads = np.zeros(len(self._edges))
        if not len(src):
            return loads, np.zeros(0)
        for ids in (src, dst):
            if ids.min() < 0 or ids.max() >= self.num_gpus:
                raise ValueError(f"GPU ids must lie in [0, {self.num_gpus}), got {int(ids.min())}..{int(ids.max())}")
        node, local, lat = self._node_of, self._local_of, self._lat
        edges: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        latency = np.zeros(len(src))

        def nvlink(a, b, w):  # a -> NVSwitch -> b on a's node
            edges.extend((self._e_up_nvs[a], self._e_down_nvs[b]))
            weights.extend((w, w))
            return lat[self._e_up_nvs[a]] + lat[self._e_down_nvs[b]]

        intra = node[src] == node[dst]
        latency[intra] = nvlink(src[intra], dst[intra], nbytes[intra])
        inter = np.flatnonzero(~intra)
        if len(inter):
            a, b = src[inter], dst[inter]
            fabric_ok = self._rails_connect(a, b)
            if self.cross_rail == "pxn":
                fabric_ok &= local[a] == local[b]
            relay = np.where(fabric_ok, a, self._gpu_grid[node[a], local[b]])
            hop = ~fabric_ok  # PXN: NVLink to the relay first
            if hop.any() and not self._rails_connect(relay[hop], b[hop]).all():
                bad = np.flatnonzero(hop)[~self._rails_connect(relay[hop], b[hop])][0]
                raise ValueError(f"no network path from GPU {int(a[bad])} to GPU {int(b[bad])}")
            first = np.zeros(len(a))
            first[hop] = nvlink(a[hop], relay[hop], nbytes[inter][hop])
            latency[inter] = 0.0 + first + self._rail(relay, b, nbytes[inter], edges, weights)
        if edges:
            loads += np.bincount(np.concatenate(edges), weights=np.concatenate(weights), minlength=len(self._edges))
        return loads, latency

    def _rails_connect(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether a's NIC reaches b's NIC through the fabric (both have NICs, their leaves are connected)."""
        la, lb = self._leaf_id[a], self._leaf_id[b]
        comp = self._leaf_components()
        return (la >= 0) & (lb >= 0) & (comp[np.maximum(la, 0)] == comp[np.maximum(lb, 0)])

    def _leaf_components(self) -> np.ndarray:
        """Per leaf id, the connected part of the switch fabric it belongs to (every link runs both ways, so two
        leaves are connected exactly when a shortest switch path joins them: `_fabric` is not None). Computed
        once."""
        if self._components is None:
            succ, part = self._g._succ, {}
            for start in self._leaves:
                if start in part:
                    continue
                part[start], frontier = start, [start]
                while frontier:  # every switch reachable from `start` over switch links
                    frontier = [w for u in frontier for w in succ[u] if w[0] in SWITCH_KINDS and w not in part
                                and part.setdefault(w, start) is start]
            ids = {leaf: k for k, leaf in enumerate(dict.fromkeys(part[leaf] for leaf in self._leaves))}
            self._components = np.array([ids[part[leaf]] for leaf in self._leaves], dtype=np.int64)
        return self._components

    def _rail(self, a, b, w, edges: list, weights: list) -> np.ndarray:
        """a's NIC -> its leaf -> fabric -> b's leaf -> b's NIC (rails known to connect); latency per flow."""
        lat = self._lat
        head, tail = (self._e_gpu_nic[a], self._e_nic_leaf[a]), (self._e_leaf_nic[b], self._e_nic_gpu[b])
        edges.extend(head + tail)
        weights.extend((w, w, w, w))
        pairs, inverse = _leaf_pairs(self._leaf_id[a], self._leaf_id[b])
        pair_bytes = np.bincount(inverse, weights=w, minlength=pairs.shape[1])
        mid_lat = np.zeros(pairs.shape[1])
        links, fractions, sizes = [], [], []
        for k, (x, y) in enumerate(pairs.T.tolist()):
            if x == y:
                continue
            walk_links, walk_fr, last_links, arrive_fr, mid_lat[k] = self._fabric_parts(x, y)
            links += (walk_links, last_links)
            fractions += (walk_fr, arrive_fr)
            sizes.append(len(walk_fr) + len(arrive_fr))
        if links:  # pair by pair, walk then last hops, as `_fabric` lists them: the same sums in the same order
            edges.append(np.concatenate(links))
            weights.append(np.concatenate(fractions) * np.repeat(pair_bytes[pairs[0] != pairs[1]], sizes))
        return (lat[head[0]] + lat[head[1]]) + (lat[tail[0]] + lat[tail[1]]) + mid_lat[inverse]

    def _fabric_parts(self, x: int, y: int):
        """``_fabric`` of leaf ids x != y (connected) in parts, each cached where leaf pairs share it: the ECMP
        walk from x up to y's anchors (edge ids, fractions: one per (x, anchors)), the last hops into y (edge ids
        in the order the walk arrives: one per (y, order)), the shares arriving over them, and the latency."""
        target = self._leaves[y]
        anchors = self._anchors.get(target) or self._toward(target)[0]
        parts = self._walk_np.get((x, anchors))
        if parts is None:
            walk_links, walk_fr, walk_lat, arrive = self._walk(self._leaves[x], target, anchors)
            order = self._orders.setdefault(tuple(arrive), len(self._orders))
            parts = self._walk_np[(x, anchors)] = (np.asarray(walk_links, dtype=np.int64), np.asarray(walk_fr),
                                                   walk_lat, order, tuple(arrive), np.asarray(list(arrive.values())))
        walk_links, walk_fr, walk_lat, order, arrive_at, arrive_fr = parts
        last = self._last_np.get((y, order))
        if last is None:
            eid = self._eid
            ids = np.array([eid[(u, target)] for u in arrive_at], dtype=np.int64)
            last = self._last_np[(y, order)] = (ids, self._lat[ids])
        return walk_links, walk_fr, last[0], arrive_fr, walk_lat + float(np.dot(last[1], arrive_fr))

    @property
    def edges(self) -> list[tuple]:
        return self._edges

    def price_flows(self, flows: Sequence[tuple[int, int, float]]) -> FlowCost:
        """All ``flows`` at once: max over links of bytes / capacity, plus the slowest path's latency."""
        loads, latency = self._route_flows(flows)
        t = loads / self._cap
        i = int(np.argmax(t))
        lat = float(latency.max()) if len(latency) else 0.0
        bw = float(t[i])
        return FlowCost(bw + lat, bw, lat, self._edges[i] if bw > 0 else None, loads)


def _leaf_pairs(la: np.ndarray, lb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (la, lb) pairs as a 2 x K array and each flow's index into them (leaf ids >= -1): a 1-D unique
    of one combined key, much cheaper than a unique over columns."""
    width = int(max(la.max(initial=0), lb.max(initial=0))) + 2
    keys, inverse = np.unique((la + 1) * width + (lb + 1), return_inverse=True)
    return np.stack([keys // width - 1, keys % width - 1]), inverse.reshape(-1)
