"""Gantt and Chrome-trace writers: files appear, events map one to one onto spans."""

from __future__ import annotations

import json

import pytest

from gpuhours.reports.chrome_trace import to_chrome_trace, write_chrome_trace
from gpuhours.reports.gantt import draw_gantt
from gpuhours.simulator.engine import UnitCosts, run_unit
from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.timeline import Span


@pytest.fixture(scope="module")
def dual_spans():
    return run_unit(build_schedule("dualpipe", 4, 8), UnitCosts(fb=2.5)).spans


def test_chrome_trace_one_event_per_span(dual_spans):
    trace = to_chrome_trace(dual_spans, time_unit_s=1e-3)
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(dual_spans)
    for e, s in zip(xs, dual_spans):
        assert e["pid"] == s.rank and e["name"] == s.name and e["cat"] == s.kind
        assert e["ts"] == pytest.approx(s.start * 1e3) and e["dur"] == pytest.approx((s.end - s.start) * 1e3)
        assert e["args"]["microbatch"] == s.microbatch and e["args"]["stage"] == s.stage
        assert e["args"]["direction"] == dict(s.args)["direction"]
    # FB events carry their backward half
    fb = [e for e in xs if e["cat"] == "FB"]
    assert fb and all("b_microbatch" in e["args"] for e in fb)
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert procs == {r: f"rank {r}" for r in range(4)}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert set(threads.values()) == {"compute"}
    assert all((e["pid"], e["tid"]) in threads for e in xs)


def test_chrome_trace_streams_become_threads(tmp_path):
    spans = [Span(0, "compute", 0.0, 1e-3, "gemm", "gemm"), Span(0, "comm", 2e-4, 5e-4, "a2a", "collective",
                                                                  args=(("bytes", 1024), ("peer", (1, 2))))]
    path = write_chrome_trace(spans, tmp_path / "t.json")
    trace = json.loads(path.read_text())
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [e["tid"] for e in xs] == [0, 1]
    assert xs[0]["dur"] == pytest.approx(1000.0) and xs[1]["ts"] == pytest.approx(200.0)
    assert xs[1]["args"]["bytes"] == 1024 and xs[1]["args"]["peer"] == [1, 2]
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert names == {0: "compute", 1: "comm"}
    with pytest.raises(ValueError):
        to_chrome_trace(spans, time_unit_s=0)


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_gantt_writes_by_suffix(tmp_path, dual_spans, suffix, magic):
    path = draw_gantt(dual_spans, tmp_path / f"g{suffix}", title="dualpipe pp=4 M=8", unit="units")
    assert path.read_bytes()[:5].startswith(magic)


def test_gantt_streams_and_errors(tmp_path):
    spans = [Span(r, st, 0.1 * r, 0.1 * r + 0.05, "x", "gemm") for r in range(2) for st in ("compute", "comm")]
    path = draw_gantt(spans, tmp_path / "s.png", streams=("compute", "comm"), unit="ms")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError):
        draw_gantt(spans, tmp_path / "s.jpg")
    with pytest.raises(ValueError):
        draw_gantt(spans, tmp_path / "s.png", streams=("nope",))
    with pytest.raises(ValueError):
        draw_gantt(spans, tmp_path / "s.png", unit="hours")


def test_gantt_large_schedule(tmp_path):
    spans = run_unit(build_schedule("1f1b", 16, 32)).spans
    assert draw_gantt(spans, tmp_path / "big.png").stat().st_size > 10_000
