"""Sensitivity of GPU-hours to each calibrated rate (issue 15, item 6)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.scenario import estimate, load_scenario
from gpuhours.simulator.sensitivity import QUANTITIES, perturbed, sensitivity

COMPUTE = ("gemm_fp8", "gemm_bf16", "grouped_gemm_fp8", "grouped_gemm_bf16", "attention_forward",
           "attention_backward", "elementwise")


@pytest.fixture(scope="module")
def one_gpu():
    """Llama-3-70B's layers on one H100: no communication at all, so the step is the sum of its kernels (without
    the launch model's fixed gaps between them, `hwmodels.launch`, which no rate moves)."""
    return load_scenario(model="llama-3-70b", gpu="h100-sxm", gpus=1, pp=1, tp=1, ep=1, schedule="1f1b",
                         batch=8, tokens=1e9, seq_len=4096, host_dispatch="none")


def test_links_do_not_matter_without_communication(one_gpu):
    base = estimate(one_gpu).gpu_hours
    for name in ("nic", "nvlink"):
        assert estimate(perturbed(one_gpu, name, 0.5)).gpu_hours == pytest.approx(base, rel=1e-12)


def test_every_compute_rate_slower_by_a_factor_slows_a_compute_bound_step_by_it(one_gpu):
    """Every kernel's time is work / rate (compute-bound GEMMs and attention, HBM-bound element-wise ops), so
    dividing every rate by 1.25 multiplies the step, and the run, by exactly 1.25."""
    slow = one_gpu
    for name in COMPUTE:
        slow = perturbed(slow, name, 1 / 1.25)
    assert estimate(slow).gpu_hours == pytest.approx(1.25 * estimate(one_gpu).gpu_hours, rel=1e-9)


def test_faster_rates_stop_at_their_roof(one_gpu):
    fast = perturbed(one_gpu, "elementwise", 100.0)
    assert fast.profile.elementwise_bandwidth_efficiency == 1.0
    measured = load_scenario(calibration="bench-h200", gpu="h200-sxm")  # a profile with per-class bandwidths
    fast = perturbed(measured, "elementwise", 100.0)
    assert set(fast.profile.elementwise_classes.values()) == {1.0}
    fast = perturbed(one_gpu, "gemm_bf16", 100.0)
    estimate(fast)  # no GEMM point beyond the dense peak: the efficiency check in the profile would refuse it


def test_default_case_moves_the_right_way_and_is_sorted():
    scenario = load_scenario(gpus=256, pp=4, ep=64, seq_len=1024)
    rows = sensitivity(scenario, quantities=["gemm_fp8", "grouped_gemm_fp8", "nic", "elementwise"])
    assert [r.span for r in rows] == sorted((r.span for r in rows), reverse=True)
    for r in rows:
        assert r.slower_gpu_hours >= r.base_gpu_hours >= r.faster_gpu_hours, r.quantity
        assert r.slower > 0


def test_bad_quantity_and_change_are_named(one_gpu):
    with pytest.raises(ValueError, match="sensitivity quantity must be one of"):
        perturbed(one_gpu, "hbm", 1.1)
    with pytest.raises(ValueError, match="sensitivity change"):
        sensitivity(one_gpu, change=1.5)


def test_cli_table_json_and_chart(tmp_path):
    args = ["estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--gpus", "64", "--tp", "8", "--pp", "2",
            "--schedule", "1f1b", "--batch", "64", "--tokens", "1B"]
    r = CliRunner().invoke(app, args + ["--sensitivity", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["sensitivity"]
    assert {row["quantity"] for row in rows} == set(QUANTITIES)
    chart = tmp_path / "tornado.png"
    r = CliRunner().invoke(app, args + ["--sensitivity-chart", str(chart)])
    assert r.exit_code == 0, r.output
    assert "sensitivity" in r.stdout and chart.stat().st_size > 1000
    bad = CliRunner().invoke(app, args + ["--sensitivity-chart", str(tmp_path / "t.txt")])
    assert bad.exit_code == 2 and "--sensitivity-chart" in bad.stderr


def test_a_profiles_stated_uncertainty_sets_how_far_its_quantity_moves(one_gpu):
    """A profile stating elementwise 0.25 moves the element-wise bandwidth by 25% both ways: on the one-GPU step
    (every kernel work / rate) the element-wise time is stretched by exactly 1.25, so the slower run equals the one
    moved by hand; a quantity it does not state moves by the default."""
    from dataclasses import replace

    stated = replace(one_gpu, profile=replace(one_gpu.profile, uncertainty={"elementwise": 0.25, "provenance": "t"}))
    rows = {r.quantity: r for r in sensitivity(stated, quantities=["elementwise", "gemm_bf16"])}
    assert rows["elementwise"].stated and rows["elementwise"].change == 0.25
    assert rows["elementwise"].slower_gpu_hours == pytest.approx(
        estimate(perturbed(stated, "elementwise", 1 / 1.25)).gpu_hours, rel=1e-12)
    assert not rows["gemm_bf16"].stated and rows["gemm_bf16"].change == 0.10
    from gpuhours.simulator.sensitivity import sensitivity_lines
    lines = sensitivity_lines(list(rows.values()))
    assert any("25.0%*" in line for line in lines) and any("10.0% " in line for line in lines)


def test_uncertainty_sections_name_their_quantities_and_bad_values():
    from gpuhours.hwmodels.calibration import CalibrationProfile, load_profile
    from gpuhours.hwmodels.profile_sections import UNCERTAINTY_QUANTITIES

    assert set(UNCERTAINTY_QUANTITIES) == set(QUANTITIES)
    d = load_profile("default-h800").to_dict()
    for section, message in (({"hbm": 0.1, "provenance": "x"}, "uncertainty.hbm"),
                             ({"elementwise": 0.0, "provenance": "x"}, "uncertainty.elementwise"),
                             ({"elementwise": 1.5, "provenance": "x"}, "uncertainty.elementwise"),
                             ({"elementwise": 0.1}, "uncertainty.provenance")):
        with pytest.raises(ValueError, match=message):
            CalibrationProfile.from_dict(d | {"uncertainty": section})


def test_trace_profile_states_its_phase_spread():
    """trace-h800 states the spread its traced pair shows per class (validation/trace_phases.py): the dense FP8 and
    grouped GEMMs and the memory-bound bandwidth; attention (one phase each) and BF16 GEMMs (not calibrated) keep
    the default. The figures are in its derivation record, per phase."""
    from gpuhours.hwmodels.calibration import load_profile

    p = load_profile("trace-h800")
    assert set(p.uncertainty) == {"gemm_fp8", "grouped_gemm_fp8", "elementwise", "provenance"}
    res = p.trace["derivation"]["phase_residuals"]
    assert p.uncertainty["elementwise"] == pytest.approx(res["memory"]["spread"], abs=1e-4)
    assert 0 < p.uncertainty["grouped_gemm_fp8"] < p.uncertainty["gemm_fp8"] < p.uncertainty["elementwise"] < 1
