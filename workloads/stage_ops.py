"""A pipeline stage as units: the token embedding (first stage), its transformer layers, and on the last stage
the output head with its loss and the multi-token-prediction modules; under ZeRO-3 each unit with its parameter
gathers and gradient reduce-scatters."""

from __future__ import annotations

from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.layer_templates import layer_passes_for
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import (
    BF16,
    FP32,
    LayerPasses,
    Op,
    OpOptions,
    PassBuilder,
    Segment,
    norm_tokens,
    rank_tokens,
)
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.pipeline_layout import stage_holds

def embedding_passes(model: ModelSpec, p: ParallelSpec, seq_len: int) -> LayerPasses:
    """Token embedding: a gather forward, a scatter-add of FP32 gradients for the weights.

    Learned positions (`ModelSpec.positions = "learned"`, GPT-2/GPT-3 style, as `inputs_embeds + position_embeds`
    in eager PyTorch): the forward also gathers each token's position row (read h, write h) and adds it to the
    token embedding (read 2h, write h); the weight pass scatter-adds the position rows' FP32 gradients like the
    token table's (the add's gradient is the identity: no op)."""
    tokens = rank_tokens(p, seq_len)
    f = [Op("embed.gather", "embedding", "F", "embed", 0.0, tokens * model.hidden * BF16 * 2)]
    w = [Op("embed.grad", "embedding", "W", "embed", 0.0, tokens * model.hidden * FP32 * 2)]
    if model.positions == "learned":
        f += [Op("embed.pos_gather", "embedding", "F", "embed", 0.0, tokens * model.hidden * BF16 * 2),
              Op("embed.pos_add", "elementwise", "F", "embed", 0.0, tokens * model.hidden * BF16 * 3)]
        w += [Op("embed.pos_grad", "embedding", "W", "embed", 0.0, tokens * model.hidden * FP32 * 2)]
    return LayerPasses("embed", (Segment("embed(F)", "compute", tuple(f)),), (),
                       (Segment("embed(W)", "compute", tuple(w)),))


def head_passes(model: ModelSpec, p: ParallelSpec, seq_len: int, opts: OpOptions = OpOptions(),
                prefix: str = "head") -> LayerPasses:
    """Final norm, output head (kept in BF16 by the FP8 recipe) and the cross-entropy loss over the vocabulary.
    The final norm's traffic is the same for RMSNorm and LayerNorm (`ModelSpec.norm`: one read and one write of
    each row; the mean is a per-row statistic computed in the same pass, see `workloads.layer_ops`)."""
    tokens = rank_tokens(p, seq_len)
    vocab = model.vocab // p.tp
    out: dict[str, Segment] = {}
    for phase in ("F", "B", "W"):
        b = PassBuilder(prefix, "head", phase, opts.fp8, opts.fp8_recipe)
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
        b = PassBuilder(f"mtp{depth}", "mtp", phase, opts.fp8, opts.fp8_recipe)
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
    A `ParallelSpec.pipeline_layout` moves them (`workloads.pipeline_layout.stage_holds`): the embedding and the
    head may sit alone on their stages, and on an MTP stage without the loss the modules keep their projections
    and blocks while their heads and losses run on the loss stage (after the main head), as in Megatron-Core.
    Under ZeRO-3 each unit also gathers and reduce-scatters its parameters (`zero3_passes`; byte sizes from
    `recipe`, a `workloads.recipe.MemoryRecipe`, default the DeepSeek-V3 recipe), except when they happen once
    per step (`ParallelSpec.fsdp_once_per_step`: priced in the step's data-parallel tail)."""
    holds = stage_holds(p, layers, first, last)
    units: list[LayerPasses] = []
    if holds.embedding:
        units.append(embedding_passes(model, p, seq_len))
    # stage_position: a layer's index within its stage, for "full:N" recomputation (`workloads.recompute`)
    # (identical layers are renamed copies of one build per kind: `workloads.layer_templates`, equal to direct builds)
    units.extend(layer_passes_for(model, i, p, seq_len, opts, stage_position=i - layers.start) for i in layers)
    if holds.head:
        units.append(head_passes(model, p, seq_len, opts))
    if holds.mtp_modules or holds.mtp_heads:
        for d in range(model.mtp_depth):
            proj, block, head = mtp_passes(model, p, seq_len, d, opts)
            units.extend(((proj, block) if holds.mtp_modules else ()) + ((head,) if holds.mtp_heads else ()))
    if p.zero_stage == 3 and not p.fsdp_once_per_step:
        from gpuhours.workloads.recipe import load_recipe
        from gpuhours.workloads.zero import unit_params, zero3_passes  # zero.py builds on this module's records

        recipe = recipe or load_recipe()
        params = unit_params(model, p, layers, first, last)
        units = [zero3_passes(u, dense, expert, p, recipe.weight_bytes, recipe.grad_bytes)
                 for u, (_, dense, expert) in zip(units, params)]
    return tuple(units)
