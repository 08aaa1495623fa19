"""Leaf-to-leaf routes of a fat tree built from its ``FabricSpec``, written down instead of searched.

``fabric_routes.FabricRoutes`` finds a leaf pair's ECMP split by a shortest-path search toward the destination's
spines (one per pod) and a walk from the source leaf (``fabric_search.py``). On a fabric that
``fabric_build.build_fabric`` made from a spec, every pod of a plane is the same up to relabelling (``fabric_build.switch_counts``: S spines per pod, every
leaf of the pod linked to each; with several pods, spine j of every pod linked to the C cores of group j), so the
search's answer is known in advance. From leaf x in pod Q to leaf y in pod P of the same plane:

* Q == P (and every pair of a two-tier plane): x -> spine (P, j) -> y for j = 0..S-1, 1/S of the flow on each;
* Q != P: x -> spine (Q, j) (1/S each), spine (Q, j) -> core (j, c) and core (j, c) -> spine (P, j) ((1/S) / C
  each), spine (P, j) -> y (the C shares summed: (1/S)/C added C times).

These are the very floating-point operations the walk performs (``FabricSearch._walk``: 1/len(hops) at the first
hop, the share divided by the next hops' count at every further one, arrivals summed in order), listed in the
order the search and the walk list them (spines by j, cores by (j, c): the build's order), so link loads and
latencies are bit-identical to the full computation (tests/test_fabric_symmetry.py compares them on several
fabrics). Used only where its assumption is checked: the graph is a ``FabricGraph`` made from the spec it
carries, with exactly the switch links ``switch_counts`` implies (a graph given as networkx, or edited, takes
the full search); a link missing at lookup also falls back.
"""

from __future__ import annotations

import numpy as np

from gpuhours.hwmodels.fabric_build import SwitchCounts, switch_counts
from gpuhours.hwmodels.fabric_graph import FabricGraph
from gpuhours.hwmodels.topology import FabricSpec

# The closed form in place of the search and walk; off only to compare with (or measure against) the full path
SHORTCUT = True
LINKS_PER_GPU = 6  # gpu <-> nvswitch, gpu <-> nic, nic <-> leaf: build_fabric's per-GPU edges


def switch_links(spec: FabricSpec, counts: SwitchCounts) -> int:
    """Directed switch-to-switch edges ``build_fabric`` makes: per plane, leaf <-> spine for every leaf of a pod and
    each of its spines, and spine <-> core for each spine and the cores of its group where there are pods."""
    s = counts.spines
    per_plane = 2 * s * counts.leaves + 2 * s * counts.cores_per_group * counts.pods * (counts.pods > 1)
    return spec.planes * per_plane


def fat_tree_routes(graph, eid: dict, lat: np.ndarray, leaves: list) -> FatTreeRoutes | None:
    """The closed-form routes of ``graph`` when it is an unedited ``build_fabric`` fabric (see the module
    docstring), else None: the caller searches."""
    if not SHORTCUT or not isinstance(graph, FabricGraph):
        return None
    spec = graph.graph.get("spec")
    if not isinstance(spec, FabricSpec):
        return None
    counts = switch_counts(spec)
    if len(eid) != LINKS_PER_GPU * spec.gpus + switch_links(spec, counts):
        return None
    if any(leaf[0] != "leaf" or len(leaf) != 3 for leaf in leaves):
        return None
    return FatTreeRoutes(counts, eid, lat, leaves)


class FatTreeRoutes:
    """Per leaf-id pair, what ``FabricRoutes._fabric_parts`` returns, from the fabric's switch counts; walks are
    kept per (source leaf, destination pod), last hops per destination leaf, links between pods per pod pair."""

    def __init__(self, counts: SwitchCounts, eid: dict, lat: np.ndarray, leaves: list) -> None:
        self.counts = counts
        self._eid, self._lat, self._leaves = eid, lat, leaves
        self._walks: dict[tuple[int, int], tuple] = {}
        self._last: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._between: dict[tuple[int, int, int], np.ndarray] = {}
        self._shares: dict[bool, tuple[np.ndarray, np.ndarray]] = {}  # within / between pods: fractions, arrivals

    def components(self) -> np.ndarray:
        """Per leaf id, its connected part of the fabric: its plane (every plane's leaves are joined by its spines
        and cores, and planes share no switch)."""
        return np.array([leaf[1] for leaf in self._leaves], dtype=np.int64)

    def parts(self, x: int, y: int):
        """What ``FabricRoutes._fabric_parts(x, y)`` finds by search, for leaf ids x != y of one plane: walk edge
        ids and fractions, last hops into y, the shares arriving over them, latency. Raises KeyError where a link is missing."""
        lpp = self.counts.leaves_per_pod
        target = self._leaves[y]
        pod = target[2] // lpp
        walk = self._walks.get((x, pod))
        if walk is None:
            walk = self._walks[(x, pod)] = self._walk(self._leaves[x], pod)
        links, fractions, latency, arrive = walk
        last = self._last.get(y)
        if last is None:
            eid, plane = self._eid, target[1]
            ids = np.array([eid[(("spine", plane, pod, j), target)] for j in range(self.counts.spines)],
                           dtype=np.int64)
            last = self._last[y] = (ids, self._lat[ids])
        return links, fractions, last[0], arrive, latency + float(np.dot(last[1], arrive))

    def _walk(self, source: tuple, pod: int) -> tuple:
        """(edge ids, fractions, latency, share arriving at each spine of ``pod``) from leaf ``source`` up to the
        spines of ``pod`` in its plane, in the order ``FabricSearch._walk`` lists them."""
        s, eid = self.counts.spines, self._eid
        plane, home = source[1], source[2] // self.counts.leaves_per_pod
        up = [eid[(source, ("spine", plane, home, j))] for j in range(s)]
        if home == pod:
            links = np.array(up, dtype=np.int64)
        else:
            links = np.concatenate((up, self._cross(plane, home, pod)))
        fractions, arrive = self._fractions(home != pod)
        return links, fractions, float(np.dot(self._lat[links], fractions)), arrive

    def _fractions(self, between: bool) -> tuple[np.ndarray, np.ndarray]:
        """(fractions along a walk, share arriving at each destination spine): the same for every walk inside a pod,
        and for every walk between two pods (read-only, shared)."""
        hit = self._shares.get(between)
        if hit is None:
            s = self.counts.spines
            first = 1.0 / s                       # the first hop: 1 / len(hops)
            if not between:
                fractions, arrive = np.full(s, first), np.full(s, first)  # arriving: 0.0 + the share, per spine
            else:
                c = self.counts.cores_per_group
                share = first / c                 # spine (home, j) -> each core of group j; core -> spine (pod, j): / 1
                arrived = 0.0
                for _ in range(c):                # spine (pod, j) gathers its group's C cores, in order
                    arrived += share
                fractions = np.concatenate([np.full(s, first), np.full(2 * s * c, share)])
                arrive = np.full(s, 0.0 + arrived)
            fractions.flags.writeable = arrive.flags.writeable = False
            hit = self._shares[between] = (fractions, arrive)
        return hit

    def _cross(self, plane: int, home: int, pod: int) -> np.ndarray:
        """Edge ids spine (home, j) -> core (j, c), then core (j, c) -> spine (pod, j), each by (j, c)."""
        key = (plane, home, pod)
        hit = self._between.get(key)
        if hit is None:
            eid, s, c = self._eid, self.counts.spines, self.counts.cores_per_group
            ups = [eid[(("spine", plane, home, j), ("core", plane, j, k))] for j in range(s) for k in range(c)]
            downs = [eid[(("core", plane, j, k), ("spine", plane, pod, j))] for j in range(s) for k in range(c)]
            hit = self._between[key] = np.array(ups + downs, dtype=np.int64)
        return hit
