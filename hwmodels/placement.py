"""Placement: which GPU (and node) each rank of a (pp, dp, ep, tp) layout runs on, and its groups.

The world of pp * dp * ep * tp ranks is numbered in mixed radix over ``order`` (innermost axis first); rank r
runs on GPU r, node r // gpus_per_node. The default order ("tp", "ep", "dp", "pp") keeps TP inside a node,
lays EP contiguously over whole nodes (EP64 with tp=1 = 8 whole nodes), then DP, with PP outermost.
``dp`` here is the replication of each EP group (DeepSeek-V3: pp16 x dp2 x ep64 = 2,048); the data-parallel
group of the dense (non-expert) weights is the combined ("dp", "ep") group.
"""

from __future__ import annotations

from dataclasses import dataclass

AXES = ("pp", "dp", "ep", "tp")
DEFAULT_ORDER = ("tp", "ep", "dp", "pp")


@dataclass(frozen=True)
class Placement:
    pp: int = 1
    dp: int = 1
    ep: int = 1
    tp: int = 1
    gpus_per_node: int = 8
    order: tuple[str, ...] = DEFAULT_ORDER   # innermost (fastest-varying) first

    def __post_init__(self) -> None:
        for a in AXES + ("gpus_per_node",):
            v = getattr(self, a)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"Placement.{a} must be an integer >= 1, got {v!r}")
        if sorted(self.order) != sorted(AXES):
            raise ValueError(f"Placement.order must be a permutation of {AXES}, got {self.order!r}")
        if self.world > self.gpus_per_node and self.world % self.gpus_per_node:
            raise ValueError(f"Placement world size {self.world} must be a multiple of gpus_per_node={self.gpus_per_node}")

    @property
    def world(self) -> int:
        return self.pp * self.dp * self.ep * self.tp

    def size(self, axis: str) -> int:
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        return getattr(self, axis)

    def _stride(self, axis: str) -> int:
        stride = 1
        for a in self.order:
            if a == axis:
                return stride
            stride *= self.size(a)
        raise AssertionError(axis)

    def coords(self, rank: int) -> dict[str, int]:
        """The (pp, dp, ep, tp) coordinates of ``rank``."""
        self._check_rank(rank)
        return {a: (rank // self._stride(a)) % self.size(a) for a in AXES}

    def rank_of(self, **coords: int) -> int:
        """The rank at the given coordinates (missing axes are 0)."""
        bad = sorted(set(coords) - set(AXES))
        if bad:
            raise ValueError(f"unknown axis {bad}; allowed: {AXES}")
        rank = 0
        for a, v in coords.items():
            if not 0 <= v < self.size(a):
                raise ValueError(f"coordinate {a}={v} out of range [0, {self.size(a)})")
            rank += v * self._stride(a)
        return rank

    def gpu_of(self, rank: int) -> int:
        self._check_rank(rank)
        return rank

    def node_of(self, rank: int) -> int:
        return self.gpu_of(rank) // self.gpus_per_node

    def group(self, rank: int, *axes: str) -> list[int]:
        """GPUs of ``rank``'s group along ``axes`` (ranks sharing all other coordinates), in axis order."""
        if not axes:
            raise ValueError(f"give at least one axis of {AXES}")
        c = self.coords(rank)
        base = rank - sum(c[a] * self._stride(a) for a in axes)
        members = [base]
        for a in axes:
            members = [m + i * self._stride(a) for i in range(self.size(a)) for m in members]
        return sorted(members)

    def tp_group(self, rank: int) -> list[int]:
        return self.group(rank, "tp")

    def ep_group(self, rank: int) -> list[int]:
        return self.group(rank, "ep")

    def dp_group(self, rank: int) -> list[int]:
        return self.group(rank, "dp")

    def pp_group(self, rank: int) -> list[int]:
        return self.group(rank, "pp")

    def all_groups(self, *axes: str) -> list[list[int]]:
        """Every group along ``axes``, each once (e.g. all 32 EP groups of DeepSeek-V3)."""
        seen: set[int] = set()
        out = []
        for r in range(self.world):
            if r not in seen:
                g = self.group(r, *axes)
                seen.update(g)
                out.append(g)
        return out

    def nodes_of(self, gpus: list[int]) -> list[int]:
        return sorted({g // self.gpus_per_node for g in gpus})

    def shape(self, rank: int, *axes: str) -> tuple[int, int]:
        """(size, per_node) of the group: the fields of ``cluster.CommGroup`` (per_node = most ranks on a node)."""
        g = self.group(rank, *axes)
        counts: dict[int, int] = {}
        for x in g:
            counts[x // self.gpus_per_node] = counts.get(x // self.gpus_per_node, 0) + 1
        return len(g), max(counts.values())

    def _check_rank(self, rank: int) -> None:
        if not (isinstance(rank, int) and 0 <= rank < self.world):
            raise ValueError(f"rank must be an integer in [0, {self.world}), got {rank!r}")
