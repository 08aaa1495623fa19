"""DualPipeV's end stages share rank 0, so after the weight walk the split search moves single layers into or out of
them (`split_search.end_moves`, `refine_ends`): hand-worked neighbourhoods, a hill-climb on a known bowl, and the
refined split never slower than the walk's on DeepSeek-V3."""

from __future__ import annotations

import pytest

from gpuhours.simulator.split_search import END_STEPS, end_moves, refine_ends


def test_end_moves_take_from_the_fullest_and_give_to_the_emptiest():
    # end 0 takes from stage 3 (the only 3); end 5 takes from stage 3 too; neither end has a layer to give
    assert end_moves((0, 2, 2, 3, 2, 0)) == [(1, 2, 2, 2, 2, 0), (0, 2, 2, 2, 2, 1)]
    # end 0 takes from stage 1 (of the two 3s, the nearer) and gives to stage 2 (the 1); end 3 takes from stage 1
    # (its only other 3) and gives to stage 2
    assert end_moves((2, 3, 1, 3)) == [(3, 2, 1, 3), (1, 3, 2, 3), (2, 2, 1, 4), (2, 3, 2, 2)]
    assert end_moves((5,)) == []


def test_refine_ends_climbs_a_bowl_and_stops_at_its_floor():
    target = (2, 2, 2, 2, 2, 1)

    def bowl(split):
        return 1.0 + sum((a - b) ** 2 for a, b in zip(split, target))

    # bowl 7 -> (1, 2, 2, 2, 2, 2) at 3 (stage 0 takes stage 3's extra layer) -> target at 1 (stage 5 gives one to
    # stage 0, the emptiest)
    assert refine_ends((0, 2, 2, 3, 2, 2), bowl, lambda s: True) == target
    assert refine_ends(target, bowl, lambda s: True) == target  # already at the floor
    # a move that does not fit is not taken: with at most one layer on stage 0 the climb stops after the first move
    assert refine_ends((0, 2, 2, 3, 2, 2), bowl, lambda s: s[0] <= 1) == (1, 2, 2, 2, 2, 2)
    # and when no move improves, the split stays: from here the only fitting moves raise the bowl
    assert refine_ends((0, 2, 2, 3, 2, 2), bowl, lambda s: s[0] == 0) == (0, 2, 2, 3, 2, 2)


def test_refine_ends_makes_at_most_end_steps_moves():
    moves = []

    def downhill(split):  # every move away from the start is better than the last: it never stops by itself
        moves.append(split)
        return -float(abs(split[0] - 10))

    refine_ends((10, 10, 10, 10), downhill, lambda s: True)
    start_and_per_step = 1 + 4 * END_STEPS
    assert len(moves) <= start_and_per_step


@pytest.mark.parametrize("schedule", ["dualpipev"])
def test_deepseek_dualpipev_refined_split_is_no_slower_than_the_walks(monkeypatch, schedule):
    from gpuhours.simulator.scenario import load_scenario

    # Under the trace profile with its weight-gradient GEMMs calibrated apart (validation/trace_phases.py) the walk
    # already lands on 0, 3, 2, ..., 2, 0 and no single move shortens the step (under the one-ratio profile before
    # it, the walk left 0, 2, ..., 2, 0 and a move found 1, 2, ..., 2, 0): the refined split is the walk's or faster
    refined = load_scenario(schedule=schedule).simulator()
    monkeypatch.setattr("gpuhours.simulator.step.refine_ends", lambda split, step_time, fits: split)
    walk_only = load_scenario(schedule=schedule).simulator()
    assert sum(refined.stage_layers) == sum(walk_only.stage_layers) == 61
    for m in (32, 64):
        assert refined.step(m).step_time <= walk_only.step(m).step_time
