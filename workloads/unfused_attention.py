"""Megatron-LM's attention core before FlashAttention (`OpOptions.attention_impl = "megatron-unfused"`, issue 15).

Selected with `attention_kernel = "megatron-unfused"` (case key, plan `[numerics]`, `--attention-kernel`): the
runs of Narayanan et al. 2021 (SC21) and Korthikanti et al. 2022 used Megatron-LM's `ParallelAttention`, which
materialises the whole s x s score matrix of every head. Source: NVIDIA/Megatron-LM
`megatron/model/transformer.py` at 6985e58938 (Aug 2021, the SC21 code), `ParallelAttention.forward`, lines 260-330:

    matmul_result = torch.baddbmm(empty [b*np, sq, sk], q [b*np, sq, hn], k^T [b*np, hn, sk], beta=0, alpha=1/norm)
    attention_probs = self.scale_mask_softmax(attention_scores, attention_mask)      # FusedScaleMaskSoftmax
    attention_probs = self.attention_dropout(attention_probs)                        # torch.nn.Dropout
    context_layer = torch.bmm(attention_probs, value_layer)                          # [b*np, sq, hn]

Per rank (np = heads / tp, B = micro-batch, s = sequence) the core holds N = B np s^2 score elements in the
run's 16-bit type (FP16 on those runs; 2 bytes, `BF16` here):

Forward
- `core.qk`: batched GEMM, B np GEMMs of (s x d_qk) @ (d_qk x s): 2 B np s^2 d_qk FLOPs over the FULL s x s (no
  causal skipping: the mask is applied afterwards by the softmax); reads q, k, writes the scores 2N bytes
  (beta = 0: the preallocated buffer is not read).
- `core.softmax`: `ScaledUpperTriangMaskedSoftmax` (megatron/model/fused_softmax.py at 6985e58938, lines 20-50;
  its CUDA kernel, megatron/fused_kernels/scaled_upper_triang_masked_softmax.h, generates the causal mask from
  the row index: row r loads only its first r + 1 scores (`local_seq = blockIdx.x + 1`, lines 131-157) and stores
  the whole row, zeros above the diagonal (lines 205-224)): reads T = B np s (s + 1) / 2 16-bit scores, writes
  the N 16-bit probabilities, 2T + 2N bytes. (The fused kernel's constraint
  key_seq_len <= 2048 holds for every case here; above it Megatron falls back to unfused torch ops, not modelled.)
- `core.dropout`: torch.nn.Dropout(args.attention_dropout) on the probabilities (PyTorch's native_dropout: reads
  the input, writes the output and a 1-byte boolean mask): 2N + 2N + N = 5N bytes.
  Assumption: attention dropout is on (Megatron-LM's default --attention-dropout 0.1, megatron/arguments.py).
- `core.pv`: batched GEMM, B np GEMMs of (s x s) @ (s x d_v): 2 B np s^2 d_v FLOPs; reads the 2N probabilities.
Backward (autograd of the same ops, in reverse)
- `core.pv_dgrad` dP = dO V^T (s x d_v) @ (d_v x s): 2 B np s^2 d_v FLOPs, writes 2N; `core.pv_vgrad`
  dV = P^T dO (s x s) @ (s x d_v): 2 B np s^2 d_v FLOPs, reads 2N.
- `core.dropout_bwd`: PyTorch's native_dropout_backward, grad x mask x scale: reads 2N + N, writes 2N, 5N bytes.
- `core.softmax_bwd`: the same header's backward kernel (lines 251-325): reads the output gradient and the kept
  softmax output of the lower triangle (element_index < local_seq), writes the whole input-gradient row,
  2T + 2T + 2N bytes.
- `core.qk_dgrad` dQ = dS K and `core.qk_kgrad` dK = dS^T Q: (s x s) @ (s x d_qk) each, 2 B np s^2 d_qk FLOPs
  each, each reads dS (2N). (baddbmm's backward multiplies each by alpha; that s x d element-wise pass, under
  1/16 of N at d <= 128, s = 2048, is not charged.)
So the forward core is 2 B np s^2 (d_qk + d_v) FLOPs (twice the causal half a FlashAttention kernel does) and the
backward twice that: no QK^T recomputation, the scores' gradients come from the kept probabilities.

Pricing: a batched GEMM of B np problems (m x k) @ (k x n) is a `gemm` op of shape (B np m, n, k) at the profile's
GEMM efficiency for that shape (Assumption: a strided-batched GEMM runs as one GEMM with the batch's rows
stacked: the same output tiles, each with the same k loop; only the B operand's reuse across tiles differs);
their HBM bytes bound them by the roofline at full
bandwidth (at d = 64 on A100, 2 d = 128 FLOPs per 2-byte score is below the 200 FLOP/byte ridge: QK^T is memory-
bound there). The softmax and dropout passes are element-wise ops at the profile's general element-wise bandwidth.

Activations (`workloads.memory.chunk_bytes`, Korthikanti et al. 2022, arXiv 2205.05198, sec. 4.1, eq. 1): the
softmax output 2 a s^2 b, the dropout mask a s^2 b and the dropout output 2 a s^2 b, 5 a s^2 b bytes per layer
(/t under tensor parallelism, eq. 2), kept unless the core is recomputed ("selective", sec. 5: exactly these
terms) or the whole layer is ("full"). Under selective recomputation the backward first runs the four forward
ops again (Megatron-LM 2022's `_checkpointed_attention_forward` around `CoreAttention`), priced as forward ops.
"""

from __future__ import annotations

from gpuhours.workloads.ops import BF16, GemmShape, Op

ATTENTION_IMPLS = ("flash", "megatron-unfused")
UNFUSED = "megatron-unfused"
DROPOUT_MASK = 1  # bytes per element of PyTorch's boolean dropout mask
# Korthikanti et al. 2022 eq. 1: softmax output 2 + dropout mask 1 + dropout output 2 bytes per score element
KEPT_BYTES_PER_SCORE = 2 * BF16 + DROPOUT_MASK


def check_attention_impl(value: str) -> str:
    if value not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {', '.join(ATTENTION_IMPLS)}; got {value!r}")
    return value


def _gemm(prefix: str, name: str, phase: str, module: str, batch: int, m: int, n: int, k: int, nbytes: float) -> Op:
    return Op(f"{prefix}.{name}", "gemm", phase, module, 2.0 * batch * m * n * k, nbytes, "bf16",
              GemmShape(batch * m, n, k))  # the batch's rows stacked (module docstring)


def _ew(prefix: str, name: str, phase: str, module: str, nbytes: float) -> Op:
    return Op(f"{prefix}.{name}", "elementwise", phase, module, 0.0, nbytes)


def forward_ops(prefix: str, module: str, phase: str, micro_batch: int, heads: int, seq_len: int, d_qk: int,
                d_v: int) -> list[Op]:
    """The forward core's four ops (QK^T, softmax, dropout, PV), each of phase `phase` ("F", or "F" again when
    recomputed inside the backward)."""
    nb, s = micro_batch * heads, seq_len
    n = nb * s * s  # score elements
    tri = nb * s * (s + 1) // 2  # the causal lower triangle, diagonal included: what the softmax kernel reads
    q, k, v = nb * s * d_qk, nb * s * d_qk, nb * s * d_v
    return [
        _gemm(prefix, "core.qk", phase, module, nb, s, s, d_qk, (q + k) * BF16 + n * BF16),
        _ew(prefix, "core.softmax", phase, module, tri * BF16 + n * BF16),
        _ew(prefix, "core.dropout", phase, module, 2 * n * BF16 + n * DROPOUT_MASK),
        _gemm(prefix, "core.pv", phase, module, nb, s, d_v, s, n * BF16 + 2 * v * BF16),
    ]


def backward_ops(prefix: str, module: str, micro_batch: int, heads: int, seq_len: int, d_qk: int,
                 d_v: int) -> list[Op]:
    """The core's backward, in autograd order: PV's two gradients, dropout, softmax, QK^T's two gradients."""
    nb, s = micro_batch * heads, seq_len
    n = nb * s * s
    tri = nb * s * (s + 1) // 2
    q, v = nb * s * d_qk, nb * s * d_v
    return [
        _gemm(prefix, "core.pv_dgrad", "B", module, nb, s, s, d_v, 2 * v * BF16 + n * BF16),  # dO, V -> dP
        _gemm(prefix, "core.pv_vgrad", "B", module, nb, s, d_v, s, n * BF16 + 2 * v * BF16),  # P, dO -> dV
        _ew(prefix, "core.dropout_bwd", "B", module, 2 * n * BF16 + n * DROPOUT_MASK),  # dY, mask in; dX out
        _ew(prefix, "core.softmax_bwd", "B", module, 2 * tri * BF16 + n * BF16),
        _gemm(prefix, "core.qk_dgrad", "B", module, nb, s, d_qk, s, n * BF16 + 2 * q * BF16),  # dS, K -> dQ
        _gemm(prefix, "core.qk_kgrad", "B", module, nb, s, d_qk, s, n * BF16 + 2 * q * BF16),  # dS, Q -> dK
    ]


def core_ops(b, micro_batch: int, heads: int, seq_len: int, d_qk: int, d_v: int, recompute_core: bool) -> None:
    """Append the unfused core of builder `b`'s pass (`workloads.ops.PassBuilder`; nothing in the weight pass)."""
    if b.phase == "F":
        b.ops.extend(forward_ops(b.prefix, b.module, "F", micro_batch, heads, seq_len, d_qk, d_v))
    elif b.phase == "B":
        if recompute_core:
            b.ops.extend(forward_ops(f"{b.prefix}.recompute", b.module, "F", micro_batch, heads, seq_len, d_qk, d_v))
        b.ops.extend(backward_ops(b.prefix, b.module, micro_batch, heads, seq_len, d_qk, d_v))


def kept_score_bytes(micro_batch: int, heads_per_rank: int, seq_len: int) -> float:
    """Korthikanti et al. 2022 eq. 1-2: 5 a s^2 b / t bytes one layer keeps for the core's backward (a / t heads
    on the rank, b the micro-batch)."""
    return KEPT_BYTES_PER_SCORE * heads_per_rank * seq_len ** 2 * micro_batch


def check_unfused_layout(model, p) -> None:
    """The unfused core is modelled on whole sequences: Megatron-LM's ParallelAttention of 2021-22 had no context
    parallelism."""
    if p.cp > 1:
        raise ValueError(f"attention_kernel 'megatron-unfused' is modelled without context parallelism (Megatron-LM "
                         f"2021-22 had none); got cp {p.cp}: use cp 1 or another attention_kernel")
