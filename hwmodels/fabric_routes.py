"""Routing on the fabric graph: every flow (src GPU, dst GPU, bytes) follows the shortest paths of the graph,
split evenly (ECMP) over the next hops on a shortest path at every switch, and adds its bytes to every link it
uses. NVLink inside a node; between nodes the sender's NIC, the fabric and the receiver's NIC on the same rail, or
PXN (NVLink to the sending node's GPU on the receiver's rail first). Flows are routed as arrays: per-GPU edge ids
for the NVLink, NIC and PXN hops; between leaves one ECMP walk per source leaf up to the switches the destination
hangs under (its anchors) and one set of last hops per destination, so a pair of leaves costs a lookup; one
shortest-path search per set of leaves under the same switches (``fabric_search.py``), or, on a fat tree built
from its spec, none: its leaf pairs are written down from its switch counts (``fabric_symmetry.py``, the same
figures bit for bit), and each leaf pair's links kept as one array. The graph is read through its adjacency
dictionaries only (a networkx.DiGraph, or a ``fabric_graph.FabricGraph`` that needs no networkx).
`graph_network.GraphNetwork` builds collectives on it."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gpuhours.hwmodels.fabric_search import FabricSearch
from gpuhours.hwmodels.fabric_symmetry import FatTreeRoutes, fat_tree_routes
from gpuhours.hwmodels.topology import SWITCH_KINDS

if TYPE_CHECKING:
    import networkx as nx

    from gpuhours.hwmodels.fabric_graph import FabricGraph

CROSS_RAIL = ("pxn", "fabric")
# Links kept in the per-leaf-pair arrays (`FabricRoutes._rail`) at most, 16 bytes each (edge id and fraction): a
# collective touching every leaf pair of a 16k-GPU three-tier fabric would otherwise keep ~0.8 GB. Past it, pairs
# are assembled from their cached parts every time (same figures).
PAIR_CACHE_LINKS = 1 << 21


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


class FabricRoutes(FabricSearch):
    """Routes and link loads on a fabric graph (GPU nodes ("gpu", 0..N-1), NVSwitches, NICs, leaf / spine / core
    switches; every link with a capacity and a latency); the graph's edge ids and per-GPU links come from
    ``FabricIndex`` (``hwmodels/fabric_index.py``), leaf pairs from ``FabricSearch`` (``fabric_search.py``) or,
    on a spec-built fat tree, ``fabric_symmetry.py``."""

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
        self._init_search()
        self._walk_np: dict[tuple, tuple] = {}   # (leaf id, anchors) -> the walk and its arrival, as arrays
        self._orders: dict[tuple, int] = {}      # anchors in a walk's order of arrival -> an id
        self._last_np: dict[tuple, tuple] = {}   # (leaf id, order id) -> last-hop edge ids, their latencies
        self._pairs_np: dict[tuple, tuple] = {}  # (leaf id, leaf id) -> its edge ids, fractions, their count, latency
        self._pair_links = 0                     # links held in _pairs_np (PAIR_CACHE_LINKS at most, roughly)
        self._gpu_parts: np.ndarray | None = None   # per GPU, its NIC's leaf's connected part (-1: none)
        self._end_lat: tuple | None = None          # per GPU, latency of its first two and last two links
        self._tree: FatTreeRoutes | bool | None = None  # leaf pairs in closed form (fabric_symmetry); False: search

    # ------------------------------------------------------------------------------------------ routing
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
        valid = f[:, 2] >= 0  # false for NaN too
        if not valid.all():
            bad = f[:, 2][~valid][0]
            raise ValueError(f"flow bytes must be >= 0, got {bad!r}")
        src, dst, nbytes = f[:, 0].astype(np.int64), f[:, 1].astype(np.int64), f[:, 2]
        keep = (src != dst) & (nbytes > 0)
        src, dst, nbytes = src[keep], dst[keep], nbytes[keep]
        if not len(src):
            return np.zeros(len(self._edges)), np.zeros(0)
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
        if intra.any():
            latency[intra] = nvlink(src[intra], dst[intra], nbytes[intra])
        inter = np.flatnonzero(~intra)
        if len(inter):
            a, b = src[inter], dst[inter]
            fabric_ok = self._rails_connect(a, b)
            if self.cross_rail == "pxn":
                fabric_ok &= local[a] == local[b]
            relay = np.where(fabric_ok, a, self._gpu_grid[node[a], local[b]])
            hop = ~fabric_ok  # PXN: NVLink to the relay first
            relayed = hop.any()
            if relayed and not self._rails_connect(relay[hop], b[hop]).all():
                bad = np.flatnonzero(hop)[~self._rails_connect(relay[hop], b[hop])][0]
                raise ValueError(f"no network path from GPU {int(a[bad])} to GPU {int(b[bad])}")
            if relayed:
                first = np.zeros(len(a))
                first[hop] = nvlink(a[hop], relay[hop], nbytes[inter][hop])
                latency[inter] = 0.0 + first + self._rail(relay, b, nbytes[inter], edges, weights)
            else:  # no relay: the same sum, 0.0 + 0.0 + x = x
                latency[inter] = self._rail(relay, b, nbytes[inter], edges, weights)
        # edges is never empty here (a flow that is kept crosses at least one link); bincount's sums start at 0.0
        return np.bincount(np.concatenate(edges), weights=np.concatenate(weights), minlength=len(self._edges)), latency

    def _rails_connect(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether a's NIC reaches b's NIC through the fabric (both have NICs, their leaves are connected)."""
        if self._gpu_parts is None:  # per GPU, its NIC's part of the fabric, -1 without a NIC
            la = self._leaf_id
            self._gpu_parts = np.where(la >= 0, self._leaf_components()[np.maximum(la, 0)], -1)
        part = self._gpu_parts
        pa = part[a]
        return (pa >= 0) & (pa == part[b])

    def _leaf_components(self) -> np.ndarray:
        """Per leaf id, the connected part of the switch fabric it belongs to (every link runs both ways, so two
        leaves are connected exactly when a shortest switch path joins them: `_fabric` is not None). Computed
        once."""
        if self._components is None and self._fat_tree() is not None:
            self._components = self._fat_tree().components()
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
        if self._end_lat is None:  # per GPU: its GPU -> NIC -> leaf latency, and leaf -> NIC -> GPU
            lat = self._lat
            self._end_lat = (lat[self._e_gpu_nic] + lat[self._e_nic_leaf], lat[self._e_leaf_nic] + lat[self._e_nic_gpu])
        head, tail = (self._e_gpu_nic[a], self._e_nic_leaf[a]), (self._e_leaf_nic[b], self._e_nic_gpu[b])
        edges.extend(head + tail)
        weights.extend((w, w, w, w))
        pairs, inverse = _leaf_pairs(self._leaf_id[a], self._leaf_id[b], len(self._leaves))
        pair_bytes = np.bincount(inverse, weights=w, minlength=pairs.shape[1])
        mid_lat = np.zeros(pairs.shape[1])
        links, fractions, sizes = [], [], []
        cached = self._pairs_np
        for k, xy in enumerate(zip(*pairs.tolist())):
            if xy[0] == xy[1]:
                continue
            pair = cached.get(xy)
            if pair is None:  # walk then last hops, as `_fabric` lists them
                walk_links, walk_fr, last_links, arrive_fr, pair_lat = self._fabric_parts(*xy)
                pair = (np.concatenate((walk_links, last_links)), np.concatenate((walk_fr, arrive_fr)),
                        len(walk_fr) + len(arrive_fr), pair_lat)
                if self._pair_links < PAIR_CACHE_LINKS:
                    cached[xy] = pair
                    self._pair_links += pair[2]
            links.append(pair[0])
            fractions.append(pair[1])
            sizes.append(pair[2])
            mid_lat[k] = pair[3]
        if links:  # pair by pair: the same sums in the same order
            edges.append(np.concatenate(links))
            weights.append(np.concatenate(fractions) * np.repeat(pair_bytes[pairs[0] != pairs[1]], sizes))
        return self._end_lat[0][a] + self._end_lat[1][b] + mid_lat[inverse]

    def _fabric_parts(self, x: int, y: int):
        """``_fabric`` of leaf ids x != y (connected) in parts, each cached where leaf pairs share it: the ECMP
        walk from x up to y's anchors (edge ids, fractions: one per (x, anchors)), the last hops into y (edge ids
        in the order the walk arrives: one per (y, order)), the shares arriving over them, and the latency. On a
        fabric built from its spec, written down from the spec's switch counts instead (``fabric_symmetry``)."""
        tree = self._fat_tree()
        if tree is not None:
            try:
                return tree.parts(x, y)
            except KeyError:  # a link the spec implies is missing: not the fabric it says, search from now on
                self._tree, self._components, self._gpu_parts = False, None, None
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

    def _fat_tree(self) -> FatTreeRoutes | None:
        """The closed-form leaf-pair routes (``fabric_symmetry.fat_tree_routes``), or None where they do not apply."""
        if self._tree is None:
            self._tree = fat_tree_routes(self._g, self._eid, self._lat, self._leaves) or False
        return self._tree or None

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


def _leaf_pairs(la: np.ndarray, lb: np.ndarray, leaves: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (la, lb) pairs as a 2 x K array and each flow's index into them (leaf ids -1..leaves-1), in
    (la, lb) order: a 1-D unique of one combined key, much cheaper than a unique over columns."""
    width = leaves + 1
    keys, inverse = np.unique((la + 1) * width + (lb + 1), return_inverse=True)
    return np.stack([keys // width - 1, keys % width - 1]), inverse.reshape(-1)
