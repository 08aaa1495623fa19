"""Presets, the preset TOML format, and Hugging Face config.json reading (dicts written here; no network)."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from gpuhours.validation.external import REFERENCE_ABSENT, reference_sheet
from gpuhours.workloads.hf_config import model_from_hf_config
from gpuhours.workloads.model import AttentionSpec, MoESpec
from gpuhours.workloads.presets import list_presets, load_model_file, load_preset

PRESET_DIR = Path(str(resources.files("gpuhours.workloads") / "presets"))
REFERENCE = reference_sheet()

# Field values as in DeepSeek-V3's Hugging Face config.json (subset that matters here).
HF_V3 = {
    "_name_or_path": "deepseek-ai/DeepSeek-V3", "model_type": "deepseek_v3",
    "hidden_size": 7168, "num_hidden_layers": 61, "intermediate_size": 18432, "moe_intermediate_size": 2048,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
    "first_k_dense_replace": 3, "moe_layer_freq": 1, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "num_attention_heads": 128,
    "num_key_value_heads": 128, "vocab_size": 129280, "num_nextn_predict_layers": 1, "scoring_func": "sigmoid",
    "routed_scaling_factor": 2.5, "topk_method": "noaux_tc", "tie_word_embeddings": False,
}
HF_V2 = {
    "model_type": "deepseek_v2", "hidden_size": 5120, "num_hidden_layers": 60, "intermediate_size": 12288,
    "moe_intermediate_size": 1536, "n_routed_experts": 160, "n_shared_experts": 2, "num_experts_per_tok": 6,
    "n_group": 8, "topk_group": 3, "first_k_dense_replace": 1, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "num_attention_heads": 128,
    "vocab_size": 102400, "scoring_func": "softmax", "routed_scaling_factor": 16.0, "tie_word_embeddings": False,
}
HF_LLAMA = {
    "model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672,
    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
}


def test_list_presets():
    assert {"deepseek-v3", "deepseek-v2", "llama-3-70b"} <= set(list_presets())
    assert list_presets() == sorted(list_presets())


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-v2", "llama-3-70b"])
def test_every_preset_has_provenance_and_loads(name):
    doc = tomllib.loads((PRESET_DIR / f"{name}.toml").read_text())
    assert doc["source"]["config"] and doc["source"]["published"]
    model = load_preset(name)
    assert model.name == name
    assert load_model_file(PRESET_DIR / f"{name}.toml") == model
    assert load_preset(name.upper()) == model


def test_v3_preset_fields():
    m = load_preset("deepseek-v3")
    assert (m.hidden, m.n_layers, m.vocab, m.dense_intermediate, m.mtp_depth, m.tie_embeddings) == (
        7168, 61, 129280, 18432, 1, False)
    assert m.attention == AttentionSpec(kind="mla", n_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                                        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    assert m.moe == MoESpec(n_routed_experts=256, n_shared_experts=1, expert_intermediate=2048, top_k=8,
                            n_groups=8, topk_groups=4, first_k_dense=3, score_func="sigmoid", route_scale=2.5)
    assert (m.n_dense_layers, m.n_moe_layers) == (3, 58)


def test_v3_preset_agrees_with_reference_sheet():
    if REFERENCE is None:
        pytest.skip(REFERENCE_ABSENT)
    text = REFERENCE.read_text()
    m = load_preset("deepseek-v3")
    assert f"hidden size | {m.hidden}" in text
    assert f"{m.n_layers}; the first {m.moe.first_k_dense} have a dense FFN (intermediate {m.dense_intermediate})" in text
    assert f"{m.vocab:,}" in text
    assert re.search(rf"{m.moe.n_shared_experts} shared \+ {m.moe.n_routed_experts} routed experts, "
                     rf"expert intermediate {m.moe.expert_intermediate}, {m.moe.top_k} routed", text)


def test_v2_and_llama_preset_fields():
    v2 = load_preset("deepseek-v2")
    assert (v2.hidden, v2.n_layers, v2.vocab, v2.mtp_depth, v2.moe.first_k_dense) == (5120, 60, 102400, 0, 1)
    assert (v2.moe.n_routed_experts, v2.moe.n_shared_experts, v2.moe.top_k, v2.moe.topk_groups) == (160, 2, 6, 3)
    assert (v2.moe.score_func, v2.moe.route_scale) == ("softmax", 16.0)
    llama = load_preset("llama-3-70b")
    assert llama.moe is None
    assert (llama.attention.n_heads, llama.attention.n_kv_heads, llama.attention.head_dim) == (64, 8, 128)


def test_unknown_preset_names_the_allowed_values():
    with pytest.raises(ValueError) as err:
        load_preset("gpt-5")
    msg = str(err.value)
    assert "gpt-5" in msg and "deepseek-v3" in msg and "llama-3-70b" in msg and "\n" not in msg


# --- Hugging Face config.json -------------------------------------------------------------------------------------

def test_hf_v3_matches_preset():
    m = model_from_hf_config(HF_V3)
    assert m.name == "DeepSeek-V3"
    assert dataclasses.replace(m, name="deepseek-v3") == load_preset("deepseek-v3")


def test_hf_v2_matches_preset():
    assert model_from_hf_config(HF_V2, name="deepseek-v2") == load_preset("deepseek-v2")


def test_hf_llama_matches_preset_with_and_without_head_dim():
    assert model_from_hf_config(HF_LLAMA, name="llama-3-70b") == load_preset("llama-3-70b")
    assert model_from_hf_config({**HF_LLAMA, "head_dim": 128}, name="llama-3-70b") == load_preset("llama-3-70b")
    odd = model_from_hf_config({**HF_LLAMA, "head_dim": 96})
    assert odd.attention.head_dim == 96


def test_hf_null_q_lora_rank_and_dense_deepseek():
    lite = model_from_hf_config({**HF_V2, "q_lora_rank": None, "n_group": 1, "topk_group": 1})
    assert lite.attention.q_lora_rank == 0 and lite.moe.n_groups == 1
    dense = model_from_hf_config({**HF_V2, "n_routed_experts": None})
    assert dense.moe is None


def test_hf_tied_and_mha_defaults():
    cfg = {k: v for k, v in HF_LLAMA.items() if k != "num_key_value_heads"}
    m = model_from_hf_config({**cfg, "tie_word_embeddings": True})
    assert m.tie_embeddings and m.attention.n_kv_heads == 64


@pytest.mark.parametrize("cfg, word", [
    ({**HF_LLAMA, "model_type": "mixtral"}, "model_type"),
    ({k: v for k, v in HF_V3.items() if k != "kv_lora_rank"}, "kv_lora_rank"),
    ({**HF_V3, "moe_layer_freq": 2}, "moe_layer_freq"),
    ({**HF_V3, "hidden_size": "7168"}, "hidden_size"),
    ({**HF_V3, "scoring_func": "relu"}, "score_func"),
    ({**HF_LLAMA, "num_key_value_heads": 7}, "n_kv_heads"),
])
def test_hf_bad_configs(cfg, word):
    with pytest.raises(ValueError, match=word) as err:
        model_from_hf_config(cfg)
    assert "\n" not in str(err.value)


# --- load_model_file ----------------------------------------------------------------------------------------------

def test_load_json_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HF_V3))
    assert dataclasses.replace(load_model_file(path), name="deepseek-v3") == load_preset("deepseek-v3")


def test_load_toml_round_trip(tmp_path):
    text = (PRESET_DIR / "deepseek-v2.toml").read_text().replace('name = "deepseek-v2"', 'name = "mine"')
    path = tmp_path / "mine.toml"
    path.write_text(text)
    assert load_model_file(path) == dataclasses.replace(load_preset("deepseek-v2"), name="mine")


GOOD = (PRESET_DIR / "llama-3-70b.toml").read_text()


@pytest.mark.parametrize("name, text, word", [
    ("a.toml", "[model\nname = 1", "malformed TOML"),
    ("a.toml", GOOD.replace("n_kv_heads = 8", "n_kv_head = 8"), "n_kv_head"),
    ("a.toml", GOOD.replace("[attention]", "[attn]"), "attn"),
    ("a.toml", GOOD.replace("n_layers = 80", "n_layers = -80"), "n_layers"),
    ("a.toml", GOOD.replace("vocab = 128256", ""), "vocab"),
    ("a.json", "{not json", "malformed JSON"),
    ("a.json", "[1, 2]", "JSON object"),
    ("a.yaml", "hidden: 1", "allowed values are .toml, .json"),
])
def test_bad_files_raise_one_line_value_error(tmp_path, name, text, word):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(word)) as err:
        load_model_file(path)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_model_file(tmp_path / "nope.toml")
