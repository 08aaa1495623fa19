"""Per-tensor FP8 GEMMs (Transformer Engine delayed / current scaling, torchao tensorwise) priced as they run.

The calibration profiles' "fp8" points are blockwise kernels (DeepGEMM's 1x128 / 128x128 scaling with promotion of
the partial sums on CUDA cores, or DeepSeek's traced kernels of the same recipe). A per-tensor FP8 GEMM is a
different kernel: one cuBLASLt call with one FP32 scale per operand, applied once in the epilogue. It is priced
here from the profile's BF16 GEMM at the same shape and a published FP8-over-BF16 speed-up of that kernel:

    efficiency_fp8 = min(1, efficiency_bf16(shape) * speedup(shape) * peak_bf16 / peak_fp8)

i.e. the FP8 GEMM takes the BF16 GEMM's time divided by ``speedup`` (the min: it cannot run above the FP8 dense
peak). ``efficiency_bf16`` is what `ComputeModel.gemm_efficiency` gives the same op in BF16 (the profile's BF16
points, or its BF16 weight-gradient points for phase "W"); peaks are the modelled GPU's dense peaks.

``speedup(shape)`` comes from hwmodels/data/fp8_tensorwise.toml (each figure with its source): coordinates are
log2 of (m, n, k), each first clamped to the range the table covers (so beyond its ends the nearest edge's figure
holds); an exact match returns its figure, otherwise the ``NEIGHBOURS`` nearest points are averaged with
inverse-square-distance weights (the calibration profiles' interpolation).
Assumption: every table point has m = 16384 tokens, so the speed-up does not depend on m here; a small-m GEMM
takes the BF16 profile's small-m penalty through ``efficiency_bf16`` only.
Assumption: grouped GEMMs under a per-tensor recipe (one cuBLASLt call per group) take the same speed-up at the
shape of one group.

A profile with an ``fp8_tensorwise`` section (per-tensor FP8 and BF16 GEMMs timed by ``gpuhours calibrate bench``,
validation/bench_fp8.py; schema in hwmodels/profile_sections.py) replaces the bundled table with its own measured
points (same interpolation) when the modelled GPU is the GPU it was measured on (`speedup_table`); for another GPU,
or a profile without the section, the bundled table holds.

A profile whose ``provenance.calibrated_on.fp8_recipe`` is a per-tensor recipe ("delayed" or "current") measured
its "fp8" points on per-tensor kernels: they are used as they are (`uses_own_points`), the table is not.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from gpuhours.hwmodels.calibration_schema import NEIGHBOURS
from gpuhours.workloads.ops import FP8_RECIPES, PER_TENSOR_RECIPES

DATA_FILE = Path(__file__).resolve().parent / "data" / "fp8_tensorwise.toml"


@dataclass(frozen=True)
class SpeedupPoint:
    """A published BF16 and per-tensor FP8 GEMM time pair at one shape (left operand m x k, right k x n)."""

    name: str
    m: int
    n: int
    k: int
    speedup: float  # BF16 time / FP8 time, as printed


@dataclass(frozen=True)
class SpeedupTable:
    points: tuple[SpeedupPoint, ...]
    reference: str

    def speedup(self, m: int, n: int, k: int) -> float:
        """FP8-over-BF16 speed-up at (m, n, k): log-shape interpolation, clamped at the table's ends."""
        for label, v in (("m", m), ("n", n), ("k", k)):
            if not v >= 1:
                raise ValueError(f"GEMM {label} must be >= 1, got {v!r}")
        pts = self.points

        def clamp(v: int, axis: str) -> float:
            vals = [getattr(p, axis) for p in pts]
            return math.log2(min(max(v, min(vals)), max(vals)))

        q = (clamp(m, "m"), clamp(n, "n"), clamp(k, "k"))
        dist = sorted((math.dist(q, (math.log2(p.m), math.log2(p.n), math.log2(p.k))), i) for i, p in enumerate(pts))
        if dist[0][0] < 1e-12:
            return pts[dist[0][1]].speedup
        near = dist[:NEIGHBOURS]
        weights = [1.0 / d**2 for d, _ in near]
        return sum(w * pts[i].speedup for w, (_, i) in zip(weights, near)) / sum(weights)


def parse_table(d: dict) -> SpeedupTable:
    """A SpeedupTable from the data file's dict; ValueError names the offending key."""
    src = d.get("source")
    if not isinstance(src, dict) or not isinstance(src.get("reference"), str) or not src["reference"]:
        raise ValueError("fp8_tensorwise: [source] must give a 'reference' string")
    raw = d.get("point")
    if not isinstance(raw, list) or not raw:
        raise ValueError("fp8_tensorwise: needs at least one [[point]]")
    points = []
    for i, p in enumerate(raw):
        for key in ("m", "n", "k"):
            v = p.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"fp8_tensorwise: point[{i}].{key} must be a whole number >= 1, got {v!r}")
        s = p.get("speedup")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < math.inf:
            raise ValueError(f"fp8_tensorwise: point[{i}].speedup must be a number > 0, got {s!r}")
        points.append(SpeedupPoint(str(p.get("name", f"point{i}")), p["m"], p["n"], p["k"], float(s)))
    return SpeedupTable(tuple(points), src["reference"])


@lru_cache(maxsize=1)
def default_table() -> SpeedupTable:
    with DATA_FILE.open("rb") as f:
        return parse_table(tomllib.load(f))


def speedup_table(profile, gpu_key: str | None) -> SpeedupTable:
    """The profile's measured speed-ups when it has an ``fp8_tensorwise`` section and was measured on ``gpu_key``
    (a gpus.toml key, the modelled GPU); else the bundled table."""
    own = getattr(profile, "fp8_tensorwise", None)
    if own is None or gpu_key is None or profile.gpu_key != gpu_key:
        return default_table()
    return SpeedupTable(tuple(SpeedupPoint(p.provenance or f"point{i}", p.m, p.n, p.k, p.speedup)
                              for i, p in enumerate(own.points)), own.provenance)


def check_recipe(recipe: str) -> str:
    if recipe not in FP8_RECIPES:
        raise ValueError(f"fp8_recipe must be one of {', '.join(FP8_RECIPES)}; got {recipe!r}")
    return recipe


def is_per_tensor(recipe: str) -> bool:
    """True for the per-tensor recipes (PER_TENSOR_RECIPES); ValueError for a recipe not in FP8_RECIPES."""
    return check_recipe(recipe) in PER_TENSOR_RECIPES


def uses_own_points(profile) -> bool:
    """True when the profile's own "fp8" points were measured on per-tensor kernels (its calibrated_on says so)."""
    return profile.calibrated_on.get("fp8_recipe") in PER_TENSOR_RECIPES


def tensorwise_efficiency(bf16_efficiency: float, speedup: float, peak_bf16: float, peak_fp8: float) -> float:
    """Fraction of the FP8 dense peak a per-tensor FP8 GEMM reaches, from the BF16 GEMM's fraction of the BF16
    peak at the same shape and the FP8-over-BF16 speed-up (see the module docstring)."""
    if not (peak_bf16 > 0 and peak_fp8 > 0):
        raise ValueError(f"dense peaks must be > 0 FLOP/s, got bf16 {peak_bf16!r}, fp8 {peak_fp8!r}")
    return min(1.0, bf16_efficiency * speedup * peak_bf16 / peak_fp8)
