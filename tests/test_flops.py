"""Training FLOPs per token against the reference figures, the 6N rule and the causal-attention closed form."""

from __future__ import annotations

import dataclasses

import pytest

from gpuhours.workloads import params as P
from gpuhours.workloads.flops import attention_core_flops, flops_per_token, matmul_params_active
from gpuhours.workloads.presets import load_preset

V3 = load_preset("deepseek-v3")
V2 = load_preset("deepseek-v2")
LLAMA = load_preset("llama-3-70b")


def rel(a: float, b: float) -> float:
    return abs(a - b) / b


def test_v3_reference_flops_at_4k():
    assert rel(flops_per_token(V3, 4096, include_mtp=False).training_per_token, 250e9) < 0.02
    assert rel(flops_per_token(V3, 4096, include_mtp=True).training_per_token, 261e9) < 0.02


@pytest.mark.parametrize("model", [V3, V2, LLAMA], ids=lambda m: m.name)
@pytest.mark.parametrize("seq_len", [1, 4096, 32768])
def test_matmul_part_is_exactly_6n(model, seq_len):
    for include_mtp in (False, True):
        f = flops_per_token(model, seq_len, include_mtp=include_mtp)
        n = matmul_params_active(model, include_mtp=include_mtp)
        assert f.training_per_token - 3 * (f.attention_core + f.mtp_attention_core) == 6 * n
        assert 3 * f.matmul_forward == 6 * n


def test_attention_core_closed_form():
    L = 4096
    f = flops_per_token(V3, L, include_mtp=False)
    assert f.attention_core == 61 * 2 * 128 * (192 + 128) * L // 2
    assert flops_per_token(LLAMA, L).attention_core == 80 * 2 * 64 * (128 + 128) * L // 2


@pytest.mark.parametrize("L", [1, 7, 64, 1000])
def test_attention_core_is_the_causal_half(L):
    # Count causal score/value work query by query: query i (1-based) sees i keys.
    per_key = 2 * 128 * (192 + 128)
    exact = sum(i * per_key for i in range(1, L + 1)) / L  # per token, per layer
    assert attention_core_flops(V3, L) == pytest.approx(exact * L / (L + 1), rel=1e-12)


def test_matmul_part_does_not_depend_on_seq_len_and_core_is_linear():
    a, b = flops_per_token(V3, 2048), flops_per_token(V3, 8192)
    assert a.matmul_forward == b.matmul_forward
    assert b.attention_core == 4 * a.attention_core
    assert b.mtp_attention_core == 4 * a.mtp_attention_core


def test_llama_equals_6n_plus_attention_from_param_counts():
    L = 8192
    b = P.param_breakdown(LLAMA)
    n = b.total - b.components["embedding"] - b.components["norms"]  # untied: head stays, lookup is free
    attention = 3 * 80 * 64 * (128 + 128) * L
    assert flops_per_token(LLAMA, L).training_per_token == 6 * n + attention


def test_v3_active_matmul_params_from_param_counts():
    b = P.param_breakdown(V3)
    norms = b.active_components["norms"] + V3.n_layers * P.attention_norm_params(V3)
    bias = V3.n_moe_layers * V3.moe.n_routed_experts
    assert matmul_params_active(V3) == b.active - b.components["embedding"] - norms - bias


def test_mtp_adds_one_block_the_projection_and_a_head_pass():
    L = 4096
    with_mtp, without = flops_per_token(V3, L, True), flops_per_token(V3, L, False)
    h, v = V3.hidden, V3.vocab
    m = V3.moe
    block = P.attention_matmul_params(V3) + (m.n_shared_experts + m.top_k) * P.expert_params(V3) + m.n_routed_experts * h
    assert with_mtp.mtp_matmul == 2 * (block + 2 * h * h + v * h)
    assert with_mtp.mtp_attention_core == without.attention_core // 61
    assert with_mtp.training_per_token - without.training_per_token == 3 * with_mtp.mtp
    assert without.mtp == 0


def test_embedding_lookup_is_free_and_tied_head_still_costs():
    tied = dataclasses.replace(LLAMA, tie_embeddings=True)
    assert flops_per_token(tied, 4096).training_per_token == flops_per_token(LLAMA, 4096).training_per_token
    assert flops_per_token(LLAMA, 4096).head == 2 * 128256 * 8192


def test_routed_experts_count_top_k_only():
    f = flops_per_token(V3, 4096)
    assert f.routed_experts == 2 * 58 * 8 * 3 * 7168 * 2048
    assert f.router == 2 * 58 * 256 * 7168
    assert f.dense_ffn == 2 * 3 * 3 * 7168 * 18432


def test_dense_model_has_no_moe_or_mtp_flops():
    f = flops_per_token(LLAMA, 4096)
    assert f.shared_experts == f.routed_experts == f.router == f.mtp == 0


@pytest.mark.parametrize("seq_len", [0, -5, 4096.0, True])
def test_bad_seq_len(seq_len):
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(V3, seq_len)
