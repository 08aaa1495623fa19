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


def steps_for(simulator: StepSimulator, counts: list[int]) -> dict[int, StepResult]:
    """Steps for sorted micro-batch counts, simulating as few as the schedule's structure allows.

    Once the pipeline is full, one more micro-batch adds the same instructions on every rank at the same place in
    the steady phase, so every figure of a step is close to affine in the micro-batch count. Where more than three
    counts are full, the smallest and largest are simulated and a middle one checks the claim: if the check agrees
    with the line through the other two to AFFINE_TOLERANCE of its step time (and peak activations agree), the
    other counts are interpolated; otherwise the smallest count is simulated on its own and the others try again
    (down to three, which are simulated). Counts below a full pipeline are always simulated.

    Interpolation only: the steady phase can settle into another period some micro-batches after the pipeline is
    full (1F1B on PP8 in the zero-bubble cases: the step grows by the same amount per micro-batch from 9 to 14,
    by 0.26% less from 15 on), so a line through small counts, extrapolated, misses large ones by up to 0.03%.
    """
    out: dict[int, StepResult] = {}
    full = [m for m in counts if m >= full_pipeline(simulator.parallel)]
    for m in counts:
        if m not in full:
            out[m] = simulator.step(m)
    while len(full) > 3:
        lo, hi, mid = full[0], full[-1], full[len(full) // 2]
        a, b, c = simulator.step(lo), simulator.step(hi), simulator.step(mid)
        if _agrees(interpolate_step(a, b, mid), c):
            for m in full:
                out[m] = {lo: a, hi: b, mid: c}.get(m) or interpolate_step(a, b, m)
            return out
        # not one line: the smallest count may still be settling (DeepSeek-V3's 4 x15, 1 split under DualPipe:
        # 32 micro-batches lie off the line that holds from 34 on), so it keeps its own step and the rest try again
        out[lo] = a
        full = full[1:]
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
                       nic_busy_per_rank=line(pa.nic_busy_per_rank, pb.nic_busy_per_rank),
                       nic_wait_per_rank=line(pa.nic_wait_per_rank, pb.nic_wait_per_rank),
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
