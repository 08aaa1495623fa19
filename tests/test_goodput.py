"""The run-level goodput model: failures, checkpoints, restarts and stragglers (simulator/goodput.py).

Expectations are closed forms (the renewal expectation of a checkpointed run with exponential failures, order
statistics of normals, the source's own failure count) or conservation laws, never the code's own arithmetic."""

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from gpuhours.simulator.goodput import (GoodputConfig, checkpoint_bytes, goodput_estimate, goodput_from_plan,
                                        goodput_params, job_failure_rates, optimal_interval, step_uncertainty,
                                        straggler_moments)
from gpuhours.simulator.goodput_sim import COMPONENTS, STEP_TIME, SimParams, run_seeds, simulate_run, \
    simulate_runs, simulate_timeline
from gpuhours.simulator.run import RunEstimate, Segment
from gpuhours.workloads.presets import load_preset


@pytest.fixture(scope="module")
def default_case():
    from gpuhours.simulator.scenario import estimate, load_scenario
    sc = load_scenario()
    return sc, estimate(sc)


def synthetic(work_s: float, step_s: float = 10.0, gpus: int = 2048, price: float = 2.0):
    """A one-segment RunEstimate of work_s seconds and a scenario stand-in (DeepSeek-V3, 8 GPUs per node)."""
    step = SimpleNamespace(step_time=step_s)
    run = RunEstimate((Segment(1.0, 1, 1, 1, work_s / step_s, step),), gpus, price)
    return run, SimpleNamespace(model=load_preset("deepseek-v3"), cluster=SimpleNamespace(gpus_per_node=8))


def renewal_expectation(work, tau, stall, mtbf, restart):
    """Expected wall clock of work done in pieces of tau, each followed by a checkpoint stall (not the last),
    failures exponential with mean mtbf over running time, each costing the piece so far plus restart:
    E[time to get a of running time through] = (M + R)(e^{a/M} - 1) (the classic renewal result)."""
    n = round(work / tau)
    piece = lambda a: (mtbf + restart) * math.expm1(a / mtbf)  # noqa: E731
    return (n - 1) * piece(tau + stall) + piece(tau)


# ----------------------------------------------------------------------------------------------------- exactness
def test_no_failures_expected_equals_ideal_exactly(default_case):
    sc, est = default_case
    for cfg in (GoodputConfig(failure_rate_scale=0.0, runs=50),
                GoodputConfig(failure_rate_scale=0.0, checkpoint_interval_s=3600.0, write_bw_per_gpu=math.inf,
                              straggler_sigma=0.0, runs=50)):
        r = goodput_estimate(est, sc, cfg)
        assert r.expected_gpu_hours == est.gpu_hours == r.ideal_gpu_hours
        assert r.expected_days == est.wall_clock_days
        assert r.expected_cost_usd == est.cost_usd
        assert r.gpu_hours_pct == (est.gpu_hours,) * 3
        assert r.band_gpu_hours_pct != r.gpu_hours_pct  # the step time's uncertainty is in the band only
        assert r.effective_training_time_ratio == 1.0
        assert all(v == 0.0 for v in r.lost_s.values()) and r.mean_failures == 0


def test_default_deepseek_v3_band_is_ordered_and_above_ideal(default_case):
    sc, est = default_case
    r = goodput_estimate(est, sc, GoodputConfig(runs=200))
    lo, mid, hi = r.gpu_hours_pct
    assert est.gpu_hours < lo <= mid <= hi
    assert 0 < r.effective_training_time_ratio < 1
    # the figures rest on: 419 interruptions in 54 days on 16,384 GPUs, scaled to the job's 2,048
    assert r.failure_rate_per_day == pytest.approx(419 / 54 * 2048 / 16384)
    d = r.to_dict()
    assert set(d["lost_s"]) == set(COMPONENTS) and d["gpu_hours_pct"]["p50"] == mid
    assert all(len(line) > 18 and line[16:18] == "  " for line in r.lines())


def test_failure_rates_reproduce_the_source_log():
    # on the source's own cluster (16,384 GPUs, 8 per node) the job's rate is the log's: 419 in 54 days
    rates, _, logged = job_failure_rates(GoodputConfig(), 16384, 8)
    assert logged == 419
    assert sum(r.per_day for r in rates) == pytest.approx(419 / 54)
    hbm = [r for r in rates if r.component == "hbm"]
    assert sum(r.per_day for r in hbm) == pytest.approx(72 / 54)
    # per-node causes follow nodes, per-GPU causes follow GPUs: 4 GPUs per node doubles the host rate only
    host8 = sum(r.per_day for r in job_failure_rates(GoodputConfig(), 2048, 8)[0] if r.component == "host")
    host4 = sum(r.per_day for r in job_failure_rates(GoodputConfig(), 2048, 4)[0] if r.component == "host")
    assert host4 == pytest.approx(2 * host8)


def test_checkpoint_size_is_weights_master_and_two_moments():
    # DeepSeek-V3: 671B main model + 14B MTP module = 685B parameters (deepseek-ai/DeepSeek-V3 README);
    # recipe (memory.toml): BF16 weights 2 B + FP32 master 4 B + two BF16 moments 2 x 2 B = 10 B per parameter
    assert checkpoint_bytes(load_preset("deepseek-v3")) == pytest.approx(685e9 * 10, rel=0.01)


# ------------------------------------------------------------------------------------ the simulation's expectation
def test_monte_carlo_matches_the_renewal_closed_form():
    tau, stall, mtbf, restart, work = 3600.0, 300.0, 20000.0, 1000.0, 400 * 3600.0
    p = SimParams(work_s=work, interval_s=tau, stall_s=stall, lag_s=0.0, restart_s=restart, repair_s=0.0,
                  spare_nodes=1, category_rates=(1 / mtbf,), replace_node=(False,))
    sims = simulate_runs(p, seed=1, runs=400)
    expected = renewal_expectation(work, tau, stall, mtbf, restart)
    se = sims["wall_s"].std() / math.sqrt(len(sims["wall_s"]))
    assert abs(sims["wall_s"].mean() - expected) < 4 * se
    assert se < 0.002 * expected


def test_daly_interval_minimises_simulated_lost_time():
    run, sc = synthetic(1000 * 3600.0)
    size = checkpoint_bytes(sc.model)
    base = GoodputConfig(failure_rate_scale=6.0, write_bw_per_gpu=size / (600.0 * 2048), spare_nodes=10_000,
                         rate_uncertainty=False, runs=120, seed=3)
    p, _ = goodput_params(run, sc, base)
    mtbf = 1 / p.rate
    assert p.stall_s == pytest.approx(600.0) and 3.5 * 3600 < mtbf < 4.5 * 3600
    # the exact optimum of the renewal expectation, by brute force on a fine grid, next to Daly's estimate
    grid = np.linspace(500.0, 20000.0, 200001)
    exact = grid[np.argmin(np.expm1((grid + p.stall_s) / mtbf) / grid)]
    daly = optimal_interval(p.stall_s, mtbf, "daly")
    assert daly == pytest.approx(exact, rel=0.005)
    assert optimal_interval(p.stall_s, mtbf, "young") == pytest.approx(math.sqrt(2 * p.stall_s * mtbf))
    # the simulated lost time (same seed: common random numbers) over a scan of intervals around it
    factors = (0.25, 0.5, 0.7, 0.85, 1.0, 1.2, 1.4, 2.0, 4.0)
    lost = []
    for f in factors:
        r = goodput_estimate(run, sc, replace(base, checkpoint_interval_s=daly * f))
        lost.append(r.expected_days * 86400 - run.wall_clock_s)
    best = int(np.argmin(lost))
    assert factors[best] in (0.85, 1.0, 1.2)
    assert lost[factors.index(1.0)] <= min(lost) * 1.005
    assert lost[0] > 1.2 * min(lost) and lost[-1] > 1.2 * min(lost)
    # and the default (interval None) is Daly's
    assert goodput_estimate(run, sc, replace(base, runs=2)).checkpoint_interval_s == pytest.approx(daly)


# --------------------------------------------------------------------------------- conservation and both engines
@pytest.mark.parametrize("lag,spares,factor,eval_s", [(0.0, 1, 1.0, 0.0), (250.0, 1, 1.0, 0.0), (0.0, 0, 1.0, 0.0),
                                                     (0.0, 1, 1.13, 4000.0), (250.0, 1, 0.9, 7000.0)])
def test_conservation_and_simpy_agrees_run_for_run(lag, spares, factor, eval_s):
    p = SimParams(work_s=200 * 3600.0, interval_s=1800.0, stall_s=60.0 if lag == 0 else 2.0, lag_s=lag,
                  restart_s=900.0, repair_s=20 * 3600.0, spare_nodes=spares,
                  category_rates=(1 / 30000, 1 / 60000), replace_node=(True, False), rate_shape=419.0,
                  straggle_mean_s=5000.0, straggle_sd_s=800.0, eval_s=eval_s)
    for seed in range(6):
        fast = simulate_run(p, run_seeds(seed, 6)[seed], factor)
        des, events = simulate_timeline(p, run_seeds(seed, 6)[seed], factor)
        # wall clock from the simpy clock = ideal + every lost-time component + the step-time factor's share
        for out, rel in ((des, 1e-9), (fast, 1e-12)):
            assert out["wall_s"] == pytest.approx(p.work_s + sum(out[k] for k in COMPONENTS) + out[STEP_TIME],
                                                  rel=rel)
            assert out[STEP_TIME] == pytest.approx((factor - 1) * p.work_s, abs=1e-6)
            assert out["eval_s"] == eval_s
        for k in ("wall_s", "failures", STEP_TIME, *COMPONENTS):
            assert des[k] == pytest.approx(fast[k], rel=1e-6, abs=1e-6), k
        assert sum(e.kind == "failure" for e in events) == fast["failures"]
        assert events[-1].kind == "done"


def test_without_spares_every_node_failure_waits_its_repair():
    p = SimParams(work_s=100 * 3600.0, interval_s=3600.0, stall_s=30.0, lag_s=0.0, restart_s=700.0,
                  repair_s=5000.0, spare_nodes=0, category_rates=(1 / 20000,), replace_node=(True,))
    for rng in run_seeds(5, 10):
        r = simulate_run(p, rng)
        assert r["restart_s"] == pytest.approx(r["failures"] * (700.0 + 5000.0))


def test_async_checkpoint_loses_less_and_stalls_less(default_case):
    sc, est = default_case
    sync = goodput_estimate(est, sc, GoodputConfig(runs=200))
    asyn = goodput_estimate(est, sc, GoodputConfig(runs=200, async_checkpoint=True))
    assert asyn.checkpoint_stall_s < sync.checkpoint_stall_s
    assert asyn.checkpoint_interval_s >= asyn.checkpoint_write_s  # one background write at a time
    assert asyn.expected_gpu_hours < sync.expected_gpu_hours


# ------------------------------------------------------------------------------------------------------ stragglers
def test_straggler_moments_match_order_statistics():
    s = 0.05
    mean, var = straggler_moments(s, 1)  # M = exp(sZ): lognormal moments
    assert mean == pytest.approx(math.exp(s * s / 2) - 1, rel=1e-6)
    assert var == pytest.approx(math.expm1(s * s) * math.exp(s * s), rel=1e-5)
    # max of two: E[exp(s max(Z1, Z2))] = 2 exp(s^2/2) Phi(s / sqrt 2)
    phi = 0.5 * (1 + math.erf(s / math.sqrt(2) / math.sqrt(2)))
    assert straggler_moments(s, 2)[0] == pytest.approx(2 * math.exp(s * s / 2) * phi - 1, rel=1e-6)
    assert straggler_moments(0.0, 2048) == (0.0, 0.0)


def test_stragglers_add_their_expected_time():
    run, sc = synthetic(100 * 3600.0)
    r = goodput_estimate(run, sc, GoodputConfig(failure_rate_scale=0.0, straggler_sigma=0.02, runs=100))
    # slowest of 2,048: E[max Z] of 2,048 standard normals is about 3.4 (Blom: Phi^-1((n - 0.375)/(n + 0.25)))
    assert r.lost_s["straggler_s"] / run.wall_clock_s == pytest.approx(math.exp(0.02 * 3.4) - 1, rel=0.08)


# ------------------------------------------------------------------------------------- determinism and bad input
def test_deterministic_per_seed(default_case):
    sc, est = default_case
    a = goodput_estimate(est, sc, GoodputConfig(runs=100, seed=7)).to_dict()
    b = goodput_estimate(est, sc, GoodputConfig(runs=100, seed=7)).to_dict()
    c = goodput_estimate(est, sc, GoodputConfig(runs=100, seed=8)).to_dict()
    assert a == b
    assert a["expected_gpu_hours"] != c["expected_gpu_hours"]


@pytest.mark.parametrize("field,value", [
    ("failures", "no-such-log"), ("failure_rate_scale", -1.0), ("checkpoint_interval_s", 0.0),
    ("interval_rule", "guess"), ("write_bw_per_gpu", -5.0), ("read_bw_per_gpu", 0), ("async_checkpoint", "yes"),
    ("detection_s", -1.0), ("reschedule_s", math.inf), ("init_s", math.nan), ("repair_s", "1d"),
    ("spare_nodes", -1), ("spare_nodes", 1.5), ("straggler_sigma", -0.1), ("runs", 0), ("seed", -1),
    ("rate_uncertainty", 1), ("eval_every_steps", -5), ("eval_every_steps", 2.5), ("eval_seconds", -1.0),
    ("eval_seconds", math.inf), ("step_time_sigma", -0.1), ("step_time_sigma", "0.1"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GoodputConfig(**{field: value})


def test_plan_goodput_table():
    assert goodput_from_plan({"run": {}}) is None
    cfg = goodput_from_plan({"goodput": {"spare_nodes": 2, "async_checkpoint": True, "runs": 10}})
    assert cfg == GoodputConfig(spare_nodes=2, async_checkpoint=True, runs=10)
    with pytest.raises(ValueError, match="checkpoint_every"):
        goodput_from_plan({"goodput": {"checkpoint_every": 10}})
    with pytest.raises(ValueError, match="interval_rule"):
        goodput_from_plan({"goodput": {"interval_rule": "never"}})
    cfg = goodput_from_plan({"goodput": {"eval_every_steps": 1000, "eval_seconds": 300.0, "step_time_sigma": 0.05}})
    assert (cfg.eval_every_steps, cfg.eval_seconds, cfg.step_time_sigma) == (1000, 300.0, 0.05)
    with pytest.raises(ValueError, match="eval_every_steps"):  # a pause length with no cadence
        goodput_from_plan({"goodput": {"eval_seconds": 300.0}})


def test_charts_write_files(tmp_path):
    from gpuhours.reports.goodput_chart import histogram, timeline
    run, sc = synthetic(200 * 3600.0)
    cfg = GoodputConfig(failure_rate_scale=5.0, runs=50)
    r = goodput_estimate(run, sc, cfg)
    for path in (histogram(r, str(tmp_path / "h.png")), timeline(run, sc, cfg, str(tmp_path / "t.png"))):
        assert (tmp_path / path.rsplit("/", 1)[1]).stat().st_size > 1000


# ------------------------------------------------------------------------------------------------------ evaluation
def test_evaluation_adds_exactly_its_pauses_without_failures():
    run, sc = synthetic(100 * 3600.0)  # 36,000 steps of 10 s
    base = GoodputConfig(failure_rate_scale=0.0, runs=20)
    for every, secs in ((7, 120.0), (1000, 300.0), (36000, 50.0), (50000, 50.0)):
        r = goodput_estimate(run, sc, replace(base, eval_every_steps=every, eval_seconds=secs))
        pauses = 36000 // every
        assert r.evaluations == pauses
        assert r.expected_days * 86400 == pytest.approx(run.wall_clock_s + pauses * secs, rel=1e-12)
        assert r.lost_s["eval_s"] == pauses * secs
        assert r.gpu_hours_pct[1] == pytest.approx((run.wall_clock_s + pauses * secs) * 2048 / 3600, rel=1e-12)
    off = goodput_estimate(run, sc, replace(base, eval_every_steps=1000))  # no pause length: nothing
    assert off.evaluations == 0 and off.expected_gpu_hours == run.gpu_hours


def test_evaluation_pauses_are_redone_when_a_failure_rolls_them_back():
    run, sc = synthetic(300 * 3600.0)
    cfg = GoodputConfig(failure_rate_scale=8.0, runs=200, seed=2, step_time_sigma=0.0)
    plain = goodput_estimate(run, sc, cfg)
    evals = goodput_estimate(run, sc, replace(cfg, eval_every_steps=500, eval_seconds=600.0))
    assert evals.lost_s["eval_s"] == 108000 // 500 * 600.0
    # each pause once in the breakdown, and the share of it that failures roll back is redone as lost work
    assert evals.expected_days * 86400 - plain.expected_days * 86400 > evals.lost_s["eval_s"]
    assert evals.lost_s["lost_work_s"] > plain.lost_s["lost_work_s"]
    assert any(line.startswith("evaluation") for line in evals.lines())


# ------------------------------------------------------------------------------------------ step-time uncertainty
# Figures of the synthetic case below from the goodput model before the step-time uncertainty and evaluation
# existed (2026-12-01): with sigma 0 they must come back bit for bit.
BEFORE = {
    (4.0, 64, 11, None, False): (1303119.9482290337, (1226655.4644794946, 1302470.3162566465, 1379231.0901624737),
                                 {"lost_work_s": 48255.94263022812, "restart_s": 397056.3764842315,
                                  "checkpoint_s": 45328.21488188836, "straggler_s": 0.0}, 86.8125),
    (4.0, 64, 11, 0.01, True): (1273890.2787520986, (1206179.9293607245, 1269930.3869006443, 1349765.7942851668),
                                {"lost_work_s": 5167.693106228289, "restart_s": 368197.57216927747,
                                 "checkpoint_s": 2855.39758571725, "straggler_s": 63039.592757700346}, 84.4375),
}


@pytest.mark.parametrize("key", list(BEFORE))
def test_sigma_zero_reproduces_the_figures_exactly(key):
    scale, runs, seed, straggler, asyn = key
    run, sc = synthetic(500 * 3600.0)
    cfg = GoodputConfig(failure_rate_scale=scale, runs=runs, seed=seed, straggler_sigma=straggler,
                        async_checkpoint=asyn, step_time_sigma=0.0)
    r = goodput_estimate(run, sc, cfg)
    expected, pct, lost, failures = BEFORE[key]
    assert r.expected_gpu_hours == expected and r.gpu_hours_pct == pct and r.mean_failures == failures
    assert {k: v for k, v in r.lost_s.items() if k != "eval_s"} == lost and r.lost_s["eval_s"] == 0.0
    assert r.band_gpu_hours_pct == r.gpu_hours_pct and r.step_time_sigma == 0.0
    assert not any(line.startswith("with step error") for line in r.lines())
    # with sigma the expected figure, its failures band and the breakdown stay (the same failure draws)
    s = goodput_estimate(run, sc, replace(cfg, step_time_sigma=0.1))
    assert (s.expected_gpu_hours, s.gpu_hours_pct, s.lost_s) == (r.expected_gpu_hours, r.gpu_hours_pct, r.lost_s)
    assert s.band_gpu_hours_pct[0] < r.gpu_hours_pct[0] and s.band_gpu_hours_pct[2] > r.gpu_hours_pct[2]


def test_step_time_band_is_the_lognormal_around_the_ideal_and_widens_with_sigma():
    run, sc = synthetic(100 * 3600.0)
    ideal = run.gpu_hours
    widths = []
    for sigma in (0.02, 0.05, 0.1, 0.2):
        r = goodput_estimate(run, sc, GoodputConfig(failure_rate_scale=0.0, runs=2000, seed=4,
                                                    step_time_sigma=sigma))
        lo, mid, hi = r.band_gpu_hours_pct
        # lognormal of median 1: P50 at the ideal, P10/P90 at exp(-+1.2816 sigma) (standard normal quantiles);
        # the sample quantiles of 2,000 runs are within about 0.05 sigma of them
        assert mid / ideal == pytest.approx(1.0, abs=0.06 * sigma)
        assert math.log(lo / ideal) == pytest.approx(-1.2816 * sigma, abs=0.08 * sigma)
        assert math.log(hi / ideal) == pytest.approx(1.2816 * sigma, abs=0.08 * sigma)
        assert r.expected_gpu_hours == ideal  # at the simulated step time
        widths.append(hi - lo)
    assert widths == sorted(widths) and widths[-1] > 8 * widths[0]


def test_default_band_includes_the_step_time_and_names_its_source(default_case):
    sc, est = default_case
    r = goodput_estimate(est, sc, GoodputConfig(runs=300))
    assert r.step_time_sigma == step_uncertainty()["sigma"] > 0
    lo, mid, hi = r.band_gpu_hours_pct
    assert lo < r.gpu_hours_pct[0] and hi > r.gpu_hours_pct[2]
    assert lo < est.gpu_hours < r.expected_gpu_hours < hi
    assert "step_uncertainty.toml" in r.step_time_source
    assert r.to_dict()["band_gpu_hours_pct"]["p90"] == hi


def test_step_time_sigma_is_the_accuracy_suites_spread():
    # s.d. of ln(predicted / measured) over the fully expressed predictions (no gap, not a calibration case),
    # from the pinned accuracy figures (tests/golden/accuracy.json) and the cases' own measurements
    import json
    from pathlib import Path

    from gpuhours.hwmodels.calibration import load_profile
    from gpuhours.validation.cases import load_cases

    golden = json.loads((Path(__file__).parent / "golden" / "accuracy.json").read_text())["predicted_time"]
    cases = {c.name: c for c in load_cases()}
    logs = []
    for key, predicted in golden.items():
        name, profile = key.split("@")
        case = cases[name]
        calibration_case = (load_profile(profile).calibrated_on or {}).get("model") == case.model.name
        if predicted is None or case.gaps() or calibration_case:
            continue
        logs.append(math.log(predicted / case.measured_time()))
    data = step_uncertainty()
    assert len(logs) == data["rows"]
    assert data["sigma"] == pytest.approx(float(np.std(logs, ddof=1)), abs=0.005)
    assert float(np.mean(logs)) == pytest.approx(data["mean_log_error"], abs=0.005)


# ---------------------------------------------------------------------------------------------------- phased plans
@pytest.fixture(scope="module")
def phased_case():
    from gpuhours.simulator.phases import estimate_phases
    return estimate_phases("deepseek-v3-full")


def test_phased_plan_without_failures_is_the_ideal_phased_figure_exactly(phased_case):
    from gpuhours.simulator.goodput_phases import phased_goodput_estimate
    r = phased_goodput_estimate(phased_case, "deepseek-v3-full", GoodputConfig(failure_rate_scale=0.0, runs=40))
    assert r.expected_gpu_hours == phased_case.gpu_hours == r.ideal_gpu_hours
    assert r.expected_days == phased_case.wall_clock_days
    assert r.expected_cost_usd == phased_case.cost_usd
    assert r.gpu_hours_pct == (phased_case.gpu_hours,) * 3
    assert r.effective_training_time_ratio == 1.0 and r.mean_failures == 0
    assert [name for name, _ in r.phases] == [p.name for p in phased_case.phases]
    for (_, g), p in zip(r.phases, phased_case.phases):
        assert g.expected_gpu_hours == p.gpu_hours


def test_phased_plan_with_failures_sums_its_phases(phased_case):
    from gpuhours.simulator.goodput_phases import phased_goodput_estimate
    cfg = GoodputConfig(runs=200, eval_every_steps=1000, eval_seconds=600.0)
    r = phased_goodput_estimate(phased_case, "deepseek-v3-full", cfg)
    assert r.ideal_gpu_hours < r.gpu_hours_pct[0] <= r.gpu_hours_pct[1] <= r.gpu_hours_pct[2]
    assert r.expected_gpu_hours == pytest.approx(sum(g.expected_gpu_hours for _, g in r.phases), rel=1e-12)
    assert r.mean_failures == pytest.approx(sum(g.mean_failures for _, g in r.phases))
    # each phase evaluates on its own steps: the 1,000-step context phases once each
    evals = {name: g.evaluations for name, g in r.phases}
    assert evals["context-32k"] == evals["context-128k"] == 1
    assert r.lost_s["eval_s"] == pytest.approx(sum(evals.values()) * 600.0)
    # one step-time factor per run for every phase: the band's spread is the pre-training's, scaled up
    lo, mid, hi = r.band_gpu_hours_pct
    assert lo < r.gpu_hours_pct[0] and hi > r.gpu_hours_pct[2]
    d = r.to_dict()
    assert [p["name"] for p in d["phases"]] == [p.name for p in phased_case.phases]
    assert all(len(line) > 18 and line[16:18] == "  " for line in r.lines())


def test_cli_phased_plan_with_goodput(tmp_path):
    import json

    from typer.testing import CliRunner

    from gpuhours.cli import app
    runner = CliRunner()
    chart = tmp_path / "gp.png"
    r = runner.invoke(app, ["estimate", "--plan", "deepseek-v3-full", "--goodput-chart", str(chart), "--json"])
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)["goodput"]
    assert len(g["phases"]) == 4 and g["ideal_gpu_hours"] < g["expected_gpu_hours"]
    assert chart.stat().st_size > 1000
    r = runner.invoke(app, ["estimate", "--plan", "deepseek-v3-full", "--goodput-timeline", str(tmp_path / "t.png")])
    assert r.exit_code == 2 and "--goodput-timeline" in r.stderr
