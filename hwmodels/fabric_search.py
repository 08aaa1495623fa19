"""The full search behind leaf-to-leaf routes on any fabric graph: shortest switch paths toward a destination leaf's
switches (its anchors), one search per set of leaves under the same switches, and the ECMP walk from a source leaf
up to them (next hops split evenly at every switch), its part past the first hop shared between the leaves of a
pod. ``fabric_routes.FabricRoutes`` routes flows with it, except on a fat tree built from its spec, whose leaf
pairs ``fabric_symmetry`` writes down instead (the same figures, bit for bit)."""

from __future__ import annotations

import numpy as np

from gpuhours.hwmodels.fabric_index import FabricIndex
from gpuhours.hwmodels.topology import SWITCH_KINDS

# Whether walks share their part past the first hop (`FabricSearch._walk_tail`); off only to measure the saving
SHARE_WALK_TAILS = True


class FabricSearch(FabricIndex):
    """Shortest-path searches and ECMP walks between leaves (``_init_search`` sets up their caches)."""

    def _init_search(self) -> None:
        self._next_hops: dict[tuple, dict] = {}
        self._walks: dict[tuple, tuple] = {}
        self._tails: dict[tuple, tuple] = {}     # (anchors, shares after a walk's first hop) -> its rest
        self._anchors: dict = {}
        self._anchor_sets: dict = {}
        self._dist: dict[tuple, dict] = {}
        self._pred_sw: dict | None = None          # switch -> its switch predecessors and their edge ids

    def _toward(self, target) -> tuple[frozenset, dict, dict]:
        """Shortest switch paths toward leaf ``target``: (its switch neighbours N, distance D of every switch to
        N, each switch's next hops toward N). Every path into ``target`` ends with a hop from N, so its distance
        is 1 + D and its next hops are those toward N; leaves under the same switches (a plane of a leaf/spine
        fabric, a pod of a three-tier one) share one search."""
        anchors = self._anchors.get(target)
        if anchors is None:
            anchors = frozenset(w for w in self._g._pred[target] if w[0] in SWITCH_KINDS)
            # one object per set: a cache keyed by an equal but distinct set compares it element by element
            anchors = self._anchors[target] = self._anchor_sets.setdefault(anchors, anchors)
        hit = self._dist.get(anchors)
        if hit is None:
            dist = {a: 0 for a in anchors}
            hops: dict = {}
            frontier = sorted(anchors)
            pred = self._switch_pred()
            while frontier:
                nxt = []
                for u in frontier:
                    du = dist[u] + 1
                    for w, e in pred[u]:
                        dw = dist.get(w)
                        if dw is None:  # first reached: from u, one step farther than u
                            dist[w] = du
                            nxt.append(w)
                            hops[w] = [(u, e)]
                        elif dw == du:
                            hops[w].append((u, e))
                frontier = nxt
            hit = self._dist[anchors] = (dist, hops)
        return (anchors,) + hit

    def _switch_pred(self) -> dict:
        """Per switch, (switch w, edge id of w -> it) for every switch link into it, in the graph's order: what a
        search toward a set of anchors reads (computed once; each search would otherwise skip the NICs and look
        the edge ids up again)."""
        if self._pred_sw is None:
            eid, kinds = self._eid, SWITCH_KINDS
            self._pred_sw = {u: [(w, eid[(w, u)]) for w in nbrs if w[0] in kinds]
                             for u, nbrs in self._g._pred.items() if u[0] in kinds}
        return self._pred_sw

    def _walk(self, src_leaf, dst_leaf, anchors: frozenset):
        """The ECMP split from ``src_leaf`` up to the switches under which ``dst_leaf`` hangs (its anchors):
        (edge ids, fractions, latency, share arriving at each anchor). Every leaf under the same anchors shares it,
        so a leaf pair costs only its last hops. Past its first hop the walk is cached per (anchors, shares
        reached): the leaves of one pod of a fat-tree reach the same switches with the same shares, so their
        walks to one pod differ only in that hop (``_walk_tail``)."""
        key = (src_leaf, anchors)
        hit = self._walks.get(key)
        if hit is None:
            hops_of = self._toward(dst_leaf)[2]
            acc: dict[int, float] = {}
            arrive: dict = {}
            frontier: dict = {}
            if src_leaf in anchors:
                arrive[src_leaf] = 1.0
            else:  # the first hop, then the rest from the switches it reaches
                hops = hops_of.get(src_leaf, [])
                share = 1.0 / len(hops)
                for v, e in hops:
                    acc[e] = acc.get(e, 0.0) + share
                    frontier[v] = frontier.get(v, 0.0) + share
            links = list(acc)
            fr = [acc[e] for e in links]
            if frontier:
                tail_links, tail_fr, arrive = self._walk_tail(frontier, anchors, hops_of)
                links, fr = links + tail_links, fr + tail_fr
            hit = self._walks[key] = (links, fr, float(np.dot(self._lat[links], fr)) if links else 0.0, arrive)
        return hit

    def _walk_tail(self, frontier: dict, anchors: frozenset, hops_of: dict):
        """The ECMP walk from switches ``frontier`` (switch -> share of the flow, all at one distance from the
        anchors) to ``anchors``: (edge ids in order of first use, their fractions, share arriving at each anchor).
        Each hop goes one step nearer the anchors, so no edge is used at two steps and a walk's edges after its
        first hop are exactly these: the same sums in the same order as one walk from the leaf."""
        key = (anchors, tuple(frontier.items()))
        hit = self._tails.get(key) if SHARE_WALK_TAILS else None
        if hit is None:
            acc: dict[int, float] = {}
            arrive: dict = {}
            while frontier:
                nxt: dict = {}
                for u, f in frontier.items():
                    if u in anchors:
                        arrive[u] = arrive.get(u, 0.0) + f
                        continue
                    hops = hops_of.get(u, [])
                    share = f / len(hops)
                    for v, e in hops:
                        acc[e] = acc.get(e, 0.0) + share
                        nxt[v] = nxt.get(v, 0.0) + share
                frontier = nxt
            links = list(acc)
            hit = self._tails[key] = (links, [acc[e] for e in links], arrive)
        return hit
