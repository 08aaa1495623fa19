"""MoE capacity factor (issue 11, item 5): token dropping caps the busiest EP rank's work and dispatch."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.reports.estimate_table import dropped_share
from gpuhours.workloads.presets import load_preset
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.parallel import ParallelSpec


def test_kept_imbalance_is_capped():
    assert OpOptions(imbalance=2.0).kept_imbalance == 2.0                      # dropless
    assert OpOptions(imbalance=2.0, capacity_factor=1.25).kept_imbalance == 1.25
    assert OpOptions(imbalance=1.1, capacity_factor=1.25).kept_imbalance == 1.1  # under capacity: nothing dropped
    for bad in (0.5, float("inf"), True, "1.2"):
        with pytest.raises(ValueError, match="capacity_factor"):
            OpOptions(capacity_factor=bad)


def test_expert_rows_and_dispatch_follow_the_kept_rows():
    """DeepSeek-V3's MoE layer on EP64: 4,096 tokens x top-8 / 4 experts per rank = 8,192 mean rows per expert;
    an imbalance of 2 doubles them, a capacity factor of 1.25 keeps 1.25x."""
    model = load_preset("deepseek-v3")
    p = ParallelSpec(num_gpus=1024, pp=16, ep=64, schedule="dualpipe", comm_sms=20)

    def expert_rows_and_dispatch(opts):
        passes = layer_passes(model, 10, p, 4096, opts)
        ops = [op for seg in passes.forward for op in seg.ops]
        w13 = next(op for op in ops if op.name.endswith("experts.w13"))
        dispatch = next(op for op in ops if op.collective == "ep_dispatch")
        return w13.gemm.m, dispatch.tokens

    assert expert_rows_and_dispatch(OpOptions()) == (8192, 4096)
    assert expert_rows_and_dispatch(OpOptions(imbalance=2.0)) == (16384, 8192)
    assert expert_rows_and_dispatch(OpOptions(imbalance=2.0, capacity_factor=1.25)) == (10240, 5120)


def test_dropped_share_closed_form():
    # rows 1, 1, 1, 5 (mean 2): a 1.25 capacity keeps 2.5 on the last rank, dropping 2.5 of 8 rows
    assert dropped_share([1, 1, 1, 5], 1.25) == pytest.approx(2.5 / 8)
    assert dropped_share([2, 2, 2, 2], 1.0) == 0.0


def test_cli_capacity_factor_speeds_a_skewed_run_and_reports_what_it_drops():
    args = ["estimate", "--gpus", "256", "--pp", "4", "--ep", "64", "--seq-len", "1024", "--routing", "skew:1.0",
            "--allow-oom", "--json", "--tokens", "1B"]
    dropless = json.loads(CliRunner().invoke(app, args).stdout)
    r = CliRunner().invoke(app, args + ["--capacity-factor", "1.25"])
    assert r.exit_code == 0, r.output
    capped = json.loads(r.stdout)
    assert capped["step_time_s"] < dropless["step_time_s"]
    assert capped["routing"]["capacity_factor"] == 1.25 and 0 < capped["routing"]["dropped_share"] < 1
    assert "capacity_factor" not in dropless["routing"]
