"""Who sends how many rows where: the expert-parallel (EP) group's placement, and the tally of one routed
micro-batch into rows per expert and per rank, the ranks' imbalance, distinct nodes per token and the copies each
rank sends and receives over IB and NVLink.  The routing itself (which experts each token picks) is routing.py's;
split out of it (same behaviour, the names re-exported there).

Placement: expert e lives on EP rank e // (n_experts / ep); rank r sits on node r // gpus_per_node.
Token t of the micro-batch starts on rank t // tokens_per_rank.

Link classes (DeepEP internode dispatch): a token crosses IB once per distinct remote target node, landing on the
GPU with the source's in-node index; NVLink then forwards it to every other target GPU in that node (from the
source itself inside its own node).  Combine is the mirror image with the same copy counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EPGroup:
    """One expert-parallel group: `ep` ranks, `gpus_per_node` of them per node, experts placed contiguously."""

    ep: int
    gpus_per_node: int

    def __post_init__(self) -> None:
        for f in ("ep", "gpus_per_node"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"EPGroup.{f} = {v!r}: expected an integer >= 1")
        if self.ep > self.gpus_per_node and self.ep % self.gpus_per_node:
            raise ValueError(f"EPGroup.ep = {self.ep}: must be a multiple of gpus_per_node = {self.gpus_per_node} "
                             "when it spans several nodes")

    @property
    def n_nodes(self) -> int:
        return -(-self.ep // self.gpus_per_node)

    def experts_per_rank(self, n_experts: int) -> int:
        if n_experts % self.ep:
            raise ValueError(f"EPGroup.ep = {self.ep}: must divide n_routed_experts = {n_experts}")
        return n_experts // self.ep


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class RoutingResult:
    """Loads and traffic of one routed micro-batch (rows = token-expert pairs, i.e. expert GEMM rows)."""

    group: EPGroup
    tokens_per_rank: int
    top_k: int
    experts: np.ndarray = field(repr=False)           # (tokens, top_k) int16 chosen experts, -1 where dropped
    expert_rows: np.ndarray = field(repr=False)       # (E,) rows received per expert
    rank_rows: np.ndarray = field(repr=False)         # (ep,) rows received per EP rank (sum over its experts)
    rank_rows_sent: np.ndarray = field(repr=False)    # (ep,) rows whose token starts on that rank
    rank_tokens_received: np.ndarray = field(repr=False)  # (ep,) distinct tokens each rank receives
    nodes_per_token: np.ndarray = field(repr=False)   # (tokens,) distinct target nodes (0 if all dropped)
    ib_sent: np.ndarray = field(repr=False)           # (ep,) token copies each rank sends over IB
    ib_received: np.ndarray = field(repr=False)       # (ep,) token copies each rank receives over IB
    nvlink_sent: np.ndarray = field(repr=False)       # (ep,) token copies each rank forwards over NVLink
    nvlink_received: np.ndarray = field(repr=False)   # (ep,) token copies each rank receives over NVLink
    bytes_per_token: float = 0.0
    dropped_rows: int = 0

    @property
    def tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def imbalance(self) -> float:
        """max / mean rows per EP rank (1.0 = perfectly balanced)."""
        return _max_over_mean(self.rank_rows)

    @property
    def expert_imbalance(self) -> float:
        return _max_over_mean(self.expert_rows)

    @property
    def mean_nodes_per_token(self) -> float:
        return float(self.nodes_per_token.mean())

    @property
    def max_nodes_per_token(self) -> int:
        return int(self.nodes_per_token.max())

    @property
    def nodes_histogram(self) -> np.ndarray:
        """counts[n] = tokens reaching exactly n distinct nodes, n = 0 .. n_nodes."""
        return np.bincount(self.nodes_per_token, minlength=self.group.n_nodes + 1)

    @property
    def ib_bytes(self) -> float:
        """Bytes over IB in one direction (dispatch): one copy per distinct remote node per token."""
        return float(self.ib_sent.sum()) * self.bytes_per_token

    @property
    def nvlink_bytes(self) -> float:
        """Bytes over NVLink in one direction: fan-out to the other target GPUs inside each target node."""
        return float(self.nvlink_sent.sum()) * self.bytes_per_token

    def summary(self) -> dict:
        return {
            "tokens": self.tokens,
            "imbalance": self.imbalance,
            "expert_imbalance": self.expert_imbalance,
            "mean_nodes_per_token": self.mean_nodes_per_token,
            "max_nodes_per_token": self.max_nodes_per_token,
            "nodes_histogram": self.nodes_histogram.tolist(),
            "ib_bytes": self.ib_bytes,
            "nvlink_bytes": self.nvlink_bytes,
            "max_ib_sent_bytes_per_rank": float(self.ib_sent.max()) * self.bytes_per_token,
            "max_ib_received_bytes_per_rank": float(self.ib_received.max()) * self.bytes_per_token,
            "dropped_rows": self.dropped_rows,
        }


def _max_over_mean(x: np.ndarray) -> float:
    mean = float(x.sum()) / x.size
    return float(x.max()) / mean if mean > 0 else 1.0


def _tally(experts: np.ndarray, group: EPGroup, tokens_per_rank: int, epr: int, E: int,
           bytes_per_token: float, dropped: int) -> RoutingResult:
    ep, gpn, n_nodes = group.ep, group.gpus_per_node, group.n_nodes
    T, k = experts.shape
    kept = experts >= 0
    e = experts[kept].astype(np.int64)
    expert_rows = np.bincount(e, minlength=E)
    rank_rows = expert_rows.reshape(ep, epr).sum(axis=1)
    src = np.arange(T, dtype=np.int64) // tokens_per_rank
    rank_rows_sent = np.bincount(src, weights=kept.sum(axis=1), minlength=ep).astype(np.int64)

    # distinct target ranks per token (dropped rows sort last as rank `ep`)
    ranks = np.where(kept, experts.astype(np.int64) // epr, ep)
    ranks.sort(axis=1)
    new_rank = np.ones_like(ranks, dtype=bool)
    new_rank[:, 1:] = ranks[:, 1:] != ranks[:, :-1]
    new_rank &= ranks < ep
    nodes = ranks // gpn
    new_node = np.ones_like(ranks, dtype=bool)
    new_node[:, 1:] = nodes[:, 1:] != nodes[:, :-1]
    new_node &= ranks < ep
    nodes_per_token = new_node.sum(axis=1).astype(np.int64)

    # Copy counts from two small histograms instead of per-copy index arrays:
    # H[l, q] = tokens whose source has in-node index l reaching rank q (once per token);
    # Cn[s, n] = tokens of source rank s reaching node n (once per token).
    local = (src % gpn)[:, None]
    H = np.bincount((local * ep + ranks)[new_rank], minlength=gpn * ep).reshape(gpn, ep)
    Cn = np.bincount((src[:, None] * n_nodes + nodes)[new_node], minlength=ep * n_nodes).reshape(ep, n_nodes)
    rank_tokens_received = H.sum(axis=0)
    # IB: one copy per distinct remote node, landing on the GPU with the source's in-node index
    s = np.arange(ep)
    Cn[s, s // gpn] = 0  # the source's own node is reached over NVLink only
    ib_sent = Cn.sum(axis=1)
    landing = np.arange(n_nodes)[None, :] * gpn + (s % gpn)[:, None]
    ib_received = np.bincount(landing.ravel(), weights=Cn.ravel(), minlength=ep).astype(np.int64)
    # NVLink: every distinct target rank other than the landing GPU (the source itself in its own node)
    q = np.arange(ep)
    fwd = H * ((q % gpn)[None, :] != np.arange(gpn)[:, None])
    forwarder = (q // gpn)[None, :] * gpn + np.arange(gpn)[:, None]
    nvlink_sent = np.bincount(forwarder.ravel(), weights=fwd.ravel(), minlength=ep).astype(np.int64)
    nvlink_received = fwd.sum(axis=0)
    return RoutingResult(group=group, tokens_per_rank=tokens_per_rank, top_k=k, experts=experts,
                         expert_rows=expert_rows, rank_rows=rank_rows, rank_rows_sent=rank_rows_sent,
                         rank_tokens_received=rank_tokens_received, nodes_per_token=nodes_per_token,
                         ib_sent=ib_sent, ib_received=ib_received, nvlink_sent=nvlink_sent,
                         nvlink_received=nvlink_received, bytes_per_token=bytes_per_token, dropped_rows=dropped)
