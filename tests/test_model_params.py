"""Parameter counts against published figures and closed forms; ModelSpec validation."""

from __future__ import annotations

import dataclasses

import pytest

from gpuhours.workloads import params as P
from gpuhours.workloads.model import AttentionSpec, MoESpec
from gpuhours.workloads.presets import load_preset

V3 = load_preset("deepseek-v3")
V2 = load_preset("deepseek-v2")
LLAMA = load_preset("llama-3-70b")


def rel(a: float, b: float) -> float:
    return abs(a - b) / b


# --- DeepSeek-V3: published 671B / 37B, per-layer figures of the reference --------------------------------------

def test_v3_total_matches_published_671b():
    b = P.param_breakdown(V3)
    assert rel(b.total, 671e9) < 0.005
    assert rel(b.total, 671.03e9) < 5e-5  # reference: "total from config 671.03B"


def test_v3_activated_matches_published_37b():
    b = P.param_breakdown(V3)
    assert rel(b.active, 37e9) < 0.03
    assert rel(b.active, 36.7e9) < 0.03  # README_WEIGHTS figure


def test_v3_per_layer_figures():
    assert round(P.attention_params(V3) / 1e6, 1) == 187.1
    assert round(P.dense_ffn_params(V3) / 1e6, 1) == 396.4
    assert round(P.expert_params(V3) / 1e6, 2) == 44.04


def test_v3_mla_closed_form():
    h, H = 7168, 128
    projections = h * 1536 + 1536 * H * (128 + 64) + h * (512 + 64) + 512 * H * (128 + 128) + H * 128 * h
    assert P.attention_matmul_params(V3) == projections
    assert P.attention_params(V3) == projections + 1536 + 512  # q and kv latent norms


def test_v3_mtp_is_separate_and_about_11_5b():
    b = P.param_breakdown(V3)
    assert b.components["mtp"] == b.mtp_unique == P.mtp_params(V3)
    assert rel(b.mtp_unique, 11.5e9) < 0.015
    # The Hugging Face checkpoint (685B) stores the MTP module with its own copies of embedding and head.
    assert rel(b.total_with_mtp + P.embedding_params(V3) + P.head_params(V3), 685e9) < 0.005
    # MTP unique = one MoE block + 2h*h projection + 3 norms.
    h = V3.hidden
    assert b.mtp_unique == P.layer_params(V3, V3.n_layers - 1) + 2 * h * h + 3 * h


def test_v3_router_counts_gate_and_bias():
    assert P.router_params(V3) == 256 * 7168 + 256
    assert P.param_breakdown(V3).components["router"] == 58 * (256 * 7168 + 256)
    assert P.router_params(V2) == 160 * 5120  # softmax scores, no correction bias


# --- conservation ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [V3, V2, LLAMA], ids=lambda m: m.name)
def test_components_sum_to_total_and_layers_sum_to_total(model):
    b = P.param_breakdown(model)
    assert sum(v for k, v in b.components.items() if k != "mtp") == b.total
    assert sum(b.active_components.values()) == b.active
    layers = sum(P.layer_params(model, i) for i in range(model.n_layers))
    assert layers + P.embedding_params(model) + P.head_params(model) + model.hidden == b.total


@pytest.mark.parametrize("model", [V3, V2], ids=lambda m: m.name)
def test_active_drops_exactly_the_unrouted_experts(model):
    b = P.param_breakdown(model)
    m = model.moe
    unrouted = model.n_moe_layers * (m.n_routed_experts - m.top_k) * P.expert_params(model)
    assert b.total - b.active == unrouted
    assert P.moe_layer_params(model) - P.moe_layer_active_params(model) == unrouted // model.n_moe_layers


# --- DeepSeek-V2 and Llama-3-70B -----------------------------------------------------------------------------------

def test_v2_matches_published_236b_21b():
    b = P.param_breakdown(V2)
    assert rel(b.total, 236e9) < 0.01
    assert rel(b.active, 21e9) < 0.03
    assert b.mtp_unique == 0


def test_llama_3_70b_closed_form_and_published():
    h, v, inter, L = 8192, 128256, 28672, 80
    per_layer = 2 * h * h + 2 * h * (8 * 128) + 3 * h * inter + 2 * h
    expected = L * per_layer + 2 * v * h + h
    b = P.param_breakdown(LLAMA)
    assert b.total == expected
    assert rel(b.total, 70.6e9) < 0.005
    assert b.active == b.total


def test_tied_embeddings_drop_the_head():
    tied = dataclasses.replace(LLAMA, tie_embeddings=True)
    assert P.param_breakdown(LLAMA).total - P.param_breakdown(tied).total == 128256 * 8192


def test_mla_without_query_compression():
    att = dataclasses.replace(V2.attention, q_lora_rank=0)
    lite = dataclasses.replace(V2, attention=att)
    h, H = 5120, 128
    expected = h * H * 192 + h * (512 + 64) + 512 * H * 256 + H * 128 * h
    assert P.attention_matmul_params(lite) == expected
    assert P.attention_params(lite) == expected + 512  # only the kv latent norm


# --- errors --------------------------------------------------------------------------------------------------------

def test_dense_model_has_no_experts():
    with pytest.raises(ValueError, match="moe"):
        P.expert_params(LLAMA)


@pytest.mark.parametrize("index", [-1, 61, 2.0, True])
def test_layer_index_out_of_range(index):
    with pytest.raises(ValueError, match="layer_index"):
        P.layer_params(V3, index)


def test_layer_kinds():
    assert P.layer_params(V3, 2) == P.attention_params(V3) + P.dense_ffn_params(V3) + 2 * 7168
    assert P.layer_params(V3, 3) == P.attention_params(V3) + P.moe_layer_params(V3) + 2 * 7168


@pytest.mark.parametrize("make, field", [
    (lambda: AttentionSpec(kind="mha", n_heads=8, n_kv_heads=8, head_dim=64), "kind"),
    (lambda: AttentionSpec(kind="gqa", n_heads=8, n_kv_heads=3, head_dim=64), "n_kv_heads"),
    (lambda: AttentionSpec(kind="gqa", n_heads=8, head_dim=64), "n_kv_heads"),
    (lambda: AttentionSpec(kind="mla", n_heads=8, qk_nope_head_dim=64, v_head_dim=64), "kv_lora_rank"),
    (lambda: MoESpec(n_routed_experts=8, n_shared_experts=0, expert_intermediate=64, top_k=9), "top_k"),
    (lambda: MoESpec(n_routed_experts=8, n_shared_experts=0, expert_intermediate=64, top_k=2, n_groups=3), "n_groups"),
    (lambda: MoESpec(n_routed_experts=8, n_shared_experts=0, expert_intermediate=64, top_k=2, n_groups=4,
                     topk_groups=5), "topk_groups"),
    (lambda: MoESpec(n_routed_experts=8, n_shared_experts=0, expert_intermediate=64, top_k=4, n_groups=4,
                     topk_groups=1), "top_k"),
    (lambda: MoESpec(n_routed_experts=8, n_shared_experts=0, expert_intermediate=64, top_k=2,
                     score_func="relu"), "score_func"),
    (lambda: dataclasses.replace(V3, n_layers=0), "n_layers"),
    (lambda: dataclasses.replace(V3, hidden=7168.0), "hidden"),
    (lambda: dataclasses.replace(LLAMA, dense_intermediate=0), "dense_intermediate"),
    (lambda: dataclasses.replace(V3, n_layers=2), "first_k_dense"),
])
def test_bad_specs_raise_one_line_value_error(make, field):
    with pytest.raises(ValueError, match=field) as err:
        make()
    assert "\n" not in str(err.value)
