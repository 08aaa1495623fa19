"""Multi-token prediction (DeepSeek-V3 section 2.2), one module per extra predicted token.

Module k (k = 1..D) at position i:
  h'_i = M_k [RMSNorm(h_i^{k-1}) ; RMSNorm(Emb(t_{i+k}))]      M_k: (2h -> h) projection
  h_i^k = Block_k(h'_i)                                          one transformer block (MLA + MoE)
  logits = Head(RMSNorm_k(h_i^k))  predicts t_{i+k+1}
Embedding and output head are the main model's (the same Parameter objects), not copies. h^0 is the main
model's last hidden state. With a sequence of S tokens, module k has S - k positions and S - k - 1 targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpuhours.validation.mla import RMSNorm


class MTPModule(nn.Module):
    def __init__(self, hidden: int, block: nn.Module, embed: nn.Embedding, head: nn.Linear, norm_eps: float = 1e-6):
        super().__init__()
        self.hnorm = RMSNorm(hidden, norm_eps)
        self.enorm = RMSNorm(hidden, norm_eps)
        self.proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.block = block
        self.norm = RMSNorm(hidden, norm_eps)
        # The main model's modules themselves (Module.parameters() de-duplicates, so they count once).
        self.embed = embed
        self.head = head

    def forward(self, h_prev: torch.Tensor, next_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h_prev (B, L, h) and next_tokens (B, L) (token i+k at position i) -> (h^k (B, L, h), logits (B, L, V))."""
        if h_prev.shape[:2] != next_tokens.shape:
            raise ValueError(f"next_tokens shape {tuple(next_tokens.shape)}: must equal h_prev's (B, L) {tuple(h_prev.shape[:2])}")
        e = self.embed(next_tokens)
        h = self.proj(torch.cat([self.hnorm(h_prev), self.enorm(e)], dim=-1))
        h = self.block(h)
        return h, self.head(self.norm(h))


def mtp_losses(modules, h_main: torch.Tensor, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Cross-entropy of each MTP depth k = 1..D: logits (B, S-k, V), loss over targets tokens[:, k+1:]."""
    S = tokens.shape[1]
    h = h_main
    logits_all, losses = [], []
    for k, module in enumerate(modules, start=1):
        if S - k - 1 < 1:
            raise ValueError(f"sequence length {S}: MTP depth {k} needs at least {k + 2} tokens")
        h, logits = module(h[:, : S - k], tokens[:, k:])
        target = tokens[:, k + 1:]
        loss = F.cross_entropy(logits[:, : S - k - 1].flatten(0, 1).float(), target.flatten())
        logits_all.append(logits)
        losses.append(loss)
    return logits_all, losses
