"""From steps to the whole run: the batch ramp as constant-batch segments, each distinct step shape simulated once
or, once the pipeline is full, taken from the line its figures follow (`simulator.affine_steps`). A run that
changes its micro-batch size along the way (`RunPlan.micro_batch_switches`) has its segments cut at the switches
and each size simulated by a step simulator of its own (`run_pieces`, `estimate_run`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from gpuhours.simulator.affine_steps import steps_for
from gpuhours.simulator.step import StepResult, StepSimulator
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.run import RunPlan


@dataclass(frozen=True)
class Segment:
    """A stretch of the run at one global batch."""

    tokens: float
    batch_requested: int          # sequences per step the plan asks for
    num_microbatches: int         # per pipeline (data-parallel replica)
    batch_simulated: int          # sequences per step actually simulated
    steps: float
    step: StepResult
    note: str = ""
    micro_batch_size: int = 1     # sequences per micro-batch in this segment

    @property
    def seconds(self) -> float:
        return self.steps * self.step.step_time


@dataclass(frozen=True)
class RunEstimate:
    segments: tuple[Segment, ...]
    num_gpus: int
    price_per_gpu_hour: float

    @property
    def wall_clock_s(self) -> float:
        return sum(s.seconds for s in self.segments)

    @property
    def wall_clock_days(self) -> float:
        return self.wall_clock_s / 86400

    @property
    def gpu_hours(self) -> float:
        return self.wall_clock_s * self.num_gpus / 3600

    @property
    def cost_usd(self) -> float:
        return self.gpu_hours * self.price_per_gpu_hour

    @property
    def tokens(self) -> float:
        return sum(s.tokens for s in self.segments)

    @property
    def steady(self) -> Segment:
        """The segment carrying the most tokens: the step the run spends most of its time in."""
        return max(self.segments, key=lambda s: s.tokens)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.note for s in self.segments if s.note))


def ramp_segments(plan: RunPlan) -> list[tuple[float, int]]:
    """(tokens, batch) pairs: the linear ramp cut into `plan.ramp_segments` pieces of equal tokens, each at its
    mean batch, followed by the rest of the run at the final batch."""
    ramp = plan.batch
    out: list[tuple[float, int]] = []
    ramp_tokens = min(ramp.over_tokens, plan.tokens) if ramp.start != ramp.end else 0.0
    if ramp_tokens > 0:
        n = plan.ramp_segments
        for i in range(n):
            lo, hi = i / n * ramp_tokens, (i + 1) / n * ramp_tokens
            mid = (lo + hi) / 2 / ramp.over_tokens
            out.append((hi - lo, round(ramp.start + (ramp.end - ramp.start) * mid)))
    if plan.tokens > ramp_tokens:
        out.append((plan.tokens - ramp_tokens, ramp.end))
    return out


def run_pieces(plan: RunPlan, micro_batch_size: int) -> list[tuple[float, int, int]]:
    """(tokens, batch, micro-batch size) of every constant segment: `ramp_segments`' pieces, each cut where the
    plan switches its micro-batch size (`RunPlan.micro_batch_switches`; `micro_batch_size` before the first).
    The tokens of the pieces add up to the plan's."""
    cuts = [t for t, _ in plan.micro_batch_switches]
    out: list[tuple[float, int, int]] = []
    start = 0.0
    for tokens, batch in ramp_segments(plan):
        end = start + tokens
        bounds = [start] + [c for c in cuts if start < c < end] + [end]
        for lo, hi in zip(bounds, bounds[1:]):
            out.append((hi - lo, batch, plan.micro_batch_size_at(lo, micro_batch_size)))
        start = end
    return out


def main_microbatches(plan: RunPlan, parallel: ParallelSpec) -> int | None:
    """Micro-batches per pipeline of the run's step that trains the most tokens at the layout's micro-batch size
    (the count the stage balancer compares candidate splits at, `simulator.split_search`); None when no piece of
    the run uses that size."""
    pieces = [(tokens, batch) for tokens, batch, k in run_pieces(plan, parallel.micro_batch_size)
              if k == parallel.micro_batch_size]
    if not pieces:
        return None
    return microbatches_for(max(pieces)[1], parallel)[0]


def with_micro_batch_size(simulator: StepSimulator, size: int) -> StepSimulator:
    """The same model, layout (its layers per stage kept) and hardware at another micro-batch size."""
    p = replace(simulator.parallel, micro_batch_size=size, stage_layers=simulator.stage_layers)
    return StepSimulator(simulator.model, p, simulator.cluster, simulator.compute, simulator.network,
                         simulator.seq_len, simulator.opts, simulator.recipe)


def microbatches_for(batch: int, parallel: ParallelSpec) -> tuple[int, str]:
    """Micro-batches per pipeline for a global batch, and a note when the schedule forced a change.

    m = ceil(batch / (dp x micro-batch size)); DualPipe needs m even and >= 2 pp, interleaved 1F1B a multiple of pp;
    where the batch does not give that, m is raised to the nearest valid count (the step is padded), and said."""
    per_step = parallel.dp * parallel.micro_batch_size
    m = max(1, math.ceil(batch / per_step))
    note = "" if m * per_step == batch else (
        f"batch {batch} is not a multiple of dp x micro-batch ({per_step}); rounded up to {m * per_step}")
    needed = m
    if parallel.schedule == "dualpipe":
        needed = max(2 * parallel.pp, m + (m % 2))
    elif parallel.schedule == "dualpipev":
        needed = max(2 * parallel.pp, m + (m % 2))
    elif parallel.schedule == "interleaved-1f1b":
        needed = math.ceil(m / parallel.pp) * parallel.pp
    if needed != m:
        note = (f"{parallel.schedule} needs {needed} micro-batches where batch {batch} gives {m} per pipeline: "
                f"simulated {needed} (batch {needed * per_step}), fewer steps cover the same tokens")
    return needed, note


def estimate_run(simulator: StepSimulator, plan: RunPlan, progress=None,
                 simulator_for: Callable[[int], StepSimulator] | None = None) -> RunEstimate:
    """Price every segment of the plan's batch ramp from its step; the steps come from `steps_for`, one set per
    micro-batch size. `simulator_for(size)`: the step simulator at another micro-batch size (default
    `with_micro_batch_size`; a scenario passes its own, which re-derives the routing of the larger micro-batch)."""
    p = simulator.parallel
    pieces = run_pieces(plan, p.micro_batch_size)
    sims = {p.micro_batch_size: simulator}
    for size in dict.fromkeys(k for _, _, k in pieces):
        if size not in sims:
            sims[size] = (simulator_for or (lambda k: with_micro_batch_size(simulator, k)))(size)
    shapes = [microbatches_for(batch, sims[k].parallel) for _, batch, k in pieces]
    steps = {k: steps_for(sim, sorted({m for (m, _), (_, _, kk) in zip(shapes, pieces) if kk == k}))
             for k, sim in sims.items()}
    segments = []
    for index, ((tokens, batch, k), (m, note)) in enumerate(zip(pieces, shapes)):
        step = steps[k][m]
        segments.append(Segment(tokens, batch, m, m * p.dp * k, tokens / step.tokens, step, note, k))
        if progress:
            progress(index + 1, len(pieces))
    return RunEstimate(tuple(segments), p.num_gpus, plan.price_per_gpu_hour)
