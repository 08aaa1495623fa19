"""The step Gantt chart at its default: a whole-step overview with one instruction lane per rank over a detail
window, at most 2,000 px wide, instruction colours disjoint from op colours, the data-parallel tail named."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.reports.gantt import (
    COLOURS,
    COMM_COLOURS,
    COMPUTE_COLOURS,
    _legend_handles,
    detail_window,
    draw_gantt,
)
from gpuhours.simulator.engine import UnitCosts, run_unit
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.schedules import build_schedule

runner = CliRunner()
STREAMS = ("pipeline", "compute", "comm")


@pytest.fixture(scope="module")
def step_spans():
    """A small DualPipe step of DeepSeek-V2 in detail (op-level spans, F&B pairs and the DP tail)."""
    scenario = load_scenario(model="deepseek-v2", gpus=256, pp=4, ep=8)
    return scenario.simulator().step(8, detail=True).pipeline.spans


def test_colour_families_are_disjoint():
    instruction = {c for k, c in COLOURS.items() if k != "FB"}  # FB is drawn as its F and B halves
    assert len(instruction) == len(COLOURS) - 1
    assert not instruction & set(COMPUTE_COLOURS.values())
    assert not instruction & set(COMM_COLOURS.values())
    assert not set(COMPUTE_COLOURS.values()) & set(COMM_COLOURS.values())


def test_detail_window_is_n_instructions_of_rank0_from_its_first_pair(step_spans):
    own = sorted((s for s in step_spans if s.stream == "pipeline" and s.rank == 0 and s.kind != "tail"),
                 key=lambda s: s.start)
    first = next(i for i, s in enumerate(own) if s.kind == "FB")
    assert detail_window(step_spans, 3) == (own[first].start, own[first + 2].end)
    assert detail_window(step_spans, 10**6) == (own[0].start, own[-1].end)  # longer than the program: all of it
    with pytest.raises(ValueError):
        detail_window(step_spans, 0)


def test_legend_names_the_tail_and_the_three_families(step_spans):
    labels = [h.get_label() for h in _legend_handles(step_spans)[0]]
    assert any("data-parallel tail" in x for x in labels)
    assert {"pipeline instructions:", "compute stream:", "communication stream:"} <= set(labels)


def test_default_chart_width_at_most_2000px(tmp_path, step_spans):
    path = draw_gantt(step_spans, tmp_path / "d.png", title="t", streams=STREAMS, note="trace: t.json")
    w, h = Image.open(path).size
    assert w <= 2000 and h <= 2400
    wide = draw_gantt(step_spans, tmp_path / "all.png", streams=STREAMS, window="all")
    assert Image.open(wide).size[0] >= w  # every span of every lane: the old full-detail chart
    for bad in (0, -1, "some", 2.5, True):
        with pytest.raises(ValueError):
            draw_gantt(step_spans, tmp_path / "x.png", streams=STREAMS, window=bad)


def test_unit_schedule_chart_unchanged_in_kind(tmp_path):
    spans = run_unit(build_schedule("zb1p", 4, 8), UnitCosts()).spans
    path = draw_gantt(spans, tmp_path / "s.png", unit="units")
    assert Image.open(path).size[0] <= 2000


def test_step_command_gantt_window(tmp_path):
    base = ["step", "--model", "deepseek-v2", "--gpus", "256", "--pp", "4", "--ep", "8", "--microbatches", "8"]
    out = tmp_path / "w.png"
    r = runner.invoke(app, base + ["--gantt", str(out), "--gantt-window", "2"])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size[0] <= 2000
    for args, field in ((["--gantt", str(tmp_path / "x.png"), "--gantt-window", "abc"], "--gantt-window"),
                        (["--gantt-window", "3"], "--gantt")):
        r = runner.invoke(app, base + args)
        assert r.exit_code == 2
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0]
