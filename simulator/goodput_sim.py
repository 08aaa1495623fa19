"""The run-level failure/checkpoint/restart simulation behind simulator/goodput.py: two engines, one model.

Model (all times in seconds):
- The run is `work_s` seconds of training (the RunEstimate's ideal wall clock) plus this run's straggler time
  (`straggle_s`: the slow-down from per-step jitter; it is work like any other and is redone when lost), both
  times the run's step-time factor `factor` (the calibration's uncertainty: exp(step_sigma Z), drawn per run by
  `step_factors`; 1 when step_sigma is 0), plus `eval_s` of evaluation pauses (every N steps; spread through
  the work, redone like work when a failure rolls them back: a trainer re-reaching step kN evaluates again).
- A checkpoint is taken after every `interval_s` of work (never after the last piece). Taking it stalls training
  `stall_s`; it becomes durable `lag_s` after the stall ends (0 for a synchronous write; the background write's
  duration for an asynchronous one, which must fit in one interval).
- Failures arrive as a Poisson process of rate `rate` per second of *running* time (training or checkpointing;
  the clock stops while the job is down). Each failure is of one category, drawn in proportion to the category
  rates. On a failure the job rolls back to its last durable checkpoint: the time since then is lost (work and
  stalls alike; the stalls are booked as checkpoint time), and the restart costs `restart_s` plus, for a
  category that needs a node swapped out, the wait for a spare: with `spare_nodes` spares a failed node goes to
  repair for `repair_s` and returns to the spare pool; with none free the job waits for the earliest repair
  (with no spares at all, for the failed node's own repair).
- Wall clock = work + straggle + evaluation + lost work + restarts + checkpoint stalls + the step-time factor's
  share ((factor - 1) x work, `step_time_s`), exactly, per run.

`simulate_runs` steps from one failure to the next in closed form (how far a stretch of x running seconds gets
is arithmetic on the checkpoint cycle), so 1,000 runs of a two-month job take a fraction of a second.
`simulate_timeline` runs the same model as simpy processes (trainer and failure source, in the engine style of
simulator/engine.py) for one run and records its events; drawing the same random numbers in the same order, it
reproduces `simulate_runs` run for run (a test checks it).
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass

import numpy as np
import simpy

COMPONENTS = ("lost_work_s", "restart_s", "checkpoint_s", "straggler_s", "eval_s")  # lost time, per run
STEP_TIME = "step_time_s"  # (factor - 1) x work: not lost time, the calibration's error in this run


@dataclass(frozen=True)
class SimParams:
    work_s: float                     # ideal training seconds
    interval_s: float                 # work seconds between checkpoints (math.inf: none)
    stall_s: float                    # training stall per checkpoint
    lag_s: float                      # stall end -> checkpoint durable (async background write); 0 when synchronous
    restart_s: float                  # detection + rescheduling + initialisation + reload
    repair_s: float                   # a swapped-out node's time in repair
    spare_nodes: int
    category_rates: tuple[float, ...]  # failures per running second, per category
    replace_node: tuple[bool, ...]    # per category: the restart needs a node swapped out
    rate_shape: float = 0.0           # > 0: the run's rates are scaled by Gamma(shape, 1/shape) (count uncertainty)
    straggle_mean_s: float = 0.0      # mean and s.d. of the run's total straggler time
    straggle_sd_s: float = 0.0
    eval_s: float = 0.0               # evaluation pauses over the run (once each)
    step_sigma: float = 0.0           # lognormal sigma of the run's step-time factor (0: the step time is exact)

    @property
    def rate(self) -> float:
        return float(sum(self.category_rates))


def run_seeds(seed: int, runs: int) -> list[np.random.Generator]:
    """One independent generator per Monte Carlo run: run i's draws do not depend on how many runs there are."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(runs)]


def step_factors(sigma: float, seed: int, runs: int) -> np.ndarray:
    """Per run, its step-time factor exp(sigma Z_i), Z_i from a stream of its own (spawned from run i's seed, so
    the failure draws are the same whatever sigma is: common random numbers). All ones when sigma is 0."""
    if sigma == 0:
        return np.ones(runs)
    z = [np.random.default_rng(s.spawn(1)[0]).standard_normal() for s in np.random.SeedSequence(seed).spawn(runs)]
    return np.exp(sigma * np.array(z))


def rate_scale(p: SimParams, rng: np.random.Generator) -> float:
    """The run's failure-rate scale, Gamma(shape, 1/shape) (1 without count uncertainty): the first draw."""
    return float(rng.gamma(p.rate_shape, 1.0 / p.rate_shape)) if p.rate_shape > 0 and p.rate > 0 else 1.0


def _run_draws(p: SimParams, rng: np.random.Generator, scale: float | None) -> tuple[float, float]:
    """The run's rate scale (unless given: a phased plan shares one over its phases) and straggler time, drawn
    first and in this order by both engines."""
    scale = rate_scale(p, rng) if scale is None else (scale if p.rate_shape > 0 and p.rate > 0 else 1.0)
    straggle = p.straggle_mean_s
    if p.straggle_sd_s > 0:
        straggle = max(0.0, float(rng.normal(p.straggle_mean_s, p.straggle_sd_s)))
    return scale, straggle


def _draw_category(p: SimParams, cumulative: np.ndarray, rng: np.random.Generator) -> int:
    return min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(cumulative) - 1)


class _Spares:
    """The spare pool: nodes in repair, by the wall-clock time they return."""

    def __init__(self, spares: int, repair_s: float):
        self.spares, self.repair_s, self.in_repair = spares, repair_s, []

    def wait(self, now: float) -> float:
        """Seconds the job waits for a replacement node when one of its nodes fails at `now`."""
        self.in_repair = [t for t in self.in_repair if t > now]
        if self.spares == 0:
            return self.repair_s  # no spares: the failed node's own repair
        wait = 0.0
        if len(self.in_repair) >= self.spares:  # every spare is itself in repair: take the first one back
            wait = self.in_repair.pop(0) - now
        insort(self.in_repair, now + self.repair_s)
        return wait


def _stretch(p: SimParams, remaining: float, x: float) -> tuple[bool, float, float, float]:
    """From a durable checkpoint with `remaining` work left, the job runs until a failure after `x` running
    seconds. Returns (finished, running seconds used, work made durable, checkpoint stall seconds spent)."""
    tau, s = p.interval_s, p.stall_s
    pieces = 1 if math.isinf(tau) else max(1, math.ceil(remaining / tau - 1e-12))
    finish = remaining + s * (pieces - 1)
    if x >= finish:
        return True, finish, remaining, s * (pieces - 1)
    cycle = tau + s
    done = math.floor(x / cycle)  # work-and-stall cycles completed (< pieces)
    stalls = done * s + min(s, max(0.0, x - done * cycle - tau))
    durable = max(0, min(done, math.floor((x - p.lag_s) / cycle))) if x >= p.lag_s else 0
    return False, x, durable * tau, stalls


def simulate_run(p: SimParams, rng: np.random.Generator, factor: float = 1.0,
                 scale: float | None = None) -> dict[str, float]:
    """One run, failure to failure in closed form: wall clock, its components and the number of failures.
    `factor`: the run's step-time factor; `scale`: its failure-rate scale when drawn outside (phased plans)."""
    scale, straggle = _run_draws(p, rng, scale)
    rate = p.rate * scale
    cumulative = np.cumsum(p.category_rates)
    spares = _Spares(p.spare_nodes, p.repair_s)
    out = dict.fromkeys(COMPONENTS, 0.0)
    out["straggler_s"] = straggle * factor
    out["eval_s"] = p.eval_s
    out[STEP_TIME] = p.work_s * factor - p.work_s
    failures, remaining, wall = 0, p.work_s * factor + straggle * factor + p.eval_s, 0.0
    while True:
        x = float(rng.exponential(1.0 / rate)) if rate > 0 else math.inf
        finished, used, durable, stalls = _stretch(p, remaining, x)
        out["checkpoint_s"] += stalls
        wall += used
        if finished:
            break
        out["lost_work_s"] += used - durable - stalls
        remaining -= durable
        failures += 1
        cat = _draw_category(p, cumulative, rng)
        down = p.restart_s + (spares.wait(wall) if p.replace_node[cat] else 0.0)
        out["restart_s"] += down
        wall += down
    out["wall_s"] = p.work_s + sum(out[k] for k in COMPONENTS) + out[STEP_TIME]
    out["failures"] = failures
    return out


def simulate_runs(p: SimParams, seed: int, runs: int, factors: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`runs` Monte Carlo runs: arrays of wall_s, each component of COMPONENTS, step_time_s and failures.
    `factors`: each run's step-time factor (default: step_factors(p.step_sigma, seed, runs))."""
    factors = step_factors(p.step_sigma, seed, runs) if factors is None else factors
    rows = [simulate_run(p, rng, float(f)) for rng, f in zip(run_seeds(seed, runs), factors)]
    return {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]}


@dataclass(frozen=True)
class TimelineEvent:
    t: float          # wall-clock seconds from the start
    kind: str         # checkpoint (its stall ended), failure, restarted, done
    work_s: float     # checkpoint: the work it holds (durable lag_s later); else the durable work at that moment
    detail: str = ""


def simulate_timeline(p: SimParams, rng: np.random.Generator, factor: float = 1.0,
                      scale: float | None = None) -> tuple[dict[str, float], list[TimelineEvent]]:
    """One run as simpy processes: a trainer working through checkpoint intervals and a failure source that
    interrupts it (its clock paused while the job is down). Returns simulate_run's figures, with the wall clock
    read off the simpy clock, and the event list."""
    env = simpy.Environment()
    scale, straggle = _run_draws(p, rng, scale)
    rate = p.rate * scale
    cumulative = np.cumsum(p.category_rates)
    spares = _Spares(p.spare_nodes, p.repair_s)
    total = p.work_s * factor + straggle * factor + p.eval_s
    tally = dict.fromkeys(COMPONENTS, 0.0)
    tally["straggler_s"] = straggle * factor
    tally["eval_s"] = p.eval_s
    tally[STEP_TIME] = p.work_s * factor - p.work_s
    events: list[TimelineEvent] = []
    state = {"durable": 0.0, "failures": 0}
    finished = env.event()

    def trainer():
        while True:
            start = env.now
            base = state["durable"]
            snaps: list[tuple[float, float]] = []  # (stall end, work position) of this stretch's checkpoints
            phase = ["work", start]                 # what runs now and since when
            try:
                left = total - base
                while left > 1e-9 * max(1.0, total):
                    piece = min(p.interval_s, left)
                    phase[:] = ["work", env.now]
                    yield env.timeout(piece)
                    left -= piece
                    if left <= 1e-9 * max(1.0, total):
                        break
                    phase[:] = ["stall", env.now]
                    yield env.timeout(p.stall_s)
                    tally["checkpoint_s"] += p.stall_s
                    snaps.append((env.now, total - left))
                    events.append(TimelineEvent(env.now, "checkpoint", total - left))
                state["durable"] = total
                events.append(TimelineEvent(env.now, "done", total))
                finished.succeed()
                return
            except simpy.Interrupt as failure:
                if phase[0] == "stall":
                    tally["checkpoint_s"] += env.now - phase[1]
                durable = [w for t, w in snaps if t + p.lag_s <= env.now]
                state["durable"] = durable[-1] if durable else base
                stalls_lost = sum(p.stall_s for t, w in snaps if t + p.lag_s > env.now) + (
                    env.now - phase[1] if phase[0] == "stall" else 0.0)
                stalls_kept = len(durable) * p.stall_s
                tally["lost_work_s"] += env.now - start - (state["durable"] - base) - stalls_kept - stalls_lost
                events.append(TimelineEvent(env.now, "failure", state["durable"], failure.cause[0]))
                yield env.timeout(failure.cause[1])
                tally["restart_s"] += failure.cause[1]
                events.append(TimelineEvent(env.now, "restarted", state["durable"]))
                failure.cause[2].succeed()

    def failure_source(job):
        while rate > 0:
            gap = float(rng.exponential(1.0 / rate))
            yield env.timeout(gap) | finished
            if finished.triggered:
                return
            cat = _draw_category(p, cumulative, rng)
            state["failures"] += 1
            down = p.restart_s + (spares.wait(env.now) if p.replace_node[cat] else 0.0)
            back = env.event()
            job.interrupt((str(cat), down, back))
            yield back

    job = env.process(trainer())
    env.process(failure_source(job))
    env.run(until=finished)
    out = dict(tally)
    out["wall_s"] = env.now
    out["failures"] = state["failures"]
    return out, events
