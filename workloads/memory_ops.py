"""Memory-bound work of a layer besides its norms, activations, RoPE and GEMM-input casts (`workloads.layer_ops`,
`workloads.moe_ops`): the MoE token permutation around the grouped GEMMs, the residual additions, MLA's q / k
assembly, and the FP8 activation caches of DeepSeek-V3's blockwise recipe. Each function appends its ops to a
pass builder; their bytes come from the model's shapes, each with its source below.

Sources (public):
- MoE permutation. DeepGEMM's m-grouped contiguous layout (deepseek-ai/DeepGEMM README): the grouped GEMM takes
  one tensor in which each expert's rows are contiguous, so the tokens a rank receives must be expanded into it;
  DeepEP (deepseek-ai/DeepEP README, `Buffer.dispatch`) delivers each token once per destination rank with the
  indices and weights of its top-k experts there, and `Buffer.combine` takes one row per received token, so the
  expert outputs of a token's local experts must be summed (weighted by their gate values) into that row first.
  DeepSeek-V3's inference/model.py states the same block as `y[idx] += expert(x[idx]) * weights[idx, top, None]`
  followed by `y + z` (routed plus shared experts).
- Residual additions: inference/model.py `Block.forward`, `x = x + self.attn(...)` and `x = x + self.ffn(...)`.
- MLA q / k assembly: inference/model.py `MLA.forward` (attn_impl "naive", the form a training attention kernel
  with one q / k head dimension takes): `q = torch.cat([q_nope, q_pe], dim=-1)` and
  `k = torch.cat([k_nope, k_pe.expand(-1, -1, n_local_heads, -1)], dim=-1)`.
- FP8 caches: DeepSeek-V3 technical report (arXiv 2412.19437) sec. 3.3.3, "Low-Precision Storage and
  Communication": the inputs of the Linear after the attention operator are cached in a customised E5M6 format,
  and the inputs of the MoE SwiGLU are cached in FP8 with the fine-grained (1x128) quantisation and its output
  recomputed in the backward; the activation before the MoE up-projection is quantised to FP8 before the dispatch.
- FP8 weight transposes for the input-gradient GEMMs and the gate weights' gradient: the kernels of DeepSeek's
  traced backward chunk (deepseek-ai/profile-data `train.json`, kernel names) with their reasons below
  (`fp8_weight_transpose_bytes`, `gate_weight_grad`); docs/memory_ops_trace.md maps every memory-bound kernel
  family of that trace to these ops.
"""

from __future__ import annotations

import math

from gpuhours.workloads.model import AttentionSpec, MoESpec
from gpuhours.workloads.ops import BF16, FP8, FP32, OpOptions, PassBuilder
from gpuhours.workloads.parallel import ParallelSpec

E5M6 = 1.5  # bytes per element of DeepSeek-V3's E5M6 cache format (1 sign + 5 exponent + 6 mantissa bits)
SCALE_BLOCK = 128  # elements per FP32 scale in the 1x128 activation tiles (arXiv 2412.19437 sec. 3.3.2)


def fp8_row_bytes(width: int) -> float:
    """One row of `width` elements cast to FP8 with its 1x128 FP32 scales (as `ops.fp8_bytes_per_token`)."""
    return width + FP32 * math.ceil(width / SCALE_BLOCK)


def distinct_ranks(ep: int, experts: int, top_k: int) -> float:
    """Expected number of EP ranks a token's top_k experts fall on, its experts drawn uniformly without
    repetition from `experts` spread evenly over `ep` ranks: one minus the chance that none of the k lands on a
    given rank, summed over ranks, ep x (1 - C(experts - experts/ep, k) / C(experts, k)).
    Assumption: uniform routing; node-limited routing (at most M nodes a token) concentrates a token's experts on
    fewer ranks and lowers this a little (about 5% for DeepSeek-V3's 8 of 256 on EP64, M = 4)."""
    if ep < 1 or experts % ep or not 1 <= top_k <= experts:
        raise ValueError(f"ep ({ep}) must divide the routed experts ({experts}) and top_k ({top_k}) be in "
                         f"1..experts")
    per = experts // ep
    return ep * (1.0 - math.comb(experts - per, top_k) / math.comb(experts, top_k))


def received_tokens(rows: float, moe: MoESpec, p: ParallelSpec) -> float:
    """Token copies a rank receives for its `rows` expert rows: one per (token, destination rank) pair, so
    rows x distinct ranks per token / top_k (DeepEP's dispatch; with ep = 1 the rank's own tokens)."""
    return rows * distinct_ranks(p.ep, moe.n_routed_experts, moe.top_k) / moe.top_k


def moe_permute(b: PassBuilder, rows: float, recv: float, row_bytes: float) -> None:
    """Expand the received tokens into the grouped GEMM's contiguous per-expert rows (op `experts.permute`): read
    `recv` token rows, write `rows` expert rows, each `row_bytes` as it travelled. Forward: the dispatched payload
    (`moe_dispatch.dispatch_bytes_per_row`); backward: the output gradients the combine's backward delivers
    (`moe_dispatch.combine_bytes_per_row`). The gate weights of the backward are applied in the same pass
    (Assumption: fused)."""
    b.elementwise("experts.permute", (recv + rows) * row_bytes)


def moe_unpermute(b: PassBuilder, rows: float, recv: float, hidden: int) -> None:
    """Sum each received token's local expert rows back into one row for the combine (op `experts.unpermute`):
    read `rows` BF16 rows, write `recv`. Forward: the w2 outputs weighted by their gate values; backward: the w13
    input gradients of the expanded rows, summed per token before the dispatch's backward sends them. The gate
    weights' own gradient (one dot product per row) is not counted. Assumption: weights applied in the same pass."""
    b.elementwise("experts.unpermute", (rows + recv) * hidden * BF16)


def branch_add(b: PassBuilder, name: str, tokens: int, hidden: int, inputs: int = 2) -> None:
    """An element-wise sum of `inputs` BF16 tensors of tokens x hidden into one (op `<name>`): read `inputs`,
    write one. Forward: a residual addition (x + f(x)), or the routed plus shared experts' outputs; backward: the
    gradient reaching a block's input by two paths (the residual and the norm's input gradient) summed by
    autograd. A parallel block (x + attn + mlp) has one three-input sum each way."""
    b.elementwise(name, (inputs + 1) * tokens * hidden * BF16)


def mla_qk_assembly(b: PassBuilder, a: AttentionSpec, tokens: int, heads: int, phase: str) -> None:
    """MLA's q / k assembly around the attention core (op `qk_cat`), BF16, `heads` local heads.

    Forward: q = cat(q_nope, q_pe) reads and writes tokens x heads x qk_head_dim; k = cat(k_nope, k_pe broadcast
    over heads) reads heads x nope + rope (the shared rope key once) and writes heads x qk_head_dim a token.
    Backward (autograd of the same statements): q's split backward concatenates dq_nope and the rotated dq_pe
    again (read and write heads x qk_head_dim); the broadcast's backward sums dk_pe over the heads (read heads x
    rope, write rope); kv's split backward concatenates dk_nope and dv into wkv_b's output layout (read and write
    heads x (nope + v))."""
    nope, rope, v = a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim
    qk = nope + rope
    if phase == "F":
        per_token = 2 * heads * qk + (heads * nope + rope + heads * qk)
    else:
        per_token = 2 * heads * qk + (heads * rope + rope) + 2 * heads * (nope + v)
    b.elementwise("qk_cat", tokens * per_token * BF16)


def attn_output_cache(b: PassBuilder, tokens: int, width: int, phase: str) -> None:
    """The attention output (the input of the output projection, tokens x width) cached in E5M6 (DeepSeek-V3
    sec. 3.3.3): forward `o_cache.quant` reads it in BF16 and writes E5M6; backward `o_cache.dequant` reads the
    E5M6 copy and writes BF16 for the core's backward. Assumption: separate kernels, the scales not counted."""
    name = "o_cache.quant" if phase == "F" else "o_cache.dequant"
    b.elementwise(name, tokens * width * (BF16 + E5M6))


def swiglu_input_cache(b: PassBuilder, rows: float, width: int, phase: str) -> None:
    """The MoE SwiGLU input (rows x width, the w13 output) cached in FP8 with 1x128 scales (DeepSeek-V3 sec.
    3.3.3): forward `experts.swiglu_in.quant` reads BF16 and writes FP8 + scales; backward
    `experts.swiglu_in.dequant` reads FP8 + scales and writes BF16 for the SwiGLU's recomputation and backward.
    Assumption: separate kernels (a backward fused with the SwiGLU would instead read the FP8 copy directly)."""
    name = "experts.swiglu_in.quant" if phase == "F" else "experts.swiglu_in.dequant"
    b.elementwise(name, rows * (width * BF16 + fp8_row_bytes(width)))


def blockwise_caches(opts: OpOptions) -> bool:
    """Whether DeepSeek-V3's low-precision activation caches apply: FP8 training under the blockwise recipe."""
    return opts.fp8 and opts.fp8_recipe == "blockwise"


def fp8_weight_transpose_bytes(n: int, k: int) -> float:
    """HBM bytes of the FP8 weight copy an input-gradient GEMM needs under the blockwise recipe (op
    `<gemm>.weight_t`, one per FP8 linear, `PassBuilder.gemm` in phase B): read the n x k FP8 weight and
    write it transposed, 2 bytes an element (its 128x128 block scales, 1/16384 of the elements, not counted).

    Why it exists: Hopper's FP8 tensor-core MMA (wgmma) takes both FP8 operands K-major (NVIDIA PTX ISA,
    "wgmma.mma_async": transposition only for 16-bit types), and the 128x128 block-quantised weight (DeepSeek-V3
    report sec. 3.3.2) is stored K-major for the forward (K = the input width); the input gradient contracts over
    the output width, so it needs the weight transposed. DeepSeek's traced backward chunk runs one FP8
    `batched_transpose` kernel per FP8 linear per layer (36 = 4 layers x (5 attention + 2 shared + 2 routed
    expert projections, the experts' batched)). Assumption: done each backward (as traced), not cached per step."""
    return 2 * n * k * FP8  # read once and written once


def gate_weight_grad(b: PassBuilder, rows: float, width: int) -> None:
    """Gradient of the routed experts' gate weights (op `experts.gate_weight.grad`, backward only), where the
    weights multiply the SwiGLU output, as DeepSeek's training kernels do (the trace's
    `swiglu_forward_with_weight...` forward and `swiglu_weight_backward_with_weight` backward, one per layer):
    y_r = w_r s_r with s = SwiGLU(x) (rows x width), so dw_r = sum_j dy_rj s_rj, one dot product a row. It
    reads the recomputed SwiGLU output and the output gradient (BF16 rows x width each) and writes one FP32 per
    row: rows x (2 x width x BF16 + FP32). Assumption: the SwiGLU output is read from HBM as written by the fused
    SwiGLU backward (w2's weight gradient needs it anyway), not recomputed in this kernel."""
    b.elementwise("experts.gate_weight.grad", rows * (2 * width * BF16 + FP32))
