"""A scenario is everything an estimate needs: model, layout, cluster, run plan, calibration and numerics.

`load_scenario` starts from a plan file (the built-in `deepseek-v3` plan by default) and applies overrides, so
the command line can change any part of the reference case.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from gpuhours.hwmodels.calibration import CalibrationProfile, load_profile
from gpuhours.hwmodels.cluster import ClusterSpec, default_cluster_for, deepseek_h800_cluster
from gpuhours.hwmodels.collectives import AlphaBetaNetwork
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.simulator.run import RunEstimate, estimate_run
from gpuhours.simulator.step import StepSimulator
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import list_presets, load_model_file, load_preset
from gpuhours.workloads.run import BatchRamp, RunPlan, parse_count

DEFAULT_PLAN = "deepseek-v3"
DEFAULT_CALIBRATION = "default-h800"


@dataclass(frozen=True)
class Scenario:
    model: ModelSpec
    parallel: ParallelSpec
    cluster: ClusterSpec
    plan: RunPlan
    profile: CalibrationProfile
    opts: OpOptions = OpOptions()
    network_name: str = "alpha-beta"

    def network(self):
        return AlphaBetaNetwork(self.cluster)

    def simulator(self) -> StepSimulator:
        compute = ComputeModel(self.cluster.gpu, self.profile)
        return StepSimulator(self.model, self.parallel, self.cluster, compute, self.network(), self.plan.seq_len,
                             self.opts)


def list_plans() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("gpuhours.workloads").joinpath("plans").iterdir()
                  if p.name.endswith(".toml"))


def _read_plan(name: str) -> dict:
    if name not in list_plans():
        raise ValueError(f"plan must be one of {', '.join(list_plans())}; got {name!r}")
    text = resources.files("gpuhours.workloads").joinpath("plans", f"{name}.toml").read_text()
    return tomllib.loads(text)


def resolve_model(model: str) -> ModelSpec:
    """A preset name, or a path to a TOML model file or a Hugging Face config.json."""
    if model in list_presets():
        return load_preset(model)
    if Path(model).suffix in (".toml", ".json") or Path(model).exists():
        return load_model_file(model)
    raise ValueError(f"model must be a preset ({', '.join(list_presets())}) or a .toml/.json file; got {model!r}")


def load_scenario(plan: str = DEFAULT_PLAN, *, model: str | None = None, gpu: str | None = None,
                  gpus: int | None = None, pp: int | None = None, ep: int | None = None, tp: int | None = None,
                  vpp: int | None = None, schedule: str | None = None, micro_batch_size: int | None = None,
                  tokens: str | float | None = None, seq_len: int | None = None, price: float | None = None,
                  calibration: str | None = None, fp8: bool | None = None, comm_sms: int | None = None,
                  batch: int | None = None) -> Scenario:
    """The plan's scenario with any of its parts replaced. Raises ValueError naming a bad field."""
    doc = _read_plan(plan)
    model_spec = resolve_model(model or doc["model"]["preset"])
    c, par, run, num = doc["cluster"], doc["parallel"], doc["run"], doc.get("numerics", {})
    gpu_spec = load_gpu(gpu or c["gpu"])
    num_gpus = gpus if gpus is not None else c["gpus"]
    if num_gpus < 1:
        raise ValueError(f"gpus must be a positive integer, got {num_gpus}")
    if gpu_spec.name.upper().startswith("H800"):
        cluster = deepseek_h800_cluster(num_gpus)
    else:
        cluster = default_cluster_for(gpu_spec, num_gpus, c.get("gpus_per_node", 8))
    dense = model_spec.moe is None
    ep_value = ep if ep is not None else (1 if dense else par["ep"])
    comm_default = par.get("comm_sms", 0) if ep_value > 1 else 0
    parallel = ParallelSpec(
        num_gpus=num_gpus,
        pp=pp if pp is not None else par["pp"],
        ep=ep_value,
        tp=tp if tp is not None else par.get("tp", 1),
        zero_stage=par.get("zero_stage", 1),
        micro_batch_size=micro_batch_size if micro_batch_size is not None else par.get("micro_batch_size", 1),
        schedule=schedule or par["schedule"],
        vpp=vpp if vpp is not None else par.get("vpp", 2 if (schedule or par["schedule"]) == "interleaved-1f1b" else 1),
        comm_sms=comm_sms if comm_sms is not None else comm_default,
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
    )
    profile = load_profile(calibration or DEFAULT_CALIBRATION)
    opts = OpOptions(fp8=num.get("fp8", True) if fp8 is None else fp8, recompute=num.get("recompute", True))
    if opts.fp8 and not gpu_spec.fp8_flops:
        opts = replace(opts, fp8=False)
    return Scenario(model_spec, parallel, cluster, run_plan, profile, opts)


def estimate(scenario: Scenario, progress=None) -> RunEstimate:
    return estimate_run(scenario.simulator(), scenario.plan, progress)
