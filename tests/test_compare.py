"""Simulated vs measured traced pair under each calibration source, and the validation page."""

import json

import pytest

from gpuhours.validation.external import profile_trace
from gpuhours.hwmodels.calibration import load_profile
from gpuhours.reports.validation_page import largest_difference, write_validation_page
from gpuhours.validation.compare import compare_all

# Without the trace (GPUHOURS_PROFILE_TRACE) the measured figures come from the trace-derived profile the repository
# ships (trace-h800's trace.measured), so these run from a clean clone too.
TRACE_PATH = profile_trace()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """compare_all with a partial microbenchmark-like profile (no grouped GEMMs: filled from the default)."""
    d = load_profile("default-h800").to_dict()
    d.update(name="bench-test", source="microbenchmark")
    d.pop("grouped_gemm")
    d["attention"] = {"forward_efficiency": 0.3, "backward_efficiency": 0.2}
    path = tmp_path_factory.mktemp("bench") / "bench-test.json"
    path.write_text(json.dumps(d))
    return compare_all(bench_profile=path, trace_path=TRACE_PATH)


def test_json_shape(results):
    text = json.dumps(results)
    assert set(json.loads(text)["sources"]) == {"default-h800", "trace-h800", "bench-test"}
    for name, entry in results["sources"].items():
        assert "error" not in entry, name
        assert entry["trace_span_ms"] == pytest.approx(129.0, abs=0.05)
        assert entry["simulated_span_ms"] > 0 and entry["gpu_hours"] > 0
        assert set(entry["streams"]) == {"compute", "comm"}
        assert len(entry["phases"]) == 10
    busy = results["measured"]["stream_busy_ms"]
    assert (round(busy["7"], 1), round(busy["23"], 1), round(busy["27"], 1)) == (118.2, 11.4, 114.5)
    assert results["published_gpu_hours"] == 2.664e6


def test_sources_are_ordered_as_their_efficiencies(results):
    """Slower attention kernels lengthen the simulated pair: the bench profile (attention 0.3/0.2) is slower than the
    default (0.55/0.4) with everything else equal; the simulated span is at least the compute busy time."""
    s = results["sources"]
    assert s["bench-test"]["simulated_span_ms"] > s["default-h800"]["simulated_span_ms"]
    assert s["bench-test"]["gpu_hours"] > s["default-h800"]["gpu_hours"]
    for entry in s.values():
        assert entry["simulated_span_ms"] >= entry["streams"]["compute"]["simulated_ms"] - 1e-6
        assert entry["simulated_span_ms"] >= entry["streams"]["comm"]["simulated_ms"] - 1e-6


def test_bad_bench_profile_is_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "nope"}')
    r = compare_all(bench_profile=bad, trace_path=TRACE_PATH, with_gpu_hours=False)
    assert "error" in r["sources"]["bad"] and r["sources"]["bad"]["simulated_span_ms"] is None


def test_validation_page(results, tmp_path):
    page = write_validation_page(results, tmp_path / "out")
    text = page.read_text()
    assert "129.0" in text and "2.664M" in text and "bench-test" in text
    src, figure, sim, meas = largest_difference(results)
    assert f"{sim:.1f} ms simulated against {meas:.1f} ms" in text
    for png in ("validation_phases.png", "validation_streams.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="results"):
        write_validation_page({}, tmp_path)


def test_validation_page_lists_the_trace_profiles_residuals_by_phase(results, tmp_path):
    """The page shows, per class and phase, the bundled trace profile's measured and simulated milliseconds and the
    class's spread (its stated uncertainty); a results dict without them renders without the section."""
    res = results["phase_residuals"]
    assert set(res) == {"gemm_fp8", "gemm_grouped", "memory"}
    text = write_validation_page(results, tmp_path / "out").read_text()
    assert "## Residuals by phase" in text
    measured, simulated = res["gemm_fp8"]["phases_ms"]["mlp(W)"]
    assert f"| gemm_fp8 | mlp(W) | {measured:.2f} | {simulated:.2f} |" in text
    assert "| memory | mlp(B) |" in text and f"{res['memory']['spread']:.1%} |" in text
    bare = write_validation_page(dict(results, phase_residuals=None), tmp_path / "bare").read_text()
    assert "## Residuals by phase" not in bare


def test_another_traces_page_shows_no_residuals_of_the_bundled_pair(tmp_path):
    """The residuals belong to the pair trace-h800 was derived from: a synthetic trace's comparison leaves them out."""
    from gpuhours.validation.synthetic_trace import pair_for_profile, write_trace

    path = write_trace(tmp_path / "train.json", pair_for_profile(layers=2))
    assert compare_all(trace_path=path, with_gpu_hours=False)["phase_residuals"] is None
    got = compare_all(trace_path=TRACE_PATH, with_gpu_hours=False)
    assert got["phase_residuals"] is not None and got["launch_counts"]["measured_kernels"]
