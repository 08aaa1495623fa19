"""Multi-phase plans: phases add up, pre-training equals the single-phase estimate, long context costs attention."""

from __future__ import annotations

import pytest

from gpuhours.simulator.phases import estimate_phases, load_phased_plan, phase_scenario
from gpuhours.simulator.scenario import estimate, load_scenario


@pytest.fixture(scope="module")
def full():
    return estimate_phases("deepseek-v3-full")


def test_plan_loads_with_its_phases():
    plan = load_phased_plan("deepseek-v3-full")
    assert plan.base == "deepseek-v3"
    assert [p.name for p in plan.phases] == ["pre-training", "context-32k", "context-128k", "post-training-sft"]
    assert dict(plan.reference)["context_extension_gpu_hours"] == 119000


def test_phases_add_up(full):
    assert full.gpu_hours == pytest.approx(sum(p.gpu_hours for p in full.phases))
    assert full.cost_usd == pytest.approx(sum(p.cost_usd for p in full.phases))
    for p in full.phases:
        # GPU-hours = wall clock x GPUs; cost = GPU-hours x $2 (the plan's price); tokens = steps x tokens/step
        assert p.gpu_hours == pytest.approx(p.wall_clock_days * 24 * p.gpus)
        assert p.cost_usd == pytest.approx(2.0 * p.gpu_hours)
        assert p.fits, p.notes
    d = full.to_dict()
    assert d["total"]["gpu_hours"] == pytest.approx(full.gpu_hours) and len(d["phases"]) == 4


def test_pretraining_phase_equals_single_phase_estimate(full):
    single = estimate(load_scenario("deepseek-v3"))
    pre = full.phases[0]
    assert pre.gpu_hours == pytest.approx(single.gpu_hours, rel=1e-12)
    assert pre.tokens == pytest.approx(14.8e12)


def test_context_phases_run_their_steps(full):
    by_name = {p.name: p for p in full.phases}
    for name, seq, batch in (("context-32k", 32768, 1920), ("context-128k", 131072, 480)):
        p = by_name[name]
        assert p.seq_len == seq and p.batch == batch
        assert p.steps == pytest.approx(1000)            # the layouts run the batch unpadded
        assert p.tokens == pytest.approx(1000 * batch * seq)


def test_long_context_raises_attention_share(full):
    share = {p.name: p.attention_share for p in full.phases}
    assert share["pre-training"] < share["context-32k"] < share["context-128k"]
    per_token = {p.name: p.gpu_hours / p.tokens for p in full.phases}
    assert per_token["pre-training"] < per_token["context-32k"] < per_token["context-128k"]


def _write(tmp_path, body: str):
    path = tmp_path / "plan.toml"
    path.write_text('[plan]\nbase = "deepseek-v3"\n' + body)
    return path


def test_bad_phase_keys(tmp_path):
    with pytest.raises(ValueError, match="'seqlen'"):
        load_phased_plan(_write(tmp_path, '[[phase]]\nname = "a"\nseqlen = 8\n'))
    with pytest.raises(ValueError, match="tokens or steps"):
        load_phased_plan(_write(tmp_path, '[[phase]]\nname = "a"\ntokens = "1B"\nsteps = 3\n'))
    with pytest.raises(ValueError, match="unique"):
        load_phased_plan(_write(tmp_path, '[[phase]]\nname = "a"\n[[phase]]\nname = "a"\n'))
    with pytest.raises(ValueError, match="plan.base"):
        load_phased_plan(_bad_base(tmp_path))
    plan = load_phased_plan(_write(tmp_path, '[[phase]]\nname = "a"\nsteps = 10\n'))
    with pytest.raises(ValueError, match="constant batch"):  # the base plan ramps its batch
        phase_scenario(plan.base, plan.phases[0])


def _bad_base(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[plan]\nbase = "nope"\n[[phase]]\nname = "a"\n')
    return path


def test_phase_overrides_apply(tmp_path):
    plan = load_phased_plan(_write(tmp_path, '[[phase]]\nname = "a"\nbatch = 4096\nsteps = 10\nzero_stage = 0\n'
                                              'price = 3.5\n'))
    s = phase_scenario(plan.base, plan.phases[0])
    assert s.plan.tokens == 10 * 4096 * 4096 and s.parallel.zero_stage == 0 and s.plan.price_per_gpu_hour == 3.5
