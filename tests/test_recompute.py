"""Activation recomputation policies (OpOptions.recompute): time (ops added to backward) and memory, against
closed forms derived here, not from the code under test."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.memory import MemoryRecipe, head_terms, memory_breakdown
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import RECOMPUTE_POLICIES, OpOptions
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset

SEQ = 512
H = 256
GPT = ModelSpec("gpt-tiny", hidden=H, n_layers=4, vocab=1024, dense_intermediate=4 * H, ffn_activation="gelu",
                attention=AttentionSpec("gqa", n_heads=8, n_kv_heads=8, head_dim=32))


def _flops(segments, compute_only=True):
    return sum(op.flops for s in segments for op in s.ops if not compute_only or op.kind != "collective")


def _par(tp=2, sp=True, mbs=2):
    return ParallelSpec(num_gpus=tp, tp=tp, sequence_parallel=sp, micro_batch_size=mbs)


def _layer(policy, tp=2, sp=True, model=GPT, layer=1):
    return layer_passes(model, layer, _par(tp, sp), SEQ, OpOptions(fp8=False, recompute=policy))


def test_policies_are_validated():
    assert RECOMPUTE_POLICIES == ("none", "deepseek", "selective", "full", "torchtitan-op")
    with pytest.raises(ValueError, match="recompute.*none, deepseek, selective, full"):
        OpOptions(recompute="some")
    assert OpOptions(recompute=True).recompute == "deepseek"   # legacy booleans
    assert OpOptions(recompute=False).recompute == "none"


@pytest.mark.parametrize("tp,sp", [(1, True), (2, True), (2, False)])
def test_full_adds_exactly_the_forward_to_the_backward(tp, sp):
    full, none = _layer("full", tp, sp), _layer("none", tp, sp)
    assert _flops(full.backward) - _flops(none.backward) == pytest.approx(_flops(none.forward), rel=1e-12)
    assert full.forward == none.forward and full.weight == none.weight
    # the recomputed forward runs first, in forward order, collectives included, then the ordinary backward
    n = len(none.forward)
    assert full.backward[n:] == none.backward
    assert [s.stream for s in full.backward[:n]] == [s.stream for s in none.forward]
    assert all(s.name.endswith(".recompute(B)") for s in full.backward[:n])
    rec = [op for s in full.backward[:n] for op in s.ops]
    fwd = [op for s in none.forward for op in s.ops]
    assert [(o.kind, o.collective, o.flops, o.bytes, o.comm_bytes) for o in rec] == \
           [(o.kind, o.collective, o.flops, o.bytes, o.comm_bytes) for o in fwd]
    assert all(".recompute." in op.name and op.phase == "F" for op in rec)  # priced as forward ops
    if tp > 1:
        kinds = [op.collective for op in rec if op.kind == "collective"]
        assert kinds == (["all_gather", "reduce_scatter"] * 2 if sp else ["all_reduce"] * 2)


def test_full_makes_a_step_four_forwards_of_gemms():
    """Narayanan et al. 2021 eq. 3: 96 B s l h^2 = 4 passes x 24 h^2 per token per layer (h->3h QKV, h->h out,
    h->4h, 4h->h; a multiply-add is 2 FLOPs); without recomputation 72 = 3 x 24."""
    def gemm(segments):
        return sum(op.flops for s in segments for op in s.ops if op.kind == "gemm")
    tokens = 2 * SEQ
    for policy, passes in (("none", 3), ("full", 4)):
        layer = _layer(policy, tp=1)
        total = gemm(layer.forward) + gemm(layer.backward) + gemm(layer.weight)
        assert total == pytest.approx(passes * 24 * H * H * tokens, rel=1e-12)


def test_selective_adds_exactly_the_attention_core_forward():
    tp = 2
    sel, none = _layer("selective", tp), _layer("none", tp)
    a = GPT.attention
    heads, tokens = a.n_heads // tp, 2 * SEQ
    core = 2 * heads * (a.head_dim + a.head_dim) * tokens * (SEQ + 1) / 2
    assert _flops(sel.backward) - _flops(none.backward) == pytest.approx(core, rel=1e-12)
    extra = [op for s in sel.backward for op in s.ops if ".recompute." in op.name]
    assert [(op.name, op.kind, op.phase) for op in extra] == [("L1.attn.recompute.core", "attention", "F")]
    names = [op.name for s in sel.backward for op in s.ops]
    assert names.index("L1.attn.recompute.core") == names.index("L1.attn.core_bwd") - 1
    assert sel.forward == none.forward and sel.weight == none.weight


def test_deepseek_is_the_old_recipe_on_mla():
    v3 = load_preset("deepseek-v3")
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64, schedule="dualpipe", comm_sms=20)
    ds = layer_passes(v3, 10, p, 4096, OpOptions(recompute="deepseek"))
    none = layer_passes(v3, 10, p, 4096, OpOptions(recompute="none"))
    assert ds.forward == none.forward and ds.weight == none.weight
    extra = [op.name for s in ds.backward for op in s.ops if "recompute" in op.name]
    assert extra == ["L10.mlp.ffn_norm.recompute", "L10.attn.recompute.attn_norm", "L10.attn.recompute.q_norm", "L10.attn.recompute.wq_b.quant",
                     "L10.attn.recompute.wq_b", "L10.attn.recompute.kv_norm", "L10.attn.recompute.wkv_b.quant",
                     "L10.attn.recompute.wkv_b",
                     # RoPE and the q / k assembly on the recomputed up-projections (workloads.memory_ops)
                     "L10.attn.recompute.rope", "L10.attn.recompute.qk_cat"]
    rest = [[op for op in s.ops if "recompute" not in op.name] for s in ds.backward]
    assert rest == [list(s.ops) for s in none.backward]
    a = v3.attention
    up = a.n_heads * a.qk_head_dim * a.q_lora_rank + a.n_heads * (a.qk_nope_head_dim + a.v_head_dim) * a.kv_lora_rank
    assert _flops(ds.backward) - _flops(none.backward) == pytest.approx(2 * 4096 * up, rel=1e-12)
    # the plan's default is the recipe, and legacy `recompute = true` reads as it
    assert load_scenario().opts.recompute == "deepseek"


def test_legacy_boolean_and_string_in_plan(tmp_path):
    import gpuhours
    from pathlib import Path
    text = (Path(gpuhours.__file__).parent / "workloads" / "plans" / "deepseek-v3.toml").read_text()
    assert 'recompute = "deepseek"' in text
    for value, policy in (("true", "deepseek"), ("false", "none"), ('"full"', "full"), ('"selective"', "selective")):
        f = tmp_path / f"p{policy}.toml"
        f.write_text(text.replace('recompute = "deepseek"', f"recompute = {value}"))
        assert load_scenario(f).opts.recompute == policy
    f = tmp_path / "bad.toml"
    f.write_text(text.replace('recompute = "deepseek"', 'recompute = "some"'))
    with pytest.raises(ValueError, match="recompute"):
        load_scenario(f)
    assert load_scenario(recompute="full").opts.recompute == "full"


@pytest.mark.parametrize("sp", [True, False])
def test_full_keeps_only_each_layer_input(sp):
    """Megatron GPT layout, TP2 PP2 1F1B: with full recomputation a chunk of a stage keeps layers x tokens x h
    BF16 (divided by tp with sequence parallelism, replicated without); the last stage also keeps the head's terms
    (final-norm input, head input, logits, loss statistics), which the policy does not change."""
    tp, pp, mbs, seq = 2, 2, 1, 64
    base = load_scenario(model="llama-3-70b", gpus=8, pp=pp, tp=tp, schedule="1f1b", seq_len=seq, batch=8,
                         tokens=1e6)
    base = replace(base, model=GPT, parallel=replace(base.parallel, sequence_parallel=sp, micro_batch_size=mbs))
    step = SimpleNamespace(num_microbatches=4, stage_layers=(2, 2))
    recipe = MemoryRecipe(reserved_bytes=0.0, fragmentation=0.0)
    mem = {pol: memory_breakdown(replace(base, opts=replace(base.opts, fp8=False, recompute=pol)), step, recipe)
           for pol in ("none", "full", "full:2", "full:0", "full:1")}
    assert mem["full"].activations < mem["full:1"].activations < mem["none"].activations
    # full:N counts layers per stage (2 here): N = 2 is full, N = 0 is none
    assert mem["full:2"] == mem["full"] and mem["full:0"] == mem["none"]
    tokens = mbs * seq
    layer_in = 2 * H * (1 if sp else tp)  # bytes per token before the /tp
    head = sum(head_terms(GPT, recipe).values())
    expected = (tokens * 2 * layer_in / tp, tokens * (2 * layer_in + head) / tp)
    assert mem["full"].chunk_bytes == pytest.approx(expected)
    # 1F1B: rank r holds pp - r chunks of its stage at peak
    full = mem["full"]
    assert full.activations == pytest.approx((pp - full.rank) * expected[full.rank])


def test_selective_drops_only_the_softmax_statistics():
    from gpuhours.workloads.memory import layer_terms
    recipe = MemoryRecipe()
    none, sel = layer_terms(GPT, 1, recipe, False, "none"), layer_terms(GPT, 1, recipe, False, "selective")
    assert set(none) - set(sel) == {"attn.lse"} and set(sel) <= set(none)


def test_cli_rejects_a_bad_policy():
    result = CliRunner().invoke(app, ["estimate", "--recompute", "bogus"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "recompute" in lines[0]
