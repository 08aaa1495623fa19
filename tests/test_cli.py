"""The command line: output shapes, files written, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuhours.validation.external import TRACE_ABSENT, profile_trace
from gpuhours.cli import app

runner = CliRunner()

ESTIMATE_KEYS = {"gpu_hours", "wall_clock_days", "cost_usd", "step_time_s", "tokens_per_s_per_gpu", "mfu",
                 "params_total", "params_active", "calibration"}


@pytest.fixture(scope="module")
def default_json():
    r = runner.invoke(app, ["estimate", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_estimate_json_has_the_documented_keys(default_json):
    assert ESTIMATE_KEYS <= set(default_json)
    assert default_json["gpus"] == 2048 and default_json["layout"]["schedule"] == "dualpipe"
    assert default_json["tokens"] == pytest.approx(14.8e12)
    assert default_json["cost_usd"] == pytest.approx(2.0 * default_json["gpu_hours"])
    assert default_json["wall_clock_days"] * 24 * 2048 == pytest.approx(default_json["gpu_hours"])


def test_default_estimate_is_in_the_published_neighbourhood(default_json):
    """The default (trace-calibrated: a calibration case) estimate lands within a factor 1.5 of 2.664M GPU-hours."""
    assert 2.664e6 / 1.5 < default_json["gpu_hours"] < 2.664e6 * 1.5


def test_estimate_table():
    r = runner.invoke(app, ["estimate", "--tokens", "1T", "--batch", "15360"])
    assert r.exit_code == 0, r.output
    for word in ("GPU-hours", "MFU", "wall clock", "calibration", "PP16 EP64"):
        assert word in r.stdout


def test_presets_lists_models():
    r = runner.invoke(app, ["presets", "--json"])
    names = {m["name"] for m in json.loads(r.stdout)["models"]}
    assert {"deepseek-v3", "deepseek-v2", "llama-3-70b"} <= names


def test_dense_model_estimate_on_h100():
    r = runner.invoke(app, ["estimate", "--model", "llama-3-70b", "--gpu", "H100", "--gpus", "1024", "--pp", "8",
                            "--tp", "8", "--schedule", "1f1b", "--tokens", "1T", "--batch", "1024", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["layout"]["ep"] == 1 and d["layout"]["dp"] == 16 and d["precision"] == "fp8"


@pytest.mark.parametrize("args, field", [
    (["estimate", "--pp", "7"], "pp"),
    (["estimate", "--ep", "48"], "ep"),
    (["estimate", "--gpu", "B300"], "gpu"),
    (["estimate", "--tokens", "-5"], "tokens"),
    (["estimate", "--tokens", "0.0001"], "tokens"),  # less than one sequence
    (["estimate", "--price", "inf"], "price"),
    (["estimate", "--price", "nan"], "price"),
    (["estimate", "--cp", "3"], "cp"),
    (["estimate", "--attention-kernel", "fa9"], "attention_kernel"),
    (["estimate", "--model", "/no/such/model.json"], "model"),
    (["estimate", "--schedule", "gpipe"], "schedule"),
    (["estimate", "--precision", "fp4"], "precision"),
    (["estimate", "--model", "llama-3-70b", "--ep", "8"], "ep"),
    (["schedule", "dualpipe", "--pp", "8", "--microbatches", "10"], "micro"),
    (["schedule", "1f1b", "--gantt", "chart.pdf"], "--gantt"),
])
def test_bad_input_is_one_line_exit_2(args, field):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert field in lines[0]
    assert "Traceback" not in r.output


def test_schedule_json_and_pictures(tmp_path):
    gantt, trace = tmp_path / "d.png", tmp_path / "d.json"
    r = runner.invoke(app, ["schedule", "dualpipe", "--pp", "8", "--microbatches", "20", "--json",
                            "--gantt", str(gantt), "--trace", str(trace)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {"makespan", "bubble_per_rank", "peak_activations_per_rank"} <= set(d)
    assert len(d["bubble_per_rank"]) == 8
    assert gantt.stat().st_size > 10_000
    events = json.loads(trace.read_text())["traceEvents"]
    assert sum(e["ph"] == "X" for e in events) > 0


def test_step_writes_gantt(tmp_path):
    out = tmp_path / "step.png"
    r = runner.invoke(app, ["step", "--model", "deepseek-v2", "--gpus", "256", "--pp", "4", "--ep", "8",
                            "--microbatches", "8", "--gantt", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 10_000
    assert json.loads(r.stdout)["num_microbatches"] == 8


def test_collective_json_matches_alpha_beta_ring_on_one_node():
    """Ring all-reduce inside one node: 2 (p-1)/p n / B_nvlink plus 2 (p-1) latencies, and NCCL's Ring/Simple base
    latency (8.4 us, hwmodels/data/nccl.toml); auto would run NVLS on this Hopper node (tests/test_nccl.py)."""
    r = runner.invoke(app, ["collective", "all_reduce", "--group-size", "8", "--bytes", "1G", "--json",
                            "--algorithm", "ring"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {"time_s", "algbw_GBps", "busbw_GBps"} <= set(d)
    assert d["protocol"] == "ring/Simple"
    expected = 2 * 7 / 8 * 1e9 / 160e9 + 2 * 7 * 3.4e-6 + 8.4e-6
    assert d["time_s"] == pytest.approx(expected, rel=1e-6)
    assert d["busbw_GBps"] == pytest.approx(d["algbw_GBps"] * 2 * 7 / 8)


def test_collective_ep_dispatch_near_deepep():
    r = runner.invoke(app, ["collective", "ep_dispatch", "--tokens", "4096", "--hidden", "7168", "--json"])
    d = json.loads(r.stdout)
    assert d["dtype"] == "fp8" and d["bytes_per_token"] == 7392
    assert d["rdma_GBps"] == pytest.approx(51, rel=0.15)  # DeepEP normal kernels, EP64 on H800


def test_topology_summary_and_picture(tmp_path):
    png = tmp_path / "t.png"
    r = runner.invoke(app, ["topology", "--json", "--png", str(png)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["gpus"] == 2048 and d["nodes"] == 256
    assert d["bisection_Bps"] == pytest.approx(2048 * 50e9 / 2)  # non-blocking: half the NIC capacity
    assert png.stat().st_size > 5_000


def test_routing_command():
    r = runner.invoke(app, ["routing", "--routing", "balanced", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["imbalance"] == pytest.approx(1.0) and d["max_nodes_per_token"] <= 4
    skew = json.loads(runner.invoke(app, ["routing", "--skew", "0.5", "--tokens", "512", "--json"]).stdout)
    assert skew["imbalance"] > 1.2 and {"mean_nodes_per_token", "max_nodes_per_token"} <= set(skew)


def test_estimate_network_what_ifs_move_the_right_way():
    def hours(*extra):
        r = runner.invoke(app, ["estimate", "--tokens", "1T", "--batch", "15360", "--json", "--allow-oom", *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    base, slow_nic, skew = hours(), hours("--nic-gbps", "200"), hours("--routing", "skew:0.3")
    assert base["network_model"] == "graph" and base["routing"]["imbalance"] == pytest.approx(1.0)
    assert slow_nic["gpu_hours"] > base["gpu_hours"]
    assert skew["gpu_hours"] > base["gpu_hours"]
    assert skew["routing"]["gpu_hours_balanced"] == pytest.approx(base["gpu_hours"])


def test_calibrate_trace_writes_a_loadable_profile(tmp_path):
    from gpuhours.hwmodels.calibration import load_profile

    trace = profile_trace()
    if trace is None:
        pytest.skip(TRACE_ABSENT)
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["calibrate", "trace", str(trace), "-o", str(out)])
    assert r.exit_code == 0, r.output
    prof = load_profile(out)
    assert prof.source == "trace" and prof.provenance.device == "NVIDIA H800"


def test_calibrate_bench_refuses_cuda_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = runner.invoke(app, ["calibrate", "bench", "-o", str(tmp_path / "b.json")])
    assert r.exit_code == 2 and "cuda" in r.stderr
    assert not (tmp_path / "b.json").exists()


def test_validate_writes_page_and_json(tmp_path):
    r = runner.invoke(app, ["validate", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    for name in ("default-h800", "trace-h800"):
        assert {"trace_span_ms", "simulated_span_ms", "gpu_hours"} <= set(d["sources"][name])
    assert d["sources"]["trace-h800"]["trace_span_ms"] == pytest.approx(129.0, abs=0.1)
    assert (tmp_path / "validation.md").exists() and (tmp_path / "validation_phases.png").exists()


def test_phased_plan_estimate():
    r = runner.invoke(app, ["estimate", "--plan", "deepseek-v3-full", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    names = [p["name"] for p in d["phases"]]
    assert names[0] == "pre-training" and len(names) == 4
    assert d["total"]["gpu_hours"] == pytest.approx(sum(p["gpu_hours"] for p in d["phases"]))


def test_estimate_refuses_a_layout_that_does_not_fit():
    args = ["estimate", "--seq-len", "32768", "--batch", "1920", "--tokens", "63B"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "out of memory" in r.stderr and "--allow-oom" in r.stderr
    ok = runner.invoke(app, args + ["--allow-oom", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["memory"]["fits"] is False


def test_sweep_command(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\nbase = "deepseek-v3"\n[fixed]\ntokens = "1T"\nbatch = 15360\n'
                    '[grid]\nschedule = ["dualpipe", "1f1b"]\n')
    r = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "out"), "--executor", "serial", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["points_total"] == 2 and d["complete"]
    assert (tmp_path / "out" / "results.csv").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nbase = "deepseek-v3"\n[grid]\nwarp_drive = [1]\n')
    r = runner.invoke(app, ["sweep", str(bad), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "warp_drive" in r.stderr


def test_estimate_from_a_hugging_face_config(tmp_path):
    """A Llama-3-8B-shaped config.json: 8.0B parameters, priced on 64 H100."""
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    r = runner.invoke(app, ["estimate", "--model", str(path), "--gpu", "H100", "--gpus", "64", "--pp", "4",
                            "--schedule", "1f1b", "--tokens", "100B", "--batch", "512", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["params_total"] == pytest.approx(8.03e9, rel=0.01)
    assert d["layout"]["dp"] == 16 and d["memory"]["fits"]


@pytest.mark.parametrize("args, field", [
    (["estimate", "--pp", "abc"], "--pp"),
    (["estimate", "--price", "cheap"], "--price"),
    (["estimate", "--no-such-option", "3"], "--no-such-option"),
    (["schedule"], "name"),
    (["accuracy", "extra"], "arguments: 'extra' is more than"),
])
def test_option_parsing_errors_are_one_line(args, field):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0]


def test_help_renders_markup_as_written():
    r = CliRunner().invoke(app, ["estimate", "--help"])
    assert r.exit_code == 0 and "[[phase]]" in r.output


def test_schedules_are_compared_only_when_asked(default_json):
    assert "schedules" not in default_json  # `--compare-schedules` runs five more estimates


@pytest.mark.parametrize("args, field", [
    (["estimate", "--nic-gbps", "inf"], "nic_gbps"),
    (["estimate", "--oversubscription", "inf"], "oversubscription"),
    (["schedule", "1f1b", "--pp", "4", "--microbatches", "8", "--f", "inf"], "unit cost f"),
    (["schedule", "1f1b", "--pp", "4", "--microbatches", "8", "--b", "nan"], "unit cost b"),
    (["schedule", "1f1b", "--pp", "4", "--microbatches", "8", "--fb", "inf"], "unit cost fb"),
])
def test_infinite_and_nan_numbers_are_refused(args, field):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], r.stderr


@pytest.mark.parametrize("option, suffix, text, field", [
    ("--plan", ".toml", "x = " + "[" * 5000 + "]" * 5000, "plan"),
    ("--model", ".toml", "x = " + "[" * 5000 + "]" * 5000, ".toml"),
    ("--model", ".json", "[" * 100000 + "]" * 100000, "model file"),
    ("--calibration", ".json", "[" * 100000 + "]" * 100000, "calibration profile"),
    ("--model", ".json", '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, '
                         '"num_attention_heads": 0, "vocab_size": 100, "intermediate_size": 128}',
     "num_attention_heads"),
])
def test_hostile_input_files_get_one_line(tmp_path, option, suffix, text, field):
    path = tmp_path / f"input{suffix}"
    path.write_text(text)
    r = runner.invoke(app, ["estimate", option, str(path)])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], r.stderr


def test_goodput_adds_a_band_above_the_ideal_figure(tmp_path):
    chart = tmp_path / "gp.png"
    r = runner.invoke(app, ["estimate", "--model", "llama-3-70b", "--gpu", "h100", "--gpus", "64", "--pp", "1",
                            "--tp", "8", "--schedule", "1f1b", "--precision", "bf16", "--tokens", "1T", "--allow-oom",
                            "--goodput-chart", str(chart), "--goodput-timeline", str(tmp_path / "tl.svg"),
                            "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    g = d["goodput"]
    assert g["ideal_gpu_hours"] == pytest.approx(d["gpu_hours"], rel=1e-9)
    pct = g["gpu_hours_pct"]
    assert g["ideal_gpu_hours"] <= pct["p10"] <= pct["p50"] <= pct["p90"]
    assert chart.stat().st_size > 0 and (tmp_path / "tl.svg").stat().st_size > 0
    assert not list(tmp_path.glob(".*partial*"))


def test_goodput_bad_input_is_one_line(tmp_path):
    plan = tmp_path / "plan.toml"
    text = (Path(__file__).resolve().parents[1] / "workloads" / "plans" / "deepseek-v3.toml").read_text()
    plan.write_text(text + "\n[goodput]\nspares = 3\n")
    for args, field in ((["estimate", "--plan", str(plan), "--goodput"], "spares"),
                        (["estimate", "--goodput-chart", str(tmp_path / "gp.pdf")], "--goodput-chart")):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and field in lines[0], r.stderr
    assert not (tmp_path / "gp.pdf").exists()


def test_wrong_typed_or_missing_plan_keys_are_named(tmp_path):
    base = (Path(__file__).resolve().parents[1] / "workloads" / "plans" / "deepseek-v3.toml").read_text()
    bad_type = tmp_path / "t.toml"
    bad_type.write_text(base.replace("gpus = 2048", "gpus = { a = 1 }"))
    missing = tmp_path / "m.toml"
    missing.write_text(base.replace('gpu = "H800"', ""))
    for path, field in ((bad_type, "[cluster] gpus must be an integer"), (missing, "missing key 'gpu'")):
        r = runner.invoke(app, ["estimate", "--plan", str(path)])
        assert r.exit_code == 2, r.output
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and field in lines[0], r.stderr


def test_os_and_encoding_errors_name_the_file(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_bytes(b'x = "\xff"\n')
    folder = tmp_path / "spec.toml"
    folder.mkdir()
    for args, text in ((["estimate", "--plan", str(bad)], "not UTF-8 text: byte 0xff"),
                       (["sweep", str(folder)], f"{folder}: Is a directory")):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and text in lines[0], r.stderr


@pytest.mark.parametrize("args, field", [
    (["estimate", "--gpus", "2147483648"], "gpus must be at most"),
    (["schedule", "zb1p", "--pp", "9223372036854775807"], "microbatches"),
    (["step", "--schedule", "1f1b", "--microbatches", "1000001"], "microbatches"),
])
def test_sizes_without_bound_are_refused_quickly(args, field):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert field in r.stderr


def test_json_has_no_infinity():
    from gpuhours.cli import _finite  # what --json prints passes through it: JSON has no Infinity or NaN

    assert _finite({"a": float("inf"), "b": [1.0, float("nan")], "c": "x"}) == {"a": None, "b": [1.0, None], "c": "x"}


def test_plan_command_answers_and_refuses_bad_goals(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 1024, "num_hidden_layers": 4,
                               "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000,
                               "intermediate_size": 2816}))
    r = runner.invoke(app, ["plan", "--model", str(cfg), "--gpus", "8", "--gpu", "h100", "--seq-len", "2048",
                            "--tokens", "10B", "--max-simulated", "4", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["best"] is not None and d["simulated"] == 4
    bad = runner.invoke(app, ["plan", "--model", str(cfg), "--gpus", "8", "--goal", "fastest"])
    assert bad.exit_code == 2 and "goal" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
