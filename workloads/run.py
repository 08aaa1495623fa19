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
    """What a run trains: tokens, sequence length, global-batch ramp, price.

    `micro_batch_switches`: where the run changes its micro-batch size (sequences per micro-batch), as
    (tokens trained before the change, new size) pairs in increasing token order (plan TOML
    `[run] ramp_micro_batch_size = [["200B", 2], ["1T", 4]]`, `parse_micro_batch_switches`). Before the first
    switch the layout's `micro_batch_size` applies. A constant-batch segment of the ramp that straddles a
    switch is cut there (`simulator.run.ramp_segments`), so each piece runs at one size; the global batch is
    unchanged, so the micro-batches per pipeline follow from it (ceil(batch / (dp x size)))."""

    tokens: float
    seq_len: int = 4096
    batch: BatchRamp = BatchRamp(15360, 15360, 0.0)
    price_per_gpu_hour: float = 2.0
    ramp_segments: int = 8  # the ramp is simulated as this many constant-batch segments of equal tokens
    price_source: str = ""  # where the price comes from ("": given, or the plan's own)
    micro_batch_switches: tuple[tuple[float, int], ...] = ()  # (from tokens, micro-batch size), see above

    def __post_init__(self) -> None:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {self.seq_len!r}")
        _check_number("tokens", self.tokens, float(self.seq_len))  # at least one sequence
        _check_number("price", self.price_per_gpu_hour, 0.0)
        if self.ramp_segments < 1:
            raise ValueError(f"ramp_segments must be >= 1, got {self.ramp_segments}")
        object.__setattr__(self, "micro_batch_switches", parse_micro_batch_switches(self.micro_batch_switches))

    def micro_batch_size_at(self, tokens: float, default: int) -> int:
        """The micro-batch size in force once `tokens` have been trained (`default` before the first switch)."""
        size = default
        for start, value in self.micro_batch_switches:
            if tokens >= start:
                size = value
        return size


def parse_micro_batch_switches(value) -> tuple[tuple[float, int], ...]:
    """Micro-batch size switches from a plan or the command line: a list of (tokens, size) pairs (tokens a
    number or a count such as "200B"), or the text "200B:2,1T:4". ValueError naming `ramp_micro_batch_size` when
    a pair is malformed, a size is not a positive whole number, or the tokens do not increase."""
    field = "ramp_micro_batch_size"
    if isinstance(value, str):
        pairs = []
        for item in (x for x in value.split(",") if x.strip()):
            if item.count(":") != 1:
                raise ValueError(f"{field} must be TOKENS:SIZE pairs joined by ',' (e.g. 200B:2,1T:4), got {value!r}")
            tokens, size = item.split(":")
            try:
                pairs.append((tokens, int(size)))
            except ValueError:
                raise ValueError(f"{field}: size must be a positive whole number, got {size!r}") from None
        value = pairs
    out: list[tuple[float, int]] = []
    for pair in value:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{field} must be a list of [tokens, micro-batch size] pairs, got {pair!r}")
        tokens, size = parse_count(pair[0], field), pair[1]
        _check_number(field, tokens, 0.0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{field}: micro-batch size must be a positive whole number, got {size!r}")
        if out and tokens <= out[-1][0]:
            raise ValueError(f"{field}: the tokens of the switches must increase, got {tokens:g} after "
                             f"{out[-1][0]:g}")
        out.append((float(tokens), size))
    return tuple(out)
