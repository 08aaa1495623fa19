"""ModelSpec.ffn_activation: a two-matrix GELU dense FFN (GPT-2 / GPT-3 / Megatron GPT) next to SwiGLU, checked
against closed forms written here (not derived from the code under test)."""

from __future__ import annotations

import dataclasses

import pytest

from gpuhours.workloads import params as P
from gpuhours.workloads.flops import flops_per_token
from gpuhours.workloads.hf_config import model_from_hf_config
from gpuhours.workloads.memory import layer_terms, load_recipe
from gpuhours.workloads.model import FFN_ACTIVATIONS, AttentionSpec, ModelSpec, MoESpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset, model_from_toml_text


def gpt3_175b(vocab: int = 51200) -> ModelSpec:
    h = 12288
    return ModelSpec("gpt3-175b", hidden=h, n_layers=96, vocab=vocab, dense_intermediate=4 * h,
                     attention=AttentionSpec("gqa", n_heads=96, n_kv_heads=96, head_dim=128),
                     tie_embeddings=True, ffn_activation="gelu")


H, I, SEQ = 64, 256, 32
SMALL = ModelSpec("small-gpt", hidden=H, n_layers=2, vocab=128, dense_intermediate=I,
                  attention=AttentionSpec("gqa", n_heads=4, n_kv_heads=4, head_dim=16), ffn_activation="gelu")


def _mlp_segment(passes, phase):
    segs = [s for s in passes if s.name == f"mlp({phase})"]
    assert len(segs) == 1
    return segs[0]


def _gemm_flops(seg):
    return sum(op.flops for op in seg.ops if op.kind == "gemm")


# -- the field ---------------------------------------------------------------------------------------------------
def test_default_is_swiglu_and_matrix_counts():
    assert FFN_ACTIVATIONS == ("swiglu", "gelu", "relu2")
    assert dataclasses.replace(SMALL, ffn_activation="swiglu").ffn_matrices == 3
    assert SMALL.ffn_matrices == 2
    assert load_preset("llama-3-70b").ffn_activation == "swiglu"


@pytest.mark.parametrize("bad", ["relu", "GELU", "", None, 2])
def test_bad_value_names_the_field(bad):
    with pytest.raises(ValueError, match="ffn_activation") as exc:
        dataclasses.replace(SMALL, ffn_activation=bad)
    assert "swiglu" in str(exc.value) and "gelu" in str(exc.value)


# -- parameters and FLOPs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("vocab", [51200, 50257])
def test_gpt3_175b_parameters(vocab):
    """12 L h^2 + V h (attention 4 h^2 + GELU FFN 8 h^2 per layer, tied embedding); Narayanan et al. 2021,
    Table 2: 174.6B. Norm weights (2h per layer + h) are the only other term and are counted exactly."""
    m = gpt3_175b(vocab)
    h, L = m.hidden, m.n_layers
    closed = 12 * L * h * h + vocab * h
    total = P.param_breakdown(m).total
    assert total == closed + 2 * h * L + h
    assert total == pytest.approx(174.6e9, rel=0.01)
    assert P.dense_ffn_params(m) == 8 * h * h


def test_gpt3_flops_per_token_dense_ffn_is_16_h_squared_per_layer():
    m = gpt3_175b()
    f = flops_per_token(m, 2048)
    assert f.dense_ffn == m.n_layers * 16 * m.hidden**2
    assert f.attention_proj == m.n_layers * 8 * m.hidden**2


def test_swiglu_preset_unchanged():
    """Llama 3 70B: the count its config gives (70,553,706,496), so the default path is untouched."""
    assert P.param_breakdown(load_preset("llama-3-70b")).total == 70_553_706_496


# -- ops ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fp8", [False, True])
def test_gelu_layer_forward_ffn_flops_per_token_is_16_h_squared(fp8):
    p = ParallelSpec(num_gpus=1)
    layer = layer_passes(SMALL, 0, p, SEQ, OpOptions(fp8=fp8))
    tokens = p.micro_batch_size * SEQ
    assert SMALL.dense_intermediate == 4 * H
    assert _gemm_flops(_mlp_segment(layer.forward, "F")) / tokens == 16 * H * H
    # backward-for-input and backward-for-weight repeat the forward GEMM FLOPs
    assert _gemm_flops(_mlp_segment(layer.backward, "B")) / tokens == 16 * H * H
    assert _gemm_flops(_mlp_segment(layer.weight, "W")) / tokens == 16 * H * H


def test_gelu_ops_shapes_and_activation_bytes():
    p = ParallelSpec(num_gpus=2, tp=2)
    layer = layer_passes(SMALL, 0, p, SEQ, OpOptions(fp8=False))
    i = I // 2
    fwd = {op.name.split(".", 2)[-1]: op for op in _mlp_segment(layer.forward, "F").ops}
    assert fwd["ffn.w1"].gemm.n == i and fwd["ffn.w1"].gemm.k == H
    assert fwd["ffn.w2"].gemm.n == H and fwd["ffn.w2"].gemm.k == i
    assert "ffn.w13" not in fwd and "ffn.swiglu" not in fwd
    assert fwd["ffn.gelu"].bytes == 2 * SEQ * i * 2  # read i, write i (BF16)
    bwd = {op.name.split(".", 2)[-1]: op for op in _mlp_segment(layer.backward, "B").ops}
    assert bwd["ffn.gelu"].bytes == 3 * SEQ * i * 2  # read input and output grad, write input grad
    assert not any(op.kind == "elementwise" for op in _mlp_segment(layer.weight, "W").ops)


def test_swiglu_layer_ops_unchanged():
    m = dataclasses.replace(SMALL, ffn_activation="swiglu")
    layer = layer_passes(m, 0, ParallelSpec(num_gpus=1), SEQ, OpOptions(fp8=False))
    seg = _mlp_segment(layer.forward, "F")
    assert _gemm_flops(seg) / SEQ == 2 * 3 * H * I
    ops = {op.name.split(".", 2)[-1]: op for op in seg.ops}
    assert ops["ffn.w13"].gemm.n == 2 * I and ops["ffn.swiglu"].bytes == 3 * SEQ * I * 2


def test_shared_experts_stay_swiglu():
    moe = MoESpec(n_routed_experts=4, n_shared_experts=1, expert_intermediate=32, top_k=2, first_k_dense=1)
    m = dataclasses.replace(SMALL, moe=moe)
    p = ParallelSpec(num_gpus=1)
    dense = {op.name.split(".", 2)[-1] for op in _mlp_segment(layer_passes(m, 0, p, SEQ).forward, "F").ops}
    moe_ops = {op.name.split(".", 2)[-1] for op in _mlp_segment(layer_passes(m, 1, p, SEQ).forward, "F").ops}
    assert "ffn.w1" in dense and "ffn.gelu" in dense
    assert "shared.w13" in moe_ops and "shared.swiglu" in moe_ops
    assert P.expert_params(m) == 3 * H * 32


# -- memory ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fp8", [False, True])
def test_cached_ffn_activation_input(fp8):
    recipe = load_recipe()
    c = recipe.cached_input_bytes(fp8)
    gelu = layer_terms(SMALL, 0, recipe, fp8)
    swiglu = layer_terms(dataclasses.replace(SMALL, ffn_activation="swiglu"), 0, recipe, fp8)
    assert gelu["ffn.gelu_in"] == c * I and "ffn.swiglu_in" not in gelu
    assert swiglu["ffn.swiglu_in"] == c * 2 * I and "ffn.gelu_in" not in swiglu
    assert sum(swiglu.values()) - sum(gelu.values()) == pytest.approx(c * I)


# -- model files -------------------------------------------------------------------------------------------------
TOML = """
[model]
name = "gpt3-small"
hidden = 768
n_layers = 12
vocab = 50257
dense_intermediate = 3072
tie_embeddings = true
ffn_activation = "{act}"

[attention]
kind = "gqa"
n_heads = 12
n_kv_heads = 12
head_dim = 64
"""


def test_toml_accepts_ffn_activation():
    m = model_from_toml_text(TOML.format(act="gelu"))
    assert m.ffn_activation == "gelu"
    # GPT-3 Small (125M in Brown et al. 2020): 12 L h^2 + V h = 123.5M without biases and position embeddings
    assert P.param_breakdown(m).total == 12 * 12 * 768**2 + 50257 * 768 + 2 * 768 * 12 + 768
    with pytest.raises(ValueError, match="ffn_activation"):
        model_from_toml_text(TOML.format(act="relu"))


HF_NEOX = {
    "_name_or_path": "EleutherAI/pythia-410m", "model_type": "gpt_neox", "hidden_size": 1024,
    "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096, "vocab_size": 50304,
    "hidden_act": "gelu", "tie_word_embeddings": False, "use_parallel_residual": True, "rotary_pct": 0.25,
}


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"])
def test_hf_gpt_neox_maps_to_gelu(act):
    m = model_from_hf_config({**HF_NEOX, "hidden_act": act})
    assert m.ffn_activation == "gelu" and m.moe is None
    assert (m.attention.n_kv_heads, m.attention.head_dim) == (16, 64)
    assert P.dense_ffn_params(m) == 2 * 1024 * 4096


def test_hf_activation_function_key_and_refusals():
    cfg = {k: v for k, v in HF_NEOX.items() if k != "hidden_act"}
    assert model_from_hf_config({**cfg, "activation_function": "gelu_new"}).ffn_activation == "gelu"
    with pytest.raises(ValueError, match="hidden_act") as exc:
        model_from_hf_config({**HF_NEOX, "hidden_act": "relu"})
    assert "\n" not in str(exc.value)


def test_hf_gated_families_stay_swiglu():
    llama = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 160,
             "num_attention_heads": 4, "vocab_size": 128, "hidden_act": "silu"}
    assert model_from_hf_config(llama).ffn_activation == "swiglu"
    assert model_from_hf_config({**llama, "model_type": "mistral"}).ffn_activation == "swiglu"


# -- validation block --------------------------------------------------------------------------------------------
def test_validation_model_builds_a_gelu_ffn():
    torch = pytest.importorskip("torch")
    from gpuhours.validation.block import DeepSeekModel, GeluMLP, scaled_down

    v3 = load_preset("deepseek-v3")
    tiny = dataclasses.replace(scaled_down(v3), ffn_activation="gelu")
    model = DeepSeekModel(tiny)
    dense = [blk.ffn for blk in model.layers if not blk.is_moe]
    assert dense and all(isinstance(f, GeluMLP) for f in dense)
    assert sum(p.numel() for p in dense[0].parameters()) == P.dense_ffn_params(tiny)
    # parameters + the routers' e_score_correction_bias (a buffer here, counted by params.py)
    held = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert held == P.param_breakdown(tiny).total_with_mtp
    torch.manual_seed(0)
    out = model(torch.randint(0, tiny.vocab, (2, 8)))
    assert torch.isfinite(out["loss"])
