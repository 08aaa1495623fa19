"""The blockwise recipe's FP8 weight transposes and the gate weights' gradient (`workloads.memory_ops`), and the
kernel-family table against DeepSeek's trace (`validation.memory_families`). Bytes are derived by hand from the
shapes; the trace is only counted, never timed, and only where GPUHOURS_PROFILE_TRACE points at it."""

from __future__ import annotations

import pytest

from gpuhours.hwmodels.compute import elementwise_class
from gpuhours.validation.external import TRACE_ABSENT, profile_trace
from gpuhours.validation.memory_families import FAMILIES, family_rows, kernel_family, op_family
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.ops import Op, OpOptions, PassBuilder
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset


def _named(b: PassBuilder) -> dict[str, Op]:
    return {op.name: op for op in b.ops}


def test_weight_transpose_in_the_blockwise_input_gradient_only():
    """wq_a of DeepSeek-V3 (7168 -> 1536): its FP8 weight read and written transposed, 2 x 7168 x 1536 =
    22,020,096 bytes, in the input-gradient pass only; a grouped GEMM of 4 experts (7168 -> 4096) four times
    2 x 7168 x 4096 = 58,720,256."""
    b = PassBuilder("L3.attn", "attn", "B", fp8=True)
    b.gemm("wq_a", 4096, 1536, 7168)
    b.gemm("experts.w13", 8192, 4096, 7168, groups=4)
    ops = _named(b)
    assert ops["L3.attn.wq_a.weight_t"].bytes == 22_020_096
    assert ops["L3.attn.experts.w13.weight_t"].bytes == 4 * 58_720_256
    assert elementwise_class(ops["L3.attn.wq_a.weight_t"]) == "cast"
    names = list(ops)  # the transpose runs before the GEMM that needs it
    assert names.index("L3.attn.wq_a.weight_t") < names.index("L3.attn.wq_a")
    for phase, fp8, recipe, low in (("F", True, "blockwise", True), ("W", True, "blockwise", True),
                                    ("B", True, "delayed", True), ("B", True, "current", True),
                                    ("B", False, "blockwise", True), ("B", True, "blockwise", False)):
        other = PassBuilder("L3.attn", "attn", phase, fp8=fp8, recipe=recipe)
        other.gemm("wq_a", 4096, 1536, 7168, low_precision=low)
        assert not [n for n in _named(other) if "weight_t" in n], (phase, fp8, recipe, low)


@pytest.fixture(scope="module")
def v3_layer():
    """A DeepSeek-V3 MoE layer on one rank of the traced layout: EP64, TP1, 4,096 tokens, balanced routing."""
    model = load_preset("deepseek-v3")
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64, tp=1, schedule="dualpipe", comm_sms=20)
    return model, layer_passes(model, 3, p, 4096, OpOptions(recompute="deepseek"))


def _ops(segs) -> list[Op]:
    return [op for seg in segs for op in seg.ops if op.kind != "collective"]


def test_v3_layer_transposes_every_fp8_weight_once(v3_layer):
    """Nine FP8 linears a MoE layer (wq_a, wq_b, wkv_a, wkv_b, wo, shared w13 / w2, routed w13 / w2: the 36
    `batched_transpose` kernels of the traced 4-layer backward chunk); their weight elements on the rank, from
    the model card's shapes: 7168x1536 + 1536x(128x192) + 7168x576 + 512x(128x256) + (128x128)x7168 +
    7168x4096 + 2048x7168 + 4 local experts x (7168x4096 + 2048x7168) = 407,306,240, each read and written."""
    _, layer = v3_layer
    t = [op for op in _ops(layer.backward) if op.name.endswith(".weight_t")]
    assert len(t) == 9
    assert sum(op.bytes for op in t) == 2 * 407_306_240
    assert not [op for op in _ops(layer.forward) + _ops(layer.weight) if "weight_t" in op.name]


def test_v3_gate_weight_gradient(v3_layer):
    """32,768 expert rows (4,096 tokens x top-8) of the 2,048-wide SwiGLU output and its gradient, BF16, and one
    FP32 per row: 32,768 x (2 x 2,048 x 2 + 4) = 268,566,528 bytes, backward only, one op a layer."""
    _, layer = v3_layer
    g = [op for op in _ops(layer.backward) if op.name.endswith("experts.gate_weight.grad")]
    assert [op.bytes for op in g] == [268_566_528]
    assert not [op for op in _ops(layer.forward) if "gate_weight" in op.name]


def test_per_tensor_recipes_keep_their_ops(v3_layer):
    """Neither op belongs to the per-tensor (Transformer Engine style) recipes or to BF16 training."""
    model, _ = v3_layer
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64, tp=1, schedule="dualpipe", comm_sms=20)
    for opts in (OpOptions(fp8_recipe="delayed"), OpOptions(fp8_recipe="current"), OpOptions(fp8=False)):
        passes = layer_passes(model, 3, p, 4096, opts)
        names = [op.name for op in _ops(passes.forward + passes.backward + passes.weight)]
        assert not [n for n in names if "weight_t" in n or "gate_weight" in n], opts


@pytest.mark.parametrize("name, family", [
    ("void cuda::batched_transpose<512, 128, 1, 1>(unsigned char const*, unsigned char*, int, int, int)",
     "weight_transpose"),
    ("void cuda::per_token_cast_to_fp8_with_fp8_special_fmt<__nv_bfloat16, 128, 3>(", "e5m6_cache"),
    ("void cuda::swiglu_weight_backward_with_weight_impl<__nv_bfloat16>(float*,", "swiglu"),
    ("void cuda::per_channel_cast_and_transpose<256, 128, true, true, true, false, true>(", "cast"),
    ("void dpsk::grouped_gemm::cuda::utils::transpose<512, 128, 4, 4>(", "cast"),
    ("void cuda::cast_back_impl<__nv_fp8x2_e4m3>(", "cast_back"),
    ("void layer_norm::ln_fwd_kernel<layer_norm::Kernel_traits<", "norm"),
    ("cuda::expand_to_fused_with_scales_impl(int4 const*,", "permute"),
    ("void cuda::reduce_fused_impl<__nv_bfloat16, false, false>(", "unpermute"),
    ("void cuda::get_fused_mapping<512>(long const*,", "routing"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>,", "other"),
])
def test_kernel_families(name, family):
    assert kernel_family(name) == family


def test_op_families():
    def fam(name):
        return op_family(Op(name, "elementwise", "B", bytes=1.0))
    assert fam("L3.attn.wo.weight_t") == "weight_transpose"
    assert fam("L3.attn.wo.quant") == "cast"
    assert fam("L3.mlp.experts.swiglu_in.dequant") == "cast_back"
    assert fam("L3.attn.o_cache.dequant") == "e5m6_cache"
    assert fam("L3.mlp.experts.gate_weight.grad") == "swiglu"
    assert fam("L3.attn.recompute.kv_norm") == "norm"
    assert fam("L3.mlp.experts.add") == "other"


def test_family_rows_conserve_time_and_bytes():
    """Two kernels of 1 ms and 3 ms against one op of 2 GB at 2 TB/s (1 ms at peak) and efficiency 0.5 (2 ms):
    residual 4 - 2 = 2 ms in that family; every other family is empty; the totals add up."""
    kernels = [("void cuda::reduce_fused_impl<x>", 1e-3), ("void cuda::reduce_fused_impl<y>", 3e-3)]
    rows = family_rows(kernels, [Op("L3.mlp.experts.unpermute", "elementwise", "F", bytes=2e9)], 2e12,
                       lambda op: 0.5)
    assert [r.family for r in rows] == [f for f, _, _, _ in FAMILIES]
    r = next(r for r in rows if r.family == "unpermute")
    assert (r.calls, r.ops) == (2, 1)
    assert r.trace_ms == pytest.approx(4.0) and r.peak_ms == pytest.approx(1.0)
    assert r.model_ms == pytest.approx(2.0) and r.residual_ms == pytest.approx(2.0)
    assert sum(x.calls for x in rows) == 2 and sum(x.bytes for x in rows) == 2e9
    with pytest.raises(ValueError, match="hbm_bw"):
        family_rows(kernels, [], 0.0, lambda op: 0.5)


TRACE = profile_trace()


def test_traced_pair_counts_match_the_new_ops():
    """In DeepSeek's trace: 36 FP8 weight transposes and 4 gate-weight backward kernels in the backward chunk, one
    per op of ours (counts only)."""
    if TRACE is None:
        pytest.skip(TRACE_ABSENT)
    from gpuhours.validation.memory_families import traced_pair_rows
    from gpuhours.validation.trace import load_trace
    trace = load_trace(TRACE)
    rows = {r.family: r for r in traced_pair_rows(trace)}
    assert rows["weight_transpose"].calls == rows["weight_transpose"].ops == 36
    assert sum(1 for e in trace.events if "swiglu_weight_backward" in e.name) == 4
