"""A pipeline stage as units: the token embedding (first stage), its transformer layers, and on the last stage
the output head with its loss and the multi-token-prediction modules; under ZeRO-3 each unit with its parameter
gathers and gradient reduce-scatters."""

from __future__ import annotations

from collections import OrderedDict

from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.layer_templates import LayerRef, _without_split, layer_passes_for, layer_ref_maker
from gpuhours.workloads.layer_templates import templates_on as _templates_on
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
    return _stage_units(model, p, seq_len, layers, first, last, opts, recipe, layer_passes_for)


def _stage_units(model, p, seq_len, layers, first, last, opts, recipe, layer_unit) -> tuple:
    holds = stage_holds(p, layers, first, last)
    units: list[LayerPasses] = []
    if holds.embedding:
        units.append(embedding_passes(model, p, seq_len))
    # stage_position: a layer's index within its stage, for "full:N" recomputation (`workloads.recompute`)
    # (identical layers are renamed copies of one build per kind: `workloads.layer_templates`, equal to direct builds)
    units.extend(layer_unit(model, i, p, seq_len, opts, stage_position=i - layers.start) for i in layers)
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


# Stages built for a layout's candidate splits (`simulator.split_search`), per layout without its layers per stage
# (`layer_templates._without_split`), most recently used last. Assumption (our bound): the candidates of one layout
# are simulated one after another, so the stages of the last 4 layouts are kept; a stage is a tuple of units that
# are mostly the layer copies `layer_templates` keeps anyway.
_STAGES_LIMIT = 4
_STAGES: OrderedDict[tuple, dict] = OrderedDict()


def clear_stage_memo() -> None:
    _STAGES.clear()


def stage_units_for(model: ModelSpec, p: ParallelSpec, seq_len: int, layers: range, first: bool, last: bool,
                    opts: OpOptions = OpOptions(), recipe=None) -> tuple[LayerPasses, ...]:
    """`stage_units(model, p, seq_len, layers, first, last, opts, recipe)`, built once per stage (its layer range
    and whether it is the first or last) for the splits of one layout: `stage_units` and the modules it builds
    with read the layout's fields but not its layers per stage (as `layer_templates` relies on for a layer), so
    candidate splits that share a stage share its units. Off with the layer templates
    (`layer_templates.templates_enabled(False)`), or for an unhashable key."""
    memo = _layout_memo(model, p, seq_len, opts, recipe)
    if memo is None:
        return stage_units(model, p, seq_len, layers, first, last, opts, recipe)
    at = (layers.start, layers.stop, first, last)
    hit = memo.get(at)
    if hit is None:
        hit = memo[at] = stage_units(model, p, seq_len, layers, first, last, opts, recipe)
    return hit


def stage_unit_refs(model: ModelSpec, p: ParallelSpec, seq_len: int, layers: range, first: bool, last: bool,
                    opts: OpOptions = OpOptions(), recipe=None) -> tuple[LayerPasses | LayerRef, ...]:
    """`stage_units_for(...)` with each layer that would be a template's renamed copy left as its `LayerRef`
    (`ref.unit()` is that copy), so that a stage whose signature is all that is read is not renamed layer by
    layer (kept per stage as `stage_units_for`'s). A stage already built, or one under ZeRO-3's per-unit gathers
    (which wrap every unit), is its units."""
    memo = _layout_memo(model, p, seq_len, opts, recipe)
    if memo is None or (p.zero_stage == 3 and not p.fsdp_once_per_step):
        return stage_units_for(model, p, seq_len, layers, first, last, opts, recipe)
    at = (layers.start, layers.stop, first, last)
    hit = memo.get(at) or memo.get(("refs",) + at)
    if hit is None:
        hit = memo[("refs",) + at] = _stage_units(model, p, seq_len, layers, first, last, opts, recipe,
                                                  layer_ref_maker(model, p, seq_len, opts))
    return hit


def _layout_memo(model, p, seq_len, opts, recipe) -> dict | None:
    """The stages kept for this layout (None: templates off, or an unhashable key)."""
    if not _templates_on():
        return None
    key = (model, _without_split(p), seq_len, opts, recipe)
    try:
        memo = _STAGES.get(key)
    except TypeError:  # an unhashable field (none today): no memo
        return None
    if memo is None:
        memo = _STAGES[key] = {}
        while len(_STAGES) > _STAGES_LIMIT:
            _STAGES.popitem(last=False)
    else:
        _STAGES.move_to_end(key)
    return memo
