"""Property-based fuzzing of the input edges: whatever a model file, HF config.json, calibration profile, plan or
sweep spec, profiler trace or expert-load CSV/NPY holds, loading it either works or raises ValueError (which the
CLI prints as one line, exit 2); never another exception. Values are drawn from every JSON/TOML type, in the places
where the real keys live. A trace that loads has finite times and non-negative durations; expert loads that load
are finite, non-negative, with finite positive layer totals; an NPY holding a pickle is refused unread.
The whole command line, 10,000 inputs at a time, is bench/fuzz_cli.py's job (outside CI).

CI runs 120 examples per edge (60 plans), derandomized, in a few seconds. A heavier run (1,500 per edge, 400 plans,
random seeds: about 7,900 inputs in 16 s) is this file with those numbers changed; on 2026-12-01 it found one
traceback (an unhashable value in a sweep grid, fixed) and then none."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuhours.hwmodels.calibration import CalibrationProfile, load_profile
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.sweep import parse_spec
from gpuhours.workloads.hf_config import model_from_hf_config
from gpuhours.workloads.presets import model_from_tables

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _mutate(doc: dict, draw_path: list[str], value):
    """A copy of `doc` with the value at `draw_path` (a path of existing keys) replaced."""
    out = json.loads(json.dumps(doc))
    node = out
    for key in draw_path[:-1]:
        node = node[key]
    node[draw_path[-1]] = value
    return out


def _paths(doc: dict, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for k, v in doc.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _paths(v, prefix + (k,))
    return out


def _only_value_errors(fn):
    try:
        fn()
    except ValueError:
        pass


HF_LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 128}
HF_PATHS = [(k,) for k in HF_LLAMA]


@SETTINGS
@given(path=st.sampled_from(HF_PATHS), value=values)
def test_hf_config_with_any_value_anywhere(path, value):
    _only_value_errors(lambda: model_from_hf_config(_mutate(HF_LLAMA, list(path), value)))


PRESET = tomllib.loads((ROOT / "workloads" / "presets" / "deepseek-v3.toml").read_text())


@SETTINGS
@given(path=st.sampled_from(_paths(PRESET)), value=values)
def test_preset_toml_with_any_value_anywhere(path, value):
    _only_value_errors(lambda: model_from_tables(_mutate(PRESET, list(path), value), "fuzz"))


PROFILE = load_profile("default-h800").to_dict()


@SETTINGS
@given(path=st.sampled_from(_paths(PROFILE)), value=values)
def test_calibration_profile_with_any_value_anywhere(path, value):
    _only_value_errors(lambda: CalibrationProfile.from_dict(_mutate(PROFILE, list(path), value)))


PLAN = tomllib.loads((ROOT / "workloads" / "plans" / "deepseek-v3.toml").read_text())
PLAN_PATHS = [p for p in _paths(PLAN) if p[0] in ("model", "cluster", "parallel", "run", "numerics", "network",
                                                     "routing")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(path=st.sampled_from(PLAN_PATHS), value=values)
def test_plan_with_any_value_anywhere(tmp_path_factory, path, value):
    doc = _mutate(PLAN, list(path), value)
    text = _to_toml(doc)
    if text is None:
        return  # not representable in TOML (None values): such a file cannot exist
    plan = tmp_path_factory.mktemp("plan") / "p.toml"
    plan.write_text(text)
    _only_value_errors(lambda: load_scenario(str(plan)))


@SETTINGS
@given(key=st.sampled_from(["gpus", "pp", "tp", "cp", "schedule", "precision", "price", "goodput_spare_nodes",
                            "seq_len", "nic_gbps"]), value=values)
def test_sweep_spec_with_any_value(key, value):
    _only_value_errors(lambda: parse_spec({"sweep": {"base": "deepseek-v3"}, "grid": {key: [value]}}))
    _only_value_errors(lambda: parse_spec({"sweep": {"base": "deepseek-v3"}, "fixed": {key: value},
                                           "grid": {"ep": [8]}}))


def _to_toml(doc: dict) -> str | None:
    """A minimal TOML writer for the plan's shape (tables of scalars, lists and inline tables)."""
    def val(v):
        if v is None:
            raise TypeError
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + "}"
        raise TypeError
    lines = []
    try:
        for table, body in doc.items():
            if not isinstance(body, dict):
                lines.insert(0, f"{json.dumps(table)} = {val(body)}")
                continue
            lines.append(f"[{json.dumps(table)}]")
            lines += [f"{json.dumps(k)} = {val(v)}" for k, v in body.items()]
    except TypeError:
        return None
    return "\n".join(lines) + "\n"


def test_the_toml_writer_round_trips_the_plan():
    assert tomllib.loads(_to_toml(PLAN)) == PLAN
    with pytest.raises(ValueError):
        load_scenario(str(ROOT / "README.md"))


# -- the command line: fast commands with any option values ----------------------------------------------------
from typer.testing import CliRunner  # noqa: E402

from gpuhours.cli import app  # noqa: E402

numbers = st.one_of(st.integers(-3, 2**64), st.sampled_from(["0", "-1", "inf", "nan", "1e400", "abc", "", "1.5",
                                                              "9223372036854775807", "1e-300"]))


def _cli_ok(args: list[str]) -> None:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code in (0, 2), (args, r.output)
    out = r.output
    assert "Traceback" not in out, (args, out)
    if r.exit_code == 2:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, r.stderr)
    else:
        low = out.lower()
        assert " nan" not in low and " inf " not in low and "infinity" not in low, (args, out)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(name=st.sampled_from(["1f1b", "zb1p", "dualpipe", "dualpipev", "interleaved-1f1b", "gpipe"]),
       pp=numbers, m=numbers, vpp=numbers, f=numbers, b=numbers, w=numbers)
def test_schedule_command_with_any_numbers(name, pp, m, vpp, f, b, w):
    _cli_ok(["schedule", name, "--pp", pp, "--microbatches", m, "--vpp", vpp, "--f", f, "--b", b, "--w", w])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(kind=st.sampled_from(["p2p", "all_reduce", "all_gather", "all_to_all", "ep_dispatch", "broadcast"]),
       gpus=numbers, size=numbers, per_node=numbers, nbytes=st.sampled_from(["1G", "256M", "0", "-1", "1e30", "x"]),
       nic=numbers)
def test_collective_command_with_any_numbers(kind, gpus, size, per_node, nbytes, nic):
    _cli_ok(["collective", kind, "--gpus", gpus, "--group-size", size, "--per-node", per_node, "--bytes", nbytes,
             "--nic-gbps", nic, "--json"])


# -- profiler traces and expert loads: any value in any field, any cell, any dtype, any truncation ---------------
from gpuhours.validation.trace import load_trace  # noqa: E402
from gpuhours.validation.trace_summary import summarise  # noqa: E402
from gpuhours.workloads.routing_loads import load_expert_loads  # noqa: E402

TRACE_EVENTS = [
    {"ph": "X", "cat": "kernel", "name": "nvjet_gemm", "pid": 0, "tid": 7, "ts": 1000, "dur": 50,
     "args": {"device": 0, "correlation": 1}},
    {"ph": "X", "cat": "kernel", "name": "ncclKernel_AllReduce", "pid": 0, "tid": 29, "ts": 1020, "dur": 40,
     "args": {"device": 0, "correlation": 2}},
    {"ph": "X", "cat": "user_annotation", "name": "forward_chunk", "pid": 1, "tid": 1, "ts": 990, "dur": 100,
     "args": {"External id": 9}},
    {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 995, "dur": 2,
     "args": {"correlation": 1}},
]
TRACE_FIELDS = ["ph", "cat", "name", "pid", "tid", "ts", "dur", "args", "args.device", "args.correlation",
                "args.External id"]


def _sound_trace(trace) -> None:
    for e in (*trace.events, *trace.annotations):
        assert math.isfinite(e.start) and math.isfinite(e.duration) and e.duration >= 0, e


@SETTINGS
@given(index=st.integers(0, len(TRACE_EVENTS) - 1), field=st.sampled_from(TRACE_FIELDS), value=values,
       gz=st.booleans(), cut=st.one_of(st.none(), st.integers(0, 600)))
def test_trace_with_any_value_in_any_event(tmp_path_factory, index, field, value, gz, cut):
    import gzip

    events = json.loads(json.dumps(TRACE_EVENTS))
    event = events[index]
    if field.startswith("args."):
        event["args"][field[5:]] = value
    else:
        event[field] = value
    raw = json.dumps({"traceEvents": events}).encode()
    raw = gzip.compress(raw) if gz else raw
    path = tmp_path_factory.mktemp("trace") / "t.json"
    path.write_bytes(raw if cut is None else raw[:cut])
    try:
        trace = load_trace(path)
    except ValueError:
        return
    _sound_trace(trace)
    summary = summarise(trace)
    assert math.isfinite(summary.span) and summary.span >= 0


cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["", " ", "x", "1e400", "-0", "nan", "inf", "1,2", "\ufeff1", "1_0", "0x10"]),
                  st.text(max_size=6))


@SETTINGS
@given(rows=st.integers(1, 3), experts=st.integers(1, 5), header=st.sampled_from([None, "layer", "step,layer"]),
       at=st.tuples(st.integers(0, 3), st.integers(0, 6)), cell=cells, extra=st.sampled_from(["", ",1", ",", "\n,"]))
def test_expert_load_csv_with_any_cell(tmp_path_factory, rows, experts, header, at, cell, extra):
    grid = [[f"{1 + r + e}.0" for e in range(experts)] for r in range(rows)]
    r, e = at
    if r < rows and e < experts:
        grid[r][e] = cell
    lines = [",".join(row) for row in grid]
    if header == "layer":
        lines = ["layer," + ",".join(f"e{i}" for i in range(experts))] + [f"{i},{x}" for i, x in enumerate(lines)]
    elif header == "step,layer":
        lines = (["step,layer," + ",".join(f"e{i}" for i in range(experts))]
                 + [f"{i % 2},{i},{x}" for i, x in enumerate(lines)])
    lines[-1] += extra
    path = tmp_path_factory.mktemp("loads") / "l.csv"
    path.write_text("\n".join(lines) + "\n")
    try:
        m = load_expert_loads(path)
    except ValueError:
        return
    assert np.all(np.isfinite(m.loads)) and np.all(m.loads >= 0) and np.all(m.loads.sum(axis=2) > 0)
    assert np.all(np.isfinite(m.loads.sum(axis=2)))


NPY_ARRAYS = {
    "float": np.array([[1.0, 2.0], [3.0, 4.0]]), "int": np.array([[1, 2], [3, 4]]), "bool": np.ones((2, 2), bool),
    "complex": np.ones((2, 2), complex), "object": np.array([{"a": 1}, [1, 2]], dtype=object),
    "structured": np.zeros(2, dtype=[("x", "f8")]), "string": np.array(["a", "b"]), "scalar": np.float64(3.0),
    "empty": np.zeros((0, 4)), "4d": np.ones((1, 1, 2, 2)), "nan": np.array([[np.nan, 1.0]]),
    "huge": np.array([[1e308, 1e308]]), "negative": np.array([[-1.0, 2.0]]), "zeros": np.zeros((2, 3)),
    "float16": np.ones((2, 2), np.float16), "uint64": np.array([[2**64 - 1, 1]], np.uint64),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(kind=st.sampled_from(sorted(NPY_ARRAYS)), cut=st.one_of(st.none(), st.integers(0, 200)),
       fortran=st.booleans())
def test_expert_load_npy_of_any_dtype_shape_or_truncation(tmp_path_factory, kind, cut, fortran):
    import io

    a = NPY_ARRAYS[kind]
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(a) if fortran and a.ndim >= 2 else a, allow_pickle=True)
    raw = buf.getvalue()
    path = tmp_path_factory.mktemp("npy") / "l.npy"
    path.write_bytes(raw if cut is None else raw[:cut])
    try:
        m = load_expert_loads(path)
    except ValueError:
        return
    assert kind in ("float", "int", "float16", "uint64"), kind  # every other kind is refused
    assert np.all(np.isfinite(m.loads.sum(axis=2))) and m.loads.ndim == 3


def test_a_pickled_npy_is_refused_without_running_the_pickle(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    path = tmp_path / "p.npy"
    np.save(path, np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_expert_loads(path)
