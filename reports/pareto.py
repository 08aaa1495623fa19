"""Pareto front of a sweep table (both axes minimised) and its plot: wall-clock days against cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def nondominated(items, key) -> list:
    """Items no other item dominates on two minimised axes (<= on both, < on one), by the first: sort by
    key(item) = (x, y, tie-breaks...) and keep an item when its y is below every y seen so far. O(n log n)."""
    keep, best_y = [], float("inf")
    for item in sorted(items, key=key):
        y = key(item)[1]
        if y < best_y:
            keep.append(item)
            best_y = y
    return keep


def pareto_front(df: pd.DataFrame, x: str = "wall_clock_days", y: str = "cost_usd") -> pd.DataFrame:
    """Feasible rows no other feasible row dominates (<= on both axes, < on one), sorted by x."""
    ok = df[df["feasible"]].dropna(subset=[x, y])
    keys = dict(zip(ok.index, zip(ok[x], ok[y], ok["point_id"])))
    return ok.loc[nondominated(ok.index, keys.__getitem__)]


def finish(fig, ax, path: str | Path, legend: str) -> str:
    """Grid, legend, tight layout, write to `path`, close; the path."""
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


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
    return finish(fig, ax, path, "upper right")


def _label(row: pd.Series, df: pd.DataFrame) -> str:
    """The swept values of a row (columns between point_id and feasible), compactly."""
    cols = list(df.columns)
    keys = cols[cols.index("point_id") + 1:cols.index("feasible")]
    return " ".join(f"{k}={row[k]}" for k in keys)
