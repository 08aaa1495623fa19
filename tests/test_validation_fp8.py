"""Fine-grained FP8: round-trip bound, GEMM error, and FP32 promotion of limited-precision accumulation.

Bounds (derived in validation/fp8.py): E4M3 keeps 3 mantissa bits, so round-to-nearest errs by at most half an
ulp, 2^-4 relative, for normals, and by half the subnormal spacing, 2^-10 in scaled units, below 2^-6:
    |x - deq(q(x))| <= max(2^-4 |x|, 2^-10 s),   s = amax(tile) / 448,
hence at most 2^-4 of the tile max. Float32 scaling adds a relative 2^-23 or so; we allow a factor 1 + 1e-5.
"""

import pytest

torch = pytest.importorskip("torch")

from gpuhours.validation import fp8  # noqa: E402

SLACK = 1 + 1e-5


def _wide_range(r, c, seed=0):
    """randn with tile-to-tile magnitudes spread over ~10 decades, plus an all-zero tile row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(r, c, generator=g) * torch.exp(torch.randn(r, -(-c // 128), generator=g) * 3).repeat_interleave(128, 1)[:, :c]
    x[0, :128] = 0
    return x


@pytest.mark.parametrize("which,shape", [("act", (64, 512)), ("act", (33, 200)), ("weight", (256, 384)),
                                         ("weight", (200, 300))])
def test_roundtrip_within_e4m3_bound(which, shape):
    x = _wide_range(*shape)
    q = fp8.quantize_activation(x) if which == "act" else fp8.quantize_weight(x)
    b0, b1 = q.block
    assert q.data.dtype == torch.float8_e4m3fn
    assert q.scale.shape == (-(-shape[0] // b0), -(-shape[1] // b1))
    err = (q.dequantize() - x).abs()
    bound = fp8.roundtrip_error_bound(x, q)
    assert (err <= bound * SLACK).all()
    assert (err / bound).max() > 0.5  # the bound is tight, not vacuous
    tile_max = q.scale.repeat_interleave(b0, 0)[: shape[0]].repeat_interleave(b1, 1)[:, : shape[1]] * fp8.E4M3_MAX
    assert (err <= 2.0 ** -4 * tile_max * SLACK).all()
    assert torch.equal(q.dequantize()[0, :128], torch.zeros(128))  # the zero tile stays exactly zero


def test_tile_max_maps_to_448_and_constants():
    assert fp8.E4M3_MAX == 448 and fp8.E4M3_MANTISSA_BITS == 3
    assert fp8.REL_ROUNDING == 2.0 ** -4 and fp8.ABS_ROUNDING == 2.0 ** -10
    x = torch.randn(16, 256)
    q = fp8.quantize_activation(x)
    per_tile = q.data.float().abs().view(16, 2, 128).amax(-1)
    assert torch.equal(per_tile, torch.full((16, 2), 448.0))


def test_fine_grained_scaling_beats_per_tensor_with_outliers():
    x = torch.randn(128, 512)
    x[3, 7] = 1e5  # one activation outlier: per-tensor scaling pushes the rest into E4M3's subnormals
    rest = torch.ones_like(x, dtype=torch.bool)
    rest[3, :128] = False  # outside the outlier's tile

    def rel(q):
        return ((q.dequantize() - x)[rest].norm() / x[rest].norm()).item()
    assert rel(fp8.quantize_activation(x)) < rel(fp8.quantize_blocks(x, tuple(x.shape))) / 2


@pytest.mark.parametrize("m,n,k", [(64, 256, 512), (128, 2112, 256), (33, 130, 384)])
def test_gemm_error_vs_fp32(m, n, k):
    """Elementwise: within the bound propagated from the round-trip bounds. Aggregate: relative Frobenius
    error below 2^-4 (each operand is off by at most 2^-4 relative per element, errors are unbiased; measured
    about 0.037 for Gaussian data)."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) * 0.02
    a, b = fp8.quantize_activation(x), fp8.quantize_weight(w)
    exact = x.double() @ w.double().t()
    c32 = fp8.fp8_gemm(a, b, out_dtype=torch.float32)
    assert c32.shape == (m, n)
    bound = fp8.gemm_error_bound(a, b, x, w)
    fp32_acc = k * 2.0 ** -23 * (x.double().abs() @ w.double().abs().t())
    assert ((c32.double() - exact).abs() <= bound + fp32_acc).all()
    rel = ((c32.double() - exact).norm() / exact.norm()).item()
    assert 1e-3 < rel < 2.0 ** -4
    cbf = fp8.fp8_gemm(a, b)  # bf16 output adds at most 2^-9 relative per element
    assert cbf.dtype == torch.bfloat16
    assert ((cbf.double() - exact).norm() / exact.norm()).item() < 2.0 ** -4 + 2.0 ** -8
    assert torch.equal(fp8.fp8_gemm(a, b, torch.float32, backend="reference"), fp8.reference_gemm(a, b))


def test_gemm_input_checks():
    a = fp8.quantize_activation(torch.randn(4, 256))
    with pytest.raises(ValueError, match="K mismatch"):
        fp8.fp8_gemm(a, fp8.quantize_weight(torch.randn(128, 128)))
    with pytest.raises(ValueError, match="backend"):
        fp8.fp8_gemm(a, fp8.quantize_weight(torch.randn(128, 256)), backend="cutlass")
    with pytest.raises(ValueError, match="blocks"):
        fp8.fp8_gemm(a, fp8.quantize_activation(torch.randn(128, 256)))
    assert isinstance(fp8.block_scaled_mm_supported("cpu"), bool)


def test_round_significand():
    x = torch.tensor([1 + 2.0 ** -5, -(1 + 2.0 ** -5), 1.75, 3.0], dtype=torch.float64)
    assert fp8.round_significand(x, 4).tolist() == [1.0, -1.0, 1.75, 3.0]
    assert fp8.round_significand(torch.tensor([1 + 3 * 2.0 ** -5], dtype=torch.float64), 4, "nearest").item() == 1.125
    with pytest.raises(ValueError, match="mode"):
        fp8.round_significand(x, 4, "up")


def _accumulation_errors(k, bits=14, mode="truncate", seed=0):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(16, k, generator=g), torch.randn(16, k, generator=g)
    a, b = fp8.quantize_activation(x).dequantize(), fp8.quantize_weight(w).dequantize().t()
    exact = a.double() @ b.double()

    def err(c):
        return ((c.double() - exact).abs().max() / exact.abs().max()).item()
    return (err(fp8.simulate_accumulation(a, b, accumulator_bits=bits, mode=mode)),
            err(fp8.simulate_accumulation(a, b, accumulator_bits=bits, promote_every=128, mode=mode)))


def test_full_precision_accumulator_is_exact():
    a, b = torch.randn(8, 256, dtype=torch.float64), torch.randn(256, 8, dtype=torch.float64)
    c = fp8.simulate_accumulation(a, b, accumulator_bits=53)
    assert torch.allclose(c.double(), a @ b, rtol=1e-6)


def test_fp32_promotion_reduces_accumulation_error_for_large_k():
    """14 significant bits kept by the accumulator (the report's "around 14 bits"), truncation.
    Measured (max error / max |C|): K=512 about 5e-4 without promotion; K=4096 about 3e-3 without and
    1.3e-4 with promotion every 128."""
    no_small, _ = _accumulation_errors(512)
    no_large, yes_large = _accumulation_errors(4096)
    assert no_large > 3 * no_small  # the error of a limited accumulator grows with K
    assert yes_large < no_large / 10  # promotion every 128 elements bounds it
    no_n, yes_n = _accumulation_errors(4096, mode="nearest")
    assert yes_n < no_n


def test_promotion_argument_checked():
    with pytest.raises(ValueError, match="promote_every"):
        fp8.simulate_accumulation(torch.randn(2, 64), torch.randn(64, 2), accumulator_bits=14, promote_every=48)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scaled_mm_matches_reference_when_supported():
    if not fp8.block_scaled_mm_supported("cuda"):
        pytest.skip("block-scaled scaled_mm not supported by this device/torch")
    x, w = torch.randn(512, 1024, device="cuda"), torch.randn(2112, 1024, device="cuda")
    a, b = fp8.quantize_activation(x), fp8.quantize_weight(w)
    out = fp8.fp8_gemm(a, b, torch.float32, backend="scaled_mm")
    ref = fp8.reference_gemm(a, b)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-3
