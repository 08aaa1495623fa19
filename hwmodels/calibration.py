"""CalibrationProfile: measured (or assumed) kernel efficiencies, as a versioned JSON document.

Schema "gpuhours.calibration/1"::

    {"schema": "gpuhours.calibration/1", "name": str,
     "source": "datasheet" | "microbenchmark" | "trace",
     "provenance": {"device": str, "sm_count": int, "date": str, "software": {...}, "method": str,
                    "references": [str, ...],
                    "peak_tflops": {"fp8": x, "bf16": y},           # optional, see below
                    "calibrated_on": {...},                          # optional, see below
                    "basis": str},                                   # optional: one line, what it rests on
     "gemm":         {"fp8": [{"m", "n", "k", "tflops", "provenance"?}, ...], "bf16": [...]},
     "grouped_gemm": {"fp8": [{"groups", "m", "n", "k", "tflops", "provenance"?}, ...], "bf16": [...]},
     "attention":   {"forward_efficiency": f, "backward_efficiency": f, "provenance"?},  # of dense BF16 peak
     "elementwise": {"bandwidth_efficiency": f, "classes"?: {class: f}, "provenance"?},  # of HBM bandwidth
     "comm": {...},          # optional, free-form achieved bandwidths (but "nccl_intra_node": see below)
     "trace": {...},         # optional, free-form measured times (profiles imported from a trace)
     "notes": str | [str]}   # optional

``elementwise.classes`` gives a memory-bound op class (``ELEMENTWISE_CLASSES``: RMSNorm, activation, FP8 cast,
RoPE, loss, router, optimizer, embedding; `hwmodels.compute.elementwise_class` names an op's) its own bandwidth
efficiency; a class it does not list takes ``bandwidth_efficiency``.

An optional top-level ``wgrad`` section holds weight-gradient GEMM points (`hwmodels/wgrad.py`: its schema;
`ComputeModel` prices phase-"W" GEMMs from it where it has points for the op's kind and dtype).

Optional top-level ``fp8_tensorwise`` (measured per-tensor FP8-over-BF16 GEMM speed-ups, read by
`hwmodels/fp8_tensorwise.py`) and ``launch`` (measured kernel gap and eager host time per launch, read by
`hwmodels/launch.py`) sections and ``comm.nccl_intra_node`` (NCCL bus bandwidths within a node): schema and
checks in `hwmodels/profile_sections.py`; `gpuhours calibrate bench` writes them. An optional ``uncertainty``
section (relative uncertainty per calibrated quantity, written by `calibrate trace` from the traced pair's
per-phase residuals: validation/trace_phases.py) sets how far `simulator/sensitivity.py` moves each quantity.
None of them is inherited from a ``base`` profile.

``provenance.calibrated_on`` says what the figures were fitted to: ``{"model": preset name (absent when
nothing was measured on a model), "gpu": GPU key, "precision": "fp8" | "bf16" | [both],
"fp8_recipe": "blockwise" | ..., "attention": "mla" | "gqa", "moe": bool}`` (every key optional). A profile
with a ``model`` is a *calibration case* for that model on that GPU: estimating it reproduces the fit, it
predicts nothing. ``HARDWARE_ONLY_PROFILES`` names, per GPU, the profile that rests on datasheet peaks and
published kernel figures only (nothing measured on a model): the hardware-only sibling of a calibrated one.

A partial profile (say one imported from a trace: no GEMM points) loads with ``base=``: each of gemm and
grouped_gemm (per dtype), attention and elementwise (per key) that it lacks is taken from ``base``.

Measured GEMM points are achieved TFLOP/s of kernels that ran on ``provenance.sm_count`` SMs. Their
efficiency is ``tflops / peak`` where ``peak`` is the dense peak of those SMs: ``provenance.peak_tflops``
when the profile records it (so the fraction transfers to another GPU), else the modelled GPU's peak
scaled by ``sm_count / gpu.sms`` (the caller, ``ComputeModel``, works that out).

Interpolation (``efficiency``) between measured shapes:
1. coordinates are ``log2`` of (m, n, k) (and groups, for grouped GEMMs); ``m`` is first clamped to the
   smallest measured m (step 3 prices smaller m);
2. an exact match returns its efficiency; otherwise the ``NEIGHBOURS`` nearest points are averaged with
   inverse-square-distance weights (a convex combination: never outside the measured range);
3. small-M penalty, only when m is below every measured m: efficiency is multiplied by
   ``min(1, u(m) / u(m_min))`` with ``u(m) = (m / (TILE * ceil(m / TILE))) * waves(tiles)`` where
   ``tiles = groups * ceil(m / TILE) * ceil(n / TILE)`` output tiles of TILE x TILE and
   ``waves(t) = t / (sm_count * ceil(t / sm_count))`` is the busy fraction of the SMs over the kernel's waves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuhours.hwmodels.calibration_schema import (  # noqa: F401 (the schema's names, re-exported)
    DATA_DIR, DEFAULT_PROFILE, DTYPES, ELEMENTWISE_CLASSES, GEMM_KINDS, HARDWARE_ONLY_PROFILES, NEIGHBOURS, SCHEMA,
    SOURCES, TILE, _TOP_KEYS, GemmPoint, Provenance, _fraction, _gemm_table, _only, _opt_str, _point_dict,
    _provenance, _req)
from gpuhours.hwmodels.profile_sections import (LaunchSection, TensorwiseSection, check_nccl_intra_node,
                                                fp8_tensorwise_dict, launch_dict, parse_fp8_tensorwise, parse_launch,
                                                parse_uncertainty)
from gpuhours.hwmodels.wgrad import parse_wgrad, wgrad_dict


@dataclass(frozen=True)
class CalibrationProfile:
    name: str
    source: str
    provenance: Provenance
    gemm: dict            # dtype -> tuple[GemmPoint, ...]
    grouped_gemm: dict    # dtype -> tuple[GemmPoint, ...]
    attention_forward_efficiency: float
    attention_backward_efficiency: float
    elementwise_bandwidth_efficiency: float
    attention_provenance: str = ""
    elementwise_provenance: str = ""
    elementwise_classes: dict | None = None  # class (ELEMENTWISE_CLASSES) -> bandwidth efficiency
    comm: dict | None = None
    notes: Any = None
    trace: dict | None = None
    schema: str = SCHEMA
    wgrad: dict | None = None  # weight-gradient GEMM points (hwmodels/wgrad.py); None: W at the forward curves
    fp8_tensorwise: TensorwiseSection | None = None  # measured per-tensor FP8 speed-ups (profile_sections.py)
    launch: LaunchSection | None = None              # measured launch overheads (profile_sections.py)
    uncertainty: dict | None = None  # quantity -> relative uncertainty, "provenance" (profile_sections.py)

    # ----------------------------------------------------------------------------------------- JSON
    @classmethod
    def from_dict(cls, d: dict, base: "CalibrationProfile | None" = None) -> "CalibrationProfile":
        """Validate a schema-"gpuhours.calibration/1" dict; ValueError names the offending key.

        With ``base``, sections ``d`` lacks are filled from it (see the module docstring).
        """
        if not isinstance(d, dict):
            raise ValueError(f"calibration profile must be a JSON object, got {type(d).__name__}")
        if base is not None:
            d = _overlay(base.to_dict(), d)
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise ValueError(f"calibration: unknown key {unknown[0]!r}; allowed: {sorted(_TOP_KEYS)}")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"calibration: 'schema' must be {SCHEMA!r}, got {d.get('schema')!r}")
        name = _req(d, "name", str, "")
        source = _req(d, "source", str, "")
        if source not in SOURCES:
            raise ValueError(f"calibration: 'source' must be one of {SOURCES}, got {source!r}")
        prov = _provenance(_req(d, "provenance", dict, ""))
        gemm = _gemm_table(_req(d, "gemm", dict, ""), "gemm", grouped=False)
        grouped = _gemm_table(_req(d, "grouped_gemm", dict, ""), "grouped_gemm", grouped=True)
        att = _req(d, "attention", dict, "")
        _only(att, {"forward_efficiency", "backward_efficiency", "provenance"}, "attention")
        ew = _req(d, "elementwise", dict, "")
        _only(ew, {"bandwidth_efficiency", "classes", "provenance"}, "elementwise")
        classes = ew.get("classes")
        if classes is not None:
            if not isinstance(classes, dict):
                raise ValueError("calibration: 'elementwise.classes' must be an object of class: efficiency")
            _only(classes, set(ELEMENTWISE_CLASSES), "elementwise.classes")
            classes = {k: _fraction(classes, k, "elementwise.classes.") for k in classes}
        comm = d.get("comm")
        if comm is not None and not isinstance(comm, dict):
            raise ValueError("calibration: 'comm' must be an object")
        check_nccl_intra_node((comm or {}).get("nccl_intra_node"))
        notes = d.get("notes")
        if notes is not None and not isinstance(notes, (str, list)):
            raise ValueError("calibration: 'notes' must be a string or a list of strings")
        trace = d.get("trace")
        if trace is not None and not isinstance(trace, dict):
            raise ValueError("calibration: 'trace' must be an object")
        return cls(
            name=name, source=source, provenance=prov, gemm=gemm, grouped_gemm=grouped,
            attention_forward_efficiency=_fraction(att, "forward_efficiency", "attention."),
            attention_backward_efficiency=_fraction(att, "backward_efficiency", "attention."),
            elementwise_bandwidth_efficiency=_fraction(ew, "bandwidth_efficiency", "elementwise."),
            attention_provenance=_opt_str(att, "provenance", "attention."),
            elementwise_provenance=_opt_str(ew, "provenance", "elementwise."),
            elementwise_classes=classes or None, comm=comm, notes=notes, trace=trace,
            wgrad=parse_wgrad(d.get("wgrad")),
            fp8_tensorwise=parse_fp8_tensorwise(d.get("fp8_tensorwise")), launch=parse_launch(d.get("launch")),
            uncertainty=parse_uncertainty(d.get("uncertainty")),
        )

    def to_dict(self) -> dict:
        p = self.provenance
        prov = {"device": p.device, "sm_count": p.sm_count, "date": p.date, "software": dict(p.software),
                "method": p.method, "references": list(p.references)}
        if p.peak_tflops is not None:
            prov["peak_tflops"] = dict(p.peak_tflops)
        if p.calibrated_on is not None:
            prov["calibrated_on"] = {k: list(v) if isinstance(v, (list, tuple)) else v
                                     for k, v in p.calibrated_on.items()}
        if p.basis:
            prov["basis"] = p.basis
        d: dict = {
            "schema": self.schema, "name": self.name, "source": self.source, "provenance": prov,
            "gemm": {dt: [_point_dict(q, grouped=False) for q in pts] for dt, pts in self.gemm.items()},
            "grouped_gemm": {dt: [_point_dict(q, grouped=True) for q in pts] for dt, pts in self.grouped_gemm.items()},
            "attention": {"forward_efficiency": self.attention_forward_efficiency,
                          "backward_efficiency": self.attention_backward_efficiency},
            "elementwise": {"bandwidth_efficiency": self.elementwise_bandwidth_efficiency},
        }
        if self.attention_provenance:
            d["attention"]["provenance"] = self.attention_provenance
        if self.elementwise_provenance:
            d["elementwise"]["provenance"] = self.elementwise_provenance
        if self.elementwise_classes:
            d["elementwise"]["classes"] = dict(self.elementwise_classes)
        if self.comm is not None:
            d["comm"] = self.comm
        if self.trace is not None:
            d["trace"] = self.trace
        if self.wgrad is not None:
            d["wgrad"] = wgrad_dict(self.wgrad)
        if self.fp8_tensorwise is not None:
            d["fp8_tensorwise"] = fp8_tensorwise_dict(self.fp8_tensorwise)
        if self.launch is not None:
            d["launch"] = launch_dict(self.launch)
        if self.uncertainty is not None:
            d["uncertainty"] = dict(self.uncertainty)
        if self.notes is not None:
            d["notes"] = self.notes
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # ----------------------------------------------------------------------------------------- queries
    @property
    def sm_count(self) -> int:
        return self.provenance.sm_count

    @property
    def calibrated_on(self) -> dict:
        """``provenance.calibrated_on`` (empty when the profile does not record it)."""
        return dict(self.provenance.calibrated_on or {})

    @property
    def gpu_key(self) -> str | None:
        """The GPU the profile's figures were measured on, as a gpus.toml key (``calibrated_on.gpu``, else
        ``provenance.device``); None when neither names a known GPU."""
        return gpu_key(self.calibrated_on.get("gpu") or self.provenance.device)

    def hardware_only_sibling(self) -> str | None:
        """Name of the hardware-only profile for this profile's GPU, when there is one and it is not this one."""
        name = HARDWARE_ONLY_PROFILES.get(self.gpu_key or "")
        if name is None or name == self.name or load_profile(name).name == self.name:
            return None  # a bundled profile's "name" may be longer than its file name
        return name

    def reference_peak(self, dtype: str) -> float | None:
        """Dense peak (FLOP/s) of the SMs the points were measured on, if the profile records it."""
        pk = self.provenance.peak_tflops
        if pk is None or dtype not in pk:
            return None
        return float(pk[dtype]) * 1e12

    def elementwise_efficiency(self, op_class: str | None) -> float:
        """Bandwidth efficiency of a memory-bound op of `op_class` (its own when the profile measured it)."""
        return (self.elementwise_classes or {}).get(op_class, self.elementwise_bandwidth_efficiency)

    def points(self, kind: str, dtype: str) -> tuple[GemmPoint, ...]:
        if kind not in GEMM_KINDS:
            raise ValueError(f"kind must be one of {GEMM_KINDS}, got {kind!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        pts = (self.gemm if kind == "gemm" else self.grouped_gemm).get(dtype, ())
        if not pts:
            raise ValueError(f"calibration profile {self.name!r} has no {kind} points for dtype {dtype!r}")
        return pts

    def efficiency(self, kind: str, dtype: str, m: int, n: int, k: int, groups: int = 1, *,
                   peak_flops: float) -> float:
        """Fraction of ``peak_flops`` (the dense peak of ``sm_count`` SMs) a GEMM of this shape reaches.

        See the module docstring for the interpolation and the small-M penalty.
        """
        for label, v in (("m", m), ("n", n), ("k", k), ("groups", groups)):
            if not v >= 1:
                raise ValueError(f"GEMM {label} must be >= 1, got {v!r}")
        if not peak_flops > 0:
            raise ValueError(f"peak_flops must be > 0 FLOP/s, got {peak_flops!r}")
        pts = self.points(kind, dtype)
        grouped = kind == "grouped_gemm"
        m_min = min(p.m for p in pts)
        mq = max(m, m_min)

        def coords(mm, nn, kk, gg):
            c = [math.log2(mm), math.log2(nn), math.log2(kk)]
            return c + [math.log2(gg)] if grouped else c

        q = coords(mq, n, k, groups)
        dist = sorted((math.dist(q, coords(p.m, p.n, p.k, p.groups)), i) for i, p in enumerate(pts))
        effs = [p.tflops * 1e12 / peak_flops for p in pts]
        if dist[0][0] < 1e-12:
            eff = effs[dist[0][1]]
        else:
            near = dist[:NEIGHBOURS]
            weights = [1.0 / d**2 for d, _ in near]
            eff = sum(w * effs[i] for w, (_, i) in zip(weights, near)) / sum(weights)
        if m < m_min:
            eff *= min(1.0, _utilisation(m, n, groups, self.sm_count) / _utilisation(m_min, n, groups, self.sm_count))
        if eff > 1.0:
            raise ValueError(f"calibration {self.name!r}: {kind} {dtype} efficiency {eff:.3f} exceeds 1 at "
                             f"peak_flops={peak_flops:.4g}; the profile does not fit this peak")
        return eff


def _utilisation(m: int, n: int, groups: int, sms: int) -> float:
    """Useful fraction of TILE x TILE output tiles times the busy fraction of the SMs over the waves."""
    row_tiles = math.ceil(m / TILE)
    useful_rows = m / (TILE * row_tiles)
    tiles = groups * row_tiles * math.ceil(n / TILE)
    return useful_rows * tiles / (sms * math.ceil(tiles / sms))


# --------------------------------------------------------------------------------------------- loading
def available_profiles() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.json"))


def load_profile(path_or_name: str | Path, base: CalibrationProfile | None = None) -> CalibrationProfile:
    """A profile from a JSON file path, or by name of a bundled profile in hwmodels/data (e.g. "default-h800").

    ``base`` fills the sections a partial profile lacks (``CalibrationProfile.from_dict``).
    """
    p = Path(path_or_name)
    if not p.is_file():
        bundled = DATA_DIR / f"{path_or_name}.json"
        if not bundled.is_file():
            raise ValueError(f"calibration profile {str(path_or_name)!r} is neither a file nor a bundled profile; "
                             f"bundled: {', '.join(available_profiles())}")
        p = bundled
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deeply
        raise ValueError(f"calibration profile {str(p)!r} is not valid JSON: {e}") from None
    return CalibrationProfile.from_dict(d, base=base)


def default_profile() -> CalibrationProfile:
    return load_profile(DEFAULT_PROFILE)


def gpu_key(name: str | None) -> str | None:
    """A GPU name as its gpus.toml key ("NVIDIA H800" -> "h800"), or None when it is not a known GPU."""
    from gpuhours.hwmodels.gpus import load_gpu

    if not name:
        return None
    text = str(name).strip()
    for candidate in (text, text.removeprefix("NVIDIA ").strip(), text.removeprefix("NVIDIA ").split()[0]):
        try:
            return load_gpu(candidate).key
        except (ValueError, IndexError):
            continue
    return None


def _overlay(base: dict, d: dict) -> dict:
    """``d`` over ``base``: whole top-level keys, except gemm tables (per dtype) and attention / elementwise (per
    key); a note records which sections came from the base."""
    if not isinstance(d, dict):
        return d
    out = dict(base)
    out.pop("comm", None), out.pop("trace", None), out.pop("notes", None)
    out.pop("wgrad", None)  # a profile's own (hwmodels/wgrad.py): not inherited over rescaled forward curves
    out.pop("fp8_tensorwise", None), out.pop("launch", None)  # measured on the base's GPU: not inherited
    out.pop("uncertainty", None)  # the spread of the base's own calibration, not of the profile over it
    inherited = []
    for key, value in d.items():
        if key in ("gemm", "grouped_gemm") and isinstance(value, dict) and isinstance(base.get(key), dict):
            # A dtype with no points (say FP8 measured on a device without FP8) counts as missing.
            out[key] = {**base[key], **{dt: pts for dt, pts in value.items() if pts}}
        elif key in ("attention", "elementwise") and isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    for key in ("gemm", "grouped_gemm"):
        missing = sorted(dt for dt in base[key] if not (d.get(key) or {}).get(dt))
        inherited += [f"{key}.{dt}" for dt in missing]
    for key in ("attention", "elementwise"):
        missing = sorted(k for k in base[key] if k != "provenance" and k not in (d.get(key) or {}))
        inherited += [f"{key}.{k}" for k in missing]
    prov = d.get("provenance")
    if isinstance(prov, dict) and "peak_tflops" not in prov and "peak_tflops" in base["provenance"]:
        out["provenance"] = {**prov, "peak_tflops": base["provenance"]["peak_tflops"]}
        inherited.append("provenance.peak_tflops")
    if inherited:
        note = f"taken from base profile {base['name']!r}: {', '.join(inherited)}"
        notes = d.get("notes")
        out["notes"] = [note] if notes is None else ([notes, note] if isinstance(notes, str) else [*notes, note])
    return out
