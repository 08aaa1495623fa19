"""Every rank's program as the engine runs it: instructions with their inputs, outputs, costs and sends.

Schedules are pure, so what an instruction waits for and what it sends is known before a run starts: built once
per schedule shape (`_structure`) and priced per run (`programs`) by the run's `InstructionCoster`
(`simulator.engine`).
"""

from __future__ import annotations

from gpuhours.simulator.instructions import Schedule


def programs(schedule: Schedule, coster) -> tuple:
    """Every rank's program as the run needs it: per instruction (instruction, profile, inputs, chunks
    allocated, chunks freed, arrival keys of its outputs, seconds of each send, share of the instruction its
    collectives hold the interface); and per rank its compute, communication and executing totals, and whether
    any instruction holds the interface. A coster whose profiles depend on (kind, stage, b_stage) only sets
    `uniform_profiles`, and one whose transfers depend on (source, destination, "F"/"B", stage) only sets
    `uniform_transfers`: they are then asked once per kind of instruction and route of the rank (`_structure`)
    rather than once per micro-batch."""
    transfer, profile = coster.transfer, coster.profile
    uniform_profiles = getattr(coster, "uniform_profiles", False)
    uniform_transfers = getattr(coster, "uniform_transfers", False)
    programs, busy, comm_busy, executing, holds = [], [], [], [], []
    for rank, program in enumerate(_structure(schedule)):
        steps: list[tuple] = []
        add = steps.append
        compute_total = comm_total = executing_total = 0.0
        held = False
        routes: dict[int, tuple[float, ...]] = {}
        kinds: dict[int, tuple] = {}
        for instruction, needs, forwards, weights, outs, keys, route, kind in program:
            cost = kinds.get(kind) if uniform_profiles else None
            if cost is None:
                prof = profile(rank, instruction)
                duration = prof.duration
                load = min(1.0, prof.nic_busy / duration) if duration > 0 else 0.0
                cost = kinds[kind] = (prof, load, prof.nic_busy > 0)
            prof, load, holding = cost
            held = held or holding
            delays = routes.get(route) if uniform_transfers else None
            if delays is None:
                delays = routes[route] = tuple(0.0 if dst == rank else transfer(rank, dst, sent, microbatch, stage)
                                               for _, dst, sent, microbatch, stage in outs)
            add((instruction, prof, needs, forwards, weights, keys, delays, load))
            compute_total += prof.compute_busy
            comm_total += prof.comm_busy
            executing_total += prof.duration
        programs.append(steps)
        busy.append(compute_total)
        comm_busy.append(comm_total)
        executing.append(executing_total)
        holds.append(held)
    return programs, busy, comm_busy, executing, holds


_STRUCTURES: dict[tuple, tuple] = {}


def _structure(schedule: Schedule) -> tuple:
    """Per rank, per instruction: (instruction, the arrivals it waits for, chunks it allocates, chunks it frees,
    its outputs as (arrival key, destination rank, "F" or "B", micro-batch, stage), their arrival keys, the
    rank's number for their (destination, "F" or "B", stage), its route, and for the instruction's (kind, stage,
    b_stage)). F(m, s) waits for the
    activations of stage s-1, B/BW(m, s) for the gradients; F's activations go to the next stage (from the last
    stage the loss lets its backward start), B's input gradients to the previous stage. Cached per schedule
    shape: schedules are pure."""
    cache_key = (schedule.name, schedule.pp, schedule.num_microbatches, schedule.num_stages, id(schedule.placement))
    hit = _STRUCTURES.get(cache_key)
    if hit is not None and hit[0] is schedule.placement and hit[1] is schedule.programs:
        return hit[2]
    last = schedule.num_stages - 1
    ranks = []
    for program in schedule.programs:
        rows = []
        routes: dict[tuple, int] = {}
        kinds: dict[tuple, int] = {}
        for instruction in program:
            needs, outs, forwards, weights = [], [], 0, 0
            for kind, microbatch, stage in instruction.parts():
                if kind == "F":
                    forwards += 1
                    if stage > 0:
                        needs.append(("F", microbatch, stage))
                    target = ("F", microbatch, stage + 1) if stage < last else ("B", microbatch, stage)
                    outs.append((target, schedule.rank_of(microbatch, target[2]), "F", microbatch, stage))
                elif kind in ("B", "BW"):
                    needs.append(("B", microbatch, stage))
                    if stage > 0:
                        target = ("B", microbatch, stage - 1)
                        outs.append((target, schedule.rank_of(microbatch, stage - 1), "B", microbatch, stage))
                if kind in ("W", "BW"):
                    weights += 1
            route = tuple((dst, sent, stage) for _, dst, sent, _, stage in outs)
            kind = (instruction.kind, instruction.stage, instruction.b_stage)
            rows.append((instruction, tuple(needs), forwards, weights, tuple(outs), tuple(o[0] for o in outs),
                         routes.setdefault(route, len(routes)), kinds.setdefault(kind, len(kinds))))
        ranks.append(tuple(rows))
    if len(_STRUCTURES) >= 8:
        _STRUCTURES.pop(next(iter(_STRUCTURES)))
    _STRUCTURES[cache_key] = (schedule.placement, schedule.programs, tuple(ranks))
    return tuple(ranks)
