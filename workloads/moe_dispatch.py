"""How tokens reach the routed experts and come back: the token dispatcher's collectives around the expert GEMMs,
with expert tensor parallelism (ETP) and the two dispatchers of Megatron-Core (`ParallelSpec.moe_dispatch`).

Expert tensor parallelism (`ParallelSpec.etp`, Megatron-Core's expert_tensor_parallel_size). Each routed expert's
fused w13 (h -> 2e) is split by columns and its w2 (e -> h) by rows over the etp ranks of an expert-tensor-
parallel group, so a rank holds e / etp of every local expert's intermediate dimension and 1 / (ep x etp) of a
layer's routed parameters. The expert ranks of a pipeline stage form Megatron-Core's expert grid etp-ep-edp
(innermost first): ep x etp must divide the stage's dp x tp x cp ranks, and the quotient is the expert-data-
parallel size (`ParallelSpec.expert_dp`); `hwmodels.placement.RankLayout` places an etp group on consecutive ranks
(inside a node by default), an EP group on ranks etp apart.

"alltoall" (Megatron-Core's MoEAlltoAllTokenDispatcher, and DeepEP's kernels when etp = 1). Read in
megatron/core/transformer/moe/token_dispatcher.py, in our words: the forward permutes the rank's tokens by
expert, exchanges them over the EP group with an all-to-all (each rank receives the rows of its local experts
from its ep peers, which hold the same etp index), and, when etp > 1, all-gathers the received rows over the
etp group, so every rank of an expert's etp group multiplies all the expert's rows by its slice of the weights.
The w2 outputs are then partial sums over the etp slices: they are reduce-scattered over the etp group (each
rank gets back the full sum of its own received rows) before the reverse all-to-all. The backward mirrors it:
the output gradients cross the EP group and are all-gathered over etp (the reduce-scatter's backward), the input
gradients are reduce-scattered over etp (the all-gather's backward) before the reverse all-to-all.

"allgather" (Megatron-Core's MoEAllGatherTokenDispatcher, meant for EP inside a node or with TP): every rank of
the ep x etp block (Megatron-Core's tp_ep_group, "tp_ep" in the placement) all-gathers all the block's tokens,
routed or not: tokens x ep x etp rows of h (not x top_k), plus the routing map (one bool per expert) and the
routing probabilities (one number per expert) of every token; it picks its local experts' rows locally, and
reduce-scatters the un-permuted outputs (the hidden rows, in BF16) over the block. Backward: the output
gradients are all-gathered, the input gradients and the probabilities' gradients reduce-scattered (the routing
map is gathered without gradient).

Every byte count is that of the collectives' full buffer (`hwmodels.collectives`' convention: an all-gather's
gathered buffer, a reduce-scatter's input).
"""

from __future__ import annotations

import math

from gpuhours.workloads.model import ModelSpec, MoESpec
from gpuhours.workloads.ops import (BF16, FP32, Op, OpOptions, Segment, collective_segment, fp8_bytes_per_token,
                                    fp8_payload_bytes)
from gpuhours.workloads.parallel import ParallelSpec

ROUTING_MAP_BYTES = 1  # torch.bool, one per (token, expert): the allgather dispatcher gathers the routing map
# Assumption: the routing probabilities are gathered in FP32 (Megatron-Core's routers score in FP32 when
# moe_router_dtype is fp32; a BF16 router would halve this term).
ROUTING_PROB_BYTES = FP32


def expert_rows(local_tokens: int, moe: MoESpec, p: ParallelSpec, opts: OpOptions) -> float:
    """Rows the busiest rank's local experts multiply: its EP share of the routed rows, local_tokens x top_k x
    kept imbalance, all-gathered over its etp group (x etp). The allgather dispatcher picks the same rows out of
    the block's tokens: local_tokens x ep x etp tokens x top_k / ep (its experts' share) x kept imbalance."""
    return local_tokens * moe.top_k * opts.kept_imbalance * p.etp


def dispatch_bytes_per_row(hidden: int, phase: str, opts: OpOptions) -> float:
    """Payload of one row on the dispatch side: forward, the up-projection's input, FP8 with its 1x128 scales
    under the FP8 recipe (DeepSeek-V3 sec. 3.3.2), BF16 otherwise; backward, the input gradients sent back to
    the tokens' ranks, BF16 (the report keeps "both the forward and backward combine components" in BF16: the
    kernel that carries them, DeepEP's combine). The FP8 row's scales follow the recipe (`ops.fp8_payload_bytes`:
    1x128 FP32 blockwise, 1x32 E8M0 under MXFP8, one per tensor for the per-tensor recipes)."""
    return fp8_payload_bytes(hidden, opts.fp8_recipe) if (opts.fp8 and phase == "F") else hidden * BF16


def combine_bytes_per_row(hidden: int, phase: str, opts: OpOptions) -> float:
    """Payload of one row on the combine side: forward, the experts' outputs, BF16 (sec. 3.3.2); backward, the
    output gradients sent to the experts, FP8 with 1x128 scales under DeepSeek's blockwise recipe ("a similar
    strategy is applied to the activation gradient before MoE down-projections", sec. 3.3.2: the gradient
    entering the down-projection's backward; DeepEP's dispatch kernel carries it), BF16 otherwise. The trace
    agrees: its backward combine's all-to-all takes 23.1 ms against the forward combine's 34.7 and the
    forward's FP8 dispatch's 26.8."""
    fp8 = opts.fp8 and opts.fp8_recipe == "blockwise" and phase == "B"
    return fp8_bytes_per_token(hidden) if fp8 else hidden * BF16


def dispatch_segments(prefix: str, phase: str, hidden: int, moe: MoESpec, p: ParallelSpec, local_tokens: int,
                      opts: OpOptions, layer: int) -> tuple[list[Segment], list[Segment]]:
    """(the dispatch side, the combine side) of one pass ("F" or "B") on a rank holding `local_tokens` tokens,
    each in the order it runs. The forward runs dispatch side, experts, combine side: dispatch, [ETP all-gather],
    experts, [ETP reduce-scatter], combine. The backward runs combine side, experts, dispatch side: combine(B),
    [ETP all-gather], experts, [ETP reduce-scatter], dispatch(B)."""
    if p.moe_dispatch == "allgather":
        return _allgather_segments(prefix, phase, hidden, moe, p, local_tokens, layer)
    scaled = int(round(local_tokens * opts.kept_imbalance))
    a2a_in = dispatch_bytes_per_row(hidden, phase, opts)
    dispatch = collective_segment(f"{prefix}.moe.dispatch", phase, "moe", "ep_dispatch", "ep", scaled, a2a_in,
                                  layer)
    combine = collective_segment(f"{prefix}.moe.combine", phase, "moe", "ep_combine", "ep", scaled,
                                 combine_bytes_per_row(hidden, phase, opts), layer)
    if p.etp == 1:
        return [dispatch], [combine]
    rows = int(round(expert_rows(local_tokens, moe, p, opts)))  # the etp group's gathered rows
    gather_row = a2a_in if phase == "F" else combine_bytes_per_row(hidden, phase, opts)  # B: output gradients
    gather = collective_segment(f"{prefix}.moe.etp_gather", phase, "moe", "all_gather", "etp", rows, gather_row,
                                layer)
    scatter = collective_segment(f"{prefix}.moe.etp_scatter", phase, "moe", "reduce_scatter", "etp", rows,
                                 hidden * BF16, layer)
    if phase == "F":
        return [dispatch, gather], [scatter, combine]
    return [scatter, dispatch], [combine, gather]


def allgather_bytes(local_tokens: int, hidden: int, n_experts: int, p: ParallelSpec) -> tuple[float, float]:
    """(hidden bytes, routing bytes) of the allgather dispatcher's forward gather over the ep x etp block: every
    rank's local_tokens rows of BF16 hidden states, and per token the routing map and probabilities of every
    expert. The combine reduce-scatters the same hidden bytes."""
    tokens = local_tokens * p.ep * p.etp
    return tokens * hidden * BF16, tokens * n_experts * (ROUTING_MAP_BYTES + ROUTING_PROB_BYTES)


def _allgather_segments(prefix: str, phase: str, hidden: int, moe: MoESpec, p: ParallelSpec, local_tokens: int,
                        layer: int) -> tuple[list[Segment], list[Segment]]:
    if p.ep * p.etp == 1:
        return [], []
    states, routing = allgather_bytes(local_tokens, hidden, moe.n_routed_experts, p)
    probs = routing * ROUTING_PROB_BYTES / (ROUTING_MAP_BYTES + ROUTING_PROB_BYTES)

    def seg(name: str, parts: tuple[tuple[str, str, float], ...]) -> Segment:
        ops = tuple(Op(f"{prefix}.moe.{what}", "collective", phase, "moe", collective=kind, group="tp_ep",
                       comm_bytes=nbytes) for what, kind, nbytes in parts if nbytes > 0)
        return Segment(f"{name}({phase})", "comm", ops, layer)

    if phase == "F":
        gather = seg("dispatch", (("allgather_states", "all_gather", states),
                                  ("allgather_routing", "all_gather", routing)))
        scatter = seg("combine", (("reduce_scatter_states", "reduce_scatter", states),))
        return [gather], [scatter]
    gather = seg("combine", (("allgather_states", "all_gather", states),))
    scatter = seg("dispatch", (("reduce_scatter_states", "reduce_scatter", states),
                               ("reduce_scatter_probs", "reduce_scatter", probs)))
    return [scatter], [gather]


def expected_nodes_per_token(model: ModelSpec, ep: int, gpus_per_node: int,
                             max_nodes: int | None = None) -> float:
    """Distinct nodes a token's top-k experts live on, under uniform routing.

    The EP group spans N = ceil(ep / gpus_per_node) nodes holding E_n = E / N experts each. Node-limited routing
    (DeepSeek-V2's device-limited and DeepSeek-V3's node-limited routing, at most M nodes per token) sends a token
    to the m = min(M, N) nodes it picks and its k experts uniformly among their m E_n experts; each picked node is
    then missed with probability C(E_n (m-1), k) / C(E_n m, k), so the expected distinct nodes are
        m (1 - C(E_n (m-1), k) / C(E_n m, k))
    (with m = N: the k experts uniformly over all nodes). `max_nodes` (`OpOptions.max_nodes_per_token`): None
    takes the model's rule -- when its routing groups coincide with the nodes (DeepSeek-V3: 8 groups, EP64 on 8
    nodes) M = topk_groups, otherwise unlimited; 0 is unlimited; M >= 1 caps a token at M nodes.
    """
    moe = model.moe
    if moe is None or ep == 1:
        return 1.0
    nodes = math.ceil(ep / gpus_per_node)
    if nodes == 1:
        return 1.0
    k = moe.top_k
    if max_nodes is None:
        m = moe.topk_groups if moe.n_groups == nodes and moe.topk_groups < nodes else nodes
    else:
        m = nodes if max_nodes == 0 else min(max_nodes, nodes)
    per_node = moe.n_routed_experts // nodes
    if k > m * per_node:
        raise ValueError(f"max_nodes_per_token ({max_nodes}) leaves {m} nodes of {per_node} experts, fewer than "
                         f"the model's top_k ({k}); allowed: at least {math.ceil(k / per_node)}, or 0 (unlimited)")
    picked = moe.n_routed_experts if m == nodes else per_node * m  # experts on the picked nodes
    miss = math.comb(picked - per_node, k) / math.comb(picked, k)
    return m * (1.0 - miss)
