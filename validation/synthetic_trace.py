"""A small synthetic profiler trace in the format of DeepSeek's profile-data `train.json`, with known kernel times.

DeepSeek's trace cannot ship (its repository has no licence), so the importer (validation/trace.py) and the
trace calibration (validation/calibrate_trace.py) are exercised on this stand-in. It keeps the real file's
shape: a Kineto Chrome trace with device events (cat "kernel", "gpu_memcpy", "gpu_memset") on three streams
(tid 7 compute, tid 23 the second compute stream of the experts' weight-gradient GEMMs, tid 27 the DeepEP
all-to-alls), CPU launch calls ("cuda_runtime" / "cuda_driver") sharing `args.correlation` with their kernel,
CPU `user_annotation` ranges naming the ten phases of DualPipe's overlapped F&B pair (no GPU annotations, as in
the real file), backward kernels launched from a second (autograd) thread, and the real file's
deviceProperties / distributedInfo / traceName fields (H800, 132 SMs, rank 0 of 64, EP64 TP1 4096 tokens).
Kernel names are shortened forms of the real kernels' names, one or more per trace op class.

Layout (what the tests' closed forms rely on), for `layers` layers of one pair:
- every layer runs the same kernels (`LAYER_KERNELS`): on stream 7, back to back, the phases attn(F), mlp(B),
  mlp(W), mlp(F), attn(B), attn(W); layers follow each other after an idle gap `layer_gap`;
- the kernels marked `twin` (two of mlp(W)'s FP8 GEMMs) have a copy on stream 23 with the same start and duration;
- on stream 27, back to back from the layer's first compute kernel: combine(B), dispatch(F), dispatch(B),
  combine(F); a layer's all-to-all kernels must end before its compute does (so the span is the compute's);
- durations: `compute_times[c]` (s) is split evenly over the stream-7 kernels of class c in the pair (a twin
  has its stream-7 partner's duration, so the busy share of the compute streams per class is exactly
  compute_times[c]); `comm_times[c]` likewise over the stream-27 kernels of class c. Where `phase_times` gives
  a (phase, class) its own time, that phase's kernels of the class share it instead (the GEMM classes of
  `pair_for_profile`, whose phases the layout has kernels for).
So stream 7's busy time is sum(compute_times), the span layers x that / layers + (layers - 1) x layer_gap.

`pair_for_profile` turns a KNOWN calibration (GEMM time ratios against a base profile's curves, attention and
element-wise efficiencies) into compute_times with the relations validation/calibrate_trace.py inverts, so a
round trip must give the same figures back.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping

STREAM_COMPUTE, STREAM_WGRAD, STREAM_COMM = 7, 23, 27
PID, MAIN_TID, AUTOGRAD_TID = 4100, 4100, 4163   # Assumption: any process / thread ids do
TS0 = 1_000_000.0  # us; Assumption: a small origin keeps fractional microseconds exact in a double
LAUNCH_STEP_US = 2.0  # CPU time between two launch calls (us); only their order inside a phase matters
TRACE_NAME = "traces/prof_ep64_tp1_synthetic_hidden7168_seqlen4096.json"
COMPUTE_ORDER = ("attn(F)", "mlp(B)", "mlp(W)", "mlp(F)", "attn(B)", "attn(W)")
COMM_ORDER = ("combine(B)", "dispatch(F)", "dispatch(B)", "combine(F)")
# CPU order of the phase annotations in one layer (as DualPipe's overlapped pair issues them)
CPU_ORDER = ("combine(B)", "attn(F)", "mlp(B)", "dispatch(F)", "dispatch(B)", "mlp(W)", "mlp(F)", "attn(B)",
             "attn(W)", "combine(F)")
MEMORY_CLASSES = ("quant", "norm", "routing", "reduce", "elementwise", "memcpy", "other")


@dataclass(frozen=True)
class KernelSlot:
    """One kernel of a layer: its phase, trace op class (what validation.trace.classify says), name, stream."""

    phase: str
    op_class: str
    name: str
    stream: int = STREAM_COMPUTE
    cat: str = "kernel"
    launch: str = "cudaLaunchKernel"
    twin: bool = False       # a copy runs on STREAM_WGRAD with the same start and duration

    @property
    def thread(self) -> int:
        """Backward-input kernels are launched by autograd's thread, everything else by the main thread."""
        return AUTOGRAD_TID if self.phase.endswith("(B)") and self.stream == STREAM_COMPUTE else MAIN_TID


_FP8 = "void cutlass::device_kernel<dpsk::grouped_gemm::cuda::fp8_ptp128c::GemmKernel>"
_FP8_W = "void cutlass::device_kernel<dpsk::grouped_gemm::cuda::fp8_dptp128c_acc::GemmKernel>"
_GROUPED = "void cutlass::device_kernel<dpsk::grouped_gemm::cuda::m_grouped_fp8_ptp128c::GemmKernel>"
_BF16 = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_kernel"
_BF16_W = "sm90_xmma_gemm_bf16f32_bf16f32_f32_nt_n_tilesize128x128x64_warpgroupsize1x1x1_kernel"
_CAST = "void cuda::per_token_cast_to_fp8_with_channels<__nv_bfloat16, 128>"
_NOTIFY = "void dpsk::ep::internode::cached_notify<false>"
_S = KernelSlot
LAYER_KERNELS: tuple[KernelSlot, ...] = (
    # ---- stream 7: 40 kernels a layer
    _S("attn(F)", "norm", "void layer_norm::ln_fwd_kernel<layer_norm::Kernel_traits<__nv_bfloat16, 7168>>"),
    _S("attn(F)", "quant", _CAST),
    _S("attn(F)", "gemm_fp8", _FP8),
    _S("attn(F)", "gemm_fp8", _FP8),
    _S("attn(F)", "elementwise", "void at::native::vectorized_elementwise_kernel<4, at::native::rotary_functor>"),
    _S("attn(F)", "attn_fwd", "void flash::compute_attn_ws<Flash_fwd_kernel_traits<192, 128, 128, 12, 2>>"),
    _S("attn(F)", "gemm_fp8", _FP8),
    _S("attn(F)", "memcpy", "Memcpy DtoD (Device -> Device)", cat="gpu_memcpy", launch="cudaMemcpyAsync"),
    _S("attn(F)", "gemm_bf16", _BF16),
    _S("attn(F)", "routing", "void cuda::topk_sum_and_topk_idx<16, 64>"),
    _S("attn(F)", "reduce", "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float>>"),
    _S("mlp(B)", "gemm_grouped", _GROUPED, launch="cuLaunchKernel"),
    _S("mlp(B)", "quant", "void cuda::swiglu_and_per_channel_cast_and_transpose<256, 128, false>"),
    _S("mlp(B)", "gemm_grouped", _GROUPED, launch="cuLaunchKernel"),
    _S("mlp(B)", "gemm_fp8", _FP8),
    _S("mlp(B)", "elementwise", "void at::native::vectorized_elementwise_kernel<4, at::native::AUnaryFunctor>"),
    _S("mlp(W)", "gemm_fp8", _FP8_W, launch="cudaLaunchKernelExC", twin=True),
    _S("mlp(W)", "gemm_fp8", _FP8_W, launch="cudaLaunchKernelExC", twin=True),
    _S("mlp(W)", "gemm_fp8", _FP8_W, launch="cudaLaunchKernelExC"),
    _S("mlp(W)", "quant", "void cuda::per_channel_cast_and_transpose<256, 128, false>"),
    _S("mlp(F)", "routing", "void cuda::clean_and_count_expert<512>"),
    _S("mlp(F)", "other", "dpsk::grouped_gemm::cuda::utils::fill_tensormaps_kernel"),
    _S("mlp(F)", "gemm_grouped", _GROUPED, launch="cuLaunchKernel"),
    _S("mlp(F)", "elementwise", "void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>"),
    _S("mlp(F)", "gemm_grouped", _GROUPED, launch="cuLaunchKernel"),
    _S("mlp(F)", "gemm_fp8", _FP8),
    _S("mlp(F)", "reduce", "void cuda::reduce_fused_impl<__nv_bfloat16, false, false>"),
    _S("attn(B)", "gemm_fp8", _FP8),
    _S("attn(B)", "attn_bwd", "void cutlass::device_kernel<flash::FlashAttnBwdPreprocess<64, 192>>"),
    _S("attn(B)", "memcpy", "Memset (Device)", cat="gpu_memset", launch="cudaMemsetAsync"),
    _S("attn(B)", "attn_bwd", "void cutlass::device_kernel<flash::FlashAttnBwd<flash::CollectiveMainloopBwd<2>>>"),
    _S("attn(B)", "attn_bwd", "void cutlass::device_kernel<flash::FlashAttnBwdPostprocessConvertdQ<64, 192>>"),
    _S("attn(B)", "gemm_fp8", _FP8),
    _S("attn(B)", "gemm_bf16", _BF16),
    _S("attn(B)", "gemm_bf16", _BF16_W),
    _S("attn(B)", "elementwise", "void at::native::elementwise_kernel<128, 2, at::native::direct_copy_kernel>"),
    _S("attn(B)", "quant", "void cuda::cast_back_impl<__nv_fp8x2_e4m3>"),
    _S("attn(B)", "norm", "void layer_norm::ln_bwd_kernel<layer_norm::Kernel_traits<__nv_bfloat16, 7168>>"),
    _S("attn(W)", "gemm_fp8", _FP8_W, launch="cudaLaunchKernelExC"),
    _S("attn(W)", "gemm_fp8", _FP8_W, launch="cudaLaunchKernelExC"),
    # ---- stream 27: 10 kernels a layer
    _S("combine(B)", "a2a_notify", _NOTIFY, STREAM_COMM),
    _S("combine(B)", "a2a_dispatch", "void dpsk::ep::internode::dispatch<false, 8, true, 8>", STREAM_COMM),
    _S("dispatch(F)", "quant", _CAST, STREAM_COMM),
    _S("dispatch(F)", "a2a_notify", "void dpsk::ep::cuda::get_dispatch_layout<256, 32, 8>", STREAM_COMM),
    _S("dispatch(F)", "a2a_notify", "void dpsk::ep::internode::notify_dispatch<false, 8>", STREAM_COMM),
    _S("dispatch(F)", "a2a_dispatch", "void dpsk::ep::internode::dispatch<false, 8, false, 8>", STREAM_COMM),
    _S("dispatch(B)", "a2a_notify", _NOTIFY, STREAM_COMM),
    _S("dispatch(B)", "a2a_combine", "void dpsk::ep::internode::combine<false, 8, __nv_bfloat16, 8>", STREAM_COMM),
    _S("combine(F)", "a2a_notify", _NOTIFY, STREAM_COMM),
    _S("combine(F)", "a2a_combine", "void dpsk::ep::internode::combine<false, 8, __nv_bfloat16, 8>", STREAM_COMM),
)
del _S


@lru_cache(maxsize=None)
def slot_counts(stream: int) -> dict[str, int]:
    """Kernels of each class on `stream` (twins not counted) in one layer."""
    return dict(Counter(k.op_class for k in LAYER_KERNELS if k.stream == stream))


@lru_cache(maxsize=1)
def _phase_slot_counts() -> dict[tuple[str, str], int]:
    """Stream-7 kernels of each (phase, class) in one layer (twins not counted)."""
    return dict(Counter((k.phase, k.op_class) for k in LAYER_KERNELS if k.stream == STREAM_COMPUTE))


def _check_times(what: str, times: Mapping[str, float], stream: int) -> dict[str, float]:
    allowed = slot_counts(stream)
    if set(times) != set(allowed):
        raise ValueError(f"{what}: needs exactly the classes {sorted(allowed)}, got {sorted(times)}")
    out = {}
    for c, t in times.items():
        t = float(t)
        if not t > 0 or t == float("inf"):
            raise ValueError(f"{what}[{c!r}] must be a positive finite time in seconds, got {t!r}")
        out[c] = t
    return out


@dataclass(frozen=True)
class SyntheticPair:
    """What the synthetic trace holds: per-class kernel time (s) on the compute and all-to-all streams."""

    compute_times: Mapping[str, float] = field(hash=False)   # busy share per class on streams 7 + 23
    comm_times: Mapping[str, float] = field(hash=False)      # summed kernel time per class on stream 27
    layers: int = 4
    layer_gap: float = 40e-6   # s of idle compute stream between two layers; Assumption: any gap >= 0 does
    phase_times: Mapping[tuple[str, str], float] | None = field(hash=False, default=None)  # (phase, class) -> s

    def __post_init__(self):
        if not isinstance(self.layers, int) or isinstance(self.layers, bool) or self.layers < 1:
            raise ValueError(f"layers must be a positive integer, got {self.layers!r}")
        if not 0 <= float(self.layer_gap) < float("inf"):
            raise ValueError(f"layer_gap must be a finite time >= 0 s, got {self.layer_gap!r}")
        object.__setattr__(self, "compute_times", _check_times("compute_times", self.compute_times, STREAM_COMPUTE))
        object.__setattr__(self, "comm_times", _check_times("comm_times", self.comm_times, STREAM_COMM))
        self._check_phase_times()
        if sum(self.comm_times.values()) > sum(self.compute_times.values()):
            raise ValueError("comm_times: a layer's all-to-all kernels must fit in its compute time; their sum "
                             f"{sum(self.comm_times.values()):.6g} s exceeds the compute's "
                             f"{sum(self.compute_times.values()):.6g} s")

    def _check_phase_times(self) -> None:
        """Each (phase, class) of `phase_times` must have kernels on the compute stream, and a class given by
        phase must be given in every phase that has its kernels, adding up to its `compute_times`."""
        if not self.phase_times:
            return
        slots = _phase_slot_counts()
        for (phase, c), t in self.phase_times.items():
            if (phase, c) not in slots or not 0 <= float(t) < float("inf"):
                raise ValueError(f"phase_times[{(phase, c)!r}]: needs a finite time >= 0 s for a phase and class the "
                                 f"layout has compute kernels for, got {t!r}")
        for c in {c for _, c in self.phase_times}:
            phases = {p for p, k in slots if k == c}
            if phases != {p for p, k in self.phase_times if k == c}:
                raise ValueError(f"phase_times: class {c!r} must be given in each of its phases {sorted(phases)}")
            total = sum(t for (_, k), t in self.phase_times.items() if k == c)
            if abs(total - self.compute_times[c]) > 1e-9 * max(1.0, total):
                raise ValueError(f"phase_times: class {c!r} adds up to {total!r} s, compute_times has "
                                 f"{self.compute_times[c]!r}")

    def duration(self, slot: KernelSlot) -> float:
        """Seconds of one kernel of `slot`: its (phase, class) time over that phase's kernels of the class where
        `phase_times` has it, else its class's time split evenly over that class's kernels in the pair."""
        if slot.stream == STREAM_COMPUTE and self.phase_times and (slot.phase, slot.op_class) in self.phase_times:
            return (self.phase_times[(slot.phase, slot.op_class)]
                    / (_phase_slot_counts()[(slot.phase, slot.op_class)] * self.layers))
        times = self.compute_times if slot.stream == STREAM_COMPUTE else self.comm_times
        return times[slot.op_class] / (slot_counts(slot.stream)[slot.op_class] * self.layers)


def build_trace(pair: SyntheticPair, gpu_annotations: bool = False) -> dict:
    """The Chrome-trace document (Kineto JSON object) of `pair` (see the module docstring for the layout).

    gpu_annotations: also write each phase instance as "gpu_user_annotation" ranges, one per stream it ran
    on, from its first kernel's start to its last kernel's end, sharing the CPU range's External id (what
    newer Kineto versions add; DeepSeek's file has none)."""
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "ts": TS0, "pid": PID, "tid": 0, "args": {"name": "python3"}},
        {"name": "thread_name", "ph": "M", "ts": TS0, "pid": PID, "tid": AUTOGRAD_TID,
         "args": {"name": "pt_autograd_0"}},
    ]
    corr = 50_000
    cpu = TS0 - 1_000.0                  # the CPU runs ahead of the GPU
    cpu_start = cpu
    gpu = TS0
    for layer in range(pair.layers):
        starts: dict[int, float] = {STREAM_COMPUTE: gpu, STREAM_COMM: gpu}
        placed: dict[str, list[tuple[KernelSlot, float, float]]] = {p: [] for p in CPU_ORDER}
        for phase in COMPUTE_ORDER + COMM_ORDER:
            for slot in (k for k in LAYER_KERNELS if k.phase == phase):
                dur = pair.duration(slot) * 1e6
                placed[phase].append((slot, starts[slot.stream], dur))
                starts[slot.stream] += dur
        if starts[STREAM_COMM] > starts[STREAM_COMPUTE]:
            raise ValueError(f"comm_times: layer {layer}'s all-to-all kernels outlast its compute kernels")
        for phase in CPU_ORDER:
            begin = cpu
            cpu += 1.0
            for slot, ts, dur in placed[phase]:
                corr += 1
                for stream in (slot.stream, STREAM_WGRAD) if slot.twin else (slot.stream,):
                    corr += stream == STREAM_WGRAD
                    events.append({"ph": "X", "cat": "cuda_driver" if slot.launch == "cuLaunchKernel" else
                                   "cuda_runtime", "name": slot.launch, "pid": PID, "tid": slot.thread, "ts": cpu,
                                   "dur": 1.5, "args": {"External id": corr, "correlation": corr}})
                    events.append({"ph": "s", "cat": "ac2g", "name": "ac2g", "id": corr, "pid": PID,
                                   "tid": slot.thread, "ts": cpu})
                    events.append({"ph": "X", "cat": slot.cat, "name": slot.name, "pid": 0, "tid": stream,
                                   "ts": ts, "dur": dur, "args": {"External id": corr, "device": 0, "context": 1,
                                                                  "stream": stream, "correlation": corr}})
                    cpu += LAUNCH_STEP_US
            corr += 1
            events.append({"ph": "X", "cat": "user_annotation", "name": phase, "pid": PID, "tid": MAIN_TID,
                           "ts": begin, "dur": cpu - begin, "args": {"External id": corr}})
            if gpu_annotations:
                for stream in sorted({s.stream for s, _, _ in placed[phase]}
                                     | ({STREAM_WGRAD} if any(s.twin for s, _, _ in placed[phase]) else set())):
                    first = min(ts for s, ts, _ in placed[phase] if s.stream == stream or s.twin)
                    last = max(ts + dur for s, ts, dur in placed[phase] if s.stream == stream or s.twin)
                    events.append({"ph": "X", "cat": "gpu_user_annotation", "name": phase, "pid": 0,
                                   "tid": stream, "ts": first, "dur": last - first, "args": {"External id": corr}})
            events.append({"ph": "X", "cat": "cpu_op", "name": "aten::empty", "pid": PID, "tid": MAIN_TID,
                           "ts": begin + 0.5, "dur": 0.25, "args": {}})
            cpu += 1.0
        gpu = starts[STREAM_COMPUTE] + pair.layer_gap * 1e6
    for name, pad in (("ProfilerStep#1", 20.0), ("1F1B", 10.0)):
        events.append({"ph": "X", "cat": "user_annotation", "name": name, "pid": PID, "tid": MAIN_TID,
                       "ts": cpu_start - pad, "dur": cpu - cpu_start + 2 * pad, "args": {}})
    events.append({"ph": "X", "cat": "Trace", "name": "PyTorch Profiler (0)", "pid": "Spans",
                   "tid": "PyTorch Profiler", "ts": cpu_start - 30.0, "dur": gpu - cpu_start + 30.0, "args": {}})
    props = {"name": "NVIDIA H800", "totalGlobalMem": 84943110144, "computeMajor": 9, "computeMinor": 0,
             "warpSize": 32, "numSms": 132}  # the H800's spec sheet: 132 SMs, 80 GB, compute capability 9.0
    return {"schemaVersion": 1, "deviceProperties": [{"id": 0, **props}],
            "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 64},
            "traceEvents": events, "traceName": TRACE_NAME}


def write_trace(path: str | Path, pair: SyntheticPair, gpu_annotations: bool = False) -> Path:
    """Write the synthetic trace of `pair` as JSON to `path`."""
    path = Path(path)
    path.write_text(json.dumps(build_trace(pair, gpu_annotations)))
    return path


# ------------------------------------------------------------------------------- from a known calibration

@dataclass(frozen=True)
class KnownProfile:
    """The calibration a synthetic pair is generated from. Ratios are measured-over-base time ratios of a GEMM
    table (what `calibrate_trace.derive_profile` records as trace.derivation.time_ratio); efficiencies are
    fractions of the dense BF16 peak (attention) or of the HBM bandwidth (element-wise) at the traced case's
    compute SM fraction. Defaults are Assumptions: round numbers of the real trace's order, nothing measured."""

    dense_fp8_ratio: float = 1.3
    grouped_fp8_ratio: float = 1.15
    wgrad_fp8_ratio: float = 1.4        # FP8 GEMMs of the W phases, against the base's weight-gradient curves
    router_bf16_ratio: float = 1.6
    attention_forward_efficiency: float = 0.42
    attention_backward_efficiency: float = 0.33
    elementwise_efficiency: float = 0.55
    comm_times: Mapping[str, float] = field(hash=False, default_factory=lambda: {
        "a2a_dispatch": 0.012, "a2a_combine": 0.016, "a2a_notify": 0.0015, "quant": 0.0004})
    base_profile: str = "default-h800"

    def __post_init__(self):
        for name in ("dense_fp8_ratio", "grouped_fp8_ratio", "wgrad_fp8_ratio", "router_bf16_ratio"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive finite time ratio, got {value!r}")
        for name in ("attention_forward_efficiency", "attention_backward_efficiency", "elementwise_efficiency"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")


def pair_for_profile(known: KnownProfile = KnownProfile(), layers: int = 4,
                     layer_gap: float = 40e-6) -> SyntheticPair:
    """The synthetic pair whose compute-stream class times are what `known` predicts for our ops of the traced
    F&B pair (validation.traced_pair.phase_ops on the base profile), with sm_fraction = (SMs - comm SMs) / SMs:
    - gemm_fp8, gemm_grouped, gemm_bf16: sum over the class's GEMMs of ratio(table) x flops / (peak(dtype) x
      base efficiency x sm_fraction), ratio by table: dense FP8, grouped FP8, weight-gradient FP8 (every FP8 GEMM
      of a W phase, the experts' included, at the base's weight-gradient curves), BF16 (the router); the FP8
      classes phase by phase (`SyntheticPair.phase_times`), as our ops of each phase have them;
    - attn_fwd / attn_bwd: flops / (efficiency x BF16 peak x sm_fraction);
    - memory-bound classes: our element-wise bytes / (elementwise_efficiency x HBM bandwidth), split over the
      memory-bound classes in proportion to their kernel counts (so every such kernel lasts the same)."""
    from gpuhours.hwmodels.calibration import load_profile
    from gpuhours.hwmodels.compute import ComputeModel
    from gpuhours.validation.calibrate_trace import trace_class_of, traced_case, traced_coster
    from gpuhours.validation.trace_phases import is_weight_phase
    from gpuhours.validation.traced_pair import phase_ops

    base = load_profile(known.base_profile)  # weight-gradient curves included, as the derivation reads it
    parallel, _, _ = traced_case(None, layers)
    coster = traced_coster(base, layers_per_chunk=layers)
    gpu = coster.cluster.gpu
    sm_fraction = (gpu.sms - parallel.comm_sms) / gpu.sms
    cm = ComputeModel(gpu, base)
    ratio = {("gemm", "fp8"): known.dense_fp8_ratio, ("grouped_gemm", "fp8"): known.grouped_fp8_ratio,
             ("gemm", "bf16"): known.router_bf16_ratio, ("grouped_gemm", "bf16"): known.router_bf16_ratio}
    times = {c: 0.0 for c in ("gemm_fp8", "gemm_grouped", "gemm_bf16", "attn_fwd", "attn_bwd")}
    by_phase: dict[tuple[str, str], float] = {}
    memory_bytes = 0.0
    for phase, op in phase_ops(coster):
        c = trace_class_of(op)
        if op.kind in ("gemm", "grouped_gemm"):
            base_time = op.flops / (gpu.peak_flops(op.dtype) * cm.efficiency(op) * sm_fraction)
            r = (known.wgrad_fp8_ratio if op.dtype == "fp8" and is_weight_phase(phase)
                 else ratio[(op.kind, op.dtype)])
            times[c] += r * base_time
            if c in ("gemm_fp8", "gemm_grouped"):
                by_phase[(phase, c)] = by_phase.get((phase, c), 0.0) + r * base_time
        elif c == "attn_fwd":
            times[c] += op.flops / (known.attention_forward_efficiency * gpu.peak_flops("bf16") * sm_fraction)
        elif c == "attn_bwd":
            times[c] += op.flops / (known.attention_backward_efficiency * gpu.peak_flops("bf16") * sm_fraction)
        else:
            memory_bytes += op.bytes
    memory_time = memory_bytes / (known.elementwise_efficiency * gpu.hbm_bw)
    counts = slot_counts(STREAM_COMPUTE)
    n_memory = sum(counts[c] for c in MEMORY_CLASSES)
    times.update({c: memory_time * counts[c] / n_memory for c in MEMORY_CLASSES})
    return SyntheticPair(times, dict(known.comm_times), layers, layer_gap, phase_times=by_phase)


if __name__ == "__main__":  # python -m gpuhours.validation.synthetic_trace OUT.json
    import sys
    if len(sys.argv) != 2:
        sys.exit("usage: python -m gpuhours.validation.synthetic_trace OUT.json")
    print(write_trace(sys.argv[1], pair_for_profile()))
