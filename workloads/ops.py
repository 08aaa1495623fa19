"""Ops are data: what a piece of work is (FLOPs, bytes, GEMM shape, collective), never how long it takes.

(Only the Op record lives here for now; the per-layer decomposition follows.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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


# ----------------------------------------------------------------------------------------------------------------
# Decomposition: a layer's forward, backward-for-input and backward-for-weight passes as ordered segments.

import math  # noqa: E402

from gpuhours.workloads.model import ModelSpec  # noqa: E402
from gpuhours.workloads.parallel import ParallelSpec  # noqa: E402

BF16 = 2  # bytes per element
FP32 = 4


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


# Activation recomputation policies (`OpOptions.recompute`): what the backward pass recomputes.
#   "none"      nothing: every activation the backward needs is kept.
#   "deepseek"  DeepSeek-V3 sec. 3.3.2: every RMSNorm and (MLA) the up-projections are recomputed in backward.
#   "selective" Korthikanti et al. 2022 (arXiv 2205.05198): the attention core (QK^T, softmax, PV) is recomputed.
#   "full"      the whole layer's forward (compute, TP collectives, MoE all-to-alls) runs again before its backward;
#               only the layer's input is kept.
RECOMPUTE_POLICIES = ("none", "deepseek", "selective", "full")


def recompute_policy(value) -> str:
    """A recompute policy from a plan value: a policy name, or the legacy booleans (true: "deepseek", false:
    "none"). Raises ValueError naming `recompute` and the allowed values."""
    if isinstance(value, bool):
        return "deepseek" if value else "none"
    if value not in RECOMPUTE_POLICIES:
        raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE_POLICIES)} (or true/false); got {value!r}")
    return value


@dataclass(frozen=True)
class OpOptions:
    """Numerics and memory choices that change the ops: FP8 linear layers (DeepSeek-V3's recipe), the activation
    recomputation policy (one of RECOMPUTE_POLICIES; see above), MoE load imbalance (rows on the busiest EP
    rank over the mean) and the MoE capacity factor (None: dropless, as DeepSeek-V3 trains; C: an EP rank keeps at
    most C times its mean rows and drops the rest, GShard/Switch-style, so its work and its dispatch are
    min(imbalance, C) times the mean)."""

    fp8: bool = True
    recompute: str = "deepseek"
    imbalance: float = 1.0
    nodes_per_token: float | None = None  # distinct target nodes per token for EP traffic (None: model's default)
    capacity_factor: float | None = None

    def __post_init__(self):
        # legacy booleans are accepted and normalised (True: "deepseek", False: "none")
        object.__setattr__(self, "recompute", recompute_policy(self.recompute))
        c = self.capacity_factor
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 1.0 <= c < math.inf):
            raise ValueError(f"capacity_factor must be a number >= 1 (rows an EP rank keeps, over its mean) or "
                             f"none for dropless; got {c!r}")

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


class _Builder:
    """Collects ops for one pass of one layer, naming them consistently."""

    def __init__(self, prefix: str, module: str, phase: str, fp8: bool):
        self.prefix, self.module, self.phase, self.fp8 = prefix, module, phase, fp8
        self.ops: list[Op] = []

    def gemm(self, name: str, m: int, n: int, k: int, low_precision: bool = True, groups: int = 1) -> None:
        """A GEMM (m x k) @ (k x n): in F as given; in B the input gradient (m x n) @ (n x k); in W the weight
        gradient (n x m) @ (m x k). FLOPs 2mnk per group either way."""
        if self.phase == "B":
            m, n, k = m, k, n
        elif self.phase == "W":
            m, n, k = n, k, m
        dtype = "fp8" if (self.fp8 and low_precision) else "bf16"
        in_bytes = 1 if dtype == "fp8" else BF16
        nbytes = groups * ((m * k + k * n) * in_bytes + m * n * BF16)
        if dtype == "fp8":
            self.elementwise(f"{name}.quant", groups * self._quant_bytes(m, n, k))
        self.ops.append(Op(f"{self.prefix}.{name}", "grouped_gemm" if groups > 1 else "gemm", self.phase,
                           self.module, 2.0 * m * n * k * groups, nbytes, dtype, GemmShape(m, n, k), groups))

    def _quant_bytes(self, m: int, n: int, k: int) -> float:
        """HBM traffic of the fine-grained FP8 casts feeding one GEMM (shape as executed; per-tile scales are
        1/128 of the data and ignored). Forward: the BF16 activation (m x k) is read and written as FP8, 3 bytes an
        element. Input gradient: the BF16 output gradient (m x k as executed) is read once and written in both
        tilings, row-wise for this GEMM and column-wise for the weight gradient, 4 bytes. Weight gradient: the
        cached FP8 activation re-tiled along the other axis (k x n as executed, read and written in FP8, 2 bytes).
        Weights are cast once per step: ignored."""
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


class _GemmsOnly:
    """A view of a builder that drops element-wise ops (weight-gradient passes have none of their own)."""

    def __init__(self, builder: _Builder):
        self._b = builder
        self.phase = builder.phase

    def gemm(self, *args, **kwargs) -> None:
        self._b.gemm(*args, **kwargs)

    def elementwise(self, *args, **kwargs) -> None:
        pass

    def attention(self, *args, **kwargs) -> None:
        pass


def _collective(name: str, phase: str, module: str, kind: str, group: str, tokens: int,
                bytes_per_token: float, layer: int | None) -> Segment:
    op = Op(name, "collective", phase, module, collective=kind, group=group, comm_bytes=tokens * bytes_per_token,
            tokens=tokens, bytes_per_token=bytes_per_token)
    return Segment(f"{kind.split('_')[-1]}({phase})" if kind.startswith("ep_") else f"{group}.{kind}({phase})",
                   "comm", (op,), layer)


def rank_tokens(p: ParallelSpec, seq_len: int) -> int:
    """Tokens of one micro-batch a rank holds: micro_batch_size x seq_len / cp (context parallelism splits every
    sequence over the cp ranks, `ParallelSpec.cp`)."""
    return p.micro_batch_size * seq_len // p.cp


def cp_kv_bytes_per_token(model: ModelSpec, p: ParallelSpec) -> float:
    """Bytes per token of what context parallelism all-gathers before the attention core (and reduce-scatters as
    gradients after its backward). GQA / MHA: K and V of the rank's kv heads, 2 x kv_heads / tp x head_dim x BF16.
    MLA: the compressed KV latent, (kv_lora_rank + qk_rope_head_dim) x BF16 (gathered before the up-projection;
    the up-projection of the other ranks' latents is not counted, a small optimism)."""
    a = model.attention
    if a.kind == "mla":
        return (a.kv_lora_rank + a.qk_rope_head_dim) * BF16
    return 2 * max(1, a.n_kv_heads // p.tp) * a.head_dim * BF16


def _cp_comm(phase: str, model: ModelSpec, p: ParallelSpec, tokens: int, layer, prefix: str) -> list[Segment]:
    """Context parallelism's K/V exchange of one layer (all-gather variant): the forward all-gathers the K and V
    of the whole sequence before the attention core, the backward reduce-scatters dK and dV after the core's
    backward. comm_bytes is the gathered buffer (hwmodels.collectives' convention): the micro-batch's
    tokens x cp = micro_batch_size x seq_len tokens x `cp_kv_bytes_per_token`; each rank sends (cp-1)/cp of it.
    Not overlapped with compute (they sit in the pass's dependency chain)."""
    if p.cp == 1 or phase == "W":
        return []
    kind = "all_gather" if phase == "F" else "reduce_scatter"
    return [_collective(f"{prefix}.attn.cp_{kind}", phase, "attn", kind, "cp", tokens * p.cp,
                        cp_kv_bytes_per_token(model, p), layer)]


def _attention_ops(b: _Builder, model: ModelSpec, p: ParallelSpec, tokens: int, seq_len: int,
                   recompute_only: bool = False, recompute_core: bool = False) -> None:
    """Attention of one layer on `tokens` tokens (the rank's micro-batch x sequence / cp), tensor-parallel over
    heads.

    Causal attention core: each query attends to (L + 1) / 2 keys on average, so the forward core costs
    2 * heads * (d_qk + d_v) * tokens * (L + 1) / 2 FLOPs (QK^T and PV); backward recomputes QK^T and computes
    dV, dP, dQ, dK: 2.5x the forward. With `recompute_core` (selective recomputation) the backward first runs
    the forward core again (op `attn.recompute.core`, priced as a forward attention op).

    Context parallelism (cp > 1, `tokens` = b L / cp): the rank's queries attend to the keys of the whole sequence
    under the causal mask. With the load-balanced split (chunks i and 2cp-1-i of 2 cp chunks of c = L / 2cp
    tokens) the rank's causal pairs are c (i c) + c (c+1)/2 + c ((2cp-1-i) c) + c (c+1)/2 = c (L + 1)
    = (L / cp) (L + 1) / 2, exactly 1/cp of the whole sequence's L (L + 1) / 2, so the same formula with the
    rank's tokens holds: core = 2 heads (d_qk + d_v) (b L / cp) (L + 1) / 2. The core's HBM bytes count the rank's
    own q, k, v, o (the gathered keys are not added).
    """
    a, h, tp = model.attention, model.hidden, p.tp
    heads = a.n_heads // tp
    act = norm_tokens(tokens, p) * h * BF16  # the norm's input: the sequence shard under sequence parallelism
    if b.phase == "W":  # weight gradients: GEMMs only
        b = _GemmsOnly(b)
    if a.kind == "mla":
        b.elementwise("attn_norm", 2 * act)  # recomputed in backward too (DeepSeek-V3 recomputes every RMSNorm)
        if a.q_lora_rank:
            if not recompute_only:
                b.gemm("wq_a", tokens, a.q_lora_rank, h)
            b.elementwise("q_norm", 2 * tokens * a.q_lora_rank * BF16)
            b.gemm("wq_b", tokens, heads * a.qk_head_dim, a.q_lora_rank)
        elif not recompute_only:
            b.gemm("wq", tokens, heads * a.qk_head_dim, h)
        if not recompute_only:
            b.gemm("wkv_a", tokens, a.kv_lora_rank + a.qk_rope_head_dim, h)
        b.elementwise("kv_norm", 2 * tokens * a.kv_lora_rank * BF16)
        b.gemm("wkv_b", tokens, heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank)
        if recompute_only:
            return
        b.elementwise("rope", 2 * tokens * heads * a.qk_rope_head_dim * BF16)
        o_in = heads * a.v_head_dim
    else:
        kv_heads = max(1, a.n_kv_heads // tp)
        b.elementwise("attn_norm", 2 * act)
        b.gemm("wqkv", tokens, (heads + 2 * kv_heads) * a.head_dim, h)
        b.elementwise("rope", 2 * tokens * (heads + kv_heads) * a.head_dim * BF16)
        o_in = heads * a.head_dim
    core = 2.0 * heads * (a.qk_head_dim + a.out_head_dim) * tokens * (seq_len + 1) / 2
    qkvo_bytes = tokens * heads * (2 * a.qk_head_dim + 2 * a.out_head_dim) * BF16
    if b.phase == "F":
        b.attention("core", core, qkvo_bytes)
    elif b.phase == "B":
        if recompute_core:
            b.ops.append(Op(f"{b.prefix}.recompute.core", "attention", "F", b.module, core, qkvo_bytes, "bf16"))
        b.attention("core_bwd", 2.5 * core, 2 * qkvo_bytes)
    b.gemm("wo", tokens, h, o_in)


def _dense_ffn_ops(b: _Builder, inter: int, hidden: int, tokens: int, tp: int, name: str = "ffn",
                   activation: str = "swiglu") -> None:
    """A dense FFN, tensor-parallel over its intermediate dimension.

    SwiGLU: w13 (h -> 2i, w1 and w3 fused), the activation reads 2i and writes i in forward (backward reads the
    2i inputs and the i output gradient, writes the 2i input gradients), w2 (i -> h).
    GELU: w1 (h -> i), the activation reads i and writes i in forward (backward reads the input and the output
    gradient, writes the input gradient: 3i), w2 (i -> h).
    """
    i = inter // tp
    if activation == "gelu":
        b.gemm(f"{name}.w1", tokens, i, hidden)
        if b.phase != "W":
            b.elementwise(f"{name}.gelu", tokens * i * BF16 * (2 if b.phase == "F" else 3))
    else:
        b.gemm(f"{name}.w13", tokens, 2 * i, hidden)
        if b.phase != "W":
            b.elementwise(f"{name}.swiglu", 3 * tokens * i * BF16 * (1 if b.phase == "F" else 2))
    b.gemm(f"{name}.w2", tokens, hidden, i)


def _tp_comm(phase: str, module: str, tokens: int, hidden: int, p: ParallelSpec, layer, where: str,
             partner: Op | None = None):
    """Tensor-parallel collectives around a block (Korthikanti et al. 2022, sec. 4.2): with sequence parallelism
    an all-gather before and a reduce-scatter after (backward: the reverse); without, one all-reduce after
    (backward: before). The weight-gradient pass has none, except under sequence parallelism the all-gather
    before the block: Megatron-LM keeps only the sequence shard of a column-parallel layer's input and gathers
    it again for the weight gradient (LinearWithGradAccumulationAndAsyncCommunication.backward).

    With `ParallelSpec.tp_comm_overlap` each collective carries the GEMM it is pipelined with (`partner`: the
    block's first GEMM for the collective before it, its last for the one after; `Op.overlaps`)."""
    if p.tp == 1:
        return []
    segs = _tp_collectives(phase, module, tokens, hidden, p, layer, where)
    if not (p.tp_comm_overlap and partner is not None):
        return segs
    return [replace(s, ops=tuple(replace(op, overlaps=partner) for op in s.ops)) for s in segs]


def _tp_collectives(phase: str, module: str, tokens: int, hidden: int, p: ParallelSpec, layer, where: str):
    per_token = hidden * BF16
    if phase == "W":
        if not (p.sequence_parallel and where == "before"):
            return []
        return [_collective(f"L{layer}.{module}.tp_all_gather", phase, module, "all_gather", "tp", tokens,
                            per_token, layer)]
    if p.sequence_parallel:
        kind = "all_gather" if where == "before" else "reduce_scatter"
        if phase == "B":
            kind = "reduce_scatter" if kind == "all_gather" else "all_gather"
        return [_collective(f"L{layer}.{module}.tp_{kind}", phase, module, kind, "tp", tokens, per_token, layer)]
    if (where == "after") == (phase == "F"):
        return [_collective(f"L{layer}.{module}.tp_all_reduce", phase, module, "all_reduce", "tp", tokens,
                            per_token, layer)]
    return []


def _edge_gemms(ops: list[Op]) -> tuple[Op | None, Op | None]:
    """The first and the last GEMM of a block's pass (recomputed forward GEMMs excluded): the column-parallel
    input projection and the row-parallel output projection the block's TP collectives are pipelined with."""
    gemms = [op for op in ops if op.kind == "gemm" and ".recompute." not in op.name]
    return (gemms[0], gemms[-1]) if gemms else (None, None)


def layer_passes(model: ModelSpec, layer: int, p: ParallelSpec, seq_len: int, opts: OpOptions = OpOptions(),
                 prefix: str | None = None) -> LayerPasses:
    """The three passes of transformer layer `layer` for one micro-batch on one rank.

    MoE layers: attn -> dispatch (FP8 payload) -> experts -> combine (BF16); backward runs combine(B) ->
    mlp(B) -> dispatch(B) -> attn(B), both backward all-to-alls carrying BF16 gradients.

    Context parallelism: every op runs on the rank's micro_batch_size x seq_len / cp tokens; the K/V all-gather
    ("cp.all_gather(F)") precedes the attention segment, whose GEMMs and core run back to back, and the dK/dV
    reduce-scatter ("cp.reduce_scatter(B)") follows the attention backward (`_cp_comm`). Each sits in the pass's
    dependency chain, so its time adds as if it were between the QKV projection and the core. Under full
    recomputation the forward's all-gather runs again before the backward; otherwise the gathered K/V are kept
    for the core's backward.
    """
    tokens = rank_tokens(p, seq_len)
    prefix = prefix or f"L{layer}"
    h, tp = model.hidden, p.tp
    passes: dict[str, list[Segment]] = {}
    deepseek = opts.recompute == "deepseek" and model.attention.kind == "mla"
    for phase in ("F", "B", "W"):
        attn = _Builder(f"{prefix}.attn", "attn", phase, opts.fp8)
        if phase == "B" and deepseek:
            recompute = _Builder(f"{prefix}.attn.recompute", "attn", "F", opts.fp8)
            _attention_ops(recompute, model, p, tokens, seq_len, recompute_only=True)
            attn.ops.extend(recompute.ops)
        _attention_ops(attn, model, p, tokens, seq_len, recompute_core=opts.recompute == "selective")
        mlp = _Builder(f"{prefix}.mlp", "mlp", phase, opts.fp8)
        if phase == "B" and deepseek:
            mlp.elementwise("ffn_norm.recompute", 2 * norm_tokens(tokens, p) * h * BF16)
        if phase != "W":
            mlp.elementwise("ffn_norm", 2 * norm_tokens(tokens, p) * h * BF16)
        moe = model.moe if model.is_moe_layer(layer) else None
        attn_seg = attn.segment(f"attn({phase})", layer)
        cp_comm = _cp_comm(phase, model, p, tokens, layer, prefix)
        core = cp_comm + [attn_seg] if phase == "F" else [attn_seg] + cp_comm
        first, last = _edge_gemms(attn.ops)
        segs_attn = _tp_comm(phase, "attn", tokens, h, p, layer, "before", first) + core
        segs_attn += _tp_comm(phase, "attn", tokens, h, p, layer, "after", last)
        if moe is None:
            _dense_ffn_ops(mlp, model.dense_intermediate, h, tokens, tp, activation=model.ffn_activation)
            first, last = _edge_gemms(mlp.ops)
            segs_mlp = _tp_comm(phase, "mlp", tokens, h, p, layer, "before", first)
            segs_mlp += [mlp.segment(f"mlp({phase})", layer)]
            segs_mlp += _tp_comm(phase, "mlp", tokens, h, p, layer, "after", last)
            order = segs_attn + segs_mlp if phase == "F" else segs_mlp + segs_attn
            passes[phase] = order
            continue
        # DeepSeekMoE: router and shared experts on the local tokens, routed experts on the dispatched rows.
        local_tokens = tokens // tp if p.sequence_parallel else tokens
        local_experts = moe.n_routed_experts // p.ep
        rows = local_tokens * moe.top_k * opts.kept_imbalance  # rows the busiest rank of the EP group keeps
        rows_per_expert = max(1, round(rows / local_experts))
        if phase != "W":
            mlp.elementwise("router.topk", 2 * local_tokens * moe.n_routed_experts * FP32)
        mlp.gemm("router", local_tokens, moe.n_routed_experts, h, low_precision=False)
        e = moe.expert_intermediate
        mlp.gemm("experts.w13", rows_per_expert, 2 * e, h, groups=local_experts)
        if phase != "W":
            mlp.elementwise("experts.swiglu", 3 * rows_per_expert * local_experts * e * BF16 * (1 if phase == "F" else 2))
        mlp.gemm("experts.w2", rows_per_expert, h, e, groups=local_experts)
        if moe.n_shared_experts:
            _dense_ffn_ops(mlp, moe.n_shared_experts * e, h, local_tokens, 1, name="shared")  # experts: SwiGLU
        if phase == "W":
            passes[phase] = [mlp.segment("mlp(W)", layer)] + [attn.segment("attn(W)", layer)]
            continue
        dispatch_bytes = fp8_bytes_per_token(h) if (opts.fp8 and phase == "F") else h * BF16
        scaled_tokens = int(round(local_tokens * opts.kept_imbalance))
        dispatch = _collective(f"{prefix}.moe.dispatch", phase, "moe", "ep_dispatch", "ep", scaled_tokens,
                               dispatch_bytes, layer)
        combine = _collective(f"{prefix}.moe.combine", phase, "moe", "ep_combine", "ep", scaled_tokens,
                              h * BF16, layer)
        mlp_seg = mlp.segment(f"mlp({phase})", layer)
        if phase == "F":
            passes[phase] = segs_attn + [dispatch, mlp_seg, combine]
        else:
            passes[phase] = [combine, mlp_seg, dispatch] + segs_attn
    if opts.recompute == "full":
        passes["B"] = [_recomputed(seg) for seg in passes["F"]] + passes["B"]
    return LayerPasses(prefix, tuple(passes["F"]), tuple(passes["B"]), tuple(passes["W"]))


def _recomputed(seg: Segment) -> Segment:
    """A forward segment run again at the start of the layer's backward (full recomputation): the same ops, still
    priced as forward ops (phase "F"), renamed "<prefix>.<module>.recompute.<op>" in a segment "<name>.recompute(B)"
    of the backward pass."""
    def rename(op: Op) -> Op:
        parts = op.name.split(".")
        i = next((k for k, part in enumerate(parts) if part in ("attn", "mlp", "moe")), len(parts) - 2)
        return replace(op, name=".".join(parts[:i + 1] + ["recompute"] + parts[i + 1:]))

    base = seg.name.rsplit("(", 1)[0]
    return Segment(f"{base}.recompute(B)", seg.stream, tuple(rename(op) for op in seg.ops), seg.layer)


def embedding_passes(model: ModelSpec, p: ParallelSpec, seq_len: int) -> LayerPasses:
    """Token embedding: a gather forward, a scatter-add of FP32 gradients for the weights."""
    tokens = rank_tokens(p, seq_len)
    f = Op("embed.gather", "embedding", "F", "embed", 0.0, tokens * model.hidden * BF16 * 2)
    w = Op("embed.grad", "embedding", "W", "embed", 0.0, tokens * model.hidden * FP32 * 2)
    return LayerPasses("embed", (Segment("embed(F)", "compute", (f,)),), (), (Segment("embed(W)", "compute", (w,)),))


def head_passes(model: ModelSpec, p: ParallelSpec, seq_len: int, opts: OpOptions = OpOptions(),
                prefix: str = "head") -> LayerPasses:
    """Final RMSNorm, output head (kept in BF16 by the FP8 recipe) and the cross-entropy loss over the vocabulary."""
    tokens = rank_tokens(p, seq_len)
    vocab = model.vocab // p.tp
    out: dict[str, Segment] = {}
    for phase in ("F", "B", "W"):
        b = _Builder(prefix, "head", phase, opts.fp8)
        if phase != "W":
            b.elementwise("final_norm", 2 * norm_tokens(tokens, p) * model.hidden * BF16)
        b.gemm("output", tokens, vocab, model.hidden, low_precision=False)
        if phase != "W":
            # Fused cross-entropy: forward reads the BF16 logits once; backward reads them again and writes
            # their gradient in BF16.
            b.elementwise("loss", (1 if phase == "F" else 2) * tokens * vocab * BF16)
        out[phase] = b.segment(f"{prefix}({phase})", None)
    return LayerPasses(prefix, (out["F"],), (out["B"],), (out["W"],))


def mtp_passes(model: ModelSpec, p: ParallelSpec, seq_len: int, depth: int, opts: OpOptions = OpOptions()
               ) -> tuple[LayerPasses, ...]:
    """One multi-token-prediction module: norms of the hidden state and of the shifted embedding, the 2h -> h
    projection, one transformer block (the last layer's kind), and the shared output head with its loss."""
    tokens = rank_tokens(p, seq_len)
    h = model.hidden
    proj: dict[str, Segment] = {}
    for phase in ("F", "B", "W"):
        b = _Builder(f"mtp{depth}", "mtp", phase, opts.fp8)
        if phase != "W":
            b.elementwise("norms", 2 * 2 * tokens * h * BF16)
        b.gemm("proj", tokens, h, 2 * h)
        proj[phase] = b.segment(f"mtp{depth}.proj({phase})", None)
    block = layer_passes(model, model.n_layers - 1, p, seq_len, opts, prefix=f"mtp{depth}.block")
    head = head_passes(model, p, seq_len, opts, prefix=f"mtp{depth}.head")
    return (LayerPasses(f"mtp{depth}.proj", (proj["F"],), (proj["B"],), (proj["W"],)), block, head)


def stage_units(model: ModelSpec, p: ParallelSpec, seq_len: int, layers: range, first: bool, last: bool,
                opts: OpOptions = OpOptions(), recipe=None) -> tuple[LayerPasses, ...]:
    """A pipeline stage as an ordered list of units: embedding (first stage), its transformer layers, and on the
    last stage the head and loss followed by the MTP modules (which share embedding and head physically).
    Under ZeRO-3 each unit also gathers and reduce-scatters its parameters (`zero3_passes`; byte sizes from
    `recipe`, a `workloads.recipe.MemoryRecipe`, default the DeepSeek-V3 recipe), except when they happen once
    per step (`ParallelSpec.fsdp_once_per_step`: priced in the step's data-parallel tail)."""
    units: list[LayerPasses] = []
    if first:
        units.append(embedding_passes(model, p, seq_len))
    units.extend(layer_passes(model, i, p, seq_len, opts) for i in layers)
    if last:
        units.append(head_passes(model, p, seq_len, opts))
        for d in range(model.mtp_depth):
            units.extend(mtp_passes(model, p, seq_len, d, opts))
    if p.zero_stage == 3 and not p.fsdp_once_per_step:
        from gpuhours.workloads.recipe import load_recipe
        from gpuhours.workloads.zero import unit_params, zero3_passes  # zero.py builds on this module's records

        recipe = recipe or load_recipe()
        params = unit_params(model, p, layers, first, last)
        units = [zero3_passes(u, dense, expert, p, recipe.weight_bytes, recipe.grad_bytes)
                 for u, (_, dense, expert) in zip(units, params)]
    return tuple(units)
