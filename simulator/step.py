"""One training step: the pipeline pass of every micro-batch, then gradient synchronisation and the optimizer.

Data-parallel replicas behave alike, so one representative pipeline is simulated (DESIGN principle 4).
After a rank's last backward it reduces its gradients over its data-parallel group (ZeRO-1: reduce-scatter,
then the optimizer updates its shard, then the updated BF16 parameters are all-gathered; ZeRO-2 alike; ZeRO-0:
all-reduce and a full update). Under ZeRO-3 (FSDP) the parameters are gathered and the gradients reduce-scattered
layer by layer inside every micro-batch's instructions (`workloads.zero.zero3_passes`), so the tail is the
optimizer update of the shard alone. The step ends when the slowest rank has its new parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from gpuhours.hwmodels.cluster import ClusterSpec
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.simulator.chunks import HardwareCoster
from gpuhours.simulator.engine import PipelineResult, run_pipeline
from gpuhours.simulator.dp_tail import DataParallelTail
from gpuhours.simulator.nccl_sms import bucket_fraction
from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.stage_classes import SharedStageCoster
from gpuhours.workloads import params as P
from gpuhours.workloads.flops import flops_per_token
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.recompute import full_layers
from gpuhours.workloads.stage_ops import stage_units
from gpuhours.workloads.pipeline_layout import stage_holds
from gpuhours.simulator.balance import fit_memory, partition_layers, rebalance_for_ranks, split_memory, stage_ranks
from gpuhours.simulator import split_search
from gpuhours.simulator.split_search import refine_ends, search_split
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.recipe import MemoryRecipe, load_recipe
from gpuhours.workloads.zero import with_grad_reduce_dtype



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


# Candidate splits are simulated at the run's main step when it has at most this many micro-batches per pipeline
# stage, else compared on the line through 4 pp and 8 pp (Assumption: by 8 pp the fill and drain are an eighth
# of the step and the steady period is reached, `affine_steps`; a line carried further ranks splits, it prices
# nothing).
CANDIDATE_MICROBATCHES = 8


class StepSimulator(DataParallelTail):
    """Simulates steps of one (model, layout, cluster) for any number of micro-batches; shapes are memoised."""

    def __init__(self, model: ModelSpec, parallel: ParallelSpec, cluster: ClusterSpec, compute: ComputeModel,
                 network, seq_len: int, opts: OpOptions = OpOptions(), recipe: MemoryRecipe | None = None,
                 balance_microbatches: int | None = None):
        parallel.check_model(model)
        if parallel.num_gpus != cluster.num_gpus:
            raise ValueError(f"gpus in the layout ({parallel.num_gpus}) and the cluster ({cluster.num_gpus}) differ")
        self.model, self.parallel, self.cluster = model, parallel, cluster
        self.compute, self.network, self.seq_len, self.opts = compute, network, seq_len, opts
        self.recipe = recipe or load_recipe()
        self.balance_microbatches = balance_microbatches  # the step candidate splits are compared at
        self._candidates: dict[tuple[int, ...], StepSimulator] = {}  # splits simulated while balancing
        self._split_memories: dict[tuple[int, ...], tuple[float, ...]] = {}  # `_split_memory` per split
        self.stage_layers = tuple(parallel.stage_layers or self._balanced_stage_layers())
        twin = self._candidates.pop(self.stage_layers, None)
        if split_search.RELEASE_LOSERS:  # freed now, not by the cyclic collector (`split_search.release`)
            for loser in self._candidates.values():
                split_search.release(loser)
        self._candidates.clear()
        if twin is not None:  # the winning candidate was simulated already: take over its costs and steps
            self.coster, self._cache, self._dp_memo = twin.coster, twin._cache, twin._dp_memo
            self._plain_coster, self._shared = twin._plain_coster, twin._shared
            return
        self.coster = HardwareCoster(model, parallel, cluster, compute, network, seq_len, self.stage_layers, opts,
                                     with_grad_reduce_dtype(self.recipe, parallel))  # ZeRO-3's reduce bytes
        if getattr(self, "_probe_prices", None) is not None:  # the balancing probe's op prices: same layout, same
            self.coster._op_times = self._probe_prices      # pricing (`HardwareCoster.op_time` keys by shape)
        self._cache: dict[tuple[int, bool], StepResult] = {}
        self._dp_memo: dict[frozenset[int], tuple[float, float, int]] = {}  # `_dp_collectives` per set of stages
        self._plain_coster: HardwareCoster | None = None  # FSDP under pipelining: instructions that gather nothing
        self._shared: SharedStageCoster | None = None     # one profile per class of identical stages

    # -- stage assignment ---------------------------------------------------------------------------------------
    def _balanced_stage_layers(self) -> tuple[int, ...]:
        """Contiguous layers per stage minimising the most expensive stage (embedding on the first stage, head and
        MTP on the last), by dynamic programming over (stages, layers) with each unit's simulated solo cost; then
        the busiest rank's load (`simulator.balance`), and memory when that split does not fit the GPU while one
        of similar time does (`balance.fit_memory`). That proxy cannot weigh the end stages' embedding, head and
        MTP work on a pipeline's critical path: splits balanced with that work weighed otherwise are simulated and
        the fastest wins (`simulator.split_search`).
        Under "full:N" recomputation (`workloads.recompute`) a layer among the first N of its stage is another kind
        (fully recomputed): each layer costs its non-recomputed price, and the first N of a stage also the
        difference (`balance.partition_layers`' head_cost)."""
        model, p = self.model, self.parallel
        probe = HardwareCoster(model, p, self.cluster, self.compute, self.network, self.seq_len,
                               (model.n_layers,), self.opts)
        self._probe_prices = probe._op_times
        overlapped = p.overlaps_comm
        head_layers = full_layers(self.opts.recompute) or 0
        # a layer's passes depend on its index only through its kind (dense or MoE, recomputed or not): one price
        # per kind
        by_kind: dict[tuple[bool, int | None], float] = {}

        def price(i: int, position: int | None) -> float:
            key = (model.is_moe_layer(i), position)
            if key not in by_kind:
                by_kind[key] = probe.unit_time(layer_passes(model, i, p, self.seq_len, self.opts,
                                                            stage_position=position), overlapped)
            return by_kind[key]

        # stage_position head_layers: past the recomputed head of a stage (for policies other than "full:N" the
        # position is ignored)
        layer_cost = [price(i, head_layers) for i in range(model.n_layers)]
        head_cost = [price(i, 0) - price(i, head_layers) for i in range(model.n_layers)] if head_layers else None
        head = dict(head_cost=head_cost, head_layers=head_layers)
        units = stage_units(model, p, self.seq_len, range(0), True, True, self.opts)
        first_extra = sum(probe.unit_time(u, overlapped) for u in units if u.name == "embed")
        last_extra = sum(probe.unit_time(u, overlapped) for u in units if u.name != "embed")
        holders = stage_ranks(p)
        splits: dict[float, tuple[int, ...]] = {}
        from_partition: dict[tuple[int, ...], tuple[int, ...]] = {}

        def split_at(weight: float) -> tuple[int, ...]:
            """The balanced split with the end stages' extra work weighed at `weight` times its cost. A weight whose
            time-balanced partition another weight reached already gives that weight's split (the rank and memory
            balancing start from the same place; a candidate generator, so the shortcut moves no figure that the
            simulation of the winner does not decide)."""
            if weight not in splits:
                first, last = weight * first_extra, weight * last_extra
                sizes = tuple(int(n) for n in partition_layers(layer_cost, p.num_stages, first, last, **head))
                if sizes not in from_partition:
                    balanced = rebalance_for_ranks(sizes, layer_cost, holders, first, last, **head)
                    from_partition[sizes] = tuple(int(n) for n in fit_memory(
                        balanced, layer_cost, holders, self._split_memory, self.cluster.gpu.hbm_bytes, first, last,
                        **head))
                splits[weight] = from_partition[sizes]
            return splits[weight]

        proxy = split_at(1.0)
        if max(self._split_memory(proxy)) > self.cluster.gpu.hbm_bytes:
            return proxy  # it does not fit even after `fit_memory`: the layout must change, not its balance
        short = 2 * p.pp  # a full pipeline under every schedule (DualPipe's fewest micro-batches)
        main = self.balance_microbatches or short
        if main <= short:  # a run of short steps: compare on its own
            best = search_split(split_at, lambda split: self._candidate(split).step(main).step_time)
            timed = lambda split: self._candidate(split).step(main).step_time  # noqa: E731
        else:
            best = search_split(split_at, lambda split: self._candidate(split).step(short).step_time,
                                self._candidate_step_time)
            timed = self._candidate_step_time
        if p.pp > 1 and holders[0] == holders[-1]:  # one of several ranks holds both end stages (DualPipeV):
            # `split_search.refine_ends`
            best = refine_ends(best, timed, lambda s: max(self._split_memory(s)) <= self.cluster.gpu.hbm_bytes)
        return best

    def _candidate(self, split: tuple[int, ...]) -> StepSimulator:
        """This layout with `split` as its layers per stage, built once; kept so that, if it wins, this simulator
        takes over its costs and steps."""
        if split not in self._candidates:
            self._candidates[split] = StepSimulator(self.model, replace(self.parallel, stage_layers=split),
                                                    self.cluster, self.compute, self.network, self.seq_len,
                                                    self.opts, self.recipe)
        return self._candidates[split]

    def _candidate_step_time(self, split: tuple[int, ...]) -> float:
        """The simulated step of this layout with `split` as its layers per stage at `balance_microbatches` (the
        run's main step, `run.main_microbatches`): a split's fill and drain weigh less the more micro-batches
        share them, so near ties are decided where the run spends its time (past `CANDIDATE_MICROBATCHES` x pp,
        on a line)."""
        candidate = self._candidate(split)
        m, cap = self.balance_microbatches, CANDIDATE_MICROBATCHES * self.parallel.pp
        if m <= cap:
            return candidate.step(m).step_time
        # a long step: the line through 4 pp and 8 pp micro-batches, carried to m (for ranking only)
        lo, hi = candidate.step(cap // 2).step_time, candidate.step(cap).step_time
        return hi + (m - cap) * (hi - lo) / (cap - cap // 2)

    def _split_memory(self, stage_layers: tuple[int, ...]) -> tuple[float, ...]:
        """Every rank's memory of a split at a full pipeline (`balance.split_memory`), memoised per split: the
        weights of `simulator.split_search` each fit memory from nearby splits (a sweep: 3 asks per split)."""
        memo = self._split_memories
        key = tuple(stage_layers)
        if key not in memo:
            memo[key] = split_memory(self.model, self.parallel, self.seq_len, key, self.recipe, self.opts)
        return memo[key]

    # -- one step ----------------------------------------------------------------------------------------------
    def step(self, num_microbatches: int, detail: bool = False) -> StepResult:
        key = (num_microbatches, detail)
        if key not in self._cache:
            self._cache[key] = self._simulate(num_microbatches, detail)
        return self._cache[key]

    def _simulate(self, num_microbatches: int, detail: bool) -> StepResult:
        p = self.parallel
        schedule = build_schedule(p.schedule, p.pp, num_microbatches, vpp=p.vpp)
        windows = [self._last_backward(program, rank, detail) for rank, program in enumerate(schedule.programs)]
        # Overlapped gradient buckets run on the rank's interface in the engine (`run_pipeline(buckets=)`), where
        # they contend with pipeline sends; the tail keeps the rest. Without overlap nothing changes.
        buckets = [self._dp_buckets(stages, w) for stages, w in zip(_stages_per_rank(schedule), windows)]
        tails = [self._dp_tail(stages, w, self._first_forward(schedule.programs[rank], rank, detail),
                               in_engine=bool(b))
                 for rank, (stages, w, b) in enumerate(zip(_stages_per_rank(schedule), windows, buckets))]
        coster = self.coster if detail else self._shared_stages()
        if p.fsdp_deferred_reduce and p.reshard_after_forward:  # gathers only where parameters are sharded
            from gpuhours.simulator.fsdp_pipeline import FsdpPipelineCoster, gathering_instructions, plain_coster

            if self._plain_coster is None:
                self._plain_coster = plain_coster(self.coster)
            coster = FsdpPipelineCoster(self.coster, self._plain_coster, gathering_instructions(schedule))
        held = [bucket_fraction(self, s) if b else 0.0 for s, b in zip(_stages_per_rank(schedule), buckets)]
        result = run_pipeline(schedule, coster, detail=detail, tail=tails.__getitem__, record=detail,
                              buckets=buckets.__getitem__ if any(buckets) else None,
                              bucket_sms=held.__getitem__ if any(held) else None)  # `simulator.nccl_sms`
        if any(buckets):  # what the engine left exposed of the buckets (and of the rank's last sends)
            tails = [t + (result.nic_wait_per_rank[r] if b else 0.0)
                     for r, (t, b) in enumerate(zip(tails, buckets))]
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

    # -- what the data-parallel tail (`simulator.dp_tail`) reads -----------------------------------------------------
    def rank_params(self, stages: set[int]) -> tuple[float, float]:
        return rank_params(self.model, self.parallel, self.stage_layers, stages)

    def _shared_stages(self) -> SharedStageCoster:
        """The coster that prices each class of identical stages once (`simulator.stage_classes`): the same
        figures, for steps without a timeline."""
        if self._shared is None:
            self._shared = SharedStageCoster(self.coster)
        return self._shared

    def _last_backward(self, program, rank: int, detail: bool = True) -> float:
        """Seconds of the rank's last instruction when it is a backward (its gradients become ready during it:
        the window an overlapped gradient reduction can hide under), else 0."""
        last = program[-1] if program else None
        if last is None or last.kind == "F":
            return 0.0
        return (self.coster if detail else self._shared_stages()).profile(rank, last).duration

    def _first_forward(self, program, rank: int, detail: bool = True) -> float:
        """Seconds of the rank's first forward instruction (the window FSDP's once-per-step gathers stream
        under), 0 when it has none."""
        first = next((ins for ins in program if ins.kind.startswith("F")), None)
        coster = self.coster if detail else self._shared_stages()
        return coster.profile(rank, first).duration if first is not None else 0.0


@lru_cache(maxsize=16)
def _layer_params(model: ModelSpec) -> tuple[tuple[int, ...], int]:
    """Every layer's parameters (`params.layer_params`) and one MoE layer's routed experts', per model: the same
    numbers `rank_params` summed layer by layer, asked once (a split's memory asks for every rank)."""
    routed = model.moe.n_routed_experts * P.expert_params(model) if model.moe is not None else 0
    return tuple(P.layer_params(model, i) for i in range(model.n_layers)), routed


def rank_params(model: ModelSpec, p: ParallelSpec, stage_layers: tuple[int, ...], stages: set[int]
                ) -> tuple[float, float]:
    """(dense, expert) parameters a rank holds for `stages`: dense ones are split by tp and replicated over dp x cp;
    expert ones are split by ep x etp (each expert's weights over its etp ranks, `workloads.moe_dispatch`) and
    replicated over the stage's expert_dp grids."""
    starts = [0]
    for n in stage_layers:
        starts.append(starts[-1] + n)
    dense = expert = 0.0
    last = len(stage_layers) - 1
    layer_full, routed_all = _layer_params(model)
    for s in stages:
        for i in range(starts[s], starts[s + 1]):
            full = layer_full[i]
            if model.is_moe_layer(i):
                routed = routed_all
                dense += (full - routed) / p.tp
                expert += routed / (p.ep * p.etp)
            else:
                dense += full / p.tp
        holds = stage_holds(p, range(starts[s], starts[s + 1]), s == 0, s == last)  # `pipeline_layout`
        if holds.embedding:
            dense += P.embedding_params(model) / p.tp
        if holds.head:
            dense += P.head_params(model) / p.tp
        if holds.mtp_modules:
            if model.mtp_depth:
                mtp = P.mtp_params(model)
                routed = model.moe.n_routed_experts * P.expert_params(model) if model.moe else 0
                dense += (mtp - routed * model.mtp_depth) / p.tp
                expert += routed * model.mtp_depth / (p.ep * p.etp)
    return dense, expert


def _stages_per_rank(schedule) -> list[set[int]]:
    """The stages each rank runs (from its program; remembered for the schedule last asked about)."""
    if _LAST_STAGES and _LAST_STAGES[0] is schedule.programs:
        return [set(x) for x in _LAST_STAGES[1]]
    stages: list[set[int]] = []
    for program in schedule.programs:  # an instruction's parts are its stage and, for FB, its b_stage
        held = {ins.stage for ins in program}
        held.update(ins.b_stage for ins in program if ins.b_stage is not None)
        stages.append(held)
    _LAST_STAGES[:] = [schedule.programs, [frozenset(x) for x in stages]]
    return stages


_LAST_STAGES: list = []
