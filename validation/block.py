"""A DeepSeek-V3-shaped transformer block and a small model (embedding, blocks, head, MTP) built from a ModelSpec.

Block:  x = x + MLA(RMSNorm(x));  x = x + FFN(RMSNorm(x)),  FFN = DeepSeekMoE on MoE layers, otherwise the dense FFN
        of spec.ffn_activation: SwiGLU, or GELU (W2 gelu(W1 x), GPT-style, no biases).
Model:  h = Blocks(Emb(t));  logits = Head(RMSNorm(h));  MTP modules share Emb and Head (see mtp.py).
Loss (report, eq. 24-25): L = CE(main) + (lambda / D) * sum_k CE(MTP_k).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from gpuhours.validation.mla import MLA, RMSNorm
from gpuhours.validation.moe import MoE, SwiGLU
from gpuhours.validation.mtp import MTPModule, mtp_losses
from gpuhours.workloads.model import AttentionSpec, ModelSpec


class GeluMLP(nn.Module):
    """Dense two-matrix FFN: W2 gelu(W1 x), intermediate width `inter` (no biases, like the rest of the model)."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.w1 = nn.Linear(hidden, inter, bias=False)
        self.w2 = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


def dense_ffn(spec: ModelSpec) -> nn.Module:
    """The dense FFN of `spec`'s dense layers, by spec.ffn_activation."""
    cls = GeluMLP if spec.ffn_activation == "gelu" else SwiGLU
    return cls(spec.hidden, spec.dense_intermediate)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, norm_eps: float = 1e-6, rope_theta: float = 10000.0):
        super().__init__()
        if spec.attention.kind != "mla":
            raise ValueError(f"AttentionSpec.kind = {spec.attention.kind!r}: the validation block supports 'mla'")
        self.attn_norm = RMSNorm(spec.hidden, norm_eps)
        self.attn = MLA(spec.hidden, spec.attention, rope_theta=rope_theta, norm_eps=norm_eps)
        self.ffn_norm = RMSNorm(spec.hidden, norm_eps)
        self.is_moe = spec.is_moe_layer(layer)
        self.ffn = MoE(spec.hidden, spec.moe) if self.is_moe else dense_ffn(spec)

    def forward(self, x: torch.Tensor, absorbed: bool = False) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), absorbed=absorbed)
        return x + self.ffn(self.ffn_norm(x))


class DeepSeekModel(nn.Module):
    """Embedding -> n_layers Blocks -> RMSNorm -> head, plus spec.mtp_depth MTP modules (MoE blocks)."""

    def __init__(self, spec: ModelSpec, norm_eps: float = 1e-6, rope_theta: float = 10000.0):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab, spec.hidden)
        self.layers = nn.ModuleList(Block(spec, i, norm_eps, rope_theta) for i in range(spec.n_layers))
        self.norm = RMSNorm(spec.hidden, norm_eps)
        self.head = nn.Linear(spec.hidden, spec.vocab, bias=False)
        if spec.tie_embeddings:
            self.head.weight = self.embed.weight
        # MTP blocks sit after the last layer: index n_layers is a MoE layer whenever the model has MoE.
        self.mtp = nn.ModuleList(
            MTPModule(spec.hidden, Block(spec, spec.n_layers, norm_eps, rope_theta), self.embed, self.head, norm_eps)
            for _ in range(spec.mtp_depth))

    def forward(self, tokens: torch.Tensor, absorbed: bool = False) -> dict:
        """tokens (B, S) -> logits (B, S, V), main loss over S-1 next tokens, MTP logits/losses per depth."""
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h, absorbed=absorbed)
        logits = self.head(self.norm(h))
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
        mtp_logits, mtp_loss = mtp_losses(self.mtp, h, tokens) if len(self.mtp) else ([], [])
        return {"hidden": h, "logits": logits, "loss": loss, "mtp_logits": mtp_logits, "mtp_losses": mtp_loss}

    @staticmethod
    def total_loss(out: dict, mtp_weight: float) -> torch.Tensor:
        """L_main + mtp_weight / D * sum_k L_MTP_k (DeepSeek-V3 uses 0.3, then 0.1)."""
        if not out["mtp_losses"]:
            return out["loss"]
        return out["loss"] + mtp_weight * torch.stack(out["mtp_losses"]).mean()


def _even(x: float, minimum: int = 2) -> int:
    return max(minimum, 2 * round(x / 2))


def scaled_down(model: ModelSpec, *, hidden: int = 64, n_layers: int = 2, n_heads: int = 4, head_dim: int = 16,
                n_routed_experts: int = 32, vocab: int = 256) -> ModelSpec:
    """A tiny spec with `model`'s shape: the same ratios rank/hidden, intermediate/hidden, rope/nope and
    v/nope head dims, the same routing structure (groups, limited groups, top-k, score function, route scale,
    shared experts) as far as `n_routed_experts` allows, dense first layers (at least one MoE layer kept), MTP depth."""
    att = model.attention
    if att.kind != "mla":
        raise ValueError(f"AttentionSpec.kind = {att.kind!r}: scaled_down supports 'mla'")
    f = hidden / model.hidden
    attention = AttentionSpec(
        kind="mla", n_heads=n_heads,
        q_lora_rank=0 if att.q_lora_rank == 0 else max(8, round(att.q_lora_rank * f)),
        kv_lora_rank=max(8, round(att.kv_lora_rank * f)),
        qk_nope_head_dim=head_dim,
        qk_rope_head_dim=_even(head_dim * att.qk_rope_head_dim / att.qk_nope_head_dim),
        v_head_dim=max(1, round(head_dim * att.v_head_dim / att.qk_nope_head_dim)),
    )
    moe = None
    if model.moe is not None:
        m = model.moe
        groups = min(m.n_groups, n_routed_experts)
        while n_routed_experts % groups:
            groups -= 1
        topk_groups = max(1, round(m.topk_groups * groups / m.n_groups))
        top_k = min(m.top_k, topk_groups * (n_routed_experts // groups))
        moe = dataclasses.replace(
            m, n_routed_experts=n_routed_experts, n_groups=groups, topk_groups=topk_groups, top_k=top_k,
            expert_intermediate=max(4, round(m.expert_intermediate * f)),
            first_k_dense=min(m.first_k_dense, n_layers - 1))
    dense = max(4, round(model.dense_intermediate * f)) if model.dense_intermediate else 0
    return dataclasses.replace(
        model, name=f"{model.name}-tiny", hidden=hidden, n_layers=n_layers, vocab=vocab,
        dense_intermediate=dense, attention=attention, moe=moe)
