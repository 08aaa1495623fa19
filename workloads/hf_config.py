"""Build a ModelSpec from a Hugging Face `config.json` (already parsed into a dict).

Two families are read:
- DeepSeek-V2 / V3 (`model_type` deepseek_v2 / deepseek_v3): MLA attention (`kv_lora_rank` present) and DeepSeekMoE
  (`n_routed_experts` present and not null);
- Llama-style dense models (`model_type` llama / mistral): grouped-query attention with `num_key_value_heads`
  and `head_dim` (or hidden_size / num_attention_heads when absent);
- GPT-NeoX (`model_type` gpt_neox): multi-head attention and a two-matrix GELU FFN (`ffn_activation = "gelu"`).
  Read with the same keys as Llama; its biases, LayerNorms, parallel residual and partial rotary embedding are
  outside ModelSpec and ignored (a fraction of a percent of the parameters).
FFN: the gated families (deepseek, llama, mistral) have a SwiGLU FFN (`hidden_act` is not checked: a gated FFN
with another activation has the same matrices); gpt_neox reads `hidden_act` (or `activation_function`), which must
be one of GELU_ACTS. A missing `model_type` is inferred from the fields. Anything else raises ValueError.
"""

from __future__ import annotations

from typing import Any, Mapping

from gpuhours.workloads.model import AttentionSpec, ModelSpec, MoESpec

SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "llama", "mistral", "gpt_neox")
GATED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "llama", "mistral")  # FFN: w2 (act(w1 x) * w3 x)
GELU_ACTS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")  # transformers' names of GELU variants


def _get(cfg: Mapping[str, Any], key: str, default: Any = ...) -> Any:
    if cfg.get(key) is None:  # absent or null
        if default is ...:
            raise ValueError(f"config.json: missing field {key!r}")
        return default
    return cfg[key]


def _int(cfg: Mapping[str, Any], key: str, default: Any = ...) -> int:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config.json: field {key!r} = {value!r}: expected an integer")
    return value


def model_from_hf_config(cfg: Mapping[str, Any], name: str | None = None) -> ModelSpec:
    """ModelSpec from a Hugging Face config dict; `name` defaults to `_name_or_path` or `model_type`."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"config.json: expected a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type") or ("deepseek_v3" if "kv_lora_rank" in cfg else "llama")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config.json: model_type = {model_type!r}: allowed values are {', '.join(SUPPORTED_MODEL_TYPES)}")
    if name is None:
        name = str(cfg.get("_name_or_path") or model_type).rstrip("/").split("/")[-1] or model_type

    hidden = _int(cfg, "hidden_size")
    n_heads = _int(cfg, "num_attention_heads")
    if model_type.startswith("deepseek"):
        attention = AttentionSpec(
            kind="mla",
            n_heads=n_heads,
            q_lora_rank=_int(cfg, "q_lora_rank", 0),  # null: queries are projected directly
            kv_lora_rank=_int(cfg, "kv_lora_rank"),
            qk_nope_head_dim=_int(cfg, "qk_nope_head_dim"),
            qk_rope_head_dim=_int(cfg, "qk_rope_head_dim"),
            v_head_dim=_int(cfg, "v_head_dim"),
        )
        moe = _deepseek_moe(cfg, default_score="sigmoid" if model_type == "deepseek_v3" else "softmax")
        mtp_depth = _int(cfg, "num_nextn_predict_layers", 0)
    else:
        attention = AttentionSpec(
            kind="gqa",
            n_heads=n_heads,
            n_kv_heads=_int(cfg, "num_key_value_heads", n_heads),
            head_dim=_int(cfg, "head_dim", hidden // n_heads),
        )
        moe = None
        mtp_depth = 0

    ffn_activation = _ffn_activation(cfg, model_type)
    tie = _get(cfg, "tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ValueError(f"config.json: field 'tie_word_embeddings' = {tie!r}: allowed values are true, false")
    return ModelSpec(
        name=name,
        hidden=hidden,
        n_layers=_int(cfg, "num_hidden_layers"),
        vocab=_int(cfg, "vocab_size"),
        dense_intermediate=_int(cfg, "intermediate_size", 0),
        attention=attention,
        moe=moe,
        mtp_depth=mtp_depth,
        tie_embeddings=tie,
        ffn_activation=ffn_activation,
    )


def _ffn_activation(cfg: Mapping[str, Any], model_type: str) -> str:
    """ModelSpec.ffn_activation: "swiglu" for the gated families, "gelu" for an ungated FFN with a GELU variant."""
    if model_type in GATED_MODEL_TYPES:
        return "swiglu"
    key = "hidden_act" if cfg.get("hidden_act") is not None else "activation_function"
    act = _get(cfg, key, "gelu")  # GPTNeoXConfig's default
    if act not in GELU_ACTS:
        raise ValueError(f"config.json: field {key!r} = {act!r}: allowed values are {', '.join(GELU_ACTS)}")
    return "gelu"


def _deepseek_moe(cfg: Mapping[str, Any], default_score: str) -> MoESpec | None:
    if cfg.get("n_routed_experts") is None:
        return None
    freq = _int(cfg, "moe_layer_freq", 1)
    if freq != 1:
        raise ValueError(f"config.json: moe_layer_freq = {freq}: allowed values are 1 (every layer after the dense ones)")
    scale = _get(cfg, "routed_scaling_factor", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"config.json: field 'routed_scaling_factor' = {scale!r}: expected a number")
    return MoESpec(
        n_routed_experts=_int(cfg, "n_routed_experts"),
        n_shared_experts=_int(cfg, "n_shared_experts", 0),
        expert_intermediate=_int(cfg, "moe_intermediate_size"),
        top_k=_int(cfg, "num_experts_per_tok"),
        n_groups=_int(cfg, "n_group", 1),
        topk_groups=_int(cfg, "topk_group", 1),
        first_k_dense=_int(cfg, "first_k_dense_replace", 0),
        score_func=_get(cfg, "scoring_func", default_score),  # transformers' defaults per family
        route_scale=float(scale),
    )
