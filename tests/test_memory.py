"""Per-GPU memory: hand-computed small layout, DualPipe's two stages and PP+1 chunks, DeepSeek-V3 on an H800."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.schedules import build_schedule
from gpuhours.workloads.memory import MemoryRecipe, load_recipe, memory_breakdown, peak_in_flight
from gpuhours.workloads.model import AttentionSpec, ModelSpec

GIB = 2**30
TINY = ModelSpec("tiny", hidden=64, n_layers=4, vocab=256, dense_intermediate=128,
                 attention=AttentionSpec("gqa", n_heads=4, n_kv_heads=2, head_dim=16))


def tiny_scenario(schedule: str = "1f1b", pp: int = 2, zero_stage: int = 1, model: ModelSpec = TINY):
    base = load_scenario(model="llama-3-70b", gpus=8, pp=pp, tp=1, schedule=schedule, seq_len=32, batch=64,
                         tokens=1e6)
    return replace(base, model=model, parallel=replace(base.parallel, zero_stage=zero_stage))


def test_small_layout_equals_hand_computation():
    scenario = tiny_scenario()
    step = SimpleNamespace(num_microbatches=4, stage_layers=(2, 2))
    recipe = MemoryRecipe(reserved_bytes=1000.0, fragmentation=0.1)
    mb = memory_breakdown(scenario, step, recipe)
    # Parameters per rank: layer = wq+wo 2*64*64 + wk+wv 2*64*2*16 + FFN 3*64*128 + 2 norms 2*64 = 36,992;
    # rank 0 holds the embedding (256*64), rank 1 the head (256*64): both 2*36,992 + 16,384 = 90,368.
    params = 2 * 36_992 + 16_384
    assert mb.dense_params + mb.expert_params == params
    # Activations per token of a layer: x_in 2*64 + q/k/v 2*(4+2*2)*16 + out 1.5*4*16 + lse 4*4 + h_mid 2*64
    # + SwiGLU input (1 + 4/128)*2*128 = 888. 1F1B pp=2: rank 0 holds 2 chunks of 2 layers of 32 tokens,
    # rank 1 one chunk with the head (2*64 + 2*64 + 2*256 + 4 per token): rank 0 is the busiest.
    activations = 2 * 32 * 2 * 888
    assert mb.rank == 0 and mb.in_flight_chunks == 2
    assert mb.activations == pytest.approx(activations)
    # ZeRO-1 over dp = 4: BF16 weights, FP32 grads, FP32 master and two BF16 moments on a quarter.
    state = 2 * params + 4 * params + (4 + 4) * params / 4
    assert mb.state == pytest.approx(state)
    assert mb.headroom == pytest.approx(1000 + 0.1 * (state + activations))
    assert mb.total == pytest.approx(1000 + 1.1 * (state + activations))
    assert mb.fits and mb.to_dict()["fits"] is True


def test_zero0_keeps_full_optimizer_state():
    step = SimpleNamespace(num_microbatches=4, stage_layers=(2, 2))
    z1 = memory_breakdown(tiny_scenario(zero_stage=1), step)
    z0 = memory_breakdown(tiny_scenario(zero_stage=0), step)
    params = z1.dense_params + z1.expert_params
    assert z0.master_weights + z0.optimizer_moments == pytest.approx(8 * params)
    assert z1.master_weights + z1.optimizer_moments == pytest.approx(8 * params / 4)


def test_dualpipe_holds_two_stages_and_pp_plus_one_chunks():
    model = replace(TINY, n_layers=8)
    step = SimpleNamespace(num_microbatches=8, stage_layers=(2, 2, 2, 2))
    dual = memory_breakdown(tiny_scenario("dualpipe", pp=4, model=model), step)
    one = memory_breakdown(tiny_scenario("1f1b", pp=4, model=model), step)
    assert dual.weight_copies == 2 and one.weight_copies == 1
    assert len(dual.stages) == 2 and len(one.stages) == 1
    assert max(dual.total_per_rank) == dual.total
    _, chunks = peak_in_flight(build_schedule("dualpipe", 4, 8), (1.0, 1.0, 1.0, 1.0))
    assert chunks[0] == 4 + 1  # DualPipe README: PP + 1 chunks in flight on the first rank
    assert one.rank == 0 and one.in_flight_chunks == 4  # 1F1B: PP on the first rank


def test_dualpipe_middle_rank_params_are_two_stages():
    from gpuhours.simulator.step import StepSimulator
    from gpuhours.workloads.params import layer_params
    model = replace(TINY, n_layers=8)
    for schedule, expected in (("dualpipe", 4), ("1f1b", 2)):
        scenario = tiny_scenario(schedule, pp=4, model=model)
        holder = SimpleNamespace(model=model, parallel=scenario.parallel, stage_layers=(2, 2, 2, 2))
        stages = {1, 2} if schedule == "dualpipe" else {1}
        dense, expert = StepSimulator.rank_params(holder, stages)
        assert dense == expected * layer_params(model, 1) and expert == 0


@pytest.mark.parametrize("name,pp,m,vpp", [("1f1b", 4, 8, 1), ("zb1p", 4, 8, 1), ("dualpipe", 4, 8, 1),
                                           ("dualpipev", 2, 4, 1), ("interleaved-1f1b", 2, 4, 2)])
def test_program_walk_counts_like_the_engine(name, pp, m, vpp):
    """The byte walk's chunk count equals the simulated peak the engine reports for every schedule."""
    layers = 8
    model = replace(TINY, n_layers=layers)
    scenario = tiny_scenario(name, pp=pp, model=model)
    scenario = replace(scenario, parallel=replace(scenario.parallel, vpp=vpp, schedule=name))
    step = scenario.simulator().step(m)
    sched = build_schedule(name, pp, m, vpp=vpp)
    _, chunks = peak_in_flight(sched, tuple(1.0 for _ in step.stage_layers))
    assert chunks == step.peak_activations_per_rank


@pytest.fixture(scope="module")
def deepseek():
    scenario = load_scenario()
    return scenario, scenario.simulator().step(120)


def test_deepseek_v3_fits_an_h800(deepseek):
    scenario, step = deepseek
    mb = memory_breakdown(scenario, step)
    assert mb.capacity == 80 * GIB
    assert mb.weight_copies == 2 and len(mb.stages) == 2
    assert mb.in_flight_chunks == scenario.parallel.pp + 1 == step.peak_activations_per_rank[mb.rank]
    assert mb.fits, mb.reason()
    # Expert parameters: 256 experts / EP 64 = 4 per layer of 44.04M; the rank holds at least 6 MoE layers.
    assert mb.expert_params >= 6 * 4 * 44_040_192


def test_deepseek_v3_does_not_fit_without_the_recipe(deepseek):
    """BF16 activation caching and no recomputation: the recipe's savings are what make it fit."""
    scenario, step = deepseek
    bf16 = replace(scenario, opts=replace(scenario.opts, fp8=False, recompute="none"))
    plain = memory_breakdown(bf16, step, replace(load_recipe(), attn_out_bytes=2.0))
    assert not plain.fits and "out of memory" in plain.reason()


def test_bad_recipe_name():
    with pytest.raises(ValueError, match="memory recipe"):
        load_recipe("nope")


def test_optimizer_traffic_follows_the_recipe():
    """DeepSeek-V3's recipe: read FP32 master + FP32 grad + two BF16 moments, write master + moments, write the BF16
    working copy: 4 + 4 + 2 + 2 + 4 + 2 + 2 + 2 = 22 bytes per parameter."""
    from gpuhours.workloads.recipe import load_recipe

    assert load_recipe("deepseek-v3").optimizer_bytes_per_param() == 22
