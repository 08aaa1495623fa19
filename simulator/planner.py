"""Layout search: the best layouts of a model on N GPUs, by cost or by days (issue 14, part 1).

1. Enumerate: TP in {1,2,4,8} (within a node, dividing the heads), PP any divisor of gpus / (tp x cp) with no
   more stages than layers, CP 2 only at seq_len >= 8192, EP (MoE) powers of two dividing the routed experts and
   the stage's ranks (with tp > 1 also ETP = tp), schedule 1f1b / interleaved-1f1b (vpp 2) / zb1p, plus dualpipe and dualpipev for MoE with
   EP > 1 (pp = 1: 1f1b only, the others add nothing there), micro-batch 1/2/4, recompute none / deepseek (MLA
   only) / selective / full, ZeRO 1/3. With tp > 1 sequence parallelism and tp_comm_overlap are on (assumed never
   slower: they only cut memory or exposed time). Overlapping schedules with EP get DeepEP's saturating 20 comm SMs
   (hwmodels/data/comm_kernels.toml, as DeepSeek reserves) while searching.
2. Prune, in order, each rule counted in enumerated variants: "layout" (ParallelSpec / check_model ValueError),
   "batch" (the batch is not dp x micro-batch x m sequences with m a micro-batch count the schedule takes
   without padding), "memory" (the variant does not fit: first a closed-form test, weights + gradients +
   optimizer state + their headroom over the GPU on some rank; then workloads.memory's sum (memory_breakdown's)
   on an even layer split and 2 pp micro-batches, as the simulated split is not known yet; simulated layouts are
   checked again with memory_breakdown on their step), "dominated" (a structure keeps only its first variant that fits, in the order ZeRO-1
   before ZeRO-3, less recomputation before more: each later one only adds work or traffic).
3. Rank the survivors by a cheap score (`plan_bounds.cheap_score`: a heuristic, not a bound) and simulate, up to
   `max_simulated`: first the best-scored layout of each (tp, pp, cp, ep) group (up to 2/3 of the cap), then
   the other schedules / micro-batch sizes of the groups whose first layout simulated best.
4. When the best is an overlapping layout, it is simulated again with COMM_SMS_TRIED other SMs for DeepEP
   (fewer stretch the transfers, more slow every GEMM: `hwmodels.deepep`), each a row of its own.
5. Each is simulated through the scenario path (StepSimulator + estimate_run + memory_breakdown) and ranked by
   the goal; each runner-up gets the reason it loses to the best. `max_days` and `budget` (dollars) refuse the
   layouts slower or dearer than they allow; `cluster` names the fabric (a preset or cluster file, as
   `gpuhours estimate --cluster`) every layout is routed on.
On a fixed number of GPUs cost = days x gpus x 24 x price, and the tokens are fixed, so the three goals (cost,
days, tokens-per-dollar) give the same order.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from gpuhours.hwmodels.deepep import deepep_saturating_sms
from gpuhours.simulator.plan_bounds import _fits_estimate, cheap_score
from gpuhours.simulator.plan_rows import Candidate, PlanResult, PlanRow, pct as _pct
from gpuhours.simulator.run import estimate_run, microbatches_for
from gpuhours.simulator.sweep_executors import _EXECUTORS
from gpuhours.simulator.scenario import Scenario, list_plans, load_scenario
from gpuhours.workloads.memory import memory_breakdown
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.run import parse_count

GOALS = ("cost", "days", "tokens-per-dollar")  # one order on a fixed GPU count: module docstring
TPS, MBS, CPS = (1, 2, 4, 8), (1, 2, 4), (1, 2)
DENSE_SCHEDULES = ("1f1b", "interleaved-1f1b", "zb1p")
MOE_SCHEDULES = DENSE_SCHEDULES + ("dualpipe", "dualpipev")
CP_MIN_SEQ = 8192
DEFAULT_BATCH_TOKENS = 4 * 2**20
RULES = ("layout", "batch", "memory", "dominated", "not simulated (cap)")
COMM_SMS_TRIED = (12, 16, 24)  # beside the saturating 20: the default case's sweep has its optimum in 14..22
_GIB = 2**30


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _etps(moe, tp: int) -> tuple[int, ...]:
    """Expert tensor parallelism the search tries: 1, and for an MoE model with tp > 1 also etp = tp
    (Megatron-Core's two usual settings: experts whole, or split like the dense layers)."""
    return (1, tp) if moe is not None and tp > 1 else (1,)


def _structures(model, gpus: int, gpn: int, seq_len: int):
    moe = model.moe
    eps = [1] if moe is None else [e for e in (2**i for i in range(0, 13)) if e <= moe.n_routed_experts]
    for tp in (t for t in TPS if t <= gpn):
        for cp in (c for c in CPS if c == 1 or seq_len >= CP_MIN_SEQ):
            if gpus % (tp * cp):
                continue
            for pp in _divisors(gpus // (tp * cp)):
                if pp > model.n_layers:
                    continue
                for ep in eps:
                    for etp in _etps(moe, tp):
                        for sched in ("1f1b",) if pp == 1 else (MOE_SCHEDULES if ep > 1 else DENSE_SCHEDULES):
                            for mbs in MBS:
                                yield tp, pp, cp, ep, etp, sched, mbs


def _variants(model) -> list[tuple[int, str]]:
    policies = ["none"] + (["deepseek"] if model.attention.kind == "mla" else []) + ["selective", "full"]
    return [(z, r) for z in (1, 3) for r in policies]


def _parallel(c: Candidate, gpus: int) -> ParallelSpec:
    sms = (c.comm_sms if c.comm_sms is not None else deepep_saturating_sms()) if c.overlaps_comm else 0
    return ParallelSpec(num_gpus=gpus, pp=c.pp, ep=c.ep, tp=c.tp, cp=c.cp, zero_stage=c.zero_stage, etp=c.etp,
                        micro_batch_size=c.micro_batch_size, schedule=c.schedule,
                        vpp=2 if c.schedule == "interleaved-1f1b" else 1, comm_sms=sms, tp_comm_overlap=c.tp > 1,
                        sequence_parallel=True)


def _scenario(base: Scenario, c: Candidate) -> Scenario:
    return replace(base, parallel=_parallel(c, base.parallel.num_gpus), opts=replace(base.opts, recompute=c.recompute))


# -- the search ----------------------------------------------------------------------------------------------------
def default_batch(gpus: int, seq_len: int) -> tuple[int, str]:
    """The largest batch of at most 4M tokens that is a multiple of gpus / 8 (so dp up to gpus / 8 divides it);
    never below gpus / 8 sequences."""
    unit = max(1, gpus // 8)
    batch = max(unit, DEFAULT_BATCH_TOKENS // seq_len // unit * unit)
    return batch, f"default: the largest multiple of gpus/8 = {unit} with at most 4M tokens"


def _check_inputs(goal, gpus, seq_len, tokens, batch, max_days, max_simulated, budget=None) -> None:
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {', '.join(GOALS)}; got {goal!r}")
    for name, v in (("gpus", gpus), ("seq_len", seq_len), ("max_simulated", max_simulated)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer (sequences per step) or None, got {batch!r}")
    if not (isinstance(tokens, (int, float)) and 0 < tokens < math.inf):
        raise ValueError(f"tokens must be a positive finite number, got {tokens!r}")
    if max_days is not None and not (isinstance(max_days, (int, float)) and max_days > 0):
        raise ValueError(f"max_days must be a positive number or None, got {max_days!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 < budget < math.inf):
        raise ValueError(f"budget must be a positive number of dollars or None, got {budget!r}")


def plan_layouts(model: str, gpu: str, gpus: int, *, seq_len: int, tokens: float, batch: int | None = None,
                 goal: str = "cost", max_days: float | None = None, max_simulated: int = 48,
                 progress=None, workers: int = 1, executor: str = "serial", budget: float | None = None,
                 cluster: str | None = None) -> PlanResult:
    """Search the layouts of `model` on `gpus` x `gpu` (see the module docstring). ValueError names a bad field.
    The layouts are simulated by the sweep's executors (`workers` processes, or a Ray cluster with "ray")."""
    t0 = time.perf_counter()
    if isinstance(tokens, str):
        tokens = parse_count(tokens, "tokens")
    _check_inputs(goal, gpus, seq_len, tokens, batch, max_days, max_simulated, budget)
    note = "as given"
    if batch is None:
        batch, note = default_batch(gpus, seq_len)
    base = load_scenario(model=model, gpu=gpu, gpus=gpus, pp=1, ep=1, tp=1, cp=1, schedule="1f1b",
                         micro_batch_size=1, seq_len=seq_len, tokens=float(tokens), batch=batch,
                         recompute="none", zero_stage=1, cluster=cluster)
    spec = base.model
    variants = _variants(spec)
    pruned = dict.fromkeys(RULES, 0)
    enumerated = 0
    survivors: list[tuple[float, Candidate, Scenario]] = []
    for tp, pp, cp, ep, etp, sched, mbs in _structures(spec, gpus, base.cluster.gpus_per_node, seq_len):
        enumerated += len(variants)
        cands = [Candidate(tp, pp, cp, ep, sched, mbs, r, z, etp) for z, r in variants]
        try:
            p = _parallel(cands[0], gpus)
            p.check_model(spec)
        except ValueError:
            pruned["layout"] += len(variants)
            continue
        m, padded = microbatches_for(batch, p)
        if padded:
            pruned["batch"] += len(variants)
            continue
        chosen = None
        for i, c in enumerate(cands):
            sc = _scenario(base, c)
            if _fits_estimate(sc, m):
                chosen = (cheap_score(sc, m), c, sc)
                pruned["memory"] += i
                pruned["dominated"] += len(cands) - i - 1
                break
        if chosen is None:
            pruned["memory"] += len(variants)
            continue
        survivors.append(chosen)
    errors: list[str] = []
    if executor not in _EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(_EXECUTORS)}; got {executor!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    run_tasks = _EXECUTORS["serial" if workers == 1 and executor == "process" else executor]
    rows = _search(survivors, max_simulated, progress, errors, lambda tasks: run_tasks(_simulate_or_refusal, tasks,
                                                                                         workers))
    pruned["not simulated (cap)"] = len(survivors) - len(rows) - len(errors)
    tried = _comm_sms_rows(rows, base, errors, lambda tasks: run_tasks(_simulate_or_refusal, tasks, workers))
    reference = _reference(spec.name, gpu, gpus, seq_len, float(tokens), batch, cluster)
    if reference is not None:
        same = next((r for r in rows if r.candidate == reference.candidate), None)
        if same is not None:
            rows.remove(same)
        rows.append(reference)
    key = (lambda r: r.days) if goal == "days" else (lambda r: r.cost_usd)  # tokens per dollar: the fewest dollars
    ok = [r for r in rows if r.fits and (max_days is None or r.days <= max_days)
          and (budget is None or r.cost_usd <= budget)]
    rest = [r for r in rows if r not in ok]
    ok.sort(key=key)
    rest.sort(key=lambda r: (not r.fits, key(r)))
    best = ok[0] if ok else None
    ranked = tuple([r if r is best else replace(r, reason=_why(r, best, max_days, budget)) for r in ok + rest])
    notes = [f"{len(survivors)} layouts survived pruning; simulated {len(rows) - tried}: the best-scored of each "
             f"(tp, pp, cp, ep) group, then more schedules / micro-batch sizes of the groups that simulated best"]
    if tried:
        notes.append(f"the best overlapping layout was simulated again with {tried} other SM counts for DeepEP "
                     f"({', '.join(map(str, COMM_SMS_TRIED))} beside the saturating {deepep_saturating_sms()})")
    notes += errors
    notes += ["on a fixed number of GPUs cost and days rank alike (cost = days x gpus x 24 x price)"]
    if reference is not None:
        rank = next(i for i, r in enumerate(ranked, 1) if r.layout == reference.layout)
        notes.append(f"#{rank} is the layout of the built-in plan {spec.name!r} (its own layout, the published one "
                     f"for DeepSeek-V3), simulated beside the search at the same batch")
    if base.fp8_fallback or not base.opts.fp8:
        notes.append("BF16: the GPU has no FP8 tensor cores")
    return PlanResult(spec.name, base.cluster.gpu.name, gpus, seq_len, float(tokens), batch, note, goal, max_days,
                      "fp8" if base.opts.fp8 else "bf16", best, ranked, enumerated, pruned, len(rows) + len(errors),
                      time.perf_counter() - t0, tuple(notes), budget)


def _comm_sms_rows(rows: list[PlanRow], base: Scenario, errors: list[str], run_batch) -> int:
    """When the best-ranked row that fits is an overlapping layout, simulate it again with each of COMM_SMS_TRIED
    SMs for DeepEP (same layout otherwise) and add those rows; the number added."""
    fits = sorted((r for r in rows if r.fits), key=lambda r: r.cost_usd)
    if not fits or not fits[0].candidate.overlaps_comm:
        return 0
    best = fits[0].candidate
    tasks = []
    for sms in COMM_SMS_TRIED:
        c = replace(best, comm_sms=sms)
        tasks.append((_scenario(base, c), c, float("nan")))
    return sum(row is not None for _, row in _kept(run_batch(tasks), rows, errors))


def _kept(results, rows: list[PlanRow], errors: list[str]):
    """An executor's (label, row or None, refusal) results: each row appended to `rows`, each layout the simulator
    refuses listed in `errors` (the notes, not ranked); yields (label, row or None) as they come."""
    for label, row, refusal in results:
        if row is None:
            errors.append(f"{label}: simulation refused: {refusal}")
        else:
            rows.append(row)
        yield label, row


def _reference(model: str, gpu: str, gpus: int, seq_len: int, tokens: float, batch: int,
               cluster: str | None = None) -> PlanRow | None:
    """The layout of the built-in plan named like the model (DeepSeek-V3's published layout), simulated at the
    search's batch; None when there is no such plan or its layout does not take these GPUs."""
    if model not in list_plans():
        return None
    try:
        sc = load_scenario(model, gpu=gpu, gpus=gpus, seq_len=seq_len, tokens=tokens, batch=batch, cluster=cluster)
        p = sc.parallel
        c = Candidate(p.tp, p.pp, p.cp, p.ep, p.schedule, p.micro_batch_size, sc.opts.recompute, p.zero_stage,
                      p.etp)
        row = _simulate(sc, c, float("nan"))
    except ValueError:
        return None
    return replace(row, layout=row.layout + f" [plan {model}]")


def _groups(survivors) -> list[list]:
    """Survivors by (tp, pp, cp, ep), each group by cheap score, groups by their best score."""
    groups: dict[tuple, list] = {}
    for s in sorted(survivors, key=lambda s: (s[0], s[1].label)):
        groups.setdefault((s[1].tp, s[1].pp, s[1].cp, s[1].ep), []).append(s)
    return list(groups.values())


def _search(survivors, cap: int, progress, errors: list[str], run_batch) -> list[PlanRow]:
    """Phase 1: the best-scored candidate of each (tp, pp, cp, ep) group, groups in score order, up to 2/3 of the
    cap (all of it when every group fits in it). Phase 2: the rest of the cap on the other candidates (schedule,
    micro-batch) of the groups whose phase-1 candidate simulated best, best group first. Each phase is one batch
    for `run_batch` (the executor), whose results may come back in any order."""
    groups = _groups(survivors)
    total = min(cap, len(survivors))
    heads = groups[:cap if len(groups) <= cap else max(1, 2 * cap // 3)]
    rows: list[PlanRow] = []
    done = 0

    def run(batch: list) -> dict:
        nonlocal done
        out = {}
        for label, row in _kept(run_batch([(s[2], s[1], s[0]) for s in batch]), rows, errors):
            done += 1
            if row is not None:
                out[label] = row
            if progress:
                progress(done, total)
        return out

    first = run([g[0] for g in heads])
    ranked = sorted(((first[g[0][1].label], g) for g in heads if g[0][1].label in first),
                    key=lambda x: (not x[0].fits, x[0].days, x[0].layout))
    rest = [s for _, g in ranked for s in g[1:]][:max(0, total - len(heads))]
    run(rest)
    return rows


def _simulate_or_refusal(sc: Scenario, c: Candidate, score: float) -> tuple[str, PlanRow | None, str]:
    """One layout for an executor: (its label, its row or None, why the simulator refused it)."""
    try:
        return c.label, _simulate(sc, c, score), ""
    except ValueError as exc:
        return c.label, None, str(exc)


def _simulate(sc: Scenario, c: Candidate, score: float) -> PlanRow:
    t = time.perf_counter()
    run = estimate_run(sc.simulator(), sc.plan)
    step = run.steady.step
    mem = memory_breakdown(sc, step)
    p = sc.parallel
    return PlanRow(c, c.label + f" DP{p.dp}", p.dp, mem.fits, step.step_time, run.wall_clock_days, run.gpu_hours,
                   run.cost_usd, mem.total / _GIB, mem.capacity / _GIB, step.mfu("bf16"), step.bubble_share,
                   step.exposed_comm_share, step.num_microbatches, score, time.perf_counter() - t)


def _why(r: PlanRow, best: PlanRow | None, max_days, budget=None) -> str:
    if not r.fits:
        return f"does not fit: {r.memory_gib:.1f} of {r.capacity_gib:.0f} GiB on the simulated split"
    if max_days is not None and r.days > max_days:
        return f"over max_days: {r.days:.1f} days"
    if budget is not None and r.cost_usd > budget:
        return f"over budget: ${r.cost_usd:,.0f}"
    if best is None:
        return ""
    slower = r.days / best.days - 1
    d_bubble = r.bubble_share - best.bubble_share
    d_comm = r.exposed_comm_share - best.exposed_comm_share
    if max(d_bubble, d_comm) > 0.01:
        cause = (f"more bubble ({_pct(r.bubble_share)} vs {_pct(best.bubble_share)} of rank time)"
                 if d_bubble >= d_comm else
                 f"more exposed communication ({_pct(r.exposed_comm_share)} vs {_pct(best.exposed_comm_share)})")
    else:
        cause = f"slower compute (MFU {r.mfu:.1%} vs {best.mfu:.1%})"
    return f"{slower:.1%} slower: {cause}"


def planned_layout(model: str, gpu: str | None, gpus: int | None, seq_len: int | None, tokens, batch: int | None,
                   progress=None) -> tuple[dict, str]:
    """The layout `gpuhours estimate --model M` uses when no layout option is given: the search's best on the
    estimate's GPUs (the default plan's where not given), as scenario overrides, and a line saying so."""
    defaults = load_scenario(model=model, gpu=gpu, gpus=gpus, seq_len=seq_len, tokens=tokens, pp=1, ep=1, tp=1,
                             cp=1, schedule="1f1b")
    gpu, gpus = defaults.cluster.gpu.key, defaults.parallel.num_gpus
    result = plan_layouts(model, gpu, gpus, seq_len=defaults.plan.seq_len, tokens=defaults.plan.tokens, batch=batch,
                          progress=progress, workers=2, executor="process")
    if result.best is None:
        raise ValueError(f"model: no layout of {result.model} on {gpus} x {result.gpu} fits in memory; give more "
                         f"--gpus or a layout (--pp, --tp, --ep, ...)")
    c = result.best.candidate
    overrides = dict(pp=c.pp, tp=c.tp, ep=c.ep, cp=c.cp, schedule=c.schedule, micro_batch_size=c.micro_batch_size,
                     recompute=c.recompute, zero_stage=c.zero_stage, batch=result.batch,
                     vpp=2 if c.schedule == "interleaved-1f1b" else 1, tp_comm_overlap=c.tp > 1, etp=c.etp)
    if c.comm_sms is not None:
        overrides["comm_sms"] = c.comm_sms
    note = (f"layout chosen by gpuhours plan: {result.best.layout}, the best of {result.simulated} simulated "
            f"({result.wall_s:.0f} s) at a constant batch of {result.batch} ({result.batch_note}); give --pp, --tp, "
            f"--ep, ... to set your own")
    return overrides, note
