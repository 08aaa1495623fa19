"""Cluster fabric as a graph: GPUs, NVSwitch, NICs and the leaf/spine(/core) switches, with per-direction links.

``FabricSpec`` holds what ``data/clusters.toml`` says about a cluster (read by ``fabric_presets.py``: presets, a
user's cluster file, or a ``ClusterSpec`` with the file's fabric defaults); ``build_topology`` turns it into a
``networkx.DiGraph`` whose every edge carries ``capacity`` (achievable bytes/s in that direction), ``latency``
(seconds) and ``kind`` (nvlink, pcie, ib). Node keys:

    ("gpu", g)  ("nvswitch", n)  ("nic", g)  ("leaf", plane, i)  ("spine", plane, pod, j)  ("core", plane, grp, c)

GPU g sits on node g // gpus_per_node at local index (rail) r = g % gpus_per_node; its NIC is in plane
r % planes. Rail-optimised: NIC r of the nodes of one block of ``gpus_per_leaf`` nodes shares one leaf (with
``su_nodes`` set, a block of that many nodes fills its leaves rail by rail: the leaf of rails 0..3 of an 8-rack
GB200 unit). Otherwise (top of rack) a node's NICs fill consecutive leaves of ``gpus_per_leaf`` ports.
Parallel links between two switches are merged into one edge whose capacity is their sum.

Tiers: two (leaf/spine) while one leaf/spine fat-tree of ``switch_radix``-port switches holds the leaves of a
plane (and, with ``leaves_per_pod`` set, while one pod does), three (pods under a core tier) above; a spec with
``auto_tiers`` re-chooses its tier count whenever it is built or resized (``choose_tiers``).

Latency on a path adds up to: NVLink hop (gpu -> nvswitch -> gpu) = nvlink_latency; network message through
one leaf = ib_latency (split over the four endpoint edges); each further switch traversed adds
switch_hop_latency (carried by switch-to-switch edges).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from gpuhours.hwmodels.fabric_graph import FabricGraph

if TYPE_CHECKING:
    import networkx as nx

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
    core_oversubscription: float = 1.0  # tiers 3 only: spine downlink : uplink (to the core); 1.0 = non-blocking
    su_nodes: int = 0           # rail-optimised block of nodes sharing rail leaves; 0 means gpus_per_leaf
    auto_tiers: bool = False    # tiers chosen from the size (choose_tiers) on every construction / with_()

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
        from gpuhours.workloads.parallel import MAX_GPUS

        if self.gpus > MAX_GPUS:  # the scenario's bound too: a graph of millions of GPUs exhausts memory
            raise ValueError(f"FabricSpec.gpus must be at most {MAX_GPUS:,} (the largest cluster the fabric models "
                             f"build), got {self.gpus:,}")
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
        if not self.rail_optimised and self.gpus_per_leaf % self.rails_per_plane \
                and self.rails_per_plane % self.gpus_per_leaf:
            raise ValueError(f"FabricSpec.gpus_per_leaf={self.gpus_per_leaf} must be a multiple or a divisor of the "
                             f"{self.rails_per_plane} NICs a node has per plane when rail_optimised is false")
        if not (isinstance(self.leaves_per_pod, int) and self.leaves_per_pod >= 0):
            raise ValueError(f"FabricSpec.leaves_per_pod must be an integer >= 0, got {self.leaves_per_pod!r}")
        if not self.core_oversubscription >= 1.0:
            raise ValueError(f"FabricSpec.core_oversubscription must be >= 1 (spine downlink:uplink), "
                             f"got {self.core_oversubscription!r}")
        if not (isinstance(self.su_nodes, int) and not isinstance(self.su_nodes, bool) and self.su_nodes >= 0):
            raise ValueError(f"FabricSpec.su_nodes must be an integer >= 0, got {self.su_nodes!r}")
        if self.su_nodes and (self.su_nodes * self.rails_per_plane) % self.gpus_per_leaf:
            raise ValueError(f"FabricSpec.su_nodes={self.su_nodes} times the {self.rails_per_plane} rails per plane "
                             f"must fill whole leaves of gpus_per_leaf={self.gpus_per_leaf} NICs")
        if self.auto_tiers:
            object.__setattr__(self, "tiers", choose_tiers(self))

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    @property
    def rails_per_plane(self) -> int:
        return self.gpus_per_node // self.planes

    def with_(self, **changes) -> "FabricSpec":
        """A copy with some fields changed (e.g. ``gpus=16384``). ``tiers=2`` or ``3`` forces the tier count (and
        turns ``auto_tiers`` off); ``tiers="auto"`` chooses it from the size; a resized spec with ``auto_tiers``
        re-chooses it."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ValueError(f"unknown FabricSpec field(s) {bad}; allowed: {sorted(known)}")
        if "tiers" in changes and "auto_tiers" not in changes:
            if changes["tiers"] == "auto":
                changes["tiers"], changes["auto_tiers"] = TIERS[0], True
            else:
                changes["auto_tiers"] = False
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------------ layout
def leaf_of_nic(spec: FabricSpec, gpu: int) -> tuple[int, int]:
    """(plane, leaf index in plane) of GPU ``gpu``'s NIC."""
    node, rail = divmod(gpu, spec.gpus_per_node)
    plane, rail_in_plane = rail % spec.planes, rail // spec.planes
    if spec.rail_optimised:
        if not spec.su_nodes:
            return plane, (node // spec.gpus_per_leaf) * spec.rails_per_plane + rail_in_plane
        block, i = divmod(node, spec.su_nodes)        # NICs of a block in rail-major order fill its leaves
        per_block = spec.su_nodes * spec.rails_per_plane // spec.gpus_per_leaf
        return plane, block * per_block + (rail_in_plane * spec.su_nodes + i) // spec.gpus_per_leaf
    return plane, (node * spec.rails_per_plane + rail_in_plane) // spec.gpus_per_leaf


def leaves_per_plane(spec: FabricSpec) -> int:
    last = (spec.nodes - 1) * spec.gpus_per_node
    return max(leaf_of_nic(spec, last + r)[1] for r in range(spec.gpus_per_node)) + 1


def two_tier_leaves(spec: FabricSpec) -> int:
    """Most leaves per plane a two-tier build holds: one spine layer of ``switch_radix`` ports reaches
    ``switch_radix`` leaves; with ``leaves_per_pod`` set the pod (the full-bisection domain) is the limit."""
    return min(spec.switch_radix, spec.leaves_per_pod) if spec.leaves_per_pod else spec.switch_radix


def choose_tiers(spec: FabricSpec) -> int:
    """2 while the leaves of a plane fit under one spine layer (``two_tier_leaves``), else 3.

    DGX SuperPOD (64-port switches, 32 NICs per leaf, 8 rails): 2 tiers hold 64 leaves = 8 blocks of 32 nodes
    = 2,048 GPUs; 4,096 GPUs (128 leaves) and more take 3."""
    return 2 if leaves_per_plane(spec) <= two_tier_leaves(spec) else 3


def build_topology(spec: FabricSpec) -> nx.DiGraph:
    """The fabric graph of ``spec`` (see module docstring); ``graph.graph["spec"]`` keeps the spec."""
    return fabric_graph(spec).to_networkx()


def fabric_graph(spec: FabricSpec) -> FabricGraph:
    """``build_topology`` without networkx: the same nodes, edges and attributes in a ``FabricGraph``, what the
    graph network model routes on."""
    was_enabled = gc.isenabled()
    gc.disable()   # the build allocates ~10^5 small dicts and no cycles; collector passes would double its time
    from gpuhours.hwmodels.fabric_build import build_fabric

    try:
        return build_fabric(spec)
    finally:
        if was_enabled:
            gc.enable()


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
