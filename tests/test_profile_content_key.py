"""Stage-class profiles shared between sweep points by content (issue 14): `stage_classes.pricing_key` keys a
pricing context by value (model, cluster, GPU, calibration profile, options, layout without its layers per stage
and schedule), so points that differ only in schedule or run keys reuse each other's instruction profiles. The key
must cover everything a profile reads: every profile a point gets through the shared store is compared exactly with
the one its own coster builds alone, and a sweep's rows with the content key and with the identity key (nothing
shared between points) are the same bytes. Nothing here is timed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhours.simulator import stage_classes, sweep
from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.sweep import parse_spec, point_scenario, run_sweep

FIXED = {"seq_len": 1024, "batch": 256, "tokens": "10B"}
DENSE = {"model": "llama-3-70b", "gpus": 64, "pp": 4, "tp": 2, "micro_batch_size": 1}
MOE = {"model": "deepseek-v2", "gpus": 64, "pp": 4, "ep": 8, "micro_batch_size": 1}


@pytest.fixture(autouse=True)
def _fresh_store(monkeypatch):
    from collections import OrderedDict

    monkeypatch.setattr(stage_classes, "_CONTEXTS", OrderedDict())
    monkeypatch.setattr(sweep, "_SIMULATORS", {})


def _sim(point: dict, schedule: str):
    return point_scenario("deepseek-v3", FIXED, {**point, "schedule": schedule}).simulator()


def _instructions(sim, microbatches: int = 8):
    p = sim.parallel
    seen = {}
    for program in build_schedule(p.schedule, p.pp, microbatches, vpp=p.vpp).programs:
        for ins in program:
            seen.setdefault((ins.kind, ins.stage, ins.b_stage), ins)
    return list(seen.values())


def _figures(prof):
    return (prof.duration, prof.compute_busy, prof.comm_busy, prof.nic_busy)


@pytest.mark.parametrize("point, first, second", [(DENSE, "1f1b", "zb1p"), (DENSE, "1f1b", "dualpipe"),
                                                  (MOE, "1f1b", "zb1p")])
def test_shared_profiles_equal_own_builds(point, first, second):
    a, b = _sim(point, first), _sim(point, second)
    # one pricing context: the schedule is read only through the SMs it leaves compute (comm_sms 0 here under
    # DualPipe: a dense model has no all-to-all to overlap), which both points have alike
    assert stage_classes.pricing_key(a.coster)[0] == stage_classes.pricing_key(b.coster)[0]
    from_a = {id(a._shared_stages().profile(0, ins)) for ins in _instructions(a)}
    reused = 0
    for ins in _instructions(b):
        shared = b._shared_stages().profile(0, ins)
        reused += id(shared) in from_a
        own = b.coster._build_profile(ins.kind, ins.stage, ins.b_stage)  # this point's coster alone, no store
        assert _figures(shared) == _figures(own), ins
    assert reused >= 1  # the forward profiles: same kind, same stage contents, priced once for both points


def test_overlapped_comm_sms_is_another_context():
    # DeepSeek-V2 under DualPipe: DeepEP's 20 SMs stay resident, compute runs on the rest; under 1F1B on all
    a, b = _sim(MOE, "1f1b"), _sim(MOE, "dualpipe")
    assert b.parallel.comm_sms > 0 and b.parallel.overlaps_comm
    assert stage_classes.pricing_key(a.coster)[0] != stage_classes.pricing_key(b.coster)[0]


def test_other_network_is_another_context():
    a = _sim(MOE, "1f1b")
    b = point_scenario("deepseek-v3", FIXED, {**MOE, "schedule": "1f1b", "nic_gbps": 200}).simulator()
    assert stage_classes.pricing_key(a.coster)[0] != stage_classes.pricing_key(b.coster)[0]


def test_equal_profiles_share_a_token():
    from gpuhours.hwmodels.calibration import load_profile

    p, q = load_profile("trace-h800"), load_profile("trace-h800")
    assert p is not q and stage_classes._profile_token(p) == stage_classes._profile_token(q)
    other = load_profile("default-h800")
    assert stage_classes._profile_token(other) != stage_classes._profile_token(p)


SPEC = {
    "sweep": {"base": "deepseek-v3", "name": "content key"},
    "fixed": FIXED,
    "grid": [
        {"model": ["llama-3-70b"], "gpus": [64], "pp": [4], "tp": [2], "schedule": ["1f1b", "zb1p", "dualpipe"],
         "price": [1.5, 2.0]},
        {"model": ["deepseek-v2"], "gpus": [64], "pp": [4], "ep": [8], "schedule": ["1f1b", "zb1p", "dualpipe"]},
    ],
}


def test_sweep_rows_same_bytes_with_identity_key(tmp_path, monkeypatch):
    from collections import OrderedDict

    spec = parse_spec(SPEC)
    run_sweep(spec, tmp_path / "content", workers=1, executor="serial", plot=False)
    # Llama's three schedules and two prices: one context; DeepSeek-V2's 1F1B and ZB1P one, its DualPipe (DeepEP's
    # SMs resident beside compute) another
    assert len(stage_classes._CONTEXTS) == 3
    monkeypatch.setattr(stage_classes, "_CONTEXTS", OrderedDict())
    monkeypatch.setattr(sweep, "_SIMULATORS", {})
    monkeypatch.setattr(stage_classes, "CONTENT_KEY", False)
    run_sweep(spec, tmp_path / "identity", workers=1, executor="serial", plot=False)
    content = Path(tmp_path / "content" / "results.csv").read_bytes()
    assert content == Path(tmp_path / "identity" / "results.csv").read_bytes()
    assert content.count(b"\n") == 1 + 9


def test_store_is_bounded(monkeypatch):
    monkeypatch.setattr(stage_classes, "_CONTEXT_LIMIT", 1)
    a = _sim(DENSE, "1f1b")
    for ins in _instructions(a):
        a._shared_stages().profile(0, ins)
    (entry,) = stage_classes._CONTEXTS.values()
    # kept without op-level spans: only a step without a timeline reads the shared store
    assert entry["profiles"] and all(p.spans == () for p in entry["profiles"].values())
    assert a.coster.profile(0, _instructions(a)[0]).spans  # the coster's own, for timelines, keeps them
    _sim(MOE, "1f1b")._shared_stages()
    assert len(stage_classes._CONTEXTS) == 1 and next(iter(stage_classes._CONTEXTS.values())) is not entry
