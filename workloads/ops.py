"""Ops are data: what a piece of work is (FLOPs, bytes, GEMM shape, collective), never how long it takes.

This module holds the records (Op, Segment, LayerPasses), the options that change them (OpOptions) and the builder
the decompositions use; a transformer layer's passes are in `workloads.layer_ops` (its MoE block in
`workloads.moe_ops`), a pipeline stage's units (embedding, layers, head, MTP) in `workloads.stage_ops`.
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
    tokens: int = 0              # collectives over tokens (EP all-to-all, TP): tokens each rank holds
    bytes_per_token: float = 0.0
    overlaps: "Op | None" = None  # TP collective decomposed and overlapped with this GEMM (tp_comm_overlap)
    fp8_recipe: str = "blockwise"  # FP8 GEMMs: FP8_RECIPES, how its inputs were scaled (hwmodels/fp8_tensorwise.py)


# ----------------------------------------------------------------------------------------------------------------
# Passes: a unit's forward, backward-for-input and backward-for-weight work as ordered segments.

import math  # noqa: E402

from gpuhours.workloads.parallel import ParallelSpec  # noqa: E402

BF16 = 2  # bytes per element
FP32 = 4
FP8 = 1


@dataclass(frozen=True)
class Segment:
    """A run of ops on one stream, named like the profiler annotations: "attn(F)", "dispatch(F)", "mlp(W)"."""

    name: str
    stream: str  # "compute" or "comm"
    ops: tuple[Op, ...]
    layer: int | None = None


@dataclass(frozen=True)
class LayerPasses:
    """Forward, backward-for-input and backward-for-weight segments of one unit (a layer, or the stage's
    embedding / head / MTP), each in dependency order."""

    name: str
    forward: tuple[Segment, ...]
    backward: tuple[Segment, ...]
    weight: tuple[Segment, ...]


# Activation recomputation policies (`OpOptions.recompute`): what the backward pass recomputes
# (`workloads.recompute`: the grammar, the module vocabulary and what each module means).
#   "none"      nothing: every activation the backward needs is kept.
#   "deepseek"  DeepSeek-V3 sec. 3.3.2: every RMSNorm and (MLA) the up-projections are recomputed in backward
#               (= "selective:layernorm,mla_up_proj").
#   "selective" Korthikanti et al. 2022 (arXiv 2205.05198): the attention core (QK^T, softmax, PV) is recomputed
#               (= "selective:core_attn").
#   "full"      the whole layer's forward (compute, TP collectives, MoE all-to-alls) runs again before its backward;
#               only the layer's input is kept.
# Besides these names: "selective:<modules>" (Megatron-Core's --recompute-modules) and "full:N" (the first N layers
# of every pipeline stage fully recomputed, Megatron-Core's block method).
RECOMPUTE_POLICIES = ("none", "deepseek", "selective", "full", "torchtitan-op")

# FP8 recipes (`OpOptions.fp8_recipe`): how the inputs of an FP8 GEMM are scaled and cast (`PassBuilder._quant_bytes`).
#   "blockwise" DeepSeek-V3 sec. 3.3: 1x128 activation and 128x128 weight scales, casts as separate kernels.
#   "delayed"   per-tensor scaling from the previous steps' amax history (Transformer Engine's DelayedScaling).
#   "current"   per-tensor scaling from this tensor's own amax (TE's Float8CurrentScaling, torchao's "dynamic").
#   "tensorwise" torchao's Float8Linear with dynamic tensorwise scaling: as "current", and every weight is cast
#               again in every forward and every backward (`PassBuilder.gemm`: torchao's own byte count,
#               torchao/testing/float8/roofline_utils.py), where Transformer Engine keeps a step's FP8 weights.
#   "mxfp8"     OCP Microscaling FP8 on Blackwell: one E8M0 scale per 32 elements along K, applied by the tensor
#               cores (TE's MXFP8BlockScaling, torchao's mxfp8_cublas); GEMMs priced by hwmodels/mxfp8.py.
FP8_RECIPES = ("blockwise", "delayed", "current", "mxfp8", "tensorwise")
PER_TENSOR_RECIPES = ("delayed", "current", "tensorwise")
# torchao's Float8Linear (dynamic tensorwise) casts a weight in every pass, in bytes per weight element
# (torchao/testing/float8/roofline_utils.py, get_tensor_memory_traffic_ovhd_s, tensorwise, tensor_role "weight"):
# forward, an amax pass (read BF16, 2) and the cast to the forward's FP8 copy (read BF16, write FP8: 3); backward,
# the cast again to the copy the input gradient takes (3). The weight gradient needs no weight.
TORCHAO_WEIGHT_CAST_F = 2 + 3
TORCHAO_WEIGHT_CAST_B = 3

# How the host launches kernels (`OpOptions.host_dispatch`, `hwmodels.launch`): "eager" (PyTorch eager, each
# kernel dispatched by the CPU; every framework without CUDA graphs), "graphs" (CUDA graphs: no host time per
# kernel), "none" (no launch overhead at all, neither the GPU-side gap nor the host: the model before issue 15).
HOST_DISPATCH = ("eager", "graphs", "none")


# recompute_policy(value) -> the canonical policy string of a plan / CLI value (names, "selective:<modules>",
# "full:N", a list of module names, legacy booleans); ValueError naming `recompute` and the allowed values.
from gpuhours.workloads.recompute import recompute_policy  # noqa: E402,F401  (re-exported)


@dataclass(frozen=True)
class OpOptions:
    """Numerics and memory choices that change the ops: FP8 linear layers and their recipe (FP8_RECIPES), the activation
    recomputation policy (a canonical `workloads.recompute` policy string; see above), MoE load imbalance (rows on the busiest EP
    rank over the mean) and the MoE capacity factor (None: dropless, as DeepSeek-V3 trains; C: an EP rank keeps at
    most C times its mean rows and drops the rest, GShard/Switch-style, so its work and its dispatch are
    min(imbalance, C) times the mean)."""

    fp8: bool = True
    fp8_recipe: str = "blockwise"  # FP8_RECIPES: how FP8 GEMM inputs are scaled and cast (`PassBuilder._quant_bytes`)
    recompute: str = "deepseek"
    imbalance: float = 1.0
    nodes_per_token: float | None = None  # distinct target nodes per token for EP traffic (None: model's default)
    capacity_factor: float | None = None
    max_nodes_per_token: int | None = None  # node-limited routing M (None: the model's rule; 0: unlimited)
    host_dispatch: str = "eager"  # HOST_DISPATCH: how kernels are launched (`hwmodels.launch`)
    elementwise_kernels: str = "fused"  # "fused" | "eager": norms, RoPE, SwiGLU as unfused PyTorch ops (`eager_ops`)
    attention_impl: str = "flash"  # "flash" | "megatron-unfused": Megatron-LM 2021's core (`unfused_attention`)

    def __post_init__(self):
        # legacy booleans are accepted and normalised (True: "deepseek", False: "none")
        object.__setattr__(self, "recompute", recompute_policy(self.recompute))
        if self.fp8_recipe not in FP8_RECIPES:
            raise ValueError(f"fp8_recipe must be one of {', '.join(FP8_RECIPES)}; got {self.fp8_recipe!r}")
        if self.host_dispatch not in HOST_DISPATCH:
            raise ValueError(f"host_dispatch must be one of {', '.join(HOST_DISPATCH)}; got {self.host_dispatch!r}")
        if self.elementwise_kernels not in ("fused", "eager"):  # workloads.eager_ops.ELEMENTWISE_KERNELS
            raise ValueError(f"elementwise_kernels must be one of fused, eager; got {self.elementwise_kernels!r}")
        if self.attention_impl not in ("flash", "megatron-unfused"):  # workloads.unfused_attention.ATTENTION_IMPLS
            raise ValueError(f"attention_impl must be one of flash, megatron-unfused; got {self.attention_impl!r}")
        c = self.capacity_factor
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 1.0 <= c < math.inf):
            raise ValueError(f"capacity_factor must be a number >= 1 (rows an EP rank keeps, over its mean) or "
                             f"none for dropless; got {c!r}")
        m = self.max_nodes_per_token
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise ValueError(f"max_nodes_per_token must be a whole number >= 1 (nodes a token may be sent to), 0 for "
                             f"unlimited, or none for the model's own routing rule; got {m!r}")

    @property
    def kept_imbalance(self) -> float:
        """Rows the busiest EP rank processes over the mean: its imbalance, capped by the capacity factor."""
        return self.imbalance if self.capacity_factor is None else min(self.imbalance, self.capacity_factor)


def norm_tokens(tokens: int, p: ParallelSpec) -> int:
    """Tokens a rank normalises: with sequence parallelism (Korthikanti et al. 2022) each of the tp ranks holds
    1/tp of the sequence between the tensor-parallel blocks; without it every rank normalises them all."""
    return tokens // p.tp if p.sequence_parallel and p.tp > 1 else tokens


def fp8_bytes_per_token(hidden: int) -> float:
    """FP8 dispatch payload: one byte per element plus one FP32 scale per 128 elements."""
    return hidden + FP32 * math.ceil(hidden / 128)


def fp8_payload_bytes(hidden: int, recipe: str) -> float:
    """Bytes of one token row of `hidden` elements sent or kept in FP8 under `recipe` (FP8_RECIPES): blockwise, one
    FP32 scale per 128 elements (`fp8_bytes_per_token`, DeepSeek-V3 sec. 3.3.2); mxfp8, one E8M0 byte per 32
    (OCP MX v1.0, `hwmodels.mxfp8.copy_bytes_per_element`); the per-tensor recipes, one scale for the whole
    tensor, so one byte an element."""
    if recipe == "mxfp8":
        from gpuhours.hwmodels.mxfp8 import block_elements, data

        fmt = data()["format"]
        return hidden * fmt["element_bytes"] + fmt["scale_bytes"] * math.ceil(hidden / block_elements())
    if recipe in PER_TENSOR_RECIPES:
        return float(hidden)
    return fp8_bytes_per_token(hidden)


class PassBuilder:
    """Collects ops for one pass of one layer, naming them consistently."""

    def __init__(self, prefix: str, module: str, phase: str, fp8: bool, recipe: str = "blockwise"):
        if recipe not in FP8_RECIPES:
            raise ValueError(f"fp8_recipe must be one of {', '.join(FP8_RECIPES)}; got {recipe!r}")
        self.prefix, self.module, self.phase, self.fp8, self.recipe = prefix, module, phase, fp8, recipe
        self.ops: list[Op] = []

    def gemm(self, name: str, m: int, n: int, k: int, low_precision: bool = True, groups: int = 1,
             cast: bool = True) -> None:
        """A GEMM (m x k) @ (k x n): in F as given; in B the input gradient (m x n) @ (n x k); in W the weight
        gradient (n x m) @ (m x k). FLOPs 2mnk per group either way. `cast=False`: the FP8 input of this pass
        arrives already cast (the MoE up-projection's forward input, cast before the dispatch), no cast op."""
        weight = n * k  # elements of the weight (k x n as the forward multiplies it)
        if self.phase == "B":
            m, n, k = m, k, n
        elif self.phase == "W":
            m, n, k = n, k, m
        dtype = "fp8" if (self.fp8 and low_precision) else "bf16"
        in_bytes = 1 if dtype == "fp8" else BF16
        nbytes = groups * ((m * k + k * n) * in_bytes + m * n * BF16)
        cast = groups * self._quant_bytes(m, n, k) if (dtype == "fp8" and cast) else 0
        if cast:
            self.elementwise(f"{name}.quant", cast)
        if self.phase == "B" and dtype == "fp8" and self.recipe == "blockwise":  # weight transposed for dgrad
            from gpuhours.workloads.memory_ops import fp8_weight_transpose_bytes
            self.elementwise(f"{name}.weight_t", groups * fp8_weight_transpose_bytes(n, k))
        if self.phase != "W" and dtype == "fp8" and self.recipe == "tensorwise" and weight:
            self.elementwise(f"{name}.weight_cast", groups * weight * (TORCHAO_WEIGHT_CAST_F if self.phase == "F"
                                                                        else TORCHAO_WEIGHT_CAST_B))
        self.ops.append(Op(f"{self.prefix}.{name}", "grouped_gemm" if groups > 1 else "gemm", self.phase,
                           self.module, 2.0 * m * n * k * groups, nbytes, dtype, GemmShape(m, n, k), groups,
                           fp8_recipe=self.recipe if dtype == "fp8" else "blockwise"))

    def _quant_bytes(self, m: int, n: int, k: int) -> float:
        """HBM traffic of the FP8 casts feeding one GEMM under the builder's recipe (shape as executed: the left
        operand is m x k). Weights are cast once per step under every recipe: ignored. Scale factors (one FP32 per
        128 elements, or per tensor) are ignored.

        "blockwise" (DeepSeek-V3's fine-grained recipe, casts as kernels of their own). Forward: the BF16 activation
        (m x k) is read and written as FP8, 3 bytes an element. Input gradient: the BF16 output gradient (m x k as
        executed) is read once and written in both tilings, row-wise for this GEMM and column-wise for the weight
        gradient, 4 bytes. Weight gradient: the cached FP8 activation re-tiled along the other axis (k x n as
        executed, read and written in FP8, 2 bytes).

        "delayed" / "current" (per-tensor scaling, Transformer Engine style). Hopper's FP8 tensor cores take both
        operands K-major, so each cast tensor is needed twice: as it is for this GEMM and transposed for the weight
        gradient. Transformer Engine produces both at once (its fused cast-transpose, and the norm, activation
        and GEMM-epilogue kernels that emit FP8 outputs directly; torchao's float8 training leaves the same
        fusion to torch.compile), so the producing kernel, which writes the BF16 tensor anyway, writes only the
        two FP8 copies on top: 2 bytes an element, in the forward for the activation (m x k) and in the input
        gradient for the output gradient (m x k as executed). The weight gradient finds both operands already
        cast and transposed: no bytes. Assumption: every producer fuses the cast (a FlashAttention output
        feeding the output projection too); where one does not, the cast would also read the BF16 tensor.
        "current" scales a tensor by its own absolute maximum, which must be known before the cast: one more
        read of the BF16 tensor (2 bytes an element) for the amax reduction (Transformer Engine's docs: current
        scaling reads a tensor twice per quantization, delayed scaling once, from its amax history). "delayed"
        takes the scale from the previous steps' amax, recorded as a by-product of the cast: no extra read.
        "tensorwise" (torchao's Float8Linear, dynamic scaling) casts its activations and output gradients as
        "current" does (torchao's roofline counts the same 4 bytes an element with torch.compile's fusion), and its
        weights in every pass: `gemm` adds a weight-cast op (TORCHAO_WEIGHT_CAST_F / _B bytes a weight element).

        "mxfp8" (OCP MX, Transformer Engine's MXFP8BlockScaling). Scales run along one axis, so the copy a GEMM
        needs along its K cannot be transposed into the copy the weight gradient needs along the tokens: TE
        quantises the activation and the output gradient both row-wise and column-wise from the BF16 tensor (its
        Linear sets the input and grad-output quantizers to rowwise and columnwise usage), in one kernel that
        reads the BF16 tensor once and writes the two FP8 copies with one 1-byte E8M0 scale per 32 elements each:
        2 + 2 x (1 + 1/32) = 4.0625 bytes an element (`hwmodels.mxfp8.cast_bytes_per_element`), for the
        activation (m x k) in the forward and the output gradient (m x k as executed) in the input gradient. The
        weight gradient finds both column-wise copies made: no bytes. Assumption: the cast is a kernel of its own
        (not fused into the producer's epilogue), as in torchao's MX training and TE's MXFP8 quantize. Weights:
        both copies once per step, ignored as under every recipe."""
        if self.recipe == "mxfp8":
            from gpuhours.hwmodels.mxfp8 import cast_bytes_per_element
            return 0 if self.phase == "W" else cast_bytes_per_element(BF16) * m * k
        if self.recipe in PER_TENSOR_RECIPES:
            if self.phase == "W":
                return 0
            amax = BF16 if self.recipe in ("current", "tensorwise") else 0
            return (2 + amax) * m * k
        if self.phase == "W":
            return 2 * k * n
        if self.phase == "B":
            return 4 * m * k
        return 3 * m * k

    def elementwise(self, name: str, nbytes: float, kind: str = "elementwise") -> None:
        self.ops.append(Op(f"{self.prefix}.{name}", kind, self.phase, self.module, 0.0, nbytes))

    def attention(self, name: str, flops: float, nbytes: float) -> None:
        self.ops.append(Op(f"{self.prefix}.{name}", "attention", self.phase, self.module, flops, nbytes, "bf16"))

    def segment(self, stream_name: str, layer: int | None) -> Segment:
        return Segment(stream_name, "compute", tuple(self.ops), layer)


class GemmsOnly:
    """A view of a builder that drops element-wise ops (weight-gradient passes have none of their own)."""

    def __init__(self, builder: PassBuilder):
        self._b = builder
        self.phase = builder.phase

    def gemm(self, *args, **kwargs) -> None:
        self._b.gemm(*args, **kwargs)

    def elementwise(self, *args, **kwargs) -> None:
        pass

    def attention(self, *args, **kwargs) -> None:
        pass


def collective_segment(name: str, phase: str, module: str, kind: str, group: str, tokens: int,
                bytes_per_token: float, layer: int | None) -> Segment:
    op = Op(name, "collective", phase, module, collective=kind, group=group, comm_bytes=tokens * bytes_per_token,
            tokens=tokens, bytes_per_token=bytes_per_token)
    return Segment(f"{kind.split('_')[-1]}({phase})" if kind.startswith("ep_") else f"{group}.{kind}({phase})",
                   "comm", (op,), layer)


def rank_tokens(p: ParallelSpec, seq_len: int) -> int:
    """Tokens of one micro-batch a rank holds: micro_batch_size x seq_len / cp (context parallelism splits every
    sequence over the cp ranks, `ParallelSpec.cp`)."""
    return p.micro_batch_size * seq_len // p.cp


def dense_ffn_ops(b: PassBuilder, inter: int, hidden: int, tokens: int, tp: int, name: str = "ffn",
                   activation: str = "swiglu", elementwise: str = "fused") -> None:
    """A dense FFN, tensor-parallel over its intermediate dimension.

    SwiGLU: w13 (h -> 2i, w1 and w3 fused), the activation reads 2i and writes i in forward (backward reads the
    2i inputs and the i output gradient, writes the 2i input gradients), w2 (i -> h).
    GELU: w1 (h -> i), the activation reads i and writes i in forward (backward reads the input and the output
    gradient, writes the input gradient: 3i), w2 (i -> h).
    Squared ReLU ("relu2", Primer / Nemotron-4): relu(x)^2 is element-wise like GELU, with the same traffic: forward
    reads i and writes i; backward (d/dx relu(x)^2 = 2 relu(x)) reads the input and the output gradient and writes
    the input gradient, 3i. The op is named "<name>.relu2".
    """
    i = inter // tp
    if activation in ("gelu", "relu2"):
        b.gemm(f"{name}.w1", tokens, i, hidden)
        if b.phase != "W":
            b.elementwise(f"{name}.{activation}", tokens * i * BF16 * (2 if b.phase == "F" else 3))
    else:
        b.gemm(f"{name}.w13", tokens, 2 * i, hidden)
        if b.phase != "W" and elementwise == "eager":  # silu and mul as eager kernels (`workloads.eager_ops`)
            from gpuhours.workloads.eager_ops import emit, swiglu_kernels
            emit(b, f"{name}.swiglu", swiglu_kernels(b.phase, tokens, i))
        elif b.phase != "W":
            b.elementwise(f"{name}.swiglu", 3 * tokens * i * BF16 * (1 if b.phase == "F" else 2))
    b.gemm(f"{name}.w2", tokens, hidden, i)
