"""What a scenario's figures rest on: whether its estimate reproduces a calibration fit (a calibration case)
rather than predicting, the same scenario under the hardware-only sibling of its profile, and one warning line
for each way the run leaves what its calibration profile was measured on. Re-exported by `simulator/scenario.py`."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from gpuhours.hwmodels.attention_kernels import load_attention_kernel
from gpuhours.hwmodels.calibration import CalibrationProfile, gpu_key, load_profile
from gpuhours.hwmodels.gemm_kernels import family_warning
from gpuhours.hwmodels.gpus import load_gpu
from gpuhours.hwmodels.launch import LaunchModel
from gpuhours.workloads.presets import list_presets, load_preset

if TYPE_CHECKING:
    from gpuhours.simulator.scenario import Scenario



def is_calibration_case(scenario: Scenario) -> bool:
    """Whether the scenario's profile was calibrated on this very model and GPU: its estimate then reproduces
    the fit (a calibration case) rather than predicting anything."""
    on = scenario.profile.calibrated_on
    return bool(on.get("model")) and on["model"] == scenario.model.name \
        and scenario.profile.gpu_key == scenario.cluster.gpu.key


def hardware_only_scenario(scenario: Scenario, stage_layers: tuple[int, ...] | None = None) -> Scenario | None:
    """The same scenario under the hardware-only sibling of its profile (datasheet peaks and published kernel
    figures, nothing measured on a model), or None when the GPU has none or the profile is that one.

    ``stage_layers`` pins the pipeline split (say the one the calibrated run chose), so the two figures differ
    only in their kernel times and not in a split re-balanced by other costs."""
    sibling = scenario.profile.hardware_only_sibling()
    if sibling is None:
        return None
    parallel = scenario.parallel if stage_layers is None else replace(scenario.parallel,
                                                                      stage_layers=tuple(stage_layers))
    return replace(scenario.with_profile(load_profile(sibling)), parallel=parallel)


def _calibration_model_trait(on: dict, key: str):
    """``attention`` kind or ``moe`` of the model a profile was calibrated on (recorded, else from its preset)."""
    if key in on:
        return on[key]
    if on.get("model") in list_presets():
        spec = load_preset(on["model"])
        return spec.attention.kind if key == "attention" else spec.moe is not None
    return None


def _uncalibrated_gemm_tables(profile: CalibrationProfile, kinds: tuple[str, ...], dtype: str) -> list[str]:
    """One line per GEMM table of ``dtype`` the run uses that the profile has no figures of its own for."""
    notes = profile.notes if isinstance(profile.notes, list) else [profile.notes] if profile.notes else []
    inherited = " ".join(n for n in notes if isinstance(n, str) and n.startswith("taken from base profile"))
    out = []
    for kind in kinds:
        label = "grouped GEMM (MoE experts)" if kind == "grouped_gemm" else "GEMM"
        points = (profile.gemm if kind == "gemm" else profile.grouped_gemm).get(dtype, ())
        if not points:
            out.append(f"{label} {dtype.upper()}: profile {profile.name!r} has no points of this dtype")
        elif f"{kind}.{dtype}" in inherited.replace(",", " ").split():
            out.append(f"{label} {dtype.upper()}: no calibration of its own in {profile.name!r}; its points are "
                       f"taken from the base profile")
        elif all(p.provenance.startswith("assumption") for p in points):
            out.append(f"{label} {dtype.upper()}: no calibration of its own in {profile.name!r}; its points are "
                       f"an assumption stated in the profile, not a measurement")
    return out


def scenario_warnings(scenario: Scenario) -> list[str]:
    """One line each: where the scenario leaves what its calibration profile was measured on (device,
    precision, FP8 recipe, model family, kernel classes), and numerics changed from what the plan asked for.
    Empty for a run that matches its profile's calibration (the default DeepSeek-V3 case)."""
    prof, gpu, model = scenario.profile, scenario.cluster.gpu, scenario.model
    on = prof.calibrated_on
    run_dtype = "fp8" if scenario.opts.fp8 else "bf16"
    out: list[str] = []
    if scenario.fp8_fallback:
        out.append(f"precision: {gpu.name} has no FP8 tensor cores, so the plan's FP8 was run as BF16")
    prof_gpu = prof.gpu_key
    if prof_gpu is None:
        out.append(f"device: profile {prof.name!r} was measured on {prof.provenance.device!r}, not a known GPU; "
                   f"nothing checks it carries over to {gpu.name}")
    elif prof_gpu != gpu.key:
        out.append(f"device: the run is on {gpu.name} but profile {prof.name!r} was calibrated on "
                   f"{load_gpu(prof_gpu).name}; its kernel efficiencies are carried over as fractions of peak")
    kernels = family_warning(prof, scenario.fp8_gemm_kernels, scenario.opts.fp8)
    if kernels:
        out.append(f"FP8 GEMM kernels: {kernels}")
    if scenario.opts.fp8 and scenario.opts.fp8_recipe == "mxfp8" and on.get("fp8_recipe") != "mxfp8":
        out.append(f"FP8 recipe: the run uses MXFP8 but profile {prof.name!r} was not calibrated on MX kernels; its "
                   f"MXFP8 GEMMs run at {gpu.name}'s MXFP8 peak times the profile's BF16 efficiency at each shape "
                   f"(an assumption, hwmodels/mxfp8.py), not at measured MXFP8 rates")
    if not on:
        out.append(f"calibration: profile {prof.name!r} does not record what it was calibrated on "
                   f"(provenance.calibrated_on); precision, FP8 recipe and model family are not checked")
        return out + _uncalibrated_gemm_tables(prof, ("gemm", "grouped_gemm") if model.moe else ("gemm",), run_dtype)
    precisions = prof.provenance.calibrated_precisions
    if precisions is not None and run_dtype not in precisions:
        out.append(f"precision: the run is {run_dtype.upper()} but profile {prof.name!r} was calibrated on "
                   f"{' and '.join(p.upper() for p in precisions)} only; its {run_dtype.upper()} kernel rates are "
                   f"not from that calibration")
    recipe, run_recipe = on.get("fp8_recipe"), scenario.opts.fp8_recipe
    if run_recipe == "mxfp8":
        pass  # said above
    elif scenario.opts.fp8 and recipe is not None and recipe != run_recipe and run_recipe != "blockwise" \
            and recipe == "blockwise":  # per-tensor GEMMs priced apart (hwmodels/fp8_tensorwise.py)
        out.append(f"FP8 recipe: the run uses {run_recipe} FP8 scaling but profile {prof.name!r} was calibrated on "
                   f"{recipe} FP8; its per-tensor FP8 GEMMs are priced from the profile's BF16 rates times published "
                   f"per-tensor speed-ups (hwmodels/fp8_tensorwise.py), not from its FP8 points")
    elif scenario.opts.fp8 and recipe is not None and recipe != run_recipe:
        out.append(f"FP8 recipe: the run uses {run_recipe} FP8 scaling but profile {prof.name!r} was calibrated on "
                   f"{recipe} FP8; its FP8 GEMM rates are carried over as they are (only the casts follow the "
                   f"run's recipe, workloads.ops.PassBuilder._quant_bytes)")
    trained = on.get("model") or "a model"
    attention = _calibration_model_trait(on, "attention")
    if scenario.attention_kernel:
        kernel = load_attention_kernel(scenario.attention_kernel)
        kernel_gpu = gpu_key(kernel.device)
        if kernel.points and kernel_gpu != gpu.key:
            out.append(f"attention: kernel {kernel.name!r} was measured on {kernel.device}; its efficiency is "
                       f"carried to {gpu.name} as a fraction of peak")
    elif attention is not None and attention != model.attention.kind:
        out.append(f"attention: {model.attention.kind} has no calibration of its own; uses the "
                   f"{attention.upper()}-traced efficiencies of profile {prof.name!r} ({trained})")
    moe = _calibration_model_trait(on, "moe")
    if model.moe is not None and moe is False:
        out.append(f"grouped GEMM (MoE experts): no calibration of its own; profile {prof.name!r} was calibrated "
                   f"on a dense model ({trained})")
    launch = prof.launch.kernels_per_op if prof.launch is not None else ()
    if launch and on.get("model") and on["model"] != model.name:
        bundled = dict(LaunchModel.load().kernels)
        per_op = ", ".join(f"{k} {n:.2f}" for k, n in launch if n != bundled.get(k))
        out.append(f"launch: profile {prof.name!r} counts the kernels its traced stack ran per op of ours "
                   f"({trained}: {per_op or 'as data/launch.toml'}); another framework's fusion launches its own "
                   f"(validation/trace_launch.py)")
    kinds = ("gemm", "grouped_gemm") if model.moe is not None else ("gemm",)
    return out + _uncalibrated_gemm_tables(prof, kinds, run_dtype)
