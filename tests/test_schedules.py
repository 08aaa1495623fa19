"""Structure of the pure schedules: completeness, placement, dependency order, constraints, validate()."""

from __future__ import annotations

import dataclasses

import pytest

from gpuhours.simulator.engine import run_unit
from gpuhours.simulator.instructions import Instruction
from gpuhours.simulator.schedules import SCHEDULE_NAMES, build_schedule, validate

CASES = (
    [("1f1b", pp, m, 1) for pp in (1, 2, 3, 4, 8) for m in (1, 2, pp, pp + 3, 3 * pp)]
    + [("zb1p", pp, m, 1) for pp in (1, 2, 3, 4, 8) for m in (1, pp, pp + 1, 2 * pp + 3)]
    + [("interleaved-1f1b", pp, k * pp, v) for pp in (1, 2, 4) for k in (1, 2, 3) for v in (1, 2, 3)]
    + [("dualpipe", pp, m, 1) for pp in (2, 4, 6, 8) for m in (2 * pp, 2 * pp + 2, 20)]
    + [("dualpipev", pp, m, 1) for pp in (1, 2, 3, 4, 5) for m in (2 * pp, 2 * pp + 1, 20)]
)


def _ids(case):
    return "{}-pp{}-m{}-v{}".format(*case)


def _parts(schedule):
    out = []
    for rank, prog in enumerate(schedule.programs):
        for ins in prog:
            for kind, m, s in ins.parts():
                if kind == "BW":
                    out += [(rank, "B", m, s), (rank, "W", m, s)]
                else:
                    out.append((rank, kind, m, s))
    return out


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_part_exactly_once_on_its_rank(case):
    name, pp, m, v = case
    s = build_schedule(name, pp, m, vpp=v)
    validate(s)
    parts = _parts(s)
    keys = [p[1:] for p in parts]
    assert len(keys) == len(set(keys)) == 3 * m * s.num_stages
    for rank, kind, mb, stage in parts:
        assert s.rank_of(mb, stage) == rank
    assert len(s.programs) == s.pp == pp


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_engine_timeline_respects_dependencies(case):
    """F(m,s) starts after F(m,s-1) ends; B(m,s) after B(m,s+1) (and after F(m,S-1) at the end); W after its B."""
    name, pp, m, v = case
    s = build_schedule(name, pp, m, vpp=v)
    res = run_unit(s)
    start, end = {}, {}
    for span in res.spans:
        ins = _instruction_of(span, s)
        for kind, mb, stage in ins.parts():
            for k in (("B", "W") if kind == "BW" else (kind,)):
                assert (k, mb, stage) not in start
                start[(k, mb, stage)], end[(k, mb, stage)] = span.start, span.end
    last = s.num_stages - 1
    for mb in range(m):
        for st in range(s.num_stages):
            if st > 0:
                assert start[("F", mb, st)] >= end[("F", mb, st - 1)]
            upstream = ("B", mb, st + 1) if st < last else ("F", mb, last)
            assert start[("B", mb, st)] >= end[upstream]
            assert start[("B", mb, st)] >= end[("F", mb, st)]
            assert start[("W", mb, st)] >= start[("B", mb, st)]
            assert end[("W", mb, st)] >= end[("B", mb, st)]
    # one span per instruction, and each rank's spans never overlap
    assert len(res.spans) == sum(len(p) for p in s.programs)
    for r in range(pp):
        mine = sorted((sp.start, sp.end) for sp in res.spans if sp.rank == r)
        assert all(a[1] <= b[0] + 1e-12 for a, b in zip(mine, mine[1:]))


def _instruction_of(span, schedule):
    args = dict(span.args)
    if span.kind == "FB":
        return Instruction("FB", span.microbatch, span.stage, args["b_microbatch"], args["b_stage"])
    return Instruction(span.kind, span.microbatch, span.stage)


def test_placements_and_params():
    s = build_schedule("interleaved-1f1b", 4, 8, vpp=3)
    assert s.num_stages == 12 and [s.rank_of(0, st) for st in range(12)] == [0, 1, 2, 3] * 3
    assert s.params_per_rank == (3.0,) * 4
    d = build_schedule("dualpipe", 4, 8)
    assert [d.rank_of(0, st) for st in range(4)] == [0, 1, 2, 3]
    assert [d.rank_of(7, st) for st in range(4)] == [3, 2, 1, 0]
    assert d.params_per_rank == (2.0,) * 4 and d.split_backward
    v = build_schedule("dualpipev", 4, 8)
    assert v.num_stages == 8 and [v.rank_of(3, st) for st in range(8)] == [0, 1, 2, 3, 3, 2, 1, 0]
    assert v.params_per_rank == (2.0,) * 4
    assert build_schedule("1f1b", 4, 8).params_per_rank == (1.0,) * 4
    assert not build_schedule("1f1b", 4, 8).split_backward and build_schedule("zb1p", 4, 8).split_backward


def test_dualpipe_follows_reference_steps():
    """pp=4, M=8 (n=2, micro-batches 4..7 are direction 1, whose stage 3 sits on rank 0), walked by hand through
    the reference's eight steps. Rank 0 (h=0): 2 F(near) | F near, F far | B* far, W, F far | one main step of two
    pairs | BW far, F far & B near | BW far, B* near (zero bubble switches on mid-step 6) | W, B* near | W."""
    s = build_schedule("dualpipe", 4, 8)
    assert [ins.label() for ins in s.programs[0]] == [
        "F0.0", "F1.0", "F2.0", "F4.3", "B4.3", "W4.3", "F5.3", "F3.0&B5.3", "F6.3&B0.0",
        "BW6.3", "F7.3&B1.0", "BW7.3", "B2.0", "W2.0", "B3.0", "W3.0",
    ]
    # Rank 1 (h=1, a middle rank): 2 x [F near, F far] | main step 1 un-overlapped F, BW then a pair | main
    # step 2 | 2 x [B far, B near], the second pair split (h odd) | 2 W in FIFO order.
    assert [ins.label() for ins in s.programs[1]] == [
        "F0.1", "F4.2", "F1.1", "F5.2", "F2.1", "BW4.2", "F6.2&B0.1", "F3.1&B5.2", "F7.2&B1.1",
        "BW6.2", "BW2.1", "B7.2", "B3.1", "W7.2", "W3.1",
    ]
    # rank pp-1-r mirrors rank r with the directions swapped
    mirror = {**{m: m + 4 for m in range(4)}, **{m: m - 4 for m in range(4, 8)}}
    for r in range(4):
        a, b = s.programs[r], s.programs[3 - r]
        assert [i.kind for i in a] == [i.kind for i in b]
        assert [mirror[i.microbatch] for i in a] == [i.microbatch for i in b]


def test_constraint_errors_are_one_line_value_errors():
    bad = [
        ("nope", 4, 8, 1), ("1f1b", 0, 8, 1), ("1f1b", 4, 0, 1), ("1f1b", 4, 8, 2),
        ("interleaved-1f1b", 4, 3, 2), ("interleaved-1f1b", 4, 8, 0),
        ("dualpipe", 3, 12, 1), ("dualpipe", 4, 7, 1), ("dualpipe", 4, 6, 1), ("dualpipev", 4, 7, 1),
    ]
    for name, pp, m, v in bad:
        with pytest.raises(ValueError) as err:
            build_schedule(name, pp, m, vpp=v)
        assert "\n" not in str(err.value) and len(str(err.value)) < 160


def _with_programs(s, programs):
    return dataclasses.replace(s, programs=tuple(tuple(p) for p in programs))


def test_validate_rejects_defects():
    s = build_schedule("zb1p", 3, 4)
    progs = [list(p) for p in s.programs]
    # missing part
    broken = [p[:] for p in progs]
    broken[0].pop()
    with pytest.raises(ValueError, match="missing"):
        validate(_with_programs(s, broken))
    # duplicated part
    broken = [p[:] for p in progs]
    broken[1].append(broken[1][0])
    with pytest.raises(ValueError, match="twice"):
        validate(_with_programs(s, broken))
    # wrong rank
    broken = [p[:] for p in progs]
    broken[0].append(broken[1].pop(0))
    with pytest.raises(ValueError, match="placed on rank"):
        validate(_with_programs(s, broken))
    # W before its B inside a rank
    broken = [p[:] for p in progs]
    r2 = broken[2]
    i_b = r2.index(Instruction("B", 0, 2))
    i_w = r2.index(Instruction("W", 0, 2))
    r2[i_b], r2[i_w] = r2[i_w], r2[i_b]
    with pytest.raises(ValueError, match="before"):
        validate(_with_programs(s, broken))
    # cross-rank deadlock: rank 0 waits for B0.0 before it sends F1.0 that rank 1 needs first
    one = build_schedule("1f1b", 2, 2)
    p0 = [Instruction("F", 0, 0), Instruction("BW", 0, 0), Instruction("F", 1, 0), Instruction("BW", 1, 0)]
    p1 = [Instruction("F", 1, 1), Instruction("BW", 1, 1), Instruction("F", 0, 1), Instruction("BW", 0, 1)]
    with pytest.raises(ValueError, match="deadlock"):
        validate(_with_programs(one, [p0, p1]))
    # split B/W in a schedule that declares split_backward=False
    p0 = [Instruction("F", 0, 0), Instruction("F", 1, 0), Instruction("B", 0, 0), Instruction("W", 0, 0),
          Instruction("BW", 1, 0)]
    p1 = [Instruction("F", 0, 1), Instruction("BW", 0, 1), Instruction("F", 1, 1), Instruction("BW", 1, 1)]
    with pytest.raises(ValueError, match="split"):
        validate(_with_programs(one, [p0, p1]))
    # an overlapped pair whose backward needs its own forward
    v = build_schedule("1f1b", 1, 1)
    with pytest.raises(ValueError, match="own part"):
        validate(_with_programs(dataclasses.replace(v, split_backward=True), [[Instruction("FB", 0, 0, 0, 0)]]))


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_registry_builds_every_name(name):
    s = build_schedule(name, 4, 16, vpp=2 if name == "interleaved-1f1b" else 1)
    assert s.name == name
    validate(s)
