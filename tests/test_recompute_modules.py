"""Selective recomputation by named modules (`selective:<modules>`) and full recomputation of the first N layers of
every pipeline stage (`full:N`), `workloads.recompute`: extra backward work and dropped activations against
hand-derived figures for a small GQA model and a small MLA/MoE model; the old names as aliases, against literals
recorded from the code before the module vocabulary existed."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.balance import partition_layers, time_scorer
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.memory import MemoryRecipe, chunk_bytes, layer_terms
from gpuhours.workloads.model import AttentionSpec, ModelSpec, MoESpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.recompute import recompute_policy
from gpuhours.workloads.stage_ops import stage_units

SEQ, MBS, H = 512, 2, 256
T = MBS * SEQ  # tokens of a micro-batch on a rank (cp 1)
GQA = ModelSpec("gqa-tiny", hidden=H, n_layers=4, vocab=1024, dense_intermediate=512,
                attention=AttentionSpec("gqa", n_heads=8, n_kv_heads=2, head_dim=32))
MLA = ModelSpec("mla-tiny", hidden=H, n_layers=4, vocab=1024, dense_intermediate=512,
                attention=AttentionSpec("mla", n_heads=8, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32,
                                        qk_rope_head_dim=16, v_head_dim=32),
                moe=MoESpec(n_routed_experts=8, n_shared_experts=1, expert_intermediate=128, top_k=2,
                            first_k_dense=1))
TP2 = ParallelSpec(num_gpus=2, tp=2, sequence_parallel=True, micro_batch_size=MBS)
EP2 = ParallelSpec(num_gpus=2, ep=2, micro_batch_size=MBS)
BF16_RECIPE = MemoryRecipe()


def _sum(segments, field):
    return sum(getattr(op, field) for s in segments for op in s.ops)


def _extra(model, layer, p, policy, field, fp8=False):
    """What `policy` adds to the layer's backward over "none" (its forward and weight passes must not change)."""
    a = layer_passes(model, layer, p, SEQ, OpOptions(fp8=fp8, recompute=policy))
    b = layer_passes(model, layer, p, SEQ, OpOptions(fp8=fp8, recompute="none"))
    assert a.forward == b.forward and a.weight == b.weight
    return _sum(a.backward, field) - _sum(b.backward, field)


def _kept(model, layer, policy):
    return sum(layer_terms(model, layer, BF16_RECIPE, False, policy).values())


# -- the grammar ---------------------------------------------------------------------------------------------------
def test_grammar_and_aliases():
    assert recompute_policy("selective:core_attn") == "selective"
    assert recompute_policy("selective:mla_up_proj, layernorm") == "deepseek"
    assert recompute_policy(["layernorm", "core_attn"]) == "selective:core_attn,layernorm"  # MODULES order
    assert recompute_policy([]) == "none"
    assert recompute_policy("full:3") == "full:3" and recompute_policy(True) == "deepseek"
    assert OpOptions(recompute=["moe", "shared_experts"]).recompute == "selective:moe,shared_experts"
    with pytest.raises(ValueError, match="recompute.*unknown module 'attn'.*core_attn, layernorm, mla_up_proj, mlp, "
                                         "moe_act, moe, shared_experts"):
        recompute_policy("selective:attn")
    for bad in ("full:x", "full:-1", "full:2+selective:core_attn", "selective:", "partial", 3):
        with pytest.raises(ValueError, match="recompute"):
            recompute_policy(bad)


# -- time: each module adds exactly its forward ops ----------------------------------------------------------------
def test_gqa_modules_extra_backward_by_hand():
    """GQA, TP2 with sequence parallelism, BF16: T = 1024 tokens, 4 query and 1 kv head per rank, i = 256."""
    heads, i = 4, 256
    # layernorm: two norms over the sequence shard (512 tokens), read + write h BF16 each
    assert _extra(GQA, 1, TP2, "selective:layernorm", "bytes") == 2 * 2 * 512 * H * 2
    assert _extra(GQA, 1, TP2, "selective:layernorm", "flops") == 0
    # core_attn: causal core 2 heads (d_qk + d_v) T (L+1)/2, its q, k, v, o traffic
    assert _extra(GQA, 1, TP2, "selective:core_attn", "flops") == 2 * heads * 64 * T * (SEQ + 1) / 2
    assert _extra(GQA, 1, TP2, "selective:core_attn", "bytes") == T * heads * 128 * 2
    # mlp: w13 (h -> 2i), SwiGLU, w2 (i -> h), and the all-gather / reduce-scatter around them (h BF16 per token)
    assert _extra(GQA, 1, TP2, "selective:mlp", "flops") == 2 * T * 2 * i * H + 2 * T * H * i
    w13 = (T * H + H * 2 * i) * 2 + T * 2 * i * 2
    w2 = (T * i + i * H) * 2 + T * H * 2
    assert _extra(GQA, 1, TP2, "selective:mlp", "bytes") == w13 + 3 * T * i * 2 + w2
    assert _extra(GQA, 1, TP2, "selective:mlp", "comm_bytes") == 2 * T * H * 2
    # modules that do not apply to a dense GQA layer add nothing
    for m in ("mla_up_proj", "moe_act", "moe", "shared_experts"):
        assert _extra(GQA, 1, TP2, f"selective:{m}", "bytes") == 0


def test_mla_moe_modules_extra_backward_by_hand():
    """MLA + MoE (layer 1), EP2 on 2 GPUs, BF16: T = 1024 tokens, 4 local experts of 512 rows each (top-2)."""
    rows, e = 2 * T // 4, 128
    up = 2 * T * (8 * 48) * 96 + 2 * T * (8 * 64) * 64  # wq_b (q_lora -> H d_qk), wkv_b (kv_lora -> H (nope + v))
    assert _extra(MLA, 1, EP2, "selective:mla_up_proj", "flops") == up
    latent_norms = 2 * T * 96 * 2 + 2 * T * 64 * 2
    up_bytes = ((T * 96 + 96 * 384) * 2 + T * 384 * 2) + ((T * 64 + 64 * 512) * 2 + T * 512 * 2)
    # and RoPE plus MLA's q / k assembly on the recomputed q and k (workloads.memory_ops): 2 x 8 x 16 and
    # 2 x 8 x 48 + 8 x 32 + 16 + 8 x 48 elements a token, BF16
    again = T * (2 * 8 * 16 + 2 * 8 * 48 + 8 * 32 + 16 + 8 * 48) * 2
    assert _extra(MLA, 1, EP2, "selective:mla_up_proj", "bytes") == latent_norms + up_bytes + again
    shared = 2 * T * 2 * e * H + 2 * T * H * e
    assert _extra(MLA, 1, EP2, "selective:shared_experts", "flops") == shared
    router = 2 * T * 8 * H
    experts = 4 * (2 * rows * 2 * e * H + 2 * rows * H * e)
    assert _extra(MLA, 1, EP2, "selective:moe", "flops") == router + experts + shared
    assert _extra(MLA, 1, EP2, "selective:moe", "comm_bytes") == 2 * T * H * 2  # dispatch + combine, BF16
    # "moe" contains the shared experts; moe_act is already in every FFN's backward: nothing more
    assert _extra(MLA, 1, EP2, "selective:moe,shared_experts", "flops") == router + experts + shared
    assert _extra(MLA, 1, EP2, "selective:moe_act", "bytes") == 0
    # layer 0 is dense: "mlp" applies there, "moe" does not
    assert _extra(MLA, 0, EP2, "selective:moe", "flops") == 0
    assert _extra(MLA, 0, EP2, "selective:mlp", "flops") == 2 * T * 1024 * H + 2 * T * H * 512


# which forward ops each block module repeats, by name (dense layer, MoE layer)
_OWN = {
    "mlp": (lambda op: op.module == "mlp" and (op.kind == "collective" or ".mlp.ffn." in op.name), None),
    "moe": (None, lambda op: op.module in ("mlp", "moe") and not op.name.endswith((".mlp.ffn_norm", ".mlp.residual"))),
    "shared_experts": (None, lambda op: ".mlp.shared." in op.name),
}


@pytest.mark.parametrize("model,layer,p", [(GQA, 1, TP2), (MLA, 1, EP2), (MLA, 0, EP2)])
@pytest.mark.parametrize("module", ["mlp", "moe", "shared_experts"])
def test_block_modules_repeat_their_forward_ops(model, layer, p, module):
    """The recomputed ops are the module's forward ops (same kind, FLOPs, bytes, collective), in forward order,
    priced as forward ops, before the ordinary backward; FP8 quantisation casts included."""
    opts = OpOptions(fp8=True, recompute=f"selective:{module}")
    a = layer_passes(model, layer, p, SEQ, opts)
    b = layer_passes(model, layer, p, SEQ, replace(opts, recompute="none"))
    n = len(a.backward) - len(b.backward)
    assert a.backward[n:] == b.backward
    rec = [op for s in a.backward[:n] for op in s.ops]
    own = _OWN[module][model.is_moe_layer(layer)]
    fwd = [op for s in b.forward for op in s.ops if own is not None and own(op)]
    assert (len(fwd) > 0) == (own is not None)
    key = [(o.kind, o.collective, o.flops, o.bytes, o.comm_bytes) for o in rec]
    assert key == [(o.kind, o.collective, o.flops, o.bytes, o.comm_bytes) for o in fwd]
    assert all(op.phase == "F" and ".recompute." in op.name for op in rec)


# -- memory: each module drops exactly what it kept ----------------------------------------------------------------
def test_gqa_modules_drop_by_hand():
    """Bytes per token (before /tp), BF16 (c = 2): layernorm drops both norm outputs (2 c h), core_attn the softmax
    statistics (4 H), mlp the SwiGLU input (c 2 i)."""
    none = _kept(GQA, 1, "none")
    assert none - _kept(GQA, 1, "selective:layernorm") == 2 * 2 * H
    assert none - _kept(GQA, 1, "selective:core_attn") == 4 * 8
    assert none - _kept(GQA, 1, "selective:mlp") == 2 * 2 * 512
    for m in ("mla_up_proj", "moe_act", "moe", "shared_experts"):
        assert _kept(GQA, 1, f"selective:{m}") == none
    assert none - _kept(GQA, 1, "selective:core_attn,layernorm,mlp") == 2 * 2 * H + 32 + 2048  # additive


def test_mla_moe_modules_drop_by_hand():
    none = _kept(MLA, 1, "none")
    assert none - _kept(MLA, 1, "selective:layernorm") == 2 * H + 2 * H + 2 * H  # x_norm, h_norm, router input
    assert none - _kept(MLA, 1, "selective:mla_up_proj") == 2 * (96 + 64) + 2 * 8 * (2 * 48 + 32)
    assert none - _kept(MLA, 1, "selective:shared_experts") == 2 * 2 * 128
    routed = 2 * (2 * H + 2 * 2 * 128 + 4)  # top-2 rows: w13 input, SwiGLU input, gate (FP32)
    assert none - _kept(MLA, 1, "selective:moe") == 2 * 8 + 2 * 2 * 128 + routed  # top-k (score + index)
    assert none - _kept(MLA, 1, "selective:moe,shared_experts") == 2 * 8 + 2 * 2 * 128 + routed
    assert _kept(MLA, 1, "selective:moe_act") == none


# -- the old names are aliases: literals recorded before the change --------------------------------------------
def test_aliases_reproduce_the_recorded_figures():
    """FP8, MLA model: layer 0 dense, layer 1 MoE; TP2 EP2 with sequence parallelism (figures recorded from the
    code before `selective:<modules>` existed)."""
    p = ParallelSpec(num_gpus=4, tp=2, ep=2, sequence_parallel=True, micro_batch_size=MBS)
    recorded = {  # (layer, policy): (backward FLOPs, backward bytes, kept bytes per token)
        (0, "deepseek"): (1124892672.0, 22478848.0, 2848.0), (0, "selective"): (1221689344.0, 20477952.0, 5557.0),
        (1, "deepseek"): (1026326528.0, 22425600.0, 3136.0), (1, "selective"): (1123123200.0, 20424704.0, 6357.0),
        (1, "full"): (1657896960.0, 33492992.0, 512.0)}
    # A deliberate correction since (workloads.memory_ops), backward bytes added, by hand (T = 1024 tokens, 512 on
    # the sequence shard, 4 heads a rank): two residual gradient sums 2 x 3 x 512 x 256 x 2 = 1,572,864; the E5M6
    # attention output cast back 1024 x 128 x 3.5 = 458,752; MLA's q / k gradient assembly 1024 x 976 x 2 =
    # 1,998,848; "deepseek" also runs RoPE (1024 x 2 x 4 x 16 x 2 = 262,144) and the q / k assembly (1024 x 720
    # x 2 = 1,474,560) again. MoE layer (1024 rows, 4 local experts, 11/7 ranks a token, 5632/7 tokens received):
    # permute (5632/7 + 1024) x 264 (the output gradients arrive in FP8 with their scales) and unpermute
    # (5632/7 + 1024) x 512, the SwiGLU input cast back 1024 x 776, the output gradients cast before the combine's
    # backward sends them 512 x 256 x 3, and w2's gradient cast 2 bytes an element instead of 4 (a column-wise
    # copy of the FP8 rows, 1024 x 256 x 2 less); "full" repeats the
    # forward's additions: residual sums 1,572,864, routed + shared 786,432, E5M6 cast 458,752, q / k assembly
    # 1,474,560, permute (12800/7) x 264, unpermute (12800/7) x 512, SwiGLU input cast 794,624, and the dispatch
    # cast (512 x 256 x 3) in place of the rows' (1024 x 256 x 3).
    attn_b, again = 1572864 + 458752 + 1998848, 262144 + 1474560
    moe_b = (5632 / 7 + 1024) * (264 + 512) + 1024 * 776 + 512 * 256 * 3 - 1024 * 256 * 2
    moe_f = 1572864 + 786432 + 458752 + 1474560 + 12800 / 7 * (264 + 512) + 794624 + 3 * 256 * (512 - 1024)
    # And since (issue 15, blockwise FP8): each FP8 weight read and written transposed for its input-gradient GEMM,
    # 2 bytes an element (memory_ops.fp8_weight_transpose_bytes), once per backward, whatever is recomputed:
    # attention wq_a 256 x 96 and wkv_a 256 x 80 whole, wq_b 96 x 384, wkv_b 64 x 512 and wo 256 x 256 halved by TP2;
    # the dense MLP's three 256 x 512 halved; the MoE layer's 4 local experts' three 256 x 128 and the shared
    # expert's three 256 x 128; and the gate weights' gradient, 1024 rows x (2 x 128 x 2 + 4 bytes).
    attn_t = 2 * (256 * 96 + 256 * 80 + (96 * 384 + 64 * 512 + 256 * 256) / 2)
    dense_t, moe_t = 2 * 3 * 256 * 512 / 2, 2 * (4 + 1) * 3 * 256 * 128 + 1024 * (2 * 128 * 2 + 4)
    attn_b, moe_b = attn_b + attn_t, moe_b + moe_t
    added = {(0, "deepseek"): attn_b + again + dense_t, (0, "selective"): attn_b + dense_t,
             (1, "deepseek"): attn_b + again + moe_b, (1, "selective"): attn_b + moe_b,
             (1, "full"): attn_b + moe_b + moe_f}
    for (layer, policy), (flops, nbytes, kept) in recorded.items():
        for spelled in {"deepseek": ("deepseek", "selective:layernorm,mla_up_proj"),
                        "selective": ("selective", "selective:core_attn"), "full": ("full",)}[policy]:
            lp = layer_passes(MLA, layer, p, SEQ, OpOptions(recompute=spelled))
            assert _sum(lp.backward, "flops") == flops
            assert _sum(lp.backward, "bytes") == pytest.approx(nbytes + added[(layer, policy)], rel=1e-12)
            assert sum(layer_terms(MLA, layer, MemoryRecipe(), True, spelled).values()) == kept


def test_deepseek_on_gqa_now_charges_its_norms():
    """A deliberate correction: "deepseek" on a GQA model dropped the norm outputs from memory (recorded 3264 of
    3792 bytes per token kept) but charged no recomputation; it now runs the two norms again (2 x 2 x 512 x h x 2
    bytes over the recorded 15286272)."""
    lp = layer_passes(GQA, 1, TP2, SEQ, OpOptions(recompute="deepseek"))
    # + workloads.memory_ops (a later correction): two residual gradient sums (2 x 3 x 512 x h x 2) and the E5M6
    # attention output cast back (1024 tokens x 4 heads x 32 x 3.5 bytes); and (issue 15) the FP8 weights read and
    # written transposed for the input gradients, 2 bytes an element: wq, wk, wv, wo (h x 256, 2 x h x 64, 256 x h)
    # and the MLP's three h x 512, all halved by TP2
    transposes = 2 * (H * 256 + 2 * H * 64 + 256 * H + 3 * H * 512) / 2
    assert _sum(lp.backward, "bytes") == (15286272.0 + 2 * 2 * 512 * H * 2 + 2 * 3 * 512 * H * 2 + T * 128 * 3.5
                                          + transposes)
    assert sum(layer_terms(GQA, 1, MemoryRecipe(), True, "deepseek").values()) == 3264.0


# -- full:N ----------------------------------------------------------------------------------------------------
PP2 = ParallelSpec(num_gpus=2, pp=2, micro_batch_size=MBS)


def _stage(policy, layers=range(0, 3)):
    return stage_units(GQA, PP2, SEQ, layers, layers.start == 0, False, OpOptions(fp8=False, recompute=policy))


def test_full_n_recomputes_the_first_layers_of_a_stage():
    for layers in (range(0, 3), range(1, 4)):
        full, none = _stage("full", layers), _stage("none", layers)
        assert _stage("full:3", layers) == full and _stage("full:7", layers) == full
        assert _stage("full:0", layers) == none
        got = _stage("full:2", layers)
        units = [u for u in got if u.name != "embed"]
        assert [u.backward for u in units] == [u.backward for u in full if u.name != "embed"][:2] + \
               [u.backward for u in none if u.name != "embed"][2:]


def test_full_n_memory_is_monotone_and_meets_its_ends():
    stage_layers = (2, 2)
    bytes_of = {n: chunk_bytes(GQA, PP2, SEQ, stage_layers, BF16_RECIPE, False, f"full:{n}") for n in range(4)}
    assert bytes_of[0] == chunk_bytes(GQA, PP2, SEQ, stage_layers, BF16_RECIPE, False, "none")
    assert bytes_of[2] == bytes_of[3] == chunk_bytes(GQA, PP2, SEQ, stage_layers, BF16_RECIPE, False, "full")
    for s in range(2):
        seq = [bytes_of[n][s] for n in range(4)]
        assert all(a > b for a, b in zip(seq[:2], seq[1:3]))
        # one more recomputed layer drops (kept - layer input) per token: T (3792 - 512) / tp 1 with BF16 c = 2
        kept = _kept(GQA, 1, "none")
        assert seq[0] - seq[1] == pytest.approx(T * (kept - 2 * H))


def test_partition_sees_recomputed_heads():
    """Six layers of cost 1; the first 3 of a stage cost 1 more (recomputed); the last stage carries 3 of head.
    A stage of n layers costs n + min(3, n): (4, 2) costs max(7, 2 + 2 + 3) = 7, (3, 3) max(6, 9), (5, 1) max(8,
    5), so (4, 2) is the only optimum."""
    sizes = partition_layers([1.0] * 6, 2, 0.0, 3.0, head_cost=[1.0] * 6, head_layers=3)
    assert sizes == (4, 2)
    score = time_scorer([1.0] * 6, ((0,), (1,)), 0.0, 3.0, head_cost=[1.0] * 6, head_layers=3)
    assert score((4, 2)) == (round(7 / 9, 9), round(7 / 9, 9))


def test_full_n_step_equals_full_and_none_at_its_ends():
    base = load_scenario(model="llama-3-70b", gpus=8, pp=2, tp=2, schedule="1f1b", seq_len=64, batch=8, tokens=1e6)
    base = replace(base, model=GQA, parallel=replace(base.parallel, stage_layers=(2, 2)))
    def step(policy):
        return replace(base, opts=replace(base.opts, fp8=False, recompute=policy)).simulator().step(4).step_time

    assert step("full:2") == step("full") and step("full:0") == step("none")
    assert step("none") < step("full:1") < step("full")


# -- plan, CLI, sweep ------------------------------------------------------------------------------------------
def test_plan_accepts_strings_and_lists(tmp_path):
    import gpuhours
    from pathlib import Path
    text = (Path(gpuhours.__file__).parent / "workloads" / "plans" / "deepseek-v3.toml").read_text()
    for value, policy in (('"selective:core_attn,layernorm"', "selective:core_attn,layernorm"),
                          ('["moe", "core_attn"]', "selective:core_attn,moe"), ('"full:2"', "full:2")):
        f = tmp_path / "p.toml"
        f.write_text(text.replace('recompute = "deepseek"', f"recompute = {value}"))
        assert load_scenario(f).opts.recompute == policy
    f.write_text(text.replace('recompute = "deepseek"', 'recompute = ["router"]'))
    with pytest.raises(ValueError, match="recompute.*core_attn"):
        load_scenario(f)


def test_sweep_key_and_phase_accept_the_new_strings():
    from gpuhours.simulator.phases import PhaseSpec, phase_scenario
    from gpuhours.simulator.sweep import parse_spec
    parse_spec({"sweep": {"base": "deepseek-v3"}, "grid": {"recompute": ["full:2", "selective:core_attn,moe"]}})
    with pytest.raises(ValueError, match="grid.recompute.*unknown module"):
        parse_spec({"sweep": {"base": "deepseek-v3"}, "grid": {"recompute": ["selective:router"]}})
    sc = phase_scenario("deepseek-v3", PhaseSpec("p", (("recompute", "selective:moe"),)))
    assert sc.opts.recompute == "selective:moe"


def test_cli_help_and_errors():
    runner = CliRunner()
    compact = re.sub(r"[\s│]", "", runner.invoke(app, ["estimate", "--help"]).output)
    assert "full:N" in compact and "selective:<modules>" in compact and "shared_experts" in compact
    result = runner.invoke(app, ["estimate", "--recompute", "selective:attn"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "recompute" in lines[0] and "shared_experts" in lines[0]
