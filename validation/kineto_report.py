"""Text tables of a Kineto calibration (`kineto_calibrate.calibrate`) and a step comparison (`compare_step`)."""

from __future__ import annotations


def _pct(v) -> str:
    return "   n/a" if v is None else f"{v:+6.1f}%"


def render_calibration(report: dict) -> str:
    """Per class: measured and modelled ms per step under the base and the derived profile, with residuals."""
    before, after = report["residuals_base"], report["residuals_derived"]
    rec = report["derivation"]
    lines = [f"{report['model']}: {report['layout']}",
             f"measured step {report['measured']['step_time_ms']:.3f} ms over {len(report['measured']['ranks'])} "
             f"rank(s); {rec['microbatches']} micro-batches per rank and step",
             f"{'class':<22}{'measured ms':>12}{'base ms':>11}{'residual':>10}{'derived ms':>12}{'residual':>10}"]
    for c, b in before.items():
        a = after.get(c, {})
        lines.append(f"{c:<22}{b['measured_ms']:>12.3f}{b['modelled_ms']:>11.3f}{_pct(b['residual_pct']):>10}"
                     f"{a.get('modelled_ms', 0.0):>12.3f}{_pct(a.get('residual_pct')):>10}")
    ratios = ", ".join(f"{c} {r:.3f}" for c, r in rec["time_ratio"].items())
    lines.append(f"derived: {', '.join(rec['derived']) or 'nothing'} (measured / modelled: {ratios or '-'}); "
                 f"kept from the base: {', '.join(rec['kept_from_base']) or 'nothing'}")
    if rec["capped"]:
        lines.append(f"capped at the peak: {', '.join(rec['capped'])}")
    launch = rec.get("launch")
    if launch and launch["modelled_ops"]:
        measured = sum(launch["measured_kernels"].values())
        lines.append(f"kernels per step: {measured:g} measured against {sum(launch['modelled_kernels'].values()):g} "
                     f"of our ops at data/launch.toml's counts; the profile's kernels per op (launch gaps): "
                     + ", ".join(f"{k} {n:.2f}" for k, n in report["kernels_per_op"].items()))
        gap, queued = report["measured"].get("queued_gap_median_us"), report["measured"].get("queued_kernels", 0)
        lines.append(f"launch gap: {gap:.2f} us, the median over {queued} queued compute kernels" if gap is not None
                     else f"launch gap: {queued} queued compute kernels, too few; data/launch.toml's stays")
        if launch["unmatched_kernels"]:
            lines.append("no op of ours in their class (left out): "
                         + ", ".join(f"{c} {n:g}" for c, n in launch["unmatched_kernels"].items()))
    return "\n".join(lines)


def render_comparison(result: dict) -> str:
    """The simulated step beside the measured one, and per-class busy time."""
    lines = [f"{result['model']}: {result['layout']} (profile {result['profile']})",
             f"step: measured {result['measured_step_ms']:.3f} ms, simulated {result['simulated_step_ms']:.3f} ms "
             f"({result['step_error_pct']:+.1f}%)",
             f"{'class':<22}{'measured ms':>12}{'modelled ms':>12}{'residual ms':>12}{'residual':>10}"]
    for c, r in result["classes"].items():
        lines.append(f"{c:<22}{r['measured_ms']:>12.3f}{r['modelled_ms']:>12.3f}{r['residual_ms']:>+12.3f}"
                     f"{_pct(r['residual_pct']):>10}")
    return "\n".join(lines)
