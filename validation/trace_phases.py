"""The traced pair phase by phase: what one time ratio per class leaves unexplained, and the weight-gradient split.

DeepSeek's trace annotates every kernel with the phase of DualPipe's overlapped pair that launched it ("attn(F)",
"mlp(B)", "mlp(W)", ...; `calibrate_trace.measure` splits each class's busy share by phase). Our ops carry the same
names (`traced_pair.phase_ops`). Two things follow from setting the two side by side:

- **Weight-gradient GEMMs are a table of their own.** Under the blockwise recipe a weight gradient is a different
  kernel (both operands 1x128-scaled along the tokens, FP32 accumulation: `hwmodels/wgrad.py`), and the trace
  times it apart from the forward and input-gradient GEMMs: the FP8 GEMM time of the W phases against our W ops
  (at the base profile's weight-gradient curves) gives its own ratio (the derivation's "wgrad.fp8" time ratio,
  `calibrate_trace.derive_profile`), which scales the base's ``wgrad`` section (`scaled_wgrad`), as the dense and
  grouped ratios scale the forward curves. A base without that section keeps the weight gradients on the dense
  ratio.
- **Residual spread.** After the derivation, each class's time in each phase is measured against the derived
  profile's prediction for the ops of that phase. Per class, the spread of ln(measured / predicted) over its
  phases, weighted by the measured time, is how far one figure per class is from the kernels it stands for: the
  shapes differ from phase to phase, so it is the uncertainty that figure carries to other shapes
  (`residual_spread`). It also holds whatever our ops put in another phase than the trace's kernels run in (the
  MoE gate did, until `moe_ops` ran it before the dispatch). A class measured in one phase only (attention
  forward and backward) has no spread to show; `None`.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from gpuhours.hwmodels.calibration import CalibrationProfile
from gpuhours.hwmodels.cluster import ClusterSpec
from gpuhours.hwmodels.compute import ComputeModel
from gpuhours.validation.traced_pair import trace_class_of
from gpuhours.workloads.ops import Op

# The sensitivity quantities (simulator/sensitivity.py) each trace class's spread stands for.
QUANTITY_OF_CLASS = {"gemm_fp8": "gemm_fp8", "gemm_grouped": "grouped_gemm_fp8", "memory": "elementwise"}


def is_weight_phase(phase: str) -> bool:
    """Whether a phase annotation holds weight-gradient work ("attn(W)", "mlp(W)")."""
    return phase.endswith("(W)")


def class_phase_times(pairs: Iterable[tuple[str, Op]], class_of: Callable[[Op], str],
                      seconds: Callable[[Op], float]) -> dict[str, dict[str, float]]:
    """phase -> trace class -> seconds of our ops (`seconds(op)`), from (phase, op) pairs."""
    out: dict[str, dict[str, float]] = {}
    for phase, op in pairs:
        by_class = out.setdefault(phase, {})
        c = class_of(op)
        by_class[c] = by_class.get(c, 0.0) + seconds(op)
    return out


def weight_phase_time(class_phases: dict[str, dict[str, float]], cls: str) -> float:
    """Seconds of class `cls` in the weight-gradient phases."""
    return sum(d.get(cls, 0.0) for p, d in class_phases.items() if is_weight_phase(p))


def phase_rows(measured: dict[str, dict[str, float]], predicted: dict[str, dict[str, float]],
               cls: str) -> list[tuple[str, float, float]]:
    """(phase, measured s, predicted s) of class `cls` in every phase where either side has time, in phase order
    of the measured record."""
    phases = list(measured) + [p for p in predicted if p not in measured]
    rows = [(p, measured.get(p, {}).get(cls, 0.0), predicted.get(p, {}).get(cls, 0.0)) for p in phases]
    return [r for r in rows if r[1] > 0 or r[2] > 0]


def residual_spread(rows: list[tuple[str, float, float]]) -> float | None:
    """Standard deviation of ln(measured / predicted) over the phases of `rows`, weighted by measured time: the
    spread one figure per class leaves. None with fewer than two phases where both sides have time. A phase where
    only one side has time cannot give a ratio and is left out (`phase_rows` keeps it for the record)."""
    pts = [(m, math.log(m / q)) for _, m, q in rows if m > 0 and q > 0]
    if len(pts) < 2:
        return None
    w = sum(m for m, _ in pts)
    mean = sum(m * x for m, x in pts) / w
    return math.sqrt(sum(m * (x - mean) ** 2 for m, x in pts) / w)


def scaled_wgrad(wgrad: dict, ratio: float, base_name: str, note: str) -> dict:
    """The ``wgrad`` section (`hwmodels.wgrad.wgrad_dict` form) with its FP8 points divided by `ratio`."""
    out: dict = {}
    for kind in ("gemm", "grouped_gemm"):
        table = {}
        for dtype, pts in wgrad.get(kind, {}).items():
            if dtype != "fp8":
                table[dtype] = pts
                continue
            table[dtype] = [p | {"tflops": round(p["tflops"] / ratio, 3),
                                 "provenance": f"{base_name!r} weight-gradient point ({p['tflops']} TFLOP/s) / "
                                               f"{ratio:.4f}: {note}"} for p in pts]
        if table:
            out[kind] = table
    out["provenance"] = (f"{base_name!r} weight-gradient curves ({wgrad.get('provenance', 'no provenance')[:160]}"
                         f"...) scaled by the traced pair's W-phase FP8 GEMM time ratio {ratio:.4f}")
    return out


def uncertainty_section(measured: dict[str, dict[str, float]], predicted: dict[str, dict[str, float]],
                        trace_file: str) -> tuple[dict, dict]:
    """(the profile's ``uncertainty`` section, the per-class record) from the residual spread of each class whose
    quantity the sensitivity table moves (`QUANTITY_OF_CLASS`)."""
    section: dict = {}
    record: dict = {}
    for cls, quantity in QUANTITY_OF_CLASS.items():
        rows = phase_rows(measured, predicted, cls)
        spread = residual_spread(rows)
        record[cls] = {"spread": spread, "phases_ms": {p: [round(m * 1e3, 4), round(q * 1e3, 4)]
                                                       for p, m, q in rows}}
        if spread is not None and 1e-3 <= spread < 1:  # below: the trace shows none; above: no figure to carry
            section[quantity] = round(spread, 4)
    section["provenance"] = (
        f"trace {trace_file}: per class, the measured-time-weighted standard deviation of ln(measured / predicted) "
        f"over the pair's phases (validation/trace_phases.py), after the derivation; classes measured in one "
        f"phase only (attention), not calibrated (BF16 GEMMs) or with a spread under 0.1% have none")
    return section, record


def phase_residuals(profile: CalibrationProfile, pairs: list[tuple[str, Op]],
                    measured: dict[str, dict[str, float]], cluster: ClusterSpec, comm_sms: int,
                    trace_file: str) -> tuple[dict, dict]:
    """(the ``uncertainty`` section, its record): each class's time per phase under the derived `profile` (what the
    simulator prices: `ComputeModel.duration` at the pair's compute SM fraction) against the trace's `measured`
    phase -> class -> seconds (`uncertainty_section`)."""
    cm = ComputeModel(cluster.gpu, profile)
    sm_fraction = (cluster.gpu.sms - comm_sms) / cluster.gpu.sms
    predicted = class_phase_times(pairs, trace_class_of, lambda op: cm.duration(op, sm_fraction=sm_fraction))
    return uncertainty_section(measured, predicted, trace_file)
