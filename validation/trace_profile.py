"""A calibration profile straight from a trace summary: measured kernel time per class or phase, and, given the
FLOPs and peaks, efficiencies (`profile_from_trace`). `validation/calibrate_trace.py` derives the full profile of
DeepSeek's traced pair; this is the generic import of any trace's figures."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Mapping

from gpuhours.validation.trace import COMM_CLASSES, SCHEMA, _ms
from gpuhours.validation.trace_summary import TraceSummary

def _measured_time(summary: TraceSummary, key: str) -> float:
    """Time behind an expected-FLOP key: a class, a phase, or "phase/class" (summed kernel time, s)."""
    if key in summary.classes:
        return summary.classes[key].time
    if key in summary.phases:
        return summary.phases[key].total_kernel_time
    phase, _, op_class = key.rpartition("/")
    if phase in summary.phase_classes and op_class in summary.phase_classes[phase]:
        return summary.phase_classes[phase][op_class].time
    allowed = list(summary.classes) + list(summary.phases) + ["<phase>/<class>"]
    raise ValueError(f"expected_flops: key {key!r} names no measured class or phase; allowed values {allowed}")


def _peak_for(peak_flops: Mapping[str, float], key: str) -> float:
    for candidate in (key, key.rpartition("/")[2], "default"):
        if candidate in peak_flops:
            value = float(peak_flops[candidate])
            if value <= 0:
                raise ValueError(f"peak_flops: {candidate!r} must be positive, got {value}")
            return value
    raise ValueError(f"peak_flops: no entry for {key!r}; give that key, its class, or 'default'")


def profile_from_trace(summary: TraceSummary, expected_flops: dict[str, float] | None = None,
                       peak_flops: dict | None = None, name: str | None = None) -> dict:
    """Calibration profile (schema gpuhours.calibration/1, source "trace") from a trace summary.

    The measured times go to a "trace" section (per class, per phase, per phase and class, comm; ms) and
    the comm kernel times also to the free-form "comm". With `expected_flops` (FLOP; keys: an op class, a
    phase, or "phase/class") and `peak_flops` (FLOP/s; keyed alike, by class, or "default"):
    tflops = flops / time and efficiency = flops / (time * peak), time the summed kernel time of the key;
    attn_fwd / attn_bwd keys fill attention.forward/backward_efficiency (pass the dense BF16 peak).
    What the trace cannot give (GEMM shape points, element-wise bandwidth) is left out, not invented.
    """
    comm: dict[str, dict] = {c: summary.classes[c].to_dict() for c in COMM_CLASSES if c in summary.classes}
    for phase, stats in summary.phase_classes.items():
        per_phase = {c: s.to_dict() for c, s in stats.items() if c in COMM_CLASSES}
        if per_phase:
            comm[phase] = per_phase
    trace_section: dict[str, Any] = {
        "span_ms": _ms(summary.span),
        "event_time_ms": _ms(summary.event_time),
        "stream_busy_ms": {str(s): _ms(t) for s, t in summary.stream_busy.items()},
        "classes": {c: s.to_dict() for c, s in summary.classes.items()},
        "phases": {p: s.to_dict() for p, s in summary.phases.items()},
        "phase_classes": {p: {c: s.to_dict() for c, s in cs.items()} for p, cs in summary.phase_classes.items()},
        "comm": comm,
    }
    software = {"profiler": "PyTorch profiler (Kineto) Chrome trace"}
    if summary.trace_schema_version is not None:
        software["trace_schema_version"] = summary.trace_schema_version
    if summary.backend:
        software["distributed_backend"] = summary.backend
    provenance: dict[str, Any] = {
        "device": summary.device_name,
        "sm_count": None if summary.sm_count is None else int(summary.sm_count),
        "date": datetime.date.today().isoformat(),
        "software": software,
        "method": ("trace import (gpuhours.validation.trace): device events classified by kernel name, "
                   f"attributed to phases by {summary.annotation_source} annotations; times are summed kernel "
                   "durations, busy time the union of intervals per stream"),
        "references": [f"trace file {summary.file_name} ({summary.file_bytes} bytes)"]
                      + ([f"traceName {summary.trace_name}"] if summary.trace_name else []),
    }
    profile: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name or f"trace-{Path(summary.file_name).stem}",
        "source": "trace",
        "provenance": {k: v for k, v in provenance.items() if v is not None},
        "comm": comm,
        "trace": trace_section,
        "notes": (f"Measured on {summary.device_name or 'an unnamed device'}: span {summary.span * 1e3:.1f} ms, "
                  f"{summary.event_count} device events; rank {summary.rank} of {summary.world_size}."),
    }
    if expected_flops:
        if not peak_flops:
            raise ValueError("peak_flops: required (FLOP/s per key, class or 'default') when expected_flops is given")
        efficiency = {}
        for key, flops in expected_flops.items():
            time = _measured_time(summary, key)
            peak = _peak_for(peak_flops, key)
            efficiency[key] = {
                "flops": float(flops), "time_ms": _ms(time), "peak_flops": peak,
                "tflops": float(flops) / time * 1e-12 if time > 0 else None,
                "efficiency": float(flops) / (time * peak) if time > 0 else None}
        trace_section["efficiency"] = efficiency
        attention = {f"{direction}_efficiency": efficiency[key]["efficiency"]
                     for direction, key in (("forward", "attn_fwd"), ("backward", "attn_bwd"))
                     if key in efficiency and efficiency[key]["efficiency"] is not None}
        if attention:
            attention["provenance"] = f"trace {summary.file_name}: summed attention-kernel time vs expected FLOPs"
            profile["attention"] = attention
    return profile
