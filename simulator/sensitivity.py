"""Sensitivity: how the run's GPU-hours move when each calibrated quantity moves (issue 15, item 6).

Every quantity below is one number, or one family of numbers, that a calibration profile or a fabric gives the
simulator. Each is moved by its relative uncertainty on both sides (slower, faster), one at a time, and the whole
run is estimated again (stage balancing included: a what-if re-balances as a user's run would). A profile's
``uncertainty`` section states a quantity's own (`trace-h800`: the spread of each class's measured-over-simulated
time over the traced pair's phases, validation/trace_phases.py); every other quantity moves by the default (10%),
and the table says which is which.

"Faster" rates are capped where they would pass a physical roof: an efficiency at 1 (element-wise bandwidth,
attention), a GEMM point at the dense peak of the SMs it was measured on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpuhours.hwmodels.calibration import CalibrationProfile

DEFAULT_UNCERTAINTY = 0.10

# name -> what it is (the quantity's own words in the table)
QUANTITIES = {
    "gemm_fp8": "dense GEMM rate, FP8",
    "gemm_bf16": "dense GEMM rate, BF16",
    "grouped_gemm_fp8": "expert (grouped) GEMM rate, FP8",
    "grouped_gemm_bf16": "expert (grouped) GEMM rate, BF16",
    "attention_forward": "attention forward efficiency",
    "attention_backward": "attention backward efficiency",
    "elementwise": "memory-bound kernels' HBM bandwidth (every class)",
    "nic": "scale-out NIC bandwidth per GPU",
    "nvlink": "NVLink bandwidth per GPU",
}


@dataclass(frozen=True)
class SensitivityRow:
    quantity: str
    what: str
    change: float             # relative move of the rate (0.10: 10% slower / 10% faster)
    slower_gpu_hours: float   # with the rate divided by (1 + change)
    faster_gpu_hours: float   # with the rate multiplied by (1 + change), capped at its roof
    base_gpu_hours: float
    stated: bool = False      # change is the profile's own uncertainty (False: the default)

    @property
    def slower(self) -> float:
        return self.slower_gpu_hours / self.base_gpu_hours - 1

    @property
    def faster(self) -> float:
        return self.faster_gpu_hours / self.base_gpu_hours - 1

    @property
    def span(self) -> float:
        return abs(self.slower - self.faster)

    def to_dict(self) -> dict:
        return {"quantity": self.quantity, "what": self.what, "change": self.change,
                "slower_gpu_hours": self.slower_gpu_hours, "faster_gpu_hours": self.faster_gpu_hours,
                "slower": self.slower, "faster": self.faster, "stated": self.stated}


def perturbed(scenario, quantity: str, factor: float):
    """The scenario with `quantity`'s rate multiplied by `factor` (capped at its roof). ValueError names it."""
    if quantity not in QUANTITIES:
        raise ValueError(f"sensitivity quantity must be one of {', '.join(QUANTITIES)}; got {quantity!r}")
    if not factor > 0:
        raise ValueError(f"sensitivity factor must be > 0, got {factor!r}")
    if quantity in ("nic", "nvlink"):
        return _scaled_links(scenario, quantity, factor)
    return replace(scenario, profile=_scaled_profile(scenario.profile, scenario.cluster.gpu, quantity, factor))


def _scaled_profile(p: CalibrationProfile, gpu, quantity: str, factor: float) -> CalibrationProfile:
    if quantity.startswith(("gemm_", "grouped_gemm_")):
        kind, dtype = quantity.rsplit("_", 1)
        table = dict(getattr(p, kind))
        if dtype not in table:
            return p
        roof = _measured_peak(p, gpu, dtype)
        table[dtype] = tuple(replace(pt, tflops=min(pt.tflops * factor, roof)) for pt in table[dtype])
        wgrad = getattr(p, "wgrad", None)  # the same kind's weight-gradient points (hwmodels/wgrad.py) move too
        if wgrad and wgrad.get(kind, {}).get(dtype):
            w_table = {**wgrad[kind], dtype: tuple(replace(pt, tflops=min(pt.tflops * factor, roof))
                                                   for pt in wgrad[kind][dtype])}
            return replace(p, **{kind: table}, wgrad={**wgrad, kind: w_table})
        return replace(p, **{kind: table})
    if quantity == "attention_forward":
        return replace(p, attention_forward_efficiency=min(1.0, p.attention_forward_efficiency * factor))
    if quantity == "attention_backward":
        return replace(p, attention_backward_efficiency=min(1.0, p.attention_backward_efficiency * factor))
    classes = {k: min(1.0, v * factor) for k, v in (p.elementwise_classes or {}).items()}
    return replace(p, elementwise_bandwidth_efficiency=min(1.0, p.elementwise_bandwidth_efficiency * factor),
                   elementwise_classes=classes or p.elementwise_classes)


def _measured_peak(p: CalibrationProfile, gpu, dtype: str) -> float:
    """TFLOP/s a GEMM point may reach: the dense peak of the SMs it was measured on."""
    recorded = p.reference_peak(dtype)
    peak = recorded if recorded is not None else gpu.peak_flops(dtype) * p.sm_count / gpu.sms
    return peak / 1e12


def _scaled_links(scenario, quantity: str, factor: float):
    field = {"nic": "ib_bw", "nvlink": "nvlink_bw"}[quantity]
    cluster = replace(scenario.cluster, **{field: getattr(scenario.cluster, field) * factor})
    fabric = scenario.fabric
    if fabric is not None:
        fabric_field = {"nic": "nic_bw", "nvlink": "nvlink_bw"}[quantity]
        fabric = fabric.with_(**{fabric_field: getattr(fabric, fabric_field) * factor})
    return replace(scenario, cluster=cluster, fabric=fabric)


def uncertainty_of(profile: CalibrationProfile, quantity: str, default: float = DEFAULT_UNCERTAINTY
                   ) -> tuple[float, bool]:
    """(relative uncertainty, whether the profile states it) of one quantity."""
    stated = (profile.uncertainty or {}).get(quantity)
    return (stated, True) if stated is not None else (default, False)


def sensitivity(scenario, change: float = DEFAULT_UNCERTAINTY, base_gpu_hours: float | None = None,
                quantities=None, progress=None) -> list[SensitivityRow]:
    """Every quantity moved both ways by its uncertainty (the profile's, else `change`), one at a time; rows by
    span, largest first."""
    from gpuhours.simulator.scenario import estimate

    if not 0 < change < 1:
        raise ValueError(f"sensitivity change must lie in (0, 1), got {change!r}")
    base = base_gpu_hours if base_gpu_hours is not None else estimate(scenario).gpu_hours
    names = list(quantities or QUANTITIES)
    rows = []
    for i, name in enumerate(names):
        u, stated = uncertainty_of(scenario.profile, name, change)
        slower = estimate(perturbed(scenario, name, 1 / (1 + u))).gpu_hours
        faster = estimate(perturbed(scenario, name, 1 + u)).gpu_hours
        rows.append(SensitivityRow(name, QUANTITIES[name], u, slower, faster, base, stated))
        if progress:
            progress(i + 1, len(names))
    return sorted(rows, key=lambda r: -r.span)


def sensitivity_lines(rows: list[SensitivityRow]) -> list[str]:
    if not rows:
        return []
    default = next((r.change for r in rows if not r.stated), DEFAULT_UNCERTAINTY)
    out = [f"sensitivity       GPU-hours when each calibrated rate is slower / faster by its uncertainty, one at a "
           f"time: the profile's own where it states one (*), else {default:.0%}",
           f"  {'quantity':<50} {'by':>7} {'slower':>8} {'faster':>8}"]
    out += [f"  {r.what:<50} {r.change:>6.1%}{'*' if r.stated else ' '} {r.slower:>+8.1%} {r.faster:>+8.1%}"
            for r in rows]
    return out
