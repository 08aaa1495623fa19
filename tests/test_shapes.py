"""Pricing by shape and stepping by structure (the speed work of the layout-search issue) change no figure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.simulator.chunks import price_key
from gpuhours.simulator.affine_steps import full_pipeline, interpolate_step, steps_for
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.ops import Op


def test_price_key_ignores_the_layer_but_not_the_class():
    norm = Op("L3.mlp.ffn_norm", "elementwise", "F", "mlp", 0.0, 1e6)
    assert price_key(norm) == price_key(replace(norm, name="L57.mlp.ffn_norm"))
    assert price_key(norm) != price_key(replace(norm, name="L3.mlp.experts.swiglu"))  # another bandwidth class
    assert price_key(norm) != price_key(replace(norm, bytes=2e6))


# 1F1B on the same cluster: the balancer's split, given so that no candidate split is simulated into the caches
# these tests read
ONE_F_ONE_B_SPLIT = (17, 16, 16, 12)


@pytest.fixture(scope="module")
def small():
    """DeepSeek-V3's layout shrunk: PP4 DualPipe on 32 GPUs, EP8, with the balancing proxy's split (16, 16, 17,
    12) given: the split search's choice, (16, 16, 16, 13), reaches its steady period only after 10 micro-batches,
    so its steps from 8 are not one line (each count is simulated, as `steps_for` must)."""
    return load_scenario(gpus=32, pp=4, ep=8, seq_len=1024, stage_layers=(16, 16, 17, 12))


def test_interpolated_steps_equal_simulated_ones(small):
    """Every count of a full pipeline: the interpolated step is the simulated one (a fresh simulator) to 1e-9."""
    counts = [8, 10, 12, 14, 16, 20]
    assert min(counts) >= full_pipeline(small.parallel)
    fast = steps_for(small.simulator(), counts)
    slow = small.simulator()
    for m in counts:
        simulated = slow.step(m)
        assert fast[m].step_time == pytest.approx(simulated.step_time, rel=1e-9)
        assert fast[m].bubble_per_rank == pytest.approx(simulated.bubble_per_rank, rel=1e-9, abs=1e-9)
        assert fast[m].tokens == simulated.tokens and fast[m].model_flops == pytest.approx(simulated.model_flops)
        assert fast[m].pipeline.nic_busy_per_rank == pytest.approx(simulated.pipeline.nic_busy_per_rank, rel=1e-9)
    assert fast[10].pipeline.spans == ()  # interpolated: no timeline of its own


def test_only_the_ends_and_the_check_are_simulated(small):
    sim = small.simulator()
    steps_for(sim, [8, 10, 12, 14, 16, 20])
    assert sorted(m for m, _ in sim._cache) == [8, 14, 20]


def test_counts_below_a_full_pipeline_are_simulated():
    scenario = load_scenario(gpus=32, pp=4, ep=8, seq_len=1024, schedule="1f1b", stage_layers=ONE_F_ONE_B_SPLIT)
    sim = scenario.simulator()
    # the steady phase of this split repeats every 3 micro-batches (its step grows by 0.149236, 0.149256, 0.149256 s
    # under trace-h800), so counts 3 apart lie on one line
    steps = steps_for(sim, [1, 2, 3, 8, 11, 14, 17, 20])
    assert sorted(m for m, _ in sim._cache) == [1, 2, 3, 8, 14, 20]  # 1-3 below pp = 4; 8, 20 ends, 14 the check
    assert steps[1].step_time == sim.step(1).step_time


def test_the_check_catches_a_pipeline_still_filling():
    """1F1B on PP4 with a heavier last stage: the step's growth per micro-batch settles only from 5 on (and then
    repeats every 3 micro-batches), so the line through 4 and 8 misses 6 and every count is simulated."""
    sim = load_scenario(gpus=32, pp=4, ep=8, seq_len=1024, schedule="1f1b", stage_layers=ONE_F_ONE_B_SPLIT).simulator()
    steps_for(sim, [4, 5, 6, 7, 8])
    assert sorted(m for m, _ in sim._cache) == [4, 5, 6, 7, 8]


def test_a_line_that_does_not_fit_falls_back_to_simulating(small):
    sim = small.simulator()
    a, b = sim.step(8), sim.step(16)
    bent = replace(b, step_time=b.step_time * 1.01)  # a step that is not on the line
    assert interpolate_step(a, bent, 12).step_time != pytest.approx(sim.step(12).step_time, rel=1e-9)
    sim._cache[(16, False)] = bent
    steps_for(sim, [8, 10, 12, 14, 16])
    assert {m for m, _ in sim._cache} == {8, 10, 12, 14, 16}


def test_a_steady_phase_that_settles_late_is_why_the_line_is_not_extrapolated():
    """1F1B on PP8 (the zero-bubble 6.2B case): the step grows by one amount per micro-batch from 9 to 14, by a
    smaller one from 14 to 15 (the steady phase settles), and by the first again after, so a line through small
    counts would miss 64 micro-batches by that step; `steps_for` simulates a single count itself."""
    from gpuhours.validation.accuracy import _scenario
    from gpuhours.validation.cases import load_cases

    case = next(c for c in load_cases() if c.name == "zerobubble-6.2b-1f1b-m64")
    scenario = _scenario(case, (case.calibrations or ("default-h800",))[0])
    # the balancing proxy's split (the split search's 4 x7, 2 settles at once)
    scenario = replace(scenario, parallel=replace(scenario.parallel, stage_layers=(3, 4, 4, 4, 4, 4, 4, 3)))
    sim = scenario.simulator()
    s = {m: sim.step(m).step_time for m in (9, 10, 14, 15, 16)}
    early = s[10] - s[9]
    assert (s[14] - s[10]) / 4 == pytest.approx(early, rel=1e-9)   # one period from 9 to 14 ...
    assert abs((s[15] - s[14]) / early - 1) > 1e-3                   # ... a step off the line at 15 ...
    assert s[16] - s[15] == pytest.approx(early, rel=1e-9)          # ... and the same period after
    fresh = scenario.simulator()
    steps_for(fresh, [64])
    assert [m for m, _ in fresh._cache] == [64]


def test_a_smallest_count_off_the_line_is_simulated_alone():
    """DeepSeek-V3's default split under DualPipe: 32 micro-batches (2 pp) lie off the line that holds from 34 on,
    so 32 is simulated on its own and the other counts come from the line through 42, 78 and 120 (four steps
    simulated, not eight); the interpolated steps equal simulated ones."""
    scenario = load_scenario(stage_layers=(4,) * 15 + (1,))
    counts = [32, 42, 54, 66, 78, 90, 102, 120]
    sim = scenario.simulator()
    steps = steps_for(sim, counts)
    assert sorted(m for m, _ in sim._cache) == [32, 42, 78, 120]
    fresh = scenario.simulator()
    for m in (54, 102):
        assert steps[m].step_time == pytest.approx(fresh.step(m).step_time, rel=1e-9)
