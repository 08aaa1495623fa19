"""The accuracy suite: case files carry their provenance, conversions agree with the sources' own columns, the
means leave calibration cases out, and every prediction is pinned by the golden file."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.validation.accuracy import GOLDEN, Row, run_suite, select, summarise
from gpuhours.validation.cases import load_case_file, load_cases, megatron_2021_flops, megatron_params
from gpuhours.workloads.params import param_breakdown

CASES = load_cases()
BY_NAME = {c.name: c for c in CASES}


# ---------------------------------------------------------------------------------------------- the case files
def test_every_case_states_its_source_and_the_row_as_printed():
    assert len(CASES) >= 25
    for c in CASES:
        for key in ("title", "reference", "where", "group"):
            assert c.source.get(key), (c.name, key)
        assert c.measured.printed and c.assumptions, c.name


def test_the_suite_covers_the_sources_the_issue_names():
    groups = {c.group for c in CASES}
    assert {"megatron-2021", "korthikanti-2022", "deepseek-v3"} <= groups
    assert len(groups) >= 6
    assert sum(c.group == "megatron-2021" and "gpt-" in c.name for c in CASES) == 10  # Table 1: ten rows


def test_megatron_models_have_the_parameters_the_table_prints():
    # Table 1's first column is eq. (2) of the paper; our model's own count (no position embeddings or biases)
    # must land within 0.5% of it.
    printed = {"1.7b": 1.7e9, "3.6b": 3.6e9, "7.5b": 7.5e9, "18.4b": 18.4e9, "39.1b": 39.1e9, "76.1b": 76.1e9,
               "145.6b": 145.6e9, "310.1b": 310.1e9, "529.6b": 529.6e9, "1008b": 1008.0e9}
    for tag, params in printed.items():
        case = BY_NAME[f"megatron21-gpt-{tag}"]
        eq2 = megatron_params(case)
        assert round(eq2 / 1e9, 1) == params / 1e9, tag  # the table prints eq. (2) to one decimal
        assert param_breakdown(case.model).total == pytest.approx(eq2, rel=0.005), tag


def test_tflops_convert_to_the_days_table_2_prints():
    # Table 2's last column: days to train on 300B tokens at the printed TFLOP/s. Our conversion of the TFLOP/s
    # column into a step time must reproduce it (the paper rounds, and approximates eq. 3 by eq. 4).
    printed_days = {"megatron21-ptdp-175b-384": 84, "megatron21-ptdp-175b-768": 43,
                    "megatron21-ptdp-175b-1536": 23, "megatron21-ptdp-530b-560": 156,
                    "megatron21-ptdp-530b-1120": 80, "megatron21-ptdp-530b-2240": 42}
    for name, days in printed_days.items():
        c = BY_NAME[name]
        steps = 300e9 / (c.layout["batch"] * c.layout["seq_len"])
        assert steps * c.measured_time() / 86400 == pytest.approx(days, rel=0.03), name


def test_megatron_flops_formula_matches_the_aggregate_column():
    # 1T row: 163 TFLOP/s per GPU x 3072 GPUs = 502.0 PFLOP/s printed (rounded per-GPU figure: within 0.5%).
    c = BY_NAME["megatron21-gpt-1008b"]
    assert c.measured.value * c.gpus / 1e3 == pytest.approx(502.0, rel=0.005)
    # eq. 3 by hand for a tiny shape: 96 B s l h^2 (1 + s/6h + V/16lh)
    assert megatron_2021_flops(1, 6, 1, 1, 16) == pytest.approx(96 * 6 * (1 + 1 + 1))


def test_gaps_name_what_is_not_modelled():
    # full and selective recomputation are simulated (OpOptions.recompute): no longer gaps
    assert BY_NAME["korthikanti-1t-full"].gaps() == []
    assert BY_NAME["korthikanti-1t-selective-sp"].gaps() == []
    assert BY_NAME["deepseek-v3-pretraining"].gaps() == []
    c = BY_NAME["korthikanti-1t-full"]
    zero3 = replace(c, layout={**c.layout, "zero_stage": 3, "cp": 2, "pp": 1})
    # ZeRO-2/3 and FSDP are simulated (ParallelSpec.zero_stage), and so is context parallelism (ParallelSpec.cp) ...
    assert not any("ZeRO" in g or "FSDP" in g for g in zero3.gaps())
    assert not any("context parallelism" in g for g in zero3.gaps())
    assert zero3.inexpressible() is None
    # FSDP under pipeline parallelism without reshard_after_forward is simulated (gathered once per step) ...
    once = replace(c, layout={**c.layout, "fsdp": True, "reshard_after_forward": False})
    assert not any("FSDP" in g for g in once.gaps())
    # ... and so is it with reshard_after_forward (gathers where sharded, simulator.fsdp_pipeline); torch.compile
    # is not
    piped = replace(c, layout={**c.layout, "fsdp": True, "torch_compile": True})
    assert not any("FSDP" in g for g in piped.gaps())
    assert any("torch.compile" in g for g in piped.gaps())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "case.toml"
    path.write_text(text)
    return path


_GOOD = """
assumptions = ["none"]
[source]
group = "g"
title = "t"
reference = "r"
where = "w"
[[case]]
name = "c"
gpu = "h100"
gpus = 8
tp = 8
pp = 1
batch = 8
seq_len = 1024
model = { hidden = 1024, n_layers = 2, n_heads = 8, vocab = 1000, ffn_activation = "gelu" }
measured = { metric = "step_time_s", value = 1.0 }
printed = "1.0 s"
"""


def test_a_valid_file_loads_and_bad_ones_name_the_field(tmp_path):
    assert load_case_file(_write(tmp_path, _GOOD))[0].model.dense_intermediate == 4096
    bad = {
        "tensor_parallel": _GOOD.replace("tp = 8", "tensor_parallel = 8"),
        "printed": _GOOD.replace('printed = "1.0 s"', ""),
        "measured.metric": _GOOD.replace("step_time_s", "mfu"),
        "recompute": _GOOD.replace("tp = 8", 'tp = 8\nrecompute = "some"'),
        "batch": _GOOD.replace("batch = 8", "batch = 8\nmicro_batch_size = 3"),
        "flop_convention": _GOOD.replace('"step_time_s"', '"tflops_per_gpu"'),
        "dp": _GOOD.replace("tp = 8", "tp = 8\ndp = 2"),
        "attention_kernel": _GOOD.replace("tp = 8", 'tp = 8\nattention_kernel = "fa9"'),
    }
    for field, text in bad.items():
        with pytest.raises(ValueError, match=field.split(".")[-1]):
            load_case_file(_write(tmp_path, text))


def test_context_parallel_case_is_simulated(tmp_path):
    case = load_case_file(_write(tmp_path, _GOOD.replace("tp = 8", "tp = 4\ncp = 2")))[0]
    (row,) = run_suite([case])
    assert not row.not_simulated and row.error is not None and row.counts
    assert summarise([row])["not_simulated"] == 0


# ----------------------------------------------------------------------------------------------------- the means
def _row(group, error, calibration=False, gaps=()):
    return Row(case=f"{group}{error}", group=group, profile="p", metric="step_time_s", measured=1.0,
               predicted=1 + error, measured_time=1.0, predicted_time=1 + error, error=error,
               calibration_case=calibration, gaps=gaps)


def test_means_leave_calibration_cases_out():
    rows = [_row("a", 0.10), _row("a", -0.30, gaps=("x",)), _row("b", 0.20), _row("b", 0.5, calibration=True)]
    s = summarise(rows)
    assert s["overall"]["mae"] == pytest.approx(0.2)
    assert s["overall"]["mean_error"] == pytest.approx(0.0)
    assert s["groups"]["a"]["mae"] == pytest.approx(0.2)
    assert s["groups"]["b"]["cases"] == 1
    assert s["fully_expressed"]["mae"] == pytest.approx(0.15)
    assert s["with_gaps"] == 1 and s["calibration_cases"] == ["b0.5@p"]
    # a: |0.1|, |-0.3| -> 0.2; b: 0.2 -> mean of groups 0.2; with a third group of one row, each group weighs 1/3
    s3 = summarise(rows + [_row("c", 0.5)])
    assert s3["mean_of_groups"] == pytest.approx((0.2 + 0.2 + 0.5) / 3)
    assert s3["overall"]["mae"] == pytest.approx((0.1 + 0.3 + 0.2 + 0.5) / 4)


def test_select_filters_and_refuses_what_matches_nothing():
    assert {c.group for c in select(CASES, group="korthikanti-2022")} == {"korthikanti-2022"}
    assert [c.name for c in select(CASES, case_glob="megatron21-gpt-1.7b")] == ["megatron21-gpt-1.7b"]
    with pytest.raises(ValueError, match="group"):
        select(CASES, group="nope")
    with pytest.raises(ValueError, match="case"):
        select(CASES, case_glob="nothing*")


# ----------------------------------------------------------------------------------------- the suite and golden
@pytest.fixture(scope="module")
def suite_rows():
    return run_suite(CASES)


def test_deepseek_rows_under_the_trace_profile_are_calibration_cases(suite_rows):
    rows = {r.key: r for r in suite_rows}
    assert rows["deepseek-v3-pretraining@trace-h800"].calibration_case
    assert rows["deepseek-v3-traced-pair@trace-h800"].calibration_case
    assert not rows["deepseek-v3-pretraining@default-h800"].calibration_case
    assert all(not r.calibration_case for r in suite_rows if r.group != "deepseek-v3")


def test_every_prediction_matches_the_golden_file(suite_rows):
    # A change to these numbers is deliberate: regenerate with `python -m gpuhours.validation.accuracy
    # --write-golden` in the same commit, and say why in its message.
    golden = json.loads(GOLDEN.read_text())["predicted_time"]
    got = {r.key: r.predicted_time for r in suite_rows}
    assert set(got) == set(golden)
    for key, value in golden.items():
        assert got[key] == pytest.approx(value, rel=0.02), key


def test_default_estimate_matches_the_golden_file():
    from gpuhours.simulator.scenario import estimate, load_scenario

    golden = json.loads(GOLDEN.read_text())["default_estimate_gpu_hours"]
    assert estimate(load_scenario()).gpu_hours == pytest.approx(golden, rel=0.005)


def test_cli_accuracy_json_and_page(tmp_path):
    result = CliRunner().invoke(app, ["accuracy", "--case", "megatron21-gpt-1.7b", "--json", "--out",
                                      str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    (row,) = data["rows"]
    assert row["case"] == "megatron21-gpt-1.7b" and math.isfinite(row["error"])
    assert (tmp_path / "accuracy.md").exists() and (tmp_path / "accuracy.png").stat().st_size > 10_000


def test_cli_accuracy_bad_group_is_one_line():
    result = CliRunner().invoke(app, ["accuracy", "--group", "nope", "--no-page"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "group" in result.output
