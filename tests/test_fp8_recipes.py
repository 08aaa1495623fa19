"""FP8 recipes (OpOptions.fp8_recipe): the cast bytes each recipe charges per phase, against hand-derived figures.

Hand derivations (bytes per element of the tensor a GEMM casts, shape as executed, m x k the left operand):
  blockwise  F 3 (read BF16 2 + write FP8 1), B 4 (read 2 + two FP8 tilings), W 2 x (k x n) (FP8 re-tiled)
  delayed    F 2, B 2 (the producer writes the FP8 copy and its transpose), W 0 (both cast already)
  current    delayed + 2 in F and B (one BF16 read for the amax)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.ops import FP8_RECIPES, OpOptions, PassBuilder, dense_ffn_ops
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset

TOKENS, HIDDEN, INTER = 8, 4, 6  # a SwiGLU FFN small enough to derive by hand: w13 (4 -> 12), w2 (6 -> 4)


def _ffn_casts(phase: str, recipe: str) -> dict[str, float]:
    b = PassBuilder("L0.mlp", "mlp", phase, True, recipe)
    dense_ffn_ops(b, INTER, HIDDEN, TOKENS, tp=1)
    return {op.name.split(".")[-2]: op.bytes for op in b.ops if op.name.endswith(".quant")}


# Executed shapes: F w13 (8 x 12 x 4), w2 (8 x 4 x 6); B w13 (8 x 4 x 12), w2 (8 x 6 x 4);
# W w13 (12 x 4 x 8), w2 (4 x 6 x 8). Cast tensors: F inputs 8x4 = 32 and 8x6 = 48 elements; B output
# gradients 8x12 = 96 and 8x4 = 32; W (blockwise) the activations re-tiled, k x n = 8x4 = 32 and 8x6 = 48.
HAND = {
    ("F", "blockwise"): {"w13": 3 * 32, "w2": 3 * 48},
    ("B", "blockwise"): {"w13": 4 * 96, "w2": 4 * 32},
    ("W", "blockwise"): {"w13": 2 * 32, "w2": 2 * 48},
    ("F", "delayed"): {"w13": 2 * 32, "w2": 2 * 48},
    ("B", "delayed"): {"w13": 2 * 96, "w2": 2 * 32},
    ("W", "delayed"): {},
    ("F", "current"): {"w13": 4 * 32, "w2": 4 * 48},
    ("B", "current"): {"w13": 4 * 96, "w2": 4 * 32},
    ("W", "current"): {},
}


@pytest.mark.parametrize("phase,recipe", sorted(HAND))
def test_cast_bytes_per_phase_on_a_small_ffn(phase, recipe):
    assert _ffn_casts(phase, recipe) == HAND[(phase, recipe)]


def _layer(preset: str, layer: int, recipe: str | None, **par):
    opts = OpOptions(recompute="none") if recipe is None else OpOptions(recompute="none", fp8_recipe=recipe)
    return layer_passes(load_preset(preset), layer, ParallelSpec(**par), 4096, opts)


LLAMA_TP8 = dict(num_gpus=8, pp=1, tp=8, schedule="1f1b")
V3 = dict(num_gpus=2048, pp=16, ep=64, schedule="dualpipe", comm_sms=20)


def _casts(passes) -> dict[str, float]:
    return {ph: sum(op.bytes for seg in segs for op in seg.ops if op.name.endswith(".quant"))
            for ph, segs in (("F", passes.forward), ("B", passes.backward), ("W", passes.weight))}


def _gemms(passes) -> list[tuple[str, str, float]]:
    return [(seg.name, op.name, op.flops) for segs in (passes.forward, passes.backward, passes.weight)
            for seg in segs for op in seg.ops if op.kind in ("gemm", "grouped_gemm")]


@pytest.mark.parametrize("recipe", [None, "blockwise"])
def test_blockwise_is_unchanged(recipe):
    """Literal figures recorded before the recipes existed (DeepSeek-V3 MoE layer 10 on its layout; Llama 3 70B
    layer 0 on TP 8, 4096 tokens, no recomputation): the default recipe is blockwise and did not move, but for
    the forward casts of `workloads.memory_ops` (a later, deliberate correction): the attention output cached in
    E5M6 (4096 x heads x v_head_dim x 3.5 bytes: V3 128 x 128, Llama 8 x 128) and, on V3, the MoE input cast
    once per token before the dispatch (4096 x 7168 x 3) in place of the expert rows' (32768 x 7168 x 3) and the
    SwiGLU input cached in FP8 (32768 rows x (4096 x 2 + 4096 + 32 scales x 4)); in the backward (a later
    correction: the combine's backward carries the output gradients in FP8, DeepSeek-V3 sec. 3.3.2) their cast
    once per token before it (4096 x 7168 x 3), and w2's gradient cast making only the column-wise copy of the
    FP8 rows (32768 x 7168 x 2 instead of x 4)."""
    v3_f = 1421869056 + 4096 * 128 * 128 * 3.5 + 3 * 7168 * (4096 - 32768) + 32768 * (4096 * 3 + 128)
    v3_b = 2752512000 + 3 * 7168 * 4096 - 2 * 7168 * 32768
    assert _casts(_layer("deepseek-v3", 10, recipe, **V3)) == {"F": v3_f, "B": v3_b, "W": 947912704}
    assert _casts(_layer("llama-3-70b", 0, recipe, **LLAMA_TP8)) == {"F": 257949696 + 4096 * 8 * 128 * 3.5,
                                                                      "B": 406847488, "W": 171966464}


def test_per_tensor_casts_on_llama_70b_by_hand():
    """Llama 3 70B, TP 8, 4096 tokens: per rank the GEMM inputs are x (4096 x 8192) for wqkv and w13, the
    attention output (4096 x 64/8 heads x 128 = 1024) for wo and the SwiGLU output (4096 x 28672/8 = 3584) for w2:
    4096 x 20992 elements. The output gradients in B are those of wqkv (1024 q + 2 x 1 KV head x 128 = 1280),
    wo (8192), w13 (2 x 3584 = 7168) and w2 (8192): 4096 x 24832 elements."""
    f, b = 4096 * (8192 + 1024 + 8192 + 3584), 4096 * (1280 + 8192 + 7168 + 8192)
    assert _casts(_layer("llama-3-70b", 0, "delayed", **LLAMA_TP8)) == {"F": 2 * f, "B": 2 * b, "W": 0}
    assert _casts(_layer("llama-3-70b", 0, "current", **LLAMA_TP8)) == {"F": 4 * f, "B": 4 * b, "W": 0}


@pytest.mark.parametrize("preset,layer,par", [("llama-3-70b", 0, LLAMA_TP8), ("deepseek-v3", 10, V3)])
def test_current_is_delayed_plus_exactly_the_amax_reads(preset, layer, par):
    """Op by op: current - delayed = one BF16 read (2 bytes) of the tensor cast, the FP8 GEMM's left operand
    (m x k as executed) in F and B; nothing in W."""
    delayed, current = (_layer(preset, layer, r, **par) for r in ("delayed", "current"))
    for d_segs, c_segs in ((delayed.forward, current.forward), (delayed.backward, current.backward),
                           (delayed.weight, current.weight)):
        d_ops = [op for seg in d_segs for op in seg.ops]
        c_ops = [op for seg in c_segs for op in seg.ops]
        assert [op.name for op in d_ops] == [op.name for op in c_ops]
        for i, (d, c) in enumerate(zip(d_ops, c_ops)):
            if not d.name.endswith(".quant"):
                assert d == replace(c, fp8_recipe=d.fp8_recipe)  # a GEMM differs only in the recipe it carries
                continue
            if d.name.endswith(".dispatch.quant"):  # the MoE input, cast per token before the dispatch
                assert c.bytes - d.bytes == 2 * 4096 * 7168  # (workloads.memory_ops): V3's 4096 x 7168
                continue
            gemm = next(op for op in d_ops[i + 1:] if op.kind in ("gemm", "grouped_gemm"))
            assert gemm.dtype == "fp8" and gemm.phase in ("F", "B")
            assert c.bytes - d.bytes == 2 * gemm.gemm.m * gemm.gemm.k * gemm.groups


@pytest.mark.parametrize("preset,layer,par", [("llama-3-70b", 0, LLAMA_TP8), ("deepseek-v3", 10, V3)])
def test_gemm_flops_and_shapes_identical_across_recipes(preset, layer, par):
    runs = [_gemms(_layer(preset, layer, r, **par)) for r in FP8_RECIPES]
    assert runs[0] and all(r == runs[0] for r in runs)


def test_bf16_has_no_casts_under_any_recipe():
    for recipe in FP8_RECIPES:
        passes = layer_passes(load_preset("llama-3-70b"), 0, ParallelSpec(**LLAMA_TP8), 4096,
                              OpOptions(fp8=False, recompute="none", fp8_recipe=recipe))
        assert _casts(passes) == {"F": 0, "B": 0, "W": 0}


@pytest.mark.parametrize("bad", ["nvfp4", "", "Delayed", None])
def test_bad_recipe_names_the_field_and_the_allowed_values(bad):
    with pytest.raises(ValueError, match="fp8_recipe must be one of blockwise, delayed, current"):
        OpOptions(fp8_recipe=bad)
    with pytest.raises(ValueError, match="fp8_recipe"):
        PassBuilder("x", "mlp", "F", True, bad)


# ------------------------------------------------------------------------------------------ scenario, plan, sweep
def test_scenario_keyword_and_plan_numerics(tmp_path: Path):
    from gpuhours.simulator.scenario import DEFAULT_PLAN, _read_plan, load_scenario

    assert load_scenario().opts.fp8_recipe == "blockwise"
    assert load_scenario(fp8_recipe="current").opts.fp8_recipe == "current"
    plan = Path(__file__).resolve().parent.parent / "workloads" / "plans" / f"{DEFAULT_PLAN}.toml"
    assert "[numerics]\n" in plan.read_text() and _read_plan(DEFAULT_PLAN)
    text = plan.read_text().replace("[numerics]\n", '[numerics]\nfp8_recipe = "delayed"\n')
    (tmp_path / "p.toml").write_text(text)
    assert load_scenario(tmp_path / "p.toml").opts.fp8_recipe == "delayed"
    (tmp_path / "bad.toml").write_text(text.replace('"delayed"', '"rowwise"'))  # torchao's, not modelled
    with pytest.raises(ValueError, match="fp8_recipe must be one of"):
        load_scenario(tmp_path / "bad.toml")


def test_profile_recipe_mismatch_is_a_warning():
    from gpuhours.simulator.scenario import load_scenario, scenario_warnings

    def recipe_lines(s):
        return [w for w in scenario_warnings(s) if w.startswith("FP8 recipe")]

    assert recipe_lines(load_scenario()) == []  # trace-h800 was calibrated on blockwise
    lines = recipe_lines(load_scenario(fp8_recipe="current"))
    assert len(lines) == 1 and "current" in lines[0] and "blockwise" in lines[0]


def test_sweep_key():
    from gpuhours.simulator.sweep import SWEEP_KEYS, _check_value

    assert "fp8_recipe" in SWEEP_KEYS
    _check_value("fp8_recipe", "delayed", "grid")
    with pytest.raises(ValueError, match="grid.fp8_recipe must be one of"):
        _check_value("fp8_recipe", "rowwise", "grid")


def test_accuracy_cases_run_their_recipe_and_name_what_is_left():
    from gpuhours.validation.accuracy import _scenario
    from gpuhours.validation.cases import load_cases

    case = next(c for c in load_cases() if c.name == "torchtitan-8b-8gpu-fsdp-compile-float8")
    assert case.layout["fp8_recipe"] == "tensorwise"  # torchao's Float8Linear
    # the casts follow the recipe; the per-tensor GEMMs rest on published speed-ups, not a measurement: a gap
    assert [g for g in case.gaps() if "FP8" in g] == [
        "FP8 tensorwise scaling (per-tensor): casts as the recipe fuses them, GEMMs at the profile's BF16 rates "
        "times published per-tensor cuBLASLt FP8 speed-ups (hwmodels/data/fp8_tensorwise.toml: H100, 2023, "
        "16,384-token shapes), not measured here"]
    scenario = _scenario(case, "trace-h800")
    assert scenario.opts.fp8 and scenario.opts.fp8_recipe == "tensorwise"


def test_tensorwise_casts_every_weight_in_every_pass():
    """torchao's Float8Linear (roofline_utils, tensorwise, role "weight"): forward, an amax read (2 bytes) and a cast
    (read 2, write 1) of the k x n weight; backward, the cast again (3); the weight gradient none. Its activation
    casts are "current"'s. A grouped GEMM casts each group's weight."""
    from gpuhours.workloads.ops import PassBuilder

    m, n, k, g = 4096, 1536, 7168, 4
    for phase, per_element in (("F", 5), ("B", 3), ("W", 0)):
        ours, theirs = (PassBuilder("L0.mlp", "mlp", phase, True, r) for r in ("tensorwise", "current"))
        ours.gemm("w13", m, n, k, groups=g)
        theirs.gemm("w13", m, n, k, groups=g)
        casts = [op for op in ours.ops if op.name.endswith(".weight_cast")]
        assert sum(op.bytes for op in casts) == per_element * n * k * g
        assert [op.bytes for op in ours.ops if op not in casts] == [op.bytes for op in theirs.ops]
