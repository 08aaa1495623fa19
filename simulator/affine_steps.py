"""Step figures are affine in the micro-batch count once the pipeline is full: simulate few counts, take the
others from the line (with a check that falls back to simulating every count)."""

from __future__ import annotations

from dataclasses import replace

from gpuhours.simulator.step import StepResult, StepSimulator
from gpuhours.workloads.parallel import ParallelSpec

AFFINE_TOLERANCE = 1e-9  # relative to the step time: the check that step figures are affine in micro-batches


def full_pipeline(parallel: ParallelSpec) -> int:
    """Micro-batches from which every rank runs its steady phase (the pipeline fills and drains once): pp for the
    1F1B family, 2 pp for DualPipe's two directions."""
    return 2 * parallel.pp if parallel.schedule in ("dualpipe", "dualpipev") else parallel.pp


def count_step(parallel: ParallelSpec) -> int:
    """The micro-batch increment that repeats a schedule's steady phase unchanged: two for DualPipe and DualPipeV
    (one micro-batch from each end), pp for interleaved 1F1B (a whole group of micro-batches per virtual stage),
    one for the rest."""
    if parallel.schedule in ("dualpipe", "dualpipev"):
        return 2
    if parallel.schedule == "interleaved-1f1b":
        return parallel.pp
    return 1


def line_counts(parallel: ParallelSpec) -> tuple[int, int, int]:
    """The three counts `steps_for` simulates: a = one increment past a full pipeline (so the fill is behind it),
    c = four increments past it (the line through a and c), and b between them (the check)."""
    f, g = full_pipeline(parallel), count_step(parallel)
    return f + g, f + 2 * g, f + 4 * g


def steps_for(simulator: StepSimulator, counts: list[int]) -> dict[int, StepResult]:
    """Steps for sorted micro-batch counts, simulating as few micro-batches as the schedule's structure allows.

    Once the pipeline is full, one more increment of micro-batches (`count_step`) adds the same instructions on
    every rank at the same place in the steady phase, so every figure of a step is affine in the micro-batch
    count. Three small counts a < b < c (`line_counts`) are simulated; if b agrees with the line through a and c
    to AFFINE_TOLERANCE of its step time (and peak activations agree), every count past b that the increment
    reaches from a is taken from that line (extrapolated: a run at 120 micro-batches costs the simulation of
    three near 2 pp). Counts the line does not give (below a full pipeline, off the increment grid) are
    simulated; so is every count when the check fails, or when the line would cost more micro-batches than
    simulating the counts themselves.
    """
    p = simulator.parallel
    a, b, c = line_counts(p)
    g = count_step(p)
    on_line = [m for m in counts if m > b and (m - a) % g == 0]
    if on_line and a + b + c < sum(on_line):
        sa, sb, sc = simulator.step(a), simulator.step(b), simulator.step(c)
        if _agrees(interpolate_step(sa, sc, b), sb):
            known = {a: sa, b: sb, c: sc}
            return {m: known.get(m) or (interpolate_step(sa, sc, m) if m in on_line else simulator.step(m))
                    for m in counts}
    return {m: simulator.step(m) for m in counts}


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
