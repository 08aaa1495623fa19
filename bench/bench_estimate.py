"""Benchmark: time the default `gpuhours estimate` and report simulated instructions and ops per second.

Run: .venv/bin/python bench/bench_estimate.py [--repeats N]
Not part of the test run; figures go in the closing notes.
"""

from __future__ import annotations

import argparse
import statistics
import time

from gpuhours.simulator.scenario import estimate, load_scenario
from gpuhours.simulator.schedules import build_schedule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times, result, scenario = [], None, None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scenario = load_scenario()
        result = estimate(scenario)
        times.append(time.perf_counter() - t0)
    # Work done by one estimate: every distinct step shape, every instruction and the ops inside it.
    sim = scenario.simulator()
    p = scenario.parallel
    instructions = ops = 0
    for m in sorted({s.num_microbatches for s in result.segments}):
        sched = build_schedule(p.schedule, p.pp, m, vpp=p.vpp)
        for program in sched.programs:
            instructions += len(program)
            ops += sum(sim.coster.op_count(ins) for ins in program)
    best = min(times)
    print(f"default estimate: median {statistics.median(times):.2f} s, best {best:.2f} s over {args.repeats} runs")
    print(f"distinct step shapes: {len({s.num_microbatches for s in result.segments})}")
    print(f"simulated instructions: {instructions:,} ({instructions / best:,.0f}/s)")
    print(f"simulated ops: {ops:,} ({ops / best:,.0f}/s)")
    print(f"GPU-hours: {result.gpu_hours / 1e6:.3f}M")


if __name__ == "__main__":
    main()
