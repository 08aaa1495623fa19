"""FP8 GEMM kernel families (hwmodels/gemm_kernels.py): a profile's FP8 points carried to the kernels a run used.

Expected figures are read off DeepGEMM's README at 55ab91f by hand: the 4096 x 7168 x 16384 GEMM runs at
1426 TFLOP/s with a speed-up of 1.3x over DeepSeek's internal kernels, the 4 x 8192 x 4096 x 7168 grouped GEMM at
1346 TFLOP/s with 1.3x; PR #95's weight-gradient kernels are "~20%" faster (1.2x).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.hwmodels.calibration import load_profile
from gpuhours.hwmodels.gemm_kernels import (families, family_warning, profile_family, traced_family,
                                            with_fp8_gemm_kernels)
from gpuhours.simulator.provenance import hardware_only_scenario
from gpuhours.simulator.scenario import load_scenario


def _point(points, shape):
    return next(p for p in points if (p.groups, p.m, p.n, p.k) == shape)


def test_families_are_the_two_published_ones():
    assert families() == ("deepgemm", "deepseek-cutlass")
    assert profile_family(load_profile("default-h800")) == "deepgemm"
    assert profile_family(load_profile("trace-h800")) == "deepseek-cutlass"


def test_deepgemm_points_carried_to_internal_kernels_at_the_readme_speedups():
    base = load_profile("default-h800")
    moved = with_fp8_gemm_kernels(base, "deepseek-cutlass")
    assert _point(moved.gemm["fp8"], (1, 4096, 7168, 16384)).tflops == pytest.approx(1426 / 1.3)
    assert _point(moved.gemm["fp8"], (1, 4096, 2112, 7168)).tflops == pytest.approx(1009 / 1.1)
    assert _point(moved.grouped_gemm["fp8"], (4, 8192, 4096, 7168)).tflops == pytest.approx(1346 / 1.3)
    # weight gradients: PR #95's one figure; 16384 x 7168 x 4096 at 994 TFLOP/s
    assert _point(moved.wgrad["gemm"]["fp8"], (1, 16384, 7168, 4096)).tflops == pytest.approx(994 / 1.2)
    # BF16 points are not FP8 kernels: untouched
    assert moved.gemm["bf16"] == base.gemm["bf16"]
    assert profile_family(moved) == "deepseek-cutlass"
    assert "deepseek-cutlass" in moved.provenance.basis


def test_carrying_there_and_back_is_the_identity():
    base = load_profile("default-h800")
    back = with_fp8_gemm_kernels(with_fp8_gemm_kernels(base, "deepseek-cutlass"), "deepgemm")
    for kind in ("gemm", "grouped_gemm"):
        for a, b in zip(getattr(base, kind)["fp8"], getattr(back, kind)["fp8"]):
            assert b.tflops == pytest.approx(a.tflops, rel=1e-12)


def test_same_family_or_none_leaves_the_profile_as_it_is():
    base = load_profile("default-h800")
    assert with_fp8_gemm_kernels(base, "deepgemm") is base
    assert with_fp8_gemm_kernels(base, None) is base


def test_a_profile_that_does_not_name_its_kernels_is_used_as_it_is_and_warned_about():
    base = load_profile("default-h800")
    software = {k: v for k, v in base.provenance.software.items() if k != "fp8_gemm_kernels"}
    unnamed = replace(base, provenance=replace(base.provenance, software=software))
    assert with_fp8_gemm_kernels(unnamed, "deepseek-cutlass") is unnamed
    line = family_warning(unnamed, "deepseek-cutlass", fp8=True)
    assert line and "deepseek-cutlass" in line and "fp8_gemm_kernels" in line
    assert family_warning(unnamed, "deepseek-cutlass", fp8=False) is None  # a BF16 run runs no FP8 GEMM
    assert family_warning(base, "deepseek-cutlass", fp8=True) is None


def test_bad_family_and_unlisted_shape_are_refused():
    base = load_profile("default-h800")
    with pytest.raises(ValueError, match="fp8_gemm_kernels must be one of deepgemm, deepseek-cutlass"):
        with_fp8_gemm_kernels(base, "cublas")
    odd = replace(base, gemm=dict(base.gemm) | {"fp8": (replace(base.gemm["fp8"][0], m=1000),)})
    with pytest.raises(ValueError, match="1000x7168x16384 has no published speed-up"):
        with_fp8_gemm_kernels(odd, "deepseek-cutlass")


def test_traced_family_from_kernel_names():
    internal = "void cutlass::device_kernel<dpsk::grouped_gemm::cuda::fp8_ptp128c::GemmKernel>(...)"
    deepgemm = "void deep_gemm::fp8_gemm_kernel<128, 152, 128>(...)"
    assert traced_family([internal, "rotary_kernel"]) == "deepseek-cutlass"
    assert traced_family([deepgemm]) == "deepgemm"
    assert traced_family(["rotary_kernel"]) is None
    assert traced_family([internal, deepgemm]) is None  # both: no single answer


def test_the_deepseek_plan_runs_its_hardware_only_figure_on_the_internal_kernels():
    scenario = load_scenario()
    assert scenario.fp8_gemm_kernels == "deepseek-cutlass"
    hardware = hardware_only_scenario(scenario)
    assert hardware.profile.name == load_profile("default-h800").name
    assert _point(hardware.profile.gemm["fp8"], (1, 4096, 7168, 16384)).tflops == pytest.approx(1426 / 1.3)
    # the run's own (trace) profile already describes the internal kernels: unchanged
    assert scenario.profile.gemm == load_profile("trace-h800").gemm
    # asked for DeepGEMM, the trace profile's points go up by the same published speed-ups
    what_if = load_scenario(fp8_gemm_kernels="deepgemm")
    trace_point = _point(load_profile("trace-h800").gemm["fp8"], (1, 4096, 7168, 16384)).tflops
    assert _point(what_if.profile.gemm["fp8"], (1, 4096, 7168, 16384)).tflops == pytest.approx(trace_point * 1.3)


def test_estimate_help_and_bad_value():
    from typer.testing import CliRunner

    from gpuhours.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["estimate", "--help"])
    assert r.exit_code == 0 and "--fp8-gemm-kernels" in r.output
    r = runner.invoke(app, ["estimate", "--fp8-gemm-kernels", "cublas"])
    assert r.exit_code == 2 and "fp8_gemm_kernels must be one of deepgemm, deepseek-cutlass" in r.stderr
    assert "Traceback" not in r.output
