"""Link sharing of one collective phase from its flows: the bottleneck bound, or max-min fair sharing.

A phase is a set of flows that start together; flow ``f`` carries ``size[f]`` bytes and puts a fraction
``a[f, l]`` of its rate on link ``l`` (1 on every link of a single path; the ECMP share where the routing splits
it, ``fabric_routes.FabricRoutes.route``); link ``l`` carries at most ``capacity[l]`` bytes/s.

``"bottleneck"`` prices the phase at ``max_l sum_f a[f, l] size[f] / capacity[l]``: the makespan of the best
allocation there is (every flow at a rate proportional to its size, so all end together), a lower bound on any
sharing. ``"max-min"`` is the fluid model of max-min fair sharing (Bertsekas and Gallager, *Data Networks*,
2nd ed., 1992, sec. 6.5.2): at every instant the unfinished flows get the max-min fair rates, found by
progressive filling -- raise every unfrozen flow's rate equally until a link saturates, freeze the flows
crossing it, repeat until every flow is frozen -- and the rates are recomputed each time a flow ends. It is what
per-flow fair arbitration approaches (credit-based InfiniBand links serving their virtual lanes and queues in
turn, per-flow congestion control): a small flow is not slowed to the pace of a large one sharing its link, so
the large one ends later than the bound. For flows of equal size the two agree exactly (the flows of the most
loaded link are frozen at its fair share from the start, every other flow runs at least as fast, and all end at
that link's bytes / capacity), so ``phase_makespan`` runs the fluid model only for flows of different sizes.

Assumption: a flow's ECMP split is fixed (its fractions do not adapt to load), as hash-based ECMP is.

Cost: the fluid run takes one interval per distinct finish time and one filling round per distinct rate level
within it, each round a pass over the (flow, link) entries still rising: about 4 CPU seconds for the default
DeepSeek-V3 EP phase (28,672 flows) with per-receiver sizes, but minutes when every flow has its own size.
The phases of today's flow builders never reach it (equal sizes, or sizes on disjoint links).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LINK_SHARING = ("bottleneck", "max-min")
_SIZE_CLASSES = 8  # up to this many flow sizes, sizes on disjoint links are detected before the fluid run
_RTOL = 1e-9  # relative tolerance: a link within it of capacity is saturated, a flow within it of its size is done


def check_link_sharing(value: str) -> str:
    if value not in LINK_SHARING:
        raise ValueError(f"link_sharing must be one of {', '.join(LINK_SHARING)}; got {value!r}")
    return value


@dataclass(frozen=True)
class FlowLinks:
    """Flows of one phase on the links, as a sparse flow x link matrix in coordinates: entry ``k`` puts a
    fraction ``fraction[k]`` of flow ``flow[k]``'s rate on link ``link[k]``."""

    flow: np.ndarray       # flow index per entry (int)
    link: np.ndarray       # link index per entry (int)
    fraction: np.ndarray   # share of the flow's rate on that link
    size: np.ndarray       # bytes per flow
    capacity: np.ndarray   # bytes/s per link

    def __post_init__(self) -> None:
        n, m = len(self.size), len(self.capacity)
        if not (len(self.flow) == len(self.link) == len(self.fraction)):
            raise ValueError("flow, link and fraction must have one entry each per (flow, link) pair")
        if len(self.flow) and (self.flow.min() < 0 or self.flow.max() >= n):
            raise ValueError(f"flow indices must lie in [0, {n})")
        if len(self.link) and (self.link.min() < 0 or self.link.max() >= m):
            raise ValueError(f"link indices must lie in [0, {m})")
        if (self.size < 0).any() or not np.isfinite(self.size).all():
            raise ValueError("size must be finite and >= 0 for every flow")
        if (self.capacity <= 0).any():
            raise ValueError("capacity must be > 0 for every link")
        if (self.fraction <= 0).any():
            raise ValueError("fraction must be > 0 for every (flow, link) entry")

    def loads(self) -> np.ndarray:
        """Bytes per link when every flow has crossed it."""
        return np.bincount(self.link, weights=self.fraction * self.size[self.flow], minlength=len(self.capacity))


@dataclass(frozen=True)
class FairSchedule:
    """The fluid max-min fair run of a phase: ``rates[k]`` (bytes/s per flow) hold from ``times[k]`` to
    ``times[k + 1]``; ``finish`` per flow; ``makespan`` = the last finish."""

    times: np.ndarray      # len K + 1, from 0 to the makespan
    rates: np.ndarray      # K x flows
    finish: np.ndarray
    makespan: float


def bottleneck_makespan(fl: FlowLinks) -> float:
    """Seconds until the most loaded link (bytes / capacity) has carried its bytes."""
    return float((fl.loads() / fl.capacity).max(initial=0.0))


def max_min_rates(fl: FlowLinks, active: np.ndarray) -> np.ndarray:
    """Max-min fair rates of the ``active`` flows (progressive filling; Bertsekas and Gallager, sec. 6.5.2),
    0 for the others. A flow crossing no link is given an infinite rate."""
    rates = np.zeros(len(fl.size))
    ids = np.flatnonzero(active)
    live = active[fl.flow]
    local = np.cumsum(active) - 1   # flow id -> its place among the active ones
    rates[ids] = _fill(local[fl.flow[live]], fl.link[live], fl.fraction[live], fl.capacity, len(ids))
    return rates


def _fill(flow: np.ndarray, link: np.ndarray, frac: np.ndarray, capacity: np.ndarray, n: int) -> np.ndarray:
    """Progressive filling of flows 0..n-1 on entries (flow, link, fraction): raise every unfrozen flow's rate
    equally until a link is full, freeze the flows crossing it, repeat. Entries of frozen flows are dropped as
    they freeze, so each round reads only what is still rising."""
    m = len(capacity)
    rates = np.full(n, np.inf)      # flows on no link keep inf (nothing bounds them)
    frozen = np.zeros(n, dtype=bool)
    used = np.zeros(m)              # bytes/s of frozen flows per link
    level = 0.0                     # the unfrozen flows' common rate
    while len(flow):
        weight = np.bincount(link, weights=frac, minlength=m)   # unfrozen flows' share per link
        loaded = np.flatnonzero(weight)
        room = (capacity[loaded] - used[loaded]) / weight[loaded]  # level at which each loaded link is full
        level = max(level, float(room.min()))
        full = np.zeros(m, dtype=bool)
        full[loaded[room <= level * (1.0 + _RTOL)]] = True
        hit = np.zeros(n, dtype=bool)
        hit[flow[full[link]]] = True
        rates[hit] = level
        frozen |= hit
        now = hit[flow]
        used += np.bincount(link[now], weights=frac[now] * level, minlength=m)
        keep = ~now
        flow, link, frac = flow[keep], link[keep], frac[keep]
    return rates


def max_min_schedule(fl: FlowLinks, record: bool = True) -> FairSchedule:
    """The fluid run of the phase under max-min fair sharing, rates recomputed at every flow's end; with
    ``record=False`` only ``finish`` and ``makespan`` are kept (``times`` and ``rates`` empty)."""
    n = len(fl.size)
    links_used, link = np.unique(fl.link, return_inverse=True)   # only the links some flow crosses
    capacity = fl.capacity[links_used]
    ids = np.flatnonzero(fl.size > 0)                # the running flows, in order
    local = np.full(n, -1)
    local[ids] = np.arange(len(ids))
    on = local[fl.flow] >= 0
    flow, link, frac = local[fl.flow[on]], link.reshape(-1)[on], fl.fraction[on]
    left = fl.size[ids].astype(float)
    finish = np.zeros(n)
    t, times, history = 0.0, [0.0], []
    while len(ids):
        rates = _fill(flow, link, frac, capacity, len(ids))
        eta = left / rates
        dt = float(eta.min())
        done = eta <= dt * (1.0 + _RTOL)
        t += dt
        left = left - rates * dt
        finish[ids[done]] = t
        if record:
            full = np.zeros(n)
            full[ids] = rates
            times.append(t)
            history.append(full)
        stay = ~done
        renumber = np.cumsum(stay) - 1
        keep = stay[flow]
        flow, link, frac = renumber[flow[keep]], link[keep], frac[keep]
        ids, left = ids[stay], left[stay]
    return FairSchedule(np.array(times), np.array(history).reshape(-1, n), finish, t)


def phase_makespan(fl: FlowLinks, link_sharing: str) -> float:
    """Seconds for the phase's flows under ``link_sharing`` ("bottleneck" or "max-min"); flows of one size
    (all those with bytes) skip the fluid run: max-min then equals the bottleneck."""
    check_link_sharing(link_sharing)
    sizes = fl.size[fl.size > 0]
    if link_sharing == "bottleneck" or not len(sizes) or (sizes == sizes[0]).all():
        return bottleneck_makespan(fl)
    return max_min_schedule(fl, record=False).makespan


def flows_on_routes(routes, flows, capacity: np.ndarray) -> FlowLinks:
    """``FlowLinks`` of ``flows`` (src GPU, dst GPU, bytes) on a ``FabricRoutes``' graph (its ``route`` per
    distinct pair: links and ECMP fractions); flows to themselves or of no bytes are left out."""
    f = np.asarray(flows, dtype=float).reshape(-1, 3)
    src, dst, size = f[:, 0].astype(np.int64), f[:, 1].astype(np.int64), f[:, 2]
    keep = (src != dst) & (size > 0)
    src, dst, size = src[keep], dst[keep], size[keep]
    pairs, inverse = np.unique(np.stack([src, dst]), axis=1, return_inverse=True)
    inverse = inverse.reshape(-1)
    per_pair = [routes.route(a, b) for a, b in pairs.T.tolist()]
    counts = np.array([len(r.links) for r in per_pair], dtype=np.int64)
    links = np.concatenate([r.links for r in per_pair]) if per_pair else np.zeros(0, dtype=np.int64)
    fracs = np.concatenate([r.fractions for r in per_pair]) if per_pair else np.zeros(0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if per_pair else np.zeros(0, dtype=np.int64)
    # entries of flow i: its pair's slice of links / fractions
    n_entries = counts[inverse]
    flow_idx = np.repeat(np.arange(len(size)), n_entries)
    offsets = np.arange(int(n_entries.sum())) - np.repeat(np.cumsum(n_entries) - n_entries, n_entries)
    pos = np.repeat(starts[inverse], n_entries) + offsets
    return FlowLinks(flow_idx, links[pos].astype(np.int64), fracs[pos], size, np.asarray(capacity, dtype=float))


def shared_seconds(routes, flows, bottleneck_s: float, link_sharing: str) -> float:
    """Seconds of a phase's ``flows`` under ``link_sharing``, given their bottleneck time (``price_flows``):
    returned as it is under "bottleneck", when every flow with bytes has the same size, or when the flows of each
    size use links no flow of another size uses (then each size runs on its own, all its flows end together at its
    most loaded link's time, and the phase ends at the most loaded link of all)."""
    check_link_sharing(link_sharing)
    if link_sharing == "bottleneck" or bottleneck_s <= 0:
        return bottleneck_s
    f = np.asarray(flows, dtype=float).reshape(-1, 3)
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 2] > 0)]
    sizes = np.unique(f[:, 2])
    if len(sizes) <= 1:
        return bottleneck_s
    if len(sizes) <= _SIZE_CLASSES:  # routed a size at a time (vectorised): do the sizes share a link?
        users = sum((routes.link_loads(f[f[:, 2] == s]) > 0).astype(np.int64) for s in sizes)
        if users.max() <= 1:
            return bottleneck_s
    return max_min_schedule(flows_on_routes(routes, f, routes._cap), record=False).makespan
