"""Tornado chart of the sensitivity table: for each calibrated rate, how far the run's GPU-hours move when it is
slower (red) or faster (blue) by its uncertainty, largest span on top."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gpuhours.simulator.sensitivity import SensitivityRow  # noqa: E402


def tornado(rows: list[SensitivityRow], path: str, title: str = "") -> str:
    if not rows:
        raise ValueError("sensitivity: no rows to draw")
    rows = sorted(rows, key=lambda r: r.span)  # largest at the top of a barh chart
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    y = range(len(rows))
    ax.barh(y, [100 * r.slower for r in rows], color="#c0392b", label="rate slower by its uncertainty")
    ax.barh(y, [100 * r.faster for r in rows], color="#2e6db4", label="rate faster by its uncertainty")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(list(y), [f"{r.what} ({'' if r.stated else 'default '}\u00b1{r.change:.0%})" for r in rows],
                  fontsize=8)
    ax.set_xlabel(f"change of GPU-hours (%), base {rows[0].base_gpu_hours / 1e6:.3f}M")
    ax.set_title(title or "sensitivity of GPU-hours to each calibrated rate, one at a time", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
