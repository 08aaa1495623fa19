"""`balance.partition_layers` on hand-solved splits: the first stage read as one column, the last as one row
(its shortcuts), and the general stages between."""

from __future__ import annotations

import pytest

from gpuhours.simulator.balance import partition_layers


@pytest.mark.parametrize("costs,stages,first,last,expected", [
    # 3, 3, 4: the last stage starts at the earliest layer that reaches the least maximum (4: after 6 layers on
    # two stages of 3, or after 7 on 4 and 3), so its share is the largest
    ([1.0] * 10, 3, 0.0, 0.0, (3, 3, 4)),
    ([1.0] * 8, 2, 2.0, 0.0, (3, 5)),          # 3 + 2 = 5 against 5
    ([1.0] * 4, 2, 0.0, 10.0, (4, 0)),         # the head alone costs 10: every layer on the first stage
    ([1.0, 2.0, 3.0], 1, 0.5, 0.5, (3,)),      # one stage holds everything
    ([3.0, 1.0, 1.0, 1.0], 2, 0.0, 0.0, (1, 3)),  # 3 | 3
    ([1.0] * 6, 6, 0.0, 0.0, (1,) * 6),        # as many stages as layers
    ([1.0] * 7, 3, 1.0, 1.0, (2, 3, 2)),       # 2 + 1, 3, 2 + 1
])
def test_hand_solved_splits(costs, stages, first, last, expected):
    assert partition_layers(costs, stages, first, last) == expected


def test_recomputed_head_layers_cost_more_on_each_stage():
    """Six equal layers of 1, the first layer of every stage 1 more ("full:1"): two stages of 3 cost 4 each."""
    assert partition_layers([1.0] * 6, 2, head_cost=[1.0] * 6, head_layers=1) == (3, 3)


def test_a_split_that_cannot_exist_is_refused():
    with pytest.raises(ValueError, match="stages"):
        partition_layers([1.0] * 3, 4)
