"""The pipeline engine: runs every rank's instruction list on simpy, with real dependencies between ranks.

One engine serves every schedule and both modes:
- unit-cost mode (`run_unit`): each instruction costs a constant (F, B, W, full backward, overlapped F&B),
  point-to-point transfers are free; used to check schedules against their closed-form bubbles;
- hardware mode (`run_pipeline` with an `InstructionCoster` built in `simulator.chunks`): each instruction's
  duration and its compute/communication-stream activity come from its ops priced on the hardware model,
  and activation/gradient transfers between ranks take the time the network model gives them.

Semantics. A rank executes its program in order, one instruction at a time (a GPU's compute stream runs one
chunk or one overlapped chunk pair at a time; the overlap of communication with computation inside an instruction
is resolved by `simulator.chunks`). Before an instruction starts, its inputs must have arrived:
F(m, s) needs the activations of F(m, s-1); B(m, s) or BW(m, s) needs the gradient from B(m, s+1), or for the
last stage the loss of F(m, S-1). When a part finishes, its output is sent to the rank holding the next stage;
the transfer runs concurrently with whatever the sender does next (asynchronous send).
Activation memory: +1 chunk's activations when an F starts, -1 when that (microbatch, stage)'s W (or BW) ends.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import simpy

from gpuhours.simulator.instructions import Instruction, Schedule
from gpuhours.simulator.nic_share import SharedInterface, stretch_under_buckets
from gpuhours.simulator.programs import programs as _programs
from gpuhours.simulator.run_ahead import plain, run_ahead as _run_ahead
from gpuhours.simulator.timeline import Span


@dataclass(frozen=True)
class InstructionProfile:
    """What executing one instruction on one rank costs, relative to its start."""

    duration: float
    compute_busy: float
    comm_busy: float
    spans: tuple[Span, ...] = ()  # detail (op-level) spans with start/end relative to the instruction start
    nic_busy: float = 0.0         # time the instruction's collectives keep this GPU's network interface busy


class InstructionCoster(Protocol):
    def profile(self, rank: int, instruction: Instruction) -> InstructionProfile: ...

    def transfer(self, src: int, dst: int, kind: str, microbatch: int, stage: int) -> float:
        """Seconds to move F's activations (kind "F") or B's input gradients (kind "B") from src to dst. A coster
        whose transfers do not depend on the micro-batch sets `uniform_transfers = True`, one whose profiles
        depend on (kind, stage, b_stage) only `uniform_profiles = True` (`simulator.programs`)."""
        ...


@dataclass(frozen=True)
class PipelineResult:
    makespan: float
    busy_per_rank: tuple[float, ...]          # compute-stream busy time
    comm_busy_per_rank: tuple[float, ...]     # communication-stream busy time (EP/TP collectives)
    bubble_per_rank: tuple[float, ...]        # makespan - time spent executing instructions
    peak_activations_per_rank: tuple[int, ...]
    finish_per_rank: tuple[float, ...]        # when each rank's last instruction ended
    end_per_rank: tuple[float, ...]           # when each rank finished its tail too (= finish without one)
    instructions_run: int
    spans: tuple[Span, ...] = field(default=(), repr=False)
    nic_busy_per_rank: tuple[float, ...] = ()  # seconds each rank's interface carried sends and gradient buckets
    nic_wait_per_rank: tuple[float, ...] = ()  # from the last instruction's end until the tail got the interface


def run_pipeline(schedule: Schedule, coster: InstructionCoster, detail: bool = False,
                 tail: Callable[[int], float] | None = None, record: bool = True,
                 buckets: Callable[[int], tuple[tuple[float, float], ...]] | None = None,
                 run_ahead: bool = True, bucket_sms: Callable[[int], float] | None = None) -> PipelineResult:
    """Simulate one pass of `schedule`; `detail` also returns op-level spans on both streams; `record=False`
    skips the instruction spans (an estimate needs only the totals).

    `tail(rank)`: seconds of work a rank does after its last instruction (gradient synchronisation and the
    optimizer); it holds the rank's network interface, so it waits for the rank's last sends to leave.

    `buckets(rank)`: the data-parallel gradient buckets a rank reduces during its last instruction (Megatron's
    overlap_grad_reduce), as (share of that instruction's duration after which the bucket is ready, 0 to 1;
    seconds it would hold the interface alone). On such a rank the buckets queue one after another beside the
    pipeline sends, and the two share the interface while both have something in flight
    (`simulator.nic_share`), so a bucket slows the sends it overlaps and they slow it. The tail then waits for
    the last bucket: what stays exposed is `nic_wait_per_rank` (with the wait for the rank's last sends).
    `bucket_sms(rank)`: the share of the SMs the buckets' NCCL channels hold; that instruction is extended by it
    times its compute share times the time buckets are in flight beside it (`nic_share.stretch_under_buckets`;
    Assumption: its compute is spread evenly over it).

    Events per instruction: one timeout for its duration, one arrival for each input that had not arrived when
    the rank reached it (an input already there costs nothing), and per send one completion (plus one decision,
    below, on ranks whose instructions hold the interface).

    `run_ahead`: when no instruction holds an interface, no rank has buckets and no spans are asked for, ranks
    compute their timelines as far as they know their inputs and yield only to wait for one
    (`simulator.run_ahead`, the same figures bit for bit); False runs every instruction as an event.
    """
    env = simpy.Environment()
    pp = schedule.pp
    arrived: dict[tuple[str, int, int], simpy.Event] = {}

    def arrival(key: tuple[str, int, int]) -> simpy.Event:
        event = arrived.get(key)
        if event is None:
            event = arrived[key] = env.event()
        return event

    # Every rank's network interface is a FIFO of sends (and, last, its tail): one item runs at a time.
    queue: list[deque] = [deque() for _ in range(pp)]
    nic_active = [False] * pp
    nic_load = [0.0] * pp   # share of the running instruction its collectives hold the interface
    nic_until = [0.0] * pp  # when that instruction ends
    shares: list[bool] = [False] * pp  # whether any instruction of the rank holds the interface

    def submit(src: int, item: tuple[float | None, simpy.Event], kind: str = "send") -> None:
        if shared[src] is not None:  # a rank with gradient buckets: sends and buckets share the interface
            base, event = item
            if base is None:
                shared[src].when_idle(event)
            elif shares[src]:
                _after_starts(env, lambda: shared[src].submit(kind, base, event))
            else:
                shared[src].submit(kind, base, event)
            return
        queue[src].append(item)
        if not nic_active[src]:
            nic_active[src] = True
            next_on_nic(src)

    def next_on_nic(src: int) -> None:
        if not queue[src]:
            nic_active[src] = False
            return
        base, event = queue[src].popleft()
        if base is None:  # the rank's tail: it holds the interface from here to the end of the step
            event.succeed()
        elif shares[src]:
            _after_starts(env, lambda: start_send(src, base, event))
        else:
            start_send(src, base, event)

    def start_send(src: int, base: float, event: simpy.Event) -> None:
        """A point-to-point send holds the sender's network interface: sends from one rank queue behind each
        other, and one that starts while the rank's current instruction runs all-to-alls shares the interface
        fairly with them: if they keep it busy a share rho of the instruction, the send gets full bandwidth for
        1 - rho of the time and half for rho, so it takes base / (1 - rho / 2): two backlogged flows on one link
        get equal shares, which is what max-min fairness gives them (Assumption: the interface, the link both cross
        first, is their bottleneck; flows further into the fabric are not shared out). The instruction is the one the
        rank runs once every instruction starting at the send's instant has started (`_after_starts`)."""
        rho = nic_load[src] if env.now < nic_until[src] else 0.0
        held = base / (1.0 - rho / 2.0)
        nic_busy[src] += held
        done = env.timeout(held)
        done.callbacks.append(lambda _: (event.succeed(), next_on_nic(src)))

    finish = [0.0] * pp
    end = [0.0] * pp
    nic_busy = [0.0] * pp
    nic_wait = [0.0] * pp
    peak = [0] * pp
    spans: list[Span] = []
    counter = [0]

    def bucket_ready(rank: int, seconds: float) -> Callable:
        return lambda _: submit(rank, (seconds, env.event()), "dp")

    def stretch(rank: int) -> Callable[[], float]:
        return lambda: 1.0 / (1.0 - (nic_load[rank] if env.now < nic_until[rank] else 0.0) / 2.0)

    shared: list[SharedInterface | None] = [
        SharedInterface(env, stretch(r)) if buckets is not None and buckets(r) else None for r in range(pp)]

    def rank_process(rank: int, steps: list[tuple]):
        live, timeout, get = 0, env.timeout, arrived.get
        last = len(steps) - 1
        own_buckets = buckets(rank) if buckets is not None else ()
        for index, (instruction, prof, needs, forwards, weights, keys, delays, load) in enumerate(steps):
            pending = [event for event in (get(key) or arrival(key) for key in needs) if event.callbacks is not None]
            if pending:  # an input that has already arrived costs no event
                yield pending[0] if len(pending) == 1 else simpy.AllOf(env, pending)
            start = env.now
            live += forwards
            if live > peak[rank]:
                peak[rank] = live
            nic_load[rank], nic_until[rank] = load, start + prof.duration
            late = ()
            if index == last and own_buckets:  # gradient buckets become ready during the last instruction
                late = tuple(sec for share, sec in own_buckets if share >= 1.0)
                for share, sec in own_buckets:
                    if share < 1.0:
                        timeout(share * prof.duration).callbacks.append(bucket_ready(rank, sec))
            since = shared[rank].dp_time() if index == last and own_buckets else 0.0
            yield timeout(prof.duration)
            if index == last and own_buckets and bucket_sms is not None and prof.duration > 0:
                # the buckets' NCCL channels take SMs from the backward's compute (`simulator.nccl_sms`)
                yield from stretch_under_buckets(env, shared[rank], bucket_sms(rank) * prof.compute_busy
                                                 / prof.duration, since)
            finish[rank] = env.now
            counter[0] += 1
            # Instruction spans sit on the compute stream; in detail mode they move to a "pipeline" lane and the
            # compute and communication streams carry the op-level spans instead.
            if record or detail:
                spans.append(Span(rank, "pipeline" if detail else "compute", start, env.now, instruction.label(),
                                  instruction.kind, instruction.microbatch, instruction.stage,
                                  _instruction_args(schedule, instruction)))
            if detail:
                spans.extend(_shift(s, rank, start, instruction) for s in prof.spans)
            live -= weights
            for key, delay in zip(keys, delays):
                if delay <= 0.0:
                    (get(key) or arrival(key)).succeed()
                else:  # queued on the interface now, so the send keeps its place ahead of what the rank does next
                    submit(rank, (delay, get(key) or arrival(key)))
            for sec in late:
                submit(rank, (sec, env.event()), "dp")
        if tail is not None:
            slot = env.event()
            submit(rank, (None, slot))
            yield slot
            start = env.now
            nic_wait[rank] = start - finish[rank]
            yield env.timeout(tail(rank))
            if record or detail:
                spans.append(Span(rank, "pipeline" if detail else "compute", start, env.now, "dp-sync+optimizer",
                                  "tail"))
        end[rank] = env.now

    # Schedules are pure: every instruction's cost, inputs and outputs are known before the run starts, and so are
    # each rank's busy totals (the run decides only when things happen).
    runs = _programs(schedule, coster)
    busy, comm_busy, executing = runs.busy, runs.comm_busy, runs.executing
    shares[:] = runs.holds
    if run_ahead and not (record or detail) and plain(shares, shared):
        finish, end, nic_busy, nic_wait, peak, ran = _run_ahead(runs, tail)
        counter[0] = ran
    else:
        for rank, steps in enumerate(runs.steps()):
            env.process(rank_process(rank, steps))
        env.run()
    total = sum(len(p) for p in schedule.programs)
    if counter[0] != total:
        stuck = total - counter[0]
        raise RuntimeError(f"schedule {schedule.name!r} deadlocked: {stuck} of {total} instructions never ran")
    makespan = max(finish)
    return PipelineResult(
        makespan=makespan,
        busy_per_rank=tuple(busy),
        comm_busy_per_rank=tuple(comm_busy),
        bubble_per_rank=tuple(makespan - e for e in executing),
        peak_activations_per_rank=tuple(peak),
        finish_per_rank=tuple(finish),
        end_per_rank=tuple(end),
        instructions_run=counter[0],
        spans=tuple(spans),
        nic_busy_per_rank=tuple(nic.busy if nic is not None else b for nic, b in zip(shared, nic_busy)),
        nic_wait_per_rank=tuple(nic_wait),
    )


_AFTER_STARTS = 2  # an event priority after simpy's URGENT (0) and NORMAL (1)


def _after_starts(env: simpy.Environment, action: Callable[[], None]) -> None:
    """Run `action` at the current instant once every event already due now has been processed, so every rank
    that starts an instruction at this instant has started it. (simpy orders events at one instant by
    priority; arrivals, timeouts and process resumptions are NORMAL.)"""
    event = simpy.Event(env)
    event._ok, event._value = True, None  # triggered by hand, as Event.succeed does, at a later priority
    event.callbacks.append(lambda _: action())
    env.schedule(event, _AFTER_STARTS)


def _shift(span: Span, rank: int, t0: float, instruction: Instruction) -> Span:
    return Span(rank, span.stream, t0 + span.start, t0 + span.end, span.name, span.kind,
                instruction.microbatch, instruction.stage, span.args + (("instruction", instruction.label()),))


def _instruction_args(schedule: Schedule, instruction: Instruction) -> tuple[tuple[str, object], ...]:
    """Direction of a micro-batch: 1 when its stage 0 is not on rank 0 (DualPipe's second direction)."""
    direction = 0 if schedule.rank_of(instruction.microbatch, 0) == 0 else 1
    args: tuple[tuple[str, object], ...] = (("direction", direction),)
    if instruction.kind == "FB":
        b_direction = 0 if schedule.rank_of(instruction.b_microbatch, 0) == 0 else 1
        args += (("b_direction", b_direction), ("b_microbatch", instruction.b_microbatch),
                 ("b_stage", instruction.b_stage))
    return args


# --------------------------------------------------------------------------------------------------------------
# Unit-cost mode


@dataclass(frozen=True)
class UnitCosts:
    """Uniform chunk costs. `b` is a FULL backward (input + weight gradients), as in the DualPipe table;
    a split B costs b - w, a W costs w, a BW costs b, an overlapped F&B costs fb (default f + b)."""

    f: float = 1.0
    b: float = 2.0
    w: float = 1.0
    fb: float | None = None

    def __post_init__(self) -> None:
        for name in ("f", "b", "w", "fb"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < float("inf"):  # NaN fails too
                raise ValueError(f"unit cost {name} must be a finite number >= 0, got {value}")
        if self.w > self.b:
            raise ValueError(f"unit cost w ({self.w}) must not exceed the full backward b ({self.b})")

    def of(self, kind: str) -> float:
        return {
            "F": self.f,
            "B": self.b - self.w,
            "W": self.w,
            "BW": self.b,
            "FB": self.f + self.b if self.fb is None else self.fb,
        }[kind]


@dataclass(frozen=True)
class UnitResult:
    makespan: float
    busy_per_rank: tuple[float, ...]
    bubble_per_rank: tuple[float, ...]
    peak_activations_per_rank: tuple[int, ...]
    spans: tuple[Span, ...] = field(default=(), repr=False)


class _UnitCoster:
    def __init__(self, costs: UnitCosts):
        self.costs = costs

    def profile(self, rank: int, instruction: Instruction) -> InstructionProfile:
        d = self.costs.of(instruction.kind)
        return InstructionProfile(duration=d, compute_busy=d, comm_busy=0.0)

    def transfer(self, src: int, dst: int, kind: str, microbatch: int, stage: int) -> float:
        return 0.0


def run_unit(schedule: Schedule, costs: UnitCosts | None = None) -> UnitResult:
    """Run `schedule` with uniform costs and free transfers."""
    costs = costs or UnitCosts()
    result = run_pipeline(schedule, _UnitCoster(costs))
    if not (math.isfinite(result.makespan) and all(math.isfinite(b) for b in result.bubble_per_rank)):
        raise ValueError(f"unit costs f/b/w/fb: the makespan of {costs} overflows a float64 "
                         f"({sys.float_info.max:.3g}); allowed: costs whose sum over a rank's chunks stays finite")
    return UnitResult(
        makespan=result.makespan,
        busy_per_rank=result.busy_per_rank,
        bubble_per_rank=result.bubble_per_rank,
        peak_activations_per_rank=result.peak_activations_per_rank,
        spans=result.spans,
    )

