"""The pipeline engine against conservation laws and hand-derived expectations."""

from __future__ import annotations

import pytest

from gpuhours.simulator.engine import InstructionProfile, UnitCosts, run_pipeline, run_unit
from gpuhours.simulator.instructions import Instruction, Schedule
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.schedules import build_schedule


def _streams_never_overlap(spans):
    by_lane: dict[tuple[int, str], list] = {}
    for s in spans:
        by_lane.setdefault((s.rank, s.stream), []).append((s.start, s.end))
    for lane, intervals in by_lane.items():
        intervals.sort()
        for (a0, a1), (b0, b1) in zip(intervals, intervals[1:]):
            assert b0 >= a1 - 1e-12, f"{lane}: [{a0}, {a1}] overlaps [{b0}, {b1}]"


def test_single_stage_no_communication_step_is_sum_of_compute():
    """One stage, no communication: the makespan is the sum of the instruction costs, with no idle time."""
    sched = build_schedule("1f1b", 1, 7)
    costs = UnitCosts(f=1.5, b=2.5, w=1.0)
    r = run_unit(sched, costs)
    assert r.makespan == pytest.approx(7 * (1.5 + 2.5))
    assert r.bubble_per_rank == (pytest.approx(0.0),)


def test_unit_1f1b_matches_closed_form():
    pp, m = 4, 8
    r = run_unit(build_schedule("1f1b", pp, m), UnitCosts(1, 2, 1))
    assert r.makespan == pytest.approx(m * 3 + (pp - 1) * 3)
    assert all(b == pytest.approx((pp - 1) * 3) for b in r.bubble_per_rank)
    assert r.peak_activations_per_rank == (4, 3, 2, 1)


def test_deadlocked_program_is_reported():
    """Rank 1 waits for a forward that rank 0 never runs."""
    programs = ((Instruction("F", 0, 0), Instruction("BW", 0, 0)), (Instruction("F", 1, 1),))
    sched = Schedule("broken", 2, 1, 2, programs, lambda m, s: s)
    with pytest.raises(RuntimeError, match="deadlocked"):
        run_unit(sched)


class _SlowLink:
    """Every instruction costs 1, every transfer costs `delay`."""

    def __init__(self, delay):
        self.delay = delay

    def profile(self, rank, instruction):
        return InstructionProfile(1.0, 1.0, 0.0)

    def transfer(self, src, dst, kind, microbatch, stage):
        return self.delay


def test_transfers_delay_the_dependent_stage():
    """One micro-batch through pp stages: pp forwards and pp backwards in series, 2(pp-1) transfers between."""
    pp, delay = 4, 0.25
    sched = build_schedule("1f1b", pp, 1)
    r = run_pipeline(sched, _SlowLink(delay))
    # BW instructions cost 1 here too: the critical path is 2 pp instructions and 2 (pp - 1) transfers.
    assert r.makespan == pytest.approx(2 * pp * 1.0 + 2 * (pp - 1) * delay)


@pytest.fixture(scope="module")
def default_scenario():
    return load_scenario()


def test_hardware_streams_never_busy_twice(default_scenario):
    sim = default_scenario.simulator()
    step = sim.step(32, detail=True)
    detail = [s for s in step.pipeline.spans if s.stream in ("compute", "comm")]
    assert detail, "detail mode must return op-level spans"
    _streams_never_overlap(detail)
    # Per rank, the compute stream's busy time equals the sum of its op spans.
    for rank in range(default_scenario.parallel.pp):
        total = sum(s.duration for s in detail if s.rank == rank and s.stream == "compute")
        assert total == pytest.approx(step.busy_per_rank[rank], rel=1e-9)


def test_overlapped_pair_is_no_longer_than_serial(default_scenario):
    """Overlapping F and B must not take longer than running them one after the other, nor less than the busier
    stream's work."""
    coster = default_scenario.simulator().coster
    f = coster.profile(0, Instruction("F", 0, 3))
    bw = coster.profile(0, Instruction("BW", 0, 12))
    fb = coster.profile(0, Instruction("FB", 0, 3, 1, 12))
    assert fb.duration <= f.duration + bw.duration + 1e-12
    assert fb.duration >= max(fb.compute_busy, fb.comm_busy) - 1e-12
    assert fb.compute_busy == pytest.approx(f.compute_busy + bw.compute_busy)
    # the pair adds the trace profile's notify to each of its internode EP calls (hwmodels/deepep.py): 2.06 ms
    calls = sum(1 for u in coster.stages[3] for seg in u.forward for op in seg.ops
                if op.collective in ("ep_dispatch", "ep_combine"))
    calls += sum(1 for u in coster.stages[12] for seg in u.backward + u.weight for op in seg.ops
                 if op.collective in ("ep_dispatch", "ep_combine"))
    assert calls > 0 and coster.comm_group("ep").nodes > 1
    assert fb.comm_busy == pytest.approx(f.comm_busy + bw.comm_busy + calls * 32.988e-3 / 16)


class _NicCoster:
    """Instructions take 0.1; rank 0's keep its network interface busy a share `rho` of the time; forward
    activations cost 1 to send, gradients nothing."""

    def __init__(self, rho):
        self.rho = rho

    def profile(self, rank, instruction):
        return InstructionProfile(0.1, 0.1, 0.0, nic_busy=0.1 * self.rho if rank == 0 else 0.0)

    def transfer(self, src, dst, kind, microbatch, stage):
        return 1.0 if kind == "F" else 0.0


def _two_rank_schedule():
    I = Instruction
    programs = ((I("F", 0, 0), I("F", 1, 0), I("BW", 0, 0), I("BW", 1, 0)),
                (I("F", 0, 1), I("BW", 0, 1), I("F", 1, 1), I("BW", 1, 1)))
    return Schedule("two", 2, 2, 2, programs, lambda m, s: s)


def _start_of(result, rank, label):
    return next(s.start for s in result.spans if s.rank == rank and s.name == label)


def test_sends_from_one_rank_queue_on_its_network_interface():
    r = run_pipeline(_two_rank_schedule(), _NicCoster(rho=0.0))
    assert _start_of(r, 1, "F0.1") == pytest.approx(1.1)   # sent 0.1 -> 1.1
    assert _start_of(r, 1, "F1.1") == pytest.approx(2.1)   # queued behind it: 1.1 -> 2.1


def test_send_shares_the_interface_with_a_running_all_to_all():
    """F0's send starts while F1 runs all-to-alls the whole time (rho = 1): half bandwidth, 1 / (1 - 1/2) = 2."""
    r = run_pipeline(_two_rank_schedule(), _NicCoster(rho=1.0))
    assert _start_of(r, 1, "F0.1") == pytest.approx(0.1 + 2.0)
    # F1's send starts at 2.1 when rank 0 is idle: full bandwidth again.
    assert _start_of(r, 1, "F1.1") == pytest.approx(2.1 + 1.0)


class _SameInstantCoster:
    """Rank 0's F of micro-batch 1 lasts 2.0 and its activations take 1.0 to send; everything else lasts 0.1 and
    travels free. Rank 0's backwards keep its network interface busy the whole time (rho = 1)."""

    def profile(self, rank, instruction):
        duration = 2.0 if (rank, instruction.kind, instruction.microbatch) == (0, "F", 1) else 0.1
        nic = duration if (rank == 0 and instruction.kind == "BW") else 0.0
        return InstructionProfile(duration, duration, 0.0, nic_busy=nic)

    def transfer(self, src, dst, kind, microbatch, stage):
        return 1.0 if (kind, microbatch) == ("F", 1) else 0.0


def test_send_shares_with_an_instruction_starting_at_the_same_instant():
    """Rank 0 ends F1 at 2.1 and starts BW0 at once (its gradient arrived at 0.3): F1's send starts at the same
    instant, under BW0's all-to-alls, so it takes 1.0 / (1 - 1/2) = 2.0 and F1.1 starts at 4.1, not 3.1."""
    I = Instruction
    programs = ((I("F", 0, 0), I("F", 1, 0), I("BW", 0, 0), I("BW", 1, 0)),
                (I("F", 0, 1), I("BW", 0, 1), I("F", 1, 1), I("BW", 1, 1)))
    r = run_pipeline(Schedule("two", 2, 2, 2, programs, lambda m, s: s), _SameInstantCoster())
    assert _start_of(r, 0, "BW0.0") == pytest.approx(2.1)
    assert _start_of(r, 1, "F1.1") == pytest.approx(2.1 + 2.0)


def test_record_false_keeps_the_totals_and_drops_the_spans():
    sched = build_schedule("1f1b", 4, 8)
    full, bare = run_pipeline(sched, _SameInstantCoster()), run_pipeline(sched, _SameInstantCoster(), record=False)
    assert bare.spans == () and len(full.spans) == 4 * 16
    assert (bare.makespan, bare.busy_per_rank, bare.end_per_rank) == (full.makespan, full.busy_per_rank,
                                                                     full.end_per_rank)


class _GradSendCoster:
    """Instructions take 0.1; activations travel free, gradients take 1.0 to send."""

    def profile(self, rank, instruction):
        return InstructionProfile(0.1, 0.1, 0.0)

    def transfer(self, src, dst, kind, microbatch, stage):
        return 1.0 if kind == "B" else 0.0


def test_tail_waits_for_the_ranks_last_send():
    """Rank 1's gradient send (0.3 -> 1.3) holds its interface, so its 0.5 s tail runs 1.3 -> 1.8; rank 0 gets
    the gradient at 1.3, runs its backward to 1.4 and its tail to 1.9."""
    r = run_pipeline(build_schedule("1f1b", 2, 1), _GradSendCoster(), tail=lambda rank: 0.5)
    assert r.finish_per_rank == (pytest.approx(1.4), pytest.approx(0.3))
    assert r.end_per_rank == (pytest.approx(1.9), pytest.approx(1.8))
    assert r.makespan == pytest.approx(1.4)
