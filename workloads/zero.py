"""ZeRO-3 / FSDP as ops: per unit (layer, embedding, head, MTP part) the parameters one rank holds, and the
parameter all-gathers and gradient reduce-scatters over the data-parallel group that each unit's passes gain."""

from __future__ import annotations

from gpuhours.workloads import params as P
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import LayerPasses, Op, Segment
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.pipeline_layout import stage_holds


def unit_params(model: ModelSpec, p: ParallelSpec, layers: range, first: bool, last: bool
                ) -> list[tuple[str, float, float]]:
    """(unit name, dense, expert) parameters one rank holds of each unit of a stage, in `stage_units` order:
    dense ones split by tp (replicated over dp), routed experts split by ep x etp (ep groups of experts, each
    expert's weights split over its etp ranks; replicated over expert_dp). The MTP
    head shares the main head's weights (no parameters of its own); MTP's projection unit holds its projection
    and norms. Summed over the units, these are `simulator.step.rank_params` of the stage."""
    routed = model.moe.n_routed_experts * P.expert_params(model) if model.moe else 0
    shard = p.ep * p.etp  # expert parallelism x expert tensor parallelism
    out: list[tuple[str, float, float]] = []
    holds = stage_holds(p, layers, first, last)  # where a `pipeline_layout` puts embedding, head and MTP
    if holds.embedding:
        out.append(("embed", P.embedding_params(model) / p.tp, 0.0))
    for i in layers:
        full = P.layer_params(model, i)
        if model.is_moe_layer(i):
            out.append((f"L{i}", (full - routed) / p.tp, routed / shard))
        else:
            out.append((f"L{i}", full / p.tp, 0.0))
    if holds.head:
        out.append(("head", P.head_params(model) / p.tp, 0.0))
    for d in range(model.mtp_depth if holds.mtp_modules or holds.mtp_heads else 0):
        per_module = P.mtp_params(model) // model.mtp_depth
        block = P._block_params(model, model.moe is not None)
        if holds.mtp_modules:
            out.append((f"mtp{d}.proj", (per_module - block) / p.tp, 0.0))
            out.append((f"mtp{d}.block", (block - routed) / p.tp, routed / shard))
        if holds.mtp_heads:
            out.append((f"mtp{d}.head", 0.0, 0.0))
    return out


def zero3_passes(unit: LayerPasses, dense: float, expert: float, p: ParallelSpec, weight_bytes: float,
                 grad_bytes: float) -> LayerPasses:
    """A unit under ZeRO-3 (FSDP): its forward starts with an all-gather of its parameters ("dp.all_gather(F)",
    working-weight bytes), its backward with another when `reshard_after_forward` ("dp.all_gather(B)"), and its
    weight pass ends with a reduce-scatter of its gradients ("dp.reduce_scatter(W)", gradient bytes). Dense
    parameters travel over the data-parallel gradient group ("dp": dp x cp ranks, `ParallelSpec.grad_dp`, since
    context-parallel ranks hold the same parameters), routed experts over their replicas ("edp":
    expert_dp ranks). comm_bytes is the unsharded size (hwmodels.collectives' convention). The dependency rules
    that let a gather run ahead (prefetch) are in `simulator.chunks`. Under pipeline parallelism
    (`ParallelSpec.fsdp_deferred_reduce`) the weight pass has no reduce-scatter: PyTorch's pipelining reduces
    once per step, after the last backward, on the step's tail (`simulator.step`)."""
    groups = [(g, n) for g, n, size in (("dp", dense, p.grad_dp), ("edp", expert, p.expert_dp)) if n > 0 and size > 1]
    if not groups:
        return unit

    def seg(kind: str, phase: str, nbytes: float) -> Segment:
        ops = tuple(Op(f"{unit.name}.zero3.{g}_{kind}", "collective", phase, "zero3", collective=kind, group=g,
                       comm_bytes=n * nbytes) for g, n in groups)
        return Segment(f"dp.{kind}({phase})", "comm", ops, _unit_layer(unit))

    backward = unit.backward
    if p.reshard_after_forward and backward:
        backward = (seg("all_gather", "B", weight_bytes),) + backward
    weight = unit.weight
    if not p.fsdp_deferred_reduce:
        weight = weight + (seg("reduce_scatter", "W", grad_bytes),)
    return LayerPasses(unit.name, (seg("all_gather", "F", weight_bytes),) + unit.forward, backward, weight)


# Bytes per gradient element as data parallelism reduces it, which is also the dtype gradients accumulate in over a
# step's micro-batches: Megatron-Core's DistributedDataParallelConfig.grad_reduce_in_fp32 (its gradient buffer is
# FP32 when true and the parameters' dtype, BF16, when false); PyTorch FSDP2's MixedPrecisionPolicy.reduce_dtype.
GRAD_REDUCE_BYTES = {"fp32": 4.0, "bf16": 2.0}


def grad_reduce_bytes(p: ParallelSpec, recipe_grad_bytes: float) -> float:
    """Bytes per gradient element reduced over data parallelism (and held in the gradient buffer): the layout's
    `grad_reduce_dtype`, or the memory recipe's gradient bytes when it names none (DeepSeek-V3's recipe: FP32)."""
    return GRAD_REDUCE_BYTES[p.grad_reduce_dtype] if p.grad_reduce_dtype else recipe_grad_bytes


def with_grad_reduce_dtype(recipe, p: ParallelSpec):
    """The memory recipe with its gradient bytes set by the layout's `grad_reduce_dtype` (unchanged for None)."""
    from dataclasses import replace

    return replace(recipe, grad_bytes=grad_reduce_bytes(p, recipe.grad_bytes)) if p.grad_reduce_dtype else recipe


def _unit_layer(unit: LayerPasses) -> int | None:
    for seg in unit.forward + unit.backward + unit.weight:
        if seg.layer is not None:
            return seg.layer
    return None


def is_dp_collective(seg: Segment) -> bool:
    """A ZeRO-3 parameter gather or gradient reduce-scatter segment (see `zero3_passes`)."""
    return seg.stream == "comm" and seg.name.startswith("dp.")
