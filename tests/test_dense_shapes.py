"""Dense model shapes (issue 11 item 6): squared-ReLU FFNs, parallel attention + MLP blocks, LayerNorm vs RMSNorm,
learned vs (partial) rotary positions, and reading them from Hugging Face configs, against hand-derived counts
and published parameter totals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.hwmodels.compute import elementwise_class
from gpuhours.workloads import params as P
from gpuhours.workloads.hf_config import model_from_hf_config
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.memory import layer_terms, load_recipe
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset, model_from_toml_text
from gpuhours.workloads.stage_ops import embedding_passes, head_passes

H, I, L, V = 1024, 4096, 4, 32000
GPT = ModelSpec("gpt", hidden=H, n_layers=L, vocab=V, dense_intermediate=I, ffn_activation="gelu",
                attention=AttentionSpec("gqa", n_heads=16, n_kv_heads=16, head_dim=64))
SEQ = 2048
OPTS = OpOptions(fp8=False, recompute="none")


def _ops(model, p, phase, seq=SEQ):
    lp = layer_passes(model, 0, p, seq, OPTS)
    return [op for seg in {"F": lp.forward, "B": lp.backward, "W": lp.weight}[phase] for op in seg.ops]


def _named(ops, suffix):
    return [op for op in ops if op.name.endswith(suffix)]


# -- squared ReLU ------------------------------------------------------------------------------------------------
def test_relu2_has_two_matrices_and_gelu_traffic():
    relu2 = replace(GPT, ffn_activation="relu2")
    assert P.dense_ffn_params(relu2) == 2 * H * I
    p = ParallelSpec(num_gpus=2, tp=2)
    tokens = SEQ  # micro-batch 1, cp 1
    f = _named(_ops(relu2, p, "F"), "ffn.relu2")
    b = _named(_ops(relu2, p, "B"), "ffn.relu2")
    # forward reads and writes the rank's i / tp columns; backward reads input and gradient, writes one
    assert [op.bytes for op in f] == [tokens * (I // 2) * 2 * 2]
    assert [op.bytes for op in b] == [tokens * (I // 2) * 2 * 3]
    assert not _named(_ops(relu2, p, "W"), "ffn.relu2")
    assert elementwise_class(f[0]) == "activation"
    gemm = lambda m, ph: sorted(op.flops for op in _ops(m, p, ph) if op.kind == "gemm")  # noqa: E731
    assert all(gemm(relu2, ph) == gemm(GPT, ph) for ph in "FBW")
    terms = layer_terms(relu2, 0, load_recipe(), fp8=False, recompute="none")
    assert terms["ffn.relu2_in"] == 2 * I and "ffn.gelu_in" not in terms  # BF16 w1 output


# -- LayerNorm ---------------------------------------------------------------------------------------------------
def test_layernorm_adds_h_parameters_per_norm():
    ln = replace(GPT, norm="layernorm")
    norms = 2 * L + 1  # two per layer and the final norm
    assert P.param_breakdown(ln).total - P.param_breakdown(GPT).total == norms * H
    assert P.param_breakdown(ln).components["norms"] == norms * 2 * H
    # MLA: the q and kv latent norms gain a bias too; the MTP module's three norms as well
    v3 = load_preset("deepseek-v3")
    a = v3.attention
    ln3 = replace(v3, norm="layernorm")
    extra = (2 * v3.n_layers + 1) * v3.hidden + v3.n_layers * (a.q_lora_rank + a.kv_lora_rank)
    assert P.param_breakdown(ln3).total - P.param_breakdown(v3).total == extra
    assert P.mtp_params(ln3) - P.mtp_params(v3) == v3.mtp_depth * (2 * v3.hidden + a.q_lora_rank + a.kv_lora_rank
                                                                   + 3 * v3.hidden)


def test_layernorm_moves_the_same_bytes():
    p = ParallelSpec(num_gpus=2, tp=2)
    ln = replace(GPT, norm="layernorm")
    for phase in "FBW":
        assert [(o.name, o.bytes, o.flops) for o in _ops(ln, p, phase)] == \
               [(o.name, o.bytes, o.flops) for o in _ops(GPT, p, phase)]
    head = head_passes(ln, p, SEQ, OPTS).forward[0].ops
    assert [o.bytes for o in head] == [o.bytes for o in head_passes(GPT, p, SEQ, OPTS).forward[0].ops]


# -- positions ---------------------------------------------------------------------------------------------------
def test_learned_positions_add_a_table_and_embedding_ops():
    learned = replace(GPT, positions="learned", max_positions=SEQ)
    assert P.param_breakdown(learned).total - P.param_breakdown(GPT).total == SEQ * H
    p = ParallelSpec(num_gpus=1)
    tokens = SEQ
    emb = embedding_passes(learned, p, SEQ)
    f = {op.name: op.bytes for op in emb.forward[0].ops}
    w = {op.name: op.bytes for op in emb.weight[0].ops}
    assert f["embed.pos_gather"] == tokens * H * 2 * 2  # read a BF16 row, write it
    assert f["embed.pos_add"] == tokens * H * 2 * 3  # read two rows, write the sum
    assert w["embed.pos_grad"] == tokens * H * 4 * 2  # FP32 scatter-add
    assert set(op.name for op in embedding_passes(GPT, p, SEQ).forward[0].ops) == {"embed.gather"}
    assert not _named(_ops(learned, p, "F"), ".rope")  # no rotary op
    with pytest.raises(ValueError, match="max_positions"):
        replace(GPT, positions="learned")
    with pytest.raises(ValueError, match="positions"):
        replace(GPT, positions="alibi")


def test_partial_rotary_scales_the_rope_op():
    p = ParallelSpec(num_gpus=1)
    full = _named(_ops(GPT, p, "F"), ".rope")[0].bytes
    # q and k of 16 + 16 heads x 64 dims, read and written in BF16
    assert full == 2 * SEQ * (16 + 16) * 64 * 2
    assert _named(_ops(replace(GPT, rotary_pct=0.25), p, "F"), ".rope")[0].bytes == full / 4
    with pytest.raises(ValueError, match="rotary_pct"):
        replace(GPT, rotary_pct=0)
    with pytest.raises(ValueError, match="rotary_pct"):
        replace(load_preset("deepseek-v3"), rotary_pct=0.5)


# -- parallel attention + MLP block ------------------------------------------------------------------------------
def _tp(model, p, phase):
    return [op for op in _ops(model, p, phase) if op.kind == "collective" and op.group == "tp"]


@pytest.mark.parametrize("sp", [True, False])
def test_parallel_block_halves_tp_collectives_and_keeps_gemm_flops(sp):
    par = replace(GPT, parallel_block=True)
    p = ParallelSpec(num_gpus=2, tp=2, sequence_parallel=sp)
    for phase in "FBW":
        seq, pb = _tp(GPT, p, phase), _tp(par, p, phase)
        assert 2 * len(pb) == len(seq)
        gemm = lambda m: sorted(op.flops for op in _ops(m, p, phase) if op.kind == "gemm")  # noqa: E731
        assert gemm(par) == gemm(GPT)
    tokens, row = SEQ, H * 2
    if sp:  # forward: one all-gather of both normalised shards (2h) and one reduce-scatter of the sum (h)
        assert [(op.collective, op.comm_bytes) for op in _tp(par, p, "F")] == \
               [("all_gather", tokens * 2 * row), ("reduce_scatter", tokens * row)]
        assert [(op.collective, op.comm_bytes) for op in _tp(par, p, "B")] == \
               [("all_gather", tokens * row), ("reduce_scatter", tokens * 2 * row)]
        assert [(op.collective, op.comm_bytes) for op in _tp(par, p, "W")] == [("all_gather", tokens * 2 * row)]
    else:
        assert [(op.collective, op.comm_bytes) for op in _tp(par, p, "F")] == [("all_reduce", tokens * row)]
        assert [(op.collective, op.comm_bytes) for op in _tp(par, p, "B")] == [("all_reduce", tokens * row)]


def test_parallel_block_memory_and_validation():
    par = replace(GPT, parallel_block=True)
    seq_terms = layer_terms(GPT, 0, load_recipe(), fp8=False, recompute="none")
    par_terms = layer_terms(par, 0, load_recipe(), fp8=False, recompute="none")
    assert set(seq_terms) - set(par_terms) == {"ffn.h_mid"}  # the FFN norm reads the kept layer input
    assert P.param_breakdown(par).total == P.param_breakdown(GPT).total  # GPT-NeoX keeps two norms
    with pytest.raises(ValueError, match="parallel_block"):
        replace(load_preset("deepseek-v3"), parallel_block=True)


# -- configs -----------------------------------------------------------------------------------------------------
PYTHIA_410M = {
    "_name_or_path": "EleutherAI/pythia-410m", "model_type": "gpt_neox", "hidden_size": 1024,
    "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096, "vocab_size": 50304,
    "hidden_act": "gelu", "tie_word_embeddings": False, "use_parallel_residual": True, "rotary_pct": 0.25,
    "max_position_embeddings": 2048,
}


def test_hf_gpt_neox_reads_the_dense_shape_and_pythia_count():
    m = model_from_hf_config(PYTHIA_410M)
    assert (m.norm, m.parallel_block, m.rotary_pct, m.ffn_activation) == ("layernorm", True, 0.25, "gelu")
    assert not model_from_hf_config({**PYTHIA_410M, "use_parallel_residual": False}).parallel_block
    assert model_from_hf_config({k: v for k, v in PYTHIA_410M.items() if k != "rotary_pct"}).rotary_pct == 0.25
    assert model_from_hf_config({**PYTHIA_410M, "hidden_act": "relu2"}).ffn_activation == "relu2"
    # Pythia-410M's published non-embedding parameters (Biderman et al. 2023, Table 1): 302,311,424, which
    # include the linear layers' biases (qkv 3h + dense h + h_to_4h 4h + 4h_to_h h per layer) outside ModelSpec.
    b = P.param_breakdown(m)
    biases = 24 * (3 * 1024 + 1024 + 4 * 1024 + 1024)
    assert b.total - b.components["embedding"] - b.components["head"] + biases == 302_311_424
    assert b.components["embedding"] + b.components["head"] == 2 * 50304 * 1024


NEMOTRON_4_15B = {  # Nemotron-4 15B (Parmar et al. 2024, arXiv 2402.16819, Table 1): 32 layers, h 6144, 48 heads,
    # 8 KV heads, 256,000 vocabulary, squared ReLU, no bias, untied embeddings, RoPE
    "model_type": "nemotron", "hidden_size": 6144, "num_hidden_layers": 32, "num_attention_heads": 48,
    "num_key_value_heads": 8, "intermediate_size": 24576, "vocab_size": 256000, "tie_word_embeddings": False,
}


def test_hf_nemotron():
    m = model_from_hf_config(NEMOTRON_4_15B)
    assert (m.norm, m.parallel_block, m.rotary_pct, m.ffn_activation) == ("layernorm", False, 0.5, "relu2")
    assert model_from_hf_config({**NEMOTRON_4_15B, "partial_rotary_factor": 1.0}).rotary_pct == 1.0
    b = P.param_breakdown(m)
    embedding = b.components["embedding"] + b.components["head"]
    assert embedding == 2 * 256000 * 6144  # untied input and output tables
    # the paper's 12.5B non-embedding parameters (no biases in Nemotron-4)
    assert round((b.total - embedding) / 1e9, 1) == 12.5
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        model_from_hf_config({**NEMOTRON_4_15B, "partial_rotary_factor": 0})
    with pytest.raises(ValueError, match="hidden_act"):
        model_from_hf_config({**NEMOTRON_4_15B, "hidden_act": "relu"})


def test_llama_config_stays_rmsnorm_rotary_sequential():
    llama = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 160,
             "num_attention_heads": 4, "vocab_size": 128}
    m = model_from_hf_config(llama)
    assert (m.norm, m.parallel_block, m.positions, m.rotary_pct) == ("rmsnorm", False, "rotary", 1.0)


TOML = """
[model]
name = "neo"
hidden = 256
n_layers = 2
vocab = 1000
dense_intermediate = 1024
ffn_activation = "relu2"
norm = "layernorm"
parallel_block = true
positions = "learned"
max_positions = 512

[attention]
kind = "gqa"
n_heads = 4
n_kv_heads = 4
head_dim = 64
"""


def test_toml_preset_keys():
    m = model_from_toml_text(TOML)
    assert (m.ffn_activation, m.norm, m.parallel_block, m.positions, m.max_positions) == \
           ("relu2", "layernorm", True, "learned", 512)
    with pytest.raises(ValueError, match="norm"):
        model_from_toml_text(TOML.replace('"layernorm"', '"batchnorm"'))
