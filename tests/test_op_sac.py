"""torchtitan's op-level selective activation checkpointing, recompute policy "torchtitan-op" (`workloads.op_sac`):
which GEMMs and element-wise ops the backward runs again and what the block keeps, derived by hand for a tiny
Llama-style layer from torchtitan 9dec370's `_custom_policy` (mm counts 1..7 in the order wq wk wv wo w1 w3 w2;
the even ones, wk wo w3, are not saved) and never recomputed with the code under test."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.workloads import op_sac
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.memory import MemoryRecipe, layer_terms
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.recompute import recompute_policy

# tiny Llama: h 64, FFN 256, 4 query heads and 2 KV heads of 16; one micro-batch of 32 tokens on one GPU
H, I, SEQ = 64, 256, 32
TINY = ModelSpec("tiny-llama", hidden=H, n_layers=2, vocab=128, dense_intermediate=I,
                 attention=AttentionSpec("gqa", n_heads=4, n_kv_heads=2, head_dim=16))
P1 = ParallelSpec(num_gpus=1, micro_batch_size=1)


def _passes(policy="torchtitan-op", ew="fused", model=TINY, p=P1):
    return layer_passes(model, 0, p, SEQ, OpOptions(fp8=False, recompute=policy, elementwise_kernels=ew))


def _again(lp):
    return [op for s in lp.backward if s.name.endswith(".recompute(B)") for op in s.ops]


def test_unsaved_mms_are_the_even_counts():
    # _custom_policy: counts 2, 4, 6 of wq(1) wk(2) wv(3) wo(4) w1(5) w3(6) w2(7)
    assert op_sac.recomputed_mms() == ("wk", "wo", "w3")
    assert recompute_policy("torchtitan-op") == "torchtitan-op"


def test_recomputed_gemms_by_hand():
    again = _again(_passes())
    gemms = {op.name: op.flops for op in again if op.kind == "gemm"}
    # forward FLOPs 2 m n k, m = 32 tokens: wk 2x32x(2x16)x64, wo 2x32x64x(4x16), w3 2x32x256x64
    assert gemms == {"L0.attn.recompute.wk": 131072.0, "L0.attn.recompute.wo": 262144.0,
                     "L0.mlp.recompute.ffn.w3": 1048576.0}
    assert all(op.phase == "F" for op in again)
    # the attention core is saved (SDPA is in _save_list): no attention op runs again, the backward has only its
    # own core backward, while Megatron-style "selective" runs the core forward again
    assert not [op for op in again if op.kind == "attention"]
    assert len([op for s in _passes().backward for op in s.ops if op.kind == "attention"]) == 1
    assert len([op for s in _passes("selective").backward for op in s.ops if op.kind == "attention"]) == 2


def test_recomputed_elementwise_bytes_fused_by_hand():
    again = [op for op in _again(_passes()) if op.kind == "elementwise"]
    # fused kernels, BF16: attention norm 2x32x64x2 = 8192; RoPE on q and k 2x32x(4+2)x16x2 = 12288; the
    # attention residual add (read 2, write 1) 3x32x64x2 = 12288; FFN norm 8192; SwiGLU 3x32x256x2 = 49152.
    # The FFN's residual add, the block's last op, is not rerun (checkpoint early stop): 90112 in all
    assert sum(op.bytes for op in again) == 90112
    assert not [op for op in again if op.name == "L0.mlp.recompute.residual"]


def test_recomputed_elementwise_bytes_eager_by_hand():
    again = [op for op in _again(_passes(ew="eager")) if op.kind == "elementwise"]
    # eager kernels (workloads.eager_ops): RMSNorm forward 36N + 24R + 2w, N = 32x64, R 32, w 64 -> 74624 each;
    # RoPE 20N: q (N = 32x64) 40960, k (N = 32x32) 20480; repeat_kv of k and v 2x(2x32x(32+64)) = 12288;
    # attention residual 12288; SwiGLU 10N, N = 32x256 -> 81920. 317184 bytes in 8+3+3+2+1+8+2 = 27 kernels
    assert sum(op.bytes for op in again) == 317184
    assert len(again) == 27


def test_rest_of_the_backward_is_the_none_policy():
    # conservation: op SAC adds its recomputation and changes nothing else in any pass
    for ew in ("fused", "eager"):
        sac, none = _passes(ew=ew), _passes("none", ew)
        assert sac.forward == none.forward and sac.weight == none.weight
        rest = [s for s in sac.backward if not s.name.endswith(".recompute(B)")]
        assert rest == list(none.backward)


def test_memory_kept_and_dropped_by_hand():
    for fp8 in (False, True):
        terms = layer_terms(TINY, 0, MemoryRecipe(), fp8, "torchtitan-op")
        # kept, BF16 per token: block input 2x64 = 128, wq out 2x64 = 128, wv out 2x32 = 64, SDPA out 2x64 = 128,
        # its log-sum-exp 4x4 = 16, w1 out 2x256 = 512, w2 out 2x64 = 128 -> 1104
        assert sum(terms.values()) == 1104
        for dropped in ("attn.x_norm", "attn.qkv", "ffn.h_mid", "ffn.h_norm", "ffn.swiglu_in"):
            assert dropped not in terms
    # "none" keeps x_in 128 + x_norm 128 + qkv 2x(4+4)x16 = 256 + out 1.5x64 = 96 (this recipe's E5M6 attention
    # output; op SAC keeps SDPA's own BF16 output) + lse 16 + h_mid 128 + h_norm 128 + SwiGLU input 2x2x256 = 1024
    # -> 1904
    assert sum(layer_terms(TINY, 0, MemoryRecipe(), False, "none").values()) == 1904


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="recompute must be one of .*torchtitan-op"):
        recompute_policy("torchtitan_op")
    with pytest.raises(ValueError, match=r"recompute 'torchtitan-op'.*tensor parallelism \(tp=2\)"):
        _passes(p=ParallelSpec(num_gpus=2, tp=2, micro_batch_size=1))
    with pytest.raises(ValueError, match=r"recompute 'torchtitan-op'.*context parallelism \(cp=2\)"):
        _passes(p=ParallelSpec(num_gpus=2, cp=2, micro_batch_size=1))
    mla = ModelSpec("tiny-mla", hidden=H, n_layers=2, vocab=128, dense_intermediate=I,
                    attention=AttentionSpec("mla", n_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
                                            qk_rope_head_dim=8, v_head_dim=16))
    with pytest.raises(ValueError, match=r"recompute 'torchtitan-op'.*MLA attention"):
        _passes(model=mla)


def test_cli_help_lists_the_policy():
    r = CliRunner().invoke(app, ["estimate", "--help"])
    assert r.exit_code == 0 and "torchtitan-op" in r.output


def test_cli_refuses_it_outside_its_scope_in_one_line():
    # the default plan is DeepSeek-V3 (MLA, MoE): outside torchtitan's Llama block
    r = CliRunner().invoke(app, ["estimate", "--recompute", "torchtitan-op"])
    assert r.exit_code == 2 and "recompute 'torchtitan-op'" in r.stderr and "MLA attention" in r.stderr
