"""Steps and runs: stage partitioning, the batch ramp, micro-batch rules and the run's arithmetic."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.simulator.run import estimate_run, microbatches_for, ramp_segments
from gpuhours.simulator.scenario import estimate, load_scenario
from gpuhours.simulator.step import partition_layers, rebalance_for_ranks
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.run import BatchRamp, RunPlan, parse_count


def test_partition_equal_layers_is_balanced():
    assert partition_layers([1.0] * 12, 4) == (3, 3, 3, 3)
    assert sorted(partition_layers([1.0] * 10, 4)) == [2, 2, 3, 3]


def test_partition_accounts_for_first_and_last_extras():
    # Last stage carries a cost of 2 layers: it should get 2 fewer layers than the others.
    sizes = partition_layers([1.0] * 14, 4, last_extra=2.0)
    assert sizes == (4, 4, 4, 2)


def test_partition_minimises_the_bottleneck():
    costs = [5.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    sizes = partition_layers(costs, 2)
    assert sizes == (1, 5)  # 5 | 5: the optimum


def test_dualpipe_rebalancing_evens_rank_loads():
    """DualPipe's rank r holds stages r and pp-1-r: a heavy last stage must shed layers to the middle."""
    holders = tuple((s, 3 - s) for s in range(4))
    costs = [1.0] * 16
    sizes = rebalance_for_ranks((4, 4, 4, 4), costs, holders, last_extra=4.0)
    load = [0.0] * 4
    for s, n in enumerate(sizes):
        for r in holders[s]:
            load[r] += n + (4.0 if s == 3 else 0.0)
    assert sum(sizes) == 16 and min(sizes) >= 1
    assert max(load) == pytest.approx(10.0)  # (16 + 4) / 2 ranks-pairs: perfectly balanced


def test_parse_count():
    assert parse_count("14.8T") == pytest.approx(14.8e12)
    assert parse_count("469B") == pytest.approx(469e9)
    assert parse_count("2.5k") == 2500
    with pytest.raises(ValueError, match="tokens"):
        parse_count("lots")


def test_ramp_segments_conserve_tokens_and_grow():
    plan = RunPlan(tokens=14.8e12, batch=BatchRamp(3072, 15360, 469e9), ramp_segments=8)
    segs = ramp_segments(plan)
    assert sum(t for t, _ in segs) == pytest.approx(14.8e12)
    batches = [b for _, b in segs]
    assert batches == sorted(batches) and batches[-1] == 15360
    assert 3072 < batches[0] < batches[1]
    # The mean batch of a linear ramp is the midpoint.
    ramp = segs[:-1]
    assert sum(t * b for t, b in ramp) / sum(t for t, _ in ramp) == pytest.approx((3072 + 15360) / 2, rel=1e-3)


def test_microbatches_for_dualpipe_constraint_is_explained():
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64, schedule="dualpipe", comm_sms=20)
    assert microbatches_for(15360, p) == (120, "")
    m, note = microbatches_for(3072, p)
    assert m == 32 and "needs 32" in note
    m, note = microbatches_for(3200, p)  # 25 per pipeline: odd, raised to the minimum 32
    assert m == 32 and note


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(tokens="1T", batch=15360)


def test_run_arithmetic(scenario):
    est = estimate(scenario)
    (seg,) = est.segments
    assert seg.steps * seg.step.tokens == pytest.approx(1e12)
    assert est.gpu_hours == pytest.approx(seg.steps * seg.step.step_time * 2048 / 3600)
    assert est.cost_usd == pytest.approx(2.0 * est.gpu_hours)


def test_gpu_hours_scale_linearly_with_tokens(scenario):
    one = estimate(scenario).gpu_hours
    two = estimate(replace(scenario, plan=replace(scenario.plan, tokens=2e12))).gpu_hours
    assert two == pytest.approx(2 * one)


def test_step_shapes_are_simulated_once(scenario):
    sim = scenario.simulator()
    plan = replace(scenario.plan, batch=BatchRamp(15360, 15360, 0.0))
    estimate_run(sim, plan)
    first = set(sim._cache)
    estimate_run(sim, plan)
    assert set(sim._cache) == first
    # the run's one shape, and the short step (2 pp) at which the stage balancer compared its candidate splits
    assert sorted(m for m, _ in first) == [2 * scenario.parallel.pp, 120]


def test_dualpipe_beats_1f1b_on_the_default(scenario):
    dual = scenario.simulator().step(120)
    p = replace(scenario.parallel, schedule="1f1b", stage_layers=None)
    one = replace(scenario, parallel=p).simulator().step(120)
    assert dual.step_time < one.step_time
    assert dual.exposed_comm_share < one.exposed_comm_share


def test_step_accounting(scenario):
    st = scenario.simulator().step(120)
    assert st.tokens == 120 * 4096 * 128
    assert st.step_time == pytest.approx(max(st.pipeline.finish_per_rank) + st.dp_sync_time, rel=0.05)
    assert 0 < st.bubble_share < 1 and 0 < st.mfu("bf16") < 1
    # The step's model FLOPs over its GPU-seconds at the BF16 peak is the MFU.
    assert st.mfu("bf16") == pytest.approx(st.model_flops / (st.step_time * 2048 * st.peak_bf16))


def test_ep_detail_balanced_has_no_stragglers():
    from gpuhours.simulator.ep_detail import ep_group_detail

    d = ep_group_detail(load_scenario())
    assert len(d["ranks"]) == 64
    assert d["mean_wait_ms"] == pytest.approx(0.0, abs=1e-9)


def test_ep_detail_slowest_rank_is_what_the_pipeline_prices():
    """The representative pipeline runs every MoE layer at the busiest rank's rows: its mlp(F) time must equal
    the slowest rank's in the per-rank detail."""
    from gpuhours.simulator.ep_detail import ep_group_detail
    from gpuhours.workloads.layer_ops import layer_passes

    sc = load_scenario(routing="skew:0.3")
    d = ep_group_detail(sc)
    assert d["mean_wait_ms"] > 0 and d["imbalance"] > 1.2
    coster = sc.simulator().coster
    mlp = next(s for s in layer_passes(sc.model, d["layer"], sc.parallel, 4096, sc.effective_opts()).forward
               if s.name == "mlp(F)")
    assert sum(coster.op_time(op) for op in mlp.ops) * 1e3 == pytest.approx(d["slowest_ms"], rel=1e-6)


def test_eplb_recovers_most_of_the_skew_cost():
    skew = estimate(load_scenario(tokens="1T", batch=15360, routing="skew:0.3")).gpu_hours
    eplb = estimate(load_scenario(tokens="1T", batch=15360, routing="skew:0.3", redundant_experts=64)).gpu_hours
    balanced = estimate(load_scenario(tokens="1T", batch=15360)).gpu_hours
    assert balanced < eplb < skew
    assert (skew - eplb) > 0.8 * (skew - balanced)


def test_balanced_routing_leaves_the_step_unchanged():
    """Balanced routing gives every EP rank tokens x top_k rows (imbalance 1), so the step equals the one priced
    without any routing model at the same nodes per token."""
    from gpuhours.simulator.step import StepSimulator
    from gpuhours.hwmodels.compute import ComputeModel

    sc = load_scenario(tokens="1T", batch=15360)
    loads = sc.routing_loads()
    assert loads.imbalance == 1.0
    assert set(loads.rows_per_rank.tolist()) == {4096 * 8}
    plain = replace(sc.opts, nodes_per_token=loads.mean_nodes_per_token)
    direct = StepSimulator(sc.model, sc.parallel, sc.cluster, ComputeModel(sc.cluster.gpu, sc.profile),
                           sc.network(), 4096, plain)
    assert sc.simulator().step(120).step_time == pytest.approx(direct.step(120).step_time, rel=1e-12)


def test_higher_skew_costs_more_time():
    times = [load_scenario(tokens="1T", batch=15360, routing=f"skew:{s}").simulator().step(120).step_time
             for s in (0.0, 0.2, 0.5)]
    assert times == sorted(times) and times[0] < times[-1]


def test_imbalance_share_is_the_idle_time_beyond_the_least_idle_rank(scenario):
    st = scenario.simulator().step(120)
    floor = min(st.bubble_per_rank)
    assert 0 <= st.imbalance_share <= st.bubble_share
    assert st.bubble_share - st.imbalance_share == pytest.approx(floor / st.step_time)
