"""Pareto chart of a layout search (simulator/planner.py): wall-clock days against cost of every simulated layout,
the Pareto front (both minimised) as a step line, the best layout marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gpuhours.reports.pareto import finish, nondominated  # noqa: E402


def plan_front(rows) -> list:
    """Fitting rows no other fitting row dominates (<= days and cost, < on one), by days."""
    return nondominated([r for r in rows if r.fits], lambda r: (r.days, r.cost_usd))


def plot_plan(result, path: str | Path) -> str:
    """Write the chart of a PlanResult to `path` (PNG) and return the path."""
    fits = [r for r in result.rows if r.fits]
    over = [r for r in result.rows if not r.fits]
    front = plan_front(result.rows)
    k = 1e6 if max((r.cost_usd for r in result.rows), default=0) >= 1e6 else 1.0
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter([r.days for r in fits], [r.cost_usd / k for r in fits], s=16, color="0.6", label="simulated, fits")
    if over:
        ax.scatter([r.days for r in over], [r.cost_usd / k for r in over], s=16, marker="x", color="0.8",
                   label="simulated, does not fit")
    if front:
        ax.step([r.days for r in front], [r.cost_usd / k for r in front], where="post", color="tab:red", lw=1.2)
        ax.scatter([r.days for r in front], [r.cost_usd / k for r in front], s=30, color="tab:red", zorder=3,
                   label="Pareto front")
    if result.best is not None:
        b = result.best
        ax.scatter([b.days], [b.cost_usd / k], s=160, marker="*", color="gold", edgecolor="black", zorder=4,
                   label=f"best ({result.goal})")
        ax.annotate(b.layout, (b.days, b.cost_usd / k), textcoords="offset points", xytext=(6, 6), fontsize=7)
    ax.set_xlabel("wall-clock days")
    ax.set_ylabel("cost (million USD)" if k == 1e6 else "cost (USD)")
    ax.set_title(f"{result.model} on {result.gpus} x {result.gpu}: {result.simulated} simulated of "
                 f"{result.enumerated} enumerated", fontsize=10)
    return finish(fig, ax, path, "upper left")
