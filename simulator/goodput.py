"""The run as it really goes: failures, checkpoints, restarts and stragglers on top of the ideal RunEstimate,
as expected GPU-hours, days and dollars with P10/P50/P90 over Monte Carlo runs (simulator/goodput_sim.py).

- Failure rates: hwmodels/data/failures.toml, an interruption log per root cause (default: Llama 3 405B, Table 5),
  as rates per GPU or per node, times the job's GPUs or nodes; the job's rate is their sum.
- Checkpoint: the model's parameters (with MTP) x (weight + master + 2 moments) bytes of the memory recipe
  (workloads/data/memory.toml), written by every GPU at the storage's per-GPU write bandwidth.
- Interval: Daly 2006's higher-order optimum (default) or Young 1974's sqrt(2 C M), with C the training stall per
  checkpoint and M the job's mean time between failures; async checkpoints use at least the background write.
- Stragglers: each step ends at the slowest of the job's GPUs, each drawn step x exp(sigma Z).
- Evaluation: `eval_every_steps` N and `eval_seconds` E (a measured or planned figure; off by default, as no
  source gives the published runs' cadence): floor(steps / N) pauses of E, rolled back and redone like work.
- Step-time uncertainty: each Monte Carlo run's steps take f times the simulated step, f = exp(sigma Z) with sigma
  the accuracy suite's spread (hwmodels/data/step_uncertainty.toml; `step_time_sigma`). The expected figure, the
  goodput and the lost-time breakdown are at the simulated step time (f = 1); the P10/P50/P90 `band_*` figures
  take both failures and f; `*_pct` are over failures alone (the same draws: common random numbers).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from importlib import resources

import numpy as np

from gpuhours.simulator.goodput_format import PCTS, result_lines
from gpuhours.simulator.goodput_sim import COMPONENTS, SimParams, simulate_runs
from gpuhours.simulator.run import RunEstimate
from gpuhours.workloads.params import param_breakdown
from gpuhours.workloads.recipe import load_recipe

INTERVAL_RULES = ("daly", "young")


@lru_cache(maxsize=1)
def failure_data() -> dict:
    return tomllib.loads(resources.files("gpuhours.hwmodels").joinpath("data", "failures.toml").read_text())


@lru_cache(maxsize=1)
def step_uncertainty() -> dict:
    """The simulator's measured step-time spread and its provenance (hwmodels/data/step_uncertainty.toml)."""
    return tomllib.loads(resources.files("gpuhours.hwmodels").joinpath("data", "step_uncertainty.toml").read_text())


def rate_sets() -> list[str]:
    return sorted(failure_data()["rates"])


@dataclass(frozen=True)
class GoodputConfig:
    """What the goodput model assumes. None takes the figure from hwmodels/data/failures.toml."""

    failures: str = ""                       # rate set in failures.toml ("": the file's default)
    failure_rate_scale: float = 1.0          # multiplies every failure rate (0: no failures)
    checkpoint_interval_s: float | None = None  # work seconds between checkpoints; None: interval_rule's optimum
    interval_rule: str = "daly"              # daly | young
    write_bw_per_gpu: float | None = None    # checkpoint write bandwidth per GPU, bytes/s (inf: free)
    read_bw_per_gpu: float | None = None     # checkpoint reload bandwidth per GPU, bytes/s
    async_checkpoint: bool = False
    d2h_bw_per_gpu: float | None = None      # async: device-to-host copy bandwidth, bytes/s
    detection_s: float | None = None
    reschedule_s: float | None = None
    init_s: float | None = None
    repair_s: float | None = None
    spare_nodes: int | None = None
    straggler_sigma: float | None = None     # per-rank lognormal sigma of step time (0: no stragglers)
    rate_uncertainty: bool = True            # scale each run's rates by Gamma(n, 1/n), n = interruptions logged
    eval_every_steps: int = 0                # an evaluation pause every N steps (0: none)
    eval_seconds: float = 0.0                # wall-clock seconds of one evaluation pause
    step_time_sigma: float | None = None     # per-run lognormal sigma of the step time (None: step_uncertainty.toml)
    runs: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name, allowed):
            raise ValueError(f"goodput.{name} must be {allowed}; got {getattr(self, name)!r}")
        if not isinstance(self.failures, str) or (self.failures and self.failures not in rate_sets()):
            bad("failures", f"one of {', '.join(rate_sets())}")
        if self.interval_rule not in INTERVAL_RULES:
            bad("interval_rule", f"one of {', '.join(INTERVAL_RULES)}")
        for name in ("async_checkpoint", "rate_uncertainty"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false")
        for name in ("runs", "seed", "spare_nodes", "eval_every_steps"):
            v = getattr(self, name)
            if v is None and name == "spare_nodes":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "runs" else 0):
                bad(name, "an integer >= 1" if name == "runs" else "an integer >= 0")
        positive = ("checkpoint_interval_s", "write_bw_per_gpu", "read_bw_per_gpu", "d2h_bw_per_gpu")
        non_negative = ("failure_rate_scale", "detection_s", "reschedule_s", "init_s", "repair_s", "straggler_sigma",
                        "eval_seconds", "step_time_sigma")
        for name in positive + non_negative:
            v = getattr(self, name)
            if v is None and name != "failure_rate_scale":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) \
                    or (v <= 0 if name in positive else v < 0) \
                    or (math.isinf(v) and name not in ("write_bw_per_gpu", "read_bw_per_gpu", "d2h_bw_per_gpu",
                                                       "checkpoint_interval_s")):
                bad(name, "a number > 0" if name in positive else "a finite number >= 0")
        if self.eval_seconds > 0 and not self.eval_every_steps:
            bad("eval_every_steps", "an integer >= 1 when eval_seconds is given")


def goodput_from_plan(doc: dict) -> GoodputConfig | None:
    """The plan TOML's optional [goodput] table (keys: GoodputConfig's fields), or None when it has none."""
    table = doc.get("goodput")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError(f"[goodput] must be a table; got {type(table).__name__}")
    allowed = [f.name for f in fields(GoodputConfig)]
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(f"[goodput] has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return GoodputConfig(**table)


@dataclass(frozen=True)
class FailureRate:
    name: str
    component: str
    per_day: float          # the job's failures per running day from this cause
    replace_node: bool


def job_failure_rates(config: GoodputConfig, num_gpus: int,
                      gpus_per_node: int) -> tuple[tuple[FailureRate, ...], str, int]:
    """Per-cause rates of a job on num_gpus GPUs, the set's source and its number of logged interruptions."""
    data = failure_data()
    rs = data["rates"][config.failures or data["default"]]
    gpu_days = rs["gpus"] * rs["days"]
    node_days = rs["gpus"] / rs["gpus_per_node"] * rs["days"]
    nodes = num_gpus / gpus_per_node
    out = []
    for row in rs["failures"]:
        unit = num_gpus / gpu_days if row["scope"] == "gpu" else nodes / node_days
        out.append(FailureRate(row["name"], row["component"], row["count"] * unit * config.failure_rate_scale,
                               row["replace_node"]))
    return tuple(out), rs.get("label", rs["source"]), sum(r["count"] for r in rs["failures"])


def checkpoint_bytes(model, recipe=None) -> float:
    """Parameters (with MTP) x (BF16 weights + FP32 master + two moments) bytes of the memory recipe."""
    r = recipe or load_recipe()
    return param_breakdown(model).total_with_mtp * (r.weight_bytes + r.master_bytes + 2 * r.moment_bytes)


def optimal_interval(stall_s: float, mtbf_s: float, rule: str = "daly") -> float:
    """Work seconds between checkpoints. young: sqrt(2 C M) (Young 1974). daly: Daly 2006's higher-order
    estimate sqrt(2 C M) [1 + sqrt(C/2M)/3 + (C/2M)/9] - C for C < 2M, else M. inf with no failures."""
    if math.isinf(mtbf_s):
        return math.inf
    if stall_s <= 0:
        return 0.0
    if rule == "young":
        return math.sqrt(2 * stall_s * mtbf_s)
    if stall_s >= 2 * mtbf_s:
        return mtbf_s
    q = stall_s / (2 * mtbf_s)
    return math.sqrt(2 * stall_s * mtbf_s) * (1 + math.sqrt(q) / 3 + q / 9) - stall_s


def straggler_moments(sigma: float, ranks: int) -> tuple[float, float]:
    """Mean and variance of M - 1, M = exp(sigma max(Z_1..Z_ranks)): the step's slow-down from its slowest rank,
    by quadrature over the density ranks phi(z) Phi(z)^(ranks-1)."""
    if sigma == 0:
        return 0.0, 0.0
    z = np.linspace(-9.0, 9.0, 20001)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    logpdf = math.log(ranks) - 0.5 * z * z - 0.5 * math.log(2 * math.pi) \
        + (ranks - 1) * np.log(np.maximum(cdf, 1e-300))
    w = np.exp(logpdf)
    w /= np.trapezoid(w, z)
    m = np.exp(sigma * z) - 1
    mean = float(np.trapezoid(w * m, z))
    return mean, float(np.trapezoid(w * (m - mean) ** 2, z))


def _pct(values) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.percentile(values, PCTS))


@dataclass(frozen=True)
class GoodputResult:
    ideal_gpu_hours: float
    ideal_days: float
    ideal_cost_usd: float
    expected_gpu_hours: float                   # at the simulated step time
    expected_days: float
    expected_cost_usd: float
    gpu_hours_pct: tuple[float, float, float]   # P10, P50, P90 over failures (the simulated step time)
    days_pct: tuple[float, float, float]
    cost_pct: tuple[float, float, float]
    effective_training_time_ratio: float        # ideal / expected wall clock
    lost_s: dict                                # mean seconds per component of COMPONENTS
    checkpoint_interval_s: float
    interval_rule: str                          # daly | young | given
    checkpoint_bytes: float
    checkpoint_write_s: float
    checkpoint_stall_s: float
    async_checkpoint: bool
    restart_s: float                            # per failure, before any wait for a spare
    failure_rate_per_day: float
    mean_failures: float
    rates: tuple[FailureRate, ...]
    rates_source: str                           # the rate set's label (its full source is in failures.toml)
    runs: int
    seed: int
    num_gpus: int
    price_per_gpu_hour: float
    band_gpu_hours_pct: tuple[float, float, float] = (0.0, 0.0, 0.0)  # P10, P50, P90 over failures and step time
    band_days_pct: tuple[float, float, float] = (0.0, 0.0, 0.0)
    band_cost_pct: tuple[float, float, float] = (0.0, 0.0, 0.0)
    step_time_sigma: float = 0.0
    step_time_source: str = ""
    eval_every_steps: int = 0
    eval_seconds: float = 0.0
    evaluations: int = 0                        # pauses over the run, once each
    wall_s: tuple[float, ...] = field(default=(), repr=False)  # per run, failures and step time (the band's runs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("wall_s")
        d["rates"] = [asdict(r) for r in self.rates]
        for k in ("gpu_hours_pct", "days_pct", "cost_pct", "band_gpu_hours_pct", "band_days_pct", "band_cost_pct"):
            d[k] = dict(zip(("p10", "p50", "p90"), d[k]))
        if math.isinf(self.checkpoint_interval_s):
            d["checkpoint_interval_s"] = None
        return d

    def gpu_hours_runs(self) -> np.ndarray:
        """GPU-hours of each Monte Carlo run (failures and step time)."""
        return np.array(self.wall_s) * self.num_gpus / 3600

    def lines(self) -> list[str]:
        return result_lines(self)

def step_time_sigma(config: GoodputConfig) -> tuple[float, str]:
    """The sigma the config asks for and where it comes from."""
    if config.step_time_sigma is not None:
        return float(config.step_time_sigma), "step_time_sigma as given"
    d = step_uncertainty()
    return float(d["sigma"]), (f"s.d. of ln(predicted/measured) over the accuracy suite's {d['rows']} fully expressed "
                               f"predictions (hwmodels/data/step_uncertainty.toml)")


def evaluations(run: RunEstimate, config: GoodputConfig) -> int:
    """Evaluation pauses over the run: one after every eval_every_steps steps, floor(steps / N)."""
    if not config.eval_every_steps or not config.eval_seconds:
        return 0
    return math.floor(sum(seg.steps for seg in run.segments) / config.eval_every_steps + 1e-9)


def goodput_params(run: RunEstimate, scenario, config: GoodputConfig) -> tuple[SimParams, dict]:
    """The simulation's parameters for a run, and the figures they rest on."""
    data = failure_data()
    ck, rs, st = data["checkpoint"], data["restart"], data["straggler"]
    pick = lambda v, d: d if v is None else v  # noqa: E731
    gpus, per_node = run.num_gpus, scenario.cluster.gpus_per_node
    rates, source, logged = job_failure_rates(config, gpus, per_node)
    size = checkpoint_bytes(scenario.model)
    write_s = size / (pick(config.write_bw_per_gpu, ck["write_bw_per_gpu"]) * gpus)
    reload_s = size / (pick(config.read_bw_per_gpu, ck["read_bw_per_gpu"]) * gpus)
    if config.async_checkpoint:
        stall, lag = size / gpus / pick(config.d2h_bw_per_gpu, ck["d2h_bw_per_gpu"]), write_s
    else:
        stall, lag = write_s, 0.0
    rate_s = sum(r.per_day for r in rates) / 86400
    mtbf = 1 / rate_s if rate_s > 0 else math.inf
    if config.checkpoint_interval_s is not None:
        tau, rule = config.checkpoint_interval_s, "given"
    else:
        tau, rule = optimal_interval(stall, mtbf, config.interval_rule), config.interval_rule
    # a checkpoint is taken between steps, and an async one only once the previous one is written
    tau = max(tau, lag, min(seg.step.step_time for seg in run.segments))
    restart = pick(config.detection_s, rs["detection_s"]) + pick(config.reschedule_s, rs["reschedule_s"]) \
        + pick(config.init_s, rs["init_s"]) + reload_s
    sigma = pick(config.straggler_sigma, st["sigma"])
    mean, var = straggler_moments(sigma, gpus)
    s_mean = sum(seg.steps * seg.step.step_time * mean for seg in run.segments)
    s_sd = math.sqrt(sum(seg.steps * seg.step.step_time ** 2 * var for seg in run.segments))
    n_eval = evaluations(run, config)
    step_sigma, step_source = step_time_sigma(config)
    params = SimParams(work_s=run.wall_clock_s, interval_s=tau, stall_s=stall, lag_s=lag, restart_s=restart,
                       repair_s=pick(config.repair_s, rs["repair_s"]),
                       spare_nodes=pick(config.spare_nodes, rs["spare_nodes"]),
                       category_rates=tuple(r.per_day / 86400 for r in rates),
                       replace_node=tuple(r.replace_node for r in rates),
                       rate_shape=float(logged) if config.rate_uncertainty else 0.0,
                       straggle_mean_s=s_mean, straggle_sd_s=s_sd,
                       eval_s=n_eval * config.eval_seconds, step_sigma=step_sigma)
    info = dict(rates=rates, source=source, size=size, write_s=write_s, rule=rule, evaluations=n_eval,
                step_source=step_source)
    return params, info


def summarise(run: RunEstimate, p: SimParams, info: dict, config: GoodputConfig, exact: dict, band: dict
              ) -> GoodputResult:
    """A GoodputResult from the runs at the simulated step time (`exact`) and with the step-time factor (`band`),
    arrays as simulate_runs returns them (the same failure draws)."""
    wall = p.work_s + float(np.mean(exact["wall_s"] - p.work_s))  # exactly the ideal wall clock when nothing is lost
    gpus, price = run.num_gpus, run.price_per_gpu_hour
    gh = lambda w: w * gpus / 3600  # noqa: E731  (as RunEstimate.gpu_hours)
    pct, band_pct = _pct(exact["wall_s"]), _pct(band["wall_s"])
    return GoodputResult(
        ideal_gpu_hours=run.gpu_hours, ideal_days=run.wall_clock_days, ideal_cost_usd=run.cost_usd,
        expected_gpu_hours=gh(wall), expected_days=wall / 86400, expected_cost_usd=gh(wall) * price,
        gpu_hours_pct=tuple(gh(v) for v in pct), days_pct=tuple(v / 86400 for v in pct),
        cost_pct=tuple(gh(v) * price for v in pct),
        effective_training_time_ratio=p.work_s / wall if wall > 0 else 1.0,
        lost_s={k: float(np.mean(exact[k])) for k in COMPONENTS},
        checkpoint_interval_s=p.interval_s, interval_rule=info["rule"], checkpoint_bytes=info["size"],
        checkpoint_write_s=info["write_s"], checkpoint_stall_s=p.stall_s, async_checkpoint=config.async_checkpoint,
        restart_s=p.restart_s, failure_rate_per_day=p.rate * 86400, mean_failures=float(np.mean(exact["failures"])),
        rates=info["rates"], rates_source=info["source"], runs=config.runs, seed=config.seed,
        num_gpus=gpus, price_per_gpu_hour=price,
        band_gpu_hours_pct=tuple(gh(v) for v in band_pct), band_days_pct=tuple(v / 86400 for v in band_pct),
        band_cost_pct=tuple(gh(v) * price for v in band_pct), step_time_sigma=p.step_sigma,
        step_time_source=info["step_source"], eval_every_steps=config.eval_every_steps,
        eval_seconds=config.eval_seconds, evaluations=info["evaluations"],
        wall_s=tuple(float(v) for v in band["wall_s"]))


# Assumption: at most 1e6 simulated failures (runs x expected failures per run) per estimate. Measured on this
# project's 2-core machine: DeepSeek-V3's default run (51 failures a run, 1,000 runs, twice with the step-time
# band) takes 1 s of CPU, so the bound is about 10 s; a 9,456-day run (`--seq-len 1`) asked for 19M (minutes).
MAX_FAILURE_EVENTS = 1_000_000


def check_failure_events(p: SimParams, runs: int) -> None:
    expected = p.rate * p.work_s
    if runs * expected > MAX_FAILURE_EVENTS:
        raise ValueError(f"goodput: {runs:,} Monte Carlo runs x {expected:,.0f} expected failures per run "
                         f"({p.work_s / 86400:,.0f} days of training) is more than {MAX_FAILURE_EVENTS:,} failures "
                         f"to simulate; allowed: fewer runs ([goodput] runs) or a shorter training run")


def goodput_estimate(run: RunEstimate, scenario, config: GoodputConfig = GoodputConfig()) -> GoodputResult:
    """Expected and P10/P50/P90 GPU-hours, days and dollars of the run under failures, checkpoints, restarts,
    evaluation and stragglers, over config.runs Monte Carlo runs (deterministic per config.seed); the band_*
    figures add the step time's uncertainty."""
    p, info = goodput_params(run, scenario, config)
    check_failure_events(p, config.runs * (2 if p.step_sigma > 0 else 1))
    exact = simulate_runs(replace(p, step_sigma=0.0), config.seed, config.runs)
    band = simulate_runs(p, config.seed, config.runs) if p.step_sigma > 0 else exact
    return summarise(run, p, info, config, exact, band)
