"""ModelSpec: a decoder-only transformer, dense or mixture-of-experts, stated plainly.

Field names follow DeepSeek-V3's `config_671B.json` / `inference/model.py` where they exist.
Every spec validates itself on construction: bad input raises ValueError naming the field and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_KINDS = ("mla", "gqa")
SCORE_FUNCS = ("sigmoid", "softmax")
# Dense FFN kinds: "swiglu" W2 (silu(W1 x) * W3 x), three matrices (Llama, DeepSeek); "gelu" W2 gelu(W1 x), two
# matrices (GPT-2 / GPT-3 / Megatron GPT, intermediate usually 4 h); "relu2" W2 relu(W1 x)^2, squared ReLU (So et
# al. 2021 "Primer", arXiv 2109.08668; Nemotron-4 15B/340B, arXiv 2402.16819 / 2406.11704), two matrices as GELU.
FFN_ACTIVATIONS = ("swiglu", "gelu", "relu2")
FFN_MATRICES = {"swiglu": 3, "gelu": 2, "relu2": 2}
# Normalisation of every norm of a layer and the final norm: "rmsnorm" (Zhang & Sennrich 2019, arXiv 1910.07467:
# a gain, h parameters) or "layernorm" (Ba et al. 2016, arXiv 1607.06450: a gain and a bias, 2h parameters).
NORMS = ("rmsnorm", "layernorm")
# Position information: "rotary" (Su et al. 2021, RoFormer, arXiv 2104.09864; applied to `rotary_pct` of each
# query/key head's dimensions) or "learned" (a max_positions x hidden table added to the token embedding,
# GPT-2 / GPT-3 / OPT).
POSITIONS = ("rotary", "learned")


# Assumption: at most 1,000 layers, about 8x the deepest published LLMs (Llama 3.1 405B's config.json:
# num_hidden_layers 126; Megatron-LM's 1T configuration: 128, arXiv 2104.04473 Table 1). Stage balancing builds
# an (n_layers + 1)^2 table: measured with `gpuhours estimate` on a Llama-shaped config.json (PP1 TP8, 64 GPUs),
# 100,000 layers asked for 75 GiB, 10,000 took 14 s of CPU, 1,000 about 2 s.
MAX_LAYERS = 1_000
# Assumption: at most 4,096 routed experts, 16x DeepSeek-V3's 256 (arXiv 2412.19437 sec. 4.2); routing draws a
# score per token and expert, and 1e9 experts asked numpy for 7.5 GiB per array.
MAX_ROUTED_EXPERTS = 4_096


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
        if self.n_routed_experts > MAX_ROUTED_EXPERTS:
            raise ValueError(f"MoESpec.n_routed_experts = {self.n_routed_experts!r}: expected at most "
                             f"{MAX_ROUTED_EXPERTS} experts")
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
    (w1: h -> i, w2: i -> h), or "relu2" (squared ReLU, same two matrices). It does not apply to MoE experts:
    routed and shared experts stay SwiGLU (DeepSeekMoE), whatever the dense FFN is.

    `parallel_block` (GPT-J, GPT-NeoX `use_parallel_residual`, PaLM sec. 2): x + attn(norm1(x)) + mlp(norm2(x))
    instead of two residual steps. Both branches read the layer input; the block keeps GPT-NeoX's two norms (two
    norm parameter sets, as its checkpoints hold) and sums the two branch outputs before one tensor-parallel
    reduction (`workloads.layer_ops`). `norm` (NORMS) applies to every norm of the layers, the MLA latent norms
    and the final norm. `positions` (POSITIONS): "rotary" applies RoPE to `rotary_pct` of each head's q/k
    dimensions (GPT-NeoX `rotary_pct`, Nemotron `partial_rotary_factor`; MLA's decoupled RoPE is its own
    qk_rope_head_dim, so MLA requires rotary_pct = 1); "learned" adds a `max_positions` x hidden table.
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
    norm: str = "rmsnorm"  # one of NORMS
    parallel_block: bool = False  # attention and FFN in parallel on the same input (GPT-NeoX, PaLM)
    positions: str = "rotary"  # one of POSITIONS
    rotary_pct: float = 1.0  # share of each q/k head's dimensions RoPE rotates (positions = "rotary")
    max_positions: int = 0  # rows of the learned position table (positions = "learned"; e.g. 2048 for GPT-3)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ModelSpec.name = {self.name!r}: expected a non-empty string")
        _check_int("ModelSpec", "hidden", self.hidden, 1)
        _check_int("ModelSpec", "n_layers", self.n_layers, 1)
        if self.n_layers > MAX_LAYERS:
            raise ValueError(f"ModelSpec.n_layers = {self.n_layers!r}: expected at most {MAX_LAYERS} layers")
        _check_int("ModelSpec", "vocab", self.vocab, 1)
        _check_int("ModelSpec", "mtp_depth", self.mtp_depth, 0)
        if self.mtp_depth > MAX_LAYERS:  # each MTP module is a layer of its own (stage_ops)
            raise ValueError(f"ModelSpec.mtp_depth = {self.mtp_depth!r}: expected at most {MAX_LAYERS} modules")
        if not isinstance(self.attention, AttentionSpec):
            raise ValueError(f"ModelSpec.attention: expected an AttentionSpec, got {type(self.attention).__name__}")
        if self.moe is not None and not isinstance(self.moe, MoESpec):
            raise ValueError(f"ModelSpec.moe: expected a MoESpec or None, got {type(self.moe).__name__}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"ModelSpec.tie_embeddings = {self.tie_embeddings!r}: allowed values are true, false")
        if self.ffn_activation not in FFN_ACTIVATIONS:
            raise ValueError(f"ModelSpec.ffn_activation = {self.ffn_activation!r}: "
                             f"allowed values are {', '.join(FFN_ACTIVATIONS)}")
        if self.norm not in NORMS:
            raise ValueError(f"ModelSpec.norm = {self.norm!r}: allowed values are {', '.join(NORMS)}")
        if not isinstance(self.parallel_block, bool):
            raise ValueError(f"ModelSpec.parallel_block = {self.parallel_block!r}: allowed values are true, false")
        if self.parallel_block and self.moe is not None:
            raise ValueError("ModelSpec.parallel_block = true: allowed only for dense models (moe = none); the "
                             "parallel blocks modelled are GPT-J / GPT-NeoX / PaLM's dense ones")
        if self.positions not in POSITIONS:
            raise ValueError(f"ModelSpec.positions = {self.positions!r}: allowed values are {', '.join(POSITIONS)}")
        r = self.rotary_pct
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise ValueError(f"ModelSpec.rotary_pct = {r!r}: expected a number in (0, 1]")
        if self.attention.kind == "mla" and (r != 1 or self.positions != "rotary"):
            raise ValueError(f"ModelSpec.rotary_pct / positions: MLA's decoupled RoPE (qk_rope_head_dim) allows only "
                             f"positions = 'rotary' with rotary_pct = 1, got {self.positions!r}, {r!r}")
        if self.positions == "learned":
            _check_int("ModelSpec", "max_positions", self.max_positions, 1)
        else:
            _check_int("ModelSpec", "max_positions", self.max_positions, 0)
        # A dense FFN exists in every layer of a dense model and in the first_k_dense layers of a MoE model.
        _check_int("ModelSpec", "dense_intermediate", self.dense_intermediate, 1 if self.n_dense_layers else 0)
        if self.moe is not None and self.moe.first_k_dense > self.n_layers:
            raise ValueError(f"MoESpec.first_k_dense = {self.moe.first_k_dense}: allowed 0..n_layers ({self.n_layers})")

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.first_k_dense

    @property
    def ffn_matrices(self) -> int:
        """Weight matrices of one dense FFN: 3 for SwiGLU (w1, w3, w2), 2 for GELU and squared ReLU (w1, w2)."""
        return FFN_MATRICES[self.ffn_activation]

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers if self.moe is None else min(self.moe.first_k_dense, self.n_layers)

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def norm_params(self) -> int:
        """Parameters of one hidden-size norm: h (RMSNorm gain) or 2h (LayerNorm gain and bias)."""
        return self.hidden * (2 if self.norm == "layernorm" else 1)

    @property
    def position_params(self) -> int:
        """Learned position table: max_positions x hidden (0 for rotary positions, which have no parameters)."""
        return self.max_positions * self.hidden if self.positions == "learned" else 0
