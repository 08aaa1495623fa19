"""PyTorch's experimental context parallelism as torchtitan ran it at the end of 2024 (`ParallelSpec.cp_comm =
"torch"`): the K/V exchange, its overlap and the fp32 bookkeeping, counted from the source.

Source: pytorch/pytorch, torch/distributed/tensor/experimental/_attention.py (`_templated_ring_attention`,
`_templated_ring_attention_backward`, `_SDPAMerger`, `_AllGatherRotater`, `_AllToAllRotater`, `_partial_update`,
`_ContextParallelOptions`: convert_to_f32 = True, enable_load_balance = True, rotate_method = ALL_GATHER), read at a
2025 revision whose loops match the PR that added the load-balanced shards (pytorch/pytorch#132442, Sept 2024);
pytorch/torchtitan 9dec370 (2024-12-26): train.py wraps every step in `context_parallel`, config_manager.py
`--experimental.context_parallel_rotate_method` defaults to "allgather", and models/llama/model.py's Attention
hands SDPA K and V after `repeat_kv` (lines 201-209), i.e. at the query heads.

What the source does, per layer and rank (cp ranks, causal load balancing: the rank holds chunks r and 2cp-1-r):

Forward (`_templated_ring_attention`, cp SDPA calls):
- K/V at the query heads: torchtitan repeats the GQA heads before SDPA, so the exchanged K and V carry
  n_heads / tp heads, not n_kv_heads / tp (`sdpa_kv_bytes_per_token`).
- One all-gather (`_AllGatherRotater.exchange_buffers`, asynchronous functional collective) is issued at step 0
  *before* the step-0 SDPA call and waited at step 1 (`next_buffer`): it runs under the diagonal block only,
  exposed max(0, T_ag - C_0) with C_0 = core / cp (`simulator.ring_overlap.torch_cp_exposed`).
- Every step i < cp-1 still builds `torch.cat([key.flatten(), value.flatten()])` (a copy; the rotater ignores it
  after the first), and the entry `key.contiguous()` / `value.contiguous()` copies the transposed K/V.
- `_SDPAMerger.step` casts each block's output to fp32 and merges it: out - sigmoid(lse_b - lse) (out - out_b),
  lse - logsigmoid(lse - lse_b), one kernel per tensor op (Assumption: run eagerly, not fused by torch.compile).
  Rank cp-1 (the busiest: every step i <= rank is a full-query merge) does cp-1 full merges;
  `results()` casts the fp32 output back to BF16.

Backward (`_templated_ring_attention_backward`, cp SDPA backward calls):
- A second K/V all-gather (a new `_AllGatherRotater`), issued before the step-0 backward, waited at step 1.
- dK/dV accumulate in fp32 (accum_dtype = float32) and travel the ring point to point
  (`_create_rotater(group, 2, method=ALL_TO_ALL)`, `ft_c.permute_tensor`): every step sends the rank's
  accumulated dK/dV (its shard, at the query heads, 4 bytes an element) after its compute; step s+1 waits for it
  after computing its own block, so transfer s hides under block s+1; the last is waited after the loop, exposed.
- fp32 bookkeeping per step: zeros for dQ/dK/dV, `_partial_update` (chunk add + `torch.cat` of the whole
  buffer) for dK/dV at steps 1..rank, `torch.cat` of dK/dV before each send, dQ += block dQ; casts back to BF16
  at the end.

Bytes below count reads + writes of every tensor op on the busiest rank, element counts at the query heads:
Q = tokens x heads x d_qk, K = tokens x heads x d_qk, V = O = tokens x heads x d_v, R = tokens x heads rows of
the log-sum-exp (fp32). The LSE ops (5 element-wise ops of 12, 8, 12, 8, 12 bytes a row) are counted per row.
"""

from __future__ import annotations

from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import BF16, FP32, Op, Segment
from gpuhours.workloads.parallel import ParallelSpec

LSE_BYTES_PER_ROW = 12 + 8 + 12 + 8 + 12  # block_lse - lse, sigmoid, lse - block_lse, logsigmoid, lse - (...)
MERGE_BYTES_PER_OUT = (2 + 4) + 12 + 8 + 12  # block out to fp32; out - out_b; sigmoid x (...); out - (...)


def _elements(model: ModelSpec, p: ParallelSpec, tokens: int) -> tuple[int, int, int, int]:
    """(Q, K, V, R) element counts of the rank's shard at the query heads (see the module docstring)."""
    a = model.attention
    heads = a.n_heads // p.tp
    return (tokens * heads * a.qk_head_dim, tokens * heads * a.qk_head_dim, tokens * heads * a.out_head_dim,
            tokens * heads)


def sdpa_kv_bytes_per_token(model: ModelSpec, p: ParallelSpec) -> float:
    """Bytes per token of the K and V that SDPA receives, hence that PyTorch's context parallelism exchanges:
    n_heads / tp heads of d_qk (K) and d_v (V) in BF16 (torchtitan's `repeat_kv` before SDPA; MLA's up-projected
    per-head K and V)."""
    a = model.attention
    return (a.n_heads // p.tp) * (a.qk_head_dim + a.out_head_dim) * BF16


def forward_bookkeeping_bytes(model: ModelSpec, p: ParallelSpec, tokens: int) -> float:
    """HBM bytes of the forward's non-attention tensor ops on the busiest rank (rank cp-1): K/V contiguous copies,
    cp-1 K/V concatenations, the step-0 fp32 cast, cp-1 full merges, the final BF16 cast."""
    q, k, v, rows = _elements(model, p, tokens)
    cp = p.cp
    kv_copy = 2 * BF16 * (k + v)  # read + write
    return (kv_copy + (cp - 1) * kv_copy + (BF16 + FP32) * v
            + (cp - 1) * (MERGE_BYTES_PER_OUT * v + LSE_BYTES_PER_ROW * rows) + (FP32 + BF16) * v)


def backward_bookkeeping_bytes(model: ModelSpec, p: ParallelSpec, tokens: int) -> float:
    """HBM bytes of the backward's non-attention tensor ops on the busiest rank (rank cp-1, whose steps 1..cp-1
    all update the first half of dK/dV): fp32 zeros for dQ/dK/dV; K/V contiguous copies and cp-1 K/V
    concatenations; step 0 dK/dV += (read 4 + 2, write 4 bytes); steps 1..cp-1 `_partial_update` (half-size add,
    5 bytes an element of the whole, then `torch.cat`, 8); a dK/dV `torch.cat` (8) before each of the cp sends;
    dQ += (10) at every step; final casts of dQ and dK/dV to BF16 (6)."""
    q, k, v, _ = _elements(model, p, tokens)
    cp = p.cp
    kv = k + v
    return (FP32 * (q + kv) + 2 * BF16 * kv + (cp - 1) * 2 * BF16 * kv + 10 * kv + (cp - 1) * 13 * kv
            + cp * 2 * FP32 * kv + cp * 10 * q + (BF16 + FP32) * (q + kv))


def torch_cp_segments(phase: str, model: ModelSpec, p: ParallelSpec, tokens: int, layer,
                      prefix: str) -> list[Segment]:
    """The exchange of one layer's pass as collectives on the cp group, each carrying a `.cp_torch_*` name that
    `simulator.ring_overlap.cp_exposed` prices against the attention core (its `overlaps` partner, set by
    `workloads.ring_cp.with_ring_partner`):
    - "F" and "B": the K/V all-gather of the whole sequence at the query heads ("<prefix>.attn.cp_torch_kv"),
      comm_bytes = tokens x cp x `sdpa_kv_bytes_per_token`;
    - "B": the dK/dV ring ("<prefix>.attn.cp_torch_dkv"), fp32 at the query heads; encoded as an all-gather of
      cp x shard bytes, whose ring moves exactly cp-1 shard transfers, so one transfer is wire / (cp-1)."""
    if p.cp == 1 or phase == "W":
        return []
    per_token = sdpa_kv_bytes_per_token(model, p)
    gathered = tokens * p.cp
    ops = [Op(f"{prefix}.attn.cp_torch_kv", "collective", phase, "attn", collective="all_gather", group="cp",
              comm_bytes=gathered * per_token, tokens=gathered, bytes_per_token=per_token)]
    if phase == "B":
        dkv = per_token * FP32 / BF16
        ops.append(Op(f"{prefix}.attn.cp_torch_dkv", "collective", phase, "attn", collective="all_gather",
                      group="cp", comm_bytes=gathered * dkv, tokens=gathered, bytes_per_token=dkv))
    return [Segment(f"cp.torch({phase})", "comm", (op,), layer) for op in ops]


def bookkeeping_op(phase: str, model: ModelSpec, p: ParallelSpec, tokens: int, prefix: str) -> Op | None:
    """The pass's fp32 merge / accumulation traffic as one element-wise op "<prefix>.attn.cp_merge" (forward)
    or "<prefix>.attn.cp_grad_accum" (backward); none without CP or in the weight pass."""
    if p.cp == 1 or phase == "W":
        return None
    if phase == "F":
        return Op(f"{prefix}.attn.cp_merge", "elementwise", "F", "attn", 0.0,
                  forward_bookkeeping_bytes(model, p, tokens))
    return Op(f"{prefix}.attn.cp_grad_accum", "elementwise", "B", "attn", 0.0,
              backward_bookkeeping_bytes(model, p, tokens))
