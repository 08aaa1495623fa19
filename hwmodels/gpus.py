"""GPU spec sheets: datasheet peaks in SI units, loaded from ``data/gpus.toml``.

All figures are dense (no 2:4 sparsity) peaks: FLOP/s, bytes, bytes/s. Achievable fractions live with the
cluster (``cluster.py``) and the kernel efficiencies with the calibration profile (``calibration.py``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parent / "data" / "gpus.toml"
DTYPES = ("fp8", "bf16")

_TERA = 1e12
_GIGA = 1e9
_GIB = 2**30


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model. ``fp8_flops == 0`` means the GPU has no FP8 tensor cores."""

    key: str                 # canonical key in gpus.toml, e.g. "h800"
    name: str                # e.g. "H800 SXM"
    sms: int                 # streaming multiprocessors
    bf16_flops: float        # dense BF16 tensor-core peak, FLOP/s
    fp8_flops: float         # dense FP8 tensor-core peak, FLOP/s (0: not supported)
    fp32_flops: float        # non-tensor FP32 peak, FLOP/s (element-wise work)
    hbm_bytes: float         # HBM capacity, bytes
    hbm_bw: float            # HBM bandwidth, bytes/s
    nvlink_bw_bidirectional: float   # NVLink per GPU, both directions summed, bytes/s
    nvlink_bw_unidirectional: float  # NVLink per GPU, one direction, bytes/s
    nic_bw: float            # default scale-out NIC per GPU, bytes/s (line rate)
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.sms <= 0:
            raise ValueError(f"GPUSpec.sms must be a positive integer, got {self.sms!r}")
        for field_name in ("bf16_flops", "fp32_flops", "hbm_bytes", "hbm_bw", "nvlink_bw_bidirectional",
                           "nvlink_bw_unidirectional", "nic_bw"):
            if not getattr(self, field_name) > 0:
                raise ValueError(f"GPUSpec.{field_name} must be > 0, got {getattr(self, field_name)!r}")
        if self.fp8_flops < 0:
            raise ValueError(f"GPUSpec.fp8_flops must be >= 0 (0 = no FP8), got {self.fp8_flops!r}")

    @property
    def has_fp8(self) -> bool:
        return self.fp8_flops > 0

    def peak_flops(self, dtype: str) -> float:
        """Dense tensor-core peak for ``dtype`` ("fp8" or "bf16"), FLOP/s."""
        if dtype == "bf16":
            return self.bf16_flops
        if dtype == "fp8":
            if not self.has_fp8:
                raise ValueError(f"dtype 'fp8' is not supported on {self.name} (no FP8 tensor cores); use 'bf16'")
            return self.fp8_flops
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


@lru_cache(maxsize=1)
def _data() -> dict:
    with DATA_FILE.open("rb") as f:
        return tomllib.load(f)


def gpu_data() -> dict:
    """The parsed gpus.toml (read-only use: achievable fractions, reference clusters)."""
    return _data()


def _spec(key: str, entry: dict) -> GPUSpec:
    return GPUSpec(
        key=key,
        name=entry["name"],
        sms=int(entry["sms"]),
        bf16_flops=float(entry["bf16_tflops"]) * _TERA,
        fp8_flops=float(entry["fp8_tflops"]) * _TERA,
        fp32_flops=float(entry["fp32_tflops"]) * _TERA,
        hbm_bytes=float(entry["hbm_gib"]) * _GIB,
        hbm_bw=float(entry["hbm_gb_s"]) * _GIGA,
        nvlink_bw_bidirectional=float(entry["nvlink_gb_s_bidirectional"]) * _GIGA,
        nvlink_bw_unidirectional=float(entry["nvlink_gb_s_unidirectional"]) * _GIGA,
        nic_bw=float(entry["nic_gbit_s"]) * _GIGA / 8,
        source=entry.get("source", ""),
        notes=entry.get("notes", ""),
    )


def list_gpus() -> list[str]:
    """Canonical keys of the GPUs in gpus.toml, in file order."""
    return list(_data()["gpu"])


def load_gpu(name: str) -> GPUSpec:
    """A GPU by key, display name or alias, case-insensitive (e.g. "h800", "H100 SXM", "a100")."""
    if isinstance(name, GPUSpec):
        return name
    wanted = str(name).strip().lower()
    for key, entry in _data()["gpu"].items():
        names = {key.lower(), entry["name"].lower(), *(a.lower() for a in entry.get("aliases", []))}
        if wanted in names:
            return _spec(key, entry)
    raise ValueError(f"unknown gpu {name!r}; allowed: {', '.join(list_gpus())}")
