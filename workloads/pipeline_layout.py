"""A user-set pipeline layout: which virtual stage holds the embedding, each transformer layer, the MTP modules and
the head with its loss (`ParallelSpec.pipeline_layout`).

The notation follows Megatron-Core's `pipeline_model_parallel_layout` (megatron/core/transformer/
pipeline_parallel_layer_layout.py, read for its grammar and rules; the parser here is our own):

- A layout lists the virtual stages in forward order, separated by ``|``. Stage s runs where the schedule puts
  it (1F1B: rank s; interleaved 1F1B: rank s mod pp; DualPipeV: the V), so the number of stages must be the
  layout's `num_stages` (pp, pp x vpp, 2 pp).
- Inside a stage each symbol is one piece of the model, in order: ``E`` the token embedding, ``t`` one
  transformer layer, ``m`` one multi-token-prediction module, ``L`` the final norm, output head and loss.
- Commas and spaces are only for reading and are dropped. ``x*n`` repeats the symbol x n times; ``(...)*n``
  repeats the bracketed text n times, and that text may itself hold ``|`` (so ``(t*4|)*3`` is three stages of
  four layers). Brackets may nest; they are unrolled innermost first, then the single-symbol repeats.
  Example: ``E|t*3|t*4|t*4|t*3,L`` (embedding alone on the first stage, head and loss after three layers on the
  last); Megatron's own example ``Ettt|(tt|)*29,m|L`` puts the MTP module alone on the second-to-last stage and
  the loss alone on the last.

Rules checked against the model (each a one-line ValueError naming `pipeline_layout`), as Megatron-Core checks
them: ``E`` exactly once and first, ``L`` exactly once and last, exactly n_layers ``t`` and mtp_depth ``m``, no
``t`` after an ``m``, every ``m`` in one stage. One more rule of ours: no stage is empty (Megatron-Core allows an
empty stage; here it would only add a hop, and it would make stages with the same layers indistinguishable).

Where the head and losses run: Megatron-Core's stage holding ``m`` runs the MTP modules' norms, projections and
blocks and hands their hidden states on; every loss, the MTP ones included, is computed on the stage holding ``L``
(gpt_model.py `_postprocess`: a stage without post_process returns the hidden states before `process_mtp_loss`).
So here an ``m`` stage holds each module's projection and block, and the ``L`` stage the main head and every MTP
module's head and loss. With ``m`` and ``L`` on one stage the units are ordered as without a layout (head, then
each module's projection, block and head).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

SYMBOLS = {"E": "embedding", "t": "transformer layer", "m": "MTP module", "L": "head and loss"}
_GROUP = re.compile(r"\(([^()]*)\)\*(\d+)")
_REPEAT = re.compile(r"([EtmL])\*(\d+)")


@dataclass(frozen=True)
class LayoutStage:
    """What one virtual stage of a layout holds."""

    embedding: bool
    layers: int
    mtp: int
    loss: bool

    @property
    def empty(self) -> bool:
        return not (self.embedding or self.layers or self.mtp or self.loss)


@dataclass(frozen=True)
class StageHolds:
    """The non-layer units of one stage: the embedding, the main head and loss, the MTP modules' projections and
    blocks, and the MTP modules' heads and losses."""

    embedding: bool
    head: bool
    mtp_modules: bool
    mtp_heads: bool


def _expand(text: str) -> str:
    s = text.replace(",", "").replace(" ", "")
    while True:
        unrolled = _GROUP.sub(lambda g: g.group(1) * int(g.group(2)), s)
        if unrolled == s:
            break
        s = unrolled
    s = _REPEAT.sub(lambda g: g.group(1) * int(g.group(2)), s)
    bad = sorted(set(s) - set(SYMBOLS) - {"|"})
    if bad:
        raise ValueError(f"pipeline_layout: unknown or unbalanced {''.join(bad)!r} in {text!r} (allowed: E, t, m, "
                         f"L, '|' between stages, x*n and (...)*n repeats, commas)")
    return s


@lru_cache(maxsize=64)
def parse_layout(text: str) -> tuple[tuple[str, ...], ...]:
    """The layout's stages as tuples of symbols, after unrolling repeats; raises ValueError naming
    `pipeline_layout` on an unknown symbol, a misplaced E or L, an m before a t, MTP modules over two stages or
    an empty stage."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"pipeline_layout must be a layout string such as 'E|t*3|t*4|t*4|t*3,L', got {text!r}")
    stages = tuple(tuple(stage) for stage in _expand(text).split("|"))
    flat = [(s, sym) for s, stage in enumerate(stages) for sym in stage]
    symbols = [sym for _, sym in flat]
    for sym, where, pos in (("E", "first", 0), ("L", "last", -1)):
        if symbols.count(sym) != 1:
            raise ValueError(f"pipeline_layout: {sym} ({SYMBOLS[sym]}) must appear exactly once, found "
                             f"{symbols.count(sym)} in {text!r}")
        if not symbols or symbols[pos] != sym:
            raise ValueError(f"pipeline_layout: {sym} ({SYMBOLS[sym]}) must be the {where} symbol of the layout "
                             f"in {text!r}")
    for s, stage in enumerate(stages):
        if not stage:
            raise ValueError(f"pipeline_layout: stage {s} is empty in {text!r}; every stage must hold at least one "
                             f"of E, t, m, L")
    if "m" in symbols:
        first_m = symbols.index("m")
        if "t" in symbols[first_m:]:
            raise ValueError(f"pipeline_layout: every t (transformer layer) must come before the first m (MTP "
                             f"module) in {text!r}")
        holders = {s for s, sym in flat if sym == "m"}
        if len(holders) > 1:
            raise ValueError(f"pipeline_layout: every m (MTP module) must be in one stage, found them in stages "
                             f"{sorted(holders)} of {text!r}")
    return stages


def layout_stages(text: str) -> tuple[LayoutStage, ...]:
    """Each stage's contents."""
    return tuple(LayoutStage("E" in st, st.count("t"), st.count("m"), "L" in st) for st in parse_layout(text))


def layout_stage_layers(text: str) -> tuple[int, ...]:
    """Transformer layers per stage the layout implies (`ParallelSpec.stage_layers`)."""
    return tuple(st.layers for st in layout_stages(text))


def check_layout_model(text: str, n_layers: int, mtp_depth: int) -> None:
    """Raise ValueError naming `pipeline_layout` unless it holds every layer and MTP module of the model once."""
    stages = layout_stages(text)
    layers, mtp = sum(st.layers for st in stages), sum(st.mtp for st in stages)
    if layers != n_layers:
        raise ValueError(f"pipeline_layout holds {layers} transformer layers (t); the model has {n_layers}")
    if mtp != mtp_depth:
        raise ValueError(f"pipeline_layout holds {mtp} MTP modules (m); the model has {mtp_depth}")


def stage_holds(p, layers: range, first: bool, last: bool) -> StageHolds:
    """The non-layer units of the stage holding transformer layers `layers` (`first`/`last`: the first or last
    stage). Without a layout: the embedding on the first stage, head, loss and every MTP module on the last.
    With one (`p.pipeline_layout`, a `ParallelSpec`'s): where the layout puts them; the stage is the one whose
    layers are `layers` (and first/last agree): unique, since no stage is empty and MTP modules share one stage."""
    text = getattr(p, "pipeline_layout", None)
    if not text:
        return StageHolds(first, last, last, last)
    stages = layout_stages(text)
    start = 0
    for s, st in enumerate(stages):
        if (start, start + st.layers) == (layers.start, layers.stop) and (s == 0) == first \
                and (s == len(stages) - 1) == last:
            return StageHolds(st.embedding, st.loss, st.mtp > 0, st.loss)
        start += st.layers
    raise ValueError(f"pipeline_layout {text!r} has no stage holding layers {layers.start}..{layers.stop - 1}")
