"""The MoE block of a layer (DeepSeekMoE and its relatives): the router, the routed experts as grouped GEMMs on the
rows the busiest rank of the expert-parallel group keeps, the shared experts, and the dispatch and combine
all-to-alls around them."""

from __future__ import annotations

from gpuhours.workloads.model import ModelSpec, MoESpec
from gpuhours.workloads.ops import (
    BF16,
    FP32,
    OpOptions,
    PassBuilder,
    Segment,
    collective_segment,
    dense_ffn_ops,
    fp8_bytes_per_token,
)
from gpuhours.workloads.parallel import ParallelSpec


def moe_segments(mlp: PassBuilder, model: ModelSpec, moe: MoESpec, p: ParallelSpec, tokens: int, phase: str,
                 opts: OpOptions, prefix: str, layer: int) -> tuple[list[Segment], Segment, list[Segment]]:
    """One pass of the MoE block on a rank holding `tokens` tokens of the micro-batch: (the dispatch all-to-all,
    the block's compute segment, the combine all-to-all). The weight-gradient pass has no all-to-alls.

    Forward: dispatch (FP8 payload under the FP8 recipe) -> experts -> combine (BF16); backward runs
    combine(B) -> experts(B) -> dispatch(B), both carrying BF16 gradients. The busiest EP rank keeps
    `opts.kept_imbalance` times the mean rows (imbalance, capped by the capacity factor)."""
    h, tp = model.hidden, p.tp
    local_tokens = tokens // tp if p.sequence_parallel else tokens
    local_experts = moe.n_routed_experts // p.ep
    rows = local_tokens * moe.top_k * opts.kept_imbalance  # rows the busiest rank of the EP group keeps
    rows_per_expert = max(1, round(rows / local_experts))
    if phase != "W":
        mlp.elementwise("router.topk", 2 * local_tokens * moe.n_routed_experts * FP32)
    mlp.gemm("router", local_tokens, moe.n_routed_experts, h, low_precision=False)
    e = moe.expert_intermediate
    mlp.gemm("experts.w13", rows_per_expert, 2 * e, h, groups=local_experts)
    if phase != "W":
        mlp.elementwise("experts.swiglu", 3 * rows_per_expert * local_experts * e * BF16 * (1 if phase == "F" else 2))
    mlp.gemm("experts.w2", rows_per_expert, h, e, groups=local_experts)
    if moe.n_shared_experts:
        dense_ffn_ops(mlp, moe.n_shared_experts * e, h, local_tokens, 1, name="shared")  # experts: SwiGLU
    mlp_seg = mlp.segment(f"mlp({phase})", layer)
    if phase == "W":
        return [], mlp_seg, []
    dispatch_bytes = fp8_bytes_per_token(h) if (opts.fp8 and phase == "F") else h * BF16
    scaled_tokens = int(round(local_tokens * opts.kept_imbalance))
    dispatch = collective_segment(f"{prefix}.moe.dispatch", phase, "moe", "ep_dispatch", "ep", scaled_tokens,
                                  dispatch_bytes, layer)
    combine = collective_segment(f"{prefix}.moe.combine", phase, "moe", "ep_combine", "ep", scaled_tokens,
                                 h * BF16, layer)
    return [dispatch], mlp_seg, [combine]
