"""Memory-bound kernel families of DeepSeek's traced F&B pair against our ops of the same pair (issue 15).

Each family is a set of kernels of the trace (by name, `FAMILIES`: what the kernel does, read from its name and
launch grid and from the DeepSeek-V3 report's FP8 recipe, sec. 3.3) and the ops of our decomposition that do
the same work (by op name). `family_rows` lists, per family, the trace's calls and summed time, our ops' count
and bytes, their time at the HBM peak and at a profile's element-wise efficiency, and the residual: what the
trace spends beyond what our bytes explain at that efficiency. A family without ops of ours is work we do not
model; a family whose kernels are latency-bound (launch grids of a few blocks) is not a bytes question at all.
Nothing here sets a model figure: bytes come from our ops' shapes, times from the trace.

Where one fused kernel does the work of two of our ops the kernel's family is named for the larger part (the
SwiGLU kernels that also cast their output to FP8 are in "swiglu"; our cast of w2's input is in "cast");
docs/memory_ops_trace.md gives the table for the traced pair and the reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from gpuhours.validation.trace import Trace
from gpuhours.workloads.ops import Op

# (family, kernel-name pattern (searched), our op-name pattern (searched in the op's name), what the kernels do)
FAMILIES: tuple[tuple[str, str, str | None, str], ...] = (
    ("weight_transpose", r"batched_transpose", r"\.weight_t$",
     "FP8 weights transposed for the input-gradient GEMMs, one per FP8 linear (read + write FP8 n x k)"),
    ("e5m6_cache", r"fp8_special_fmt|cast_back_special_fmt", r"\.o_cache\.(quant|dequant)$",
     "attention output cached in E5M6 and cast back (report sec. 3.3.3)"),
    ("swiglu", r"swiglu", r"\.swiglu$|\.gate_weight\.grad$",
     "SwiGLU forward / recompute + backward, gate weights applied to its output and their gradient"),
    ("cast", r"per_token_cast_to_fp8|cast_and_transpose|grouped_gemm::cuda::utils::transpose",
     r"\.quant$", "1x128 FP8 casts of GEMM inputs and their column-wise (transposed) copies for the weight "
     "gradients; scale-layout transposes of the grouped GEMMs"),
    ("cast_back", r"cast_back", r"\.dequant$", "FP8 caches cast back to BF16 (SwiGLU input)"),
    ("norm", r"layer_norm", r"norm(\.recompute)?$|\.residual$",
     "RMSNorm forward / backward, the residual addition fused in (DropoutAddLayerNorm)"),
    ("rope", r"rotary", r"\.rope$", "rotary embedding of q_pe and k_pe"),
    ("qk_copy", r"_copy_tensor_kernel|direct_copy_kernel", r"\.qk_cat$",
     "copies: MLA's q / k assembly and other tensor copies"),
    ("permute", r"expand_to_fused", r"\.experts\.permute$", "received tokens expanded into per-expert rows, "
     "FP8 with scales"),
    ("unpermute", r"reduce_fused", r"\.experts\.unpermute$", "expert rows summed back per token (combine side)"),
    ("routing", r"(?i:topk)|get_fused_mapping|count_expert|unique_group_indices|aux_fi_", r"\.router\.topk$",
     "gating top-k, dispatch mappings, expert counts (grids of 1-4 blocks: latency-bound)"),
    ("other", r"", r"", "PyTorch element-wise and reduction kernels (adds, fills, sums), memcpy / memset"),
)
_KERNEL = tuple((f, re.compile(k)) for f, k, _, _ in FAMILIES)
_OURS = tuple((f, re.compile(o)) for f, _, o, _ in FAMILIES if o is not None)


def kernel_family(name: str) -> str:
    """The family of a memory-bound trace kernel (first matching pattern; "other" when none)."""
    return next(f for f, pattern in _KERNEL if pattern.search(name))


def op_family(op: Op) -> str:
    """The family of one of our memory-bound ops (first matching pattern; "other" when none)."""
    return next(f for f, pattern in _OURS if pattern.search(op.name))


@dataclass(frozen=True)
class FamilyRow:
    family: str
    calls: int           # trace kernels
    trace_ms: float      # their summed duration
    ops: int             # our ops
    bytes: float         # our ops' HBM bytes
    peak_ms: float       # our bytes at the HBM peak
    model_ms: float      # our bytes at the profile's element-wise efficiency
    residual_ms: float   # trace_ms - model_ms


def family_rows(kernels: Iterable[tuple[str, float]], ops: Iterable[Op], hbm_bw: float,
                efficiency) -> list[FamilyRow]:
    """Per family (in FAMILIES order): `kernels` as (name, seconds) of the trace's memory-bound kernels on its
    compute streams, `ops` our memory-bound ops of the same pair, `efficiency(op)` the fraction of `hbm_bw`
    (bytes/s) an op reaches under a profile."""
    if hbm_bw <= 0:
        raise ValueError(f"hbm_bw must be a positive bandwidth in bytes/s; got {hbm_bw!r}")
    acc = {f: [0, 0.0, 0, 0.0, 0.0] for f, _, _, _ in FAMILIES}
    for name, seconds in kernels:
        a = acc[kernel_family(name)]
        a[0] += 1
        a[1] += seconds
    for op in ops:
        a = acc[op_family(op)]
        a[2] += 1
        a[3] += op.bytes
        a[4] += op.bytes / (hbm_bw * efficiency(op))
    return [FamilyRow(f, n, t * 1e3, k, b, b / hbm_bw * 1e3, m * 1e3, (t - m) * 1e3)
            for f, (n, t, k, b, m) in acc.items()]


def trace_memory_kernels(trace: Trace) -> list[tuple[str, float]]:
    """(name, seconds) of the trace's memory-bound events (calibrate_trace.MEMORY_CLASSES) on its compute
    streams (every stream but the all-to-all one)."""
    from gpuhours.validation.calibrate_trace import comm_streams
    from gpuhours.validation.traced_pair import MEMORY_CLASSES
    comm = comm_streams(trace)
    return [(e.name, e.duration) for e in trace.events if e.stream not in comm and e.op_class in MEMORY_CLASSES]


def traced_pair_rows(trace: Trace, profile_name: str = "default-h800") -> list[FamilyRow]:
    """The family table of DeepSeek's traced pair under a calibration profile."""
    from gpuhours.hwmodels.calibration import load_profile
    from gpuhours.hwmodels.compute import elementwise_class
    from gpuhours.validation.traced_pair import trace_class_of, traced_coster, traced_ops
    profile = load_profile(profile_name)
    coster = traced_coster(profile)
    ops = [op for op in traced_ops(coster) if trace_class_of(op) == "memory"]
    return family_rows(trace_memory_kernels(trace), ops, coster.compute.gpu.hbm_bw,
                       lambda op: profile.elementwise_efficiency(elementwise_class(op)))


def format_rows(rows: list[FamilyRow]) -> str:
    lines = [f"{'family':17s} {'calls':>5s} {'trace ms':>9s} {'ops':>4s} {'our GB':>7s} {'peak ms':>8s} "
             f"{'model ms':>9s} {'residual':>9s}"]
    for r in rows:
        lines.append(f"{r.family:17s} {r.calls:5d} {r.trace_ms:9.3f} {r.ops:4d} {r.bytes / 1e9:7.3f} "
                     f"{r.peak_ms:8.3f} {r.model_ms:9.3f} {r.residual_ms:9.3f}")
    tot = [sum(getattr(r, k) for r in rows) for k in ("calls", "trace_ms", "ops", "bytes", "peak_ms", "model_ms",
                                                      "residual_ms")]
    lines.append(f"{'total':17s} {tot[0]:5d} {tot[1]:9.3f} {tot[2]:4d} {tot[3] / 1e9:7.3f} {tot[4]:8.3f} "
                 f"{tot[5]:9.3f} {tot[6]:9.3f}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m gpuhours.validation.memory_families TRACE [PROFILE]
    import sys
    from gpuhours.validation.trace import load_trace
    print(format_rows(traced_pair_rows(load_trace(sys.argv[1]), *(sys.argv[2:3] or ["default-h800"]))))
