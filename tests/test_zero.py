"""ZeRO-2, ZeRO-3 and FSDP: the layout option, the per-layer data-parallel traffic of ZeRO-3 counted from the ops,
its prefetching in the instruction graphs, and the sharded memory against the ZeRO paper's accounting."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.memory import MemoryRecipe, memory_breakdown
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.stage_ops import stage_units
from gpuhours.workloads.parallel import ParallelSpec

TINY = ModelSpec("tiny", hidden=64, n_layers=4, vocab=256, dense_intermediate=128,
                 attention=AttentionSpec("gqa", n_heads=4, n_kv_heads=2, head_dim=16))
# By hand (see tests/test_memory.py): a layer holds wq+wo 2*64*64 + wk+wv 2*64*2*16 + FFN 3*64*128 + 2 norms 2*64
# = 36,992 parameters; embedding and head 256*64 = 16,384 each.
LAYER = 36_992
EMBED = HEAD = 16_384
PSI = 4 * LAYER + EMBED + HEAD  # 180,736: the whole model on one pipeline stage

MID = ModelSpec("mid", hidden=4096, n_layers=8, vocab=32000, dense_intermediate=14336,
                attention=AttentionSpec("gqa", n_heads=32, n_kv_heads=8, head_dim=128))


def _scenario(model: ModelSpec, zero_stage: int, reshard: bool = True, seq_len: int = 32, gpus: int = 8):
    base = load_scenario(model="llama-3-70b", gpu="h100", gpus=gpus, pp=1, tp=1, schedule="1f1b", seq_len=seq_len,
                         batch=4 * gpus, tokens=1e6, fp8=False)
    parallel = replace(base.parallel, zero_stage=zero_stage, reshard_after_forward=reshard)
    return replace(base, model=model, parallel=parallel, opts=replace(base.opts, recompute="none"))


# -- the option ------------------------------------------------------------------------------------------------
def test_zero_stage_takes_0_to_3():
    for stage in (0, 1, 2, 3):
        assert ParallelSpec(num_gpus=8, zero_stage=stage).zero_stage == stage
    for bad in (4, -1, "3", True):
        with pytest.raises(ValueError, match=r"zero_stage must be 0, 1, 2 or 3"):
            ParallelSpec(num_gpus=8, zero_stage=bad)
    with pytest.raises(ValueError, match="reshard_after_forward"):
        ParallelSpec(num_gpus=8, reshard_after_forward="yes")


def test_cli_rejects_a_bad_stage_in_one_line():
    result = CliRunner().invoke(app, ["estimate", "--zero-stage", "5"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "zero_stage" in lines[0] and "0, 1, 2 or 3" in lines[0]


# -- traffic counted from the ops ------------------------------------------------------------------------------
@pytest.mark.parametrize("reshard", [True, False])
def test_zero3_traffic_per_micro_batch(reshard):
    s = _scenario(TINY, 3, reshard)
    recipe = MemoryRecipe()  # BF16 weights (2 bytes), FP32 gradients (4 bytes)
    units = stage_units(TINY, s.parallel, 32, range(4), True, True, OpOptions(fp8=False), recipe)
    gathered = {"F": 0.0, "B": 0.0}
    scattered = 0.0
    for unit in units:
        dp_segments = [seg for seg in unit.forward + unit.backward + unit.weight
                       if any(op.group == "dp" for op in seg.ops)]
        if unit.name.startswith("L"):  # a transformer layer: 2 collectives, 3 when regathered for the backward
            assert len(dp_segments) == (3 if reshard else 2)
        for seg in dp_segments:
            for op in seg.ops:
                assert op.kind == "collective" and op.group == "dp"
                if op.collective == "all_gather":
                    gathered[op.phase] += op.comm_bytes
                else:
                    assert op.collective == "reduce_scatter" and op.phase == "W"
                    scattered += op.comm_bytes
    # every unit's parameters gathered for the forward (BF16) and, with resharding, again for the backward; the
    # embedding has no backward pass of its own (its weight gradient is a scatter-add), so it is not regathered
    assert gathered["F"] == pytest.approx(2 * PSI)
    assert gathered["B"] == pytest.approx(2 * (PSI - EMBED) if reshard else 0.0)
    assert scattered == pytest.approx(4 * PSI)
    # below ZeRO-3 the instructions carry no data-parallel traffic
    for stage in (0, 1, 2):
        plain = stage_units(TINY, _scenario(TINY, stage).parallel, 32, range(4), True, True, OpOptions(fp8=False))
        assert not any(op.group == "dp" for u in plain for seg in u.forward + u.backward + u.weight
                       for op in seg.ops)


def test_zero3_tail_keeps_only_the_optimizer():
    z1 = _scenario(MID, 1, seq_len=512).simulator()
    z3 = _scenario(MID, 3, seq_len=512).simulator()
    stages = {0}
    dense, _ = z1.rank_params(stages)
    from gpuhours.workloads.ops import Op
    update = z1.compute.duration(Op("optimizer.adamw", "elementwise", "W", "optimizer", 0.0,
                                    dense / 8 * z1.recipe.optimizer_bytes_per_param()))
    assert z3._dp_tail(stages) == pytest.approx(update)
    assert z1._dp_tail(stages) > update


# -- time: prefetched gathers hide under long compute, not under short compute --------------------------------
def _dp_comm_per_microbatch(sim) -> float:
    coster = sim.coster
    return sum(coster._segment_time(seg) for unit in coster.stages[0]
               for seg in unit.forward + unit.backward + unit.weight if seg.name.startswith("dp."))


def test_gathers_hide_under_long_compute():
    z1 = _scenario(MID, 1, seq_len=8192).simulator()
    z3 = _scenario(MID, 3, seq_len=8192).simulator()
    a, b = z1.step(4), z3.step(4)
    comm = 4 * _dp_comm_per_microbatch(z3)
    assert comm > 0.1 * b.pipeline_time  # the collectives are not negligible ...
    # ... but mostly hidden: under a quarter of their time is exposed, and while they run their 24 NCCL channels
    # take 24 of the H100's 132 SMs from the compute beside them (tests/test_nccl_sms.py)
    assert b.pipeline_time - a.pipeline_time < (0.25 + 24 / 132) * comm
    assert b.step_time == pytest.approx(a.step_time, rel=0.03)


def test_gathers_are_exposed_under_tiny_compute():
    z1 = _scenario(MID, 1, seq_len=64).simulator()
    z3 = _scenario(MID, 3, seq_len=64).simulator()
    a, b = z1.step(4), z3.step(4)
    comm = 4 * _dp_comm_per_microbatch(z3)
    # the pass is bound by the communication stream: it lasts about the collectives' time, and grows by most of it
    assert b.pipeline_time == pytest.approx(comm, rel=0.05)
    assert b.pipeline_time - a.pipeline_time > 0.8 * comm
    assert b.step_time > a.step_time


def test_a_forward_prefetches_the_next_layers_parameters():
    sim = _scenario(MID, 3, seq_len=8192).simulator()
    from gpuhours.simulator.instructions import Instruction

    prof = sim.coster.profile(0, Instruction("F", 0, 0))
    gathers = [s for s in prof.spans if s.name == "dp.all_gather(F)"]
    computes = {dict(s.args).get("layer"): s for s in prof.spans if s.name == "attn(F)"}
    # the gather of layer 1 runs while layer 0 computes, and each waits for the layer two before to finish
    by_layer = {dict(s.args).get("layer"): s for s in gathers}
    assert by_layer[1].start < computes[0].end
    assert by_layer[2].start >= computes[0].start
    # only the first gathers (the embedding's, whose compute is tiny, and the first layer's) are exposed
    first_two = sum(g.end - g.start for g in gathers[:2])
    assert prof.duration <= prof.compute_busy + first_two + 1e-12
    assert prof.duration < prof.compute_busy + 0.2 * sum(g.end - g.start for g in gathers)


# -- memory: Rajbhandari et al. 2020, sec. 5 ------------------------------------------------------------------
def _memory(stage: int, recipe: MemoryRecipe):
    step = SimpleNamespace(num_microbatches=4, stage_layers=(4,))
    return memory_breakdown(_scenario(TINY, stage), step, recipe)


def test_zero_memory_matches_the_paper():
    # Mixed-precision Adam as in the paper: 2 bytes of fp16 weights, 2 of fp16 gradients, K = 12 of optimizer
    # state (fp32 master 4 + two fp32 moments 4 + 4); N_d = dp = 8.
    recipe = MemoryRecipe(weight_bytes=2.0, grad_bytes=2.0, master_bytes=4.0, moment_bytes=4.0)
    n_d, k = 8, 12
    z0, z1, z2, z3 = (_memory(s, recipe) for s in range(4))
    assert z3.dense_params == PSI
    assert z0.state == pytest.approx((2 + 2 + k) * PSI)
    assert z1.state == pytest.approx(2 * PSI + 2 * PSI + k * PSI / n_d)             # P_os
    assert z2.state == pytest.approx(2 * PSI + (2 + k) * PSI / n_d)                 # P_os+g
    # P_os+g+p, plus the unsharded working set: two layers' parameters and their gradients
    working = 2 * LAYER
    assert z3.state == pytest.approx((2 + 2 + k) * PSI / n_d + (2 + 2) * working)
    assert z3.weights - 2 * working == pytest.approx(z1.weights / n_d)
    assert z3.gradients - 2 * working == pytest.approx(z1.gradients / n_d)
    assert z1.master_weights == z2.master_weights == z3.master_weights


def test_cli_zero_stage_reaches_memory_and_step():
    import json

    common = ["estimate", "--model", "llama-3-70b", "--gpu", "h100", "--gpus", "64", "--pp", "1", "--tp", "8",
              "--schedule", "1f1b", "--batch", "64", "--tokens", "1M", "--seq-len", "2048", "--json", "--allow-oom"]
    runner = CliRunner()
    out = {}
    for stage in ("1", "3"):
        result = runner.invoke(app, common + ["--zero-stage", stage])
        assert result.exit_code == 0, result.output
        out[stage] = json.loads(result.output)
    assert out["3"]["memory"]["weights"] < out["1"]["memory"]["weights"] / 4
    assert out["3"]["memory"]["gradients"] < out["1"]["memory"]["gradients"] / 4


# -- FSDP under pipeline parallelism without reshard_after_forward: once per step ---------------------------------
def _piped(zero_stage: int, reshard: bool, seq_len: int = 2048, pp: int = 2, gpus: int = 16):
    base = load_scenario(model="llama-3-70b", gpu="h100", gpus=gpus, pp=pp, tp=1, schedule="1f1b", seq_len=seq_len,
                         batch=8 * gpus // pp, tokens=1e6, fp8=False)
    parallel = replace(base.parallel, zero_stage=zero_stage, reshard_after_forward=reshard)
    return replace(base, model=MID, parallel=parallel, opts=replace(base.opts, recompute="none"))


def test_once_per_step_only_under_pipelines_without_reshard():
    assert ParallelSpec(num_gpus=16, pp=2, zero_stage=3, reshard_after_forward=False).fsdp_once_per_step
    assert not ParallelSpec(num_gpus=16, pp=2, zero_stage=3, reshard_after_forward=True).fsdp_once_per_step
    assert not ParallelSpec(num_gpus=16, pp=1, zero_stage=3, reshard_after_forward=False).fsdp_once_per_step
    assert not ParallelSpec(num_gpus=16, pp=2, zero_stage=2, reshard_after_forward=False).fsdp_once_per_step


def test_once_per_step_has_no_collectives_in_the_micro_batches():
    s = _piped(3, reshard=False)
    units = stage_units(s.model, s.parallel, 2048, range(4), True, False, s.opts)
    assert not any(seg.name.startswith("dp.") for u in units for seg in u.forward + u.backward + u.weight)
    per_mb = stage_units(s.model, replace(s.parallel, reshard_after_forward=True), 2048, range(4), True, False,
                         s.opts)
    assert any(seg.name.startswith("dp.") for u in per_mb for seg in u.forward + u.backward + u.weight)


def test_once_per_step_tail_is_one_reduce_scatter_and_a_streamed_gather():
    sim = _piped(3, reshard=False).simulator()
    p, net = sim.parallel, sim.network
    stages = {0}
    dense, _ = sim.rank_params(stages)
    group = sim.coster.comm_group("dp")
    reduce = net.reduce_scatter(dense * sim.recipe.grad_bytes, group)
    gather = net.all_gather(dense * sim.recipe.weight_bytes, group)
    from gpuhours.workloads.ops import Op
    update = sim.compute.duration(Op("optimizer.adamw", "elementwise", "W", "optimizer", 0.0,
                                     dense / p.grad_dp * sim.recipe.optimizer_bytes_per_param()))
    units = sim.stage_layers[0]
    # no forward to hide under: everything exposed; a long forward hides all but one unit's gather, and runs on
    # 132 - 24 of the H100's SMs while the other units' gathers fly (NCCL's 24 channels, tests/test_nccl_sms.py)
    assert sim._dp_tail(stages, 0.0, 0.0) == pytest.approx(reduce + gather + update)
    held = 24 / 132 * gather * (units - 1) / units
    assert sim._dp_tail(stages, 0.0, 1e6) == pytest.approx(reduce + gather / units + held + update)


def test_streamed_gather_closed_form():
    from gpuhours.simulator.dp_tail import exposed_streamed_gather
    # 4 pieces of 1 s under a 2 s forward (0.5 s a unit): the last piece lands at 4 s, its unit ends at 4.5 s,
    # 2.5 s after the forward alone would have ended
    assert exposed_streamed_gather(4.0, 4, 2.0) == pytest.approx(2.5)
    assert exposed_streamed_gather(4.0, 4, 100.0) == pytest.approx(1.0)   # only the first piece
    assert exposed_streamed_gather(4.0, 4, 0.0) == pytest.approx(4.0)


def test_once_per_step_is_faster_than_per_micro_batch_and_holds_zero1_memory():
    once, per_mb, z1 = _piped(3, False), _piped(3, True), _piped(1, False)
    a, b = once.simulator().step(8), per_mb.simulator().step(8)
    assert a.step_time < b.step_time
    ma, m1 = memory_breakdown(once, a), memory_breakdown(z1, z1.simulator().step(8))
    # unsharded weights and gradients, sharded optimizer state: ZeRO-1's accounting
    assert ma.weights == pytest.approx(m1.weights) and ma.gradients == pytest.approx(m1.gradients)
    assert ma.master_weights == pytest.approx(m1.master_weights)
