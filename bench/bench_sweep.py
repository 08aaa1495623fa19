"""Benchmark: a 1,008-point sweep over a dense and two MoE presets with small step shapes, on a local pool.

Run: .venv/bin/python bench/bench_sweep.py [--workers N] [--executor process|serial] [--off NAMES] [--csv PATH]
--off (comma-separated; each puts back what it replaced, on the same code; the workers inherit it by fork):
  content   stage-class profiles keyed by object identity (`stage_classes.CONTENT_KEY`): nothing shared between points
  gc        the collections after a point as before: the young generation every point, the middle one every 16
  freeze    nothing frozen in the workers (`sweep.FREEZE_IN_WORKERS`)
  scenario  presets and bundled calibration profiles read again for every point (`scenario._preset`,
            `scenario._calibration_profile`)
--csv copies the results table (point order as the workers finished: compare sorted lines).
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
14:05 UTC, load 1.6-2.1: 7.8-8.9 s wall, 14.9-16.9 s CPU (15-18 ms CPU per simulated point), 115 MiB, with
stage-class profiles shared between points by content (`stage_classes.pricing_key`; 5,868 -> 4,258 profiles built,
stored without spans), both young generations collected after a point and the workers' start-up objects frozen
(`sweep.evaluate_point`; serial: collections 1.8 -> 1.0 s CPU), presets and bundled calibration profiles read once
per process (`scenario._preset`, `scenario._calibration_profile`: the 1,008 points' scenarios 0.92 -> 0.32 s CPU);
--off content,gc,freeze,scenario on the same code, alternating: 9.7-9.9 s wall, 18.1-19.1 s CPU, 115-116 MiB. One
switch off at a time: content 15.7-19.8 s, gc,freeze 15.4-18.5 s, scenario 16.7-17.2 s (noise ~1 s at this load).
Serial, one process: 13.7-15.4 s CPU on; the content key alone, before the rest, 16.3-20.1 s on, 18.3-19.9 s off
(noise at this load; the profiles built are the steady figure). Same results.csv, byte for byte (serial runs;
the pools' rows sorted).
"""

from __future__ import annotations

import argparse
import resource
import shutil
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


OFF = ("content", "gc", "freeze", "scenario")


def switch_off(names: set[str]) -> None:
    from gpuhours.hwmodels.calibration import load_profile
    from gpuhours.simulator import scenario, stage_classes, sweep
    from gpuhours.workloads.presets import load_preset

    if names - set(OFF):
        raise SystemExit(f"--off: unknown {sorted(names - set(OFF))}; allowed: {', '.join(OFF)}")
    if "content" in names:
        stage_classes.CONTENT_KEY = False
    if "gc" in names:
        sweep._GC_EVERY = {0: 1, 1: 16, 2: 128}
    if "freeze" in names:
        sweep.FREEZE_IN_WORKERS = False
    if "scenario" in names:
        scenario._preset = load_preset
        scenario._calibration_profile = load_profile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executor", default="process")
    parser.add_argument("--off", default="")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    off = {n for n in args.off.split(",") if n}
    switch_off(off)
    spec = parse_spec(SPEC)
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run_sweep(spec, out, workers=args.workers, executor=args.executor)
        wall = time.perf_counter() - t0
        if args.csv:
            shutil.copyfile(result.csv_path, args.csv)
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    # ru_maxrss (KiB on Linux): this process's peak, and the largest finished worker's (the pool has joined)
    rss = max(a.ru_maxrss for a in after) / 1024
    t = result.table
    simulated = t["step_time_s"].notna().sum()
    print(f"off: {sorted(off) or 'nothing'}")
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
