"""Simulated vs measured: the traced DualPipe F&B pair under each calibration source, and the run's GPU-hours.

`compare_traced_pair` simulates exactly the traced case (validation.calibrate_trace: one F&B pair of two
4-layer DeepSeek-V3 MoE chunks, EP64, 4,096 tokens, balanced routing, 20 communication SMs, no PP
communication) through `HardwareCoster` and puts its span, stream busy times and per-phase times beside the
trace's. Measured figures come from the trace file when it is readable, else from the "trace.measured" section
the trace-derived profile stores.

Stream figures: our simulator has one compute stream; the trace has two (tid 7 main, tid 23 weight gradients),
so the simulated compute busy time is set beside their union (and the plain sum is shown too). Per phase, the
trace figure is the phase's busy share (compute) or summed kernel time (all-to-all), see calibrate_trace.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpuhours.validation.external import profile_trace
from gpuhours.hwmodels.calibration import CalibrationProfile, load_profile
from gpuhours.hwmodels.gemm_kernels import with_fp8_gemm_kernels
from gpuhours.simulator.instructions import Instruction
from gpuhours.simulator.scenario import plan_reference
from gpuhours.validation.calibrate_trace import (BACKWARD_STAGE, BASE_PROFILE, FORWARD_STAGE,
                                                 PROFILE_NAME, measure, trace_class_of, traced_coster, traced_ops)
from gpuhours.validation.trace import KNOWN_PHASES, load_trace
from gpuhours.validation.traced_pair import traced_fp8_gemm_kernels

# Published pre-training cost, from the reference plan's [reference] table (workloads/plans/deepseek-v3.toml).
_REFERENCE = plan_reference()
PUBLISHED_GPU_HOURS = float(_REFERENCE["pretraining_gpu_hours"])
PUBLISHED_SOURCE = _REFERENCE["source"]
COMPUTE_PHASES = tuple(p for p in KNOWN_PHASES if p.startswith(("attn", "mlp")))
COMM_PHASES = tuple(p for p in KNOWN_PHASES if p not in COMPUTE_PHASES)


def measured_figures(trace_path: str | Path | None = None) -> dict:
    """The traced pair's figures (ms): from the trace file (given, or where GPUHOURS_PROFILE_TRACE points), else
    from the bundled trace-derived profile."""
    path = Path(trace_path) if trace_path is not None else profile_trace()
    if path is not None and path.is_file():
        m = measure(load_trace(path)).to_dict()
        m["from"] = f"trace file {path.name}"
        return m
    if trace_path is not None:
        raise ValueError(f"trace_path: {str(trace_path)!r} is not a readable file")
    stored = load_profile(PROFILE_NAME).trace
    if not stored or "measured" not in stored:
        raise ValueError(f"trace_path: no trace file and profile {PROFILE_NAME!r} stores no trace.measured")
    return dict(stored["measured"]) | {"from": f"profile {PROFILE_NAME} (trace.measured)"}


def _resolve(profile: CalibrationProfile | str | Path) -> CalibrationProfile:
    """A profile object, bundled name or JSON path; partial profiles are completed from the default."""
    if isinstance(profile, CalibrationProfile):
        return profile
    return load_profile(profile, base=load_profile(BASE_PROFILE))


def compare_traced_pair(profile: CalibrationProfile | str | Path, measured: dict | None = None) -> dict:
    """Simulate the traced F&B pair with `profile`; simulated and measured figures side by side (ms)."""
    profile = with_fp8_gemm_kernels(_resolve(profile), traced_fp8_gemm_kernels())  # the kernels the run used
    measured = measured if measured is not None else measured_figures()
    coster = traced_coster(profile, layers_per_chunk=int(measured.get("layers_per_chunk", 4)))
    pair = Instruction("FB", 0, FORWARD_STAGE, b_microbatch=1, b_stage=BACKWARD_STAGE)
    sim = coster.profile(0, pair)
    phases_sim: dict[str, float] = {}
    for span in sim.spans:
        phases_sim[span.name] = phases_sim.get(span.name, 0.0) + (span.end - span.start) * 1e3
    classes_sim: dict[str, float] = {}
    for op in traced_ops(coster):
        c = trace_class_of(op)
        kernel = coster.compute.duration(op, sm_fraction=coster.sm_fraction)  # the kernels alone
        classes_sim[c] = classes_sim.get(c, 0.0) + kernel * 1e3
        # the gaps between kernels (hwmodels.launch) as a class of their own
        classes_sim["launch_gap"] = classes_sim.get("launch_gap", 0.0) + (coster.op_time(op) - kernel) * 1e3
    mp = measured["phases_ms"]
    phases = {p: {"trace_ms": mp[p]["share"], "trace_kernel_ms": mp[p]["kernel"], "trace_span_ms": mp[p]["span"],
                  "simulated_ms": phases_sim.get(p, 0.0)} for p in KNOWN_PHASES if p in mp}
    busy = measured["stream_busy_ms"]
    return {
        "profile": profile.name,
        "source": profile.source,
        "trace_span_ms": measured["span_ms"],
        "simulated_span_ms": sim.duration * 1e3,
        "streams": {
            "compute": {"trace_ms": measured["compute_union_ms"], "trace_sum_ms": measured["compute_sum_ms"],
                        "trace_per_stream_ms": {s: busy[str(s)] for s in measured["compute_streams"]},
                        "simulated_ms": sim.compute_busy * 1e3},
            "comm": {"trace_ms": measured["comm_busy_ms"],
                     "trace_per_stream_ms": {s: busy[str(s)] for s in measured["comm_streams"]},
                     "simulated_ms": sim.comm_busy * 1e3},
        },
        "phases": phases,
        "classes": {c: {"trace_ms": measured["class_busy_share_ms"].get(c, 0.0), "simulated_ms": t}
                    for c, t in classes_sim.items()}
        # the trace's launch_gap: the time its compute streams are idle inside the span (gaps between kernels and
        # waits for the other streams), the residual the kernel classes do not hold
        | {"launch_gap": {"trace_ms": measured["span_ms"] - measured["compute_union_ms"],
                          "simulated_ms": classes_sim.get("launch_gap", 0.0)}},
        "exposed_comm_ms": (sim.duration - sim.compute_busy) * 1e3,
    }


def gpu_hours(profile: CalibrationProfile | str | Path) -> float:
    """Pre-training GPU-hours of the default DeepSeek-V3 scenario with `profile` as its calibration."""
    from gpuhours.simulator.scenario import estimate, load_scenario
    scenario = load_scenario()
    return estimate(scenario.with_profile(_resolve(profile))).gpu_hours


def compare_all(bench_profile: str | Path | None = None, trace_path: str | Path | None = None,
                with_gpu_hours: bool = True) -> dict:
    """The traced-pair comparison and default GPU-hours for "default-h800", "trace-h800" and, if given, a
    microbenchmark profile JSON (validation/bench.py). JSON-ready; each entry of "sources" carries
    trace_span_ms and simulated_span_ms. A source that fails to load or price is kept with its "error"."""
    measured = measured_figures(trace_path)
    entries: list[tuple[str, str | Path]] = [(BASE_PROFILE, BASE_PROFILE), (PROFILE_NAME, PROFILE_NAME)]
    if bench_profile is not None:
        entries.append((Path(bench_profile).stem, Path(bench_profile)))
    sources: dict[str, dict] = {}
    for label, ref in entries:
        try:
            profile = _resolve(ref)
            entry = compare_traced_pair(profile, measured)
            if with_gpu_hours:
                entry["gpu_hours"] = gpu_hours(profile)
        except ValueError as exc:
            entry = {"profile": str(ref), "error": str(exc), "trace_span_ms": measured["span_ms"],
                     "simulated_span_ms": None}
        sources[label] = entry
    return {
        "case": "one DualPipe F&B pair of two 4-layer DeepSeek-V3 MoE chunks, EP64, 4096 tokens, H800",
        "measured": measured,
        "published_gpu_hours": PUBLISHED_GPU_HOURS,
        "published_source": PUBLISHED_SOURCE,
        "sources": sources,
        "phase_residuals": _own_derivation(measured, "phase_residuals"),
        "launch_counts": _own_derivation(measured, "launch"),
    }


def _own_derivation(measured: dict, key: str) -> dict | None:
    """A record of the bundled trace profile's derivation (its per-class, per-phase residuals,
    `validation.trace_phases`; its kernel counts, `validation.trace_launch`), when it has one and `measured` is the
    pair it was derived from (same span and compute union): another trace's page would otherwise show figures of
    a pair it does not describe."""
    try:
        trace = load_profile(PROFILE_NAME).trace or {}
    except ValueError:
        return None
    own = trace.get("measured", {})
    if any(own.get(k) != measured.get(k) for k in ("span_ms", "compute_union_ms")):
        return None
    return trace.get("derivation", {}).get(key)


if __name__ == "__main__":  # python -m gpuhours.validation.compare [BENCH_PROFILE.json]
    import sys
    print(json.dumps(compare_all(sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
