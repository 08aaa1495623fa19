"""Megatron-LM's unfused attention core (`workloads.unfused_attention`, `attention_kernel = "megatron-unfused"`).

Expected figures are derived by hand for a tiny layer: 4 heads of dimension 16, tp 2 (2 heads per rank),
micro-batch 2, sequence 8, so B np = 4 batched GEMMs and N = 4 x 8 x 8 = 256 score elements of 2 bytes; q, k, v,
o and their gradients are 4 x 8 x 16 = 512 elements (1024 bytes) each; the causal softmax kernel reads only the
lower triangle, T = 4 x 8 x 9 / 2 = 144 elements, and writes whole rows.
"""

from __future__ import annotations

import pytest

from gpuhours.simulator.scenario import load_scenario, scenario_warnings
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.memory import chunk_bytes, load_recipe
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec

TINY = ModelSpec("tiny-gpt", hidden=64, n_layers=2, vocab=128, dense_intermediate=256,
                 attention=AttentionSpec("gqa", n_heads=4, n_kv_heads=4, head_dim=16), ffn_activation="gelu")
P = ParallelSpec(num_gpus=2, tp=2, micro_batch_size=2)
SEQ = 8
UNF = dict(fp8=False, recompute="none", attention_impl="megatron-unfused")


def _core(passes, phase):
    segs = {"F": passes.forward, "B": passes.backward, "W": passes.weight}[phase]
    return {op.name.split(".", 2)[2]: op for s in segs for op in s.ops if ".core." in op.name}


def test_forward_ops_by_hand():
    ops = _core(layer_passes(TINY, 0, P, SEQ, OpOptions(**UNF)), "F")
    assert list(ops) == ["core.qk", "core.softmax", "core.dropout", "core.pv"]
    # QK^T over the full 8 x 8: 2 x 4 x 8 x 8 x 16 = 8192 FLOPs; reads q, k (2048 B), writes scores (512 B)
    assert (ops["core.qk"].kind, ops["core.qk"].flops, ops["core.qk"].bytes) == ("gemm", 8192, 2560)
    # priced as one GEMM with the 4 problems' rows stacked: (4 x 8) x 8 x 16
    assert (ops["core.qk"].gemm.m, ops["core.qk"].gemm.n, ops["core.qk"].gemm.k) == (32, 8, 16)
    assert (ops["core.softmax"].kind, ops["core.softmax"].bytes) == ("elementwise", 800)  # 288 in + 512 out
    assert ops["core.dropout"].bytes == 1280  # 512 in + 512 out + 256 one-byte mask
    # PV: 8192 FLOPs; reads P (512 B) and v (1024 B), writes o (1024 B)
    assert (ops["core.pv"].flops, ops["core.pv"].bytes) == (8192, 2560)
    # twice the causal half a FlashAttention core is charged: 2 np (d_qk + d_v) (B s) (s + 1) / 2 = 9216
    assert sum(op.flops for op in ops.values()) == 16384


def test_backward_ops_by_hand_and_nothing_in_the_weight_pass():
    passes = layer_passes(TINY, 0, P, SEQ, OpOptions(**UNF))
    ops = _core(passes, "B")
    assert list(ops) == ["core.pv_dgrad", "core.pv_vgrad", "core.dropout_bwd", "core.softmax_bwd",
                         "core.qk_dgrad", "core.qk_kgrad"]
    for name in ("core.pv_dgrad", "core.pv_vgrad", "core.qk_dgrad", "core.qk_kgrad"):
        assert (ops[name].kind, ops[name].phase, ops[name].flops, ops[name].bytes) == ("gemm", "B", 8192, 2560)
    assert ops["core.dropout_bwd"].bytes == 1280  # grad 512 + mask 256 in, 512 out
    assert ops["core.softmax_bwd"].bytes == 1088  # grad 288 + probabilities 288 in (triangle), 512 out
    assert sum(op.flops for op in ops.values()) == 2 * 16384  # no QK^T recomputation: twice the forward
    assert _core(passes, "W") == {}
    assert not any(op.kind == "attention" for s in passes.forward + passes.backward for op in s.ops)


def test_selective_and_full_recompute_run_the_forward_core_again():
    sel = layer_passes(TINY, 0, P, SEQ, OpOptions(**{**UNF, "recompute": "selective"}))
    again = [op for s in sel.backward for op in s.ops if ".recompute.core." in op.name]
    assert [op.name.rsplit(".", 1)[-1] for op in again] == ["qk", "softmax", "dropout", "pv"]
    assert all(op.phase == "F" for op in again) and sum(op.flops for op in again) == 16384
    full = layer_passes(TINY, 0, P, SEQ, OpOptions(**{**UNF, "recompute": "full"}))
    again = [op for s in full.backward for op in s.ops if ".recompute.core." in op.name]
    assert len(again) == 4 and sum(op.bytes for op in again if op.kind == "elementwise") == 800 + 1280
    none = layer_passes(TINY, 0, P, SEQ, OpOptions(**UNF))
    assert not any(".recompute." in op.name for s in none.backward for op in s.ops)


def test_kept_scores_are_korthikantis_five_a_s2_b_over_t():
    rec = load_recipe()
    # 5 bytes x 2 heads per rank x 8^2 x micro-batch 2 = 1280 bytes per layer; 2 layers on one stage
    def extra(recompute):
        unf = chunk_bytes(TINY, P, SEQ, (2,), rec, False, recompute, attention_impl="megatron-unfused")
        flash = chunk_bytes(TINY, P, SEQ, (2,), rec, False, recompute)
        return unf[0] - flash[0]
    assert extra("none") == pytest.approx(2560)
    assert extra("selective") == 0 and extra("full") == 0
    assert extra("full:1") == pytest.approx(1280)  # the second layer of the stage keeps its scores
    assert extra("deepseek") == pytest.approx(2560)  # norms recomputed, the core not


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match=r"attention_impl must be one of flash, megatron-unfused; got 'fused'"):
        OpOptions(attention_impl="fused")
    with pytest.raises(ValueError, match=r"attention_kernel must be one of .*megatron-unfused"):
        load_scenario(attention_kernel="megatron-fused")
    with pytest.raises(ValueError, match=r"megatron-unfused.*context parallelism.*cp 2"):
        layer_passes(TINY, 0, ParallelSpec(num_gpus=4, tp=2, cp=2), SEQ, OpOptions(**UNF))
    with pytest.raises(ValueError, match=r"attention_impl must be one of"):
        chunk_bytes(TINY, P, SEQ, (2,), load_recipe(), False, "none", attention_impl="x")


def test_scenario_takes_it_from_the_attention_kernel_name():
    kw = dict(model="llama-3-70b", gpu="a100-80gb", gpus=8, pp=1, tp=8, schedule="1f1b", seq_len=2048, batch=8,
              tokens=1e9, fp8=False)
    plain, unf = load_scenario(**kw), load_scenario(**kw, attention_kernel="megatron-unfused")
    assert (plain.opts.attention_impl, unf.opts.attention_impl) == ("flash", "megatron-unfused")
    assert unf.profile.gemm == plain.profile.gemm
    assert unf.profile.attention_forward_efficiency == plain.profile.attention_forward_efficiency
    assert not any("measured on" in w for w in scenario_warnings(unf))
