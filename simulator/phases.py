"""Multi-phase run plans: pre-training, context extension, post-training, each a scenario of its own.

A phased plan is a TOML file with `base = "<built-in plan>"` under `[plan]` and one `[[phase]]` table per phase.
Every phase starts from the base plan (not from the phase before it) and overrides what it names:

- run: `seq_len`; `batch` (constant) or `batch_start`/`batch_end`/`ramp_tokens`; `ramp_micro_batch_size`
  (micro-batch size switches, `RunPlan.micro_batch_switches`); `tokens` or `steps`
  (steps need a constant batch: tokens = steps x batch x seq_len); `price`.
- layout: `gpus`, `gpu`, `pp`, `ep`, `tp`, `vpp`, `schedule`, `micro_batch_size`, `zero_stage`, `stage_layers`,
  `comm_sms`, `grad_reduce_dtype`, `pipeline_layout`; numerics `fp8`, `recompute`; `network`, `cluster`, `nic_gbps`, `oversubscription`, `routing`,
  `link_sharing`, `fp8_gemm_kernels`, `calibration`, `model`.
- bookkeeping: `name` (required), `reference_gpu_hours` (a published figure to compare with), `note`.

A plain plan (no `[[phase]]`) is one phase named "run". Unknown keys raise ValueError naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.simulator.run import RunEstimate
from gpuhours.simulator.micro_batch_ramp import run_memory
from gpuhours.simulator.scenario import Scenario, _read_plan, estimate, list_plans, load_scenario, reference_table
from gpuhours.workloads.memory import MemoryBreakdown
from gpuhours.workloads.ops import recompute_policy
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.run import BatchRamp, parse_count

_GIB = 2**30
SCENARIO_KEYS = ("model", "gpu", "gpus", "pp", "ep", "tp", "vpp", "schedule", "micro_batch_size", "seq_len",
                 "price", "calibration", "fp8", "comm_sms", "network", "cluster", "nic_gbps", "oversubscription",
                 "routing", "tokens", "batch", "cp", "attention_kernel", "tp_comm_overlap", "order",
                 "capacity_factor", "grad_reduce_dtype", "ramp_micro_batch_size", "etp", "moe_dispatch",
                 "max_nodes_per_token", "cp_comm", "pipeline_layout", "sequence_parallel", "reshard_after_forward",
                 "dp_bucket_params", "overlap_grad_reduce", "overlap_param_gather", "fp8_recipe", "link_sharing",
                 "fp8_gemm_kernels", "tp_comm_overlap_impl")
RAMP_KEYS = ("batch_start", "batch_end", "ramp_tokens")
EXTRA_KEYS = ("steps", "zero_stage", "stage_layers", "recompute")
BOOK_KEYS = ("name", "reference_gpu_hours", "note")
PHASE_KEYS = SCENARIO_KEYS + RAMP_KEYS + EXTRA_KEYS + BOOK_KEYS


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    overrides: tuple[tuple[str, object], ...] = ()
    reference_gpu_hours: float | None = None
    note: str = ""

    def get(self, key: str, default=None):
        return dict(self.overrides).get(key, default)

    def to_dict(self) -> dict:
        return {"name": self.name, "overrides": dict(self.overrides),
                "reference_gpu_hours": self.reference_gpu_hours, "note": self.note}


@dataclass(frozen=True)
class PhasedPlan:
    name: str
    base: str
    phases: tuple[PhaseSpec, ...]
    reference: tuple[tuple[str, object], ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "phases": [p.to_dict() for p in self.phases],
                "reference": dict(self.reference)}


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


def parse_phase(table: dict, index: int) -> PhaseSpec:
    """One [[phase]] table; ValueError naming an unknown or inconsistent key."""
    unknown = sorted(set(table) - set(PHASE_KEYS))
    if unknown:
        raise ValueError(f"phase {index + 1}: unknown key {unknown[0]!r}; allowed: {', '.join(PHASE_KEYS)}")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"phase {index + 1}: name must be a non-empty string, got {name!r}")
    if "tokens" in table and "steps" in table:
        raise ValueError(f"phase {name!r}: give tokens or steps, not both")
    if "batch" in table and any(k in table for k in RAMP_KEYS):
        raise ValueError(f"phase {name!r}: give batch or batch_start/batch_end/ramp_tokens, not both")
    for key in ("steps", "batch", "seq_len"):  # steps x batch x seq_len makes the phase's tokens
        value = table.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"phase {name!r}: {key} must be a positive integer, got {value!r}")
    overrides = tuple((k, _freeze(v)) for k, v in table.items() if k not in BOOK_KEYS)
    ref = table.get("reference_gpu_hours")
    return PhaseSpec(name, overrides, float(parse_count(ref, "reference_gpu_hours")) if ref is not None else None,
                     table.get("note", ""))


def load_phased_plan(name_or_path: str | Path) -> PhasedPlan:
    """A phased plan from a built-in plan name or a TOML path. The base must be a built-in plan."""
    path = Path(name_or_path)
    if str(name_or_path) in list_plans():
        doc, name = _read_plan(str(name_or_path)), str(name_or_path)
    elif path.suffix == ".toml" and path.exists():
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise ValueError(f"plan file {str(path)!r}: malformed TOML ({exc})") from None
        name = path.stem
    else:
        raise ValueError(f"plan must be one of {', '.join(list_plans())} or a .toml file; got {str(name_or_path)!r}")
    phases = doc.get("phase")
    reference = tuple(reference_table(doc).items())
    if phases is None:  # a plain plan: one phase
        if name not in list_plans():
            raise ValueError(f"plan file {str(path)!r} has no [[phase]] tables; a single-phase plan must be built in")
        return PhasedPlan(name, name, (PhaseSpec("run"),), reference)
    base = doc.get("plan", {}).get("base")
    if base not in list_plans():
        raise ValueError(f"plan.base must be one of {', '.join(list_plans())}; got {base!r}")
    if not isinstance(phases, list) or not phases:
        raise ValueError("phase: at least one [[phase]] table is needed")
    specs = tuple(parse_phase(t, i) for i, t in enumerate(phases))
    names = [p.name for p in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"phase names must be unique, got {names}")
    return PhasedPlan(name, base, specs, reference)


def phase_scenario(base: str, phase: PhaseSpec) -> Scenario:
    """The base plan's scenario with the phase's overrides applied."""
    o = dict(phase.overrides)
    run = _read_plan(base)["run"]
    kwargs = {k: o[k] for k in SCENARIO_KEYS if k in o}
    if "steps" in o:
        if "batch" in o:
            constant = o["batch"]
        elif not any(k in o for k in RAMP_KEYS) and run["batch_start"] == run["batch_end"]:
            constant = run["batch_end"]
        else:
            constant = None
        if constant is None:
            raise ValueError(f"phase {phase.name!r}: steps need a constant batch; give batch")
        kwargs["tokens"] = o["steps"] * constant * o.get("seq_len", run["seq_len"])
    scenario = load_scenario(base, **kwargs)
    if any(k in o for k in RAMP_KEYS):
        ramp = BatchRamp(o.get("batch_start", run["batch_start"]), o.get("batch_end", run["batch_end"]),
                         parse_count(o.get("ramp_tokens", run.get("ramp_tokens", 0)), "ramp_tokens"))
        scenario = replace(scenario, plan=replace(scenario.plan, batch=ramp))
    if "zero_stage" in o or "stage_layers" in o:
        parallel = replace(scenario.parallel, zero_stage=o.get("zero_stage", scenario.parallel.zero_stage),
                           stage_layers=o.get("stage_layers", scenario.parallel.stage_layers))
        parallel.check_model(scenario.model)
        scenario = replace(scenario, parallel=parallel)
    if "recompute" in o:
        scenario = replace(scenario, opts=replace(scenario.opts, recompute=recompute_policy(o["recompute"])))
    return scenario


def attention_share(scenario: Scenario) -> float:
    """Share of one transformer layer's compute time (F + B + W, the model's last layer) spent in the attention
    core, from the same compute model the step simulation uses."""
    model, p = scenario.model, scenario.parallel
    compute = ComputeModel(scenario.cluster.gpu, scenario.profile)
    passes = layer_passes(model, model.n_layers - 1, p, scenario.plan.seq_len, scenario.effective_opts())
    core = total = 0.0
    for seg in passes.forward + passes.backward + passes.weight:
        for op in seg.ops:
            if op.kind == "collective":
                continue
            t = compute.duration(op)
            total += t
            core += t if op.kind == "attention" else 0.0
    return core / total if total else 0.0


def layout_label(scenario: Scenario) -> str:
    p = scenario.parallel
    parts = [f"PP{p.pp} {p.schedule}", f"TP{p.tp}"] + ([f"CP{p.cp}"] if p.cp > 1 else [])
    parts += [f"EP{p.ep}", f"DP{p.dp}", f"ZeRO-{p.zero_stage}"]
    parts += [f"placement {'-'.join(p.order)}"] if p.order != ("tp", "cp", "dp", "pp") else []
    return " ".join(parts)


@dataclass(frozen=True)
class PhaseEstimate:
    name: str
    gpu: str
    gpus: int
    layout: str
    seq_len: int
    batch: int                 # sequences per step in the steady segment (as requested)
    tokens: float
    steps: float
    step_time_s: float         # steady segment
    gpu_hours: float
    wall_clock_days: float
    cost_usd: float
    tokens_per_s_per_gpu: float
    mfu_bf16: float
    attention_share: float
    memory_gib: float
    memory_capacity_gib: float
    fits: bool
    notes: tuple[str, ...] = ()
    reference_gpu_hours: float | None = None
    run: RunEstimate | None = field(default=None, repr=False, compare=False)
    memory: MemoryBreakdown | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("run", "memory")}
        d["notes"] = list(self.notes)
        d["memory_detail"] = self.memory.to_dict() if self.memory else None
        return d


@dataclass(frozen=True)
class PhasedEstimate:
    plan: str
    phases: tuple[PhaseEstimate, ...]
    reference: tuple[tuple[str, object], ...] = ()

    @property
    def gpu_hours(self) -> float:
        return sum(p.gpu_hours for p in self.phases)

    @property
    def wall_clock_days(self) -> float:
        return sum(p.wall_clock_days for p in self.phases)

    @property
    def cost_usd(self) -> float:
        return sum(p.cost_usd for p in self.phases)

    @property
    def tokens(self) -> float:
        return sum(p.tokens for p in self.phases)

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.phases)

    def to_dict(self) -> dict:
        return {"plan": self.plan, "phases": [p.to_dict() for p in self.phases],
                "total": {"gpu_hours": self.gpu_hours, "wall_clock_days": self.wall_clock_days,
                          "cost_usd": self.cost_usd, "tokens": self.tokens, "fits": self.fits},
                "reference": dict(self.reference)}


def estimate_phase(scenario: Scenario, name: str = "run", reference_gpu_hours: float | None = None,
                   allow_oom: bool = True) -> PhaseEstimate:
    """One phase: the run estimate, its steady step's memory on the busiest rank, and the attention share."""
    run = estimate(scenario)
    steady = run.steady
    mem = run_memory(scenario, run)  # the steady step's, or the fullest micro-batch size the run switches to
    if not mem.fits and not allow_oom:
        raise ValueError(f"phase {name!r}: {mem.reason()} (allow_oom=True estimates it anyway)")
    notes = run.notes + (() if mem.fits else (mem.reason(),))
    return PhaseEstimate(
        name=name, gpu=scenario.cluster.gpu.name, gpus=scenario.parallel.num_gpus, layout=layout_label(scenario),
        seq_len=scenario.plan.seq_len, batch=steady.batch_requested, tokens=run.tokens,
        steps=sum(s.steps for s in run.segments), step_time_s=steady.step.step_time, gpu_hours=run.gpu_hours,
        wall_clock_days=run.wall_clock_days, cost_usd=run.cost_usd,
        tokens_per_s_per_gpu=run.tokens / run.wall_clock_s / run.num_gpus, mfu_bf16=steady.step.mfu("bf16"),
        attention_share=attention_share(scenario), memory_gib=mem.total / _GIB,
        memory_capacity_gib=mem.capacity / _GIB, fits=mem.fits, notes=notes,
        reference_gpu_hours=reference_gpu_hours, run=run, memory=mem)


def estimate_phases(plan: PhasedPlan | str | Path, *, allow_oom: bool = False, progress=None) -> PhasedEstimate:
    """Every phase of a phased plan (a PhasedPlan, a built-in name or a TOML path). A phase that does not fit in
    GPU memory raises ValueError unless `allow_oom`; `progress(done, total)` is called after each phase."""
    if not isinstance(plan, PhasedPlan):
        plan = load_phased_plan(plan)
    out = []
    for i, phase in enumerate(plan.phases):
        scenario = phase_scenario(plan.base, phase)
        out.append(estimate_phase(scenario, phase.name, phase.reference_gpu_hours, allow_oom))
        if progress:
            progress(i + 1, len(plan.phases))
    return PhasedEstimate(plan.name, tuple(out), plan.reference)
