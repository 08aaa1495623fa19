"""Identical layers built once: a transformer layer's passes as a renamed copy of its kind's template.

`workloads.layer_ops.layer_passes` depends on the layer's index only through its kind -- dense or MoE
(`ModelSpec.is_moe_layer`) and the recomputation policy it follows (`recompute.layer_policy` of its stage
position, which differs only under "full:N") -- and through names: every op is called "L<i>.<module>.<op>" and
every segment carries `layer = i`. So a stage of 10 identical layers needs one build and nine renames, and a sweep
worker that builds the same (model, layout, sequence, options) again needs none.

`layer_passes_for(model, i, p, seq_len, opts, stage_position)` is equal (==, every field of every op) to
`layer_passes(model, i, p, seq_len, opts, stage_position=stage_position)`:
- the template of a kind (key: model, layout, sequence length, options, is-MoE, policy) is built from the first
  layer asked for, and checked once against direct builds of up to two other layers of the same kind (the next
  one and the model's last one of that kind): the renamed template must equal each. When a check fails (a layer
  that depends on its index in another way, e.g. a per-layer attention window added to `layer_ops`), that kind
  is marked and every layer of it is built directly from then on;
- renaming replaces the "L<r>." prefix of op names (and of an op's `overlaps` partner) by "L<i>.", the segments'
  `layer` r by i and the unit's name; nothing else changes.
A renamed unit remembers its `Template` (`template_of`), so that figures read from a unit's op prices only
(`simulator.stage_classes.stage_signature`) are computed once per template; a renamed segment remembers its
template segment (`segment_template`) when the check also found every op's price key (`chunks.price_key`) the
same across layers, so that `chunks.HardwareCoster` prices a segment once per template. Templates are kept per process,
least recently used first out beyond `_LIMIT` (a 61-layer MoE layout holds three: dense, MoE, recomputed).
`templates_enabled(False)` turns the cache off (every layer built directly), for A/B checks.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import replace

from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import LayerPasses, Op, OpOptions, Segment
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.recompute import layer_policy

# Assumption (our bound, not a measurement): distinct (model, layout, sequence, options, kind) keys a sweep worker
# keeps; each template is one layer's ops (tens of kB), so the cache stays well under a megabyte per key.
_LIMIT = 64
_CACHE: OrderedDict[tuple, "Template | None"] = OrderedDict()  # None: the kind failed its check (build directly)
_STATE = {"enabled": True}
_set = object.__setattr__  # a frozen record's fields, set once on a fresh copy


class Template:
    """One built layer of a kind: its index and passes; `memo` holds figures derived from its op prices only."""

    __slots__ = ("layer", "passes", "memo")

    def __init__(self, layer: int, passes: LayerPasses):
        self.layer, self.passes, self.memo = layer, passes, {}


@contextmanager
def templates_enabled(on: bool):
    """Build layers from templates (True, the default) or each directly (False) inside the block."""
    before = _STATE["enabled"]
    _STATE["enabled"] = on
    try:
        yield
    finally:
        _STATE["enabled"] = before


def templates_on() -> bool:
    """Whether layers are built from templates (`templates_enabled`)."""
    return _STATE["enabled"]


def clear_templates() -> None:
    _CACHE.clear()
    for tpl in _COPIES.values():
        tpl.memo.pop("copies", None)
    _COPIES.clear()


def template_of(unit: LayerPasses) -> Template | None:
    """The template a unit was renamed from (None for a unit built directly or copied since)."""
    return unit.__dict__.get("_template")


def layer_passes_for(model: ModelSpec, layer: int, p: ParallelSpec, seq_len: int, opts: OpOptions = OpOptions(),
                     stage_position: int | None = None) -> LayerPasses:
    """`layer_passes(model, layer, p, seq_len, opts, stage_position=stage_position)`, from its kind's template."""
    if not _STATE["enabled"]:
        return layer_passes(model, layer, p, seq_len, opts, stage_position=stage_position)
    key = (model, _without_split(p), seq_len, opts, model.is_moe_layer(layer),
           layer_policy(opts.recompute, stage_position))
    try:
        hash(key)
    except TypeError:  # an unhashable field (none today): no template, build directly
        return layer_passes(model, layer, p, seq_len, opts, stage_position=stage_position)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        tpl = _CACHE[key]
    else:
        tpl = _CACHE[key] = _checked_template(model, layer, p, seq_len, opts, stage_position)
        if len(_CACHE) > _LIMIT:
            _CACHE.popitem(last=False)
    if tpl is None:
        return layer_passes(model, layer, p, seq_len, opts, stage_position=stage_position)
    return _copy_of(tpl, layer)


class LayerRef:
    """Layer `layer` as its template's copy, not yet renamed (`layer_ref_maker`): what a stage's signature reads of
    it is its template's (`simulator.stage_classes.unit_signature`); `unit()` is the renamed copy itself."""

    __slots__ = ("template", "layer")

    def __init__(self, template: Template, layer: int):
        self.template, self.layer = template, layer

    def unit(self) -> LayerPasses:
        return _copy_of(self.template, self.layer)


def layer_ref_maker(model: ModelSpec, p: ParallelSpec, seq_len: int, opts: OpOptions = OpOptions()):
    """A function `(model, layer, p, seq_len, opts, stage_position)` -> `layer_passes_for(...)` for this (model,
    layout, sequence, options), as a `LayerRef` when it would be a template's copy (renamed only when asked for):
    the template of each kind looked up once."""
    stripped, kinds = _without_split(p), {}

    def make(_model, layer: int, _p, _seq_len, _opts, stage_position: int | None = None) -> LayerRef | LayerPasses:
        kind = (model.is_moe_layer(layer), layer_policy(opts.recompute, stage_position))
        tpl = kinds.get(kind)
        if tpl is None and _STATE["enabled"]:
            key = (model, stripped, seq_len, opts) + kind  # `layer_passes_for`'s key
            try:
                tpl = _CACHE.get(key)
            except TypeError:  # an unhashable field: no template
                tpl = None
            if tpl is not None:
                _CACHE.move_to_end(key)
                kinds[kind] = tpl
        if tpl is not None:
            return LayerRef(tpl, layer)
        # no template yet (`layer_passes_for` makes it), none for this kind, or templates off
        return layer_passes_for(model, layer, p, seq_len, opts, stage_position)

    return make


# Templates whose renamed copies are kept (`_copy_of`), most recently used last. Candidate splits of one layout
# (`simulator.split_search`) and sweep points of one layout ask for the same layers again; a copy is an immutable
# record, so one object serves them all. Assumption (our bound): a layout uses at most three kinds (dense, MoE,
# recomputed head), so 8 templates cover the layout being simulated and its neighbours; a 61-layer MoE model's
# copies are a few megabytes.
_COPIES_LIMIT = 8
_COPIES: OrderedDict[int, Template] = OrderedDict()


def _copy_of(tpl: Template, layer: int) -> LayerPasses:
    """`renamed(tpl, layer)`, built once per (template, layer) while the template is among the last
    `_COPIES_LIMIT` used (the same fields as a fresh rename: it is one)."""
    copies = tpl.memo.get("copies")
    if copies is None:
        copies = tpl.memo["copies"] = {}
        _COPIES[id(tpl)] = tpl
        while len(_COPIES) > _COPIES_LIMIT:
            _COPIES.popitem(last=False)[1].memo.pop("copies", None)
    elif next(reversed(_COPIES)) != id(tpl):
        _COPIES.move_to_end(id(tpl))
    hit = copies.get(layer)
    if hit is None:
        hit = copies[layer] = renamed(tpl, layer)
    return hit


_STRIPPED: list = [None, None]  # the last layout asked for and its key (`_without_split`)


def _without_split(p: ParallelSpec) -> ParallelSpec:
    """The layout as a template key: without its layers per stage, which no layer's passes read
    (`workloads.layer_ops` and the modules it builds with), so that the candidate splits stage balancing simulates
    (`simulator.split_search`) share their templates. A user-set `pipeline_layout` stays in the key."""
    if p.stage_layers is None or p.pipeline_layout is not None:
        return p
    if _STRIPPED[0] is not p:
        _STRIPPED[:] = [p, replace(p, stage_layers=None)]
    return _STRIPPED[1]


def _checked_template(model, layer, p, seq_len, opts, stage_position) -> Template | None:
    tpl = Template(layer, layer_passes(model, layer, p, seq_len, opts, stage_position=stage_position))
    tpl.passes.__dict__["_template"] = tpl  # its own layer is the template itself
    moe = model.is_moe_layer(layer)
    same_kind = [i for i in range(model.n_layers) if model.is_moe_layer(i) == moe and i != layer]
    checks = {i for i in (layer + 1, same_kind[-1] if same_kind else None) if i in same_kind}
    from gpuhours.simulator.chunks import price_key  # the simulator builds on these records: imported late

    def prices(unit: LayerPasses) -> list:
        return [[price_key(op) for op in seg.ops] for seg in unit.forward + unit.backward + unit.weight]

    same_prices = bool(checks)
    for i in sorted(checks):
        direct = layer_passes(model, i, p, seq_len, opts, stage_position=stage_position)
        if renamed(tpl, i, link=False) != direct:
            return None
        same_prices = same_prices and prices(direct) == prices(tpl.passes)
    # every op of a renamed segment has its template op's price key (`chunks.price_key`): the segment costs what
    # the template's does, so `segment_template` may stand in for it where op prices are all that is read
    tpl.memo["same_prices"] = same_prices
    return tpl


def segment_template(seg: Segment) -> Segment:
    """The template segment whose ops have the same price keys as `seg`'s (`seg` itself when there is none)."""
    return seg.__dict__.get("_template", seg)


def renamed(tpl: Template, layer: int, link: bool = True) -> LayerPasses:
    """The template's passes as layer `layer`'s (the template itself for its own layer)."""
    src = tpl.passes
    if layer == tpl.layer:
        return src
    old, new = f"L{tpl.layer}", f"L{layer}"
    if src.name != old:  # a prefix other than the layer's own: only `layer_passes`' default prefix is renamed
        raise ValueError(f"template name {src.name!r}: expected {old!r}")
    dot_old, dot_new = old + ".", new + "."
    cut = len(dot_old)

    def op_as(op: Op) -> Op:
        d = op.__dict__.copy()
        if op.name.startswith(dot_old):
            d["name"] = dot_new + op.name[cut:]
        if op.overlaps is not None:
            d["overlaps"] = op_as(op.overlaps)
        out = object.__new__(Op)  # the template's fields were validated when it was built
        _set(out, "__dict__", d)
        return out

    same_prices = link and tpl.memo.get("same_prices", False)

    def seg_as(seg: Segment) -> Segment:
        out = Segment(seg.name, seg.stream, tuple(op_as(op) for op in seg.ops),
                      layer if seg.layer == tpl.layer else seg.layer)
        if same_prices:
            out.__dict__["_template"] = seg
        return out

    out = LayerPasses(new, tuple(map(seg_as, src.forward)), tuple(map(seg_as, src.backward)),
                      tuple(map(seg_as, src.weight)))
    if link:
        out.__dict__["_template"] = tpl
    return out
