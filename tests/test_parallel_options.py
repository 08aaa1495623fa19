"""The data- and tensor-parallel options every plan could already set are on the command line and in sweeps
too: sequence parallelism, FSDP's reshard-after-forward and the data-parallel bucket size."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.phases import PHASE_KEYS
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.layer_ops import layer_passes

LLAMA = dict(model="llama-3-70b", gpus=64, pp=2, tp=8, schedule="1f1b", batch=64, seq_len=4096, fp8=False,
             recompute="none")


def _tp_kinds(scenario):
    passes = layer_passes(scenario.model, 0, scenario.parallel, scenario.plan.seq_len, scenario.opts)
    return sorted(op.collective for seg in passes.forward for op in seg.ops if op.group == "tp")


def test_sequence_parallel_switches_the_tp_collectives():
    """Korthikanti et al. 2022 sec. 4.2: with sequence parallelism a block has an all-gather before and a
    reduce-scatter after (forward); without, one all-reduce after."""
    on, off = load_scenario(**LLAMA, sequence_parallel=True), load_scenario(**LLAMA, sequence_parallel=False)
    assert on.parallel.sequence_parallel and not off.parallel.sequence_parallel
    assert _tp_kinds(on) == ["all_gather", "all_gather", "reduce_scatter", "reduce_scatter"]
    assert _tp_kinds(off) == ["all_reduce", "all_reduce"]
    # every TP rank normalises 1/tp of the sequence with it, all of it without
    norm = lambda sc: sum(op.bytes for seg in layer_passes(sc.model, 0, sc.parallel, 4096, sc.opts).forward  # noqa
                          for op in seg.ops if op.name.endswith("norm"))
    assert norm(off) == pytest.approx(8 * norm(on))


def test_reshard_and_bucket_size_reach_the_layout():
    s = load_scenario(**LLAMA, zero_stage=3, reshard_after_forward=False, dp_bucket_params=25_000_000)
    assert s.parallel.reshard_after_forward is False and s.parallel.dp_bucket_params == 25_000_000
    assert load_scenario(**LLAMA).parallel.reshard_after_forward is True  # the plan's default


def test_the_options_on_the_command_line():
    runner = CliRunner()
    base = ["step", "--model", "llama-3-70b", "--gpus", "64", "--pp", "2", "--tp", "8", "--schedule", "1f1b",
            "--precision", "bf16", "--microbatches", "4", "--json"]
    on = runner.invoke(app, base + ["--sequence-parallel"])
    off = runner.invoke(app, base + ["--no-sequence-parallel"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    # the two run different collectives (and, under sequence parallelism, a weight-pass all-gather): not one step
    assert json.loads(off.stdout)["step_time_s"] != pytest.approx(json.loads(on.stdout)["step_time_s"], rel=1e-3)
    bad = runner.invoke(app, base + ["--dp-bucket-params", "-5"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


@pytest.mark.parametrize("key", ["sequence_parallel", "reshard_after_forward", "dp_bucket_params",
                                 "overlap_grad_reduce", "overlap_param_gather"])
def test_sweep_and_phase_keys(key):
    assert key in PHASE_KEYS
