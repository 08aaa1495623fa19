"""Benchmark: the speed figures of the layout-search issue, on this machine.

Run: .venv/bin/python bench/bench_speed.py [--skip-cli] [--skip-16k]
Not part of the test run; the figures go in the README and the closing notes.

1. A new configuration, cold, in-process: a published layout (stages balanced, every collective and send priced,
   every step shape simulated) in a process that has already imported gpuhours and run another configuration,
   with its cluster's fabric graph built (untimed) and nothing about this layout cached. Best of three.
2. The default CLI estimate, as a user runs it (`python -m gpuhours.cli estimate`, a new process: imports
   included), best of three.
3. The default estimate resized to 16,384 GPUs (DeepSeek's cluster preset at that size, DP1024), in-process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CONFIGS = (
    ("GPT-3 175B, 1,536 A100, TP8 PP12", "megatron21-ptdp-175b-1536"),
    ("GPT 1T, 3,072 A100, TP8 PP64", "megatron21-gpt-1008b"),
    ("GPT-3 175B, 64 A100, TP8 PP8, full recompute", "korthikanti-175b-full"),
    ("Llama 3.1 8B, 8 H100, FSDP", "torchtitan-8b-8gpu-fsdp"),
)


def _fresh(case, profile):
    """One configuration from nothing but its cluster's fabric graph: the network model is rebuilt (untimed) so
    no pricing of this layout is cached, then the scenario is estimated (timed)."""
    from gpuhours.simulator.scenario import _graph_network, estimate
    from gpuhours.validation.accuracy import _scenario

    _graph_network.cache_clear()
    scenario = _scenario(case, profile)
    scenario.network()  # the fabric graph: built once per cluster, shared by every layout on it
    t0 = time.perf_counter()
    result = estimate(scenario)
    return time.perf_counter() - t0, result


def bench_configs() -> None:
    from gpuhours.validation.cases import load_cases

    cases = {c.name: c for c in load_cases()}
    warm = cases["megatron21-gpt-1.7b"]
    _fresh(warm, (warm.calibrations or ("default-h800",))[0])  # imports and data files, not these configurations
    for label, name in CONFIGS:
        case = cases.get(name)
        if case is None:
            print(f"{label}: case {name} not found")
            continue
        profile = (case.calibrations or ("default-h800",))[0]
        times, result = [], None
        for _ in range(3):
            t, result = _fresh(case, profile)
            times.append(t)
        step = result.steady.step
        print(f"new configuration  {label:48s} {min(times) * 1e3:7.0f} ms  "
              f"({step.num_microbatches} micro-batches, step {step.step_time:.3f} s)")


def bench_cli() -> None:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gpuhours.cli", "estimate"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    print(f"default CLI estimate (new process, imports included): best {min(times):.2f} s of 3")


def bench_16k() -> None:
    from gpuhours.simulator.scenario import estimate, load_scenario

    for gpus in (2048, 16384):
        t0 = time.perf_counter()
        scenario = load_scenario(gpus=gpus)
        result = estimate(scenario)
        t = time.perf_counter() - t0
        print(f"default estimate on {gpus:6,d} GPUs (in-process, cold): {t:.2f} s, "
              f"{result.gpu_hours / 1e6:.3f}M GPU-hours")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-16k", action="store_true")
    args = parser.parse_args()
    bench_configs()
    if not args.skip_cli:
        bench_cli()
    if not args.skip_16k:
        bench_16k()


if __name__ == "__main__":
    main()
