"""Every rank's program as the engine runs it: instructions with their inputs, outputs, costs and sends.

Schedules are pure, so what an instruction waits for and what it sends is known before a run starts: built once
per schedule shape (`_structure`) and priced per run (`programs`) by the run's `InstructionCoster`
(`simulator.engine`). A shape keeps, per rank, each instruction's arrivals as small integers (the activations
of micro-batch m for stage s are number m x 2S + s, the gradients for stage s number m x 2S + S + s, with S
stages), the number of the instruction's kind and of its route, and the rank's peak of live activation chunks (a
function of the order of its instructions alone: +forwards at an instruction's start, -weights at its end). A run
prices each kind and route once and reads the rest by number: the event engine gets one tuple per instruction
(`Programs.steps`), the run-ahead path (`simulator.run_ahead`) only the numbers.
"""

from __future__ import annotations

import numpy as np

from gpuhours.simulator.instructions import Schedule


class Programs:
    """One run's priced programs. Per rank: `costs` (per kind, or per instruction for a coster without
    `uniform_profiles`: profile, share of it the interface is held, whether it is held), `cost_seq` (each
    instruction's index into them), `route_delays` / `route_seq` (the same for its sends' seconds), totals
    `busy`, `comm_busy`, `executing` (added instruction by instruction, in program order), `holds` (whether any
    instruction holds the interface); `shape` the schedule's `_Shape`."""

    __slots__ = ("shape", "costs", "cost_seq", "route_delays", "route_seq", "busy", "comm_busy", "executing",
                 "holds")

    def __init__(self, shape, costs, cost_seq, route_delays, route_seq, busy, comm_busy, executing, holds):
        self.shape, self.costs, self.cost_seq = shape, costs, cost_seq
        self.route_delays, self.route_seq = route_delays, route_seq
        self.busy, self.comm_busy, self.executing, self.holds = busy, comm_busy, executing, holds

    def steps(self) -> list[list[tuple]]:
        """Per rank, per instruction: (instruction, profile, arrival keys it waits for, chunks allocated, chunks
        freed, arrival keys of its outputs, seconds of each send, share of the instruction its collectives hold
        the interface), as the event engine (`simulator.engine.run_pipeline`) runs them."""
        out = []
        shape = self.shape
        for rank, (costs, seq, delays, rseq) in enumerate(zip(self.costs, self.cost_seq, self.route_delays,
                                                              self.route_seq)):
            out.append([(ins, costs[k][0], needs, forwards, weights, sends, delays[r], costs[k][1])
                        for ins, (needs, sends), forwards, weights, k, r in zip(
                            shape.programs[rank], shape.io[rank], shape.forwards[rank], shape.weights[rank], seq,
                            rseq)])
        return out

    def durations(self, rank: int) -> list[float]:
        """Seconds of each instruction of the rank."""
        return list(map([c[0].duration for c in self.costs[rank]].__getitem__, self.cost_seq[rank]))

    def delays(self, rank: int) -> list[tuple[float, ...]]:
        """Seconds of each send of each instruction of the rank."""
        return list(map(self.route_delays[rank].__getitem__, self.route_seq[rank]))

    def first_delays(self, rank: int) -> list[float]:
        """Seconds of each instruction's send, 0.0 where it sends nothing (for shapes with `single` set)."""
        firsts = [d[0] if d else 0.0 for d in self.route_delays[rank]]
        return list(map(firsts.__getitem__, self.route_seq[rank]))


def programs(schedule: Schedule, coster) -> Programs:
    """Every rank's program priced by `coster`: per instruction its profile and the share of it its collectives
    hold the interface, and the seconds of each of its sends; per rank its compute, communication and executing
    totals, and whether any instruction holds the interface. A coster whose profiles depend on (kind, stage,
    b_stage) only sets `uniform_profiles`, and one whose transfers depend on (source, destination, "F"/"B",
    stage) only sets `uniform_transfers`: they are then asked once per kind of instruction and route of the rank
    (`_structure`) rather than once per micro-batch."""
    transfer, profile = coster.transfer, coster.profile
    uniform_profiles = getattr(coster, "uniform_profiles", False)
    uniform_transfers = getattr(coster, "uniform_transfers", False)
    shape = _structure(schedule)
    all_costs, cost_seqs, all_delays, route_seqs = [], [], [], []
    busy, comm_busy, executing, holds = [], [], [], []
    for rank, rows in enumerate(shape.programs):
        if uniform_profiles:  # the first instruction of each kind stands for the kind
            asked, seq = [rows[i] for i in shape.kind_first[rank]], shape.kind_seq[rank]
        else:
            asked, seq = rows, range(len(rows))
        costs = []
        for instruction in asked:
            prof = profile(rank, instruction)
            duration = prof.duration
            load = min(1.0, prof.nic_busy / duration) if duration > 0 else 0.0
            costs.append((prof, load, prof.nic_busy > 0))
        if uniform_transfers:
            outs, rseq = [shape.outs[rank][i] for i in shape.route_first[rank]], shape.route_seq[rank]
        else:
            outs, rseq = shape.outs[rank], range(len(rows))
        delays = [tuple(0.0 if dst == rank else transfer(rank, dst, sent, microbatch, stage)
                        for dst, sent, microbatch, stage in o) for o in outs]
        index = shape.kind_index[rank] if uniform_profiles else np.arange(len(rows))
        busy.append(_in_order([c[0].compute_busy for c in costs], index))
        comm_busy.append(_in_order([c[0].comm_busy for c in costs], index))
        executing.append(_in_order([c[0].duration for c in costs], index))
        holds.append(any(c[2] for c in costs) if rows else False)
        all_costs.append(costs)
        cost_seqs.append(seq)
        all_delays.append(delays)
        route_seqs.append(rseq)
    return Programs(shape, all_costs, cost_seqs, all_delays, route_seqs, busy, comm_busy, executing, holds)


def _in_order(values: list[float], index: np.ndarray) -> float:
    """The sum of `values[index[0]]`, `values[index[1]]`, ... added one at a time from 0.0, as a loop over the
    program adds them: a cumulative sum is sequential, and `+ 0.0` gives the loop's zero where every term is
    -0.0. A sum past the largest float is inf without a warning, as Python's own addition gives it."""
    if not len(index):
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.cumsum(np.array(values, dtype=float)[index])[-1]) + 0.0


class _Shape:
    """A schedule's programs without costs (`_structure`). Per rank, per instruction: `io` (the numbers of the
    arrivals it waits for and of those it sends), `outs` (its sends as (destination rank, "F" or "B",
    micro-batch, stage)), `forwards` / `weights` (chunks it allocates at its start and frees at its end),
    `kind_seq` (the number of its (kind, stage, b_stage)), `route_seq` (of its sends' (destination, "F"/"B",
    stage)), `need` / `send` (its first arrival waited for and sent, -1 for none); per rank `kind_first` /
    `route_first` (the first instruction of each number), `kind_index` (`kind_seq` as an array) and `peak` (most
    live activation chunks); `programs` the schedule's; `arrivals`: how many numbers; `single`: whether no
    instruction waits for or sends more than one arrival (every schedule but the overlapped pairs of DualPipe
    and DualPipeV)."""

    __slots__ = ("programs", "io", "outs", "forwards", "weights", "kind_seq", "kind_index", "kind_first",
                 "route_seq", "route_first", "peak", "arrivals", "single", "need", "send")


_STRUCTURES: dict[tuple, tuple] = {}


def _structure(schedule: Schedule) -> _Shape:
    """The schedule's `_Shape`. F(m, s) waits for the activations of stage s-1, B/BW(m, s) for the gradients; F's
    activations go to the next stage (from the last stage the loss lets its backward start), B's input gradients
    to the previous stage. Cached per schedule shape: schedules are pure."""
    cache_key = (schedule.name, schedule.pp, schedule.num_microbatches, schedule.num_stages, id(schedule.placement))
    hit = _STRUCTURES.get(cache_key)
    if hit is not None and hit[0] is schedule.placement and hit[1] is schedule.programs:
        return hit[2]
    stages = schedule.num_stages
    last, both = stages - 1, 2 * stages
    rank_of = schedule.rank_of
    shape = _Shape()
    shape.programs = schedule.programs
    for name in ("io", "outs", "forwards", "weights", "kind_seq", "kind_index", "kind_first", "route_seq",
                 "route_first", "need", "send", "peak"):
        setattr(shape, name, [])
    single, most = True, schedule.num_microbatches - 1  # the highest micro-batch any instruction names
    for program in schedule.programs:
        records = []  # per instruction: (needs, sends, outs, forwards, weights, kind number, route number)
        add = records.append
        kind_first, route_first = [], []
        kinds: dict[tuple, int] = {}
        routes: dict[tuple, int] = {}
        for i, ins in enumerate(program):
            kind, m, s = ins.kind, ins.microbatch, ins.stage
            base = m * both
            if m > most:
                most = m
            if kind == "F":
                forwards, weights = 1, 0
                needs = (base + s,) if s > 0 else ()
                if s < last:
                    dst = rank_of(m, s + 1)
                    sends, outs, route = (base + s + 1,), ((dst, "F", m, s),), ((dst, "F", s),)
                else:  # the loss: the last stage's backward may start
                    dst = rank_of(m, s)
                    sends, outs, route = (base + stages + s,), ((dst, "F", m, s),), ((dst, "F", s),)
            elif kind == "W":
                forwards, weights, needs, sends, outs, route = 0, 1, (), (), (), ()
            elif kind != "FB":  # B or BW
                forwards, weights = 0, (1 if kind == "BW" else 0)
                needs = (base + stages + s,)
                if s > 0:
                    dst = rank_of(m, s - 1)
                    sends, outs, route = (base + stages + s - 1,), ((dst, "B", m, s),), ((dst, "B", s),)
                else:
                    sends, outs, route = (), (), ()
            else:
                forwards, weights, needs, sends, outs = _pair(ins, stages, rank_of)
                most = max(most, ins.b_microbatch)
                route = tuple((dst, sent, stage) for dst, sent, _, stage in outs)
                single = False
            key = (kind, s, ins.b_stage)
            k = kinds.get(key)
            if k is None:
                k = kinds[key] = len(kinds)
                kind_first.append(i)
            r = routes.get(route)
            if r is None:
                r = routes[route] = len(routes)
                route_first.append(i)
            add((needs, sends, outs, forwards, weights, k, r))
        needs, sends, outs, forwards, weights, kind_seq, route_seq = (
            tuple(column) for column in zip(*records)) if records else ((),) * 7
        live = top = 0
        for f, w in zip(forwards, weights):  # chunks live once an instruction has started, before it frees any
            live += f
            if live > top:
                top = live
            live -= w
        shape.io.append(tuple(zip(needs, sends)))
        shape.outs.append(outs)
        shape.forwards.append(forwards)
        shape.weights.append(weights)
        shape.kind_seq.append(kind_seq)
        shape.kind_index.append(np.array(kind_seq, dtype=np.int64))
        shape.kind_first.append(tuple(kind_first))
        shape.route_seq.append(route_seq)
        shape.route_first.append(tuple(route_first))
        shape.need.append(tuple(n[0] if n else -1 for n in needs))
        shape.send.append(tuple(n[0] if n else -1 for n in sends))
        shape.peak.append(top)
    shape.arrivals = (most + 1) * both
    shape.single = single
    if len(_STRUCTURES) >= 8:
        _STRUCTURES.pop(next(iter(_STRUCTURES)))
    _STRUCTURES[cache_key] = (schedule.placement, schedule.programs, shape)
    return shape


def _pair(ins, stages: int, rank_of) -> tuple:
    """(forwards, weights, arrivals waited for, arrivals sent, sends) of an overlapped F&B pair: its forward
    F(m, s) and its full backward BW(bm, bs), in that order."""
    both, last = 2 * stages, stages - 1
    m, s, bm, bs = ins.microbatch, ins.stage, ins.b_microbatch, ins.b_stage
    needs = ((m * both + s,) if s > 0 else ()) + (bm * both + stages + bs,)
    if s < last:
        sends, outs = (m * both + s + 1,), ((rank_of(m, s + 1), "F", m, s),)
    else:
        sends, outs = (m * both + stages + s,), ((rank_of(m, s), "F", m, s),)
    if bs > 0:
        sends += (bm * both + stages + bs - 1,)
        outs += ((rank_of(bm, bs - 1), "B", bm, bs),)
    return 1, 1, needs, sends, outs
