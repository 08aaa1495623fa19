"""Picture of a small cluster fabric (a few nodes): GPUs, NVSwitch, NICs, leaf/spine/core switches, links.

Layered drawing: NVSwitch at the bottom of each node, its GPUs above, their NICs above them, then leaves,
spines and cores. Link colour = kind (NVLink, PCIe, InfiniBand); width grows with capacity (one direction).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402

from gpuhours.hwmodels.topology import FabricSpec, build_topology, describe  # noqa: E402

MAX_GPUS = 128
_Y = {"nvswitch": 0.0, "gpu": 1.0, "nic": 2.0, "leaf": 3.6, "spine": 5.2, "core": 6.8}
_NODE_STYLE = {
    "gpu": ("#76b900", "s", 90), "nvswitch": ("#3d7a00", "D", 110), "nic": ("#f2a900", "o", 45),
    "leaf": ("#1f5fbf", "h", 260), "spine": ("#7b3fbf", "h", 300), "core": ("#bf3f5f", "h", 320),
}
_EDGE_COLOUR = {"nvlink": "#76b900", "pcie": "#999999", "ib": "#1f5fbf"}


def _positions(graph: nx.DiGraph, gpn: int) -> dict:
    pos = {}
    gap = 1.5
    for n, k in graph.nodes(data="kind"):
        if k in ("gpu", "nic"):
            a = graph.nodes[n]
            pos[n] = (a["node"] * (gpn + gap) + a["local"], _Y[k])
        elif k == "nvswitch":
            pos[n] = (n[1] * (gpn + gap) + (gpn - 1) / 2, _Y[k])
    width = max(x for x, _ in pos.values()) if pos else 1.0
    for kind in ("leaf", "spine", "core"):
        group = sorted(n for n, k in graph.nodes(data="kind") if k == kind)
        for i, n in enumerate(group):
            x = width * (i + 0.5) / len(group)
            pos[n] = (x, _Y[kind])
    return pos


def draw_topology(graph_or_spec: nx.DiGraph | FabricSpec, path: str | Path, title: str | None = None) -> Path:
    """Draw the fabric of a small cluster to ``path`` (PNG); returns the path."""
    graph = build_topology(graph_or_spec) if isinstance(graph_or_spec, FabricSpec) else graph_or_spec
    info = describe(graph)
    if info["gpus"] > MAX_GPUS:
        raise ValueError(f"draw_topology is for small clusters: at most {MAX_GPUS} GPUs, got {info['gpus']}")
    gpn = max(1, info["gpus"] // max(1, info["nodes"]))
    pos = _positions(graph, gpn)
    width = max(x for x, _ in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, width * 0.42)), 6.5))

    caps = [c for _, _, c in graph.edges(data="capacity")]
    cmin, cmax = min(caps), max(caps)
    seen = set()
    for kind, colour in _EDGE_COLOUR.items():
        es, ws = [], []
        for u, v, d in graph.edges(data=True):
            if d["kind"] != kind or (v, u) in seen:
                continue
            seen.add((u, v))
            es.append((u, v))
            frac = 0.0 if cmax == cmin else math.log(d["capacity"] / cmin) / math.log(cmax / cmin)
            ws.append(0.6 + 2.4 * frac)
        if es:
            nx.draw_networkx_edges(graph, pos, edgelist=es, width=ws, edge_color=colour, alpha=0.55,
                                   arrows=False, ax=ax)
    for kind, (colour, marker, size) in _NODE_STYLE.items():
        nodes = [n for n, k in graph.nodes(data="kind") if k == kind]
        if nodes:
            nx.draw_networkx_nodes(graph, pos, nodelist=nodes, node_color=colour, node_shape=marker,
                                   node_size=size, ax=ax, label=f"{kind} ({len(nodes)})", edgecolors="black",
                                   linewidths=0.4)
    for n, k in graph.nodes(data="kind"):
        if k == "nvswitch":
            x, y = pos[n]
            ax.text(x, y - 0.35, f"node {n[1]}", ha="center", va="top", fontsize=8)
        elif k in ("leaf", "spine", "core"):
            x, y = pos[n]
            label = f"P{n[1]}.{n[-1]}" if k != "spine" else f"P{n[1]}.{n[2]}.{n[3]}"
            ax.text(x, y + 0.32, label, ha="center", va="bottom", fontsize=6.5)
    for kind, y in _Y.items():
        if any(k == kind for _, k in graph.nodes(data="kind")):
            ax.text(-1.2, y, kind, ha="right", va="center", fontsize=9, style="italic")
    spec = graph.graph.get("spec")
    if title is None and spec is not None:
        title = (f"{spec.name}: {info['gpus']} GPUs, {info['nodes']} nodes, {spec.planes} plane(s), "
                 f"{'rail-optimised' if spec.rail_optimised else 'top-of-rack'}, {spec.tiers} tiers, "
                 f"oversubscription {spec.oversubscription:g}:1")
    ax.set_title(title or "cluster fabric", fontsize=10)
    handles = [plt.Line2D([], [], color=c, lw=2, label=k) for k, c in _EDGE_COLOUR.items()]
    node_legend = ax.legend(loc="upper left", fontsize=7, frameon=False, markerscale=0.6)
    ax.add_artist(node_legend)
    ax.legend(handles=handles, loc="upper right", fontsize=7, frameon=False, title="links", title_fontsize=7)
    ax.set_xlim(-2.5, width + 0.5)
    ax.set_ylim(-0.9, max(y for _, y in pos.values()) + 1.3)
    ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
