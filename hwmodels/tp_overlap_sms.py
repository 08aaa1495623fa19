"""The SMs Transformer Engine's userbuffers tensor-parallel overlap takes from the GEMM it overlaps (issue 15, item 3).

Megatron-Core's `--tp-comm-overlap` runs Transformer Engine's userbuffers overlap with TE's default configuration
per GEMM unless `--tp-comm-overlap-cfg` names a YAML file: Megatron-LM 6b708890cb385ea6515706d7d474f77d433890a6
(2025-06), megatron/training/initialize.py lines 255-259 (`ub_cfgs = {}` without a file) and 274-279
(`te_module.base.initialize_ub(..., ub_cfgs=ub_cfgs)`); arguments.py lines 855-856 (tp_comm_overlap asserts
sequence_parallel). The defaults, TransformerEngine 9d173c93e67213bb87c7c4286a5543867bd22bdf (2025-06-28),
transformer_engine/pytorch/module/base.py:
- lines 259-263, the method per GEMM: "ring_exchange" for qkv_fprop, fc1_fprop (the all-gather before the
  column-parallel GEMM), proj_dgrad, fc2_dgrad (the output gradient's all-gather before the row-parallel
  backward GEMM); "pipeline" for proj_fprop, fc2_fprop (the reduce-scatter after the row-parallel GEMM); "bulk"
  for qkv_dgrad, fc1_dgrad (the input's all-gather for the weight gradient) and qkv_wgrad, fc1_wgrad (the
  reduce-scatter of the input gradient).
- lines 277-296, `get_default_config`: num_sm 1 for ring_exchange else 16; cga_size 1 else 2; set_sm_margin
  `not method == "ring_exchange"`; num_splits tp_size for ring_exchange else 4; use_ce True.
transformer_engine/common/comm_gemm_overlap/comm_gemm_overlap.cpp at the same commit:
- lines 88-91: `_math_sms = (set_sm_margin) ? sm_count - num_comm_sm : sm_count` (less NVTE_EXT_MARGIN_SM,
  default 0); every GEMM chunk of a pipeline or bulk overlap is launched with `_math_sms` (split_overlap_rs,
  lines 446-578; bulk_overlap, lines 292-338), so the GEMM runs on sm_count - num_sm SMs for its whole time while
  the communication kernels (reducescatter2_userbuff_*, on num_sm SMs) run beside it;
- line 263: CommOverlapBase (pipeline, bulk) passes use_ce = false: its collectives are SM kernels;
- split_overlap_rs: the GEMM in num_splits chunks, chunk i's reduce-scatter after chunk i (the last one on
  UB_MAX_SM once the GEMM is done).
transformer_engine/common/comm_gemm_overlap/userbuffers/userbuffers.cu lines 2314-2331 (`userbuffers_send`): with
use_ce the ring exchange's chunk moves with cudaMemcpyAsync (a copy engine) and a one-block flag kernel, and
set_sm_margin is false, so ring_exchange's GEMM keeps every SM: it holds none (Assumption: the one-thread-block
flag kernel costs nothing).

Our tensor-parallel collectives (`workloads.layer_ops._tp_collectives`, sequence parallelism) map to TE's by kind
and pass: forward all-gather -> ring_exchange (qkv/fc1_fprop); forward reduce-scatter -> pipeline
(proj/fc2_fprop); backward all-gather -> ring_exchange (proj/fc2_dgrad); backward reduce-scatter and the weight
pass's all-gather -> bulk (qkv/fc1_wgrad, qkv/fc1_dgrad). Assumption: a bulk collective runs beside the GEMM our
pass pairs it with (`Op.overlaps`: the block's first GEMM of that pass), where TE puts it beside the other
backward GEMM of the same layer (the all-gather beside dgrad, the reduce-scatter beside wgrad).
"""

from __future__ import annotations

from dataclasses import dataclass

# TE base.py lines 259-263 and 277-296 (commit above)
TE_METHODS = ("ring_exchange", "pipeline", "bulk")
TE_NUM_SM = {"ring_exchange": 1, "pipeline": 16, "bulk": 16}
TE_SET_SM_MARGIN = {"ring_exchange": False, "pipeline": True, "bulk": True}
TE_PIPELINE_SPLITS = 4  # num_splits of a pipeline overlap; ring_exchange uses tp_size
TE_USE_CE = {"ring_exchange": True, "pipeline": False, "bulk": False}  # CommOverlapBase forces use_ce = false

_METHOD = {("all_gather", "F"): "ring_exchange", ("reduce_scatter", "F"): "pipeline",
           ("all_gather", "B"): "ring_exchange", ("reduce_scatter", "B"): "bulk", ("all_gather", "W"): "bulk"}


@dataclass(frozen=True)
class UserbuffersOverlap:
    """One tensor-parallel collective as TE's userbuffers overlap runs it with its GEMM.

    method: TE_METHODS; held_sms: SMs the GEMM loses for its whole time (num_sm where set_sm_margin, else 0);
    pieces: chunks the GEMM and the collective are cut into (ring_exchange: tp; pipeline: 4; bulk: 1, the two
    run side by side without a dependency)."""

    method: str
    held_sms: int
    pieces: int


def te_userbuffers(collective: str, phase: str, tp: int) -> UserbuffersOverlap:
    """TE's default overlap for a tensor-parallel `collective` ("all_gather" / "reduce_scatter") of pass `phase`
    ("F", "B", "W") on a group of `tp` ranks."""
    method = _METHOD.get((collective, phase))
    if method is None:
        raise ValueError(f"tp_comm_overlap_impl te-userbuffers overlaps all_gather and reduce_scatter under "
                         f"sequence parallelism only (Megatron-LM asserts sequence_parallel with tp_comm_overlap); "
                         f"got a {collective} in pass {phase}")
    held = TE_NUM_SM[method] if TE_SET_SM_MARGIN[method] else 0
    pieces = tp if method == "ring_exchange" else TE_PIPELINE_SPLITS if method == "pipeline" else 1
    return UserbuffersOverlap(method, held, pieces)
