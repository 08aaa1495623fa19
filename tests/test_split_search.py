"""The stage balancer's simulated choice among candidate splits (`simulator.split_search`)."""

from dataclasses import replace

import pytest

from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.split_search import EXTRA_WEIGHTS_DOWN, EXTRA_WEIGHTS_UP, NEAR, search_split


def _search(splits: dict[float, tuple[int, ...]], times: dict[tuple[int, ...], float]):
    """Run the search on a table of splits per weight and step times per split; return its answer and the
    splits it simulated, in order."""
    simulated = []

    def step_time(split):
        simulated.append(split)
        return times[split]

    return search_split(splits.__getitem__, step_time), simulated


DOWN, UP = EXTRA_WEIGHTS_DOWN, EXTRA_WEIGHTS_UP


def _weights(default, at=None):
    """A split for every weight the search may ask for: `default`, except where `at` ({weight: split}) says."""
    table = {w: default for w in (1.0, *DOWN, *UP)}
    table.update(at or {})
    return table


def test_one_candidate_is_not_simulated():
    best, simulated = _search(_weights((2, 2)), {})
    assert best == (2, 2) and simulated == []


def test_walks_down_while_faster_and_stops_at_the_first_slower():
    assert len(DOWN) >= 2
    a, b, c = (3, 1), (2, 2), (1, 3)
    splits = _weights(a, {DOWN[0]: b, DOWN[1]: c})
    best, simulated = _search(splits, {a: 10.0, b: 9.0, c: 9.5})
    assert best == b and simulated == [b, a, c]  # b beats a; c is slower: the walk ends there


def test_a_repeated_split_is_not_simulated_again():
    a, b = (3, 1), (2, 2)
    best, simulated = _search(_weights(a, {w: b for w in DOWN}), {a: 10.0, b: 9.0})
    assert best == b and simulated == [b, a]


def test_goes_up_only_when_the_first_step_down_does_not_help():
    a, b, up = (3, 1), (2, 2), (4, 0)
    splits = _weights(a, {DOWN[0]: b, UP[0]: up})
    best, simulated = _search(splits, {a: 10.0, b: 11.0, up: 9.0})
    assert best == up and simulated == [b, a, up]


def test_a_tie_keeps_the_proxy_split():
    a, b = (3, 1), (2, 2)
    best, _ = _search(_weights(a, {DOWN[0]: b}), {a: 10.0, b: 10.0})
    assert best == a


def test_near_ties_are_decided_on_the_runs_own_step():
    """Within NEAR of each other on the short step, two splits are compared again on the long one; a split
    further off is not."""
    a, b, c = (3, 1), (2, 2), (1, 3)
    splits = _weights(a, {DOWN[0]: b, DOWN[1]: c})
    short = {a: 10.0, b: 9.99, c: 9.0}
    asked = []

    def final(split):
        asked.append(split)
        return {a: 20.0, b: 21.0, c: 19.0}[split]

    best = search_split(splits.__getitem__, short.__getitem__, final)
    assert best == c and asked == []  # c alone is near the best short step: nothing to decide
    short = {a: 10.0, b: 9.98, c: 9.99}  # b leads c by 0.1%, a is 0.2% behind: all three within NEAR
    asked.clear()
    assert search_split(splits.__getitem__, short.__getitem__, final) == c
    assert sorted(asked) == sorted([a, b, c]) and NEAR >= 0.002


def test_deepseek_v3_dualpipe_gets_the_split_the_proxy_missed():
    """The proxy alone chose 4 x6, 5, 4 x8, 0 (head and MTP alone on the last stage); 4 x15, 1 simulates faster
    with 9 GiB less on the fullest rank. The default must be that split and no slower than the proxy's, each
    simulated with its split given explicitly."""
    scenario = load_scenario()
    chosen = scenario.simulator()
    assert chosen.stage_layers == (4,) * 15 + (1,)
    m = 2 * scenario.parallel.pp

    def given(split):
        return replace(scenario, parallel=replace(scenario.parallel, stage_layers=split)).simulator().step(m)

    proxy = given((4,) * 6 + (5,) + (4,) * 8 + (0,))
    assert chosen.step(m).step_time == pytest.approx(given((4,) * 15 + (1,)).step_time, rel=1e-12)
    assert chosen.step(m).step_time < proxy.step_time
