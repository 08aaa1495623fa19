"""Which FP8 GEMM kernels a run used: a profile's FP8 points moved from the kernel family they describe to another.

A calibration profile's FP8 GEMM points are the figures of one kernel family, named in
``provenance.software.fp8_gemm_kernels`` (default-h800: DeepGEMM's published figures; trace-h800: the kernels
DeepSeek's traced step ran). A run records the family it used (`[numerics] fp8_gemm_kernels`,
``--fp8-gemm-kernels``; DeepSeek-V3's plan: "deepseek-cutlass", the internal kernels its trace shows). When the
two differ, each FP8 point is carried over at the published speed ratio between the families at that point's
shape (data/gemm_kernels.toml):

    tflops(run's family) = tflops(profile's family) x speedup(profile's) / speedup(run's)

where a family's speedup is its rate over deepseek-cutlass's at the shape (DeepGEMM's README column; 1 for
deepseek-cutlass itself). Weight-gradient points (the profile's ``wgrad`` section) take the one figure DeepGEMM
publishes for its weight-gradient kernels. BF16 points are left as they are. A profile that does not name its
family, or a point at a shape the tables do not list, cannot be carried over: the first is reported by
`scenario_warnings` and the profile used as it is, the second raises ValueError naming the point.
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from functools import lru_cache

from gpuhours.hwmodels.calibration_schema import DATA_DIR, GemmPoint

SOFTWARE_KEY = "fp8_gemm_kernels"
BASELINE = "deepseek-cutlass"  # the family every published speed-up is measured against


@lru_cache(maxsize=1)
def _tables() -> dict:
    doc = tomllib.loads((DATA_DIR / "gemm_kernels.toml").read_text())
    sp = doc["speedup"]
    return {"families": tuple(doc["families"]),
            "gemm": {tuple(int(v) for v in row[:3]): float(row[3]) for row in sp["gemm"]},
            "grouped_gemm": {tuple(int(v) for v in row[:4]): float(row[4]) for row in sp["grouped_gemm"]},
            "wgrad": float(sp["wgrad"]["all"]), "source": sp["source"], "wgrad_source": sp["wgrad"]["source"]}


def families() -> tuple[str, ...]:
    """The FP8 GEMM kernel families the tables relate (the allowed values of ``fp8_gemm_kernels``)."""
    return _tables()["families"]


def check_family(name: str | None, field: str = "fp8_gemm_kernels") -> None:
    if name is not None and name not in families():
        raise ValueError(f"{field} must be one of {', '.join(families())}; got {name!r}")


def profile_family(profile) -> str | None:
    """The family a profile's FP8 points describe (``provenance.software.fp8_gemm_kernels``), None if unsaid."""
    return (profile.provenance.software or {}).get(SOFTWARE_KEY)


def _speedup(family: str, table: str, point: GemmPoint) -> float:
    """Rate of ``family`` over deepseek-cutlass at the point's shape."""
    if family == BASELINE:
        return 1.0
    t = _tables()
    if table == "wgrad":
        return t["wgrad"]
    key = (point.m, point.n, point.k) if table == "gemm" else (point.groups, point.m, point.n, point.k)
    if key not in t[table]:
        shape = "x".join(str(v) for v in key)
        raise ValueError(f"fp8_gemm_kernels: the profile's FP8 {table} point {shape} has no published speed-up "
                         f"between kernel families (hwmodels/data/gemm_kernels.toml lists "
                         f"{', '.join('x'.join(map(str, s)) for s in t[table])})")
    return t[table][key]


def _moved(points, table: str, src: str, dst: str, label: str):
    out = []
    for p in points:
        ratio = _speedup(dst, table, p) / _speedup(src, table, p)
        out.append(replace(p, tflops=p.tflops * ratio,
                           provenance=f"{p.tflops:g} TFLOP/s ({src}) x {ratio:.4g} as {dst} ({label}); "
                                      f"was: {p.provenance}"))
    return tuple(out)


def with_fp8_gemm_kernels(profile, family: str | None):
    """`profile` with its FP8 GEMM points carried over to kernel ``family``; unchanged when ``family`` is None,
    is the profile's own, or the profile does not name its own (see `family_warning`)."""
    check_family(family)
    src = profile_family(profile)
    if family is None or src is None or src == family:
        return profile
    t = _tables()
    label = f"{t['source']}; weight gradients: {t['wgrad_source']}"
    gemm = dict(profile.gemm)
    grouped = dict(profile.grouped_gemm)
    if "fp8" in gemm:
        gemm["fp8"] = _moved(gemm["fp8"], "gemm", src, family, label)
    if "fp8" in grouped:
        grouped["fp8"] = _moved(grouped["fp8"], "grouped_gemm", src, family, label)
    wgrad = profile.wgrad
    if wgrad:
        wgrad = dict(wgrad)
        for kind in ("gemm", "grouped_gemm"):
            if wgrad.get(kind, {}).get("fp8"):
                wgrad[kind] = dict(wgrad[kind]) | {"fp8": _moved(wgrad[kind]["fp8"], "wgrad", src, family, label)}
    software = dict(profile.provenance.software or {}) | {SOFTWARE_KEY: family}
    basis = profile.provenance.basis
    basis = (f"{basis}; " if basis else "") + f"FP8 GEMMs carried from {src} to {family} kernels at published speed-ups"
    prov = replace(profile.provenance, software=software, basis=basis)
    return replace(profile, gemm=gemm, grouped_gemm=grouped, wgrad=wgrad, provenance=prov)


# Kernel-name marks of each family in a profiler trace: DeepGEMM's JIT kernels live in namespace deep_gemm
# (deep_gemm/include/deep_gemm/*.cuh); DeepSeek's internal ones, as its training trace names them, are CUTLASS
# device kernels of namespace dpsk::grouped_gemm.
_NAME_MARKS = {"deepgemm": "deep_gemm::", "deepseek-cutlass": "dpsk::grouped_gemm::"}


def traced_family(kernel_names) -> str | None:
    """The FP8 GEMM family a trace's kernels belong to, from their names; None when none or both appear."""
    found = {fam for fam, mark in _NAME_MARKS.items() if any(mark in name for name in kernel_names)}
    return found.pop() if len(found) == 1 else None


def family_warning(profile, family: str | None, fp8: bool) -> str | None:
    """One line when a run that names its FP8 GEMM kernels is priced by a profile that cannot be carried to them."""
    if not fp8 or family is None or profile_family(profile) is not None:
        return None
    return (f"the run's FP8 GEMMs are {family} kernels, but profile {profile.name!r} does not say which kernels its "
            f"FP8 points describe (provenance.software.{SOFTWARE_KEY}): they are priced as the profile's own")
