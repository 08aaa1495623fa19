"""Run plans as files: the built-in plans (workloads/plans/*.toml) and a user's plan TOML, read and checked
against the types of the keys the scenario reads (`PLAN_TYPES`), and the published figures of a plan's
[reference] table. `simulator/scenario.py` builds a Scenario from what these return (and re-exports them)."""

from __future__ import annotations

import copy
import math
import tomllib
from importlib import resources
from pathlib import Path

DEFAULT_PLAN = "deepseek-v3"


def list_plans() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("gpuhours.workloads").joinpath("plans").iterdir()
                  if p.name.endswith(".toml"))


def _read_plan(name: str | Path) -> dict:
    """A built-in plan by name, or a plan TOML file by path (a built-in plan is read and checked once per process,
    `_builtin_plan`; each call gets its own copy)."""
    if isinstance(name, str) and name in _BUILTIN_PLANS:
        return copy.deepcopy(_BUILTIN_PLANS[name])
    if str(name) in list_plans():
        _BUILTIN_PLANS[str(name)] = _builtin_plan(str(name))
        return copy.deepcopy(_BUILTIN_PLANS[str(name)])
    return _plan_doc(name)


_BUILTIN_PLANS: dict[str, dict] = {}  # built-in plans read so far (package data: fixed for the process)


def _builtin_plan(name: str) -> dict:
    return _plan_doc(name, resources.files("gpuhours.workloads").joinpath("plans", f"{name}.toml").read_text())


def _plan_doc(name: str | Path, text: str | None = None) -> dict:
    if text is None and str(name).endswith(".toml") and Path(name).is_file():
        text = Path(name).read_text()
    elif text is None:
        raise ValueError(f"plan must be one of {', '.join(list_plans())} or a .toml file; got {str(name)!r}")
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ValueError(f"plan {str(name)!r}: not valid TOML ({exc})") from None
    _check_plan_types(doc, str(name))
    return doc


_NUMBER, _COUNT = (int, float), (int, float, str)  # a count may be written "14.8T"
# The types of the plan keys the scenario reads (absent keys take their defaults; other tables are free-form).
PLAN_TYPES = {
    "model": {"preset": str},
    "cluster": {"gpu": str, "gpus": int, "gpus_per_node": int},
    "parallel": {"pp": int, "ep": int, "tp": int, "cp": int, "vpp": int, "schedule": str, "micro_batch_size": int,
                 "comm_sms": int, "zero_stage": int, "dp_bucket_params": int, "reshard_after_forward": bool,
                 "overlap_grad_reduce": bool, "overlap_param_gather": bool, "tp_comm_overlap": bool,
                 "sequence_parallel": bool, "order": str, "etp": int, "moe_dispatch": str, "grad_reduce_dtype": str,
                 "cp_comm": str, "pipeline_layout": str, "tp_comm_overlap_impl": str},
    "run": {"tokens": _COUNT, "seq_len": int, "batch_start": int, "batch_end": int, "ramp_tokens": _COUNT,
            "price_per_gpu_hour": _NUMBER, "ramp_micro_batch_size": list},
    "numerics": {"fp8": bool, "recompute": (str, bool, list), "attention_kernel": str, "capacity_factor": _NUMBER,
                 "fp8_recipe": str, "host_dispatch": str,
                 "elementwise_kernels": str, "fp8_gemm_kernels": str},
    "network": {"model": str, "cluster": str, "link_sharing": str},
    "routing": {"model": str, "max_nodes_per_token": int},
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", _NUMBER: "a number",
               _COUNT: "a number or a count such as \"14.8T\"",
               (str, bool, list): "a policy (none, full, full:N, selective:<modules>, ...), a list of modules or "
                                  "true/false",
               list: "a list of [tokens, micro-batch size] pairs"}


def _check_plan_types(doc: dict, name: str) -> None:
    """ValueError naming the first plan key whose value has the wrong type (a table where a number belongs...)."""
    for table, keys in PLAN_TYPES.items():
        t = doc.get(table)
        if t is None:
            continue
        if not isinstance(t, dict):
            raise ValueError(f"plan {name!r}: [{table}] must be a table, got {t!r}")
        for key, typ in keys.items():
            if key not in t:
                continue
            v = t[key]
            ok = isinstance(v, typ) and not (isinstance(v, bool) and typ in (int, _NUMBER, _COUNT))
            if not ok:
                raise ValueError(f"plan {name!r}: [{table}] {key} must be {_TYPE_NAMES[typ]}, got {v!r}")


def is_phased(plan: str | Path) -> bool:
    """Whether a plan lists [[phase]] tables (estimate it with simulator.phases)."""
    return "phase" in _read_plan(plan)


def plan_reference(plan: str = DEFAULT_PLAN) -> dict:
    """The published figures a plan records for comparison (empty when it has none)."""
    return reference_table(_read_plan(plan))


def reference_table(doc: dict) -> dict:
    """A plan's [reference] table, checked: published figures are finite numbers >= 0 (GPU-hours, dollars),
    `source` and other notes are text. Raises ValueError naming the key."""
    table = doc.get("reference", {})
    if not isinstance(table, dict):
        raise ValueError(f"reference: expected a table of published figures, got {type(table).__name__}")
    for key, value in table.items():
        text = isinstance(value, str)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and value >= 0
        if not (text if key in ("source", "note", "what") else number):
            allowed = "text" if key in ("source", "note", "what") else "a finite number >= 0"
            raise ValueError(f"reference.{key} = {value!r}: expected {allowed}")
    return dict(table)
