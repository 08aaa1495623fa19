"""Per-tensor FP8 GEMMs timed beside BF16 at the same shapes: the profile's ``fp8_tensorwise`` section.

A per-tensor FP8 GEMM is one ``torch._scaled_mm`` call with one FP32 scale per operand (the cuBLASLt kernel that
Transformer Engine's delayed / current scaling and torchao's tensorwise recipe run): C (M, N) = A (M, K) W (N, K)^T
with A and W already in float8_e4m3fn (their casts are ops of their own in the simulator, `workloads/ops.py`), the
scales applied in the epilogue, BF16 output. The BF16 GEMM at the same shape (``A @ W.t()``, the bench's GEMM grid)
is timed right before it with the same harness (validation/bench.py ``time_op``: CUDA events, median of the
repeats, inputs rotated beyond twice the L2 cache), and the point records both medians and their ratio:

    speedup = bf16_s / fp8_s

which `hwmodels/fp8_tensorwise.py` uses in place of its bundled 2023 table on the GPU the profile was measured on.
cuBLASLt FP8 needs K and N multiples of 16 (the shapes that are not are skipped, said so in the notes) and an
FP8 tensor core (compute capability 8.9 or later; probed, not assumed). On CPU torch's reference ``_scaled_mm``
runs at the quick shapes: a path test, not a calibration.
"""

from __future__ import annotations

from typing import Callable

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn (OCP FP8 formats spec, E4M3)


def quantize_tensorwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x as float8_e4m3fn with one FP32 scale (amax / 448, so x ~= q * scale), as Transformer Engine's current
    scaling does."""
    scale = (x.float().abs().amax().clamp(min=1e-12) / FP8_MAX).reshape(())
    return (x.float() / scale).to(FP8), scale


def scaled_mm_tensorwise(a: tuple, w: tuple) -> torch.Tensor:
    """C = A W^T on per-tensor-scaled FP8 operands (A row-major (M, K), W row-major (N, K), so W^T column-major as
    cuBLASLt wants it)."""
    return torch._scaled_mm(a[0], w[0].t(), scale_a=a[1], scale_b=w[1], out_dtype=torch.bfloat16)


def supported(device: str) -> str | None:
    """None when a per-tensor FP8 GEMM runs here and agrees with the dequantised product; else why not."""
    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no torch._scaled_mm"
    if device == "cuda" and torch.cuda.get_device_capability(0) < (8, 9):
        return f"compute capability {torch.cuda.get_device_capability(0)} has no FP8 tensor cores (needs 8.9+)"
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        x, y = (torch.randn(32, 64, generator=g).to(device) for _ in range(2))
        a, w = quantize_tensorwise(x), quantize_tensorwise(y)
        out = scaled_mm_tensorwise(a, w).float()
        ref = (a[0].float() * a[1]) @ (w[0].float() * w[1]).t()
    except (RuntimeError, TypeError) as e:
        return f"torch._scaled_mm per-tensor failed here: {str(e).splitlines()[0]}"
    if not torch.allclose(out, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max())):
        return "torch._scaled_mm per-tensor disagrees with the dequantised product here"
    return None


def bench_tensorwise(shapes: list[tuple[str, int, int]], m: int, device: str, time_op: Callable,
                     n_buffers: Callable, randn: Callable, warmup: int, repeats: int) -> tuple[dict | None, list[str]]:
    """(the ``fp8_tensorwise`` section or None, notes) for the (name, N, K) GEMMs at M = m."""
    why = supported(device)
    if why is not None:
        return None, [f"fp8_tensorwise: not measured: {why}"]
    notes, points = [], []
    for name, n, k in shapes:
        if n % 16 or k % 16 or m % 16:
            notes.append(f"fp8_tensorwise: {name} (M={m}, N={n}, K={k}) skipped: cuBLASLt FP8 needs multiples of 16")
            continue
        nb = n_buffers(device, 2 * (m * k + n * k))
        bf = [(randn(m, k, device=device), randn(n, k, device=device)) for _ in range(nb)]
        bf16_s = time_op(lambda s: s[0] @ s[1].t(), bf, device, warmup, repeats)
        q = [(quantize_tensorwise(a), quantize_tensorwise(w)) for a, w in bf]
        del bf
        fp8_s = time_op(lambda s: scaled_mm_tensorwise(s[0], s[1]), q, device, warmup, repeats)
        del q
        points.append({"m": m, "n": n, "k": k, "speedup": bf16_s / fp8_s, "bf16_s": bf16_s, "fp8_s": fp8_s,
                       "provenance": name})
    if not points:
        return None, notes + ["fp8_tensorwise: not measured: no shape fits the FP8 GEMM's multiples of 16"]
    what = ("CUDA events" if device == "cuda" else "time.perf_counter (CPU reference kernel: a path test, NOT a "
            "calibration)")
    prov = (f"validation/bench_fp8.py: torch._scaled_mm per-tensor (one FP32 scale per operand, e4m3, BF16 out) "
            f"vs torch matmul BF16 at the same shapes, {what}, median of {repeats} after {warmup} warm-up, "
            f"torch {torch.__version__}")
    return {"points": points, "provenance": prov}, notes
