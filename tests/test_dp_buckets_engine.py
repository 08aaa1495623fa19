"""Overlapped data-parallel gradient buckets as engine traffic: they share the rank's network interface with its
pipeline sends (hand-timed cases), the interface carries exactly what was sent (conservation), and with nothing
else on the interface the engine gives the closed form `exposed_dp_comm`."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.simulator.engine import InstructionProfile, UnitCosts, run_pipeline
from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.model import AttentionSpec, ModelSpec


class _Coster:
    """F costs 1 s, a full backward 2 s; every pipeline send holds the sender's interface `send` s."""

    def __init__(self, send: float):
        self.costs, self.send = UnitCosts(f=1.0, b=2.0, w=1.0), send

    def profile(self, rank, instruction):
        d = self.costs.of(instruction.kind)
        return InstructionProfile(duration=d, compute_busy=d, comm_busy=0.0)

    def transfer(self, src, dst, kind, microbatch, stage):
        return self.send


def test_single_rank_buckets_follow_the_closed_form():
    """pp 1, m 2: F0 0-1, BW0 1-3, F1 3-4, BW1 4-6. Two buckets of 1 s, ready halfway through BW1 (5) and at
    its end (6): the interface carries them 5-6 and 6-7, so the tail starts at 7, 1 s after the last
    instruction: max(r, R + w/K - w) = max(1, 2 + 1 - 2) = 1."""
    s = build_schedule("1f1b", 1, 2)
    r = run_pipeline(s, _Coster(0.0), tail=lambda rank: 0.5, buckets=lambda rank: ((0.5, 1.0), (1.0, 1.0)))
    assert r.finish_per_rank == (6.0,)
    assert r.nic_wait_per_rank == (1.0,)
    assert r.end_per_rank == (7.5,)
    assert r.nic_busy_per_rank == (2.0,)  # conservation: what the buckets carry


def test_a_bucket_in_flight_slows_the_pipeline_send():
    """pp 2, m 2, sends of 0.5 s. Rank 1 runs F0.1 1.5-2.5, BW0.1 2.5-4.5, F1.1 4.5-5.5, BW1.1 5.5-7.5; its
    bucket of 1.5 s is ready halfway through BW1.1 (6.5) and has 0.5 s left at 7.5, when BW1.1's gradient send
    (0.5 s) joins it: sharing the interface, both end at 8.5, so rank 0's BW1.0 runs 8.5-10.5 instead of
    8.0-10.0."""
    s = build_schedule("1f1b", 2, 2)
    plain = run_pipeline(s, _Coster(0.5), tail=lambda rank: 0.0)
    loaded = run_pipeline(s, _Coster(0.5), tail=lambda rank: 0.0,
                          buckets=lambda rank: ((0.5, 1.5),) if rank == 1 else ())
    assert plain.finish_per_rank == (10.0, 7.5)
    assert loaded.finish_per_rank == (10.5, 7.5)
    assert loaded.nic_wait_per_rank[1] == pytest.approx(1.0)  # the tail waits for both, to 8.5
    # conservation: rank 0 sent two activations, rank 1 two gradients and one bucket (busy 4.5-5.0, 6.5-8.5)
    assert loaded.nic_busy_per_rank == pytest.approx((1.0, 2.5))
    assert plain.nic_busy_per_rank == (1.0, 1.0)


def test_buckets_queue_behind_each_other_but_not_behind_sends():
    """The same bucket ready at BW1.1's end (7.5) starts with that instruction's send: both at half rate, the
    send ends at 8.5 and the bucket, alone from then, at 9.5. Two buckets of 0.75 s ready at 7.5 run one after
    the other beside the send: the send ends at 8.5 as before (only the first bucket is in flight beside it), the
    first bucket at 8.75, the second at 9.5 -- the interface never idles, so the work ends at 7.5 + 2.0."""
    s = build_schedule("1f1b", 2, 2)
    late = run_pipeline(s, _Coster(0.5), tail=lambda rank: 0.0,
                        buckets=lambda rank: ((1.0, 1.5),) if rank == 1 else ())
    assert late.finish_per_rank == pytest.approx((10.5, 7.5))
    assert late.nic_wait_per_rank[1] == pytest.approx(2.0)
    two = run_pipeline(s, _Coster(0.5), tail=lambda rank: 0.0,
                       buckets=lambda rank: ((1.0, 0.75), (1.0, 0.75)) if rank == 1 else ())
    assert two.finish_per_rank == pytest.approx((10.5, 7.5))
    assert two.nic_wait_per_rank[1] == pytest.approx(2.0)
    assert two.nic_busy_per_rank[1] == pytest.approx(0.5 + 0.5 + 1.5)  # busy = work: the interface never idles


GPT = ModelSpec(name="gpt-small", hidden=2048, n_layers=8, vocab=32000, dense_intermediate=8192,
                attention=AttentionSpec("gqa", 16, n_kv_heads=16, head_dim=128), ffn_activation="gelu",
                tie_embeddings=True)


def _sim(pp: int, **overlap):
    s = load_scenario(model=GPT, gpu="a100", gpus=16, pp=pp, tp=1, schedule="1f1b", batch=64, tokens=64 * 2048,
                      seq_len=2048, network="alpha-beta", calibration="default-h800", nic_gbps=25)
    return replace(s, parallel=replace(s.parallel, zero_stage=1, dp_bucket_params=10_000_000, **overlap)).simulator()


def test_engine_buckets_keep_the_old_result_with_nothing_else_on_the_interface(monkeypatch):
    """pp 1: no pipeline sends, so the exposed reduction is the closed form's (which leaves out the SMs the buckets'
    NCCL channels take from the backward: that stretch is tested in tests/test_nccl_sms.py, so it is off here)."""
    from gpuhours.simulator import nccl_sms

    monkeypatch.setattr(nccl_sms, "ENABLED", False)
    sim = _sim(1, overlap_grad_reduce=True)
    step = sim.step(4)
    schedule = build_schedule("1f1b", 1, 4)
    window = sim._last_backward(schedule.programs[0], 0)
    buckets = sim._dp_buckets({0}, window)
    assert len(buckets) > 1
    closed = sim._dp_tail({0}, window, 0.0)                 # the closed form, reduction included
    assert step.dp_tail_per_rank[0] == pytest.approx(closed, rel=1e-9)
    assert step.pipeline.nic_busy_per_rank[0] == pytest.approx(sum(sec for _, sec in buckets), rel=1e-12)


def test_no_overlap_runs_nothing_in_the_engine():
    sim = _sim(2)
    step = sim.step(4)
    assert all(not sim._dp_buckets({s}, 1.0) for s in range(2))
    assert step.dp_tail_per_rank == tuple(sim._dp_tail({r}, sim._last_backward(p, r), 0.0) for r, p in
                                          enumerate(build_schedule("1f1b", 2, 4).programs))
