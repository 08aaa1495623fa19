"""SMs reserved for DeepEP's kernels buy bandwidth up to saturation (issue 15, item 3; hwmodels/deepep.py): comm_sms
has an interior optimum instead of 'as few as possible'."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.hwmodels.deepep import ep_sm_slowdown
from gpuhours.simulator.scenario import estimate, load_scenario
from gpuhours.workloads.parallel import ParallelSpec


def test_slowdown_below_saturation_only():
    dualpipe = ParallelSpec(2048, pp=16, ep=64, schedule="dualpipe", comm_sms=10)
    assert ep_sm_slowdown(dualpipe) == pytest.approx(2.0)            # 20 saturating SMs / 10
    assert ep_sm_slowdown(replace(dualpipe, comm_sms=20)) == 1.0
    assert ep_sm_slowdown(replace(dualpipe, comm_sms=32)) == 1.0
    assert ep_sm_slowdown(ParallelSpec(2048, pp=16, ep=64, schedule="1f1b")) == 1.0  # no DeepEP: wire time
    with pytest.raises(ValueError, match="comm_sms must be >= 1 under dualpipe"):  # overlapped on no SMs
        replace(dualpipe, comm_sms=0)
    # taking turns with compute, DeepEP's kernels still move bytes at the rate of the SMs they are given
    assert ep_sm_slowdown(ParallelSpec(2048, pp=16, ep=64, schedule="1f1b", comm_sms=5)) == pytest.approx(4.0)


def test_an_ep_all_to_all_moves_its_bytes_saturation_over_sms_times_as_long():
    """The transfer at 5 SMs takes 20/5 = 4 times as long as at 20 (where, at DeepEP's
    first-release EP64 rates, the kernels and not the links bound it)."""
    base = load_scenario(gpus=256, pp=4, ep=64, seq_len=1024)
    fast, slow = (replace(base, parallel=replace(base.parallel, comm_sms=k)).simulator().coster for k in (20, 5))
    ops = [op for u in fast.stages[1] for seg in u.forward for op in seg.ops if op.group == "ep"]
    assert ops
    for op in ops:  # an op's own time is its transfer and peer wait (the notify is charged per pair segment)
        assert slow.op_time(op) == pytest.approx(4.0 * fast.op_time(op), rel=1e-12)


def test_comm_sms_has_an_interior_optimum_on_the_default_case():
    """Too few SMs expose the all-to-alls; too many take compute away: 20 beats both 8 and 32."""
    base = load_scenario()
    hours = {k: estimate(replace(base, parallel=replace(base.parallel, comm_sms=k))).gpu_hours for k in (8, 20, 32)}
    assert hours[20] < hours[8] and hours[20] < hours[32]


def test_the_optimum_follows_the_communication_not_the_saturation_point():
    """Where the all-to-alls are fast (the datasheet profile: DeepEP's published rates, no notify) their stream stays
    hidden under the other chunk's compute below DeepEP's 20 saturating SMs, so giving compute more SMs wins: 16
    beats 20 and 8. Where they are as slow as the trace measured them (`trace-h800`: its kernels 1.3-1.6x our
    transfers, plus the notify) they no longer hide below 20: 20 beats 16 and 24."""
    for calibration, best, others in (("default-h800", 16, (8, 20)), ("trace-h800", 20, (16, 24))):
        base = load_scenario(calibration=calibration)
        hours = {k: estimate(replace(base, parallel=replace(base.parallel, comm_sms=k))).gpu_hours
                 for k in (best, *others)}
        assert all(hours[best] < hours[k] for k in others), (calibration, hours)
