"""Weight-gradient GEMMs priced from DeepGEMM's weight-gradient kernel figures (hwmodels/wgrad.py)."""

import copy
import json

import pytest

from gpuhours.hwmodels.calibration import CalibrationProfile, default_profile, load_profile
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.hwmodels.wgrad import without_wgrad
from gpuhours.workloads.ops import GemmShape, Op


@pytest.fixture(scope="module")
def h800():
    return ComputeModel(load_gpu("h800"), default_profile())


def op(m, n, k, phase, dtype="fp8", groups=1):
    kind = "grouped_gemm" if groups > 1 else "gemm"
    return Op("g", kind, phase, dtype=dtype, gemm=GemmShape(m, n, k), groups=groups)


def w_op(out_features, in_features, tokens, dtype="fp8", groups=1):
    """A weight-gradient op as workloads.ops.PassBuilder.gemm shapes it: (out, in, tokens)."""
    return op(out_features, in_features, tokens, "W", dtype, groups)


# DeepSeek-V3's weight gradients at DeepGEMM PR #95's published shapes: (out, in, tokens) -> TFLOP/s on 132 SMs
# (the PR writes them as M = in, N = out, K = tokens).
PUBLISHED_DENSE = [
    ((7168, 16384, 4096), 994),    # attention output projection
    ((4096, 7168, 4096), 942),     # shared expert w1/w3
    ((7168, 2048, 4096), 920),     # shared expert w2
    ((24576, 1536, 4096), 986),    # q up-projection
    ((32768, 512, 4096), 878),     # kv up-projection
    ((2112, 7168, 8192), 1052),    # fused q/kv down-projection, 8192 tokens
]
PUBLISHED_K_GROUPED = [  # (groups, out, in, tokens per expert)
    ((4, 4096, 7168, 8192), 1044),
    ((4, 7168, 2048, 8192), 1033),
    ((4, 4096, 7168, 4096), 939),
    ((8, 4096, 7168, 4096), 942),
]


@pytest.mark.parametrize("shape, tflops", PUBLISHED_DENSE)
def test_dense_weight_gradients_at_published_rates(h800, shape, tflops):
    m, n, k = shape
    assert h800.duration(w_op(m, n, k)) == pytest.approx(2 * m * n * k / (tflops * 1e12))


@pytest.mark.parametrize("shape, tflops", PUBLISHED_K_GROUPED)
def test_k_grouped_weight_gradients_at_published_rates(h800, shape, tflops):
    g, m, n, k = shape
    assert h800.duration(w_op(m, n, k, groups=g)) == pytest.approx(2 * g * m * n * k / (tflops * 1e12))


def test_same_flops_slower_than_the_forward_kernel(h800):
    """The output projection: forward 4096 x 7168 x 16384 at 1426 TFLOP/s (DeepGEMM README), its weight gradient
    (same FLOPs) at 994 (PR #95): the weight gradient takes 1426 / 994 of the forward time; on 112 of 132 SMs
    both scale by 132 / 112."""
    fwd, wgrad = op(4096, 7168, 16384, "F"), w_op(7168, 16384, 4096)
    assert h800.duration(wgrad) / h800.duration(fwd) == pytest.approx(1426 / 994)
    assert h800.duration(wgrad, 112 / 132) == pytest.approx(h800.duration(wgrad) * 132 / 112)


def test_interpolated_shapes_stay_within_the_published_range(h800):
    """The q down-projection (1536 x 7168 x 4096) and the kv down-projection (576 x 7168) are not in the table:
    their rate lies between the table's slowest (878) and fastest (1092) dense weight-gradient figures."""
    for m, n, k in ((1536, 7168, 4096), (576, 7168, 4096)):
        rate = 2 * m * n * k / h800.duration(w_op(m, n, k)) / 1e12
        assert 878 - 1e-6 <= rate <= 1092 + 1e-6


def test_bf16_weight_gradients_keep_the_forward_curves(h800):
    """No BF16 weight-gradient figures are published: a BF16 W GEMM is priced as the GEMM of its executed shape
    in any other phase."""
    assert h800.duration(w_op(256, 7168, 4096, dtype="bf16")) == h800.duration(op(256, 7168, 4096, "B", "bf16"))


def test_without_the_section_weight_gradients_take_the_forward_curves():
    bare = ComputeModel(load_gpu("h800"), without_wgrad(default_profile()))
    m, n, k = 7168, 16384, 4096
    assert bare.duration(w_op(m, n, k)) == bare.duration(op(m, n, k, "F"))


def test_round_trip_and_not_inherited_by_partial_profiles():
    base = default_profile()
    assert base.wgrad is not None
    assert CalibrationProfile.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    # a partial profile is never completed with the base's weight-gradient points: they belong to the base's curves
    partial = load_profile("trace-h800").to_dict()
    partial.pop("wgrad")
    assert CalibrationProfile.from_dict(partial, base=base).wgrad is None
    # trace-h800 has its own (the base's scaled by the traced W phases' time ratio), kept over any base
    own = load_profile("trace-h800").wgrad
    assert own is not None and load_profile("trace-h800", base=base).wgrad == own
    assert own["gemm"]["fp8"] != base.wgrad["gemm"]["fp8"]


@pytest.mark.parametrize("section, message", [
    ({"gemm": {"fp16": []}}, "'wgrad.gemm.fp16' is not a dtype"),
    ({"gemm": {"fp8": [{"m": 1, "n": 1, "k": 1}]}}, "wgrad.gemm.fp8\\[0\\].tflops"),
    ({"dense": {}}, "wgrad.dense"),
    ({"gemm": {}}, "'wgrad' has no points"),
    ([], "'wgrad' must be an object"),
])
def test_bad_sections_name_the_field(section, message):
    d = copy.deepcopy(default_profile().to_dict())
    d["wgrad"] = section
    with pytest.raises(ValueError, match=message):
        CalibrationProfile.from_dict(d)


def test_sensitivity_moves_the_weight_gradient_points_with_their_kind():
    """`gpuhours sensitivity`'s dense FP8 GEMM rate covers the dense weight gradients, the grouped rate the
    k-grouped ones."""
    from gpuhours.simulator.scenario import load_scenario
    from gpuhours.simulator.sensitivity import perturbed

    scenario = load_scenario(calibration="default-h800")
    base = scenario.profile.wgrad
    slow = perturbed(scenario, "gemm_fp8", 0.8).profile.wgrad
    assert [q.tflops for q in slow["gemm"]["fp8"]] == pytest.approx([0.8 * q.tflops for q in base["gemm"]["fp8"]])
    assert slow["grouped_gemm"] == base["grouped_gemm"]
    slow = perturbed(scenario, "grouped_gemm_fp8", 0.8).profile.wgrad
    assert [q.tflops for q in slow["grouped_gemm"]["fp8"]] == pytest.approx(
        [0.8 * q.tflops for q in base["grouped_gemm"]["fp8"]])
