"""Kernels per op measured from a trace (validation/trace_launch.py) and their use (hwmodels/launch.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.calibration import CalibrationProfile, load_profile
from gpuhours.hwmodels.launch import LaunchModel
from gpuhours.validation.trace_launch import MIN_GAPS, gap_figure, kernels_per_op, launch_section, queued_gaps
from gpuhours.workloads.ops import GemmShape, Op

NORM = Op("l.norm", "elementwise", "F", bytes=1.0)
GEMM = Op("l.w", "gemm", "F", gemm=GemmShape(64, 64, 64))
GROUPED = Op("l.experts", "grouped_gemm", "F", gemm=GemmShape(64, 64, 64), groups=4)
ATT_F = Op("l.core", "attention", "F")
ATT_B = Op("l.core", "attention", "B")
A2A = Op("l.a2a", "collective", "F", collective="all_to_all", group="ep")
CLASS = {"elementwise": "memory", "gemm": "gemm", "grouped_gemm": "gemm", "attention": "attn"}


def _class_of(op: Op) -> str:
    return CLASS[op.kind]


def test_one_kind_per_class_is_measured_over_modelled():
    # 3 norms run twice each: 6 ops; the trace ran 15 memory-bound kernels -> 2.5 a norm
    per_op, rec = kernels_per_op({"memory": 15, "gemm": 2}, [(NORM, 2)] * 3 + [(GEMM, 2), (A2A, 4)], _class_of)
    assert per_op == {"elementwise": 2.5, "gemm": 1.0}
    assert rec["modelled_ops"] == {"elementwise": 6, "gemm": 2}       # the collective is no kernel of ours
    assert rec["unmatched_kernels"] == {}


def test_a_shared_class_is_split_by_the_bundled_counts():
    # class "gemm": 4 dense + 2 grouped ops, one kernel each in data/launch.toml: 9 kernels -> 1.5 each;
    # class "attn": forward 1 kernel, backward 3 (data/launch.toml): 8 kernels -> forward 2, backward 6
    per_op, _ = kernels_per_op({"gemm": 9, "attn": 8}, [(GEMM, 4), (GROUPED, 2), (ATT_F, 1), (ATT_B, 1)], _class_of)
    assert per_op == {"gemm": 1.5, "grouped_gemm": 1.5, "attention_forward": 2.0, "attention_backward": 6.0}


def test_kernels_are_conserved_and_unmatched_ones_reported_not_spread():
    measured = {"memory": 31, "gemm": 7, "attn": 5, "memcpy": 12}
    ops = [(NORM, 10), (GEMM, 3), (GROUPED, 1), (ATT_F, 1), (ATT_B, 1)]
    per_op, rec = kernels_per_op(measured, ops, _class_of)
    launch = LaunchModel.load()
    counted = sum(per_op[launch.kind_of(op)] * n for op, n in ops)
    assert counted == pytest.approx(31 + 7 + 5, rel=1e-4)               # memcpy has no op of ours
    assert rec["unmatched_kernels"] == {"memcpy": 12}
    assert "memcpy 12" in launch_section(per_op, rec, "t.json")["provenance"]


def test_a_class_without_kernels_in_the_trace_gives_no_figure():
    per_op, _ = kernels_per_op({"memory": 4}, [(NORM, 2), (GEMM, 3)], _class_of)
    assert per_op == {"elementwise": 2.0}                               # gemm keeps data/launch.toml's count


def _with_launch(section: dict) -> CalibrationProfile:
    d = load_profile("default-h800").to_dict()
    return CalibrationProfile.from_dict(d | {"name": "with-launch", "launch": section})


def test_the_profiles_counts_replace_the_bundled_ones_for_its_kinds():
    profile = _with_launch({"kernels_per_op": {"elementwise": 2.5}, "provenance": "test"})
    m = LaunchModel.for_profile(profile)
    assert m.kernel_count(NORM) == 2.5 and m.kernel_count(NORM, measured=False) == 1
    assert m.kernel_count(GEMM) == 1 and m.kernel_count(ATT_B) == 3 and m.kernel_count(A2A) == 0
    gap = LaunchModel.load().kernel_gap_s
    assert m.kernel_gap_s == gap                                        # no gap in the section: the bundled one
    assert m.op_time(1e-6, m.kernel_count(NORM)) == pytest.approx(1e-6 + 2.5 * gap)
    assert CalibrationProfile.from_dict(profile.to_dict()).launch == profile.launch   # round trip


@pytest.mark.parametrize("value, words", [
    ({"softmax": 2.0}, ["launch.kernels_per_op", "softmax", "elementwise"]),
    ({"gemm": 0}, ["launch.kernels_per_op.gemm", "(0, 1e4)"]),
    ({"gemm": True}, ["launch.kernels_per_op.gemm"]),
    ([], ["launch.kernels_per_op", "object"]),
])
def test_bad_kernels_per_op_names_the_field(value, words):
    with pytest.raises(ValueError) as err:
        _with_launch({"kernels_per_op": value, "provenance": "test"})
    assert all(w in str(err.value) for w in words)


def test_cli_refuses_a_bad_count_in_one_line(tmp_path):
    d = load_profile("default-h800").to_dict() | {"name": "bad-launch",
                                                  "launch": {"kernels_per_op": {"gemm": -1}, "provenance": "t"}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    r = CliRunner().invoke(app, ["estimate", "--calibration", str(path)])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "kernels_per_op.gemm" in lines[0] and "Traceback" not in r.output


def test_validation_page_lists_kernels_per_class():
    from gpuhours.reports.validation_page import _launch_lines

    counts = {"measured_kernels": {"memory": 30, "gemm_fp8": 5}, "modelled_kernels": {"memory": 12.0, "gemm_fp8": 5.0},
              "modelled_ops": {"elementwise": 12, "gemm": 5}, "unmatched_kernels": {"memcpy": 3}}
    text = "\n".join(_launch_lines(counts))
    assert "| memory | 30 | 12 | 2.50 |" in text and "| gemm_fp8 | 5 | 5 | 1.00 |" in text
    assert "| all | 35 | 17 | 2.06 |" in text and "left out: memcpy 3" in text
    assert _launch_lines(None) == []


def test_another_traces_comparison_carries_no_kernel_counts_of_the_bundled_pair(tmp_path):
    from gpuhours.validation.compare import compare_all
    from gpuhours.validation.synthetic_trace import pair_for_profile, write_trace

    path = write_trace(tmp_path / "train.json", pair_for_profile(layers=2))
    assert compare_all(trace_path=path, with_gpu_hours=False)["launch_counts"] is None


def test_only_kernels_queued_before_the_stream_was_free_count():
    us = 1e-6
    kernels = [  # (stream, start, end, launch start)
        (7, 0 * us, 10 * us, -5 * us),
        (7, 12 * us, 20 * us, 1 * us),      # queued (launched at 1 us, the stream free at 10): gap 2 us
        (7, 50 * us, 60 * us, 45 * us),     # launched after the stream was free at 20: the host's gap, left out
        (7, 63 * us, 70 * us, None),        # launch unknown: left out
        (9, 21 * us, 30 * us, 0.0),         # another stream: its first kernel has no gap
        (9, 34 * us, 40 * us, 0.0),         # queued: 4 us
        (11, 0.0, 0.1 + 0.2, 0.0),          # 0.30000000000000004 s
        (11, 0.3, 0.4, 0.0),                # back to back, a rounding error apart: no gap, and counted
    ]
    assert queued_gaps(kernels) == pytest.approx([2 * us, 4 * us, 0.0])


def test_the_gap_is_the_median_and_needs_enough_kernels():
    us = 1e-6
    assert gap_figure([2 * us] * (MIN_GAPS - 1)) is None
    gaps = [2 * us] * MIN_GAPS + [1800 * us] * 3      # a few long waits on another stream do not move it
    assert gap_figure(gaps) == pytest.approx(2.0)
    assert gap_figure([1 * us, 3 * us] * (MIN_GAPS // 2)) == pytest.approx(2.0)   # even count: mid-point
    section = launch_section({"gemm": 1.0}, {"measured_kernels": {}, "modelled_kernels": {}, "unmatched_kernels": {}},
                             "t.json", gaps)
    assert section["kernel_gap_us"] == pytest.approx(2.0) and f"over {len(gaps)} such" in section["provenance"]
    assert "kernel_gap_us" not in launch_section({"gemm": 1.0}, {"measured_kernels": {}, "modelled_kernels": {},
                                                                "unmatched_kernels": {}}, "t.json")
