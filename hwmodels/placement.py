"""Placement: which GPU (and node) each rank of a (pp, dp, ep, tp) layout runs on, and its groups.

The world of pp * dp * ep * tp ranks is numbered in mixed radix over ``order`` (innermost axis first); rank r
runs on GPU r, node r // gpus_per_node. The default order ("tp", "ep", "dp", "pp") keeps TP inside a node,
lays EP contiguously over whole nodes (EP64 with tp=1 = 8 whole nodes), then DP, with PP outermost.
``dp`` here is the replication of each EP group (DeepSeek-V3: pp16 x dp2 x ep64 = 2,048); the data-parallel
group of the dense (non-expert) weights is the combined ("dp", "ep") group.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

AXES = ("pp", "dp", "ep", "tp")
EXPERT_GROUPS = ("ep", "edp", "etp", "tp_ep")  # RankLayout's expert grid (etp-ep-edp, innermost first)
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


@dataclass(frozen=True)
class RankLayout:
    """Which GPU every rank of a (tp, cp, dp, pp) layout runs on, and every communication group as GPU lists.

    Ranks are numbered in mixed radix over ``order`` (innermost first) and rank r runs on GPU r, so the default
    ("tp", "cp", "dp", "pp") keeps a tensor-parallel group inside a node, then context and data parallelism,
    with pipeline stages outermost; ("tp", "pp", "cp", "dp") puts neighbouring stages on neighbouring nodes
    instead. Expert ranks follow Megatron-Core's expert grid etp-ep-edp (innermost first) over the stage's own
    numbering (the order without pp): an expert-tensor-parallel group ("etp") is ``etp`` consecutive ranks of the
    stage (inside a node by default), an expert-parallel group ("ep") the ``ep`` ranks ``etp`` apart within a block
    of ep x etp consecutive ranks ("tp_ep", Megatron-Core's tp_ep_group, the all-gather dispatcher's group), and
    an expert shard's replicas ("edp") the stage's ranks ep x etp apart. With etp = 1 an EP group is ``ep``
    consecutive ranks, as Megatron-Core's tp-cp-ep-dp convention lays it.
    """

    tp: int = 1
    cp: int = 1
    dp: int = 1
    pp: int = 1
    ep: int = 1
    order: tuple[str, ...] = ("tp", "cp", "dp", "pp")
    etp: int = 1

    @classmethod
    def of(cls, parallel) -> "RankLayout":
        return cls(parallel.tp, parallel.cp, parallel.dp, parallel.pp, parallel.ep, tuple(parallel.order),
                   getattr(parallel, "etp", 1))

    def __post_init__(self) -> None:
        for axis in ("tp", "cp", "dp", "pp", "ep", "etp"):
            v = getattr(self, axis)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"RankLayout.{axis} must be an integer >= 1, got {v!r}")
        if sorted(self.order) != ["cp", "dp", "pp", "tp"]:
            raise ValueError(f"RankLayout.order must be a permutation of tp, cp, dp, pp, got {self.order!r}")
        if self.stage_size % (self.ep * self.etp):
            raise ValueError(f"ep x etp ({self.ep} x {self.etp}) must divide the {self.stage_size} ranks of a stage")

    @property
    def stage_size(self) -> int:
        return self.tp * self.cp * self.dp

    def stride(self, axis: str) -> int:
        stride = 1
        for a in self.order:
            if a == axis:
                return stride
            stride *= getattr(self, a)
        raise ValueError(f"axis must be one of {self.order}, got {axis!r}")

    def gpu(self, tp: int = 0, cp: int = 0, dp: int = 0, pp: int = 0) -> int:
        return tp * self.stride("tp") + cp * self.stride("cp") + dp * self.stride("dp") + pp * self.stride("pp")

    def stage(self, pp: int) -> list[int]:
        """GPUs of pipeline stage ``pp`` in the stage's own numbering (the order without pp)."""
        return _stage_gpus(self, pp).tolist()

    def groups(self, name: str) -> list[list[int]]:
        """Every group of kind ``name`` across the machine (they all run their collective at once): "tp", "cp",
        "dp" (a dense shard's gradient group: dp x cp ranks), "ep", "edp" (an expert shard's replicas), "etp" (an
        expert's tensor-parallel ranks) and "tp_ep" (an ep x etp block: the all-gather dispatcher's group)."""
        block = self.ep * self.etp
        if name in EXPERT_GROUPS:
            stage = self.stage(0)
            if name == "ep":
                first = [sorted(stage[b + j:b + block:self.etp]) for b in range(0, len(stage), block)
                         for j in range(self.etp)]
            elif name == "etp":
                first = [sorted(stage[i:i + self.etp]) for i in range(0, len(stage), self.etp)]
            elif name == "tp_ep":
                first = [sorted(stage[i:i + block]) for i in range(0, len(stage), block)]
            else:
                first = [sorted(stage[j::block]) for j in range(block)]
        else:
            axes = {"tp": ("tp",), "cp": ("cp",), "dp": ("dp", "cp")}.get(name)
            if axes is None:
                raise ValueError(f"group must be one of tp, cp, dp, {', '.join(EXPERT_GROUPS)}; got {name!r}")
            first = _dense_groups(self, 0, axes)
        if self.pp == 1:
            return first
        # stage pp's GPUs are stage 0's plus pp x the pp stride, in the same order (the pp digit of a GPU's mixed
        # radix number leaves its other coordinates alone): so are its groups, stage after stage
        shifts = self.stride("pp") * np.arange(self.pp)[:, None, None]
        return (np.asarray(first, dtype=np.int64)[None] + shifts).reshape(-1, len(first[0])).tolist()

    def pipeline_flows(self, src: int, dst: int) -> list[tuple[int, int, float]]:
        """One unit flow from every GPU of stage ``src`` to its counterpart in stage ``dst``: every pipeline
        (data-parallel replica and shard) sends at once."""
        return [(a, b, 1.0) for a, b in zip(self.stage(src), self.stage(dst))]

    def pipeline_flow_array(self, src: int, dst: int) -> np.ndarray:
        """``pipeline_flows`` as an (N, 3) float array, what routing reads (no tuple per flow)."""
        a, b = _stage_gpus(self, src), _stage_gpus(self, dst)
        return np.column_stack((a, b, np.ones(len(a))))


def _dense_groups(layout: RankLayout, pp: int, axes: tuple[str, ...]) -> list[list[int]]:
    """Stage ``pp``'s groups over ``axes`` (sorted GPU lists), in the order their first GPU appears in the stage:
    a GPU's group starts at its GPU with those axes' coordinates zeroed (its base) and adds every combination of
    the axes' strides. Computed for all GPUs at once."""
    stage = _stage_gpus(layout, pp)
    base = stage.copy()
    offsets = np.zeros(1, dtype=stage.dtype)
    for axis in axes:
        stride, size = layout.stride(axis), getattr(layout, axis)
        base -= ((stage // stride) % size) * stride
        offsets = (np.arange(size)[:, None] * stride + offsets[None, :]).ravel()
    _, first = np.unique(base, return_index=True)
    return np.sort(base[np.sort(first)][:, None] + offsets[None, :], axis=1).tolist()


@lru_cache(maxsize=256)
def _stage_gpus(layout: RankLayout, pp: int) -> np.ndarray:
    """Stage ``pp``'s GPUs in stage-local numbering: mixed radix over the order without pp, as arrays."""
    local = np.arange(layout.stage_size)
    gpus = np.full(layout.stage_size, pp * layout.stride("pp"))
    for axis in (a for a in layout.order if a != "pp"):
        size = getattr(layout, axis)
        gpus += (local % size) * layout.stride(axis)
        local //= size
    gpus.flags.writeable = False
    return gpus
