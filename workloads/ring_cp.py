"""Ring attention: context parallelism's other K/V exchange (`ParallelSpec.cp_comm = "ring"`).

The all-gather variant (`workloads.layer_ops._cp_comm`) gathers the whole sequence's K/V before the attention core
and keeps the exchange in the pass's dependency chain. Ring attention (Liu, Zaharia & Abbeel 2023, "Ring
Attention with Blockwise Transformers", arXiv 2310.01889; the same scheme as Megatron-Core's point-to-point
context parallelism) never gathers: each of the cp ranks holds one K/V block (its own seq_len / cp tokens, chunks
i and 2cp-1-i under causal load balancing) and the blocks travel around the ring. At step s a rank computes the
attention of its queries against the block it holds while it sends that block to the next rank and receives the
next one from the previous rank.

Forward (cp steps, cp-1 transfers): step 0 is the rank's own (diagonal) block, which needs no transfer; the send
of the block for step 1 is issued before step 0 computes, so transfer s+1 runs under the compute of block s.
With C_s the compute of block s and T the transfer of one block, step s+1 starts at max(end of C_s, end of
T_{s+1}) and the transfers run back to back on the link, so
    forward time = sum_{s=0}^{cp-2} max(C_s, T) + C_{cp-1},   exposed = sum_{s=0}^{cp-2} max(0, T - C_s):
zero when every block computes longer than one transfer (the ring's premise), (cp-1)(T - C) when none does.
Backward (cp steps): the K/V blocks travel again, and each block's dK/dV travels with it, accumulated by every
rank it visits: step 0 sends K/V only, steps 1..cp-2 send K/V and the dK/dV accumulated so far (2T), the last
step sends the dK/dV only (T), which must arrive before the pass ends:
    exposed = max(0, T - C'_0) + sum_{s=1}^{cp-2} max(0, 2T - C'_s) + max(0, T - C'_{cp-1}).
Causal blocks under the load-balanced split (c = seq_len / 2cp, micro-batch b): the diagonal block holds
b (2c^2 + c) (query, key) pairs, every other block b 2c^2 (`ring_block_pairs`); each is within 1/(L+1) of 1/cp of
the rank's core, so the pricing takes C_s = core / cp (`simulator.ring_overlap.ring_exposed`).

As ops: one collective per pass on the "cp" group whose wire time is the ring's total transfer time. A ring
all-gather of a cp x B buffer is exactly cp-1 neighbour exchanges of one B block each, (cp-1)/cp x cp B = (cp-1) B
on the slowest link plus cp-1 latencies, so the forward's op is an all-gather of the cp x block buffer (the same
bytes the all-gather variant moves) and the backward's an all-gather of twice that (K/V and dK/dV: 2 (cp-1) B).
The op's `overlaps` partner is the attention core it runs under (`with_ring_partner`); the engine prices the
exposed remainder with `simulator.ring_overlap.ring_exposed`.
"""

from __future__ import annotations

from dataclasses import replace

from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import BF16, Op, Segment
from gpuhours.workloads.parallel import ParallelSpec


def kv_block_bytes_per_token(model: ModelSpec, p: ParallelSpec) -> float:
    """Bytes per token of a K/V block: the same payload the all-gather variant gathers
    (`workloads.layer_ops.cp_kv_bytes_per_token`: GQA K and V of the rank's kv heads; MLA the compressed latent)."""
    a = model.attention
    if a.kind == "mla":
        return (a.kv_lora_rank + a.qk_rope_head_dim) * BF16
    return 2 * max(1, a.n_kv_heads // p.tp) * a.head_dim * BF16


def ring_block_pairs(micro_batch_size: int, seq_len: int, cp: int) -> tuple[int, int]:
    """(query, key) pairs of the diagonal block and of each other block a rank computes under the causal mask with
    the load-balanced split (chunks i and 2cp-1-i of c = seq_len / 2cp tokens): b (2c^2 + c) and b 2c^2. The
    diagonal plus cp-1 others is b c (L + 1), the rank's whole causal share (`workloads.layer_ops`)."""
    c = seq_len // (2 * cp)
    return micro_batch_size * (2 * c * c + c), micro_batch_size * 2 * c * c


def ring_segments(phase: str, model: ModelSpec, p: ParallelSpec, tokens: int, layer, prefix: str) -> list[Segment]:
    """The ring's K/V exchange of one layer's pass as one collective on the cp group ("cp.ring(F)" /
    "cp.ring(B)"; none in the weight pass): comm_bytes = cp x tokens x block bytes per token (forward: K/V), twice
    that in the backward (K/V and dK/dV); `tokens` is the rank's micro_batch_size x seq_len / cp."""
    if p.cp == 1 or phase == "W":
        return []
    per_token = kv_block_bytes_per_token(model, p) * (1 if phase == "F" else 2)
    gathered = tokens * p.cp
    op = Op(f"{prefix}.attn.cp_ring", "collective", phase, "attn", collective="all_gather", group="cp",
            comm_bytes=gathered * per_token, tokens=gathered, bytes_per_token=per_token)
    return [Segment(f"cp.ring({phase})", "comm", (op,), layer)]


def with_ring_partner(segments: list[Segment], attn_ops: list[Op]) -> list[Segment]:
    """The ring segments with their collective's `overlaps` partner set to the attention core they run under: the
    forward core ("<prefix>.core") or the core's backward ("<prefix>.core_bwd"; a selective recomputation of the
    core before it is not counted as cover)."""
    cores = [op for op in attn_ops if op.kind == "attention" and ".recompute." not in op.name]
    out = []
    for seg in segments:
        partner = next((c for c in cores if c.phase == seg.ops[0].phase), None)
        out.append(seg if partner is None else
                   replace(seg, ops=tuple(replace(op, overlaps=partner) for op in seg.ops)))
    return out
