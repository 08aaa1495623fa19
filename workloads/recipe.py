"""The training recipe's storage choices: bytes per element of weights, master weights, gradients, optimizer
moments and cached activations, and the memory headroom rule (data/memory.toml). Read by the memory model and
by the step's data-parallel tail, which moves and updates the same state."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from importlib import resources

_GIB = 2**30
BF16 = 2.0
FP32 = 4.0


@dataclass(frozen=True)
class MemoryRecipe:
    """Bytes per element of the training state and cached activations, and the headroom rule."""

    name: str = "deepseek-v3"
    weight_bytes: float = 2.0
    master_bytes: float = 4.0
    grad_bytes: float = 4.0
    moment_bytes: float = 2.0
    fp8_tile: int = 128
    attn_out_bytes: float = 1.5
    logit_bytes: float = 2.0
    gate_bytes: float = 4.0
    reserved_bytes: float = 3.0 * _GIB
    fragmentation: float = 0.05

    def cached_input_bytes(self, fp8: bool) -> float:
        """Bytes per element of a cached GEMM input: FP8 plus one FP32 scale per tile, or BF16."""
        return 1.0 + FP32 / self.fp8_tile if fp8 else BF16

    def optimizer_bytes_per_param(self) -> float:
        """HBM traffic of one AdamW update per parameter of the local shard: read master weight, gradient and
        both moments, write master weight and both moments, write the working copy."""
        return 2 * self.master_bytes + self.grad_bytes + 4 * self.moment_bytes + self.weight_bytes

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def _memory_data() -> dict:
    return tomllib.loads(resources.files("gpuhours.workloads").joinpath("data", "memory.toml").read_text())


def load_recipe(name: str = "deepseek-v3") -> MemoryRecipe:
    """A recipe from data/memory.toml with its headroom rule."""
    data = _memory_data()
    recipes = data["recipe"]
    if name not in recipes:
        raise ValueError(f"memory recipe must be one of {', '.join(recipes)}; got {name!r}")
    allowed = {f.name for f in fields(MemoryRecipe)}
    values = {k: v for k, v in recipes[name].items() if k in allowed}
    head = data["headroom"]
    return MemoryRecipe(name=name, reserved_bytes=head["reserved_gib"] * _GIB, fragmentation=head["fragmentation"],
                        **values)
