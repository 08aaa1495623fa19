"""RunPlan: how many tokens a run trains on, at what sequence length, with which global-batch ramp and price."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str | float | int, field: str = "tokens") -> float:
    """'14.8T' -> 1.48e13; accepts K, M, B/G, T suffixes and plain numbers."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(text))
        if not match:
            raise ValueError(f"{field} must be a number with an optional K/M/B/T suffix (e.g. 14.8T), got {text!r}")
        value = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
    return value


def _check_number(field: str, value, minimum: float) -> None:
    """A finite number >= minimum, else ValueError naming the field (no inf, NaN or text reaches the estimate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < minimum:
        raise ValueError(f"{field} must be a finite number >= {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class BatchRamp:
    """Global batch (sequences) grows linearly in tokens from `start` to `end` over `over_tokens`, then stays."""

    start: int
    end: int
    over_tokens: float = 0.0

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"batch sizes must be positive whole numbers of sequences, got {name}={value!r}")
        _check_number("ramp_tokens", self.over_tokens, 0.0)


@dataclass(frozen=True)
class RunPlan:
    tokens: float
    seq_len: int = 4096
    batch: BatchRamp = BatchRamp(15360, 15360, 0.0)
    price_per_gpu_hour: float = 2.0
    ramp_segments: int = 8  # the ramp is simulated as this many constant-batch segments of equal tokens
    price_source: str = ""  # where the price comes from ("": given, or the plan's own)

    def __post_init__(self) -> None:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {self.seq_len!r}")
        _check_number("tokens", self.tokens, float(self.seq_len))  # at least one sequence
        _check_number("price", self.price_per_gpu_hour, 0.0)
        if self.ramp_segments < 1:
            raise ValueError(f"ramp_segments must be >= 1, got {self.ramp_segments}")
