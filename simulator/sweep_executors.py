"""Executors for sweeps and the layout search: each runs tasks and yields their results as they complete
(`simulator.sweep.run_sweep`, `simulator.planner`): in this process, in a local process pool, or on a Ray pool
(a cluster when Ray is attached to one).
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Iterator


def _serial(fn, tasks, workers) -> Iterator:
    for t in tasks:
        yield fn(*t)


def _process(fn, tasks, workers) -> Iterator:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(fn, *t) for t in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in pending:
                f.cancel()


def _ray(fn, tasks, workers) -> Iterator:
    if importlib.util.find_spec("ray") is None:
        raise RuntimeError("executor 'ray' needs the package 'ray', which is not installed "
                           "(pip install 'ray[default]'); use executor 'process'")
    from ray.util.multiprocessing import Pool  # pragma: no cover - ray is an optional extra, absent in CI

    # Ray's Pool joins the running Ray instance (ray.init / RAY_ADDRESS: a cluster) or starts a local one. Results
    # are yielded as they complete, as the other executors do, so rows reach the CSV while the sweep runs.
    with Pool(processes=workers) as pool:  # pragma: no cover
        yield from pool.imap_unordered(_apply, [(fn, t) for t in tasks])


def _apply(job):
    """fn(*task) for the Ray pool, which maps a one-argument function."""
    fn, task = job
    return fn(*task)


_EXECUTORS: dict[str, Callable] = {"process": _process, "serial": _serial, "ray": _ray}


def register_executor(name: str, run: Callable) -> None:
    """Plug in an executor: run(fn, tasks, workers) yields fn(*task) results as they complete."""
    _EXECUTORS[name] = run
