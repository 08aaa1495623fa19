"""The data-parallel tail of a step: what a rank does after its last pipeline instruction (`StepSimulator`).

Gradients are reduced over the rank's data-parallel groups (the dense shard's dp x cp replicas, the expert shard's
"edp"): ZeRO-1/2 reduce-scatter them in `grad_reduce_dtype` and all-gather the updated working copy, ZeRO-0
all-reduces them; ZeRO-3 does both inside the instructions unless pipelining defers its reduction. Overlapped
gradient buckets run in the engine beside the last backward (`_dp_buckets`), an overlapped parameter gather
under the next forward (`simulator.param_gather`), FSDP's once-per-step gather under the first forward; what is
left after the last instruction, and the optimizer update of the rank's shard, is the tail (`_dp_tail`).
"""

from __future__ import annotations

import math

from gpuhours.simulator.nccl_sms import streamed_gather_rate
from gpuhours.simulator.overlap import exposed_streamed as exposed_streamed_gather
from gpuhours.simulator.param_gather import exposed_param_gather
from gpuhours.workloads.ops import Op
from gpuhours.workloads.zero import grad_reduce_bytes


class DataParallelTail:
    """`StepSimulator`'s data-parallel tail (a mixin: it reads the simulator's parallel, coster, compute,
    recipe, stage_layers, `rank_params` and `_dp_memo`)."""

    def _dp_collectives(self, stages: set[int]) -> tuple[float, float, int]:
        """Seconds of the rank's data-parallel gradient reduction and parameter gather when nothing else runs,
        and the number of gradient buckets (memoised: a step's buckets and tail, and every simulated step, ask for
        the same stages)."""
        key = frozenset(stages)
        hit = self._dp_memo.get(key)
        if hit is None:
            hit = self._dp_memo[key] = self._price_dp_collectives(stages)
        return hit

    def _price_dp_collectives(self, stages: set[int]) -> tuple[float, float, int]:
        p = self.parallel
        dense, expert = self.rank_params(stages)
        # The groups come from the placement (`RankLayout`): a dense shard's dp x cp replicas (context-parallel
        # ranks hold the same parameters), an expert shard's replicas ("edp").
        reduce = gather = 0.0
        collective = self.coster.collective
        grad_bytes = grad_reduce_bytes(p, self.recipe.grad_bytes)
        for n_params, size, group in ((dense, p.grad_dp, "dp"), (expert, p.expert_dp, "edp")):
            if n_params == 0 or size == 1:
                continue
            if p.zero_stage == 3 and not p.fsdp_deferred_reduce:  # layer by layer inside the instructions
                continue
            if p.zero_stage in (1, 2, 3):  # gradients reduced in grad_reduce_dtype, the working copy gathered
                reduce += collective("reduce_scatter", n_params * grad_bytes, group)
                gather += collective("all_gather", n_params * self.recipe.weight_bytes, group)
            else:
                reduce += collective("all_reduce", n_params * grad_bytes, group)
        return reduce, gather, max(1, math.ceil((dense + expert) / p.bucket_params))

    def _dp_buckets(self, stages: set[int], window: float) -> tuple[tuple[float, float], ...]:
        """The gradient buckets the engine runs on the rank's interface during its last backward (`window` s;
        `run_pipeline`'s `buckets`): K equal buckets of the reduction, bucket k ready after k/K of the backward,
        as `exposed_dp_comm` assumes. Empty without `overlap_grad_reduce`, when the last instruction is not a
        backward, and for ZeRO-3 (its reductions are inside the instructions or after the last backward)."""
        p = self.parallel
        if not p.overlap_grad_reduce or window <= 0.0 or p.zero_stage == 3:
            return ()
        reduce, _, k = self._dp_collectives(stages)
        if reduce <= 0.0:
            return ()
        return tuple((i / k, reduce / k) for i in range(1, k + 1))

    def _dp_tail(self, stages: set[int], window: float = 0.0, first_forward: float = 0.0,
                 in_engine: bool = False) -> float:
        """What the rank does after its last instruction: the exposed part of its gradient reduction and of the
        gathering of updated parameters (see `exposed_dp_comm`), and the optimizer update of its shard.

        ZeRO-3 gathers and reduce-scatters inside the instructions, except under pipeline parallelism
        (`fsdp_deferred_reduce`): then the whole reduce-scatter follows the last backward (PyTorch's pipelining
        runs FSDP's post-backward once, after it: `simulator.fsdp_pipeline`), and under `fsdp_once_per_step` the
        one gather of the step streams unit by unit under the first forward (`exposed_streamed_gather`; charged
        here, on the rank's tail, rather than before its first forward, so its delay is not carried down the
        pipeline). Gradients travel in `grad_reduce_dtype` (`workloads.zero.grad_reduce_bytes`); the optimizer
        reads an FP32 gradient shard either way (Assumption: Megatron's distributed optimizer casts a BF16
        shard to FP32 before the update; the cast's traffic is not counted). `in_engine`: the gradient buckets run
        in the engine (`_dp_buckets`), so the tail leaves the reduction out."""
        p = self.parallel
        dense, expert = self.rank_params(stages)
        reduce, gather, buckets = self._dp_collectives(stages)
        if in_engine:
            reduce = 0.0
        if p.fsdp_once_per_step:
            units = sum(self.stage_layers[s] for s in stages)
            # the forward runs on the SMs the gathers' NCCL channels leave it (`simulator.nccl_sms`)
            rate = streamed_gather_rate(self.coster, dense * self.recipe.weight_bytes / max(1, units))
            comm = reduce + exposed_streamed_gather(gather, units, first_forward, rate)
        elif p.fsdp_deferred_reduce:  # the gathers ran inside the instructions (`simulator.fsdp_pipeline`)
            comm = reduce
        elif p.overlap_param_gather and gather > 0.0:  # bucket by bucket under the next forward
            comm = exposed_dp_comm(reduce, 0.0, buckets, window, p.overlap_grad_reduce, False) + exposed_param_gather(
                self.coster, gather, buckets, first_forward, (dense + expert) * self.recipe.weight_bytes / buckets)
        else:
            comm = exposed_dp_comm(reduce, gather, buckets, window, p.overlap_grad_reduce, p.overlap_param_gather)
        shard = (dense / p.grad_dp + expert / p.expert_dp) if p.zero_stage >= 1 else dense + expert
        update = Op("optimizer.adamw", "elementwise", "W", "optimizer", 0.0,
                    shard * self.recipe.optimizer_bytes_per_param())
        return comm + self.compute.duration(update)


def exposed_dp_comm(reduce: float, gather: float, buckets: int, window: float, overlap_grad_reduce: bool,
                    overlap_param_gather: bool) -> float:
    """Seconds of data-parallel communication left after the rank's last instruction.

    Without overlap the whole gradient reduction (`reduce` s) and parameter gather (`gather` s) follow the last
    backward. With `overlap_grad_reduce`, the gradients fall into `buckets` equal buckets that become ready
    evenly over the last backward (`window` s: bucket k at k x window / buckets) and are reduced one after
    another on the network interface; the reduction then ends at max_k(k w/K + (K - k + 1) r) with r = reduce/K,
    so what outlasts the backward is max(r, reduce + w/K - w). With `overlap_param_gather` the next step's
    forward waits only for the first bucket of updated parameters (gather/K); the rest arrives under it (a step
    also charges the forward's slow-down beside it, or what a short forward leaves: `simulator.param_gather`).
    A step runs the buckets in the engine instead (`StepSimulator._dp_buckets`, on the rank's interface with its
    pipeline sends); this closed form is what the engine gives when nothing else holds the interface."""
    k = max(1, buckets)
    exposed = reduce
    if overlap_grad_reduce:
        exposed = max(reduce / k, reduce + window / k - window)
    return exposed + (gather / k if overlap_param_gather else gather)
