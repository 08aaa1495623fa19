"""From steps to the whole run: the batch ramp as constant-batch segments, each distinct step shape simulated once
or, once the pipeline is full, interpolated on the line its figures follow (`steps_for`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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


def estimate_run(simulator: StepSimulator, plan: RunPlan, progress=None) -> RunEstimate:
    """Price every segment of the plan's batch ramp from its step; the steps come from `steps_for`."""
    p = simulator.parallel
    pieces = ramp_segments(plan)
    shapes = [microbatches_for(batch, p) for _, batch in pieces]
    steps = steps_for(simulator, sorted({m for m, _ in shapes}))
    segments = []
    for index, ((tokens, batch), (m, note)) in enumerate(zip(pieces, shapes)):
        step = steps[m]
        segments.append(Segment(tokens, batch, m, m * p.dp * p.micro_batch_size, tokens / step.tokens, step, note))
        if progress:
            progress(index + 1, len(pieces))
    return RunEstimate(tuple(segments), p.num_gpus, plan.price_per_gpu_hour)


AFFINE_TOLERANCE = 1e-9  # relative to the step time: the check that step figures are affine in micro-batches


def full_pipeline(parallel: ParallelSpec) -> int:
    """Micro-batches from which every rank runs its steady phase (the pipeline fills and drains once): pp for the
    1F1B family, 2 pp for DualPipe's two directions."""
    return 2 * parallel.pp if parallel.schedule in ("dualpipe", "dualpipev") else parallel.pp


def steps_for(simulator: StepSimulator, counts: list[int]) -> dict[int, StepResult]:
    """Steps for sorted micro-batch counts, simulating as few as the schedule's structure allows.

    Once the pipeline is full, one more micro-batch adds the same instructions on every rank at the same place in
    the steady phase, so every figure of a step is affine in the micro-batch count. Where more than three counts
    are full, the smallest and largest are simulated and a middle one checks the claim: if the check agrees
    with the line through the other two to AFFINE_TOLERANCE of its step time (and peak activations agree), the
    other counts are interpolated; otherwise every count is simulated. Counts below a full pipeline are always
    simulated.
    """
    out: dict[int, StepResult] = {}
    full = [m for m in counts if m >= full_pipeline(simulator.parallel)]
    for m in counts:
        if m not in full:
            out[m] = simulator.step(m)
    if len(full) > 3:
        lo, hi, mid = full[0], full[-1], full[len(full) // 2]
        a, b, c = simulator.step(lo), simulator.step(hi), simulator.step(mid)
        if _agrees(interpolate_step(a, b, mid), c):
            for m in full:
                out[m] = {lo: a, hi: b, mid: c}.get(m) or interpolate_step(a, b, m)
            return out
    for m in full:
        out[m] = simulator.step(m)
    return out


def interpolate_step(a: StepResult, b: StepResult, m: int) -> StepResult:
    """The step at m micro-batches on the line through steps a and b (every float and per-rank figure; counts
    exactly). No spans: an interpolated step has no timeline of its own."""
    w = (m - a.num_microbatches) / (b.num_microbatches - a.num_microbatches)

    def line(x, y):
        if isinstance(x, tuple):
            return tuple(line(u, v) for u, v in zip(x, y))
        return x + (y - x) * w

    pa, pb = a.pipeline, b.pipeline
    pipeline = replace(pa, makespan=line(pa.makespan, pb.makespan), busy_per_rank=line(pa.busy_per_rank, pb.busy_per_rank),
                       comm_busy_per_rank=line(pa.comm_busy_per_rank, pb.comm_busy_per_rank),
                       bubble_per_rank=line(pa.bubble_per_rank, pb.bubble_per_rank),
                       finish_per_rank=line(pa.finish_per_rank, pb.finish_per_rank),
                       end_per_rank=line(pa.end_per_rank, pb.end_per_rank),
                       instructions_run=round(line(pa.instructions_run, pb.instructions_run)), spans=())
    tokens = a.tokens // a.num_microbatches * m
    return replace(a, num_microbatches=m, tokens=tokens, model_flops=a.model_flops / a.tokens * tokens,
                   step_time=line(a.step_time, b.step_time), pipeline_time=line(a.pipeline_time, b.pipeline_time),
                   dp_sync_time=line(a.dp_sync_time, b.dp_sync_time), busy_per_rank=line(a.busy_per_rank, b.busy_per_rank),
                   comm_busy_per_rank=line(a.comm_busy_per_rank, b.comm_busy_per_rank),
                   bubble_per_rank=line(a.bubble_per_rank, b.bubble_per_rank),
                   exposed_comm_per_rank=line(a.exposed_comm_per_rank, b.exposed_comm_per_rank),
                   dp_tail_per_rank=line(a.dp_tail_per_rank, b.dp_tail_per_rank), pipeline=pipeline)


def _agrees(line: StepResult, simulated: StepResult) -> bool:
    """Whether an interpolated step matches a simulated one: every time figure within AFFINE_TOLERANCE of the
    step time, the same peak activations."""
    tol = AFFINE_TOLERANCE * simulated.step_time
    pairs = [(line.step_time, simulated.step_time), (line.pipeline_time, simulated.pipeline_time),
             (line.dp_sync_time, simulated.dp_sync_time)]
    for name in ("busy_per_rank", "comm_busy_per_rank", "bubble_per_rank", "exposed_comm_per_rank",
                 "dp_tail_per_rank"):
        pairs += list(zip(getattr(line, name), getattr(simulated, name)))
    return (all(abs(x - y) <= tol for x, y in pairs)
            and line.peak_activations_per_rank == simulated.peak_activations_per_rank)
