"""The op decomposition against the parameter and FLOP counts derived independently in workloads.params/flops."""

from __future__ import annotations

import pytest

from gpuhours.workloads import params as P
from gpuhours.workloads.flops import attention_core_flops
from gpuhours.workloads.ops import OpOptions, fp8_bytes_per_token
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset

SEQ = 4096


def _gemm_flops(segments, phase_prefix=""):
    return sum(op.flops for seg in segments for op in seg.ops
               if op.kind in ("gemm", "grouped_gemm") and ".recompute." not in op.name)


@pytest.fixture(scope="module")
def v3():
    return load_preset("deepseek-v3")


def _layout(**kw):
    base = dict(num_gpus=2048, pp=16, ep=64, schedule="dualpipe", comm_sms=20)
    base.update(kw)
    return ParallelSpec(**base)


def test_moe_layer_forward_gemm_flops_are_2_x_active_matmul_params_x_tokens(v3):
    """Balanced routing: each rank's expert rows equal its tokens x top_k, so per-rank forward GEMM FLOPs equal
    2 x tokens x (attention matmuls + router + shared expert + top_k routed experts)."""
    layer = layer_passes(v3, 10, _layout(), SEQ)
    active = (P.attention_matmul_params(v3) + P.router_matmul_params(v3)
              + (v3.moe.n_shared_experts + v3.moe.top_k) * P.expert_params(v3))
    assert _gemm_flops(layer.forward) == pytest.approx(2 * SEQ * active, rel=1e-9)


def test_dense_layer_forward_gemm_flops(v3):
    layer = layer_passes(v3, 0, _layout(), SEQ)
    assert not v3.is_moe_layer(0)
    assert _gemm_flops(layer.forward) == pytest.approx(
        2 * SEQ * (P.attention_matmul_params(v3) + P.dense_ffn_params(v3)), rel=1e-9)


def test_backward_passes_repeat_the_forward_gemm_flops(v3):
    """Input gradients and weight gradients each cost the forward's GEMM FLOPs (recomputation aside)."""
    layer = layer_passes(v3, 10, _layout(), SEQ)
    f = _gemm_flops(layer.forward)
    assert _gemm_flops(layer.backward) == pytest.approx(f, rel=1e-9)
    assert _gemm_flops(layer.weight) == pytest.approx(f, rel=1e-9)


def test_attention_core_matches_closed_form(v3):
    """Forward core FLOPs per layer: 2 heads (d_qk + d_v) tokens (L + 1) / 2; flops.py uses L / 2 per token."""
    layer = layer_passes(v3, 10, _layout(), SEQ)
    core = [op for seg in layer.forward for op in seg.ops if op.kind == "attention"]
    assert len(core) == 1
    a = v3.attention
    assert core[0].flops == pytest.approx(2 * a.n_heads * (a.qk_head_dim + a.v_head_dim) * SEQ * (SEQ + 1) / 2)
    assert core[0].flops == pytest.approx(attention_core_flops(v3, SEQ) * SEQ * (SEQ + 1) / SEQ, rel=1e-9)


def test_recompute_adds_the_mla_up_projections_to_backward(v3):
    with_rc = layer_passes(v3, 10, _layout(), SEQ, OpOptions(recompute="deepseek"))
    without = layer_passes(v3, 10, _layout(), SEQ, OpOptions(recompute="none"))
    extra = (sum(op.flops for s in with_rc.backward for op in s.ops)
             - sum(op.flops for s in without.backward for op in s.ops))
    a, h = v3.attention, v3.hidden
    up = a.n_heads * a.qk_head_dim * a.q_lora_rank + a.n_heads * (a.qk_nope_head_dim + a.v_head_dim) * a.kv_lora_rank
    assert extra == pytest.approx(2 * SEQ * up, rel=1e-9)
    del h


def test_moe_layer_segments_follow_the_trace_annotations(v3):
    layer = layer_passes(v3, 10, _layout(), SEQ)
    # the gate (FFN norm, router, the payload's cast) is a second attention-half segment before the dispatch, its
    # backward one after the dispatch's: DeepSeek's trace launches the router's kernels under the attention phases
    assert [s.name for s in layer.forward] == ["attn(F)", "attn(F)", "dispatch(F)", "mlp(F)", "combine(F)"]
    assert [s.name for s in layer.backward] == ["combine(B)", "mlp(B)", "dispatch(B)", "attn(B)", "attn(B)"]
    assert [s.name for s in layer.weight] == ["mlp(W)", "attn(W)"]
    dispatch = layer.forward[2].ops[0]
    assert dispatch.bytes_per_token == fp8_bytes_per_token(7168) == 7168 + 4 * 56
    assert layer.forward[4].ops[0].bytes_per_token == 2 * 7168


def test_imbalance_scales_expert_rows_and_traffic(v3):
    base = layer_passes(v3, 10, _layout(), SEQ)
    skew = layer_passes(v3, 10, _layout(), SEQ, OpOptions(imbalance=1.5))

    def expert_flops(lp):
        return sum(op.flops for s in lp.forward for op in s.ops if op.kind == "grouped_gemm")

    assert expert_flops(skew) == pytest.approx(1.5 * expert_flops(base), rel=1e-3)
    assert skew.forward[2].ops[0].tokens == round(1.5 * base.forward[2].ops[0].tokens)  # the dispatch


def test_tensor_parallel_splits_gemms_and_adds_collectives():
    llama = load_preset("llama-3-70b")
    one = layer_passes(llama, 0, ParallelSpec(num_gpus=64, pp=8, tp=1), SEQ)
    eight = layer_passes(llama, 0, ParallelSpec(num_gpus=64, pp=8, tp=8), SEQ)
    assert _gemm_flops(eight.forward) == pytest.approx(_gemm_flops(one.forward) / 8, rel=1e-9)
    kinds = [op.collective for s in eight.forward for op in s.ops if op.kind == "collective"]
    assert kinds == ["all_gather", "reduce_scatter", "all_gather", "reduce_scatter"]
    assert not [op for s in one.forward for op in s.ops if op.kind == "collective"]


def test_norms_run_on_the_sequence_shard_under_sequence_parallelism():
    # Korthikanti et al. 2022: between the tensor-parallel blocks each of the t ranks holds s/t of the sequence,
    # so its norms read and write 1/t of the activations; without sequence parallelism every rank does them all.
    from dataclasses import replace as _replace

    from gpuhours.workloads.model import AttentionSpec, ModelSpec
    from gpuhours.workloads.parallel import ParallelSpec

    gpt = ModelSpec(name="g", hidden=1024, n_layers=2, vocab=1000, dense_intermediate=4096, ffn_activation="gelu",
                    attention=AttentionSpec("gqa", 8, n_kv_heads=8, head_dim=128))
    sp = ParallelSpec(num_gpus=4, tp=4, sequence_parallel=True)

    def norm_bytes(p):
        passes = layer_passes(gpt, 0, p, 2048, OpOptions(fp8=False, recompute="none"))
        return {op.name: op.bytes for seg in passes.forward for op in seg.ops if op.name.endswith("_norm")}

    sharded, whole = norm_bytes(sp), norm_bytes(_replace(sp, sequence_parallel=False))
    assert set(sharded) == {"L0.attn.attn_norm", "L0.mlp.ffn_norm"}
    for name in sharded:
        assert sharded[name] * 4 == whole[name] == 2 * 2048 * 1024 * 2  # read + write BF16, whole sequence


@pytest.mark.parametrize("sp", [True, False])
def test_tensor_parallel_collectives_per_pass(sp):
    # Korthikanti et al. 2022, sec. 4.2: per layer, forward and backward each move 4 x (b s h) bytes of activations
    # over the TP group (two all-reduces of b s h, or with sequence parallelism two all-gathers and two
    # reduce-scatters whose gathered buffers are b s h each); the weight-gradient pass moves none, except that
    # Megatron-LM gathers the sequence-sharded input of each of the two column-parallel layers again for its
    # weight gradient.
    from gpuhours.workloads.model import AttentionSpec, ModelSpec

    gpt = ModelSpec(name="g", hidden=1024, n_layers=2, vocab=1000, dense_intermediate=4096, ffn_activation="gelu",
                    attention=AttentionSpec("gqa", 8, n_kv_heads=8, head_dim=128))
    p = ParallelSpec(num_gpus=4, tp=4, sequence_parallel=sp)
    passes = layer_passes(gpt, 0, p, 2048, OpOptions(fp8=False, recompute="none"))
    bsh = 2048 * 1024 * 2

    def collectives(segs):
        return sorted((op.collective, op.comm_bytes) for s in segs for op in s.ops if op.kind == "collective")

    expected = ([("all_gather", bsh)] * 2 + [("reduce_scatter", bsh)] * 2) if sp else [("all_reduce", bsh)] * 2
    assert collectives(passes.forward) == collectives(passes.backward) == sorted(expected)
    assert collectives(passes.weight) == ([("all_gather", bsh)] * 2 if sp else [])
