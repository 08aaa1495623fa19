"""The memory-bound ops of `workloads.memory_ops` on a small MoE / MLA model, each op's bytes derived by hand.

Model: hidden 128, MLA with 4 heads (nope 16, rope 8, v 16), 8 routed experts of intermediate 32 (top-2) plus one
shared expert, the first layer dense; one micro-batch of 256 tokens on EP2. Balanced routing: a rank multiplies
256 x 2 = 512 expert rows (4 local experts of 128 rows)."""

from __future__ import annotations

import itertools
import math
import pytest

from gpuhours.hwmodels.compute import elementwise_class
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.memory_ops import distinct_ranks
from gpuhours.workloads.model import AttentionSpec, ModelSpec, MoESpec
from gpuhours.workloads.ops import Op, OpOptions
from gpuhours.workloads.parallel import ParallelSpec

SEQ, H, T = 256, 128, 256
ROWS = T * 2
# A token's 2 experts out of 8 on 2 ranks (4 each): of the C(8, 2) = 28 pairs, 2 x C(4, 2) = 12 fall on one rank,
# 16 on two, so 44 / 28 = 11 / 7 ranks a token; the rank receives 512 rows x (11/7) / 2 = 2816/7 token copies.
RECV = 2816 / 7


@pytest.fixture(scope="module")
def tiny():
    attn = AttentionSpec("mla", 4, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                         v_head_dim=16)
    moe = MoESpec(n_routed_experts=8, n_shared_experts=1, expert_intermediate=32, top_k=2, first_k_dense=1)
    return ModelSpec(name="tiny-moe", hidden=H, n_layers=3, vocab=1000, dense_intermediate=256, attention=attn,
                     moe=moe)


def _p(**kw):
    base = dict(num_gpus=2, ep=2)
    base.update(kw)
    return ParallelSpec(**base)


def _ops(passes, which: str) -> dict[str, Op]:
    """{name without the layer prefix: op} of one pass ("F", "B", "W"); compute ops only."""
    segs = {"F": passes.forward, "B": passes.backward, "W": passes.weight}[which]
    out = {}
    for seg in segs:
        for op in seg.ops:
            if op.kind != "collective":
                key = op.name.split(".", 1)[1]
                assert key not in out, key
                out[key] = op
    return out


@pytest.fixture(scope="module")
def moe_layer(tiny):
    return layer_passes(tiny, 1, _p(), SEQ, OpOptions(recompute="deepseek"))


def test_distinct_ranks_against_enumeration():
    """The closed form against counting every expert choice of small cases."""
    for ep, experts, k in ((2, 8, 2), (4, 8, 3), (4, 16, 4), (8, 8, 1)):
        per = experts // ep
        counts = [len({e // per for e in c}) for c in itertools.combinations(range(experts), k)]
        assert distinct_ranks(ep, experts, k) == pytest.approx(sum(counts) / len(counts), rel=1e-12)
    assert distinct_ranks(2, 8, 2) == pytest.approx(11 / 7)
    assert distinct_ranks(1, 8, 2) == 1.0
    with pytest.raises(ValueError, match="ep"):
        distinct_ranks(3, 8, 2)


def test_moe_permutation_bytes(moe_layer):
    """Forward: read the received FP8 copies (128 + one FP32 scale per 128 = 132 bytes) and write the 512
    expert rows; unpermute reads the 512 BF16 w2 rows and writes one per received copy. Backward: the output
    gradients arrive in FP8 too (DeepSeek-V3 sec. 3.3.2), the input gradients leave in BF16."""
    f, b = _ops(moe_layer, "F"), _ops(moe_layer, "B")
    assert f["mlp.experts.permute"].bytes == pytest.approx((RECV + ROWS) * 132)
    assert f["mlp.experts.unpermute"].bytes == pytest.approx((RECV + ROWS) * H * 2)
    assert b["mlp.experts.permute"].bytes == pytest.approx((RECV + ROWS) * 132)
    assert b["mlp.experts.unpermute"].bytes == pytest.approx((RECV + ROWS) * H * 2)
    assert "mlp.experts.permute" not in _ops(moe_layer, "W")


def test_up_projection_cast_runs_on_the_tokens_before_the_dispatch(moe_layer):
    """FP8 dispatch: the forward cast reads 256 x 128 BF16 and writes FP8 (3 bytes an element) once per token,
    and the expert rows arrive cast (no w13 forward cast); the backward still casts the expanded rows' output
    gradient (m x k as executed = 512 x 64, 4 bytes an element)."""
    f, b = _ops(moe_layer, "F"), _ops(moe_layer, "B")
    assert f["mlp.dispatch.quant"].bytes == 3 * T * H
    assert "mlp.experts.w13.quant" not in f
    assert b["mlp.experts.w13.quant"].bytes == 4 * ROWS * 64


def test_allgather_dispatcher_keeps_the_cast_on_the_rows(tiny):
    """The allgather dispatcher gathers BF16 states: no cast before it, the rows are cast at the experts
    (512 x 128 x 3) and the permutation moves BF16 rows."""
    f = _ops(layer_passes(tiny, 1, _p(moe_dispatch="allgather"), SEQ), "F")
    assert "mlp.dispatch.quant" not in f
    assert f["mlp.experts.w13.quant"].bytes == 3 * ROWS * H
    assert f["mlp.experts.permute"].bytes == pytest.approx((RECV + ROWS) * H * 2)


def test_fp8_caches(moe_layer):
    """SwiGLU input, 512 rows x 64: BF16 (128 bytes) plus FP8 with one scale (64 + 4) = 196 bytes a row each way.
    Attention output, 256 tokens x 4 heads x 16: BF16 (2) plus E5M6 (1.5) = 3.5 bytes an element each way."""
    f, b = _ops(moe_layer, "F"), _ops(moe_layer, "B")
    assert f["mlp.experts.swiglu_in.quant"].bytes == ROWS * 196
    assert b["mlp.experts.swiglu_in.dequant"].bytes == ROWS * 196
    assert f["attn.o_cache.quant"].bytes == pytest.approx(T * 64 * 3.5)
    assert b["attn.o_cache.dequant"].bytes == pytest.approx(T * 64 * 3.5)
    for op in (b["mlp.experts.swiglu_in.dequant"], b["attn.o_cache.dequant"]):
        assert elementwise_class(op) == "cast"


def test_per_tensor_recipe_has_no_blockwise_caches(tiny):
    """The caches are DeepSeek's blockwise recipe; under delayed scaling the dispatch cast is the fused 2 bytes
    an element (FP8 copy and its transpose), and nothing else of the blockwise recipe is added."""
    layer = layer_passes(tiny, 1, _p(), SEQ, OpOptions(fp8_recipe="delayed"))
    f, b = _ops(layer, "F"), _ops(layer, "B")
    assert f["mlp.dispatch.quant"].bytes == 2 * T * H
    assert not [k for k in list(f) + list(b) if "_cache" in k or "swiglu_in" in k]


def test_residual_and_expert_sums(moe_layer):
    """Each sum of two 256 x 128 BF16 tensors reads two and writes one: 3 x 65,536 bytes. Forward: both residuals
    and routed + shared; backward: the two residual gradient sums (routed and shared share one gradient)."""
    f, b = _ops(moe_layer, "F"), _ops(moe_layer, "B")
    add = 3 * T * H * 2
    assert f["attn.residual"].bytes == f["mlp.residual"].bytes == f["mlp.experts.add"].bytes == add
    assert b["attn.residual"].bytes == b["mlp.residual"].bytes == add
    assert "mlp.experts.add" not in b


def test_parallel_block_has_one_three_input_sum():
    gpt = ModelSpec(name="neox", hidden=H, n_layers=2, vocab=1000, dense_intermediate=512, ffn_activation="gelu",
                    parallel_block=True, attention=AttentionSpec("gqa", 4, n_kv_heads=4, head_dim=32))
    f = _ops(layer_passes(gpt, 0, ParallelSpec(num_gpus=1), SEQ, OpOptions(fp8=False)), "F")
    assert "attn.residual" not in f
    assert f["mlp.residual"].bytes == 4 * T * H * 2


def test_mla_qk_assembly(tiny, moe_layer):
    """Per token, forward: q cat reads and writes 4 x 24 (192 elements); k cat reads 4 x 16 + 8 and writes
    4 x 24 (168). Backward: dq cat again (192), dk_pe summed over heads (4 x 8 read, 8 written: 40), dk_nope and
    dv concatenated (2 x 4 x 32 = 256). BF16. DeepSeek's policy recomputes the up-projections, so the backward
    also runs RoPE (q_pe: 2 x 4 x 8 elements) and the forward assembly again."""
    f, b = _ops(moe_layer, "F"), _ops(moe_layer, "B")
    assert f["attn.qk_cat"].bytes == T * 360 * 2
    assert b["attn.qk_cat"].bytes == T * 488 * 2
    assert b["attn.recompute.qk_cat"].bytes == T * 360 * 2
    assert b["attn.recompute.qk_cat"].phase == "F"
    assert b["attn.recompute.rope"].bytes == T * 2 * 4 * 8 * 2
    none = _ops(layer_passes(tiny, 1, _p(), SEQ, OpOptions(recompute="none")), "B")
    assert "attn.recompute.qk_cat" not in none and "attn.recompute.rope" not in none


def test_dense_layer_gets_residuals_only(tiny):
    f = _ops(layer_passes(tiny, 0, _p(), SEQ), "F")
    assert f["attn.residual"].bytes == f["mlp.residual"].bytes == 3 * T * H * 2
    assert not [k for k in f if "permute" in k or "experts" in k]


def test_single_rank_permutation_conserves_tokens(tiny):
    """EP1: a token's copies all land on the one rank, so the rank receives exactly its 256 tokens."""
    f = _ops(layer_passes(tiny, 1, ParallelSpec(num_gpus=1), SEQ), "F")
    assert f["mlp.experts.unpermute"].bytes == pytest.approx((T + ROWS) * H * 2)
    assert math.isclose(f["mlp.experts.permute"].bytes, (T + ROWS) * 132)


def test_weight_pass_adds_no_memory_ops(moe_layer):
    w = _ops(moe_layer, "W")
    assert all(op.kind in ("gemm", "grouped_gemm") or op.name.endswith(".quant") for op in w.values())
