"""The engine's fast paths give the figures of the full event simulation: ranks that run ahead
(`simulator.run_ahead`), stage classes priced once (`simulator.stage_classes`) and the one-stage-per-rank hill
climb of stage balancing (`balance._rebalance_one_per_rank`)."""

from __future__ import annotations

import random

import pytest

from gpuhours.simulator.balance import partition_layers, rebalance_for_ranks
from gpuhours.simulator.engine import InstructionProfile, run_pipeline
from gpuhours.simulator.instructions import Instruction
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.stage_classes import SharedStageCoster


class _UnevenCoster:
    """Per stage and kind a different duration, per (source, destination, kind) a different send: irrational
    ratios, so ties and float rounding show up if the two paths add differently."""

    def __init__(self, seed: int, sends: bool = True):
        rng = random.Random(seed)
        self.base = {k: rng.uniform(0.5, 2.0) for k in ("F", "B", "W", "BW", "FB")}
        self.stage = [rng.uniform(0.9, 1.1) for _ in range(64)]
        self.link = [rng.uniform(0.0, 0.4) if sends else 0.0 for _ in range(64)]

    def profile(self, rank, instruction):
        d = self.base[instruction.kind] * self.stage[instruction.stage] * 3 ** 0.5
        return InstructionProfile(d, 0.9 * d, 0.1 * d)

    def transfer(self, src, dst, kind, microbatch, stage):
        return self.link[src] * (1.0 if kind == "F" else 2 ** 0.5) * (1 + 0.01 * (microbatch % 3))


def _figures(result):
    return (result.makespan, result.busy_per_rank, result.comm_busy_per_rank, result.bubble_per_rank,
            result.peak_activations_per_rank, result.finish_per_rank, result.end_per_rank, result.instructions_run,
            result.nic_busy_per_rank, result.nic_wait_per_rank)


@pytest.mark.parametrize("name,pp,m,vpp", [
    ("1f1b", 4, 9, 1), ("1f1b", 8, 3, 1), ("interleaved-1f1b", 4, 8, 2), ("interleaved-1f1b", 4, 6, 3),
    ("zb1p", 4, 10, 1), ("dualpipe", 4, 8, 1), ("dualpipev", 4, 8, 1), ("1f1b", 1, 3, 1)])
@pytest.mark.parametrize("seed", [1, 2])
def test_running_ahead_gives_the_event_simulation_bit_for_bit(name, pp, m, vpp, seed):
    """Every figure of a run equals the one-event-per-instruction run exactly, with and without a tail."""
    schedule = build_schedule(name, pp, m, vpp=vpp)
    coster = _UnevenCoster(seed)
    for tail in (None, lambda rank: 0.3 + 0.1 * rank):
        fast = run_pipeline(schedule, coster, tail=tail, record=False)
        full = run_pipeline(schedule, coster, tail=tail, record=False, run_ahead=False)
        assert _figures(fast) == _figures(full)


class _GradSendCoster:
    """Instructions take 0.1; activations travel free, gradients take 1.0 to send."""

    def profile(self, rank, instruction):
        return InstructionProfile(0.1, 0.1, 0.0)

    def transfer(self, src, dst, kind, microbatch, stage):
        return 1.0 if kind == "B" else 0.0


def test_running_ahead_waits_for_the_last_send_before_the_tail():
    """The hand-timed case of test_engine on the fast path: rank 1's gradient send (0.3 -> 1.3) holds its
    interface, so its 0.5 s tail runs 1.3 -> 1.8; rank 0 gets the gradient at 1.3, runs its backward to 1.4 and
    its tail to 1.9."""
    r = run_pipeline(build_schedule("1f1b", 2, 1), _GradSendCoster(), tail=lambda rank: 0.5, record=False)
    assert r.finish_per_rank == (pytest.approx(1.4), pytest.approx(0.3))
    assert r.end_per_rank == (pytest.approx(1.9), pytest.approx(1.8))
    assert r.nic_wait_per_rank == (pytest.approx(0.0), pytest.approx(1.0))
    assert r.nic_busy_per_rank == (0.0, 1.0)  # conservation: what rank 1 sent


def test_sends_queue_on_the_interface_when_running_ahead():
    """pp 2, m 2, 1F1B, every instruction 0.1 s, every activation 1 s to send: rank 0 runs F0 0-0.1 and F1
    0.1-0.2; F0's activations leave 0.1-1.1, F1's queue behind them 1.1-2.1. Rank 1: F0 1.1-1.2, BW0 1.2-1.3,
    F1 2.1-2.2, BW1 2.2-2.3."""
    class Coster:
        def profile(self, rank, instruction):
            return InstructionProfile(0.1, 0.1, 0.0)

        def transfer(self, src, dst, kind, microbatch, stage):
            return 1.0 if kind == "F" else 0.0

    r = run_pipeline(build_schedule("1f1b", 2, 2), Coster(), record=False)
    assert r.finish_per_rank[1] == pytest.approx(2.3)
    assert r.nic_busy_per_rank == (2.0, 0.0)


def test_a_rank_whose_instructions_hold_the_interface_is_simulated_event_by_event():
    """An instruction with all-to-alls (nic_busy > 0) decides the share of a send started under it: the fast
    path does not apply, and the run is the full simulation's."""
    class Coster(_UnevenCoster):
        def profile(self, rank, instruction):
            p = super().profile(rank, instruction)
            return InstructionProfile(p.duration, p.compute_busy, p.comm_busy, nic_busy=0.5 * p.duration)

    schedule = build_schedule("1f1b", 4, 8)
    fast = run_pipeline(schedule, Coster(3), record=False)
    full = run_pipeline(schedule, Coster(3), record=False, run_ahead=False)
    assert _figures(fast) == _figures(full)


def test_deadlock_is_reported_when_running_ahead():
    from gpuhours.simulator.instructions import Schedule

    programs = ((Instruction("F", 0, 0), Instruction("BW", 0, 0)), (Instruction("F", 1, 1),))
    with pytest.raises(RuntimeError, match="deadlocked"):
        run_pipeline(Schedule("broken", 2, 1, 2, programs, lambda m, s: s), _UnevenCoster(1), record=False)


# ---------------------------------------------------------------------------------------------- stage classes
def test_identical_stages_share_one_profile_with_the_same_figures():
    """DeepSeek-V3 on DualPipe, 16 stages: stage 0 holds the embedding and the three dense layers, stage 15 the
    head and MTP, and every layer between is an MoE layer, so a middle stage is in the class of the first middle
    stage with as many layers (balancing gave 4 x 14, 5, 0 at the time of writing: four classes); every
    instruction the schedule runs costs exactly what the per-stage coster gives."""
    sim = load_scenario().simulator()
    shared = SharedStageCoster(sim.coster)
    layers = sim.stage_layers
    middle = range(1, 15)
    expected = (0,) + tuple(min(t for t in middle if layers[t] == layers[s]) for s in middle) + (15,)
    assert shared.canonical == expected
    assert shared.classes < 16
    schedule = build_schedule("dualpipe", 16, 32)
    seen = set()
    for rank, program in enumerate(schedule.programs):
        for ins in program:
            key = (ins.kind, ins.stage, ins.b_stage)
            if key in seen:
                continue
            seen.add(key)
            a, b = shared.profile(rank, ins), sim.coster.profile(rank, ins)
            assert (a.duration, a.compute_busy, a.comm_busy, a.nic_busy) == (
                b.duration, b.compute_busy, b.comm_busy, b.nic_busy), key


def test_a_step_without_a_timeline_equals_the_one_with():
    """The default layout's step with op-level detail (per-stage profiles, every instruction an event) and
    without (stage classes, ranks running ahead where they may) gives the same step figures."""
    sim = load_scenario().simulator()
    bare, detail = sim.step(32), sim.step(32, detail=True)
    assert (bare.step_time, bare.busy_per_rank, bare.bubble_per_rank, bare.dp_tail_per_rank) == (
        detail.step_time, detail.busy_per_rank, detail.bubble_per_rank, detail.dp_tail_per_rank)


# ---------------------------------------------------------------------------------------------- balancing
def test_one_stage_per_rank_hill_climb_by_hand():
    """12 equal layers on three stages from (2, 6, 4), busiest 6: moves are tried from stage a to stage b, a then
    b ascending. From stage 0 nothing helps ((1, 7, 4), (1, 6, 5)); stage 1 -> 0 gives (3, 5, 4), busiest 5,
    taken; then (3, 4, 5), (4, 5, 3), (3, 6, 3) are no better. The second pass: stage 0's moves give 6 and 5;
    stage 1 -> 0 gives (4, 4, 4), taken; nothing beats 4 after it."""
    assert rebalance_for_ranks((2, 6, 4), [1.0] * 12, ((0,), (1,), (2,))) == (4, 4, 4)


@pytest.mark.parametrize("seed", range(6))
def test_one_stage_per_rank_matches_the_general_hill_climb(seed):
    """Holders (1,), (2,), ... leave rank 0 idle, so the general scorer runs and the busiest rank is still the
    busiest stage: both climbs must end on the same split, from the same (perturbed) start."""
    rng = random.Random(seed)
    layers, stages = rng.randint(8, 40), rng.randint(2, 8)
    cost = [rng.choice((1.0, 1.3, 0.7)) * rng.uniform(0.9, 1.1) for _ in range(layers)]
    first, last = rng.choice((0.0, 0.4)), rng.choice((0.0, 1.5))
    head_layers = rng.choice((0, 2))
    head = [rng.uniform(0.1, 0.5) for _ in range(layers)] if head_layers else None
    sizes = list(partition_layers(cost, stages, first, last, head_cost=head, head_layers=head_layers))
    for _ in range(4):  # start away from the optimum
        a, b = rng.randrange(stages), rng.randrange(stages)
        if a != b and sizes[a] > 1:
            sizes[a] -= 1
            sizes[b] += 1
    one = tuple((s,) for s in range(stages))
    shifted = tuple((s + 1,) for s in range(stages))
    kw = dict(head_cost=head, head_layers=head_layers)
    assert rebalance_for_ranks(tuple(sizes), cost, one, first, last, **kw) == rebalance_for_ranks(
        tuple(sizes), cost, shifted, first, last, **kw)
