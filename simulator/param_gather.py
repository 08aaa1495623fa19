"""Megatron-Core's overlapped parameter all-gather (`--overlap-param-gather`, `ParallelSpec.overlap_param_gather`)
under the next step's forward.

Source: Megatron-LM commit f048bf8c08 (D. Narayanan, 2023-11-17, "Overlap all-gather in distributed optimizer"),
megatron/optimizer/distrib_optimizer.py: after the optimizer step only the first bucket's all-gather is dispatched;
a forward pre-hook waits on a bucket's all-gather just before the forward uses that bucket's parameters, and then
dispatches the next bucket's. So the K buckets of updated parameters arrive one after another on the data-parallel
group, one bucket ahead of the forward that consumes them: `simulator.overlap.exposed_streamed` with K pieces and
the rank's first forward as the computation. The forward runs on the SMs the all-gathers' NCCL channels leave it
while they are in flight (`simulator.nccl_sms.streamed_gather_rate`, the rule FSDP's streamed gather follows).

Charged on the rank's tail, as FSDP's once-per-step gather is (`dp_tail.DataParallelTail._dp_tail`), so its delay is not
carried down the pipeline. Assumption: every bucket holds the same bytes and is gathered at the rate of the dense
data-parallel group's bucket (expert buckets, on their own group, take the same rate).
"""

from __future__ import annotations

from gpuhours.simulator.nccl_sms import streamed_gather_rate
from gpuhours.simulator.overlap import exposed_streamed


def exposed_param_gather(coster, gather: float, buckets: int, first_forward: float, bucket_bytes: float) -> float:
    """Seconds the overlapped gather of `gather` s in `buckets` equal buckets of `bucket_bytes` adds to a rank whose
    first forward takes `first_forward` s: the first bucket, plus the forward's slow-down beside the rest (or the
    rest itself when the forward is too short to hide it). No forward: the whole gather."""
    if gather <= 0.0:
        return 0.0
    rate = streamed_gather_rate(coster, bucket_bytes) if first_forward > 0.0 else 1.0
    return exposed_streamed(gather, max(1, buckets), first_forward, rate)
