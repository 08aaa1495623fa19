"""Graph network model: collectives priced as flows routed over the fabric graph of ``topology.py``.

Every collective is broken into *phases*; a phase is a set of concurrent flows (src GPU, dst GPU, bytes).
Each flow follows the shortest paths of the graph -- ECMP: at every switch the flow splits evenly over the
next hops that lie on a shortest path to its destination leaf -- and its bytes are added to every link it
uses. A phase with ``s`` identical steps of chunk ``c`` bytes costs

    s * (c * max_links(load_per_byte / capacity) + latency),      latency = slowest path's summed latency

so the most loaded link (bytes / capacity) sets the bandwidth term (the bottleneck model: flows sharing a
link share it equally for the whole phase). Inter-node flows enter the fabric on the GPU's own NIC (rail);
a flow to another rail first crosses NVLink to the GPU of that rail on the sending node (``cross_rail="pxn"``,
as NCCL's PXN and DeepEP do; required when planes > 1) or, with ``cross_rail="fabric"``, climbs to the spine.

With ``concurrent=True`` (default) the protocol methods price a group together with all the groups of the same
shape that tile the cluster (every EP/DP group runs the same collective at once in training), so shared
links (spines, oversubscribed uplinks) are charged for everyone's traffic.

Algorithms: ring (NCCL-like, one ring per GPU of the group on a node, rotated so each uses another NIC),
double binary tree, hierarchical (NVLink reduce-scatter / all-gather around an inter-node ring per rail),
flat all-to-all, and DeepEP's hierarchical EP all-to-all (see ``ep_all_to_all``).

NCCL (``nccl=True``, default, on NVIDIA GPUs): the phases of all-reduce, reduce-scatter and all-gather cost what
NCCL's tuner would run -- the cheapest of LL, LL128 and Simple (and NVLS for an all-reduce in one Hopper/Blackwell
NVSwitch node when the algorithm is auto; ``nvls=False`` leaves it out), with NCCL's base and per-hop latencies in
place of the graph's (``hwmodels/nccl.py``). DeepEP, point-to-point sends and the flat all-to-all keep the graph's.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np

from gpuhours.hwmodels.cluster import ClusterSpec, CommGroup
from gpuhours.hwmodels.collective_flows import ep_flows, nodes_distribution, ring_flows, split, tree_flows
from gpuhours.hwmodels.collectives import check_ep_args
from gpuhours.hwmodels.nccl import NcclTuning, Option, best
from gpuhours.hwmodels.topology import (SWITCH_KINDS, FabricSpec, build_topology, fabric_from_cluster,
                                        load_cluster_preset)

ALGORITHMS = ("auto", "ring", "tree", "hierarchical")
CROSS_RAIL = ("pxn", "fabric")
REPORT_KINDS = ("p2p", "all_reduce", "reduce_scatter", "all_gather", "all_to_all", "ep_dispatch", "ep_combine")
EP_DTYPES = ("fp8", "bf16")


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


@dataclass(frozen=True)
class Phase:
    """``bw_steps * nbytes * share * coef + lat_steps * latency`` seconds for a collective of ``nbytes``; an NCCL
    collective's phase lists NCCL's (algorithm, protocol) ``options`` instead and costs the cheapest
    (``hwmodels/nccl.py``: same Simple bandwidth term, NCCL's latencies in place of the graph's)."""

    coef: float        # s per byte of chunk on the bottleneck link
    latency: float     # s per latency step
    share: float       # chunk bytes per byte of the collective's nbytes
    bw_steps: int
    lat_steps: int
    bottleneck: tuple | None = None
    options: tuple[Option, ...] = ()

    def time(self, nbytes: float) -> float:
        if self.options:
            return best(self.options, nbytes).time(nbytes)
        return self.bw_steps * nbytes * self.share * self.coef + self.lat_steps * self.latency

    def protocol(self, nbytes: float) -> str | None:
        """The (algorithm/protocol) NCCL runs for ``nbytes``, or None when the phase is not an NCCL collective."""
        return best(self.options, nbytes).name if self.options else None


class GraphNetwork:
    """Network model on the fabric graph; implements ``collectives.NetworkModel``."""

    name = "graph"

    def __init__(self, fabric: FabricSpec | nx.DiGraph | ClusterSpec | str, *, concurrent: bool = True,
                 cross_rail: str = "pxn", nccl: bool = True, nvls: bool = True) -> None:
        if cross_rail not in CROSS_RAIL:
            raise ValueError(f"cross_rail must be one of {CROSS_RAIL}, got {cross_rail!r}")
        if isinstance(fabric, str):
            fabric = load_cluster_preset(fabric)
        if isinstance(fabric, ClusterSpec):
            fabric = fabric_from_cluster(fabric)
        if isinstance(fabric, FabricSpec):
            graph = build_topology(fabric)
        elif isinstance(fabric, nx.DiGraph):
            graph = fabric
        else:
            raise ValueError(f"fabric must be a FabricSpec, networkx.DiGraph, ClusterSpec or preset name, "
                             f"got {type(fabric).__name__}")
        self.graph = graph
        self.spec: FabricSpec | None = graph.graph.get("spec")
        self.concurrent = concurrent
        self.cross_rail = cross_rail
        # NCCL's protocol choice for all-reduce / reduce-scatter / all-gather (None: the graph's own latencies)
        self.nccl = NcclTuning.for_fabric(self.spec, nvls=nvls) if nccl else None
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
        self._phases: dict[tuple, tuple[Phase, ...]] = {}
        self._by_shape: dict[tuple, object] = {}

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

    def _phase(self, flows, share: float, bw_steps: int, lat_steps: int) -> Phase:
        """Phase from unit flows (bytes per byte of chunk)."""
        cost = self.price_flows(flows)
        return Phase(cost.bandwidth_s, cost.latency_s, share, bw_steps, lat_steps, cost.bottleneck)

    # ------------------------------------------------------------------------------------------ groups
    def groups_for(self, group: CommGroup) -> list[list[int]]:
        """GPU lists for a group shape: nodes 0..r-1, local indices 0..q-1; with ``concurrent`` every tile of
        that shape over the cluster (q-blocks of local indices x r-blocks of nodes). A group inside one node
        need not divide it (64 of an NVL72 rack's 72 GPUs): the node holds g // q such groups, the rest idle."""
        g, q, r = self.gpus_per_node, group.per_node, group.nodes
        if q > g or (g % q and r > 1):
            raise ValueError(f"group.per_node={q} must divide gpus_per_node={g} for a group across nodes")
        if r > self.num_nodes:
            raise ValueError(f"group spans {r} nodes but the cluster has {self.num_nodes}")
        node_blocks = self.num_nodes // r if self.concurrent else 1
        local_blocks = g // q if self.concurrent else 1
        out = []
        for nb in range(node_blocks):
            for lb in range(local_blocks):
                out.append([self.gpu_at(nb * r + n, lb * q + j) for n in range(r) for j in range(q)])
        return out

    # ------------------------------------------------------------------------------------------ algorithms
    def _ring_phase(self, groups, steps_factor: int, nvls: bool = False) -> Phase | None:
        p = len(groups[0])
        if p <= 1:
            return None
        ph = self._phase(ring_flows(groups, self._node_of), 1.0 / p, steps_factor * (p - 1), steps_factor * (p - 1))
        return self._with_nccl(ph, groups, "ring", nvls)

    def _with_nccl(self, ph: Phase, groups, algo: str, nvls: bool = False) -> Phase:
        """``ph`` with NCCL's options (``nccl.NcclTuning``) when the fabric's GPUs run NCCL; ``nvls`` also offers
        NVLS (an all-reduce inside one node)."""
        if self.nccl is None or ph.coef <= 0:
            return ph
        p, nodes = len(groups[0]), len({int(self._node_of[g]) for g in groups[0]})
        per_byte = ph.bw_steps * ph.share * ph.coef
        if algo == "ring":
            opts = self.nccl.ring(per_byte, ph.bw_steps // (p - 1), p, nodes, ph.latency)
        else:
            opts = self.nccl.tree(per_byte, p, nodes, ph.latency)
        extra = self.nccl.nvls_all_reduce(ph.coef, p) if nvls and nodes == 1 else None
        return replace(ph, options=opts + ((extra,) if extra is not None else ()))

    def phases(self, kind: str, groups: Sequence[Sequence[int]], algorithm: str = "auto") -> tuple[Phase, ...]:
        """Cached phases of collective ``kind`` (all_reduce, reduce_scatter, all_gather, all_to_all) run by all
        ``groups`` at once (groups of equal size)."""
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        key = (kind, algorithm, tuple(tuple(g) for g in groups))
        hit = self._phases.get(key)
        if hit is not None:
            return hit
        if len({len(g) for g in groups}) != 1:
            raise ValueError("all groups of one collective must have the same size")
        p = len(groups[0])
        intra, inter = split(groups, self._node_of)
        q, r = len(intra[0]), len(inter[0])
        nvls = algorithm == "auto"  # NCCL's own choice may run NVLS (an all-reduce inside one NVSwitch node)
        if algorithm == "auto":
            algorithm = "hierarchical" if (kind == "all_reduce" and q > 1 and r > 1) else "ring"
        out: list[Phase | None] = []
        if p <= 1:
            pass
        elif kind == "all_to_all":
            flows = [(a, b, 1.0) for grp in groups for a in grp for b in grp if a != b]
            out.append(self._phase(flows, 1.0 / p, 1, 1))
        elif kind in ("reduce_scatter", "all_gather"):
            if algorithm == "ring" or q == 1 or r == 1:
                out.append(self._ring_phase(groups, 1))
            elif algorithm == "hierarchical":
                # RS: NVLink ring on the full buffer, then per-rail rings on its 1/q shard (AG: the reverse)
                a = self._ring_phase(intra, 1)
                b = self._ring_phase(inter, 1)
                out += [a, _scaled(b, 1.0 / q)]
            else:
                raise ValueError(f"algorithm {algorithm!r} is not available for {kind}; use ring or hierarchical")
        elif kind == "all_reduce":
            if algorithm == "ring":
                out.append(self._ring_phase(groups, 2, nvls=nvls))
            elif algorithm in ("hierarchical", "tree"):
                if algorithm == "tree" and (q == 1 or r == 1):
                    flows, depth = tree_flows(groups)
                    out.append(self._with_nccl(self._phase(flows, 1.0, 1, 2 * depth), groups, "tree"))
                elif r == 1 or q == 1:
                    out.append(self._ring_phase(groups, 2))
                else:
                    rs = self._ring_phase(intra, 1)
                    if algorithm == "tree":
                        flows, depth = tree_flows(inter)
                        mid = _scaled(self._with_nccl(self._phase(flows, 1.0, 1, 2 * depth), inter, "tree"), 1.0 / q)
                    else:
                        mid = _scaled(self._ring_phase(inter, 2), 1.0 / q)
                    out += [rs, mid, rs]
        else:
            raise ValueError(f"kind must be one of all_reduce, reduce_scatter, all_gather, all_to_all; got {kind!r}")
        res = tuple(ph for ph in out if ph is not None)
        self._phases[key] = res
        return res

    def placed_phases(self, kind: str, layout, group: str) -> tuple[Phase, ...]:
        """Phases of collective ``kind`` run by every group of kind ``group`` ("tp", "cp", "dp", "ep", "edp") of a
        rank placement (``placement.RankLayout``), cached per (kind, layout, group)."""
        key = ("placed", kind, layout, group)
        hit = self._by_shape.get(key)
        if hit is None:
            hit = self._by_shape[key] = self.phases(kind, layout.groups(group))
        return hit

    def placed_ep_phase(self, layout, top_k: int, nodes_per_token) -> Phase:
        """``ep_phase`` of every expert-parallel group of a rank placement, cached per layout."""
        key = ("placed-ep", layout, top_k, tuple(sorted(nodes_distribution(nodes_per_token, top_k).items())))
        hit = self._by_shape.get(key)
        if hit is None:
            hit = self._by_shape[key] = self.ep_phase(layout.groups("ep"), top_k, nodes_per_token)
        return hit

    def placed_p2p(self, layout, src: int, dst: int) -> Phase:
        """Pipeline sends from stage ``src`` to stage ``dst`` of a rank placement, every pipeline at once
        (``RankLayout.pipeline_flows``): seconds per byte on the most loaded link and the slowest path's latency."""
        key = ("placed-p2p", layout, src, dst)
        hit = self._by_shape.get(key)
        if hit is None:
            hit = self._by_shape[key] = self._phase(layout.pipeline_flows(src, dst), 1.0, 1, 1)
        return hit

    def collective_time(self, kind: str, nbytes: float, groups: Sequence[Sequence[int]],
                        algorithm: str = "auto") -> float:
        """Seconds for ``kind`` on ``nbytes`` (the full buffer per rank; all_to_all: bytes each rank sends in
        all, ``nbytes / p`` to each peer) run by every group in ``groups`` at once."""
        if not nbytes >= 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        return sum(ph.time(nbytes) for ph in self.phases(kind, groups, algorithm))

    # ------------------------------------------------------------------------------------------ protocol
    def p2p(self, nbytes: float, intra_node: bool) -> float:
        """One flow GPU 0 -> GPU 1 (intra_node) or GPU 0 -> the same rail on the next node."""
        if not nbytes >= 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        if intra_node:
            if self.gpus_per_node < 2:
                raise ValueError("intra_node p2p needs gpus_per_node >= 2")
            dst = self.gpu_at(0, 1)
        else:
            if self.num_nodes < 2:
                raise ValueError("inter-node p2p needs at least 2 nodes")
            dst = self.gpu_at(1, 0)
        key = ("p2p", dst)
        ph = self._phases.get(key)
        if ph is None:
            ph = (self._phase([(0, dst, 1.0)], 1.0, 1, 1),)
            self._phases[key] = ph
        return ph[0].time(nbytes)

    def _shape_time(self, kind: str, nbytes: float, group: CommGroup, algorithm: str) -> float:
        """Time for a group shape, cached per (kind, shape, algorithm): a cached call is a dict lookup."""
        if not nbytes >= 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        key = (kind, group, algorithm)
        phases = self._by_shape.get(key)
        if phases is None:
            phases = self.phases(kind, self.groups_for(group), algorithm)
            self._by_shape[key] = phases
        return sum(ph.time(nbytes) for ph in phases)

    def all_reduce(self, nbytes: float, group: CommGroup, algorithm: str = "auto") -> float:
        return self._shape_time("all_reduce", nbytes, group, algorithm)

    def reduce_scatter(self, nbytes: float, group: CommGroup, algorithm: str = "auto") -> float:
        return self._shape_time("reduce_scatter", nbytes, group, algorithm)

    def all_gather(self, nbytes: float, group: CommGroup, algorithm: str = "auto") -> float:
        return self._shape_time("all_gather", nbytes, group, algorithm)

    def all_to_all(self, nbytes: float, group: CommGroup) -> float:
        return self._shape_time("all_to_all", nbytes, group, "auto")

    # ------------------------------------------------------------------------------------------ expert parallel
    def ep_flows(self, groups: Sequence[Sequence[int]], top_k: int, nodes_per_token) -> tuple[np.ndarray, np.ndarray]:
        """DeepEP dispatch flows per byte of one rank's tokens: (ib, nvlink) (``collective_flows.ep_flows``)."""
        return ep_flows(groups, self._node_of, top_k, nodes_per_token)

    def ep_phase(self, group: CommGroup | Sequence[Sequence[int]], top_k: int, nodes_per_token) -> Phase:
        """Cached phase of a hierarchical EP all-to-all; IB and NVLink stages overlap (DeepEP pipelines them),
        so all flows run together; latency = one network path + one NVLink hop."""
        dist_key = tuple(sorted(nodes_distribution(nodes_per_token, top_k).items()))
        if isinstance(group, CommGroup):
            hit = self._by_shape.get(("ep", group, top_k, dist_key))
            if hit is not None:
                return hit
        groups = self.groups_for(group) if isinstance(group, CommGroup) else [list(g) for g in group]
        key = ("ep", top_k, dist_key, tuple(tuple(g) for g in groups))
        ph = self._phases.get(key)
        if ph is None:
            ib, nvl = self.ep_flows(groups, top_k, nodes_per_token)
            cost = self.price_flows(np.concatenate([ib, nvl]))
            lat = 0.0
            for part in (ib, nvl):
                part_latency = self._route_flows(part)[1]
                lat += float(part_latency.max()) if len(part_latency) else 0.0
            ph = (Phase(cost.bandwidth_s, lat, 1.0, 1, 1, cost.bottleneck),)
            self._phases[key] = ph
        if isinstance(group, CommGroup):
            self._by_shape[("ep", group, top_k, dist_key)] = ph[0]
        return ph[0]

    def ep_all_to_all(self, tokens: float, bytes_per_token: float, top_k: int, nodes_per_token,
                      group: CommGroup) -> float:
        """DeepEP-style dispatch (or combine, with its bytes_per_token) time; ``tokens`` per rank.
        ``nodes_per_token``: an int, a mean (float), or a distribution {d: probability}."""
        check_ep_args(tokens, bytes_per_token, top_k)
        if group.size == 1:
            return 0.0
        return self.ep_phase(group, top_k, nodes_per_token).time(tokens * bytes_per_token)


def _leaf_pairs(la: np.ndarray, lb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (la, lb) pairs as a 2 x K array and each flow's index into them (leaf ids >= -1): a 1-D unique
    of one combined key, much cheaper than a unique over columns."""
    width = int(max(la.max(initial=0), lb.max(initial=0))) + 2
    keys, inverse = np.unique((la + 1) * width + (lb + 1), return_inverse=True)
    return np.stack([keys // width - 1, keys % width - 1]), inverse.reshape(-1)


def _scaled(ph: Phase | None, factor: float) -> Phase | None:
    if ph is None:
        return None
    opts = tuple(replace(o, ranks=o.ranks / factor) for o in ph.options)
    return Phase(ph.coef, ph.latency, ph.share * factor, ph.bw_steps, ph.lat_steps, ph.bottleneck, opts)
