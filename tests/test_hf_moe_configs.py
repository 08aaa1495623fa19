"""Hugging Face config.json for Mixtral, Qwen2/Qwen3 (dense) and Qwen2-MoE/Qwen3-MoE against published figures.

Config dicts are typed from the published config.json files (architecture keys only; rope, dtype, token ids and
similar keys left out). Key names and defaults: transformers' configuration_<family>.py.
"""

from __future__ import annotations

import pytest

from gpuhours.workloads.hf_config import SUPPORTED_MODEL_TYPES, model_from_hf_config
from gpuhours.workloads.params import param_breakdown

# mistralai/Mixtral-8x7B-v0.1 config.json
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "_name_or_path": "mistralai/Mixtral-8x7B-v0.1",
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
    "hidden_act": "silu", "max_position_embeddings": 32768, "rope_theta": 1e6, "sliding_window": None,
    "tie_word_embeddings": False, "router_aux_loss_coef": 0.02,
}

# Qwen/Qwen1.5-MoE-A2.7B config.json
QWEN15_MOE_A27B = {
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
    "vocab_size": 151936, "decoder_sparse_step": 1, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4, "norm_topk_prob": False,
    "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21, "tie_word_embeddings": False,
}

# Qwen/Qwen3-8B config.json
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False,
}

# Qwen/Qwen2.5-7B config.json (model_type qwen2; same architecture as Qwen2-7B)
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False,
}

# Qwen/Qwen3-30B-A3B config.json
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 128, "vocab_size": 151936, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True,
    "tie_word_embeddings": False,
}


def rel(a: float, b: float) -> float:
    return abs(a - b) / b


# --- Mixtral -------------------------------------------------------------------------------------------------------

def test_mixtral_mapping():
    m = model_from_hf_config(MIXTRAL_8X7B)
    assert m.name == "Mixtral-8x7B-v0.1"
    a, moe = m.attention, m.moe
    assert (a.kind, a.n_heads, a.n_kv_heads, a.head_dim) == ("gqa", 32, 8, 128)
    assert (moe.n_routed_experts, moe.n_shared_experts, moe.expert_intermediate, moe.top_k) == (8, 0, 14336, 2)
    assert (moe.first_k_dense, moe.score_func, moe.n_groups, moe.route_scale) == (0, "softmax", 1, 1.0)
    assert m.n_moe_layers == 32 and m.dense_intermediate == 0 and not m.tie_embeddings
    assert m.ffn_activation == "swiglu" and m.vocab == 32000


def test_mixtral_8x7b_matches_announced_46_7b_total_12_9b_active():
    # Mistral AI, "Mixtral of experts" (2023-12-11): "46.7B total parameters but only uses 12.9B parameters per token".
    b = param_breakdown(model_from_hf_config(MIXTRAL_8X7B))
    assert rel(b.total, 46.7e9) < 0.015
    assert rel(b.active, 12.9e9) < 0.015


def test_mixtral_tied_and_head_dim():
    m = model_from_hf_config({**MIXTRAL_8X7B, "tie_word_embeddings": True, "head_dim": 64})
    assert m.tie_embeddings and m.attention.head_dim == 64


# --- Qwen dense ----------------------------------------------------------------------------------------------------

def test_qwen3_8b_matches_model_card():
    # Qwen/Qwen3-8B model card: "Number of Parameters: 8.2B, Number of Paramaters (Non-Embedding): 6.95B",
    # 36 layers, 32 Q / 8 KV heads. Q/K RMSNorms (2 x 128 per layer) are outside ModelSpec.
    m = model_from_hf_config(QWEN3_8B)
    assert (m.attention.n_heads, m.attention.n_kv_heads, m.attention.head_dim) == (32, 8, 128)
    assert m.moe is None and m.ffn_activation == "swiglu" and m.dense_intermediate == 12288
    b = param_breakdown(m)
    assert rel(b.total, 8.2e9) < 0.01
    assert rel(b.total - b.components["embedding"] - b.components["head"], 6.95e9) < 0.01


def test_qwen3_head_dim_defaults_to_128():
    # Qwen3Config.head_dim = 128 (not hidden / heads): Qwen3-8B's 4096 / 32 happens to agree, this one does not.
    cfg = {k: v for k, v in QWEN3_8B.items() if k != "head_dim"}
    assert model_from_hf_config({**cfg, "hidden_size": 2048}).attention.head_dim == 128


def test_qwen2_matches_qwen2_5_7b_model_card():
    # Qwen/Qwen2.5-7B model card: "Number of Parameters: 7.61B, Number of Paramaters (Non-Embedding): 6.53B",
    # 28 layers, 28 Q / 4 KV heads. The q/k/v biases (28 x 4608 numbers) are outside ModelSpec.
    m = model_from_hf_config(QWEN25_7B)
    assert (m.attention.n_heads, m.attention.n_kv_heads, m.attention.head_dim) == (28, 4, 128)
    b = param_breakdown(m)
    assert rel(b.total, 7.61e9) < 0.01
    assert rel(b.total - b.components["embedding"] - b.components["head"], 6.53e9) < 0.01


def test_qwen_kv_heads_default_as_transformers():
    cfg = {k: v for k, v in QWEN25_7B.items() if k != "num_key_value_heads"}
    assert model_from_hf_config({**cfg, "num_attention_heads": 32, "hidden_size": 4096}).attention.n_kv_heads == 32
    assert model_from_hf_config({**cfg, "num_key_value_heads": None}).attention.n_kv_heads == 28  # null: MHA


# --- Qwen MoE ------------------------------------------------------------------------------------------------------

def test_qwen1_5_moe_a2_7b_matches_model_card():
    # Qwen/Qwen1.5-MoE-A2.7B model card: "14.3B parameters in total and 2.7B activated parameters during runtime".
    # The 5632-wide shared expert is 4 x 1408: n_shared_experts = 4. Not counted (outside ModelSpec): the shared
    # expert's sigmoid gate (2048 per layer) and the q/k/v biases (3 x 2048 per layer), ~0.2M in all.
    m = model_from_hf_config(QWEN15_MOE_A27B)
    moe = m.moe
    assert (moe.n_routed_experts, moe.n_shared_experts, moe.expert_intermediate, moe.top_k) == (60, 4, 1408, 4)
    assert (moe.first_k_dense, moe.score_func) == (0, "softmax") and m.dense_intermediate == 0
    b = param_breakdown(m)
    assert rel(b.total, 14.3e9) < 0.05
    assert rel(b.active, 2.7e9) < 0.05


def test_qwen3_moe_mapping_and_30b_a3b_card():
    # Qwen/Qwen3-30B-A3B model card: "Number of Parameters: 30.5B in total and 3.3B activated", 128 experts, 8 active.
    m = model_from_hf_config(QWEN3_30B_A3B)
    moe = m.moe
    assert (moe.n_routed_experts, moe.n_shared_experts, moe.expert_intermediate, moe.top_k) == (128, 0, 768, 8)
    assert m.attention.head_dim == 128 and m.n_moe_layers == 48
    b = param_breakdown(m)
    assert rel(b.total, 30.5e9) < 0.01
    assert rel(b.active, 3.3e9) < 0.03


# --- refusals ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, word", [
    ({**QWEN15_MOE_A27B, "shared_expert_intermediate_size": 5000}, "shared_expert_intermediate_size"),
    ({**QWEN15_MOE_A27B, "decoder_sparse_step": 2}, "decoder_sparse_step"),
    ({**QWEN15_MOE_A27B, "mlp_only_layers": [0, 1]}, "mlp_only_layers"),
    ({**QWEN3_30B_A3B, "decoder_sparse_step": 2}, "decoder_sparse_step"),
    ({**QWEN3_30B_A3B, "mlp_only_layers": [3]}, "mlp_only_layers"),
    ({k: v for k, v in QWEN3_30B_A3B.items() if k != "num_experts"}, "num_experts"),
    ({k: v for k, v in QWEN15_MOE_A27B.items() if k != "moe_intermediate_size"}, "moe_intermediate_size"),
    ({k: v for k, v in MIXTRAL_8X7B.items() if k != "num_local_experts"}, "num_local_experts"),
    ({**MIXTRAL_8X7B, "num_experts_per_tok": 9}, "top_k"),
    ({**MIXTRAL_8X7B, "num_local_experts": 0}, "num_local_experts"),
    ({**MIXTRAL_8X7B, "num_experts_per_tok": "2"}, "num_experts_per_tok"),
    ({**QWEN3_8B, "num_key_value_heads": 7}, "n_kv_heads"),
])
def test_bad_configs_one_line(cfg, word):
    with pytest.raises(ValueError, match=word) as err:
        model_from_hf_config(cfg)
    assert "\n" not in str(err.value)


def test_unsupported_model_type_lists_supported():
    with pytest.raises(ValueError) as err:
        model_from_hf_config({**QWEN3_8B, "model_type": "gemma2"})
    msg = str(err.value)
    assert "\n" not in msg and "'gemma2'" in msg
    for t in SUPPORTED_MODEL_TYPES:
        assert t in msg
    assert {"mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"} <= set(SUPPORTED_MODEL_TYPES)


def test_shared_expert_zero_means_none():
    m = model_from_hf_config({**QWEN15_MOE_A27B, "shared_expert_intermediate_size": 0})
    assert m.moe.n_shared_experts == 0
