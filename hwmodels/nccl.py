"""NCCL's protocol choice on the fabric graph: LL, LL128 and Simple (and NVLS in an NVSwitch node).

NCCL prices a collective of n bytes under algorithm a and protocol p as ``latency[a][p] + n / algbw[a][p]`` and
runs the cheapest (src/graph/tuning.cc, figures and their provenance in ``data/nccl.toml``). Small messages are
latency-bound, so LL wins them (its hops cost 0.6 us on NVLink against Simple's 3.4 us) though it moves only
half the link's bytes; large ones run Simple at the link's full rate.

How this meets the graph model (``graph_network.Phase``, a phase costs ``bw_steps * n * share * coef +
lat_steps * latency``):

- Bandwidth. The graph's bandwidth term is Simple's: seconds per byte ``s = bw_steps * share * coef`` on the most
  loaded link. Its bus bandwidth is ``B = conv / s`` with NCCL's busbw-per-algbw ratio ``conv`` (ring: nsteps /
  nRanks = f(p-1)/p; tree: 2). Protocol p runs at ``B_p = min(factor_p * B, cap_p)`` (ring LL 0.5, LL128 0.92;
  tree LL 1/3.8, LL128 7/9 or 120/128; caps: NCCL's LL ceiling and per-channel LL128/tree ceilings), so its
  seconds per byte are ``conv / B_p``; Simple without a cap is exactly the graph's term, unchanged.
- Latency, counted once. The cluster presets' per-step latencies (NVLink 3.4 us, network 14 us) *are* NCCL's
  Ring/Simple hop figures, so for an NCCL collective they are replaced, not added to: a ring of p ranks on r
  nodes costs ``base[p] + (nsteps - nInter) * intra[p] + nInter * inter[p]`` with nInter = f(r-1) network hops
  (NCCL's ring formula), a tree ``base[p] + 2 ((ppn-1) intra[p] + log2(r) inter[p])``. What the graph knows
  beyond NCCL's one-switch network figure -- further switch hops of the slowest path (and the NVLink hop of a
  PXN route) -- is kept: ``extra = graph latency - preset network latency`` is added to every network hop.
- One phase is one NCCL call: a hierarchical all-reduce (NVLink reduce-scatter, per-rail all-reduce, NVLink
  all-gather) is three calls on sub-communicators, each with its base latency and its own protocol.
- NVLS (NVLink SHARP, Hopper and Blackwell NVSwitch nodes): offered beside the ring protocols for an all-reduce
  inside one node: busbw = 2 x efficiency x (channels-1)/channels x NVLink rate, latency the NVLS hop (25 us).
  Reduce-scatter and all-gather are not offered NVLS: NCCL's model gives them (ppn-1)/ppn of one direction's
  rate without the ring's p/(p-1) credit, so ring always beats it on the presets.
- Not NCCL: DeepEP's EP all-to-all keeps the graph's formula. Point-to-point sends (pipeline parallelism) and the
  flat all-to-all are NCCL send/recv, which tuning.cc does not model (NCCL runs them Simple above
  P2P_LL_THRESHOLD = 16 KiB per channel, src/enqueue.cc): they keep the graph's formula too.

Figures left out: the tree correction table for medium sizes, the 1.4x "plateau" latency of multi-node ring
all-reduce, PAT and CollNet. The SMs NCCL's channels hold are in ``hwmodels/nccl_sms.py``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).parent / "data" / "nccl.toml"
PROTOCOLS = ("LL", "LL128", "Simple")
US = 1e-6
GB = 1e9


@dataclass(frozen=True)
class Option:
    """One (algorithm, protocol) NCCL could run for a phase: ``latency + steps * nbytes / ranks / busbw`` seconds:
    the bus bytes a rank moves, nbytes x steps / ranks (NCCL's busbw / algbw ratio; ranks also carries a shard's
    1/q), at the bus bandwidth -- in the graph's own order of operations, so a buffer whose bus bytes overflow a
    float gives inf as the graph model does."""

    name: str          # "ring/LL", "tree/Simple", "nvls/Simple"
    steps: float       # ring: f(p-1); tree: 2; NVLS: 2(p-1)
    ranks: float       # ring and NVLS: p; tree: 1 (times q for a 1/q shard)
    busbw: float       # bytes/s
    latency: float     # seconds, base and every hop

    @property
    def per_byte(self) -> float:
        """Seconds per byte of nbytes."""
        return self.steps / self.ranks / self.busbw

    def time(self, nbytes: float) -> float:
        return self.latency + self.steps * nbytes / self.ranks / self.busbw


def best(options: tuple[Option, ...], nbytes: float) -> Option:
    """The option NCCL runs: least time (the first listed on a tie)."""
    return min(options, key=lambda o: o.time(nbytes))


@lru_cache(maxsize=None)
def load_tables(path: str = str(DATA)) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def arch_of(gpu: str) -> str | None:
    """NCCL architecture row of a GPU catalogue name, or None (not an NVIDIA GPU NCCL tunes)."""
    return load_tables()["gpu_arch"].get(gpu)


def _node_index(nodes: int) -> int:
    """NCCL's index2: 0 for one node, 1 for two, 2 for more."""
    return 0 if nodes <= 1 else 1 if nodes == 2 else 2


def _log2i(n: int) -> int:
    return int(math.floor(math.log2(n))) if n >= 1 else 0


class NcclTuning:
    """NCCL's tuner figures for one GPU architecture, on a fabric whose presets say ``nvlink_latency`` and
    ``network_latency`` per hop (seconds; the figures the graph's link latencies add up to)."""

    def __init__(self, arch: str, nvlink_latency: float, network_latency: float, *, nvls: bool = True) -> None:
        t = load_tables()
        if arch not in t["arch"]:
            raise ValueError(f"arch must be one of {tuple(t['arch'])}, got {arch!r}")
        self.arch, self.t, self.a = arch, t, t["arch"][arch]
        self.nvlink_latency, self.network_latency = nvlink_latency, network_latency
        self.nvls = nvls and self.a["nvls_efficiency"] > 0

    @classmethod
    def for_fabric(cls, spec, *, nvls: bool = True) -> NcclTuning | None:
        """Tuning for a ``topology.FabricSpec``, or None when its GPU is not one NCCL tunes."""
        arch = arch_of(spec.gpu) if spec is not None else None
        if arch is None:
            return None
        return cls(arch, spec.nvlink_latency, spec.ib_latency, nvls=nvls)

    # -------------------------------------------------------------------------------------------- figures
    def base(self, algo: str, proto: str) -> float:
        return self.t["base_latency_us"][algo][proto] * US

    def hop(self, link: str, algo: str, proto: str) -> float:
        return self.t["hop_latency_us"][link][algo][proto] * US

    def _caps(self, algo: str, nodes: int) -> dict[str, float]:
        """Bus-bandwidth ceilings (bytes/s) per protocol; inf where NCCL sets none."""
        i, ch = _node_index(nodes), self.t["channels"]["ring"]
        ll = self.a["ll_max_busbw_gb_s"][i] * GB
        if algo == "ring":
            return {"LL": ll, "LL128": ch * self.a["ring_ll128_per_channel_gb_s"][i] * GB, "Simple": math.inf}
        return {"LL": ll, "LL128": ch * self.a["tree_ll128_per_channel_gb_s"][i] * GB,
                "Simple": ch * self.a["tree_per_channel_gb_s"][i] * GB}

    def _factor(self, algo: str, proto: str, nodes: int) -> float:
        f = self.t["bandwidth_factor"][algo]
        if algo == "tree" and proto == "LL128" and nodes == 1:
            return f["LL128_one_node"]
        return f[proto]

    def _extra(self, nodes: int, graph_latency: float) -> float:
        """Path latency the graph knows beyond NCCL's one-switch network hop (further switches, a PXN hop)."""
        return max(0.0, graph_latency - self.network_latency) if nodes > 1 else 0.0

    # -------------------------------------------------------------------------------------------- options
    def ring(self, seconds_per_byte: float, steps_factor: int, p: int, nodes: int,
             graph_latency: float) -> tuple[Option, ...]:
        """Ring all-reduce (steps_factor 2) or reduce-scatter / all-gather (1) of p ranks on ``nodes`` nodes whose
        Simple bandwidth term is ``seconds_per_byte`` per byte of nbytes (the graph's)."""
        if p <= 1:
            return ()
        nsteps = steps_factor * (p - 1)
        n_inter = steps_factor * (nodes - 1) if nodes > 1 else 0
        ppn = p / nodes
        conv = nsteps / p
        caps, extra = self._caps("ring", nodes), self._extra(nodes, graph_latency)
        net_overhead = self.t["net_overhead"]["us"] * US
        out = []
        for proto in PROTOCOLS:
            busbw = min(self._factor("ring", proto, nodes) * conv / seconds_per_byte, caps[proto])
            intra = self.hop("nvlink", "ring", proto)
            if nodes > 1:
                intra = max(intra, net_overhead * (self.t["net_overhead"]["simple_factor"] if proto == "Simple" else 1))
            inter = self.hop("net", "tree" if ppn == 1 else "ring", proto) + extra
            lat = self.base("ring", proto) + (nsteps - n_inter) * intra + n_inter * inter
            out.append(Option(f"ring/{proto}", nsteps, p, busbw, lat))
        return tuple(out)

    def tree(self, seconds_per_byte: float, p: int, nodes: int, graph_latency: float) -> tuple[Option, ...]:
        """Tree all-reduce of p ranks on ``nodes`` nodes (NCCL: busbw = 2 x algbw; latency
        base + 2((ppn-1) intra + log2(nodes) inter))."""
        if p <= 1:
            return ()
        ppn = max(1, p // nodes)
        caps, extra = self._caps("tree", nodes), self._extra(nodes, graph_latency)
        out = []
        for proto in PROTOCOLS:
            busbw = min(self._factor("tree", proto, nodes) * 2.0 / seconds_per_byte, caps[proto])
            intra, inter = self.hop("nvlink", "tree", proto), self.hop("net", "tree", proto) + extra
            lat = self.base("tree", proto) + 2 * ((ppn - 1) * intra + _log2i(nodes) * inter)
            out.append(Option(f"tree/{proto}", 2, 1, busbw, lat))
        return tuple(out)

    def nvls_all_reduce(self, link_seconds_per_byte: float, p: int) -> Option | None:
        """NVLS all-reduce of p ranks in one NVSwitch node whose GPU link takes ``link_seconds_per_byte``, or None
        where the architecture has no NVLS. busbw = 2 eff (ch-1)/ch x link rate; bus bytes 2(p-1)/p per byte."""
        if not self.nvls or p <= 1:
            return None
        ch = self.t["channels"]["nvls"][self.arch]
        busbw = 2.0 * self.a["nvls_efficiency"] * (ch - 1) / ch / link_seconds_per_byte
        return Option("nvls/Simple", 2 * (p - 1), p, busbw,
                      self.base("nvls", "Simple") + self.hop("nvlink", "nvls", "Simple"))
