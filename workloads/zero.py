"""ZeRO-3 / FSDP as ops: per unit (layer, embedding, head, MTP part) the parameters one rank holds, and the
parameter all-gathers and gradient reduce-scatters over the data-parallel group that each unit's passes gain."""

from __future__ import annotations

from gpuhours.workloads import params as P
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import LayerPasses, Op, Segment
from gpuhours.workloads.parallel import ParallelSpec


def unit_params(model: ModelSpec, p: ParallelSpec, layers: range, first: bool, last: bool
                ) -> list[tuple[str, float, float]]:
    """(unit name, dense, expert) parameters one rank holds of each unit of a stage, in `stage_units` order:
    dense ones split by tp (replicated over dp), routed experts split by ep (replicated over expert_dp). The MTP
    head shares the main head's weights (no parameters of its own); MTP's projection unit holds its projection
    and norms. Summed over the units, these are `simulator.step.rank_params` of the stage."""
    routed = model.moe.n_routed_experts * P.expert_params(model) if model.moe else 0
    out: list[tuple[str, float, float]] = []
    if first:
        out.append(("embed", P.embedding_params(model) / p.tp, 0.0))
    for i in layers:
        full = P.layer_params(model, i)
        if model.is_moe_layer(i):
            out.append((f"L{i}", (full - routed) / p.tp, routed / p.ep))
        else:
            out.append((f"L{i}", full / p.tp, 0.0))
    if last:
        out.append(("head", P.head_params(model) / p.tp, 0.0))
        for d in range(model.mtp_depth):
            per_module = P.mtp_params(model) // model.mtp_depth
            block = P._block_params(model, model.moe is not None)
            out.append((f"mtp{d}.proj", (per_module - block) / p.tp, 0.0))
            out.append((f"mtp{d}.block", (block - routed) / p.tp, routed / p.ep))
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
    that let a gather run ahead (prefetch) are in `simulator.chunks`."""
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
    weight = unit.weight + (seg("reduce_scatter", "W", grad_bytes),)
    return LayerPasses(unit.name, (seg("all_gather", "F", weight_bytes),) + unit.forward, backward, weight)


def _unit_layer(unit: LayerPasses) -> int | None:
    for seg in unit.forward + unit.backward + unit.weight:
        if seg.layer is not None:
            return seg.layer
    return None


def is_dp_collective(seg: Segment) -> bool:
    """A ZeRO-3 parameter gather or gradient reduce-scatter segment (see `zero3_passes`)."""
    return seg.stream == "comm" and seg.name.startswith("dp.")
