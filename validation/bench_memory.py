"""Memory-bound op classes timed one by one: achieved bytes/s per class (calibration.ELEMENTWISE_CLASSES).

Each class is timed at a transformer's width with the bytes `workloads.ops` charges for it, so that
efficiency = counted bytes / time / HBM bandwidth is the figure the simulator needs:

  norm        RMSNorm forward of (M, h): read + write M h BF16
  activation  SwiGLU silu(a) * b of (M, I): read 2 M I, write M I, BF16
  cast        FP8 quantisation with one scale per 1 x 128 tile of (M, K): read M K BF16, write M K FP8
  rope        rotary embedding of (M, H, 64): read + write BF16
  loss        cross-entropy forward over (M, V) BF16 logits: read M V BF16
  router      top-8 of (M, 256) FP32 scores: 2 M E FP32
  optimizer   one fused AdamW step over N FP32 parameters: read weight, gradient, two moments, write weight and
              two moments, 28 N bytes
  embedding   gather of M rows of an (V, h) BF16 table: read + write M h BF16
On CUDA the element-wise classes run as one fused kernel each (torch.compile; what training stacks ship:
Transformer Engine, Megatron and DeepSeek fuse these), the others as PyTorch's own kernels (F.cross_entropy,
torch.topk, AdamW(fused=True), index_select). On CPU everything runs eagerly at tiny shapes: a path test only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLASSES = ("norm", "activation", "cast", "rope", "loss", "router", "optimizer", "embedding")


def _swiglu(a, b):
    return F.silu(a) * b


def _cast(x):
    m, k = x.shape
    t = x.float().view(m, k // 128, 128)
    scale = t.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 448.0
    return (t / scale).to(torch.float8_e4m3fn).view(m, k), scale


def _rope(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def bench_memory_classes(device: str, time_op, n_buffers, warmup: int, repeats: int, quick: bool = False,
                         hidden: int = 7168, inter: int = 2048, vocab: int = 129280) -> dict:
    """{class: {"gbps": achieved, "bytes": counted per call, "how": kernel}} for every class in CLASSES.

    `time_op(fn, inputs, device, warmup, repeats)` and `n_buffers(device, bytes_per_set)` are validation.bench's
    timer and buffer-rotation rule (inputs rotate beyond twice the L2 cache)."""
    cuda = device == "cuda"
    fused = (lambda f: torch.compile(f, dynamic=False)) if cuda else (lambda f: f)
    how_fused = "torch.compile (one fused Triton kernel)" if cuda else "eager (CPU path test)"
    m = 64 if quick else 16384
    h, i, v, e = (256, 128, 1024, 64) if quick else (hidden, inter, vocab, 256)
    bf16 = torch.bfloat16

    def rnd(*shape, dtype=bf16):
        return torch.randn(*shape, device=device, dtype=torch.float32).to(dtype)

    out = {}

    def run(name, fn, make, nbytes, how):
        sets = [make() for _ in range(n_buffers(device, int(nbytes)))]
        fn(sets[0])  # compile / warm
        t = time_op(fn, sets, device, warmup, repeats)
        out[name] = {"gbps": nbytes / t / 1e9, "bytes": nbytes, "how": how}

    w = rnd(h)
    norm = fused(lambda x: F.rms_norm(x, (h,), w, 1e-6))
    run("norm", norm, lambda: rnd(m, h), 2 * 2 * m * h, how_fused)
    act = fused(_swiglu)
    run("activation", lambda s: act(*s), lambda: (rnd(m, i), rnd(m, i)), 3 * 2 * m * i, how_fused)
    cast = fused(_cast)
    run("cast", cast, lambda: rnd(m, h), 3 * m * h + 4 * m * math.ceil(h / 128), how_fused)
    heads = 8 if quick else 128
    cos, sin = rnd(m, 1, 32), rnd(m, 1, 32)
    rope = fused(_rope)
    run("rope", lambda x: rope(x, cos, sin), lambda: rnd(m, heads, 64), 2 * 2 * m * heads * 64, how_fused)
    ml = m // 4 if not quick else m  # logits of a quarter of the tokens keep the buffer near 4 GiB
    target = torch.randint(0, v, (ml,), device=device)
    run("loss", lambda x: F.cross_entropy(x, target), lambda: rnd(ml, v), 2 * ml * v, "F.cross_entropy (eager)")
    run("router", lambda x: torch.topk(x, 8, dim=-1), lambda: rnd(m, e, dtype=torch.float32), 2 * 4 * m * e,
        "torch.topk (eager)")
    n = 4096 if quick else 256 * 2**20
    param = torch.nn.Parameter(torch.randn(n, device=device))
    param.grad = torch.randn(n, device=device)
    opt = torch.optim.AdamW([param], lr=1e-4, fused=cuda)
    sets = [None] * 2
    opt.step()
    t = time_op(lambda _: opt.step(), sets, device, warmup, repeats)
    out["optimizer"] = {"gbps": 28 * n / t / 1e9, "bytes": 28 * n,
                        "how": f"torch.optim.AdamW(fused={cuda}), FP32 states"}
    table = rnd(v, h)
    run("embedding", lambda idx: table.index_select(0, idx),
        lambda: torch.randint(0, v, (m,), device=device), 2 * 2 * m * h, "index_select (eager)")
    return out
