"""Fine-grained FP8 (DeepSeek-V3 section 3.3): tile/block quantisation, a block-scaled GEMM, accumulation precision.

Quantisation to float8_e4m3fn (E4M3: 3 mantissa bits, largest finite 448 = torch.finfo(float8_e4m3fn).max):
  activations: one scale per 1 x 128 tile (a token's 128 consecutive channels of K)
  weights:     one scale per 128 x 128 block (N x K)
  scale = amax(|tile|) / 448 (online max-abs), q = e4m3(x / scale), x ~ q * scale.
Round-trip error per element (round to nearest): |x - q*scale| <= max(2^-4 |x|, 2^-10 scale), i.e. half an ulp
(2^-3 relative spacing of a 3-bit mantissa) for normals and half the subnormal spacing (2^-9) below 2^-6; since
|x| <= amax = 448 scale, the error is at most 2^-4 of the tile max.

GEMM C = A W^T on quantised operands: `torch.nn.functional.scaled_mm` with BlockWise1x128 x BlockWise128x128
scales when a probe shows the device and the installed torch run it correctly, else the reference
(dequantise both to float32, then matmul).

Accumulation: H800 tensor cores keep only about 14 significant bits when accumulating FP8 products (report);
DeepSeek-V3 copies the partial sums to FP32 registers every 128 elements of K. `simulate_accumulation` models both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(FP8).max            # 448
E4M3_MANTISSA_BITS = round(-math.log2(torch.finfo(FP8).eps))  # 3 (eps = 2^-3)
E4M3_MIN_NORMAL = torch.finfo(FP8).smallest_normal  # 2^-6
ACT_TILE = (1, 128)
WEIGHT_BLOCK = (128, 128)
REL_ROUNDING = 2.0 ** -(E4M3_MANTISSA_BITS + 1)                       # 2^-4: half an ulp, relative
ABS_ROUNDING = E4M3_MIN_NORMAL * 2.0 ** -(E4M3_MANTISSA_BITS + 1)     # 2^-10: half the subnormal spacing


@dataclass(frozen=True)
class Quantized:
    """FP8 data of the original 2-D shape plus float32 scales, one per block (ceil-divided shape)."""

    data: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        r, c = self.data.shape
        b0, b1 = self.block
        s = self.scale.repeat_interleave(b0, 0)[:r].repeat_interleave(b1, 1)[:, :c]
        return (self.data.to(torch.float32) * s).to(dtype)


def quantize_blocks(x: torch.Tensor, block: tuple[int, int]) -> Quantized:
    """Quantise a 2-D tensor per (block[0] x block[1]) block; edges are padded with zeros for the max only."""
    if x.dim() != 2:
        raise ValueError(f"x.dim() = {x.dim()}: quantize_blocks takes a 2-D tensor")
    b0, b1 = block
    if b0 < 1 or b1 < 1:
        raise ValueError(f"block = {block}: both sides must be >= 1")
    r, c = x.shape
    rp, cp = -(-r // b0) * b0, -(-c // b1) * b1
    xf = x.float()
    padded = F.pad(xf, (0, cp - c, 0, rp - r)) if (rp, cp) != (r, c) else xf
    amax = padded.view(rp // b0, b0, cp // b1, b1).abs().amax(dim=(1, 3))
    scale = amax.clamp(min=torch.finfo(torch.float32).tiny) / E4M3_MAX
    s = scale.repeat_interleave(b0, 0)[:r].repeat_interleave(b1, 1)[:, :c]
    q = (xf / s).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return Quantized(q, scale, (b0, b1))


def quantize_activation(x: torch.Tensor) -> Quantized:
    """Per 1x128 tile along the last dimension; x (..., K) is viewed as (tokens, K)."""
    return quantize_blocks(x.reshape(-1, x.shape[-1]), ACT_TILE)


def quantize_weight(w: torch.Tensor) -> Quantized:
    """Per 128x128 block of the (N, K) weight."""
    return quantize_blocks(w, WEIGHT_BLOCK)


def roundtrip_error_bound(x: torch.Tensor, q: Quantized) -> torch.Tensor:
    """Elementwise bound max(2^-4 |x|, 2^-10 scale) on |x - dequantize(q)| (see module docstring)."""
    r, c = x.shape
    b0, b1 = q.block
    s = q.scale.repeat_interleave(b0, 0)[:r].repeat_interleave(b1, 1)[:, :c]
    return torch.maximum(REL_ROUNDING * x.float().abs(), ABS_ROUNDING * s)


# -- GEMM ---------------------------------------------------------------------------------------------------------

def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _scaled_mm_blockwise(a: Quantized, w: Quantized, out_dtype: torch.dtype) -> torch.Tensor:
    """cuBLAS layout (torch >= 2.9, CUDA >= 12.9, sm90): A row-major with 1x128 scales (M, K/128) stored
    M-major; B = W^T column-major with 128x128 scales padded along K to a multiple of 4, shape (L4, N/128)."""
    sa = a.scale.t().contiguous().t()
    L = w.scale.shape[1]
    sb = F.pad(w.scale, (0, _round_up(L, 4) - L)).t()
    return F.scaled_mm(a.data, w.data.t(), sa, F.ScalingType.BlockWise1x128, sb, F.ScalingType.BlockWise128x128,
                       output_dtype=out_dtype)


def reference_gemm(a: Quantized, w: Quantized, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantise-then-matmul in float32: C = deq(A) deq(W)^T."""
    return (a.dequantize() @ w.dequantize().t()).to(out_dtype)


@lru_cache(maxsize=None)
def block_scaled_mm_supported(device: str) -> bool:
    """Probe: does scaled_mm run 1x128 x 128x128 block scaling here, and agree with the reference?"""
    if not hasattr(F, "scaled_mm") or not hasattr(F, "ScalingType"):
        return False
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return False
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(256, 512, generator=g).to(dev)
        w = torch.randn(384, 512, generator=g).to(dev)
        a, b = quantize_activation(x), quantize_weight(w)
        out = _scaled_mm_blockwise(a, b, torch.float32)
        ref = reference_gemm(a, b)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        return math.isfinite(err) and err < 1e-3
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False


def fp8_gemm(a: Quantized, w: Quantized, out_dtype: torch.dtype = torch.bfloat16, backend: str = "auto") -> torch.Tensor:
    """C (M, N) = A (M, K) W (N, K)^T on block-quantised operands. backend: "auto", "scaled_mm", "reference"."""
    if backend not in ("auto", "scaled_mm", "reference"):
        raise ValueError(f"backend = {backend!r}: allowed values are auto, scaled_mm, reference")
    if a.block != ACT_TILE or w.block != WEIGHT_BLOCK:
        raise ValueError(f"blocks = {a.block}, {w.block}: expected activations {ACT_TILE} and weights {WEIGHT_BLOCK}")
    if a.data.shape[1] != w.data.shape[1]:
        raise ValueError(f"K mismatch: activations {a.data.shape[1]}, weights {w.data.shape[1]}")
    use = backend
    if backend == "auto":
        use = "scaled_mm" if block_scaled_mm_supported(str(a.data.device)) else "reference"
    if use == "scaled_mm":
        return _scaled_mm_blockwise(a, w, out_dtype)
    return reference_gemm(a, w, out_dtype)


def gemm_error_bound(a: Quantized, w: Quantized, x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |deq(A) deq(W)^T - X W^T| from the per-element round-trip bounds e_A, e_W:
    |dA||W| + |X||dW| + |dA||dW| <= e_A |W|^T + |X| e_W^T + e_A e_W^T (FP32 accumulation error is extra)."""
    ea = roundtrip_error_bound(x, a).double()
    ew = roundtrip_error_bound(wt, w).double()
    xa, wa = x.double().abs(), wt.double().abs()
    return ea @ wa.t() + xa @ ew.t() + ea @ ew.t()


# -- accumulation precision ------------------------------------------------------------------------------------------

def round_significand(x: torch.Tensor, bits: int, mode: str = "truncate") -> torch.Tensor:
    """Keep `bits` significant bits of each value (leading bit included): truncate toward zero or round to nearest."""
    if mode not in ("truncate", "nearest"):
        raise ValueError(f"mode = {mode!r}: allowed values are truncate, nearest")
    m, e = torch.frexp(x)  # x = m 2^e, 0.5 <= |m| < 1
    scaled = torch.ldexp(m, torch.full_like(e, bits))
    scaled = torch.trunc(scaled) if mode == "truncate" else torch.round(scaled)
    return torch.ldexp(scaled, e - bits)


def simulate_accumulation(a: torch.Tensor, b: torch.Tensor, *, accumulator_bits: int, promote_every: int | None = None,
                          chunk: int = 32, mode: str = "truncate") -> torch.Tensor:
    """C = a @ b with a limited-precision accumulator: each `chunk` of K (one MMA instruction's depth; 32 for FP8
    WGMMA) is summed exactly and added to an accumulator that keeps `accumulator_bits` significant bits.
    With `promote_every` (a multiple of chunk), the accumulator is added to an FP32 sum and cleared every
    `promote_every` elements of K (DeepSeek-V3: 128). Inputs are the dequantised operands (float32/64)."""
    K = a.shape[1]
    if b.shape[0] != K:
        raise ValueError(f"K mismatch: a has {K}, b has {b.shape[0]}")
    if promote_every is not None and (promote_every < chunk or promote_every % chunk):
        raise ValueError(f"promote_every = {promote_every}: must be a positive multiple of chunk = {chunk}")
    a64, b64 = a.double(), b.double()
    acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64, device=a.device)
    total = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    for k0 in range(0, K, chunk):
        acc = round_significand(acc + a64[:, k0:k0 + chunk] @ b64[k0:k0 + chunk], accumulator_bits, mode)
        if promote_every is not None and (k0 + chunk) % promote_every == 0:
            total = total + acc.float()
            acc = torch.zeros_like(acc)
    return (total + acc.float()).float() if promote_every is not None else acc.float()
