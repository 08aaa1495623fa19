"""The goodput model over a phased plan (simulator/phases.py): every phase a job of its own, in order.

Each phase (pre-training, context extension, post-training) is simulated as its own run-level job with its own
GPUs, checkpoint size and interval, failure rates and restart costs (simulator/goodput.py), because that is how
such phases run: each starts from the previous phase's final checkpoint with a new layout and sequence length, so
a failure never rolls one phase back into the one before it. What the phases share within one Monte Carlo run:

- the failure-rate scale (the rate set's count uncertainty): one Gamma draw per run, the same for every phase
  (the rates are one unknown of the cluster, not one per phase);
- the step-time factor exp(sigma Z): one Z per run for every phase (the calibration's error taken as common to the
  phases: the widest band, an assumption: the phases' shapes differ and their errors need not move together).

Failure times, stragglers and spare-node waits are drawn per phase from streams of their own. A run's wall clock,
GPU-hours and cost are the sums over its phases; the P10/P50/P90 are over those sums. Not modelled: a job start or
a final checkpoint write at a phase boundary (the plain estimate has neither at its start and end either), and a
spare pool carried from one phase to the next (each phase starts with every spare free).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from gpuhours.simulator.goodput import GoodputConfig, GoodputResult, _pct, goodput_params, summarise
from gpuhours.simulator.goodput_format import phased_lines
from gpuhours.simulator.goodput_sim import COMPONENTS, simulate_run, step_factors


@dataclass(frozen=True)
class PhasedGoodputResult:
    plan: str
    phases: tuple[tuple[str, GoodputResult], ...]   # (phase name, that phase's figures with the shared draws)
    ideal_gpu_hours: float
    ideal_days: float
    ideal_cost_usd: float
    expected_gpu_hours: float
    expected_days: float
    expected_cost_usd: float
    gpu_hours_pct: tuple[float, float, float]       # over failures, at the simulated step times
    days_pct: tuple[float, float, float]
    cost_pct: tuple[float, float, float]
    band_gpu_hours_pct: tuple[float, float, float]  # over failures and the step time's uncertainty
    band_days_pct: tuple[float, float, float]
    band_cost_pct: tuple[float, float, float]
    effective_training_time_ratio: float
    lost_s: dict
    mean_failures: float
    step_time_sigma: float
    step_time_source: str
    rates_source: str
    runs: int
    seed: int
    gh_runs: tuple[float, ...] = field(default=(), repr=False)  # GPU-hours per run (the band's), for charts

    def gpu_hours_runs(self) -> np.ndarray:
        return np.array(self.gh_runs)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("phases", "gh_runs")}
        for k in ("gpu_hours_pct", "days_pct", "cost_pct", "band_gpu_hours_pct", "band_days_pct", "band_cost_pct"):
            d[k] = dict(zip(("p10", "p50", "p90"), d[k]))
        d["phases"] = [{"name": name, **r.to_dict()} for name, r in self.phases]
        return d

    def lines(self) -> list[str]:
        return phased_lines(self)


def _phase_runs(p, seed: int, runs: int, index: int, count: int, scales, factors) -> dict[str, np.ndarray]:
    """Phase `index` of `count` over the runs: run i from its own stream (spawned from run i's seed after the
    step-time factor's), with the run's shared rate scale and step-time factor."""
    rows = []
    for s, scale, f in zip(np.random.SeedSequence(seed).spawn(runs), scales, factors):
        rng = np.random.default_rng(s.spawn(2 + count)[2 + index])
        rows.append(simulate_run(p, rng, float(f), scale))
    return {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]}


def shared_rate_scales(shape: float, seed: int, runs: int) -> list[float]:
    """Per run, the failure-rate scale every phase shares: Gamma(shape, 1/shape) from run i's own seed
    (1 without count uncertainty)."""
    if shape <= 0:
        return [1.0] * runs
    return [float(np.random.default_rng(s.spawn(2)[1]).gamma(shape, 1.0 / shape))
            for s in np.random.SeedSequence(seed).spawn(runs)]


def phased_goodput_estimate(estimate, plan, config: GoodputConfig = GoodputConfig()) -> PhasedGoodputResult:
    """The goodput model over every phase of a phased plan: `estimate` is estimate_phases' PhasedEstimate of `plan`
    (a PhasedPlan, a built-in name or a TOML path)."""
    from gpuhours.simulator.phases import PhasedPlan, load_phased_plan, phase_scenario

    if not isinstance(plan, PhasedPlan):
        plan = load_phased_plan(plan)
    if [p.name for p in plan.phases] != [p.name for p in estimate.phases]:
        raise ValueError("phased goodput: the estimate's phases are not the plan's")
    count, runs, seed = len(plan.phases), config.runs, config.seed
    params = [goodput_params(pe.run, phase_scenario(plan.base, spec), config)
              for spec, pe in zip(plan.phases, estimate.phases)]
    sigma = params[0][0].step_sigma
    scales = shared_rate_scales(params[0][0].rate_shape, seed, runs)
    factors = step_factors(sigma, seed, runs)
    ones = np.ones(runs)
    phases, exact_gh, band_gh, exact_days, band_days, exact_cost, band_cost = [], 0, 0, 0, 0, 0, 0
    lost = dict.fromkeys(COMPONENTS, 0.0)
    failures = 0.0
    for i, ((p, info), pe) in enumerate(zip(params, estimate.phases)):
        exact = _phase_runs(replace(p, step_sigma=0.0), seed, runs, i, count, scales, ones)
        band = _phase_runs(p, seed, runs, i, count, scales, factors) if sigma > 0 else exact
        r = summarise(pe.run, p, info, config, exact, band)
        phases.append((pe.name, r))
        g, price = pe.run.num_gpus, pe.run.price_per_gpu_hour
        exact_gh = exact_gh + exact["wall_s"] * g / 3600
        band_gh = band_gh + band["wall_s"] * g / 3600
        exact_days = exact_days + exact["wall_s"] / 86400
        band_days = band_days + band["wall_s"] / 86400
        exact_cost = exact_cost + exact["wall_s"] * g / 3600 * price
        band_cost = band_cost + band["wall_s"] * g / 3600 * price
        for k in COMPONENTS:
            lost[k] += r.lost_s[k]
        failures += r.mean_failures
    results = [r for _, r in phases]
    expected_days = sum(r.expected_days for r in results)
    return PhasedGoodputResult(
        plan=plan.name, phases=tuple(phases),
        ideal_gpu_hours=estimate.gpu_hours, ideal_days=estimate.wall_clock_days, ideal_cost_usd=estimate.cost_usd,
        expected_gpu_hours=sum(r.expected_gpu_hours for r in results), expected_days=expected_days,
        expected_cost_usd=sum(r.expected_cost_usd for r in results),
        gpu_hours_pct=_pct(exact_gh), days_pct=_pct(exact_days), cost_pct=_pct(exact_cost),
        band_gpu_hours_pct=_pct(band_gh), band_days_pct=_pct(band_days), band_cost_pct=_pct(band_cost),
        effective_training_time_ratio=estimate.wall_clock_days / expected_days if expected_days > 0 else 1.0,
        lost_s=lost, mean_failures=failures, step_time_sigma=sigma, step_time_source=results[0].step_time_source,
        rates_source=results[0].rates_source, runs=runs, seed=seed, gh_runs=tuple(float(v) for v in band_gh))
