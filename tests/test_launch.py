"""Per-kernel launch overhead and host dispatch (hwmodels/launch.py): closed forms, and where they act."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.launch import LaunchModel
from gpuhours.workloads.ops import GemmShape, Op, OpOptions

GAP = 2e-6   # data/launch.toml: 2 us between back-to-back kernels (DeepSeek's trace, median)
HOST = 10e-6  # data/launch.toml: 10 us of host time per eager kernel (Assumption)


def _model(gap=GAP, host=HOST) -> LaunchModel:
    return replace(LaunchModel.load(), kernel_gap_s=gap, eager_dispatch_s=host)


def test_data_file_figures():
    m = LaunchModel.load()
    assert m.kernel_gap_s == pytest.approx(GAP) and m.eager_dispatch_s == pytest.approx(HOST)
    assert m.graphs_dispatch_s == 0.0


def test_kernel_counts_per_op_kind():
    m = LaunchModel.load()
    gemm = Op("l.w", "gemm", "F", gemm=GemmShape(4096, 4096, 4096))
    assert m.kernel_count(gemm) == 1
    assert m.kernel_count(replace(gemm, kind="grouped_gemm", groups=8)) == 1  # DeepGEMM: one launch
    assert m.kernel_count(Op("l.core", "attention", "F")) == 1
    # FlashAttention backward: pre-processing, main kernel, dQ conversion
    assert m.kernel_count(Op("l.core", "attention", "B")) == 3
    assert m.kernel_count(Op("l.norm", "elementwise", "F", bytes=1.0)) == 1
    assert m.kernel_count(Op("l.a2a", "collective", "F", collective="all_to_all", group="ep")) == 0


def test_short_kernels_take_the_floor_each():
    m = _model()
    # an attention backward (3 kernels) of 0.1 us of work: 3 x 2 us + 0.1 us
    assert m.op_time(1e-7, 3) == pytest.approx(3 * GAP + 1e-7)
    assert m.op_time(0.0, 5) == pytest.approx(5 * GAP)  # zero work: exactly k x floor
    assert m.op_time(1e-7, 3, "none") == 1e-7  # the model before issue 15


def test_long_gemm_is_unchanged():
    m = _model()
    t = 5e-3  # a 5 ms GEMM: one kernel, 2 us more, 0.04%
    assert m.op_time(t, 1) == pytest.approx(t + GAP)
    assert m.op_time(t, 1) / t - 1 < 5e-4


def test_eager_instruction_is_bounded_by_the_host():
    m = _model()
    # 200 kernels x 10 us = 2 ms of host time
    assert m.instruction_time(1e-3, 200, "eager") == pytest.approx(2e-3)  # host-bound: the host's 2 ms
    assert m.instruction_time(5e-3, 200, "eager") == 5e-3                  # GPU-bound: the GPU's 5 ms
    assert m.instruction_time(1e-3, 200, "graphs") == 1e-3                 # graphs: no host term
    assert m.instruction_time(1e-3, 200, "none") == 1e-3


def test_bad_host_dispatch_names_the_field():
    with pytest.raises(ValueError, match="host_dispatch must be one of eager, graphs, none"):
        OpOptions(host_dispatch="lazy")
    with pytest.raises(ValueError, match="host_dispatch"):
        LaunchModel.load().dispatch_s("lazy")


@pytest.fixture(scope="module")
def pair():
    from gpuhours.simulator.instructions import Instruction
    from gpuhours.validation import traced_pair as tp
    from gpuhours.validation.compare import _resolve

    def coster(host_dispatch: str, launch: LaunchModel | None = None):
        c = tp.traced_coster(_resolve("default-h800"))
        c.opts = replace(c.opts, host_dispatch=host_dispatch)
        if launch is not None:
            c.launch = launch
        return c

    inst = Instruction("FB", 0, tp.FORWARD_STAGE, b_microbatch=1, b_stage=tp.BACKWARD_STAGE)
    return coster, inst, tp.traced_ops


def test_every_compute_op_pays_its_kernels_gaps(pair):
    coster, _, traced_ops = pair
    on, off = coster("eager"), coster("none")
    ops = traced_ops(on)
    for op in ops:
        kernels = 3 if (op.kind == "attention" and op.phase != "F") else 1
        assert on.op_time(op) - off.op_time(op) == pytest.approx(kernels * GAP, rel=1e-6, abs=1e-12), op.name


def test_host_bound_pair_takes_the_hosts_time(pair):
    coster, inst, traced_ops = pair
    slow_host = _model(host=1e-3)  # 1 ms per kernel: far above any GPU time of the pair
    c = coster("eager", slow_host)
    ops = traced_ops(c)
    kernels = len(ops) + 2 * sum(op.kind == "attention" and op.phase != "F" for op in ops)
    assert c.profile(0, inst).duration == pytest.approx(kernels * 1e-3)
    # under CUDA graphs the same host costs nothing; the GPU-side gaps remain
    g = coster("graphs", slow_host).profile(0, inst).duration
    assert g < kernels * 1e-3 / 2
    assert g == pytest.approx(coster("eager").profile(0, inst).duration)


def test_estimate_help_and_bad_value():
    runner = CliRunner()
    r = runner.invoke(app, ["estimate", "--help"])
    assert r.exit_code == 0 and "--host-dispatch" in r.output
    r = runner.invoke(app, ["estimate", "--host-dispatch", "lazy"])
    assert r.exit_code == 2 and "host_dispatch must be one of" in r.stderr
