"""What one instruction costs on the hardware: its ops on a compute stream and a communication stream.

An instruction (F, B, W, BW of one stage, or an overlapped F&B pair) becomes a small graph of tasks: each
segment of `workloads.ops` (e.g. "attn(F)" on the compute stream, "dispatch(F)" on the communication stream)
is a task that depends on the previous segment of its pass. Two streams execute the tasks: each stream runs one
task at a time, and when it is free it starts the ready task that comes first in the instruction's launch order
(list scheduling, as a GPU runs kernels launched on two streams with events between them: `simulator.task_schedule`).

Launch order of an overlapped F&B pair (DualPipe): forward layer k is paired with backward layer k (counted from
the end of the backward chunk), and within the pair the compute stream is fed
    attn(F), mlp(B), mlp(W), mlp(F), attn(B), attn(W)
while the communication stream is fed
    combine(B), dispatch(F), dispatch(B), combine(F)
so that every all-to-all of one chunk runs under a computation of the other.

In schedules that overlap communication with computation, communication kernels hold `comm_sms` of the GPU's SMs
throughout the step (DeepSeek-V3 reserves 20 of 132), so every compute op runs at the rate of the remaining SMs;
in the others compute and communication take turns and compute uses every SM
(`ParallelSpec.compute_sm_fraction`). The weight-gradient GEMMs that a fused backward runs beside its backward
all-to-all are priced at the full rate too: a small optimism for those schedules. With comm_sms > 0 the EP
all-to-alls are DeepEP's kernels on those SMs and take their resident time (`HardwareCoster.deepep_call`,
`hwmodels.deepep`: notify, transfer at the SM-limited published rate, slowest peer), not the fabric's wire time.
An NCCL all-reduce, reduce-scatter or all-gather that runs beside compute (ZeRO-3's prefetched gathers and its
reduce-scatters, a fused backward's collectives beside its weight GEMMs) holds one SM per channel, and the compute
beside it runs on the rest meanwhile (`simulator.nccl_sms`).

Dependencies: a segment depends on the previous segment of its pass, except ZeRO-3's data-parallel collectives
(`workloads.zero.zero3_passes`). A parameter all-gather depends only on the previous all-gather of the pass (not
on a reduce-scatter: FSDP issues the next gather of the backward before the current reduce-scatter) and, so that at most two units' parameters are gathered at a time (the current and the prefetched one,
as FSDP limits its in-flight all-gathers; the memory model counts the same two), on the end of the unit two
before it; the unit's first segment then waits for both the previous segment and its gather. So the gather of
unit k+1 runs on the communication stream while unit k computes (prefetch). A gradient reduce-scatter depends on
its unit's weight-gradient segments (and the previous reduce-scatter); nothing waits for it inside the
instruction, so only the last one's tail is exposed.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from gpuhours.hwmodels.cluster import ClusterSpec, CommGroup
from gpuhours.hwmodels.compute import ComputeModel, elementwise_class
from gpuhours.hwmodels.deepep import DeepEPCall, DeepEPKernels, counted_bytes, distinct_targets, kernel_of
from gpuhours.hwmodels.launch import LaunchModel
from gpuhours.hwmodels.placement import EXPERT_GROUPS, RankLayout
from gpuhours.simulator.engine import InstructionProfile
from gpuhours.simulator.task_schedule import _Task
from gpuhours.simulator.instructions import Instruction
from gpuhours.simulator.nccl_sms import schedule_tasks, segment_sms, tp_overlap_time
from gpuhours.simulator.ring_overlap import cp_exposed
from gpuhours.simulator.stage_views import profile_units
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.moe_dispatch import expected_nodes_per_token
from gpuhours.workloads.ops import BF16, LayerPasses, Op, OpOptions, Segment
from gpuhours.workloads.stage_ops import stage_units_for
from gpuhours.workloads.layer_templates import segment_template
from gpuhours.workloads.zero import is_dp_collective
from gpuhours.workloads.parallel import ParallelSpec

# Launch order inside one layer pair of an overlapped F&B (see the module docstring).
_PAIR_ORDER = {
    "attn(F)": 0, "combine(B)": 1, "mlp(B)": 2, "mlp(W)": 3, "dispatch(F)": 4,
    "mlp(F)": 5, "dispatch(B)": 6, "attn(B)": 7, "attn(W)": 8, "combine(F)": 9,
}


class HardwareCoster:
    """Prices instructions of one pipeline on a cluster: the `InstructionCoster` of hardware mode."""

    uniform_transfers = True  # `transfer` depends on the ranks only: the engine prices each route once
    uniform_profiles = True   # `profile` depends on (kind, stage, b_stage) only: asked once per kind a rank runs

    def __init__(self, model: ModelSpec, parallel: ParallelSpec, cluster: ClusterSpec, compute: ComputeModel,
                 network, seq_len: int, stage_layers: tuple[int, ...], opts: OpOptions = OpOptions(),
                 recipe=None):
        self.model, self.parallel, self.cluster = model, parallel, cluster
        self.compute, self.network, self.seq_len, self.opts = compute, network, seq_len, opts
        sms = cluster.gpu.sms
        if parallel.overlaps_comm and parallel.comm_sms >= sms:
            raise ValueError(f"comm_sms must be below the GPU's {sms} SMs under {parallel.schedule} (compute keeps "
                             f"the rest), got {parallel.comm_sms}")
        self.sm_fraction = parallel.compute_sm_fraction(sms)
        self.stage_layers, self.recipe = tuple(stage_layers), recipe
        self._stages: tuple[tuple[LayerPasses, ...], ...] | None = None
        self._profile = lru_cache(maxsize=None)(self._build_profile)
        self._segment_time = lru_cache(maxsize=None)(self._price_segment)
        self._segment_sms = lru_cache(maxsize=None)(lambda seg: segment_sms(self, seg))
        self.launch = LaunchModel.for_profile(compute.profile)  # per-kernel gap, host dispatch (hwmodels/launch.py)
        self._segment_kernels = lru_cache(maxsize=None)(
            lambda seg: sum(self.launch.kernel_count(op) for op in seg.ops))
        self._op_times: dict[tuple, float] = {}
        self._seg_facts: dict[int, tuple] = {}  # `_segment_facts`: id -> (segment, seconds, crosses nodes)
        self._transfers: dict[tuple[int, int], object] = {}
        self.layout = RankLayout.of(parallel)
        self.placed = hasattr(network, "placed_phases")  # the fabric graph prices the placement's own groups
        self._groups: dict[str, list[list[int]]] = {}
        # comm_sms > 0: the EP all-to-alls are DeepEP's kernels on that many SMs (beside compute under an
        # overlapping schedule, taking turns with it otherwise): SM-limited bandwidth and resident time
        # (hwmodels/deepep.py); comm_sms 0 keeps the fabric's wire time (Megatron-Core's dispatchers)
        self.deepep = None
        if parallel.comm_sms > 0:  # the notify per call is the profile's (trace-derived) figure, else none
            comm = compute.profile.comm or {}
            notify_s = float(comm.get("deepep_notify_per_call_ms", 0.0)) * 1e-3
            # Assumption: the notify is mostly the wait for peers still computing their share of the other chunk,
            # so it scales with the tokens a rank's call carries against the traced call's
            tokens = seq_len * parallel.micro_batch_size / max(1, parallel.cp)
            notify_s *= tokens / float(comm.get("deepep_notify_tokens", tokens))
            ratio = comm.get("deepep_kernel_time_ratio") or {}  # a trace's kernels over our calls (`hwmodels.deepep`)
            self.deepep = replace(DeepEPKernels.load(), notify_s=notify_s, time_ratio=(
                float(ratio.get("dispatch", 1.0)), float(ratio.get("combine", 1.0))))
        ep_per_node = self.comm_group("ep").per_node  # the nodes an EP group spans under the placement
        self.nodes_per_token = (opts.nodes_per_token if opts.nodes_per_token is not None
                                else expected_nodes_per_token(model, parallel.ep, ep_per_node,
                                                              opts.max_nodes_per_token))

    @property
    def stages(self) -> tuple[tuple[LayerPasses, ...], ...]:
        """Every stage's units (embedding, layers, head, MTP), built on first use: pricing single units (stage
        balancing) never needs them."""
        if self._stages is None:
            self._stages = tuple(map(self.stage, range(len(self.stage_layers))))
        return self._stages

    def stage(self, s: int) -> tuple[LayerPasses, ...]:
        """Stage s's units, built on first use (an instruction's profile reads only its own stages); a stage that
        another split of this layout built already is shared (`stage_ops.stage_units_for`)."""
        if self._stages is not None:
            return self._stages[s]
        built = self.__dict__.setdefault("_built_stages", {})
        if s not in built:
            start = sum(self.stage_layers[:s])
            built[s] = stage_units_for(self.model, self.parallel, self.seq_len,
                                       range(start, start + self.stage_layers[s]), s == 0,
                                       s == len(self.stage_layers) - 1, self.opts, self.recipe)
        return built[s]

    # -- pricing -------------------------------------------------------------------------------------------
    def op_time(self, op: Op) -> float:
        """Seconds of one op, memoised by its shape (`price_key`): the 61 layers of a model price once per kind."""
        key = price_key(op)
        t = self._op_times.get(key)
        if t is None:
            t = self._op_times[key] = self._price_op(op)
        return t

    def _price_op(self, op: Op) -> float:
        if op.kind != "collective":
            return self.launch.op_time(self.compute.duration(op, sm_fraction=self.sm_fraction),
                                       self.launch.kernel_count(op), self.opts.host_dispatch)
        if op.group == "ep":
            if self.placed:
                if self.parallel.ep == 1:
                    return 0.0
                phase = self.network.placed_ep_phase(self.layout, self.model.moe.top_k, self.nodes_per_token)
                wire = phase.time(op.tokens * op.bytes_per_token)
            else:
                wire = self.network.ep_all_to_all(op.tokens, op.bytes_per_token, self.model.moe.top_k,
                                                  self.nodes_per_token, self.comm_group("ep"))
            if self.deepep is None or self.parallel.ep == 1:
                return wire
            return self.deepep_call(op, wire, notify=False).resident_s
        wire = self.collective(op.collective, op.comm_bytes, op.group)
        if op.overlaps is not None and op.group == "cp":  # ring attention: K/V blocks under the core's blocks
            return cp_exposed(op, wire, self.parallel.cp, self.op_time(op.overlaps))
        if op.overlaps is not None:  # tp_comm_overlap: pipelined with its GEMM (AsyncTP or TE's userbuffers)
            return tp_overlap_time(self, op, wire, self.op_time(op.overlaps))
        return wire

    def deepep_call(self, op: Op, wire: float, notify: bool = True) -> DeepEPCall:
        """An EP all-to-all op as DeepEP's kernels run it beside compute (`hwmodels.deepep`): `wire` is its
        fabric time for the busiest rank's rows (op.tokens already carries the kept imbalance); `notify`: inside
        an overlapped pair (op_time leaves it out: `_add` charges it there)."""
        group = self.comm_group("ep")
        moe = self.model.moe
        npt = self.nodes_per_token
        npt = sum(d * p for d, p in npt.items()) if isinstance(npt, dict) else float(npt)
        internode = group.nodes > 1
        ranks = 0.0 if internode else distinct_targets(group.size, moe.n_routed_experts, moe.top_k)
        nbytes = counted_bytes(op.tokens, op.bytes_per_token, internode, npt, ranks)
        kind = kernel_of(op.collective, op.phase)
        return self.deepep.call(wire, nbytes, group.size, kind, internode, self.parallel.comm_sms,
                                max(1.0, self.opts.kept_imbalance), notify)

    def pair_notify(self, segment: Segment) -> float:
        """Notify time a communication segment's DeepEP calls add inside an overlapped F&B pair: the profile's
        notify per call, scaled to this layout's tokens per call, for each internode EP dispatch or combine
        (`hwmodels/deepep.py`)."""
        if self.deepep is None or self.deepep.notify_s == 0.0 or self.parallel.ep == 1 \
                or self.comm_group("ep").nodes <= 1:
            return 0.0
        return self.deepep.notify_s * sum(1 for op in segment.ops
                                           if op.collective in ("ep_dispatch", "ep_combine"))

    def collective(self, kind: str, nbytes: float, group: str) -> float:
        """Seconds of collective `kind` on `nbytes` run by every group of kind `group` at once. On the fabric
        graph the groups are the placement's GPU lists (`RankLayout`); a network model without a graph takes
        their shape."""
        if not self.placed:
            return getattr(self.network, kind)(nbytes, self.comm_group(group))
        if not nbytes >= 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        return sum(ph.time(nbytes) for ph in self.network.placed_phases(kind, self.layout, group))

    def groups(self, name: str) -> list[list[int]]:
        """Every group of kind `name` ("tp", "cp", "dp", "ep", "edp", "etp", "tp_ep") as GPU lists under the
        layout's order."""
        if name not in self._groups:
            self._groups[name] = self.layout.groups(name)
        return self._groups[name]

    def comm_group(self, name: str) -> CommGroup:
        """The shape of a collective group under the placement (`RankLayout`; by default TP inside a node, then
        CP, then DP with expert groups on consecutive ranks of a stage, PP outermost): its size and the most of
        its ranks any node holds."""
        if name not in ("tp", "cp", "dp") + EXPERT_GROUPS:
            name = "tp"
        first = self.groups(name)[0]
        gpn = self.cluster.gpus_per_node
        counts: dict[int, int] = {}
        for gpu in first:
            counts[gpu // gpn] = counts.get(gpu // gpn, 0) + 1
        per_node = max(counts.values())
        while len(first) % per_node:  # uneven placements: the largest even split under the densest node
            per_node -= 1
        return CommGroup(len(first), per_node)

    def _price_segment(self, segment: Segment) -> float:
        return sum(self.op_time(op) for op in segment.ops)

    def unit_time(self, unit: LayerPasses, overlapped: bool = False) -> float:
        """Forward + backward + weight time of one unit (used to balance stages): its compute and communication
        added, or, where the schedule overlaps a chunk's communication with another chunk's compute, the larger
        of the two."""
        segments = unit.forward + unit.backward + unit.weight
        compute = sum(self._segment_time(s) for s in segments if s.stream == "compute")
        comm = sum(self._segment_time(s) + (self.pair_notify(s) if overlapped else 0.0)
                   for s in segments if s.stream == "comm")
        return max(compute, comm) if overlapped else compute + comm

    def op_count(self, instruction: Instruction) -> int:
        """Ops the instruction executes (for throughput figures)."""
        total = 0
        for kind, _, stage in instruction.parts():
            for unit in self.stages[stage]:
                passes = {"F": unit.forward, "B": unit.backward, "W": unit.weight,
                          "BW": unit.backward + unit.weight}[kind]
                total += sum(len(seg.ops) for seg in passes)
        return total

    # -- instruction graphs ----------------------------------------------------------------------------------
    def profile(self, rank: int, instruction: Instruction) -> InstructionProfile:
        return self._profile(instruction.kind, instruction.stage, instruction.b_stage)

    def transfer(self, src: int, dst: int, kind: str, microbatch: int, stage: int) -> float:
        """Activations (forward) or their gradients (backward) of one micro-batch, BF16, from pipeline rank src to
        dst. Each rank sends its own tokens: micro_batch_size x seq_len / cp (/ tp under sequence parallelism).
        On the fabric graph every pipeline sends at once, GPU to GPU as the placement puts stages
        (`RankLayout.pipeline_flows`), so shared and oversubscribed links are charged for all of them; a network
        model without a graph prices one send, inside a node when a whole stage fits in less than one."""
        cost = self._transfers.get((src, dst))
        if cost is None:
            if self.placed:
                cost = self.network.placed_p2p(self.layout, src, dst)
            else:
                cost = self.parallel.num_gpus // self.parallel.pp < self.cluster.gpus_per_node
            self._transfers[(src, dst)] = cost
        tokens = self.parallel.micro_batch_size * self.seq_len // self.parallel.cp
        if self.parallel.sequence_parallel:
            tokens //= self.parallel.tp
        nbytes = tokens * self.model.hidden * BF16
        if self.placed:
            return cost.time(nbytes)
        return self.network.p2p(nbytes, intra_node=cost)

    def _build_profile(self, kind: str, stage: int, b_stage: int | None) -> InstructionProfile:
        tasks: list[_Task] = []
        if kind == "FB":
            self._add_pass(tasks, stage, "F", pair=True)
            self._add_pass(tasks, b_stage, "BW", pair=True)
        else:
            self._add_pass(tasks, stage, kind, pair=False)
        prof = schedule_tasks(tasks, self)  # NCCL's SMs slow the compute beside them
        if self.opts.host_dispatch != "eager":
            return prof
        # the host issues every kernel of the instruction: it cannot end before the last launch (hwmodels.launch)
        span = self.launch.instruction_time(prof.duration, sum(t.kernels for t in tasks), "eager")
        return prof if span == prof.duration else replace(prof, duration=span)

    def _add_pass(self, tasks: list[_Task], stage: int, kind: str, pair: bool) -> list[int]:
        units = profile_units(self, stage)  # renamed layers as views of their templates (`simulator.stage_views`)
        ordered = units if kind == "F" else tuple(reversed(units))
        ids: list[int] = []
        prev: int | None = None
        last_gather: int | None = None  # the pass's previous parameter all-gather (ZeRO-3)
        last_rs: int | None = None  # the pass's previous gradient reduce-scatter
        unit_end: list[int | None] = []  # the last chained segment of each unit
        passes = {"F": "forward", "B": "backward", "W": "weight", "BW": "backward"}[kind]
        for k, unit in enumerate(ordered):
            segments = getattr(unit, passes)
            b_ids: dict[str, int] = {}
            w_ids: list[int] = []
            gather: int | None = None
            for j, seg in enumerate(segments):
                if is_dp_collective(seg):
                    if seg.name.startswith("dp.all_gather"):  # prefetch: off the chain, at most one unit ahead
                        limit = unit_end[k - 2] if k >= 2 else None
                        deps = tuple(d for d in (last_gather, limit) if d is not None)
                        gather = last_gather = self._add(tasks, seg, deps, k, j, pair, kind)
                        ids.append(gather)
                    else:  # reduce-scatter: after the unit's weight gradients
                        deps = tuple(w_ids) or (() if prev is None else (prev,))
                        deps += () if last_rs is None else (last_rs,)
                        last_rs = self._add(tasks, seg, deps, k, j, pair, kind)
                        ids.append(last_rs)
                    continue
                deps = tuple(d for d in (prev, gather) if d is not None)
                gather = None
                prev = self._add(tasks, seg, deps, k, j, pair, kind)
                b_ids[seg.name] = prev
                w_ids.append(prev)
                ids.append(prev)
            if kind == "BW":
                w_ids = []
                for j, seg in enumerate(unit.weight):
                    if is_dp_collective(seg):
                        deps = tuple(w_ids) or (() if prev is None else (prev,))
                        deps += () if last_rs is None else (last_rs,)
                        last_rs = self._add(tasks, seg, deps, k, 50 + j, pair, kind)
                        ids.append(last_rs)
                        continue
                    anchor = b_ids.get(seg.name.replace("(W)", "(B)"), prev)
                    deps = () if anchor is None else (anchor,)
                    w_ids.append(self._add(tasks, seg, deps, k, 50 + j, pair, kind))
                    ids.append(w_ids[-1])
            unit_end.append(prev)
        return ids

    def _add(self, tasks: list[_Task], seg: Segment, deps: tuple[int, ...], k: int, j: int, pair: bool,
             kind: str) -> int:
        if pair:
            priority = (k, _PAIR_ORDER.get(seg.name, 20 + j), len(tasks))
        else:
            priority = (len(tasks),)
        cost, crosses, held, kernels = self._segment_facts(seg)
        seconds = cost + (self.pair_notify(seg) if pair and seg.stream == "comm" else 0.0)
        tasks.append(_Task(seg.name, seg.stream, seconds, deps, priority, seg.layer, kind, crosses, held, kernels))
        return len(tasks) - 1

    def _segment_facts(self, seg: Segment) -> tuple[float, bool, float, int]:
        """(seconds, holds the network interface, NCCL SMs held, kernels) of a segment, once per segment object,
        and once per template for a renamed layer's (`workloads.layer_templates.segment_template`: same op price
        keys, name and stream, so the same figures; all four read only those). Keyed by identity: hashing a
        segment hashes every field of every op."""
        key = segment_template(seg)
        hit = self._seg_facts.get(id(key))
        if hit is None or hit[0] is not key:  # the memo holds the segment, so its id is not reused meanwhile
            hit = self._seg_facts[id(key)] = (key, self._segment_time(key),
                                              key.stream == "comm" and self._crosses_nodes(key),
                                              self._segment_sms(key), self._segment_kernels(key))
        return hit[1:]

    def _crosses_nodes(self, seg: Segment) -> bool:
        return any(op.kind == "collective" and self.comm_group(op.group).nodes > 1 for op in seg.ops)


def price_key(op: Op) -> tuple:
    """Everything that decides an op's time and nothing else (not its layer's name): kind, phase, work, dtype,
    GEMM shape, collective and group, and a memory-bound op's class (`compute.elementwise_class`, read from the
    name's last part; a context-parallel exchange's too, which `ring_overlap.cp_exposed` reads)."""
    return (op.kind, op.phase, op.flops, op.bytes, op.dtype, op.gemm, op.groups, op.collective, op.group,
            op.comm_bytes, op.tokens, op.bytes_per_token,
            elementwise_class(op) if op.kind in ("elementwise", "embedding") else None,
            op.name.rsplit(".", 1)[-1] if op.group == "cp" else None,
            None if op.overlaps is None else price_key(op.overlaps), op.fp8_recipe)
