"""Regressions found by bench/fuzz_cli.py (the 10,000-input command-line fuzz): each is the smallest input that
once gave a traceback, a hang, a non-finite figure or a half-written file, now a one-line error (or a finite
answer). Parse-level checks, no step simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gpuhours.validation.trace import load_trace
from gpuhours.workloads.routing_loads import load_expert_loads


def _trace(tmp_path, **kernel):
    event = {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 100.0, "dur": 5.0,
             "args": {"device": 0, "correlation": 1}} | kernel
    first = {"ph": "X", "cat": "kernel", "name": "first", "pid": 0, "tid": 7, "ts": 0.0, "dur": 1.0,
             "args": {"device": 0}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": [first, event]}))  # json.dumps writes NaN / Infinity as Python reads
    return path


@pytest.mark.parametrize("field,value", [("ts", math.nan), ("dur", math.nan), ("dur", math.inf), ("dur", -3.0),
                                         ("ts", -math.inf)])
def test_trace_event_times_must_be_finite_and_durations_non_negative(tmp_path, field, value):
    # before: NaN/inf/negative times were read as given and came out as NaN efficiencies or a profile fitted to
    # a negative kernel time
    with pytest.raises(ValueError, match="ts must be finite, dur finite and >= 0"):
        load_trace(_trace(tmp_path, **{field: value}))


@pytest.mark.parametrize("change", [{"tid": math.inf}, {"args": {"device": math.inf}},
                                    {"args": {"device": 0, "correlation": -math.inf}}])
def test_trace_ids_that_overflow_an_int_are_refused(tmp_path, change):
    # int(inf) raises OverflowError, which escaped as a traceback
    with pytest.raises(ValueError, match="traceEvents"):
        load_trace(_trace(tmp_path, **change))


@pytest.mark.parametrize("args", [True, [1], "x", 3])
def test_trace_event_args_that_are_not_an_object_are_refused(tmp_path, args):
    # `args.get` on a bool or a list was an AttributeError traceback
    with pytest.raises(ValueError, match="traceEvents"):
        load_trace(_trace(tmp_path, args=args))


def test_trace_with_sound_times_still_loads(tmp_path):
    trace = load_trace(_trace(tmp_path))
    assert [e.duration for e in trace.events] == pytest.approx([1e-6, 5e-6])  # microseconds to seconds


def test_expert_loads_whose_layer_total_overflows_are_refused(tmp_path):
    # each value is finite, their sum is not: the per-rank shares became NaN and routing failed with a
    # RuntimeWarning on stderr before a misleading error about routing weights
    path = tmp_path / "big.csv"
    path.write_text(",".join(["1e308"] * 8) + "\n")
    with pytest.raises(ValueError, match="overflows"):
        load_expert_loads(path)


def test_expert_loads_npy_never_unpickles(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}, [1, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_expert_loads(path)


# -- command lines -------------------------------------------------------------------------------------------
from typer.testing import CliRunner  # noqa: E402

from gpuhours.cli import app  # noqa: E402


def _one_error_line(args: list[str]) -> str:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, (args, r.output, r.exception)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


@pytest.mark.parametrize("args,names", [
    (["routing", "--tokens", "1000000000"], "--tokens x --ep"),  # was a MemoryError (954 GiB of expert choices)
    (["routing", "--steps", "10000000"], "--steps"),  # ran for hours
    (["routing", "--ep", "100000000", "--tokens", "1"], "--tokens x --ep"),
])
def test_routing_work_is_bounded(args, names):
    line = _one_error_line(args)
    assert names in line and "routed tokens" in line


def test_routing_work_within_the_bounds_is_not_refused():
    from gpuhours.cli_network import MAX_BALANCING_TOKENS, MAX_ROUTED_TOKENS, _check_routing_work

    _check_routing_work(4096, 64, 64)  # the default micro-batch, 64 balancing steps
    _check_routing_work(MAX_ROUTED_TOKENS // 64, 64, 0)
    _check_routing_work(256, 64, MAX_BALANCING_TOKENS // (256 * 64))


@pytest.mark.parametrize("args", [["topology", "--gpus", "1000000", "--tiers", "3"],
                                  ["collective", "all_reduce", "--gpus", "1000000", "--tiers", "3"],
                                  ["topology", "--cluster", "dgx-h100", "--gpus", "10000000"]])
def test_fabric_size_is_bounded_like_the_scenario(args):
    # a graph of a million GPUs took minutes and about 6 GiB before failing; the scenario already refused it
    assert "at most 131,072" in _one_error_line(args)


def test_a_phased_estimate_that_fails_midway_prints_one_line(monkeypatch):
    # the phases' progress lines came before the error on stderr, so a failure printed three lines
    import gpuhours.simulator.phases as phases

    def fail_in_phase_two(plan, allow_oom=False, progress=None):
        progress(1, 3)
        raise ValueError("phase 'two': out of memory on rank 1")

    monkeypatch.setattr(phases, "estimate_phases", fail_in_phase_two)
    assert _one_error_line(["estimate", "--plan", "deepseek-v3-full"]) == \
        "error: phase 'two': out of memory on rank 1"


def test_unit_schedule_whose_makespan_overflows_is_refused():
    # --f 1e308 is finite, the makespan of 2 x 2 chunks of it is not: "makespan inf" was printed
    line = _one_error_line(["schedule", "1f1b", "--pp", "2", "--microbatches", "2", "--f", "1e308"])
    assert "unit costs f/b/w/fb" in line and "overflows" in line


def test_an_estimate_whose_totals_overflow_is_refused():
    # a 1e-300 Gb/s NIC gave a finite 3e303 s step and printed "wall clock inf days", "GPU-hours infM"
    from types import SimpleNamespace

    from gpuhours.simulator.run import RunEstimate, Segment
    from gpuhours.simulator.scenario import _check_finite_estimate

    def run(step_time, steps, price=2.0):
        seg = Segment(tokens=1.0, batch_requested=1, num_microbatches=1, batch_simulated=1, steps=steps,
                      step=SimpleNamespace(step_time=step_time))
        return RunEstimate(segments=(seg,), num_gpus=2048, price_per_gpu_hour=price)

    _check_finite_estimate(run(19.0, 2.4e5))  # the default run's size passes
    with pytest.raises(ValueError, match="wall-clock seconds overflow"):
        _check_finite_estimate(run(3.2e303, 2.4e5))
    with pytest.raises(ValueError, match="GPU-hours overflow"):
        _check_finite_estimate(run(1e305, 1.0))  # 1e305 s x 2048 / 3600 x the 1e4 margin for the energy line
    with pytest.raises(ValueError, match="cost overflow"):
        _check_finite_estimate(run(19.0, 2.4e5, price=1e308))


def test_a_collective_whose_time_overflows_is_refused():
    # --bytes 1e308 printed "time inf ms  algbw 0.0 GB/s"
    line = _one_error_line(["collective", "all_reduce", "--bytes", "1e308"])
    assert "--bytes" in line and "time_s overflows" in line


def test_model_depth_is_bounded(tmp_path):
    # 100,000 layers: stage balancing asked numpy for a 75 GiB table (a MemoryError traceback); 1e9 ran for minutes
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 100_000, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 128}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert "n_layers = 100000: expected at most 1000 layers" in _one_error_line(["estimate", "--model", str(path)])


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("table", ["grid", "fixed"])
def test_sweep_spec_refuses_non_finite_numbers(table, value):
    # `nic_gbps = [400, inf]` ran, and the table printed the point as "inf ... NaN NaN NaN"
    from gpuhours.simulator.sweep import parse_spec

    doc = {"sweep": {"base": "deepseek-v3"}, "grid": {"ep": [8]}}
    if table == "grid":
        doc["grid"]["nic_gbps"] = [400, value]
    else:
        doc["fixed"] = {"nic_gbps": value}
    with pytest.raises(ValueError, match=f"{table}.nic_gbps must be a finite number"):
        parse_spec(doc)


def test_goodput_failures_to_simulate_are_bounded():
    # `estimate --goodput --seq-len 1`: a 9,456-day run expects ~9,000 failures in each of 1,000 runs (minutes)
    from gpuhours.simulator.goodput import MAX_FAILURE_EVENTS, check_failure_events
    from gpuhours.simulator.goodput_sim import SimParams

    def params(days, per_day):
        return SimParams(work_s=days * 86400.0, interval_s=3600.0, stall_s=10.0, lag_s=0.0, restart_s=600.0,
                         repair_s=3600.0, spare_nodes=0, category_rates=(per_day / 86400.0,), replace_node=(False,))

    check_failure_events(params(52, 1.0), 2000)  # DeepSeek-V3's size: about 51 failures a run, twice 1,000 runs
    with pytest.raises(ValueError, match=r"goodput: 1,000 Monte Carlo runs x 9,456 expected failures"):
        check_failure_events(params(9456, 1.0), 1000)
    assert MAX_FAILURE_EVENTS == 1_000_000


@pytest.mark.parametrize("key,value", [("seq_len", {}), ("batch", "480"), ("steps", True), ("seq_len", 0)])
def test_phase_counts_must_be_positive_integers(key, value):
    # a phase's `seq_len = {}` reached steps x batch x seq_len: TypeError "int * dict" (a traceback)
    from gpuhours.simulator.phases import parse_phase

    with pytest.raises(ValueError, match=f"phase 'p': {key} must be a positive integer"):
        parse_phase({"name": "p", "steps": 10, "batch": 480} | {key: value}, 0)


def test_an_empty_model_is_refused_before_the_layout_search():
    # `estimate -m '' --cluster nan` searched 48 layouts of the default model, printed its progress line, then
    # failed on --cluster: two lines on stderr
    assert _one_error_line(["estimate", "-m", "", "--cluster", "nan"]).startswith("error: --model: empty")


@pytest.mark.parametrize("value", ["[1, 2]", "-5", "nan", "inf", "true", '"lots"'])
def test_a_plan_reference_that_is_not_a_figure_is_refused(tmp_path, value):
    """The final fuzz of 2026-12-01 (seed 11): a phased plan whose [reference] total_gpu_hours was a list reached
    the report's division (TypeError). Published figures are now checked where the plan is read."""
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[plan]\nbase = "deepseek-v3"\n[reference]\ntotal_gpu_hours = {value}\n'
                    '[[phase]]\nname = "a"\ntokens = "1B"\n')
    r = CliRunner().invoke(app, ["estimate", "--plan", str(plan)])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [r.output.strip()] and "reference.total_gpu_hours" in r.output
