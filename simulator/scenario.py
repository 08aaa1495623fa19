"""A scenario is everything an estimate needs: model, layout, cluster, run plan, calibration and numerics.

`load_scenario` starts from a plan file (the built-in `deepseek-v3` plan by default) and applies overrides, so
the command line can change any part of the reference case.

Plan files (names, reading, the types of their keys, the [reference] table) are plan_file.py's; what a
scenario's figures rest on (calibration case, hardware-only sibling, warnings) is provenance.py's; both
re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from gpuhours.hwmodels.attention_kernels import attention_impl, with_attention_kernel
from gpuhours.hwmodels.calibration import CalibrationProfile, load_profile
from gpuhours.hwmodels.cluster import ClusterSpec, default_cluster_for, deepseek_h800_cluster
from gpuhours.hwmodels.collectives import AlphaBetaNetwork
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.hwmodels.deepep import deepep_saturating_sms
from gpuhours.hwmodels.fabric_presets import fabric_from_cluster, list_cluster_presets, load_cluster_preset
from gpuhours.hwmodels.gemm_kernels import with_fp8_gemm_kernels
from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.hwmodels.graph_network import GraphNetwork
from gpuhours.hwmodels.link_sharing import check_link_sharing
from gpuhours.hwmodels.prices import listed_price
from gpuhours.hwmodels.topology import FabricSpec
from gpuhours.simulator.plan_file import (DEFAULT_PLAN, _read_plan, is_phased, list_plans, plan_reference,
                                          reference_table)
from gpuhours.simulator.provenance import hardware_only_scenario, is_calibration_case, scenario_warnings
from gpuhours.simulator.run import RunEstimate, estimate_run, main_microbatches
from gpuhours.simulator.step import StepSimulator
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import OpOptions, recompute_policy
from gpuhours.workloads.parallel import OVERLAPPING_SCHEDULES, ParallelSpec
from gpuhours.workloads.presets import list_presets, load_model_file, load_preset
from gpuhours.workloads.routing import RankLoads, ep_rank_loads
from gpuhours.workloads.run import BatchRamp, RunPlan, parse_count

__all__ = [  # the scenario API; the plan-file and provenance names are re-exported (many modules import them here)
    "DEFAULT_CALIBRATION", "DEFAULT_PLAN", "NETWORK_MODELS", "Scenario", "estimate", "hardware_only_scenario",
    "is_calibration_case", "is_phased", "list_plans", "load_scenario", "plan_reference", "reference_table",
    "resolve_model", "scenario_warnings",
]

DEFAULT_CALIBRATION = "trace-h800"  # measured kernels of the real workload: the most trusted source
NETWORK_MODELS = ("graph", "alpha-beta")


@dataclass(frozen=True)
class Scenario:
    model: ModelSpec
    parallel: ParallelSpec
    cluster: ClusterSpec
    plan: RunPlan
    profile: CalibrationProfile
    opts: OpOptions = OpOptions()
    network_name: str = "graph"
    fabric: FabricSpec | None = None  # the fabric the graph model routes over
    routing: str = "balanced"         # MoE routing: balanced, skew:<s>, file:<path>
    redundant_experts: int = 0        # EPLB: extra expert replicas per EP group, packed onto the least-loaded GPUs
    fp8_fallback: bool = False        # the plan asked for FP8 on a GPU without it: BF16 runs (see scenario_warnings)
    attention_kernel: str | None = None  # measured attention kernel pricing the core (hwmodels.attention_kernels)
    fp8_gemm_kernels: str | None = None  # the FP8 GEMM kernel family the run used (hwmodels.gemm_kernels)
    link_sharing: str = "bottleneck"  # how a phase's flows share the graph's links (hwmodels.link_sharing)

    def with_profile(self, profile: CalibrationProfile) -> "Scenario":
        """The scenario under another profile, with the run's own attention kernel and FP8 GEMM kernels applied
        to it as they were to this one."""
        if self.attention_kernel:
            profile = with_attention_kernel(profile, self.attention_kernel, self.model.attention.qk_head_dim,
                                            self.plan.seq_len)
        return replace(self, profile=with_fp8_gemm_kernels(profile, self.fp8_gemm_kernels))

    def network(self):
        if self.network_name == "alpha-beta":
            return AlphaBetaNetwork(self.cluster)
        return _graph_network(self.fabric or fabric_from_cluster(self.cluster), self.link_sharing)

    def routing_loads(self) -> RankLoads | None:
        """Rows per EP rank and nodes per token of one micro-batch under the scenario's routing (MoE only)."""
        moe, p = self.model.moe, self.parallel
        if moe is None or p.ep == 1:
            return None
        tokens = p.micro_batch_size * self.plan.seq_len // p.cp // (p.tp if p.sequence_parallel else 1)
        gpn = max(1, self.cluster.gpus_per_node // p.etp)  # EP ranks per node: an EP group's ranks are etp apart
        loads = ep_rank_loads(moe, p.ep, gpn, tokens, self.routing)
        if self.redundant_experts:
            return _with_eplb(loads, moe, p.ep, gpn, tokens, self.routing, self.redundant_experts)
        return loads

    def effective_opts(self) -> OpOptions:
        """Numerics plus the routing's imbalance (the slowest EP rank sets the pace) and nodes per token."""
        loads = self.routing_loads()
        if loads is None:
            return self.opts
        if self.opts.max_nodes_per_token is not None:  # node-limited routing given: its closed form
            return replace(self.opts, imbalance=loads.imbalance)  # (`workloads.moe_dispatch.expected_nodes_per_token`)
        return replace(self.opts, imbalance=loads.imbalance, nodes_per_token=loads.mean_nodes_per_token)

    def simulator(self) -> StepSimulator:
        compute = ComputeModel(self.cluster.gpu, self.profile)
        return StepSimulator(self.model, self.parallel, self.cluster, compute, self.network(), self.plan.seq_len,
                             self.effective_opts(), balance_microbatches=main_microbatches(self.plan, self.parallel))


@lru_cache(maxsize=32)
def _with_eplb(loads: RankLoads, moe, ep: int, gpus_per_node: int, tokens: int, routing: str,
               redundant: int) -> RankLoads:
    """The routing's loads after EPLB-style replication of the heaviest experts (rows per rank re-packed; the
    extra replicas' weights and their GEMM groups are not counted)."""
    from gpuhours.workloads.eplb import balance_experts, expert_loads_for

    if (moe.n_routed_experts + redundant) % ep:
        raise ValueError(f"redundant experts ({redundant}) plus the {moe.n_routed_experts} routed experts must "
                         f"divide by ep ({ep})")
    plan = balance_experts(expert_loads_for(moe, ep, gpus_per_node, tokens, routing), ep, gpus_per_node, redundant)
    rows = plan.rank_loads_after
    return RankLoads(rows_per_rank=rows, imbalance=plan.imbalance_after,
                     mean_nodes_per_token=loads.mean_nodes_per_token,
                     max_nodes_per_token=loads.max_nodes_per_token, routing=f"{routing} + EPLB({redundant})")


@lru_cache(maxsize=8)
def _graph_network(fabric: FabricSpec, link_sharing: str = "bottleneck") -> GraphNetwork:
    """Graph models are built once per fabric: their routes and collective phases are cached inside."""
    return GraphNetwork(fabric, link_sharing=link_sharing)


@lru_cache(maxsize=32)
def _preset(name: str) -> ModelSpec:
    """A bundled preset, read once per process (frozen: scenarios share it; a sweep builds one per point)."""
    return load_preset(name)


def _calibration_profile(name) -> CalibrationProfile:
    """`load_profile`; a bundled profile by name read once per process (its tables are never changed in place:
    `with_attention_kernel` and `with_fp8_gemm_kernels` copy them), a file read every time."""
    if isinstance(name, str) and not Path(name).is_file():
        return _bundled_profile(name)
    return load_profile(name)


@lru_cache(maxsize=8)
def _bundled_profile(name: str) -> CalibrationProfile:
    return load_profile(name)


def resolve_model(model: "str | ModelSpec") -> ModelSpec:
    """A preset name, a path to a TOML model file or a Hugging Face config.json, or a ModelSpec as it is."""
    if isinstance(model, ModelSpec):
        return model
    if model in list_presets():
        return _preset(model)
    if Path(model).suffix in (".toml", ".json") or Path(model).exists():
        return load_model_file(model)
    raise ValueError(f"model must be a preset ({', '.join(list_presets())}) or a .toml/.json file; got {model!r}")


def load_scenario(plan: str | Path = DEFAULT_PLAN, **overrides) -> Scenario:
    """The plan's scenario with any of its parts replaced (`_load_scenario`'s keywords). Raises ValueError naming
    a bad field, a missing plan key too ("plan 'p.toml': missing key 'gpus'")."""
    try:
        return _load_scenario(plan, **overrides)
    except KeyError as exc:
        raise ValueError(f"plan {str(plan)!r}: missing key {exc.args[0]!r}") from None


def _load_scenario(plan: str | Path = DEFAULT_PLAN, *, model: str | None = None, gpu: str | None = None,
                  gpus: int | None = None, pp: int | None = None, ep: int | None = None, tp: int | None = None,
                  vpp: int | None = None, schedule: str | None = None, micro_batch_size: int | None = None,
                  tokens: str | float | None = None, seq_len: int | None = None, price: float | None = None,
                  calibration: str | None = None, fp8: bool | None = None, comm_sms: int | None = None,
                  batch: int | None = None, network: str | None = None, cluster: str | None = None,
                  nic_gbps: float | None = None, oversubscription: float | None = None,
                  routing: str | None = None, redundant_experts: int = 0,
                  stage_layers: tuple[int, ...] | None = None, recompute: str | None = None,
                  overlap_grad_reduce: bool | None = None, overlap_param_gather: bool | None = None,
                  zero_stage: int | None = None, cp: int | None = None,
                  attention_kernel: str | None = None, tp_comm_overlap: bool | None = None,
                  order: str | tuple[str, ...] | None = None, capacity_factor: float | None = None,
                  tiers: int | None = None, grad_reduce_dtype: str | None = None,
                  ramp_micro_batch_size=None, etp: int | None = None, moe_dispatch: str | None = None,
                  max_nodes_per_token: int | None = None, cp_comm: str | None = None,
                  pipeline_layout: str | None = None, sequence_parallel: bool | None = None,
                  reshard_after_forward: bool | None = None, dp_bucket_params: int | None = None,
                  fp8_recipe: str | None = None, host_dispatch: str | None = None,
                  elementwise_kernels: str | None = None, fp8_gemm_kernels: str | None = None,
                  link_sharing: str | None = None, tp_comm_overlap_impl: str | None = None) -> Scenario:
    """The plan's scenario with any of its parts replaced. Raises ValueError naming a bad field (a missing plan
    key too: "plan 'p.toml': missing key 'gpus'").

    `attention_kernel` (or the plan's [numerics] attention_kernel): price the attention core at that measured
    kernel's efficiency for the model's head dimension and the run's sequence length
    (hwmodels.attention_kernels) instead of the profile's; None keeps the profile's."""
    doc = _read_plan(plan)
    if "phase" in doc:
        raise ValueError(f"plan {str(plan)!r} has phases: estimate it with `gpuhours estimate --plan {plan}`")
    for table in ("model", "cluster", "parallel", "run"):
        if table not in doc:
            raise ValueError(f"plan {str(plan)!r} has no [{table}] table")
    model_spec = resolve_model(model or doc["model"]["preset"])
    c, par, run, num = doc["cluster"], doc["parallel"], doc["run"], doc.get("numerics", {})
    gpu_spec = load_gpu(gpu or c["gpu"])
    num_gpus = gpus if gpus is not None else c["gpus"]
    if num_gpus < 1:
        raise ValueError(f"gpus must be a positive integer, got {num_gpus}")
    if gpu_spec.name.upper().startswith("H800"):
        cluster_spec = deepseek_h800_cluster(num_gpus)
    else:
        cluster_spec = default_cluster_for(gpu_spec, num_gpus, c.get("gpus_per_node", 8))
    network = network or doc.get("network", {}).get("model", "graph")
    if network not in NETWORK_MODELS:
        raise ValueError(f"network must be one of {', '.join(NETWORK_MODELS)}; got {network!r}")
    plan_fabric = doc.get("network", {}).get("cluster")
    if plan_fabric and load_gpu(c["gpu"]).key != gpu_spec.key:
        plan_fabric = None  # the plan's fabric belongs to its GPU; another GPU gets a generic fat-tree
    fabric = _fabric(cluster or plan_fabric, gpu_spec, cluster_spec, num_gpus, nic_gbps, oversubscription, tiers)
    if cluster or plan_fabric:  # a named fabric sets the node size and the links of every network model
        cluster_spec = replace(cluster_spec, gpus_per_node=fabric.gpus_per_node, nvlink_bw=fabric.nvlink_bw,
                               ib_bw=fabric.nic_bw, nvlink_latency=fabric.nvlink_latency,
                               ib_latency=fabric.ib_latency)
    if nic_gbps is not None:
        cluster_spec = replace(cluster_spec, ib_bw=nic_gbps / 8 * 1e9)
    dense = model_spec.moe is None
    ep_value = ep if ep is not None else (1 if dense else par["ep"])
    comm_default = par.get("comm_sms", 0) if ep_value > 1 else 0
    if comm_default == 0 and ep_value > 1 and (schedule or par["schedule"]) in OVERLAPPING_SCHEDULES:
        comm_default = deepep_saturating_sms()  # overlapped all-to-alls need SMs: DeepSeek-V3's 20 (hwmodels.deepep)
    layout = pipeline_layout if pipeline_layout is not None else par.get("pipeline_layout")
    parallel = ParallelSpec(
        num_gpus=num_gpus,
        pp=pp if pp is not None else par["pp"],
        ep=ep_value,
        tp=tp if tp is not None else par.get("tp", 1),
        cp=cp if cp is not None else par.get("cp", 1),
        zero_stage=zero_stage if zero_stage is not None else par.get("zero_stage", 1),
        reshard_after_forward=par.get("reshard_after_forward", True) if reshard_after_forward is None
        else reshard_after_forward,
        grad_reduce_dtype=grad_reduce_dtype or par.get("grad_reduce_dtype", ParallelSpec.grad_reduce_dtype),
        micro_batch_size=micro_batch_size if micro_batch_size is not None else par.get("micro_batch_size", 1),
        schedule=schedule or par["schedule"],
        vpp=vpp if vpp is not None else 1 if layout else par.get(
            "vpp", 2 if (schedule or par["schedule"]) == "interleaved-1f1b" else 1),  # a layout implies vpp
        comm_sms=comm_sms if comm_sms is not None else comm_default,
        stage_layers=stage_layers,
        pipeline_layout=layout,
        overlap_grad_reduce=par.get("overlap_grad_reduce", False) if overlap_grad_reduce is None
        else overlap_grad_reduce,
        overlap_param_gather=par.get("overlap_param_gather", False) if overlap_param_gather is None
        else overlap_param_gather,
        dp_bucket_params=par.get("dp_bucket_params", 0) if dp_bucket_params is None else dp_bucket_params,
        tp_comm_overlap=par.get("tp_comm_overlap", False) if tp_comm_overlap is None else tp_comm_overlap,
        tp_comm_overlap_impl=tp_comm_overlap_impl or par.get("tp_comm_overlap_impl", ParallelSpec.tp_comm_overlap_impl),
        sequence_parallel=par.get("sequence_parallel", ParallelSpec.sequence_parallel) if sequence_parallel is None
        else sequence_parallel,
        order=order if order is not None else par.get("order", ParallelSpec.order),
        etp=etp if etp is not None else par.get("etp", 1),
        moe_dispatch=moe_dispatch if moe_dispatch is not None else par.get("moe_dispatch", "alltoall"),
        cp_comm=cp_comm if cp_comm is not None else par.get("cp_comm", ParallelSpec.cp_comm),
    )
    parallel.check_model(model_spec)
    ramp = BatchRamp(run["batch_start"], run["batch_end"], parse_count(run.get("ramp_tokens", 0), "ramp_tokens"))
    if batch is not None:
        ramp = BatchRamp(batch, batch, 0.0)
    run_plan = RunPlan(
        tokens=parse_count(tokens if tokens is not None else run["tokens"], "tokens"),
        seq_len=seq_len if seq_len is not None else run["seq_len"],
        batch=ramp,
        price_per_gpu_hour=price if price is not None else run["price_per_gpu_hour"],
        micro_batch_switches=ramp_micro_batch_size if ramp_micro_batch_size is not None
        else run.get("ramp_micro_batch_size", ()),
    )
    if price is None and load_gpu(c["gpu"]).key != gpu_spec.key:  # the plan's price is for the plan's GPU
        listed = listed_price(gpu_spec.key)
        if listed is not None:
            run_plan = replace(run_plan, price_per_gpu_hour=listed[0], price_source=listed[1])
        else:
            run_plan = replace(run_plan, price_source=f"the plan's price for {load_gpu(c['gpu']).name}: no price is "
                                                      f"listed for {gpu_spec.name} (hwmodels/data/prices.toml); "
                                                      f"give --price")
    profile = _calibration_profile(calibration or DEFAULT_CALIBRATION)
    kernel = attention_kernel if attention_kernel is not None else num.get("attention_kernel")
    if kernel:
        profile = with_attention_kernel(profile, kernel, model_spec.attention.qk_head_dim, run_plan.seq_len)
    gemm_kernels = fp8_gemm_kernels if fp8_gemm_kernels is not None else num.get("fp8_gemm_kernels")
    profile = with_fp8_gemm_kernels(profile, gemm_kernels)  # the run's FP8 GEMM kernels (hwmodels.gemm_kernels)
    # [numerics] recompute: a policy (workloads.recompute: a name, "selective:<modules>", "full:N"), a list of
    # module names, or the legacy true ("deepseek") / false ("none"); the `recompute` argument overrides it
    policy = recompute_policy(num.get("recompute", "deepseek") if recompute is None else recompute)
    opts = OpOptions(fp8=num.get("fp8", True) if fp8 is None else fp8, recompute=policy,
                     fp8_recipe=fp8_recipe if fp8_recipe is not None else num.get("fp8_recipe", "blockwise"),
                     capacity_factor=capacity_factor if capacity_factor is not None else num.get("capacity_factor"),
                     max_nodes_per_token=max_nodes_per_token if max_nodes_per_token is not None
                     else doc.get("routing", {}).get("max_nodes_per_token"),
                     host_dispatch=host_dispatch if host_dispatch is not None
                     else num.get("host_dispatch", "eager"),  # hwmodels.launch
                     elementwise_kernels=elementwise_kernels if elementwise_kernels is not None
                     else num.get("elementwise_kernels", "fused"),  # workloads.eager_ops
                     attention_impl=attention_impl(kernel))  # workloads.unfused_attention
    fp8_fallback = False
    if opts.fp8 and not gpu_spec.fp8_flops:
        if fp8:  # asked for by the caller: refuse rather than price something else
            raise ValueError(f"precision fp8 is not available on {gpu_spec.name} (no FP8 tensor cores); "
                             f"allowed: bf16")
        opts, fp8_fallback = replace(opts, fp8=False), True  # the plan's default: run BF16 and say so
    if opts.fp8 and opts.fp8_recipe == "mxfp8":  # Blackwell only: refuse before any simulation (hwmodels/mxfp8.py)
        from gpuhours.hwmodels.mxfp8 import check_gpu
        check_gpu(gpu_spec)
    routing = routing or doc.get("routing", {}).get("model", "balanced")
    if not (routing == "balanced" or routing.startswith("skew:") or routing.startswith("file:")):
        raise ValueError(f"routing must be balanced, skew:<value> or file:<path>; got {routing!r}")
    if redundant_experts < 0:
        raise ValueError(f"redundant_experts must be >= 0, got {redundant_experts}")
    scenario = Scenario(model_spec, parallel, cluster_spec, run_plan, profile, opts, network, fabric, routing,
                        redundant_experts, fp8_fallback, kernel or None, gemm_kernels,
                        link_sharing=check_link_sharing(link_sharing or doc.get("network", {}).get(
                            "link_sharing", "bottleneck")))  # hwmodels.link_sharing
    scenario.routing_loads()  # bad routing values and files fail here, before any simulation
    return scenario


def _fabric(preset: str | None, gpu, cluster: ClusterSpec, num_gpus: int, nic_gbps: float | None,
            oversubscription: float | None, tiers: int | None = None) -> FabricSpec:
    """The fabric for the graph model: a named preset or a cluster file (``*.toml``, the keys of a preset; see
    hwmodels/data/clusters.toml), resized to the job's GPUs with its tier count re-chosen when "auto", or one built
    around the cluster's achievable bandwidths; NIC speed and oversubscription may be overridden."""
    from gpuhours.hwmodels.fabric_presets import is_cluster_file

    overrides = {}
    if nic_gbps is not None:
        if not 0 < nic_gbps < float("inf"):
            raise ValueError(f"nic_gbps must be a positive finite number (Gb/s per GPU), got {nic_gbps}")
        overrides["nic_bw"] = nic_gbps / 8 * 1e9
    if oversubscription is not None:
        if not 1 <= oversubscription < float("inf"):
            raise ValueError(f"oversubscription must be a finite number >= 1 (downlink : uplink), got {oversubscription}")
        overrides["oversubscription"] = oversubscription
    if tiers is not None:
        overrides["tiers"] = tiers  # FabricSpec names the allowed values
    if preset is None:
        return fabric_from_cluster(cluster, **overrides)
    if not is_cluster_file(preset) and preset not in list_cluster_presets():
        raise ValueError(f"cluster must be one of {', '.join(list_cluster_presets())} or a cluster .toml file; "
                         f"got {preset!r}")
    fabric = load_cluster_preset(preset, gpus=num_gpus, **overrides)
    if load_gpu(fabric.gpu).key != gpu.key:
        raise ValueError(f"cluster {preset!r} has {fabric.gpu} GPUs, not {gpu.key}; pick --gpu {fabric.gpu}")
    return fabric


def estimate(scenario: Scenario, progress=None) -> RunEstimate:
    from gpuhours.simulator.collector import collector_paused
    from gpuhours.simulator.micro_batch_ramp import scenario_at_micro_batch_size

    with collector_paused():  # reference counting frees what an estimate allocates (simulator/collector.py)
        base = scenario.simulator()
        result = estimate_run(base, scenario.plan, progress, lambda size: scenario_at_micro_batch_size(
            scenario, size, base.stage_layers).simulator())
    _check_finite_estimate(result)
    return result


def _check_finite_estimate(result: RunEstimate) -> None:
    """Finite inputs far outside any training run (1e300 tokens, a 1e-300 Gb/s NIC, a $1e308 GPU-hour) can
    overflow the run's totals; refuse them rather than print inf days or a NaN cost. The 1e4 margin covers the
    energy line (GPU-hours x kW x PUE)."""
    steady = result.steady
    figures = {"wall-clock seconds": result.wall_clock_s, "GPU-hours": result.gpu_hours * 1e4,
               "cost": result.cost_usd}
    bad = [name for name, value in figures.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"estimate: the run's {bad[0]} overflow a float64 (step time {steady.step.step_time:.3g} s, "
                         f"{sum(s.steps for s in result.segments):.3g} steps, {result.num_gpus} GPUs, "
                         f"${result.price_per_gpu_hour:g}/GPU-hour); allowed: tokens, nic_gbps, oversubscription "
                         f"and price within a real run's range")
