"""Price per GPU-hour by GPU type (data/prices.toml): what a run costs when a plan is moved to another GPU and
no price is given. Every price names its listing and date."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parent / "data" / "prices.toml"


@lru_cache(maxsize=1)
def _prices() -> dict:
    with DATA_FILE.open("rb") as f:
        return tomllib.load(f)["price"]


def listed_price(gpu_key: str) -> tuple[float, str] | None:
    """(USD per GPU-hour, its source) for a GPU of the catalogue, or None where no price is listed."""
    entry = _prices().get(gpu_key)
    if entry is None:
        return None
    return float(entry["usd_per_gpu_hour"]), str(entry["source"])


def listed_gpus() -> list[str]:
    return list(_prices())
