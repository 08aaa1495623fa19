"""Expert loads measured elsewhere, read from a file: array (steps, layers, experts) of rows per expert.

Used by `routing.ep_rank_loads` ("file:<path>") and `eplb`; split out of workloads/routing.py (same behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class MeasuredLoads:
    """Expert loads read from a file: array (steps, layers, experts) of rows (or fractions) per expert."""

    loads: np.ndarray = field(repr=False)
    source: str = ""

    @property
    def n_experts(self) -> int:
        return int(self.loads.shape[2])

    def rank_rows(self, ep: int) -> np.ndarray:
        """(steps, layers, ep) rows per EP rank, experts placed contiguously."""
        if isinstance(ep, bool) or not isinstance(ep, int) or ep < 1 or self.n_experts % ep:
            raise ValueError(f"MeasuredLoads.rank_rows: ep = {ep!r}: must divide the {self.n_experts} experts")
        s, l, e = self.loads.shape
        return self.loads.reshape(s, l, ep, e // ep).sum(axis=3)

    def imbalance(self, ep: int) -> np.ndarray:
        """(steps, layers) max / mean rows per EP rank."""
        r = self.rank_rows(ep)
        return r.max(axis=2) / r.mean(axis=2)


def load_expert_loads(path: str | Path) -> MeasuredLoads:
    """Read expert loads from .npy ((layers, experts) or (steps, layers, experts)) or .csv.

    CSV: one row per layer, one column per expert, numbers only; an optional header row whose columns
    "step" and "layer" (if present) index the rows -- then rows are grouped by step (in order of appearance).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_expert_loads: path {str(path)!r} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a bad file
            raise ValueError(f"load_expert_loads: {path.name} is not a readable .npy file ({exc})") from None
        a = np.asarray(a, dtype=float) if a.dtype.kind in "iuf" else None
        if a is None:
            raise ValueError(f"load_expert_loads: {path.name}: expected a numeric array")
    elif suffix == ".csv":
        a = _read_csv(path)
    else:
        raise ValueError(f"load_expert_loads: {path.name}: allowed file types are .csv, .npy")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape) < 1:
        raise ValueError(f"load_expert_loads: {path.name}: expected shape (layers, experts) or "
                         f"(steps, layers, experts), got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"load_expert_loads: {path.name}: loads must be finite and >= 0")
    with np.errstate(over="ignore"):
        totals = a.sum(axis=2)
    if not np.all(np.isfinite(totals)):
        raise ValueError(f"load_expert_loads: {path.name}: a layer's total load overflows a float64; "
                         f"loads must be rows or fractions per expert")
    if np.any(totals <= 0):
        raise ValueError(f"load_expert_loads: {path.name}: a layer has zero total load")
    return MeasuredLoads(loads=a, source=str(path))


def _read_csv(path: Path) -> np.ndarray:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"load_expert_loads: {path.name} is empty")
    header = None
    first = [c.strip() for c in lines[0].split(",")]
    try:
        [float(c) for c in first]
    except ValueError:
        header, lines = [c.lower() for c in first], lines[1:]
    try:
        rows = np.array([[float(c) for c in ln.split(",")] for ln in lines], dtype=float)
    except ValueError:
        raise ValueError(f"load_expert_loads: {path.name}: non-numeric value in the data rows") from None
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"load_expert_loads: {path.name}: expected rows of equal length")
    if header is not None and len(header) != rows.shape[1]:
        raise ValueError(f"load_expert_loads: {path.name}: header has {len(header)} columns, data {rows.shape[1]}")
    step_col = header.index("step") if header and "step" in header else None
    index_cols = [i for i, h in enumerate(header or []) if h in ("step", "layer")]
    data = np.delete(rows, index_cols, axis=1)
    if data.shape[1] == 0:
        raise ValueError(f"load_expert_loads: {path.name}: no expert columns")
    if step_col is None:
        return data
    steps = rows[:, step_col]
    uniq = list(dict.fromkeys(steps.tolist()))
    blocks = [data[steps == s] for s in uniq]
    if len({b.shape[0] for b in blocks}) != 1:
        raise ValueError(f"load_expert_loads: {path.name}: every step needs the same number of layers")
    return np.stack(blocks)
