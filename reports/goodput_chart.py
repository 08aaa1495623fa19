"""Charts of the goodput model: GPU-hours over the Monte Carlo runs, and one run's timeline (progress, checkpoints,
failures and restarts over the days)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gpuhours.simulator.goodput import GoodputConfig, GoodputResult, goodput_params  # noqa: E402
from gpuhours.simulator.goodput_sim import run_seeds, simulate_timeline, step_factors  # noqa: E402


def histogram(result: GoodputResult, path: str) -> str:
    """Histogram of GPU-hours over the Monte Carlo runs (failures and, when its sigma is not 0, the step time's
    uncertainty) with the ideal, expected and the band's P10/P50/P90 marked. Takes a GoodputResult or a
    PhasedGoodputResult (simulator/goodput_phases.py)."""
    gh = result.gpu_hours_runs() / 1e6
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.hist(gh, bins=40, color="#6a8fc7", edgecolor="white")
    ax.axvline(result.ideal_gpu_hours / 1e6, color="k", lw=1.5, label="ideal")
    ax.axvline(result.expected_gpu_hours / 1e6, color="#c0392b", lw=1.5, label="expected")
    for p, v in zip((10, 50, 90), result.band_gpu_hours_pct):
        ax.axvline(v / 1e6, color="#c0392b", lw=0.8, ls="--")
        ax.text(v / 1e6, ax.get_ylim()[1] * 0.95, f"P{p}", ha="center", va="top", fontsize=8)
    ax.set_xlabel("GPU-hours (millions)")
    ax.set_ylabel("Monte Carlo runs")
    spread = f", step time x exp({result.step_time_sigma:g} Z)" if result.step_time_sigma else ""
    ax.set_title(f"{result.runs} runs, {result.effective_training_time_ratio:.1%} effective training time{spread}",
                 fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def timeline(run, scenario, config: GoodputConfig, path: str, run_index: int = 0) -> str:
    """Durable progress over the days of Monte Carlo run `run_index` (the same draws as goodput_estimate's band,
    its step-time factor included), with failures and restarts marked; simulated event by event on simpy."""
    params, _ = goodput_params(run, scenario, config)
    n = max(config.runs, run_index + 1)
    factor = float(step_factors(params.step_sigma, config.seed, n)[run_index])
    _, events = simulate_timeline(params, run_seeds(config.seed, n)[run_index], factor)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    total = events[-1].work_s  # the run's work: ideal x its step-time factor, stragglers and evaluation
    ax.step([e.t / 86400 for e in events], [min(1.0, e.work_s / total) * 100 for e in events], where="post",
            color="#2c7fb8", lw=1, label="durable progress (checkpoints)")
    fails = [e for e in events if e.kind == "failure"]
    backs = [e for e in events if e.kind == "restarted"]
    ax.scatter([e.t / 86400 for e in fails], [e.work_s / total * 100 for e in fails], marker="x", color="#c0392b",
               s=18, label=f"failure ({len(fails)})", zorder=3)
    for f, b in zip(fails, backs):
        ax.axvspan(f.t / 86400, b.t / 86400, color="#c0392b", alpha=0.15, lw=0)
    ax.axvline(params.work_s / 86400, color="k", lw=0.8, ls="--", label="ideal end")
    ax.set_xlabel("days")
    ax.set_ylabel("% of the run's work")
    ax.set_title("one run: checkpoints, failures and restarts (shaded: down)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
