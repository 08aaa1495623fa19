"""Plots of MoE routing: load imbalance per step while the auxiliary-loss-free bias adapts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gpuhours.workloads.routing import BalanceStep  # noqa: E402


def draw_balancing(stats: Sequence[BalanceStep], path: str | Path, title: str = "") -> Path:
    """Max / mean rows per EP rank and per expert against step; the bias range on a second axis."""
    if not stats:
        raise ValueError("draw_balancing: stats is empty: expected the list simulate_balancing returns")
    path = Path(path)
    steps = [s.step for s in stats]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, [s.imbalance for s in stats], label="EP rank max/mean", color="tab:blue")
    ax.plot(steps, [s.expert_imbalance for s in stats], label="expert max/mean", color="tab:orange", alpha=0.7)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("load max / mean")
    ax.set_ylim(bottom=min(0.95, min(s.imbalance for s in stats)))
    ax2 = ax.twinx()
    ax2.fill_between(steps, [s.bias_min for s in stats], [s.bias_max for s in stats], color="tab:green",
                     alpha=0.15, label="bias range")
    ax2.set_ylabel("bias (score units)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    ax.set_title(title or "auxiliary-loss-free balancing")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
