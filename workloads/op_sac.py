"""torchtitan's op-level selective activation checkpointing (`selective_ac_option = "op"`), recompute policy
"torchtitan-op" (`workloads.recompute`): what it runs again in the backward (`again`, priced by
`workloads.layer_ops`) and what it keeps (`kept_terms`, used by `workloads.memory.layer_terms`).

Source: torchtitan 9dec370 (2024-12-26), torchtitan/parallelisms/parallelize_llama.py lines 214-271:
- `_save_list` = {aten.mm, aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention,
  _c10d_functional.reduce_scatter_tensor, aten.abs, aten.max}.
- `_custom_policy`: a counter per pass kind ("forward_mm_count" / "recompute_mm_count") is incremented on every
  aten.mm; an op is MUST_SAVE when it is in `_save_list`, except an aten.mm whose count is even; every other op
  is PREFER_RECOMPUTE.
- `selective_checkpointing_context_fn` builds a fresh `meta = defaultdict(int)` for every checkpoint call, and
  each TransformerBlock is wrapped on its own (`apply_ac`), so the count restarts at 1 in every block and in
  every block's recomputation.
The block's aten.mm in execution order (torchtitan/models/llama/model.py 9dec370: line 189
`xq, xk, xv = self.wq(x), self.wk(x), self.wv(x)`, line 214 `self.wo(output)`, line 253
`self.w2(F.silu(self.w1(x)) * self.w3(x))`, Python evaluating silu(w1 x) before w3 x; nn.Linear without bias on
a 3-D input runs aten.mm): wq 1, wk 2, wv 3, wo 4, w1 5, w3 6, w2 7. So the outputs of wq, wv, w1, w2 and of SDPA
(its output and log-sum-exp: all of the op's outputs are stored) are kept, and wk, wo and w3 run again.

What the backward runs again (`again`), at the start of the block's backward (the non-reentrant checkpoint
recomputes on the first unpack of a saved tensor of the block), in forward order and priced as forward ops:
- the GEMMs wk (tokens x kv_heads d x h), wo (tokens x h x heads d) and w3 (tokens x i x h): the simulator's
  fused wqkv and w13 GEMMs are split for this, only the wk and w3 parts run again;
- every element-wise op of the block's forward as the layer builds it (the two norms, RoPE, the attention
  residual add, the SwiGLU; under `elementwise_kernels = "eager"` the eager kernels of `workloads.eager_ops`,
  repeat_kv's copies included; under FP8 the input casts), so the recomputation composes with either;
- not the attention core (the SDPA op is in `_save_list`) and not the FFN's residual add: PyTorch's checkpoint
  stops recomputing once every tensor the backward needs is regenerated (torch.utils.checkpoint,
  `_checkpoint_early_stop`, on by default), and the block's last op (out = h + ffn) saves nothing.
  Assumption: the recomputation's element-wise ops are priced as the forward's, also for torch.compile'd runs
  (whether Inductor fuses them into the backward's kernels is not modelled). Under Float8 with dynamic scaling
  the amax results (aten.abs, aten.max: in `_save_list`) are kept, so the recomputed FP8 casts need not read
  their input for it again; they are priced as the forward's casts, amax read included (a small overcount).

What the block keeps per token (`kept_terms`, BF16: the ops' outputs as produced, also under Float8 training,
whose Float8Linear returns the mm's BF16 output): the block input (the checkpoint's input) h, wq's output H d, wv's
output H_kv d, SDPA's output H d and its log-sum-exp 4 H (FP32), w1's output i, w2's output h. Dropped: the norm
outputs, the residual sum h_mid, wk's output, the rotated and repeated q / k / v, w3's output (the simulator's
"none" terms x_norm, h_mid, h_norm and the wk / w3 parts of qkv and swiglu_in).

Scope: torchtitan's Llama block (GQA / MHA attention, dense SwiGLU FFN, sequential residuals) on a rank without
tensor or context parallelism (the torchtitan op-SAC measurements are FSDP runs). Under tensor parallelism the
policy would also run the sequence-parallel all-gathers again and keep the reduce-scatter outputs and the w2
partial sums; under context parallelism the SDPA op is the ring implementation's: neither is modelled, and
both are refused (ValueError).
"""

from __future__ import annotations

from dataclasses import replace

from gpuhours.workloads.eager_ops import not_llama_block
from gpuhours.workloads.ops import BF16, FP32, Op, PassBuilder, Segment

POLICY = "torchtitan-op"

# torchtitan's Llama block: its aten.mm in execution order (model.py lines 189, 214, 253)
MM_ORDER = ("wq", "wk", "wv", "wo", "w1", "w3", "w2")


def recomputed_mms() -> tuple[str, ...]:
    """The block's mms `_custom_policy` does not save: those with an even count (1-based, per block)."""
    return tuple(name for count, name in enumerate(MM_ORDER, start=1) if count % 2 == 0)


def check_op_sac(model, p, layer: int) -> None:
    """Raise a ValueError naming `recompute` when the layer or layout is outside the modelled scope."""
    what = not_llama_block(model, layer) or next((reason for bad, reason in (
        (model.parallel_block, "a parallel attention + FFN block"),
        (p.tp > 1, f"tensor parallelism (tp={p.tp})"),
        (p.cp > 1, f"context parallelism (cp={p.cp})")) if bad), None)
    if what is not None:
        raise ValueError(f"recompute '{POLICY}' (torchtitan's op-level SAC) is modelled for Llama-style dense layers "
                         f"(GQA, SwiGLU) with tp 1 and cp 1; this run has {what}: use recompute none, selective "
                         f"or full")


def _mm_ops(model, p, tokens: int, op: Op, fp8: bool, recipe: str) -> list[Op]:
    """The recomputed part of one forward GEMM op of the layer (empty when none of it runs again)."""
    prefix, _, name = op.name.rpartition(".")
    a, h = model.attention, model.hidden
    b = PassBuilder(prefix, op.module, "F", fp8, recipe)
    # cast=False: the FP8 casts of the GEMMs' inputs are forward element-wise ops, run again as such
    if name == "wqkv":
        b.gemm("wk", tokens, a.n_kv_heads * a.head_dim, h, cast=False)
    elif name == "wo":
        b.gemm("wo", tokens, h, a.n_heads * a.head_dim, cast=False)
    elif name == "w13":
        b.gemm("w3", tokens, model.dense_intermediate, h, cast=False)
    return b.ops


def again(forward: list[Segment], model, p, layer: int, tokens: int, fp8: bool, recipe: str) -> list[Segment]:
    """The layer's forward ops the backward runs again under "torchtitan-op" (module docstring), segment by
    segment in forward order with their forward names (empty segments dropped); `layer_ops` renames them."""
    check_op_sac(model, p, layer)
    out = []
    for seg in forward:
        ops: list[Op] = []
        for op in seg.ops:
            if op.kind == "gemm":
                ops.extend(_mm_ops(model, p, tokens, op, fp8, recipe))
            elif op.kind == "elementwise" and not (op.module == "mlp" and op.name.endswith(".residual")):
                ops.append(op)
        if ops:
            out.append(replace(seg, ops=tuple(ops)))
    return out


def kept_terms(model) -> dict[str, float]:
    """Bytes per token a Llama block keeps under "torchtitan-op" (module docstring), named like
    `workloads.memory.layer_terms`."""
    a, h = model.attention, model.hidden
    return {"attn.x_in": BF16 * h, "attn.q": BF16 * a.n_heads * a.head_dim, "attn.v": BF16 * a.n_kv_heads * a.head_dim,
            "attn.out": BF16 * a.n_heads * a.head_dim, "attn.lse": FP32 * a.n_heads,
            "ffn.w1_out": BF16 * model.dense_intermediate, "ffn.w2_out": BF16 * h}
