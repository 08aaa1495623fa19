"""Gantt chart of a timeline: one lane per rank (and per stream), one cell per span.

Two colour families that never share a hue: pipeline instructions (F blue, B green, W purple, BW teal, the
data-parallel tail dark grey) and op classes (compute warm: attention orange, MLP red, embedding tan, head brown,
MTP olive; communication pink/magenta: dispatch, combine, TP/CP/DP collectives).  An overlapped F&B pair is
drawn as one bordered cell, forward half on top and backward half below (the DualPipe README's "shared black
border").  Spans of DualPipe's second direction (``Span.args`` ``direction``/``b_direction`` = 1) are lighter and
hatched.  Cells carry their micro-batch number when wide enough.  The file type follows the suffix (.png, .svg,
.pdf).

A timeline with op-level spans (a simulated step: "pipeline", "compute" and "comm" streams) is drawn by default
as two panels of at most 2,000 px width: the whole step with one summary lane per rank (its pipeline
instructions and its data-parallel tail), and below it a detail window of a few instructions with every lane of
every rank.  ``window="all"`` draws every span of every lane over the whole step in one panel instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from gpuhours.simulator.timeline import Span  # noqa: E402

# Pipeline instructions (a cool family) ...
COLOURS = {"F": "#3B6FB6", "B": "#4E9A52", "W": "#8566B8", "BW": "#2A8C9E", "FB": "#3B6FB6", "tail": "#3D3D3D"}
INSTRUCTION_KINDS = ("F", "B", "W", "BW", "FB", "tail")
# ... and op classes of a simulated step (segment names without their phase): compute warm, communication pink.
COMPUTE_COLOURS = {"attn": "#F28E2B", "mlp": "#D62728", "embed": "#C49C94", "head": "#8C564B", "mtp": "#BCBD22"}
COMM_COLOURS = {"dispatch": "#E377C2", "combine": "#F7B6D2", "tp": "#A0306E", "cp": "#C9739B", "dp": "#7B1E4D"}
OP_COLOURS = {**COMPUTE_COLOURS, **COMM_COLOURS}
OTHER = "#A0A0A0"
LABELS = {"F": "F (forward)", "B": "B (input grad)", "W": "W (weight grad)", "BW": "BW (full backward)",
          "tail": "data-parallel tail (grad sync + optimizer)", "attn": "attention", "mlp": "MLP / MoE experts",
          "embed": "embedding", "head": "output head", "mtp": "MTP", "dispatch": "EP dispatch",
          "combine": "EP combine", "tp": "TP collectives", "cp": "CP collectives", "dp": "DP / ZeRO collectives"}


def op_class(kind: str) -> str:
    """An op kind's class: its leading word without digits ("mtp0.head" -> mtp, "tp.all_gather" -> tp)."""
    return kind.split(".")[0].rstrip("0123456789")


def colour_of(kind: str) -> str:
    """Instruction kinds by name; op kinds by their class."""
    if kind in COLOURS:
        return COLOURS[kind]
    return OP_COLOURS.get(op_class(kind), OTHER)


UNIT_SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "units": 1.0}
SUFFIXES = (".png", ".svg", ".pdf")
DPI = 110
MAX_WIDTH_IN = 18.0       # 1,980 px at DPI: the default chart's width limit (2,000 px)
DEFAULT_WINDOW = 4        # instructions of rank 0 in the detail window
FULL_MAX_WIDTH_IN = 40.0  # window="all": grows with the spans per rank up to 4,400 px


def _lighten(hex_colour: str, amount: float = 0.55) -> tuple[float, float, float]:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _rgb(colour) -> tuple | str:
    return "none" if colour == "none" else to_rgba(colour)


def _style(kind: str, direction: int) -> dict:
    colour = colour_of(kind)
    if kind == "tail":
        return {"facecolor": colour, "hatch": "xx", "edgecolor": "#9A9A9A"}
    if kind not in COLOURS:  # op-level cells are thin: no white borders, or they would wash out
        return {"facecolor": colour, "edgecolor": "none"}
    if direction:
        return {"facecolor": _lighten(colour), "hatch": "///", "edgecolor": "white"}
    return {"facecolor": colour, "edgecolor": "white"}


def _is_detail(spans: Sequence[Span]) -> bool:
    """Op-level spans present (a simulated step), not only pipeline instructions (a unit-cost schedule)."""
    return any(s.kind not in COLOURS for s in spans)


def detail_window(spans: Sequence[Span], n: int) -> tuple[float, float]:
    """The detail window in the spans' time: `n` consecutive pipeline instructions of the lowest rank, from its
    first overlapped F&B pair (DualPipe's steady state) or, without pairs, from its first instruction."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"window = {n!r}: expected 'all' or an integer >= 1 (instructions in the detail window)")
    instructions = [s for s in spans if s.kind in COLOURS and s.kind != "tail"]
    if not instructions:
        return min(s.start for s in spans), max(s.end for s in spans)
    rank = min(s.rank for s in instructions)
    own = sorted((s for s in instructions if s.rank == rank), key=lambda s: s.start)
    first = next((i for i, s in enumerate(own) if s.kind == "FB"), 0)
    first = min(first, max(0, len(own) - n))  # a short program: the last n instructions
    chosen = own[first:first + n]
    return chosen[0].start, chosen[-1].end


def draw_gantt(spans: Iterable[Span], path: str | Path, title: str = "", streams: Sequence[str] = ("compute",),
               unit: str = "s", window: int | str | None = None, note: str = "") -> Path:
    """Draw ``spans`` of the given ``streams`` and write the figure to ``path``; returns the path.

    ``unit`` labels the time axis and scales seconds ("s", "ms", "us"; "units" for unit-cost timelines).
    ``window``: None (default) draws a timeline with op-level spans as an overview of the whole step (one
    summary lane per rank: its pipeline instructions and data-parallel tail) above a detail window of
    `DEFAULT_WINDOW` instructions with every lane, and a timeline of instructions only (a unit-cost schedule)
    whole; an integer N sets the detail window to N instructions; "all" draws every span of every lane over the
    whole timeline in one panel.  ``note`` is printed under the title (e.g. where the full-detail trace is).
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"path suffix must be one of {SUFFIXES}, got {path.suffix!r}")
    if unit not in UNIT_SCALE:
        raise ValueError(f"unit must be one of {tuple(UNIT_SCALE)}, got {unit!r}")
    if not streams:
        raise ValueError("streams must name at least one stream, got ()")
    if window is not None and window != "all" and (isinstance(window, bool) or not isinstance(window, int)
                                                   or window < 1):
        raise ValueError(f"window = {window!r}: expected None, 'all' or an integer >= 1")
    chosen = [s for s in spans if s.stream in streams]
    if not chosen:
        raise ValueError(f"no spans on streams {tuple(streams)}")
    scale = UNIT_SCALE[unit]
    split = window != "all" and _is_detail(chosen) and len(streams) > 1 and (
        any(s.kind in COLOURS for s in chosen))
    if split:
        fig = _draw_split(chosen, streams, scale, unit, title, note, window or DEFAULT_WINDOW)
    else:
        fig = _draw_whole(chosen, streams, scale, unit, title, note)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- layouts

def _draw_whole(chosen: list[Span], streams: Sequence[str], scale: float, unit: str, title: str,
                note: str):
    """Every span of every lane over the whole timeline (a unit-cost schedule, or window="all")."""
    ranks = sorted({s.rank for s in chosen})
    lanes = [(r, st) for r in ranks for st in streams]
    per_rank = len(chosen) / max(len(ranks), 1)
    cap = FULL_MAX_WIDTH_IN if _is_detail(chosen) else MAX_WIDTH_IN
    width = min(max(10.0, 0.07 * per_rank * 2.2 + 6.0), cap)
    height = 1.5 + 0.42 * len(lanes)
    fig, ax = plt.subplots(figsize=(width, height), dpi=DPI)
    t0 = min(s.start for s in chosen) * scale
    t1 = max(s.end for s in chosen) * scale
    _draw_lanes(ax, chosen, lanes, scale, (t0, t1), width * DPI * 0.86,
                [f"rank {r}" if len(streams) == 1 else f"rank {r} {st}" for r, st in lanes])
    ax.set_xlabel(f"time [{unit}]")
    _finish(fig, chosen, title, note, height)
    return fig


def _draw_split(chosen: list[Span], streams: Sequence[str], scale: float, unit: str, title: str, note: str,
                n: int):
    """Overview of the whole step (one summary lane per rank) over a detail window with every lane."""
    ranks = sorted({s.rank for s in chosen})
    summary_stream = next((st for st in streams if any(s.stream == st and s.kind in COLOURS for s in chosen)),
                          streams[0])
    summary = [s for s in chosen if s.stream == summary_stream and s.kind in COLOURS]
    w0, w1 = detail_window(chosen, n)
    lanes = [(r, st) for r in ranks for st in streams]
    in_window = [s for s in chosen if s.end > w0 and s.start < w1]

    width = MAX_WIDTH_IN
    top_h, bottom_h = 0.26 * len(ranks) + 0.6, 0.19 * len(lanes) + 0.6
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(width, top_h + bottom_h + 2.4), dpi=DPI,
                                   gridspec_kw={"height_ratios": [top_h, bottom_h]})
    t0 = min(s.start for s in chosen) * scale
    t1 = max(s.end for s in chosen) * scale
    summary_lanes = [(r, summary_stream) for r in ranks]
    _draw_lanes(ax0, summary, summary_lanes, scale, (t0, t1), width * DPI * 0.86,
                [f"rank {r}" for r in ranks], labels=False)
    ax0.add_patch(Rectangle((w0 * scale, 0), (w1 - w0) * scale, len(ranks), facecolor=(1.0, 0.85, 0.0, 0.35),
                            edgecolor="#D00000", linewidth=1.6, zorder=5))
    ax0.set_title("whole step: pipeline instructions of each rank (red box: the detail window below)",
                  fontsize=9, loc="left")
    ax0.set_xlabel(f"time [{unit}]", fontsize=8)

    _draw_lanes(ax1, in_window, lanes, scale, (w0 * scale, w1 * scale), width * DPI * 0.86,
                [f"rank {r} {st}" for r, st in lanes], font=6)
    ax1.set_title(f"detail window: {n} instruction{'s' if n != 1 else ''} of rank {ranks[0]} from "
                  f"{w0 * scale:.3g} to {w1 * scale:.3g} {unit}: each rank's pipeline, compute and "
                  f"communication lanes", fontsize=9, loc="left")
    ax1.set_xlabel(f"time [{unit}]", fontsize=8)
    _finish(fig, chosen, title, note, top_h + bottom_h + 2.4)
    return fig


def _finish(fig, chosen: Sequence[Span], title: str, note: str, height_in: float) -> None:
    """Title and note on top, the legend (one row per colour family) under them, the panels below."""
    lines = [t for t in (title, note) if t]
    y = 1.0 - 0.12 / height_in
    for i, text in enumerate(lines):
        fig.text(0.5, y, text, ha="center", va="top", fontsize=10 if i == 0 else 8,
                 style="normal" if i == 0 else "italic")
        y -= (0.24 if i == 0 else 0.2) / height_in
    handles, ncol = _legend_handles(chosen)
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.01, y), ncol=ncol, fontsize=8,
                   frameon=False, handlelength=1.6, columnspacing=1.2)
        y -= (0.22 * (len(handles) // ncol) + 0.1) / height_in
    fig.tight_layout(rect=(0, 0, 1, y))


def _draw_lanes(ax, spans: Sequence[Span], lanes: list[tuple], scale: float, xlim: tuple[float, float],
                ax_width_px: float, ylabels: list[str], labels: bool = True, font: int | None = None) -> None:
    lane_of = {lane: i for i, lane in enumerate(lanes)}
    span_t = max(xlim[1] - xlim[0], 1e-30)
    px_per_t = ax_width_px / span_t
    font = font or (7 if len(lanes) <= 20 else 6)
    # Cells are batched into one PolyCollection per style: a simulated step has tens of thousands of them.
    buckets: dict[tuple, list] = {}

    def cell(x: float, y: float, w: float, h: float, style: dict, linewidth: float) -> None:
        key = (_rgb(style.get("facecolor", "none")), style.get("hatch"), style.get("edgecolor", "none"), linewidth)
        buckets.setdefault(key, []).append(((x, y), (x + w, y), (x + w, y + h), (x, y + h)))

    for s in spans:
        lane = lane_of.get((s.rank, s.stream))
        if lane is None:
            continue
        y = len(lanes) - 1 - lane
        x, w = s.start * scale, (s.end - s.start) * scale
        args = dict(s.args)
        direction = int(args.get("direction", 0) or 0)
        thin = w * px_per_t < 3  # borders would hide a cell this narrow
        if s.kind == "FB":
            b_dir = int(args.get("b_direction", direction) or 0)
            cell(x, y + 0.5, w, 0.4, _style("F", direction), 0.3)
            cell(x, y + 0.1, w, 0.4, _style("B", b_dir), 0.3)
            if not thin:
                cell(x, y + 0.1, w, 0.8, {"edgecolor": "black"}, 0.9)
            marks = [(y + 0.7, s.microbatch), (y + 0.3, args.get("b_microbatch"))]
        else:
            style = _style(s.kind, direction)
            if thin and style.get("edgecolor") == "white":
                style = {**style, "edgecolor": "none"}
            cell(x, y + 0.1, w, 0.8, style, 0.4)
            # Op-level cells carry no micro-batch number: their pipeline lane shows it.
            marks = [(y + 0.5, s.microbatch)] if s.kind in COLOURS else []
        if s.kind == "tail" and w * px_per_t >= 40:
            marks = [(y + 0.5, "DP tail")]
        for ly, mb in marks if labels else ():
            if mb is None:
                continue
            text = str(mb)
            if w * px_per_t >= 5.5 * len(text) + 3:
                ax.text(x + w / 2, ly, text, ha="center", va="center", fontsize=font if s.kind != "FB" else font - 1,
                        color="white" if s.kind == "tail" else "black", clip_on=True)
    for (face, hatch, edge, linewidth), verts in buckets.items():
        ax.add_collection(PolyCollection(verts, facecolors=face, edgecolors=edge, linewidths=linewidth,
                                         hatch=hatch))
    ax.set_xlim(*xlim)
    ax.set_ylim(0, len(lanes))
    ax.set_yticks([len(lanes) - 1 - i + 0.5 for i in range(len(lanes))])
    ax.set_yticklabels(ylabels, fontsize=8 if len(lanes) <= 24 else 6)
    ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _legend_handles(chosen: Sequence[Span]) -> tuple[list[Patch], int]:
    """Legend entries, one row per colour family (pipeline instructions, compute classes, communication
    classes), ordered for a legend of the returned column count."""
    kinds = {s.kind for s in chosen}
    classes = {op_class(k) for k in kinds if k not in COLOURS}
    rows: list[list[Patch]] = []
    inst = []
    for k in INSTRUCTION_KINDS:
        if k not in kinds:
            continue
        if k == "FB":
            inst.append(Patch(facecolor=COLOURS["F"], edgecolor="black", label="F&B pair (top F, bottom B)"))
        else:
            inst.append(Patch(**_style(k, 0), label=LABELS[k]))
    if any(int(dict(s.args).get("direction", 0) or 0) or int(dict(s.args).get("b_direction", 0) or 0)
           for s in chosen if s.kind in COLOURS):
        inst.append(Patch(facecolor=_lighten("#808080"), hatch="///", edgecolor="white",
                          label="second direction"))
    rows.append(inst)
    compute = [Patch(facecolor=c, label=LABELS.get(k, k)) for k, c in COMPUTE_COLOURS.items() if k in classes]
    comm = [Patch(facecolor=c, label=LABELS.get(k, k)) for k, c in COMM_COLOURS.items() if k in classes]
    if classes - set(OP_COLOURS):
        compute.append(Patch(facecolor=OTHER, label="other op"))
    rows += [compute, comm]
    headers = ["pipeline instructions:", "compute stream:", "communication stream:"]
    handles, ncol = [], max((len(r) for r in rows if r), default=1) + 1
    for header, row in zip(headers, rows):
        if not row:
            continue
        line = [Patch(visible=False, label=header)] + row
        line += [Patch(visible=False, label="")] * (ncol - len(line))
        handles.extend(line)
    n_rows = len(handles) // ncol
    # matplotlib fills legends column by column: transpose so each family reads along one row
    return [handles[r * ncol + c] for c in range(ncol) for r in range(n_rows)], ncol
