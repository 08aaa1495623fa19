"""EPLB-style replication and packing: conservation, never worse than the contiguous placement, closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from gpuhours.workloads.eplb import balance_experts, replicate


def check_plan(plan, loads, ep, redundant):
    E = loads.size
    slots = (E + redundant) // ep
    assert plan.slot_expert.shape == (ep, slots)
    assert plan.rank_loads_after.sum() == pytest.approx(loads.sum())       # load conserved
    assert plan.rank_loads_before.sum() == pytest.approx(loads.sum())
    assert np.allclose(plan.rank_loads_after, plan.slot_load.sum(axis=1))
    # every expert's load is fully served by its replicas
    served = np.bincount(plan.slot_expert[plan.slot_expert >= 0], weights=plan.slot_load[plan.slot_expert >= 0],
                         minlength=E)
    assert np.allclose(served, loads)
    assert plan.imbalance_after <= plan.imbalance_before + 1e-12


@pytest.mark.parametrize("seed", range(12))
def test_random_loads_never_worse_and_conserved(seed):
    rng = np.random.default_rng(seed)
    E, ep, gpn = 64, 16, 4
    redundant = int(rng.choice([0, 16, 32]))
    loads = rng.pareto(1.5, E) * 100 + rng.integers(0, 5)
    plan = balance_experts(loads, ep, gpn, redundant)
    check_plan(plan, loads, ep, redundant)
    if plan.used_greedy:
        assert plan.replicas.sum() == E + redundant
        assert np.all((plan.slot_expert >= 0).sum(axis=1) == (E + redundant) // ep)  # every slot used


def test_deepseek_v3_shape_with_skewed_loads():
    rng = np.random.default_rng(0)
    loads = rng.zipf(1.8, 256).astype(float)
    plan = balance_experts(loads, 64, 8, redundant=64)
    check_plan(plan, loads, 64, 64)
    assert plan.imbalance_after < plan.imbalance_before


def test_replicate_goes_to_heaviest():
    reps = replicate(np.array([10.0, 1.0, 1.0, 1.0]), 3)
    assert reps.tolist() == [4, 1, 1, 1]  # 10/3 = 3.3 still beats 1, so all three go to expert 0
    reps = replicate(np.array([4.0, 3.0, 1.0]), 2)
    assert reps.tolist() == [2, 2, 1]     # 4 -> (2, 3, 1) -> 3 -> (2, 1.5, 1)


def test_closed_form_perfect_split():
    # loads 4, 2, 1, 1 with 4 redundant slots on 4 GPUs (2 slots each): replicas 4, 2, 1, 1, each carrying 1
    plan = balance_experts(np.array([4.0, 2.0, 1.0, 1.0]), ep=4, gpus_per_node=2, redundant=4)
    assert plan.replicas.tolist() == [4, 2, 1, 1]
    assert np.allclose(plan.rank_loads_after, 2.0)
    assert plan.imbalance_after == pytest.approx(1.0)
    assert plan.imbalance_before == pytest.approx(2.0)  # contiguous: one expert per rank, max 4 / mean 2
    for g in range(4):  # replicas of one expert sit on distinct GPUs
        held = plan.slot_expert[g][plan.slot_expert[g] >= 0]
        assert len(set(held.tolist())) == held.size


def test_balanced_loads_stay_balanced():
    plan = balance_experts(np.full(32, 7.0), ep=8, gpus_per_node=4)
    assert plan.imbalance_before == 1.0 and plan.imbalance_after == pytest.approx(1.0)


@pytest.mark.parametrize("args", [
    (np.array([1.0, 2.0, 3.0]), 2, 2, 0),       # ep does not divide E
    (np.ones(8), 4, 2, 2),                     # E + redundant not divisible by ep
    (np.array([1.0, -1.0]), 1, 1, 0),           # negative load
    (np.ones(8), 4, 3, 0),                     # ep not a multiple of gpus_per_node
    (np.ones(8), 4, 2, -4),                    # negative budget
])
def test_bad_input_raises(args):
    with pytest.raises(ValueError):
        balance_experts(*args)
