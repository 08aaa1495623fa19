"""ComputeModel: roofline durations against published kernel figures and closed forms."""

import json

import pytest

from gpuhours.validation.external import TRACE_ABSENT, profile_trace
from gpuhours.hwmodels.calibration import default_profile
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.workloads.ops import GemmShape, Op



@pytest.fixture(scope="module")
def h800():
    return ComputeModel(load_gpu("h800"), default_profile())


def gemm(m, n, k, dtype="fp8", groups=1, phase="F", **kw):
    kind = "grouped_gemm" if groups > 1 else "gemm"
    return Op("g", kind, phase, dtype=dtype, gemm=GemmShape(m, n, k), groups=groups, **kw)


def test_deepgemm_published_rates_on_132_sms(h800):
    # time = FLOPs / published TFLOP/s, whatever the peak and efficiency bookkeeping inside
    assert h800.duration(gemm(4096, 7168, 16384)) == pytest.approx(2 * 4096 * 7168 * 16384 / 1426e12)
    assert h800.duration(gemm(4096, 2112, 7168)) == pytest.approx(2 * 4096 * 2112 * 7168 / 1009e12)
    grouped = gemm(8192, 4096, 7168, groups=4)
    assert h800.duration(grouped) == pytest.approx(2 * 4 * 8192 * 4096 * 7168 / 1346e12)


def test_sm_fraction_scales_compute_linearly(h800):
    op = gemm(4096, 7168, 2048)
    full = h800.duration(op)
    assert h800.duration(op, sm_fraction=112 / 132) == pytest.approx(full * 132 / 112)
    with pytest.raises(ValueError, match="sm_fraction"):
        h800.duration(op, sm_fraction=0.0)
    with pytest.raises(ValueError, match="sm_fraction"):
        h800.duration(op, sm_fraction=1.2)


def test_explicit_flops_match_shape_flops(h800):
    op = gemm(4096, 7168, 2048)
    explicit = gemm(4096, 7168, 2048, flops=2 * 4096 * 7168 * 2048)
    assert h800.duration(op) == pytest.approx(h800.duration(explicit))


def test_memory_bound_ops_use_hbm_roofline(h800):
    nbytes = 4096 * 7168 * 2 * 3  # read x, read residual, write out (BF16)
    for kind in ("elementwise", "embedding"):
        op = Op("e", kind, "F", bytes=nbytes, flops=4096 * 7168 * 4)
        t = h800.duration(op)
        assert t == pytest.approx(nbytes / (3.35e12 * 0.7))
        assert h800.duration(op, sm_fraction=0.5) == pytest.approx(t)  # HBM does not scale with SMs


def test_roofline_takes_the_larger_term(h800):
    """A GEMM's memory term runs at the full HBM bandwidth (its achieved rate lives in its efficiency)."""
    op = gemm(4096, 7168, 2048)
    t_compute = h800.duration(op)
    heavy = gemm(4096, 7168, 2048, bytes=t_compute * 3.35e12 * 4)
    assert h800.duration(heavy) == pytest.approx(4 * t_compute)


def test_attention_phase_efficiencies(h800):
    flops = 1e12
    f = h800.duration(Op("a", "attention", "F", flops=flops))
    b = h800.duration(Op("a", "attention", "B", flops=flops))
    w = h800.duration(Op("a", "attention", "W", flops=flops))
    assert f == pytest.approx(flops / (989.4e12 * 0.55))
    assert b == w == pytest.approx(flops / (989.4e12 * 0.40))


def test_fp8_refused_on_a100_bf16_carried_as_fraction():
    a100 = ComputeModel(load_gpu("a100"), default_profile())
    with pytest.raises(ValueError, match="fp8"):
        a100.duration(gemm(4096, 7168, 16384))
    # the profile's BF16 fraction of peak (assumed = DeepGEMM FP8 fraction) carries over to the A100 peak
    t = a100.duration(gemm(4096, 7168, 16384, dtype="bf16"))
    assert t == pytest.approx(2 * 4096 * 7168 * 16384 / (312e12 * 1426 / 1978.9), rel=1e-3)


def test_same_compute_on_h100_and_h200_faster_memory_on_h200():
    p = default_profile()
    h100, h200 = ComputeModel(load_gpu("h100"), p), ComputeModel(load_gpu("h200"), p)
    op = gemm(4096, 7168, 2048)
    assert h100.duration(op) == pytest.approx(h200.duration(op))
    ew = Op("e", "elementwise", "F", bytes=1e9)
    assert h200.duration(ew) == pytest.approx(h100.duration(ew) * 3.35 / 4.8)


def test_rejects_collectives_and_unknown_kinds(h800):
    with pytest.raises(ValueError, match="network model"):
        h800.duration(Op("c", "collective", "F", collective="all_reduce", comm_bytes=1e6))
    with pytest.raises(ValueError, match="kind"):
        h800.duration(Op("x", "softmax", "F", flops=1.0))
    with pytest.raises(ValueError, match="gemm shape"):
        h800.duration(Op("x", "gemm", "F", flops=1.0, dtype="fp8"))
    with pytest.raises(ValueError, match="phase"):
        h800.duration(Op("a", "attention", "X", flops=1.0))


def test_mla_attention_within_a_loose_band_of_the_h800_trace(h800):
    """Sanity only: the assumed attention efficiencies against the FlashAttention kernels of the trace."""
    trace = profile_trace()
    if trace is None:
        pytest.skip(TRACE_ABSENT)
    events = json.loads(trace.read_text())["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    fwd = [e["dur"] * 1e-6 for e in kernels if "flash::compute_attn" in e["name"]]
    bwd = [e["dur"] * 1e-6 for e in kernels if "flash::FlashAttnBwd<" in e["name"]]
    assert len(fwd) == len(bwd) == 4
    # one 4096-token sequence, 128 heads, qk dim 192, v dim 128, causal: S^2 * H * (dqk + dv) forward FLOPs,
    # backward 2.5x (five S x S matmuls instead of two)
    f_flops = 4096**2 * 128 * (192 + 128)
    f = h800.duration(Op("a", "attention", "F", flops=f_flops))
    b = h800.duration(Op("a", "attention", "B", flops=2.5 * f_flops))
    assert 1 / 1.5 < f / (sum(fwd) / 4) < 1.5
    assert 1 / 1.5 < b / (sum(bwd) / 4) < 1.5
