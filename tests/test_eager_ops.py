"""Element-wise work as unfused PyTorch eager kernels (`workloads.eager_ops`, `OpOptions.elementwise_kernels`):
per-op bytes and kernel counts derived by hand below for tiny shapes (each kernel reads its inputs once and writes
its output once; BF16 2 bytes, FP32 4), never recomputed with the code under test."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.launch import LaunchModel
from gpuhours.workloads import eager_ops as E
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset


def _total(kernels):
    return sum(b for _, b in kernels)


def test_rmsnorm_bytes_by_hand():
    # rows 2, width 4: N = 8 elements, R = 2 row statistics, w = 4 gains.
    # forward: float() 8x2 + 8x4 = 48; pow 8x4 + 8x4 = 64; mean 32 + 2x4 = 40; +eps 8 + 8 = 16; rsqrt 16;
    # x * r 32 + 8 + 32 = 72; type_as 32 + 16 = 48; * weight 16 + 8 + 16 = 40  -> 344 bytes, 8 kernels
    fwd = E.rmsnorm_kernels("F", 2, 4)
    assert len(fwd) == 8 and _total(fwd) == 344
    # backward: g*weight 16+8+16 = 40; g*y 16+16+16 = 48; sum over rows 16 + 8 = 24; g.float() 16 + 32 = 48;
    # g*r 32+8+32 = 72; g*x 32+32+32 = 96; sum(-1) 32 + 8 = 40; r.pow(3) 16; -0.5*g 16; product 8+8+8 = 24;
    # mean's grad 8 + 32 = 40; x.pow(1) 64; 2*x 64; g*(2x) 96; accumulate 96; to bf16 32 + 16 = 48
    # -> 832 bytes, 16 kernels
    bwd = E.rmsnorm_kernels("B", 2, 4)
    assert len(bwd) == 16 and _total(bwd) == 832


def test_rope_repeat_kv_and_swiglu_bytes_by_hand():
    # RoPE on 3 x 4 BF16: float() 24 + 48 = 72; complex mul 48 + 48 = 96; type_as 48 + 24 = 72 -> 240 each way
    assert _total(E.rope_kernels("F", 3, 4)) == 240 and len(E.rope_kernels("F", 3, 4)) == 3
    assert _total(E.rope_kernels("B", 3, 4)) == 240 and len(E.rope_kernels("B", 3, 4)) == 3
    # repeat_kv, 2 rows, kv width 2 -> q width 8: each of K, V reads 2x2x2 = 8 and writes 2x8x2 = 32 -> 40
    assert E.repeat_kv_kernels("F", 2, 2, 8) == (("repeat_k", 40), ("repeat_v", 40))
    assert _total(E.repeat_kv_kernels("B", 2, 2, 8)) == 80
    assert E.repeat_kv_kernels("F", 2, 8, 8) == ()  # n_rep 1: repeat_kv returns its input
    # SwiGLU on 2 x 3: silu 12 + 12 = 24, mul 24 + 12 = 36 -> 60; backward three kernels of 24 + 12 = 36 -> 108
    assert _total(E.swiglu_kernels("F", 2, 3)) == 60 and len(E.swiglu_kernels("F", 2, 3)) == 2
    assert _total(E.swiglu_kernels("B", 2, 3)) == 108 and len(E.swiglu_kernels("B", 2, 3)) == 3


H, I, SEQ = 64, 256, 32
TINY = ModelSpec("tiny-llama", hidden=H, n_layers=2, vocab=128, dense_intermediate=I,
                 attention=AttentionSpec("gqa", n_heads=4, n_kv_heads=2, head_dim=16))
P1 = ParallelSpec(num_gpus=1, micro_batch_size=1)


def _elementwise(segs, phase=None):
    ops = [op for s in segs for op in s.ops if op.kind == "elementwise" and (phase is None or op.phase == phase)]
    return len(ops), sum(op.bytes for op in ops)


def test_tiny_layer_eager_passes_by_hand():
    # T = 32 tokens, h = 64, q width 4 x 16 = 64, kv width 2 x 16 = 32, i = 256.
    # forward: two RMSNorms 2 x (36 x 2048 + 24 x 32 + 2 x 64) = 149,248; RoPE q 20 x 2048 = 40,960, k 20 x 1024 =
    # 20,480; repeat_kv 2 x 2 x 32 x (32 + 64) = 12,288; two residual adds 2 x 3 x 2048 x 2 = 24,576;
    # SwiGLU 10 x 32 x 256 = 81,920 -> 329,472 bytes in 8 + 8 + 3 + 3 + 2 + 1 + 1 + 2 = 28 kernels
    eager = layer_passes(TINY, 0, P1, SEQ, OpOptions(fp8=False, recompute="none", elementwise_kernels="eager"))
    assert _elementwise(eager.forward) == (28, 329_472)
    # backward: norms 2 x (92 x 2048 + 40 x 32 + 4 x 64) = 379,904; RoPE 61,440; repeat_kv 12,288; residual
    # gradient sums 24,576; SwiGLU 18 x 8192 = 147,456 -> 625,664 bytes in 16 + 16 + 6 + 2 + 2 + 3 = 45 kernels
    assert _elementwise(eager.backward) == (45, 625_664)
    assert _elementwise(eager.weight) == (0, 0)
    # every kernel is one launch
    launch = LaunchModel.load()
    assert sum(launch.kernel_count(op) for s in eager.forward for op in s.ops if op.kind == "elementwise") == 28


def test_eager_leaves_gemms_attention_and_collectives_alone():
    opts = OpOptions(fp8=False, recompute="none")
    p = ParallelSpec(num_gpus=2, tp=2, sequence_parallel=True, micro_batch_size=2)
    fused = layer_passes(TINY, 0, p, SEQ, opts)
    eager = layer_passes(TINY, 0, p, SEQ, OpOptions(fp8=False, recompute="none", elementwise_kernels="eager"))
    for a, b in ((fused.forward, eager.forward), (fused.backward, eager.backward), (fused.weight, eager.weight)):
        other = lambda segs: [(op.name, op.kind, op.flops, op.bytes, op.comm_bytes)  # noqa: E731
                              for s in segs for op in s.ops if op.kind != "elementwise"]
        assert other(a) == other(b)


def test_recomputed_norms_run_their_forward_kernels():
    # "selective:layernorm": both norms' forward kernels again in the backward, priced as forward (phase F):
    # 2 x 8 kernels, 2 x 74,624 bytes (T = 32, h = 64, as above)
    opts = OpOptions(fp8=False, recompute="selective:layernorm", elementwise_kernels="eager")
    passes = layer_passes(TINY, 0, P1, SEQ, opts)
    assert _elementwise(passes.backward, "F") == (16, 149_248)


def test_default_is_fused_and_bad_values_name_the_field():
    assert OpOptions().elementwise_kernels == "fused"
    with pytest.raises(ValueError, match="elementwise_kernels must be one of fused, eager"):
        OpOptions(elementwise_kernels="compiled")
    with pytest.raises(ValueError, match="elementwise_kernels 'eager'.*MLA"):
        layer_passes(load_preset("deepseek-v3"), 0, P1, 64, OpOptions(elementwise_kernels="eager"))


def test_cli_option_and_plan_key():
    runner = CliRunner()
    r = runner.invoke(app, ["estimate", "--help"])
    assert r.exit_code == 0 and "--elementwise-kernels" in r.output
    r = runner.invoke(app, ["estimate", "--elementwise-kernels", "lazy"])
    assert r.exit_code == 2 and "elementwise_kernels must be one of" in r.stderr


def test_plan_toml_key(tmp_path):
    from gpuhours.simulator.scenario import load_scenario

    text = (Path(__file__).resolve().parents[1] / "workloads" / "plans" / "deepseek-v3.toml").read_text()
    assert "[numerics]\n" in text
    plan = tmp_path / "p.toml"
    plan.write_text(text.replace("[numerics]\n", '[numerics]\nelementwise_kernels = "eager"\n'))
    assert load_scenario(str(plan)).opts.elementwise_kernels == "eager"
    assert load_scenario(str(plan), elementwise_kernels="fused").opts.elementwise_kernels == "fused"
    plan.write_text(text.replace("[numerics]\n", "[numerics]\nelementwise_kernels = 1\n"))
    with pytest.raises(ValueError, match="elementwise_kernels"):
        load_scenario(str(plan))
