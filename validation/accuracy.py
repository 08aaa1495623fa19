"""The accuracy suite: every published, measured run of validation/cases/ simulated as published, its prediction
set beside the measurement.

Error is `predicted / measured - 1` on a time: the step time (a TFLOP/s or tokens/s figure is first turned into
the step time it implies, with the source's own FLOP convention), the run's GPU-hours, or the traced pair's span.
Positive: the simulator is slower (more expensive) than what was measured.

A row is a case run under one calibration profile. A profile calibrated on the case's own model (the profile's
`provenance.calibrated_on.model`) makes that row a *calibration case*: it is shown, apart, and left out of every
mean. Gaps (what the simulator cannot express about the run) are listed per row; the run is still simulated with
the nearest layout it can express, unless `Case.inexpressible` says it cannot be simulated at all.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gpuhours.validation.cases import Case, load_cases


@dataclass(frozen=True)
class Row:
    case: str
    group: str
    profile: str
    metric: str
    measured: float            # as printed
    predicted: float | None    # in the printed unit
    measured_time: float       # step s, run GPU-hours, or traced span ms
    predicted_time: float | None
    error: float | None        # predicted_time / measured_time - 1
    calibration_case: bool
    gaps: tuple[str, ...]
    not_simulated: str | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    fits_memory: bool | None = None

    @property
    def key(self) -> str:
        return f"{self.case}@{self.profile}"

    @property
    def counts(self) -> bool:
        """Whether the row enters the means: a prediction (not a calibration case) that was simulated."""
        return self.error is not None and not self.calibration_case

    def to_dict(self) -> dict:
        return asdict(self) | {"key": self.key}


def select(cases: list[Case], case_glob: str | None = None, group: str | None = None) -> list[Case]:
    """Cases whose name matches the glob and whose group is `group` (ValueError when none is left)."""
    groups = sorted({c.group for c in cases})
    if group is not None and group not in groups:
        raise ValueError(f"group must be one of {', '.join(groups)}; got {group!r}")
    out = [c for c in cases if (case_glob is None or fnmatch.fnmatch(c.name, case_glob))
           and (group is None or c.group == group)]
    if not out:
        raise ValueError(f"case: no case matches {case_glob!r}" + (f" in group {group!r}" if group else ""))
    return out


def run_case(case: Case, profile_name: str) -> Row:
    """Simulate `case` under the calibration profile `profile_name`."""
    from gpuhours.hwmodels.calibration import load_profile

    profile = load_profile(profile_name)
    calibrated_on = profile.calibrated_on or {}
    calibration_case = calibrated_on.get("model") == case.model.name
    gaps = tuple(case.gaps())
    base = dict(case=case.name, group=case.group, profile=profile_name, metric=case.measured.metric,
                measured=case.measured.value, measured_time=case.measured_time(),
                calibration_case=calibration_case, gaps=gaps)
    why = case.inexpressible()
    if why:
        return Row(**base, predicted=None, predicted_time=None, error=None, not_simulated=why)
    if case.measured.metric == "traced_pair_ms":
        from gpuhours.validation.calibrate_trace import PROFILE_NAME
        from gpuhours.validation.compare import compare_traced_pair

        stored = load_profile(PROFILE_NAME).trace["measured"]
        time = compare_traced_pair(profile_name, measured=stored)["simulated_span_ms"]
        return Row(**base, predicted=time, predicted_time=time, error=time / base["measured_time"] - 1)
    scenario = _scenario(case, profile_name)
    from gpuhours.simulator.scenario import estimate
    from gpuhours.workloads.memory import memory_breakdown

    result = estimate(scenario)
    warnings = tuple(_warnings(scenario))
    fits = memory_breakdown(scenario, result.steady.step).fits
    time = result.gpu_hours if case.measured.metric == "gpu_hours" else result.steady.step.step_time
    return Row(**base, predicted=case.in_printed_units(time), predicted_time=time,
               error=time / base["measured_time"] - 1, warnings=warnings, notes=tuple(result.notes),
               fits_memory=fits)


def _scenario(case: Case, profile_name: str):
    """The case as a gpuhours scenario: the nearest layout the simulator expresses (see Case.gaps). FSDP runs
    (`fsdp = true`) are ZeRO-3."""
    from gpuhours.simulator.scenario import load_scenario

    lay = case.layout
    if case.measured.metric == "gpu_hours":
        return load_scenario(lay.get("plan", "deepseek-v3"), calibration=profile_name)
    tokens = lay["batch"] * lay["seq_len"]  # one step at the published batch
    scenario = load_scenario(
        "deepseek-v3", model=case.model, gpu=lay["gpu"], gpus=lay["gpus"], pp=lay["pp"], tp=lay["tp"],
        ep=lay.get("ep", 1), cp=lay.get("cp", 1), vpp=lay.get("vpp", 1), schedule=lay.get("schedule", "1f1b"),
        micro_batch_size=lay.get("micro_batch_size", 1), tokens=tokens, seq_len=lay["seq_len"],
        calibration=profile_name, fp8=lay.get("precision", "bf16") == "fp8", batch=lay["batch"],
        cluster=lay.get("cluster"), nic_gbps=lay.get("nic_gbps"), attention_kernel=lay.get("attention_kernel"),
        tp_comm_overlap=lay.get("tp_comm_overlap", False), etp=lay.get("etp", 1), cp_comm=lay.get("cp_comm"))
    parallel = replace(scenario.parallel, sequence_parallel=lay.get("sequence_parallel", False),
                       zero_stage=3 if lay.get("fsdp") else lay.get("zero_stage", 0),
                       reshard_after_forward=lay.get("reshard_after_forward", True),
                       overlap_grad_reduce=lay.get("overlap_grad_reduce", False),
                       overlap_param_gather=lay.get("overlap_param_gather", False),
                       grad_reduce_dtype=lay.get("grad_reduce_dtype"),
                       tp_comm_overlap_impl=lay.get("tp_comm_overlap_impl", "asynctp"))
    opts = replace(scenario.opts, recompute=lay.get("recompute", "none"),
                   fp8_recipe=lay.get("fp8_recipe", "blockwise"), host_dispatch=lay.get("host_dispatch", "eager"),
                   elementwise_kernels=lay.get("elementwise_kernels", "fused"))
    return replace(scenario, parallel=parallel, opts=opts)


def _warnings(scenario) -> list[str]:
    try:
        from gpuhours.simulator.scenario import scenario_warnings
    except ImportError:
        return []
    return list(scenario_warnings(scenario))


def run_suite(cases: list[Case], progress=None, profile: str | None = None) -> list[Row]:
    """Every case under each of its calibration profiles (the tool's default profile when it names none), or,
    with `profile`, every case under that one profile alone (e.g. the A100 cases under "default-a100": rows
    keyed `case@profile`, so the golden rows are not among them)."""
    from gpuhours.simulator.scenario import DEFAULT_CALIBRATION

    if profile is not None:
        from gpuhours.hwmodels.calibration import load_profile

        load_profile(profile)  # ValueError naming the bundled profiles before any case runs
    jobs = [(c, p) for c in cases for p in ((profile,) if profile else (c.calibrations or (DEFAULT_CALIBRATION,)))]
    rows = []
    for i, (case, profile) in enumerate(jobs):
        if progress:
            progress(i, len(jobs), f"{case.name} ({profile})")
        rows.append(run_case(case, profile))
    if progress:
        progress(len(jobs), len(jobs), "done")
    return rows


def summarise(rows: list[Row]) -> dict:
    """Mean absolute error overall and per group (predictions only), and what could not be expressed."""
    def mae(rs):
        rs = [r for r in rs if r.counts]
        return {"mae": sum(abs(r.error) for r in rs) / len(rs) if rs else None,
                "mean_error": sum(r.error for r in rs) / len(rs) if rs else None,
                "cases": len(rs),
                "within_10pct": sum(abs(r.error) <= 0.10 for r in rs)}

    groups = sorted({r.group for r in rows})
    predictions = [r for r in rows if not r.calibration_case]
    per_group = {g: mae([r for r in rows if r.group == g]) for g in groups}
    group_maes = [g["mae"] for g in per_group.values() if g["mae"] is not None]
    return {
        "overall": mae(rows),
        "fully_expressed": mae([r for r in rows if not r.gaps]),
        "groups": per_group,
        # every source weighs the same, however many rows its table has
        "mean_of_groups": sum(group_maes) / len(group_maes) if group_maes else None,
        "rows": len(rows),
        "calibration_cases": [r.key for r in rows if r.calibration_case],
        "with_gaps": sum(bool(r.gaps) for r in predictions),
        "not_simulated": sum(r.not_simulated is not None for r in predictions),
    }


def suite_dict(rows: list[Row]) -> dict:
    return {"summary": summarise(rows), "rows": [r.to_dict() for r in rows]}


# ------------------------------------------------------------------------------------------------- golden figures
GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "accuracy.json"


def golden_figures(rows: list[Row]) -> dict:
    """The figures CI pins: every row's predicted time and the default estimate's GPU-hours."""
    from gpuhours.simulator.scenario import estimate, load_scenario

    return {"default_estimate_gpu_hours": estimate(load_scenario()).gpu_hours,
            "predicted_time": {r.key: r.predicted_time for r in rows}}


if __name__ == "__main__":  # python -m gpuhours.validation.accuracy --write-golden: a deliberate act
    import sys

    if sys.argv[1:] != ["--write-golden"]:
        sys.exit("usage: python -m gpuhours.validation.accuracy --write-golden")
    figures = golden_figures(run_suite(load_cases()))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
