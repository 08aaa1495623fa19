"""A built fabric's graph as networkx lays one out, without importing networkx.

``FabricGraph`` holds the same four dictionaries a ``networkx.DiGraph`` keeps (graph attributes, node -> attribute
dict, successors and predecessors: node -> neighbour -> edge data, one data dict shared by both directions of
lookup), which is all routing reads (``fabric_routes.FabricRoutes``). ``to_networkx`` hands the very same
adjacency to a real DiGraph when something asks for one (``GraphNetwork.graph``, ``topology.build_topology``).
Importing networkx takes about a tenth of a second, a tenth of the default command-line estimate.
"""

from __future__ import annotations


class FabricGraph:
    """Nodes and directed edges of a fabric, stored as ``networkx.DiGraph`` stores them."""

    __slots__ = ("graph", "_node", "_succ", "_pred")

    def __init__(self, **attrs) -> None:
        self.graph: dict = dict(attrs)
        self._node: dict = {}
        self._succ: dict = {}
        self._pred: dict = {}

    def add_bulk(self, nodes: list, edges: list, done: tuple = ((), (), ()), adjacency: tuple = ({}, {})) -> None:
        """Insert nodes (key, attribute dict) and edges (u, v, data dict) the way ``add_nodes_from`` and
        ``add_edges_from`` would (same dictionaries, one data dict per edge shared by the successor and
        predecessor views), without their per-item overhead. ``done`` lists, as columns (sources, destinations,
        data dicts), the edges a builder already wrote into the dictionaries, in order; ``adjacency`` holds, per
        node listed here, successor and predecessor entries already made for it (a leaf's links to its NICs),
        which the node starts with. Records every edge's insertion order as columns in
        ``graph["edge_columns"]``, which routing indexes instead of walking the adjacency: columns, not
        (u, v, data) tuples, since a tuple holding a dict stays tracked by the cyclic garbage collector for
        good."""
        node_attr, succ, pred = self._node, self._succ, self._pred
        pre_succ, pre_pred = adjacency
        for n, attr in nodes:
            if n in node_attr:
                raise ValueError(f"node {n!r} added twice")
            node_attr[n] = attr
            succ[n] = pre_succ.get(n) or {}
            pred[n] = pre_pred.get(n) or {}
        if any(n not in node_attr for n in pre_succ):
            raise ValueError("links made for a node that was never added")
        for u, v, data in edges:
            succ[u][v] = data
            pred[v][u] = data
        columns = tuple(zip(*edges)) if edges else ((), (), ())
        self.graph["edge_columns"] = tuple(tuple(a) + tuple(b) for a, b in zip(done, columns))

    def number_of_nodes(self) -> int:
        return len(self._node)

    def number_of_edges(self) -> int:
        return sum(map(len, self._succ.values()))

    def to_networkx(self):
        """A ``networkx.DiGraph`` over the same node attribute, adjacency and edge data dictionaries' contents
        (inner dictionaries shared, not copied)."""
        import networkx as nx

        g = nx.DiGraph()
        g.graph.update(self.graph)
        g._node.update(self._node)
        g._succ.update(self._succ)  # DiGraph._adj is _succ
        g._pred.update(self._pred)
        clear = getattr(nx, "_clear_cache", None)
        if clear is not None:
            clear(g)
        return g
