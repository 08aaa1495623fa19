"""Trace import on a synthetic trace in DeepSeek's profile-data format (validation/synthetic_trace.py), runs on a
clean clone: every figure is written out by hand from the generator's layout rules, not recomputed by the importer.

The pair below: 4 layers; compute-stream class times chosen so that every kernel lasts a round number of ms.
Kernels a layer (synthetic_trace.LAYER_KERNELS), stream 7: gemm_fp8 12 (2 of them, in mlp(W), with a twin on
stream 23), gemm_grouped 4, gemm_bf16 3, attn_fwd 1, attn_bwd 3, quant 4, norm 2, routing 2, reduce 2,
elementwise 4, memcpy 2 (a memcpy and a memset), other 1 = 40; stream 27: a2a_notify 5, a2a_dispatch 2,
a2a_combine 2, quant 1 = 10.
"""

from __future__ import annotations

import json

import pytest

from gpuhours.validation.calibrate_trace import busy_shares, comm_streams, measure
from gpuhours.validation.synthetic_trace import (LAYER_KERNELS, SyntheticPair, build_trace, slot_counts,
                                                 write_trace)
from gpuhours.validation.trace import KNOWN_PHASES, classify, load_trace
from gpuhours.validation.trace_summary import summarise

MS = 1e-3
# class time over the pair (ms) -> per kernel: gemm_fp8 48/48 = 1, gemm_grouped 24/16 = 1.5, gemm_bf16 1.2/12 = 0.1,
# attn_fwd 8/4 = 2, attn_bwd 18/12 = 1.5, quant 3.2/16 = 0.2, norm 1.6/8 = 0.2, routing 1.6/8 = 0.2,
# reduce 0.8/8 = 0.1, elementwise 4.8/16 = 0.3, memcpy 0.8/8 = 0.1, other 0.4/4 = 0.1
COMPUTE_MS = {"gemm_fp8": 48, "gemm_grouped": 24, "gemm_bf16": 1.2, "attn_fwd": 8, "attn_bwd": 18, "quant": 3.2,
              "norm": 1.6, "routing": 1.6, "reduce": 0.8, "elementwise": 4.8, "memcpy": 0.8, "other": 0.4}
# a2a_dispatch 16/8 = 2, a2a_combine 20/8 = 2.5, a2a_notify 2/20 = 0.1, quant 0.8/4 = 0.2
COMM_MS = {"a2a_dispatch": 16, "a2a_combine": 20, "a2a_notify": 2, "quant": 0.8}
GAP_MS = 0.5
STREAM7_MS = 112.4          # sum of COMPUTE_MS; 28.1 a layer
STREAM23_MS = 8.0           # 2 twins x 4 layers x 1 ms
STREAM27_MS = 38.8          # sum of COMM_MS; 9.7 a layer
SPAN_MS = 112.4 + 3 * GAP_MS
# per phase instance (every layer alike): kernel time and span, ms
PHASE_KERNEL_MS = {
    "attn(F)": 0.2 + 0.2 + 3 * 1 + 0.3 + 2 + 0.1 + 0.1 + 0.2 + 0.1,   # norm quant 3 fp8 rope attn copy router topk reduce
    "mlp(B)": 2 * 1.5 + 0.2 + 1 + 0.3,
    "mlp(W)": 3 * 1 + 0.2 + 2 * 1,                                     # ... plus the two stream-23 twins
    "mlp(F)": 0.2 + 0.1 + 2 * 1.5 + 0.3 + 1 + 0.1,
    "attn(B)": 2 * 1 + 3 * 1.5 + 0.1 + 2 * 0.1 + 0.3 + 0.2 + 0.2,
    "attn(W)": 2 * 1,
    "combine(B)": 0.1 + 2,
    "dispatch(F)": 0.2 + 2 * 0.1 + 2,
    "dispatch(B)": 0.1 + 2.5,
    "combine(F)": 0.1 + 2.5,
}
PHASE_SPAN_MS = PHASE_KERNEL_MS | {"mlp(W)": 3 * 1 + 0.2}               # the twins run beside their partners


@pytest.fixture(scope="module")
def pair():
    return SyntheticPair({c: t * MS for c, t in COMPUTE_MS.items()}, {c: t * MS for c, t in COMM_MS.items()},
                         layers=4, layer_gap=GAP_MS * MS)


@pytest.fixture(scope="module")
def path(pair, tmp_path_factory):
    return write_trace(tmp_path_factory.mktemp("synthetic") / "train.json", pair)


@pytest.fixture(scope="module")
def summary(path):
    return summarise(load_trace(path))


def test_the_layout_the_closed_forms_assume():
    assert sum(slot_counts(7).values()) == 40 and sum(slot_counts(27).values()) == 10
    assert slot_counts(7)["gemm_fp8"] == 12 and sum(k.twin for k in LAYER_KERNELS) == 2
    assert sum(COMPUTE_MS.values()) == pytest.approx(STREAM7_MS) and sum(COMM_MS.values()) == pytest.approx(STREAM27_MS)
    assert sum(PHASE_KERNEL_MS[p] for p in ("attn(F)", "mlp(B)", "mlp(W)", "mlp(F)", "attn(B)", "attn(W)")) \
        == pytest.approx(28.1 + 2)                                      # a layer's stream 7 plus its twins
    # every kernel name is classified as the class the generator files it under
    for k in LAYER_KERNELS:
        assert classify(k.name, k.cat) == k.op_class, k.name


def test_file_carries_the_real_traces_metadata(summary, path):
    doc = json.loads(path.read_text())
    assert set(doc) == {"schemaVersion", "deviceProperties", "distributedInfo", "traceEvents", "traceName"}
    assert (summary.device_name, summary.sm_count, summary.rank, summary.world_size, summary.backend) == \
        ("NVIDIA H800", 132, 0, 64, "nccl")
    assert summary.trace_schema_version == 1 and "ep64_tp1" in summary.trace_name and "seqlen4096" in summary.trace_name
    cats = {e.get("cat") for e in doc["traceEvents"]}
    assert {"kernel", "gpu_memcpy", "gpu_memset", "cuda_runtime", "cuda_driver", "user_annotation", "cpu_op",
            "ac2g"} <= cats
    assert "gpu_user_annotation" not in cats                             # CPU annotations only, as DeepSeek's


def test_span_and_stream_busy_times(summary):
    assert summary.span == pytest.approx(SPAN_MS * MS, rel=1e-9)
    assert set(summary.stream_busy) == {7, 23, 27}
    assert summary.stream_busy[7] == pytest.approx(STREAM7_MS * MS, rel=1e-9)
    assert summary.stream_busy[23] == pytest.approx(STREAM23_MS * MS, rel=1e-9)
    assert summary.stream_busy[27] == pytest.approx(STREAM27_MS * MS, rel=1e-9)
    assert summary.event_count == 4 * (40 + 2 + 10)
    assert summary.event_time == pytest.approx((STREAM7_MS + STREAM23_MS + STREAM27_MS) * MS, rel=1e-9)


def test_per_class_counts_and_sums(summary):
    expected = {  # (count, ms) over the pair
        "gemm_fp8": (48 + 8, 48 + 8), "gemm_grouped": (16, 24), "gemm_bf16": (12, 1.2), "attn_fwd": (4, 8),
        "attn_bwd": (12, 18), "quant": (16 + 4, 3.2 + 0.8), "norm": (8, 1.6), "routing": (8, 1.6),
        "reduce": (8, 0.8), "elementwise": (16, 4.8), "memcpy": (8, 0.8), "other": (4, 0.4),
        "a2a_dispatch": (8, 16), "a2a_combine": (8, 20), "a2a_notify": (20, 2)}
    assert set(summary.classes) == set(expected)
    for c, (count, ms) in expected.items():
        assert summary.classes[c].count == count, c
        assert summary.classes[c].time == pytest.approx(ms * MS, rel=1e-9), c
    assert summary.stream_classes[23]["gemm_fp8"].count == 8
    assert set(summary.stream_classes[27]) == {"a2a_dispatch", "a2a_combine", "a2a_notify", "quant"}


def test_phases_by_cpu_annotation_with_autograd_launches(summary):
    assert summary.annotation_source == "cpu"
    assert list(summary.phases) == list(KNOWN_PHASES)           # not ProfilerStep#1, not the empty 1F1B range
    assert summary.unannotated.count == 0
    for phase in KNOWN_PHASES:
        s = summary.phases[phase]
        assert s.count == 4 and len(s.spans) == 4, phase
        assert s.kernel_times == pytest.approx((PHASE_KERNEL_MS[phase] * MS,) * 4, rel=1e-9), phase
        assert s.spans == pytest.approx((PHASE_SPAN_MS[phase] * MS,) * 4, rel=1e-9), phase
    # attn(B)'s kernels are launched from the autograd thread, outside any annotation on it
    assert summary.phase_classes["attn(B)"]["attn_bwd"].count == 12
    assert summary.phase_classes["mlp(W)"]["gemm_fp8"].count == 4 * (3 + 2)
    assert set(summary.phase_classes["dispatch(F)"]) == {"quant", "a2a_notify", "a2a_dispatch"}
    # conservation: phases hold every event once
    assert sum(p.total_kernel_time for p in summary.phases.values()) == pytest.approx(summary.event_time, rel=1e-12)


def test_calibration_measure_busy_shares(path):
    """calibrate_trace.measure: twins share their instant, so each class's busy share is its COMPUTE_MS."""
    trace = load_trace(path)
    assert comm_streams(trace) == {27}
    shares = busy_shares(trace, {7, 23})
    twin_shares = [shares[i] for i, e in enumerate(trace.events) if e.stream == 23]
    assert twin_shares == pytest.approx([0.5 * MS] * 8, rel=1e-9)      # 1 ms split between two GEMMs
    m = measure(trace)
    assert m.compute_streams == (7, 23) and m.comm_streams == (27,) and m.layers_per_chunk == 4
    assert m.compute_union == pytest.approx(STREAM7_MS * MS, rel=1e-9)
    memory = 3.2 + 1.6 + 1.6 + 0.8 + 4.8 + 0.8 + 0.4
    for c, ms in {"gemm_fp8": 48, "gemm_grouped": 24, "gemm_bf16": 1.2, "attn_fwd": 8, "attn_bwd": 18,
                  "memory": memory}.items():
        assert m.classes[c] == pytest.approx(ms * MS, rel=1e-9), c
    assert m.comm_classes == pytest.approx({"a2a_dispatch": 16 * MS, "a2a_combine": 20 * MS,
                                            "a2a_notify": 2 * MS, "quant": 0.8 * MS}, rel=1e-9)
    assert m.phases["mlp(W)"]["share"] == pytest.approx(4 * 3.2 * MS, rel=1e-9)
    assert m.phases["mlp(W)"]["kernel"] == pytest.approx(4 * 5.2 * MS, rel=1e-9)
    assert m.phases["dispatch(F)"]["share"] == pytest.approx(4 * 2.4 * MS, rel=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=0), "layers"),
    (dict(layer_gap=-1.0), "layer_gap"),
    (dict(compute={"gemm_fp8": 1.0}), "compute_times"),
    (dict(compute=COMPUTE_MS | {"attn_fwd": 0.0}), "compute_times"),
    (dict(comm=COMM_MS | {"a2a_combine": 1e6}), "comm_times"),
])
def test_generator_rejects_bad_input(kwargs, match):
    compute = {c: t * MS for c, t in kwargs.pop("compute", COMPUTE_MS).items()}
    comm = {c: t * MS for c, t in kwargs.pop("comm", COMM_MS).items()}
    with pytest.raises(ValueError, match=match):
        SyntheticPair(compute, comm, **kwargs)


def test_document_is_plain_json(pair):
    doc = build_trace(pair)
    assert json.loads(json.dumps(doc)) == doc


def test_gpu_annotated_variant_attributes_the_same_phases(pair, tmp_path):
    """Newer Kineto also writes each range per stream (gpu_user_annotation); adjacent phases then touch on stream 7
    (mlp(W) ends where mlp(F) begins), so the first kernel of a phase must not go to the shorter one before it."""
    s = summarise(load_trace(write_trace(tmp_path / "gpu.json", pair, gpu_annotations=True)))
    assert s.annotation_source == "gpu" and s.unannotated.count == 0
    for phase in KNOWN_PHASES:
        assert s.phases[phase].kernel_times == pytest.approx((PHASE_KERNEL_MS[phase] * MS,) * 4, rel=1e-9), phase
        assert s.phases[phase].spans == pytest.approx((PHASE_SPAN_MS[phase] * MS,) * 4, rel=1e-9), phase


def test_touching_gpu_ranges_in_integer_microseconds(tmp_path):
    """1e-6 + 9e-6 > 10e-6 in doubles: a range at 1 us lasting 9 us ends one ulp after the kernel starting at
    10 us. That kernel belongs to the range starting there, not to the shorter one before it."""
    t0 = 1_000_000

    def kernel(ts, dur, corr):
        return {"ph": "X", "cat": "kernel", "name": "rotary_kernel", "pid": 0, "tid": 7, "ts": t0 + ts, "dur": dur,
                "args": {"device": 0, "stream": 7, "correlation": corr}}

    def gpu_range(name, ts, dur, ext):
        return {"ph": "X", "cat": "gpu_user_annotation", "name": name, "pid": 0, "tid": 7, "ts": t0 + ts,
                "dur": dur, "args": {"External id": ext}}

    path = tmp_path / "touching.json"
    path.write_text(json.dumps({"traceEvents": [kernel(0, 1, 1), kernel(1, 9, 2), kernel(10, 20, 3),
                                                gpu_range("x", 1, 9, 11), gpu_range("y", 10, 20, 12)]}))
    s = summarise(load_trace(path))
    assert s.phases["x"].kernel_times == pytest.approx((9e-6,))
    assert s.phases["y"].kernel_times == pytest.approx((20e-6,))
    assert s.unannotated.count == 1
