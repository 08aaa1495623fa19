"""The layout search's cheap tests before simulation (`simulator.planner`, steps 2 and 3): whether a layout's
memory can fit, by `workloads.memory`'s formulas on an even layer split, and a rough score of its step to rank
the survivors by. Neither simulates anything; the planner simulates the layouts they let through.
"""

from __future__ import annotations

from functools import lru_cache

from gpuhours.simulator.scenario import Scenario
from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.step import rank_params, stage_ranks
from gpuhours.workloads import params as P
from gpuhours.workloads.flops import flops_per_token
from gpuhours.workloads.memory import (chunk_bytes, cp_gathered_kv_bytes, gathered_params, load_recipe,
                                       peak_in_flight, rank_state_bytes)

_RECIPE = load_recipe()
# Bubble share of each schedule's closed form (ranking only): (pp - 1) / m for 1F1B, halved by interleaving (vpp
# 2) and by ZB1P's split backward, (pp / 2 - 1) / m for DualPipe and DualPipeV.
_BUBBLE = {"1f1b": lambda pp, m: (pp - 1) / m, "interleaved-1f1b": lambda pp, m: (pp - 1) / (2 * m),
           "zb1p": lambda pp, m: (pp - 1) / (2 * m), "dualpipe": lambda pp, m: max(0, pp / 2 - 1) / m,
           "dualpipev": lambda pp, m: max(0, pp / 2 - 1) / m}


def _even_split(layers: int, stages: int) -> tuple[int, ...]:
    q, r = divmod(layers, stages)
    return tuple(q + (1 if i < r else 0) for i in range(stages))


@lru_cache(maxsize=256)
def _schedule(name: str, pp: int, m: int, vpp: int):
    return build_schedule(name, pp, m, vpp=vpp)


def _fits_estimate(sc: Scenario, m: int) -> bool:
    totals = _memory_totals(sc, m)
    return totals is not None and max(totals) <= sc.cluster.gpu.hbm_bytes


def _memory_totals(sc: Scenario, m: int, stop_early: bool = True) -> tuple[float, ...] | None:
    """Per-rank memory of the layout (None: cannot fit), by workloads.memory's formulas (memory_breakdown's sum, on a schedule built once
    per shape) on an even layer split, without a simulated step. First the closed-form state alone: weights,
    gradients and optimizer state plus their headroom over the GPU on some rank cannot fit (activations only
    add). Peak in-flight chunks of every schedule here stop growing once m reaches its warm-up depth (<= 2 pp
    chunks for DualPipe), so m is capped at 2 pp (even, >= 2 pp and a multiple of pp, as DualPipe and interleaved
    1F1B need): the same per-rank totals (checked for every schedule at pp 2-16, m = 2, 4 and 10 pp)."""
    model, p, rec = sc.model, sc.parallel, _RECIPE
    split = _even_split(model.n_layers, p.num_stages)
    stages: dict[int, set[int]] = {}
    for s, ranks in enumerate(stage_ranks(p)):
        for r in ranks:
            stages.setdefault(r, set()).add(s)
    state = {r: sum(rank_state_bytes(*rank_params(model, p, split, st), p, rec,
                                     gathered_params(model, p, split, st)).values()) for r, st in stages.items()}
    if stop_early and max(state.values()) * (1 + rec.fragmentation) + rec.reserved_bytes > sc.cluster.gpu.hbm_bytes:
        return None
    opts = sc.effective_opts()
    per_stage = chunk_bytes(model, p, sc.plan.seq_len, split, rec, opts.fp8, opts.recompute, opts.kept_imbalance,
                            opts.attention_impl)
    act, _ = peak_in_flight(_schedule(p.schedule, p.pp, min(m, 2 * p.pp), p.vpp), per_stage)
    kv = cp_gathered_kv_bytes(model, p, sc.plan.seq_len)
    return tuple((state[r] + act[r] + kv) * (1 + rec.fragmentation) + rec.reserved_bytes for r in sorted(state))


# -- the cheap score -----------------------------------------------------------------------------------------------
def _recompute_factor(policy: str, fl, stages: int, layers: int) -> float:
    """Compute over compute without recomputation, roughly (ranking only): the named policies as before; "full:N"
    adds a forward (1/3 of F+B+W) for the share of layers recomputed; a module list adds the core's share when it
    has core_attn, and the norms' 2% otherwise (as "deepseek")."""
    from gpuhours.workloads.recompute import full_layers, modules

    named = {"none": 1.0, "deepseek": 1.02, "selective": 1 + fl.attention_core / fl.forward / 3, "full": 4 / 3}
    if policy in named:
        return named[policy]
    n = full_layers(policy)
    if n is not None:
        return 1 + min(1.0, n * stages / layers) / 3
    return 1.02 + (fl.attention_core / fl.forward / 3 if "core_attn" in modules(policy) else 0.0)


def cheap_score(sc: Scenario, m: int) -> float:
    """Seconds per step, roughly: compute at 45% of BF16 peak with the recompute factor and the schedule's bubble,
    plus exposed TP collectives (30% of them under tp_comm_overlap), EP all-to-all leaving the node (10% under
    DualPipe/V) and the data-parallel tail over NVLink or the NIC (ZeRO-3: gathers every micro-batch, half
    hidden). Only for ranking."""
    model, p, cl = sc.model, sc.parallel, sc.cluster
    fl = flops_per_token(model, sc.plan.seq_len)
    seqs = m * p.micro_batch_size * p.dp
    recompute = _recompute_factor(sc.opts.recompute, fl, p.num_stages, model.n_layers)
    peak = p.num_gpus * cl.gpu.peak_flops("bf16") * 0.45
    compute = fl.training_per_token * seqs * sc.plan.seq_len * recompute / peak
    compute *= 1 + _BUBBLE[p.schedule](p.pp, m)
    compute /= min(1.0, model.hidden / p.tp / 4096) ** 0.25  # narrow TP shards run GEMMs below peak
    tokens_mb = p.micro_batch_size * sc.plan.seq_len / p.cp
    layers = model.n_layers / p.pp
    comm = 0.0
    if p.tp > 1:
        coll = tokens_mb * model.hidden * 2 * (p.tp - 1) / p.tp / cl.nvlink_bw
        comm += layers * m * 4 * coll * (0.3 if p.tp_comm_overlap else 1.0)
    routed = 0.0
    if model.moe is not None:
        routed = model.n_moe_layers * model.moe.n_routed_experts * P.expert_params(model)
        if p.ep > 1:
            remote = max(0.0, 1 - cl.gpus_per_node / p.ep)
            a2a = tokens_mb / p.tp * model.moe.top_k * model.hidden * 3 * 2 * remote / cl.ib_bw
            comm += model.n_moe_layers / p.pp * m * a2a * (0.1 if p.overlaps_comm else 1.0)
        if p.etp > 1:  # ETP all-gather and reduce-scatter of the received rows, forward and backward, over NVLink
            rows = tokens_mb / p.tp * model.moe.top_k * p.etp
            comm += model.n_moe_layers / p.pp * m * 4 * rows * model.hidden * 2 * (p.etp - 1) / p.etp / cl.nvlink_bw
    rank_params = (P.param_breakdown(model).total - routed) / (p.tp * p.pp) + routed / (p.ep * p.etp * p.pp)
    if p.grad_dp > 1:  # reduce-scatter FP32 grads + all-gather BF16 weights; NVLink when the group is in a node
        bw = cl.nvlink_bw if p.tp * p.grad_dp <= cl.gpus_per_node else cl.ib_bw
        comm += rank_params * 6 * (p.grad_dp - 1) / p.grad_dp / bw * (m * 0.5 if p.zero_stage == 3 else 1.0)
    return compute + comm
