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
by the coster's pricing context, `pricing_key`, then by the stages' signatures). The context is compared by value
(model, cluster, GPU, calibration profile, options, layout but its layers per stage and its schedule, memory
recipe) and the network by identity, so the points of a sweep that differ only in schedule, micro-batch count or
price share their profiles too (issue 14).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import fields, replace

from gpuhours.hwmodels.compute import ComputeModel
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
    the same durations and busy times as `coster`, no op-level spans (a step without a timeline, `StepSimulator`
    `_shared_stages`, does not read them; kept, they would hold every sweep point's spans in `_CONTEXTS`)."""

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
                if hit.spans:  # op-level spans are read in detail mode only, which prices with the coster itself
                    hit = replace(hit, spans=())
                if shared is not None:
                    self._context["profiles"][shared] = hit
            self._profiles[key] = hit
        return hit

    def transfer(self, src: int, dst: int, kind: str, microbatch: int, stage: int) -> float:
        return self.coster.transfer(src, dst, kind, microbatch, stage)


# Pricing contexts whose stage-class profiles are kept, most recently used last. Assumption (our setting): a sweep
# worker's points come in grid order, so points that share a context (they differ in schedule, micro-batch count or
# price) come within a few dozen contexts of each other. An entry holds its stage classes' signatures (shared with
# the layer templates' memos) and a few instruction profiles per class: bench/bench_sweep.py's workers stay at the
# same peak memory with 64 as with 8 (2026-12-01).
_CONTEXT_LIMIT = 64
_CONTEXTS: OrderedDict[tuple, dict] = OrderedDict()
# False: contexts keyed by the identity of the model, cluster, compute model and options (the key before sweeps
# shared profiles between points; for benchmarks and the equality tests)
CONTENT_KEY = True


def _shared_profiles(coster) -> dict | None:
    """The profile store of the coster's pricing context: everything `HardwareCoster` prices with but its layers
    per stage (`pricing_key`). None for a coster of another type, or whose inputs cannot be compared by value."""
    if type(coster) is not HardwareCoster:
        return None
    try:
        key, objects = pricing_key(coster)
        entry = _CONTEXTS.get(key)
    except TypeError:  # an unhashable field
        return None
    if entry is None or any(a is not b for a, b in zip(entry["objects"], objects)):
        entry = _CONTEXTS[key] = {"objects": objects, "classes": {}, "profiles": {}}
        while len(_CONTEXTS) > _CONTEXT_LIMIT:
            _CONTEXTS.popitem(last=False)
    _CONTEXTS.move_to_end(key)
    return entry


def pricing_key(coster: HardwareCoster) -> tuple[tuple, tuple]:
    """(key, objects): what a `HardwareCoster`'s instruction profiles read besides its stages' signatures, and the
    objects the key counts by identity (its entry holds them, so their ids are not reused meanwhile).

    By value: the model, the cluster, the compute model's GPU and calibration profile (`_profile_token`), the
    options, the memory recipe, the sequence length and every field of the layout but `stage_layers` and
    `schedule`. The schedule is read by the pricing only through `overlaps_comm` with comm_sms > 0 (the compute
    SM fraction `ParallelSpec.compute_sm_fraction` and the SMs beside NCCL's channels, `nccl_sms.compute_sms`;
    with comm_sms = 0 both are the whole GPU), which the key holds; the stages' contents, which the schedule
    also decides (stage counts, layers per stage), are in their signatures. So points of a sweep that differ
    only in schedule, micro-batch count or run keys share their stage-class profiles
    (tests/test_profile_content_key.py builds them both ways and compares them exactly).
    By identity: the network (one object per fabric and link sharing, `scenario._graph_network`, which caches
    its routes inside) and a compute model of another type than `ComputeModel`."""
    p = coster.parallel
    layout = tuple(getattr(p, f.name) for f in fields(p) if f.name not in ("stage_layers", "schedule"))
    overlapped = p.overlaps_comm and p.comm_sms > 0
    compute = coster.compute
    if not CONTENT_KEY:
        objects = (coster.model, coster.cluster, compute, coster.network, coster.opts)
        return (*map(id, objects), replace(p, stage_layers=None), coster.recipe, coster.seq_len), objects
    if type(compute) is ComputeModel and set(vars(compute)) == {"gpu", "profile"}:
        pricing = (compute.gpu, _profile_token(compute.profile))
        objects = (coster.network,)
    else:
        pricing = (id(compute),)
        objects = (coster.network, compute)
    key = (coster.model, coster.cluster, pricing, id(coster.network), coster.opts, layout, overlapped,
           coster.recipe, coster.seq_len)
    return key, objects


# Calibration profiles seen, by value, most recently used last: a sweep point loads its own, equal to the last
# one's. A token is never reused, so a profile dropped here only stops sharing (sensitivity runs scale a profile's
# rates one at a time: many profiles, each compared by value once per simulator).
_PROFILE_LIMIT = 16
_PROFILES: OrderedDict[int, object] = OrderedDict()
_NEXT_TOKEN = [0]


def _profile_token(profile) -> int:
    """A number per calibration profile value (profiles hold dicts, so they do not hash): profiles equal by value
    get the same number while it is kept."""
    for token, known in reversed(_PROFILES.items()):
        if known is profile or known == profile:
            _PROFILES.move_to_end(token)
            return token
    token = _NEXT_TOKEN[0]
    _NEXT_TOKEN[0] += 1
    _PROFILES[token] = profile
    while len(_PROFILES) > _PROFILE_LIMIT:
        _PROFILES.popitem(last=False)
    return token
