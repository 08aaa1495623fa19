"""NCCL's protocol choice on the fabric graph (hwmodels/nccl.py) against hand calculations from NCCL's tuner
figures (src/graph/tuning.cc, commit 5067397c; typed here from the source, not read from the data file).

dgx-h100: NVLink 450 GB/s x 0.8 = 360 GB/s per direction, so an 8-GPU ring all-reduce (2 x 7 = 14 steps, busbw =
algbw x 14/8) has, per protocol (bus bandwidth; latency = base + 14 hops):
    LL      min(0.5 x 360, 141 [Hopper one-node LL cap]) = 141 GB/s;   6.6 + 14 x 0.6 = 15.0 us
    LL128   0.92 x 360 = 331.2 GB/s (cap 16 ch x 36.7 = 587.2, above);   14.0 + 14 x 1.9 = 40.6 us
    Simple  360 GB/s;                                                   8.4 + 14 x 3.4 = 56.0 us
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.cluster import CommGroup
from gpuhours.hwmodels.graph_network import GraphNetwork
from gpuhours.hwmodels.nccl import DATA, NcclTuning, load_tables
from gpuhours.hwmodels.fabric_presets import load_cluster_preset

LINK = 360e9
CONV = 14 / 8                       # busbw / algbw of an 8-rank all-reduce ring
BUS = {"LL": 141e9, "LL128": 0.92 * LINK, "Simple": LINK}
LAT = {"LL": 15.0e-6, "LL128": 40.6e-6, "Simple": 56.0e-6}
NVLS_BUS = 2 * 0.85 * 15 / 16 * LINK   # 2 x nvlsEfficiency(Hopper) x (16-1)/16 channels x link = 573.75 GB/s
NVLS_LAT = 25e-6
G8 = CommGroup(8, 8)


@pytest.fixture(scope="module")
def h100():
    return GraphNetwork(load_cluster_preset("dgx-h100", gpus=64))


@pytest.fixture(scope="module")
def h100_graph_only():
    return GraphNetwork(load_cluster_preset("dgx-h100", gpus=64), nccl=False)


def ring_time(proto: str, n: float) -> float:
    return LAT[proto] + n * CONV / BUS[proto]


def phase_of(net, kind, group, algorithm):
    (ph,) = net.phases(kind, net.groups_for(group), algorithm)
    return ph


def test_small_all_reduce_is_nccls_ll_latency(h100):
    """1 KiB: time = the LL latency 15.0 us plus 1024 x 1.75 / 141e9 = 0.0127 us: within 0.1% of 15.0 us."""
    for algorithm in ("ring", "auto"):
        t = h100.all_reduce(1024, G8, algorithm)
        assert t == pytest.approx(15.0e-6, rel=1e-3)
        assert phase_of(h100, "all_reduce", G8, algorithm).protocol(1024) == "ring/LL"
    assert h100.all_reduce(1024, G8, "ring") == pytest.approx(ring_time("LL", 1024), rel=1e-12)


def test_ring_protocol_switches_where_the_closed_forms_cross(h100):
    """LL -> LL128 where 15.0 + 1.75 n / 141 = 40.6 + 1.75 n / 331.2 (GB/s, us): n = 25.6e-6 / (1.75 (1/141e9 -
    1/331.2e9)) = 3.592 MB; LL128 -> Simple where 40.6 + 1.75 n / 331.2 = 56.0 + 1.75 n / 360: n = 15.4e-6 /
    (1.75 (1/331.2e9 - 1/360e9)) = 36.43 MB."""
    ll_to_ll128 = 25.6e-6 / (1.75 * (1 / 141e9 - 1 / 331.2e9))
    ll128_to_simple = 15.4e-6 / (1.75 * (1 / 331.2e9 - 1 / 360e9))
    assert ll_to_ll128 == pytest.approx(3.5917e6, rel=1e-4)
    assert ll128_to_simple == pytest.approx(3.6432e7, rel=1e-4)
    ph = phase_of(h100, "all_reduce", G8, "ring")
    assert ph.protocol(0.99 * ll_to_ll128) == "ring/LL"
    assert ph.protocol(1.01 * ll_to_ll128) == "ring/LL128"
    assert ph.protocol(0.99 * ll128_to_simple) == "ring/LL128"
    assert ph.protocol(1.01 * ll128_to_simple) == "ring/Simple"
    for n in (1e3, 1e5, 1e6, 1e7, 1e8, 1e9):
        assert ph.time(n) == pytest.approx(min(ring_time(p, n) for p in LAT), rel=1e-9)


def test_nvls_takes_over_from_ll_on_a_hopper_nvswitch_node(h100):
    """auto offers NVLS: algbw = 573.75 GB/s x 8/14 = 327.86 GB/s after 25 us. It beats LL where 15.0 + 1.75 n / 141
    = 25 + n / 327.86 (GB/s, us): n = 10e-6 / (1.75/141e9 - 14/(8 x 573.75e9)) = 1.068 MB; LL128 (40.6 us, slower
    rate) never wins."""
    cross = 10e-6 / (1.75 / 141e9 - 14 / (8 * NVLS_BUS))
    assert cross == pytest.approx(1.0682e6, rel=1e-3)
    ph = phase_of(h100, "all_reduce", G8, "auto")
    assert ph.protocol(0.99 * cross) == "ring/LL"
    assert ph.protocol(1.01 * cross) == "nvls/Simple"
    n = 1e9
    assert ph.time(n) == pytest.approx(NVLS_LAT + n * 14 / 8 / NVLS_BUS, rel=1e-9)


def test_busbw_rises_with_size_towards_the_link_rate(h100):
    """busbw = n / t x 2(p-1)/p rises monotonically with n; the ring approaches 360 GB/s (1% at 10 GB), NVLS
    its 573.75 GB/s."""
    sizes = [2.0 ** k for k in range(10, 35)]
    for algorithm, limit in (("ring", LINK), ("auto", NVLS_BUS)):
        busbw = [n / h100.all_reduce(n, G8, algorithm) * CONV for n in sizes]
        assert all(b2 > b1 for b1, b2 in zip(busbw, busbw[1:]))
        assert busbw[-1] < limit
        assert h100.all_reduce(1e10, G8, algorithm) * limit / CONV == pytest.approx(1e10, rel=1e-2)


def test_large_messages_keep_the_graphs_bandwidth_term(h100, h100_graph_only):
    """Simple moves bytes at the graph's rate: at 1 GB the ring differs from the graph-only model by the latencies
    alone -- NCCL's 8.4 + 14 x 3.4 us against the preset's 14 x 3.4 us: exactly the 8.4 us base."""
    n = 1e9
    assert phase_of(h100, "all_reduce", G8, "ring").protocol(n) == "ring/Simple"
    diff = h100.all_reduce(n, G8, "ring") - h100_graph_only.all_reduce(n, G8, "ring")
    assert diff == pytest.approx(8.4e-6, rel=1e-6)
    diff_rs = h100.reduce_scatter(n, G8) - h100_graph_only.reduce_scatter(n, G8)
    assert diff_rs == pytest.approx(8.4e-6, rel=1e-6)     # 7 hops each, both at 3.4 us


def test_one_rank_per_node_ring_uses_the_tree_network_hop(h100, h100_graph_only):
    """8 ranks on 8 nodes (same leaf: the path is the preset's 14 us): NCCL takes the Tree NET hop for ppn = 1 --
    Simple 14 us (so only the 8.4 us base differs from the graph-only model at 1 GB), LL 5.0 us: a 1 KiB
    reduce-scatter costs 6.6 + 7 x 5.0 = 41.6 us."""
    g = CommGroup(8, 1)
    diff = h100.reduce_scatter(1e9, g) - h100_graph_only.reduce_scatter(1e9, g)
    assert diff == pytest.approx(8.4e-6, rel=1e-6)
    ph = phase_of(h100, "reduce_scatter", g, "auto")
    assert ph.protocol(1024) == "ring/LL"
    assert ph.time(0.0) == pytest.approx(41.6e-6, rel=1e-9)


def test_two_node_ring_counts_nccls_intra_and_inter_hops(h100):
    """16 ranks, 8 per node on 2 nodes, ring reduce-scatter: 15 steps, one of them between nodes. Intra hops are
    raised to the 1 us network overhead (3 us for Simple), the inter hop is the ring NET figure plus what the graph
    knows beyond the preset's one-switch 14 us: the ring leaves node 0 at local GPU 7 for local GPU 0 of node 1,
    a PXN route (NVLink to node 0's GPU 0 first: 3.4 us), same leaf. LL 6.6 + 14 x max(0.6, 1) + (2.7 + 3.4) =
    26.7 us; LL128 14.0 + 14 x 1.9 + (4.0 + 3.4) = 48.0 us; Simple 8.4 + 14 x max(3.4, 3) + (14 + 3.4) = 73.4 us."""
    ph = phase_of(h100, "reduce_scatter", CommGroup(16, 8), "ring")
    assert ph.latency == pytest.approx(14e-6 + 3.4e-6, rel=1e-9)   # the graph's slowest path
    lat = {o.name: o.latency for o in ph.options}
    assert lat["ring/LL"] == pytest.approx(26.7e-6, rel=1e-9)
    assert lat["ring/LL128"] == pytest.approx(48.0e-6, rel=1e-9)
    assert lat["ring/Simple"] == pytest.approx(73.4e-6, rel=1e-9)


def test_hierarchical_all_reduce_is_three_nccl_calls(h100):
    """64 ranks on 8 nodes: NVLink reduce-scatter, per-rail all-reduce, NVLink all-gather, each its own protocol."""
    phases = h100.phases("all_reduce", h100.groups_for(CommGroup(64, 8)), "auto")
    assert len(phases) == 3
    assert all(ph.protocol(1024) == "ring/LL" for ph in phases)
    assert all(ph.protocol(1e10) == "ring/Simple" for ph in phases)


def test_deepep_and_p2p_are_not_nccl_collectives(h100, h100_graph_only):
    assert h100.ep_all_to_all(4096, 7392, 8, 4, CommGroup(64, 8)) == \
        h100_graph_only.ep_all_to_all(4096, 7392, 8, 4, CommGroup(64, 8))
    for intra in (True, False):
        assert h100.p2p(1e6, intra) == h100_graph_only.p2p(1e6, intra)
    assert h100.all_to_all(1e6, G8) == h100_graph_only.all_to_all(1e6, G8)


def test_ampere_has_no_nvls_and_amd_is_not_tuned():
    a100 = GraphNetwork(load_cluster_preset("dgx-a100", gpus=16))
    ph = phase_of(a100, "all_reduce", G8, "auto")
    assert {o.name for o in ph.options} == {"ring/LL", "ring/LL128", "ring/Simple"}
    spec = load_cluster_preset("dgx-h100", gpus=16)
    assert NcclTuning.for_fabric(dataclasses.replace(spec, gpu="mi300x")) is None
    with pytest.raises(ValueError, match="arch must be one of"):
        NcclTuning("volta", 3.4e-6, 14e-6)


def test_data_file_carries_its_provenance():
    t = load_tables()
    assert "5067397c2676d5aed50042fc39e5c8ee96eb0027" in t["source"]
    text = DATA.read_text()
    for key in ("source_base_latency", "source_hop_latency", "source_bandwidth_factor", "source_arch",
                "source_channels"):
        assert f"{key} = " in text, key
    assert t["bandwidth_factor"]["tree"]["LL"] == pytest.approx(1 / 3.8)
    assert t["bandwidth_factor"]["tree"]["LL128"] == pytest.approx(120 / 128)
    assert math.isclose(t["bandwidth_factor"]["ring"]["LL128"], 0.92)


def test_cli_prints_the_protocol():
    runner = CliRunner()
    for size, proto in (("1K", "ring/LL"), ("1G", "nvls/Simple")):
        r = runner.invoke(app, ["collective", "all_reduce", "--cluster", "dgx-h100", "--group-size", "8",
                                "--bytes", size])
        assert r.exit_code == 0, r.output
        assert f"NCCL protocol: {proto}" in r.output
    r = runner.invoke(app, ["collective", "all_reduce", "--cluster", "dgx-h100", "--group-size", "8",
                            "--algorithm", "ring", "--sizes", "1K,1M,1G"])
    assert r.exit_code == 0, r.output
    assert [line.split()[-1] for line in r.output.splitlines()[2:]] == ["ring/LL", "ring/LL", "ring/Simple"]
