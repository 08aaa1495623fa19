"""Training FLOPs per token of a ModelSpec (a multiply-add counts 2 FLOP).

Forward, per token:
- every weight that takes part in a matmul costs 2 FLOP (one multiply-add per weight per token); summed per
  component: attention projections, dense FFN, shared experts, the top_k routed experts, the router gate,
  the output head (vocab x h, also when tied to the embedding), and the MTP modules;
- the embedding lookup is a gather (0 FLOP); norms, activations, softmax and RoPE are not counted;
- attention core (softmax(QK^T)V) of causal attention over a sequence of L tokens. The query at position i
  (1-based) sees i keys: QK^T costs 2 * d_qk and PV costs 2 * d_v per head per visible key. Summed over the
  sequence, sum_i i = L(L+1)/2, i.e. (L+1)/2 keys per query on average; we take L/2 (the causal half of the
  L x L score matrix, the convention of attention-kernel FLOP counts), so per layer per token
      attention_core = 2 * n_heads * (d_qk + d_v) * L / 2 = n_heads * (d_qk + d_v) * L,
  with d_qk = qk_nope + qk_rope and d_v = v_head_dim for MLA (the training form; nothing absorbed), head_dim for GQA.
Training = forward + backward-input + backward-weight = 3 x forward (the input and weight gradients of a matmul
each cost as much as its forward; the attention core's backward counted as 2 x its forward, recomputation not
included). Without attention, training FLOPs are exactly 6 * matmul_params_active (the "6N" rule).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads import params as P

TRAINING_MULTIPLIER = 3  # forward + backward-input + backward-weight


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOP per token by component, at sequence length `seq_len`; all exact integers."""

    seq_len: int
    attention_proj: int
    attention_core: int
    dense_ffn: int
    shared_experts: int
    routed_experts: int
    router: int
    head: int
    mtp_matmul: int = 0          # MTP modules' projections, experts, router, 2h->h projection, their head pass
    mtp_attention_core: int = 0  # MTP modules' attention core

    @property
    def mtp(self) -> int:
        return self.mtp_matmul + self.mtp_attention_core

    @property
    def matmul_forward(self) -> int:
        """Forward FLOP of all weight matmuls (everything but the attention core)."""
        return self.forward - self.attention_core - self.mtp_attention_core

    @property
    def forward(self) -> int:
        return sum(self.components().values())

    @property
    def training_per_token(self) -> int:
        return TRAINING_MULTIPLIER * self.forward

    def components(self) -> dict[str, int]:
        """Forward FLOP per component (no seq_len)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "seq_len"}


def attention_core_flops(model: ModelSpec, seq_len: int) -> int:
    """Forward attention-core FLOP per token per layer: n_heads * (d_qk + d_v) * seq_len (see module doc)."""
    _check_seq_len(seq_len)
    a = model.attention
    return a.n_heads * (a.qk_head_dim + a.out_head_dim) * seq_len


def matmul_params_active(model: ModelSpec, include_mtp: bool = False) -> int:
    """N of the 6N rule: weights a token multiplies by in the main model (embedding and norms excluded).

    With include_mtp the MTP modules' block, their 2h -> h projection and their pass through the shared head
    are added (the head's weights count once more because the MTP module multiplies by them again).
    """
    n = model.vocab * model.hidden  # output head, tied or not
    n += model.n_layers * P.attention_matmul_params(model)
    n += model.n_dense_layers * P.dense_ffn_params(model)
    if model.moe is not None:
        n += model.n_moe_layers * _moe_matmul_active(model)
    if include_mtp:
        n += model.mtp_depth * _mtp_matmul_active(model)
    return n


def flops_per_token(model: ModelSpec, seq_len: int, include_mtp: bool = True) -> FlopsBreakdown:
    """Forward FLOP per trained token by component; `.training_per_token` is 3 x forward."""
    _check_seq_len(seq_len)
    m, n_moe = model.moe, model.n_moe_layers
    expert = P.expert_params(model) if m else 0
    core = attention_core_flops(model, seq_len)
    depth = model.mtp_depth if include_mtp else 0
    return FlopsBreakdown(
        seq_len=seq_len,
        attention_proj=2 * model.n_layers * P.attention_matmul_params(model),
        attention_core=model.n_layers * core,
        dense_ffn=2 * model.n_dense_layers * P.dense_ffn_params(model),
        shared_experts=2 * n_moe * m.n_shared_experts * expert if m else 0,
        routed_experts=2 * n_moe * m.top_k * expert if m else 0,
        router=2 * n_moe * P.router_matmul_params(model) if m else 0,
        head=2 * model.vocab * model.hidden,
        mtp_matmul=2 * depth * _mtp_matmul_active(model),
        mtp_attention_core=depth * core,
    )


def _moe_matmul_active(model: ModelSpec) -> int:
    m = model.moe
    return (m.n_shared_experts + m.top_k) * P.expert_params(model) + P.router_matmul_params(model)


def _mtp_matmul_active(model: ModelSpec) -> int:
    """One MTP module: block (MoE if the model is) + 2h -> h projection + the shared head's matmul."""
    ffn = _moe_matmul_active(model) if model.moe is not None else P.dense_ffn_params(model)
    h = model.hidden
    return P.attention_matmul_params(model) + ffn + 2 * h * h + model.vocab * h


def _check_seq_len(seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len = {seq_len!r}: expected an integer >= 1 (tokens)")
