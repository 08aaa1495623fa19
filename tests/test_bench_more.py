"""Issue 15 item 4's extra measurements: the profile sections ``fp8_tensorwise``, ``launch`` and
``comm.nccl_intra_node`` (hwmodels/profile_sections.py), what reads them (hwmodels/fp8_tensorwise.py,
hwmodels/launch.py), and the bench's CPU path (validation/bench_fp8.py, bench_launch.py, bench_nccl.py).

Hand figures: the bundled per-tensor speed-up at ffn.w13 (16384, 7168, 8192) is 2.343664 (float8_experimental
PR #100, data/fp8_tensorwise.toml); data/launch.toml: 2 us gap, 10 us eager host time, 0 under CUDA graphs;
nccl-tests PERFORMANCE.md: all-reduce busbw = algbw 2 (n-1)/n, all-gather busbw = algbw (n-1)/n.
No timing assertions: CPU measurements only exercise the paths.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from gpuhours.hwmodels.calibration import CalibrationProfile, available_profiles, default_profile, load_profile  # noqa: E402
from gpuhours.hwmodels.compute import ComputeModel  # noqa: E402
from gpuhours.hwmodels.fp8_tensorwise import speedup_table  # noqa: E402
from gpuhours.hwmodels.gpus import load_gpu  # noqa: E402
from gpuhours.hwmodels.launch import LaunchModel  # noqa: E402
from gpuhours.validation import bench_fp8, bench_launch, bench_nccl  # noqa: E402
from gpuhours.workloads.ops import GemmShape, Op  # noqa: E402

W13 = (16384, 7168, 8192)
CUDA = torch.cuda.is_available()


def _with(**sections) -> dict:
    d = default_profile().to_dict()  # default-h800: provenance.device names the H800
    d.pop("wgrad", None)
    d.update(sections)
    return d


def _gemm(shape, dtype="fp8", recipe="current"):
    return Op("g", "gemm", "F", dtype=dtype, gemm=GemmShape(*shape), fp8_recipe=recipe)


TW = {"points": [{"m": 16384, "n": 7168, "k": 8192, "speedup": 1.8, "bf16_s": 0.009, "fp8_s": 0.005,
                  "provenance": "ffn.w13"},
                 {"m": 16384, "n": 1792, "k": 8192, "speedup": 1.2}],
      "provenance": "hand-written test points"}
LAUNCH = {"kernel_gap_us": 3.5, "eager_dispatch_us": 7.0, "launch_interval_us": 4.25, "provenance": "test"}
NCCL = {"world_size": 8, "backend": "nccl", "dtype": "bf16", "provenance": "test",
        "all_reduce": [{"bytes": 2**30, "time_us": 4000.0, "algbw_gbps": 268.4, "busbw_gbps": 469.7}],
        "all_gather": [{"bytes": 2**30, "time_us": 3000.0, "algbw_gbps": 357.9, "busbw_gbps": 313.2}]}


# -- schema -----------------------------------------------------------------------------------------------------

def test_sections_round_trip():
    d = _with(fp8_tensorwise=TW, launch=LAUNCH, comm={"nccl_intra_node": NCCL})
    p = CalibrationProfile.from_dict(d)
    assert p.fp8_tensorwise.points[0].speedup == 1.8 and p.fp8_tensorwise.points[1].bf16_s is None
    assert p.launch.kernel_gap_us == 3.5 and p.launch.eager_dispatch_us == 7.0
    out = p.to_dict()
    assert out["fp8_tensorwise"] == TW and out["launch"] == LAUNCH and out["comm"]["nccl_intra_node"] == NCCL
    assert CalibrationProfile.from_dict(json.loads(json.dumps(out))) == p


def test_bundled_profiles_load_unchanged_without_the_new_sections():
    for name in available_profiles():
        p = load_profile(name)
        assert p.fp8_tensorwise is None and "fp8_tensorwise" not in p.to_dict()
        if p.source == "trace":  # a trace holds kernels per op and its queued gap (validation/trace_launch.py)
            assert p.launch.kernels_per_op and p.launch.eager_dispatch_us is None
            # the code's median gap is data/launch.toml's, which was read off the same trace by hand
            assert p.launch.kernel_gap_us == pytest.approx(LaunchModel.load().kernel_gap_s * 1e6)
        else:
            assert p.launch is None and "launch" not in p.to_dict()


@pytest.mark.parametrize("section, value, key", [
    ("fp8_tensorwise", {"points": [], "provenance": "x"}, "fp8_tensorwise.points"),
    ("fp8_tensorwise", {"points": [{"m": 1, "n": 1, "k": 1, "speedup": 1.0}]}, "fp8_tensorwise.provenance"),
    ("fp8_tensorwise", {"points": [{"m": 1, "n": 1, "k": 1, "speedup": 2.0, "bf16_s": 3.0, "fp8_s": 1.0}],
                        "provenance": "x"}, r"fp8_tensorwise.points\[0\].speedup"),
    ("fp8_tensorwise", {"points": [{"m": 0, "n": 1, "k": 1, "speedup": 1.0}], "provenance": "x"},
     r"fp8_tensorwise.points\[0\].m"),
    ("fp8_tensorwise", {"points": [{"m": 1, "n": 1, "k": 1, "speedup": 1.0, "bf16_s": 1.0}], "provenance": "x"},
     r"fp8_tensorwise.points\[0\]"),
    ("fp8_tensorwise", {"points": [{"m": 1, "n": 1, "k": 1, "speedup": -1.0}], "provenance": "x"},
     r"fp8_tensorwise.points\[0\].speedup"),
    ("launch", {"provenance": "x"}, "launch"),
    ("launch", {"kernel_gap_us": -1.0, "provenance": "x"}, "launch.kernel_gap_us"),
    ("launch", {"kernel_gap_us": 1.0, "provenance": "x", "extra": 1}, "launch.extra"),
    ("launch", {"kernel_gap_us": 1.0}, "launch.provenance"),
    ("comm", {"nccl_intra_node": {**NCCL, "world_size": 1}}, "comm.nccl_intra_node.world_size"),
    ("comm", {"nccl_intra_node": {**NCCL, "all_gather": []}}, "comm.nccl_intra_node.all_gather"),
    ("comm", {"nccl_intra_node": {"not_measured": ""}}, "comm.nccl_intra_node.not_measured"),
])
def test_bad_sections_name_the_key(section, value, key):
    with pytest.raises(ValueError, match=key):
        CalibrationProfile.from_dict(_with(**{section: value}))


def test_sections_are_not_inherited_from_a_base():
    base = CalibrationProfile.from_dict(_with(fp8_tensorwise=TW, launch=LAUNCH))
    partial = {k: v for k, v in default_profile().to_dict().items() if k not in ("gemm", "grouped_gemm", "wgrad")}
    p = CalibrationProfile.from_dict(partial, base=base)
    assert p.fp8_tensorwise is None and p.launch is None


# -- fp8_tensorwise reads a profile's points ------------------------------------------------------------------------

def test_profile_points_win_on_their_own_gpu_exactly_at_their_shape():
    p = CalibrationProfile.from_dict(_with(fp8_tensorwise=TW))
    assert p.gpu_key == "h800"
    t = speedup_table(p, "h800")
    assert t.speedup(*W13) == 1.8 and t.speedup(16384, 1792, 8192) == 1.2
    # halfway in log2(n) between the two points: equal inverse-square weights, the mean
    assert t.speedup(16384, 3584, 8192) == pytest.approx((1.8 + 1.2) / 2)
    # another GPU, or no section: the bundled table (2.343664 at ffn.w13)
    assert speedup_table(p, "h100-sxm").speedup(*W13) == 2.343664
    assert speedup_table(default_profile(), "h800").speedup(*W13) == 2.343664


def test_compute_model_prices_per_tensor_fp8_from_the_profiles_speedup():
    d = _with(fp8_tensorwise=TW)
    d["gemm"]["bf16"] = [{"m": W13[0], "n": W13[1], "k": W13[2], "tflops": 600.0}]
    bf16_time = 2 * 16384 * 7168 * 8192 / 600e12  # the one BF16 point, exactly this shape
    h800 = ComputeModel(load_gpu("h800"), CalibrationProfile.from_dict(d))
    assert h800.duration(_gemm(W13, "bf16")) == pytest.approx(bf16_time)
    assert h800.duration(_gemm(W13)) == pytest.approx(bf16_time / 1.8)
    d.pop("fp8_tensorwise")
    bundled = ComputeModel(load_gpu("h800"), CalibrationProfile.from_dict(d))
    assert bundled.duration(_gemm(W13)) == pytest.approx(bf16_time / 2.343664)


# -- launch.py reads a profile's figures ----------------------------------------------------------------------------

def test_launch_model_takes_the_profiles_figures():
    m = LaunchModel.for_profile(CalibrationProfile.from_dict(_with(launch=LAUNCH)))
    assert m.kernel_gap_s == pytest.approx(3.5e-6) and m.eager_dispatch_s == pytest.approx(7e-6)
    assert m.graphs_dispatch_s == 0.0 and m.kernels == LaunchModel.load().kernels
    assert m.op_time(1e-3, 3, "eager") == pytest.approx(1e-3 + 3 * 3.5e-6)
    assert m.instruction_time(1e-5, 4, "eager") == pytest.approx(4 * 7e-6)


def test_launch_model_keeps_the_bundled_figures_the_profile_lacks():
    only_host = CalibrationProfile.from_dict(_with(launch={"eager_dispatch_us": 12.0, "provenance": "x"}))
    m = LaunchModel.for_profile(only_host)
    assert m.kernel_gap_s == pytest.approx(2e-6) and m.eager_dispatch_s == pytest.approx(12e-6)
    assert LaunchModel.for_profile(default_profile()) == LaunchModel.load()


# -- the bench's pieces and its CPU path ----------------------------------------------------------------------------

def test_tensorwise_quantisation_maps_amax_to_448():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.25]])
    q, scale = bench_fp8.quantize_tensorwise(x)
    assert float(scale) == pytest.approx(2.0 / 448.0)
    assert q.float().tolist() == [[224.0, -448.0, 112.0, 56.0]]  # powers of two times 7: exact in e4m3


def test_tensorwise_gemm_matches_the_dequantised_product():
    g = torch.Generator().manual_seed(1)
    a, w = bench_fp8.quantize_tensorwise(torch.randn(32, 64, generator=g)), \
        bench_fp8.quantize_tensorwise(torch.randn(16, 64, generator=g))
    ref = (a[0].float() * a[1]) @ (w[0].float() * w[1]).t()
    out = bench_fp8.scaled_mm_tensorwise(a, w).float()
    assert out.shape == (32, 16)
    assert torch.allclose(out, ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))  # BF16 output rounding


def test_bus_bandwidth_factors():
    assert bench_nccl.bus_factor("all_reduce", 8) == 1.75 and bench_nccl.bus_factor("all_gather", 8) == 0.875
    assert bench_nccl.bus_factor("all_reduce", 2) == 1.0 and bench_nccl.bus_factor("all_gather", 2) == 0.5


def test_nccl_with_one_gpu_is_recorded_not_measured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    section, notes = bench_nccl.bench_nccl("cuda", quick=True)
    assert section == {"not_measured": "1 GPU"} and "not measured: 1 GPU" in notes[0]


def test_collective_harness_with_gloo_on_two_cpu_ranks():
    """The spawned harness the NCCL run uses, on gloo: rows per size, bus bandwidth = algbw x the factor."""
    rows = bench_nccl.measure(2, "gloo", (2**12,), warmup=1, iters=2)
    for coll in ("all_reduce", "all_gather"):
        (r,) = rows[coll]
        assert r["bytes"] == 2**12
        assert r["algbw_gbps"] == pytest.approx(r["bytes"] / (r["time_us"] * 1e-6) / 1e9)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * bench_nccl.bus_factor(coll, 2))


def test_launch_on_cpu_is_recorded_not_measured():
    section, notes = bench_launch.bench_launch("cpu", quick=True)
    assert section is None and notes[0].startswith("launch: not measured")


@pytest.fixture(scope="module")
def cpu_profile():
    from gpuhours.validation.bench import run_benchmarks
    return run_benchmarks("cpu", quick=True)


def test_cpu_profile_says_what_was_not_measured_and_why(cpu_profile):
    p = CalibrationProfile.from_dict(cpu_profile)
    assert p.launch is None
    assert cpu_profile["comm"]["nccl_intra_node"] == {"not_measured": "device cpu: NCCL needs CUDA GPUs"}
    notes = cpu_profile["notes"]
    assert any(n.startswith("launch: not measured") for n in notes)
    assert any(n.startswith("comm.nccl_intra_node: not measured") for n in notes)
    # per-tensor FP8 runs on torch's CPU reference kernel at the quick shapes that are multiples of 16
    tw = cpu_profile["fp8_tensorwise"]
    assert "NOT a calibration" in tw["provenance"] and tw["points"]
    for q in tw["points"]:
        assert q["n"] % 16 == 0 and q["k"] % 16 == 0
        assert q["speedup"] == pytest.approx(q["bf16_s"] / q["fp8_s"])
    assert any("skipped: cuBLASLt FP8 needs multiples of 16" in n for n in notes)
    # a CPU profile names no GPU: its points never replace the bundled table
    assert speedup_table(p, "h800").speedup(*W13) == 2.343664


# -- on a GPU --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_launch_section_parses():
    section, _ = bench_launch.bench_launch("cuda", quick=True)
    p = CalibrationProfile.from_dict(_with(launch=section))
    assert p.launch.kernel_gap_us >= 0 and p.launch.eager_dispatch_us > 0
    assert p.launch.kernel_gap_us <= p.launch.launch_interval_us * 1.5


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability(0) < (8, 9), reason="needs an FP8 CUDA GPU")
def test_cuda_tensorwise_section_parses():
    from gpuhours.validation.bench import _n_buffers, _randn, time_op
    section, _ = bench_fp8.bench_tensorwise([("sq", 4096, 4096)], 4096, "cuda", time_op, _n_buffers, _randn, 2, 5)
    p = CalibrationProfile.from_dict(_with(fp8_tensorwise=section))
    assert p.fp8_tensorwise.points[0].speedup > 0


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_cuda_nccl_section_parses():
    section, _ = bench_nccl.bench_nccl("cuda", quick=True)
    CalibrationProfile.from_dict(_with(comm={"nccl_intra_node": section}))
    assert section["world_size"] == torch.cuda.device_count()
