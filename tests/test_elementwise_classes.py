"""Memory-bound op classes: each priced at its own measured bandwidth efficiency when the profile has one."""

from __future__ import annotations

import pytest

from gpuhours.hwmodels.calibration import ELEMENTWISE_CLASSES, CalibrationProfile, load_profile
from gpuhours.hwmodels.compute import ComputeModel, elementwise_class
from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.workloads.ops import Op


def _profile(classes):
    d = load_profile("default-h800").to_dict()
    d["elementwise"] = {"bandwidth_efficiency": 0.5, "classes": classes}
    return CalibrationProfile.from_dict(d)


@pytest.mark.parametrize("name, kind, expected", [
    ("L3.attn.attn_norm", "elementwise", "norm"), ("L3.mlp.experts.swiglu", "elementwise", "activation"),
    ("L3.attn.wo.quant", "elementwise", "cast"), ("L3.attn.rope", "elementwise", "rope"),
    ("head.loss", "elementwise", "loss"), ("L3.mlp.router.topk", "elementwise", "router"),
    ("optimizer.adamw", "elementwise", "optimizer"), ("embed.gather", "embedding", "embedding"),
    ("L3.mlp.something_else", "elementwise", None),
])
def test_ops_are_classed_by_name(name, kind, expected):
    assert elementwise_class(Op(name, kind, "F", bytes=1.0)) == expected


def test_a_classed_op_takes_its_class_efficiency_and_others_the_general_one():
    h800 = load_gpu("h800")
    model = ComputeModel(h800, _profile({"norm": 0.8}))
    nbytes = 1e9
    norm = Op("L0.attn.attn_norm", "elementwise", "F", bytes=nbytes)
    other = Op("L0.attn.rope", "elementwise", "F", bytes=nbytes)
    assert model.duration(norm) == pytest.approx(nbytes / (h800.hbm_bw * 0.8))
    assert model.duration(other) == pytest.approx(nbytes / (h800.hbm_bw * 0.5))


def test_classes_round_trip_and_bad_ones_are_named():
    p = _profile({"cast": 0.9, "optimizer": 0.7})
    assert CalibrationProfile.from_dict(p.to_dict()).elementwise_classes == {"cast": 0.9, "optimizer": 0.7}
    with pytest.raises(ValueError, match="elementwise.classes"):
        _profile({"softmax": 0.9})
    with pytest.raises(ValueError, match="cast"):
        _profile({"cast": 1.5})
    assert set(load_profile("bench-h200").elementwise_classes) == set(ELEMENTWISE_CLASSES)
