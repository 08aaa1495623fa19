"""EPLB-style expert placement: replicate the heaviest experts into redundant slots, then pack to GPUs.

Idea after DeepSeek's expert-parallel load balancer (deepseek-ai/EPLB), re-derived here:
1. Replication: with R redundant slots, hand out one replica at a time to the expert with the largest load per
   replica, load_e / replicas_e (at most ep copies); each replica carries load_e / replicas_e.
2. Packing, heaviest replica first (longest-processing-time greedy), in two levels: onto the least-loaded node
   with a free slot, then inside that node onto the least-loaded GPU with a free slot; replicas of one expert go
   to distinct GPUs where slots allow.  Every GPU ends with exactly (E + R) / ep slots.
The plan is compared with the contiguous placement (expert e on rank e // (E / ep), no replicas); if greedy
packing came out worse, the contiguous placement is returned, so the imbalance never rises.
Group locality (a group's experts on one node, which the group-limited router relies on) is not kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class EPLBPlan:
    """Where each expert replica lives and how much load each EP rank carries."""

    replicas: np.ndarray = field(repr=False)        # (E,) copies of each expert, >= 1
    slot_expert: np.ndarray = field(repr=False)     # (ep, slots_per_rank) expert held in each slot
    slot_load: np.ndarray = field(repr=False)       # (ep, slots_per_rank) load served by each slot
    rank_loads_before: np.ndarray = field(repr=False)  # (ep,) contiguous placement, no replicas
    rank_loads_after: np.ndarray = field(repr=False)   # (ep,)
    used_greedy: bool = True                        # False: contiguous placement kept (greedy was worse)

    @property
    def imbalance_before(self) -> float:
        return _max_over_mean(self.rank_loads_before)

    @property
    def imbalance_after(self) -> float:
        return _max_over_mean(self.rank_loads_after)

    def summary(self) -> dict:
        return {
            "ep": int(self.rank_loads_after.size),
            "slots_per_rank": int(self.slot_expert.shape[1]),
            "redundant_slots": int(self.replicas.sum() - self.replicas.size),
            "imbalance_before": self.imbalance_before,
            "imbalance_after": self.imbalance_after,
            "used_greedy": self.used_greedy,
        }


def _max_over_mean(x: np.ndarray) -> float:
    mean = float(x.sum()) / x.size
    return float(x.max()) / mean if mean > 0 else 1.0


def replicate(expert_loads: np.ndarray, redundant: int, max_replicas: int | None = None) -> np.ndarray:
    """Replica counts: each redundant slot goes to the expert with the largest load per replica
    (among those below max_replicas copies: more copies than GPUs cannot sit on distinct GPUs)."""
    loads = np.asarray(expert_loads, dtype=float)
    reps = np.ones(loads.size, dtype=np.int64)
    cap = np.inf if max_replicas is None else max_replicas
    if redundant > (cap - 1) * loads.size:
        raise ValueError(f"replicate: redundant = {redundant}: at most {(cap - 1) * loads.size} "
                         f"with {loads.size} experts of at most {max_replicas} copies")
    for _ in range(redundant):
        reps[np.argmax(np.where(reps < cap, loads / reps, -np.inf))] += 1
    return reps


def balance_experts(expert_loads, ep: int, gpus_per_node: int, redundant: int = 0) -> EPLBPlan:
    """Place E experts plus `redundant` replicas on `ep` GPUs ((E + redundant) must divide by ep)."""
    loads = np.asarray(expert_loads, dtype=float)
    if loads.ndim != 1 or loads.size == 0 or not np.all(np.isfinite(loads)) or np.any(loads < 0):
        raise ValueError("balance_experts: expert_loads must be a non-empty 1-D array of finite loads >= 0")
    for name, v, lo in (("ep", ep, 1), ("gpus_per_node", gpus_per_node, 1), ("redundant", redundant, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"balance_experts: {name} = {v!r}: expected an integer >= {lo}")
    E = loads.size
    if E % ep:
        raise ValueError(f"balance_experts: ep = {ep}: must divide the {E} experts")
    if (E + redundant) % ep:
        raise ValueError(f"balance_experts: redundant = {redundant}: E + redundant = {E + redundant} "
                         f"must divide by ep = {ep}")
    if ep > gpus_per_node and ep % gpus_per_node:
        raise ValueError(f"balance_experts: ep = {ep}: must be a multiple of gpus_per_node = {gpus_per_node}")
    slots = (E + redundant) // ep
    gpn = min(gpus_per_node, ep)
    n_nodes = ep // gpn

    before = loads.reshape(ep, E // ep).sum(axis=1)
    reps = replicate(loads, redundant, max_replicas=ep)

    item_expert = np.repeat(np.arange(E), reps)
    item_load = loads[item_expert] / reps[item_expert]
    order = np.argsort(-item_load, kind="stable")

    node_load = np.zeros(n_nodes)
    node_free = np.full(n_nodes, gpn * slots)
    gpu_load = np.zeros(ep)
    gpu_free = np.full(ep, slots)
    holds = np.zeros((ep, E), dtype=bool)
    slot_expert = np.full((ep, slots), -1, dtype=np.int64)
    slot_load = np.zeros((ep, slots))
    for it in order:
        e, w = item_expert[it], item_load[it]
        gpu_ok = (gpu_free > 0) & ~holds[:, e]
        if not gpu_ok.any():  # only GPUs already holding e have room: let two replicas share one
            gpu_ok = gpu_free > 0
        node_ok = (node_free > 0) & gpu_ok.reshape(n_nodes, gpn).any(axis=1)
        node = int(np.argmin(np.where(node_ok, node_load, np.inf)))
        cand = np.arange(node * gpn, (node + 1) * gpn)
        g = int(cand[np.argmin(np.where(gpu_ok[cand], gpu_load[cand], np.inf))])
        slot_expert[g, slots - gpu_free[g]] = e
        slot_load[g, slots - gpu_free[g]] = w
        gpu_free[g] -= 1
        node_free[node] -= 1
        gpu_load[g] += w
        node_load[node] += w
        holds[g, e] = True

    after = slot_load.sum(axis=1)
    if _max_over_mean(after) > _max_over_mean(before):  # greedy lost to the contiguous placement: keep that
        reps = np.ones(E, dtype=np.int64)
        slot_expert = np.full((ep, slots), -1, dtype=np.int64)
        slot_load = np.zeros((ep, slots))
        slot_expert[:, : E // ep] = np.arange(E).reshape(ep, E // ep)
        slot_load[:, : E // ep] = loads.reshape(ep, E // ep)
        return EPLBPlan(reps, slot_expert, slot_load, before, before.copy(), used_greedy=False)
    return EPLBPlan(reps, slot_expert, slot_load, before, after, used_greedy=True)


def expert_loads_for(moe, ep: int, gpus_per_node: int, tokens_per_rank: int, routing: str, seed: int = 0):
    """Rows per expert of one micro-batch under a routing choice ("skew:<s>" or "file:<path>"), for EPLB."""
    from gpuhours.workloads.routing import EPGroup, RoutingConfig, load_expert_loads, route

    if routing.startswith("file:"):
        loads = load_expert_loads(routing[5:]).loads.reshape(-1, moe.n_routed_experts).mean(axis=0)
        return loads / loads.sum() * tokens_per_rank * ep * moe.top_k
    if routing.startswith("skew:"):
        config = RoutingConfig(skew="zipf", value=float(routing[5:]), seed=seed)
    else:
        config = RoutingConfig(skew="balanced", seed=seed)
    return route(moe, EPGroup(ep, gpus_per_node), tokens_per_rank, config).expert_rows
