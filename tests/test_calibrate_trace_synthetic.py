"""`calibrate trace` round trip on synthetic DeepSeek-format traces generated from a KNOWN calibration, and the CLI
paths (`gpuhours calibrate trace`, `gpuhours validate --trace`) on them: runs on a clean clone.

The expected figures are the generator's inputs (time ratios, efficiencies), never what the derivation computes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.calibration import load_profile
from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.validation.calibrate_trace import measure, profile_from_traced_case
from gpuhours.validation.compare import compare_traced_pair
from gpuhours.validation.synthetic_trace import (LAYER_KERNELS, STREAM_COMPUTE, KnownProfile, SyntheticPair,
                                                 build_trace, pair_for_profile, slot_counts, write_trace)
from gpuhours.validation.trace import load_trace
from gpuhours.workloads.presets import load_preset

runner = CliRunner()
KNOWN = {  # two calibrations, the second on a 2-layer pair
    "a": (KnownProfile(dense_fp8_ratio=1.3, grouped_fp8_ratio=1.15, wgrad_fp8_ratio=1.4, router_bf16_ratio=1.6,
                       attention_forward_efficiency=0.42, attention_backward_efficiency=0.33,
                       elementwise_efficiency=0.55), 4),
    "b": (KnownProfile(dense_fp8_ratio=0.85, grouped_fp8_ratio=1.4, wgrad_fp8_ratio=0.95, router_bf16_ratio=0.9,
                       attention_forward_efficiency=0.61, attention_backward_efficiency=0.27,
                       elementwise_efficiency=0.8), 2),
}


@pytest.fixture(scope="module", params=sorted(KNOWN))
def case(request, tmp_path_factory):
    known, layers = KNOWN[request.param]
    pair = pair_for_profile(known, layers=layers)
    path = write_trace(tmp_path_factory.mktemp(f"synthetic_{request.param}") / "train.json", pair)
    return known, layers, pair, path, profile_from_traced_case(path, "default-h800", date="2000-01-01")


def test_generated_attention_time_is_the_closed_form(case):
    """The generator's attention kernels: core FLOPs 2 h (d_qk + d_v) T (T+1)/2 a layer (backward 2.5x), over
    efficiency x H800 BF16 peak x 112/132 SMs (20 of 132 run DeepEP)."""
    known, layers, pair, _, _ = case
    a, T = load_preset("deepseek-v3").attention, 4096
    core = 2 * a.n_heads * (a.qk_head_dim + a.v_head_dim) * T * (T + 1) / 2
    rate = load_gpu("H800").peak_flops("bf16") * 112 / 132
    assert pair.compute_times["attn_fwd"] == pytest.approx(layers * core / (known.attention_forward_efficiency * rate))
    assert pair.compute_times["attn_bwd"] == pytest.approx(
        2.5 * layers * core / (known.attention_backward_efficiency * rate))


def test_round_trip_recovers_the_known_calibration(case):
    known, layers, _, _, profile = case
    d = profile.trace["derivation"]
    assert d["sm_fraction"] == pytest.approx(112 / 132, rel=1e-12)
    assert d["time_ratio"]["gemm.fp8"] == pytest.approx(known.dense_fp8_ratio, rel=1e-6)
    assert d["time_ratio"]["grouped_gemm.fp8"] == pytest.approx(known.grouped_fp8_ratio, rel=1e-6)
    assert d["time_ratio"]["wgrad.fp8"] == pytest.approx(known.wgrad_fp8_ratio, rel=1e-6)
    assert d["time_ratio"]["gemm.bf16"] == 1.0                   # the router's ratio is recorded, not applied
    assert d["router_bf16_time_ratio_not_applied"] == pytest.approx(known.router_bf16_ratio, rel=1e-6)
    assert profile.attention_forward_efficiency == pytest.approx(known.attention_forward_efficiency, rel=1e-6)
    assert profile.attention_backward_efficiency == pytest.approx(known.attention_backward_efficiency, rel=1e-6)
    assert profile.elementwise_bandwidth_efficiency == pytest.approx(known.elementwise_efficiency, rel=1e-6)
    assert profile.trace["measured"]["layers_per_chunk"] == layers


def test_kernels_per_op_conserve_the_traced_compute_kernels(case):
    """Kernels per op x our ops of the pair = the trace's compute-stream kernels: the generator's slots of a layer
    on stream 7 plus the twins on stream 23, times the layers."""
    _, layers, _, _, profile = case
    per_layer = sum(slot_counts(STREAM_COMPUTE).values()) + sum(1 for k in LAYER_KERNELS if k.twin)
    rec = profile.trace["derivation"]["launch"]
    per_op = dict(profile.launch.kernels_per_op)
    assert sum(per_op[kind] * n for kind, n in rec["modelled_ops"].items()) == pytest.approx(layers * per_layer,
                                                                                            rel=1e-4)
    assert rec["unmatched_kernels"] == {}


def test_round_trip_scales_the_base_gemm_curves(case):
    known, _, _, _, profile = case
    base = load_profile("default-h800")
    for section, ratio in (("gemm", known.dense_fp8_ratio), ("grouped_gemm", known.grouped_fp8_ratio)):
        ours, theirs = getattr(profile, section)["fp8"], getattr(base, section)["fp8"]
        assert len(ours) == len(theirs) > 0
        for q, b in zip(ours, theirs):
            assert (q.m, q.n, q.k) == (b.m, b.n, b.k)
            assert q.tflops == pytest.approx(b.tflops / ratio, abs=5e-4)   # stored to 3 decimals
    assert [q.tflops for q in profile.gemm["bf16"]] == [q.tflops for q in base.gemm["bf16"]]
    for kind in ("gemm", "grouped_gemm"):  # the weight-gradient curves, by the W phases' ratio
        ours, theirs = profile.wgrad[kind]["fp8"], base.wgrad[kind]["fp8"]
        assert len(ours) == len(theirs) > 0
        for q, b in zip(ours, theirs):
            assert (q.m, q.n, q.k) == (b.m, b.n, b.k)
            assert q.tflops == pytest.approx(b.tflops / known.wgrad_fp8_ratio, abs=5e-4)


def test_phase_residuals_vanish_where_the_trace_is_what_the_profile_says(case):
    """The generator puts each phase's FP8 GEMM time where our ops of that phase have it, at the known ratios, so
    the derived profile leaves no spread over the phases for the GEMM classes (so the profile states no uncertainty
    for them: the sensitivity table's default holds); the memory-bound time is split evenly over kernels whatever the phase, so its spread is
    not zero and is stated."""
    _, _, _, _, profile = case
    res = profile.trace["derivation"]["phase_residuals"]
    assert res["gemm_fp8"]["spread"] == pytest.approx(0.0, abs=1e-6)
    assert res["gemm_grouped"]["spread"] == pytest.approx(0.0, abs=1e-6)
    assert set(res["gemm_fp8"]["phases_ms"]) == {"attn(F)", "mlp(B)", "mlp(W)", "mlp(F)", "attn(B)", "attn(W)"}
    assert res["memory"]["spread"] > 0.05
    assert profile.uncertainty["elementwise"] == pytest.approx(res["memory"]["spread"], abs=1e-4)
    assert "gemm_fp8" not in profile.uncertainty and "grouped_gemm_fp8" not in profile.uncertainty


def test_derived_profile_reprices_every_class_but_the_router(case):
    """Simulating the pair with the derived profile gives back each class's generated time; the BF16 router keeps
    the base curve, so it comes out at its generated time / the router ratio."""
    known, _, pair, path, profile = case
    r = compare_traced_pair(profile, measure(load_trace(path)).to_dict())
    memory = sum(pair.compute_times[c] for c in ("quant", "norm", "routing", "reduce", "elementwise", "memcpy",
                                                  "other"))
    for c in ("gemm_fp8", "gemm_grouped", "attn_fwd", "attn_bwd"):
        assert r["classes"][c]["simulated_ms"] == pytest.approx(pair.compute_times[c] * 1e3, rel=1e-4), c
    assert r["classes"]["memory"]["simulated_ms"] == pytest.approx(memory * 1e3, rel=1e-6)
    assert r["classes"]["gemm_bf16"]["simulated_ms"] == pytest.approx(
        pair.compute_times["gemm_bf16"] * 1e3 / known.router_bf16_ratio, rel=1e-6)


# -------------------------------------------------------------------------------------------------------- CLI

def _one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_calibrate_trace_writes_the_profile_where_o_says(case, tmp_path):
    known, _, _, path, _ = case
    out = tmp_path / "sub" / "derived.json"
    out.parent.mkdir()
    r = runner.invoke(app, ["calibrate", "trace", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert str(out) in r.stdout and list(tmp_path.rglob("*.json")) == [out]
    profile = load_profile(out)
    assert profile.source == "trace" and profile.provenance.device == "NVIDIA H800"
    assert profile.trace["derivation"]["time_ratio"]["gemm.fp8"] == pytest.approx(known.dense_fp8_ratio, rel=1e-6)
    assert profile.attention_forward_efficiency == pytest.approx(known.attention_forward_efficiency, rel=1e-6)


def _variant(tmp_path, name, edit):
    doc = build_trace(pair_for_profile(KNOWN["a"][0]))
    edit(doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _drop_comm_stream(doc):
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("tid") != 27]


def _drop_one_mlp_forward(doc):
    first = next(i for i, e in enumerate(doc["traceEvents"])
                 if e.get("cat") == "user_annotation" and e["name"] == "mlp(F)")
    del doc["traceEvents"][first]


@pytest.mark.parametrize("name, make, words", [
    ("missing.json", None, ("no such file",)),
    ("notjson.json", lambda p: p.write_text("{not json"), ("not Chrome trace JSON",)),
    ("nodevice.json", lambda p: p.write_text('{"traceEvents": []}'), ("no device events",)),
    ("nocomm.json", _drop_comm_stream, ("all-to-all",)),
    ("seqlen.json", lambda doc: doc.update(traceName=doc["traceName"].replace("seqlen4096", "seqlen8192")),
     ("traceName", "seq_len")),
    ("phases.json", _drop_one_mlp_forward, ("phases",)),
])
def test_cli_calibrate_trace_malformed_is_one_line_exit_2(tmp_path, name, make, words):
    if make is None:
        path = tmp_path / name
    elif name in ("notjson.json", "nodevice.json"):
        path = tmp_path / name
        make(path)
    else:
        path = _variant(tmp_path, name, make)
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["calibrate", "trace", str(path), "-o", str(out)])
    _one_line_error(r, *words)
    assert not out.exists()


def test_cli_validate_with_a_synthetic_trace(tmp_path):
    """validate --trace compares against the given file: its span is the generator's (a layer's compute time x
    layers + gaps), and the page lands in --out."""
    pair = SyntheticPair({"gemm_fp8": 0.048, "gemm_grouped": 0.024, "gemm_bf16": 0.0012, "attn_fwd": 0.008,
                          "attn_bwd": 0.018, "quant": 0.0032, "norm": 0.0016, "routing": 0.0016, "reduce": 0.0008,
                          "elementwise": 0.0048, "memcpy": 0.0008, "other": 0.0004},
                         {"a2a_dispatch": 0.016, "a2a_combine": 0.020, "a2a_notify": 0.002, "quant": 0.0008},
                         layers=4, layer_gap=0.5e-3)
    path = write_trace(tmp_path / "train.json", pair)
    out = tmp_path / "page"
    r = runner.invoke(app, ["validate", "--trace", str(path), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["measured"]["from"] == "trace file train.json"
    assert d["measured"]["span_ms"] == pytest.approx(112.4 + 3 * 0.5, rel=1e-6)
    assert d["measured"]["compute_union_ms"] == pytest.approx(112.4, rel=1e-6)
    for name in ("default-h800", "trace-h800"):
        assert d["sources"][name]["trace_span_ms"] == pytest.approx(113.9, rel=1e-6)
    assert (out / "validation.md").exists() and (out / "validation_phases.png").exists()
    assert not (tmp_path / "validation.md").exists()


def test_cli_validate_malformed_trace_is_one_line_exit_2(tmp_path):
    path = _variant(tmp_path, "nocomm.json", _drop_comm_stream)
    r = runner.invoke(app, ["validate", "--trace", str(path), "--out", str(tmp_path / "page")])
    _one_line_error(r, "all-to-all")
    r = runner.invoke(app, ["validate", "--trace", str(tmp_path / "absent.json"), "--out", str(tmp_path / "page")])
    _one_line_error(r, "no such file")
    assert not (tmp_path / "page" / "validation.md").exists()


def test_deepep_kernel_time_ratio_is_linear_in_the_traced_kernels(tmp_path):
    """The DeepEP kernel time ratio a trace gives is its kernels' time over our modelled time of the same calls,
    per kernel: doubling the trace's dispatch kernels doubles the dispatch ratio and leaves the combine's."""
    from dataclasses import replace

    known = KnownProfile()
    doubled = replace(known, comm_times=dict(known.comm_times) | {"a2a_dispatch": 2 * known.comm_times["a2a_dispatch"]})
    ratios = []
    for name, k in (("one", known), ("two", doubled)):
        path = write_trace(tmp_path / f"{name}.json", pair_for_profile(k, layers=2))
        ratios.append(profile_from_traced_case(path, "default-h800", date="2000-01-01").comm["deepep_kernel_time_ratio"])
    assert ratios[1]["dispatch"] == pytest.approx(2 * ratios[0]["dispatch"], rel=1e-5)   # stored to 6 decimals
    assert ratios[1]["combine"] == ratios[0]["combine"]
