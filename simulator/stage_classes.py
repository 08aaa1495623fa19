"""Stages that cost the same: one instruction graph per class of identical stages.

`chunks.HardwareCoster` list-schedules every (kind, stage) once. The middle stages of a pipeline usually hold the
same layers (GPT-3 175B on PP12: ten stages of eight identical dense layers), and an instruction's profile
depends on its stage's units only through what `_build_profile` reads: the units in order, and in each pass its
segments' names and streams and their ops' prices (`chunks.price_key`: everything that decides an op's time).
Two stages equal in all of that give the same task graph, so the same profile, bit for bit; only the layer
numbers of the op-level spans differ. So a step without a timeline (no detail) prices each class once: the check
is the comparison itself, built from the stages' units, so a stage that differs in anything the profile reads
(another layer kind, a recomputed head under "full:N", the embedding or the head) is a class of its own.

The same holds between step simulators that differ only in their layers per stage (the candidate splits stage
balancing simulates, `simulator.split_search`): their costers price ops alike (`HardwareCoster` reads its
`stage_layers` only to build its stages), so a class's profile is shared between them (`_shared_profiles`: keyed
by the coster's pricing context, the same model, cluster, compute model, network and options objects and equal
layout and memory recipe once the layers per stage are left out, then by the stages' signatures).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from gpuhours.simulator.chunks import HardwareCoster, price_key
from gpuhours.simulator.engine import InstructionProfile
from gpuhours.simulator.instructions import Instruction
from gpuhours.workloads.layer_templates import LayerRef, template_of
from gpuhours.workloads.stage_ops import stage_unit_refs


class _HashedTuple(tuple):
    """A tuple that hashes once: signatures are nested tuples of op price keys (frozen dataclasses among them,
    which Python re-hashes field by field on every ask), and `SharedStageCoster` looks every stage's up twice.
    Equal to, and hashing as, the plain tuple of the same items."""

    def __new__(cls, items):
        t = super().__new__(cls, items)
        t._hash = tuple.__hash__(t)
        return t

    def __hash__(self):
        return self._hash


# False: signatures are plain tuples, hashed on every lookup (the same classes; for benchmarks)
HASH_ONCE = True


def stage_signature(units) -> tuple:
    """What an instruction's profile reads of a stage: per unit and pass, each segment's name, stream and op
    prices."""
    sig = tuple(map(unit_signature, units))
    return _HashedTuple(sig) if HASH_ONCE else sig


def _signature(unit) -> tuple:
    sig = tuple(tuple((seg.name, seg.stream, tuple(price_key(op) for op in seg.ops)) for seg in segments)
                for segments in (unit.forward, unit.backward, unit.weight))
    return _HashedTuple(sig) if HASH_ONCE else sig


def _stage_signatures(coster) -> list[tuple]:
    """`stage_signature` of each of the coster's stages, reading a layer that would be a template's renamed copy
    as its template (`stage_ops.stage_unit_refs`): only the stages a profile prices are built in full
    (`HardwareCoster.stage`). A coster of another type, or one whose stages are built, is read as it is."""
    if type(coster) is not HardwareCoster or coster._stages is not None:
        return [stage_signature(units) for units in coster.stages]
    out, start, last = [], 0, len(coster.stage_layers) - 1
    for s, n in enumerate(coster.stage_layers):
        out.append(stage_signature(stage_unit_refs(coster.model, coster.parallel, coster.seq_len,
                                                   range(start, start + n), s == 0, s == last, coster.opts,
                                                   coster.recipe)))
        start += n
    return out


def unit_signature(unit) -> tuple:
    """`stage_signature` of one unit. A layer renamed from a template (`workloads.layer_templates`) differs from
    it only in its op names' "L<i>." prefix and its segments' layer, which `price_key` does not read: its
    signature is its template's, computed once. Checked on the first unit of each template: when its own
    signature differs (a price key that reads the prefix), every unit of that template is computed by itself."""
    if type(unit) is LayerRef:  # its template's signature once that is known, else its renamed copy's
        sig = unit.template.memo.get("signature")
        return sig if sig is not None and sig is not False else unit_signature(unit.unit())
    tpl = template_of(unit)
    if tpl is None:
        return _signature(unit)
    sig = tpl.memo.get("signature")
    if sig is None:
        sig = _signature(tpl.passes)
        if unit is not tpl.passes and _signature(unit) != sig:
            sig = False
        tpl.memo["signature"] = sig
    return sig if sig is not False else _signature(unit)


class SharedStageCoster:
    """An `InstructionCoster` that prices an instruction on the first stage of its class (`stage_signature`):
    the same durations and busy times as `coster`, op-level spans of that stage's layers."""

    uniform_transfers = True  # `HardwareCoster.transfer`, which these are
    uniform_profiles = True   # keyed by (kind, stage, b_stage)

    def __init__(self, coster: HardwareCoster):
        self.coster = coster
        first: dict[tuple, int] = {}
        signatures = _stage_signatures(coster)
        self.canonical = tuple(first.setdefault(sig, s) for s, sig in enumerate(signatures))
        self._profiles: dict[tuple, InstructionProfile] = {}
        # profiles of stage classes shared with other costers of the same pricing context, by class number
        self._context = _shared_profiles(coster)
        if self._context is not None:
            numbers = self._context["classes"]
            self._class = tuple(numbers.setdefault(sig, len(numbers)) for sig in signatures)

    @property
    def classes(self) -> int:
        return len(set(self.canonical))

    def profile(self, rank: int, instruction: Instruction) -> InstructionProfile:
        key = (instruction.kind, instruction.stage, instruction.b_stage)
        hit = self._profiles.get(key)
        if hit is None:
            shared = None
            if self._context is not None:
                cls = self._class
                shared = (instruction.kind, cls[instruction.stage],
                          None if instruction.b_stage is None else cls[instruction.b_stage])
                hit = self._context["profiles"].get(shared)
            if hit is None:
                c = self.canonical
                b_stage = None if instruction.b_stage is None else c[instruction.b_stage]
                same = Instruction(instruction.kind, instruction.microbatch, c[instruction.stage],
                                   instruction.b_microbatch, b_stage)
                hit = self.coster.profile(rank, same)
                if shared is not None:
                    self._context["profiles"][shared] = hit
            self._profiles[key] = hit
        return hit

    def transfer(self, src: int, dst: int, kind: str, microbatch: int, stage: int) -> float:
        return self.coster.transfer(src, dst, kind, microbatch, stage)


# Pricing contexts whose stage-class profiles are kept, most recently used last. Assumption (our setting): a step
# simulator's candidate splits are simulated one after another, so a few contexts suffice; each holds a model's
# instruction profiles (small: a few per stage class) and its objects alive.
_CONTEXT_LIMIT = 8
_CONTEXTS: OrderedDict[tuple, dict] = OrderedDict()


def _shared_profiles(coster) -> dict | None:
    """The profile store of the coster's pricing context: everything `HardwareCoster` prices with but its layers
    per stage. Shared objects count by identity (the entry holds them, so their ids are not reused meanwhile),
    the layout and the memory recipe, which a step simulator rebuilds (`replace`), by value. None for a coster
    of another type, or whose layout or recipe cannot be compared by value."""
    if type(coster) is not HardwareCoster:
        return None
    objects = (coster.model, coster.cluster, coster.compute, coster.network, coster.opts)
    try:
        key = (*map(id, objects), replace(coster.parallel, stage_layers=None), coster.recipe, coster.seq_len)
        entry = _CONTEXTS.get(key)
    except TypeError:  # an unhashable field
        return None
    if entry is None or any(a is not b for a, b in zip(entry["objects"], objects)):
        entry = _CONTEXTS[key] = {"objects": objects, "classes": {}, "profiles": {}}
        while len(_CONTEXTS) > _CONTEXT_LIMIT:
            _CONTEXTS.popitem(last=False)
    _CONTEXTS.move_to_end(key)
    return entry
