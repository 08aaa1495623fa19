"""DeepSeek's traced F&B pair stated as our records: its layout and chunks (`traced_case`), a coster whose stages
1 and 2 are the traced chunks (`traced_coster`), the ops they run and the trace class each is measured in
(`traced_ops`, `trace_class_of`, `expected_class_work`). `validation/calibrate_trace.py` derives a profile from
the measured pair against these; its docstring gives the class mapping."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from gpuhours.hwmodels.calibration import CalibrationProfile, load_profile
from gpuhours.hwmodels.cluster import ClusterSpec, deepseek_h800_cluster
from gpuhours.hwmodels.collectives import AlphaBetaNetwork
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.simulator.chunks import HardwareCoster
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import Op, OpOptions
from gpuhours.workloads.parallel import ParallelSpec

BASE_PROFILE = "default-h800"
PROFILE_NAME = "trace-h800"

COMPUTE_CLASSES = ("gemm_fp8", "gemm_grouped", "gemm_bf16", "attn_fwd", "attn_bwd")
MEMORY_CLASSES = ("quant", "norm", "routing", "reduce", "elementwise", "memcpy", "other")
# GEMM tables whose curves are scaled: (profile section, dtype)
TABLES = (("gemm", "fp8"), ("grouped_gemm", "fp8"), ("gemm", "bf16"))
# Traced pair: the forward chunk is stage 1 and the backward chunk stage 2 of a 4-stage cut (dense layers |
# chunk | chunk | rest), so neither carries the embedding, the head or MTP.
FORWARD_STAGE, BACKWARD_STAGE = 1, 2


@dataclass(frozen=True)
class ClassWork:
    """What our ops of one trace class do: op count, FLOPs, bytes."""

    ops: int
    flops: float
    bytes: float


# ------------------------------------------------------------------------------------------- the traced case
def _model(model: ModelSpec | None) -> ModelSpec:
    if model is not None:
        return model
    from gpuhours.workloads.presets import load_preset
    return load_preset("deepseek-v3")


def traced_case(model: ModelSpec | None = None, layers_per_chunk: int = 4
                ) -> tuple[ParallelSpec, int, tuple[range, range]]:
    """(ParallelSpec, seq_len, (forward-chunk layers, backward-chunk layers)) of the traced F&B pair.

    Layout and sequence from the DeepSeek-V3 plan (workloads/plans/deepseek-v3.toml: 2,048 GPUs, PP16 DualPipe,
    EP64, TP1, micro-batch 1, 20 communication SMs, 4,096 tokens), which the trace's name
    ("prof_ep64_tp1_..._seqlen4096") and README confirm; `layers_per_chunk` MoE layers per chunk (4 in the
    trace: one annotation of each phase per layer), the first chunk starting at the first MoE layer.
    """
    from gpuhours.simulator.scenario import load_scenario
    model = _model(model)
    if model.moe is None:
        raise ValueError(f"model: the traced case is a MoE pair; {model.name!r} has no MoE layers")
    if not isinstance(layers_per_chunk, int) or layers_per_chunk < 1:
        raise ValueError(f"layers_per_chunk must be a positive integer, got {layers_per_chunk!r}")
    first = model.moe.first_k_dense
    if first + 2 * layers_per_chunk > model.n_layers:
        raise ValueError(f"layers_per_chunk: 2 x {layers_per_chunk} MoE layers do not fit after the "
                         f"{first} dense layers of {model.n_layers}")
    sc = load_scenario()
    p = sc.parallel
    parallel = ParallelSpec(num_gpus=p.num_gpus, pp=p.pp, ep=p.ep, tp=p.tp, zero_stage=p.zero_stage,
                            micro_batch_size=p.micro_batch_size, schedule=p.schedule, comm_sms=p.comm_sms)
    parallel.check_model(model)
    fwd = range(first, first + layers_per_chunk)
    bwd = range(first + layers_per_chunk, first + 2 * layers_per_chunk)
    return parallel, sc.plan.seq_len, (fwd, bwd)


def traced_fp8_gemm_kernels() -> str | None:
    """The FP8 GEMM kernels of the traced run: the plan's (`[numerics] fp8_gemm_kernels`, hwmodels.gemm_kernels),
    the family whose names the trace's GEMM kernels carry."""
    from gpuhours.simulator.scenario import load_scenario
    return load_scenario().fp8_gemm_kernels


def traced_options() -> OpOptions:
    """Numerics of the plan (FP8, recomputation) with balanced routing (imbalance 1), as the trace forced."""
    from gpuhours.simulator.scenario import load_scenario
    return replace(load_scenario().opts, imbalance=1.0)


def traced_coster(profile: CalibrationProfile, model: ModelSpec | None = None, layers_per_chunk: int = 4,
                  cluster: ClusterSpec | None = None) -> HardwareCoster:
    """A HardwareCoster whose stages FORWARD_STAGE and BACKWARD_STAGE are the traced chunks."""
    model = _model(model)
    parallel, seq_len, (fwd, bwd) = traced_case(model, layers_per_chunk)
    cluster = cluster or deepseek_h800_cluster(parallel.num_gpus)
    stage_layers = (fwd.start, len(fwd), len(bwd), model.n_layers - bwd.stop)
    return HardwareCoster(model, parallel, cluster, ComputeModel(cluster.gpu, profile), AlphaBetaNetwork(cluster),
                          seq_len, stage_layers, traced_options())


def phase_ops(coster: HardwareCoster) -> list[tuple[str, Op]]:
    """Compute ops of the traced pair with the phase each runs in, named as the trace's annotations name them
    (our segment names: "attn(F)", "mlp(B)", "mlp(W)", ...): forward of the first chunk, backward and weight
    passes of the second (with the recomputation ops the decomposition adds to backward)."""
    segs = [seg for unit in coster.stages[FORWARD_STAGE] for seg in unit.forward]
    segs += [seg for unit in coster.stages[BACKWARD_STAGE] for seg in unit.backward + unit.weight]
    return [(seg.name, op) for seg in segs for op in seg.ops if op.kind != "collective"]


def traced_ops(coster: HardwareCoster) -> list[Op]:
    """Compute ops of the traced pair (`phase_ops` without the phases)."""
    return [op for _, op in phase_ops(coster)]


def trace_class_of(op: Op) -> str:
    """The trace op class our op is measured in (see the module docstring); "memory" for memory-bound ops."""
    if op.kind == "gemm":
        return "gemm_fp8" if op.dtype == "fp8" else "gemm_bf16"
    if op.kind == "grouped_gemm":
        if op.dtype == "bf16":
            return "gemm_bf16"
        return "gemm_fp8" if op.phase == "W" else "gemm_grouped"
    if op.kind == "attention":
        return "attn_fwd" if op.phase == "F" else "attn_bwd"
    if op.kind in ("elementwise", "embedding"):
        return "memory"
    raise ValueError(f"op {op.name!r}: kind {op.kind!r} has no trace class")


def expected_class_work(model: ModelSpec | None = None, layers_per_chunk: int = 4,
                        ops: Iterable[Op] | None = None) -> dict[str, ClassWork]:
    """Our ops of the traced pair summed per trace class: {class: ClassWork(ops, flops, bytes)}."""
    if ops is None:
        ops = traced_ops(traced_coster(load_profile(BASE_PROFILE), model, layers_per_chunk))
    acc: dict[str, list] = {c: [0, 0.0, 0.0] for c in COMPUTE_CLASSES + ("memory",)}
    for op in ops:
        a = acc[trace_class_of(op)]
        a[0] += 1
        a[1] += op.flops
        a[2] += op.bytes
    return {c: ClassWork(n, f, b) for c, (n, f, b) in acc.items()}
