"""Build a ModelSpec from a Hugging Face `config.json` (already parsed into a dict).

Two families are read:
- DeepSeek-V2 / V3 (`model_type` deepseek_v2 / deepseek_v3): MLA attention (`kv_lora_rank` present) and DeepSeekMoE
  (`n_routed_experts` present and not null);
- Llama-style dense models (`model_type` llama / mistral): grouped-query attention with `num_key_value_heads`
  and `head_dim` (or hidden_size / num_attention_heads when absent);
- GPT-NeoX (`model_type` gpt_neox): multi-head attention and a two-matrix FFN (`hidden_act`: a GELU variant or
  relu2). Read with the same keys as Llama, plus LayerNorm (`norm = "layernorm"`), `use_parallel_residual`
  (GPTNeoXConfig default true: `parallel_block`) and `rotary_pct` (default 0.25: `rotary_pct`); its linear
  biases are outside ModelSpec and ignored (a fraction of a percent of the parameters).
- Nemotron (`model_type` nemotron, NemotronConfig; Nemotron-4, arXiv 2402.16819): grouped-query attention read as
  for Llama, a two-matrix squared-ReLU FFN (`hidden_act` default "relu2"), LayerNorm1P (a LayerNorm whose gain is
  stored as gain - 1: a gain and a bias, `norm = "layernorm"`) and partial rotary embeddings
  (`partial_rotary_factor`, default 0.5). Sequential blocks.
- Any GQA family: `partial_rotary_factor` (transformers' partial RoPE) is read as `rotary_pct` where present.
- Qwen2 / Qwen3 dense (`model_type` qwen2 / qwen3): grouped-query attention read as for Llama; Qwen3's `head_dim`
  defaults to 128 (Qwen3Config), Qwen2's to hidden_size / num_attention_heads. Qwen2's q/k/v biases and Qwen3's
  q/k RMSNorms are outside ModelSpec (well under 0.1 % of the parameters).
- Mixtral (`model_type` mixtral): grouped-query attention + a MoE FFN in every layer: `num_local_experts` routed
  experts of width `intermediate_size`, `num_experts_per_tok` of them per token, softmax router, no shared expert.
- Qwen2-MoE / Qwen3-MoE (`model_type` qwen2_moe / qwen3_moe): grouped-query attention + `num_experts` routed experts
  of width `moe_intermediate_size`, `num_experts_per_tok` per token, softmax router. Qwen2-MoE's one shared expert of
  width `shared_expert_intermediate_size` becomes n_shared_experts = that / moe_intermediate_size (it must divide);
  its sigmoid shared-expert gate (hidden_size numbers per layer) is outside ModelSpec. Only an all-MoE layout is
  read (`decoder_sparse_step` 1, `mlp_only_layers` empty), so `intermediate_size` (the dense MLP) is not used.
  Expert counts and widths are required (a config without them is refused, not given transformers' defaults);
  `num_key_value_heads`, `head_dim`, `decoder_sparse_step` and `mlp_only_layers` default as in transformers.
Sliding-window attention (`sliding_window`, `use_sliding_window`) is outside ModelSpec and ignored.
FFN: the gated families (deepseek, llama, mistral, mixtral, qwen*) have a SwiGLU FFN (`hidden_act` is not checked: a gated FFN
with another activation has the same matrices); gpt_neox and nemotron read `hidden_act` (or `activation_function`),
which must be one of GELU_ACTS or RELU2_ACTS. A missing `model_type` is inferred from the fields. Anything else raises ValueError.
"""

from __future__ import annotations

from typing import Any, Mapping

from gpuhours.workloads.model import AttentionSpec, ModelSpec, MoESpec

SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "llama", "mistral", "gpt_neox", "nemotron",
                         "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
GATED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "llama", "mistral",
                     "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")  # FFN: w2 (act(w1 x) * w3 x)
MOE_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")  # every layer MoE, no dense FFN
# transformers' defaults when the key is absent (configuration_<family>.py); a null num_key_value_heads means MHA.
_KV_HEADS_DEFAULT = {"mixtral": 8, "qwen2": 32, "qwen3": 32, "qwen2_moe": 16, "qwen3_moe": 4}
_HEAD_DIM_DEFAULT = {"qwen3": 128}  # Qwen3Config.head_dim; the others fall back to hidden_size / num_attention_heads
GELU_ACTS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")  # transformers' names of GELU variants
RELU2_ACTS = ("relu2",)  # transformers' ACT2FN name of squared ReLU (ReLUSquaredActivation)
LAYERNORM_MODEL_TYPES = ("gpt_neox", "nemotron")  # nn.LayerNorm (gpt_neox) / NemotronLayerNorm1P (gain and bias)
_ROTARY_DEFAULT = {"gpt_neox": 0.25, "nemotron": 0.5}  # GPTNeoXConfig.rotary_pct, NemotronConfig.partial_rotary_factor


def _get(cfg: Mapping[str, Any], key: str, default: Any = ...) -> Any:
    if cfg.get(key) is None:  # absent or null
        if default is ...:
            raise ValueError(f"config.json: missing field {key!r}")
        return default
    return cfg[key]


_POSITIVE = {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "num_key_value_heads",
             "head_dim", "intermediate_size"}  # sizes a model cannot have zero of (others, e.g. first_k_dense_replace, may be 0)


def _int(cfg: Mapping[str, Any], key: str, default: Any = ...) -> int:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config.json: field {key!r} = {value!r}: expected an integer")
    minimum = 1 if key in _POSITIVE else 0
    if value < minimum:
        raise ValueError(f"config.json: field {key!r} = {value!r}: expected an integer >= {minimum}")
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
        kv_default = _KV_HEADS_DEFAULT.get(model_type, n_heads) if "num_key_value_heads" not in cfg else n_heads
        attention = AttentionSpec(
            kind="gqa",
            n_heads=n_heads,
            n_kv_heads=_int(cfg, "num_key_value_heads", kv_default),
            head_dim=_int(cfg, "head_dim", _HEAD_DIM_DEFAULT.get(model_type, hidden // n_heads)),
        )
        moe = _mixtral_moe(cfg) if model_type == "mixtral" else (
            _qwen_moe(cfg, model_type) if model_type in MOE_MODEL_TYPES else None)
        mtp_depth = 0

    ffn_activation = _ffn_activation(cfg, model_type)
    shape = _dense_shape(cfg, model_type)
    tie = _get(cfg, "tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ValueError(f"config.json: field 'tie_word_embeddings' = {tie!r}: allowed values are true, false")
    return ModelSpec(
        name=name,
        hidden=hidden,
        n_layers=_int(cfg, "num_hidden_layers"),
        vocab=_int(cfg, "vocab_size"),
        # MoE families: intermediate_size is Mixtral's expert width / Qwen-MoE's unused dense MLP; no dense layer
        dense_intermediate=0 if model_type in MOE_MODEL_TYPES else _int(cfg, "intermediate_size", 0),
        attention=attention,
        moe=moe,
        mtp_depth=mtp_depth,
        tie_embeddings=tie,
        ffn_activation=ffn_activation,
        **shape,
    )


def _dense_shape(cfg: Mapping[str, Any], model_type: str) -> dict[str, Any]:
    """ModelSpec's norm, parallel_block and rotary_pct from the config: LayerNorm for LAYERNORM_MODEL_TYPES (else
    RMSNorm); gpt_neox's `use_parallel_residual` (default true); `rotary_pct` (gpt_neox) or
    `partial_rotary_factor` (others), defaults per family (_ROTARY_DEFAULT, else 1). MLA families keep theirs."""
    if model_type.startswith("deepseek"):
        return {}
    parallel = _get(cfg, "use_parallel_residual", True) if model_type == "gpt_neox" else False
    if not isinstance(parallel, bool):
        raise ValueError(f"config.json: field 'use_parallel_residual' = {parallel!r}: allowed values are true, false")
    key = "rotary_pct" if model_type == "gpt_neox" else "partial_rotary_factor"
    pct = _get(cfg, key, _ROTARY_DEFAULT.get(model_type, 1.0))
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 1:
        raise ValueError(f"config.json: field {key!r} = {pct!r}: expected a number in (0, 1]")
    return {"norm": "layernorm" if model_type in LAYERNORM_MODEL_TYPES else "rmsnorm",
            "parallel_block": parallel,
            "rotary_pct": float(pct)}


def _ffn_activation(cfg: Mapping[str, Any], model_type: str) -> str:
    """ModelSpec.ffn_activation: "swiglu" for the gated families; for an ungated FFN "gelu" (a GELU variant) or
    "relu2" (squared ReLU)."""
    if model_type in GATED_MODEL_TYPES:
        return "swiglu"
    key = "hidden_act" if cfg.get("hidden_act") is not None else "activation_function"
    act = _get(cfg, key, "relu2" if model_type == "nemotron" else "gelu")  # NemotronConfig's / GPTNeoXConfig's default
    if act in RELU2_ACTS:
        return "relu2"
    if act not in GELU_ACTS:
        raise ValueError(f"config.json: field {key!r} = {act!r}: allowed values are "
                         f"{', '.join(GELU_ACTS + RELU2_ACTS)}")
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


def _required_int(cfg: Mapping[str, Any], key: str, model_type: str, minimum: int = 1) -> int:
    """An integer field the family cannot do without (no default), >= minimum."""
    if cfg.get(key) is None:
        raise ValueError(f"config.json: missing field {key!r} (required for model_type {model_type!r})")
    value = _int(cfg, key)
    if value < minimum:
        raise ValueError(f"config.json: field {key!r} = {value}: expected an integer >= {minimum}")
    return value


def _moe_spec(**fields: Any) -> MoESpec:
    try:
        return MoESpec(**fields)
    except ValueError as exc:  # e.g. top_k > n_routed_experts
        raise ValueError(f"config.json: {exc}") from None


def _mixtral_moe(cfg: Mapping[str, Any]) -> MoESpec:
    """MixtralConfig: every layer MoE, softmax top-k over num_local_experts experts of width intermediate_size."""
    return _moe_spec(
        n_routed_experts=_required_int(cfg, "num_local_experts", "mixtral"),
        n_shared_experts=0,
        expert_intermediate=_required_int(cfg, "intermediate_size", "mixtral"),
        top_k=_required_int(cfg, "num_experts_per_tok", "mixtral"),
        first_k_dense=0,
        score_func="softmax",
    )


def _qwen_moe(cfg: Mapping[str, Any], model_type: str) -> MoESpec:
    """Qwen2MoeConfig / Qwen3MoeConfig; only the all-MoE layout (sparse step 1, no mlp_only_layers) is read."""
    step = _int(cfg, "decoder_sparse_step", 1)
    if step != 1:
        raise ValueError(f"config.json: decoder_sparse_step = {step}: allowed values are 1 (every layer MoE)")
    mlp_only = _get(cfg, "mlp_only_layers", [])
    if not isinstance(mlp_only, list) or mlp_only:
        raise ValueError(f"config.json: mlp_only_layers = {mlp_only!r}: allowed values are [] (every layer MoE)")
    width = _required_int(cfg, "moe_intermediate_size", model_type)
    shared = 0
    if model_type == "qwen2_moe":
        shared_width = _required_int(cfg, "shared_expert_intermediate_size", model_type, minimum=0)
        if shared_width % width:
            raise ValueError(f"config.json: shared_expert_intermediate_size = {shared_width}: must be a multiple of "
                             f"moe_intermediate_size = {width} (shared experts are n x moe_intermediate_size)")
        shared = shared_width // width
    return _moe_spec(
        n_routed_experts=_required_int(cfg, "num_experts", model_type),
        n_shared_experts=shared,
        expert_intermediate=width,
        top_k=_required_int(cfg, "num_experts_per_tok", model_type),
        first_k_dense=0,
        score_func="softmax",
    )
