"""Price per GPU-hour by GPU type (issue 12, item 4): a plan moved to another GPU is priced at that GPU's listed
price, with its source; a plan's own GPU keeps the plan's price; --price wins."""

from __future__ import annotations

import tomllib

import pytest

from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.hwmodels.prices import DATA_FILE, listed_gpus, listed_price
from gpuhours.simulator.scenario import load_scenario


def test_every_price_is_for_a_catalogue_gpu_and_names_its_source():
    data = tomllib.loads(DATA_FILE.read_text())["price"]
    for key, entry in data.items():
        assert load_gpu(key).key == key
        assert entry["usd_per_gpu_hour"] > 0 and len(entry["source"]) > 20
    assert listed_price("h800")[0] == 2.0  # DeepSeek-V3's rental assumption, the default plan's price
    assert listed_price("mi300x") is None and "h100-sxm" in listed_gpus()


def test_price_follows_the_gpu_unless_given():
    own = load_scenario()
    assert (own.plan.price_per_gpu_hour, own.plan.price_source) == (2.0, "")
    moved = load_scenario(gpu="h100-sxm", gpus=256, pp=4, ep=64, tokens=1e9)
    assert moved.plan.price_per_gpu_hour == listed_price("h100-sxm")[0]
    assert "Lambda" in moved.plan.price_source
    given = load_scenario(gpu="h100-sxm", gpus=256, pp=4, ep=64, tokens=1e9, price=1.25)
    assert (given.plan.price_per_gpu_hour, given.plan.price_source) == (1.25, "")
    unlisted = load_scenario(gpu="h200-sxm", gpus=256, pp=4, ep=64, tokens=1e9)
    assert unlisted.plan.price_per_gpu_hour == 2.0 and "no price is listed for H200" in unlisted.plan.price_source


def test_cost_is_gpu_hours_times_the_listed_price():
    from gpuhours.simulator.scenario import estimate

    scenario = load_scenario(gpu="a100-80gb-sxm", gpus=64, pp=4, ep=16, tokens=1e9, seq_len=1024, fp8=False)
    run = estimate(scenario)
    assert run.cost_usd == pytest.approx(run.gpu_hours * 2.4984, rel=1e-12)
