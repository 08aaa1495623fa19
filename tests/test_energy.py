"""The run's energy: MWh = GPU-hours x board power x PUE, its defaults, and its line in `gpuhours estimate`."""

import json

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.gpus import GPUSpec, energy_data, load_gpu, run_energy
from gpuhours.reports.estimate_table import render_estimate

H800_W = 700.0   # H100 datasheet, SXM column: max TDP 700 W (H800 = H100 SXM board)
UPTIME_2024_PUE = 1.56  # Uptime Institute Global Data Center Survey 2024: average annual PUE 1.56


def test_closed_form():
    # 1,000 GPU-hours x 700 W = 0.7 MWh at the boards; x PUE 1.5 = 1.05 MWh
    e = run_energy(1000, "h100", pue=1.5)
    assert e.it_mwh == pytest.approx(0.7)
    assert e.mwh == pytest.approx(1.05)
    # 1M B200 GPU-hours at 1,000 W and PUE 1.2: 1.2 GWh
    assert run_energy(1e6, "b200", pue=1.2).mwh == pytest.approx(1200.0)


def test_default_pue_is_the_published_industry_average():
    d = energy_data()
    assert d["pue"] == UPTIME_2024_PUE and "Uptime Institute" in d["pue_source"]
    e = run_energy(1e6, "h800")
    assert e.pue == UPTIME_2024_PUE and e.mwh == pytest.approx(1e6 * H800_W * UPTIME_2024_PUE / 1e6)
    assert e.as_dict()["formula"].startswith("MWh = GPU-hours x board power")


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="pue must be a number >= 1.0"):
        run_energy(1.0, "h800", pue=0.9)
    with pytest.raises(ValueError, match="gpu_hours must be a number >= 0"):
        run_energy(-1.0, "h800")
    unpowered = GPUSpec(**{**load_gpu("h800").__dict__, "power_w": 0.0})
    with pytest.raises(ValueError, match="power_w: no board power catalogued for H800 SXM; gpus with one: h800"):
        run_energy(1.0, unpowered)
    with pytest.raises(ValueError, match="unknown gpu"):
        run_energy(1.0, "tpu-v5p")


@pytest.fixture(scope="module")
def default_json():
    r = CliRunner().invoke(app, ["estimate", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_default_estimate_reports_energy_and_keeps_price_and_gpu_hours(default_json):
    d = default_json
    assert d["price_per_gpu_hour"] == 2.0  # the plan's price, unchanged
    assert 0.85 * 2.664e6 < d["gpu_hours"] < 1.15 * 2.664e6  # near the published 2.664M (tests/golden pins it)
    e = d["energy"]
    assert (e["gpu"], e["gpu_power_w"], e["pue"]) == ("H800 SXM", H800_W, UPTIME_2024_PUE)
    assert e["mwh"] == pytest.approx(d["gpu_hours"] * H800_W * UPTIME_2024_PUE / 1e6)
    assert 2.5e3 < e["mwh"] < 3.4e3  # about 3 GWh for 2.3-3.1M H800 GPU-hours at 700 W x PUE 1.56


def test_energy_line_is_aligned_with_the_other_rows(default_json):
    lines = render_estimate(default_json).splitlines()
    cost = next(i for i, line in enumerate(lines) if line.startswith("cost "))
    energy = lines[cost + 1]
    assert energy.startswith("energy" + " " * 12) and energy[18] != " "  # label column 18 wide
    gwh = default_json["energy"]["mwh"] / 1e3
    assert energy[18:].startswith(f"{gwh:.2f} GWh") and "H800 SXM 700 W x PUE 1.56" in energy


def test_energy_line_in_mwh_and_without_board_power():
    from gpuhours.reports.estimate_table import _energy_line
    # 20,000 GPU-hours x 700 W x PUE 1.5 = 21 MWh
    assert _energy_line(run_energy(20000, "h100", pue=1.5).as_dict()).startswith("21.0 MWh  (H100 SXM 700 W x PUE 1.5;")
    assert _energy_line(None).startswith("not computed")
