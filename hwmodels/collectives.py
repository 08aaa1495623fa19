"""Network models: the duration of a collective on a ClusterSpec. First model: alpha-beta.

A message of n bytes over one link class costs ``alpha + n / bw``; alpha and bw per class come from the
cluster: NVLink inside a node (``nvlink_latency``, ``nvlink_bw``), the per-GPU NIC between nodes
(``ib_latency``, ``ib_bw``). ``nbytes`` of ring collectives is the full, unsharded buffer on each rank.

``NetworkModel`` is the protocol every network model implements (this one; a graph-based one elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gpuhours.hwmodels.cluster import ClusterSpec, CommGroup

FP8_SCALE_BLOCK = 128   # DeepSeek-V3 FP8 activations: one FP32 scale per 128 elements
FP32_BYTES = 4
BF16_BYTES = 2


def fp8_bytes_per_token(hidden: int) -> int:
    """FP8 token: 1 byte per element plus one FP32 scale per 128 elements = hidden + 4 * ceil(hidden / 128)."""
    return hidden + FP32_BYTES * math.ceil(hidden / FP8_SCALE_BLOCK)


def bf16_bytes_per_token(hidden: int) -> int:
    """BF16 token: 2 * hidden bytes."""
    return BF16_BYTES * hidden


def check_ep_args(tokens: float, bytes_per_token: float, top_k: int) -> None:
    """The arguments every EP all-to-all model takes, checked alike (ValueError naming the field)."""
    if not tokens >= 0:
        raise ValueError(f"tokens must be >= 0, got {tokens!r}")
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token!r}")
    if not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")


@runtime_checkable
class NetworkModel(Protocol):
    """What the simulator asks of a network model; every method returns seconds."""

    name: str

    def p2p(self, nbytes: float, intra_node: bool) -> float: ...

    def all_reduce(self, nbytes: float, group: CommGroup) -> float: ...

    def reduce_scatter(self, nbytes: float, group: CommGroup) -> float: ...

    def all_gather(self, nbytes: float, group: CommGroup) -> float: ...

    def ep_all_to_all(self, tokens: float, bytes_per_token: float, top_k: int, nodes_per_token: float,
                      group: CommGroup) -> float: ...


@dataclass(frozen=True)
class EPTraffic:
    """Bytes one rank moves in one EP dispatch (or combine) under uniform expert placement."""

    ib_bytes: float       # over its NIC, to other nodes
    nvlink_bytes: float   # over NVLink, to GPUs of the same node (forwarding included)


class AlphaBetaNetwork:
    """Alpha-beta costs on a two-class network (NVLink in the node, one NIC per GPU across nodes)."""

    name = "alpha-beta"

    def __init__(self, cluster: ClusterSpec) -> None:
        self.cluster = cluster

    # ------------------------------------------------------------------------------------ helpers
    def _check(self, nbytes: float, group: CommGroup) -> None:
        if not nbytes >= 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        c = self.cluster
        if group.per_node > c.gpus_per_node:
            raise ValueError(f"group.per_node={group.per_node} exceeds gpus_per_node={c.gpus_per_node}")
        if group.size > c.num_gpus:
            raise ValueError(f"group.size={group.size} exceeds the cluster's num_gpus={c.num_gpus}")

    def _slowest(self, group: CommGroup) -> tuple[float, float]:
        """(alpha, bw) of the slowest link class a ring over the group crosses."""
        c = self.cluster
        if group.nodes > 1:
            return c.ib_latency, c.ib_bw
        return c.nvlink_latency, c.nvlink_bw

    @staticmethod
    def _ring(steps_factor: int, p: int, nbytes: float, alpha: float, bw: float) -> float:
        """steps_factor * [(p-1)/p * nbytes / bw + (p-1) * alpha]: 1 for RS/AG, 2 for all-reduce."""
        if p <= 1:
            return 0.0
        return steps_factor * ((p - 1) / p * nbytes / bw + (p - 1) * alpha)

    # ------------------------------------------------------------------------------------ collectives
    def p2p(self, nbytes: float, intra_node: bool) -> float:
        """One message: alpha + nbytes / bw over NVLink (intra_node) or the NIC."""
        if not nbytes >= 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        c = self.cluster
        if intra_node:
            return c.nvlink_latency + nbytes / c.nvlink_bw
        return c.ib_latency + nbytes / c.ib_bw

    def reduce_scatter(self, nbytes: float, group: CommGroup) -> float:
        """Ring: (p-1)/p * nbytes / bw + (p-1) * alpha, bw and alpha of the slowest class crossed."""
        self._check(nbytes, group)
        alpha, bw = self._slowest(group)
        return self._ring(1, group.size, nbytes, alpha, bw)

    def all_gather(self, nbytes: float, group: CommGroup) -> float:
        """Ring: (p-1)/p * nbytes / bw + (p-1) * alpha (nbytes = the gathered, full buffer)."""
        self._check(nbytes, group)
        alpha, bw = self._slowest(group)
        return self._ring(1, group.size, nbytes, alpha, bw)

    def all_reduce(self, nbytes: float, group: CommGroup) -> float:
        """Ring all-reduce, hierarchical when the group spans nodes.

        One node: 2(p-1)/p * nbytes / nvlink_bw + 2(p-1) * nvlink_alpha.
        r nodes of q ranks each: reduce-scatter of nbytes among the q ranks of a node over NVLink, then the
        q shards of nbytes/q are all-reduced across the r nodes in parallel (each rank on its own NIC, ring of
        r), then an all-gather in the node over NVLink:
            RS_nvl(nbytes, q) + AR_ib(nbytes / q, r) + AG_nvl(nbytes, q).
        With q = 1 this is the flat ring over the NICs.
        """
        self._check(nbytes, group)
        c = self.cluster
        q, r = group.per_node, group.nodes
        if r == 1:
            return self._ring(2, q, nbytes, c.nvlink_latency, c.nvlink_bw)
        in_node = self._ring(1, q, nbytes, c.nvlink_latency, c.nvlink_bw)
        across = self._ring(2, r, nbytes / q, c.ib_latency, c.ib_bw)
        return in_node + across + in_node

    # ------------------------------------------------------------------------------------ expert parallel
    def ep_traffic(self, tokens: float, bytes_per_token: float, top_k: int, nodes_per_token: float,
                   group: CommGroup) -> EPTraffic:
        """Bytes per rank of a DeepEP-style hierarchical dispatch (combine: the same with its bytes_per_token).

        The group spans r = group.nodes nodes of g = group.per_node GPUs; a token's top_k experts lie on
        d = min(nodes_per_token, r) nodes, e = top_k / d of them per node, placed uniformly at random.
        - IB: a token crosses the network once per target node other than its own; the expected number is
          d * (r - 1) / r, so  ib_bytes = tokens * d * (r - 1) / r * bytes_per_token.
        - NVLink: in each target node, the GPU that received the token (same in-node index as the sender; the
          sender itself for its own node) forwards it once to every other GPU there holding one of its experts.
          Expected distinct GPUs hit by e experts among g GPUs (independent placement): g * (1 - (1 - 1/g)^e);
          the receiving GPU is one of them with the same chance as any, so the forwarded copies per
          (token, node) are (g - 1) * (1 - (1 - 1/g)^e). By symmetry each rank forwards as many (token, node)
          pairs as it sends, tokens * d, so  nvlink_bytes = tokens * d * (g - 1) * (1 - (1 - 1/g)^e) * bytes_per_token.
        """
        self._check(0.0, group)
        check_ep_args(tokens, bytes_per_token, top_k)
        if not 1 <= nodes_per_token <= top_k:
            raise ValueError(f"nodes_per_token must be in [1, top_k={top_k}] (a mean may be fractional), "
                             f"got {nodes_per_token!r}")
        r, g = group.nodes, group.per_node
        d = min(nodes_per_token, r)
        e = top_k / d
        ib = tokens * d * (r - 1) / r * bytes_per_token
        copies = (g - 1) * (1 - (1 - 1 / g) ** e)
        nvl = tokens * d * copies * bytes_per_token
        return EPTraffic(ib_bytes=ib, nvlink_bytes=nvl)

    def ep_all_to_all(self, tokens: float, bytes_per_token: float, top_k: int, nodes_per_token: float,
                      group: CommGroup) -> float:
        """EP dispatch (or combine) time per rank: max(ib_bytes / ib_bw, nvlink_bytes / nvlink_bw) + latency.

        IB and NVLink stages overlap (DeepEP pipelines the forwarding), so the slower one sets the time; the
        latency is one network message (when the group spans nodes) plus one NVLink message (when it has
        several ranks per node). ``tokens`` are this
        rank's tokens; for combine pass the combine bytes_per_token (BF16): the traffic is the reverse of dispatch.
        See ``ep_traffic`` for the bytes.
        """
        if group.size == 1:
            self._check(0.0, group)
            return 0.0
        t = self.ep_traffic(tokens, bytes_per_token, top_k, nodes_per_token, group)
        c = self.cluster
        latency = (c.nvlink_latency if group.per_node > 1 else 0.0) + (c.ib_latency if group.nodes > 1 else 0.0)
        return max(t.ib_bytes / c.ib_bw, t.nvlink_bytes / c.nvlink_bw) + latency
