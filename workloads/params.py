"""Parameter counts of a ModelSpec, piece by piece (exact integers).

Conventions (DeepSeek-V3 `inference/model.py`, Llama): no biases in linear layers; SwiGLU FFNs and experts hold
three matrices (w1, w3: h -> inter, w2: inter -> h), a GELU dense FFN (`ffn_activation = "gelu"`, GPT-style) two
(w1: h -> inter, w2: inter -> h); experts are always SwiGLU; RMSNorm weights are counted (h per norm; MLA adds a norm of
the q latent and of the kv latent).

- `total` is the main model: embedding + layers + final norm + output head. It EXCLUDES the multi-token-prediction
  modules, as the published "671B" for DeepSeek-V3 does; `mtp_unique` is reported separately (the Hugging Face
  checkpoint's 685B = 671B + 14B of MTP incl. its copies of the embedding and head).
- `active` is per token: every parameter a token touches, with only `top_k` of the routed experts (the whole
  router and all shared experts count). It includes embedding and head, as the published "37B" does.
- Router: the gate matrix (n_routed x h) and, where the model balances without auxiliary loss (sigmoid scores,
  DeepSeek-V3), the per-expert `e_score_correction_bias` (n_routed floats per MoE layer). We count the bias: it is
  stored in the checkpoint and read by every token's expert selection, although it is updated by a rule, not by
  gradients. It is 256 x 58 = 14,848 numbers for DeepSeek-V3, far below any rounding that matters.
- MTP module (each of `mtp_depth`): one transformer block (MoE if the model is MoE) + the 2h -> h projection +
  three RMSNorms (the embedding input, the previous hidden state, and the norm before the shared output head).
  Embedding and output head are shared with the main model and not counted again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuhours.workloads.model import ModelSpec

COMPONENTS = ("embedding", "head", "attention", "dense_ffn", "shared_experts", "routed_experts",
              "router", "norms", "mtp")


@dataclass(frozen=True)
class ParamBreakdown:
    """Parameter counts. sum(components[k] for k != "mtp") == total; components["mtp"] == mtp_unique.

    `active_components` splits `active` the same way (its "mtp" is 0: MTP is outside the main model).
    """

    total: int
    active: int
    mtp_unique: int
    components: dict[str, int] = field(hash=False)
    active_components: dict[str, int] = field(hash=False)

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp_unique


def embedding_params(model: ModelSpec) -> int:
    """Input embedding table: vocab x h, plus the learned position table max_positions x h
    (`positions = "learned"`; rotary positions have no parameters)."""
    return model.vocab * model.hidden + model.position_params


def head_params(model: ModelSpec) -> int:
    """Output head weights not already counted as the embedding: vocab x h, or 0 when tied."""
    return 0 if model.tie_embeddings else model.vocab * model.hidden


def attention_matmul_params(model: ModelSpec) -> int:
    """Weights of one attention block's projections.

    MLA: wq_a h*q_lora + wq_b q_lora*H*(nope+rope) (or wq h*H*(nope+rope) when q_lora_rank == 0),
    wkv_a h*(kv_lora+rope), wkv_b kv_lora*H*(nope+v), wo H*v*h.
    GQA: wq h*H*d, wk and wv h*H_kv*d, wo H*d*h.
    """
    a, h = model.attention, model.hidden
    if a.kind == "gqa":
        return 2 * h * a.n_heads * a.head_dim + 2 * h * a.n_kv_heads * a.head_dim
    if a.q_lora_rank:
        q = h * a.q_lora_rank + a.q_lora_rank * a.n_heads * a.qk_head_dim
    else:
        q = h * a.n_heads * a.qk_head_dim
    kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank * a.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
    out = a.n_heads * a.v_head_dim * h
    return q + kv + out


def attention_norm_params(model: ModelSpec) -> int:
    """Norms inside attention: MLA's q latent norm (when q is compressed) and kv latent norm; none for GQA.
    A LayerNorm (`ModelSpec.norm`) holds a bias beside its gain: twice an RMSNorm's parameters."""
    a = model.attention
    per = 2 if model.norm == "layernorm" else 1
    return per * (a.q_lora_rank + a.kv_lora_rank) if a.kind == "mla" else 0


def attention_params(model: ModelSpec) -> int:
    """One attention block: projections + its internal norms (DeepSeek-V3: 187,107,328)."""
    return attention_matmul_params(model) + attention_norm_params(model)


def dense_ffn_params(model: ModelSpec) -> int:
    """One FFN of a dense layer: 3 * h * dense_intermediate (SwiGLU) or 2 * h * dense_intermediate (GELU)."""
    return model.ffn_matrices * model.hidden * model.dense_intermediate


def expert_params(model: ModelSpec) -> int:
    """One SwiGLU expert (shared or routed): 3 * h * expert_intermediate."""
    _require_moe(model)
    return 3 * model.hidden * model.moe.expert_intermediate


def router_matmul_params(model: ModelSpec) -> int:
    """Gate matrix of one MoE layer: n_routed x h."""
    _require_moe(model)
    return model.moe.n_routed_experts * model.hidden


def router_params(model: ModelSpec) -> int:
    """Gate matrix + e_score_correction_bias (sigmoid / aux-loss-free models only)."""
    bias = model.moe.n_routed_experts if model.moe.has_score_bias else 0
    return router_matmul_params(model) + bias


def moe_layer_params(model: ModelSpec) -> int:
    """FFN part of one MoE layer: shared experts + all routed experts + router."""
    m = model.moe
    _require_moe(model)
    return (m.n_shared_experts + m.n_routed_experts) * expert_params(model) + router_params(model)


def moe_layer_active_params(model: ModelSpec) -> int:
    """FFN part of one MoE layer that one token touches: shared + top_k routed experts + router."""
    m = model.moe
    _require_moe(model)
    return (m.n_shared_experts + m.top_k) * expert_params(model) + router_params(model)


def block_norm_params(model: ModelSpec) -> int:
    """The two pre-norms of a transformer block (attention, FFN; a parallel block keeps GPT-NeoX's two norms of
    the same input): 2h for RMSNorm, 4h for LayerNorm (gain and bias, `ModelSpec.norm_params`)."""
    return 2 * model.norm_params


def layer_params(model: ModelSpec, layer_index: int) -> int:
    """One transformer block: attention + (dense FFN or MoE) + its two pre-norms."""
    if isinstance(layer_index, bool) or not isinstance(layer_index, int) or not 0 <= layer_index < model.n_layers:
        raise ValueError(f"layer_index = {layer_index!r}: allowed 0..{model.n_layers - 1}")
    return _block_params(model, model.is_moe_layer(layer_index))


def mtp_params(model: ModelSpec) -> int:
    """Unique parameters of all MTP modules: depth * (block + 2h*h projection + 3 norms)."""
    return model.mtp_depth * (_block_params(model, model.moe is not None) + _mtp_extra_params(model))


def param_breakdown(model: ModelSpec) -> ParamBreakdown:
    """Totals and components; see the module docstring for what is counted."""
    n_dense, n_moe = model.n_dense_layers, model.n_moe_layers
    m = model.moe
    expert = expert_params(model) if m else 0
    full = {
        "embedding": embedding_params(model),
        "head": head_params(model),
        "attention": model.n_layers * attention_params(model),
        "dense_ffn": n_dense * dense_ffn_params(model),
        "shared_experts": n_moe * m.n_shared_experts * expert if m else 0,
        "routed_experts": n_moe * m.n_routed_experts * expert if m else 0,
        "router": n_moe * router_params(model) if m else 0,
        "norms": model.n_layers * block_norm_params(model) + model.norm_params,  # + final norm
    }
    active = dict(full, routed_experts=n_moe * m.top_k * expert if m else 0)
    mtp = mtp_params(model)
    total = sum(full.values())
    return ParamBreakdown(
        total=total,
        active=sum(active.values()),
        mtp_unique=mtp,
        components={**full, "mtp": mtp},
        active_components={**active, "mtp": 0},
    )


def _block_params(model: ModelSpec, moe: bool) -> int:
    ffn = moe_layer_params(model) if moe else dense_ffn_params(model)
    return attention_params(model) + ffn + block_norm_params(model)


def _mtp_extra_params(model: ModelSpec) -> int:
    """eh_proj (2h -> h) + enorm + hnorm + the norm before the shared head."""
    return 2 * model.hidden * model.hidden + 3 * model.norm_params


def _require_moe(model: ModelSpec) -> None:
    if model.moe is None:
        raise ValueError(f"model {model.name!r} has no MoE (moe = None); expert/router counts need a MoESpec")
