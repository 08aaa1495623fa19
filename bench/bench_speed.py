"""Benchmark: the speed figures of the layout-search issue, on this machine.

Run: .venv/bin/python bench/bench_speed.py [--skip-cli] [--skip-16k] [--search]
Not part of the test run; the figures go in the README and the closing notes.

1. A new configuration, cold, in-process: a published layout (stages balanced, every collective and send priced,
   every step shape simulated) in a process that has already imported gpuhours and run another configuration,
   with its cluster's fabric graph built (untimed) and nothing about this layout cached. Best of three, in CPU
   time of this process (time.process_time: the machine is shared, so wall time measures the neighbours too).
   2026-12-01, this 2-core machine, GPT-3 175B PP12 / GPT 1T PP64 / 175B PP8 full recompute / Llama 3.1 8B FSDP:
   104 / 1,182 / 93 / 11 ms wall, machine idle, before this session's engine work (121 ms / 1.4 s under load);
   after it 72-74 / 315-431 / 47-52 / 12 ms CPU: ranks without all-to-alls or gradient buckets run ahead
   (`simulator.run_ahead`), identical stages share one instruction graph (`simulator.stage_classes`), profiles
   and sends are asked once per kind and route (`simulator.programs`), and one-stage-per-rank balancing tries a
   move in O(1) (`balance._rebalance_one_per_rank`). Every figure bit-identical to the full simulation.
   Later that day (load 1.5-2.3), with identical layers renamed from one build per kind
   (`workloads.layer_templates`) and the stage-memory memos (`simulator.split_memo`): 60 / 333 / 38 / 15 ms CPU
   (123 / 464 / 72 / 34 ms with them off, same code and load). The layout caches are cleared before every run
   (`_clear_layout_caches`). Also printed where the case allows it: the same configuration after another layout
   (pp doubled) on the same cluster, whose network is shared as in a sweep or the planner, so the fabric's
   leaf-pair routes are warm: GPT-3 175B 40 ms, Llama 3.1 8B 15 ms.
   Later still (fifth session, load 1-4): leaf pairs of a spec-built fat tree written down from its switch counts
   instead of searched (`hwmodels/fabric_symmetry.py`; `--search` turns it off), each leaf pair's links and
   fractions kept as one array, routing's per-GPU latencies and connected parts looked up once per fabric, a
   phase without PXN relays or NVLink flows skipping that work, pipeline sends and every stage's groups built
   as arrays (`RankLayout.pipeline_flow_array`, groups as stage 0's shifted): GPT-3 175B PP12 34-37 ms CPU, 27-30
   ms after another layout (42-46 ms with `--search`, same code; 47-50 ms before), routing its 24 phases 7-8 ms of
   it (was 17-20 ms); GPT 1T PP64 268-291 ms (304-318 ms with `--search`). Figures identical either way.
   Sixth session (load 1.3-2.3; "before" is the same tree with this session's engine and balancing changes
   taken out, run alternately, five rounds): GPT-3 175B PP12 31-39 -> 26-30 ms CPU (25-31 -> 19-22 ms after
   another layout), GPT 1T 260-299 -> 108-120 ms, 175B PP8 full recompute 33-50 -> 25-29 ms, Llama 3.1 8B
   24-30 ms either way.
   The engine's share (`run_pipeline` alone, routes warm, best of 30: the programs priced and run)
   went 4.6 -> 1.0 ms (175B), 177 -> 27-30 ms (1T), 5.2 -> 1.2 ms (PP8): arrivals numbered once per schedule
   shape instead of keyed by tuples (4.5 -> 3.3 / 175 -> 117 ms), ranks that run ahead queued as plain
   generators instead of woken by simpy events (-> 1.85 / 63 ms; nothing on that path reads a clock), a loop
   for instructions with at most one input and one send and per-rank totals as cumulative sums (-> 1.0 / 30
   ms). A schedule shape's structure, cached but built once per shape, 4.4 -> 2.4 ms (175B), 145 -> 81 ms (1T),
   5.7 -> 4.8 ms (DualPipe 16 x 120), garbage collector off. Stage balancing's dynamic programme, 8 calls per
   175B layout, 0.72 -> 0.43 ms a call (one buffer, the stage spans and blocked cells computed once, the first
   stage read as one column and the last as one row; the same splits as before on 8,000 random cases); the
   balancing probe's op prices handed to the layout's coster. What is left of the 175B's ~26 ms (wrapped
   timers): routing on a cold cluster ~11 ms (pipeline sends 5, the data-parallel ring 6), balancing ~8 (its
   DP 3.7, first op prices 2.6), instruction profiles ~5, the engine ~1.5.
2. The default CLI estimate, as a user runs it (`python -m gpuhours.cli estimate`, a new process: imports
   included), best of three, wall and CPU, with compiled bytecode cached as from a user's second run (and
   once more compiling every module, as under PYTHONDONTWRITEBYTECODE). 2026-12-01, this 2-core machine:
   1.12-1.27 s wall / 1.02 s CPU before the start-up work (typer's pydantic coercion of every option, networkx
   imported for the fabric, the collector rescanning the fabric); after it 0.67-0.71 s wall / 0.69-0.75 s CPU
   cached, 0.83-0.98 s wall / 0.82 s CPU compiling (the engine was being changed by another session meanwhile).
3. The default estimate resized to 16,384 GPUs (DeepSeek's cluster preset at that size, DP1024), in-process,
   wall and CPU: 1.0-1.2 s before, 0.56-0.63 s CPU after (0.62 s wall at load 1.9; leaf pairs routed in cached
   parts, groups as arrays, the fabric built straight into its dictionaries without networkx, the collector
   paused during an estimate).
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


def _clear_layout_caches() -> None:
    """The per-process caches keyed by a layout (layer templates, stage memory memos): a new configuration
    finds none of its own, as in a sweep worker's first point of that layout."""
    from gpuhours.simulator import stage_classes
    from gpuhours.simulator.split_memo import clear_split_memos
    from gpuhours.workloads.layer_templates import clear_templates
    from gpuhours.workloads.stage_ops import clear_stage_memo

    clear_templates()  # and the layer copies kept per template
    clear_stage_memo()  # stages kept per layout for its candidate splits
    clear_split_memos()
    stage_classes._CONTEXTS.clear()  # stage-class profiles shared between candidate splits


def _fresh(case, profile):
    """One configuration from nothing but its cluster's fabric graph: the network model is rebuilt (untimed) so
    no pricing of this layout is cached, then the scenario is estimated (timed)."""
    from gpuhours.simulator.scenario import _graph_network, estimate
    from gpuhours.validation.accuracy import _scenario

    _graph_network.cache_clear()
    _clear_layout_caches()
    scenario = _scenario(case, profile)
    scenario.network()  # the fabric graph: built once per cluster, shared by every layout on it
    t0 = time.process_time()
    result = estimate(scenario)
    return time.process_time() - t0, result


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
        warm = [_after_other_layout(case, profile) for _ in range(3)]
        if None not in warm:
            same = all(r.gpu_hours == result.gpu_hours for _, r in warm)
            print(f"  after another layout on its cluster (leaf-pair routes warm){'':8s}"
                  f"{min(t for t, _ in warm) * 1e3:7.0f} ms  (same figures: {same})")


def _after_other_layout(case, profile):
    """The configuration on a cluster whose network has already priced another layout (pp doubled, dp halved), as
    a sweep or the planner meets it: their points share one network per cluster (`scenario._graph_network`), so
    the fabric's leaf-pair routes are cached; this layout's groups, sends, layers and balance are not. None when
    the case has no such other layout."""
    from dataclasses import replace

    from gpuhours.simulator.scenario import _graph_network, estimate
    from gpuhours.validation.accuracy import _scenario

    _graph_network.cache_clear()
    scenario = _scenario(case, profile)
    p = scenario.parallel
    try:
        other = replace(scenario, parallel=replace(p, pp=2 * p.pp))  # dp halves: the GPUs stay
        if p.dp % 2 or p.stage_layers or p.pipeline_layout:
            return None
        estimate(other)  # untimed
    except ValueError:
        return None
    _clear_layout_caches()
    t0 = time.process_time()
    result = estimate(scenario)
    return time.process_time() - t0, result


def bench_cli() -> None:
    """Wall and CPU time (the child's user + system) of the command, best of three after one untimed run. The
    children write and reuse compiled bytecode (in a temporary cache, not the repository), as a user's second
    run does, even where the environment sets PYTHONDONTWRITEBYTECODE; the figure that compiles every module
    on every run is printed too."""
    import os
    import resource
    import tempfile

    def runs(env, n=3):
        walls, cpus = [], []
        for _ in range(n):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gpuhours.cli", "estimate"], check=True, capture_output=True,
                           env=env)
            walls.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return min(walls), min(cpus)

    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        runs(env, 1)  # compiles and caches the bytecode
        wall, cpu = runs(env)
    print(f"default CLI estimate (new process, imports included, bytecode cached): best {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU of 3")
    wall, cpu = runs({**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    print(f"  the same compiling every module each run: best {wall:.2f} s wall, {cpu:.2f} s CPU of 3")


def bench_16k() -> None:
    from gpuhours.simulator.scenario import estimate, load_scenario

    for gpus in (2048, 16384):
        t0, c0 = time.perf_counter(), time.process_time()
        scenario = load_scenario(gpus=gpus)
        result = estimate(scenario)
        t, c = time.perf_counter() - t0, time.process_time() - c0
        print(f"default estimate on {gpus:6,d} GPUs (in-process, cold): {t:.2f} s wall, {c:.2f} s CPU, "
              f"{result.gpu_hours / 1e6:.3f}M GPU-hours")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-16k", action="store_true")
    parser.add_argument("--search", action="store_true",
                        help="route leaf pairs by the full shortest-path search, not the fat tree's closed form")
    args = parser.parse_args()
    if args.search:
        from gpuhours.hwmodels import fabric_symmetry

        fabric_symmetry.SHORTCUT = False
    bench_configs()
    if not args.skip_cli:
        bench_cli()
    if not args.skip_16k:
        bench_16k()


if __name__ == "__main__":
    main()
