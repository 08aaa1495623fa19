"""Fabric presets (DGX A100/H100/H200 SuperPOD, Llama-3-style RoCE, GB200 NVL72), automatic tier count, --tiers,
and a user's own cluster file (--cluster FILE).

Expected figures come from the sources cited in hwmodels/data/clusters.toml (NVIDIA DGX SuperPOD reference
architectures' switch-count tables, the Llama 3 paper's network section), worked by hand in the comments.
"""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.graph_network import GraphNetwork
from gpuhours.hwmodels.fabric_presets import DATA_FILE, list_cluster_presets, load_cluster_file, load_cluster_preset
from gpuhours.hwmodels.topology import FabricSpec, build_topology, describe, leaf_of_nic

runner = CliRunner()
NEW_PRESETS = ("dgx-a100", "dgx-h100", "dgx-h200", "roce-h100", "gb200-nvl72")


def _presets_toml() -> dict:
    with DATA_FILE.open("rb") as f:
        return tomllib.load(f)["preset"]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)   # a TOML basic string is a JSON string for the characters used here


def _write_cluster(path, table: dict, wrap: bool = False) -> None:
    lines = (["[cluster]"] if wrap else []) + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- every preset
def test_all_presets_listed():
    assert set(NEW_PRESETS) | {"deepseek-h800"} <= set(list_cluster_presets())


@pytest.mark.parametrize("name, gpus", [(n, g) for n in ("deepseek-h800", "dgx-a100", "dgx-h100", "dgx-h200",
                                                           "roce-h100") for g in (8, 1024, 16384)]
                         + [("gb200-nvl72", g) for g in (72, 1152, 16344)])
def test_every_preset_builds_from_its_smallest_size_to_16k(name, gpus):
    spec = load_cluster_preset(name, gpus=gpus)
    d = describe(build_topology(spec))
    per_node = 72 if name == "gb200-nvl72" else 8
    assert (d["gpus"], d["nodes"], d["nics"]) == (gpus, gpus // per_node, gpus)
    assert d["bisection_Bps"] > 0
    assert dict(spec.sources)   # every preset carries its sources


def test_nvl72_sizes_must_be_whole_racks():
    # 16,384 = 227 racks x 72 + 40: not whole racks; 16,344 = 227 racks is the largest NVL72 size up to 16,384
    with pytest.raises(ValueError, match="gpus=16384") as exc:
        load_cluster_preset("gb200-nvl72", gpus=16384)
    assert "\n" not in str(exc.value)
    r = runner.invoke(app, ["topology", "--cluster", "gb200-nvl72", "--gpus", "100"])
    assert r.exit_code == 2 and "gpus" in r.output and r.output.startswith("error:")


# ---------------------------------------------------------------------------------------------- tiers
def test_tier_count_follows_the_size():
    # DGX SuperPOD: 8 rails, 32 nodes per leaf (SU), 64-port switches. One spine layer reaches 64 leaves per
    # plane = 64 / 8 rails = 8 SUs = 256 nodes = 2,048 GPUs: up to there two tiers; 4,096 GPUs = 128 leaves: three.
    tiers = {g: load_cluster_preset("dgx-h100", gpus=g).tiers for g in (8, 1024, 2048, 4096, 16384)}
    assert tiers == {8: 2, 1024: 2, 2048: 2, 4096: 3, 16384: 3}
    assert load_cluster_preset("dgx-h200", gpus=16384).tiers == 3


@pytest.mark.parametrize("gpus, leaf, spine, core", [
    # NVIDIA DGX SuperPOD RA (DGX B200 edition, same SU and switches), "Larger DGX SuperPOD component counts"
    (1024, 32, 16, 0), (2048, 64, 32, 0), (4096, 128, 128, 64), (8192, 256, 256, 128), (16384, 512, 512, 256),
])
def test_superpod_switch_counts_match_the_reference_table(gpus, leaf, spine, core):
    sw = describe(build_topology(load_cluster_preset("dgx-h100", gpus=gpus)))["switches"]
    assert (sw["leaf"], sw["spine"], sw["core"]) == (leaf, spine, core)


def test_forced_tiers_and_auto_again():
    forced = load_cluster_preset("dgx-h100", gpus=1024, tiers=3)
    assert forced.tiers == 3 and not forced.auto_tiers
    assert forced.with_(gpus=512).tiers == 3               # a forced count survives a resize
    again = forced.with_(tiers="auto")
    assert again.tiers == 2 and again.auto_tiers
    assert again.with_(gpus=16384).tiers == 3              # auto re-chooses on resize
    with pytest.raises(ValueError, match="tiers=3"):
        build_topology(load_cluster_preset("dgx-h100", gpus=16384, tiers=2))


def test_cli_tiers_option():
    auto = json.loads(runner.invoke(app, ["topology", "--cluster", "dgx-h100", "--gpus", "2048", "--json"]).stdout)
    assert auto["switches"]["core"] == 0
    r = runner.invoke(app, ["topology", "--cluster", "dgx-h100", "--gpus", "2048", "--tiers", "3", "--json"])
    assert r.exit_code == 0, r.output
    # three tiers: pods of 32 leaves -> 2 pods; a core tier appears, the bisection stays non-blocking
    d = json.loads(r.stdout)
    assert d["switches"]["core"] > 0 and d["bisection_Bps"] == pytest.approx(2048 * 50e9 / 2)
    r = runner.invoke(app, ["topology", "--cluster", "dgx-h100", "--gpus", "4096", "--tiers", "2"])
    assert r.exit_code == 2 and "tiers=3" in r.output
    r = runner.invoke(app, ["collective", "all_reduce", "--cluster", "dgx-h100", "--gpus", "64", "--tiers", "3",
                            "--bytes", "1G", "--json"])
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------- DGX A100 / H200
def test_dgx_a100_superpod():
    spec = load_cluster_preset("dgx-a100")
    assert spec.gpu == "a100-80gb-sxm" and spec.gpus == 1120
    assert spec.nic_bw == pytest.approx(200e9 / 8)                 # HDR 200 Gb/s
    assert spec.nvlink_bw == pytest.approx(0.8 * 300e9)            # NVLink 3: 600 GB/s bidirectional
    d = describe(build_topology(spec))
    # 140 nodes = 7 SUs of 20; one 40-port leaf per rail per SU, 20 down: 7 x 8 = 56 leaves; a spine layer of
    # 40-port switches reaches 40 leaves, so 56 need a third tier
    assert d["switches"]["leaf"] == 56 and spec.tiers == 3 and d["switches"]["core"] > 0
    assert d["bisection_Bps"] == pytest.approx(1120 * 25e9 / 2)
    assert load_cluster_preset("dgx-a100", gpus=800).tiers == 2   # 5 SUs = 40 leaves: two tiers


def test_dgx_h200_is_the_h100_fabric_with_h200():
    h100, h200 = load_cluster_preset("dgx-h100"), load_cluster_preset("dgx-h200")
    assert h200.gpu == "h200-sxm"
    assert h200.with_(name=h100.name, gpu=h100.gpu, sources=h100.sources) == h100


def test_dgx_a100_estimate_runs():
    r = runner.invoke(app, ["estimate", "--gpu", "a100-80gb", "--gpus", "1024", "--cluster", "dgx-a100", "--pp", "8",
                            "--tp", "8", "--precision", "bf16", "--model", "llama-3-70b", "--schedule", "1f1b",
                            "--tokens", "1T", "--batch", "1024", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["gpu_hours"] > 0


# ---------------------------------------------------------------------------------------------- RoCE
def test_roce_racks_pods_and_oversubscribed_top():
    spec = load_cluster_preset("roce-h100", gpus=6144)
    # ToR of 16 GPUs = two 8-GPU servers
    assert leaf_of_nic(spec, 0) == leaf_of_nic(spec, 15) != leaf_of_nic(spec, 16)
    # one pod (192 racks x 16 = 3,072 GPUs) is two tiers with full bisection
    pod = load_cluster_preset("roce-h100", gpus=3072)
    dp = describe(build_topology(pod))
    assert pod.tiers == 2 and dp["bisection_Bps"] == pytest.approx(3072 * 50e9 / 2)
    # two pods: a third tier, 1:7 above the pods -> per GPU 50 GB/s within the pod, 50/7 GB/s above it
    d = describe(build_topology(spec))
    assert spec.tiers == 3
    assert d["tier_bandwidth_Bps"]["leaf_spine"] == pytest.approx(6144 * 50e9)
    assert d["tier_bandwidth_Bps"]["spine_core"] == pytest.approx(6144 * 50e9 / 7)
    assert d["bisection_Bps"] == pytest.approx(6144 * 50e9 / 7 / 2)


def test_roce_cross_pod_traffic_is_seven_times_slower():
    net = GraphNetwork(load_cluster_preset("roce-h100", gpus=6144))
    # GPU g of pod 0 sends to GPU g of pod 1, every GPU at once: the core tier carries 1/7 of the NIC capacity
    flows = [(g, g + 3072, 1.0) for g in range(3072)]
    cross = net.price_flows(flows).bandwidth_s
    inside = net.price_flows([(g, (g + 1536) % 3072, 1.0) for g in range(3072)]).bandwidth_s
    assert cross == pytest.approx(7 * inside, rel=1e-6)
    assert inside == pytest.approx(1 / 50e9, rel=1e-6)


# ---------------------------------------------------------------------------------------------- GB200 NVL72
def test_nvl72_rack_is_one_nvlink_domain():
    spec = load_cluster_preset("gb200-nvl72", gpus=144)
    assert spec.gpu == "gb200" and spec.gpus_per_node == 72
    assert spec.nvlink_bw == pytest.approx(0.8 * 900e9) and spec.nic_bw == pytest.approx(50e9)
    d = describe(build_topology(spec))
    assert d["nodes"] == 2 and d["switches"]["nvswitch"] == 2
    net = GraphNetwork(spec)
    rack = list(range(64))
    loads = net.link_loads([(a, b, 1.0) for a in rack for b in rack if a != b])
    used = {net.graph.edges[e]["kind"] for e, load in zip(net.edges, loads) if load > 0}
    assert used == {"nvlink"}        # an all-to-all among 64 GPUs of one rack never touches a NIC
    # ... while GPU 0 to GPU 72 (next rack, same rail) goes through the NICs
    assert {net.graph.edges[net.edges[i]]["kind"] for i in net.route(0, 72).links} == {"pcie", "ib"}
    t = net.collective_time("all_to_all", 1e9, [rack])
    # flat all-to-all: each GPU sends 63/64 of 1 GB over its own NVLink port at 720 GB/s
    assert t == pytest.approx(63 / 64 * 1e9 / 720e9, rel=0.05)


def test_nvl72_scalable_unit_leaves():
    # SU = 8 racks = 576 NICs; 64-port leaves with 32 down: 576 / 32 = 18 leaves, 18 x 32 / 64 = 9 spines
    d = describe(build_topology(load_cluster_preset("gb200-nvl72", gpus=576)))
    assert (d["switches"]["leaf"], d["switches"]["spine"], d["switches"]["core"]) == (18, 9, 0)
    spec = load_cluster_preset("gb200-nvl72", gpus=576)
    # rail-aligned: GPU r of every rack of the SU shares a leaf (rails 0-3 on leaf 0)
    assert len({leaf_of_nic(spec, n * 72 + 5) for n in range(8)}) == 1
    assert leaf_of_nic(spec, 3) == leaf_of_nic(spec, 0) != leaf_of_nic(spec, 4)
    assert load_cluster_preset("gb200-nvl72", gpus=16344).tiers == 3


# ---------------------------------------------------------------------------------------------- cluster files
@pytest.mark.parametrize("name", sorted(_presets_toml()))
@pytest.mark.parametrize("wrap", [False, True])
def test_cluster_file_round_trips(tmp_path, name, wrap):
    path = tmp_path / f"{name}.toml"
    _write_cluster(path, _presets_toml()[name], wrap)
    assert load_cluster_file(path) == load_cluster_preset(name)
    assert load_cluster_preset(str(path), gpus=4608) == load_cluster_preset(name, gpus=4608)   # 64 racks of 72


def test_cluster_file_in_an_estimate_and_topology(tmp_path):
    table = dict(_presets_toml()["dgx-h100"], name="my-cluster", oversubscription=2.0)
    path = tmp_path / "mine.toml"
    _write_cluster(path, table)
    r = runner.invoke(app, ["topology", "--cluster", str(path), "--gpus", "256", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tier_bandwidth_Bps"]["leaf_spine"] == pytest.approx(256 * 50e9 / 2)
    from gpuhours.simulator.scenario import load_scenario

    s = load_scenario(model="llama-3-70b", gpu="h100", gpus=256, pp=4, tp=8, cluster=str(path), schedule="1f1b")
    assert s.fabric.name == "my-cluster" and s.fabric.oversubscription == 2.0 and s.fabric.gpus == 256


def _bad(tmp_path, table, text=None):
    path = tmp_path / "bad.toml"
    if text is None:
        _write_cluster(path, table)
    else:
        path.write_text(text)
    with pytest.raises(ValueError) as exc:
        load_cluster_file(path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_cluster_files_name_the_key(tmp_path):
    good = _presets_toml()["dgx-h100"]
    msg = _bad(tmp_path, dict(good, nic_gbps=200))
    assert "unknown key 'nic_gbps'" in msg and "allowed keys" in msg and "nic_gbit_s" in msg
    msg = _bad(tmp_path, {k: v for k, v in good.items() if k != "gpus_per_leaf"})
    assert "missing key 'gpus_per_leaf'" in msg and "allowed keys" in msg
    assert "key 'gpus' must be an integer" in _bad(tmp_path, dict(good, gpus="1024"))
    assert "key 'rail_optimised'" in _bad(tmp_path, dict(good, rail_optimised=1))
    assert "key 'nvlink_fraction'" in _bad(tmp_path, dict(good, nvlink_fraction=1.5))
    assert "key 'tiers'" in _bad(tmp_path, dict(good, tiers=4))
    assert "key 'gpu'" in _bad(tmp_path, dict(good, gpu="tpu-v5"))
    assert "gpus_per_leaf" in _bad(tmp_path, dict(good, gpus_per_leaf=64))       # not below the radix
    assert "not valid TOML" in _bad(tmp_path, None, "gpus = = 3\n")
    assert "[cluster]" in _bad(tmp_path, None, "gpus = 8\n[cluster]\ngpu = 'h100'\n")
    with pytest.raises(ValueError, match="no such file"):
        load_cluster_preset(str(tmp_path / "absent.toml"))


def test_bad_cluster_file_on_the_command_line(tmp_path):
    path = tmp_path / "bad.toml"
    _write_cluster(path, dict(_presets_toml()["dgx-h100"], colour="red"))
    for cmd in (["topology"], ["collective", "all_reduce", "--bytes", "1G"],
                ["estimate", "--gpu", "h100", "--gpus", "64", "--pp", "1", "--tp", "8", "--model", "llama-3-70b"]):
        r = runner.invoke(app, cmd + ["--cluster", str(path)])
        assert r.exit_code == 2, (cmd, r.output)
        assert r.output.startswith("error:") and "unknown key 'colour'" in r.output
        assert len(r.output.strip().splitlines()) == 1


def test_fabricspec_new_fields_validated():
    base = load_cluster_preset("dgx-h100")
    with pytest.raises(ValueError, match="core_oversubscription"):
        base.with_(core_oversubscription=0.5)
    with pytest.raises(ValueError, match="su_nodes"):
        base.with_(su_nodes=3)        # 3 nodes x 8 rails = 24 NICs: not whole leaves of 32
    assert isinstance(base.with_(su_nodes=4), FabricSpec)


def test_top_of_rack_leaves_may_split_a_node():
    # 72 NICs per node into leaves of 36 (rail_optimised false): two leaves per rack
    spec = load_cluster_preset("gb200-nvl72", gpus=144, rail_optimised=False, su_nodes=0, gpus_per_leaf=36)
    leaves = [leaf_of_nic(spec, g)[1] for g in range(144)]
    assert leaves == list(np.repeat([0, 1, 2, 3], 36))


def test_nvl72_estimate_keeps_expert_parallelism_inside_the_rack():
    """1,152 GB200 at PP18: 64 GPUs per stage on 72-GPU racks, so the scenario takes the node size from the
    fabric; stage 0's EP64 group fills most of rack 0 (one NVLink domain, no NIC), while stage 1 straddles
    racks 0 and 1 (8 + 56 GPUs) as the default rank order places it, and the estimate prices both."""
    from gpuhours.simulator.scenario import estimate, load_scenario

    scenario = load_scenario(gpu="gb200", gpus=1152, pp=18, cluster="gb200-nvl72", tokens=1e9)
    assert scenario.cluster.gpus_per_node == 72
    coster = scenario.simulator().coster
    groups = coster.groups("ep")
    assert {g // 72 for g in groups[0]} == {0}
    assert sorted({g // 72 for g in groups[1]}) == [0, 1]
    assert estimate(scenario).gpu_hours > 0


def test_estimate_takes_tiers():
    """--tiers on estimate forces the fabric's tier count (2,048 H100 fit two tiers; three are asked for)."""
    import json

    from typer.testing import CliRunner

    from gpuhours.cli import app

    args = ["estimate", "--cluster", "dgx-h100", "--gpu", "h100-sxm", "--gpus", "2048", "--tokens", "1B", "--json"]
    auto = json.loads(CliRunner().invoke(app, args).stdout)
    forced = json.loads(CliRunner().invoke(app, args + ["--tiers", "3"]).stdout)
    assert (auto["network"]["tiers"], forced["network"]["tiers"]) == (2, 3)
    bad = CliRunner().invoke(app, args + ["--tiers", "4"])
    assert bad.exit_code == 2 and "tiers must be one of (2, 3)" in bad.stderr
