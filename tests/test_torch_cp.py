"""PyTorch's context parallelism as torchtitan ran it (ParallelSpec.cp_comm = "torch", workloads.torch_cp) against
hand-derived expectations: the bytes of K/V at the query heads, the fp32 bookkeeping counted op by op from
torch/distributed/tensor/experimental/_attention.py, the exposed-time closed forms and the passes' ops."""

from __future__ import annotations

import pytest

from gpuhours.simulator.ring_overlap import cp_exposed, ring_exposed, torch_cp_exposed
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import Op, OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.ring_cp import kv_block_bytes_per_token
from gpuhours.workloads.torch_cp import (backward_bookkeeping_bytes, forward_bookkeeping_bytes,
                                         sdpa_kv_bytes_per_token)

LLAMA_8B = ModelSpec("llama-3.1-8b", hidden=4096, n_layers=32, vocab=128256, dense_intermediate=14336,
                     attention=AttentionSpec("gqa", n_heads=32, n_kv_heads=8, head_dim=128))
TINY = ModelSpec("tiny", hidden=8, n_layers=1, vocab=64, dense_intermediate=16,
                 attention=AttentionSpec("gqa", n_heads=2, n_kv_heads=1, head_dim=4))
OPTS = OpOptions(fp8=False, recompute="none")


def test_kv_exchanged_at_the_query_heads():
    # torchtitan's repeat_kv: 32 heads x (128 + 128) x 2 bytes, 4x the 8 kv heads' 4096 bytes
    assert sdpa_kv_bytes_per_token(LLAMA_8B, ParallelSpec(num_gpus=8, cp=2)) == 32 * 256 * 2 == 16384
    assert kv_block_bytes_per_token(LLAMA_8B, ParallelSpec(num_gpus=8, cp=2)) == 4096
    # 405B under TP 8: 128 / 8 = 16 local heads -> 8192 bytes a token
    m405 = ModelSpec("405b", hidden=16384, n_layers=126, vocab=128256, dense_intermediate=53248,
                     attention=AttentionSpec("gqa", n_heads=128, n_kv_heads=8, head_dim=128))
    assert sdpa_kv_bytes_per_token(m405, ParallelSpec(num_gpus=16, tp=8, cp=2)) == 8192


def test_forward_bookkeeping_by_hand():
    # 2 heads x 4 dims, 8 tokens on the rank, cp 2: Q = K = V = O = 64 elements, 16 LSE rows
    p = ParallelSpec(num_gpus=8, cp=2)
    contiguous = 2 * (2 + 2) * 64      # key.contiguous(), value.contiguous(): read + write BF16
    cat = 1 * 2 * (2 + 2) * 64         # torch.cat([k, v]) at step 0 (i < cp-1)
    cast0 = (2 + 4) * 64               # step-0 block output to fp32
    merge = 1 * ((2 + 4) * 64 + 12 * 64 + 8 * 64 + 12 * 64 + (12 + 8 + 12 + 8 + 12) * 16)  # one full merge
    final = (4 + 2) * 64               # merged output back to BF16
    assert forward_bookkeeping_bytes(TINY, p, 8) == contiguous + cat + cast0 + merge + final == 5056


def test_backward_bookkeeping_by_hand():
    # same shard; rank cp-1 = 1 updates dK/dV's first half at step 1
    p = ParallelSpec(num_gpus=8, cp=2)
    zeros = 4 * (64 + 128)             # fp32 dQ, dK, dV
    contiguous = 2 * 2 * 128           # K, V copies
    kv_cat = 1 * 2 * 2 * 128           # K/V concatenation at step 0
    step0 = 10 * 128                   # dK += dK_0 (fp32 read 4, BF16 read 2, write 4), dV the same
    partial = 1 * (5 * 128 + 8 * 128)  # half-size add + torch.cat of the whole fp32 buffer, dK and dV
    send_cat = 2 * 8 * 128             # fp32 dK/dV concatenation before each of the cp sends
    dq = 2 * 10 * 64                   # dQ += at both steps
    casts = 6 * (64 + 128)             # dQ and dK/dV to BF16
    total = zeros + contiguous + kv_cat + step0 + partial + send_cat + dq + casts
    assert backward_bookkeeping_bytes(TINY, p, 8) == total == 9216


def test_llama_8b_cp2_forward_bookkeeping():
    # 32768 tokens x 4096 = 2^27 elements each of Q, K, V, O; 2^20 rows: 2^31 + 50 x 2^27 + 52 x 2^20
    assert forward_bookkeeping_bytes(LLAMA_8B, ParallelSpec(num_gpus=8, cp=2), 32768) == 2**31 + 50 * 2**27 + 52 * 2**20


def test_exposed_closed_forms():
    kv = Op("L0.attn.cp_torch_kv", "collective", "F")
    dkv = Op("L0.attn.cp_torch_dkv", "collective", "B")
    # K/V all-gather under the diagonal block (compute / cp)
    assert torch_cp_exposed(10.0, 4, 40.0, kv.name) == 0.0
    assert torch_cp_exposed(15.0, 4, 40.0, kv.name) == pytest.approx(5.0)
    # dK/dV ring: the op's wire is cp-1 transfers of t; cp transfers, the last exposed whole
    assert torch_cp_exposed(30.0, 4, 20.0, dkv.name) == pytest.approx(3 * (10 - 5) + 10)
    assert torch_cp_exposed(30.0, 4, 80.0, dkv.name) == pytest.approx(10.0)
    assert torch_cp_exposed(30.0, 4, 0.0, dkv.name) == pytest.approx(30.0 * 4 / 3)
    assert torch_cp_exposed(30.0, 1, 0.0, dkv.name) == 0.0
    # dispatch by name: a ring op keeps ring attention's form
    ring = Op("L0.attn.cp_ring", "collective", "F")
    assert cp_exposed(ring, 9.0, 4, 8.0) == ring_exposed(9.0, 4, 8.0, "F")
    assert cp_exposed(kv, 15.0, 4, 40.0) == pytest.approx(5.0)


def test_layer_passes_torch_variant():
    seq, cp = 4096, 4
    p = ParallelSpec(num_gpus=8, cp=cp, cp_comm="torch")
    lp = layer_passes(LLAMA_8B, 0, p, seq, OPTS)
    tokens = seq // cp
    fwd = [s for s in lp.forward if s.stream == "comm" and s.name.startswith("cp.")]
    assert [s.name for s in fwd] == ["cp.torch(F)"]
    (ag,) = fwd[0].ops
    assert ag.collective == "all_gather" and ag.group == "cp"
    assert ag.comm_bytes == seq * 16384  # the whole sequence's K/V at 32 heads
    assert ag.overlaps is not None and ag.overlaps.name == "L0.attn.core"
    bwd = [op for s in lp.backward if s.stream == "comm" and s.name.startswith("cp.") for op in s.ops]
    assert [op.name for op in bwd] == ["L0.attn.cp_torch_kv", "L0.attn.cp_torch_dkv"]
    assert bwd[1].comm_bytes == 2 * bwd[0].comm_bytes  # fp32 dK/dV vs BF16 K/V
    assert all(op.overlaps.name == "L0.attn.core_bwd" for op in bwd)
    # the fp32 merge sits right after the core in the attention segment; the weight pass has none
    attn_f = next(s for s in lp.forward if s.name == "attn(F)")
    names = [op.name for op in attn_f.ops]
    assert names[names.index("L0.attn.core") + 1] == "L0.attn.cp_merge"
    attn_b = next(s for s in lp.backward if s.name == "attn(B)")
    names = [op.name for op in attn_b.ops]
    assert names[names.index("L0.attn.core_bwd") + 1] == "L0.attn.cp_grad_accum"
    assert not any("cp_" in op.name for s in lp.weight for op in s.ops)


def test_torch_variant_is_inert_without_cp():
    a = layer_passes(LLAMA_8B, 0, ParallelSpec(num_gpus=8, cp_comm="torch"), 4096, OPTS)
    b = layer_passes(LLAMA_8B, 0, ParallelSpec(num_gpus=8), 4096, OPTS)
    assert a == b


def test_bad_cp_comm_names_the_field():
    with pytest.raises(ValueError, match="cp_comm must be one of all_gather, ring, torch"):
        ParallelSpec(num_gpus=8, cp=2, cp_comm="allgather2")


def test_cli_step_accepts_torch_and_its_help_names_it():
    from typer.testing import CliRunner

    from gpuhours.cli import app

    runner = CliRunner()
    assert "context_parallel" in runner.invoke(app, ["estimate", "--help"], terminal_width=200).output
    args = ["step", "--model", "llama-3-70b", "--gpu", "h100", "--gpus", "16", "--tp", "8", "--pp", "1",
            "--cp", "2", "--schedule", "1f1b"]
    ok = runner.invoke(app, args + ["--cp-comm", "torch"])
    assert ok.exit_code == 0, ok.output


def test_case_layout_rejects_a_bad_cp_comm(tmp_path):
    from gpuhours.validation.cases import load_cases

    (tmp_path / "x.toml").write_text(
        '[source]\ngroup = "g"\ntitle = "t"\nauthors = "a"\nreference = "r"\nwhere = "w"\nhardware = "h"\n'
        'measures = "m"\n[[case]]\nname = "c"\ngpu = "h100"\ngpus = 8\ntp = 1\npp = 1\ncp = 2\nbatch = 4\n'
        'seq_len = 4096\ncp_comm = "ulysses"\nprinted = "p"\n'
        'measured = { metric = "tokens_per_s_per_gpu", value = 1 }\n'
        'model = { preset = "llama-3-70b" }\n', encoding="utf-8")
    with pytest.raises(ValueError, match="cp_comm must be one of"):
        load_cases([tmp_path / "x.toml"])


def test_gathered_kv_memory_at_the_query_heads():
    from gpuhours.workloads.memory import cp_gathered_kv_bytes

    p = ParallelSpec(num_gpus=8, cp=4, cp_comm="torch")
    # the whole 4096-token sequence's K/V at 32 heads x 256 x 2 bytes (the own shard included)
    assert cp_gathered_kv_bytes(LLAMA_8B, p, 4096) == 4096 * 16384
