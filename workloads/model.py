"""ModelSpec: a decoder-only transformer, dense or mixture-of-experts, stated plainly.

Field names follow DeepSeek-V3's `config_671B.json` / `inference/model.py` where they exist.
Every spec validates itself on construction: bad input raises ValueError naming the field and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_KINDS = ("mla", "gqa")
SCORE_FUNCS = ("sigmoid", "softmax")
# Dense FFN kinds: "swiglu" W2 (silu(W1 x) * W3 x), three matrices (Llama, DeepSeek); "gelu" W2 gelu(W1 x), two
# matrices (GPT-2 / GPT-3 / Megatron GPT, intermediate usually 4 h).
FFN_ACTIVATIONS = ("swiglu", "gelu")
FFN_MATRICES = {"swiglu": 3, "gelu": 2}


def _check_int(owner: str, field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{field} = {value!r}: expected an integer >= {minimum}")


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

    def __post_init__(self) -> None:
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"AttentionSpec.kind = {self.kind!r}: allowed values are {', '.join(ATTENTION_KINDS)}")
        _check_int("AttentionSpec", "n_heads", self.n_heads, 1)
        for f in ("n_kv_heads", "head_dim", "q_lora_rank", "kv_lora_rank",
                  "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            _check_int("AttentionSpec", f, getattr(self, f), 0)
        if self.kind == "gqa":
            _check_int("AttentionSpec", "n_kv_heads", self.n_kv_heads, 1)
            _check_int("AttentionSpec", "head_dim", self.head_dim, 1)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(f"AttentionSpec.n_kv_heads = {self.n_kv_heads}: must divide n_heads = {self.n_heads}")
        else:
            for f in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
                _check_int("AttentionSpec", f, getattr(self, f), 1)

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

    def __post_init__(self) -> None:
        _check_int("MoESpec", "n_routed_experts", self.n_routed_experts, 1)
        _check_int("MoESpec", "n_shared_experts", self.n_shared_experts, 0)
        _check_int("MoESpec", "expert_intermediate", self.expert_intermediate, 1)
        _check_int("MoESpec", "top_k", self.top_k, 1)
        _check_int("MoESpec", "n_groups", self.n_groups, 1)
        _check_int("MoESpec", "topk_groups", self.topk_groups, 1)
        _check_int("MoESpec", "first_k_dense", self.first_k_dense, 0)
        if self.top_k > self.n_routed_experts:
            raise ValueError(f"MoESpec.top_k = {self.top_k}: allowed 1..n_routed_experts ({self.n_routed_experts})")
        if self.n_routed_experts % self.n_groups:
            raise ValueError(f"MoESpec.n_groups = {self.n_groups}: must divide n_routed_experts = {self.n_routed_experts}")
        if self.topk_groups > self.n_groups:
            raise ValueError(f"MoESpec.topk_groups = {self.topk_groups}: allowed 1..n_groups ({self.n_groups})")
        if self.top_k > self.topk_groups * self.experts_per_group:
            raise ValueError(f"MoESpec.top_k = {self.top_k}: at most topk_groups * experts per group "
                             f"= {self.topk_groups * self.experts_per_group}")
        if self.score_func not in SCORE_FUNCS:
            raise ValueError(f"MoESpec.score_func = {self.score_func!r}: allowed values are {', '.join(SCORE_FUNCS)}")
        if isinstance(self.route_scale, bool) or not isinstance(self.route_scale, (int, float)) or not self.route_scale > 0:
            raise ValueError(f"MoESpec.route_scale = {self.route_scale!r}: expected a number > 0")

    @property
    def experts_per_group(self) -> int:
        return self.n_routed_experts // self.n_groups

    @property
    def has_score_bias(self) -> bool:
        """Auxiliary-loss-free balancing keeps a per-expert bias (`e_score_correction_bias`) next to the gate.

        DeepSeek-V3 pairs it with sigmoid scores; DeepSeek-V2 (softmax, auxiliary losses) has none.
        """
        return self.score_func == "sigmoid"


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer.

    `ffn_activation` is the FFN of the dense layers (every layer of a dense model, the first_k_dense layers of a
    MoE model, and an MTP block when the model is dense): "swiglu" (w1, w3: h -> i, w2: i -> h) or "gelu"
    (w1: h -> i, w2: i -> h). It does not apply to MoE experts: routed and shared experts stay SwiGLU
    (DeepSeekMoE), whatever the dense FFN is.
    """

    name: str
    hidden: int  # dim
    n_layers: int
    vocab: int
    dense_intermediate: int  # inter_dim: FFN of dense layers (kind: ffn_activation)
    attention: AttentionSpec
    moe: MoESpec | None = None
    mtp_depth: int = 0  # multi-token-prediction modules, each one block + a 2h -> h projection
    tie_embeddings: bool = False
    ffn_activation: str = "swiglu"  # dense FFN: one of FFN_ACTIVATIONS (experts are always SwiGLU)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ModelSpec.name = {self.name!r}: expected a non-empty string")
        _check_int("ModelSpec", "hidden", self.hidden, 1)
        _check_int("ModelSpec", "n_layers", self.n_layers, 1)
        _check_int("ModelSpec", "vocab", self.vocab, 1)
        _check_int("ModelSpec", "mtp_depth", self.mtp_depth, 0)
        if not isinstance(self.attention, AttentionSpec):
            raise ValueError(f"ModelSpec.attention: expected an AttentionSpec, got {type(self.attention).__name__}")
        if self.moe is not None and not isinstance(self.moe, MoESpec):
            raise ValueError(f"ModelSpec.moe: expected a MoESpec or None, got {type(self.moe).__name__}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"ModelSpec.tie_embeddings = {self.tie_embeddings!r}: allowed values are true, false")
        if self.ffn_activation not in FFN_ACTIVATIONS:
            raise ValueError(f"ModelSpec.ffn_activation = {self.ffn_activation!r}: "
                             f"allowed values are {', '.join(FFN_ACTIVATIONS)}")
        # A dense FFN exists in every layer of a dense model and in the first_k_dense layers of a MoE model.
        _check_int("ModelSpec", "dense_intermediate", self.dense_intermediate, 1 if self.n_dense_layers else 0)
        if self.moe is not None and self.moe.first_k_dense > self.n_layers:
            raise ValueError(f"MoESpec.first_k_dense = {self.moe.first_k_dense}: allowed 0..n_layers ({self.n_layers})")

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.first_k_dense

    @property
    def ffn_matrices(self) -> int:
        """Weight matrices of one dense FFN: 3 for SwiGLU (w1, w3, w2), 2 for GELU (w1, w2)."""
        return FFN_MATRICES[self.ffn_activation]

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers if self.moe is None else min(self.moe.first_k_dense, self.n_layers)

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers
