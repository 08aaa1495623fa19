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

from dataclasses import dataclass, field
from typing import Callable, Protocol

import simpy

from gpuhours.simulator.instructions import Instruction, Schedule
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
        """Seconds to move F's activations (kind "F") or B's input gradients (kind "B") from src to dst."""
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


def run_pipeline(schedule: Schedule, coster: InstructionCoster, detail: bool = False,
                 tail: Callable[[int], float] | None = None) -> PipelineResult:
    """Simulate one pass of `schedule`; `detail` also returns op-level spans on both streams.

    `tail(rank)`: seconds of work a rank does after its last instruction (gradient synchronisation and the
    optimizer); it holds the rank's network interface, so it waits for the rank's last sends to leave.
    """
    env = simpy.Environment()
    num_stages = schedule.num_stages
    arrived: dict[tuple[str, int, int], simpy.Event] = {}

    def arrival(kind: str, microbatch: int, stage: int) -> simpy.Event:
        key = (kind, microbatch, stage)
        if key not in arrived:
            arrived[key] = env.event()
        return arrived[key]

    def deliver(src: int, kind: str, microbatch: int, stage: int):
        """Send the output of part (kind, microbatch, stage) on rank src to whoever needs it next."""
        if kind == "F":
            if stage + 1 < num_stages:
                target_kind, target_stage = "F", stage + 1
            else:  # the loss is computed in the last stage's forward: its backward may start
                target_kind, target_stage = "B", stage
        else:  # B: input gradients flow to the previous stage
            if stage == 0:
                return
            target_kind, target_stage = "B", stage - 1
        dst = schedule.rank_of(microbatch, target_stage)
        delay = 0.0 if dst == src else coster.transfer(src, dst, kind, microbatch, stage)
        event = arrival(target_kind, microbatch, target_stage)
        if delay <= 0.0:
            event.succeed()
            return
        # Queue on the interface now, so the send keeps its place ahead of whatever the rank does next.
        env.process(_send(src, delay, event, nic[src].request()))

    def _send(src: int, base: float, event: simpy.Event, slot: simpy.Event):
        """A point-to-point send holds the sender's network interface: sends from one rank queue behind each
        other, and one that starts while the rank's current instruction runs all-to-alls shares the interface
        fairly with them: if they keep it busy a share rho of the instruction, the send gets full bandwidth for
        1 - rho of the time and half for rho, so it takes base / (1 - rho / 2)."""
        yield slot
        rho = nic_load[src] if env.now < nic_until[src] else 0.0
        yield env.timeout(base / (1.0 - rho / 2.0))
        nic[src].release(slot)
        event.succeed()

    nic = [simpy.Resource(env, capacity=1) for _ in range(schedule.pp)]
    nic_load = [0.0] * schedule.pp   # share of the running instruction its collectives hold the interface
    nic_until = [0.0] * schedule.pp  # when that instruction ends

    busy = [0.0] * schedule.pp
    comm_busy = [0.0] * schedule.pp
    executing = [0.0] * schedule.pp
    finish = [0.0] * schedule.pp
    end = [0.0] * schedule.pp
    peak = [0] * schedule.pp
    spans: list[Span] = []
    counter = [0]

    def rank_process(rank: int, program: tuple[Instruction, ...]):
        live = 0
        for instruction in program:
            needs = []
            for kind, microbatch, stage in instruction.parts():
                if kind == "F" and stage > 0:
                    needs.append(arrival("F", microbatch, stage))
                elif kind in ("B", "BW"):
                    needs.append(arrival("B", microbatch, stage))
            if needs:
                yield simpy.AllOf(env, needs)
            start = env.now
            for kind, _, _ in instruction.parts():
                if kind == "F":
                    live += 1
            peak[rank] = max(peak[rank], live)
            prof = coster.profile(rank, instruction)
            nic_load[rank] = min(1.0, prof.nic_busy / prof.duration) if prof.duration > 0 else 0.0
            nic_until[rank] = start + prof.duration
            yield env.timeout(prof.duration)
            busy[rank] += prof.compute_busy
            comm_busy[rank] += prof.comm_busy
            executing[rank] += prof.duration
            finish[rank] = env.now
            counter[0] += 1
            # Instruction spans sit on the compute stream; in detail mode they move to a "pipeline" lane and the
            # compute and communication streams carry the op-level spans instead.
            spans.append(Span(rank, "pipeline" if detail else "compute", start, env.now, instruction.label(),
                              instruction.kind, instruction.microbatch, instruction.stage,
                              _instruction_args(schedule, instruction)))
            if detail:
                spans.extend(_shift(s, rank, start, instruction) for s in prof.spans)
            for kind, microbatch, stage in instruction.parts():
                if kind in ("W", "BW"):
                    live -= 1
                if kind in ("F", "B", "BW"):
                    deliver(rank, "F" if kind == "F" else "B", microbatch, stage)
        if tail is not None:
            with nic[rank].request() as slot:
                yield slot
                start = env.now
                yield env.timeout(tail(rank))
                spans.append(Span(rank, "pipeline" if detail else "compute", start, env.now, "dp-sync+optimizer",
                                  "tail"))
        end[rank] = env.now

    for rank, program in enumerate(schedule.programs):
        env.process(rank_process(rank, program))
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
    )


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
    result = run_pipeline(schedule, _UnitCoster(costs or UnitCosts()))
    return UnitResult(
        makespan=result.makespan,
        busy_per_rank=result.busy_per_rank,
        bubble_per_rank=result.bubble_per_rank,
        peak_activations_per_rank=result.peak_activations_per_rank,
        spans=result.spans,
    )

