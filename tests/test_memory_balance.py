"""The stage balancer weighs memory: a split of similar time that fits beats a time-balanced one that does not."""

from dataclasses import replace

from gpuhours.simulator.balance import MEMORY_TIME_SLACK, fit_memory, partition_layers, rebalance_for_ranks
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.memory import memory_breakdown

ONE_F_ONE_B = ((0,), (1,), (2,), (3,))  # stage s on rank s


def _per_rank(sizes):
    """Hand-built memory: 1F1B rank r keeps pp - r micro-batches in flight, one unit per layer and micro-batch."""
    return tuple(n * (len(sizes) - r) for r, n in enumerate(sizes))


def _one_f_one_b_memory(sizes):
    return max(_per_rank(sizes))


def _load(sizes):
    return max(sizes)  # equal layers, no extras: the busiest rank's load in layers


def test_time_balanced_split_that_fits_is_kept():
    sizes = (4, 3, 3, 3)  # a time-balanced split: ceil(13 / 4) = 4 layers on the busiest rank
    assert max(partition_layers([1.0] * 13, 4)) == 4
    assert fit_memory(sizes, [1.0] * 13, ONE_F_ONE_B, _per_rank, capacity=16) == sizes


def test_split_of_equal_time_that_fits_is_preferred():
    # 13 equal layers on 4 stages: the time-balanced (4,3,3,3) keeps 4 x 4 = 16 units on rank 0; with room for
    # 12 the fitting splits of the same busiest load (4 layers) are those with 3 layers on stage 0: (3,4,3,3)
    # (rank 1: 4 x 3 = 12), (3,3,4,3) (8), (3,3,3,4) (4); rank 0 then keeps 3 x 4 = 12.
    sizes = (4, 3, 3, 3)
    assert rebalance_for_ranks(sizes, [1.0] * 13, ONE_F_ONE_B) == sizes  # already balanced in time
    assert _one_f_one_b_memory(sizes) == 16
    fitted = fit_memory(sizes, [1.0] * 13, ONE_F_ONE_B, _per_rank, capacity=12)
    assert fitted in {(3, 4, 3, 3), (3, 3, 4, 3), (3, 3, 3, 4)}
    assert _one_f_one_b_memory(fitted) <= 12 and _load(fitted) == _load(sizes) == 4


def test_fitting_split_much_slower_is_not_taken():
    # 12 equal layers: (3,3,3,3) keeps 12 units on rank 0; fitting 9 needs at most 2 layers on stage 0, so some
    # stage gets 4 layers: a third slower, beyond the slack, so the time-balanced split stays (it does not fit:
    # the memory report says so)
    sizes = (3, 3, 3, 3)
    assert 4 / 3 - 1 > MEMORY_TIME_SLACK
    assert fit_memory(sizes, [1.0] * 12, ONE_F_ONE_B, _per_rank, capacity=9) == sizes
    loose = fit_memory(sizes, [1.0] * 12, ONE_F_ONE_B, _per_rank, capacity=9, slack=0.5)
    assert _one_f_one_b_memory(loose) <= 9 and _load(loose) == 4 and loose[0] <= 2


def test_no_fitting_split_keeps_the_time_balanced_one():
    sizes = (3, 3, 3, 3)
    assert fit_memory(sizes, [1.0] * 12, ONE_F_ONE_B, _per_rank, capacity=3, slack=10.0) == sizes


def test_simulator_moves_a_layer_off_the_rank_over_memory():
    # Llama 3 70B on 48 H100s, pp 6 x tp 8, 1F1B, 8K sequences: the time-balanced split puts rank 0 (six
    # micro-batches in flight) highest. On a GPU 0.5 GiB smaller than that rank needs, the balancer moves a
    # layer off stage 0 where a stage below the slowest can take it.
    sc = load_scenario(model="llama-3-70b", gpu="h100-sxm", gpus=96, pp=6, tp=8, schedule="1f1b", seq_len=8192,
                       batch=64)
    roomy = sc.simulator()
    first = roomy.step(16)
    need = memory_breakdown(sc, first)
    assert need.rank == 0 and need.fits
    gpu = replace(sc.cluster.gpu, hbm_bytes=need.total - 0.5 * 2**30)
    tight = replace(sc, cluster=replace(sc.cluster, gpu=gpu))
    assert not memory_breakdown(tight, first).fits
    moved = tight.simulator()
    assert tuple(moved.stage_layers) != tuple(roomy.stage_layers)
    assert moved.stage_layers[0] < roomy.stage_layers[0] and sum(moved.stage_layers) == 80
    second = moved.step(16)
    assert memory_breakdown(tight, second).fits
    assert second.step_time <= first.step_time * (1 + MEMORY_TIME_SLACK)
