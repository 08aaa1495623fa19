"""Calibration-profile sections written by `gpuhours calibrate bench` beyond the kernel-efficiency tables:

``fp8_tensorwise``: measured per-tensor FP8 GEMM speed-ups (validation/bench_fp8.py)::

    "fp8_tensorwise": {"points": [{"m", "n", "k", "speedup", "bf16_s"?, "fp8_s"?, "provenance"?}, ...],
                       "provenance": str}

  ``speedup`` is the BF16 GEMM's time over the per-tensor FP8 GEMM's (one FP32 scale per operand, cuBLASLt)
  at (m, n, k); when ``bf16_s`` and ``fp8_s`` (median seconds) are given, ``speedup`` must be their ratio
  (within 0.1 %). `hwmodels/fp8_tensorwise.py` prices per-tensor FP8 GEMMs from these points instead of its
  bundled table when the modelled GPU is the profile's GPU.

``launch``: measured launch overheads (validation/bench_launch.py)::

    "launch": {"kernel_gap_us"?: x, "eager_dispatch_us"?: y, "launch_interval_us"?: z,
               "kernels_per_op"?: {"<kind>": n, ...}, "provenance": str}

  ``kernel_gap_us``: GPU idle time between back-to-back kernels of one stream with the host ahead;
  ``eager_dispatch_us``: host time per kernel launched from PyTorch eager; ``launch_interval_us``: start-to-start
  interval of back-to-back trivial kernels (informational); ``kernels_per_op``: kernels a traced stack launched
  per op of ours, by data/launch.toml's kinds (validation/trace_launch.py). At least one of ``kernel_gap_us``,
  ``eager_dispatch_us`` and ``kernels_per_op``; each is used by `hwmodels/launch.py` in place of
  data/launch.toml's figure when present.

``comm.nccl_intra_node`` (validation/bench_nccl.py; ``comm`` stays free-form otherwise)::

    {"world_size": n, "backend": "nccl", "dtype": str,
     "all_reduce": [{"bytes", "time_us", "algbw_gbps", "busbw_gbps"}, ...], "all_gather": [...],
     "provenance": str}
    or {"not_measured": "reason"}

``uncertainty``: relative uncertainty of calibrated quantities (validation/trace_phases.py writes it from a
trace; `simulator/sensitivity.py` moves each quantity by it, the default where absent)::

    "uncertainty": {"<quantity>": relative (> 0, < 1), ..., "provenance": str}

  quantities: UNCERTAINTY_QUANTITIES (the sensitivity table's names).

Every check raises ValueError naming the offending key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpuhours.hwmodels.calibration_schema import _only

RATIO_TOLERANCE = 1e-3  # speedup vs bf16_s / fp8_s: JSON round-off only
# The calibrated quantities `simulator.sensitivity` moves (its QUANTITIES describe them)
UNCERTAINTY_QUANTITIES = ("gemm_fp8", "gemm_bf16", "grouped_gemm_fp8", "grouped_gemm_bf16", "attention_forward",
                          "attention_backward", "elementwise", "nic", "nvlink")
COLLECTIVES = ("all_reduce", "all_gather")


@dataclass(frozen=True)
class TensorwisePoint:
    """A measured BF16 / per-tensor FP8 GEMM pair at one shape (C (m, n) = A (m, k) W (n, k)^T)."""

    m: int
    n: int
    k: int
    speedup: float        # bf16_s / fp8_s
    bf16_s: float | None = None
    fp8_s: float | None = None
    provenance: str = ""


@dataclass(frozen=True)
class TensorwiseSection:
    points: tuple[TensorwisePoint, ...]
    provenance: str


@dataclass(frozen=True)
class LaunchSection:
    kernel_gap_us: float | None
    eager_dispatch_us: float | None
    launch_interval_us: float | None
    provenance: str
    kernels_per_op: tuple[tuple[str, float], ...] = ()   # (kind, kernels per op), sorted by kind


def _num(d: dict, key: str, where: str, *, positive: bool = True) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (v <= 0 if positive else v < 0):
        raise ValueError(f"calibration: '{where}.{key}' must be a number {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


def _int(d: dict, key: str, where: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"calibration: '{where}.{key}' must be a whole number >= 1, got {v!r}")
    return v


def _str(d: dict, key: str, where: str, required: bool) -> str:
    if key not in d and not required:
        return ""
    v = d.get(key)
    if not isinstance(v, str) or (required and not v):
        raise ValueError(f"calibration: '{where}.{key}' must be a{' non-empty' if required else ''} string, got {v!r}")
    return v


def parse_fp8_tensorwise(d) -> TensorwiseSection | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ValueError("calibration: 'fp8_tensorwise' must be an object {points, provenance}")
    _only(d, {"points", "provenance"}, "fp8_tensorwise")
    raw = d.get("points")
    if not isinstance(raw, list) or not raw:
        raise ValueError("calibration: 'fp8_tensorwise.points' must be a non-empty list of points")
    points = []
    for i, p in enumerate(raw):
        where = f"fp8_tensorwise.points[{i}]"
        if not isinstance(p, dict):
            raise ValueError(f"calibration: '{where}' must be an object")
        _only(p, {"m", "n", "k", "speedup", "bf16_s", "fp8_s", "provenance"}, where)
        speedup = _num(p, "speedup", where)
        times = [_num(p, key, where) if key in p else None for key in ("bf16_s", "fp8_s")]
        if (times[0] is None) != (times[1] is None):
            raise ValueError(f"calibration: '{where}' gives one of bf16_s / fp8_s without the other")
        if times[0] is not None and abs(times[0] / times[1] / speedup - 1) > RATIO_TOLERANCE:
            raise ValueError(f"calibration: '{where}.speedup' = {speedup!r} is not bf16_s / fp8_s = "
                             f"{times[0] / times[1]!r}")
        points.append(TensorwisePoint(_int(p, "m", where), _int(p, "n", where), _int(p, "k", where), speedup,
                                      times[0], times[1], _str(p, "provenance", where, False)))
    return TensorwiseSection(tuple(points), _str(d, "provenance", "fp8_tensorwise", True))


def fp8_tensorwise_dict(s: TensorwiseSection) -> dict:
    pts = []
    for p in s.points:
        q = {"m": p.m, "n": p.n, "k": p.k, "speedup": p.speedup}
        if p.bf16_s is not None:
            q.update(bf16_s=p.bf16_s, fp8_s=p.fp8_s)
        if p.provenance:
            q["provenance"] = p.provenance
        pts.append(q)
    return {"points": pts, "provenance": s.provenance}


LAUNCH_FIGURES = ("kernel_gap_us", "eager_dispatch_us", "launch_interval_us")


def parse_launch(d) -> LaunchSection | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ValueError("calibration: 'launch' must be an object")
    _only(d, {*LAUNCH_FIGURES, "kernels_per_op", "provenance"}, "launch")
    if not {"kernel_gap_us", "eager_dispatch_us", "kernels_per_op"} & set(d):
        raise ValueError("calibration: 'launch' needs 'kernel_gap_us', 'eager_dispatch_us' or 'kernels_per_op'")
    vals = {}
    for key in LAUNCH_FIGURES:
        if key in d:
            vals[key] = _num(d, key, "launch", positive=False)
            if vals[key] >= 1e6:
                raise ValueError(f"calibration: 'launch.{key}' must be below 1e6 us (one second), got {vals[key]!r}")
    return LaunchSection(vals.get("kernel_gap_us"), vals.get("eager_dispatch_us"), vals.get("launch_interval_us"),
                         _str(d, "provenance", "launch", True), _kernels_per_op(d.get("kernels_per_op")))


def _kernels_per_op(d) -> tuple[tuple[str, float], ...]:
    """``launch.kernels_per_op``: kinds of data/launch.toml's [kernels], each a number of kernels > 0."""
    if d is None:
        return ()
    from gpuhours.hwmodels.launch import LaunchModel  # reads data/launch.toml: the allowed kinds
    kinds = LaunchModel.load().kinds()
    if not isinstance(d, dict) or not d:
        raise ValueError(f"calibration: 'launch.kernels_per_op' must be an object of kinds ({', '.join(kinds)}) "
                         f"to kernels per op")
    for kind, n in d.items():
        if kind not in kinds:
            raise ValueError(f"calibration: 'launch.kernels_per_op' has unknown kind {kind!r}; allowed: "
                             f"{', '.join(kinds)}")
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 < n < 1e4:
            raise ValueError(f"calibration: 'launch.kernels_per_op.{kind}' must be a number in (0, 1e4), got {n!r}")
    return tuple(sorted((k, float(n)) for k, n in d.items()))


def launch_dict(s: LaunchSection) -> dict:
    out = {k: getattr(s, k) for k in LAUNCH_FIGURES if getattr(s, k) is not None}
    if s.kernels_per_op:
        out["kernels_per_op"] = dict(s.kernels_per_op)
    out["provenance"] = s.provenance
    return out


def check_nccl_intra_node(d) -> None:
    """Validate ``comm.nccl_intra_node`` when present (the rest of ``comm`` is free-form)."""
    if d is None:
        return
    where = "comm.nccl_intra_node"
    if not isinstance(d, dict):
        raise ValueError(f"calibration: '{where}' must be an object")
    if "not_measured" in d:
        _only(d, {"not_measured"}, where)
        _str(d, "not_measured", where, True)
        return
    _only(d, {"world_size", "backend", "dtype", "provenance", *COLLECTIVES}, where)
    if _int(d, "world_size", where) < 2:
        raise ValueError(f"calibration: '{where}.world_size' must be >= 2 (else give 'not_measured')")
    for key in ("backend", "dtype", "provenance"):
        _str(d, key, where, True)
    for coll in COLLECTIVES:
        rows = d.get(coll)
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"calibration: '{where}.{coll}' must be a non-empty list of measurements")
        for i, r in enumerate(rows):
            w = f"{where}.{coll}[{i}]"
            if not isinstance(r, dict):
                raise ValueError(f"calibration: '{w}' must be an object")
            _only(r, {"bytes", "time_us", "algbw_gbps", "busbw_gbps"}, w)
            _int(r, "bytes", w)
            for key in ("time_us", "algbw_gbps", "busbw_gbps"):
                _num(r, key, w)


def parse_uncertainty(d) -> dict | None:
    """The validated ``uncertainty`` section as {quantity: relative uncertainty, "provenance": str}, or None."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ValueError("calibration: 'uncertainty' must be an object of quantity: relative uncertainty")
    _only(d, set(UNCERTAINTY_QUANTITIES) | {"provenance"}, "uncertainty")
    out: dict = {"provenance": _str(d, "provenance", "uncertainty", required=True)}
    for q in UNCERTAINTY_QUANTITIES:
        if q in d:
            v = d[q]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"calibration: 'uncertainty.{q}' must be a relative uncertainty in (0, 1), got {v!r}")
            out[q] = float(v)
    return out
