"""A run that changes its micro-batch size along the way: segments cut at the switches, the micro-batch count
that follows from the fixed global batch, conservation of the run's GPU-hours, memory at each size, and the plan
and command-line grammar."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources

import pytest

from gpuhours.simulator.micro_batch_ramp import run_memory, scenario_at_micro_batch_size
from gpuhours.simulator.run import run_pieces
from gpuhours.simulator.scenario import estimate, load_scenario
from gpuhours.workloads.memory import memory_breakdown
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.run import BatchRamp, RunPlan, parse_micro_batch_switches

GPT = ModelSpec(name="gpt-small", hidden=2048, n_layers=8, vocab=32000, dense_intermediate=8192,
                attention=AttentionSpec("gqa", 16, n_kv_heads=16, head_dim=128), ffn_activation="gelu",
                tie_embeddings=True)
SEQ, BATCH = 2048, 64          # 64 sequences per step on dp = 8 replicas
HALF = 100 * BATCH * SEQ       # 100 steps' worth of tokens in each half


def _scenario(tokens: float, switches=()):
    s = load_scenario(model=GPT, gpu="a100", gpus=16, pp=2, tp=1, schedule="1f1b", batch=BATCH, tokens=tokens,
                      seq_len=SEQ, network="alpha-beta", calibration="default-h800", stage_layers=(4, 4),
                      ramp_micro_batch_size=switches)
    return s


def test_pieces_are_cut_at_the_switch_and_conserve_tokens():
    plan = RunPlan(tokens=1000.0 * SEQ, seq_len=SEQ, batch=BatchRamp(8, 8, 0.0),
                   micro_batch_switches=((400.0 * SEQ, 2),))
    assert run_pieces(plan, 1) == [(400.0 * SEQ, 8, 1), (600.0 * SEQ, 8, 2)]
    # a ramp piece that straddles a switch is cut in two at the same batch
    ramp = RunPlan(tokens=1000.0 * SEQ, seq_len=SEQ, batch=BatchRamp(8, 16, 500.0 * SEQ), ramp_segments=2,
                   micro_batch_switches=((100.0 * SEQ, 2), (700.0 * SEQ, 4)))
    pieces = run_pieces(ramp, 1)
    assert [(t / SEQ, k) for t, _, k in pieces] == [(100.0, 1), (150.0, 2), (250.0, 2), (200.0, 2), (300.0, 4)]
    assert [b for _, b, _ in pieces] == [10, 10, 14, 16, 16]  # each ramp piece at its mean batch
    assert sum(t for t, _, _ in pieces) == ramp.tokens


def test_doubling_the_micro_batch_halves_the_micro_batch_count():
    run = estimate(_scenario(2 * HALF, ((HALF, 2),)))
    first, second = run.segments
    assert (first.micro_batch_size, second.micro_batch_size) == (1, 2)
    assert first.num_microbatches == BATCH // 8          # 64 sequences / (dp 8 x 1)
    assert second.num_microbatches == first.num_microbatches // 2
    assert first.batch_simulated == second.batch_simulated == BATCH
    assert first.steps == second.steps == 100.0           # the same batch: the same steps per token


def test_run_gpu_hours_are_the_sum_of_its_segments_run_alone():
    """Conservation: the switched run costs what its two halves cost when each is estimated as a run of its own
    (the first at micro-batch 1, the second with micro-batch 2 from its first token)."""
    switched = estimate(_scenario(2 * HALF, ((HALF, 2),)))
    alone_1 = estimate(_scenario(HALF))
    alone_2 = estimate(_scenario(HALF, ((0, 2),)))
    assert alone_2.segments[0].micro_batch_size == 2
    assert switched.gpu_hours == pytest.approx(alone_1.gpu_hours + alone_2.gpu_hours, rel=1e-12)
    assert switched.tokens == 2 * HALF
    # the larger micro-batch is a different step: fewer, longer micro-batches
    assert alone_2.segments[0].step.step_time != alone_1.segments[0].step.step_time


def test_memory_is_checked_at_every_size():
    scenario = _scenario(2 * HALF, ((HALF, 2),))
    run = estimate(scenario)
    verdict = run_memory(scenario, run)
    at_2 = memory_breakdown(scenario_at_micro_batch_size(scenario, 2), run.segments[1].step)
    at_1 = memory_breakdown(scenario, run.segments[0].step)
    assert at_2.activations == 2 * at_1.activations  # twice the sequences per in-flight chunk, same chunk count
    assert verdict.total == at_2.total                # the fuller size decides


def test_plan_toml_and_command_line_grammar(tmp_path):
    plan = tmp_path / "p.toml"
    text = resources.files("gpuhours.workloads").joinpath("plans", "deepseek-v3.toml").read_text()
    plan.write_text(text.replace('ramp_tokens = "469B"', 'ramp_tokens = "469B"\nramp_micro_batch_size = [["5T", 2]]'))
    assert load_scenario(plan).plan.micro_batch_switches == ((5e12, 2),)
    assert load_scenario("deepseek-v3").plan.micro_batch_switches == ()
    assert parse_micro_batch_switches("200B:2,1T:4") == ((200e9, 2), (1e12, 4))
    for bad in ("200B:0", "1T:2,200B:4", "200B", [[1, 2.5]]):
        with pytest.raises(ValueError, match="ramp_micro_batch_size"):
            parse_micro_batch_switches(bad)
    plan.write_text(text.replace('ramp_tokens = "469B"', 'ramp_tokens = "469B"\nramp_micro_batch_size = 2'))
    with pytest.raises(ValueError, match="ramp_micro_batch_size"):
        load_scenario(plan)


def test_one_size_runs_are_unchanged():
    """No switch: one simulator, every segment at the layout's size (the default estimate's path)."""
    s = _scenario(2 * HALF)
    run = estimate(s)
    assert {seg.micro_batch_size for seg in run.segments} == {1}
    assert run_memory(s, run).total == memory_breakdown(s, run.steady.step).total
    bigger = replace(s, parallel=replace(s.parallel, micro_batch_size=2))
    assert {seg.micro_batch_size for seg in estimate(bigger).segments} == {2}
