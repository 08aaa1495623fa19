"""Pareto front of a sweep table (both axes minimised) and its plot: wall-clock days against cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def pareto_front(df: pd.DataFrame, x: str = "wall_clock_days", y: str = "cost_usd") -> pd.DataFrame:
    """Feasible rows no other feasible row dominates (<= on both axes, < on one), sorted by x.

    Sort by (x, y) and keep a row when its y is below every y seen so far: O(n log n)."""
    ok = df[df["feasible"]].dropna(subset=[x, y]).sort_values([x, y, "point_id"])
    keep, best_y = [], float("inf")
    for idx, value in zip(ok.index, ok[y]):
        if value < best_y:
            keep.append(idx)
            best_y = value
    return ok.loc[keep]


def plot_pareto(df: pd.DataFrame, path: str | Path, x: str = "wall_clock_days", y: str = "cost_usd",
                title: str = "sweep") -> str:
    """Scatter of feasible points, the Pareto front as a step line, labelled with each front point's layout."""
    ok = df[df["feasible"]]
    front = pareto_front(df, x, y)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(ok[x], ok[y] / 1e6 if y == "cost_usd" else ok[y], s=14, color="0.7", label="feasible points")
    fy = front[y] / 1e6 if y == "cost_usd" else front[y]
    ax.step(front[x], fy, where="post", color="tab:red", lw=1.2)
    ax.scatter(front[x], fy, s=30, color="tab:red", zorder=3, label="Pareto front")
    mid = (ok[x].min() + ok[x].max()) / 2
    for (_, row), yy in zip(front.iterrows(), fy):
        right = row[x] > mid  # labels of right-hand points go to their left, inside the axes
        ax.annotate(_label(row, df), (row[x], yy), textcoords="offset points", xytext=(-5 if right else 5, 4),
                    ha="right" if right else "left", fontsize=7)
    ax.set_xlabel("wall-clock days" if x == "wall_clock_days" else x)
    ax.set_ylabel("cost (million USD)" if y == "cost_usd" else y)
    ax.set_title(f"{title}: {len(ok)} feasible of {len(df)} points, {len(front)} on the front")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _label(row: pd.Series, df: pd.DataFrame) -> str:
    """The swept values of a row (columns between point_id and feasible), compactly."""
    cols = list(df.columns)
    keys = cols[cols.index("point_id") + 1:cols.index("feasible")]
    return " ".join(f"{k}={row[k]}" for k in keys)
