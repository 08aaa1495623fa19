"""Pipeline layout strings (Megatron-Core notation): parsing, validation, and where units land."""

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.step import rank_params
from gpuhours.workloads.memory import chunk_bytes, load_recipe
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.pipeline_layout import LayoutStage, layout_stage_layers, layout_stages, parse_layout
from gpuhours.workloads.presets import load_preset
from gpuhours.workloads.stage_ops import stage_units

V3 = load_preset("deepseek-v3")  # 61 layers, one MTP module
SIX = replace(V3, n_layers=6)    # the same blocks, six layers (three dense, three MoE)


def _units(model, p, seq_len=4096):
    starts = [0]
    for n in p.stage_layers:
        starts.append(starts[-1] + n)
    last = len(p.stage_layers) - 1
    return [[u.name for u in stage_units(model, p, seq_len, range(starts[s], starts[s + 1]), s == 0, s == last)]
            for s in range(len(p.stage_layers))]


def test_brief_example_parses_to_its_stages():
    assert layout_stages("E|t*3|t*4|t*4|t*3,L") == (
        LayoutStage(True, 0, 0, False), LayoutStage(False, 3, 0, False), LayoutStage(False, 4, 0, False),
        LayoutStage(False, 4, 0, False), LayoutStage(False, 3, 0, True))
    assert layout_stage_layers("E|t*3|t*4|t*4|t*3,L") == (0, 3, 4, 4, 3)


def test_megatron_docstring_example():
    # Megatron-Core's own example: "Ettt|(tt|)*29,m|L" -> [E,t,t,t] + [t,t] x 29 + [m] + [L]
    stages = parse_layout("Ettt|(tt|)*29,m|L")
    assert len(stages) == 32
    assert stages[0] == ("E", "t", "t", "t")
    assert all(st == ("t", "t") for st in stages[1:30])
    assert stages[30:] == (("m",), ("L",))
    assert sum(layout_stage_layers("Ettt|(tt|)*29,m|L")) == 61


def test_repeats_nest_and_commas_and_spaces_are_cosmetic():
    assert parse_layout("E, ((t|)*2)*2 t,L") == (("E", "t"), ("t",), ("t",), ("t",), ("t", "L"))
    assert parse_layout("Et*2|tL") == parse_layout("E,t,t|t,L")


@pytest.mark.parametrize("text, words", [
    ("E|x|L", "unknown"), ("E|(t|L", "unknown"), ("t,E|L", "E (embedding) must be the first"),
    ("E|t,L|L", "exactly once"), ("E|L,t", "L (head and loss) must be the last"), ("E||t,L", "stage 1 is empty"),
    ("E,m|t,L", "before the first m"), ("E,t|m|m,L", "one stage"), ("", "layout string"),
])
def test_bad_layouts_are_one_line_errors_naming_the_field(text, words):
    with pytest.raises(ValueError) as err:
        parse_layout(text)
    msg = str(err.value)
    assert "pipeline_layout" in msg and words in msg and "\n" not in msg


def test_layout_checked_against_model_and_schedule():
    p = ParallelSpec(num_gpus=4, pp=4, pipeline_layout="E|t*3|t*3,m|L")
    p.check_model(SIX)
    with pytest.raises(ValueError, match="pipeline_layout holds 5 transformer layers.*has 6"):
        ParallelSpec(num_gpus=4, pp=4, pipeline_layout="E|t*3|t*2,m|L").check_model(SIX)
    with pytest.raises(ValueError, match="pipeline_layout holds 0 MTP modules.*has 1"):
        ParallelSpec(num_gpus=4, pp=4, pipeline_layout="E|t*3|t*3|L").check_model(SIX)
    with pytest.raises(ValueError, match="pipeline_layout has 4 stages; schedule 1f1b with pp=2 needs 2"):
        ParallelSpec(num_gpus=4, pp=2, pipeline_layout="E|t*3|t*3,m|L")
    with pytest.raises(ValueError, match="pipeline_layout implies stage_layers 0,3,3,0"):
        ParallelSpec(num_gpus=4, pp=4, pipeline_layout="E|t*3|t*3,m|L", stage_layers=(1, 2, 3, 0))


def test_layout_implies_stage_layers_and_vpp():
    p = ParallelSpec(num_gpus=2, pp=2, schedule="interleaved-1f1b", pipeline_layout="E,t|t|t|t,m,L")
    assert (p.vpp, p.num_stages, p.stage_layers) == (2, 4, (1, 1, 1, 1))
    assert ParallelSpec(num_gpus=2, pp=2, schedule="dualpipev", pipeline_layout="E,t|t|t|t,m,L").num_stages == 4


def test_units_land_where_the_layout_says():
    p = ParallelSpec(num_gpus=4, pp=4, pipeline_layout="E|t*3|t*3,m|L")
    assert _units(SIX, p) == [["embed"], ["L0", "L1", "L2"], ["L3", "L4", "L5", "mtp0.proj", "mtp0.block"],
                              ["head", "mtp0.head"]]


def test_layout_with_ends_on_the_usual_stages_matches_stage_layers():
    with_layout = ParallelSpec(num_gpus=4, pp=4, pipeline_layout="E,t*2|t|t*2|t,m,L")
    plain = ParallelSpec(num_gpus=4, pp=4, stage_layers=(2, 1, 2, 1))
    assert _units(SIX, with_layout) == _units(SIX, plain)
    assert _units(SIX, plain)[3] == ["L5", "head", "mtp0.proj", "mtp0.block", "mtp0.head"]


def test_parameters_and_activations_are_conserved_when_units_move():
    # moving the head and the MTP module between stages moves their parameters and activations; the totals over
    # the pipeline stay those of the model
    moved = ParallelSpec(num_gpus=4, pp=4, pipeline_layout="E|t*3|t*3,m|L")
    usual = ParallelSpec(num_gpus=4, pp=4, stage_layers=(0, 3, 3, 0))
    total = [sum(rank_params(SIX, p, p.stage_layers, {s})[i] for s in range(4)) for p in (moved, usual) for i in (0, 1)]
    assert total[0] == pytest.approx(total[2], rel=1e-12) and total[1] == pytest.approx(total[3], rel=1e-12)
    # the loss stage holds the head alone: vocab x hidden, nothing of the MTP module (its head shares the weights)
    assert rank_params(SIX, moved, moved.stage_layers, {3}) == (SIX.vocab * SIX.hidden, 0.0)
    rec = load_recipe()
    a = chunk_bytes(SIX, moved, 4096, moved.stage_layers, rec)
    b = chunk_bytes(SIX, usual, 4096, usual.stage_layers, rec)
    assert sum(a) == pytest.approx(sum(b), rel=1e-12)
    assert a[0] == 0.0 and a[3] < b[3] and a[2] > b[2]  # the embedding keeps only token ids


def test_plan_key_and_cli_option(tmp_path: Path):
    plan = Path(__file__).resolve().parents[1] / "workloads" / "plans" / "deepseek-v3.toml"
    text = plan.read_text().replace("[parallel]\n", "[parallel]\npipeline_layout = \"E,t*4|(t*4|)*13,t*5|m,L\"\n", 1)
    path = tmp_path / "layout.toml"
    path.write_text(text)
    sc = load_scenario(path)
    assert sc.parallel.stage_layers == (4,) * 14 + (5, 0)
    r = CliRunner().invoke(app, ["estimate", "--pipeline-layout", "E|t*61|L"])
    assert r.exit_code == 2 and "pipeline_layout has 3 stages" in r.output
    assert "--pipeline-layout" in CliRunner().invoke(app, ["estimate", "--help"]).output
