"""Routing on the fabric graph: every flow (src GPU, dst GPU, bytes) follows the shortest paths of the graph,
split evenly (ECMP) over the next hops on a shortest path at every switch, and adds its bytes to every link it
uses. NVLink inside a node; between nodes the sender's NIC, the fabric and the receiver's NIC on the same rail, or
PXN (NVLink to the sending node's GPU on the receiver's rail first). Flows are routed as arrays: per-GPU edge ids
for the NVLink, NIC and PXN hops, one ECMP split per pair of leaves, one shortest-path search per set of leaves
under the same switches. `graph_network.GraphNetwork` builds collectives on it."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from gpuhours.hwmodels.topology import SWITCH_KINDS

CROSS_RAIL = ("pxn", "fabric")


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


class FabricRoutes:
    """Routes and link loads on a fabric graph (GPU nodes ("gpu", 0..N-1), NVSwitches, NICs, leaf / spine / core
    switches; every link with a capacity and a latency)."""

    def __init__(self, graph: nx.DiGraph, cross_rail: str = "pxn") -> None:
        if cross_rail not in CROSS_RAIL:
            raise ValueError(f"cross_rail must be one of {CROSS_RAIL}, got {cross_rail!r}")
        self.graph = graph
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
        self._anchors: dict = {}
        self._fabric_np: dict[tuple, tuple] = {}
        self._dist: dict[tuple, dict] = {}

    # ------------------------------------------------------------------------------------------ graph index
    def _index_graph(self) -> None:
        g = self.graph
        data = g.graph.get("edge_list")  # a bulk-built fabric's edges in insertion order (topology._bulk_add)
        if data is None or len(data) != g.number_of_edges():
            data = [(u, v, d) for u, nbrs in g._succ.items() for v, d in nbrs.items()]  # the order of g.edges()
        self._edges = [(u, v) for u, v, _ in data]
        self._eid = {e: i for i, e in enumerate(self._edges)}
        self._cap = np.fromiter((d["capacity"] for _, _, d in data), dtype=float, count=len(data))
        self._lat = np.fromiter((d.get("latency", 0.0) for _, _, d in data), dtype=float, count=len(data))
        attrs = g._node  # node -> attribute dict, read directly: node views cost a call per node
        gpus = sorted(n[1] for n, d in attrs.items() if d.get("kind") == "gpu")
        if gpus != list(range(len(gpus))) or not gpus:
            raise ValueError("graph must have GPU nodes ('gpu', 0..N-1)")
        self.num_gpus = len(gpus)
        self._node_of = np.array([attrs[("gpu", i)]["node"] for i in gpus])
        self._local_of = np.array([attrs[("gpu", i)]["local"] for i in gpus])
        self.num_nodes = int(self._node_of.max()) + 1
        self.gpus_per_node = self.num_gpus // self.num_nodes
        self._nvswitch = {}
        self._leaf = {}
        succ = g._succ
        for i in gpus:
            for v in succ[("gpu", i)]:
                if v[0] == "nvswitch":
                    self._nvswitch[i] = v
            nic = ("nic", i)
            if nic in succ:
                self._leaf[i] = next((v for v in succ[nic] if v[0] == "leaf"), None)
        self._by_node_local = {(int(self._node_of[i]), int(self._local_of[i])): i for i in gpus}
        self._index_gpu_edges(gpus)

    def _index_gpu_edges(self, gpus: list[int]) -> None:
        """Per-GPU edge ids of the links every route starts or ends with (-1 where a GPU has none), the leaf of
        its NIC as an integer id, and the GPU at each (node, local index): what vectorised routing reads."""
        n, eid = len(gpus), self._eid
        self._e_up_nvs, self._e_down_nvs = np.full(n, -1), np.full(n, -1)
        self._e_gpu_nic, self._e_nic_leaf = np.full(n, -1), np.full(n, -1)
        self._e_leaf_nic, self._e_nic_gpu = np.full(n, -1), np.full(n, -1)
        self._leaf_id = np.full(n, -1)
        self._leaves: list = []
        leaf_ids: dict = {}
        for i in gpus:
            gpu, nvs = ("gpu", i), self._nvswitch.get(i)
            if nvs is not None:
                self._e_up_nvs[i], self._e_down_nvs[i] = eid[(gpu, nvs)], eid[(nvs, gpu)]
            leaf = self._leaf.get(i)
            if leaf is not None:
                nic = ("nic", i)
                self._e_gpu_nic[i], self._e_nic_leaf[i] = eid[(gpu, nic)], eid[(nic, leaf)]
                self._e_leaf_nic[i], self._e_nic_gpu[i] = eid[(leaf, nic)], eid[(nic, gpu)]
                if leaf not in leaf_ids:
                    leaf_ids[leaf] = len(self._leaves)
                    self._leaves.append(leaf)
                self._leaf_id[i] = leaf_ids[leaf]
        self._gpu_grid = np.full((self.num_nodes, max(self._by_node_local, key=lambda k: k[1])[1] + 1), -1)
        for (node, local), i in self._by_node_local.items():
            self._gpu_grid[node, local] = i

    def gpu_at(self, node: int, local: int) -> int:
        try:
            return self._by_node_local[(node, local)]
        except KeyError:
            raise ValueError(f"no GPU at node {node}, local index {local}") from None

    # ------------------------------------------------------------------------------------------ routing
    def _toward(self, target) -> tuple[frozenset, dict, dict]:
        """Shortest switch paths toward leaf ``target``: (its switch neighbours N, distance D of every switch to
        N, each switch's next hops toward N). Every path into ``target`` ends with a hop from N, so its distance
        is 1 + D and its next hops are those toward N; leaves under the same switches (a plane of a leaf/spine
        fabric, a pod of a three-tier one) share one search."""
        anchors = self._anchors.get(target)
        if anchors is None:
            anchors = self._anchors[target] = frozenset(w for w in self.graph._pred[target] if w[0] in SWITCH_KINDS)
        hit = self._dist.get(anchors)
        if hit is None:
            dist = {a: 0 for a in anchors}
            hops: dict = {}
            frontier = sorted(anchors)
            pred, eid = self.graph._pred, self._eid
            while frontier:
                nxt = []
                for u in frontier:
                    for w in pred[u]:
                        if w[0] not in SWITCH_KINDS:
                            continue
                        if w not in dist:
                            dist[w] = dist[u] + 1
                            nxt.append(w)
                        if dist[w] == dist[u] + 1:
                            hops.setdefault(w, []).append((u, eid[(w, u)]))
                frontier = nxt
            hit = self._dist[anchors] = (dist, hops)
        return (anchors,) + hit

    def _hops_toward(self, u, target) -> list[tuple]:
        """(next switch, edge id) of every shortest-path hop from switch u toward leaf ``target``."""
        anchors, _, hops = self._toward(target)
        if u in anchors:
            return [(target, self._eid[(u, target)])]
        return hops.get(u, [])

    def _walk(self, src_leaf, dst_leaf, anchors: frozenset):
        """The ECMP split from ``src_leaf`` up to the switches under which ``dst_leaf`` hangs (its anchors):
        (edge ids, fractions, latency, share arriving at each anchor). Every leaf under the same anchors shares it,
        so a leaf pair costs only its last hops."""
        key = (src_leaf, anchors)
        hit = self._walks.get(key)
        if hit is None:
            acc: dict[int, float] = {}
            arrive: dict = {}
            frontier = {src_leaf: 1.0}
            while frontier:
                nxt: dict = {}
                for u, f in frontier.items():
                    if u in anchors:
                        arrive[u] = arrive.get(u, 0.0) + f
                        continue
                    hops = self._hops_toward(u, dst_leaf)
                    share = f / len(hops)
                    for v, e in hops:
                        acc[e] = acc.get(e, 0.0) + share
                        nxt[v] = nxt.get(v, 0.0) + share
                frontier = nxt
            links = list(acc)
            fr = [acc[e] for e in links]
            hit = self._walks[key] = (links, fr, float(np.dot(self._lat[links], fr)) if links else 0.0, arrive)
        return hit

    def _fabric_arrays(self, src_leaf, dst_leaf):
        """``_fabric`` as arrays (cached), for routing many flows at once."""
        key = (src_leaf, dst_leaf)
        hit = self._fabric_np.get(key)
        if hit is None:
            links, fractions, latency = self._fabric(src_leaf, dst_leaf)
            hit = self._fabric_np[key] = (np.asarray(links, dtype=np.int64), np.asarray(fractions), latency)
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
            succ, part = self.graph._succ, {}
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
        for k, (x, y) in enumerate(pairs.T):
            links, fractions, mid_lat[k] = self._fabric_arrays(self._leaves[x], self._leaves[y])
            if len(links):
                edges.append(links)
                weights.append(fractions * pair_bytes[k])
        return (lat[head[0]] + lat[head[1]]) + (lat[tail[0]] + lat[tail[1]]) + mid_lat[inverse]

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
