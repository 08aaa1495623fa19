"""The MoE block of a layer (DeepSeekMoE and its relatives): the router, the routed experts as grouped GEMMs on the
rows the busiest rank of the expert-parallel group keeps (each expert's intermediate dimension split over the etp
ranks under expert tensor parallelism), the shared experts, and the token dispatcher's collectives around them
(`workloads.moe_dispatch`: all-to-all or all-gather, with the ETP gather and reduce-scatter)."""

from __future__ import annotations

from gpuhours.workloads.model import ModelSpec, MoESpec
from gpuhours.workloads.memory_ops import (
    blockwise_caches,
    branch_add,
    gate_weight_grad,
    moe_permute,
    moe_unpermute,
    received_tokens,
    swiglu_input_cache,
)
from gpuhours.workloads.moe_dispatch import (combine_bytes_per_row, dispatch_bytes_per_row, dispatch_segments,
                                             expert_rows)
from gpuhours.workloads.ops import (
    BF16,
    FP8,
    FP32,
    OpOptions,
    PassBuilder,
    Segment,
    dense_ffn_ops,
)
from gpuhours.workloads.parallel import ParallelSpec


def moe_segments(mlp: PassBuilder, model: ModelSpec, moe: MoESpec, p: ParallelSpec, tokens: int, phase: str,
                 opts: OpOptions, prefix: str, layer: int
                 ) -> tuple[Segment | None, list[Segment], Segment, list[Segment]]:
    """One pass of the MoE block on a rank holding `tokens` tokens of the micro-batch: (the gate, the dispatch
    side, the block's compute segment, the combine side), the sides as `workloads.moe_dispatch.dispatch_segments`
    gives them (the all-to-all, with the ETP all-gather or reduce-scatter under expert tensor parallelism; or the
    allgather dispatcher's collectives), each in the order it runs. The weight-gradient pass has no collectives
    and no gate of its own (None).

    The gate: what `mlp` holds on entry (the FFN norm) and the router (its GEMM and top-k) and, under an FP8
    dispatch, the cast of its payload: the dispatch needs them, so they run before it in the forward, and their
    backward after the dispatch's (`layer_ops` orders them). It is named as the attention half of the pass
    ("attn(F)", "attn(B)"), where DeepSeek's overlapped pair runs it: its trace (profile-data train.json) launches
    every forward router GEMM, top-k, group-limited routing and auxiliary-statistics kernel, and every router
    backward GEMM, under the attention annotations.

    Forward: dispatch (FP8 payload under the FP8 recipe) -> experts -> combine (BF16); backward runs
    combine(B) (the output gradients, FP8 under the blockwise recipe) -> experts(B) -> dispatch(B) (the input
    gradients, BF16), as `workloads.moe_dispatch` sends them. The busiest EP rank keeps
    `opts.kept_imbalance` times the mean rows (imbalance, capped by the capacity factor); under ETP every rank of
    an expert's etp group multiplies all of the group's rows by its e / etp slice of the weights."""
    h, tp = model.hidden, p.tp
    local_tokens = tokens // tp if p.sequence_parallel else tokens
    local_experts = moe.n_routed_experts // p.ep
    rows = expert_rows(local_tokens, moe, p, opts)  # rows the busiest rank of the EP group multiplies
    rows_per_expert = max(1, round(rows / local_experts))
    if phase != "W":
        mlp.elementwise("router.topk", 2 * local_tokens * moe.n_routed_experts * FP32)
    mlp.gemm("router", local_tokens, moe.n_routed_experts, h, low_precision=False)
    e = moe.expert_intermediate // p.etp  # w13 column-parallel, w2 row-parallel over the etp group
    # An FP8 all-to-all dispatch carries the up-projection's input already cast (DeepSeek-V3 sec. 3.3.3): the
    # cast runs on the rank's own tokens before the dispatch, not on the expanded rows (`memory_ops`).
    fp8_payload = opts.fp8 and p.moe_dispatch == "alltoall"
    executed = rows_per_expert * local_experts
    recv = received_tokens(executed, moe, p)
    if phase == "F" and fp8_payload:
        mlp.elementwise("dispatch.quant", mlp._quant_bytes(local_tokens, 2 * e, h))
    gate = None
    if phase != "W":
        gate, mlp.ops = Segment(f"attn({phase})", "compute", tuple(mlp.ops), layer), []
    # The backward's combine carries the output gradients already cast (FP8 1x128, the sender's own tokens:
    # `moe_dispatch.combine_bytes_per_row`), so w2's input-gradient GEMM takes them as they arrive, and only the
    # column-wise copy its weight gradient needs is made from them (read and write FP8, 2 bytes an element).
    fp8_grads = fp8_payload and phase == "B" and opts.fp8_recipe == "blockwise"
    if fp8_grads:
        mlp.elementwise("combine_grad.quant", local_tokens * h * (BF16 + FP8))
    if phase != "W":
        moe_permute(mlp, executed, recv, dispatch_bytes_per_row(h, "F", opts) if phase == "F" and fp8_payload
                    else combine_bytes_per_row(h, "B", opts) if fp8_grads else h * BF16)
    mlp.gemm("experts.w13", rows_per_expert, 2 * e, h, groups=local_experts, cast=not (fp8_payload and phase == "F"))
    if phase != "W" and blockwise_caches(opts):
        swiglu_input_cache(mlp, executed, 2 * e, phase)
    if phase != "W":
        mlp.elementwise("experts.swiglu", 3 * rows_per_expert * local_experts * e * BF16 * (1 if phase == "F" else 2))
    if phase == "B" and blockwise_caches(opts):  # the gate weights multiply the SwiGLU output there (`memory_ops`)
        gate_weight_grad(mlp, executed, e)
    mlp.gemm("experts.w2", rows_per_expert, h, e, groups=local_experts, cast=not fp8_grads)
    if fp8_grads:
        mlp.elementwise("experts.w2.quant", executed * h * 2 * FP8)
    if phase != "W":
        moe_unpermute(mlp, executed, recv, h)
    if moe.n_shared_experts:
        dense_ffn_ops(mlp, moe.n_shared_experts * moe.expert_intermediate, h, local_tokens, 1,
                      name="shared")  # experts: SwiGLU
        if phase == "F":  # routed + shared outputs (model.py `y + z`); the backward hands both the same gradient
            branch_add(mlp, "experts.add", local_tokens, h)
    if phase != "W":  # the block's residual (forward) and its input gradient's two paths (backward)
        branch_add(mlp, "residual", local_tokens, h)
    mlp_seg = mlp.segment(f"mlp({phase})", layer)
    if phase == "W":
        return None, [], mlp_seg, []
    dispatch, combine = dispatch_segments(prefix, phase, h, moe, p, local_tokens, opts, layer)
    return gate, dispatch, mlp_seg, combine
