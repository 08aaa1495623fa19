"""Multi-head latent attention (MLA), DeepSeek-V2/V3 style, in two equivalent forms.

Shapes (B batch, S sequence, H heads; names as in `AttentionSpec`):
  query   q = W_QB RMSNorm(W_QA x)            (q_lora_rank > 0)   or   q = W_Q x   (q_lora_rank = 0)
          q -> per head [q_nope (qk_nope_head_dim) | q_pe (qk_rope_head_dim)], RoPE on q_pe
  latent  [c_kv (kv_lora_rank) | k_pe (qk_rope_head_dim)] = W_KVA x;  c = RMSNorm(c_kv);  RoPE on k_pe,
          one k_pe shared by all heads (the decoupled RoPE key)
  up      [k_nope | v] per head = W_KVB c        (W_UK: kv_lora_rank -> qk_nope_head_dim, W_UV: -> v_head_dim)
  score   s_ij = (q_nope_i . k_nope_j + q_pe_i . k_pe_j) / sqrt(qk_nope_head_dim + qk_rope_head_dim), causal
  out     y = W_O concat_h(softmax(s) v)

naive: up-project K and V for every key, then attend per head.
absorbed: q_nope . (W_UK c) = (W_UK^T q_nope) . c, and W_UV is applied after the softmax-weighted sum of c, so
attention runs in the kv_lora_rank latent space with one shared "key/value" c per token (what the KV cache holds).
The two forms are the same function up to rounding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gpuhours.workloads.model import AttentionSpec


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (computed in float32 or wider)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x if x.dtype == torch.float64 else x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(y.dtype)).to(x.dtype)


def rope_cos_sin(seq: int, dim: int, theta: float, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (seq, dim/2): angle(p, i) = p * theta^(-2i/dim)."""
    if dim % 2:
        raise ValueError(f"qk_rope_head_dim = {dim}: must be even")
    inv_freq = theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(seq, device=device, dtype=torch.float64), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) by the angle of their position; x: (B, S, heads, dim)."""
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    c = cos[None, :, None, :].to(x.dtype)
    s = sin[None, :, None, :].to(x.dtype)
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)


def causal_mask(seq: int, device=None) -> torch.Tensor:
    """True where key j is visible from query i (j <= i)."""
    return torch.ones(seq, seq, dtype=torch.bool, device=device).tril()


class MLA(nn.Module):
    """Multi-head latent attention configured from an `AttentionSpec` with kind == "mla"."""

    def __init__(self, hidden: int, spec: AttentionSpec, rope_theta: float = 10000.0, norm_eps: float = 1e-6):
        super().__init__()
        if spec.kind != "mla":
            raise ValueError(f"AttentionSpec.kind = {spec.kind!r}: MLA needs 'mla'")
        self.spec = spec
        self.rope_theta = rope_theta
        h, H = hidden, spec.n_heads
        self.n_heads = H
        self.nope, self.rope, self.vdim = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        self.qk_head_dim = spec.qk_head_dim
        self.kv_rank = spec.kv_lora_rank
        self.softmax_scale = 1.0 / math.sqrt(self.qk_head_dim)
        if spec.q_lora_rank > 0:
            self.wq_a = nn.Linear(h, spec.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(spec.q_lora_rank, norm_eps)
            self.wq_b = nn.Linear(spec.q_lora_rank, H * self.qk_head_dim, bias=False)
        else:
            self.wq = nn.Linear(h, H * self.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(h, self.kv_rank + self.rope, bias=False)
        self.kv_norm = RMSNorm(self.kv_rank, norm_eps)
        self.wkv_b = nn.Linear(self.kv_rank, H * (self.nope + self.vdim), bias=False)
        self.wo = nn.Linear(H * self.vdim, h, bias=False)

    # -- projections shared by both forms ---------------------------------------------------------------------
    def _query(self, x: torch.Tensor) -> torch.Tensor:
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.spec.q_lora_rank > 0 else self.wq(x)
        return q.unflatten(-1, (self.n_heads, self.qk_head_dim))

    def _project(self, x: torch.Tensor):
        """q_nope (B,S,H,nope), q_pe (B,S,H,rope), c (B,S,kv_rank), k_pe (B,S,rope) with RoPE applied."""
        B, S, _ = x.shape
        cos, sin = rope_cos_sin(S, self.rope, self.rope_theta, device=x.device)
        q = self._query(x)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)
        c_kv, k_pe = self.wkv_a(x).split([self.kv_rank, self.rope], dim=-1)
        c = self.kv_norm(c_kv)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin).squeeze(2)
        return q_nope, q_pe, c, k_pe

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, S_q, H, S_k) -> causal softmax over keys."""
        S = scores.shape[1]
        mask = causal_mask(S, scores.device)[None, :, None, :]
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores.float() if scores.dtype != torch.float64 else scores, dim=-1).to(scores.dtype)

    # -- the two forms -------------------------------------------------------------------------------------------
    def forward_naive(self, x: torch.Tensor) -> torch.Tensor:
        q_nope, q_pe, c, k_pe = self._project(x)
        kv = self.wkv_b(c).unflatten(-1, (self.n_heads, self.nope + self.vdim))
        k_nope, v = kv.split([self.nope, self.vdim], dim=-1)
        scores = (torch.einsum("bshd,bthd->bsht", q_nope, k_nope)
                  + torch.einsum("bshr,btr->bsht", q_pe, k_pe)) * self.softmax_scale
        p = self._softmax(scores)
        o = torch.einsum("bsht,bthd->bshd", p, v)
        return self.wo(o.flatten(-2))

    def forward_absorbed(self, x: torch.Tensor) -> torch.Tensor:
        q_nope, q_pe, c, k_pe = self._project(x)
        w = self.wkv_b.weight.view(self.n_heads, self.nope + self.vdim, self.kv_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope:]
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)  # W_UK folded into the query
        scores = (torch.einsum("bshc,btc->bsht", q_lat, c)
                  + torch.einsum("bshr,btr->bsht", q_pe, k_pe)) * self.softmax_scale
        p = self._softmax(scores)
        o_lat = torch.einsum("bsht,btc->bshc", p, c)
        o = torch.einsum("bshc,hdc->bshd", o_lat, w_uv)  # W_UV folded into the output
        return self.wo(o.flatten(-2))

    def forward(self, x: torch.Tensor, absorbed: bool = False) -> torch.Tensor:
        return self.forward_absorbed(x) if absorbed else self.forward_naive(x)


def mla_core_flops(batch: int, seq: int, spec: AttentionSpec, causal: bool = True) -> float:
    """Forward FLOPs of the naive attention core (QK^T and PV), multiply-add = 2:
    2 * B * H * S^2 * (qk_head_dim + v_head_dim), halved when causal."""
    f = 2.0 * batch * spec.n_heads * seq * seq * (spec.qk_head_dim + spec.v_head_dim)
    return f / 2 if causal else f
