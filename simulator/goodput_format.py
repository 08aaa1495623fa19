"""The printed lines of the goodput model (simulator/goodput.py, goodput_phases.py): label, then figures."""

from __future__ import annotations

import math

LABEL = 18
PCTS = (10, 50, 90)


def _millions(v: float) -> str:
    return f"{v / 1e6:.3f}M"


def _band(pct, fmt) -> str:
    return "  ".join(f"P{p} {fmt(v)}" for p, v in zip(PCTS, pct))


def _days(v: float) -> str:
    return f"{v / 86400:.1f}"


def figure_rows(r) -> list[tuple[str, str]]:
    """The ideal, expected and band rows shared by GoodputResult and PhasedGoodputResult."""
    m = _millions
    rows = [
        ("GPU-hours", f"{m(r.ideal_gpu_hours)} ideal, {m(r.expected_gpu_hours)} expected  "
                      f"({_band(r.gpu_hours_pct, m)})"),
        ("wall clock", f"{r.ideal_days:.1f} days ideal, {r.expected_days:.1f} expected  "
                       f"({_band(r.days_pct, lambda v: f'{v:.1f}')})"),
        ("cost", f"${m(r.ideal_cost_usd)} ideal, ${m(r.expected_cost_usd)} expected  "
                 f"({_band(r.cost_pct, lambda v: '$' + m(v))})"),
    ]
    if r.step_time_sigma > 0:
        rows.append(("with step error", f"GPU-hours {_band(r.band_gpu_hours_pct, m)}; days "
                                        f"{_band(r.band_days_pct, lambda v: f'{v:.1f}')}"))
    lost = r.lost_s
    rows.append(("lost time (days)", f"failures' lost work {_days(lost['lost_work_s'])}, restarts "
                                     f"{_days(lost['restart_s'])}, checkpoint stalls {_days(lost['checkpoint_s'])}, "
                                     f"evaluation {_days(lost['eval_s'])}, stragglers {_days(lost['straggler_s'])}"))
    return rows


def step_time_row(r) -> tuple[str, str]:
    if r.step_time_sigma == 0:
        return "step time", "taken as exact (step_time_sigma 0): the band is over failures alone"
    return "step time", (f"simulated step x exp({r.step_time_sigma:g} Z) per run (median 1), in the 'with step error' "
                         f"band only; sigma: {r.step_time_source}")


def result_lines(r) -> list[str]:
    """The printed lines of a GoodputResult."""
    tau = r.checkpoint_interval_s
    every = "never (no failures)" if math.isinf(tau) else f"every {tau / 60:.1f} min ({r.interval_rule})"
    mode = "asynchronous" if r.async_checkpoint else "synchronous"
    comps: dict[str, float] = {}
    for rate in r.rates:
        comps[rate.component] = comps.get(rate.component, 0.0) + rate.per_day
    mtbf = 24 / r.failure_rate_per_day if r.failure_rate_per_day else math.inf
    rows = [("goodput", f"{r.effective_training_time_ratio:.1%} effective training time ({r.runs} Monte "
                        f"Carlo runs, seed {r.seed}, {r.mean_failures:.1f} failures per run)")]
    rows += figure_rows(r)
    rows.append(("checkpoint", f"{r.checkpoint_bytes / 1e12:.2f} TB {every}, {mode}: write "
                               f"{r.checkpoint_write_s:.1f} s, stall {r.checkpoint_stall_s:.2f} s"))
    if r.evaluations:
        rows.append(("evaluation", f"every {r.eval_every_steps} steps, {r.eval_seconds:g} s each: "
                                   f"{r.evaluations} pauses"))
    rows.append(("failures", "none" if not r.failure_rate_per_day else
                 f"{r.failure_rate_per_day:.2f}/day, MTBF {mtbf:.1f} h ("
                 + ", ".join(f"{k} {v:.2f}" for k, v in sorted(comps.items(), key=lambda kv: -kv[1]))
                 + f"); restart {r.restart_s / 60:.1f} min + spare wait"))
    rows.append(step_time_row(r))
    rows.append(("rates from", r.rates_source))
    return [f"{k:<{LABEL}}{v}" for k, v in rows]


def phased_lines(r) -> list[str]:
    """The printed lines of a PhasedGoodputResult (simulator/goodput_phases.py)."""
    rows = [("goodput", f"{r.effective_training_time_ratio:.1%} effective training time over "
                        f"{len(r.phases)} phases ({r.runs} Monte Carlo runs, seed {r.seed}, "
                        f"{r.mean_failures:.1f} failures per run)")]
    rows += figure_rows(r)
    for name, ph in r.phases:
        tau = ph.checkpoint_interval_s
        every = "no checkpoints" if math.isinf(tau) else f"checkpoint every {tau / 60:.1f} min"
        evals = f", {ph.evaluations} evaluations" if ph.evaluations else ""
        rows.append(("phase", f"{name}: {ph.ideal_gpu_hours / 1e3:,.1f}K ideal, {ph.expected_gpu_hours / 1e3:,.1f}K "
                              f"expected GPU-hours ({ph.effective_training_time_ratio:.1%}), {ph.num_gpus} GPUs, "
                              f"{every}, {ph.mean_failures:.1f} failures{evals}"))
    rows.append(step_time_row(r))
    rows.append(("rates from", r.rates_source))
    return [f"{k:<{LABEL}}{v}" for k, v in rows]
