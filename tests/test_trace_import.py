"""Trace import: figures of DeepSeek's measured H800 F&B trace, and interval arithmetic on synthetic traces."""

from __future__ import annotations

import gzip
import json

import pytest

from gpuhours.validation.external import TRACE_ABSENT, profile_trace
from gpuhours.validation.trace import (
    KNOWN_PHASES,
    OP_CLASSES,
    SCHEMA,
    classify,
    load_trace,
)
from gpuhours.validation.trace_summary import interval_union, summarise
from gpuhours.validation.trace_profile import profile_from_trace

TRACE = profile_trace()
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


@pytest.fixture(scope="module")
def measured():
    if TRACE is None:
        pytest.skip(TRACE_ABSENT)
    trace = load_trace(TRACE)
    raw = [e for e in json.loads(TRACE.read_text())["traceEvents"] if e.get("cat") in DEVICE_CATS]
    return trace, summarise(trace), raw


# ---------------------------------------------------------------------------------------- measured trace

def test_span_and_stream_busy_times_match_the_published_figures(measured):
    _, s, _ = measured
    assert s.span * 1e3 == pytest.approx(129.0, abs=0.05)
    assert set(s.stream_busy) == {7, 23, 27}
    assert s.stream_busy[7] * 1e3 == pytest.approx(118.2, abs=0.05)
    assert s.stream_busy[23] * 1e3 == pytest.approx(11.4, abs=0.05)
    assert s.stream_busy[27] * 1e3 == pytest.approx(114.5, abs=0.05)
    # a stream's busy time can never exceed the span
    assert max(s.stream_busy.values()) <= s.span


def test_four_annotated_instances_of_each_phase_all_launching_kernels(measured):
    _, s, _ = measured
    assert s.annotation_source == "cpu"
    for phase in KNOWN_PHASES:
        assert s.phases[phase].count == 4, phase
        assert len(s.phases[phase].spans) == 4, phase
    assert s.unannotated.count == 0


def test_class_times_conserve_the_sum_of_all_device_event_durations(measured):
    _, s, raw = measured
    raw_total = sum(e["dur"] for e in raw) * 1e-6
    assert s.event_count == len(raw) == sum(c.count for c in s.classes.values())
    assert sum(c.time for c in s.classes.values()) == pytest.approx(raw_total, rel=1e-12)
    # ... and so do the phases (every event sits in exactly one phase here) and the streams
    assert sum(p.total_kernel_time for p in s.phases.values()) == pytest.approx(raw_total, rel=1e-12)
    stream_total = sum(c.time for cs in s.stream_classes.values() for c in cs.values())
    assert stream_total == pytest.approx(raw_total, rel=1e-12)


def test_classification_leaves_almost_nothing_as_other(measured):
    _, s, _ = measured
    assert set(s.classes) <= set(OP_CLASSES)
    other = s.classes.get("other")
    other_count = other.count if other else 0
    other_time = other.time if other else 0.0
    assert other_count <= 3                       # the grouped GEMM's TMA-descriptor set-up kernel
    assert other_time / s.event_time < 1e-4
    # the GEMM classes are what the trace is mostly made of on the compute stream
    gemm = sum(s.classes[c].time for c in ("gemm_fp8", "gemm_grouped", "gemm_bf16"))
    assert gemm > 0.5 * (s.stream_busy[7] + s.stream_busy[23])


def test_phases_hold_the_kernels_their_names_promise(measured):
    _, s, _ = measured
    comm = {"a2a_dispatch", "a2a_combine", "a2a_notify", "quant"}
    for phase in ("dispatch(F)", "combine(F)", "dispatch(B)", "combine(B)"):
        assert set(s.phase_classes[phase]) <= comm, phase
    for phase in ("attn(F)", "mlp(F)", "attn(B)", "mlp(B)", "attn(W)", "mlp(W)"):
        assert not set(s.phase_classes[phase]) & {"a2a_dispatch", "a2a_combine", "a2a_notify"}, phase
    # attention backward kernels are launched from autograd's thread, yet land in attn(B)
    assert s.phase_classes["attn(B)"]["attn_bwd"].count == s.classes["attn_bwd"].count
    assert s.phase_classes["attn(F)"]["attn_fwd"].count == s.classes["attn_fwd"].count == 4
    # the W phases run weight-gradient GEMMs only (plus the casts feeding them)
    assert set(s.phase_classes["attn(W)"]) == {"gemm_fp8"}
    # the backward of a dispatch is a combine, and vice versa
    assert "a2a_combine" in s.phase_classes["dispatch(B)"]
    assert "a2a_dispatch" in s.phase_classes["combine(B)"]


def test_all_to_all_kernel_times(measured):
    trace, s, raw = measured
    dispatch_f = s.phase_classes["dispatch(F)"]["a2a_dispatch"]
    assert dispatch_f.count == 4
    combine = s.classes["a2a_combine"]
    assert combine.count == 8
    # independent: straight from the raw events by name
    disp = [e["dur"] for e in raw if "internode::dispatch<false, 8, false" in e["name"]]
    comb = [e["dur"] for e in raw if "internode::combine<" in e["name"]]
    assert dispatch_f.mean == pytest.approx(sum(disp) / len(disp) * 1e-6, rel=1e-12)
    assert combine.mean == pytest.approx(sum(comb) / len(comb) * 1e-6, rel=1e-12)
    assert dispatch_f.mean * 1e3 == pytest.approx(4.35, abs=0.01)
    assert combine.mean * 1e3 == pytest.approx(6.18, abs=0.01)


def test_profile_from_trace(measured):
    trace, s, raw = measured
    profile = profile_from_trace(s)
    json.dumps(profile)  # JSON-friendly
    assert profile["schema"] == SCHEMA and profile["source"] == "trace"
    # keys as hwmodels/calibration.py documents them (plus the "trace" section of measured times)
    assert set(profile) <= {"schema", "name", "source", "provenance", "gemm", "grouped_gemm", "attention",
                            "elementwise", "comm", "notes", "trace"}
    prov = profile["provenance"]
    assert set(prov) <= {"device", "sm_count", "date", "software", "method", "references", "peak_tflops"}
    assert prov["device"] == "NVIDIA H800" and prov["sm_count"] == 132
    assert isinstance(prov["software"], dict)
    assert any("train.json" in r and str(TRACE.stat().st_size) in r for r in prov["references"])
    assert profile["comm"]["dispatch(F)"]["a2a_dispatch"]["count"] == 4
    assert profile["trace"]["span_ms"] == pytest.approx(129.0, abs=0.05)
    for absent in ("gemm", "grouped_gemm", "attention", "elementwise"):
        assert absent not in profile
    # efficiency = flops / (time * peak), time the summed flash-forward kernel time
    flash_fwd = sum(e["dur"] for e in raw if "flash::compute_attn" in e["name"]) * 1e-6
    with_flops = profile_from_trace(s, expected_flops={"attn_fwd": 1e12, "attn(W)/gemm_fp8": 2e12},
                                    peak_flops={"default": 1e15})
    assert with_flops["attention"]["forward_efficiency"] == pytest.approx(1e12 / (flash_fwd * 1e15))
    assert "backward_efficiency" not in with_flops["attention"]
    assert with_flops["trace"]["efficiency"]["attn_fwd"]["tflops"] == pytest.approx(1.0 / flash_fwd)
    w = with_flops["trace"]["efficiency"]["attn(W)/gemm_fp8"]
    assert w["efficiency"] == pytest.approx(2e12 / (s.phase_classes["attn(W)"]["gemm_fp8"].time * 1e15))
    with pytest.raises(ValueError, match="peak_flops"):
        profile_from_trace(s, expected_flops={"attn_fwd": 1e12}, peak_flops={"gemm_fp8": 1e15})
    with pytest.raises(ValueError, match="expected_flops"):
        profile_from_trace(s, expected_flops={"no_such_phase": 1e12}, peak_flops={"default": 1e15})


# -------------------------------------------------------------------------------------- synthetic traces

def _kernel(name, tid, ts, dur, corr, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": tid, "ts": ts, "dur": dur,
            "args": {"device": 0, "stream": tid, "correlation": corr}}


def _launch(tid, ts, corr):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 100, "tid": tid,
            "ts": ts, "dur": 1, "args": {"correlation": corr}}


def _annotation(name, tid, ts, dur, cat="user_annotation", pid=100, ext=None):
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur,
            "args": {"External id": ext} if ext is not None else {}}


def _write(tmp_path, events, **extra):
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps({"traceEvents": events, **extra}))
    return path


def test_interval_union_counts_overlaps_once():
    assert interval_union([]) == 0.0
    assert interval_union([(0, 10), (5, 15), (20, 25)]) == 20      # 15 + 5
    assert interval_union([(0, 10), (2, 3), (10, 12)]) == 12       # nested and touching
    assert interval_union([(5, 6), (0, 1)]) == 2                   # order does not matter


def test_synthetic_trace_busy_span_and_cpu_phase_attribution(tmp_path):
    t0 = 1_000_000
    events = [
        # stream 7: two overlapping kernels and a later one; stream 9: one kernel inside the first
        _kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 7, t0 + 0, 10, 1),
        _kernel("void at::native::vectorized_elementwise_kernel<4>", 7, t0 + 5, 10, 2),
        _kernel("flash::FlashAttnBwd<...>", 7, t0 + 20, 5, 3),
        _kernel("Memset (Device)", 9, t0 + 2, 2, 4, cat="gpu_memset"),
        # CPU: main thread 1 annotates; the outer range encloses an inner one
        _annotation("ProfilerStep#3", 1, t0 - 100, 200),
        _annotation("1F1B", 1, t0 - 50, 100),
        _annotation("attn(F)", 1, t0 - 40, 20),
        _annotation("attn(B)", 1, t0 - 10, 5),
        _launch(1, t0 - 35, 1),          # in attn(F)
        _launch(1, t0 - 30, 4),          # in attn(F)
        _launch(1, t0 - 15, 2),          # only in 1F1B (outside attn(F) and attn(B))
        _launch(2, t0 - 8, 3),           # autograd thread 2: falls in thread 1's attn(B) by time
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 100, "tid": 1, "ts": t0 - 36, "dur": 3},
    ]
    s = summarise(load_trace(_write(tmp_path, events, deviceProperties=[{"id": 0, "name": "X", "numSms": 8}])))
    assert s.span == pytest.approx(25e-6)
    assert s.stream_busy[7] == pytest.approx(20e-6)     # (0,10) and (5,15) overlap: counted once
    assert s.stream_busy[9] == pytest.approx(2e-6)
    assert s.event_time == pytest.approx(27e-6)
    assert s.classes["gemm_bf16"].count == 1 and s.classes["memcpy"].count == 1
    assert s.annotation_source == "cpu"
    assert s.phases["attn(F)"].spans == pytest.approx((10e-6,))          # kernels 1 (0-10) and 4 (2-4)
    assert s.phases["attn(F)"].kernel_times == pytest.approx((12e-6,))
    assert s.phases["attn(B)"].spans == pytest.approx((5e-6,))
    assert s.phases["1F1B"].kernel_times == pytest.approx((10e-6,))
    assert "ProfilerStep#3" not in s.phases
    assert set(s.phases) == {"attn(F)", "attn(B)", "1F1B"}  # only names the trace annotates
    assert s.sm_count == 8 and s.device_name == "X"


def test_synthetic_trace_gpu_annotations(tmp_path):
    events = [
        _kernel("deep_gemm::fp8_gemm_kernel<GemmType::Normal>", 7, 100, 10, 1),
        _kernel("deep_gemm::fp8_gemm_kernel<GemmType::GroupedContiguous>", 7, 120, 10, 2),
        _kernel("deep_ep::internode::dispatch<false>", 27, 105, 30, 3),
        # one CPU range, written by Kineto once per stream with the same External id
        _annotation("mlp(F)", 7, 100, 30, cat="gpu_user_annotation", pid=0, ext=11),
        _annotation("mlp(F)", 27, 105, 30, cat="gpu_user_annotation", pid=0, ext=11),
        _annotation("mlp(F)", 1, 50, 10, ext=11),  # its CPU side: ignored when GPU annotations exist
    ]
    s = summarise(load_trace(_write(tmp_path, events)))
    assert s.annotation_source == "gpu"
    assert s.phases["mlp(F)"].count == 1
    assert s.phases["mlp(F)"].spans == pytest.approx((35e-6,))           # 100 .. 135 over both streams
    assert s.phases["mlp(F)"].kernel_times == pytest.approx((50e-6,))
    assert dict((c, v.count) for c, v in s.phase_classes["mlp(F)"].items()) == {
        "gemm_fp8": 1, "gemm_grouped": 1, "a2a_dispatch": 1}


def test_gzipped_and_bare_list_traces_load(tmp_path):
    events = [_kernel("rotary_kernel", 7, 0, 4, 1), _kernel("rotary_kernel", 7, 2, 4, 2)]
    gz = tmp_path / "t.json.gz"
    gz.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    assert summarise(load_trace(gz)).stream_busy[7] == pytest.approx(6e-6)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(events))
    assert summarise(load_trace(bare)).classes["elementwise"].count == 2


@pytest.mark.parametrize("content, match", [
    (None, "cannot read"),
    (b"not json at all", "not Chrome trace JSON"),
    (b'{"schemaVersion": 1}', "traceEvents"),
    (b'{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "a", "ts": 0, "dur": 1}]}', "no device events"),
])
def test_bad_input_raises_value_error(tmp_path, content, match):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_trace(path)


def test_several_devices_need_a_choice(tmp_path):
    a = _kernel("rotary_kernel", 7, 0, 4, 1)
    b = {**_kernel("rotary_kernel", 7, 0, 8, 2), "pid": 1, "args": {"device": 1, "correlation": 2}}
    path = _write(tmp_path, [a, b])
    with pytest.raises(ValueError, match="device"):
        load_trace(path)
    assert summarise(load_trace(path, device=1)).span == pytest.approx(8e-6)


@pytest.mark.parametrize("name, cat, expected", [
    ("Memcpy HtoD (Pinned -> Device)", "gpu_memcpy", "memcpy"),
    ("void deep_gemm::fp8_gemm_kernel<4096u, GemmType::Normal>", "kernel", "gemm_fp8"),
    ("void deep_gemm::fp8_gemm_kernel<7168u, GemmType::GroupedMasked>", "kernel", "gemm_grouped"),
    ("void deep_ep::intranode::combine<__nv_bfloat16, 8, 768>", "kernel", "a2a_combine"),
    ("void deep_ep::intranode::notify_dispatch<8>", "kernel", "a2a_notify"),
    ("void flash_fwd_splitkv_mla_kernel<Flash_fwd_kernel_traits_mla<576>>", "kernel", "attn_fwd"),
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_tn", "kernel", "gemm_bf16"),
    ("void rms_norm_kernel<c10::BFloat16>", "kernel", "norm"),
    ("some_unheard_of_kernel", "kernel", "other"),
])
def test_classify(name, cat, expected):
    assert classify(name, cat) == expected
