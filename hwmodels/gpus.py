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
ENERGY_FILE = Path(__file__).resolve().parent / "data" / "energy.toml"
DTYPES = ("fp8", "bf16")                       # the precisions the simulator runs GEMMs in
PEAK_DTYPES = ("bf16", "fp8", "mxfp8", "fp4")  # the precisions peak_flops answers for (catalogue only past fp8)

_TERA = 1e12
_GIGA = 1e9
_GIB = 2**30


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model. ``fp8_flops == 0`` means the GPU has no FP8 tensor cores (likewise ``mxfp8_flops`` and
    ``fp4_flops``); ``power_w == 0`` means no board power is catalogued. ``sms`` counts AMD compute units."""

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
    mxfp8_flops: float = 0.0  # dense MXFP8 (block-scaled FP8) tensor-core peak, FLOP/s (0: not supported)
    fp4_flops: float = 0.0    # dense FP4 (NVFP4 / MXFP4) tensor-core peak, FLOP/s (0: not supported)
    power_w: float = 0.0      # board power (max TDP / TGP / TBP), watts (0: not catalogued)
    interconnect: str = ""    # scale-up link generation, e.g. "NVLink 4 (18 links)"

    def __post_init__(self) -> None:
        if self.sms <= 0:
            raise ValueError(f"GPUSpec.sms must be a positive integer, got {self.sms!r}")
        for field_name in ("bf16_flops", "fp32_flops", "hbm_bytes", "hbm_bw", "nvlink_bw_bidirectional",
                           "nvlink_bw_unidirectional", "nic_bw"):
            if not getattr(self, field_name) > 0:
                raise ValueError(f"GPUSpec.{field_name} must be > 0, got {getattr(self, field_name)!r}")
        for field_name in ("fp8_flops", "mxfp8_flops", "fp4_flops", "power_w"):
            if not getattr(self, field_name) >= 0:
                raise ValueError(f"GPUSpec.{field_name} must be >= 0 (0 = not supported / not catalogued), "
                                 f"got {getattr(self, field_name)!r}")

    @property
    def has_fp8(self) -> bool:
        return self.fp8_flops > 0

    def supported_dtypes(self) -> tuple[str, ...]:
        """The precisions of PEAK_DTYPES this GPU has tensor cores for."""
        return tuple(d for d in PEAK_DTYPES if d == "bf16" or getattr(self, f"{d}_flops") > 0)

    def peak_flops(self, dtype: str) -> float:
        """Dense tensor-core peak for ``dtype`` (one of PEAK_DTYPES), FLOP/s; refuses a precision the GPU lacks.

        The simulator itself runs "bf16" and "fp8"; "mxfp8" and "fp4" are catalogue figures for now."""
        if dtype == "bf16":
            return self.bf16_flops
        if dtype in PEAK_DTYPES:
            value = getattr(self, f"{dtype}_flops")
            if not value > 0:
                raise ValueError(f"dtype {dtype!r} is not supported on {self.name} (no {dtype.upper()} tensor cores); "
                                 f"supported: {', '.join(self.supported_dtypes())}")
            return value
        raise ValueError(f"dtype must be one of {PEAK_DTYPES}, got {dtype!r}")


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
        mxfp8_flops=float(entry.get("mxfp8_tflops", 0.0)) * _TERA,
        fp4_flops=float(entry.get("fp4_tflops", 0.0)) * _TERA,
        power_w=float(entry.get("power_w", 0.0)),
        interconnect=entry.get("interconnect", ""),
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


# -- energy -----------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def energy_data() -> dict:
    """The parsed energy.toml: the default PUE and its source."""
    with ENERGY_FILE.open("rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class RunEnergy:
    """A run's electrical energy: ``mwh = gpu_hours * power_w * pue / 1e6``.

    ``power_w`` is the GPU's catalogued board power (max TDP/TGP), ``pue`` the facility's power usage effectiveness
    (total facility power / IT power). Host CPUs, memory, NICs and switches are not counted, and every GPU is
    taken to draw its full board power for the whole run."""

    gpu: str
    gpu_hours: float
    power_w: float
    pue: float
    pue_source: str
    power_source: str

    @property
    def it_mwh(self) -> float:
        """GPU board energy alone, MWh (before the PUE)."""
        return self.gpu_hours * self.power_w / 1e6

    @property
    def mwh(self) -> float:
        """Facility energy, MWh: GPU board energy times the PUE."""
        return self.it_mwh * self.pue

    def as_dict(self) -> dict:
        return {"mwh": self.mwh, "it_mwh": self.it_mwh, "gpu": self.gpu, "gpu_power_w": self.power_w,
                "pue": self.pue, "formula": "MWh = GPU-hours x board power (W) x PUE / 1e6",
                "power_source": self.power_source, "pue_source": self.pue_source}


def run_energy(gpu_hours: float, gpu: GPUSpec | str, pue: float | None = None) -> RunEnergy:
    """The energy of ``gpu_hours`` on ``gpu`` at ``pue`` (default: energy.toml's ``pue``)."""
    spec = load_gpu(gpu)
    if not (isinstance(gpu_hours, (int, float)) and gpu_hours >= 0):
        raise ValueError(f"gpu_hours must be a number >= 0, got {gpu_hours!r}")
    data = energy_data()
    if pue is None:
        pue, pue_source = float(data["pue"]), data["pue_source"]
    else:
        pue_source = "given"
    if not (isinstance(pue, (int, float)) and pue >= 1.0):
        raise ValueError(f"pue must be a number >= 1.0 (total facility power / IT power), got {pue!r}")
    if not spec.power_w > 0:
        raise ValueError(f"power_w: no board power catalogued for {spec.name}; gpus with one: "
                         f"{', '.join(k for k in list_gpus() if load_gpu(k).power_w > 0)}")
    return RunEnergy(gpu=spec.name, gpu_hours=float(gpu_hours), power_w=spec.power_w, pue=float(pue),
                     pue_source=pue_source,
                     power_source=f"hwmodels/data/gpus.toml [gpu.{spec.key}] power_w ({spec.name} board power)")
