"""NCCL's channels take SMs from the compute they run beside (issue 15, item 3).

An NCCL all-reduce, reduce-scatter or all-gather holds one SM per channel for as long as it runs
(`hwmodels.nccl_sms.collective_sms`). Inside an instruction (`simulator.chunks`) the compute and communication
streams run at once wherever the task graph lets them: ZeRO-3/FSDP's prefetched parameter gathers and its
gradient reduce-scatters (`workloads.zero`), and a fused backward's weight-gradient GEMMs beside the backward's
tensor-, context- or data-parallel collectives. While such a collective runs, the compute task beside it runs at
(avail - held) / avail of its rate, avail being the SMs compute has (the GPU's, less DeepEP's reserved
`comm_sms` under DualPipe/DualPipeV, `ParallelSpec.compute_sm_fraction`); the collective itself keeps its time
(Assumption: NCCL's CTAs are launched first on the communication stream and keep their SMs, so the GEMM's waves
spread over the rest). So a compute task overlapped for t seconds by a collective holding h SMs ends h/avail x t
later than alone: `list_schedule_shared`.

Where it is not charged (and why):
- DeepEP's all-to-alls: their SMs are the `comm_sms` reservation already (`chunks`); NCCL's all-to-all and
  send/recv (Megatron-Core's all-to-all dispatcher, pipeline sends, ring attention's K/V ring) run on NCCL's
  point-to-point channels, whose count per peer this model does not derive: not charged.
- Tensor-parallel overlap (`tp_comm_overlap`): the collective is a closed form with its GEMM
  (`simulator.overlap.exposed_streamed`). PyTorch's AsyncTP (torchtitan) moves the pieces with copies between
  symmetric-memory buffers (torch.distributed._symmetric_memory: `_pipelined_all_gather_and_consume` and
  `_pipelined_produce_and_all2all` copy_ remote shards, alternating a side stream and the current one), so it
  holds none (Assumption: a contiguous same-dtype copy_ is a cudaMemcpyAsync, which runs on a copy engine).
  Transformer Engine's userbuffers (Megatron-Core's `--tp-comm-overlap`, `ParallelSpec.tp_comm_overlap_impl =
  "te-userbuffers"`) does hold SMs: its pipeline and bulk overlaps launch the GEMM on SMs - num_sm (16) for the
  GEMM's whole time while the reduce-scatter / all-gather kernels run on the other 16; its ring_exchange moves
  chunks on copy engines and keeps every SM (`hwmodels.tp_overlap_sms`, with the source lines). Charged in the
  closed form (`tp_overlap_time`): the GEMM runs avail / (avail - num_sm) times longer, and the collective is
  streamed under the slowed GEMM in TE's pieces.
- Overlapped data-parallel gradient buckets (`overlap_grad_reduce`) run in the engine beside the rank's last
  backward: charged there (`bucket_fraction`, `simulator.nic_share.stretch_under_buckets`) by extending that
  instruction by held/avail x its compute share x the time buckets fly beside it (Assumption: its compute is
  spread evenly over it; the buckets' ready times keep the unstretched instruction's clock). The closed form
  `dp_tail.exposed_dp_comm` leaves them out.
- FSDP's once-per-step gather under the first forward (`fsdp_once_per_step`, on the tail): charged in the closed
  form (`streamed_gather_rate`, `simulator.overlap.exposed_streamed`).
- Megatron-Core's overlapped parameter all-gather (`overlap_param_gather`), bucket by bucket under the next
  step's first forward (on the tail): the same closed form (`simulator.param_gather`).
- Stage balancing (`HardwareCoster.unit_time`) adds or overlaps a unit's streams without the slow-down.
"""

from __future__ import annotations

import heapq

from gpuhours.hwmodels.nccl import arch_of
from gpuhours.hwmodels.nccl_sms import collective_sms
from gpuhours.hwmodels.tp_overlap_sms import te_userbuffers
from gpuhours.simulator.engine import InstructionProfile
from gpuhours.simulator.overlap import exposed_streamed
from gpuhours.simulator.timeline import Span

NCCL_COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather")
ENABLED = True  # a switch for A/B comparisons in scripts and tests; the product always charges


def compute_sms(coster) -> int:
    """SMs the compute stream has: the GPU's, less DeepEP's reservation where the schedule overlaps it."""
    sms = coster.cluster.gpu.sms
    return sms - coster.parallel.comm_sms if coster.parallel.overlaps_comm else sms


def op_sms(coster, op) -> float:
    """SMs an op holds while it runs: NCCL's channels for an all-reduce, reduce-scatter or all-gather (not one
    pipelined with its GEMM, `Op.overlaps`), time-weighted over its phases (a hierarchical all-reduce is three NCCL
    calls); 0 for everything else and on GPUs NCCL does not tune (AMD: RCCL)."""
    if op.kind != "collective" or op.collective not in NCCL_COLLECTIVES or op.overlaps is not None:
        return 0.0
    gpu = coster.cluster.gpu.key
    arch = arch_of(gpu)
    if arch is None:
        return 0.0
    group = coster.comm_group(op.group)
    if group.size <= 1 or not op.comm_bytes > 0:
        return 0.0
    nodes = group.nodes
    if not coster.placed:  # Assumption: the alpha-beta model's collectives run as NCCL's ring with Simple
        return float(collective_sms(gpu, arch, "ring/Simple", op.comm_bytes, group.size, nodes))
    timed = [(ph.time(op.comm_bytes),
              collective_sms(gpu, arch, ph.protocol(op.comm_bytes) or "ring/Simple", op.comm_bytes, group.size, nodes))
             for ph in coster.network.placed_phases(op.collective, coster.layout, op.group)]
    if len({sms for _, sms in timed}) == 1:
        return float(timed[0][1])
    total = sum(t for t, _ in timed)
    return sum(t * sms for t, sms in timed) / total if total > 0 else 0.0


def segment_sms(coster, segment) -> float:
    """SMs a communication segment holds on average over its time (its ops run one after another)."""
    if segment.stream != "comm" or not ENABLED:
        return 0.0
    weighted = total = 0.0
    for op in segment.ops:
        held = op_sms(coster, op)
        if held:
            t = coster.op_time(op)
            weighted += t * held
            total += t
        else:
            total += coster.op_time(op)
    return weighted / total if total > 0 else 0.0


def streamed_gather_rate(coster, nbytes: float, group: str = "dp") -> float:
    """Share of its speed compute keeps under a parameter all-gather of `nbytes` on `group` (FSDP's
    once-per-step gather streamed unit by unit under the first forward, `simulator.step`): (avail - held) /
    avail."""
    if not ENABLED:
        return 1.0
    from gpuhours.workloads.ops import Op

    op = Op("zero3.gather", "collective", "F", "zero3", collective="all_gather", group=group, comm_bytes=nbytes)
    avail = compute_sms(coster)
    return (avail - op_sms(coster, op)) / avail


def tp_overlap_time(coster, op, wire: float, gemm: float) -> float:
    """Seconds a tensor-parallel collective pipelined with its GEMM (`Op.overlaps`, `tp_comm_overlap`) adds to the
    pass: `wire` its time alone, `gemm` the partner GEMM's time alone (priced as its own op).

    "asynctp" (PyTorch AsyncTP: copies, no SMs): `simulator.overlap.exposed_streamed` in tp pieces.
    "te-userbuffers" (`hwmodels.tp_overlap_sms.te_userbuffers`): the GEMM runs on avail - held SMs for its whole
    time (set_sm_margin), so it takes g' = gemm x avail / (avail - held) and the op adds g' - gemm for that,
    plus what the collective leaves exposed under g': ring_exchange and pipeline stream it in their pieces
    (`exposed_streamed(wire, pieces, g')`); bulk runs it beside the GEMM without a dependency, exposing
    max(0, wire - g'). ring_exchange (held 0, tp pieces) is the asynctp form exactly."""
    p = coster.parallel
    if p.tp_comm_overlap_impl == "asynctp":
        return exposed_streamed(wire, p.tp, gemm)
    ub = te_userbuffers(op.collective, op.phase, p.tp)
    avail = compute_sms(coster)
    held = ub.held_sms if ENABLED else 0
    if not 0 <= held < avail:
        raise ValueError(f"te-userbuffers' {ub.method} overlap holds {held} SMs, more than the {avail} compute has")
    slowed = gemm * avail / (avail - held)
    if ub.method == "bulk":
        exposed = max(0.0, wire - slowed)
    else:
        exposed = exposed_streamed(wire, ub.pieces, slowed)
    return (slowed - gemm) + exposed


def bucket_fraction(sim, stages: set[int]) -> float:
    """held / avail of one overlapped gradient bucket (`overlap_grad_reduce`) of a rank holding `stages` of
    `sim` (a `simulator.step.StepSimulator`): K = ceil(params / bucket_params) equal buckets of the rank's
    gradients in grad_reduce_dtype, reduce-scattered (ZeRO 1-2) or all-reduced over the data-parallel group
    (Assumption: expert gradients' buckets on the same group)."""
    if not ENABLED:
        return 0.0
    import math

    from gpuhours.workloads.ops import Op
    from gpuhours.workloads.zero import grad_reduce_bytes

    p = sim.parallel
    dense, expert = sim.rank_params(stages)
    k = max(1, math.ceil((dense + expert) / p.bucket_params))
    nbytes = (dense + expert) * grad_reduce_bytes(p, sim.recipe.grad_bytes) / k
    kind = "reduce_scatter" if p.zero_stage in (1, 2) else "all_reduce"
    op = Op("dp.bucket", "collective", "W", "dp", collective=kind, group="dp", comm_bytes=nbytes)
    return op_sms(sim.coster, op) / compute_sms(sim.coster)


def schedule_tasks(tasks, coster) -> InstructionProfile:
    """`task_schedule._list_schedule` when no task holds SMs (bit for bit today's figures), else `list_schedule_shared`."""
    if not any(t.held for t in tasks):
        from gpuhours.simulator.task_schedule import _list_schedule

        return _list_schedule(tasks)
    return list_schedule_shared(tasks, compute_sms(coster))


def list_schedule_shared(tasks, avail: float) -> InstructionProfile:
    """`task_schedule._list_schedule` with rates: the tasks run on a compute and a communication stream, each free stream
    starting its first ready task by launch priority; while a communication task holding ``held`` SMs runs, the
    compute task beside it progresses at (avail - held) / avail of its rate. Busy times and spans are the
    stretched ones."""
    n = len(tasks)
    for t in tasks:
        if t.held and not 0 <= t.held < avail:
            raise ValueError(f"a collective's SMs must be in [0, {avail}) (the SMs compute has), got {t.held}")
    from gpuhours.simulator.task_schedule import profile_of, release, task_graph, task_span

    waiting, dependents, ready = task_graph(tasks)
    # the two streams' state in locals (c: compute, m: communication): the same arithmetic, in the same order,
    # as one dict per quantity keyed by stream (a profile runs this loop once per task)
    ready_c, ready_m = ready["compute"], ready["comm"]
    run_c = run_m = None   # the running task of each stream
    left_c = left_m = 0.0  # work left of the running task, seconds at its full rate
    began_c = began_m = 0.0
    busy_c = busy_m = 0.0
    spans: list[Span] = []
    now, done = 0.0, 0
    while done < n:
        if run_c is None and ready_c:
            run_c = heapq.heappop(ready_c)[1]
            left_c, began_c = tasks[run_c].duration, now
        if run_m is None and ready_m:
            run_m = heapq.heappop(ready_m)[1]
            left_m, began_m = tasks[run_m].duration, now
        if run_c is None and run_m is None:
            raise RuntimeError("instruction task graph has a cycle")
        rate = (avail - tasks[run_m].held) / avail if run_m is not None else 1.0  # compute's; comm runs at 1
        until_c = left_c / rate if run_c is not None else None
        until_m = left_m / 1.0 if run_m is not None else None
        step = until_m if until_c is None else until_c if until_m is None else min(until_c, until_m)
        end_c = until_c is not None and until_c <= step
        end_m = until_m is not None and until_m <= step
        now += step
        if run_c is not None:
            left_c = 0.0 if end_c else left_c - step * rate
        if run_m is not None:
            left_m = 0.0 if end_m else left_m - step * 1.0
        if end_c:
            i, run_c = run_c, None
            busy_c += now - began_c
            spans.append(task_span(tasks[i], "compute", began_c, now))
            done += 1
            release(i, tasks, waiting, dependents, ready)
        if end_m:
            i, run_m = run_m, None
            busy_m += now - began_m
            spans.append(task_span(tasks[i], "comm", began_m, now))
            done += 1
            release(i, tasks, waiting, dependents, ready)
    return profile_of(tasks, now, {"compute": busy_c, "comm": busy_m}, spans)
