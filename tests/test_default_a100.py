"""default-a100: a hardware-only A100 profile from published A100 kernel figures, and the accuracy suite's
`--profile` switch that runs cases under it without touching their own rows."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.calibration import CalibrationProfile, available_profiles, load_profile
from gpuhours.validation.accuracy import run_suite
from gpuhours.validation.cases import load_cases

A100_BF16_PEAK = 312e12  # A100 datasheet, dense BF16 tensor core
runner = CliRunner()


@pytest.fixture(scope="module")
def a100():
    return load_profile("default-a100")


def test_it_is_a_bundled_hardware_only_a100_profile(a100):
    assert "default-a100" in available_profiles()
    assert a100.gpu_key == "a100-80gb-sxm" and a100.sm_count == 108  # A100 whitepaper: 108 SMs
    assert a100.source == "datasheet" and "model" not in a100.calibrated_on  # nothing measured on a model
    assert a100.reference_peak("bf16") == A100_BF16_PEAK and a100.reference_peak("fp8") is None
    assert not a100.grouped_gemm  # Ampere: no FP8, and no MoE kernel figures published here
    assert CalibrationProfile.from_dict(json.loads(json.dumps(a100.to_dict()))) == a100
    for q in a100.points("gemm", "bf16"):
        assert q.provenance and 0 < q.tflops < 312.0  # every point names its source, below the datasheet peak


def test_published_points_come_back_exactly(a100):
    # MAMF table (ml-engineering): 271.2 TFLOP/s at 1024x10240x5120 = 86.9% of 312, as the table prints
    eff = a100.efficiency("gemm", "bf16", 1024, 10240, 5120, peak_flops=A100_BF16_PEAK)
    assert eff == pytest.approx(271.2 / 312) and round(eff * 100, 1) == 86.9
    # NVIDIA's cuBLAS chart, m = n = k = 8192: about 292 TFLOP/s read off the figure
    assert a100.efficiency("gemm", "bf16", 8192, 8192, 8192, peak_flops=A100_BF16_PEAK) * 312 == pytest.approx(292)


def test_attention_pair_reproduces_flashattention2s_combined_figure(a100):
    # FlashAttention-2 Fig. 4(d): 155 TFLOP/s forward + backward (causal, d 128, s 2048) counting F forward and
    # 2.5 F backward; our backward counts 2 F, so its rate in the paper's count is ours x 2.5 / 2.
    fwd = a100.attention_forward_efficiency * 312
    bwd_paper = a100.attention_backward_efficiency * 312 * 2.5 / 2
    assert 3.5 / (1 / fwd + 2.5 / bwd_paper) == pytest.approx(155, rel=0.01)
    assert bwd_paper / fwd == pytest.approx(63 / 73, rel=0.01)  # the paper's stated maxima, 63% and 73% of peak
    assert fwd <= 0.73 * 312 and bwd_paper <= 0.63 * 312  # never above those maxima


def test_a_profile_switch_runs_cases_under_it_alone():
    case = [c for c in load_cases() if c.name == "korthikanti-22b-selective-sp"]
    own = run_suite(case)
    switched = run_suite(case, profile="default-a100")
    assert [r.key for r in own] == ["korthikanti-22b-selective-sp@trace-h800"]
    assert [r.key for r in switched] == ["korthikanti-22b-selective-sp@default-a100"]
    # A100 GEMMs reach a larger share of the peak in the published figures than trace-h800's Hopper fractions
    assert switched[0].predicted_time < own[0].predicted_time
    with pytest.raises(ValueError, match="bundled: .*default-a100"):
        run_suite(case, profile="no-such-profile")


def test_cli_profile_option():
    r = runner.invoke(app, ["accuracy", "--case", "korthikanti-22b-selective-sp", "--profile", "default-a100",
                            "--no-page", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert [row["profile"] for row in rows] == ["default-a100"]
    bad = runner.invoke(app, ["accuracy", "--case", "korthikanti-22b-selective-sp", "--profile", "nope",
                              "--no-page"])
    assert bad.exit_code == 2 and "calibration profile 'nope'" in bad.output
