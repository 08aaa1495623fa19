"""Element-wise work as unfused PyTorch eager ops (`OpOptions.elementwise_kernels = "eager"`, issue 15).

The default decomposition (`workloads.layer_ops`, `ops.dense_ffn_ops`) counts each norm, RoPE and activation as
one fused kernel (read the input once, write the output once). A model written in plain PyTorch and run without
a compiler launches one kernel per tensor op instead, each reading its inputs from HBM and writing its output, and
autograd runs one or more kernels per op backwards. This module lists those kernels, one `Op` each (so
`hwmodels.launch` counts one kernel per op), with the HBM bytes of each as a formula.

Source of the ops: torchtitan 9dec370 (2024-12-26, the commit the torchtitan-2024 validation cases cite):
- RMSNorm, torchtitan/models/norms.py lines 96-101:
      _norm(x) = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
      forward(x) = self._norm(x.float()).type_as(x) * self.weight
  (train_configs/llama3_8b.toml: norm_type = "rmsnorm", not the Triton "fused_rmsnorm").
- RoPE, torchtitan/models/llama/model.py lines 108-113 (apply_rotary_emb): xq.float() viewed as complex,
  multiplied by the complex64 freqs_cis, viewed as real and cast back with type_as; the same for xk.
- repeat_kv, model.py lines 116-125 and 201-202: unsqueeze / expand / reshape of xk and xv to the query heads;
  the reshape of an expanded tensor materialises a copy (K and V each).
- FeedForward, model.py line 253: w2(F.silu(w1(x)) * w3(x)): one silu kernel, one multiply.
Backward kernels: PyTorch's autograd formulas (tools/autograd/derivatives.yaml): mul -> grad * other for each
input that needs a gradient (a broadcast input's gradient summed to its shape), rsqrt -> -0.5 * grad *
result.pow(3), pow(x, 2) -> grad * (2 * x.pow(1)) (pow_backward in FunctionsManual.cpp), mean -> grad expanded and
divided by the row width, _to_copy (float() / type_as) -> the gradient cast back to the input's dtype, silu ->
silu_backward (one kernel reading grad and input), view_as_complex / view_as_real / reshape of a contiguous
tensor -> views (no kernel), expand -> sum over the expanded dimension; a tensor used twice gets its two
gradients summed by autograd (one add).

Byte counts: every kernel reads each input once and writes its output once (BF16 2 bytes, FP32 4, complex64 8
per complex element = 4 per real element); tensors of N = rows x width elements, R = rows (per-row statistics,
FP32), w = width (the norm's gain, BF16 under FSDP's bf16 param_dtype).
Assumptions: a per-row (R) or per-channel (w) operand broadcast over N is read once; freqs_cis (seq x
head_dim / 2 complex64, broadcast over batch and heads) is not counted (at most 1/(batch x heads) of x's
bytes); PyTorch's pow with exponent 1 (inside pow's backward) runs one copy kernel; SDPA's output
transpose(1, 2).contiguous() is already contiguous (the flash backend returns it in (batch, seq, heads, dim)
layout), so no kernel. torch.compile'd runs are not this: they keep the fused default.
Pricing: the kernels' names carry no element-wise class (`hwmodels.compute.elementwise_class`), so they run at
the calibration profile's general element-wise bandwidth efficiency (trace-h800: 0.56 of HBM bandwidth, measured
on DeepSeek's fused kernels); plain PyTorch element-wise kernels on large tensors may run nearer peak.
"""

from __future__ import annotations

from gpuhours.workloads.ops import BF16, FP32

ELEMENTWISE_KERNELS = ("fused", "eager")

C64 = 2 * FP32  # one complex64 element: two FP32


def _check(phase: str) -> None:
    if phase not in ("F", "B"):
        raise ValueError(f"phase must be one of F, B (element-wise ops have no weight-gradient pass); got {phase!r}")


def rmsnorm_kernels(phase: str, rows: int, width: int) -> tuple[tuple[str, float], ...]:
    """torchtitan's RMSNorm as eager kernels (name, HBM bytes), N = rows x width, R = rows, w = width.

    Forward (8 kernels, 36 N + 24 R + 2 w):
      to_fp32     x.float()                      read 2N, write 4N      6N
      pow         x.pow(2)                       read 4N, write 4N      8N
      mean        .mean(-1, keepdim=True)        read 4N, write 4R      4N + 4R
      add_eps     + eps                          read 4R, write 4R      8R
      rsqrt       torch.rsqrt                    read 4R, write 4R      8R
      mul_rsqrt   x * rsqrt(...)                 read 4N + 4R, write 4N 8N + 4R
      to_bf16     .type_as(x)                    read 4N, write 2N      6N
      mul_weight  * self.weight                  read 2N + 2w, write 2N 4N + 2w
    Backward (16 kernels, 92 N + 40 R + 4 w), autograd in reverse order:
      mul_weight.grad_input   g * weight          read 2N + 2w, write 2N   4N + 2w
      mul_weight.grad_weight  g * y               read 4N, write 2N        6N
      mul_weight.grad_sum     sum over rows       read 2N, write 2w        2N + 2w
      to_bf16.grad            g.float()           read 2N, write 4N        6N
      mul_rsqrt.grad_x        g * r               read 4N + 4R, write 4N   8N + 4R
      mul_rsqrt.grad_r        g * x               read 8N, write 4N        12N
      mul_rsqrt.grad_sum      sum(-1)             read 4N, write 4R        4N + 4R
      rsqrt.grad_pow          r.pow(3)            read 4R, write 4R        8R
      rsqrt.grad_scale        -0.5 * g            read 4R, write 4R        8R
      rsqrt.grad_mul          product             read 8R, write 4R        12R
      mean.grad               g expanded / width  read 4R, write 4N        4N + 4R
      pow.grad_pow            x.pow(1) (a copy)   read 4N, write 4N        8N
      pow.grad_scale          2 * x               read 4N, write 4N        8N
      pow.grad_mul            g * (2 x)           read 8N, write 4N        12N
      accumulate              the two grads of x  read 8N, write 4N        12N
      to_fp32.grad            g.to(bf16)          read 4N, write 2N        6N
    (add eps: the gradient passes through, no kernel.)"""
    _check(phase)
    n, r, w = rows * width, rows, width
    if phase == "F":
        return (("to_fp32", (BF16 + FP32) * n), ("pow", 2 * FP32 * n), ("mean", FP32 * n + FP32 * r),
                ("add_eps", 2 * FP32 * r), ("rsqrt", 2 * FP32 * r), ("mul_rsqrt", 2 * FP32 * n + FP32 * r),
                ("to_bf16", (FP32 + BF16) * n), ("mul_weight", 2 * BF16 * n + BF16 * w))
    return (("mul_weight.grad_input", 2 * BF16 * n + BF16 * w), ("mul_weight.grad_weight", 3 * BF16 * n),
            ("mul_weight.grad_sum", BF16 * n + BF16 * w), ("to_bf16.grad", (BF16 + FP32) * n),
            ("mul_rsqrt.grad_x", 2 * FP32 * n + FP32 * r), ("mul_rsqrt.grad_r", 3 * FP32 * n),
            ("mul_rsqrt.grad_sum", FP32 * n + FP32 * r), ("rsqrt.grad_pow", 2 * FP32 * r),
            ("rsqrt.grad_scale", 2 * FP32 * r), ("rsqrt.grad_mul", 3 * FP32 * r),
            ("mean.grad", FP32 * n + FP32 * r), ("pow.grad_pow", 2 * FP32 * n), ("pow.grad_scale", 2 * FP32 * n),
            ("pow.grad_mul", 3 * FP32 * n), ("accumulate", 3 * FP32 * n), ("to_fp32.grad", (FP32 + BF16) * n))


def rope_kernels(phase: str, rows: int, width: int) -> tuple[tuple[str, float], ...]:
    """apply_rotary_emb on one tensor (xq or xk) of rows x width BF16 elements, N = rows x width (3 kernels each
    way, 20 N each way).
    Forward:  to_fp32  xq.float()            read 2N, write 4N              6N
              mul      xq_ * freqs_cis       read 4N (N/2 complex64), write 4N   8N
              to_bf16  .type_as(xq)          read 4N, write 2N              6N
    Backward: to_bf16.grad  g.float() 6N; mul.grad  g * conj(freqs_cis) 8N (freqs_cis needs no gradient);
              to_fp32.grad  g.to(bf16) 6N. The view_as_complex / view_as_real / flatten steps are views."""
    _check(phase)
    n = rows * width
    cplx = C64 // 2 * n  # N real FP32 values = N / 2 complex64
    if phase == "F":
        return (("to_fp32", (BF16 + FP32) * n), ("mul", 2 * cplx), ("to_bf16", (FP32 + BF16) * n))
    return (("to_bf16.grad", (BF16 + FP32) * n), ("mul.grad", 2 * cplx), ("to_fp32.grad", (FP32 + BF16) * n))


def repeat_kv_kernels(phase: str, rows: int, kv_width: int, q_width: int) -> tuple[tuple[str, float], ...]:
    """repeat_kv on xk and xv (K, V: rows x kv_width BF16 each, repeated to rows x q_width): forward one copy each
    (read 2 rows kv_width, write 2 rows q_width); backward the expand's gradient summed over the repeats (read
    2 rows q_width, write 2 rows kv_width). None when kv_width == q_width (n_rep 1 returns x itself)."""
    _check(phase)
    if kv_width == q_width:
        return ()
    nbytes = BF16 * rows * (kv_width + q_width)
    suffix = "" if phase == "F" else ".grad"
    return ((f"repeat_k{suffix}", nbytes), (f"repeat_v{suffix}", nbytes))


def swiglu_kernels(phase: str, rows: int, inter: int) -> tuple[tuple[str, float], ...]:
    """silu(w1 x) * w3 x on rows x inter BF16 tensors, N = rows x inter.
    Forward (2 kernels, 10 N):  silu  read 2N, write 2N  4N;  mul  read 4N, write 2N  6N.
    Backward (3 kernels, 18 N): mul.grad_a  g * w3x  6N;  mul.grad_b  g * silu(w1x)  6N;
                                silu.grad  silu_backward(g, w1x)  read 4N, write 2N  6N."""
    _check(phase)
    n = rows * inter
    if phase == "F":
        return (("silu", 2 * BF16 * n), ("mul", 3 * BF16 * n))
    return (("mul.grad_a", 3 * BF16 * n), ("mul.grad_b", 3 * BF16 * n), ("silu.grad", 3 * BF16 * n))


def emit(b, name: str, kernels: tuple[tuple[str, float], ...]) -> None:
    """Append one element-wise op per kernel to pass builder `b`, named "<name>.<kernel>"."""
    for kernel, nbytes in kernels:
        b.elementwise(f"{name}.{kernel}", nbytes)


def check_elementwise_kernels(value: str) -> str:
    if value not in ELEMENTWISE_KERNELS:
        raise ValueError(f"elementwise_kernels must be one of {', '.join(ELEMENTWISE_KERNELS)}; got {value!r}")
    return value


def norm_ops(b, name: str, rows: int, width: int, elementwise: str, norm: str = "rmsnorm") -> None:
    """A layer norm of rows x width on builder `b` (nothing in a weight-gradient pass): the fused default, one op
    reading and writing the BF16 tensor (2 x rows x width x BF16, `layer_ops._attention_ops`), or under "eager"
    torchtitan's RMSNorm kernels (`rmsnorm_kernels`). nn.LayerNorm is one ATen kernel each way in eager
    (native_layer_norm / native_layer_norm_backward), so a LayerNorm keeps the fused op."""
    if b.phase == "W":
        return
    if elementwise == "eager" and norm == "rmsnorm":
        emit(b, name, rmsnorm_kernels(b.phase, rows, width))
    else:
        b.elementwise(name, 2 * rows * width * BF16)


def gqa_rope_ops(b, tokens: int, q_width: int, kv_width: int, rotary: bool = True) -> None:
    """RoPE on q and k (when `rotary`), then repeat_kv of k and v, as eager kernels (`rope_kernels`,
    `repeat_kv_kernels`); nothing in a weight-gradient pass."""
    if b.phase == "W":
        return
    if rotary:
        emit(b, "rope.q", rope_kernels(b.phase, tokens, q_width))
        emit(b, "rope.k", rope_kernels(b.phase, tokens, kv_width))
    emit(b, "attn", repeat_kv_kernels(b.phase, tokens, kv_width, q_width))


def not_llama_block(model, layer: int) -> str | None:
    """What makes the layer other than torchtitan's Llama block (GQA / MHA attention, dense SwiGLU FFN), or None:
    the scope of the torchtitan-derived counts here and in `workloads.op_sac`."""
    if model.attention.kind == "mla":
        return "MLA attention"
    if model.is_moe_layer(layer):
        return "MoE layers"
    if model.ffn_activation != "swiglu":
        return f"the {model.ffn_activation} activation"
    return None


def check_eager_model(model, layer: int) -> None:
    """"eager" element-wise kernels are counted from torchtitan's Llama (GQA / MHA attention with full RoPE, dense
    SwiGLU FFN, RMSNorm or LayerNorm); other blocks have no eager decomposition here."""
    what = not_llama_block(model, layer)
    if what is None and model.positions == "rotary" and model.rotary_pct != 1.0:
        what = "partial RoPE (rotary_pct < 1)"
    if what is not None:
        raise ValueError(f"elementwise_kernels 'eager' is modelled for dense Llama-style layers (GQA, SwiGLU, full "
                         f"RoPE) only; this model has {what}: use elementwise_kernels 'fused'")
