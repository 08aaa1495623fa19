"""Kernel grid on a lent GPU: the measurements a per-class kernel model is built from (issue 15).

Measures, with CUDA events (median of `repeats` after `warmup`, randn inputs rotated beyond twice the L2 cache,
never zeros), and writes one JSON document:

  gemm        C (M, N) = A (M, K) W (N, K)^T over the weight shapes of dense models (Llama 3 8B / 70B / 405B,
              GPT-3 175B) at tensor-parallel sizes 1, 2 and 8 and M = 2048 and 8192 tokens, in
              bf16 (torch matmul), fp8 per-tensor scaled (torch._scaled_mm, one scale per operand: the
              Transformer-Engine / torchao "tensorwise" recipe) and fp8 blockwise (1x128 x 128x128 scales,
              DeepSeek-V3's recipe, where this torch runs it); 2 M N K FLOP
  attention   causal scaled_dot_product_attention per backend (flash, cudnn, efficient) at head_dim 64, 128
              and (192, 128), sequence 1024 ... 16384, forward and backward, B x H x S^2 x (d_qk + d_v) / 2
              forward FLOP (the causal half), backward twice that
  memory      device-to-device copy over sizes, RMSNorm and SwiGLU at transformer widths, achieved bytes/s
              counting bytes read plus bytes written once
  launch      per-kernel overhead: host time of 2,000 eager launches of a one-element add, and the same
              launches replayed from a CUDA graph

On CPU (`--cpu`) it runs tiny shapes only: a test of the script, not a measurement.
Usage: python bench/device_kernels.py OUT.json [--cpu]
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available() and "--cpu" not in sys.argv
DEV = "cuda" if CUDA else "cpu"
WARMUP, REPEATS = (5, 20) if CUDA else (1, 2)

# (model, hidden, heads, kv_heads, head_dim, ffn) of dense models, Megatron-style fused GEMMs per layer
DENSE = [("llama-3-8b", 4096, 32, 8, 128, 14336), ("llama-3-70b", 8192, 64, 8, 128, 28672),
         ("llama-3.1-405b", 16384, 128, 8, 128, 53248), ("gpt3-175b", 12288, 96, 96, 128, 49152)]
TPS = (1, 2, 8)
MS = (2048, 8192) if CUDA else (64,)


def layer_gemms(hidden: int, heads: int, kv: int, hd: int, ffn: int, tp: int) -> list[tuple[str, int, int]]:
    """(name, N, K) of one layer's forward weight GEMMs on one tensor-parallel rank (SwiGLU for Llama, fused
    w1+w3; GPT-3's GELU FFN has the same fc1 shape as the fused pair at ffn = 4h, listed with 2 x 4h / 2)."""
    return [("qkv", (heads + 2 * kv) * hd // tp, hidden), ("proj", hidden, heads * hd // tp),
            ("fc1", 2 * ffn // tp, hidden), ("fc2", hidden, ffn // tp)]


def l2_bytes() -> int:
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)) if CUDA else 0


def n_sets(bytes_per_set: int, cap: int = 8) -> int:
    return max(2, min(cap, math.ceil(2 * l2_bytes() / max(1, bytes_per_set)) + 1))


def timed(fn, sets, warmup=WARMUP, repeats=REPEATS) -> float:
    """Median seconds of fn(sets[i % n])."""
    out = []
    for i in range(warmup + repeats):
        s = sets[i % len(sets)]
        if CUDA:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(s)
            b.record()
            if i >= warmup:
                out.append((a, b))
        else:
            t0 = time.perf_counter()
            fn(s)
            if i >= warmup:
                out.append(time.perf_counter() - t0)
    if CUDA:
        torch.cuda.synchronize()
        out = [a.elapsed_time(b) / 1e3 for a, b in out]
    return statistics.median(out)


def randn(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device=DEV, dtype=torch.float32).to(dtype)


def fp8_tensorwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax().float().clamp(min=1e-12) / 448.0
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def gemm_rate(m: int, n: int, k: int, kind: str) -> float | None:
    """Achieved TFLOP/s, or None when this device / torch cannot run the kind."""
    if kind == "bf16":
        sets = [(randn(m, k), randn(n, k)) for _ in range(n_sets(2 * (m * k + n * k)))]
        t = timed(lambda s: s[0] @ s[1].t(), sets)
    elif kind == "fp8_tensorwise":
        if not CUDA:
            return None
        sets = []
        for _ in range(n_sets(m * k + n * k)):
            (a, sa), (w, sw) = fp8_tensorwise(randn(m, k)), fp8_tensorwise(randn(n, k))
            sets.append((a, w.t(), sa, sw))  # second operand column-major, as cuBLASLt wants
        t = timed(lambda s: torch._scaled_mm(s[0], s[1], scale_a=s[2], scale_b=s[3], out_dtype=torch.bfloat16),
                  sets)
    else:  # fp8_blockwise
        from gpuhours.validation import fp8 as fp8mod
        if not fp8mod.block_scaled_mm_supported(DEV) or k % 128 or n % 16:
            return None
        sets = [(fp8mod.quantize_activation(randn(m, k)), fp8mod.quantize_weight(randn(n, k)))
                for _ in range(n_sets(m * k + n * k))]
        t = timed(lambda s: fp8mod.fp8_gemm(s[0], s[1], torch.bfloat16, backend="scaled_mm"), sets)
    return 2.0 * m * n * k / t / 1e12


def attention_rates(backend: str, heads: int, seq: int, d_qk: int, d_v: int) -> tuple[float, float] | None:
    """(forward, backward) TFLOP/s of causal SDPA on one backend, batch filling 16k tokens; None if refused."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
          "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]
    batch = max(1, (16384 if CUDA else 128) // seq)
    fwd_flops = batch * heads * seq * seq * (d_qk + d_v)  # 2 FLOP x (d_qk + d_v) x S^2 / 2 (causal) per head
    per = 2 * batch * heads * seq * (2 * d_qk + 2 * d_v)

    def make():
        return (randn(batch, heads, seq, d_qk), randn(batch, heads, seq, d_qk), randn(batch, heads, seq, d_v),
                randn(batch, heads, seq, d_v))
    try:
        with sdpa_kernel([be]):
            sets = [make() for _ in range(n_sets(per, cap=3))]

            def fwd(s):
                with torch.no_grad():
                    F.scaled_dot_product_attention(s[0], s[1], s[2], is_causal=True)
            t_f = timed(fwd, sets)
            grads = []

            def bwd(s):
                q, k, v = (x.detach().requires_grad_(True) for x in s[:3])
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                grads.append(torch.autograd.grad(o, (q, k, v), s[3]))
            t_fb = timed(bwd, sets)
            grads.clear()
    except RuntimeError:
        return None
    return fwd_flops / t_f / 1e12, 2 * fwd_flops / max(t_fb - t_f, 1e-9) / 1e12


def memory_rates() -> dict:
    out = {"copy": []}
    for mib in ((16, 64, 256, 1024, 4096) if CUDA else (1,)):
        n = mib * 2**20 // 2
        xs = [randn(n) for _ in range(n_sets(2 * n, cap=4))]
        dst = torch.empty_like(xs[0])
        t = timed(lambda x: dst.copy_(x), xs)
        out["copy"].append({"mib": mib, "gbps": 2 * 2 * n / t / 1e9})
    for name, h, inter in (("h4096", 4096, 14336), ("h8192", 8192, 28672)):
        m = 8192 if CUDA else 16
        xs = [randn(m, h) for _ in range(n_sets(2 * m * h))]
        w = randn(h)
        t = timed(lambda x: F.rms_norm(x, (h,), w, 1e-6), xs)
        out[f"rmsnorm_{name}"] = {"m": m, "h": h, "gbps": 2 * 2 * m * h / t / 1e9}
        gs = [(randn(m, inter), randn(m, inter)) for _ in range(n_sets(4 * m * inter, cap=4))]
        t = timed(lambda s: F.silu(s[0]) * s[1], gs)
        out[f"swiglu_{name}"] = {"m": m, "inter": inter, "gbps": 3 * 2 * m * inter / t / 1e9,
                                 "note": "eager: silu and multiply are two kernels, 5 M I x 2 B actually moved"}
    return out


def launch_overhead() -> dict:
    x = torch.zeros(1, device=DEV)
    n = 2000 if CUDA else 20
    for _ in range(50):
        x.add_(1)
    if CUDA:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    if CUDA:
        torch.cuda.synchronize()
    eager = (time.perf_counter() - t0) / n
    out = {"eager_us_per_kernel": eager * 1e6, "kernels": n}
    if CUDA:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            x.add_(1)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            for _ in range(200):
                x.add_(1)
        g.replay()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            g.replay()
        torch.cuda.synchronize()
        out["graph_us_per_kernel"] = (time.perf_counter() - t0) / 2000 * 1e6
    return out


def main(path: str) -> None:
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name(0) if CUDA else "cpu"
    doc = {"schema": "gpuhours.kernel-grid/1", "device": name,
           "sm_count": torch.cuda.get_device_properties(0).multi_processor_count if CUDA else 0,
           "date": datetime.date.today().isoformat(),
           "software": {"torch": torch.__version__, "cuda": torch.version.cuda or "none",
                        "cudnn": torch.backends.cudnn.version() if CUDA else None},
           "method": (f"bench/device_kernels.py: CUDA events, median of {REPEATS} after {WARMUP} warm-up, randn "
                      "inputs rotated beyond 2x L2" if CUDA else "CPU path test, tiny shapes: not a measurement"),
           "gemm": [], "attention": [], "memory": None, "launch": None}
    shapes = sorted({(n, k, f"{model} tp{tp} {g}") for model, h, H, kv, hd, ffn in DENSE for tp in TPS
                     for g, n, k in layer_gemms(h, H, kv, hd, ffn, tp)}) if CUDA else [(96, 128, "tiny")]
    seen = set()
    for n, k, label in shapes:
        if (n, k) in seen:
            continue
        seen.add((n, k))
        for m in MS:
            row = {"m": m, "n": n, "k": k, "shape": label}
            for kind in ("bf16", "fp8_tensorwise", "fp8_blockwise"):
                row[kind] = gemm_rate(m, n, k, kind)
            doc["gemm"].append(row)
            print(f"gemm {m:>6} {n:>6} {k:>6}  " + "  ".join(
                f"{kd} {row[kd]:.0f}" if row[kd] else f"{kd} -" for kd in ("bf16", "fp8_tensorwise", "fp8_blockwise")),
                  flush=True)
    for backend in ("flash", "cudnn", "efficient"):
        for d_qk, d_v in ((64, 64), (128, 128), (192, 128)):
            for seq in ((1024, 2048, 4096, 8192, 16384) if CUDA else (64,)):
                r = attention_rates(backend, 16 if CUDA else 2, seq, d_qk, d_v)
                doc["attention"].append({"backend": backend, "d_qk": d_qk, "d_v": d_v, "seq": seq,
                                         "heads": 16 if CUDA else 2,
                                         "forward_tflops": r and r[0], "backward_tflops": r and r[1]})
                print(f"attn {backend:9} d {d_qk}/{d_v} S {seq:>6}: "
                      + (f"fwd {r[0]:.0f} bwd {r[1]:.0f}" if r else "refused"), flush=True)
    doc["memory"] = memory_rates()
    doc["launch"] = launch_overhead()
    doc["seconds"] = time.perf_counter() - t_start
    print(json.dumps({"memory": doc["memory"], "launch": doc["launch"], "seconds": doc["seconds"]}, indent=1))
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args:
        raise SystemExit("usage: python bench/device_kernels.py OUT.json [--cpu]")
    main(args[0])
