"""Context parallelism (ParallelSpec.cp: all-gather K/V, causal load balancing) against independent expectations:
the layout arithmetic, the per-layer ops, the K/V collectives, pipeline sends, the data-parallel group, tokens per
step, activation memory and the command line."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.hwmodels.cluster import CommGroup
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.memory import MemoryRecipe, chunk_bytes, memory_breakdown
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.parallel import ParallelSpec

MID = ModelSpec("mid", hidden=1024, n_layers=4, vocab=32000, dense_intermediate=3584,
                attention=AttentionSpec("gqa", n_heads=16, n_kv_heads=4, head_dim=64))
SEQ = 4096
OPTS = OpOptions(fp8=False, recompute="none")


def _ops(p: ParallelSpec, phase: str, seq: int = SEQ, model: ModelSpec = MID):
    lp = layer_passes(model, 0, p, seq, OPTS)
    segs = {"F": lp.forward, "B": lp.backward, "W": lp.weight}[phase]
    return [op for seg in segs for op in seg.ops]


def _scenario(cp: int, gpus: int = 8, tp: int = 1, pp: int = 1, zero_stage: int = 1, seq_len: int = SEQ):
    base = load_scenario(model="llama-3-70b", gpu="h100", gpus=gpus, pp=pp, tp=tp, cp=cp, schedule="1f1b",
                         seq_len=seq_len, batch=8 * gpus, tokens=1e6, fp8=False)
    parallel = replace(base.parallel, zero_stage=zero_stage)
    return replace(base, model=MID, parallel=parallel, opts=OPTS)


# -- layout ------------------------------------------------------------------------------------------------------
def test_dp_is_gpus_over_pp_tp_cp():
    p = ParallelSpec(num_gpus=64, pp=2, tp=4, cp=2)
    assert p.dp == 64 // (2 * 4 * 2) == 4
    assert p.grad_dp == 4 * 2                     # cp ranks hold the same parameters
    moe = ParallelSpec(num_gpus=64, pp=2, tp=2, cp=2, ep=8)
    assert moe.expert_dp == moe.dp * 2 * 2 // 8 == 4
    with pytest.raises(ValueError, match=r"pp x tp x cp"):
        ParallelSpec(num_gpus=8, cp=3)
    with pytest.raises(ValueError, match=r"cp must be a positive integer"):
        ParallelSpec(num_gpus=8, cp=0)
    with pytest.raises(ValueError, match=r"dp x tp x cp"):
        ParallelSpec(num_gpus=8, tp=2, cp=2, ep=16)


# -- ops ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["F", "B", "W"])
def test_every_gemm_and_elementwise_op_halves(phase):
    one = {op.name: op for op in _ops(ParallelSpec(num_gpus=8), phase) if op.kind != "collective"}
    two = {op.name: op for op in _ops(ParallelSpec(num_gpus=8, cp=2), phase) if op.kind != "collective"}
    assert one.keys() == two.keys()
    for name, op in one.items():
        if op.kind == "attention":
            continue
        assert two[name].flops == pytest.approx(op.flops / 2), name
        if op.kind == "elementwise":  # GEMM bytes also read the weights, which do not shrink
            assert two[name].bytes == pytest.approx(op.bytes / 2), name
    assert any(op.kind == "gemm" for op in one.values())


def _causal_pairs_of_rank(seq: int, cp: int, rank: int) -> int:
    """Brute force: (query, key) pairs with key <= query for the queries of chunks rank and 2cp-1-rank."""
    c = seq // (2 * cp)
    queries = list(range(rank * c, (rank + 1) * c)) + list(range((2 * cp - 1 - rank) * c, (2 * cp - rank) * c))
    return sum(q + 1 for q in queries)


@pytest.mark.parametrize("cp", [2, 4])
def test_attention_core_is_one_cp_th_of_the_causal_core(cp):
    seq = 256
    a = MID.attention
    heads = a.n_heads
    whole = seq * (seq + 1) // 2
    for rank in range(cp):  # load balancing: every rank the same share, exactly 1/cp of the whole
        assert _causal_pairs_of_rank(seq, cp, rank) * cp == whole
    per_pair = 2.0 * heads * (a.qk_head_dim + a.out_head_dim)  # QK^T and PV, 2 FLOPs a multiply-add
    core = {op.name: op.flops for op in _ops(ParallelSpec(num_gpus=8, cp=cp), "F", seq) if op.kind == "attention"}
    core1 = {op.name: op.flops for op in _ops(ParallelSpec(num_gpus=8), "F", seq) if op.kind == "attention"}
    assert core["L0.attn.core"] == pytest.approx(per_pair * _causal_pairs_of_rank(seq, cp, 0))
    assert core["L0.attn.core"] == pytest.approx(core1["L0.attn.core"] / cp)
    bwd = {op.name: op.flops for op in _ops(ParallelSpec(num_gpus=8, cp=cp), "B", seq) if op.kind == "attention"}
    assert bwd["L0.attn.core_bwd"] == pytest.approx(2.5 * core["L0.attn.core"])


@pytest.mark.parametrize("cp,tp", [(2, 1), (4, 2)])
def test_kv_all_gather_and_reduce_scatter_bytes(cp, tp):
    p = ParallelSpec(num_gpus=8, cp=cp, tp=tp)
    a = MID.attention
    kv_per_token = 2 * (a.n_kv_heads // tp) * a.head_dim * 2  # K and V of the rank's kv heads, BF16
    for phase, kind in (("F", "all_gather"), ("B", "reduce_scatter")):
        cps = [op for op in _ops(p, phase) if op.group == "cp"]
        assert [op.collective for op in cps] == [kind]
        # hwmodels.collectives' convention: comm_bytes is the gathered (full) buffer, the whole sequence's K/V ...
        assert cps[0].comm_bytes == SEQ * kv_per_token
        # ... of which each rank sends (cp-1)/cp: its peers' s/cp tokens each
        assert cps[0].comm_bytes * (cp - 1) / cp == pytest.approx((cp - 1) * (SEQ / cp) * kv_per_token)
    assert not [op for op in _ops(p, "W") if op.group == "cp"]
    assert not [op for op in _ops(ParallelSpec(num_gpus=8, tp=tp), "F") if op.group == "cp"]


def test_kv_collectives_sit_next_to_the_attention_segment():
    lp = layer_passes(MID, 0, ParallelSpec(num_gpus=8, cp=2), SEQ, OPTS)
    f = [s.name for s in lp.forward]
    b = [s.name for s in lp.backward]
    assert f[f.index("attn(F)") - 1] == "cp.all_gather(F)"
    assert b[b.index("attn(B)") + 1] == "cp.reduce_scatter(B)"
    full = layer_passes(MID, 0, ParallelSpec(num_gpus=8, cp=2), SEQ, replace(OPTS, recompute="full"))
    assert "cp.all_gather.recompute(B)" in [s.name for s in full.backward]  # regathered before the backward


def test_mla_gathers_the_compressed_latent():
    mla = ModelSpec("mla", hidden=1024, n_layers=2, vocab=32000, dense_intermediate=2048,
                    attention=AttentionSpec("mla", n_heads=16, q_lora_rank=384, kv_lora_rank=256,
                                            qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64))
    (op,) = [op for op in _ops(ParallelSpec(num_gpus=8, cp=2, tp=2), "F", model=mla) if op.group == "cp"]
    assert op.comm_bytes == SEQ * (256 + 32) * 2


def test_cp_group_is_placed_after_tp_inside_a_node():
    sc = _scenario(cp=4, tp=2, gpus=16)
    coster = sc.simulator().coster
    assert coster.comm_group("cp") == CommGroup(4, 4)      # 8 GPUs a node / tp 2 = 4 cp ranks a node
    op = next(op for op in _ops(sc.parallel, "F") if op.group == "cp")
    assert coster.op_time(op) == pytest.approx(sc.network().all_gather(op.comm_bytes, CommGroup(4, 4)))
    assert coster.comm_group("dp") == CommGroup(2 * 4, 4)  # gradient group dp x cp, tp ranks apart


# -- pipeline sends, data parallelism, tokens -------------------------------------------------------------------------
def test_pipeline_sends_carry_the_ranks_tokens():
    one, two = _scenario(cp=1, pp=2), _scenario(cp=2, pp=2)
    net = one.network()
    c1, c2 = one.simulator().coster, two.simulator().coster
    assert c1.transfer(0, 1, "F", 0, 0) == pytest.approx(net.p2p(SEQ * MID.hidden * 2, intra_node=True))
    assert c2.transfer(0, 1, "F", 0, 0) == pytest.approx(net.p2p(SEQ // 2 * MID.hidden * 2, intra_node=True))


def test_tokens_per_step_follow_dp_not_cp():
    # cp 2 on 8 GPUs and cp 1 on 4 GPUs both have dp 4: the same batch, the same tokens per step
    with_cp, without = _scenario(cp=2, gpus=8), _scenario(cp=1, gpus=4)
    assert with_cp.parallel.dp == without.parallel.dp == 4
    a, b = with_cp.simulator().step(4), without.simulator().step(4)
    assert a.tokens == b.tokens == 4 * 1 * SEQ * 4


def test_gradient_reduction_runs_over_dp_times_cp():
    # cp 2 x dp 4 on 8 GPUs reduces over the same 8 ranks as dp 8: the same tail
    with_cp, plain = _scenario(cp=2).simulator(), _scenario(cp=1).simulator()
    assert with_cp._dp_tail({0}) == pytest.approx(plain._dp_tail({0}))
    z3 = _scenario(cp=2, zero_stage=3)
    gathers = [op for u in z3.simulator().coster.stages[0] for s in u.forward for op in s.ops if op.group == "dp"]
    assert gathers and z3.simulator().coster.comm_group("dp").size == 8


# -- memory ------------------------------------------------------------------------------------------------------
def test_activations_per_chunk_halve_and_state_shards_over_dp_cp():
    recipe = MemoryRecipe()
    one, two = _scenario(cp=1), _scenario(cp=2)
    c1 = chunk_bytes(MID, one.parallel, SEQ, (MID.n_layers,), recipe, False, "none")
    c2 = chunk_bytes(MID, two.parallel, SEQ, (MID.n_layers,), recipe, False, "none")
    assert c2[0] == pytest.approx(c1[0] / 2)
    m1 = memory_breakdown(one, one.simulator().step(8), recipe)
    m2 = memory_breakdown(two, two.simulator().step(8), recipe)
    a = MID.attention
    gathered = (2 - 1) / 2 * SEQ * 2 * a.n_kv_heads * a.head_dim * 2  # the other rank's K and V, BF16
    assert m2.in_flight_chunks == m1.in_flight_chunks
    assert m2.activations == pytest.approx(m2.in_flight_chunks * c2[0] + gathered)
    assert m2.master_weights == pytest.approx(m1.master_weights)  # ZeRO-1 over dp x cp = 8 ranks either way


# -- command line ------------------------------------------------------------------------------------------------
def test_cli_rejects_cp_that_does_not_divide_the_gpus():
    r = CliRunner().invoke(app, ["estimate", "--model", "llama-3-70b", "--gpu", "H100", "--gpus", "8", "--pp", "1",
                                 "--cp", "3"])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "cp" in lines[0], r.stderr
