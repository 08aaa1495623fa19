"""Ops are data: what a piece of work is (FLOPs, bytes, GEMM shape, collective), never how long it takes.

(Only the Op record lives here for now; the per-layer decomposition follows.)
"""

from __future__ import annotations

from dataclasses import dataclass

# Compute op classes: the keys a CalibrationProfile gives efficiencies for.
COMPUTE_CLASSES = (
    "gemm",          # dense GEMM, dtype fp8 or bf16 (gemm shape m, n, k)
    "grouped_gemm",  # MoE expert GEMMs: `groups` GEMMs of (m, n, k), m = rows per expert
    "attention",     # attention core (softmax(QK^T)V), forward or backward
    "elementwise",   # norms, activations, RoPE, quantisation, casts: memory-bound (bytes)
    "embedding",     # gathers/scatters into the embedding table: memory-bound
)
# Collective kinds the network model prices.
COLLECTIVE_KINDS = ("p2p", "all_reduce", "reduce_scatter", "all_gather", "all_to_all", "ep_dispatch", "ep_combine")


@dataclass(frozen=True)
class GemmShape:
    m: int
    n: int
    k: int


@dataclass(frozen=True)
class Op:
    name: str                    # e.g. "layer3.attn.wq_a"
    kind: str                    # one of COMPUTE_CLASSES or "collective"
    phase: str                   # "F", "B" (input grads), or "W" (weight grads)
    module: str = ""             # "attn", "mlp", "moe", "embed", "head", "mtp", "loss"
    flops: float = 0.0           # floating-point operations (a multiply-add counts 2)
    bytes: float = 0.0           # HBM traffic for memory-bound ops
    dtype: str = "bf16"          # "fp8" or "bf16" (tensor-core input type)
    gemm: GemmShape | None = None
    groups: int = 1              # grouped GEMMs: number of GEMMs of shape `gemm`
    collective: str | None = None  # for kind == "collective": one of COLLECTIVE_KINDS
    group: str | None = None     # "ep", "tp", "dp", "pp"
    comm_bytes: float = 0.0      # bytes each rank sends for the collective (see hwmodels.collectives)
