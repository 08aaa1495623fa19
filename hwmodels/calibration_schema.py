"""The calibration profile's schema: its constants, GEMM points and provenance records, and the checks every
profile file passes when it is read (`hwmodels/calibration.py` holds the profile and its lookups)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

SCHEMA = "gpuhours.calibration/1"
SOURCES = ("datasheet", "microbenchmark", "trace")
GEMM_KINDS = ("gemm", "grouped_gemm")
DTYPES = ("fp8", "bf16")
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_PROFILE = "default-h800"
ELEMENTWISE_CLASSES = ("norm", "activation", "cast", "rope", "loss", "router", "optimizer", "embedding")

TILE = 128        # output tile edge (rows and columns) of the wave-quantisation penalty
NEIGHBOURS = 3    # points averaged by the log-space interpolation

_TOP_KEYS = {"schema", "name", "source", "provenance", "gemm", "grouped_gemm", "attention", "elementwise",
             "comm", "trace", "notes", "wgrad", "fp8_tensorwise", "launch", "uncertainty"}
_PROV_KEYS = {"device", "sm_count", "date", "software", "method", "references", "peak_tflops", "calibrated_on",
              "basis"}
_CALIBRATED_ON_KEYS = {"model", "gpu", "precision", "fp8_recipe", "attention", "moe"}
# Per GPU key (hwmodels/data/gpus.toml): the profile resting on datasheet peaks and published kernel figures
# only, with nothing measured on a model; the figure a calibrated profile's estimate is set beside.
HARDWARE_ONLY_PROFILES = {"h800": "default-h800"}


@dataclass(frozen=True)
class GemmPoint:
    """One measured GEMM: ``groups`` GEMMs of (m, n, k) reaching ``tflops`` (TFLOP/s) together."""

    m: int
    n: int
    k: int
    tflops: float
    groups: int = 1
    provenance: str = ""


@dataclass(frozen=True)
class Provenance:
    device: str
    sm_count: int
    date: str
    software: dict
    method: str
    references: tuple[str, ...]
    peak_tflops: dict | None = None  # dense peak of the sm_count SMs the points ran on, TFLOP/s by dtype
    calibrated_on: dict | None = None  # what the figures were fitted to (module docstring); None: not recorded
    basis: str = ""                    # one line: what the profile's figures rest on

    @property
    def calibrated_precisions(self) -> tuple[str, ...] | None:
        """The dtypes the profile was calibrated for, or None when it does not say."""
        prec = (self.calibrated_on or {}).get("precision")
        if prec is None:
            return None
        return (prec,) if isinstance(prec, str) else tuple(prec)




# --------------------------------------------------------------------------------------------- validation
def _req(d: dict, key: str, typ: type, prefix: str):
    if key not in d:
        raise ValueError(f"calibration: missing key {prefix + key!r}")
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ValueError(f"calibration: {prefix + key!r} must be of type {typ.__name__}, got {type(v).__name__}")
    return v


def _only(d: dict, allowed: set, prefix: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise ValueError(f"calibration: unknown key {prefix + '.' + extra[0]!r}; allowed: {sorted(allowed)}")


def _opt_str(d: dict, key: str, prefix: str) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise ValueError(f"calibration: {prefix + key!r} must be a string")
    return v


def _number(d: dict, key: str, prefix: str) -> float:
    if key not in d:
        raise ValueError(f"calibration: missing key {prefix + key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"calibration: {prefix + key!r} must be a number, got {v!r}")
    return float(v)


def _fraction(d: dict, key: str, prefix: str) -> float:
    v = _number(d, key, prefix)
    if not 0 < v <= 1:
        raise ValueError(f"calibration: {prefix + key!r} must be in (0, 1], got {v!r}")
    return v


def _positive_int(d: dict, key: str, prefix: str) -> int:
    v = _req(d, key, int, prefix)
    if v < 1:
        raise ValueError(f"calibration: {prefix + key!r} must be >= 1, got {v!r}")
    return v


def _provenance(p: dict) -> Provenance:
    _only(p, _PROV_KEYS, "provenance")
    refs = _req(p, "references", list, "provenance.")
    if not all(isinstance(r, str) for r in refs):
        raise ValueError("calibration: 'provenance.references' must be a list of strings")
    peak = p.get("peak_tflops")
    if peak is not None:
        if not isinstance(peak, dict):
            raise ValueError("calibration: 'provenance.peak_tflops' must be an object {dtype: TFLOP/s}")
        for dt in peak:
            if dt not in DTYPES:
                raise ValueError(f"calibration: 'provenance.peak_tflops.{dt}' is not a dtype; allowed: {DTYPES}")
            if not _number(peak, dt, "provenance.peak_tflops.") > 0:
                raise ValueError(f"calibration: 'provenance.peak_tflops.{dt}' must be > 0")
    basis = _opt_str(p, "basis", "provenance.")
    return Provenance(
        device=_req(p, "device", str, "provenance."),
        sm_count=_positive_int(p, "sm_count", "provenance."),
        date=_req(p, "date", str, "provenance."),
        software=_req(p, "software", dict, "provenance."),
        method=_req(p, "method", str, "provenance."),
        references=tuple(refs),
        peak_tflops=None if peak is None else {k: float(v) for k, v in peak.items()},
        calibrated_on=_calibrated_on(p.get("calibrated_on")),
        basis=basis,
    )


def _calibrated_on(c) -> dict | None:
    if c is None:
        return None
    where = "provenance.calibrated_on"
    if not isinstance(c, dict):
        raise ValueError(f"calibration: {where!r} must be an object")
    _only(c, _CALIBRATED_ON_KEYS, where)
    for key in ("model", "gpu", "fp8_recipe", "attention"):
        if key in c and not (isinstance(c[key], str) and c[key]):
            raise ValueError(f"calibration: '{where}.{key}' must be a non-empty string, got {c[key]!r}")
    if "moe" in c and not isinstance(c["moe"], bool):
        raise ValueError(f"calibration: '{where}.moe' must be true or false, got {c['moe']!r}")
    out = dict(c)
    if "precision" in c:
        prec = c["precision"]
        listed = [prec] if isinstance(prec, str) else prec
        if not isinstance(listed, list) or not listed or any(x not in DTYPES for x in listed):
            raise ValueError(f"calibration: '{where}.precision' must be one of {DTYPES} or a list of them, "
                             f"got {prec!r}")
        out["precision"] = prec if isinstance(prec, str) else tuple(prec)
    return out


def _gemm_table(t: dict, kind: str, grouped: bool) -> dict:
    out = {}
    for dt, pts in t.items():
        if dt not in DTYPES:
            raise ValueError(f"calibration: '{kind}.{dt}' is not a dtype; allowed: {DTYPES}")
        if not isinstance(pts, list):
            raise ValueError(f"calibration: '{kind}.{dt}' must be a list of points")
        keys = {"m", "n", "k", "tflops", "provenance"} | ({"groups"} if grouped else set())
        parsed = []
        for i, q in enumerate(pts):
            where = f"{kind}.{dt}[{i}]"
            if not isinstance(q, dict):
                raise ValueError(f"calibration: '{where}' must be an object")
            _only(q, keys, where)
            tflops = _number(q, "tflops", where + ".")
            if not tflops > 0:
                raise ValueError(f"calibration: '{where}.tflops' must be > 0, got {tflops!r}")
            parsed.append(GemmPoint(
                m=_positive_int(q, "m", where + "."), n=_positive_int(q, "n", where + "."),
                k=_positive_int(q, "k", where + "."), tflops=tflops,
                groups=_positive_int(q, "groups", where + ".") if grouped else 1,
                provenance=_opt_str(q, "provenance", where + "."),
            ))
        out[dt] = tuple(parsed)
    return out


def _point_dict(q: GemmPoint, grouped: bool) -> dict:
    d = {"groups": q.groups} if grouped else {}
    d.update({"m": q.m, "n": q.n, "k": q.k, "tflops": q.tflops})
    if q.provenance:
        d["provenance"] = q.provenance
    return d
