"""One training step: the pipeline pass of every micro-batch, then gradient synchronisation and the optimizer.

Data-parallel replicas behave alike, so one representative pipeline is simulated (DESIGN principle 4).
After a rank's last backward it reduces its gradients over its data-parallel group (ZeRO-1: reduce-scatter,
then the optimizer updates its shard, then the updated BF16 parameters are all-gathered; ZeRO-2 alike; ZeRO-0:
all-reduce and a full update). Under ZeRO-3 (FSDP) the parameters are gathered and the gradients reduce-scattered
layer by layer inside every micro-batch's instructions (`workloads.zero.zero3_passes`), so the tail is the
optimizer update of the shard alone. The step ends when the slowest rank has its new parameters.
"""

from __future__ import annotations

import math

import numpy as np

from dataclasses import dataclass, field

from gpuhours.hwmodels.cluster import ClusterSpec
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.simulator.overlap import exposed_streamed as exposed_streamed_gather  # noqa: F401 (re-exported)
from gpuhours.simulator.chunks import HardwareCoster
from gpuhours.simulator.engine import PipelineResult, run_pipeline
from gpuhours.simulator.schedules import build_schedule
from gpuhours.workloads import params as P
from gpuhours.workloads.flops import flops_per_token
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import Op, OpOptions
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.stage_ops import stage_units
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.recipe import MemoryRecipe, load_recipe



@dataclass(frozen=True)
class StepResult:
    schedule: str
    num_microbatches: int
    tokens: int                        # tokens trained in this step (all replicas)
    step_time: float                   # seconds
    pipeline_time: float               # makespan of the pipeline pass
    dp_sync_time: float                # gradient sync + optimizer + parameter gather on the slowest rank
                                       # (it waits on the network interface for the rank's last sends)
    busy_per_rank: tuple[float, ...]
    comm_busy_per_rank: tuple[float, ...]
    bubble_per_rank: tuple[float, ...]        # idle: neither an instruction nor its own tail
    exposed_comm_per_rank: tuple[float, ...]  # time inside instructions when compute waits for communication
    dp_tail_per_rank: tuple[float, ...]      # each rank's gradient sync + optimizer + parameter gather
    stage_layers: tuple[int, ...]
    model_flops: float                 # model FLOPs of the step (6N-style plus attention, incl. MTP)
    num_gpus: int
    peak_bf16: float
    peak_fp8: float
    peak_activations_per_rank: tuple[int, ...]
    pipeline: PipelineResult = field(repr=False, compare=False)

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens / self.step_time / self.num_gpus

    def mfu(self, dtype: str = "bf16") -> float:
        peak = self.peak_bf16 if dtype == "bf16" else self.peak_fp8
        return self.model_flops / (self.step_time * self.num_gpus * peak)

    @property
    def bubble_share(self) -> float:
        return sum(self.bubble_per_rank) / (len(self.bubble_per_rank) * self.step_time)

    @property
    def imbalance_share(self) -> float:
        """The part of the bubble that is uneven work: every rank's idle time beyond the least idle rank's
        (the busiest rank idles only for the schedule's fill and drain and its waits)."""
        floor = min(self.bubble_per_rank)
        return sum(b - floor for b in self.bubble_per_rank) / (len(self.bubble_per_rank) * self.step_time)

    @property
    def exposed_comm_share(self) -> float:
        """Exposed EP/TP communication inside instructions plus the data-parallel tail, per rank-second."""
        ranks = len(self.exposed_comm_per_rank)
        return (sum(self.exposed_comm_per_rank) + sum(self.dp_tail_per_rank)) / (ranks * self.step_time)


class StepSimulator:
    """Simulates steps of one (model, layout, cluster) for any number of micro-batches; shapes are memoised."""

    def __init__(self, model: ModelSpec, parallel: ParallelSpec, cluster: ClusterSpec, compute: ComputeModel,
                 network, seq_len: int, opts: OpOptions = OpOptions(), recipe: MemoryRecipe | None = None):
        parallel.check_model(model)
        if parallel.num_gpus != cluster.num_gpus:
            raise ValueError(f"gpus in the layout ({parallel.num_gpus}) and the cluster ({cluster.num_gpus}) differ")
        self.model, self.parallel, self.cluster = model, parallel, cluster
        self.compute, self.network, self.seq_len, self.opts = compute, network, seq_len, opts
        self.recipe = recipe or load_recipe()
        self.stage_layers = parallel.stage_layers or self._balanced_stage_layers()
        self.coster = HardwareCoster(model, parallel, cluster, compute, network, seq_len, self.stage_layers, opts,
                                     self.recipe)
        self._cache: dict[tuple[int, bool], StepResult] = {}

    # -- stage assignment ---------------------------------------------------------------------------------------
    def _balanced_stage_layers(self) -> tuple[int, ...]:
        """Contiguous layers per stage minimising the most expensive stage (embedding on the first stage, head and
        MTP on the last), by dynamic programming over (stages, layers) with each unit's simulated solo cost."""
        model, p = self.model, self.parallel
        probe = HardwareCoster(model, p, self.cluster, self.compute, self.network, self.seq_len,
                               (model.n_layers,), self.opts)
        overlapped = p.overlaps_comm
        # a layer's passes depend on its index only through its kind (dense or MoE): one price per kind
        by_kind: dict[bool, float] = {}
        for i in range(model.n_layers):
            moe = model.is_moe_layer(i)
            if moe not in by_kind:
                by_kind[moe] = probe.unit_time(layer_passes(model, i, p, self.seq_len, self.opts), overlapped)
        layer_cost = [by_kind[model.is_moe_layer(i)] for i in range(model.n_layers)]
        units = stage_units(model, p, self.seq_len, range(0), True, True, self.opts)
        first_extra = sum(probe.unit_time(u, overlapped) for u in units if u.name == "embed")
        last_extra = sum(probe.unit_time(u, overlapped) for u in units if u.name != "embed")
        sizes = partition_layers(layer_cost, p.num_stages, first_extra, last_extra)
        return rebalance_for_ranks(sizes, layer_cost, stage_ranks(p), first_extra, last_extra)

    # -- one step ----------------------------------------------------------------------------------------------
    def step(self, num_microbatches: int, detail: bool = False) -> StepResult:
        key = (num_microbatches, detail)
        if key not in self._cache:
            self._cache[key] = self._simulate(num_microbatches, detail)
        return self._cache[key]

    def _simulate(self, num_microbatches: int, detail: bool) -> StepResult:
        p = self.parallel
        schedule = build_schedule(p.schedule, p.pp, num_microbatches, vpp=p.vpp)
        tails = [self._dp_tail(stages, self._last_backward(schedule.programs[rank], rank),
                               self._first_forward(schedule.programs[rank], rank))
                 for rank, stages in enumerate(_stages_per_rank(schedule))]
        result = run_pipeline(schedule, self.coster, detail=detail, tail=tails.__getitem__, record=detail)
        step_time = max(result.end_per_rank)
        slowest = result.end_per_rank.index(step_time)
        executing = [result.makespan - b for b in result.bubble_per_rank]
        exposed = tuple(max(0.0, e - c) for e, c in zip(executing, result.busy_per_rank))
        # context-parallel ranks share their sequences: dp replicas each train micro-batches x mbs sequences
        tokens = num_microbatches * p.micro_batch_size * self.seq_len * p.dp
        flops = flops_per_token(self.model, self.seq_len, include_mtp=True).training_per_token * tokens
        gpu = self.cluster.gpu
        return StepResult(
            schedule=schedule.name, num_microbatches=num_microbatches, tokens=tokens, step_time=step_time,
            pipeline_time=result.makespan, dp_sync_time=tails[slowest],
            busy_per_rank=result.busy_per_rank, comm_busy_per_rank=result.comm_busy_per_rank,
            bubble_per_rank=tuple(step_time - e - t for e, t in zip(executing, tails)), exposed_comm_per_rank=exposed,
            dp_tail_per_rank=tuple(tails),
            stage_layers=self.stage_layers, model_flops=flops, num_gpus=p.num_gpus,
            peak_bf16=gpu.peak_flops("bf16"), peak_fp8=gpu.peak_flops("fp8") if gpu.fp8_flops else 0.0,
            peak_activations_per_rank=result.peak_activations_per_rank, pipeline=result,
        )

    # -- data-parallel tail ----------------------------------------------------------------------------------------
    def rank_params(self, stages: set[int]) -> tuple[float, float]:
        return rank_params(self.model, self.parallel, self.stage_layers, stages)

    def _last_backward(self, program, rank: int) -> float:
        """Seconds of the rank's last instruction when it is a backward (its gradients become ready during it:
        the window an overlapped gradient reduction can hide under), else 0."""
        last = program[-1] if program else None
        if last is None or last.kind == "F":
            return 0.0
        return self.coster.profile(rank, last).duration

    def _first_forward(self, program, rank: int) -> float:
        """Seconds of the rank's first forward instruction (the window FSDP's once-per-step gathers stream
        under), 0 when it has none."""
        first = next((ins for ins in program if ins.kind.startswith("F")), None)
        return self.coster.profile(rank, first).duration if first is not None else 0.0

    def _dp_tail(self, stages: set[int], window: float = 0.0, first_forward: float = 0.0) -> float:
        """What the rank does after its last instruction: the exposed part of its gradient reduction and of the
        gathering of updated parameters (see `exposed_dp_comm`), and the optimizer update of its shard.

        ZeRO-3 gathers and reduce-scatters inside the instructions, except under `fsdp_once_per_step`: then the
        whole reduce-scatter follows the last backward (PyTorch's post-backward runs after it), and the one
        gather of the step streams unit by unit under the first forward (`exposed_streamed_gather`; charged
        here, on the rank's tail, rather than before its first forward, so its delay is not carried down the
        pipeline)."""
        p = self.parallel
        dense, expert = self.rank_params(stages)
        # The groups come from the placement (`RankLayout`): a dense shard's dp x cp replicas (context-parallel
        # ranks hold the same parameters), an expert shard's replicas ("edp").
        reduce = gather = 0.0
        collective = self.coster.collective
        for n_params, size, group in ((dense, p.grad_dp, "dp"), (expert, p.expert_dp, "edp")):
            if n_params == 0 or size == 1:
                continue
            if p.zero_stage == 3 and not p.fsdp_once_per_step:  # layer by layer inside the instructions
                continue
            if p.zero_stage in (1, 2, 3):  # gradients reduced in their stored dtype, the working copy gathered
                reduce += collective("reduce_scatter", n_params * self.recipe.grad_bytes, group)
                gather += collective("all_gather", n_params * self.recipe.weight_bytes, group)
            else:
                reduce += collective("all_reduce", n_params * self.recipe.grad_bytes, group)
        buckets = max(1, math.ceil((dense + expert) / p.bucket_params))
        if p.fsdp_once_per_step:
            units = sum(self.stage_layers[s] for s in stages)
            comm = reduce + exposed_streamed_gather(gather, units, first_forward)
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
    forward waits only for the first bucket of updated parameters (gather/K); the rest arrives under it.
    Contention of these transfers with pipeline sends during the window is not modelled."""
    k = max(1, buckets)
    exposed = reduce
    if overlap_grad_reduce:
        exposed = max(reduce / k, reduce + window / k - window)
    return exposed + (gather / k if overlap_param_gather else gather)


def rank_params(model: ModelSpec, p: ParallelSpec, stage_layers: tuple[int, ...], stages: set[int]
                ) -> tuple[float, float]:
    """(dense, expert) parameters a rank holds for `stages`: dense ones are split by tp and replicated over dp x cp;
    expert ones are split by ep and replicated over the stage's ep groups."""
    starts = [0]
    for n in stage_layers:
        starts.append(starts[-1] + n)
    dense = expert = 0.0
    last = len(stage_layers) - 1
    for s in stages:
        for i in range(starts[s], starts[s + 1]):
            full = P.layer_params(model, i)
            if model.is_moe_layer(i):
                routed = model.moe.n_routed_experts * P.expert_params(model)
                dense += (full - routed) / p.tp
                expert += routed / p.ep
            else:
                dense += full / p.tp
        if s == 0:
            dense += P.embedding_params(model) / p.tp
        if s == last:
            dense += P.head_params(model) / p.tp
            if model.mtp_depth:
                mtp = P.mtp_params(model)
                routed = model.moe.n_routed_experts * P.expert_params(model) if model.moe else 0
                dense += (mtp - routed * model.mtp_depth) / p.tp
                expert += routed * model.mtp_depth / p.ep
    return dense, expert


def _stages_per_rank(schedule) -> list[set[int]]:
    """The stages each rank runs (from its program; remembered for the schedule last asked about)."""
    if _LAST_STAGES and _LAST_STAGES[0] is schedule.programs:
        return [set(x) for x in _LAST_STAGES[1]]
    stages: list[set[int]] = [set() for _ in range(schedule.pp)]
    for rank, program in enumerate(schedule.programs):
        for ins in program:
            for kind, _, stage in ins.parts():
                stages[rank].add(stage)
    _LAST_STAGES[:] = [schedule.programs, [frozenset(x) for x in stages]]
    return stages


_LAST_STAGES: list = []


def partition_layers(layer_cost: list[float], num_stages: int, first_extra: float = 0.0,
                     last_extra: float = 0.0) -> tuple[int, ...]:
    """Split layers into `num_stages` contiguous, non-empty runs minimising the largest stage cost.

    The first stage also pays `first_extra` and the last `last_extra`; a stage with such extra work may hold no
    layer at all (a last stage of just the head and MTP), every other stage holds at least one.
    O(stages x layers^2) dynamic programming (one array operation per stage); ties go to the earliest split, so equal layers give the balanced
    split with remainders toward the front.
    """
    n = len(layer_cost)
    if not 1 <= num_stages <= n:
        raise ValueError(f"stages ({num_stages}) must be between 1 and the number of layers ({n})")
    min_layers = _min_layers(num_stages, first_extra, last_extra)
    prefix = [0.0]
    for c in layer_cost:
        prefix.append(prefix[-1] + c)

    # best[s][j]: the least largest stage cost of layers 0..j-1 on stages 0..s-1; cut[s][j] the first layer of
    # stage s-1 in that split. Each row is one (j, i) array: stage s-1 holds layers i..j-1.
    inf = float("inf")
    pre = np.array(prefix)
    j_idx, i_idx = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
    best = np.full((num_stages + 1, n + 1), inf)
    cut = np.zeros((num_stages + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for s in range(1, num_stages + 1):
        extra = (first_extra if s == 1 else 0.0) + (last_extra if s == num_stages else 0.0)
        value = np.maximum(best[s - 1][None, :], pre[:, None] - pre[None, :] + extra)
        value[i_idx > j_idx - min_layers[s - 1]] = inf
        low = value.min(axis=1)
        # ties go to the earliest split: the first i within rounding (1e-12 of the total) of the minimum
        tie = value <= (low + 1e-12 * max(pre[-1], 1e-300))[:, None]
        best[s] = low
        cut[s] = np.where(np.isfinite(low), tie.argmax(axis=1), 0)
    if best[num_stages][n] == inf:
        raise ValueError(f"cannot split {n} layers into {num_stages} stages")
    sizes, j = [], n
    for s in range(num_stages, 0, -1):
        i = cut[s][j]
        sizes.append(j - i)
        j = i
    return tuple(reversed(sizes))


def stage_ranks(parallel: ParallelSpec) -> tuple[tuple[int, ...], ...]:
    """The ranks that hold each stage: rank s (1F1B, ZB1P), s mod pp (interleaved), s and pp-1-s (DualPipe),
    the V of DualPipeV (s for s < pp, 2pp-1-s after)."""
    pp, n = parallel.pp, parallel.num_stages
    if parallel.schedule == "dualpipe":
        return tuple((s, pp - 1 - s) for s in range(n))
    if parallel.schedule == "dualpipev":
        return tuple((s if s < pp else 2 * pp - 1 - s,) for s in range(n))
    return tuple((s % pp,) for s in range(n))


def _min_layers(num_stages: int, first_extra: float, last_extra: float) -> list[int]:
    """Layers each stage must hold: one, except an end stage that already carries embedding or head work."""
    mins = [1] * num_stages
    if num_stages > 1:
        mins[0] = 0 if first_extra > 0 else 1
        mins[-1] = 0 if last_extra > 0 else 1
    return mins


def rebalance_for_ranks(sizes: tuple[int, ...], layer_cost: list[float], holders: tuple[tuple[int, ...], ...],
                        first_extra: float = 0.0, last_extra: float = 0.0) -> tuple[int, ...]:
    """Move one layer at a time from one stage to another while that lowers the busiest rank's load.

    A rank's load is the sum of the costs of the stages it holds (DualPipe's rank r holds stages r and PP-1-r,
    so balancing stages alone leaves rank 0, with the embedding and the head, the busiest). Stages stay
    contiguous: only their sizes change. Hill climbing on (max rank load, max stage cost); every stage keeps the
    layers `partition_layers` requires of it.
    """
    num_ranks = 1 + max(r for rs in holders for r in rs)
    scale = sum(layer_cost) + first_extra + last_extra or 1.0
    run_sums: dict[tuple[int, int], float] = {}

    def run_sum(start: int, n: int) -> float:
        key = (start, n)
        if key not in run_sums:
            run_sums[key] = sum(layer_cost[start:start + n])
        return run_sums[key]

    def score(sz: tuple[int, ...]) -> tuple[float, float]:
        stage_cost, start = [], 0
        for s, n in enumerate(sz):
            c = run_sum(start, n) + (first_extra if s == 0 else 0.0)
            c += last_extra if s == len(sz) - 1 else 0.0
            stage_cost.append(c)
            start += n
        load = [0.0] * num_ranks
        for s, c in enumerate(stage_cost):
            for r in holders[s]:
                load[r] += c
        # Rounded relative to the total, so sums of equal layers grouped differently tie exactly.
        return round(max(load) / scale, 9), round(max(stage_cost) / scale, 9)

    mins = _min_layers(len(sizes), first_extra, last_extra)
    best, best_score = tuple(sizes), score(tuple(sizes))
    improved = True
    while improved:
        improved = False
        for a in range(len(best)):
            for b in range(len(best)):
                if a == b or best[a] == mins[a]:
                    continue
                sz = list(best)
                sz[a] -= 1
                sz[b] += 1
                sc = score(tuple(sz))
                if sc < best_score:
                    best, best_score, improved = tuple(sz), sc, True
    return best
