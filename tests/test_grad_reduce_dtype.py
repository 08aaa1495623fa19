"""Gradient reduction in FP32 or BF16 (Megatron-Core's grad_reduce_in_fp32, FSDP's reduce_dtype): the data-parallel
collectives carry 4 or 2 bytes per gradient, the exposed tail follows, the gradient buffer too; FP32 is today's
default (DeepSeek-V3's recipe accumulates gradients in FP32)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.memory import memory_breakdown
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.parallel import ParallelSpec

GPT = ModelSpec(name="gpt-small", hidden=2048, n_layers=8, vocab=32000, dense_intermediate=8192,
                attention=AttentionSpec("gqa", 16, n_kv_heads=16, head_dim=128), ffn_activation="gelu",
                tie_embeddings=True)
WIRE = 1e9  # bytes per second of the stand-in network below


def _scenario(dtype=None, zero_stage=1, pp=1):
    s = load_scenario(model=GPT, gpu="a100", gpus=16, pp=pp, tp=1, schedule="1f1b", batch=64, tokens=64 * 2048,
                      seq_len=2048, network="alpha-beta", calibration="default-h800")
    return replace(s, parallel=replace(s.parallel, zero_stage=zero_stage, grad_reduce_dtype=dtype))


def _recorded_tail(dtype):
    """The single rank's tail with every collective timed as bytes / WIRE, and the collectives it asked for."""
    sim = _scenario(dtype).simulator()
    calls = []

    def collective(kind, nbytes, group):
        calls.append((kind, nbytes, group))
        return nbytes / WIRE

    sim.coster.collective = collective
    return sim._dp_tail({0}), calls


def test_bf16_halves_the_reduce_scatter_and_leaves_the_gather():
    t32, c32 = _recorded_tail("fp32")
    t16, c16 = _recorded_tail("bf16")
    rs32, = [b for k, b, _ in c32 if k == "reduce_scatter"]
    rs16, = [b for k, b, _ in c16 if k == "reduce_scatter"]
    ag32, = [b for k, b, _ in c32 if k == "all_gather"]
    ag16, = [b for k, b, _ in c16 if k == "all_gather"]
    assert rs32 / rs16 == 2.0
    assert ag32 == ag16 and rs16 == ag16  # BF16 gradients are the size of the BF16 working weights
    # no overlap: the whole reduction is exposed, and it is the only part of the tail that changes
    assert t32 - t16 == pytest.approx(rs16 / WIRE, rel=1e-12)


def test_default_is_fp32():
    default, _ = _recorded_tail(None)
    fp32, _ = _recorded_tail("fp32")
    assert default == fp32
    assert ParallelSpec(num_gpus=8).grad_reduce_dtype is None  # None: the recipe's FP32


def test_all_reduce_bytes_double_under_zero_0():
    sim = _scenario("bf16", zero_stage=0).simulator()
    seen = []
    sim.coster.collective = lambda kind, nbytes, group: seen.append((kind, nbytes)) or 0.0
    sim._dp_tail({0})
    sim32 = _scenario("fp32", zero_stage=0).simulator()
    seen32 = []
    sim32.coster.collective = lambda kind, nbytes, group: seen32.append((kind, nbytes)) or 0.0
    sim32._dp_tail({0})
    assert [k for k, _ in seen] == [k for k, _ in seen32] == ["all_reduce"]
    assert seen32[0][1] == 2 * seen[0][1]


def test_step_grows_by_the_exposed_reduction():
    """One rank, no overlap: the step is the rank's instructions plus its tail, so the FP32 step is longer than
    the BF16 one by exactly the tail's difference."""
    s32, s16 = (_scenario(d).simulator().step(4) for d in ("fp32", "bf16"))
    assert s32.pipeline_time == s16.pipeline_time
    assert s32.step_time - s16.step_time == pytest.approx(s32.dp_tail_per_rank[0] - s16.dp_tail_per_rank[0],
                                                          rel=1e-9)
    assert s32.step_time > s16.step_time


def test_zero3_reduce_scatters_carry_half_the_bytes():
    def rs_bytes(dtype):
        sim = _scenario(dtype, zero_stage=3).simulator()
        return [op.comm_bytes for unit in sim.coster.stages[0] for seg in unit.weight for op in seg.ops
                if op.collective == "reduce_scatter"]

    b32, b16 = rs_bytes("fp32"), rs_bytes("bf16")
    assert b32 and len(b32) == len(b16)
    assert all(x == 2 * y for x, y in zip(b32, b16))


def test_gradient_buffer_follows_the_dtype():
    s32, s16 = _scenario("fp32"), _scenario("bf16")
    step = s32.simulator().step(4)
    m32, m16 = memory_breakdown(s32, step), memory_breakdown(s16, step)
    assert m32.gradients == 2 * m16.gradients
    assert m32.weights == m16.weights and m32.master_weights == m16.master_weights


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="grad_reduce_dtype must be one of fp32, bf16"):
        ParallelSpec(num_gpus=8, grad_reduce_dtype="fp16")
    out = CliRunner().invoke(app, ["estimate", "--grad-reduce-dtype", "fp16"])
    assert out.exit_code == 2
    assert "grad_reduce_dtype" in out.output


def test_plan_and_phase_key(tmp_path):
    from importlib import resources

    text = resources.files("gpuhours.workloads").joinpath("plans", "deepseek-v3.toml").read_text()
    plan = tmp_path / "p.toml"
    plan.write_text(text.replace("zero_stage = 1 ", 'grad_reduce_dtype = "bf16"\nzero_stage = 1 '))
    assert load_scenario(plan).parallel.grad_reduce_dtype == "bf16"
    assert load_scenario("deepseek-v3", grad_reduce_dtype="bf16").parallel.grad_reduce_dtype == "bf16"
    from gpuhours.simulator.sweep import SWEEP_KEYS

    assert "grad_reduce_dtype" in SWEEP_KEYS
