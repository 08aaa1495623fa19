"""FSDP (ZeRO-3) under pipeline parallelism as PyTorch's pipelining runs it: one reduce-scatter per step after the
last backward, and with reshard_after_forward a parameter gather exactly where an instruction finds its stage
sharded (hand-derived counts for 1F1B and zero-bubble schedules)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.simulator.fsdp_pipeline import gathering_instructions
from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.scenario import load_scenario
from gpuhours.validation.cases import Case
from gpuhours.workloads.memory import memory_breakdown
from gpuhours.workloads.model import AttentionSpec, ModelSpec

GPT = ModelSpec(name="gpt-small", hidden=2048, n_layers=8, vocab=32000, dense_intermediate=8192,
                attention=AttentionSpec("gqa", 16, n_kv_heads=16, head_dim=128), ffn_activation="gelu",
                tie_embeddings=True)


def _labels(schedule, rank):
    gathers = gathering_instructions(schedule)
    return [i.label() for i in schedule.programs[rank] if (rank, i) in gathers]


def test_1f1b_gathers_m_plus_one_times_per_rank():
    """1F1B on rank r: pp-r-1 warm-up forwards, then forward/backward pairs, then cool-down backwards. Each
    warm-up forward and the first steady forward follow a forward (parameters resharded) and gather; every steady
    backward follows a forward and gathers; a forward after a backward and a cool-down backward after a backward
    find them gathered. m + 1 gathers instead of 2m."""
    pp, m = 4, 8
    s = build_schedule("1f1b", pp, m)
    assert _labels(s, 0) == ["F0.0", "F1.0", "F2.0", "F3.0", "BW0.0", "BW1.0", "BW2.0", "BW3.0", "BW4.0"]
    assert _labels(s, 3) == ["F0.3"] + [f"BW{i}.3" for i in range(m)]
    for r in range(pp):
        assert len(_labels(s, r)) == m + 1


def test_weight_passes_never_gather():
    s = build_schedule("zb1p", 2, 4)
    assert _labels(s, 0) == ["F0.0", "F1.0", "B0.0", "B1.0", "B2.0"]  # B3 follows B2's W: still gathered
    assert _labels(s, 1) == ["F0.1", "B0.1", "B1.1", "B2.1", "B3.1"]


def test_interleaved_stages_keep_their_own_state():
    s = build_schedule("interleaved-1f1b", 2, 4, vpp=2)
    gathers = gathering_instructions(s)
    for r, program in enumerate(s.programs):
        for stage in {i.stage for i in program}:
            own = [i for i in program if i.stage == stage]
            # each stage: one forward run then alternate -- count by replaying its own sequence by hand
            expected, sharded = 0, True
            for i in own:
                if i.kind.startswith("F"):
                    expected += sharded
                    sharded = True
                else:
                    expected += sharded
                    sharded = False
            assert sum((r, i) in gathers for i in own) == expected


def _scenario(reshard: bool, zero_stage: int = 3):
    s = load_scenario(model=GPT, gpu="a100", gpus=16, pp=2, tp=1, schedule="1f1b", batch=64, tokens=64 * 2048,
                      seq_len=2048, network="alpha-beta", calibration="default-h800", stage_layers=(4, 4))
    return replace(s, parallel=replace(s.parallel, zero_stage=zero_stage, reshard_after_forward=reshard))


def test_no_reduce_scatter_inside_instructions_under_pp():
    sim = _scenario(True).simulator()
    kinds = {op.collective for stage in sim.coster.stages for unit in stage
             for seg in unit.forward + unit.backward + unit.weight for op in seg.ops if op.group in ("dp", "edp")}
    assert kinds == {"all_gather"}  # gathers stay in the passes; the reduce-scatter moved to the tail


def test_tail_is_one_whole_reduce_scatter_and_the_update():
    """The rank's tail: the stage's whole reduce-scatter (nothing hides it: FSDP's post-backward runs after the
    last backward) plus the optimizer update; the same tail as without reshard_after_forward minus its gather."""
    sim = _scenario(True).simulator()
    calls = []
    sim.coster.collective = lambda kind, nbytes, group: calls.append((kind, nbytes, group)) or nbytes / 1e9
    tail = sim._dp_tail({0})
    dense, _ = sim.rank_params({0})
    assert [(k, g) for k, _, g in calls] == [("reduce_scatter", "dp"), ("all_gather", "dp")]
    assert calls[0][1] == dense * 4.0  # FP32 gradients of every parameter the rank holds
    no_comm = sim._dp_tail.__func__  # the update alone: the same call with free collectives
    sim.coster.collective = lambda kind, nbytes, group: 0.0
    sim._dp_memo.clear()  # the collectives' prices are memoised per simulator; this one just changed them
    assert tail - no_comm(sim, {0}) == pytest.approx(dense * 4.0 / 1e9, rel=1e-12)


def test_step_prices_each_instruction_with_or_without_its_gather():
    """Conservation: a rank's executing time is the sum of its instructions' durations, each taken with its
    gathers where it gathers and without them elsewhere."""
    from gpuhours.simulator.fsdp_pipeline import plain_coster

    sim = _scenario(True).simulator()
    m = 8
    step = sim.step(m)
    schedule = build_schedule("1f1b", 2, m)
    gathers = gathering_instructions(schedule)
    plain = plain_coster(sim.coster)
    for r, program in enumerate(schedule.programs):
        expected = sum((sim.coster if (r, i) in gathers else plain).profile(r, i).duration for i in program)
        executing = step.pipeline.makespan - step.pipeline.bubble_per_rank[r]
        assert executing == pytest.approx(expected, rel=1e-12)
    # fewer gathers than gathering in every forward and backward
    every = sum(sim.coster.profile(0, i).duration for i in schedule.programs[0])
    assert step.pipeline.makespan - step.pipeline.bubble_per_rank[0] < every


def test_memory_holds_unsharded_gradients_and_weights_like_zero_1():
    s3, s1 = _scenario(True), _scenario(True, zero_stage=1)
    step = s1.simulator().step(8)
    m3, m1 = memory_breakdown(s3, step), memory_breakdown(s1, step)
    assert m3.weights == m1.weights and m3.gradients == m1.gradients
    assert m3.master_weights == m1.master_weights  # optimizer state sharded from ZeRO-1 on


def test_the_accuracy_gap_is_gone():
    case = Case.__new__(Case)
    object.__setattr__(case, "layout", {"fsdp": True, "pp": 8, "reshard_after_forward": True})
    assert not any("FSDP" in g for g in case.gaps())
