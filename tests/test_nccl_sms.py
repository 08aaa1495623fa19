"""NCCL's channels hold SMs, and the compute that runs beside an NCCL collective runs on the rest (issue 15, item 3):
channel counts derived by hand from NCCL's source rules, and overlapped compute stretching by exactly held/sms of
the overlap."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.hwmodels.nccl_sms import collective_sms, node_channels
from gpuhours.simulator import nccl_sms
from gpuhours.simulator.task_schedule import _list_schedule, _Task
from gpuhours.simulator.nccl_sms import list_schedule_shared, op_sms
from gpuhours.simulator.overlap import exposed_streamed
from gpuhours.simulator.scenario import estimate, load_scenario
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import Op

MID = ModelSpec("mid", hidden=4096, n_layers=8, vocab=32000, dense_intermediate=14336,
                attention=AttentionSpec("gqa", n_heads=32, n_kv_heads=8, head_dim=128))


# ------------------------------------------------------------------------------------------ channels, by hand
def test_ring_channels_of_an_nvswitch_node():
    # H100 SXM: 18 NVLinks x 20.6 GB/s (topo.h SM90_NVLINK_BW) = 370.8 GB/s. sm90 speeds 60, 50, 40, 30 (24/60 <
    # 0.49 stops): 6x60 = 360, 7x50 = 350, 9x40 = 360, 12x30 = 360 -> 6 channels at 60 (first of the ties);
    # ncclTopoDupChannels: 60 >= 50 -> 12; ncclTopoPostset doubles -> 24.
    assert node_channels("h100-sxm", "hopper") == 24
    assert node_channels("h200-sxm", "hopper") == 24
    # A100: 12 x 20 = 240 GB/s; 6 x 40 = 240 reaches the total -> stop; Ampere (cc 80) duplicates -> 12 -> 24.
    assert node_channels("a100-80gb-sxm", "ampere") == 24
    # H800: 8 x 20.6 = 164.8; 2x60 = 120, 3x50 = 150, 4x40 = 160, 5x30 = 150, 6x24 = 144, 8x20 = 160 (tie), 15/40
    # stops -> 4 at 40; 40 < 50 but only 4 channels (not more than 4) -> duplicated to 8; postset -> 16.
    assert node_channels("h800", "hopper") == 16
    # B200: 18 x 40.1 = 721.8; 8 x 90 = 720 beats 80, 70, 60, 50, 45 (9x80 = 720, 10x70 = 700, 12x60 = 720, 14x50 =
    # 700, 16x45 = 720 tie); 40/90 < 0.49 stops -> 8 -> 16 -> 32.
    assert node_channels("b200", "blackwell") == 32


def test_small_collectives_run_on_fewer_channels():
    # nc drops while nBytes < nc x threads x bytes-per-thread: Simple 512 x 64 = 32,768 bytes a channel
    assert collective_sms("h100-sxm", "hopper", "ring/Simple", 300_000, 8) == 9        # 9 x 32768 <= 300000 < 10 x
    assert collective_sms("h100-sxm", "hopper", "ring/Simple", 1e9, 8) == 24           # large: every channel
    assert collective_sms("h100-sxm", "hopper", "ring/Simple", 100, 8) == 1            # never below one
    # ring LL: 512 threads x 8 bytes x 8 ranks = 32,768 a channel, as Simple; tree LL leaves out the ranks: 4,096
    assert collective_sms("h100-sxm", "hopper", "ring/LL", 300_000, 8) == 9
    assert collective_sms("h100-sxm", "hopper", "tree/LL", 50_000, 8) == 12            # 12 x 4096 <= 50000
    # LL128: 640 x 8 = 5,120 a channel
    assert collective_sms("h100-sxm", "hopper", "ring/LL128", 300_000, 8) == 24        # 58 > 24
    assert collective_sms("h100-sxm", "hopper", "tree/LL128", 51_200, 8) == 10


def test_nvls_runs_on_its_own_channels():
    assert collective_sms("h100-sxm", "hopper", "nvls/Simple", 100, 8) == 16            # NVLS_NCHANNELS_SM90
    assert collective_sms("b200", "blackwell", "nvls/Simple", 1e9, 8) == 24             # NVLS_NCHANNELS_SM100_NVL
    assert collective_sms("b200", "blackwell", "nvls/Simple", 1e9, 16, nodes=2) == 32   # SM100, at most nChannels


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        collective_sms("h100-sxm", "hopper", "pat/Simple", 1e6, 8)
    with pytest.raises(ValueError, match="protocol must be one of"):
        collective_sms("h100-sxm", "hopper", "ring/LL64", 1e6, 8)
    with pytest.raises(ValueError, match="arch must be one of"):
        node_channels("h100-sxm", "volta")


# ------------------------------------------------------------------------- compute beside a collective, by hand
def _task(name, stream, seconds, deps=(), held=0.0, order=0):
    return _Task(name, stream, seconds, tuple(deps), (order,), None, "F", False, held)


def test_compute_stretches_by_held_over_sms_of_the_overlap():
    # 10 s of compute beside a 4 s collective holding 33 of 132 SMs: 4 s at 99/132 = 0.75 do 3 s of work, the other
    # 7 s run alone: the compute ends at 11 = 10 + 33/132 x 4.
    prof = list_schedule_shared([_task("gemm(F)", "compute", 10.0, order=0),
                                 _task("dp.all_gather(F)", "comm", 4.0, held=33, order=1)], 132)
    assert prof.duration == pytest.approx(11.0, rel=1e-12)
    assert prof.compute_busy == pytest.approx(11.0, rel=1e-12)   # the SMs it kept were busy 1 s longer
    assert prof.comm_busy == pytest.approx(4.0, rel=1e-12)       # the collective keeps its time
    # compute shorter than the collective: 2 s of work at 0.75 take 8/3 s, 2 + 33/132 x 8/3; the step ends with it
    prof = list_schedule_shared([_task("gemm(F)", "compute", 2.0, order=0),
                                 _task("dp.all_gather(F)", "comm", 4.0, held=33, order=1)], 132)
    gemm = next(s for s in prof.spans if s.stream == "compute")
    assert gemm.end - gemm.start == pytest.approx(8.0 / 3.0, rel=1e-12)
    assert prof.duration == pytest.approx(4.0, rel=1e-12)


def test_a_chain_after_the_collective_runs_at_full_rate():
    # gather (3 s, 66 SMs of 132) beside gemm A (2 s); gemm B (2 s) waits for the gather. A: 2 s at 0.5 -> ends at
    # 4 > 3: 3 s at 0.5 = 1.5 s of work, the last 0.5 s alone -> 3.5; B starts at 3.5 and runs alone -> 5.5.
    tasks = [_task("a(F)", "compute", 2.0, order=0), _task("g(F)", "comm", 3.0, held=66, order=1),
             _task("b(F)", "compute", 2.0, deps=(0, 1), order=2)]
    assert list_schedule_shared(tasks, 132).duration == pytest.approx(5.5, rel=1e-12)
    # without the SMs the same graph is today's list schedule: max(2, 3) + 2
    free = [replace(t, held=0.0) for t in tasks]
    assert list_schedule_shared(free, 132).duration == _list_schedule(free).duration == pytest.approx(5.0)


def test_held_sms_must_leave_compute_some():
    with pytest.raises(ValueError, match="SMs must be in"):
        list_schedule_shared([_task("g(F)", "comm", 1.0, held=132)], 132)


def test_streamed_gather_with_slowed_compute():
    # 8 s of gathers in 4 pieces under 20 s of compute that runs at 0.75 while they fly: compute starts at 2,
    # does 6 x 0.75 = 4.5 s of work by 8, the remaining 15.5 alone: ends 23.5, exposed 3.5 (2 + 0.25 x 6)
    assert exposed_streamed(8.0, 4, 20.0, 0.75) == pytest.approx(3.5, rel=1e-12)
    # 4 s of compute keeps up even slowed (1 s a piece, 1.33 at 0.75 < 2 s a piece): the last piece arrives at 8
    # and computes in 1 s -> 9, exposed 5, as at full rate
    assert exposed_streamed(8.0, 4, 4.0, 0.75) == pytest.approx(5.0, rel=1e-12) == exposed_streamed(8.0, 4, 4.0)
    with pytest.raises(ValueError, match="compute_rate"):
        exposed_streamed(8.0, 4, 4.0, 0.0)


# ------------------------------------------------------------------------------------------- in the simulator
def _fsdp():
    base = load_scenario(model="llama-3-70b", gpu="h100", gpus=16, pp=1, tp=1, schedule="1f1b", seq_len=2048,
                         batch=64, tokens=1e6, fp8=False)
    return replace(base, model=MID, parallel=replace(base.parallel, zero_stage=3),
                   opts=replace(base.opts, recompute="none"))


def test_fsdp_gathers_hold_every_channel_and_slow_the_forward(monkeypatch):
    scenario = _fsdp()
    coster = scenario.simulator().coster
    gathers = [op for u in coster.stages[0] for seg in u.forward for op in seg.ops if op.collective == "all_gather"]
    assert gathers and all(op_sms(coster, op) == 24 for op in gathers)   # tens of MB: all 24 H100 channels
    on = coster.profile(0, _instruction("F"))
    monkeypatch.setattr(nccl_sms, "ENABLED", False)
    off = scenario.simulator().coster.profile(0, _instruction("F"))
    assert on.comm_busy == pytest.approx(off.comm_busy, rel=1e-12)       # the gathers keep their time
    stretch = on.compute_busy - off.compute_busy
    # the forward's compute loses 24/132 of its rate while a gather runs beside it, never more
    assert 0.0 < stretch <= 24 / 132 * off.comm_busy * (1 + 1e-9)
    assert on.duration > off.duration


def _instruction(kind):
    from gpuhours.simulator.instructions import Instruction

    return Instruction(kind, 0, 0)


def test_collectives_that_hold_no_sms():
    scenario = _fsdp()
    coster = scenario.simulator().coster
    assert op_sms(coster, Op("x", "collective", "F", "m", collective="all_to_all", group="dp", comm_bytes=1e8)) == 0
    gemm = Op("g", "gemm", "F", "m", flops=1e12)
    pipelined = Op("x", "collective", "F", "m", collective="all_gather", group="dp", comm_bytes=1e8, overlaps=gemm)
    assert op_sms(coster, pipelined) == 0   # tp_comm_overlap: AsyncTP's copies run on copy engines


def test_the_default_estimate_has_no_nccl_collective_beside_compute(monkeypatch):
    """DeepSeek-V3's default (DualPipe, TP 1, EP over DeepEP's reserved SMs) runs no NCCL collective beside
    compute inside an instruction, so charging NCCL's SMs leaves it exactly as it was."""
    on = estimate(load_scenario()).gpu_hours
    monkeypatch.setattr(nccl_sms, "ENABLED", False)
    assert estimate(load_scenario()).gpu_hours == on


# ------------------------------------------------------------- overlapped gradient buckets in the engine, by hand
class _Unit:
    """pp 1: F costs 1 s, a full backward 2 s, all compute; no sends."""

    def profile(self, rank, instruction):
        from gpuhours.simulator.engine import InstructionProfile

        d = 1.0 if instruction.kind == "F" else 2.0
        return InstructionProfile(duration=d, compute_busy=d, comm_busy=0.0)

    def transfer(self, src, dst, kind, microbatch, stage):
        return 0.0


def test_buckets_stretch_the_last_backward_by_their_share_of_the_sms():
    """pp 1, m 2: F0 0-1, BW0 1-3, F1 3-4, BW1 4-6. One bucket of 1 s ready halfway through BW1 (5) flies 5-6
    beside it; its channels hold a quarter of the SMs, so BW1 ends 0.25 x 1 s later, at 6.25, while the bucket
    still ends at 6. A 4 s bucket ready at 5 flies beside all of BW1 and its extension: BW1 ends at
    6 + 0.25 x (t - 5) = t, so t = 6.333..."""
    from gpuhours.simulator.engine import run_pipeline
    from gpuhours.simulator.schedules import build_schedule

    s = build_schedule("1f1b", 1, 2)
    plain = run_pipeline(s, _Unit(), tail=lambda rank: 0.0, buckets=lambda rank: ((0.5, 1.0),))
    held = run_pipeline(s, _Unit(), tail=lambda rank: 0.0, buckets=lambda rank: ((0.5, 1.0),),
                        bucket_sms=lambda rank: 0.25)
    assert plain.finish_per_rank == (6.0,)
    assert held.finish_per_rank[0] == pytest.approx(6.25, rel=1e-12)
    assert held.nic_wait_per_rank == (0.0,)  # the bucket was done before the stretched backward
    long = run_pipeline(s, _Unit(), tail=lambda rank: 0.0, buckets=lambda rank: ((0.5, 4.0),),
                        bucket_sms=lambda rank: 0.25)
    assert long.finish_per_rank[0] == pytest.approx(6.0 + 1.0 / 3.0, rel=1e-9)
    assert long.end_per_rank[0] == pytest.approx(9.0, rel=1e-12)  # the bucket still ends at 5 + 4
