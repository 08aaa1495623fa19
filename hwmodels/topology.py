"""Cluster fabric as a graph: GPUs, NVSwitch, NICs and the leaf/spine(/core) switches, with per-direction links.

``FabricSpec`` holds what ``data/clusters.toml`` says about a cluster; ``build_topology`` turns it into a
``networkx.DiGraph`` whose every edge carries ``capacity`` (achievable bytes/s in that direction), ``latency``
(seconds) and ``kind`` (nvlink, pcie, ib). Node keys:

    ("gpu", g)  ("nvswitch", n)  ("nic", g)  ("leaf", plane, i)  ("spine", plane, pod, j)  ("core", plane, grp, c)

GPU g sits on node g // gpus_per_node at local index (rail) r = g % gpus_per_node; its NIC is in plane
r % planes. Rail-optimised: NIC r of the nodes of one block of ``gpus_per_leaf`` nodes shares one leaf.
Parallel links between two switches are merged into one edge whose capacity is their sum.

Latency on a path adds up to: NVLink hop (gpu -> nvswitch -> gpu) = nvlink_latency; network message through
one leaf = ib_latency (split over the four endpoint edges); each further switch traversed adds
switch_hop_latency (carried by switch-to-switch edges).
"""

from __future__ import annotations

import gc
import math
import tomllib
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

import networkx as nx

DATA_FILE = Path(__file__).resolve().parent / "data" / "clusters.toml"
_GIGA = 1e9
SWITCH_KINDS = ("leaf", "spine", "core")
TIERS = (2, 3)


@dataclass(frozen=True)
class FabricSpec:
    """A cluster's nodes and fabric; bandwidths achievable per direction (bytes/s), latencies in seconds."""

    name: str
    gpu: str
    gpus: int
    gpus_per_node: int
    nvlink_bw: float            # per GPU to the NVSwitch, one direction
    nvlink_latency: float
    nic_bw: float               # per NIC and per switch port, one direction
    ib_latency: float           # one network message through one leaf switch
    pcie_bw: float              # GPU <-> its NIC
    switch_hop_latency: float   # each further switch traversed
    planes: int = 1
    rail_optimised: bool = True
    switch_radix: int = 64
    gpus_per_leaf: int = 32     # leaf downlinks
    oversubscription: float = 1.0  # leaf downlink : uplink capacity
    tiers: int = 2
    leaves_per_pod: int = 0     # tiers 3 only; 0 means switch_radix // 2
    sources: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for f in ("gpus", "gpus_per_node", "planes", "switch_radix", "gpus_per_leaf"):
            v = getattr(self, f)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"FabricSpec.{f} must be an integer >= 1, got {v!r}")
        for f in ("nvlink_bw", "nic_bw", "pcie_bw"):
            if not getattr(self, f) > 0:
                raise ValueError(f"FabricSpec.{f} must be > 0 bytes/s, got {getattr(self, f)!r}")
        for f in ("nvlink_latency", "ib_latency", "switch_hop_latency"):
            if not getattr(self, f) >= 0:
                raise ValueError(f"FabricSpec.{f} must be >= 0 s, got {getattr(self, f)!r}")
        if self.gpus % self.gpus_per_node:
            raise ValueError(f"FabricSpec.gpus={self.gpus} must be a multiple of gpus_per_node={self.gpus_per_node}")
        if self.gpus_per_node % self.planes:
            raise ValueError(f"FabricSpec.planes={self.planes} must divide gpus_per_node={self.gpus_per_node}")
        if self.tiers not in TIERS:
            raise ValueError(f"FabricSpec.tiers must be one of {TIERS}, got {self.tiers!r}")
        if not self.oversubscription >= 1.0:
            raise ValueError(f"FabricSpec.oversubscription must be >= 1 (downlink:uplink), got {self.oversubscription!r}")
        if self.gpus_per_leaf >= self.switch_radix:
            raise ValueError(f"FabricSpec.gpus_per_leaf={self.gpus_per_leaf} must be < switch_radix={self.switch_radix}")
        if not self.rail_optimised and self.gpus_per_leaf % self.rails_per_plane:
            raise ValueError(f"FabricSpec.gpus_per_leaf={self.gpus_per_leaf} must be a multiple of the "
                             f"{self.rails_per_plane} NICs a node has per plane when rail_optimised is false")
        if not (isinstance(self.leaves_per_pod, int) and self.leaves_per_pod >= 0):
            raise ValueError(f"FabricSpec.leaves_per_pod must be an integer >= 0, got {self.leaves_per_pod!r}")

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    @property
    def rails_per_plane(self) -> int:
        return self.gpus_per_node // self.planes

    def with_(self, **changes) -> "FabricSpec":
        """A copy with some fields changed (e.g. ``gpus=16384``)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ValueError(f"unknown FabricSpec field(s) {bad}; allowed: {sorted(known)}")
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------------ presets
@lru_cache(maxsize=1)
def _data() -> dict:
    with DATA_FILE.open("rb") as f:
        return tomllib.load(f)


def list_cluster_presets() -> list[str]:
    return list(_data()["preset"])


def load_cluster_preset(name: str, **overrides) -> FabricSpec:
    """The FabricSpec of preset ``name`` in clusters.toml (achievable = peak * fraction), with overrides."""
    presets = _data()["preset"]
    if name not in presets:
        raise ValueError(f"unknown cluster preset {name!r}; allowed: {', '.join(presets)}")
    p = presets[name]
    spec = FabricSpec(
        name=name,
        gpu=p["gpu"],
        gpus=int(p["gpus"]),
        gpus_per_node=int(p["gpus_per_node"]),
        nvlink_bw=float(p["nvlink_peak_gb_s"]) * float(p["nvlink_fraction"]) * _GIGA,
        nvlink_latency=float(p["nvlink_latency_s"]),
        nic_bw=float(p["nic_gbit_s"]) / 8 * float(p["nic_fraction"]) * _GIGA,
        ib_latency=float(p["ib_latency_s"]),
        pcie_bw=float(p["pcie_gb_s"]) * _GIGA,
        switch_hop_latency=float(p["switch_hop_latency_s"]),
        planes=int(p["planes"]),
        rail_optimised=bool(p["rail_optimised"]),
        switch_radix=int(p["switch_radix"]),
        gpus_per_leaf=int(p["gpus_per_leaf"]),
        oversubscription=float(p["oversubscription"]),
        tiers=int(p["tiers"]),
        sources=tuple((k, str(v)) for k, v in p.items() if k.endswith("source")),
    )
    return spec.with_(**overrides) if overrides else spec


def fabric_from_cluster(cluster, **overrides) -> FabricSpec:
    """A FabricSpec around a ``cluster.ClusterSpec`` (its achievable NVLink/IB figures and latencies), with the
    fabric defaults of clusters.toml [defaults] (rail-optimised, one plane, two tiers, 64-port switches)."""
    d = _data()["defaults"]
    gpus = max(cluster.num_gpus, cluster.gpus_per_node)
    spec = FabricSpec(
        name=f"{cluster.gpu.key}-x{gpus}",
        gpu=cluster.gpu.key,
        gpus=gpus,
        gpus_per_node=cluster.gpus_per_node,
        nvlink_bw=cluster.nvlink_bw,
        nvlink_latency=cluster.nvlink_latency,
        nic_bw=cluster.ib_bw,
        ib_latency=cluster.ib_latency,
        pcie_bw=max(float(d["pcie_gb_s"]) * _GIGA, cluster.ib_bw),
        switch_hop_latency=float(d["switch_hop_latency_s"]),
        planes=int(d["planes"]),
        rail_optimised=bool(d["rail_optimised"]),
        switch_radix=int(d["switch_radix"]),
        gpus_per_leaf=int(d["gpus_per_leaf"]),
        oversubscription=float(d["oversubscription"]),
        tiers=int(d["tiers"]) if gpus <= int(d["switch_radix"]) ** 2 // 2 else 3,
        sources=(("source", d["source"]),),
    )
    return spec.with_(**overrides) if overrides else spec


# ------------------------------------------------------------------------------------------------ layout
def leaf_of_nic(spec: FabricSpec, gpu: int) -> tuple[int, int]:
    """(plane, leaf index in plane) of GPU ``gpu``'s NIC."""
    node, rail = divmod(gpu, spec.gpus_per_node)
    plane, rail_in_plane = rail % spec.planes, rail // spec.planes
    if spec.rail_optimised:
        return plane, (node // spec.gpus_per_leaf) * spec.rails_per_plane + rail_in_plane
    nodes_per_leaf = spec.gpus_per_leaf // spec.rails_per_plane
    return plane, node // nodes_per_leaf


def leaves_per_plane(spec: FabricSpec) -> int:
    last = (spec.nodes - 1) * spec.gpus_per_node
    return max(leaf_of_nic(spec, last + r)[1] for r in range(spec.gpus_per_node)) + 1


def build_topology(spec: FabricSpec) -> nx.DiGraph:
    """The fabric graph of ``spec`` (see module docstring); ``graph.graph["spec"]`` keeps the spec."""
    was_enabled = gc.isenabled()
    gc.disable()   # the build allocates ~10^5 small dicts and no cycles; collector passes would double its time
    try:
        return _build(spec)
    finally:
        if was_enabled:
            gc.enable()


def _build(spec: FabricSpec) -> nx.DiGraph:
    g = nx.DiGraph(spec=spec)
    gpn, n_nodes = spec.gpus_per_node, spec.nodes
    half_nvl = spec.nvlink_latency / 2
    quarter_ib = spec.ib_latency / 4

    nodes: list = []
    edges: list = []
    for n in range(n_nodes):
        nvs = ("nvswitch", n)
        nodes.append((nvs, {"kind": "nvswitch", "node": n}))
        for r in range(gpn):
            gi = n * gpn + r
            gpu, nic = ("gpu", gi), ("nic", gi)
            plane, leaf_i = leaf_of_nic(spec, gi)
            leaf = ("leaf", plane, leaf_i)
            nodes.append((gpu, {"kind": "gpu", "node": n, "local": r}))
            nodes.append((nic, {"kind": "nic", "node": n, "local": r, "plane": plane}))
            nvl = {"capacity": spec.nvlink_bw, "latency": half_nvl, "kind": "nvlink"}
            pcie = {"capacity": spec.pcie_bw, "latency": quarter_ib, "kind": "pcie"}
            ib = {"capacity": spec.nic_bw, "latency": quarter_ib, "kind": "ib"}
            edges += [(gpu, nvs, nvl), (nvs, gpu, dict(nvl)), (gpu, nic, pcie), (nic, gpu, dict(pcie)),
                      (nic, leaf, ib), (leaf, nic, dict(ib))]

    n_leaves = leaves_per_plane(spec)
    up_capacity = spec.gpus_per_leaf / spec.oversubscription * spec.nic_bw   # per leaf, one direction
    hop = spec.switch_hop_latency
    for plane in range(spec.planes):
        for i in range(n_leaves):
            nodes.append((("leaf", plane, i), {"kind": "leaf", "plane": plane, "tier": 1}))
        if n_leaves == 1:
            continue   # one leaf per plane: no spine needed
        if spec.tiers == 2:
            if n_leaves > spec.switch_radix:
                raise ValueError(f"tiers=2 allows at most switch_radix={spec.switch_radix} leaves per plane, "
                                 f"this fabric needs {n_leaves}; use tiers=3")
            n_spines = max(1, math.ceil(n_leaves * spec.gpus_per_leaf / spec.oversubscription / spec.switch_radix))
            per_edge = up_capacity / n_spines
            for j in range(n_spines):
                spine = ("spine", plane, 0, j)
                nodes.append((spine, {"kind": "spine", "plane": plane, "pod": 0, "tier": 2}))
                for i in range(n_leaves):
                    leaf = ("leaf", plane, i)
                    e = {"capacity": per_edge, "latency": hop, "kind": "ib"}
                    edges += [(leaf, spine, e), (spine, leaf, dict(e))]
            continue
        # three tiers: pods of leaves_per_pod leaves, each pod with its spines, spine j of every pod in core group j
        lpp = spec.leaves_per_pod or spec.switch_radix // 2
        n_pods = math.ceil(n_leaves / lpp)
        down_ports = spec.switch_radix // 2
        n_spines = max(1, math.ceil(lpp * spec.gpus_per_leaf / spec.oversubscription / down_ports))
        spine_up = lpp * up_capacity / n_spines          # non-blocking above the leaves
        cores_per_group = max(1, math.ceil(n_pods * down_ports / spec.switch_radix))
        for j in range(n_spines):
            for c in range(cores_per_group):
                nodes.append((("core", plane, j, c), {"kind": "core", "plane": plane, "tier": 3}))
        for pod in range(n_pods):
            pod_leaves = range(pod * lpp, min(n_leaves, (pod + 1) * lpp))
            for j in range(n_spines):
                spine = ("spine", plane, pod, j)
                nodes.append((spine, {"kind": "spine", "plane": plane, "pod": pod, "tier": 2}))
                for i in pod_leaves:
                    leaf = ("leaf", plane, i)
                    e = {"capacity": up_capacity / n_spines, "latency": hop, "kind": "ib"}
                    edges += [(leaf, spine, e), (spine, leaf, dict(e))]
                if n_pods > 1:
                    for c in range(cores_per_group):
                        core = ("core", plane, j, c)
                        e = {"capacity": spine_up / cores_per_group, "latency": hop, "kind": "ib"}
                        edges += [(spine, core, e), (core, spine, dict(e))]
    _bulk_add(g, nodes, edges)
    return g


def _bulk_add(g: nx.DiGraph, nodes: list, edges: list) -> None:
    """Insert nodes and edges into an empty DiGraph the way add_nodes_from / add_edges_from would (same
    adjacency dicts, one data dict shared by the succ and pred views), without their per-item overhead:
    it keeps a 16,384-GPU build well under a second."""
    if g.number_of_nodes():
        raise ValueError("graph must be empty for a bulk build")
    node_attr, succ, pred = g._node, g._succ, g._pred
    for n, attr in nodes:
        node_attr[n] = attr
        succ[n] = {}
        pred[n] = {}
    for u, v, data in edges:
        succ[u][v] = data
        pred[v][u] = data
    clear = getattr(nx, "_clear_cache", None)
    if clear is not None:
        clear(g)


# ------------------------------------------------------------------------------------------------ summary
def describe(graph: nx.DiGraph) -> dict:
    """GPUs, nodes, switches per tier, aggregate one-direction capacity per tier, and bisection bandwidth.

    tier_bandwidth_Bps: nvlink = sum of GPU->NVSwitch; pcie = GPU->NIC; nic_leaf = NIC->leaf;
    leaf_spine = leaf->spine; spine_core = spine->core. Bisection (one direction) = half the smallest upward
    tier the traffic between two halves of the nodes must cross: min over the network tiers present of
    their aggregate capacity / 2 (the usual fat-tree bound; NVLink only for a one-node cluster).
    """
    kinds: dict[str, int] = {}
    for _, k in graph.nodes(data="kind"):
        kinds[k] = kinds.get(k, 0) + 1
    tier = {"nvlink": 0.0, "pcie": 0.0, "nic_leaf": 0.0, "leaf_spine": 0.0, "spine_core": 0.0}
    pair = {("gpu", "nvswitch"): "nvlink", ("gpu", "nic"): "pcie", ("nic", "leaf"): "nic_leaf",
            ("leaf", "spine"): "leaf_spine", ("spine", "core"): "spine_core"}
    for u, v, cap in graph.edges(data="capacity"):
        key = pair.get((u[0], v[0]))
        if key:
            tier[key] += cap
    if kinds.get("nvswitch", 0) <= 1:
        bisection = tier["nvlink"] / 2
    else:
        present = [tier["nic_leaf"]] + [tier[t] for t in ("leaf_spine", "spine_core") if tier[t] > 0]
        bisection = min(present) / 2
    return {
        "gpus": kinds.get("gpu", 0),
        "nodes": kinds.get("nvswitch", 0),
        "nics": kinds.get("nic", 0),
        "switches": {k: kinds.get(k, 0) for k in ("nvswitch",) + SWITCH_KINDS},
        "tier_bandwidth_Bps": tier,
        "bisection_Bps": bisection,
        "links": graph.number_of_edges(),
    }
