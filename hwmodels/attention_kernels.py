"""Attention kernels by name: measured causal-attention efficiency over head dimension and sequence length.

A calibration profile holds one forward and one backward attention efficiency, whatever the kernel, head
dimension or sequence. Training stacks differ most there: PyTorch's SDPA flash backend (FlashAttention-2) reaches
about half the rate of a FlashAttention-3-class kernel on Hopper (`hwmodels/data/attention_kernels.toml`). With
`attention_kernel` set, a scenario prices its attention core at the named kernel's measured efficiency for the
model's head dimension and the run's sequence length; everything else stays the profile's.

Lookup (`AttentionKernel.efficiencies`): coordinates log2(d_qk) and log2(seq); a measured point is returned as
measured; otherwise the `NEIGHBOURS` nearest points are averaged with inverse-square-distance weights (never
outside the measured range), a sequence beyond the measured ones takes the value at the nearest (the rate is flat
there: 4K to 16K moves it by under 10%). Efficiency = TFLOP/s over the measuring GPU's dense BF16 peak, carried to
the simulated GPU as a fraction of its peak (as calibration profiles are).

`megatron-unfused` (UNFUSED) is not a measured kernel but a different core: Megatron-LM's unfused attention of
2021-22 (full s x s batched GEMMs at the profile's GEMM rates, softmax and dropout as memory-bound passes, the
scores kept for the backward), built as ops by `workloads.unfused_attention` when a scenario's
`OpOptions.attention_impl` is set from this name (`attention_impl`); the profile's attention pair goes unused.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "attention_kernels.toml"
NEIGHBOURS = 3


@dataclass(frozen=True)
class AttentionPoint:
    d_qk: int
    d_v: int
    seq: int
    forward_tflops: float
    backward_tflops: float


@dataclass(frozen=True)
class AttentionKernel:
    name: str
    description: str
    device: str
    peak_bf16_tflops: float
    source: str
    points: tuple[AttentionPoint, ...]

    def efficiencies(self, d_qk: int, seq: int) -> tuple[float, float]:
        """(forward, backward) fraction of the dense BF16 peak at head dimension d_qk and sequence seq."""
        if not (d_qk >= 1 and seq >= 1):
            raise ValueError(f"attention kernel {self.name!r}: d_qk and seq must be >= 1, got {d_qk}, {seq}")
        seqs = [p.seq for p in self.points]
        s = min(max(seq, min(seqs)), max(seqs))
        q = (math.log2(d_qk), math.log2(s))
        dist = sorted((math.dist(q, (math.log2(p.d_qk), math.log2(p.seq))), i) for i, p in enumerate(self.points))
        if dist[0][0] < 1e-12:
            near, weights = dist[:1], [1.0]
        else:
            near = dist[:NEIGHBOURS]
            weights = [1.0 / d ** 2 for d, _ in near]
        total = sum(weights)
        fwd = sum(w * self.points[i].forward_tflops for w, (_, i) in zip(weights, near)) / total
        bwd = sum(w * self.points[i].backward_tflops for w, (_, i) in zip(weights, near)) / total
        return fwd / self.peak_bf16_tflops, bwd / self.peak_bf16_tflops


@lru_cache(maxsize=1)
def attention_kernels() -> dict[str, AttentionKernel]:
    with open(DATA, "rb") as f:
        doc = tomllib.load(f)
    out = {}
    for name, t in doc.items():
        pts = tuple(AttentionPoint(int(p["d_qk"]), int(p["d_v"]), int(p["seq"]), float(p["forward_tflops"]),
                                   float(p["backward_tflops"])) for p in t["points"])
        out[name] = AttentionKernel(name, t["description"], t["device"], float(t["peak_bf16_tflops"]), t["source"],
                                    pts)
    return out


UNFUSED = "megatron-unfused"  # workloads.unfused_attention.UNFUSED
UNFUSED_KERNEL = AttentionKernel(
    UNFUSED, "Megatron-LM's unfused ParallelAttention (baddbmm QK^T over the full s x s, FusedScaleMaskSoftmax, "
    "dropout, bmm with V), priced as GEMMs and memory-bound passes", "any", 0.0,
    "NVIDIA/Megatron-LM megatron/model/transformer.py at 6985e58938, ParallelAttention.forward", ())


def attention_impl(name: str | None) -> str:
    """`OpOptions.attention_impl` of an `attention_kernel` value: "megatron-unfused" for UNFUSED, else "flash"."""
    return UNFUSED if name == UNFUSED else "flash"


def load_attention_kernel(name: str) -> AttentionKernel:
    if name == UNFUSED:
        return UNFUSED_KERNEL
    kernels = attention_kernels()
    if name not in kernels:
        raise ValueError(f"attention_kernel must be one of {', '.join(sorted([*kernels, UNFUSED]))} (or omitted: the "
                         f"calibration profile's attention efficiency); got {name!r}")
    return kernels[name]


def with_attention_kernel(profile, name: str, d_qk: int, seq: int):
    """`profile` with its attention efficiencies replaced by kernel `name`'s at (d_qk, seq); the name says so."""
    kernel = load_attention_kernel(name)
    if name == UNFUSED:  # a different set of ops (`workloads.unfused_attention`), not a different rate
        return replace(profile, name=f"{profile.name} + attention {name}",
                       attention_provenance=f"{name}: {kernel.description} ({kernel.source}); GEMMs at the "
                                            f"profile's GEMM efficiencies, softmax / dropout at its element-wise "
                                            f"bandwidth")
    fwd, bwd = kernel.efficiencies(d_qk, seq)
    return replace(profile, name=f"{profile.name} + attention {name}", attention_forward_efficiency=fwd,
                   attention_backward_efficiency=bwd,
                   attention_provenance=(f"{name}: {kernel.description}; measured on {kernel.device} "
                                         f"({kernel.source}), at d_qk {d_qk}, sequence {seq}: forward {fwd:.3f}, "
                                         f"backward {bwd:.3f} of the dense BF16 peak"))
