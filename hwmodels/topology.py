"""Cluster fabric as a graph: GPUs, NVSwitch, NICs and the leaf/spine(/core) switches, with per-direction links.

``FabricSpec`` holds what ``data/clusters.toml`` says about a cluster; ``build_topology`` turns it into a
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
import math
import tomllib
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from gpuhours.hwmodels.fabric_graph import FabricGraph

if TYPE_CHECKING:
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


# ------------------------------------------------------------------------------------------------ presets
@lru_cache(maxsize=1)
def _data() -> dict:
    with DATA_FILE.open("rb") as f:
        return tomllib.load(f)


def list_cluster_presets() -> list[str]:
    return list(_data()["preset"])


# Keys of a preset table in clusters.toml, and of a user's cluster file: name -> (kind, default or REQUIRED).
REQUIRED = object()
CLUSTER_KEYS: dict[str, tuple[str, object]] = {
    "gpu": ("str", REQUIRED),                   # a gpus.toml key or alias
    "gpus": ("int", REQUIRED),
    "gpus_per_node": ("int", REQUIRED),         # GPUs of one NVLink domain (72 for an NVL72 rack)
    "nvlink_peak_gb_s": ("number", REQUIRED),   # per GPU, one direction
    "nvlink_fraction": ("fraction", REQUIRED),
    "nvlink_latency_s": ("number", REQUIRED),
    "nic_gbit_s": ("number", REQUIRED),         # per GPU NIC (line rate)
    "nic_fraction": ("fraction", REQUIRED),
    "ib_latency_s": ("number", REQUIRED),
    "pcie_gb_s": ("number", REQUIRED),
    "switch_hop_latency_s": ("number", REQUIRED),
    "planes": ("int", REQUIRED),
    "rail_optimised": ("bool", REQUIRED),
    "switch_radix": ("int", REQUIRED),
    "gpus_per_leaf": ("int", REQUIRED),
    "oversubscription": ("number", REQUIRED),
    "tiers": ("tiers", REQUIRED),               # 2, 3 or "auto"
    "name": ("str", None),                      # a cluster file's name in reports (default: the file's stem)
    "description": ("str", None),
    "leaves_per_pod": ("int0", 0),
    "core_oversubscription": ("number", 1.0),
    "su_nodes": ("int0", 0),
}
_KIND_TEXT = {"str": "a string", "int": "an integer >= 1", "int0": "an integer >= 0", "bool": "true or false",
              "number": "a number", "fraction": "a number in (0, 1]", "tiers": '2, 3 or "auto"'}


def _is_source_key(key: str) -> bool:
    return key == "source" or key.endswith("_source")


def _allowed_keys() -> str:
    return ", ".join(CLUSTER_KEYS) + ", source, <anything>_source"


def _check_value(key: str, kind: str, v, where: str):
    ok = {
        "str": isinstance(v, str),
        "int": isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "int0": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "bool": isinstance(v, bool),
        "number": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
        "fraction": isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
        "tiers": v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v in TIERS),
    }[kind]
    if not ok:
        raise ValueError(f"{where}: key {key!r} must be {_KIND_TEXT[kind]}, got {v!r}")
    return v


def fabric_from_table(table: dict, name: str, where: str | None = None) -> FabricSpec:
    """A FabricSpec from a preset table's keys (``CLUSTER_KEYS``, plus ``source`` / ``*_source`` strings).
    Achievable bandwidth = peak * fraction. Raises one-line ValueErrors naming a missing, unknown or bad key."""
    where = where or f"cluster {name!r}"
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table of cluster keys, got {type(table).__name__}")
    for key, v in table.items():
        if _is_source_key(key):
            if not isinstance(v, str):
                raise ValueError(f"{where}: key {key!r} must be a string, got {v!r}")
        elif key not in CLUSTER_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}; allowed keys: {_allowed_keys()}")
    p = {}
    for key, (kind, default) in CLUSTER_KEYS.items():
        if key not in table:
            if default is REQUIRED:
                raise ValueError(f"{where}: missing key {key!r}; allowed keys: {_allowed_keys()}")
            p[key] = default
        else:
            p[key] = _check_value(key, kind, table[key], where)
    from gpuhours.hwmodels.gpus import load_gpu

    try:
        gpu = load_gpu(p["gpu"]).key
    except ValueError as exc:
        raise ValueError(f"{where}: key 'gpu': {exc}") from None
    auto = p["tiers"] == "auto"
    try:
        return FabricSpec(
            name=p["name"] or name,
            gpu=gpu,
            gpus=p["gpus"],
            gpus_per_node=p["gpus_per_node"],
            nvlink_bw=float(p["nvlink_peak_gb_s"]) * float(p["nvlink_fraction"]) * _GIGA,
            nvlink_latency=float(p["nvlink_latency_s"]),
            nic_bw=float(p["nic_gbit_s"]) / 8 * float(p["nic_fraction"]) * _GIGA,
            ib_latency=float(p["ib_latency_s"]),
            pcie_bw=float(p["pcie_gb_s"]) * _GIGA,
            switch_hop_latency=float(p["switch_hop_latency_s"]),
            planes=p["planes"],
            rail_optimised=p["rail_optimised"],
            switch_radix=p["switch_radix"],
            gpus_per_leaf=p["gpus_per_leaf"],
            oversubscription=float(p["oversubscription"]),
            tiers=TIERS[0] if auto else p["tiers"],
            leaves_per_pod=p["leaves_per_pod"],
            core_oversubscription=float(p["core_oversubscription"]),
            su_nodes=p["su_nodes"],
            auto_tiers=auto,
            sources=tuple((k, v) for k, v in table.items() if _is_source_key(k)),
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def is_cluster_file(name) -> bool:
    return str(name).endswith(".toml")


def load_cluster_file(path: str | Path, **overrides) -> FabricSpec:
    """A user's cluster: a TOML file holding the keys of a clusters.toml preset table (``CLUSTER_KEYS``), at
    top level or inside one ``[cluster]`` table; validated strictly (one-line ValueError naming the key)."""
    path = Path(path)
    where = f"cluster file {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{where}: not valid TOML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
            from None
    if "cluster" in doc:
        if set(doc) != {"cluster"} or not isinstance(doc["cluster"], dict):
            raise ValueError(f"{where}: put the keys either all at top level or all inside one [cluster] table")
        doc = doc["cluster"]
    spec = fabric_from_table(doc, path.stem, where)
    return _with_overrides(spec, overrides, where)


def _with_overrides(spec: FabricSpec, overrides: dict, where: str) -> FabricSpec:
    if not overrides:
        return spec
    try:
        return spec.with_(**overrides)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def load_cluster_preset(name: str, **overrides) -> FabricSpec:
    """The FabricSpec of preset ``name`` in clusters.toml (achievable = peak * fraction), or of a cluster file when
    ``name`` ends in ``.toml`` (``load_cluster_file``), with overrides (``gpus=...`` re-chooses the tier count of a
    preset whose tiers are "auto"; ``tiers=2|3`` forces it)."""
    if is_cluster_file(name):
        return load_cluster_file(name, **overrides)
    presets = _data()["preset"]
    if name not in presets:
        raise ValueError(f"unknown cluster preset {name!r}; allowed: {', '.join(presets)} or a cluster .toml file")
    spec = fabric_from_table(presets[name], name)
    if overrides:
        return spec.with_(**overrides)
    return spec


def fabric_from_cluster(cluster, **overrides) -> FabricSpec:
    """A FabricSpec around a ``cluster.ClusterSpec`` (its achievable NVLink/IB figures and latencies), with the
    fabric defaults of clusters.toml [defaults] (rail-optimised, one plane, 64-port switches, tiers chosen from the
    size)."""
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
        tiers=TIERS[0] if d["tiers"] == "auto" else int(d["tiers"]),
        auto_tiers=d["tiers"] == "auto",
        sources=(("source", d["source"]),),
    )
    return spec.with_(**overrides) if overrides else spec


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
