"""Microbenchmarks of the op classes the simulator prices, written as a "gpuhours.calibration/1" profile.

Ops (shapes from a ModelSpec, DeepSeek-V3 by default; M = tokens per GEMM):
  gemm          bf16 and, where block-scaled FP8 runs here (fp8.block_scaled_mm_supported), fp8 GEMMs
                C (M, N) = A (M, K) W (N, K)^T for every projection of `gemm_shapes(model)`; 2 M N K FLOP
  grouped_gemm  `groups` GEMMs of (rows, N, K) for the expert projections; bf16 as one batched matmul, fp8 as
                `groups` block-scaled GEMMs back to back; 2 groups rows N K FLOP
  attention     causal attention core at seq S (scaled_dot_product_attention on B x H x S x d_qk / d_v),
                forward H S^2 (d_qk + d_v) B FLOP and backward 2x that (workloads.flops convention: causal
                half, no recomputation), as a fraction of the dense BF16 peak
  elementwise   RMSNorm (read + write M h) and SwiGLU (read 2 M I, write M I) bytes over time, as a fraction
                of the HBM bandwidth; the FP8 activation quantisation is measured and reported in notes
  fp8_tensorwise per-tensor FP8 (torch._scaled_mm) vs BF16 at the GEMM grid's shapes (validation/bench_fp8.py)
  launch        kernel gap and eager host time per launch (validation/bench_launch.py; CUDA only)
  comm          NCCL all-reduce / all-gather bus bandwidth within the node (validation/bench_nccl.py; 2+ GPUs)
Timing: CUDA events around each call after a warm-up, median of the repeats; inputs are randn (never zeros)
and rotate among enough buffers that one round exceeds twice the L2 cache. On CPU: time.perf_counter and tiny
shapes (`quick`), a path test only, not a calibration of anything.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from gpuhours.validation import fp8 as fp8mod
from gpuhours.validation.block import scaled_down
from gpuhours.workloads.model import ModelSpec

SCHEMA = "gpuhours.calibration/1"
DEVICES = ("cpu", "cuda")


# -- shapes -----------------------------------------------------------------------------------------------------

def gemm_shapes(model: ModelSpec) -> list[tuple[str, int, int]]:
    """(name, N, K) of the weight GEMMs of one layer of each kind, as DeepSeek-V3 runs them (wq_a and wkv_a
    fused, w1 and w3 fused), plus the output head."""
    a, h = model.attention, model.hidden
    if a.kind != "mla":
        raise ValueError(f"AttentionSpec.kind = {a.kind!r}: the benchmark shapes are written for 'mla'")
    H = a.n_heads
    out = []
    if a.q_lora_rank:
        out += [("attn.wq_a+wkv_a", a.q_lora_rank + a.kv_lora_rank + a.qk_rope_head_dim, h),
                ("attn.wq_b", H * a.qk_head_dim, a.q_lora_rank)]
    else:
        out += [("attn.wq", H * a.qk_head_dim, h), ("attn.wkv_a", a.kv_lora_rank + a.qk_rope_head_dim, h)]
    out += [("attn.wkv_b", H * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank),
            ("attn.wo", h, H * a.v_head_dim)]
    if model.n_dense_layers:
        out += [("ffn.w1+w3", 2 * model.dense_intermediate, h), ("ffn.w2", h, model.dense_intermediate)]
    if model.moe is not None:
        out += expert_shapes(model)
    out.append(("head", model.vocab, h))
    return out


def expert_shapes(model: ModelSpec) -> list[tuple[str, int, int]]:
    m = model.moe
    if m is None:
        return []
    return [("expert.w1+w3", 2 * m.expert_intermediate, model.hidden), ("expert.w2", model.hidden, m.expert_intermediate)]


# -- timing -----------------------------------------------------------------------------------------------------

def _l2_bytes(device: str) -> int:
    if device == "cuda":
        return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20))
    return 0


def _n_buffers(device: str, bytes_per_set: int, cap: int = 16) -> int:
    """Buffers to rotate among so that one round of inputs is at least twice the L2 cache (at least 2)."""
    need = math.ceil(2 * _l2_bytes(device) / max(1, bytes_per_set)) + 1
    return max(2, min(cap, need))


def time_op(fn: Callable, inputs: list, device: str, warmup: int, repeats: int,
            prepare: Callable | None = None) -> float:
    """Median seconds of fn(prepare(inputs[i % n])) (prepare is untimed)."""
    n = len(inputs)
    cuda = device == "cuda"
    times: list = []
    for i in range(warmup + repeats):
        arg = inputs[i % n]
        state = prepare(arg) if prepare else arg
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(state)
            end.record()
            if i >= warmup:
                times.append((start, end))
        else:
            t0 = time.perf_counter()
            fn(state)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times.append(dt)
    if cuda:
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) / 1e3 for s, e in times]
    return statistics.median(times)


def _randn(*shape, device, dtype=torch.bfloat16):
    return torch.randn(*shape, device=device, dtype=torch.float32).to(dtype)


# -- op benchmarks --------------------------------------------------------------------------------------------------

def bench_gemm(m: int, n: int, k: int, dtype: str, device: str, warmup: int, repeats: int) -> float:
    """Achieved TFLOP/s of C = A W^T."""
    flops = 2.0 * m * n * k
    if dtype == "bf16":
        nb = _n_buffers(device, 2 * (m * k + n * k))
        sets = [(_randn(m, k, device=device), _randn(n, k, device=device)) for _ in range(nb)]
        t = time_op(lambda s: s[0] @ s[1].t(), sets, device, warmup, repeats)
    else:
        nb = _n_buffers(device, m * k + n * k)
        sets = [(fp8mod.quantize_activation(_randn(m, k, device=device)),
                 fp8mod.quantize_weight(_randn(n, k, device=device))) for _ in range(nb)]
        t = time_op(lambda s: fp8mod.fp8_gemm(s[0], s[1], torch.bfloat16, backend="scaled_mm"), sets, device,
                    warmup, repeats)
    return flops / t / 1e12


def bench_grouped_gemm(groups: int, m: int, n: int, k: int, dtype: str, device: str, warmup: int, repeats: int) -> float:
    flops = 2.0 * groups * m * n * k
    if dtype == "bf16":
        nb = _n_buffers(device, 2 * groups * (m * k + n * k))
        sets = [(_randn(groups, m, k, device=device), _randn(groups, n, k, device=device)) for _ in range(nb)]
        t = time_op(lambda s: torch.bmm(s[0], s[1].transpose(1, 2)), sets, device, warmup, repeats)
    else:
        nb = _n_buffers(device, groups * (m * k + n * k))
        sets = [[(fp8mod.quantize_activation(_randn(m, k, device=device)),
                  fp8mod.quantize_weight(_randn(n, k, device=device))) for _ in range(groups)] for _ in range(nb)]

        def run(s):
            for a, w in s:
                fp8mod.fp8_gemm(a, w, torch.bfloat16, backend="scaled_mm")
        t = time_op(run, sets, device, warmup, repeats)
    return flops / t / 1e12


def _sdpa_runs(device: str, d_qk: int, d_v: int) -> bool:
    """Does causal SDPA (forward and backward) accept d_v != d_qk on this device?"""
    try:
        q, k = (_randn(1, 2, 128, d_qk, device=device).requires_grad_(True) for _ in range(2))
        v = _randn(1, 2, 128, d_v, device=device).requires_grad_(True)
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        return True
    except RuntimeError:
        return False


def bench_attention(batch: int, heads: int, seq: int, d_qk: int, d_v: int, device: str, warmup: int,
                    repeats: int) -> tuple[float, float]:
    """(forward, backward) TFLOP/s of causal SDPA; forward FLOP = 2 B H S^2 (d_qk + d_v) / 2, backward 2x."""
    fwd_flops = batch * heads * seq * seq * (d_qk + d_v)
    if not _sdpa_runs(device, d_qk, d_v):
        d_v = d_qk  # no SDPA backend here takes d_v != d_qk: V padded to d_qk, FLOP still counted at the real d_v
    per_set = 2 * batch * heads * seq * (2 * d_qk + 2 * d_v)
    nb = _n_buffers(device, per_set, cap=4)

    def make():
        q, k = (_randn(batch, heads, seq, d_qk, device=device) for _ in range(2))
        v = _randn(batch, heads, seq, d_v, device=device)
        return q, k, v, _randn(batch, heads, seq, d_v, device=device)
    sets = [make() for _ in range(nb)]

    def fwd(s):
        with torch.no_grad():
            F.scaled_dot_product_attention(s[0], s[1], s[2], is_causal=True)
    t_f = time_op(fwd, sets, device, warmup, repeats)

    def prepare(s):
        q, k, v = (x.detach().requires_grad_(True) for x in s[:3])
        return F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), s[3]
    t_b = time_op(lambda st: torch.autograd.grad(st[0], st[1], st[2]), sets, device, warmup, repeats, prepare)
    return fwd_flops / t_f / 1e12, 2 * fwd_flops / t_b / 1e12


def bench_elementwise(m: int, h: int, inter: int, device: str, warmup: int, repeats: int) -> dict:
    """Achieved bytes/s of RMSNorm (m x h), SwiGLU (m x inter), FP8 1x128 quantisation (m x h), copy (m x h)."""
    out = {}
    nb = _n_buffers(device, 4 * m * h)
    xs = [_randn(m, h, device=device) for _ in range(nb)]
    w = _randn(h, device=device)
    t = time_op(lambda x: F.rms_norm(x, (h,), w, 1e-6), xs, device, warmup, repeats)
    out["rmsnorm"] = 2 * 2 * m * h / t
    nb = _n_buffers(device, 6 * m * inter)
    gs = [(_randn(m, inter, device=device), _randn(m, inter, device=device)) for _ in range(nb)]
    t = time_op(lambda s: F.silu(s[0]) * s[1], gs, device, warmup, repeats)
    out["swiglu"] = 3 * 2 * m * inter / t
    t = time_op(fp8mod.quantize_activation, xs, device, warmup, repeats)
    out["fp8_quantize"] = (2 * m * h + m * h + 4 * m * math.ceil(h / 128)) / t
    dst = torch.empty_like(xs[0])
    t = time_op(lambda x: dst.copy_(x), xs, device, warmup, repeats)
    out["copy"] = 2 * 2 * m * h / t
    return out


# -- the profile --------------------------------------------------------------------------------------------------------

def _gpu_spec(device_name: str, sm_count: int):
    """The gpus.toml entry matching the CUDA device name (full, without "NVIDIA ", or its first word) and its
    SM count; None when there is none."""
    try:
        from gpuhours.hwmodels.gpus import load_gpu
    except ImportError:
        return None
    short = device_name.replace("NVIDIA ", "")
    for key in (device_name, short, short.split()[0] if short.split() else short):
        try:
            spec = load_gpu(key)
        except (ValueError, KeyError):
            continue
        if spec.sms == sm_count:
            return spec
    return None


def run_benchmarks(device: str = "cpu", quick: bool = False, model: ModelSpec | None = None, *, tokens: int = 4096,
                   seq: int = 4096, attn_batch: int = 1, groups: int = 4, rows_per_group: int = 8192,
                   warmup: int | None = None, repeats: int | None = None, gpu: str | None = None) -> dict:
    """Time the op classes and return a "gpuhours.calibration/1" dict.

    model: shapes come from it (default: the deepseek-v3 preset). quick: a tiny scaled-down model, 64 tokens,
    seq 64, 2 groups of 32 rows, 1 warm-up and 3 repeats. gpu: a key of hwmodels/data/gpus.toml whose dense BF16
    peak and HBM bandwidth are the denominators (default: looked up from the device name; when not found, the
    highest BF16 rate, a square matmul included, and the highest element-wise rate measured in this run, said
    so in notes)."""
    if device not in DEVICES:
        raise ValueError(f"device = {device!r}: allowed values are {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda': torch.cuda.is_available() is False; allowed here: cpu")
    if model is None:
        from gpuhours.workloads.presets import load_preset
        model = load_preset("deepseek-v3")
    if quick:
        model = scaled_down(model)
        tokens, seq, groups, rows_per_group = 64, 64, 2, 32
        warmup = 1 if warmup is None else warmup
        repeats = 3 if repeats is None else repeats
    warmup = 5 if warmup is None else warmup
    repeats = 30 if repeats is None else repeats
    notes: list[str] = []

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device_name, sm_count = props.name, props.multi_processor_count
    else:
        device_name, sm_count = f"CPU {platform.processor() or platform.machine()}", os.cpu_count() or 1
        notes.append("CPU profile: a test of the benchmark path at tiny shapes, NOT a calibration of any GPU. "
                     f"{torch.get_num_threads()} torch threads; sm_count holds the CPU core count.")

    fp8_ok = fp8mod.block_scaled_mm_supported(device)
    if not fp8_ok:
        notes.append("fp8: block-scaled scaled_mm (1x128 x 128x128) not available on this device/torch; "
                     "no fp8 points measured (the dequantise-then-matmul reference is not a kernel to calibrate).")
    def dtypes(n: int, k: int) -> tuple[str, ...]:
        """FP8 tensor-core GEMMs need K in whole 128-element scale tiles and N a multiple of 16."""
        if fp8_ok and k % 128 == 0 and n % 16 == 0:
            return ("bf16", "fp8")
        if fp8_ok:
            notes.append(f"fp8: shape N={n}, K={k} skipped (needs K % 128 == 0 and N % 16 == 0)")
        return ("bf16",)

    gemm = {"bf16": [], "fp8": []}
    for name, n, k in gemm_shapes(model):
        for dt in dtypes(n, k):
            tf = bench_gemm(tokens, n, k, dt, device, warmup, repeats)
            gemm[dt].append({"m": tokens, "n": n, "k": k, "tflops": tf,
                             "provenance": f"{name}, {'torch matmul' if dt == 'bf16' else 'F.scaled_mm blockwise'}"})
    grouped = {"bf16": [], "fp8": []}
    for name, n, k in expert_shapes(model):
        for dt in dtypes(n, k):
            tf = bench_grouped_gemm(groups, rows_per_group, n, k, dt, device, warmup, repeats)
            how = "torch.bmm" if dt == "bf16" else f"{groups} F.scaled_mm blockwise calls"
            grouped[dt].append({"groups": groups, "m": rows_per_group, "n": n, "k": k, "tflops": tf,
                                "provenance": f"{name}, {how}"})

    a = model.attention
    att_f, att_b = bench_attention(attn_batch, a.n_heads, seq, a.qk_head_dim, a.v_head_dim, device, warmup, repeats)
    inter = model.moe.expert_intermediate if model.moe is not None else model.dense_intermediate
    ew = bench_elementwise(tokens, model.hidden, inter, device, warmup, repeats)
    from gpuhours.validation.bench_memory import bench_memory_classes
    classes = bench_memory_classes(device, time_op, _n_buffers, warmup, repeats, quick, hidden=model.hidden,
                                   inter=inter, vocab=model.vocab)

    spec = _gpu_spec(device_name, sm_count) if device == "cuda" and gpu is None else None
    if gpu is not None:
        from gpuhours.hwmodels.gpus import load_gpu
        spec = load_gpu(gpu)
    big = 384 if quick else 8192
    square = bench_gemm(big, big, big, "bf16", device, warmup, repeats)
    measured_bf16 = max([p["tflops"] for p in gemm["bf16"] + grouped["bf16"]] + [att_f, att_b, square])
    if spec is not None:
        peak_bf16, peak_bw = spec.bf16_flops / 1e12, spec.hbm_bw
        peaks = {"bf16": peak_bf16} | ({"fp8": spec.fp8_flops / 1e12} if spec.has_fp8 else {})
        notes.append(f"denominators: {spec.name} datasheet (hwmodels/data/gpus.toml): BF16 {peak_bf16:.1f} TFLOP/s, "
                     f"HBM {peak_bw / 1e9:.0f} GB/s")
    else:
        peak_bf16, peak_bw = measured_bf16, max(ew.values())
        peaks = {"bf16": peak_bf16}
        notes.append(f"denominators measured in this run: BF16 peak = highest BF16 rate {peak_bf16:.4g} TFLOP/s "
                     f"(square {big}^3 matmul {square:.4g}), "
                     f"bandwidth = highest element-wise rate {peak_bw / 1e9:.4g} GB/s")
    notes.append(f"attention core (B={attn_batch}, H={a.n_heads}, S={seq}, d_qk={a.qk_head_dim}, d_v={a.v_head_dim}, "
                 f"causal SDPA): forward {att_f:.4g} TFLOP/s, backward {att_b:.4g} TFLOP/s")
    notes.append("element-wise achieved GB/s: " + ", ".join(f"{k} {v / 1e9:.4g}" for k, v in ew.items())
                 + " (fp8_quantize is the eager multi-kernel reference in validation/fp8.py, not a fused kernel)")

    notes.append("memory-bound classes, achieved GB/s of the bytes the simulator charges: " + ", ".join(
        f"{k} {v['gbps']:.4g} ({v['how']})" for k, v in classes.items()))
    from gpuhours.validation import bench_fp8, bench_launch, bench_nccl  # issue 15 item 4: per-tensor FP8, launch, NCCL
    tensorwise, more = bench_fp8.bench_tensorwise(gemm_shapes(model), tokens, device, time_op, _n_buffers, _randn,
                                                  warmup, repeats)
    launch, more2 = bench_launch.bench_launch(device, quick)
    if device == "cuda":
        torch.cuda.empty_cache()  # the spawned ranks need GPU 0's memory too
    nccl, more3 = bench_nccl.bench_nccl(device, quick)
    notes += more + more2 + more3

    def frac(x: float) -> float:
        return min(1.0, max(x, 1e-9))
    extra = ({"fp8_tensorwise": tensorwise} if tensorwise else {}) | ({"launch": launch} if launch else {})
    return extra | {
        "schema": SCHEMA,
        "name": f"microbenchmark-{device}{'-quick' if quick else ''}: {device_name}",
        "source": "microbenchmark",
        "provenance": {
            "device": device_name, "sm_count": int(sm_count), "date": datetime.date.today().isoformat(),
            "software": {"torch": torch.__version__, "cuda": torch.version.cuda or "none"},
            "method": (f"validation/bench.py run_benchmarks(device={device!r}, quick={quick}), model {model.name}: "
                       f"{'CUDA events' if device == 'cuda' else 'time.perf_counter'}, median of {repeats} after "
                       f"{warmup} warm-up, randn inputs rotated beyond 2x L2; GEMMs M={tokens}, grouped "
                       f"{groups} x {rows_per_group} rows"),
            "references": ["DeepSeek-V3 technical report, arXiv 2412.19437 (FP8 recipe, shapes)",
                           "deepseek-ai/DeepGEMM README (benchmark shapes M=4096, grouped 4 x 8192)"],
            "peak_tflops": peaks,
        },
        "gemm": gemm,
        "grouped_gemm": grouped,
        "attention": {"forward_efficiency": frac(att_f / peak_bf16), "backward_efficiency": frac(att_b / peak_bf16),
                      "provenance": "causal SDPA, FLOP per workloads.flops (causal half; backward 2x forward)"},
        "elementwise": {"bandwidth_efficiency": frac((ew["rmsnorm"] + ew["swiglu"]) / 2 / peak_bw),
                        "classes": {k: frac(v["gbps"] * 1e9 / peak_bw) for k, v in classes.items()},
                        "provenance": "mean of RMSNorm and SwiGLU achieved bytes/s over the bandwidth denominator; "
                                      "classes: validation/bench_memory.py, one kernel per class"},
        "comm": {"nccl_intra_node": nccl},
        "notes": notes,
    }


def write_profile(path: str | Path, device: str = "cpu", quick: bool = False, **kwargs) -> dict:
    """Run the benchmarks and write the profile as JSON; returns the dict."""
    profile = run_benchmarks(device, quick, **kwargs)
    Path(path).write_text(json.dumps(profile, indent=2) + "\n")
    return profile


if __name__ == "__main__":  # python -m gpuhours.validation.bench OUT.json [cuda|cpu] [quick]
    import sys
    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m gpuhours.validation.bench OUT.json [cpu|cuda] [quick]")
    write_profile(args[0], args[1] if len(args) > 1 else ("cuda" if torch.cuda.is_available() else "cpu"),
                  quick="quick" in args[2:])
