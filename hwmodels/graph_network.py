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

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from gpuhours.hwmodels.cluster import ClusterSpec, CommGroup
from gpuhours.hwmodels.collective_flows import ep_flows, nodes_distribution, ring_flows, split, tree_flows
from gpuhours.hwmodels.collectives import check_ep_args
from gpuhours.hwmodels.fabric_routes import CROSS_RAIL, FabricRoutes
from gpuhours.hwmodels.link_sharing import check_link_sharing, shared_seconds
from gpuhours.hwmodels.nccl import NcclTuning, Option, best
from gpuhours.hwmodels.fabric_presets import fabric_from_cluster, load_cluster_preset
from gpuhours.hwmodels.topology import FabricSpec, fabric_graph

if TYPE_CHECKING:
    import networkx as nx

ALGORITHMS = ("auto", "ring", "tree", "hierarchical")
REPORT_KINDS = ("p2p", "all_reduce", "reduce_scatter", "all_gather", "all_to_all", "ep_dispatch", "ep_combine")
EP_DTYPES = ("fp8", "bf16")


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


class GraphNetwork(FabricRoutes):
    """Network model on the fabric graph; implements ``collectives.NetworkModel``. Routing and link loads come
    from ``FabricRoutes`` (``hwmodels/fabric_routes.py``); this class builds collectives from them."""

    name = "graph"

    def __init__(self, fabric: FabricSpec | nx.DiGraph | ClusterSpec | str, *, concurrent: bool = True,
                 cross_rail: str = "pxn", nccl: bool = True, nvls: bool = True,
                 link_sharing: str = "bottleneck") -> None:
        if cross_rail not in CROSS_RAIL:
            raise ValueError(f"cross_rail must be one of {CROSS_RAIL}, got {cross_rail!r}")
        if isinstance(fabric, str):
            fabric = load_cluster_preset(fabric)
        if isinstance(fabric, ClusterSpec):
            fabric = fabric_from_cluster(fabric)
        if isinstance(fabric, FabricSpec):
            graph = fabric_graph(fabric)  # networkx only if someone asks for .graph
        elif _is_digraph(fabric):
            graph = fabric
        else:
            raise ValueError(f"fabric must be a FabricSpec, networkx.DiGraph, ClusterSpec or preset name, "
                             f"got {type(fabric).__name__}")
        super().__init__(graph, cross_rail)
        self.spec: FabricSpec | None = graph.graph.get("spec")
        self.concurrent = concurrent
        self.link_sharing = check_link_sharing(link_sharing)  # how a phase's flows share links (link_sharing.py)
        # NCCL's protocol choice for all-reduce / reduce-scatter / all-gather (None: the graph's own latencies)
        self.nccl = NcclTuning.for_fabric(self.spec, nvls=nvls) if nccl else None
        self._phases: dict[tuple, tuple[Phase, ...]] = {}
        self._by_shape: dict[tuple, object] = {}

    def _phase(self, flows, share: float, bw_steps: int, lat_steps: int) -> Phase:
        """Phase from unit flows (bytes per byte of chunk); their bandwidth term under ``link_sharing``
        (``hwmodels/link_sharing.py``: the most loaded link, or max-min fair sharing)."""
        cost = self.price_flows(flows)
        coef = shared_seconds(self, flows, cost.bandwidth_s, self.link_sharing)
        return Phase(coef, cost.latency_s, share, bw_steps, lat_steps, cost.bottleneck)

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
            hit = self._by_shape[key] = self._phase(layout.pipeline_flow_array(src, dst), 1.0, 1, 1)
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
            flows = np.concatenate([ib, nvl])
            cost = self.price_flows(flows)
            coef = shared_seconds(self, flows, cost.bandwidth_s, self.link_sharing)  # hwmodels/link_sharing.py
            lat = 0.0
            for part in (ib, nvl):
                part_latency = self._route_flows(part)[1]
                lat += float(part_latency.max()) if len(part_latency) else 0.0
            ph = (Phase(coef, lat, 1.0, 1, 1, cost.bottleneck),)
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


def _scaled(ph: Phase | None, factor: float) -> Phase | None:
    if ph is None:
        return None
    opts = tuple(replace(o, ranks=o.ranks / factor) for o in ph.options)
    return Phase(ph.coef, ph.latency, ph.share * factor, ph.bw_steps, ph.lat_steps, ph.bottleneck, opts)


def _is_digraph(obj) -> bool:
    """Whether ``obj`` is a networkx.DiGraph; networkx is imported only when it could be one (it is loaded)."""
    import sys

    nx = sys.modules.get("networkx")
    return nx is not None and isinstance(obj, nx.DiGraph)
