"""FP8 recipe "mxfp8" (OCP MX on Blackwell, hwmodels/mxfp8.py): GEMM rate, casts, refusals, plumbing.

Hand figures:
- B200 (gpus.toml): BF16 2250, MXFP8 4500 dense TFLOP/s; default-h800 records the H800's peaks (BF16 989.4,
  FP8 1978.9 TFLOP/s) as its reference, so a profile point of T TFLOP/s is a fraction T / peak of the peak.
- One MXFP8 copy of an element: 1 byte FP8 + 1/32 byte of E8M0 scale (OCP MX v1.0: one 8-bit scale per 32
  elements); a cast reads BF16 (2 bytes) and writes two copies: 2 + 2 x 1.03125 = 4.0625 bytes an element.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuhours.hwmodels.calibration import CalibrationProfile, default_profile
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.workloads.ops import FP8_RECIPES, GemmShape, Op, OpOptions, PassBuilder

W13 = (16384, 7168, 8192)
FLOPS = 2 * 16384 * 7168 * 8192


def gemm(shape=W13, dtype="fp8", recipe="mxfp8", phase="F", groups=1):
    kind = "grouped_gemm" if groups > 1 else "gemm"
    return Op("g", kind, phase, dtype=dtype, gemm=GemmShape(*shape), groups=groups, fp8_recipe=recipe)


def _profile(bf16_tflops=600.0, fp8_tflops=None, **calibrated_on) -> CalibrationProfile:
    """default-h800 with one BF16 point (and optionally one FP8 point) at W13 and no weight-gradient points."""
    d = default_profile().to_dict()
    m, n, k = W13
    d["gemm"]["bf16"] = [{"m": m, "n": n, "k": k, "tflops": bf16_tflops}]
    if fp8_tflops is not None:
        d["gemm"]["fp8"] = [{"m": m, "n": n, "k": k, "tflops": fp8_tflops}]
    d.pop("wgrad", None)
    if calibrated_on:
        d["provenance"]["calibrated_on"] = {**d["provenance"].get("calibrated_on", {}), **calibrated_on}
    return CalibrationProfile.from_dict(d)


def test_recipe_is_listed():
    assert "mxfp8" in FP8_RECIPES
    assert OpOptions(fp8_recipe="mxfp8").fp8_recipe == "mxfp8"


@pytest.mark.parametrize("phase", ["F", "B", "W"])
def test_gemm_at_a_profile_shape_takes_flops_over_mxfp8_peak_times_the_bf16_fraction(phase):
    cm = ComputeModel(load_gpu("b200"), _profile(600.0))
    eff = 600.0 / 989.4  # the BF16 point as a fraction of the H800 BF16 peak it was measured against
    assert cm.gemm_efficiency(gemm(phase=phase)) == pytest.approx(eff)
    assert cm.duration(gemm(phase=phase)) == pytest.approx(FLOPS / (4500e12 * eff))
    # the same GEMM in BF16 on B200 takes exactly twice as long (MXFP8 peak = 2 x BF16 peak on B200)
    assert cm.duration(gemm(dtype="bf16", recipe="blockwise", phase=phase)) == pytest.approx(FLOPS / (2250e12 * eff))


def test_blockwise_fp8_points_are_not_used_for_mxfp8():
    cm = ComputeModel(load_gpu("b200"), _profile(600.0, fp8_tflops=1500.0))
    assert cm.duration(gemm(recipe="blockwise")) == pytest.approx(FLOPS / (4500e12 * 1500.0 / 1978.9))
    assert cm.duration(gemm()) == pytest.approx(FLOPS / (4500e12 * 600.0 / 989.4))


def test_a_profile_calibrated_on_mx_kernels_uses_its_own_fp8_points():
    cm = ComputeModel(load_gpu("b200"), _profile(600.0, fp8_tflops=1500.0, fp8_recipe="mxfp8"))
    assert cm.duration(gemm()) == pytest.approx(FLOPS / (4500e12 * 1500.0 / 1978.9))


def test_grouped_gemm_takes_the_bf16_fraction_at_one_group_shape():
    cm = ComputeModel(load_gpu("gb200"), _profile(600.0))
    bf16 = cm.duration(gemm(dtype="bf16", recipe="blockwise", groups=4))
    assert cm.duration(gemm(groups=4)) == pytest.approx(bf16 * 2500 / 5000)  # GB200: BF16 2500, MXFP8 5000


def _ops(phase, recipe="mxfp8", m=4096, n=512, k=1024):
    """One linear: tokens m, in features k, out features n (left operand m x k in the forward)."""
    b = PassBuilder("l", "mlp", phase, True, recipe)
    b.gemm("w", m, n, k)
    return {op.name: op for op in b.ops}


def test_cast_bytes_for_one_linear_by_hand():
    # forward: the BF16 activation 4096 x 1024 read, written row- and column-wise with scales
    assert _ops("F")["l.w.quant"].bytes == 4096 * 1024 * (2 + 2 * (1 + 1 / 32)) == 17_039_360
    # input gradient: the BF16 output gradient 4096 x 512, both copies
    assert _ops("B")["l.w.quant"].bytes == 4096 * 512 * 4.0625 == 8_519_680
    # weight gradient: both operands' column-wise copies already made, no cast; no weight transpose either
    assert set(_ops("W")) == {"l.w"}
    assert "l.w.weight_t" not in _ops("B")
    # the GEMM itself: FP8 inputs, tagged with the recipe; shapes and FLOPs as under blockwise
    for ph in "FBW":
        g, blk = _ops(ph)["l.w"], _ops(ph, "blockwise")["l.w"]
        assert (g.dtype, g.fp8_recipe) == ("fp8", "mxfp8")
        assert (g.gemm, g.flops, g.bytes) == (blk.gemm, blk.flops, blk.bytes)


@pytest.mark.parametrize("gpu", ["h100", "h800", "h200", "mi300x"])
def test_gpus_without_mxfp8_refuse_with_one_line(gpu):
    cm = ComputeModel(load_gpu(gpu), default_profile())
    with pytest.raises(ValueError, match=r"^fp8_recipe mxfp8 needs MXFP8 tensor cores \(gpus.toml field "
                                         r"mxfp8_tflops\), which .* lacks; allowed gpus: b200, gb200, gb300$"):
        cm.duration(gemm())
    from gpuhours.simulator.scenario import load_scenario

    with pytest.raises(ValueError, match="mxfp8_tflops") as exc:
        load_scenario(gpu=gpu, fp8_recipe="mxfp8")
    assert "\n" not in str(exc.value)


def test_scenario_plan_numerics_and_sweep_key(tmp_path: Path):
    from gpuhours.simulator.scenario import DEFAULT_PLAN, load_scenario
    from gpuhours.simulator.sweep_spec import _check_value

    assert load_scenario(gpu="b200", fp8_recipe="mxfp8").opts.fp8_recipe == "mxfp8"
    plan = Path(__file__).resolve().parent.parent / "workloads" / "plans" / f"{DEFAULT_PLAN}.toml"
    text = plan.read_text().replace("[numerics]\n", '[numerics]\nfp8_recipe = "mxfp8"\n')
    (tmp_path / "p.toml").write_text(text)
    assert load_scenario(tmp_path / "p.toml", gpu="b200").opts.fp8_recipe == "mxfp8"
    _check_value("fp8_recipe", "mxfp8", "grid")
    with pytest.raises(ValueError, match="grid.fp8_recipe must be one of blockwise, delayed, current, mxfp8"):
        _check_value("fp8_recipe", "mx-fp8", "grid")


def test_warning_unless_the_profile_was_calibrated_on_mx_kernels():
    from gpuhours.simulator.scenario import load_scenario, scenario_warnings

    def recipe_lines(s):
        return [w for w in scenario_warnings(s) if w.startswith("FP8 recipe")]

    lines = recipe_lines(load_scenario(gpu="b200", fp8_recipe="mxfp8"))
    assert len(lines) == 1 and "MXFP8" in lines[0] and "not calibrated on MX kernels" in lines[0]
    s = load_scenario(gpu="b200", fp8_recipe="mxfp8")
    mx = replace(s, profile=_profile(fp8_tflops=1500.0, fp8_recipe="mxfp8", gpu="b200"))
    assert recipe_lines(mx) == []
    assert recipe_lines(load_scenario(gpu="b200", fp8_recipe="mxfp8", fp8=False)) == []


def test_cli_refuses_with_exit_2():
    from gpuhours.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["estimate", "--gpu", "h100", "--fp8-recipe", "mxfp8"])
    assert r.exit_code == 2 and "mxfp8_tflops" in r.stderr and "b200" in r.stderr, r.output
    r = runner.invoke(app, ["estimate", "--gpu", "b200", "--fp8-recipe", "nvfp4"])
    assert r.exit_code == 2 and "fp8_recipe must be one of blockwise, delayed, current, mxfp8" in r.stderr, r.output
    r = runner.invoke(app, ["estimate", "--help"])
    assert "mxfp8" in r.output
