"""The run-ahead path on numbered schedule shapes (`simulator.programs`, `simulator.run_ahead`): costers that price
once per kind and route, the one-arrival fast loop, totals added in program order, peaks read from the shape and
the count of instructions a deadlock leaves."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from gpuhours.simulator.engine import InstructionProfile, run_pipeline
from gpuhours.simulator.instructions import Instruction, Schedule
from gpuhours.simulator.programs import _in_order, _structure
from gpuhours.simulator.schedules import build_schedule


class _UniformCoster:
    """Durations per (kind, stage, b_stage) and sends per (source, destination, kind), irrational ratios, with the
    flags that let the engine ask once per kind and route."""

    uniform_profiles = True
    uniform_transfers = True

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.base = {k: rng.uniform(0.5, 2.0) for k in ("F", "B", "W", "BW", "FB")}
        self.stage = [rng.uniform(0.9, 1.1) for _ in range(64)]
        self.link = [[rng.uniform(0.0, 0.4) for _ in range(64)] for _ in range(64)]

    def profile(self, rank, instruction):
        d = self.base[instruction.kind] * self.stage[instruction.stage] * 3 ** 0.5
        return InstructionProfile(d, 0.7 * d, 0.2 * d)

    def transfer(self, src, dst, kind, microbatch, stage):
        return self.link[src][dst] * (1.0 if kind == "F" else 2 ** 0.5)


def _figures(result):
    return (result.makespan, result.busy_per_rank, result.comm_busy_per_rank, result.bubble_per_rank,
            result.peak_activations_per_rank, result.finish_per_rank, result.end_per_rank, result.instructions_run,
            result.nic_busy_per_rank, result.nic_wait_per_rank)


@pytest.mark.parametrize("name,pp,m,vpp", [
    ("1f1b", 6, 13, 1), ("interleaved-1f1b", 4, 8, 2), ("zb1p", 5, 9, 1), ("dualpipe", 4, 10, 1),
    ("dualpipev", 4, 8, 1)])
def test_uniform_costers_give_the_event_simulation_bit_for_bit(name, pp, m, vpp):
    """Priced once per kind and route, read by number: every figure equals the one-event-per-instruction run."""
    schedule = build_schedule(name, pp, m, vpp=vpp)
    for seed in (1, 2):
        for tail in (None, lambda rank: 0.25 + 0.05 * rank):
            fast = run_pipeline(schedule, _UniformCoster(seed), tail=tail, record=False)
            full = run_pipeline(schedule, _UniformCoster(seed), tail=tail, record=False, run_ahead=False)
            assert _figures(fast) == _figures(full)


def test_only_overlapped_pairs_wait_for_two_arrivals():
    """An F&B pair waits for its forward's activations and its backward's gradients: DualPipe's and DualPipeV's
    shapes take the general loop, every other schedule the one-arrival loop."""
    assert not _structure(build_schedule("dualpipe", 4, 8)).single
    assert not _structure(build_schedule("dualpipev", 4, 8)).single
    for name, vpp in (("1f1b", 1), ("zb1p", 1), ("interleaved-1f1b", 2)):
        assert _structure(build_schedule(name, 4, 8, vpp=vpp)).single, name


def test_peak_activations_come_from_the_order_of_instructions():
    """1F1B holds pp - r forward chunks on rank r at its warm-up's end (fewer when there are fewer
    micro-batches): pp 4, 8 micro-batches gives 4, 3, 2, 1; with 2 micro-batches 2, 2, 2, 1."""
    for m, expected in ((8, (4, 3, 2, 1)), (2, (2, 2, 2, 1))):
        result = run_pipeline(build_schedule("1f1b", 4, m), _UniformCoster(3), record=False)
        assert result.peak_activations_per_rank == expected


def test_totals_are_added_in_program_order():
    """1e16 + 1 rounds back to 1e16 in float64, so adding 1e16, 1, -1e16 in that order gives 0.0 and in the order
    1e16, -1e16, 1 gives 1.0: the sum follows the program, not a reordering; an all -0.0 program adds to +0.0
    as a loop from 0.0 does."""
    values = [1e16, 1.0, -1e16]
    assert _in_order(values, np.array([0, 1, 2])) == 0.0
    assert _in_order(values, np.array([0, 2, 1])) == 1.0
    assert _in_order([0.5], np.array([0, 0, 0])) == 1.5
    assert _in_order([0.5], np.array([], dtype=np.int64)) == 0.0
    assert math.copysign(1.0, _in_order([-0.0], np.array([0, 0]))) == 1.0


def test_a_total_past_the_largest_float_is_inf_without_a_warning():
    """1e308 + 1e308 is past float64's 1.8e308: Python's addition gives inf silently, and so does the sum."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _in_order([1e308], np.array([0, 0])) == math.inf


def test_a_deadlock_reports_how_many_instructions_never_ran():
    """Rank 0 runs F(0, 0) and then waits for gradients of micro-batch 0 that nobody sends; rank 1 waits for
    activations of micro-batch 1 that nobody sends: one of three instructions ran, on both paths."""
    programs = ((Instruction("F", 0, 0), Instruction("BW", 0, 0)), (Instruction("F", 1, 1),))
    schedule = Schedule("broken", 2, 1, 2, programs, lambda m, s: s)
    for run_ahead in (True, False):
        with pytest.raises(RuntimeError, match="2 of 3 instructions never ran"):
            run_pipeline(schedule, _UniformCoster(1), record=False, run_ahead=run_ahead)
