"""Build times of the fabric graph and GraphNetwork pricing costs (run: .venv/bin/python bench/bench_topology.py).

Not a test: prints wall-clock figures for the report. Each build is timed best-of-3 in a fresh graph.
"""

from __future__ import annotations

import time

from gpuhours.hwmodels.fabric_presets import load_cluster_preset
from gpuhours.hwmodels.topology import build_topology, describe


def _best(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_builds() -> None:
    cases = [("deepseek-h800", 2048, 2), ("deepseek-h800", 16384, 2), ("dgx-h100", 2048, 2), ("dgx-h100", 16384, 3)]
    for name, gpus, tiers in cases:
        spec = load_cluster_preset(name, gpus=gpus, tiers=tiers)
        t = _best(lambda: build_topology(spec))
        d = describe(build_topology(spec))
        sw = d["switches"]
        print(f"build {name:14s} {gpus:6d} GPUs tiers={tiers}: {t * 1e3:7.1f} ms  "
              f"({d['links']} links; leaf {sw['leaf']}, spine {sw['spine']}, core {sw['core']}; "
              f"bisection {d['bisection_Bps'] / 1e12:.1f} TB/s)")


def bench_network() -> None:
    try:
        from gpuhours.hwmodels.cluster import CommGroup
        from gpuhours.hwmodels.graph_network import GraphNetwork
    except ImportError as exc:  # pragma: no cover
        print(f"graph network not available: {exc}")
        return
    net = GraphNetwork(load_cluster_preset("deepseek-h800"))
    ep = CommGroup(64, 8)
    cases = [
        ("ep_all_to_all EP64 (first call)", lambda: net.ep_all_to_all(4096, 7392, 8, 4, ep)),
        ("all_reduce DP128x8 hierarchical (first call)", lambda: net.all_reduce(1e9, CommGroup(128, 8))),
        ("reduce_scatter 16 nodes x1 ring (first call)", lambda: net.reduce_scatter(1e9, CommGroup(16, 1))),
    ]
    for label, fn in cases:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        cached = _best(lambda: [fn() for _ in range(1000)], repeat=3) / 1000
        print(f"price {label:45s}: first {first * 1e3:8.1f} ms, cached {cached * 1e6:6.2f} us/call")


if __name__ == "__main__":
    bench_builds()
    bench_network()
