"""Overlapped data-parallel communication (Megatron-Core's overlap_grad_reduce / overlap_param_gather): the
closed form of what stays exposed, the bucket size rule, and its effect on a simulated step."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.dp_tail import exposed_dp_comm
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.parallel import ParallelSpec


def test_without_overlap_everything_follows_the_backward():
    assert exposed_dp_comm(3.0, 2.0, buckets=8, window=10.0, overlap_grad_reduce=False,
                           overlap_param_gather=False) == 5.0


def test_one_bucket_hides_nothing():
    # Megatron launches a bucket's reduction when all its gradients are ready: one bucket waits for the whole
    # backward.
    assert exposed_dp_comm(3.0, 0.0, 1, 10.0, True, False) == pytest.approx(3.0)


def test_long_backward_leaves_only_the_last_bucket():
    # 4 buckets of 1 s each, ready at 2.5, 5, 7.5, 10 s: each finishes before the next is ready; the last one
    # (ready at 10 s) ends at 11 s.
    assert exposed_dp_comm(4.0, 0.0, 4, 10.0, True, False) == pytest.approx(1.0)


def test_short_backward_leaves_the_queue():
    # 4 buckets of 2 s each ready at 0.5, 1, 1.5, 2 s: the NIC runs them back to back from 0.5 s, ending at
    # 8.5 s, 6.5 s after a 2 s backward.
    assert exposed_dp_comm(8.0, 0.0, 4, 2.0, True, False) == pytest.approx(6.5)


def test_param_gather_waits_for_the_first_bucket_only():
    assert exposed_dp_comm(0.0, 8.0, 4, 2.0, False, True) == pytest.approx(2.0)
    assert exposed_dp_comm(0.0, 8.0, 4, 2.0, False, False) == pytest.approx(8.0)


def test_bucket_size_follows_megatron_core_default():
    # DistributedDataParallelConfig.bucket_size: max(40,000,000, 1,000,000 x dp) parameters
    assert ParallelSpec(num_gpus=64, tp=8).bucket_params == 40_000_000
    assert ParallelSpec(num_gpus=1024, tp=2).bucket_params == 512_000_000
    assert ParallelSpec(num_gpus=64, tp=8, dp_bucket_params=5_000_000).bucket_params == 5_000_000
    with pytest.raises(ValueError, match="dp_bucket_params"):
        ParallelSpec(num_gpus=8, dp_bucket_params=-1)
    with pytest.raises(ValueError, match="overlap_grad_reduce"):
        ParallelSpec(num_gpus=8, overlap_grad_reduce="yes")


GPT = ModelSpec(name="gpt-7.5b", hidden=4096, n_layers=36, vocab=51200, dense_intermediate=16384,
                attention=AttentionSpec("gqa", 32, n_kv_heads=32, head_dim=128), ffn_activation="gelu",
                tie_embeddings=True)


def _step(**overlap):
    s = load_scenario(model=GPT, gpu="a100", gpus=128, pp=1, tp=4, schedule="1f1b", batch=128,
                      tokens=128 * 2048, seq_len=2048, nic_gbps=200, calibration="default-h800")
    s = replace(s, parallel=replace(s.parallel, zero_stage=0, **overlap))
    return s.simulator().step(4)


def test_overlap_shortens_the_step_by_at_most_the_reduction():
    plain, overlapped = _step(), _step(overlap_grad_reduce=True)
    saved = plain.step_time - overlapped.step_time
    assert saved > 0
    assert max(overlapped.dp_tail_per_rank) < max(plain.dp_tail_per_rank)
    # the reduction itself (the whole plain tail minus the optimizer update) bounds what overlap can save
    assert saved < max(plain.dp_tail_per_rank)


def test_cli_flag_reaches_the_step():
    common = ["estimate", "--model", "llama-3-70b", "--gpu", "h100", "--gpus", "64", "--pp", "2", "--tp", "8",
              "--schedule", "1f1b", "--batch", "64", "--tokens", "1M", "--seq-len", "4096", "--json",
              "--allow-oom"]
    runner = CliRunner()
    plain = json.loads(runner.invoke(app, common).output)
    over = runner.invoke(app, common + ["--overlap-grad-reduce", "--overlap-param-gather"])
    assert over.exit_code == 0, over.output
    assert json.loads(over.output)["step_time_s"] < plain["step_time_s"]
