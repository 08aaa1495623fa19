"""A transformer layer's forward, backward-for-input and backward-for-weight passes as ordered segments:
attention (MLA or GQA, tensor- and context-parallel), the dense FFN or the MoE block (`workloads.moe_ops`), the
tensor-parallel collectives around each, and the recomputation policy's extra work."""

from __future__ import annotations

from dataclasses import replace

from gpuhours.workloads.eager_ops import check_eager_model, gqa_rope_ops, norm_ops
from gpuhours.workloads.memory_ops import attn_output_cache, blockwise_caches, branch_add, mla_qk_assembly
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.moe_ops import moe_segments
from gpuhours.workloads import op_sac
from gpuhours.workloads.ops import (
    BF16,
    GemmsOnly,
    LayerPasses,
    Op,
    OpOptions,
    PassBuilder,
    Segment,
    collective_segment,
    dense_ffn_ops,
    norm_tokens,
    rank_tokens,
)
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.recompute import layer_policy, modules
from gpuhours.workloads.ring_cp import kv_block_bytes_per_token, ring_segments, with_ring_partner
from gpuhours.workloads.torch_cp import bookkeeping_op, torch_cp_segments
from gpuhours.workloads.unfused_attention import UNFUSED, check_unfused_layout, core_ops as unfused_core

def cp_kv_bytes_per_token(model: ModelSpec, p: ParallelSpec) -> float:
    """Bytes per token of what context parallelism all-gathers before the attention core (and reduce-scatters as
    gradients after its backward). GQA / MHA: K and V of the rank's kv heads, 2 x kv_heads / tp x head_dim x BF16.
    MLA: the compressed KV latent, (kv_lora_rank + qk_rope_head_dim) x BF16 (gathered before the up-projection;
    the up-projection of the other ranks' latents is not counted, a small optimism)."""
    return kv_block_bytes_per_token(model, p)


def _cp_comm(phase: str, model: ModelSpec, p: ParallelSpec, tokens: int, layer, prefix: str) -> list[Segment]:
    """Context parallelism's K/V exchange of one layer (all-gather variant): the forward all-gathers the K and V
    of the whole sequence before the attention core, the backward reduce-scatters dK and dV after the core's
    backward. comm_bytes is the gathered buffer (hwmodels.collectives' convention): the micro-batch's
    tokens x cp = micro_batch_size x seq_len tokens x `cp_kv_bytes_per_token`; each rank sends (cp-1)/cp of it.
    Not overlapped with compute (they sit in the pass's dependency chain)."""
    if p.cp == 1 or phase == "W":
        return []
    if p.cp_comm == "ring":
        return ring_segments(phase, model, p, tokens, layer, prefix)
    if p.cp_comm == "torch":  # PyTorch's context_parallel (workloads.torch_cp)
        return torch_cp_segments(phase, model, p, tokens, layer, prefix)
    kind = "all_gather" if phase == "F" else "reduce_scatter"
    return [collective_segment(f"{prefix}.attn.cp_{kind}", phase, "attn", kind, "cp", tokens * p.cp,
                        cp_kv_bytes_per_token(model, p), layer)]


def _attention_ops(b: PassBuilder, model: ModelSpec, p: ParallelSpec, tokens: int, seq_len: int,
                   recompute_only: bool = False, recompute_core: bool = False, norms: bool = True,
                   up_proj: bool = True, fp8_caches: bool = False, elementwise: str = "fused",
                   attention_impl: str = "flash") -> None:
    """Attention of one layer on `tokens` tokens (the rank's micro-batch x sequence / cp), tensor-parallel over
    heads.

    Causal attention core: each query attends to (L + 1) / 2 keys on average, so the forward core costs
    2 * heads * (d_qk + d_v) * tokens * (L + 1) / 2 FLOPs (QK^T and PV); backward recomputes QK^T and computes
    dV, dP, dQ, dK: 2.5x the forward. With `recompute_core` (selective recomputation) the backward first runs
    the forward core again (op `attn.recompute.core`, priced as a forward attention op).
    With `recompute_only` the builder gets only what the backward runs again of this block's forward: the attention
    norm when `norms` ("layernorm" module) and, on MLA, the latent norms and the up-projections when `up_proj`
    ("mla_up_proj"), in forward order; MLA's RoPE and q / k assembly run again after the recomputed
    up-projections. `fp8_caches` (DeepSeek-V3's blockwise FP8 recipe): the output projection's input is cached
    in E5M6 (`memory_ops.attn_output_cache`).

    Context parallelism (cp > 1, `tokens` = b L / cp): the rank's queries attend to the keys of the whole sequence
    under the causal mask. With the load-balanced split (chunks i and 2cp-1-i of 2 cp chunks of c = L / 2cp
    tokens) the rank's causal pairs are c (i c) + c (c+1)/2 + c ((2cp-1-i) c) + c (c+1)/2 = c (L + 1)
    = (L / cp) (L + 1) / 2, exactly 1/cp of the whole sequence's L (L + 1) / 2, so the same formula with the
    rank's tokens holds: core = 2 heads (d_qk + d_v) (b L / cp) (L + 1) / 2. The core's HBM bytes count the rank's
    own q, k, v, o (the gathered keys are not added).

    Norms (`ModelSpec.norm`): RMSNorm and LayerNorm move the same bytes, read x and write y (2 x tokens x h x BF16
    forward; the backward reads x and dy and writes dx, charged the same here as before): LayerNorm's mean is one
    more reduction over the row already in registers (Ba et al. 2016, arXiv 1607.06450; Zhang & Sennrich 2019,
    arXiv 1910.07467, which drops it) and
    its bias gradient one more column sum of dy, so a fused, memory-bound kernel (Apex / Transformer Engine
    LayerNorm, one kernel each way like RMSNorm) takes the same time (Assumption: the extra arithmetic hides
    under the memory traffic). Their difference is the bias: parameters, gradients, optimizer state.
    Positions (`ModelSpec.positions`): RoPE reads and writes the rotated q and k dimensions, `rotary_pct` of each
    head's (GPT-NeoX `rotary_pct`: the first rotary_ndims of a head pass through RoPE, the rest are untouched, so
    the traffic scales with the fraction); learned positions have no op here (`stage_ops.embedding_passes`).
    `attention_impl` "megatron-unfused": the core as Megatron-LM's unfused ParallelAttention of 2021-22 ran it
    (full s x s batched GEMMs, softmax and dropout passes; `workloads.unfused_attention`).
    """
    a, h, tp = model.attention, model.hidden, p.tp
    heads = a.n_heads // tp
    act = norm_tokens(tokens, p) * h * BF16  # the norm's input: the sequence shard under sequence parallelism
    if b.phase == "W":  # weight gradients: GEMMs only
        b = GemmsOnly(b)
    if recompute_only:
        if norms:
            norm_ops(b, "attn_norm", norm_tokens(tokens, p), h, elementwise, model.norm)
        if not (up_proj and a.kind == "mla"):
            return
    if a.kind == "mla":
        if not recompute_only:
            b.elementwise("attn_norm", 2 * act)
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
        # RoPE and the q / k assembly (`memory_ops.mla_qk_assembly`) run again on recomputed up-projections: the
        # core's backward needs q and k, which are not kept
        b.elementwise("rope", 2 * tokens * heads * a.qk_rope_head_dim * BF16)
        mla_qk_assembly(b, a, tokens, heads, b.phase)
        if recompute_only:
            return
        o_in = heads * a.v_head_dim
    else:
        kv_heads = max(1, a.n_kv_heads // tp)
        norm_ops(b, "attn_norm", norm_tokens(tokens, p), h, elementwise, model.norm)
        b.gemm("wqkv", tokens, (heads + 2 * kv_heads) * a.head_dim, h)
        if elementwise == "eager":  # RoPE in fp32 and repeat_kv as eager kernels (`workloads.eager_ops`)
            gqa_rope_ops(b, tokens, heads * a.head_dim, kv_heads * a.head_dim, model.positions == "rotary")
        elif model.positions == "rotary":  # RoPE on rotary_pct of each q and k head's dimensions (read + write)
            b.elementwise("rope", 2 * tokens * (heads + kv_heads) * a.head_dim * BF16 * model.rotary_pct)
        o_in = heads * a.head_dim
    core = 2.0 * heads * (a.qk_head_dim + a.out_head_dim) * tokens * (seq_len + 1) / 2
    qkvo_bytes = tokens * heads * (2 * a.qk_head_dim + 2 * a.out_head_dim) * BF16
    if attention_impl == UNFUSED:
        unfused_core(b, p.micro_batch_size, heads, seq_len, a.qk_head_dim, a.out_head_dim, recompute_core)
    elif b.phase == "F":
        b.attention("core", core, qkvo_bytes)
    elif b.phase == "B":
        if recompute_core:
            b.ops.append(Op(f"{b.prefix}.recompute.core", "attention", "F", b.module, core, qkvo_bytes, "bf16"))
        b.attention("core_bwd", 2.5 * core, 2 * qkvo_bytes)
    if fp8_caches and b.phase != "W":  # the output projection's input kept in E5M6 (`memory_ops`)
        attn_output_cache(b, tokens, o_in, b.phase)
    b.gemm("wo", tokens, h, o_in)


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
        return [collective_segment(f"L{layer}.{module}.tp_all_gather", phase, module, "all_gather", "tp", tokens,
                            per_token, layer)]
    if p.sequence_parallel:
        kind = "all_gather" if where == "before" else "reduce_scatter"
        if phase == "B":
            kind = "reduce_scatter" if kind == "all_gather" else "all_gather"
        return [collective_segment(f"L{layer}.{module}.tp_{kind}", phase, module, kind, "tp", tokens, per_token, layer)]
    if (where == "after") == (phase == "F"):
        return [collective_segment(f"L{layer}.{module}.tp_all_reduce", phase, module, "all_reduce", "tp", tokens,
                            per_token, layer)]
    return []


def _edge_gemms(ops: list[Op]) -> tuple[Op | None, Op | None]:
    """The first and the last GEMM of a block's pass (recomputed forward GEMMs excluded): the column-parallel
    input projection and the row-parallel output projection the block's TP collectives are pipelined with."""
    gemms = [op for op in ops if op.kind == "gemm" and ".recompute." not in op.name]
    return (gemms[0], gemms[-1]) if gemms else (None, None)


def layer_passes(model: ModelSpec, layer: int, p: ParallelSpec, seq_len: int, opts: OpOptions = OpOptions(),
                 prefix: str | None = None, stage_position: int | None = None) -> LayerPasses:
    """The three passes of transformer layer `layer` for one micro-batch on one rank.

    MoE layers: attn -> dispatch (FP8 payload) -> experts -> combine (BF16); backward runs combine(B) ->
    mlp(B) -> dispatch(B) -> attn(B), both backward all-to-alls carrying BF16 gradients.

    Context parallelism: every op runs on the rank's micro_batch_size x seq_len / cp tokens; the K/V all-gather
    ("cp.all_gather(F)") precedes the attention segment, whose GEMMs and core run back to back, and the dK/dV
    reduce-scatter ("cp.reduce_scatter(B)") follows the attention backward (`_cp_comm`). Each sits in the pass's
    dependency chain, so its time adds as if it were between the QKV projection and the core. Under full
    recomputation the forward's all-gather runs again before the backward; otherwise the gathered K/V are kept
    for the core's backward.

    Recomputation (`opts.recompute`, `workloads.recompute`; under "full:N" the layer's `stage_position`, its index
    within its pipeline stage, decides, `recompute.layer_policy`): "core_attn" runs the core again just before its
    backward; "layernorm" and "mla_up_proj" run their ops again at the start of the attention block's backward
    (the FFN norm at the start of the FFN's); "mlp" (dense layers), "moe" and "shared_experts" (MoE layers) and
    "full" put their forward ops again, in forward order and still priced as forward ops, at the start of the
    layer's backward (`_recomputed`); "torchtitan-op" likewise its recomputed mms and element-wise ops
    (`workloads.op_sac`).
    """
    tokens = rank_tokens(p, seq_len)
    prefix = prefix or f"L{layer}"
    h, tp = model.hidden, p.tp
    passes: dict[str, list[Segment]] = {}
    policy = layer_policy(opts.recompute, stage_position)
    mods = modules(policy)
    norms, up_proj = "layernorm" in mods, "mla_up_proj" in mods and model.attention.kind == "mla"
    ew = opts.elementwise_kernels  # "eager": norms, RoPE, SwiGLU as unfused PyTorch kernels (`workloads.eager_ops`)
    if ew == "eager":
        check_eager_model(model, layer)
    if opts.attention_impl == UNFUSED:
        check_unfused_layout(model, p)
    for phase in ("F", "B", "W"):
        attn = PassBuilder(f"{prefix}.attn", "attn", phase, opts.fp8, opts.fp8_recipe)
        if phase == "B" and (norms or up_proj):
            recompute = PassBuilder(f"{prefix}.attn.recompute", "attn", "F", opts.fp8, opts.fp8_recipe)
            _attention_ops(recompute, model, p, tokens, seq_len, recompute_only=True, norms=norms, up_proj=up_proj,
                           elementwise=ew)
            attn.ops.extend(recompute.ops)
        _attention_ops(attn, model, p, tokens, seq_len, recompute_core="core_attn" in mods,
                       fp8_caches=blockwise_caches(opts), elementwise=ew, attention_impl=opts.attention_impl)
        if phase != "W" and not model.parallel_block:  # x + attn(x) (`memory_ops.branch_add`)
            branch_add(attn, "residual", norm_tokens(tokens, p), h)
        if p.cp_comm == "torch" and (extra := bookkeeping_op(phase, model, p, tokens, prefix)) is not None:
            at = next(i for i, op in enumerate(attn.ops) if op.kind == "attention" and ".recompute." not in op.name)
            attn.ops.insert(at + 1, extra)  # the fp32 merge / dK-dV accumulation beside the core's blocks
        mlp = PassBuilder(f"{prefix}.mlp", "mlp", phase, opts.fp8, opts.fp8_recipe)
        if phase == "B" and norms and ew == "eager":  # its forward kernels again, priced as forward ops
            again = PassBuilder(f"{prefix}.mlp", "mlp", "F", opts.fp8, opts.fp8_recipe)
            norm_ops(again, "ffn_norm.recompute", norm_tokens(tokens, p), h, ew, model.norm)
            mlp.ops.extend(again.ops)
        elif phase == "B" and norms:
            mlp.elementwise("ffn_norm.recompute", 2 * norm_tokens(tokens, p) * h * BF16)
        norm_ops(mlp, "ffn_norm", norm_tokens(tokens, p), h, ew, model.norm)
        moe = model.moe if model.is_moe_layer(layer) else None
        attn_seg = attn.segment(f"attn({phase})", layer)
        cp_comm = _cp_comm(phase, model, p, tokens, layer, prefix)
        if p.cp_comm in ("ring", "torch"):  # the K/V exchange runs under the attention core's blocks
            cp_comm = with_ring_partner(cp_comm, attn.ops)
        core = cp_comm + [attn_seg] if phase == "F" else [attn_seg] + cp_comm
        first, last = _edge_gemms(attn.ops)
        segs_attn = _tp_comm(phase, "attn", tokens, h, p, layer, "before", first) + core
        segs_attn += _tp_comm(phase, "attn", tokens, h, p, layer, "after", last)
        if moe is None and model.parallel_block:
            dense_ffn_ops(mlp, model.dense_intermediate, h, tokens, tp, activation=model.ffn_activation,
                          elementwise=ew)
            if phase != "W":  # x + attn + mlp: one three-input sum each way
                branch_add(mlp, "residual", norm_tokens(tokens, p), h, inputs=3)
            passes[phase] = _parallel_block(phase, attn, mlp, core, tokens, h, p, layer)
            continue
        if moe is None:
            dense_ffn_ops(mlp, model.dense_intermediate, h, tokens, tp, activation=model.ffn_activation,
                          elementwise=ew)
            if phase != "W":
                branch_add(mlp, "residual", norm_tokens(tokens, p), h)
            first, last = _edge_gemms(mlp.ops)
            segs_mlp = _tp_comm(phase, "mlp", tokens, h, p, layer, "before", first)
            segs_mlp += [mlp.segment(f"mlp({phase})", layer)]
            segs_mlp += _tp_comm(phase, "mlp", tokens, h, p, layer, "after", last)
            order = segs_attn + segs_mlp if phase == "F" else segs_mlp + segs_attn
            passes[phase] = order
            continue
        # DeepSeekMoE (workloads.moe_ops): router and shared experts on the local tokens, routed experts on the
        # dispatched rows, between the dispatch and combine all-to-alls.
        # The gate (FFN norm, router, the dispatch's FP8 cast) runs before the dispatch, its backward after it.
        gate, dispatch, mlp_seg, combine = moe_segments(mlp, model, moe, p, tokens, phase, opts, prefix, layer)
        if phase == "W":
            passes[phase] = [mlp_seg, attn.segment("attn(W)", layer)]
        elif phase == "F":
            passes[phase] = segs_attn + [gate] + dispatch + [mlp_seg] + combine
        else:
            passes[phase] = combine + [mlp_seg] + dispatch + [gate] + segs_attn
    if policy == op_sac.POLICY:  # torchtitan's op-level SAC: its recomputed mms and element-wise ops (`op_sac`)
        again = op_sac.again(passes["F"], model, p, layer, tokens, opts.fp8, opts.fp8_recipe)
    else:
        again = passes["F"] if policy == "full" else _block_forward(passes["F"], mods, model.is_moe_layer(layer))
    if again:
        passes["B"] = [_recomputed(seg) for seg in again] + passes["B"]
    return LayerPasses(prefix, tuple(passes["F"]), tuple(passes["B"]), tuple(passes["W"]))


def _parallel_block(phase: str, attn: PassBuilder, mlp: PassBuilder, core: list[Segment], tokens: int, h: int,
                    p: ParallelSpec, layer: int) -> list[Segment]:
    """A parallel attention + MLP block (`ModelSpec.parallel_block`, GPT-NeoX's two norms of the same input x):
    y = x + attn(norm1(x)) + mlp(norm2(x)). Under tensor parallelism both branches' outputs are partial sums that
    add before one reduction, so the block has one tensor-parallel collective where the sequential block has
    one per branch (Wang & Komatsuzaki's GPT-J and GPT-NeoX's `gpt_j_residual` do one all-reduce of the sum):
    - sequence parallelism: forward one all-gather of both normalised shards (2h per token, one buffer) before
      the branches and one reduce-scatter of the summed outputs (h) after; backward one all-gather of the output
      gradient (h) and one reduce-scatter of both branch-input gradients (2h); weight pass one all-gather (2h)
      re-gathering the inputs. Sequential block: two of each, h per token.
    - without: forward one all-reduce (h) of the sum; backward one all-reduce (h): both norms' backward is linear
      in the incoming gradient, so the two branch gradients are summed locally before one all-reduce
      (Assumption: the implementation does so; one per branch otherwise).
    The two branches run one after the other on the compute stream (one segment each) and the collectives stay in
    the pass's dependency chain: nothing more overlaps than in the sequential block (the fused input GEMM of
    PaLM sec. 2 is not modelled: the two input GEMMs keep their own shapes)."""
    before_width = 2 * h if p.sequence_parallel else h
    first, _ = _edge_gemms(attn.ops)
    _, last = _edge_gemms(mlp.ops)
    before = _tp_comm(phase, "attn", tokens, before_width, p, layer, "before", first)
    after = _tp_comm(phase, "mlp", tokens, h, p, layer, "after", last)
    mlp_seg = mlp.segment(f"mlp({phase})", layer)
    if phase == "F":
        return before + core + [mlp_seg] + after
    if phase == "B":
        return after + [mlp_seg] + core + before
    return [mlp_seg] + core + before


def _block_forward(forward: list[Segment], mods: frozenset[str], moe_layer: bool) -> list[Segment]:
    """The forward ops a selective policy runs again as a whole block, segment by segment in forward order (empty
    segments dropped): "mlp" on a dense layer, the FFN's ops ("<prefix>.mlp.ffn.*") and its tensor-parallel
    collectives; "moe" on an MoE layer, the block's ops but the FFN norm (router, dispatch, experts, shared experts,
    combine, the ETP collectives); "shared_experts" (without "moe"), the shared experts' ops ("<prefix>.mlp.shared.*").
    The norms are the "layernorm" module's."""
    if moe_layer and "moe" in mods:
        def keep(op: Op) -> bool:
            return op.module in ("mlp", "moe") and not op.name.endswith((".ffn_norm", ".residual"))
    elif moe_layer and "shared_experts" in mods:
        def keep(op: Op) -> bool:
            return op.module == "mlp" and ".mlp.shared." in op.name
    elif not moe_layer and "mlp" in mods:
        def keep(op: Op) -> bool:
            return op.module == "mlp" and (op.kind == "collective" or ".mlp.ffn." in op.name)
    else:
        return []
    out = []
    for seg in forward:
        ops = tuple(op for op in seg.ops if keep(op))
        if ops:
            out.append(replace(seg, ops=ops))
    return out


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
