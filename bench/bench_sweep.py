"""Benchmark: a 1,008-point sweep over a dense and two MoE presets with small step shapes, on a local pool.

Run: .venv/bin/python bench/bench_sweep.py [--workers N] [--executor process|serial]
Token counts do not change the work (the run is priced from a few simulated steps); the step simulation does,
so the shapes are kept small: 1K-token sequences, a 256-sequence batch, 64-256 GPUs. Not part of the tests.
It prints wall time, CPU time of this process and its workers (the machine is shared: wall time measures the
neighbours too) and the largest process's peak resident memory.
2026-12-01 10:10 UTC, this 2-core machine, load 0.7-1.5: 20.9 s wall, 40.9 s CPU (42 ms CPU per simulated
point), 227 MiB; with the layer templates (`workloads.layer_templates`) and the stage-memory memos
(`simulator.split_memo`) off, the same code: 28.2 s wall, 55.4 s CPU, 239 MiB. Before the collector was paused
inside a point (`sweep.evaluate_point`): 24.1 s wall, 45 s CPU, 130 MiB (52.3 s, 69 s CPU with the caches off,
load 1.5-2.3; 24.7 s wall earlier that day, before other sessions' changes).
Once stage balancing simulated candidate splits (`simulator.split_search`), 11:20 UTC, load 1.4-2.9: 91.3 s wall,
118.6 s CPU, 238 MiB; with the candidates sharing layer templates and stage-class profiles
(`workloads.layer_templates._without_split`, `simulator.stage_classes._shared_profiles`), split memory memoised
per simulator (`StepSimulator._split_memory`), a segment's SMs and kernels kept with its other figures
(`HardwareCoster._segment_facts`) and the collection after a point run before the collector is back on
(`sweep.evaluate_point`): 38.0-47.3 s wall, 58.5-61.5 s CPU, 272 MiB (load 1.9-2.6). Same rows, bit for bit.
12:15 UTC, load 1.0-1.3: 12.7-13.2 s wall, 24.3-25.3 s CPU (25-26 ms CPU per simulated point), 115 MiB, with
stages built once per layout and read through their layers' templates (`stage_ops.stage_units_for`,
`simulator.stage_views`), each rank's activation peak in one array operation (`split_memo.peak_bytes`), the stage
memory rows kept per stage start, a dropped simulator emptied at once (`sweep._release`) and built-in plans parsed
once; bench/bench_sharing.py --sweep --off copies,stages,views,peak,release on the same code: 29.2 s wall, 48.1 s
CPU, 266 MiB (43.8 s wall, 44.1 s CPU just before, at load ~3). Same rows, bit for bit (compared as DataFrames).
13:35 UTC, load 2.3-2.9 (other sessions running: wall time is about CPU time, not half of it): 20.1-21.1 s CPU
(21-22 ms CPU per simulated point), 19.6-20.2 s wall, 115 MiB, with each rank's split memory kept per its held
stages (`split_memo.rank_memory_memo`: a layer move recomputes the ranks of two stages), stage signatures hashed
once (`stage_classes._HashedTuple`), the losing candidate splits emptied (`split_search.release`), the
SM-sharing list scheduler's streams in locals (`nccl_sms.list_schedule_shared`) and span names parsed once
(`task_schedule.task_span`); all of those off on the same code, alternating runs: 23.3-24.0 s CPU, 22.4-22.9 s
wall. Serial, one process (time.process_time): 17.7-18.4 s on, 22.0 s off. Same results.csv, byte for byte.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from gpuhours.simulator.sweep import parse_spec, run_sweep

SPEC = {
    "sweep": {"base": "deepseek-v3", "name": "bench: dense + MoE presets"},
    "fixed": {"seq_len": 1024, "batch": 256, "tokens": "10B"},
    "grid": [
        {"model": ["llama-3-70b"], "gpus": [64, 128, 256], "pp": [2, 4, 8], "tp": [1, 2, 4, 8],
         "schedule": ["1f1b", "zb1p", "dualpipe"], "micro_batch_size": [1, 2], "price": [1.5, 2.0]},
        {"model": ["deepseek-v2"], "gpus": [64, 128, 256], "pp": [2, 4, 8], "ep": [8, 16],
         "schedule": ["1f1b", "zb1p", "dualpipe"], "precision": ["fp8", "bf16"], "micro_batch_size": [1, 2],
         "price": [1.5, 2.0]},
        {"model": ["deepseek-v3"], "gpus": [128, 256], "pp": [4, 8], "ep": [8, 32],
         "schedule": ["1f1b", "zb1p", "dualpipe"], "nic_gbps": [200, 400], "price": [1.5, 2.0, 2.5]},
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executor", default="process")
    args = parser.parse_args()
    spec = parse_spec(SPEC)
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run_sweep(spec, out, workers=args.workers, executor=args.executor)
        wall = time.perf_counter() - t0
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    # ru_maxrss (KiB on Linux): this process's peak, and the largest finished worker's (the pool has joined)
    rss = max(a.ru_maxrss for a in after) / 1024
    t = result.table
    simulated = t["step_time_s"].notna().sum()
    print(f"sweep: {result.points_total} points ({simulated} simulated, {int(t['feasible'].sum())} feasible, "
          f"{result.points_total - simulated} invalid layouts) in {wall:.1f} s with {args.workers} "
          f"{args.executor} workers: {result.points_total / wall:.1f} points/s, "
          f"{wall / max(simulated, 1) * 1e3:.0f} ms per simulated point")
    print(f"CPU (this process and its workers): {cpu:.1f} s, {cpu / max(simulated, 1) * 1e3:.0f} ms per simulated "
          f"point; peak resident memory of a process: {rss:.0f} MiB")
    fastest = result.best.get("fastest")
    if fastest:
        print(f"fastest: {fastest['model']} {fastest['layout']}, {fastest['wall_clock_days']:.2f} days")


if __name__ == "__main__":
    main()
