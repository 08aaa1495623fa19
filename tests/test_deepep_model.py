"""DeepEP kernel model (hwmodels/deepep.py): published anchors, SM-limited bandwidth, resident time by hand, and the
optimum of a tiny closed-form trade-off."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gpuhours.hwmodels.deepep import DeepEPKernels, counted_bytes, distinct_targets
from gpuhours.simulator.scenario import load_scenario

DATA = Path(__file__).resolve().parents[1] / "hwmodels" / "data"
HAND = DeepEPKernels(saturating_sms=20, measured_sms=24, intranode=(150.0, 160.0),
                     internode=((16, 40.0, 40.0), (64, 50.0, 50.0)), notify_s=2e-3)


def test_reproduces_the_published_anchor_points():
    k = DeepEPKernels.load()
    # DeepEP README, first release (PR #130's "before" column), EP64 on H800: 46 GB/s dispatch, 45 combine
    assert k.anchor_gbps(64, "dispatch", internode=True) == 46.0
    assert k.anchor_gbps(64, "combine", internode=True) == 45.0
    assert k.anchor_gbps(16, "dispatch", internode=True) == 43.0
    assert k.anchor_gbps(8, "combine", internode=False) == 158.0         # intranode, NVLink
    assert k.anchor_gbps(256, "dispatch", internode=True) == 46.0        # beyond the table: EP64's
    # the README measured with 24 SMs, at or above the V3 report's 20 saturating SMs: both reach the anchor
    for sms in (20, 24):
        assert k.kernel_rate(64, "combine", True, sms) == pytest.approx(45e9, rel=1e-12)
    assert k.notify_s == 0.0                     # the data file holds no notify: it is a calibration profile's


def test_notify_per_call_is_the_trace_profiles_and_only_its():
    """trace-h800.json carries the trace's notify kernels over the pair's 16 EP calls (32.988 ms / 16); the datasheet
    profile has none, so its DeepEP calls carry no notify anywhere."""
    trace = json.loads((DATA / "trace-h800.json").read_text())["comm"]
    assert trace["deepep_notify_per_call_ms"] == pytest.approx(trace["a2a_kernel_ms"]["a2a_notify"] / 16, rel=1e-6)
    assert "deepep_notify_per_call_ms" not in json.loads((DATA / "default-h800.json").read_text())["comm"]
    assert load_scenario(calibration="default-h800").simulator().coster.deepep.notify_s == 0.0
    assert load_scenario().simulator().coster.deepep.notify_s == pytest.approx(32.988e-3 / 16, rel=1e-6)


def test_later_release_table_matches_the_shipped_profile_figures():
    """The multi-QP release's table in comm_kernels.toml is the one default-h800.json quotes (an independent copy)."""
    import tomllib
    with (DATA / "comm_kernels.toml").open("rb") as f:
        later = tomllib.load(f)["deepep"]["anchor"]["2025-04"]
    shipped = json.loads((DATA / "default-h800.json").read_text())["comm"]["deepep_normal_gb_s"]
    for ep, (d, c) in ((16, later["ep16"]), (32, later["ep32"]), (64, later["ep64"])):
        assert (shipped[f"internode_ep{ep}_dispatch"], shipped[f"internode_ep{ep}_combine"]) == (d, c)
    assert (shipped["intranode_ep8_dispatch"], shipped["intranode_ep8_combine"]) == tuple(later["ep8"])


def test_bandwidth_monotone_in_sms_and_bounded_by_the_saturated_rate():
    k = DeepEPKernels.load()
    for ep, internode in ((8, False), (16, True), (32, True), (64, True)):
        for kind in ("dispatch", "combine"):
            rates = [k.kernel_rate(ep, kind, internode, s) for s in range(1, 133)]
            assert all(b >= a for a, b in zip(rates, rates[1:]))
            assert max(rates) == pytest.approx(k.anchor_gbps(ep, kind, internode) * 1e9, rel=1e-12)
    assert HAND.sm_bandwidth_fraction(5) == 0.25 and HAND.sm_bandwidth_fraction(40) == 1.0


def test_resident_time_is_notify_plus_transfer_plus_slowest_peer_by_hand():
    # 100 MB counted at EP64 on 10 SMs: 50 GB/s x 10/20 = 25 GB/s -> 4 ms for the busiest rank's rows; the
    # fabric alone would take 3 ms. Imbalance 2: the mean rank's rows take 2 ms, the busiest 2 ms more.
    call = HAND.call(wire_s=3e-3, counted_bytes=100e6, ep=64, kind="dispatch", internode=True, sms=10,
                     imbalance=2.0)
    assert call.transfer_s == pytest.approx(2e-3)
    assert call.peer_wait_s == pytest.approx(2e-3)
    assert call.resident_s == pytest.approx(2e-3 + 2e-3 + 2e-3)
    assert call.beyond_wire_s == pytest.approx(3e-3)
    # a slow fabric bounds it instead: 5 ms of wire beats the kernels' 4 ms
    slow = HAND.call(wire_s=5e-3, counted_bytes=100e6, ep=64, kind="dispatch", internode=True, sms=10)
    assert slow.resident_s == pytest.approx(7e-3) and slow.peer_wait_s == 0.0
    # inside one node: NVLink rate (150 GB/s at 20 SMs: 100 MB in 0.667 ms), no notify charged
    intra = HAND.call(wire_s=0.0, counted_bytes=100e6, ep=8, kind="dispatch", internode=False, sms=20)
    assert intra.notify_s == 0.0 and intra.resident_s == pytest.approx(100e6 / 150e9)


def test_distinct_targets_closed_forms():
    assert distinct_targets(256, 256, 8) == pytest.approx(8.0)      # one expert per target: k distinct
    assert distinct_targets(1, 256, 8) == pytest.approx(1.0)
    # 2 targets, 4 experts, top-2: P(both on one target) = 2 / C(4,2) = 1/3 -> 2 - 1/3
    assert distinct_targets(2, 4, 2) == pytest.approx(5 / 3)
    assert counted_bytes(10, 100, True, 3.5, 0.0) == pytest.approx(3500)
    assert counted_bytes(10, 100, False, 0.0, 5.0) == pytest.approx(5000)


def test_tiny_trade_off_has_its_optimum_at_the_crossover_not_the_saturation_point():
    """Compute 100 ms on all 132 SMs, slowed to 132/(132-k); communication 50 ms at saturation, stretched by
    1/fraction(k); the pair takes the longer of the two. By hand the curves cross at 13200 k + 1000 k = 132000,
    k = 9.3: step(9) = 1000/9 = 111.1 ms, step(10) = max(100 x 132/122, 100) = 108.2 ms, so 10 SMs is best."""
    def step(k):
        return max(100 * 132 / (132 - k), 50 / HAND.sm_bandwidth_fraction(k))
    best = min(range(1, 33), key=step)
    assert best == 10
    assert step(10) == pytest.approx(100 * 132 / 122)


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="comm_sms"):
        HAND.sm_bandwidth_fraction(0)
    with pytest.raises(ValueError, match="kind"):
        HAND.anchor_gbps(64, "gather", True)
    with pytest.raises(ValueError, match="imbalance"):
        HAND.call(1e-3, 1e6, 64, "combine", True, 20, imbalance=0.5)
    with pytest.raises(ValueError, match="saturating_sms"):
        replace(HAND, saturating_sms=30)


def test_coster_charges_resident_time_only_with_deepep_sms():
    """comm_sms > 0 runs the EP all-to-alls as DeepEP's kernels; comm_sms 0 keeps the fabric's wire time."""
    base = load_scenario(gpus=256, pp=4, ep=64, seq_len=1024)
    dual = base.simulator().coster
    plain = replace(base, parallel=replace(base.parallel, schedule="1f1b", comm_sms=0)).simulator().coster
    ops = [op for u in dual.stages[1] for seg in u.forward for op in seg.ops if op.group == "ep"]
    assert ops and dual.deepep is not None and plain.deepep is None
    for op in ops:
        wire = plain.op_time(op)                              # 1F1B: the fabric's wire time, as before
        assert dual.op_time(op) >= wire - 1e-15               # the notify is not in an op's own time ...
    notify = dual.deepep.notify_s
    assert notify > 0
    seg = next(seg for u in dual.stages[1] for seg in u.forward if any(op.group == "ep" for op in seg.ops))
    calls = sum(1 for op in seg.ops if op.collective in ("ep_dispatch", "ep_combine"))
    assert dual.pair_notify(seg) == pytest.approx(calls * notify)   # ... it is added to the segment in a pair
    assert plain.pair_notify(seg) == 0.0


def test_notify_scales_with_the_tokens_a_call_carries():
    """The trace's notify was measured with 4,096 tokens a rank per call (one 4,096-token sequence, CP1); a layout
    whose calls carry half as many tokens (CP2) waits half as long for its peers (hwmodels/deepep.py)."""
    trace = json.loads((DATA / "trace-h800.json").read_text())["comm"]
    assert trace["deepep_notify_tokens"] == 4096
    full = load_scenario().simulator().coster.deepep.notify_s
    half = load_scenario(cp=2).simulator().coster.deepep.notify_s
    assert full == pytest.approx(trace["deepep_notify_per_call_ms"] * 1e-3)
    assert half == pytest.approx(full / 2)


def test_the_kernel_each_call_runs():
    """DeepEP runs the forward dispatch and the combine's backward (to the experts) on its dispatch kernel, the
    forward combine and the dispatch's backward (back to the tokens) on its combine kernel: the synthetic and real
    traces show dispatch<...> kernels in combine(B) and combine<..., bfloat16> kernels in dispatch(B)."""
    from gpuhours.hwmodels.deepep import kernel_of

    assert [kernel_of(c, ph) for c, ph in (("ep_dispatch", "F"), ("ep_combine", "B"), ("ep_combine", "F"),
                                          ("ep_dispatch", "B"))] == ["dispatch", "dispatch", "combine", "combine"]
    with pytest.raises(ValueError, match="collective"):
        kernel_of("all_gather", "F")


def test_a_kernel_time_ratio_scales_its_transfer_and_peer_wait_only():
    """A profile's traced-over-modelled ratio r of a kernel multiplies that kernel's transfer and peer wait by r;
    the notify and the other kernel are unchanged; a ratio <= 0 is refused."""
    plain = DeepEPKernels.load()
    scaled = replace(plain, notify_s=1e-3, time_ratio=(1.5, 1.0))
    for kind, r in (("dispatch", 1.5), ("combine", 1.0)):
        a = replace(plain, notify_s=1e-3).call(1e-3, 1e8, 64, kind, True, 20, imbalance=1.25)
        b = scaled.call(1e-3, 1e8, 64, kind, True, 20, imbalance=1.25)
        assert b.transfer_s == pytest.approx(r * a.transfer_s) and b.peer_wait_s == pytest.approx(r * a.peer_wait_s)
        assert b.notify_s == a.notify_s == 1e-3
    with pytest.raises(ValueError, match="deepep_kernel_time_ratio"):
        replace(plain, time_ratio=(0.0, 1.0))
