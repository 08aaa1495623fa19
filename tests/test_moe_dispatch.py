"""All-gather token dispatch and node-limited routing as a parameter (issue 11, item 5)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.workloads.moe_dispatch import expected_nodes_per_token
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.sweep import _check_keys
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset

V3 = load_preset("deepseek-v3")  # h 7168, 256 routed experts, top-8, 8 groups (4 kept per token)


def _passes(p: ParallelSpec, opts: OpOptions = OpOptions()):
    return layer_passes(V3, 10, p, 4096, opts)


def test_allgather_dispatch_bytes_closed_form():
    """EP8 in a node, 4,096 tokens a rank: every rank gathers the group's 8 x 4,096 tokens of BF16 hidden states
    (7,168 x 2 bytes; not x top_k), plus per token the routing map (1 byte) and probabilities (4 bytes) of all
    256 experts; the combine reduce-scatters the same hidden-state bytes."""
    p = ParallelSpec(num_gpus=128, pp=16, ep=8, moe_dispatch="allgather")
    passes = _passes(p)
    seg = {s.name: s for s in passes.forward}
    tokens = 8 * 4096
    gathered = {op.name.split(".")[-1]: op for op in seg["dispatch(F)"].ops}
    assert gathered["allgather_states"].comm_bytes == tokens * 7168 * 2
    assert gathered["allgather_routing"].comm_bytes == tokens * 256 * (1 + 4)
    assert all(op.collective == "all_gather" and op.group == "tp_ep" for op in gathered.values())
    (scatter,) = seg["combine(F)"].ops
    assert (scatter.collective, scatter.comm_bytes) == ("reduce_scatter", tokens * 7168 * 2)


def test_allgather_backward_mirrors_the_forward():
    """Backward: the output gradients are all-gathered (combine(B)) before the experts, the input gradients and the
    probabilities' gradients reduce-scattered (dispatch(B)) after; the routing map has no gradient."""
    p = ParallelSpec(num_gpus=128, pp=16, ep=8, moe_dispatch="allgather")
    b = _passes(p).backward
    names = [s.name for s in b]
    assert names.index("combine(B)") < names.index("mlp(B)") < names.index("dispatch(B)")
    seg = {s.name: s for s in b}
    tokens = 8 * 4096
    assert [(o.collective, o.comm_bytes) for o in seg["combine(B)"].ops] == [("all_gather", tokens * 7168 * 2)]
    assert [(o.collective, o.comm_bytes) for o in seg["dispatch(B)"].ops] == [
        ("reduce_scatter", tokens * 7168 * 2), ("reduce_scatter", tokens * 256 * 4)]


def test_allgather_gathers_the_whole_ep_x_etp_block_and_computes_the_same_rows():
    """With ETP2 the block is ep x etp = 16 ranks; the expert rows (and so the GEMMs) match the all-to-all
    dispatcher's: every rank's experts see their share of the block's routed rows either way."""
    a2a = ParallelSpec(num_gpus=256, pp=16, ep=8, etp=2)
    ag = replace(a2a, moe_dispatch="allgather")
    seg = {s.name: s for s in _passes(ag).forward}
    states = next(op for op in seg["dispatch(F)"].ops if op.name.endswith("allgather_states"))
    assert states.comm_bytes == 16 * 4096 * 7168 * 2

    def w13(p):
        return next(op for s in _passes(p).forward for op in s.ops if op.name.endswith("experts.w13"))

    assert w13(ag).gemm == w13(a2a).gemm and w13(ag).flops == w13(a2a).flops


def test_alltoall_stays_the_default():
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64, schedule="dualpipe", comm_sms=20)
    assert p.moe_dispatch == "alltoall"
    kinds = {op.collective for s in _passes(p).forward if s.stream == "comm" for op in s.ops}
    assert kinds == {"ep_dispatch", "ep_combine"}
    with pytest.raises(ValueError, match="moe_dispatch must be one of alltoall, allgather"):
        ParallelSpec(num_gpus=8, moe_dispatch="deepep")


def test_allgather_over_nodes_costs_more_than_the_all_to_all():
    """The all-gather moves every token to every rank of the EP group (x 64 over 8 nodes), the all-to-all about
    4 node copies of each: the all-gather dispatcher is the slower one on DeepSeek-V3's layout."""
    base = load_scenario()
    coster = {d: load_scenario(moe_dispatch=d).simulator().coster for d in ("alltoall", "allgather")}
    seg = {d: next(s for s in c.stages[1][1].forward if s.name == "dispatch(F)") for d, c in coster.items()}
    t = {d: coster[d]._price_segment(seg[d]) for d in seg}
    assert t["allgather"] > t["alltoall"] > 0
    assert base.parallel.moe_dispatch == "alltoall"


# -- node-limited routing -------------------------------------------------------------------------------------------
def _model(n_experts: int, top_k: int, n_groups: int = 1, topk_groups: int = 1):
    return replace(V3, moe=replace(V3.moe, n_routed_experts=n_experts, top_k=top_k, n_groups=n_groups,
                                   topk_groups=topk_groups))


def test_node_limited_closed_form_by_hand():
    """16 experts on EP16 over 4 nodes (4 experts a node), top-2. Unlimited: a token misses a given node when both
    experts fall on the other 12: (12 x 11) / (16 x 15) = 0.55, so 4 x 0.45 = 1.8 nodes. At most M = 2 nodes: the
    2 experts among the 8 of its two nodes miss one with (4 x 3) / (8 x 7) = 3/14: 2 x 11/14 nodes. M = 1: 1."""
    m = _model(16, 2)
    assert expected_nodes_per_token(m, 16, 4, 0) == pytest.approx(1.8, rel=1e-12)
    assert expected_nodes_per_token(m, 16, 4, 2) == pytest.approx(22 / 14, rel=1e-12)
    assert expected_nodes_per_token(m, 16, 4, 1) == pytest.approx(1.0, rel=1e-12)
    assert expected_nodes_per_token(m, 16, 4, 4) == expected_nodes_per_token(m, 16, 4, 0)  # M >= N: unlimited
    assert expected_nodes_per_token(m, 16, 4, 9) == expected_nodes_per_token(m, 16, 4, 0)
    assert expected_nodes_per_token(m, 16, 4) == pytest.approx(1.8, rel=1e-12)  # one group: the model's rule
    with pytest.raises(ValueError, match="max_nodes_per_token"):
        expected_nodes_per_token(_model(16, 6), 16, 4, 1)  # 6 experts cannot fit on one node of 4


def test_deepseek_v3_default_is_its_four_node_limit():
    """DeepSeek-V3 on EP64 (8 nodes of 32 experts), top-8, M = 4: 4 x (1 - (96 x 95 x ... x 89) / (128 x ... x 121))."""
    miss = 1.0
    for i in range(8):
        miss *= (96 - i) / (128 - i)
    assert expected_nodes_per_token(V3, 64, 8) == pytest.approx(4 * (1 - miss), rel=1e-12)
    assert expected_nodes_per_token(V3, 64, 8, 4) == expected_nodes_per_token(V3, 64, 8)


def test_max_nodes_per_token_option_and_plan(tmp_path):
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(ValueError, match="max_nodes_per_token"):
            OpOptions(max_nodes_per_token=bad)
    sc = load_scenario(max_nodes_per_token=2)
    assert sc.opts.max_nodes_per_token == 2 and sc.effective_opts().nodes_per_token is None
    assert sc.simulator().coster.nodes_per_token == pytest.approx(expected_nodes_per_token(V3, 64, 8, 2))
    default = load_scenario()
    assert default.opts.max_nodes_per_token is None  # the routing model's nodes per token, as before
    assert default.effective_opts().nodes_per_token is not None
    plan = tmp_path / "m.toml"
    plan.write_text('[model]\npreset = "deepseek-v3"\n[cluster]\ngpu = "H800"\ngpus = 2048\n'
                    '[parallel]\npp = 16\nep = 64\nschedule = "dualpipe"\ncomm_sms = 20\nmoe_dispatch = "alltoall"\n'
                    '[run]\ntokens = "1T"\nseq_len = 4096\nbatch_start = 15360\nbatch_end = 15360\n'
                    'price_per_gpu_hour = 2.0\n[routing]\nmax_nodes_per_token = 0\n')
    assert load_scenario(plan).opts.max_nodes_per_token == 0


def test_sweep_keys_accept_the_new_options():
    _check_keys({"etp": 2, "moe_dispatch": "allgather", "max_nodes_per_token": 4}, "grid")


def test_cli_options():
    runner = CliRunner()
    out = runner.invoke(app, ["estimate", "--help"]).output
    assert "--etp" in out and "--moe-dispatch" in out and "--max-nodes-per-token" in out
    bad = runner.invoke(app, ["estimate", "--moe-dispatch", "deepep"])
    assert bad.exit_code == 2 and "moe_dispatch must be one of alltoall, allgather" in bad.output
    bad = runner.invoke(app, ["estimate", "--etp", "3"])
    assert bad.exit_code == 2 and "etp" in bad.output


def test_fp8_dispatch_payload_follows_the_recipes_scales():
    """An FP8 token row of h = 7,168 elements: blockwise carries one FP32 scale per 128 (7,168 + 56 x 4), MXFP8 one
    E8M0 byte per 32 (7,168 + 224: the same bytes, 4/128 = 1/32), per-tensor recipes one scale for the whole
    tensor (7,168). A width that is not a multiple of 128 rounds the blocks up: 200 elements are 2 blockwise
    blocks (200 + 8) and 7 MX blocks (200 + 7)."""
    from gpuhours.workloads.moe_dispatch import dispatch_bytes_per_row
    from gpuhours.workloads.ops import fp8_payload_bytes

    fp8 = OpOptions(fp8=True)
    assert dispatch_bytes_per_row(7168, "F", fp8) == 7168 + 56 * 4
    assert dispatch_bytes_per_row(7168, "F", replace(fp8, fp8_recipe="mxfp8")) == 7168 + 224
    for recipe in ("delayed", "current"):
        assert dispatch_bytes_per_row(7168, "F", replace(fp8, fp8_recipe=recipe)) == 7168
    assert dispatch_bytes_per_row(7168, "F", OpOptions(fp8=False)) == 7168 * 2
    assert dispatch_bytes_per_row(7168, "B", fp8) == 7168 * 2  # the input gradients go back in BF16
    assert fp8_payload_bytes(200, "blockwise") == 208 and fp8_payload_bytes(200, "mxfp8") == 207


def test_per_tensor_fp8_dispatch_sends_the_rows_without_scales():
    """The dispatch all-to-all under a per-tensor recipe carries h bytes a routed row, 1/32 fewer than blockwise
    (h + h / 32 at h = 7,168); the expert rows it is expanded into shrink the same way."""
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64)
    def dispatch(recipe):
        passes = _passes(p, OpOptions(fp8=True, fp8_recipe=recipe))
        ops = [op for seg in passes.forward for op in seg.ops]
        a2a = next(op for op in ops if op.collective == "ep_dispatch")
        permute = next(op for op in ops if op.name.endswith("experts.permute"))
        return a2a.comm_bytes or a2a.tokens * a2a.bytes_per_token, permute.bytes
    (a_block, p_block), (a_tensor, p_tensor) = dispatch("blockwise"), dispatch("current")
    assert a_tensor / a_block == pytest.approx(7168 / 7392)
    assert p_tensor / p_block == pytest.approx(7168 / 7392)


def test_the_gate_runs_before_the_dispatch_and_its_backward_after():
    """The dispatch sends what the router chose, cast to FP8 first: the FFN norm, the router GEMM, its top-k and the
    payload's cast form the segment right before the forward dispatch (named as the attention half of the pass,
    where DeepSeek's pair launches them), and their backward the segment right after the backward dispatch; the
    experts' segment holds none of them. The weight gradient keeps the router's weight GEMM."""
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64)
    passes = _passes(p, OpOptions(fp8=True))
    gate_ops = ("ffn_norm", "router.topk", "router", "dispatch.quant")  # as `moe_ops` emits them

    def names(seg):
        return [op.name.split(".mlp.", 1)[1] for op in seg.ops if ".mlp." in op.name]

    fwd = list(passes.forward)
    i = next(k for k, seg in enumerate(fwd) if any(op.collective == "ep_dispatch" for op in seg.ops))
    assert fwd[i - 1].name == "attn(F)" and names(fwd[i - 1]) == list(gate_ops)
    experts_f = next(seg for seg in fwd if seg.name == "mlp(F)")
    assert not set(names(experts_f)) & set(gate_ops)
    bwd = list(passes.backward)
    j = max(k for k, seg in enumerate(bwd) if any(op.collective == "ep_dispatch" for op in seg.ops))
    assert bwd[j + 1].name == "attn(B)" and {"router", "router.topk", "ffn_norm"} <= set(names(bwd[j + 1]))
    assert "router" in names(next(seg for seg in passes.weight if seg.name == "mlp(W)"))
