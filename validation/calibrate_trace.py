"""A calibration profile derived from the measured DualPipe F&B pair (DeepSeek profile-data `train.json`).

The traced case: one overlapped F&B pair of two 4-layer DeepSeek-V3 MoE chunks on one H800 of an EP64 group,
tp 1, one micro-batch of 4,096 tokens, balanced routing, 20 SMs running DeepEP (so compute ran on 112 of 132),
no pipeline-parallel communication. `traced_case` states it as our records; `expected_class_work` sums what our
op decomposition says that pair does, per trace op class.

Measured time per class. Device events on the compute streams (every stream whose busy time is not mostly
all-to-all kernels: tid 7 and the weight-gradient stream tid 23) are given their *busy share*: an event's
duration split evenly among the compute-stream events running at the same instant, so the shares add up to the
union of the compute streams' busy intervals. (Summed durations would count twice the 5 ms in which stream 23's
GEMMs share the SMs with stream 7; our simulator runs one compute stream.)

Trace class -> our ops:
- gemm_fp8      dense FP8 GEMMs, *and* the experts' weight-gradient GEMMs (the trace runs them as per-expert
                dense FP8 GEMMs in mlp(W), partly on stream 23; our decomposition has them as grouped W ops);
- gemm_grouped  grouped FP8 GEMMs of forward and input-gradient passes;
- gemm_bf16     BF16 GEMMs (the router, kept in BF16 by the FP8 recipe);
- attn_fwd / attn_bwd  the attention core forward / backward;
- quant, norm, routing, reduce, elementwise, memcpy, other -> "memory": memory-bound, our element-wise ops.

Derivation (`derive_profile`), with sm_fraction = (132 - 20) / 132 as `simulator.chunks` uses:
- GEMM curves: the base profile's FP8 points divided by a per-table time ratio r (dense, grouped, weight
  gradient), solved so that the simulated time of each trace class equals its target; the weight-gradient ratio
  takes the FP8 GEMMs of the W phases (the experts' included) against the base's weight-gradient curves, the
  dense one the rest of gemm_fp8 (`trace_phases`; a base without weight-gradient curves keeps one ratio for all
  of gemm_fp8, the experts' weight gradients at the grouped one); shape dependence of the base curves is kept.
  Each class's spread over the pair's phases is the profile's ``uncertainty``. The BF16 curve is kept
  as the base has it: the trace's only BF16 GEMMs are the router's (n = 256), no guide to the output head;
  their ratio is recorded in the derivation;
- attention: efficiency = FLOPs / (target time * BF16 peak * sm_fraction);
- element-wise: efficiency = our element-wise bytes / (measured memory-bound time * HBM bandwidth); it carries
  whatever memory-bound work the trace runs that our ops do not describe (ComputeModel applies it to
  element-wise and embedding ops only).
The result reproduces the traced compute-stream busy time by construction; the per-phase split and the span
are not fitted.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from gpuhours.validation.external import TRACE_ABSENT, profile_trace
from gpuhours.hwmodels.calibration import CalibrationProfile, load_profile
from gpuhours.hwmodels.gemm_kernels import SOFTWARE_KEY, traced_family
from gpuhours.hwmodels.wgrad import wgrad_dict
from gpuhours.hwmodels.cluster import ClusterSpec
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.validation.trace import COMM_CLASSES, Trace, load_trace
from gpuhours.validation.trace_comm import kernel_time_ratio, notify_per_call
from gpuhours.validation.trace_launch import kernels_per_op, launch_section, queued_gaps
from gpuhours.validation.trace_phases import is_weight_phase, phase_residuals, scaled_wgrad, weight_phase_time
from gpuhours.validation.trace_summary import attribute_phases, summarise
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import Op
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.validation.traced_pair import (  # noqa: F401 (re-exported: the traced case's names)
    BACKWARD_STAGE, BASE_PROFILE, COMPUTE_CLASSES, FORWARD_STAGE, MEMORY_CLASSES, PROFILE_NAME, TABLES, ClassWork,
    _model, expected_class_work, phase_ops, trace_class_of, traced_case, traced_coster, traced_ops, traced_options)

# -------------------------------------------------------------------------------------------- measured times
def comm_streams(trace: Trace) -> set[int]:
    """Streams whose summed event time is mostly all-to-all kernels (DeepEP's stream)."""
    total: dict[int, float] = {}
    comm: dict[int, float] = {}
    for e in trace.events:
        total[e.stream] = total.get(e.stream, 0.0) + e.duration
        if e.op_class in COMM_CLASSES:
            comm[e.stream] = comm.get(e.stream, 0.0) + e.duration
    return {s for s, t in total.items() if comm.get(s, 0.0) > 0.5 * t}


def busy_shares(trace: Trace, streams: set[int]) -> dict[int, float]:
    """Busy share (s) of each event (index into trace.events) on `streams`: its duration split evenly among the
    events of those streams running at the same time. The shares sum to the union of their busy intervals."""
    idx = [i for i, e in enumerate(trace.events) if e.stream in streams and e.duration > 0]
    points = sorted({t for i in idx for t in (trace.events[i].start, trace.events[i].end)})
    # events start/end on the point grid; sweep the elementary intervals
    starts: dict[float, list[int]] = {}
    ends: dict[float, list[int]] = {}
    for i in idx:
        starts.setdefault(trace.events[i].start, []).append(i)
        ends.setdefault(trace.events[i].end, []).append(i)
    share = {i: 0.0 for i in idx}
    active: set[int] = set()
    for a, b in zip(points, points[1:]):
        active.difference_update(ends.get(a, ()))
        active.update(starts.get(a, ()))
        if active:
            w = (b - a) / len(active)
            for i in active:
                share[i] += w
    return share


@dataclass(frozen=True)
class Measured:
    """Figures of the traced pair (seconds)."""

    span: float
    stream_busy: dict[int, float]
    compute_streams: tuple[int, ...]
    comm_streams: tuple[int, ...]
    compute_union: float                     # union of the compute streams' busy intervals
    classes: dict[str, float]                # busy share on compute streams per trace class (+ "memory")
    phases: dict[str, dict[str, float]]      # phase -> kernel (summed), span, share (compute busy share or comm kernel)
    comm_classes: dict[str, float]           # summed kernel time on comm streams per class
    layers_per_chunk: int
    class_phases: dict[str, dict[str, float]] | None = None  # phase -> class -> compute busy share (`classes` split)
    class_kernels: dict[str, int] | None = None  # kernels on the compute streams per class of `classes`

    def to_dict(self) -> dict:
        ms = lambda s: round(s * 1e3, 6)  # noqa: E731
        return {
            "span_ms": ms(self.span),
            "stream_busy_ms": {str(s): ms(t) for s, t in self.stream_busy.items()},
            "compute_streams": list(self.compute_streams), "comm_streams": list(self.comm_streams),
            "compute_union_ms": ms(self.compute_union),
            "compute_sum_ms": ms(sum(self.stream_busy[s] for s in self.compute_streams)),
            "comm_busy_ms": ms(sum(self.stream_busy[s] for s in self.comm_streams)),
            "class_busy_share_ms": {c: ms(t) for c, t in self.classes.items()},
            "comm_class_ms": {c: ms(t) for c, t in self.comm_classes.items()},
            "phases_ms": {p: {k: ms(v) for k, v in d.items()} for p, d in self.phases.items()},
            "layers_per_chunk": self.layers_per_chunk,
        } | ({"class_phase_share_ms": {p: {c: ms(t) for c, t in d.items()} for p, d in self.class_phases.items()}}
             if self.class_phases else {}) | ({"class_kernels": self.class_kernels} if self.class_kernels else {})


def measure(trace: Trace) -> Measured:
    """Span, stream busy times, per-class busy shares and per-phase figures of a traced F&B pair."""
    summary = summarise(trace)
    comm = comm_streams(trace)
    if not comm:
        raise ValueError(f"trace: {trace.file_name!r} has no stream of all-to-all kernels; not an EP F&B pair")
    compute = set(summary.stream_busy) - comm
    share = busy_shares(trace, compute)
    classes = {c: 0.0 for c in COMPUTE_CLASSES + ("memory",)}
    kernels = dict.fromkeys(classes, 0)
    comm_classes: dict[str, float] = {}
    for i, e in enumerate(trace.events):
        if e.stream in comm:
            comm_classes[e.op_class] = comm_classes.get(e.op_class, 0.0) + e.duration
            continue
        if e.op_class in COMM_CLASSES:
            raise ValueError(f"trace: all-to-all kernel {e.name[:60]!r} on compute stream {e.stream}")
        c = e.op_class if e.op_class in COMPUTE_CLASSES else "memory"  # MEMORY_CLASSES and anything unknown
        classes[c] += share.get(i, 0.0)
        kernels[c] += 1
    owners, annotations, _ = attribute_phases(trace)
    phase_share: dict[str, float] = {}
    class_phases: dict[str, dict[str, float]] = {}
    for i, (e, o) in enumerate(zip(trace.events, owners)):
        if o < 0:
            continue
        name = annotations[o].name
        phase_share[name] = phase_share.get(name, 0.0) + (e.duration if e.stream in comm else share.get(i, 0.0))
        if e.stream not in comm:  # the compute classes of `classes`, split by the annotation that owns them
            c = e.op_class if e.op_class in COMPUTE_CLASSES else "memory"
            by_class = class_phases.setdefault(name, {})
            by_class[c] = by_class.get(c, 0.0) + share.get(i, 0.0)
    phases = {p: {"kernel": s.total_kernel_time, "span": s.total_span, "share": phase_share.get(p, 0.0)}
              for p, s in summary.phases.items()}
    counts = {s.count for p, s in summary.phases.items() if p in ("attn(F)", "mlp(F)", "attn(B)", "mlp(B)")}
    if len(counts) != 1:
        raise ValueError(f"trace: phases attn/mlp (F/B) occur {sorted(counts)} times; expected one count per layer")
    return Measured(
        span=summary.span, stream_busy=dict(summary.stream_busy), compute_streams=tuple(sorted(compute)),
        comm_streams=tuple(sorted(comm)),
        compute_union=sum(share.values()), classes=classes, phases=phases, comm_classes=comm_classes,
        layers_per_chunk=counts.pop(), class_phases=class_phases, class_kernels=kernels)


# ------------------------------------------------------------------------------------------------ derivation
def _scaled(base: CalibrationProfile, ratio: dict[tuple[str, str], float], note: str) -> dict:
    """Base GEMM tables with the points of each scaled table divided by its time ratio."""
    out: dict = {"gemm": {}, "grouped_gemm": {}}
    for section in ("gemm", "grouped_gemm"):
        for dtype, pts in getattr(base, section).items():
            r = ratio.get((section, dtype))
            rows = []
            for q in pts:
                d = {"groups": q.groups} if section == "grouped_gemm" else {}
                d.update({"m": q.m, "n": q.n, "k": q.k})
                if r is None:
                    d.update({"tflops": q.tflops, "provenance": q.provenance or f"base profile {base.name!r}"})
                else:
                    d.update({"tflops": round(q.tflops / r, 3),
                              "provenance": f"{base.name!r} point ({q.tflops} TFLOP/s) / {r:.4f}: {note}"})
                rows.append(d)
            out[section][dtype] = rows
    return out


def _compute_time(cm: ComputeModel, op: Op, sm_fraction: float) -> float:
    """The compute term ComputeModel uses for a GEMM or attention op (no memory term)."""
    return op.flops / (cm.gpu.peak_flops(op.dtype) * cm.efficiency(op) * sm_fraction)


def derive_profile(base: CalibrationProfile, pairs: list[tuple[str, Op]], measured: Measured,
                   cluster: ClusterSpec, comm_sms: int) -> tuple[dict, dict]:
    """(profile sections {gemm, grouped_gemm, wgrad?, attention, elementwise}, derivation record) from our ops of
    the pair with their phases (`traced_pair.phase_ops`) -- see the module docstring."""
    gpu = cluster.gpu
    sm_fraction = (gpu.sms - comm_sms) / gpu.sms
    ops = [op for _, op in pairs]
    work = expected_class_work(ops=ops)
    base_cm = ComputeModel(gpu, base)
    # With a weight-gradient section in the base, the W phases' FP8 GEMMs are a table of their own
    # (`trace_phases`); without one they stay on the dense ratio, as the forward curves price them.
    split = any((base.wgrad or {}).get(kind, {}).get("fp8") for kind in ("gemm", "grouped_gemm"))

    def table(phase: str, op: Op) -> tuple[str, str]:
        if split and op.dtype == "fp8" and is_weight_phase(phase):
            return ("wgrad", "fp8")
        return ("gemm", "bf16") if op.dtype == "bf16" else (op.kind, op.dtype)

    # Base compute time per (trace class, table): the linear system the per-table ratios solve.
    base_t: dict[tuple[str, tuple[str, str]], float] = {}
    for phase, op in pairs:
        if op.kind in ("gemm", "grouped_gemm"):
            key = (trace_class_of(op), table(phase, op))
            base_t[key] = base_t.get(key, 0.0) + _compute_time(base_cm, op, sm_fraction)
    for c in COMPUTE_CLASSES:
        if measured.classes[c] <= 0 or work[c].flops <= 0:
            raise ValueError(f"trace: class {c!r} has measured time {measured.classes[c]:.3g} s and our ops "
                             f"{work[c].flops:.3g} FLOP; both must be positive to calibrate it")
    mem_time, mem_bytes = measured.classes["memory"], work["memory"].bytes
    bw = min(1.0, mem_bytes / (mem_time * gpu.hbm_bw))
    target = {c: measured.classes[c] for c in COMPUTE_CLASSES}
    r_grouped = target["gemm_grouped"] / base_t[("gemm_grouped", ("grouped_gemm", "fp8"))]
    fp8_target, r_wgrad = target["gemm_fp8"], None
    if split:
        w_time = weight_phase_time(measured.class_phases or {}, "gemm_fp8")
        w_base = base_t.get(("gemm_fp8", ("wgrad", "fp8")), 0.0)
        if not (w_time > 0 and w_base > 0):
            raise ValueError(f"trace: the W phases hold {w_time * 1e3:.3g} ms of FP8 GEMMs against our "
                             f"{w_base * 1e3:.3g} ms; both must be positive to calibrate the weight gradients")
        r_wgrad, fp8_target = w_time / w_base, fp8_target - w_time
    r_dense = ((fp8_target - r_grouped * base_t.get(("gemm_fp8", ("grouped_gemm", "fp8")), 0.0))
               / base_t[("gemm_fp8", ("gemm", "fp8"))])
    # The traced BF16 GEMMs are only the router's (n = 256 experts): too far from the BF16 GEMM that matters, the
    # output head (n = 129,280), to rescale the whole BF16 curve. Their ratio is recorded, not applied.
    r_bf16_router = target["gemm_bf16"] / sum(v for (c, _), v in base_t.items() if c == "gemm_bf16")
    r_bf16 = 1.0
    if r_dense <= 0:
        raise ValueError("trace: the expert weight-gradient GEMMs alone exceed the measured gemm_fp8 time")
    ratio = {("gemm", "fp8"): r_dense, ("grouped_gemm", "fp8"): r_grouped, ("gemm", "bf16"): r_bf16}
    att_f = work["attn_fwd"].flops / (target["attn_fwd"] * gpu.peak_flops("bf16") * sm_fraction)
    att_b = work["attn_bwd"].flops / (target["attn_bwd"] * gpu.peak_flops("bf16") * sm_fraction)
    if not (0 < att_f <= 1 and 0 < att_b <= 1):
        raise ValueError(f"trace: attention efficiencies {att_f:.3f}/{att_b:.3f} outside (0, 1]")
    note = "time ratio measured/predicted of its trace class on the traced pair"
    sections = _scaled(base, ratio, note)
    if split:
        sections["wgrad"] = scaled_wgrad(wgrad_dict(base.wgrad), r_wgrad, base.name,
                                         "time ratio measured/predicted of the W phases' FP8 GEMMs on the traced pair")
    sections["attention"] = {"forward_efficiency": att_f, "backward_efficiency": att_b}
    sections["elementwise"] = {"bandwidth_efficiency": bw}
    record = {
        "sm_fraction": sm_fraction,
        "time_ratio": {f"{s}.{d}": r for (s, d), r in ratio.items()} | (
            {"wgrad.fp8": r_wgrad} if split else {}),
        "router_bf16_time_ratio_not_applied": r_bf16_router,
        "elementwise_efficiency": bw,
        "class_target_ms": {c: t * 1e3 for c, t in target.items()} | {
            "memory": mem_bytes / (gpu.hbm_bw * bw) * 1e3},
        "expected_work": {c: {"ops": w.ops, "flops": w.flops, "bytes": w.bytes} for c, w in work.items()},
    }
    return sections, record


_TRACE_NAME = re.compile(r"ep(\d+)_tp(\d+).*?hidden(\d+)_seqlen(\d+)")


def _check_case(trace: Trace, model: ModelSpec, parallel: ParallelSpec, seq_len: int) -> None:
    """The trace's name (e.g. prof_ep64_tp1_varsm_hidden7168_seqlen4096) must agree with the traced case."""
    m = _TRACE_NAME.search(trace.trace_name or "")
    if not m:
        return
    ep, tp, hidden, seq = (int(x) for x in m.groups())
    for field, ours, theirs in (("ep", parallel.ep, ep), ("tp", parallel.tp, tp), ("hidden", model.hidden, hidden),
                                ("seq_len", seq_len, seq)):
        if ours != theirs:
            raise ValueError(f"trace: traceName says {field}={theirs}, the traced case has {ours}")


def profile_from_traced_case(trace_path: str | Path | None = None,
                             base_profile: CalibrationProfile | str = BASE_PROFILE,
                             model: ModelSpec | None = None, name: str = PROFILE_NAME,
                             date: str | None = None) -> CalibrationProfile:
    """The trace-derived CalibrationProfile (source "trace") of the traced F&B pair (see the module docstring)."""
    base = load_profile(base_profile) if isinstance(base_profile, (str, Path)) else base_profile
    model = _model(model)
    if trace_path is None:
        trace_path = profile_trace()
        if trace_path is None:
            raise ValueError(f"trace_path: give the trace file; {TRACE_ABSENT}")
    trace = load_trace(trace_path)
    measured = measure(trace)
    parallel, seq_len, _ = traced_case(model, measured.layers_per_chunk)
    _check_case(trace, model, parallel, seq_len)
    coster = traced_coster(base, model, measured.layers_per_chunk)
    pairs = phase_ops(coster)
    sections, record = derive_profile(base, pairs, measured, coster.cluster, parallel.comm_sms)
    props = trace.device_properties
    info = trace.distributed_info
    date = date or datetime.date.today().isoformat()
    software = {"profiler": "PyTorch profiler (Kineto) Chrome trace",
                "trace_name": trace.trace_name, "trace_schema_version": trace.schema_version,
                "distributed_backend": info.get("backend"), "world_size": info.get("world_size"),
                "rank": info.get("rank"),
                "compute_capability": f"{props.get('computeMajor')}.{props.get('computeMinor')}",
                "base_profile": base.name,
                SOFTWARE_KEY: traced_family(trace.kernel_names())}  # the GEMM kernels it ran, by their names
    n_layers = measured.layers_per_chunk
    ratio = record["time_ratio"]
    d = {
        "schema": "gpuhours.calibration/1",
        "name": name,
        "source": "trace",
        "provenance": {
            "device": str(props.get("name", "unknown")),
            "sm_count": base.sm_count,
            "date": date,
            "software": {k: v for k, v in software.items() if v is not None},
            "method": (
                f"gpuhours.validation.calibrate_trace.profile_from_traced_case: one DualPipe F&B pair of two "
                f"{n_layers}-layer {model.name} MoE chunks (EP{parallel.ep}, TP{parallel.tp}, {seq_len} tokens, "
                f"balanced routing, compute on {parallel.comm_sms and (coster.cluster.gpu.sms - parallel.comm_sms)} "
                f"of {props.get('numSms', coster.cluster.gpu.sms)} SMs); per-class busy share of the compute streams "
                f"vs our ops of that pair; GEMM points = base profile points / measured-over-predicted time ratio "
                f"per table, so they stay {base.sm_count}-SM-equivalent rates (ComputeModel applies sm_fraction); "
                f"attention and element-wise efficiencies from the trace (see trace.derivation)"),
            "references": [
                f"trace file {trace.file_name} ({trace.file_bytes} bytes), deepseek-ai/profile-data, "
                f"device {props.get('name')} with {props.get('numSms')} SMs, imported {date}",
                f"base profile {base.name!r} (source {base.source}, {base.provenance.date})",
            ] + list(base.provenance.references),
        } | ({"peak_tflops": dict(base.provenance.peak_tflops)} if base.provenance.peak_tflops else {}) | {
            "calibrated_on": {"model": model.name, "gpu": coster.cluster.gpu.key,
                              "precision": "fp8" if traced_options().fp8 else "bf16", "fp8_recipe": "blockwise",
                              "attention": model.attention.kind, "moe": model.moe is not None},
            "basis": f"kernel times from DeepSeek's own profiler trace of {model.name} on "
                     f"{coster.cluster.gpu.name.split()[0]}"},
        "gemm": sections["gemm"],
        "grouped_gemm": sections["grouped_gemm"],
        "attention": sections["attention"] | {
            "provenance": f"trace {trace.file_name}: our attention-core FLOPs over the busy share of the "
                          f"attn_fwd / attn_bwd kernels (plus their share of the memory surplus) at "
                          f"{record['sm_fraction']:.4f} of the dense BF16 peak"},
        "elementwise": sections["elementwise"] | {
            "provenance": f"trace {trace.file_name}: our element-wise bytes over {measured.classes['memory'] * 1e3:.2f}"
                          f" ms of memory-bound kernels x HBM bandwidth"},
        "comm": {"a2a_kernel_ms": {c: round(t * 1e3, 6) for c, t in measured.comm_classes.items()},
                 "provenance": f"trace {trace.file_name}: summed kernel time on stream(s) "
                               f"{list(measured.comm_streams)}; read through the notify and kernel time ratio below"}
                | notify_per_call(measured, coster, trace.file_name)
                | kernel_time_ratio(measured, coster, trace.file_name),
        "trace": {"measured": measured.to_dict(), "derivation": record},
        **({"wgrad": sections["wgrad"]} if "wgrad" in sections else {}),
        "notes": [
            "GEMM time ratios (measured / predicted by the base curves on the traced pair): "
            + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items()) + ".",
            f"The trace runs {measured.classes['memory'] * 1e3:.1f} ms of memory-bound kernels (FP8 casts, "
            f"transposes, norms, routing, reductions, copies) against {work_ms(record):.1f} ms our element-wise ops "
            f"need at the HBM peak: the element-wise efficiency carries the difference.",
            "Reproduces the traced compute-stream busy time by construction; span, per-phase split and the "
            "communication stream are not fitted (see validation/compare.py).",
        ],
    }
    uncertainty, residuals = phase_residuals(CalibrationProfile.from_dict(d), pairs, measured.class_phases or {},
                                             coster.cluster, parallel.comm_sms, trace.file_name)
    d["trace"]["derivation"]["phase_residuals"] = residuals
    per_op, d["trace"]["derivation"]["launch"] = kernels_per_op(measured.class_kernels, [(op, 1) for _, op in pairs],
                                                                trace_class_of)
    gaps = queued_gaps((e.stream, e.start, e.end, trace.launches.get(e.correlation, (None, None, None))[2])
                       for e in trace.events if e.stream in measured.compute_streams)
    return CalibrationProfile.from_dict(d | {"uncertainty": uncertainty, "launch": launch_section(
        per_op, d["trace"]["derivation"]["launch"], f"trace {trace.file_name}, compute streams", gaps)})


def work_ms(record: dict) -> float:
    """Our element-wise bytes at the full HBM bandwidth of an H800, ms (for the notes)."""
    from gpuhours.hwmodels.gpus import load_gpu
    return record["expected_work"]["memory"]["bytes"] / load_gpu("H800").hbm_bw * 1e3


def write_trace_profile(out: str | Path, trace_path: str | Path | None = None,
                        base_profile: str | CalibrationProfile = BASE_PROFILE, date: str | None = None) -> Path:
    """Derive the profile from the trace and save it as JSON (what `gpuhours calibrate trace` runs)."""
    profile = profile_from_traced_case(trace_path, base_profile, date=date)
    out = Path(out)
    profile.save(out)
    return out

