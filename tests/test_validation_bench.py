"""Microbenchmarks: shapes from the model, the timing harness, and a calibration profile that validates.

No timing assertions: the CPU run (quick mode, a few seconds) only exercises the path."""

import json

import pytest

torch = pytest.importorskip("torch")

from gpuhours.validation import bench  # noqa: E402
from gpuhours.workloads.presets import load_preset  # noqa: E402

V3 = load_preset("deepseek-v3")


def test_v3_gemm_shapes_include_the_deepgemm_reference_shapes():
    """Reference sheet (DeepGEMM on H800, M=4096): dense (N, K) and grouped (N, K) shapes of DeepSeek-V3."""
    nk = {(n, k) for _, n, k in bench.gemm_shapes(V3)}
    for shape in [(7168, 16384), (4096, 7168), (7168, 2048), (2112, 7168), (24576, 1536), (32768, 512)]:
        assert shape in nk
    assert {(n, k) for _, n, k in bench.expert_shapes(V3)} == {(4096, 7168), (7168, 2048)}
    assert (2 * V3.dense_intermediate, V3.hidden) in nk and (V3.vocab, V3.hidden) in nk


def test_time_op_calls_warmup_plus_repeats_and_prepares_each():
    calls, prepared = [], []
    t = bench.time_op(lambda s: calls.append(s), [1, 2, 3], "cpu", warmup=2, repeats=5,
                      prepare=lambda a: prepared.append(a) or a * 10)
    assert calls == [10, 20, 30, 10, 20, 30, 10] and prepared == [1, 2, 3, 1, 2, 3, 1]
    assert t >= 0


def test_buffer_rotation_exceeds_twice_l2(monkeypatch):
    assert bench._n_buffers("cpu", 10**9) == 2
    monkeypatch.setattr(bench, "_l2_bytes", lambda device: 50 * 2**20)
    n = bench._n_buffers("cuda", 30 * 2**20)
    assert n * 30 * 2**20 >= 2 * 50 * 2**20 and n == 5


def test_bad_device():
    with pytest.raises(ValueError, match="device"):
        bench.run_benchmarks("tpu", quick=True)


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "cpu.json"
    written = bench.write_profile(path, "cpu", quick=True)
    return path, written


def test_cpu_quick_profile_schema(cpu_profile):
    path, p = cpu_profile
    assert json.loads(path.read_text()) == p
    assert p["schema"] == "gpuhours.calibration/1" and p["source"] == "microbenchmark"
    assert any("NOT a calibration" in n for n in p["notes"])
    prov = p["provenance"]
    assert {"device", "sm_count", "date", "software", "method", "references"} <= set(prov)
    assert prov["software"]["torch"] == torch.__version__
    tiny = bench.scaled_down(V3)
    assert len(p["gemm"]["bf16"]) == len(bench.gemm_shapes(tiny))
    assert [(q["n"], q["k"]) for q in p["gemm"]["bf16"]] == [(n, k) for _, n, k in bench.gemm_shapes(tiny)]
    assert all(q["tflops"] > 0 and q["m"] == 64 for q in p["gemm"]["bf16"])
    assert all(q["groups"] == 2 and q["m"] == 32 for q in p["grouped_gemm"]["bf16"])
    for key, sub in (("attention", "forward_efficiency"), ("attention", "backward_efficiency"),
                     ("elementwise", "bandwidth_efficiency")):
        assert 0 < p[key][sub] <= 1
    # every measured BF16 rate is at or below the peak the profile records
    peak = prov["peak_tflops"]["bf16"]
    assert all(q["tflops"] <= peak for q in p["gemm"]["bf16"] + p["grouped_gemm"]["bf16"])


def test_cpu_quick_profile_loads_as_calibration(cpu_profile):
    calibration = pytest.importorskip("gpuhours.hwmodels.calibration")
    path, p = cpu_profile
    prof = calibration.CalibrationProfile.from_dict(p)
    assert prof.source == "microbenchmark" and prof.sm_count == p["provenance"]["sm_count"]
    assert calibration.load_profile(path).to_dict()["gemm"]["bf16"] == prof.to_dict()["gemm"]["bf16"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_quick_profile_validates():
    calibration = pytest.importorskip("gpuhours.hwmodels.calibration")
    p = bench.run_benchmarks("cuda", quick=True)
    calibration.CalibrationProfile.from_dict(p)
    assert p["provenance"]["sm_count"] == torch.cuda.get_device_properties(0).multi_processor_count
