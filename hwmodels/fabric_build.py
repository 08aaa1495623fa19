"""Building a fabric's graph from its ``FabricSpec``: GPUs, NVSwitches, NICs, leaves, spines and cores with their
links (node keys, capacities and latencies as the ``topology`` module docstring describes)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpuhours.hwmodels.fabric_graph import FabricGraph
from gpuhours.hwmodels.topology import FabricSpec, leaf_of_nic, leaves_per_plane


@dataclass(frozen=True)
class SwitchCounts:
    """Switches of one plane as ``build_fabric`` lays them out: ``leaves`` leaves in ``pods`` pods of
    ``leaves_per_pod`` (the last may hold fewer), ``spines`` spines per pod (every leaf of a pod linked to each),
    and, where there is more than one pod, spine j of every pod linked to the ``cores_per_group`` cores of group j.
    Two tiers, or three with a single pod: one pod, no cores; one leaf: no spines."""

    leaves: int
    leaves_per_pod: int
    pods: int
    spines: int
    cores_per_group: int


def switch_counts(spec: FabricSpec) -> SwitchCounts:
    """The switch counts of one plane of ``spec`` (the formulas ``build_fabric`` builds with)."""
    n_leaves = leaves_per_plane(spec)
    if n_leaves == 1:
        return SwitchCounts(1, 1, 1, 0, 0)
    if spec.tiers == 2:
        n_spines = max(1, math.ceil(n_leaves * spec.gpus_per_leaf / spec.oversubscription / spec.switch_radix))
        return SwitchCounts(n_leaves, n_leaves, 1, n_spines, 0)
    lpp = spec.leaves_per_pod or spec.switch_radix // 2
    n_pods = math.ceil(n_leaves / lpp)
    down_ports = spec.switch_radix // 2
    n_spines = max(1, math.ceil(lpp * spec.gpus_per_leaf / spec.oversubscription / down_ports))
    cores_per_group = max(1, math.ceil(n_pods * down_ports / spec.core_oversubscription / spec.switch_radix))
    return SwitchCounts(n_leaves, lpp, n_pods, n_spines, cores_per_group if n_pods > 1 else 0)


def build_fabric(spec: FabricSpec) -> FabricGraph:
    """The nodes and links of ``spec`` (``topology`` module docstring) in a ``FabricGraph``; callers go through
    ``topology.fabric_graph`` (collector off while it runs) or ``topology.build_topology`` (networkx)."""
    g = FabricGraph(spec=spec)
    gpn, n_nodes = spec.gpus_per_node, spec.nodes
    half_nvl = spec.nvlink_latency / 2
    quarter_ib = spec.ib_latency / 4

    # Nodes and edges of the nodes, written straight into the graph's dictionaries in the order add_bulk would
    # insert them (per GPU: gpu->nvswitch, nvswitch->gpu, gpu->nic, nic->gpu, nic->leaf, leaf->nic); a leaf's
    # links to its NICs wait in `leaf_succ` / `leaf_pred` until the leaf itself is added below.
    node_attr, succ, pred = g._node, g._succ, g._pred
    us: list = []
    vs: list = []
    ds: list = []
    leaf_succ: dict = {}
    leaf_pred: dict = {}
    for n in range(n_nodes):
        nvs = ("nvswitch", n)
        node_attr[nvs] = {"kind": "nvswitch", "node": n}
        nvs_succ, nvs_pred = succ[nvs], pred[nvs] = {}, {}
        for r in range(gpn):
            gi = n * gpn + r
            gpu, nic = ("gpu", gi), ("nic", gi)
            plane, leaf_i = leaf_of_nic(spec, gi)
            leaf = ("leaf", plane, leaf_i)
            up = {"capacity": spec.nvlink_bw, "latency": half_nvl, "kind": "nvlink"}
            to_nic = {"capacity": spec.pcie_bw, "latency": quarter_ib, "kind": "pcie"}
            to_leaf = {"capacity": spec.nic_bw, "latency": quarter_ib, "kind": "ib"}
            down, from_nic, from_leaf = dict(up), dict(to_nic), dict(to_leaf)
            node_attr[gpu] = {"kind": "gpu", "node": n, "local": r}
            succ[gpu], pred[gpu] = {nvs: up, nic: to_nic}, {nvs: down, nic: from_nic}
            nvs_succ[gpu], nvs_pred[gpu] = down, up
            node_attr[nic] = {"kind": "nic", "node": n, "local": r, "plane": plane}
            succ[nic], pred[nic] = {gpu: from_nic, leaf: to_leaf}, {gpu: to_nic, leaf: from_leaf}
            if leaf not in leaf_succ:
                leaf_succ[leaf], leaf_pred[leaf] = {}, {}
            leaf_succ[leaf][nic], leaf_pred[leaf][nic] = from_leaf, to_leaf
            us += (gpu, nvs, gpu, nic, nic, leaf)
            vs += (nvs, gpu, nic, gpu, leaf, nic)
            ds += (up, down, to_nic, from_nic, to_leaf, from_leaf)

    nodes: list = []   # the switches and their links, added by add_bulk
    edges: list = []

    counts = switch_counts(spec)
    n_leaves = counts.leaves
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
            n_spines = counts.spines
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
        lpp, n_pods, n_spines = counts.leaves_per_pod, counts.pods, counts.spines
        # spine uplinks: the pod's leaf uplink capacity over core_oversubscription (1 = non-blocking)
        spine_up = lpp * up_capacity / n_spines / spec.core_oversubscription
        cores_per_group = counts.cores_per_group
        for j in range(n_spines if n_pods > 1 else 0):   # one pod: its spines are the top, no core tier
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
    g.add_bulk(nodes, edges, done=(us, vs, ds), adjacency=(leaf_succ, leaf_pred))
    return g
