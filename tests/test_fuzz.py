"""Property-based fuzzing of the input edges: whatever a model file, HF config.json, calibration profile, plan or
sweep spec holds, loading it either works or raises ValueError (which the CLI prints as one line, exit 2); never
another exception. Values are drawn from every JSON/TOML type, in the places where the real keys live.

CI runs 120 examples per edge (60 plans), derandomized, in a few seconds. A heavier run (1,500 per edge, 400 plans,
random seeds: about 7,900 inputs in 16 s) is this file with those numbers changed; on 2026-12-01 it found one
traceback (an unhashable value in a sweep grid, fixed) and then none."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

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
