"""A sweep's spec: the keys a sweep may fix or vary, their checks, and the grid of points (see simulator/sweep.py
for the TOML form and what a sweep runs)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from gpuhours.simulator.goodput import GoodputConfig
from gpuhours.simulator.phases import BOOK_KEYS, PHASE_KEYS
from gpuhours.simulator.scenario import list_plans
from gpuhours.workloads.parallel import SCHEDULES

PRECISIONS = ("fp8", "bf16")
GOODPUT_KEYS = ("goodput",) + tuple(f"goodput_{f.name}" for f in fields(GoodputConfig))
SWEEP_KEYS = tuple(k for k in PHASE_KEYS if k not in BOOK_KEYS) + ("precision",) + GOODPUT_KEYS
RUN_KEYS = ("price", "tokens", "steps", "batch", "batch_start", "batch_end", "ramp_tokens")  # no new step shapes
METRICS = ("step_time_s", "tokens_per_s_per_gpu", "gpu_hours", "wall_clock_days", "cost_usd", "mfu_bf16",
           "memory_gib", "microbatches", "expected_gpu_hours", "expected_days", "expected_cost_usd", "goodput")
GOALS = {"fastest": "wall_clock_days", "cheapest": "cost_usd", "fewest_gpu_hours": "gpu_hours",
         "cheapest_expected": "expected_cost_usd"}  # the last only when the sweep runs the goodput model
EXECUTORS = ("process", "serial", "ray")
_POSITIVE_INT = ("gpus", "pp", "ep", "tp", "cp", "vpp", "micro_batch_size", "seq_len", "batch", "steps", "comm_sms",
                 "etp")


@dataclass(frozen=True)
class SweepSpec:
    base: str
    fixed: tuple[tuple[str, object], ...]
    grids: tuple[tuple[tuple[str, tuple], ...], ...]   # each grid: (key, values) pairs in spec order
    name: str = "sweep"

    @property
    def keys(self) -> tuple[str, ...]:
        """Swept keys in first-seen order (the table's point columns)."""
        return tuple(dict.fromkeys(k for g in self.grids for k, _ in g))

    def points(self) -> list[dict]:
        """Every point once, in a deterministic order (grids in order, then their products)."""
        out, seen = [], set()
        for grid in self.grids:
            keys = [k for k, _ in grid]
            for values in itertools.product(*(v for _, v in grid)):
                point = dict(zip(keys, values))
                pid = self.point_id(point)
                if pid not in seen:
                    seen.add(pid)
                    out.append(point)
        return out

    def point_id(self, point: dict) -> str:
        text = json.dumps({"base": self.base, "fixed": dict(self.fixed), "point": point}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "fixed": dict(self.fixed),
                "grids": [{k: list(v) for k, v in g} for g in self.grids]}


def _check_value(key: str, value, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value) and not key.startswith("goodput_"):
        raise ValueError(f"{where}.{key} must be a finite number, got {value!r}")  # TOML has inf and nan
    if isinstance(value, dict) or (isinstance(value, list) and key != "stage_layers"):
        raise ValueError(f"{where}.{key} must be a single value, got {value!r}")
    if key == "goodput" and not isinstance(value, bool):
        raise ValueError(f"{where}.goodput must be true or false, got {value!r}")
    if key.startswith("goodput_"):
        try:
            GoodputConfig(**{key.removeprefix("goodput_"): value})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}.{key}: {exc}") from None
    if key == "precision" and value not in PRECISIONS:
        raise ValueError(f"{where}.precision must be one of {', '.join(PRECISIONS)}; got {value!r}")
    if key == "recompute":  # a policy: names, selective:<modules>, full:N (workloads.recompute)
        from gpuhours.workloads.recompute import recompute_policy

        try:
            recompute_policy(value)
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
    if key == "fp8_recipe":
        from gpuhours.workloads.ops import FP8_RECIPES

        if value not in FP8_RECIPES:
            raise ValueError(f"{where}.fp8_recipe must be one of {', '.join(FP8_RECIPES)}; got {value!r}")
    if key == "link_sharing":
        from gpuhours.hwmodels.link_sharing import LINK_SHARING

        if value not in LINK_SHARING:
            raise ValueError(f"{where}.link_sharing must be one of {', '.join(LINK_SHARING)}; got {value!r}")
    if key == "fp8_gemm_kernels":
        from gpuhours.hwmodels.gemm_kernels import check_family

        check_family(value, f"{where}.fp8_gemm_kernels")
    if key == "schedule" and value not in SCHEDULES:
        raise ValueError(f"{where}.schedule must be one of {', '.join(SCHEDULES)}; got {value!r}")
    if key in _POSITIVE_INT and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")
    if key in ("price", "nic_gbps", "oversubscription") and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise ValueError(f"{where}.{key} must be a non-negative number, got {value!r}")


def _check_keys(table: dict, where: str) -> None:
    for key in table:
        if key not in SWEEP_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}; allowed: {', '.join(SWEEP_KEYS)}")


def parse_spec(doc: dict, name: str = "sweep") -> SweepSpec:
    """A SweepSpec from a parsed TOML document (see the module docstring)."""
    unknown = sorted(set(doc) - {"sweep", "fixed", "grid"})
    if unknown:
        raise ValueError(f"sweep spec: unknown table {unknown[0]!r}; allowed: sweep, fixed, grid")
    head = doc.get("sweep", {})
    bad = sorted(set(head) - {"base", "name"})
    if bad:
        raise ValueError(f"sweep: unknown key {bad[0]!r}; allowed: base, name")
    base = head.get("base")
    if base not in list_plans():
        raise ValueError(f"sweep.base must be one of {', '.join(list_plans())}; got {base!r}")
    fixed = doc.get("fixed", {})
    _check_keys(fixed, "fixed")
    for k, v in fixed.items():
        _check_value(k, v, "fixed")
    grids_doc = doc.get("grid")
    if grids_doc is None:
        raise ValueError("grid: a [grid] table (or [[grid]] tables) of value lists is required")
    grids_doc = grids_doc if isinstance(grids_doc, list) else [grids_doc]
    grids = []
    for table in grids_doc:
        _check_keys(table, "grid")
        if not table:
            raise ValueError("grid: empty grid table; give at least one key with a list of values")
        pairs = []
        for key, values in table.items():
            if key in fixed:
                raise ValueError(f"grid.{key}: also set in [fixed]; set it in one place")
            if not isinstance(values, list):
                raise ValueError(f"grid.{key} must be a list of values, got {values!r}")
            if not values:
                raise ValueError(f"grid.{key} is empty; give at least one value")
            for v in values:
                _check_value(key, v, "grid")
            pairs.append((key, tuple(dict.fromkeys(_hashable(v) for v in values))))
        grids.append(tuple(pairs))
    return SweepSpec(base, tuple(fixed.items()), tuple(grids), head.get("name", name))


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"sweep spec {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ValueError(f"sweep spec {str(path)!r}: malformed TOML ({exc})") from None
    return parse_spec(doc, path.stem)
