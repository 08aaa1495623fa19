"""The stage balancer's simulated choice among candidate splits (`simulator.split_search`)."""

from dataclasses import replace

import pytest

from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.split_search import EXTRA_WEIGHTS_DOWN, EXTRA_WEIGHTS_UP, search_split


def _search(splits: dict[float, tuple[int, ...]], times: dict[tuple[int, ...], float]):
    """Run the search on a table of splits per weight and step times per split; return its answer and the
    splits it simulated, in order."""
    simulated = []

    def step_time(split):
        simulated.append(split)
        return times[split]

    return search_split(splits.__getitem__, step_time), simulated


def _weights(default, **at):
    """A split for every weight the search may ask for: `default`, except where `at` (w0_75=...) says."""
    table = {w: default for w in (1.0, *EXTRA_WEIGHTS_DOWN, *EXTRA_WEIGHTS_UP)}
    for key, split in at.items():
        table[float(key[1:].replace("_", "."))] = split
    return table


def test_one_candidate_is_not_simulated():
    best, simulated = _search(_weights((2, 2)), {})
    assert best == (2, 2) and simulated == []


def test_walks_down_while_faster_and_stops_at_the_first_slower():
    a, b, c, d = (3, 1), (2, 2), (1, 3), (0, 4)
    splits = _weights(a, w0_75=b, w0_5=b, w0_25=c, w0=d)
    best, simulated = _search(splits, {a: 10.0, b: 9.0, c: 9.5, d: 1.0})
    # b beats a; 0.5 repeats b (not simulated again); c is slower, so the walk stops before d
    assert best == b and simulated == [b, a, c]


def test_goes_up_only_when_the_first_step_down_does_not_help():
    a, b, up1, up2 = (3, 1), (2, 2), (4, 0), (5, -1)
    splits = _weights(a, w0_75=b, w1_25=up1, w1_5=up2, w2=up2)
    best, simulated = _search(splits, {a: 10.0, b: 11.0, up1: 9.0, up2: 9.5})
    assert best == up1 and simulated == [b, a, up1, up2]


def test_a_tie_keeps_the_proxy_split():
    a, b = (3, 1), (2, 2)
    best, _ = _search(_weights(a, w0_75=b), {a: 10.0, b: 10.0})
    assert best == a


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
