"""ComputeModel: the duration of one compute Op on one GPU (roofline with calibrated efficiencies).

    duration = max(flops / (peak(dtype) * efficiency * sm_fraction),  bytes / (hbm_bw * bandwidth_efficiency))
    (bandwidth_efficiency: the profile's element-wise figure for memory-bound kinds, 1 for GEMMs and attention)

- gemm / grouped_gemm: efficiency from the CalibrationProfile at the op's shape (m, n, k, groups).
  An FP8 GEMM of a per-tensor recipe (Op.fp8_recipe "delayed" / "current": one cuBLASLt call, one scale per
  tensor) is priced from the same op's BF16 efficiency times a published FP8-over-BF16 speed-up at its shape
  (hwmodels/fp8_tensorwise.py), not from the profile's blockwise "fp8" points.
  An MXFP8 GEMM (Op.fp8_recipe "mxfp8", Blackwell only) runs at the GPU's MXFP8 peak times the same op's BF16
  efficiency at its shape (hwmodels/mxfp8.py), unless the profile was calibrated on MX kernels.
  A weight-gradient GEMM (phase "W") takes the profile's ``wgrad`` points when it has them for the op's kind
  and dtype (hwmodels/wgrad.py: DeepGEMM's weight-gradient kernels, slower than its forward ones).
- attention: the profile's forward efficiency for phase "F", backward efficiency for "B" and "W";
  fraction of the dense peak of the op's dtype (BF16 in practice).
- elementwise / embedding: memory-bound; FLOPs, if any, at the non-tensor FP32 peak.
- collective ops are priced by a network model (hwmodels.collectives), not here: ValueError.
- the memory term of element-wise and embedding ops uses the profile's element-wise bandwidth efficiency of
  the op's class (`elementwise_class`; the general figure where the profile has none for it);
  GEMMs and attention are bounded by the full HBM bandwidth (their measured efficiency covers the rest).

How ``sm_fraction`` acts: it is the share of the GPU's SMs the op may use (e.g. 112/132 while 20 SMs run
DeepEP). The compute term scales linearly with it -- a GEMM on 112 of 132 SMs runs at 112/132 of its
132-SM rate -- and wave quantisation at the reduced SM count is ignored. The memory term does not scale:
HBM bandwidth saturates with far fewer than all SMs.

Profile efficiencies are measured on ``profile.sm_count`` SMs (DeepGEMM: all 132 of an H800) and are
relative to the peak of those SMs; the full-GPU rate is ``efficiency * gpu.peak``. When the profile records
``peak_tflops`` (the measuring device's peak), efficiencies are taken relative to it and carried over to
this GPU as fractions of its peak (an assumption when the GPU differs from the profile's device).
"""

from __future__ import annotations

from dataclasses import replace

from gpuhours.hwmodels.calibration import CalibrationProfile
from gpuhours.hwmodels.fp8_tensorwise import is_per_tensor, speedup_table, tensorwise_efficiency, uses_own_points
from gpuhours.hwmodels.gpus import GPUSpec
from gpuhours.hwmodels import mxfp8
from gpuhours.hwmodels.wgrad import wgrad_efficiency
from gpuhours.workloads.ops import COMPUTE_CLASSES, Op

PHASES = ("F", "B", "W")


def elementwise_class(op: Op) -> str | None:
    """The memory-bound class of an op (calibration.ELEMENTWISE_CLASSES) from its kind and name, None when it
    has none (it then takes the profile's general element-wise efficiency)."""
    if op.kind == "embedding":
        return "embedding"
    last = op.name.rsplit(".", 1)[-1]
    if last in ("quant", "dequant", "weight_t", "weight_cast"):  # FP8 / E5M6 casts and casts back, FP8 weight
        # transposes (memory_ops), torchao's per-pass weight casts (ops.PassBuilder.gemm)
        return "cast"
    if last in ("swiglu", "gelu", "relu2"):
        return "activation"
    if last == "rope":
        return "rope"
    if "norm" in last or (last == "recompute" and "norm" in op.name):
        return "norm"
    if last == "loss":
        return "loss"
    if last == "topk":
        return "router"
    if last == "adamw":
        return "optimizer"
    return None


class ComputeModel:
    def __init__(self, gpu: GPUSpec, profile: CalibrationProfile) -> None:
        self.gpu = gpu
        self.profile = profile

    def _reference_peak(self, dtype: str) -> float:
        """Dense peak (FLOP/s) of the SMs the profile's GEMM points ran on."""
        recorded = self.profile.reference_peak(dtype)
        if recorded is not None:
            return recorded
        return self.gpu.peak_flops(dtype) * self.profile.sm_count / self.gpu.sms

    def gemm_efficiency(self, op: Op) -> float:
        """Fraction of the dense peak a (grouped) GEMM op reaches on the profile's SMs."""
        if op.gemm is None:
            raise ValueError(f"op {op.name!r}: kind {op.kind!r} needs a gemm shape (Op.gemm)")
        self.gpu.peak_flops(op.dtype)  # refuses fp8 on GPUs without it
        if op.dtype == "fp8" and op.fp8_recipe == mxfp8.RECIPE:
            mxfp8.check_gpu(self.gpu)  # refuses GPUs without MXFP8 tensor cores
            if not mxfp8.uses_own_points(self.profile):  # the BF16 fraction of peak at the shape (hwmodels/mxfp8.py)
                return self.gemm_efficiency(replace(op, dtype="bf16", fp8_recipe="blockwise"))
        if op.dtype == "fp8" and is_per_tensor(op.fp8_recipe) and not uses_own_points(self.profile):
            return self._tensorwise_efficiency(op)
        groups = op.groups if op.kind == "grouped_gemm" else 1
        g = op.gemm
        if op.phase == "W":  # weight gradient: the profile's wgrad points where it has them (hwmodels/wgrad.py)
            eff = wgrad_efficiency(self.profile, op.kind, op.dtype, g.m, g.n, g.k, groups,
                                   peak_flops=self._reference_peak(op.dtype))
            if eff is not None:
                return eff
        return self.profile.efficiency(op.kind, op.dtype, g.m, g.n, g.k, groups,
                                       peak_flops=self._reference_peak(op.dtype))

    def _tensorwise_efficiency(self, op: Op) -> float:
        """A per-tensor FP8 GEMM (recipe delayed / current): the same op's BF16 efficiency times the published
        FP8-over-BF16 speed-up at its shape (hwmodels/fp8_tensorwise.py), as a fraction of the FP8 peak."""
        g = op.gemm
        eff_bf16 = self.gemm_efficiency(replace(op, dtype="bf16", fp8_recipe="blockwise"))
        table = speedup_table(self.profile, self.gpu.key)  # the profile's measured points on its own GPU
        return tensorwise_efficiency(eff_bf16, table.speedup(g.m, g.n, g.k),
                                     self.gpu.peak_flops("bf16"), self.gpu.peak_flops("fp8"))

    def peak(self, op: Op) -> float:
        """Dense tensor-core peak (FLOP/s) an op's GEMM or attention runs against: the MXFP8 peak for an FP8 op of
        the mxfp8 recipe, otherwise the peak of its dtype."""
        if op.dtype == "fp8" and op.fp8_recipe == mxfp8.RECIPE:
            mxfp8.check_gpu(self.gpu)
            return self.gpu.peak_flops("mxfp8")
        return self.gpu.peak_flops(op.dtype)

    def efficiency(self, op: Op) -> float:
        """Fraction of the compute peak the op reaches (memory-bound kinds: of the FP32 peak, i.e. 1)."""
        if op.kind in ("gemm", "grouped_gemm"):
            return self.gemm_efficiency(op)
        if op.kind == "attention":
            if op.phase not in PHASES:
                raise ValueError(f"op {op.name!r}: phase must be one of {PHASES}, got {op.phase!r}")
            self.gpu.peak_flops(op.dtype)
            p = self.profile
            return p.attention_forward_efficiency if op.phase == "F" else p.attention_backward_efficiency
        return 1.0

    def duration(self, op: Op, sm_fraction: float = 1.0) -> float:
        """Seconds for ``op`` on ``sm_fraction`` of the GPU's SMs (see module docstring)."""
        if op.kind == "collective":
            raise ValueError(f"op {op.name!r} is a collective: price it with a network model (hwmodels.collectives)")
        if op.kind not in COMPUTE_CLASSES:
            raise ValueError(f"op {op.name!r}: kind must be one of {COMPUTE_CLASSES}, got {op.kind!r}")
        if not 0 < sm_fraction <= 1:
            raise ValueError(f"sm_fraction must be in (0, 1], got {sm_fraction!r}")
        if op.flops < 0 or op.bytes < 0:
            raise ValueError(f"op {op.name!r}: flops and bytes must be >= 0")

        flops = op.flops
        if op.kind in ("gemm", "grouped_gemm"):
            if flops == 0 and op.gemm is not None:
                groups = op.groups if op.kind == "grouped_gemm" else 1
                flops = 2.0 * op.gemm.m * op.gemm.n * op.gemm.k * groups
            rate = self.peak(op) * self.gemm_efficiency(op)
        elif op.kind == "attention":
            rate = self.gpu.peak_flops(op.dtype) * self.efficiency(op)
        else:  # elementwise, embedding: CUDA-core FLOPs, memory-bound in practice
            rate = self.gpu.fp32_flops
        compute_time = flops / (rate * sm_fraction) if flops else 0.0
        # Element-wise kernels reach the profile's share of HBM bandwidth; for GEMMs and attention the memory
        # term is only the roofline bound at the full bandwidth (their achieved rate is in their efficiency).
        bw_eff = (self.profile.elementwise_efficiency(elementwise_class(op)) if op.kind in ("elementwise", "embedding")
                  else 1.0)
        memory_time = op.bytes / (self.gpu.hbm_bw * bw_eff)
        return max(compute_time, memory_time)
