"""ClusterSpec: GPUs, nodes and the *achievable* per-GPU link bandwidths the network models use.

Two link classes: NVLink inside a node (``nvlink_bw``: achievable, one direction, per GPU) and the
scale-out network between nodes (``ib_bw``: achievable per GPU NIC, one direction). ``CommGroup`` says how
the ranks of one collective lie on the nodes.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

from gpuhours.hwmodels.gpus import GPUSpec, gpu_data, load_gpu

_GIGA = 1e9


@dataclass(frozen=True)
class ClusterSpec:
    """``num_gpus`` GPUs of one kind, ``gpus_per_node`` per node, one NIC per GPU.

    Bandwidths are achievable (not datasheet) figures in bytes/s; latencies are per message / ring step, s.
    """

    gpu: GPUSpec
    num_gpus: int
    gpus_per_node: int = 8
    _: KW_ONLY
    nvlink_bw: float      # achievable NVLink bandwidth per GPU, one direction, bytes/s
    ib_bw: float          # achievable scale-out bandwidth per GPU NIC, one direction, bytes/s
    nvlink_latency: float  # seconds per NVLink message / ring step
    ib_latency: float     # seconds per network message / ring step

    def __post_init__(self) -> None:
        if not isinstance(self.gpu, GPUSpec):
            raise ValueError(f"ClusterSpec.gpu must be a GPUSpec, got {type(self.gpu).__name__}")
        if not (isinstance(self.gpus_per_node, int) and self.gpus_per_node >= 1):
            raise ValueError(f"ClusterSpec.gpus_per_node must be an integer >= 1, got {self.gpus_per_node!r}")
        if not (isinstance(self.num_gpus, int) and self.num_gpus >= 1):
            raise ValueError(f"ClusterSpec.num_gpus must be an integer >= 1, got {self.num_gpus!r}")
        if self.num_gpus > self.gpus_per_node and self.num_gpus % self.gpus_per_node:
            raise ValueError(f"ClusterSpec.num_gpus must be a multiple of gpus_per_node={self.gpus_per_node}, "
                             f"got {self.num_gpus}")
        for name in ("nvlink_bw", "ib_bw"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ClusterSpec.{name} must be > 0 bytes/s, got {getattr(self, name)!r}")
        for name in ("nvlink_latency", "ib_latency"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"ClusterSpec.{name} must be >= 0 s, got {getattr(self, name)!r}")
        if self.nvlink_bw > self.gpu.nvlink_bw_unidirectional:
            raise ValueError(f"ClusterSpec.nvlink_bw {self.nvlink_bw:.4g} B/s exceeds the {self.gpu.name} NVLink "
                             f"peak per direction {self.gpu.nvlink_bw_unidirectional:.4g} B/s")

    @property
    def num_nodes(self) -> int:
        return -(-self.num_gpus // self.gpus_per_node)


@dataclass(frozen=True)
class CommGroup:
    """The ranks of one collective: ``size`` ranks, ``per_node`` of them on each node they occupy."""

    size: int
    per_node: int

    def __post_init__(self) -> None:
        if not (isinstance(self.size, int) and self.size >= 1):
            raise ValueError(f"CommGroup.size must be an integer >= 1, got {self.size!r}")
        if not (isinstance(self.per_node, int) and 1 <= self.per_node <= self.size):
            raise ValueError(f"CommGroup.per_node must be an integer in [1, size={self.size}], got {self.per_node!r}")
        if self.size % self.per_node:
            raise ValueError(f"CommGroup.size={self.size} must be a multiple of per_node={self.per_node}")

    @property
    def nodes(self) -> int:
        """Number of nodes the group spans."""
        return self.size // self.per_node


def _achievable() -> dict:
    return gpu_data()["achievable"]


def default_cluster_for(gpu: GPUSpec | str, num_gpus: int, gpus_per_node: int = 8) -> ClusterSpec:
    """A cluster of ``gpu`` whose achievable bandwidths are datasheet peaks times the fractions in gpus.toml.

    nvlink_bw = nvlink_fraction * NVLink peak per direction; ib_bw = ib_fraction * NIC line rate.
    """
    gpu = load_gpu(gpu) if isinstance(gpu, str) else gpu
    a = _achievable()
    return ClusterSpec(
        gpu, num_gpus, gpus_per_node,
        nvlink_bw=a["nvlink_fraction"] * gpu.nvlink_bw_unidirectional,
        ib_bw=a["ib_fraction"] * gpu.nic_bw,
        nvlink_latency=a["nvlink_latency_s"],
        ib_latency=a["ib_latency_s"],
    )


def deepseek_h800_cluster(num_gpus: int = 2048) -> ClusterSpec:
    """DeepSeek-V3's cluster: H800, 8 per node, NVLink 160 GB/s and IB 50 GB/s achievable (the report's figures)."""
    ref = gpu_data()["reference_clusters"]["deepseek-h800"]
    a = _achievable()
    return ClusterSpec(
        load_gpu(ref["gpu"]), num_gpus, ref["gpus_per_node"],
        nvlink_bw=ref["nvlink_gb_s"] * _GIGA,
        ib_bw=ref["ib_gb_s"] * _GIGA,
        nvlink_latency=a["nvlink_latency_s"],
        ib_latency=a["ib_latency_s"],
    )
