"""Any model's Kineto trace: kernel classes, per-step sums, ranks, and the per-class calibration against our ops.

The traces are synthetic, built here from known per-class times, of a tiny dense model (2 layers, hidden 1,024,
MHA 8 x 128, SwiGLU 4,096, vocabulary 32,000) trained BF16 on 2 H100s: TP1, PP1, DP2, micro-batch 1 of 4,096
tokens, global batch 4 (so 2 micro-batches per rank and step), no recomputation. The base profile is one BF16
GEMM point of 600 TFLOP/s (efficiency 600 / 989.4 of the H100's dense BF16 peak, the same at every shape), so
our GEMM time per step has a closed form: 6 x tokens x linear parameters / 600 TFLOP/s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpuhours.hwmodels.calibration import load_profile
from gpuhours.validation.kineto import classify_kernel, load_ranks
from gpuhours.validation.kineto_figures import measure, measure_files
from gpuhours.validation.kineto_calibrate import calibrate, compare_step

H, LAYERS, VOCAB, FFN, HEADS, HEAD_DIM = 1024, 2, 32000, 4096, 8, 128
SEQ, MICRO, RANKS = 4096, 2, 2            # tokens per micro-batch, micro-batches per rank and step, GPUs
H100_BF16 = 989.4e12                      # H100 SXM dense BF16 peak (datasheet, half the sparse 1,979)
H100_HBM = 3.35e12                        # H100 SXM HBM3 bandwidth (datasheet)
GEMM_RATE = 600e12                        # the test base profile's only GEMM point
LINEAR = LAYERS * (4 * H * H + 3 * H * FFN) + H * VOCAB   # q, k, v, o; w1, w3, w2; output head
GEMM_S = MICRO * 6 * SEQ * LINEAR / GEMM_RATE             # forward 2, input grad 2, weight grad 2 FLOP / param
ATTN_F_FLOPS = MICRO * LAYERS * 2 * HEADS * 2 * HEAD_DIM * SEQ * (SEQ + 1) / 2  # causal QK^T and PV
ATTN_B_FLOPS = 2.5 * ATTN_F_FLOPS

MODEL_TOML = f"""
[model]
name = "tiny-dense"
hidden = {H}
n_layers = {LAYERS}
vocab = {VOCAB}
dense_intermediate = {FFN}
mtp_depth = 0
tie_embeddings = false

[attention]
kind = "gqa"
n_heads = {HEADS}
n_kv_heads = {HEADS}
head_dim = {HEAD_DIM}
"""

LAYOUT = ["--gpu", "H100", "--gpus", "2", "--pp", "1", "--tp", "1", "--schedule", "1f1b", "--micro-batch-size", "1",
          "--seq-len", str(SEQ), "--batch", "4", "--recompute", "none", "--zero-stage", "1"]
KW = dict(gpu="H100", gpus=2, pp=1, tp=1, schedule="1f1b", micro_batch_size=1, seq_len=SEQ, batch=4,
          recompute="none", zero_stage=1)

# Real-looking kernel names -> class.
NAMES = {
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize1x1x1_execute_segment_k_off": "gemm_bf16",
    "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTT": "gemm_bf16",
    "void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cutlass::gemm::GemmShape<128, 128, 64>>>":
        "gemm_bf16",
    "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_32x5_tn": "gemm_bf16",
    "triton_tem_fused_addmm_0": "gemm_bf16",
    "sm90_xmma_gemm_e4m3bf16_e4m3f32_f32_tn_n_tilesize128x128x128_warpgroupsize1x1x1": "gemm_fp8",
    "void deep_gemm::fp8_gemm_kernel<4096u, 7168u, 128u, 128u, 128u, 1u, 8u>(...)": "gemm_fp8",
    "void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>":
        "attn_fwd",
    "void flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128>>": "attn_bwd",
    "void cutlass::device_kernel<flash::FlashAttnFwdSm90<cute::tuple<cute::C<128>>>>": "attn_fwd",
    "void cutlass::device_kernel<flash::FlashAttnBwdSm90<cute::tuple<cute::C<128>>>>": "attn_bwd",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0": "attn_fwd",
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_4_64x128x128_4x1x1_kernel0_0": "attn_bwd",
    "fmha_cutlassF_bf16_aligned_64x128_rf_sm80": "attn_fwd",
    "_attn_bwd": "attn_bwd",
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "nccl_all_reduce",
    "ncclKernel_AllReduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)": "nccl_all_reduce",
    "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "nccl_reduce_scatter",
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "nccl_all_gather",
    "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)": "nccl_send_recv",
    "ncclDevKernel_Broadcast_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "nccl_other",
    "void deep_ep::internode::dispatch<true, 8, 768, 8>(int4*, float*, int*)": "deepep_dispatch",
    "void deep_ep::intranode::combine<nv_bfloat16, 8, 768>(nv_bfloat16*, float*)": "deepep_combine",
    "void deep_ep::internode::notify_dispatch<8>(int const*, int*, int)": "deepep_notify",
    "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0": "elementwise",
    "triton_poi_fused_mul_silu_1": "elementwise",
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, at::detail::Array<char*, 1>>":
        "elementwise",
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::(anonymous "
    "namespace)::SoftMaxForwardEpilogue>(float*, float const*, int)": "elementwise",
    "void multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float, 4>>": "elementwise",
    "void rmsnorm_fwd_kernel<__nv_bfloat16>(...)": "elementwise",
    "some_custom_kernel_v2": "other",
}


def test_classification_table():
    got = {name: classify_kernel(name) for name in NAMES}
    assert got == NAMES
    assert classify_kernel("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy") == "memcpy"
    assert classify_kernel("Memset (Device)", "gpu_memset") == "memset"


# ------------------------------------------------------------------------------------------ trace builder
def _trace(per_step: dict[str, float], steps: int = 2, rank: int = 0, devices=(0,), gpu_steps: bool = False,
           warmup: bool = True, annotate: bool = True, gap_us: float = 0.0) -> dict:
    """A Kineto trace: `steps` ProfilerStep#N of the same kernels, `per_step[name]` seconds of kernel `name`
    per step (split into 4 launches; names from NAMES), CPU step annotations and launch calls matched by
    correlation (or GPU-side step annotations), one warm-up kernel before the first step. Every launch call of a
    step starts 1 us after it does (the host ahead); `gap_us` of idle follow each compute kernel."""
    events, corr, t = [], 1, 1000.0
    for dev in devices:
        t = 1000.0
        if warmup:
            events.append({"ph": "X", "cat": "kernel", "name": "triton_poi_fused_warmup", "pid": dev, "tid": 7,
                           "ts": t, "dur": 50.0, "args": {"device": dev, "stream": 7, "correlation": corr}})
            events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 100 + dev,
                           "tid": 1, "ts": t - 5, "dur": 2.0, "args": {"correlation": corr}})
            corr += 1
            t += 100.0
        for step in range(1, steps + 1):
            start = comm = t
            for name, seconds in per_step.items():
                stream = 13 if name.startswith("nccl") else 7
                for _ in range(4):
                    dur = seconds / 4 * 1e6
                    ts = t if stream == 7 else comm  # comm kernels back to back from the step's start
                    events.append({"ph": "X", "cat": "kernel", "name": name, "pid": dev, "tid": stream, "ts": ts,
                                   "dur": dur, "args": {"device": dev, "stream": stream, "correlation": corr}})
                    events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel",
                                   "pid": 100 + dev, "tid": 1, "ts": start + 1.0, "dur": 2.0,
                                   "args": {"correlation": corr}})
                    corr += 1
                    if stream == 7:
                        t += dur + gap_us
                    else:
                        comm += dur
            cat = "gpu_user_annotation" if gpu_steps else "user_annotation"
            if annotate:
                events.append({"ph": "X", "cat": cat, "name": f"ProfilerStep#{step}", "ts": start,
                               "dur": t - start + 10.0, "pid": dev if gpu_steps else 100,
                               "tid": 7 if gpu_steps else 1})
            t += 20.0
    return {"schemaVersion": 1, "traceName": "synthetic",
            "deviceProperties": [{"id": d, "name": "NVIDIA H100 80GB HBM3", "numSms": 132} for d in devices],
            "distributedInfo": {"backend": "nccl", "rank": rank, "world_size": RANKS},
            "traceEvents": events}


GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize1x1x1_execute_segment_k_off"
FWD = "void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>"
BWD = "void flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128>>"
NORM = "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0"
RS = "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
AG = "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)"


def _rank_times(gemm_factor: float) -> dict[str, float]:
    return {GEMM: gemm_factor * GEMM_S, FWD: ATTN_F_FLOPS / (H100_BF16 * 0.40), BWD: ATTN_B_FLOPS / (H100_BF16 * 0.30),
            NORM: 0.004, RS: 0.002, AG: 0.001}


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture()
def files(tmp_path):
    """Two ranks' traces (GEMMs 1.2 and 1.3 x the base's modelled time: 1.25 on average), the model and the
    one-point base profile."""
    r0 = _write(tmp_path / "rank0.json", _trace(_rank_times(1.20), rank=0))
    r1 = _write(tmp_path / "rank1.json", _trace(_rank_times(1.30), rank=1))
    model = tmp_path / "tiny.toml"
    model.write_text(MODEL_TOML)
    base = load_profile("default-h800").to_dict()
    base.update(name="one-point", gemm={"bf16": [{"m": 1, "n": 1, "k": 1, "tflops": GEMM_RATE / 1e12}]},
                grouped_gemm={"bf16": [{"groups": 1, "m": 1, "n": 1, "k": 1, "tflops": GEMM_RATE / 1e12}]})
    base["provenance"]["peak_tflops"] = {"bf16": H100_BF16 / 1e12}
    base.pop("notes", None)
    bp = tmp_path / "base.json"
    bp.write_text(json.dumps(base))
    return {"ranks": [r0, r1], "model": model, "base": bp, "dir": tmp_path}


# ------------------------------------------------------------------------------------------ measurement
def test_per_class_sums_equal_what_was_put_in(files):
    ranks = load_ranks(files["ranks"][:1])
    assert len(ranks) == 1 and ranks[0].rank == 0 and ranks[0].steps == (1, 2)
    assert ranks[0].outside_steps == 1                      # the warm-up kernel before ProfilerStep#1
    m = measure(ranks)
    want = _rank_times(1.20)
    got = m.classes
    assert got["gemm_bf16"] == pytest.approx(want[GEMM], rel=1e-9)
    assert got["attn_fwd"] == pytest.approx(want[FWD], rel=1e-9)
    assert got["attn_bwd"] == pytest.approx(want[BWD], rel=1e-9)
    assert got["elementwise"] == pytest.approx(0.004, rel=1e-9)
    assert got["nccl_reduce_scatter"] == pytest.approx(0.002, rel=1e-9)
    assert got["nccl_all_gather"] == pytest.approx(0.001, rel=1e-9)
    compute = want[GEMM] + want[FWD] + want[BWD] + 0.004
    # both streams run back to back from the step's start: the comm kernels all under compute
    assert m.mean("compute_busy") == pytest.approx(compute, rel=1e-9)
    assert m.mean("comm_busy") == pytest.approx(0.003, rel=1e-9)
    assert m.mean("overlap") == pytest.approx(0.003, rel=1e-9) and m.mean("exposed_comm") == pytest.approx(0.0)
    assert m.step_time == pytest.approx(compute, rel=1e-6)   # last compute kernel ends the step
    streams = m.ranks[0].steps[0].stream_classes
    assert set(streams) == {7, 13} and streams[13] == pytest.approx({"nccl_reduce_scatter": 0.002,
                                                                     "nccl_all_gather": 0.001})
    assert m.ranks[0].stream_classes[7]["gemm_bf16"] == pytest.approx(want[GEMM], rel=1e-9)  # mean of 2 steps


def test_gpu_step_annotations_and_two_devices_in_one_file(tmp_path):
    times = {GEMM: 0.010, NORM: 0.002}
    path = _write(tmp_path / "both.json", _trace(times, devices=(0, 1), gpu_steps=True))
    ranks = load_ranks([path])
    assert [r.label for r in ranks] == ["both.json:0", "both.json:1"] and all(r.rank is None for r in ranks)
    m = measure(ranks)
    assert m.classes == pytest.approx({"gemm_bf16": 0.010, "elementwise": 0.002}, rel=1e-9)
    assert len(m.ranks) == 2 and all(len(r.steps) == 2 for r in m.ranks)


def test_without_step_annotations_the_whole_trace_is_one_step(tmp_path):
    path = _write(tmp_path / "plain.json", _trace({GEMM: 0.010, NORM: 0.002}, annotate=False))
    (rank,) = load_ranks([path])
    assert rank.steps == (-1,) and rank.outside_steps == 0
    m = measure([rank])
    # two steps' kernels and the 50 us warm-up kernel, which now counts
    assert m.classes == pytest.approx({"gemm_bf16": 0.020, "elementwise": 0.004 + 50e-6}, rel=1e-9)


def test_queued_kernels_give_the_gap_put_in(tmp_path):
    path = _write(tmp_path / "gaps.json", _trace({GEMM: 0.010, NORM: 0.002}, steps=3, gap_us=3.0))
    m = measure_files([path])
    # 8 compute kernels a step on one stream, all queued: 7 gaps of 3 us a step, 3 steps
    assert len(m.queued_gaps()) == 21
    assert m.to_dict()["queued_gap_median_us"] == pytest.approx(3.0, abs=1e-6)


def test_two_ranks_are_averaged(files):
    m = measure_files(files["ranks"])
    assert [r.rank for r in m.ranks] == [0, 1]
    assert m.classes["gemm_bf16"] == pytest.approx(1.25 * GEMM_S, rel=1e-9)
    assert m.step_time == pytest.approx(max(r.mean("span") for r in m.ranks))
    assert m.step_time == pytest.approx(1.30 * GEMM_S + sum(_rank_times(1.3)[k] for k in (FWD, BWD, NORM)), rel=1e-6)


# ------------------------------------------------------------------------------------------ calibration
def test_ratios_recover_the_factors_put_in(files):
    profile, report = calibrate(files["ranks"], str(files["model"]), base=str(files["base"]), precision="bf16",
                                date="2026-12-01", **KW)
    rec = report["derivation"]
    assert rec["microbatches"] == MICRO
    assert rec["fit_terms_ms"]["gemm_bf16"] == pytest.approx(GEMM_S * 1e3, rel=1e-9)   # closed form
    assert rec["time_ratio"]["gemm_bf16"] == pytest.approx(1.25, rel=1e-9)
    assert profile.gemm["bf16"][0].tflops == pytest.approx(GEMM_RATE / 1e12 / 1.25, rel=1e-6)
    assert profile.attention_forward_efficiency == pytest.approx(0.40, rel=1e-9)
    assert profile.attention_backward_efficiency == pytest.approx(0.30, rel=1e-9)
    # element-wise: bytes / (measured time x HBM bandwidth)
    ew_bytes = rec["work"]["elementwise"]["bytes"]
    assert profile.elementwise_bandwidth_efficiency == pytest.approx(ew_bytes / (0.004 * H100_HBM), rel=1e-9)
    assert set(rec["derived"]) == {"gemm_bf16", "attn_fwd", "attn_bwd", "elementwise"}
    assert rec["kept_from_base"] == ["gemm_fp8"]
    # the derived profile reproduces every fitted class's measured time
    for c in rec["derived"]:
        assert report["residuals_derived"][c]["residual_ms"] == pytest.approx(0.0, abs=1e-6)
    # back-to-back compute kernels, all queued at the step's start: no gap between them
    assert profile.launch.kernel_gap_us == 0.0
    # kernels per op: the trace's 4 launches per kernel name a step, shared over our ops (collectives left out)
    launch = report["derivation"]["launch"]
    per_op = dict(profile.launch.kernels_per_op)
    assert sum(per_op[k] * n for k, n in launch["modelled_ops"].items()) == pytest.approx(4 * 4, rel=1e-4)
    assert launch["unmatched_kernels"] == {} and set(launch["measured_kernels"]) == {
        "gemm_bf16", "attn_fwd", "attn_bwd", "elementwise"}
    prov = profile.provenance
    assert prov.device == "NVIDIA H100 80GB HBM3" and prov.date == "2026-12-01"
    assert prov.method.startswith("kineto trace of tiny-dense 2 H100 SXM, TP1, PP1, DP2")
    assert profile.calibrated_on == {"model": "tiny-dense", "gpu": "h100-sxm", "precision": "bf16",
                                     "attention": "gqa", "moe": False}
    assert profile.source == "trace"


def test_compare_step_puts_simulated_beside_measured(files):
    got = compare_step(files["ranks"], str(files["model"]), precision="bf16", calibration=str(files["base"]), **KW)
    assert got["measured_step_ms"] == pytest.approx(measure_files(files["ranks"]).step_time * 1e3)
    assert got["simulated_step_ms"] > 0
    assert got["classes"]["gemm_bf16"]["modelled_ms"] == pytest.approx(GEMM_S * 1e3, rel=1e-9)
    assert got["classes"]["gemm_bf16"]["residual_pct"] == pytest.approx(25.0, rel=1e-9)


# ------------------------------------------------------------------------------------------ command line
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpuhours", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_cli_writes_the_profile_and_nothing_else(files):
    out_dir = files["dir"] / "out"
    out_dir.mkdir()
    out = out_dir / "mine.json"
    r = _cli("calibrate", "trace", *files["ranks"], "--model", files["model"], "--base", files["base"],
             "--precision", "bf16", *LAYOUT, "-o", out, cwd=out_dir)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["mine.json"]
    profile = load_profile(out)
    assert profile.gemm["bf16"][0].tflops == pytest.approx(GEMM_RATE / 1e12 / 1.25, rel=1e-6)
    assert "gemm_bf16" in r.stdout
    # the two ranks ran 4 kernels of each of 4 compute classes a step; the collectives' kernels are not ours
    assert "kernels per step: 16 measured" in r.stdout and "kernels per op" in r.stdout
    # 2 ranks x 2 steps x 15 back-to-back compute kernels queued behind another: no gap between them
    assert "launch gap: 0.00 us, the median over 60 queued compute kernels" in r.stdout


@pytest.mark.parametrize("case, field", [("not-json", "trace"), ("no-kernels", "trace"), ("bad-model", "model")])
def test_cli_bad_input_is_one_line(files, case, field):
    path = files["ranks"][0]
    model = files["model"]
    if case == "not-json":
        path = files["dir"] / "x.json"
        path.write_text("hello")
    elif case == "no-kernels":
        path = _write(files["dir"] / "empty.json", {"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "a",
                                                                     "ts": 1, "dur": 1, "pid": 1, "tid": 1}]})
    else:
        model = "no-such-model"
    r = _cli("calibrate", "trace", path, "--model", model, *LAYOUT, "-o", files["dir"] / "p.json")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), r.stderr
    assert not (files["dir"] / "p.json").exists()


def test_cli_validate_compares_the_step(files):
    r = _cli("validate", "--trace", files["ranks"][0], "--trace", files["ranks"][1], "--model", files["model"],
             "--calibration", files["base"], "--precision", "bf16", *LAYOUT, "--json", cwd=files["dir"])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["classes"]["gemm_bf16"]["residual_pct"] == pytest.approx(25.0, rel=1e-6)
    assert got["measured_step_ms"] > 0 and got["simulated_step_ms"] > 0
