"""Rank placement order (issue 12, item 3): which links pipeline sends and data-parallel collectives use."""

from __future__ import annotations

import pytest

from gpuhours.hwmodels.placement import RankLayout
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.parallel import ParallelSpec, parse_order


def test_default_order_keeps_tp_in_a_node_and_stages_outermost():
    layout = RankLayout(tp=8, cp=1, dp=4, pp=2)
    assert layout.groups("tp")[0] == list(range(8))
    assert layout.groups("dp")[0] == [0, 8, 16, 24]          # tp ranks apart
    assert layout.pipeline_flows(0, 1)[0] == (0, 32, 1.0)    # the next stage is a whole stage further
    assert len(layout.groups("dp")) == 2 * 8                 # every stage's and every tp rank's group


def test_stages_inside_data_parallelism():
    layout = RankLayout(tp=8, cp=1, dp=4, pp=2, order=parse_order("tp-cp-pp-dp"))
    assert layout.pipeline_flows(0, 1)[0] == (0, 8, 1.0)     # the next node
    assert layout.groups("dp")[0] == [0, 16, 32, 48]         # tp x pp ranks apart


def test_expert_groups_take_consecutive_ranks_of_a_stage():
    layout = RankLayout(tp=1, cp=1, dp=128, pp=2, ep=64)
    assert layout.groups("ep")[0] == list(range(64))
    assert layout.groups("edp")[0] == [0, 64]
    assert layout.groups("ep")[2] == list(range(128, 192))   # stage 1


def test_order_is_checked():
    assert parse_order("tp-cp-ep-dp-pp") == ("tp", "cp", "dp", "pp")   # Megatron-Core's spelling
    with pytest.raises(ValueError, match="order must be a permutation"):
        ParallelSpec(16, order="tp-dp-pp")
    with pytest.raises(ValueError, match="order must be a permutation"):
        parse_order("tp-ep-cp-dp-pp")


def _coster(order: str, oversubscription: float):
    """Llama-3-70B on 1,024 H100 of a DGX SuperPOD (four scalable units of 32 nodes), TP8 PP4 DP32."""
    scenario = load_scenario(model="llama-3-70b", gpu="h100-sxm", gpus=1024, tp=8, pp=4, ep=1, schedule="1f1b",
                             cluster="dgx-h100", oversubscription=oversubscription, order=order, batch=1024,
                             tokens=1e9)
    return scenario.simulator().coster


def test_oversubscription_slows_what_crosses_the_spines_and_nothing_else():
    """A 16:1 leaf gives its 32 NICs 2 ports' worth of uplink. Default order: a stage is exactly one scalable
    unit (32 nodes under one leaf per rail), so all 32 pipeline sends of a leaf leave through the spines: each
    gets 1/16 of its NIC; the data-parallel groups stay under their leaves (unchanged). Stages inside data
    parallelism (tp-cp-pp-dp): neighbouring stages share a leaf (sends unchanged) while a data-parallel ring
    visits every fourth node across all four units; a ring leaves each unit once per group, so 4 groups' flows
    (one per stage) share each leaf's 2 ports of uplink: the ring's bandwidth term halves."""
    nbytes = 1e12  # latency negligible
    flat, over = _coster("tp-cp-dp-pp", 1.0), _coster("tp-cp-dp-pp", 16.0)
    send = [c.network.placed_p2p(c.layout, 0, 1) for c in (flat, over)]  # seconds per byte, latency
    assert send[1].coef / send[0].coef == pytest.approx(16.0, rel=1e-9)
    assert send[1].latency == pytest.approx(send[0].latency)
    dp = flat.collective("reduce_scatter", nbytes, "dp"), over.collective("reduce_scatter", nbytes, "dp")
    assert dp[1] == pytest.approx(dp[0], rel=1e-9)

    flat, over = _coster("tp-cp-pp-dp", 1.0), _coster("tp-cp-pp-dp", 16.0)
    assert over.transfer(0, 1, "F", 0, 0) == pytest.approx(flat.transfer(0, 1, "F", 0, 0), rel=1e-9)
    dp = flat.collective("reduce_scatter", nbytes, "dp"), over.collective("reduce_scatter", nbytes, "dp")
    assert dp[1] / dp[0] == pytest.approx(2.0, rel=0.01)


def test_stages_inside_a_node_send_over_nvlink():
    """TP2 PP4 on 8-GPU nodes with pp inside dp: all four stages of a pipeline share a node, so a send is an
    NVLink transfer (400 GB/s x 0.8 per direction on H100), not a 50 GB/s NIC one."""
    scenario = load_scenario(model="llama-3-70b", gpu="h100-sxm", gpus=64, tp=2, pp=4, ep=1, schedule="1f1b",
                             cluster="dgx-h100", order="tp-cp-pp-dp", batch=64, tokens=1e9)
    coster = scenario.simulator().coster
    spec = scenario.network().spec
    nbytes = 4096 * 8192 * 2 // 2  # a micro-batch's activations, sequence-parallel over tp=2
    t = coster.transfer(0, 1, "F", 0, 0)
    assert t == pytest.approx(nbytes / spec.nvlink_bw + spec.nvlink_latency, rel=1e-6)


def test_order_on_the_command_line():
    import json

    from typer.testing import CliRunner

    from gpuhours.cli import app

    args = ["estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--gpus", "1024", "--tp", "8", "--pp", "4",
            "--schedule", "1f1b", "--cluster", "dgx-h100", "--oversubscription", "16", "--batch", "1024",
            "--tokens", "1B", "--json"]
    default = json.loads(CliRunner().invoke(app, args).stdout)
    inside = json.loads(CliRunner().invoke(app, args + ["--order", "tp-cp-pp-dp"]).stdout)
    assert inside["step_time_s"] != default["step_time_s"]
    # 16:1 leaves: default-order pipeline sends leave their unit through the spines, so its pipeline pass is
    # longer; with stages inside data parallelism the gradient ring crosses the units, so its tail is longer
    steps = {}
    for order in ("tp-cp-dp-pp", "tp-cp-pp-dp"):
        scenario = load_scenario(model="llama-3-70b", gpu="h100-sxm", gpus=1024, tp=8, pp=4, ep=1,
                                 schedule="1f1b", cluster="dgx-h100", oversubscription=16, order=order, batch=1024,
                                 tokens=1e9)
        steps[order] = scenario.simulator().step(32)
    assert steps["tp-cp-dp-pp"].pipeline_time > steps["tp-cp-pp-dp"].pipeline_time
    assert steps["tp-cp-dp-pp"].dp_sync_time < steps["tp-cp-pp-dp"].dp_sync_time
    bad = CliRunner().invoke(app, ["estimate", "--order", "tp-dp-pp"])
    assert bad.exit_code == 2 and "order must be a permutation" in bad.stderr


def test_estimate_of_a_model_without_a_layout_asks_the_planner(tmp_path):
    """No layout option: the layout is the planner's best, said in a note and in --json (a 1B-shaped model on 16
    H100, so the search is short)."""
    import json

    from typer.testing import CliRunner

    from gpuhours.cli import app
    from gpuhours.simulator.planner import plan_layouts

    cfg = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
           "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 32000}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    r = CliRunner().invoke(app, ["estimate", "--model", str(path), "--gpu", "h100-sxm", "--gpus", "16",
                                 "--tokens", "1B", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    best = plan_layouts(str(path), "h100-sxm", 16, seq_len=4096, tokens=1e9).best
    assert data["layout_chosen_by_plan"].startswith(f"layout chosen by gpuhours plan: {best.layout}")
    assert data["step_time_s"] == pytest.approx(best.step_time_s, rel=1e-9)
    assert data["layout"]["tp"] == best.candidate.tp and data["layout"]["pp"] == best.candidate.pp


def test_step_reports_each_groups_nodes_switches_and_bottleneck():
    """The 16:1 SuperPOD of the test above: under the default order the data-parallel group stays under one leaf
    per rail (1 switch) while the pipeline send climbs to a spine (leaf, spine, leaf: 3) and is bottlenecked on a
    leaf's uplink; stages inside data parallelism swap the two."""
    import json

    from typer.testing import CliRunner

    from gpuhours.cli import app

    args = ["step", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--gpus", "1024", "--tp", "8", "--pp", "4",
            "--ep", "1", "--schedule", "1f1b", "--cluster", "dgx-h100", "--oversubscription", "16",
            "--microbatches", "8", "--json"]
    rows = {}
    for order in ("tp-cp-dp-pp", "tp-cp-pp-dp"):
        r = CliRunner().invoke(app, args + ["--order", order])
        assert r.exit_code == 0, r.output
        rows[order] = {g["group"]: g for g in json.loads(r.stdout)["groups"]}
    default, inside = rows["tp-cp-dp-pp"], rows["tp-cp-pp-dp"]
    assert (default["tp"]["nodes"], default["tp"]["switches"]) == (1, 0)
    assert (default["dp"]["switches"], default["pp"]["switches"]) == (1, 3)
    assert (inside["dp"]["switches"], inside["pp"]["switches"]) == (3, 1)
    assert default["pp"]["bottleneck"][0][0] == "leaf" and default["pp"]["bottleneck"][1][0] == "spine"
    assert default["dp"]["nodes"] == inside["dp"]["nodes"] == 32


def test_order_is_a_sweep_key(tmp_path):
    from gpuhours.simulator.sweep import parse_spec, run_sweep

    spec = parse_spec({"sweep": {"base": "deepseek-v3"},
                       "fixed": {"model": "llama-3-70b", "gpu": "h100-sxm", "gpus": 1024, "tp": 8, "pp": 4, "ep": 1,
                                 "schedule": "1f1b", "cluster": "dgx-h100", "batch": 1024, "tokens": "1B",
                                 "oversubscription": 16},
                       "grid": [{"order": ["tp-cp-dp-pp", "tp-cp-pp-dp", "tp-dp-pp"]}]})
    table = run_sweep(spec, str(tmp_path), workers=1, executor="serial").table.set_index("order")
    assert table.loc["tp-cp-dp-pp", "step_time_s"] != table.loc["tp-cp-pp-dp", "step_time_s"]
    assert "placement tp-cp-pp-dp" in table.loc["tp-cp-pp-dp", "layout"]
    assert not table.loc["tp-dp-pp", "feasible"] and "order must be a permutation" in table.loc["tp-dp-pp", "reason"]
