"""Runs that change their micro-batch size along the way (`RunPlan.micro_batch_switches`): the scenario at each
size, and the memory of every size the run uses.

A larger micro-batch is a different step: every op runs on more tokens, the MoE routing of the larger micro-batch
is drawn again (`Scenario.routing_loads` depends on the micro-batch's tokens), and each rank holds more activation
bytes per in-flight chunk. The layers per pipeline stage stay those of the run's first size: a run that changes
its micro-batch size keeps its model split (Assumption: the published runs that grew their micro-batch did not
re-partition their stages).
"""

from __future__ import annotations

from dataclasses import replace

from gpuhours.simulator.run import RunEstimate


def scenario_at_micro_batch_size(scenario, size: int, stage_layers: tuple[int, ...] | None = None):
    """The scenario with `size` sequences per micro-batch (and, when given, these layers per stage)."""
    parallel = replace(scenario.parallel, micro_batch_size=size,
                       stage_layers=stage_layers if stage_layers is not None else scenario.parallel.stage_layers)
    parallel.check_model(scenario.model)
    return replace(scenario, parallel=parallel)


def memory_per_micro_batch_size(scenario, result: RunEstimate) -> list[tuple[int, object]]:
    """(micro-batch size, `workloads.memory.MemoryBreakdown`) for every size the run's segments use, each on the
    segment of that size that carries the most tokens (its step sets the in-flight chunks)."""
    from gpuhours.workloads.memory import memory_breakdown

    by_size: dict[int, object] = {}
    for seg in result.segments:
        best = by_size.get(seg.micro_batch_size)
        if best is None or seg.tokens > best.tokens:
            by_size[seg.micro_batch_size] = seg
    out = []
    for size, seg in by_size.items():
        at = scenario_at_micro_batch_size(scenario, size, seg.step.stage_layers)
        out.append((size, memory_breakdown(at, seg.step)))
    return out


def run_memory(scenario, result: RunEstimate):
    """The memory verdict of a whole run: the steady segment's breakdown when the run keeps one micro-batch size;
    otherwise the fullest of the sizes it uses (a run fits only if every size fits)."""
    if {seg.micro_batch_size for seg in result.segments} == {scenario.parallel.micro_batch_size}:
        from gpuhours.workloads.memory import memory_breakdown

        return memory_breakdown(scenario, result.steady.step)
    rows = memory_per_micro_batch_size(scenario, result)
    return max((m for _, m in rows), key=lambda m: (not m.fits, m.total / m.capacity))
