"""A stage as an instruction's profile reads it, without renaming its layers.

`chunks.HardwareCoster._add_pass` reads of a unit only its passes' segments, and of a segment its name, stream and
layer, and through `layer_templates.segment_template` its template's figures (price, SMs, kernels, whether it
crosses nodes, DeepEP notify: all from the template's ops). A layer that `layer_templates` would rename from a
template whose ops price alike in every layer (`same_prices`, checked when the template was made) therefore needs
no renamed ops for its profile: a view of the template's segments carrying the layer's own number (the number
`renamed` gives: the layer's where the template's segment had the template's layer) gives the same tasks, so the
same profile, bit for bit. Other units, and every unit of a stage already built, are the units themselves.
"""

from __future__ import annotations

from gpuhours.workloads.layer_templates import LayerRef
from gpuhours.workloads.stage_ops import stage_unit_refs


class SegmentView:
    """A template segment as layer `layer`'s: name, stream and ops of the template (`_template` for
    `layer_templates.segment_template`), the renamed segment's layer number."""

    def __init__(self, seg, layer: int):
        self.name, self.stream, self.ops, self.layer, self._template = seg.name, seg.stream, seg.ops, layer, seg


class UnitView:
    __slots__ = ("name", "forward", "backward", "weight")

    def __init__(self, ref: LayerRef):
        tpl = ref.template

        def view(segments):
            return tuple(SegmentView(seg, ref.layer if seg.layer == tpl.layer else seg.layer) for seg in segments)

        p = tpl.passes
        self.name = f"L{ref.layer}"
        self.forward, self.backward, self.weight = view(p.forward), view(p.backward), view(p.weight)


def profile_units(coster, s: int) -> tuple:
    """Stage s of `coster` (a `HardwareCoster`) as `_add_pass` reads it: its units where they are built, else
    with each renamable layer as a view of its template (`UnitView`)."""
    if coster._stages is not None:
        return coster._stages[s]
    built = coster.__dict__.get("_built_stages", {}).get(s)
    if built is not None:
        return built
    views = coster.__dict__.setdefault("_profile_units", {})
    hit = views.get(s)
    if hit is None:
        start = sum(coster.stage_layers[:s])
        refs = stage_unit_refs(coster.model, coster.parallel, coster.seq_len,
                               range(start, start + coster.stage_layers[s]), s == 0,
                               s == len(coster.stage_layers) - 1, coster.opts, coster.recipe)
        hit = views[s] = tuple(_unit(r) for r in refs)
    return hit


def _unit(unit):
    if type(unit) is not LayerRef:
        return unit
    tpl = unit.template
    if unit.layer == tpl.layer:
        return tpl.passes
    if not tpl.memo.get("same_prices", False):  # figures read from the segment itself: the renamed copy
        return unit.unit()
    return UnitView(unit)
