"""A/B of this session's sharing between candidate splits and sweep points, on the same code: each switch puts
back the direct computation it replaces (monkeypatched here, nothing in the package reads a flag).

Run: .venv/bin/python bench/bench_sharing.py [--off copies,stages,views,peak,release] [--sweep|--speed]
  copies   layer copies kept per template (`layer_templates._copy_of`): every stage renames its layers again
  stages   stages kept per layout and stage refs (`stage_ops._layout_memo`): every stage built in full
  views    profiles read renamed layers as template views (`simulator.stage_views`) and stage signatures read
           through the templates (`stage_classes._stage_signatures`): off, every stage is built and renamed
  peak     every rank's activation peak in one array operation (`split_memo.peak_bytes`): off, rank by rank
  release  a simulator dropped from the sweep's memo emptied at once (`sweep._release`): off, left to the collector
--sweep runs bench/bench_sweep.py's 1,008 points (two process workers; the patches reach them by fork),
--speed bench/bench_speed.py's configurations. Not part of the tests; nothing is timed in the tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def switch_off(names: set[str]) -> None:
    from gpuhours.simulator import balance, chunks, stage_classes, sweep
    from gpuhours.workloads import layer_templates, stage_ops
    from gpuhours.workloads.memory import peak_in_flight

    if "copies" in names:
        layer_templates._copy_of = lambda tpl, layer: layer_templates.renamed(tpl, layer)
    if "stages" in names:
        stage_ops._layout_memo = lambda *args: None
    if "views" in names:
        chunks.profile_units = lambda coster, s: coster.stage(s)
        stage_classes._stage_signatures = lambda coster: [stage_classes.stage_signature(u) for u in coster.stages]
    if "peak" in names:
        balance.peak_bytes = lambda schedule, stage_bytes: peak_in_flight(schedule, stage_bytes)[0]
    if "release" in names:
        sweep._release = lambda sim: None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--off", default="")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--speed", action="store_true")
    args = parser.parse_args()
    off = {n for n in args.off.split(",") if n}
    unknown = off - {"copies", "stages", "views", "peak", "release"}
    if unknown:
        raise SystemExit(f"--off: unknown {sorted(unknown)}; allowed: copies, stages, views, peak, release")
    switch_off(off)
    print(f"off: {sorted(off) or 'nothing'}")
    sys.path.insert(0, str(Path(__file__).parent))
    if args.sweep:
        import bench_sweep

        sys.argv = [sys.argv[0]]
        bench_sweep.main()
    if args.speed:
        import bench_speed

        sys.argv = [sys.argv[0], "--skip-cli", "--skip-16k"]
        bench_speed.main()


if __name__ == "__main__":
    main()
