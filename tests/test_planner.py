"""Layout search (simulator/planner.py): valid, fitting, consistent answers; the memory rule; a baseline beaten."""

import json

import pytest

from gpuhours.simulator.planner import RULES, plan_layouts
from gpuhours.simulator.scenario import estimate, load_scenario
from gpuhours.workloads import params as P
from gpuhours.workloads.memory import load_recipe, memory_breakdown
from gpuhours.workloads.parallel import ParallelSpec

SMALL = """
[model]
name = "small-1b"
hidden = 1024
n_layers = 8
vocab = 32000
dense_intermediate = 4096
mtp_depth = 0
tie_embeddings = false

[attention]
kind = "gqa"
n_heads = 16
n_kv_heads = 8
head_dim = 64
"""

RUN = dict(seq_len=2048, tokens=2e9, batch=64)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.toml"
    path.write_text(SMALL)
    return str(path)


@pytest.fixture(scope="module")
def result(small):
    seen = []
    r = plan_layouts(small, "H100", 8, max_simulated=6, progress=lambda d, t: seen.append((d, t)), **RUN)
    return r, seen


def test_every_row_is_a_valid_layout_and_the_best_fits(result, small):
    r, _ = result
    assert r.best is not None and r.best.fits
    assert r.best.memory_gib <= r.best.capacity_gib
    scen = load_scenario(model=small, gpu="H100", gpus=8, pp=1, ep=1, schedule="1f1b", **RUN)
    for row in r.rows:
        c = row.candidate
        p = ParallelSpec(num_gpus=8, pp=c.pp, tp=c.tp, cp=c.cp, ep=c.ep, schedule=c.schedule,
                         micro_batch_size=c.micro_batch_size, zero_stage=c.zero_stage,
                         vpp=2 if c.schedule == "interleaved-1f1b" else 1)
        p.check_model(scen.model)  # raises when invalid
        assert RUN["batch"] % (p.dp * c.micro_batch_size) == 0
        assert row.fits == (row.memory_gib <= row.capacity_gib)


def test_best_is_no_worse_than_any_simulated_fitting_candidate(result):
    r, _ = result
    assert r.rows[0] is r.best
    for row in r.rows:
        if row.fits:
            assert r.best.cost_usd <= row.cost_usd * (1 + 1e-12)
            assert row is r.best or row.reason
    assert r.best.reason == ""


def test_counts_add_up_and_progress_reaches_the_end(result):
    r, seen = result
    assert set(r.pruned) == set(RULES)
    assert r.enumerated == sum(r.pruned.values()) + r.simulated
    assert 0 < r.simulated <= 6 and r.simulated == len(r.rows)
    assert seen[-1] == (r.simulated, r.simulated)


def test_beats_a_hand_picked_baseline(result, small):
    """Plain data parallelism (TP1 PP1 DP8, 1F1B, no recomputation, ZeRO-1) estimated directly."""
    r, _ = result
    base = estimate(load_scenario(model=small, gpu="H100", gpus=8, pp=1, tp=1, ep=1, schedule="1f1b",
                                  micro_batch_size=1, recompute="none", zero_stage=1, **RUN))
    assert r.best.cost_usd <= base.cost_usd * (1 + 1e-9)
    assert r.best.days <= base.wall_clock_days * (1 + 1e-9)


def test_output_forms(result, tmp_path):
    r, _ = result
    d = json.loads(json.dumps(r.to_dict()))
    assert d["best"]["layout"] == r.best.layout and len(d["rows"]) == len(r.rows)
    text = "\n".join(r.lines())
    assert r.best.layout in text and "enumerated" in text and "best" in text
    from gpuhours.reports.plan_chart import plan_front, plot_plan

    assert r.best in plan_front(r.rows)
    out = plot_plan(r, tmp_path / "plan.png")
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_70b_on_8_gpus_is_pruned_by_the_memory_rule():
    """By hand: any layout of 8 GPUs leaves each at least 1/8 of the parameters' training state, and ZeRO-3 at
    best shards all of it: P/8 x (weights 2 + grads 4 + master 4 + moments 2 x 2) bytes, about 123 GB > 80 GiB."""
    rec = load_recipe()
    from gpuhours.workloads.presets import load_preset

    total = P.param_breakdown(load_preset("llama-3-70b")).total
    per_gpu = total / 8 * (rec.weight_bytes + rec.grad_bytes + rec.master_bytes + 2 * rec.moment_bytes)
    assert per_gpu > 80 * 2**30
    r = plan_layouts("llama-3-70b", "H100", 8, seq_len=4096, tokens=1e12, batch=64, max_simulated=2)
    assert r.best is None and r.simulated == 0 and r.rows == ()
    assert r.pruned["memory"] > 0
    assert r.enumerated == r.pruned["layout"] + r.pruned["batch"] + r.pruned["memory"]


def test_memory_rule_agrees_with_memory_breakdown(small):
    """The prune's verdict for a layout equals memory_breakdown on that layout's simulated step."""
    from gpuhours.simulator.plan_bounds import _fits_estimate
    from gpuhours.simulator.planner import Candidate, _scenario

    base = load_scenario(model=small, gpu="H100", gpus=8, pp=1, tp=1, ep=1, schedule="1f1b", recompute="none",
                         **RUN)
    c = Candidate(tp=2, pp=4, cp=1, ep=1, schedule="1f1b", micro_batch_size=2)
    sc = _scenario(base, c)
    step = estimate(sc).steady.step
    assert _fits_estimate(sc, step.num_microbatches) == memory_breakdown(sc, step).fits


@pytest.mark.parametrize("kw, field", [({"goal": "speed"}, "goal"), ({"gpus": 0}, "gpus"),
                                       ({"batch": -1}, "batch"), ({"max_days": -2}, "max_days"),
                                       ({"seq_len": 0}, "seq_len"), ({"gpu": "Z9"}, "gpu"),
                                       ({"model": "nope"}, "model")])
def test_bad_input_names_the_field(small, kw, field):
    args = dict(model=small, gpu="H100", gpus=8, seq_len=2048, tokens=1e9, max_simulated=1) | kw
    with pytest.raises(ValueError, match=field):
        plan_layouts(args.pop("model"), args.pop("gpu"), args.pop("gpus"), **args)


@pytest.mark.parametrize("schedule, pp", [("1f1b", 4), ("zb1p", 4), ("interleaved-1f1b", 2), ("dualpipev", 2)])
def test_memory_prune_caps_microbatches_without_changing_the_peak(small, schedule, pp):
    """The prune walks 2 pp micro-batches; the per-rank memory is the same as for many more."""
    from types import SimpleNamespace

    from gpuhours.simulator.plan_bounds import _even_split
    from gpuhours.simulator.planner import Candidate, _scenario

    base = load_scenario(model=small, gpu="H100", gpus=8, pp=1, tp=1, ep=1, schedule="1f1b", **RUN)
    sc = _scenario(base, Candidate(tp=1, pp=pp, cp=1, ep=1, schedule=schedule, micro_batch_size=1))
    split = _even_split(sc.model.n_layers, sc.parallel.num_stages)
    totals = [memory_breakdown(sc, SimpleNamespace(stage_layers=split, num_microbatches=m)).total_per_rank
              for m in (2 * pp, 12 * pp)]
    assert totals[0] == totals[1]


@pytest.mark.parametrize("model, gpus, layouts", [
    ("llama-3-70b", 64, [(1, 1, 1, 1, "1f1b", 3), (8, 2, 1, 1, "zb1p", 1), (2, 8, 2, 1, "interleaved-1f1b", 1),
                         (4, 4, 1, 1, "1f1b", 3), (8, 8, 1, 1, "zb1p", 1)]),
    ("deepseek-v2", 64, [(1, 4, 1, 16, "dualpipe", 1), (2, 4, 1, 8, "dualpipev", 3), (1, 2, 1, 32, "zb1p", 1)])])
def test_prune_memory_equals_memory_breakdown(model, gpus, layouts):
    """The prune's per-rank totals are memory_breakdown's on the same even split (its state-only early exit off)."""
    from types import SimpleNamespace

    from gpuhours.simulator.plan_bounds import _even_split, _memory_totals
    from gpuhours.simulator.planner import Candidate, _scenario

    base = load_scenario(model=model, gpu="H100", gpus=gpus, pp=1, tp=1, ep=1, schedule="1f1b", seq_len=4096,
                         tokens=1e12, batch=256, recompute="none")
    for tp, pp, cp, ep, schedule, zero in layouts:
        sc = _scenario(base, Candidate(tp=tp, pp=pp, cp=cp, ep=ep, schedule=schedule, micro_batch_size=1,
                                       zero_stage=zero))
        mine = _memory_totals(sc, 2 * pp, stop_early=False)
        split = _even_split(sc.model.n_layers, sc.parallel.num_stages)
        ref = memory_breakdown(sc, SimpleNamespace(stage_layers=split, num_microbatches=2 * pp)).total_per_rank
        assert mine == pytest.approx(ref, rel=1e-12)


def test_max_days_excludes_slower_layouts(small):
    r = plan_layouts(small, "H100", 8, max_days=1e-9, max_simulated=2, **RUN)
    assert r.best is None and r.rows
    assert all(row.reason.startswith("over max_days") for row in r.rows if row.fits)
    assert "no simulated layout fits within max_days" in "\n".join(r.lines())


def test_the_models_own_plan_layout_is_simulated_beside_the_search():
    """DeepSeek-V3 has a built-in plan: its published layout (PP16 EP64 TP1 DualPipe) is ranked with the search's
    layouts at the same batch, marked, and named in a note."""
    result = plan_layouts("deepseek-v3", "h800", 1024, seq_len=4096, tokens=1e12, batch=4096, max_simulated=2)
    mine = [r for r in result.rows if r.layout.endswith("[plan deepseek-v3]")]
    assert len(mine) == 1
    c = mine[0].candidate
    assert (c.tp, c.pp, c.ep, c.schedule) == (1, 16, 64, "dualpipe")
    assert any("built-in plan 'deepseek-v3'" in n for n in result.notes)
    assert any("[plan deepseek-v3]" in line for line in result.lines(1))  # shown even outside the top rows


def test_a_model_without_a_plan_gets_no_reference_row():
    result = plan_layouts("llama-3-70b", "h100-sxm", 64, seq_len=4096, tokens=1e12, max_simulated=2)
    assert not any("[plan " in r.layout for r in result.rows)


def test_a_process_pool_finds_the_same_plan():
    """The search on two worker processes (the sweep's executor) simulates the same layouts and ranks them alike."""
    serial = plan_layouts("llama-3-70b", "h100-sxm", 64, seq_len=4096, tokens=1e12, max_simulated=6)
    pooled = plan_layouts("llama-3-70b", "h100-sxm", 64, seq_len=4096, tokens=1e12, max_simulated=6, workers=2,
                          executor="process")
    assert [(r.layout, r.step_time_s) for r in pooled.rows] == [(r.layout, r.step_time_s) for r in serial.rows]
    with pytest.raises(ValueError, match="executor must be one of"):
        plan_layouts("llama-3-70b", "h100-sxm", 64, seq_len=4096, tokens=1e12, executor="threads")


def test_budget_refuses_dearer_layouts_and_tokens_per_dollar_ranks_as_cost(small):
    """A budget below every layout's cost leaves no best, each fitting row saying why; tokens-per-dollar ranks as
    cost does (the tokens are fixed, so more tokens per dollar is fewer dollars)."""
    r = plan_layouts(small, "H100", 8, budget=1e-6, max_simulated=2, **RUN)
    assert r.best is None and r.rows
    assert all(row.reason.startswith("over budget") for row in r.rows if row.fits)
    assert "within budget" in "\n".join(r.lines()) and r.to_dict()["budget"] == 1e-6
    by_cost = plan_layouts(small, "H100", 8, goal="cost", max_simulated=3, **RUN)
    by_tpd = plan_layouts(small, "H100", 8, goal="tokens-per-dollar", max_simulated=3, **RUN)
    assert [row.layout for row in by_tpd.rows] == [row.layout for row in by_cost.rows]
    with pytest.raises(ValueError, match="budget must be a positive number of dollars"):
        plan_layouts(small, "H100", 8, budget=-5, max_simulated=2, **RUN)


def test_cluster_names_the_fabric_every_layout_is_routed_on(small, tmp_path):
    """The same search on a cluster file that is dgx-h100 with an eighth of its NIC speed: no layout gets faster,
    and those that cross nodes get slower; an unknown fabric is refused naming the presets."""
    import tomllib
    from importlib import resources

    table = tomllib.loads(resources.files("gpuhours.hwmodels").joinpath("data", "clusters.toml").read_text())
    slow = dict(table["preset"]["dgx-h100"], nic_gbit_s=50.0)
    def toml(v):  # a JSON string is a TOML basic string
        return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)

    lines = [f"{k} = {toml(v)}" for k, v in slow.items() if not isinstance(v, (dict, list))]
    path = tmp_path / "slow.toml"
    path.write_text("\n".join(lines) + "\n")
    fast = plan_layouts(small, "H100", 16, cluster="dgx-h100", max_simulated=4, **RUN)
    slower = plan_layouts(small, "H100", 16, cluster=str(path), max_simulated=4, **RUN)
    days = {r.layout: r.days for r in fast.rows}
    common = [(days[r.layout], r.days) for r in slower.rows if r.layout in days]
    assert common and all(s >= f for f, s in common) and any(s > f for f, s in common)
    with pytest.raises(ValueError, match="cluster must be one of deepseek-h800, .* got 'no-such-fabric'"):
        plan_layouts(small, "H100", 16, cluster="no-such-fabric", max_simulated=2, **RUN)


def test_the_best_overlapping_layout_is_tried_with_other_comm_sms():
    """DualPipe with EP is simulated again with 12, 16 and 24 SMs for DeepEP (its layout otherwise the same, each
    a row of its own, labelled); a best that does not overlap communication, or a best that does not fit, is not."""
    from dataclasses import replace
    from types import SimpleNamespace

    from gpuhours.simulator.plan_rows import Candidate
    from gpuhours.simulator.planner import COMM_SMS_TRIED, _comm_sms_rows

    base = load_scenario()
    dual = Candidate(1, 16, 1, 64, "dualpipe", 1, "deepseek", 1)
    plain = Candidate(1, 8, 1, 32, "1f1b", 1, "deepseek", 1)
    assert dual.overlaps_comm and not plain.overlaps_comm
    assert "comm_sms" not in dual.label and Candidate(**{**dual.__dict__, "comm_sms": 12}).label.endswith(
        "comm_sms=12")
    seen = []

    def run_batch(tasks):
        seen.extend(tasks)
        return [(c.label, SimpleNamespace(candidate=c, fits=True, cost_usd=1.0), "") for _, c, _ in tasks]

    rows = [SimpleNamespace(candidate=dual, fits=True, cost_usd=2.0),
            SimpleNamespace(candidate=plain, fits=True, cost_usd=3.0)]
    assert _comm_sms_rows(rows, base, [], run_batch) == len(COMM_SMS_TRIED) == 3
    assert [c.comm_sms for _, c, _ in seen] == [12, 16, 24]
    assert [sc.parallel.comm_sms for sc, _, _ in seen] == [12, 16, 24]
    assert all(replace(c, comm_sms=None) == dual for _, c, _ in seen) and len(rows) == 5
    seen.clear()
    assert _comm_sms_rows([SimpleNamespace(candidate=plain, fits=True, cost_usd=1.0),
                           SimpleNamespace(candidate=dual, fits=True, cost_usd=2.0)], base, [], run_batch) == 0
    assert _comm_sms_rows([SimpleNamespace(candidate=dual, fits=False, cost_usd=1.0)], base, [], run_batch) == 0
    assert seen == []

