"""DeepSeekMoE: shared experts plus fine-grained routed SwiGLU experts with group-limited top-k routing.

Gate (DeepSeek-V3, "noaux_tc"), for token t and routed expert e:
  s_te   = sigmoid(x_t . g_e)                          affinity (softmax over experts for score_func="softmax")
  b_e    per-expert bias, added for *selection only*   (auxiliary-loss-free balancing; a buffer, not trained by SGD)
  group score = sum of the top-2 of (s_te + b_e) inside the group  (max of s_te when there is no bias, V2 style)
  keep the topk_groups best groups, mask the others, take the top_k experts of (s + b)
  weights w_te = s_te / sum_{selected} s_te * route_scale   (sigmoid; softmax scores are not renormalised)
Output y = sum_shared SwiGLU(x) + sum_{selected e} w_te SwiGLU_e(x),  SwiGLU(x) = W2 (silu(W1 x) * W3 x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpuhours.workloads.model import MoESpec


class SwiGLU(nn.Module):
    """Dense gated FFN: W2 (silu(W1 x) * W3 x), intermediate width `inter`."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.w1 = nn.Linear(hidden, inter, bias=False)
        self.w3 = nn.Linear(hidden, inter, bias=False)
        self.w2 = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Gate(nn.Module):
    """Router: returns (weights (T, top_k), indices (T, top_k)) for flattened tokens x (T, hidden)."""

    def __init__(self, hidden: int, spec: MoESpec):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.n_routed_experts, hidden))
        nn.init.normal_(self.weight, std=hidden ** -0.5)
        if spec.has_score_bias:
            self.register_buffer("bias", torch.zeros(spec.n_routed_experts))
        else:
            self.bias = None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, self.weight.to(x.dtype))
        if self.spec.score_func == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=-1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        s = self.scores(x)
        sel = s if self.bias is None else s + self.bias.to(s.dtype)
        if spec.n_groups > 1:
            grouped = sel.unflatten(-1, (spec.n_groups, spec.experts_per_group))
            if self.bias is None:
                group_score = grouped.amax(dim=-1)
            else:
                group_score = grouped.topk(min(2, spec.experts_per_group), dim=-1).values.sum(dim=-1)
            keep = group_score.topk(spec.topk_groups, dim=-1).indices
            group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(-1, keep, True)
            sel = grouped.masked_fill(~group_mask.unsqueeze(-1), float("-inf")).flatten(-2)
        idx = sel.topk(spec.top_k, dim=-1).indices
        w = s.gather(-1, idx)
        if spec.score_func == "sigmoid":
            w = w / w.sum(dim=-1, keepdim=True)
        return w * spec.route_scale, idx


class RoutedExperts(nn.Module):
    """n_routed_experts SwiGLU experts stored as stacked weights (E, out, in)."""

    def __init__(self, hidden: int, spec: MoESpec):
        super().__init__()
        E, I = spec.n_routed_experts, spec.expert_intermediate
        self.w1 = nn.Parameter(torch.empty(E, I, hidden))
        self.w3 = nn.Parameter(torch.empty(E, I, hidden))
        self.w2 = nn.Parameter(torch.empty(E, hidden, I))
        for w, fan_in in ((self.w1, hidden), (self.w3, hidden), (self.w2, I)):
            nn.init.normal_(w, std=fan_in ** -0.5)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.w1[e])) * F.linear(x, self.w3[e]), self.w2[e])


class MoE(nn.Module):
    """DeepSeekMoE layer on x (..., hidden)."""

    def __init__(self, hidden: int, spec: MoESpec):
        super().__init__()
        self.spec = spec
        self.gate = Gate(hidden, spec)
        self.experts = RoutedExperts(hidden, spec)
        self.shared = SwiGLU(hidden, spec.n_shared_experts * spec.expert_intermediate) if spec.n_shared_experts else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xt = x.reshape(-1, shape[-1])
        w, idx = self.gate(xt)
        y = self.dispatch(xt, w, idx)
        if self.shared is not None:
            y = y + self.shared(xt)
        return y.view(shape)

    def dispatch(self, x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Grouped layout: sort the (token, expert) pairs by expert, run one GEMM chain per expert on its
        contiguous rows, scale by the gate weight and scatter-add back to the tokens."""
        T, k = idx.shape
        flat_expert = idx.reshape(-1)
        order = flat_expert.argsort(stable=True)
        token_of = order // k
        counts = torch.bincount(flat_expert, minlength=self.spec.n_routed_experts).tolist()
        rows = x[token_of]
        gates = w.reshape(-1)[order].unsqueeze(-1).to(x.dtype)
        out = torch.empty_like(rows)
        start = 0
        for e, n in enumerate(counts):
            if n:
                out[start:start + n] = self.experts.expert(e, rows[start:start + n])
            start += n
        return torch.zeros_like(x).index_add_(0, token_of, out * gates)


def reference_moe(moe: MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-by-token loop, written from the formulas above without the vectorised gate: (y, weights, indices)."""
    spec = moe.spec
    xt = x.reshape(-1, x.shape[-1])
    G, per = spec.n_groups, spec.experts_per_group
    ys, ws, ids = [], [], []
    for t in range(xt.shape[0]):
        s = moe.gate.scores(xt[t:t + 1])[0].tolist()
        b = [0.0] * len(s) if moe.gate.bias is None else moe.gate.bias.tolist()
        sel = [si + bi for si, bi in zip(s, b)]
        allowed = set(range(len(s)))
        if G > 1:
            gscore = []
            for g in range(G):
                members = sorted(sel[g * per:(g + 1) * per], reverse=True)
                gscore.append(members[0] if moe.gate.bias is None else sum(members[:2]))
            best = sorted(range(G), key=lambda g: -gscore[g])[: spec.topk_groups]
            allowed = {g * per + j for g in best for j in range(per)}
        chosen = sorted(allowed, key=lambda e: -sel[e])[: spec.top_k]
        raw = [s[e] for e in chosen]
        norm = sum(raw) if spec.score_func == "sigmoid" else 1.0
        weights = [r / norm * spec.route_scale for r in raw]
        y = torch.zeros_like(xt[t])
        for e, wt in zip(chosen, weights):
            y = y + wt * moe.experts.expert(e, xt[t:t + 1])[0]
        if moe.shared is not None:
            y = y + moe.shared(xt[t:t + 1])[0]
        ys.append(y)
        ws.append(weights)
        ids.append(chosen)
    return (torch.stack(ys).view(x.shape), torch.tensor(ws, dtype=x.dtype), torch.tensor(ids))
