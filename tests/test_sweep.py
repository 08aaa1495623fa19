"""Sweeps: resume after a kill gives the uninterrupted table; the Pareto front is non-dominated; bad specs fail."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from gpuhours.reports.pareto import pareto_front
from gpuhours.simulator.sweep import load_spec, parse_spec, run_sweep

TINY = """
[source]
config = "test model"
[model]
name = "tiny-dense"
hidden = 512
n_layers = 8
vocab = 4096
dense_intermediate = 1536
[attention]
kind = "gqa"
n_heads = 8
n_kv_heads = 2
head_dim = 64
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    model = tmp_path_factory.mktemp("model") / "tiny.toml"
    model.write_text(TINY)
    return parse_spec({
        "sweep": {"base": "deepseek-v3", "name": "tiny"},
        "fixed": {"model": str(model), "seq_len": 512, "batch": 64, "tokens": "1B"},
        "grid": {"gpus": [16, 32], "pp": [2, 4], "tp": [1, 3], "schedule": ["1f1b", "dualpipe"],
                 "price": [1.0, 2.5]},
    })


@pytest.fixture(scope="module")
def full(spec, tmp_path_factory):
    return run_sweep(spec, tmp_path_factory.mktemp("full"), executor="serial")


def test_killed_sweep_resumes_to_the_same_table(spec, full, tmp_path):
    first = run_sweep(spec, tmp_path, executor="serial", stop_after=5, plot=False)
    assert not first.complete and 5 <= first.points_run < full.points_total
    calls = []
    second = run_sweep(spec, tmp_path, executor="serial", progress=lambda d, t: calls.append((d, t)))
    assert second.points_resumed == first.points_run                  # finished points are not redone
    assert second.points_run == full.points_total - first.points_run
    assert second.complete and calls[-1] == (full.points_total, full.points_total)
    pd.testing.assert_frame_equal(second.table, full.table)
    assert len(pd.read_csv(second.csv_path)) == full.points_total     # one row per point, no duplicates


def test_process_pool_gives_the_serial_table(spec, full, tmp_path):
    pooled = run_sweep(spec, tmp_path, workers=2, plot=False)
    pd.testing.assert_frame_equal(pooled.table, full.table)


def test_points_rows_and_reasons(full):
    t = full.table
    assert full.points_total == 2 * 2 * 2 * 2 * 2 and len(t) == 32
    bad = t[t["tp"] == 3]
    assert not bad["feasible"].any()
    assert bad["reason"].str.contains("multiple of pp x tp").all()
    ok = t[t["feasible"]]
    assert len(ok) == 16 and t["point_id"].is_unique
    # Price changes cost only: the same step, cost in proportion to the price.
    pair = ok.set_index(["gpus", "pp", "schedule", "price"]).sort_index()
    lo, hi = pair.xs(1.0, level="price"), pair.xs(2.5, level="price")
    assert (lo["step_time_s"] == hi["step_time_s"]).all()
    assert ((hi["cost_usd"] / lo["cost_usd"]) - 2.5).abs().max() < 1e-9
    # GPU-hours = days x 24 x GPUs.
    assert ((ok["gpu_hours"] - ok["wall_clock_days"] * 24 * ok["gpus"]).abs() / ok["gpu_hours"]).max() < 1e-9


def test_best_points_per_goal(full):
    ok = full.table[full.table["feasible"]]
    assert full.best["fastest"]["wall_clock_days"] == ok["wall_clock_days"].min()
    assert full.best["cheapest"]["cost_usd"] == ok["cost_usd"].min()
    assert full.best["fewest_gpu_hours"]["gpu_hours"] == ok["gpu_hours"].min()
    assert full.table["rank"].tolist() == list(range(1, 33))
    assert full.plot_path and full.plot_path.endswith("pareto.png")
    assert full.to_dict()["feasible"] == 16


def _dominated(row, others, x, y) -> bool:
    return any((o[x] <= row[x] and o[y] <= row[y]) and (o[x] < row[x] or o[y] < row[y]) for o in others)


def test_pareto_front_has_no_dominated_point(full):
    t = full.table
    front = pareto_front(t)
    ok = [r for _, r in t[t["feasible"]].iterrows()]
    assert len(front) >= 1
    for _, row in front.iterrows():
        assert not _dominated(row, ok, "wall_clock_days", "cost_usd")
    # and every feasible point off the front is dominated (or equal to a front point)
    front_ids = set(front["point_id"])
    for row in ok:
        if row["point_id"] not in front_ids:
            assert _dominated(row, ok, "wall_clock_days", "cost_usd") or any(
                (f["wall_clock_days"], f["cost_usd"]) == (row["wall_clock_days"], row["cost_usd"])
                for _, f in front.iterrows())


def test_pareto_front_synthetic():
    df = pd.DataFrame({"point_id": list("abcde"), "feasible": [True, True, True, True, False],
                       "wall_clock_days": [1.0, 2.0, 3.0, 2.5, 0.1], "cost_usd": [5.0, 3.0, 1.0, 4.0, 0.1]})
    assert list(pareto_front(df)["point_id"]) == ["a", "b", "c"]  # d is dominated by b; e is infeasible


def _spec(**over):
    doc = {"sweep": {"base": "deepseek-v3"}, "grid": {"pp": [8, 16]}}
    doc.update(over)
    return parse_spec(doc)


@pytest.mark.parametrize("doc,match", [
    ({"grid": {"pipeline": [8]}}, "'pipeline'"),
    ({"grid": {"pp": []}}, "grid.pp is empty"),
    ({"grid": {"pp": 8}}, "grid.pp must be a list"),
    ({"grid": {}}, "empty grid"),
    ({"grid": {"schedule": ["gpipe"]}}, "schedule must be one of"),
    ({"grid": {"precision": ["fp4"]}}, "precision must be one of"),
    ({"grid": {"pp": [0]}}, "grid.pp must be a positive integer"),
    ({"fixed": {"pp": 8}}, "grid.pp: also set in \\[fixed\\]"),
    ({"fixed": {"colour": 1}}, "'colour'"),
    ({"sweep": {"base": "nope"}}, "sweep.base"),
    ({"extra": {}}, "unknown table 'extra'"),
    ({"fixed": {"goodput": "yes"}}, "goodput must be true or false"),
    ({"grid": {"goodput_spare_nodes": [-1]}}, "goodput_spare_nodes"),
    ({"grid": {"goodput_colour": [1]}}, "'goodput_colour'"),
])
def test_bad_specs(doc, match):
    with pytest.raises(ValueError, match=match):
        _spec(**doc)


def test_impossible_grid_names_the_keys(tmp_path):
    spec = _spec(grid={"pp": [3], "schedule": ["dualpipe"]})  # DualPipe needs an even pp
    with pytest.raises(ValueError, match="no combination of pp, schedule"):
        run_sweep(spec, tmp_path)


def test_bad_spec_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[grid\n")
    with pytest.raises(ValueError, match="malformed TOML"):
        load_spec(tmp_path / "bad.toml")


def test_example_spec_parses():
    from pathlib import Path
    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "sweep-deepseek-v3.toml")
    # two grids of 2 x 3 x 2 points each: tensor parallelism, then context parallelism
    assert spec.keys == ("gpus", "tp", "schedule", "cp") and len(spec.points()) == 24


def test_unknown_executor(spec, tmp_path):
    with pytest.raises(ValueError, match="executor must be one of"):
        run_sweep(spec, tmp_path, executor="dask")


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_executor_names_the_missing_package(spec, tmp_path):
    with pytest.raises(RuntimeError, match="'ray'"):
        run_sweep(spec, tmp_path, executor="ray")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (optional: pip install 'gpuhours[ray]'); a local Ray instance runs it")
def test_ray_executor_runs(spec, full, tmp_path):  # pragma: no cover
    pd.testing.assert_frame_equal(run_sweep(spec, tmp_path, executor="ray").table, full.table)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_is_a_clear_error(spec, tmp_path):
    with pytest.raises(RuntimeError, match="pyarrow"):
        run_sweep(spec, tmp_path, parquet=True)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                    reason="pyarrow is not installed (optional: pip install 'gpuhours[parquet]')")
def test_parquet_holds_the_same_table(spec, full, tmp_path):
    r = run_sweep(spec, tmp_path, executor="serial", parquet=True, plot=False)
    back = pd.read_parquet(r.parquet_path)
    assert list(back["point_id"]) == list(r.table["point_id"])
    assert back["gpu_hours"].tolist() == pytest.approx(r.table["gpu_hours"].tolist(), nan_ok=True)


def test_other_spec_in_the_same_directory(spec, full, tmp_path):
    run_sweep(spec, tmp_path, executor="serial", stop_after=1, plot=False)
    other = parse_spec({"sweep": {"base": "deepseek-v3"}, "grid": {"pp": [8], "gpus": [512]}})
    with pytest.raises(ValueError, match="another sweep spec"):
        run_sweep(other, tmp_path, executor="serial")


def test_union_of_grids():
    spec = parse_spec({"sweep": {"base": "deepseek-v3"},
                       "grid": [{"model": ["llama-3-70b"], "tp": [1, 2]}, {"model": ["deepseek-v3"], "ep": [8]},
                                {"model": ["llama-3-70b"], "tp": [2]}]})
    assert spec.keys == ("model", "tp", "ep")
    assert len(spec.points()) == 3  # the third grid repeats a point of the first: each point once
    assert len({spec.point_id(p) for p in spec.points()}) == 3


def test_resume_after_a_torn_write_keeps_every_point_once(spec, full, tmp_path):
    # A kill can cut results.csv anywhere: inside the header, inside a row, just before a row's line break.
    # Whatever the cut, the resumed CSV holds every point exactly once with the uninterrupted run's values.
    whole = open(full.csv_path, newline="").read()
    header_end = whole.index("\n") + 1
    row_ends = [i + 1 for i, ch in enumerate(whole) if ch == "\n"]
    cuts = [5, header_end, header_end + 7, row_ends[3] - 1, row_ends[3] - 2, row_ends[5] + 11, len(whole) - 1]
    expected = pd.read_csv(full.csv_path).set_index("point_id").sort_index()
    for cut in cuts:
        out = tmp_path / f"cut{cut}"
        out.mkdir()
        (out / "results.csv").write_text(whole[:cut], newline="")
        resumed = run_sweep(spec, out, executor="serial", plot=False)
        got = pd.read_csv(resumed.csv_path)
        assert got["point_id"].is_unique and len(got) == full.points_total, cut
        pd.testing.assert_frame_equal(got.set_index("point_id").sort_index(), expected, check_like=True)


def test_goodput_columns_and_goal(tmp_path):
    # one layout, the goodput model swept: the step simulator is shared, the ideal figures equal, and with no
    # failures (rate scale 0) and free checkpoints the expected figures equal the ideal ones exactly
    from gpuhours.simulator.sweep import simulator_key

    doc = {"sweep": {"base": "deepseek-v3"}, "fixed": {"goodput_runs": 50, "goodput_write_bw_per_gpu": float("inf")},
           "grid": {"goodput_failure_rate_scale": [0.0, 1.0], "goodput_spare_nodes": [0, 4]}}
    sp = parse_spec(doc)
    keys = {simulator_key(sp.base, dict(sp.fixed), p) for p in sp.points()}
    assert len(keys) == 1
    result = run_sweep(sp, tmp_path, executor="serial", plot=False)
    t = result.table
    assert t["gpu_hours"].nunique() == 1
    free = t[t["goodput_failure_rate_scale"] == 0.0]
    assert (free["expected_gpu_hours"] == free["gpu_hours"]).all() and (free["goodput"] == 1.0).all()
    failing = t[t["goodput_failure_rate_scale"] == 1.0]
    assert (failing["expected_gpu_hours"] > failing["gpu_hours"]).all()
    best = result.best["cheapest_expected"]
    assert best["expected_cost_usd"] == t["expected_cost_usd"].min()
