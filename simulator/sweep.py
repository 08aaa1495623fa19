"""What-if sweeps: a grid of scenarios over a base plan, each point estimated and checked for memory.

Spec (TOML):

    [sweep]
    base = "deepseek-v3"          # a built-in plan every point starts from
    [fixed]                       # optional: overrides applied to every point
    seq_len = 4096
    [grid]                        # lists of values; the points are their cartesian product
    gpus = [1024, 2048]           # (or several [[grid]] tables: the union of their products)
    pp = [8, 16]

Keys of [fixed] and [grid] are the phase overrides of `simulator/phases.py` plus `precision` ("fp8"/"bf16"), and
the goodput model's inputs: `goodput = true` adds expected GPU-hours, days and cost under failures, checkpoints and
restarts (`simulator/goodput.py`) to every row, and `goodput_<field>` sets (or sweeps) any GoodputConfig field,
e.g. `goodput_checkpoint_interval_s = [1800, 3600]` or `goodput_spare_nodes = [0, 4]` (either implies goodput).
Rank by `expected_cost_usd` to optimise the expected cost instead of the ideal one.
Unknown keys, empty lists, a key both fixed and swept, and grids where no point is a valid layout raise
ValueError naming the key. A point whose layout is invalid, or that does not fit in GPU memory, is a row with
feasible = False and the reason.

Points are keyed by a stable id (a hash of base, fixed and the point's values). Rows are appended to
`results.csv` as they finish, so a rerun over the same directory skips finished points. Points differing only in
run-level keys (price, tokens, steps, batch) share one step simulator: they are sent to a worker together, and
each worker memoises simulators by that key.

The spec itself (keys, their checks, the points of a grid) is `simulator/sweep_spec.py`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from gpuhours.simulator.goodput import GoodputConfig, goodput_estimate
from gpuhours.simulator.phases import PhaseSpec, layout_label, phase_scenario
from gpuhours.simulator.run import estimate_run
from gpuhours.simulator.sweep_executors import _EXECUTORS
from gpuhours.simulator.sweep_spec import (  # noqa: F401  (the spec's names, re-exported for callers)
    EXECUTORS, GOALS, GOODPUT_KEYS, METRICS, PRECISIONS, RUN_KEYS, SWEEP_KEYS, SweepSpec, _check_keys, _check_value,
    load_spec, parse_spec)

_GIB = 2**30
# -- one point ---------------------------------------------------------------------------------------------------
def _overrides(fixed: dict, point: dict) -> dict:
    o = {k: v for k, v in {**fixed, **point}.items() if k not in GOODPUT_KEYS}
    if "precision" in o:
        o["fp8"] = o.pop("precision") == "fp8"
    return o


def goodput_config(fixed: dict, point: dict) -> GoodputConfig | None:
    """The point's goodput inputs (None: the sweep does not run the goodput model)."""
    o = {**fixed, **point}
    given = {k.removeprefix("goodput_"): v for k, v in o.items() if k.startswith("goodput_")}
    if not given and not o.get("goodput", False):
        return None
    return GoodputConfig(**given)


def point_scenario(base: str, fixed: dict, point: dict):
    """The scenario of one point (ValueError when its layout or values are invalid)."""
    return phase_scenario(base, PhaseSpec("point", tuple(_overrides(fixed, point).items())))


def simulator_key(base: str, fixed: dict, point: dict) -> str:
    """Points with equal keys have the same step simulator: run-level keys are left out."""
    o = {k: v for k, v in _overrides(fixed, point).items() if k not in RUN_KEYS}
    return json.dumps({"base": base, **o}, sort_keys=True)


_SIMULATORS: dict[str, object] = {}   # per process: simulator key -> StepSimulator (memoises its steps)
# Least recently used simulators are dropped beyond this many: points that share a simulator (they differ only in
# RUN_KEYS: price, tokens, ramp) come next to each other in grid order, and each simulator holds its model's ops
# (megabytes for a 61-layer MoE), so a few suffice and a worker stays small.
_MEMO_LIMIT = 16


def evaluate_point(base: str, fixed: dict, point: dict) -> dict:
    """One row: the point's metrics, feasibility and reason (never raises for a bad layout). Runs with the cyclic
    garbage collector paused, as an estimate does (`simulator/collector.py`): a worker holds the ops of its
    memoised simulators, which every automatic collection would walk again. A point's losing candidate splits are
    cyclic garbage (a coster's memoised methods refer back to it; a simulator dropped from the memo is emptied
    instead, `_release`), so the collector runs here, between points: the two young generations after every
    point (they hold that point's objects only: `_GC_EVERY`) and everything every `_GC_EVERY[2]` points. In a
    pool worker, what the worker had before its first point (modules, the plans, the network models) is frozen
    (`gc.freeze`: left out of the full collections), after a full collection. bench/bench_sweep.py, serial, the
    same code (2026-12-01): collections 1.8 s of ~17 s CPU with the young generation collected after every point
    and the middle one every 16 points, 1.0 s as here; 0.2 s of that is the frozen start-up objects. Peak memory
    108-109 MiB either way."""
    import gc

    from gpuhours.simulator.collector import collector_paused

    with collector_paused():
        if not _GC_COUNT[0] and FREEZE_IN_WORKERS and _in_pool_worker():
            gc.collect()
            gc.freeze()
        row = _evaluate_point(base, fixed, point)
        _GC_COUNT[0] += 1
        # collected before the collector is back on: a collection resets the young generation's allocation count,
        # which the point left far above its threshold, so switching it on does not set off a second, automatic
        # collection (of an older generation once ten young ones have run: the whole heap every few points)
        n = _GC_COUNT[0]
        gen = next((g for g in (2, 1, 0) if _GC_EVERY[g] and n % _GC_EVERY[g] == 0), None)
        if gen is not None:
            gc.collect(gen)
    return row


def _in_pool_worker() -> bool:
    """This process is a pool's worker (a `multiprocessing` child), not the caller's process, whose objects a
    freeze would keep from the collector for the rest of its life."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


# Points between collections of each generation (None: not on its own; the oldest one due is collected).
# Assumption (our setting, tried on bench_sweep's points: a full collection of a worker ~0.09 s; since no automatic
# collection follows a point, a full one every 256 points let a worker grow to 382-394 MiB; every 128: 272 MiB,
# every 64: 200 MiB for ~10% more CPU, 2026-12-01, load 2-2.6, before `_release`). Before 2026-12-01 14:00 UTC
# (for benchmarks): {0: 1, 1: 16, 2: 128}.
_GC_EVERY = {0: None, 1: 1, 2: 128}
_GC_COUNT = [0]
FREEZE_IN_WORKERS = True  # False: nothing frozen (for benchmarks)


def _evaluate_point(base: str, fixed: dict, point: dict) -> dict:
    row = {"feasible": False, "reason": "", "layout": "", "note": ""}
    row.update({m: math.nan for m in METRICS})
    try:
        scenario = point_scenario(base, fixed, point)
    except ValueError as exc:
        row["reason"] = f"layout: {exc}"
        return row
    key = simulator_key(base, fixed, point)
    sim = _SIMULATORS.pop(key, None)
    if sim is not None:
        _SIMULATORS[key] = sim  # most recently used last
    try:
        if sim is None:
            if len(_SIMULATORS) >= _MEMO_LIMIT:
                _release(_SIMULATORS.pop(next(iter(_SIMULATORS))))
            sim = _SIMULATORS[key] = scenario.simulator()
        from gpuhours.simulator.micro_batch_ramp import scenario_at_micro_batch_size
        run = estimate_run(sim, scenario.plan, simulator_for=lambda k: scenario_at_micro_batch_size(
            scenario, k, sim.stage_layers).simulator())
    except ValueError as exc:
        row["reason"] = f"layout: {exc}"
        return row
    steady = run.steady
    from gpuhours.simulator.micro_batch_ramp import run_memory
    mem = run_memory(scenario, run)
    row.update(
        feasible=mem.fits, reason=mem.reason(), layout=layout_label(scenario), note=" | ".join(run.notes),
        step_time_s=steady.step.step_time, tokens_per_s_per_gpu=run.tokens / run.wall_clock_s / run.num_gpus,
        gpu_hours=run.gpu_hours, wall_clock_days=run.wall_clock_days, cost_usd=run.cost_usd,
        mfu_bf16=steady.step.mfu("bf16"), memory_gib=mem.total / _GIB, microbatches=steady.num_microbatches)
    config = goodput_config(fixed, point)
    if config is not None:
        gp = goodput_estimate(run, scenario, config)
        row.update(expected_gpu_hours=gp.expected_gpu_hours, expected_days=gp.expected_days,
                   expected_cost_usd=gp.expected_cost_usd, goodput=gp.effective_training_time_ratio)
    return row


def _release(sim) -> None:
    """Empty a simulator dropped from the memo and its costers (rows keep figures only): their memoised methods
    refer back to them, so they would wait for a full collection; emptied, reference counting frees them now."""
    for obj in (getattr(sim, "_shared", None), getattr(sim, "_plain_coster", None), getattr(sim, "coster", None), sim):
        if isinstance(getattr(obj, "__dict__", None), dict):
            obj.__dict__.clear()


def _run_group(base: str, fixed: dict, items: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    return [(pid, evaluate_point(base, fixed, point)) for pid, point in items]


# -- results -----------------------------------------------------------------------------------------------------
def _columns(spec: SweepSpec) -> list[str]:
    return ["point_id", *spec.keys, "feasible", "reason", *METRICS, "layout", "note"]


def _read_done(path: Path, columns: list[str]) -> dict[str, dict]:
    """Finished rows by point id, and the file rewritten to hold exactly those rows.

    A kill mid-write leaves a torn last row. The writer ends every row with a line break, so a file that does not
    end in one has a torn last row even when its fields happen to parse (a value cut short); it is dropped, and
    the file is rewritten atomically with the header and the complete rows (their values as read, so the bytes
    of kept rows do not change), so that appending starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return {}
    with path.open(newline="") as f:
        text = f.read()
    reader = csv.DictReader(text.splitlines(keepends=True))
    if reader.fieldnames != columns:
        if not text.endswith(("\n", "\r")) and "\n" not in text:  # torn inside the header itself
            path.unlink()
            return {}
        raise ValueError(f"{path}: written by another sweep spec (columns {reader.fieldnames}); "
                         "use another output directory")
    rows = list(reader)
    if rows and not text.endswith(("\n", "\r")):
        rows.pop()
    done = {r["point_id"]: r for r in rows if None not in r.values() and r["point_id"]}
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(done.values())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return done


def _table(rows: list[dict], spec: SweepSpec, rank_by: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=_columns(spec))
    for col in (*METRICS, *spec.keys):
        values = df[col].replace("", math.nan)  # a key another [[grid]] table does not set
        try:
            df[col] = pd.to_numeric(values)
        except (ValueError, TypeError):
            df[col] = values
    df["feasible"] = df["feasible"].map(lambda v: str(v) == "True")
    for col in ("reason", "layout", "note"):
        df[col] = df[col].fillna("")
    return ranked(df, rank_by)


def ranked(df: pd.DataFrame, by: str = "wall_clock_days") -> pd.DataFrame:
    """Feasible points first, best `by` first; ties by point id (a stable order)."""
    if by not in METRICS:
        raise ValueError(f"rank_by must be one of {', '.join(METRICS)}; got {by!r}")
    ascending = by not in ("tokens_per_s_per_gpu", "mfu_bf16")
    out = df.sort_values(["feasible", by, "point_id"], ascending=[False, ascending, True], na_position="last")
    out = out.reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out


def best_points(df: pd.DataFrame) -> dict[str, dict]:
    """The best feasible point per goal: fastest, cheapest, fewest GPU-hours (empty when none is feasible)."""
    ok = df[df["feasible"]]
    if ok.empty:
        return {}
    return {goal: _jsonable(ok.sort_values([col, "point_id"]).iloc[0].to_dict()) for goal, col in GOALS.items()
            if ok[col].notna().any()}


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if hasattr(v, "item"):
            v = v.item()
        out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return out


@dataclass(frozen=True)
class SweepResult:
    spec: SweepSpec
    table: pd.DataFrame = field(repr=False, compare=False)
    csv_path: str
    parquet_path: str | None
    plot_path: str | None
    best: dict
    points_total: int
    points_run: int        # evaluated by this call
    points_resumed: int    # found finished in the CSV
    complete: bool

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "csv": self.csv_path, "parquet": self.parquet_path,
                "plot": self.plot_path, "best": self.best, "points_total": self.points_total,
                "points_run": self.points_run, "points_resumed": self.points_resumed, "complete": self.complete,
                "feasible": int(self.table["feasible"].sum())}


def run_sweep(spec: SweepSpec | str | Path, out_dir: str | Path, *, workers: int = 2, executor: str = "process",
              progress: Callable[[int, int], None] | None = None, parquet: bool = False, plot: bool = True,
              rank_by: str = "wall_clock_days", stop_after: int | None = None) -> SweepResult:
    """Run (or resume) a sweep into `out_dir`: results.csv, optionally results.parquet and pareto.png.

    `progress(done, total)` after each finished group of points; `stop_after` stops once at least that many
    points were evaluated by this call (an interrupted run, for tests); the table then holds what is finished.
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if executor not in _EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(_EXECUTORS)}; got {executor!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if rank_by not in METRICS:
        raise ValueError(f"rank_by must be one of {', '.join(METRICS)}; got {rank_by!r}")
    if parquet and importlib.util.find_spec("pyarrow") is None:
        raise RuntimeError("parquet output needs the package 'pyarrow', which is not installed; the CSV has the "
                           "same table")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    columns = _columns(spec)
    points = spec.points()
    fixed = dict(spec.fixed)
    _check_some_layout_valid(spec, points)
    ids = [spec.point_id(p) for p in points]
    by_id = dict(zip(ids, points))
    done = {pid: r for pid, r in _read_done(csv_path, columns).items() if pid in by_id}
    resumed = len(done)
    todo = [(pid, p) for pid, p in zip(ids, points) if pid not in done]
    groups: dict[str, list] = {}
    for pid, p in todo:
        groups.setdefault(simulator_key(spec.base, fixed, p), []).append((pid, p))
    tasks = [(spec.base, fixed, g) for g in groups.values()]
    has_header = csv_path.exists() and csv_path.stat().st_size > 0
    run_count = 0
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if not has_header:
            writer.writeheader()
        results = _EXECUTORS[executor](_run_group, tasks, workers)
        try:
            for rows in results:
                for pid, row in rows:
                    record = {"point_id": pid, **by_id[pid], **row}
                    writer.writerow({k: _csv_value(record.get(k)) for k in columns})
                    done[pid] = {k: _csv_value(record.get(k)) for k in columns}
                    run_count += 1
                f.flush()
                os.fsync(f.fileno())
                if progress:
                    progress(len(done), len(points))
                if stop_after is not None and run_count >= stop_after:
                    break
        finally:
            close = getattr(results, "close", None)
            if close:
                close()
    table = _table([done[pid] for pid in ids if pid in done], spec, rank_by)
    parquet_path = None
    if parquet:  # pragma: no cover - pyarrow is not installed here
        parquet_path = str(out / "results.parquet")
        table.to_parquet(parquet_path)
    plot_path = None
    if plot and table["feasible"].any():
        from gpuhours.reports.pareto import plot_pareto
        plot_path = plot_pareto(table, out / "pareto.png", title=spec.name)
    return SweepResult(spec, table, str(csv_path), parquet_path, plot_path, best_points(table), len(points),
                       run_count, resumed, len(done) == len(points))


def _csv_value(v):
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, tuple):
        return json.dumps(list(v))
    return repr(v) if isinstance(v, float) else v


def _check_some_layout_valid(spec: SweepSpec, points: list[dict]) -> None:
    """Raise when no point of the grid can be built (every combination breaks a layout rule)."""
    fixed = dict(spec.fixed)
    first = None
    for p in points:
        try:
            point_scenario(spec.base, fixed, p)
            return
        except ValueError as exc:
            first = first or (p, exc)
    p, exc = first
    raise ValueError(f"grid: no combination of {', '.join(spec.keys)} is a valid layout; e.g. {p}: {exc}")
