"""Weight-gradient GEMMs priced from weight-gradient kernel figures (a profile's optional ``wgrad`` section).

A weight-gradient GEMM (`workloads.ops.PassBuilder.gemm`, phase "W": the output features x input features
gradient, reduced over the tokens) is not the forward GEMM with its axes renamed. Under the blockwise FP8 recipe
both of its operands are activations or activation gradients, each quantised 1 x 128 along the reduction axis
(the tokens), and the result is accumulated into an FP32 gradient: DeepGEMM's kernel for it,
``wgrad_gemm_fp8_fp8_fp32_nt`` ("1x128 LHS scaling and 1x128 RHS scaling", "Results will be accumulated into the
output tensor": deep_gemm/jit_kernels/wgrad_gemm.py, commit 04278f6, PR #95), is a kernel of its own with its own
published figures, which sit well below the forward table's: 994 TFLOP/s for the 16384 x 7168 x 4096 weight
gradient of DeepSeek-V3's output projection, where the forward 4096 x 7168 x 16384 GEMM of the same FLOPs reaches
1426 (DeepGEMM README, 2025-03-25), both on all 132 SMs (the README's tables are H800 figures; that the PR's are
too is an assumption, see the profile's ``wgrad.provenance``).

Schema (inside a "gpuhours.calibration/1" profile)::

    "wgrad": {"gemm":         {"fp8": [{"m", "n", "k", "tflops", "provenance"?}, ...]},
              "grouped_gemm": {"fp8": [{"groups", "m", "n", "k", "tflops", "provenance"?}, ...]},
              "provenance": str}

Points are written as DeepGEMM's tables write them: ``m`` input features, ``n`` output features (the gradient is
the weight's m x n transpose), ``k`` tokens (per group for a k-grouped kernel: one weight gradient per expert,
each over its own tokens). Our W ops are shaped (output features, input features, tokens), so a lookup swaps m and
n. Interpolation, the clamp to the smallest measured m and the small-m penalty are the profile's
(`CalibrationProfile.efficiency`) over these points; efficiencies are relative to the profile's reference peak,
as its other points are. A profile without the section, or without a table for an op's kind and dtype, prices
weight gradients at its forward curves, as before.

The section is a profile's own: a partial profile loaded over a base does not inherit it
(`calibration._overlay`). The trace derivation keeps the base's section and rescales it by the traced pair's
weight-gradient phases alone (`validation/trace_phases.py`), so `trace-h800` has its own.
"""

from __future__ import annotations

from dataclasses import replace

from gpuhours.hwmodels.calibration_schema import DTYPES, GEMM_KINDS, _gemm_table, _only, _opt_str, _point_dict

WGRAD_KEY = "wgrad"
_SECTION_KEYS = set(GEMM_KINDS) | {"provenance"}


def parse_wgrad(section) -> dict | None:
    """The validated ``wgrad`` section: {"gemm": {dtype: points}, "grouped_gemm": {...}, "provenance": str}, or
    None when the profile has none. ValueError names the offending key."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError(f"calibration: {WGRAD_KEY!r} must be an object with keys {sorted(_SECTION_KEYS)}")
    _only(section, _SECTION_KEYS, WGRAD_KEY)
    out: dict = {}
    for kind in GEMM_KINDS:
        table = section.get(kind, {})
        if not isinstance(table, dict):
            raise ValueError(f"calibration: '{WGRAD_KEY}.{kind}' must be an object of dtype: points "
                             f"(dtypes: {DTYPES})")
        out[kind] = _gemm_table(table, f"{WGRAD_KEY}.{kind}", grouped=kind == "grouped_gemm")
    if not any(pts for table in out.values() for pts in table.values()):
        raise ValueError(f"calibration: {WGRAD_KEY!r} has no points; give 'gemm' or 'grouped_gemm' points or "
                         f"drop the section")
    out["provenance"] = _opt_str(section, "provenance", WGRAD_KEY + ".")
    return out


def wgrad_dict(wgrad: dict) -> dict:
    """The section as JSON (the inverse of `parse_wgrad`)."""
    d: dict = {kind: {dt: [_point_dict(q, grouped=kind == "grouped_gemm") for q in pts]
                      for dt, pts in wgrad[kind].items()} for kind in GEMM_KINDS if wgrad[kind]}
    if wgrad.get("provenance"):
        d["provenance"] = wgrad["provenance"]
    return d


def has_wgrad_points(profile, kind: str, dtype: str) -> bool:
    wgrad = getattr(profile, "wgrad", None)
    return bool(wgrad and wgrad.get(kind, {}).get(dtype))


def wgrad_efficiency(profile, kind: str, dtype: str, m: int, n: int, k: int, groups: int, *,
                     peak_flops: float) -> float | None:
    """Fraction of ``peak_flops`` a weight-gradient GEMM of our shape (m output features, n input features,
    k tokens; ``groups`` experts) reaches by the profile's ``wgrad`` points, None when it has none for
    (kind, dtype)."""
    if not has_wgrad_points(profile, kind, dtype):
        return None
    tables = profile.wgrad
    view = replace(profile, gemm=tables["gemm"], grouped_gemm=tables["grouped_gemm"], wgrad=None)
    return view.efficiency(kind, dtype, n, m, k, groups, peak_flops=peak_flops)


def without_wgrad(profile):
    """The profile with its ``wgrad`` section dropped (weight gradients at its forward curves)."""
    return profile if getattr(profile, "wgrad", None) is None else replace(profile, wgrad=None)
