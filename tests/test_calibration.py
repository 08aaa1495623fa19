"""CalibrationProfile: schema validation, round trip, and the documented interpolation."""

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhours.hwmodels.calibration import (
    CalibrationProfile,
    default_profile,
    load_profile,
)

FP8_PEAK = 1978.9e12
BF16_PEAK = 989.4e12
# DeepGEMM FP8 on H800, M=4096 (reference/deepseek-v3.md): (N, K) -> TFLOP/s
DEEPGEMM = {(7168, 16384): 1426, (4096, 7168): 1265, (7168, 2048): 1168, (2112, 7168): 1009,
            (24576, 1536): 1125, (32768, 512): 751}


@pytest.fixture(scope="module")
def profile():
    return default_profile()


def test_default_profile_identity_and_provenance(profile):
    assert profile.name == "default-h800 (DeepGEMM published)"
    assert profile.source == "datasheet"
    assert profile.sm_count == 132
    assert profile.reference_peak("fp8") == pytest.approx(FP8_PEAK)
    for kind in ("gemm", "grouped_gemm"):
        for dt in ("fp8", "bf16"):
            for p in profile.points(kind, dt):
                assert p.provenance, (kind, dt, p)
                assert ("assumption" in p.provenance) == (dt == "bf16")
    assert "assumption" in profile.attention_provenance
    assert "assumption" in profile.elementwise_provenance
    assert profile.elementwise_bandwidth_efficiency == 0.7


def test_published_points_are_exact(profile):
    pts = {(p.n, p.k): p.tflops for p in profile.points("gemm", "fp8")}
    assert pts == DEEPGEMM
    for (n, k), tflops in DEEPGEMM.items():
        assert profile.efficiency("gemm", "fp8", 4096, n, k, peak_flops=FP8_PEAK) == pytest.approx(tflops * 1e12 / FP8_PEAK)
    assert profile.efficiency("grouped_gemm", "fp8", 8192, 4096, 7168, 4, peak_flops=FP8_PEAK) == pytest.approx(1346e12 / FP8_PEAK)


def test_bf16_assumption_is_same_fraction_of_peak(profile):
    for n, k in DEEPGEMM:
        e8 = profile.efficiency("gemm", "fp8", 4096, n, k, peak_flops=FP8_PEAK)
        e16 = profile.efficiency("gemm", "bf16", 4096, n, k, peak_flops=BF16_PEAK)
        assert e16 == pytest.approx(e8, abs=1e-3)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(4096, 65536), n=st.integers(256, 65536), k=st.integers(256, 65536))
def test_interpolation_stays_within_measured_range(m, n, k):
    profile = default_profile()
    effs = [p.tflops * 1e12 / FP8_PEAK for p in profile.points("gemm", "fp8")]
    e = profile.efficiency("gemm", "fp8", m, n, k, peak_flops=FP8_PEAK)
    assert min(effs) - 1e-12 <= e <= max(effs) + 1e-12


def test_interpolation_between_two_points_weights_by_log_distance(profile):
    # independent re-statement of the documented rule: inverse-square-distance mean of the 3 nearest points
    # in (log2 m, log2 n, log2 k), here between the measured k = 2048 and k = 16384 at (4096, 7168)
    q = (12.0, math.log2(7168), 12.0)
    cands = [((12.0, math.log2(n), math.log2(kk)), t) for (n, kk), t in DEEPGEMM.items()]
    near = sorted((math.dist(q, c), t) for c, t in cands)[:3]
    w = [1 / d**2 for d, _ in near]
    expected = sum(wi * t for wi, (_, t) in zip(w, near)) / sum(w) * 1e12 / FP8_PEAK
    assert profile.efficiency("gemm", "fp8", 4096, 7168, 4096, peak_flops=FP8_PEAK) == pytest.approx(expected)


def test_small_m_wave_penalty_closed_form(profile):
    base = 1168e12 / FP8_PEAK  # (4096, 7168, 2048)
    # m = 128: 1 x 56 tiles of 128x128 on 132 SMs -> busy 56/132; reference m = 4096: 32 x 56 = 1792 tiles
    # in 14 waves of 132 -> 1792/1848.
    e128 = profile.efficiency("gemm", "fp8", 128, 7168, 2048, peak_flops=FP8_PEAK)
    assert e128 == pytest.approx(base * (56 / 132) / (1792 / 1848))
    # below one tile of rows the useful fraction of the tile falls linearly with m
    e64 = profile.efficiency("gemm", "fp8", 64, 7168, 2048, peak_flops=FP8_PEAK)
    e1 = profile.efficiency("gemm", "fp8", 1, 7168, 2048, peak_flops=FP8_PEAK)
    assert e64 == pytest.approx(e128 / 2)
    assert e1 == pytest.approx(e128 / 128)
    # never a bonus: a smaller m with better wave fill still gets at most the reference efficiency
    assert profile.efficiency("gemm", "fp8", 2048, 7168, 2048, peak_flops=FP8_PEAK) <= base + 1e-12


def test_round_trip_and_save(profile, tmp_path):
    d = profile.to_dict()
    assert CalibrationProfile.from_dict(d) == profile
    path = tmp_path / "p.json"
    profile.save(path)
    assert load_profile(path) == profile
    assert load_profile("default-h800") == profile


def _bad(profile, mutate):
    d = copy.deepcopy(profile.to_dict())
    mutate(d)
    return d


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("gemm"), "'gemm'"),
    (lambda d: d.update(schema="gpuhours.calibration/2"), "schema"),
    (lambda d: d.update(source="guess"), "source"),
    (lambda d: d.update(extra=1), "'extra'"),
    (lambda d: d["gemm"]["fp8"][0].update(tflops=-1), r"gemm\.fp8\[0\]\.tflops"),
    (lambda d: d["grouped_gemm"]["fp8"][1].pop("groups"), r"grouped_gemm\.fp8\[1\]\.groups"),
    (lambda d: d["gemm"].update(fp16=[]), r"gemm\.fp16"),
    (lambda d: d["attention"].update(forward_efficiency=1.5), r"attention\.forward_efficiency"),
    (lambda d: d["elementwise"].pop("bandwidth_efficiency"), r"elementwise\.bandwidth_efficiency"),
    (lambda d: d["provenance"].update(sm_count=0), r"provenance\.sm_count"),
    (lambda d: d["provenance"].pop("references"), r"provenance\.references"),
])
def test_validation_names_the_bad_key(profile, mutate, message):
    with pytest.raises(ValueError, match=message):
        CalibrationProfile.from_dict(_bad(profile, mutate))


def test_query_errors(profile):
    with pytest.raises(ValueError, match="default-h800"):
        load_profile("no-such-profile")
    d = _bad(profile, lambda d: d["grouped_gemm"].pop("bf16"))
    with pytest.raises(ValueError, match="no grouped_gemm points for dtype 'bf16'"):
        CalibrationProfile.from_dict(d).efficiency("grouped_gemm", "bf16", 8192, 4096, 7168, 4, peak_flops=BF16_PEAK)
    with pytest.raises(ValueError, match="kind"):
        profile.efficiency("conv", "fp8", 1, 1, 1, peak_flops=FP8_PEAK)
    with pytest.raises(ValueError, match="exceeds 1"):
        profile.efficiency("gemm", "fp8", 4096, 7168, 16384, peak_flops=1000e12)


def test_partial_profile_loads_over_a_base(profile):
    partial = {
        "schema": "gpuhours.calibration/1", "name": "trace-x", "source": "trace",
        "provenance": {"device": "NVIDIA H800", "sm_count": 132, "date": "2025-01-01", "software": {},
                       "method": "trace import", "references": ["train.json"]},
        "attention": {"forward_efficiency": 0.5, "provenance": "trace"},
        "trace": {"span_ms": 129.0},
    }
    with pytest.raises(ValueError, match="'gemm'"):
        CalibrationProfile.from_dict(partial)
    p = CalibrationProfile.from_dict(partial, base=profile)
    assert (p.name, p.source, p.trace) == ("trace-x", "trace", {"span_ms": 129.0})
    assert p.gemm == profile.gemm and p.grouped_gemm == profile.grouped_gemm
    assert p.attention_forward_efficiency == 0.5
    assert p.attention_backward_efficiency == profile.attention_backward_efficiency
    assert p.comm is None
    assert "attention.backward_efficiency" in p.notes[-1] and "gemm.fp8" in p.notes[-1]
    assert p.reference_peak("fp8") == profile.reference_peak("fp8")
    assert CalibrationProfile.from_dict(p.to_dict()) == p


def test_empty_dtype_table_is_filled_from_the_base(profile):
    """A microbenchmark on a device without FP8 writes "fp8": []; over a base, those points come from it."""
    d = profile.to_dict()
    d["name"], d["gemm"] = "bf16-only", {"bf16": d["gemm"]["bf16"], "fp8": []}
    p = CalibrationProfile.from_dict(d, base=profile)
    assert p.points("gemm", "fp8") == profile.points("gemm", "fp8")
    assert "gemm.fp8" in p.notes[-1]
