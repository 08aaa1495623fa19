"""MXFP8 GEMMs on Blackwell (FP8 recipe "mxfp8"): OCP Microscaling FP8, E4M3 elements with one E8M0 scale per 32
consecutive elements along K, the scales applied by the tensor cores themselves (tcgen05 block-scaled MMA, sm_100).

Rate: the GPU's dense MXFP8 peak (``GPUSpec.mxfp8_flops``, gpus.toml ``mxfp8_tflops``) times an efficiency at the
op's shape:

    efficiency_mxfp8 = efficiency_bf16(shape)          (a fraction of the MXFP8 peak)

``efficiency_bf16`` is what `ComputeModel.gemm_efficiency` gives the same op in BF16 (the profile's BF16 points,
its BF16 weight-gradient points in phase "W"). Assumption: no published per-shape MXFP8 GEMM time on a Blackwell
part was found (hwmodels/data/mxfp8.toml lists what was searched and the one published bound, torchao's "up to
~2x over BF16" for cuBLAS's MXFP8 GEMM on B200, which this rule meets at every shape since B200's MXFP8 peak is
twice its BF16 peak). A profile whose ``provenance.calibrated_on.fp8_recipe`` is "mxfp8" measured its "fp8"
points on MX kernels: they are used as they are (`uses_own_points`).

A GPU without MXFP8 tensor cores (no ``mxfp8_tflops``: every Hopper, Ampere and AMD part) is refused
(`check_gpu`), with the GPUs that have them.

The casts the recipe adds (`workloads.ops.PassBuilder._quant_bytes`) use `cast_bytes_per_element` below.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parent / "data" / "mxfp8.toml"
RECIPE = "mxfp8"


@lru_cache(maxsize=1)
def data() -> dict:
    with DATA_FILE.open("rb") as f:
        d = tomllib.load(f)
    fmt = d.get("format", {})
    for key in ("block_elements", "scale_bytes", "element_bytes"):
        v = fmt.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"mxfp8: format.{key} must be a whole number >= 1, got {v!r}")
    rule = d.get("efficiency", {}).get("rule")
    if rule != "bf16-fraction-of-peak":
        raise ValueError(f"mxfp8: efficiency.rule must be bf16-fraction-of-peak; got {rule!r}")
    return d


def block_elements() -> int:
    """Elements sharing one scale (OCP MX v1.0: 32)."""
    return data()["format"]["block_elements"]


def copy_bytes_per_element() -> float:
    """HBM bytes per element of one MXFP8 copy of a tensor: the FP8 element and its share of the E8M0 scale
    (1 + 1/32 = 1.03125)."""
    fmt = data()["format"]
    return fmt["element_bytes"] + fmt["scale_bytes"] / fmt["block_elements"]


def cast_bytes_per_element(bf16_bytes: int = 2) -> float:
    """HBM bytes per element of the cast that makes a tensor's two MXFP8 copies (Transformer Engine's MXFP8
    quantize with row-wise and column-wise usage, one kernel): the BF16 tensor read once, both copies with their
    scales written (2 + 2 x 1.03125 = 4.0625)."""
    return bf16_bytes + 2 * copy_bytes_per_element()


def mx_gpus() -> list[str]:
    """Keys of the catalogued GPUs with MXFP8 tensor cores (gpus.toml `mxfp8_tflops` > 0), in file order."""
    from gpuhours.hwmodels.gpus import list_gpus, load_gpu

    return [k for k in list_gpus() if load_gpu(k).mxfp8_flops > 0]


def check_gpu(gpu) -> None:
    """ValueError unless ``gpu`` (a GPUSpec) has MXFP8 tensor cores, naming the field and the GPUs that have them."""
    if not gpu.mxfp8_flops > 0:
        raise ValueError(f"fp8_recipe mxfp8 needs MXFP8 tensor cores (gpus.toml field mxfp8_tflops), which "
                         f"{gpu.name} lacks; allowed gpus: {', '.join(mx_gpus())}")


def uses_own_points(profile) -> bool:
    """True when the profile's "fp8" points were measured on MX kernels (its calibrated_on says so)."""
    return profile.calibrated_on.get("fp8_recipe") == RECIPE
