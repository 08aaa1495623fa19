"""Gantt chart of a timeline: one lane per rank (and per stream), one cell per span.

Colours by kind (F, B, W, BW, FB; other op kinds grey); an overlapped F&B pair is drawn as one bordered cell,
forward half on top and backward half below (the DualPipe README's "shared black border"). Spans of DualPipe's
second direction (``Span.args`` ``direction``/``b_direction`` = 1) are lighter and hatched. Cells carry their
micro-batch number when wide enough. The file type follows the suffix (.png, .svg, .pdf).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from gpuhours.simulator.timeline import Span  # noqa: E402

COLOURS = {"F": "#4C8BD6", "B": "#58B368", "W": "#9B7BC8", "BW": "#E8963C", "FB": "#4C8BD6"}
# Op-level kinds of a simulated step (segment names without their phase): compute and communication streams.
OP_COLOURS = {"attn": "#4C8BD6", "mlp": "#58B368", "embed": "#8C6D31", "head": "#D64C4C", "mtp": "#C77CB5",
              "dispatch": "#E8963C", "combine": "#F2C14E", "tp": "#7F7F7F"}
OTHER = "#A0A0A0"


def colour_of(kind: str) -> str:
    """Instruction kinds by name; op kinds by their leading word ("mtp0.head" -> mtp, "tp.all_gather" -> tp)."""
    if kind in COLOURS:
        return COLOURS[kind]
    return OP_COLOURS.get(kind.split(".")[0].rstrip("0123456789"), OTHER)
UNIT_SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "units": 1.0}
SUFFIXES = (".png", ".svg", ".pdf")


def _lighten(hex_colour: str, amount: float = 0.55) -> tuple[float, float, float]:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _rgb(colour) -> tuple | str:
    return "none" if colour == "none" else to_rgba(colour)


def _style(kind: str, direction: int) -> dict:
    colour = colour_of(kind)
    if kind not in COLOURS:  # op-level cells are thin: no white borders, or they would wash out
        return {"facecolor": colour, "edgecolor": "none"}
    if direction:
        return {"facecolor": _lighten(colour), "hatch": "///", "edgecolor": "white"}
    return {"facecolor": colour, "edgecolor": "white"}


def draw_gantt(spans: Iterable[Span], path: str | Path, title: str = "", streams: Sequence[str] = ("compute",),
               unit: str = "s") -> Path:
    """Draw ``spans`` of the given ``streams`` and write the figure to ``path``; returns the path.

    ``unit`` labels the time axis and scales seconds ("s", "ms", "us"; "units" for unit-cost timelines).
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"path suffix must be one of {SUFFIXES}, got {path.suffix!r}")
    if unit not in UNIT_SCALE:
        raise ValueError(f"unit must be one of {tuple(UNIT_SCALE)}, got {unit!r}")
    if not streams:
        raise ValueError("streams must name at least one stream, got ()")
    scale = UNIT_SCALE[unit]
    chosen = [s for s in spans if s.stream in streams]
    if not chosen:
        raise ValueError(f"no spans on streams {tuple(streams)}")
    ranks = sorted({s.rank for s in chosen})
    lanes = [(r, st) for r in ranks for st in streams]
    lane_of = {lane: i for i, lane in enumerate(lanes)}
    t0 = min(s.start for s in chosen) * scale
    t1 = max(s.end for s in chosen) * scale
    span_t = max(t1 - t0, 1e-30)

    width = min(max(10.0, 0.07 * len(chosen) / max(len(ranks), 1) * 2.2 + 6.0), 40.0)
    height = 1.2 + 0.42 * len(lanes)
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    ax_width_px = width * 110 * 0.86
    px_per_t = ax_width_px / span_t
    font = 7 if len(lanes) <= 20 else 6

    # Cells are batched into one PolyCollection per style: a simulated step has tens of thousands of them.
    buckets: dict[tuple, list] = {}

    def cell(x: float, y: float, w: float, h: float, style: dict, linewidth: float) -> None:
        key = (_rgb(style.get("facecolor", "none")), style.get("hatch"), style.get("edgecolor", "none"), linewidth)
        buckets.setdefault(key, []).append(((x, y), (x + w, y), (x + w, y + h), (x, y + h)))

    for s in chosen:
        y = len(lanes) - 1 - lane_of[(s.rank, s.stream)]
        x, w = s.start * scale, (s.end - s.start) * scale
        args = dict(s.args)
        direction = int(args.get("direction", 0) or 0)
        if s.kind == "FB":
            b_dir = int(args.get("b_direction", direction) or 0)
            cell(x, y + 0.5, w, 0.4, _style("F", direction), 0.3)
            cell(x, y + 0.1, w, 0.4, _style("B", b_dir), 0.3)
            cell(x, y + 0.1, w, 0.8, {"edgecolor": "black"}, 0.9)
            labels = [(y + 0.7, s.microbatch), (y + 0.3, args.get("b_microbatch"))]
        else:
            cell(x, y + 0.1, w, 0.8, _style(s.kind, direction), 0.4)
            # Op-level cells of a simulated step carry no micro-batch number: their pipeline lane shows it.
            labels = [(y + 0.5, s.microbatch)] if s.kind in COLOURS else []
        for ly, mb in labels:
            if mb is None:
                continue
            text = str(mb)
            if w * px_per_t >= 5.5 * len(text) + 3:
                ax.text(x + w / 2, ly, text, ha="center", va="center", fontsize=font if s.kind != "FB" else font - 1,
                        color="black", clip_on=True)
    for (face, hatch, edge, linewidth), verts in buckets.items():
        ax.add_collection(PolyCollection(verts, facecolors=face, edgecolors=edge, linewidths=linewidth,
                                         hatch=hatch))

    ax.set_xlim(t0, t1)
    ax.set_ylim(0, len(lanes))
    ax.set_yticks([len(lanes) - 1 - i + 0.5 for i in range(len(lanes))])
    ax.set_yticklabels([f"rank {r}" if len(streams) == 1 else f"rank {r} {st}" for r, st in lanes], fontsize=8)
    ax.set_xlabel(f"time [{unit}]")
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10, pad=20)
    kinds_present = [k for k in ("F", "B", "W", "BW", "FB") if any(s.kind == k for s in chosen)]
    handles = []
    for k in kinds_present:
        if k == "FB":
            handles.append(Patch(facecolor=COLOURS["F"], edgecolor="black", label="F&B (top F, bottom B)"))
        else:
            handles.append(Patch(facecolor=COLOURS[k], label=k))
    op_kinds = {k.split(".")[0].rstrip("0123456789") for k in (s.kind for s in chosen) if k not in COLOURS}
    for k in OP_COLOURS:
        if k in op_kinds:
            handles.append(Patch(facecolor=OP_COLOURS[k], label=k))
    if op_kinds - set(OP_COLOURS):
        handles.append(Patch(facecolor=OTHER, label="other"))
    if any(int(dict(s.args).get("direction", 0) or 0) or int(dict(s.args).get("b_direction", 0) or 0)
           for s in chosen):
        handles.append(Patch(facecolor=_lighten("#808080"), hatch="///", edgecolor="white",
                             label="second direction"))
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), fontsize=8,
              frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
