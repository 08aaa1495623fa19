"""The index routing reads from a fabric graph: edge ids in a fixed order with their capacities and latencies,
each GPU's node, local index, NVSwitch and NIC leaf, and the edge ids of the links every route starts or ends
with. ``fabric_routes.FabricRoutes`` routes on it; the graph is read through its adjacency dictionaries only
(a ``networkx.DiGraph`` or a ``fabric_graph.FabricGraph``, which keep them alike)."""

from __future__ import annotations

from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import networkx as nx


class FabricIndex:
    """Edge ids and per-GPU links of a fabric graph (``_index_graph`` fills them; ``FabricRoutes`` calls it)."""

    # ------------------------------------------------------------------------------------------ graph index
    @property
    def graph(self) -> nx.DiGraph:
        """The fabric as a ``networkx.DiGraph``: the one given, or, for a fabric built from its spec
        (``topology.fabric_graph``), one made on first use over the same adjacency."""
        from gpuhours.hwmodels.fabric_graph import FabricGraph

        if isinstance(self._g, FabricGraph):
            self._g = self._g.to_networkx()
        return self._g

    def _index_graph(self) -> None:
        g = self._g
        # a bulk-built fabric's edges in insertion order (topology._bulk_add), else the order of g.edges()
        cols = g.graph.get("edge_columns")
        if cols is None or len(cols[0]) != sum(map(len, g._succ.values())):
            cols = ([u for u, nbrs in g._succ.items() for _ in nbrs],
                    [v for nbrs in g._succ.values() for v in nbrs],
                    [d for nbrs in g._succ.values() for d in nbrs.values()])
        us, vs, data = cols
        self._edges = list(zip(us, vs))
        self._eid = dict(zip(self._edges, range(len(self._edges))))
        self._cap = np.fromiter(map(itemgetter("capacity"), data), dtype=float, count=len(data))
        self._lat = np.fromiter(map(dict.get, data, repeat("latency"), repeat(0.0)), dtype=float, count=len(data))
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
        self._by_node_local = dict(zip(zip(self._node_of.tolist(), self._local_of.tolist()), gpus))
        self._index_gpu_edges(gpus)

    def _index_gpu_edges(self, gpus: list[int]) -> None:
        """Per-GPU edge ids of the links every route starts or ends with (-1 where a GPU has none), the leaf of
        its NIC as an integer id, and the GPU at each (node, local index): what vectorised routing reads."""
        n, eid = len(gpus), self._eid
        up, down, gpu_nic, nic_leaf, leaf_nic, nic_gpu, leaf_id = ([-1] * n for _ in range(7))  # lists: fast to fill
        self._leaves: list = []
        leaf_ids: dict = {}
        for i in gpus:
            gpu, nvs = ("gpu", i), self._nvswitch.get(i)
            if nvs is not None:
                up[i], down[i] = eid[(gpu, nvs)], eid[(nvs, gpu)]
            leaf = self._leaf.get(i)
            if leaf is not None:
                nic = ("nic", i)
                gpu_nic[i], nic_leaf[i] = eid[(gpu, nic)], eid[(nic, leaf)]
                leaf_nic[i], nic_gpu[i] = eid[(leaf, nic)], eid[(nic, gpu)]
                if leaf not in leaf_ids:
                    leaf_ids[leaf] = len(self._leaves)
                    self._leaves.append(leaf)
                leaf_id[i] = leaf_ids[leaf]
        self._e_up_nvs, self._e_down_nvs = np.array(up), np.array(down)
        self._e_gpu_nic, self._e_nic_leaf = np.array(gpu_nic), np.array(nic_leaf)
        self._e_leaf_nic, self._e_nic_gpu = np.array(leaf_nic), np.array(nic_gpu)
        self._leaf_id = np.array(leaf_id)
        self._gpu_grid = np.full((self.num_nodes, int(self._local_of.max()) + 1), -1)
        self._gpu_grid[self._node_of, self._local_of] = gpus

    def gpu_at(self, node: int, local: int) -> int:
        try:
            return self._by_node_local[(node, local)]
        except KeyError:
            raise ValueError(f"no GPU at node {node}, local index {local}") from None
