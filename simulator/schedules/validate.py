"""Structural checks of a pure schedule: completeness, placement, in-rank order, and deadlock freedom.

``validate(schedule)`` raises ``ValueError`` (one line, naming the first offending instruction) when
- a part (F|B|W, micro-batch, stage) is missing or appears twice (``BW`` counts as B and W, ``FB`` as F and BW);
  with ``split_backward`` false no separate B or W may appear;
- a rank runs a part of a stage that ``placement`` puts on another rank;
- a rank's own order breaks a dependency between two parts it holds (F(m,s-1) before F(m,s); B(m,s+1) and
  F(m,s) before B(m,s); B(m,s) before W(m,s));
- the programs deadlock: a token simulation with zero costs (each rank runs its next instruction as soon as the
  inputs of all its parts are done) stops before every instruction ran.
"""

from __future__ import annotations

from gpuhours.simulator.instructions import Schedule

Part = tuple[str, int, int]


def _elementary(parts) -> list[Part]:
    """Expand BW into B and W."""
    out: list[Part] = []
    for kind, m, s in parts:
        if kind == "BW":
            out += [("B", m, s), ("W", m, s)]
        else:
            out.append((kind, m, s))
    return out


def dependencies(part: Part, num_stages: int) -> list[Part]:
    """Parts that must finish before ``part`` may start (see ``simulator.instructions``)."""
    kind, m, s = part
    if kind == "F":
        return [("F", m, s - 1)] if s > 0 else []
    if kind == "B":
        deps = [("F", m, s)]
        if s + 1 < num_stages:
            deps.append(("B", m, s + 1))
        else:
            deps.append(("F", m, num_stages - 1))
        return deps
    if kind == "W":
        return [("B", m, s)]
    raise ValueError(f"unknown part kind {kind!r}")


def _check_parts(schedule: Schedule) -> None:
    seen: dict[Part, int] = {}
    for rank, program in enumerate(schedule.programs):
        for ins in program:
            if not schedule.split_backward and ins.kind in ("B", "W"):
                raise ValueError(f"{ins.label()} on rank {rank}: split B/W in a schedule with split_backward=False")
            for part in _elementary(ins.parts()):
                kind, m, s = part
                if not (0 <= m < schedule.num_microbatches and 0 <= s < schedule.num_stages):
                    raise ValueError(f"{ins.label()} on rank {rank}: micro-batch or stage out of range "
                                     f"(M={schedule.num_microbatches}, stages={schedule.num_stages})")
                owner = schedule.rank_of(m, s)
                if owner != rank:
                    raise ValueError(f"{ins.label()} on rank {rank}: stage {s} of micro-batch {m} is placed on rank {owner}")
                if part in seen:
                    raise ValueError(f"part {kind}{m}.{s} appears twice (ranks {seen[part]} and {rank})")
                seen[part] = rank
    for kind in ("F", "B", "W"):
        for m in range(schedule.num_microbatches):
            for s in range(schedule.num_stages):
                if (kind, m, s) not in seen:
                    raise ValueError(f"part {kind}{m}.{s} is missing from every program")


def _check_rank_order(schedule: Schedule) -> None:
    for rank, program in enumerate(schedule.programs):
        position: dict[Part, int] = {}
        for i, ins in enumerate(program):
            for part in _elementary(ins.parts()):
                position[part] = i
        for i, ins in enumerate(program):
            own = _elementary(ins.parts())
            for part in own:
                for dep in dependencies(part, schedule.num_stages):
                    if dep in own and dep != part:
                        # inside one instruction only BW's own B -> W is allowed
                        if not (ins.kind in ("BW", "FB") and part[0] == "W" and dep == ("B",) + part[1:]):
                            raise ValueError(f"{ins.label()} on rank {rank} depends on its own part "
                                             f"{dep[0]}{dep[1]}.{dep[2]}")
                    elif dep in position and position[dep] > i:
                        raise ValueError(f"rank {rank} runs {ins.label()} (position {i}) before "
                                         f"{dep[0]}{dep[1]}.{dep[2]} (position {position[dep]}) that it needs")


def _check_deadlock(schedule: Schedule) -> None:
    done: set[Part] = set()
    pcs = [0] * schedule.pp
    remaining = sum(len(p) for p in schedule.programs)
    progressed = True
    while remaining and progressed:
        progressed = False
        for rank, program in enumerate(schedule.programs):
            while pcs[rank] < len(program):
                parts = _elementary(program[pcs[rank]].parts())
                own = set(parts)
                if not all(d in done or d in own for p in parts for d in dependencies(p, schedule.num_stages)):
                    break
                done.update(parts)
                pcs[rank] += 1
                remaining -= 1
                progressed = True
    if remaining:
        heads = ", ".join(f"rank {r}: {p[pcs[r]].label()}" for r, p in enumerate(schedule.programs) if pcs[r] < len(p))
        raise ValueError(f"schedule {schedule.name!r} deadlocks with {remaining} instructions left ({heads})")


def validate(schedule: Schedule) -> None:
    """Raise ValueError on the first structural defect; return None for a valid schedule."""
    if len(schedule.programs) != schedule.pp:
        raise ValueError(f"programs must have one entry per rank (pp={schedule.pp}), got {len(schedule.programs)}")
    if schedule.params_per_rank and len(schedule.params_per_rank) != schedule.pp:
        raise ValueError(f"params_per_rank must have pp={schedule.pp} entries, got {len(schedule.params_per_rank)}")
    _check_parts(schedule)
    _check_rank_order(schedule)
    _check_deadlock(schedule)
