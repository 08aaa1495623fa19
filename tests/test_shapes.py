"""Pricing by shape and stepping by structure (the speed work of the layout-search issue) change no figure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.simulator.chunks import price_key
from gpuhours.simulator.affine_steps import full_pipeline, interpolate_step, line_counts, steps_for
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.ops import Op


def test_price_key_ignores_the_layer_but_not_the_class():
    norm = Op("L3.mlp.ffn_norm", "elementwise", "F", "mlp", 0.0, 1e6)
    assert price_key(norm) == price_key(replace(norm, name="L57.mlp.ffn_norm"))
    assert price_key(norm) != price_key(replace(norm, name="L3.mlp.experts.swiglu"))  # another bandwidth class
    assert price_key(norm) != price_key(replace(norm, bytes=2e6))


@pytest.fixture(scope="module")
def small():
    """DeepSeek-V3's layout shrunk: PP4 DualPipe on 32 GPUs, EP8."""
    return load_scenario(gpus=32, pp=4, ep=8, seq_len=1024)


def test_steps_from_the_line_equal_simulated_ones(small):
    """Every count of a full pipeline: the step taken from the line is the simulated one (a fresh simulator) to
    1e-9, including counts far past the three simulated ones (extrapolated)."""
    counts = [8, 10, 12, 14, 16, 20, 40]
    assert min(counts) >= full_pipeline(small.parallel)
    fast = steps_for(small.simulator(), counts)
    slow = small.simulator()
    for m in counts:
        simulated = slow.step(m)
        assert fast[m].step_time == pytest.approx(simulated.step_time, rel=1e-9)
        assert fast[m].bubble_per_rank == pytest.approx(simulated.bubble_per_rank, rel=1e-9, abs=1e-9)
        assert fast[m].tokens == simulated.tokens and fast[m].model_flops == pytest.approx(simulated.model_flops)
    assert fast[40].pipeline.spans == ()  # from the line: no timeline of its own


def test_three_small_counts_are_simulated_whatever_the_largest(small):
    """DualPipe on PP4: a full pipeline is 8 micro-batches, the increment 2; the line goes through 10 and 16 and
    12 checks it. 8 lies before the line and is simulated; 14, 20 and 200 come from the line."""
    assert line_counts(small.parallel) == (10, 12, 16)
    sim = small.simulator()
    steps_for(sim, [8, 10, 12, 14, 16, 20, 200])
    assert sorted(m for m, _ in sim._cache) == [8, 10, 12, 16]


def test_counts_below_a_full_pipeline_are_simulated():
    scenario = load_scenario(gpus=32, pp=4, ep=8, seq_len=1024, schedule="1f1b")
    sim = scenario.simulator()
    steps = steps_for(sim, [1, 2, 3, 8, 10, 12, 14, 16])
    # 1F1B on PP4: the line through 5 and 8, checked at 6; 1-3 lie below a full pipeline
    assert sorted(m for m, _ in sim._cache) == [1, 2, 3, 5, 6, 8]
    assert steps[1].step_time == sim.step(1).step_time


def test_the_line_starts_past_a_pipeline_still_filling():
    """1F1B on PP4 with a heavier last stage: the step grows by a constant per micro-batch only from 5 on, so the
    line through 4 and 8 would miss 6; the line starts one increment past a full pipeline, at 5."""
    scenario = load_scenario(gpus=32, pp=4, ep=8, seq_len=1024, schedule="1f1b")
    sim = scenario.simulator()
    s4, s6, s8 = sim.step(4), sim.step(6), sim.step(8)
    assert interpolate_step(s4, s8, 6).step_time != pytest.approx(s6.step_time, rel=1e-9)
    fast = steps_for(scenario.simulator(), [5, 6, 7, 8, 30])
    assert fast[30].step_time == pytest.approx(sim.step(30).step_time, rel=1e-9)


def test_a_line_that_does_not_fit_falls_back_to_simulating(small):
    sim = small.simulator()
    a, c = sim.step(10), sim.step(16)
    bent = replace(c, step_time=c.step_time * 1.01)  # a step that is not on the line
    assert interpolate_step(a, bent, 12).step_time != pytest.approx(sim.step(12).step_time, rel=1e-9)
    sim._cache[(16, False)] = bent
    steps_for(sim, [8, 14, 18, 20, 40])
    assert {m for m, _ in sim._cache} == {8, 10, 12, 14, 16, 18, 20, 40}


def test_the_line_is_not_used_where_it_costs_more_than_the_counts(small):
    sim = small.simulator()
    steps_for(sim, [8, 14])  # 14 micro-batches to simulate against 10 + 12 + 16 for the line
    assert sorted(m for m, _ in sim._cache) == [8, 14]
