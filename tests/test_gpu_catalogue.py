"""The GPU catalogue of issue 12: every added part against figures typed from its datasheet, dense = half the
"with sparsity" figure, and precisions a part lacks refused by name."""

import pytest

from gpuhours.hwmodels.gpus import PEAK_DTYPES, GPUSpec, gpu_data, list_gpus, load_gpu

T, G, GIB = 1e12, 1e9, 2**30

ADDED = ("a100-40gb-sxm", "h100-pcie", "h20", "b200", "gb200", "gb300", "mi300x", "mi325x")
EXISTING = ("h800", "h100-sxm", "h200-sxm", "a100-80gb-sxm")


def test_catalogue_keeps_the_existing_gpus_first_and_adds_the_new_ones():
    keys = list_gpus()
    assert keys[:4] == list(EXISTING)
    assert set(ADDED) <= set(keys)


def test_every_entry_has_a_source_a_board_power_and_loads_by_its_aliases():
    seen = {}
    for key, entry in gpu_data()["gpu"].items():
        g = load_gpu(key)
        assert g.source, key
        assert g.power_w > 0, key
        assert g.interconnect, key
        for alias in (entry["name"], *entry.get("aliases", [])):
            assert seen.get(alias.lower(), key) == key, f"alias {alias!r} of {key} already names {seen[alias.lower()]}"
            seen[alias.lower()] = key
            assert load_gpu(alias).key == key


def test_existing_names_still_resolve_as_before():
    assert load_gpu("a100").key == "a100-80gb-sxm"
    assert load_gpu("h100").key == "h100-sxm"
    assert load_gpu("A100 40GB").key == "a100-40gb-sxm"
    assert load_gpu("H100 PCIe").key == "h100-pcie"


# --------------------------------------------------------------------------------------- datasheet figures
def test_a100_40gb():
    # NVIDIA A100 datasheet, A100 40GB SXM column: BF16 312 TFLOPS (624 sparse), 40 GB HBM2 at 1,555 GB/s, 400 W
    g = load_gpu("a100-40gb")
    assert (g.sms, g.bf16_flops, g.hbm_bytes, g.hbm_bw, g.power_w) == (108, 312 * T, 40 * GIB, 1555 * G, 400)
    assert g.nvlink_bw_bidirectional == 600 * G and not g.has_fp8


def test_h100_pcie():
    # NVIDIA H100 datasheet, H100 PCIe column (sparse figures): BF16 1,513, FP8 3,026 TFLOPS; 80 GB at 2 TB/s;
    # FP32 51 TFLOPS; 300-350 W. H100 whitepaper: 114 SMs.
    g = load_gpu("h100-pcie")
    assert g.sms == 114
    assert g.bf16_flops == pytest.approx(1513 * T / 2, rel=1e-3)
    assert g.fp8_flops == pytest.approx(3026 * T / 2, rel=1e-3)
    assert (g.fp32_flops, g.hbm_bytes, g.hbm_bw, g.power_w) == (51 * T, 80 * GIB, 2000 * G, 350)


def test_h20():
    # As reported from NVIDIA's HGX H20 spec sheet: BF16 148, FP8 296 TFLOPS dense; 96 GB at 4.0 TB/s; 400 W;
    # NVLink 900 GB/s. 78 SMs from public device queries.
    g = load_gpu("h20")
    assert (g.sms, g.bf16_flops, g.fp8_flops, g.hbm_bytes, g.hbm_bw, g.power_w) == (
        78, 148 * T, 296 * T, 96 * GIB, 4000 * G, 400)
    assert g.nvlink_bw_bidirectional == 900 * G


def test_b200_is_the_hgx_b200_total_over_eight_gpus():
    # NVIDIA HGX page, HGX B200 (8 GPUs, with sparsity): FP4 144, FP8 72, BF16 36 PFLOPS; FP32 600 TFLOPS.
    # DGX B200 datasheet: 1,440 GB, 64 TB/s for 8 GPUs. HGX B200 TGP 1,000 W per GPU.
    g = load_gpu("b200")
    assert g.bf16_flops == pytest.approx(36e15 / 8 / 2)
    assert g.fp8_flops == pytest.approx(72e15 / 8 / 2)
    assert g.fp4_flops == pytest.approx(144e15 / 8 / 2)
    assert g.fp32_flops == pytest.approx(600 * T / 8)
    assert g.hbm_bytes == 1440 / 8 * GIB and g.hbm_bw == pytest.approx(64e12 / 8)
    assert g.nvlink_bw_bidirectional == 1.8e12 and g.power_w == 1000 and g.sms == 148


def test_gb200_is_the_nvl72_rack_over_72_gpus():
    # NVIDIA GB200 NVL72 page (rack, with sparsity): FP4 1,440, FP8 720, BF16 360 PFLOPS; 576 TB/s HBM;
    # NVLink 130 TB/s. Blackwell max TGP 1,200 W (NVIDIA 'Inside Blackwell Ultra' blog).
    g = load_gpu("gb200")
    assert g.bf16_flops == pytest.approx(360e15 / 72 / 2)
    assert g.fp8_flops == pytest.approx(720e15 / 72 / 2)
    assert g.fp4_flops == pytest.approx(1440e15 / 72 / 2)
    assert g.hbm_bw == pytest.approx(576e12 / 72)
    assert g.nvlink_bw_bidirectional == pytest.approx(130e12 / 72, rel=0.01)  # 1.8 TB/s per GPU
    assert g.power_w == 1200


def test_gb300_blackwell_ultra():
    # NVIDIA 'Inside Blackwell Ultra' blog: 160 SMs, 15 PFLOPS dense NVFP4, 288 GB HBM3E at 8 TB/s, 1,400 W TGP.
    # GB300 NVL72 page (rack, with sparsity): FP8 720, BF16 360 PFLOPS.
    g = load_gpu("gb300")
    assert (g.sms, g.fp4_flops, g.hbm_bytes, g.hbm_bw, g.power_w) == (160, 15e15, 288 * GIB, 8e12, 1400)
    assert g.fp8_flops == pytest.approx(720e15 / 72 / 2)
    assert g.bf16_flops == pytest.approx(360e15 / 72 / 2)
    assert g.fp4_flops == pytest.approx(1.5 * load_gpu("gb200").fp4_flops)  # Blackwell Ultra: 1.5x dense FP4


@pytest.mark.parametrize("key, hbm_gb, hbm_tb_s, watts", [("mi300x", 192, 5.3, 750), ("mi325x", 256, 6.0, 1000)])
def test_amd_cdna3(key, hbm_gb, hbm_tb_s, watts):
    # AMD MI300X / MI325X data sheets: 304 CUs, BF16 1,307.4 and FP8 2,614.9 TFLOPS dense, FP32 vector 163.4,
    # 7 Infinity Fabric links x 128 GB/s = 896 GB/s; MI300X 192 GB / 5.3 TB/s / 750 W, MI325X 256 GB / 6 TB/s / 1,000 W.
    g = load_gpu(key)
    assert (g.sms, g.bf16_flops, g.fp8_flops, g.fp32_flops) == (304, 1307.4 * T, 2614.9 * T, 163.4 * T)
    assert (g.hbm_bytes, g.hbm_bw, g.power_w) == (hbm_gb * GIB, hbm_tb_s * 1e12, watts)
    assert g.nvlink_bw_bidirectional == 7 * 128 * G


def test_blackwell_mxfp8_runs_at_the_fp8_rate_and_fp4_at_twice_it_on_b200_and_gb200():
    for key in ("b200", "gb200"):
        g = load_gpu(key)
        assert g.peak_flops("mxfp8") == g.peak_flops("fp8")
        assert g.peak_flops("fp4") == 2 * g.peak_flops("fp8")
        assert g.supported_dtypes() == ("bf16", "fp8", "mxfp8", "fp4")


# --------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("key", ["h800", "h100-sxm", "h200-sxm", "h100-pcie", "h20", "mi300x", "mi325x",
                                 "a100-80gb-sxm", "a100-40gb-sxm"])
@pytest.mark.parametrize("dtype", ["fp4", "mxfp8"])
def test_pre_blackwell_parts_refuse_fp4_and_mxfp8(key, dtype):
    g = load_gpu(key)
    with pytest.raises(ValueError, match=rf"dtype '{dtype}' is not supported on {g.name}.*supported: bf16"):
        g.peak_flops(dtype)


def test_ampere_refuses_fp8_and_unknown_precisions_name_the_allowed_ones():
    g = load_gpu("a100-40gb")
    with pytest.raises(ValueError, match="'fp8' is not supported on A100 40GB SXM"):
        g.peak_flops("fp8")
    with pytest.raises(ValueError, match=r"dtype must be one of .*'bf16', 'fp8', 'mxfp8', 'fp4'.*'int8'"):
        g.peak_flops("int8")
    assert PEAK_DTYPES == ("bf16", "fp8", "mxfp8", "fp4")


def test_new_fields_are_validated_and_default_to_absent():
    g = load_gpu("h800")
    assert (g.fp4_flops, g.mxfp8_flops) == (0.0, 0.0)
    for name in ("fp4_flops", "mxfp8_flops", "power_w"):
        with pytest.raises(ValueError, match=name):
            GPUSpec(**{**g.__dict__, name: -1.0})
    bare = GPUSpec(key="x", name="X", sms=1, bf16_flops=1.0, fp8_flops=0.0, fp32_flops=1.0, hbm_bytes=1.0,
                   hbm_bw=1.0, nvlink_bw_bidirectional=2.0, nvlink_bw_unidirectional=1.0, nic_bw=1.0)
    assert bare.power_w == 0.0 and bare.supported_dtypes() == ("bf16",)
