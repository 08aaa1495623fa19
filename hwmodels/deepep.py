"""DeepEP's normal dispatch/combine kernels as they run beside compute: bandwidth from the SMs they are given, and
the time they stay resident beyond moving their bytes (issue 15, item 3).

One EP all-to-all call on a rank (`DeepEPCall`) is resident on the communication stream for

    resident = notify + transfer(mean rows) + peer wait

- transfer: the slower of the fabric's wire time (the graph or alpha-beta network model, at the links' rate) and
  the kernels' own rate, DeepEP's published bottleneck bandwidth for the EP size (`data/comm_kernels.toml`
  [deepep.anchor], measured with 24 SMs) scaled by the share of that rate the given SMs reach:
      sm_bandwidth_fraction(k) = min(1, k / saturating_sms)
  Two published points fix the curve: the DeepSeek-V3 report (sec. 3.2.2: 20 SMs suffice to saturate IB and
  NVLink; so 20 and the README's 24 reach the same rate) and zero SMs moving nothing. Between them,
  Assumption: proportional (DeepEP's internode kernels run num_sms / 2 channels, each a sender and a forwarder
  SM moving its share of the tokens, csrc/kernels/internode.cu), so bandwidth is monotone and bounded by the
  saturated rate. The bytes are counted as DeepEP counts them (tests/test_internode.py): internode, one per
  (token, target node) pair, the local node included; intranode, one per (token, target rank) pair.
- peer wait: a call ends on every rank when the busiest receiver is done, so the transfer of the busiest rank's
  rows (kept imbalance x the mean, `OpOptions.kept_imbalance`) sets it: the excess over the mean rows'.
- notify: the size exchange and barrier with every peer before each transfer (cached_notify / notify_dispatch).
  Its only measurement is DeepSeek's traced pair (EP64 over 8 nodes, 2.06 ms a call), and there it is mostly the
  wait for peers still computing: under DualPipe each rank launches its communication ahead, beside the other
  chunk's compute, and the notify kernel sits resident until the slowest peer arrives. So it is a quantity of a
  calibration profile (`comm.deepep_notify_per_call_ms`, written by `calibrate trace`; the datasheet profile has
  none) and is charged only to EP calls inside an overlapped F&B pair, the setting it was measured in
  (`HardwareCoster._add`). Assumption: where compute and communication take turns the ranks arrive together and
  the barrier costs microseconds (not charged), and an EP group inside one node is not charged either.

- kernel time ratio: DeepEP's calls as a trace measured them against this model of them, per kernel (the
  dispatch kernel carries the forward dispatch and the combine's backward, the combine kernel the forward combine
  and the dispatch's backward: `kernel_of`). A calibration profile's figure (`comm.deepep_kernel_time_ratio`,
  written by `calibrate trace` from the traced pair's dispatch and combine kernel time over our transfers of the
  same calls, notify excluded), as its GEMM time ratios are; the datasheet profile has none (1). It scales the
  transfer and the peer wait.

The compute side of the trade-off is `ParallelSpec.compute_sm_fraction`: GEMMs keep sms - comm_sms. Together they
make `comm_sms` a real choice: fewer SMs stretch the transfers (exposing them once the communication stream
outlasts the compute it hides under), more SMs slow every kernel of the compute stream.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data" / "comm_kernels.toml"
KINDS = ("dispatch", "combine")


@dataclass(frozen=True)
class DeepEPCall:
    """One dispatch or combine call on a rank, seconds. `resident_s` is what the communication stream holds."""
    notify_s: float
    transfer_s: float      # the mean rank's rows, at the slower of the fabric and the kernels' SM-limited rate
    peer_wait_s: float     # the busiest receiver's excess rows at the same rate
    wire_s: float          # the busiest rank's rows at the fabric's rate alone (what the network model prices)

    @property
    def resident_s(self) -> float:
        return self.notify_s + self.transfer_s + self.peer_wait_s

    @property
    def beyond_wire_s(self) -> float:
        return self.resident_s - self.wire_s


@dataclass(frozen=True)
class DeepEPKernels:
    """DeepEP normal kernels: the saturating SM count, the published bandwidth anchors, the notify time."""
    saturating_sms: int                               # DeepSeek-V3 report sec. 3.2.2
    measured_sms: int                                 # SMs of the README's figures (tests: num_sms = 24)
    intranode: tuple[float, float]                    # EP8, NVLink: (dispatch, combine) GB/s
    internode: tuple[tuple[int, float, float], ...]   # (ep, dispatch, combine) GB/s, RDMA, ascending ep
    notify_s: float = 0.0                             # per call in an overlapped pair (a profile's figure)
    time_ratio: tuple[float, float] = (1.0, 1.0)      # (dispatch, combine) kernels, traced over modelled

    def __post_init__(self):
        if self.saturating_sms <= 0 or self.measured_sms < self.saturating_sms:
            raise ValueError(f"saturating_sms must be in 1..measured_sms ({self.measured_sms}), got "
                             f"{self.saturating_sms}: the anchors are saturated rates")
        if self.notify_s < 0:
            raise ValueError(f"notify_per_call_ms must be >= 0, got {self.notify_s * 1e3}")
        if len(self.time_ratio) != 2 or not all(0 < r < math.inf for r in self.time_ratio):
            raise ValueError(f"deepep_kernel_time_ratio must hold a finite ratio > 0 for dispatch and for combine, "
                             f"got {self.time_ratio!r}")

    @classmethod
    def load(cls) -> "DeepEPKernels":
        return _load()

    # -- bandwidth ---------------------------------------------------------------------------------------------
    def sm_bandwidth_fraction(self, sms: int) -> float:
        """Share of the saturated rate the kernels reach on `sms` SMs: min(1, sms / saturating_sms)."""
        if not isinstance(sms, int) or sms < 1:
            raise ValueError(f"comm_sms must be a whole number >= 1 for DeepEP's kernels, got {sms!r}")
        return min(1.0, sms / self.saturating_sms)

    def anchor_gbps(self, ep: int, kind: str, internode: bool) -> float:
        """DeepEP's measured bottleneck bandwidth (GB/s, its counting) for an EP group of `ep` ranks: the
        intranode row inside a node, else the largest measured internode size not above ep (the smallest
        measured one below it)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if ep < 2:
            raise ValueError(f"ep must be >= 2 for an all-to-all, got {ep}")
        col = KINDS.index(kind)
        if not internode:
            return self.intranode[col]
        row = self.internode[0]
        for r in self.internode:
            if r[0] <= ep:
                row = r
        return row[1 + col]

    def kernel_rate(self, ep: int, kind: str, internode: bool, sms: int) -> float:
        """Bytes per second (DeepEP's counting) the kernels move on `sms` SMs."""
        return self.anchor_gbps(ep, kind, internode) * 1e9 * self.sm_bandwidth_fraction(sms)

    # -- one call ----------------------------------------------------------------------------------------------
    def call(self, wire_s: float, counted_bytes: float, ep: int, kind: str, internode: bool, sms: int,
             imbalance: float = 1.0, notify: bool = True) -> DeepEPCall:
        """A call whose busiest rank's rows take `wire_s` on the fabric and count `counted_bytes` as DeepEP counts
        them; `imbalance` (>= 1) is the busiest rank's rows over the mean's; `notify`: charge the notify (an
        internode call inside an overlapped pair)."""
        if not wire_s >= 0 or not counted_bytes >= 0:
            raise ValueError(f"wire_s and counted_bytes must be >= 0, got {wire_s!r}, {counted_bytes!r}")
        if not imbalance >= 1.0:
            raise ValueError(f"imbalance must be >= 1 (busiest rank's rows over the mean), got {imbalance!r}")
        busiest = max(wire_s, counted_bytes / self.kernel_rate(ep, kind, internode, sms))
        busiest *= self.time_ratio[KINDS.index(kind)]
        mean = busiest / imbalance
        return DeepEPCall(notify_s=self.notify_s if internode and notify else 0.0, transfer_s=mean,
                          peer_wait_s=busiest - mean,
                          wire_s=wire_s)


def kernel_of(collective: str, phase: str) -> str:
    """The DeepEP kernel that runs an EP all-to-all op: the forward's dispatch and the combine's backward (tokens,
    then their output gradients, travelling to the experts) run the dispatch kernel; the forward's combine and
    the dispatch's backward (back to the tokens' ranks) the combine kernel."""
    if collective not in ("ep_dispatch", "ep_combine"):
        raise ValueError(f"collective must be ep_dispatch or ep_combine, got {collective!r}")
    return "dispatch" if (collective == "ep_dispatch") == (phase == "F") else "combine"


def deepep_saturating_sms() -> int:
    """SMs from which DeepEP's kernels reach their saturated rate (DeepSeek-V3 report sec. 3.2.2: 20)."""
    return _load().saturating_sms


def ep_sm_slowdown(parallel) -> float:
    """How much longer DeepEP's kernels take to move their bytes than at their saturated rate on the
    `parallel.comm_sms` SMs they run on; comm_sms 0 means no DeepEP kernels (the all-to-alls keep the fabric's
    wire time): no slowdown."""
    if parallel.comm_sms <= 0:
        return 1.0
    return 1.0 / _load().sm_bandwidth_fraction(parallel.comm_sms)


def distinct_targets(targets: int, experts: int, top_k: int) -> float:
    """Expected distinct targets (ranks or nodes) a token's top_k experts fall on, its experts uniform over
    `experts` split evenly over `targets`: targets x (1 - C(experts - experts/targets, k) / C(experts, k))."""
    if targets < 1 or experts % targets or not 1 <= top_k <= experts:
        raise ValueError(f"targets ({targets}) must divide experts ({experts}) and top_k ({top_k}) be in "
                         f"1..experts")
    per = experts // targets
    return targets * (1.0 - math.comb(experts - per, top_k) / math.comb(experts, top_k))


def counted_bytes(tokens: float, bytes_per_token: float, internode: bool, nodes_per_token: float,
                  ranks_per_token: float) -> float:
    """Bytes of one call as DeepEP's tests count them: internode (token, node) pairs, intranode (token, rank)."""
    return tokens * bytes_per_token * (nodes_per_token if internode else ranks_per_token)


@lru_cache(maxsize=1)
def _load() -> DeepEPKernels:
    with _DATA.open("rb") as f:
        d = tomllib.load(f)["deepep"]
    anchor = d["anchor"]
    release = anchor["release"]
    if release not in anchor or not isinstance(anchor[release], dict):
        raise ValueError(f"comm_kernels.toml [deepep.anchor] release must name one of its tables, got {release!r}")
    rows = sorted((int(k[2:]), float(v[0]), float(v[1])) for k, v in anchor[release].items()
                  if k.startswith("ep") and k[2:].isdigit())
    intra = [r for r in rows if r[0] <= 8]
    inter = tuple(r for r in rows if r[0] > 8)
    if len(intra) != 1 or not inter:
        raise ValueError("comm_kernels.toml [deepep.anchor] needs one intranode row (ep8) and internode rows")
    return DeepEPKernels(saturating_sms=int(d["saturating_sms"]), measured_sms=int(anchor["measured_sms"]),
                         intranode=(intra[0][1], intra[0][2]), internode=inter)
