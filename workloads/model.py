"""ModelSpec: a decoder-only transformer, dense or mixture-of-experts, stated plainly.

Field names follow DeepSeek-V3's `config_671B.json` / `inference/model.py` where they exist.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionSpec:
    """Multi-head latent attention (kind="mla") or multi-head / grouped-query attention (kind="gqa")."""

    kind: str  # "mla" or "gqa"
    n_heads: int
    # gqa / mha
    n_kv_heads: int = 0
    head_dim: int = 0
    # mla
    q_lora_rank: int = 0  # 0: queries are not compressed (DeepSeek-V2-Lite style)
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.kind == "mla" else self.head_dim

    @property
    def out_head_dim(self) -> int:
        return self.v_head_dim if self.kind == "mla" else self.head_dim


@dataclass(frozen=True)
class MoESpec:
    """DeepSeekMoE: shared experts plus fine-grained routed experts, group-limited top-k routing."""

    n_routed_experts: int
    n_shared_experts: int
    expert_intermediate: int  # moe_inter_dim
    top_k: int  # n_activated_experts
    n_groups: int = 1  # n_expert_groups
    topk_groups: int = 1  # n_limited_groups
    first_k_dense: int = 0  # n_dense_layers: the first layers use a dense FFN
    score_func: str = "sigmoid"
    route_scale: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int  # dim
    n_layers: int
    vocab: int
    dense_intermediate: int  # inter_dim: SwiGLU FFN of dense layers
    attention: AttentionSpec
    moe: MoESpec | None = None
    mtp_depth: int = 0  # multi-token-prediction modules, each one block + a 2h -> h projection
    tie_embeddings: bool = False

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.first_k_dense
