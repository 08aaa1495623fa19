"""Megatron-Core's overlapped parameter all-gather (`overlap_param_gather`): buckets gathered one ahead of the next
step's forward, which runs on the SMs NCCL's channels leave it (simulator/param_gather.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.simulator import nccl_sms
from gpuhours.simulator import param_gather
from gpuhours.simulator.param_gather import exposed_param_gather
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.model import AttentionSpec, ModelSpec


def _fixed_rate(monkeypatch, rate):
    monkeypatch.setattr(param_gather, "streamed_gather_rate", lambda coster, nbytes: rate)


def test_a_long_forward_pays_the_first_bucket_and_its_slow_down(monkeypatch):
    # 4 buckets of 1 s; a 10 s forward at 3/4 speed while gathers fly. The forward starts after the first bucket
    # (1 s), then computes without a break; the three later buckets fly for 3 s beside it, costing it 3 x 1/4 s.
    _fixed_rate(monkeypatch, 0.75)
    assert exposed_param_gather(None, 4.0, 4, 10.0, 1e9) == pytest.approx(1.0 + 0.75)


def test_a_short_forward_leaves_the_rest_of_the_gather(monkeypatch):
    # 4 buckets of 1 s under a 2 s forward at full speed: each 0.5 s share of the forward waits for its bucket; the
    # last bucket lands at 4 s and its share ends at 4.5 s, 2.5 s after a forward alone.
    _fixed_rate(monkeypatch, 1.0)
    assert exposed_param_gather(None, 4.0, 4, 2.0, 1e9) == pytest.approx(2.5)


def test_nothing_to_hide_under_and_nothing_to_gather():
    assert exposed_param_gather(None, 4.0, 4, 0.0, 1e9) == pytest.approx(4.0)
    assert exposed_param_gather(None, 0.0, 4, 10.0, 1e9) == 0.0


GPT = ModelSpec(name="gpt-7.5b", hidden=4096, n_layers=36, vocab=51200, dense_intermediate=16384,
                attention=AttentionSpec("gqa", 32, n_kv_heads=32, head_dim=128), ffn_activation="gelu",
                tie_embeddings=True)


def _sim(**overlap):
    s = load_scenario(model=GPT, gpu="a100", gpus=128, pp=1, tp=4, schedule="1f1b", batch=128,
                      tokens=128 * 2048, seq_len=2048, nic_gbps=200, calibration="default-h800")
    return replace(s, parallel=replace(s.parallel, zero_stage=1, **overlap)).simulator()


def test_the_step_tail_charges_the_slowed_forward(monkeypatch):
    # ZeRO-1 on 32 replicas: the all-gather of updated parameters in k buckets under a first forward long enough to
    # hide it. Without overlap the tail carries the whole gather; overlapped, the first bucket plus the forward's
    # slow-down beside the other k - 1: with NCCL's channels taking a fifth of the SMs, 0.2 x gather x (k-1)/k.
    off = _sim()
    reduce, gather, k = off._dp_collectives({0})
    assert k > 1 and gather > 0
    forward = 10 * gather
    tail_off = off._dp_tail({0}, 0.0, forward)
    _fixed_rate(monkeypatch, 0.8)
    tail_on = _sim(overlap_param_gather=True)._dp_tail({0}, 0.0, forward)
    assert tail_off - tail_on == pytest.approx(gather - gather / k - 0.2 * gather * (k - 1) / k)


def test_without_the_sm_charge_only_the_first_bucket_stays(monkeypatch):
    monkeypatch.setattr(nccl_sms, "ENABLED", False)
    off = _sim()
    _, gather, k = off._dp_collectives({0})
    forward = 10 * gather
    tail_off, tail_on = off._dp_tail({0}, 0.0, forward), _sim(overlap_param_gather=True)._dp_tail({0}, 0.0, forward)
    assert tail_off - tail_on == pytest.approx(gather - gather / k)
    # the NCCL model's own share on this fabric lies between none and all of the SMs
    monkeypatch.setattr(nccl_sms, "ENABLED", True)
    charged = _sim(overlap_param_gather=True)._dp_tail({0}, 0.0, forward)
    assert tail_on < charged < tail_off
