"""The accuracy suite as a terminal table, a markdown page and a predicted-against-measured scatter."""

from __future__ import annotations

from pathlib import Path

from gpuhours.validation.accuracy import Row, summarise

_UNITS = {"step_time_s": "s/step", "tflops_per_gpu": "TFLOP/s/GPU", "tokens_per_s_per_gpu": "tok/s/GPU",
          "gpu_hours": "GPU-h", "traced_pair_ms": "ms"}
_TIME_UNITS = {"step_time_s": "s", "tflops_per_gpu": "s", "tokens_per_s_per_gpu": "s", "gpu_hours": "GPU-h",
               "traced_pair_ms": "ms"}
_MARKERS = "osD^v<>ph*"


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1e5:
        return f"{x / 1e6:.3f}M"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def render_table(rows: list[Row]) -> str:
    """One line a row, then the means (calibration cases marked and left out)."""
    width = max(len(r.key) for r in rows)
    lines = [f"{'case @ profile':<{width}}  {'measured':>16}  {'predicted':>16}  {'error':>7}  gaps"]
    for r in rows:
        unit = _UNITS[r.metric]
        mark = "  [calibration case: left out of the means]" if r.calibration_case else ""
        gaps = "; ".join(r.gaps) if r.gaps else ""
        if r.not_simulated:
            gaps = f"not simulated: {r.not_simulated}"
        lines.append(f"{r.key:<{width}}  {_fmt(r.measured) + ' ' + unit:>16}  "
                     f"{_fmt(r.predicted) + ' ' + unit:>16}  {_pct(r.error):>7}  {gaps}{mark}")
    s = summarise(rows)
    lines.append("")
    lines.append("error = predicted / measured - 1 of the step time (run: GPU-hours; traced pair: span)")
    for name, g in s["groups"].items():
        lines.append(f"  {name:<20} mean |error| {_pct(g['mae']).lstrip('+'):>7}  mean error {_pct(g['mean_error']):>7}"
                     f"  over {g['cases']} predictions, {g['within_10pct']} within 10%")
    o, f = s["overall"], s["fully_expressed"]
    lines.append(f"  {'all predictions':<20} mean |error| {_pct(o['mae']).lstrip('+'):>7}  mean error "
                 f"{_pct(o['mean_error']):>7}  over {o['cases']} predictions, {o['within_10pct']} within 10%")
    lines.append(f"  {'fully expressed':<20} mean |error| {_pct(f['mae']).lstrip('+'):>7}  over {f['cases']} "
                 f"predictions with no gap")
    lines.append(f"  {'mean of groups':<20} mean |error| {_pct(s['mean_of_groups']).lstrip('+'):>7}  (each source "
                 f"weighs the same)")
    lines.append(f"cannot be fully expressed: {s['with_gaps']} of {s['rows'] - len(s['calibration_cases'])} "
                 f"predictions (not simulated at all: {s['not_simulated']}); calibration cases: "
                 f"{', '.join(s['calibration_cases']) or 'none'}")
    return "\n".join(lines)


def write_scatter(rows: list[Row], path: Path) -> Path:
    """Left: predicted against measured step time, log-log, y = x and +-10% bands, one marker shape per group.
    Right: every row's error by group (runs and the traced pair too), calibration cases hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1.6, 1]})
    groups = sorted({r.group for r in rows})
    style = {g: (_MARKERS[i % len(_MARKERS)], f"C{i}") for i, g in enumerate(groups)}
    done = [r for r in rows if r.predicted_time is not None]
    steps = [r for r in done if r.metric in ("step_time_s", "tflops_per_gpu", "tokens_per_s_per_gpu")]
    if steps:
        lo = min(min(r.measured_time, r.predicted_time) for r in steps) / 1.3
        hi = max(max(r.measured_time, r.predicted_time) for r in steps) * 1.3
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="y = x")
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.85", label="±10%")
        for g in groups:
            sel = [r for r in steps if r.group == g]
            if sel:
                marker, colour = style[g]
                ax.scatter([r.measured_time for r in sel], [r.predicted_time for r in sel], marker=marker, s=42,
                           color=colour, label=g)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured step time (s)",
               ylabel="predicted step time (s)")
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
        ax.legend(fontsize=8, loc="upper left")
    ax_err.axvspan(-10, 10, color="0.85")
    ax_err.axvline(0, color="black", lw=1)
    for y, g in enumerate(groups):
        marker, colour = style[g]
        for r in (r for r in done if r.group == g):
            ax_err.scatter(r.error * 100, y, marker=marker, s=42, color="none" if r.calibration_case else colour,
                           edgecolors=colour)
    ax_err.set_yticks(range(len(groups)), groups, fontsize=8)
    ax_err.set_xlabel("error, % (predicted / measured - 1; hollow: calibration case)")
    ax_err.grid(True, axis="x", lw=0.3, alpha=0.5)
    fig.suptitle("gpuhours accuracy suite: predicted against measured")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_page(rows: list[Row], cases, out: Path, title_note: str = "") -> Path:
    """accuracy.md and accuracy.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_scatter(rows, out / "accuracy.png")
    by_name = {c.name: c for c in cases}
    s = summarise(rows)
    md = ["# Accuracy suite", "",
          "Published, measured training runs simulated as published (`gpuhours accuracy`). Error is predicted / "
          "measured − 1 of the step time (a TFLOP/s figure is turned into the step time it implies with the "
          "source's own FLOP formula), of the run's GPU-hours, or of the traced pair's span: positive means "
          "gpuhours is slower than the measurement. A row run under a profile calibrated on the same model is a "
          "*calibration case*: shown, and left out of every mean." + (f" {title_note}" if title_note else ""), "",
          "![predicted against measured](accuracy.png)", "",
          "## Summary", "", "| group | predictions | mean abs. error | mean error | within 10% |",
          "|---|---:|---:|---:|---:|"]
    for name, g in list(s["groups"].items()) + [("**all**", s["overall"]), ("fully expressed", s["fully_expressed"])]:
        md.append(f"| {name} | {g['cases']} | {_pct(g['mae']).lstrip('+')} | {_pct(g['mean_error'])} | "
                  f"{g['within_10pct']} |")
    md.append(f"| mean of groups (each source weighs the same) | {len(s['groups'])} groups | "
              f"{_pct(s['mean_of_groups']).lstrip('+')} | | |")
    md += ["", f"Predictions the simulator cannot fully express: {s['with_gaps']} (not simulated at all: "
           f"{s['not_simulated']}). Calibration cases: {', '.join(s['calibration_cases']) or 'none'}.", "",
           "## Cases", "", "| case | profile | measured | predicted | error | time measured → predicted | "
           "could not express |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        unit, tunit = _UNITS[r.metric], _TIME_UNITS[r.metric]
        gaps = "; ".join(r.gaps) or ("not simulated: " + r.not_simulated if r.not_simulated else "")
        calib = " (calibration case)" if r.calibration_case else ""
        md.append(f"| {r.case} | {r.profile}{calib} | {_fmt(r.measured)} {unit} | {_fmt(r.predicted)} {unit} | "
                  f"{_pct(r.error)} | {_fmt(r.measured_time)} → {_fmt(r.predicted_time)} {tunit} | {gaps} |")
    md += ["", "## Sources and assumptions", ""]
    seen = set()
    for c in cases:
        if c.file in seen or c.name not in {r.case for r in rows}:
            continue
        seen.add(c.file)
        src = c.source
        md += [f"### {src['title']} (`validation/cases/{c.file}`)", "",
               f"{src.get('authors', '')}. {src['reference']}. {src['where']}.", "",
               f"Hardware: {src.get('hardware', 'see the case file')}. Measured: {src.get('measures', '')}.", ""]
        if c.assumptions:
            md += ["Assumptions, chosen before any case was simulated:", ""]
            md += [f"- {a}" for a in c.assumptions]
            md.append("")
        warned = sorted({w for r in rows if r.case in {x.name for x in cases if x.file == c.file}
                         for w in r.warnings})
        if warned:
            md += ["Where these runs leave what their calibration was measured on (`warning:` lines):", ""]
            md += [f"- {w}" for w in warned]
            md.append("")
        unfit = [r.key for r in rows if r.fits_memory is False and any(r.case == x.name and x.file == c.file
                                                                       for x in cases)]
        if unfit:
            md += [f"Over the GPU's memory in gpuhours' memory model (estimated anyway): {', '.join(unfit)}.", ""]
        md += ["Rows as printed:", ""]
        md += [f"- `{x.name}`: {x.measured.printed}" for x in cases if x.file == c.file and x.name in by_name]
        md.append("")
    page = out / "accuracy.md"
    page.write_text("\n".join(md) + "\n")
    return page
