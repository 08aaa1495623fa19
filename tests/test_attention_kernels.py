"""Measured attention kernels (hwmodels/attention_kernels.py) against the numbers in their data file."""

from __future__ import annotations

import tomllib

import pytest

from gpuhours.hwmodels.attention_kernels import DATA, attention_kernels, load_attention_kernel
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.simulator.scenario import load_scenario, scenario_warnings
from gpuhours.workloads.ops import Op

with open(DATA, "rb") as f:
    RAW = tomllib.load(f)


@pytest.mark.parametrize("name", sorted(RAW))
def test_measured_points_come_back_as_measured(name):
    kernel = load_attention_kernel(name)
    peak = RAW[name]["peak_bf16_tflops"]
    for p in RAW[name]["points"]:
        fwd, bwd = kernel.efficiencies(p["d_qk"], p["seq"])
        assert fwd == pytest.approx(p["forward_tflops"] / peak, rel=1e-12)
        assert bwd == pytest.approx(p["backward_tflops"] / peak, rel=1e-12)


def test_between_points_stays_inside_and_beyond_the_range_stays_flat():
    kernel = load_attention_kernel("flash2")
    at = {p["seq"]: p["forward_tflops"] / RAW["flash2"]["peak_bf16_tflops"]
          for p in RAW["flash2"]["points"] if p["d_qk"] == 128}
    fwd, _ = kernel.efficiencies(128, 6144)  # between 4096 and 8192
    assert min(at.values()) <= fwd <= max(at.values())
    assert kernel.efficiencies(128, 262144) == kernel.efficiencies(128, 16384)
    assert kernel.efficiencies(128, 128) == kernel.efficiencies(128, 1024)


def test_flash2_is_slower_than_cudnn_on_hopper_as_measured():
    flash, cudnn = load_attention_kernel("flash2"), load_attention_kernel("cudnn")
    for seq in (2048, 8192):
        assert flash.efficiencies(128, seq)[0] < cudnn.efficiencies(128, seq)[0]
        assert flash.efficiencies(128, seq)[1] < cudnn.efficiencies(128, seq)[1]


def test_scenario_prices_the_attention_core_at_the_kernel():
    kw = dict(model="llama-3-70b", gpu="h100", gpus=64, pp=1, tp=8, schedule="1f1b", seq_len=8192, batch=64,
              tokens=1e9, fp8=False)
    plain, flash = load_scenario(**kw), load_scenario(**kw, attention_kernel="flash2")
    fwd_eff, bwd_eff = load_attention_kernel("flash2").efficiencies(128, 8192)
    core = Op("core", "attention", "F", "attn", flops=1e12)
    core_b = Op("core", "attention", "B", "attn", flops=1e12)
    for op, eff, base in ((core, fwd_eff, plain.profile.attention_forward_efficiency),
                          (core_b, bwd_eff, plain.profile.attention_backward_efficiency)):
        t_plain = ComputeModel(plain.cluster.gpu, plain.profile).duration(op)
        t_flash = ComputeModel(flash.cluster.gpu, flash.profile).duration(op)
        assert t_flash / t_plain == pytest.approx(base / eff, rel=1e-9)
    # everything but attention is the profile's
    assert flash.profile.gemm == plain.profile.gemm
    assert "attention flash2" in flash.profile.name
    assert any("measured on NVIDIA H200" in w for w in scenario_warnings(flash))
    assert flash.simulator().step(8).step_time > plain.simulator().step(8).step_time


def test_unknown_kernel_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"attention_kernel must be one of .*flash2"):
        load_scenario(attention_kernel="fa9")
    assert set(attention_kernels()) == set(RAW)
