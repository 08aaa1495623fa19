"""Ring attention context parallelism (ParallelSpec.cp_comm = "ring", workloads.ring_cp) against hand-derived
expectations: the causal block shares, the exposed-time closed form, the ops' bytes and partners, memory, and the
option plumbing."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.ring_overlap import ring_exposed, ring_step_bytes
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.memory import cp_gathered_kv_bytes
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.ring_cp import ring_block_pairs

MID = ModelSpec("mid", hidden=1024, n_layers=4, vocab=32000, dense_intermediate=3584,
                attention=AttentionSpec("gqa", n_heads=16, n_kv_heads=4, head_dim=64))
SEQ = 4096
OPTS = OpOptions(fp8=False, recompute="none")
KV = 2 * 4 * 64 * 2  # K and V of 4 kv heads x 64 dims, BF16, per token (tp 1)


def _pairs(seq, cp, rank, src):
    """Brute force: causal (query, key) pairs of rank's queries against src's keys, chunks r and 2cp-1-r."""
    c = seq // (2 * cp)
    own = lambda r: list(range(r * c, (r + 1) * c)) + list(range((2 * cp - 1 - r) * c, (2 * cp - r) * c))  # noqa
    keys = own(src)
    return sum(1 for q in own(rank) for k in keys if k <= q)


@pytest.mark.parametrize("cp", [2, 4])
def test_block_pairs_match_brute_force(cp):
    seq = 64
    diag, off = ring_block_pairs(1, seq, cp)
    for rank in range(cp):
        assert _pairs(seq, cp, rank, rank) == diag
        assert all(_pairs(seq, cp, rank, src) == off for src in range(cp) if src != rank)
    c = seq // (2 * cp)
    assert diag + (cp - 1) * off == c * (seq + 1)  # the rank's whole causal share
    assert ring_block_pairs(3, seq, cp) == (3 * diag, 3 * off)


def test_exposed_is_zero_when_every_block_outlasts_its_transfer():
    T, cp = 1.0, 4
    # forward: cp-1 transfers of one block; each block computes C >= T
    assert ring_exposed((cp - 1) * T, cp, cp * 1.0, "F") == 0.0
    assert ring_exposed((cp - 1) * T, cp, cp * 5.0, "F") == 0.0
    # backward: the middle transfers carry K/V and dK/dV (2T): hidden once a block computes >= 2T
    assert ring_exposed(2 * (cp - 1) * T, cp, cp * 2.0, "B") == 0.0


def test_exposed_closed_forms():
    T, C, cp = 3.0, 1.0, 5
    # forward: every one of the cp-1 transfers exposes T - C
    assert ring_exposed((cp - 1) * T, cp, cp * C, "F") == pytest.approx((cp - 1) * (T - C))
    # backward, T > C: the first and last expose T - C, the cp-2 middle ones 2T - C
    assert ring_exposed(2 * (cp - 1) * T, cp, cp * C, "B") == pytest.approx(2 * (T - C) + (cp - 2) * (2 * T - C))
    # backward, T <= C < 2T: only the middle ones show
    C = 4.0
    assert ring_exposed(2 * (cp - 1) * T, cp, cp * C, "B") == pytest.approx((cp - 2) * (2 * T - C))
    # nothing to hide under: the whole wire time; cp 1: no ring
    assert ring_exposed(7.0, cp, 0.0, "F") == 7.0
    assert ring_exposed(7.0, 1, 1.0, "F") == 0.0
    assert sum(ring_step_bytes("F", cp)) == cp - 1 and sum(ring_step_bytes("B", cp)) == 2 * (cp - 1)


def _ops(p, phase):
    lp = layer_passes(MID, 0, p, SEQ, OPTS)
    segs = {"F": lp.forward, "B": lp.backward, "W": lp.weight}[phase]
    return segs, [op for seg in segs for op in seg.ops]


@pytest.mark.parametrize("cp", [2, 4])
def test_ring_ops(cp):
    p = ParallelSpec(num_gpus=8, cp=cp, cp_comm="ring")
    block = SEQ // cp * KV  # one rank's K/V block
    for phase, blocks in (("F", 1), ("B", 2)):
        segs, ops = _ops(p, phase)
        ring = [op for op in ops if op.group == "cp"]
        assert [s.name for s in segs if s.stream == "comm"] == [f"cp.ring({phase})"]
        assert len(ring) == 1
        # what each rank sends over the pass: cp-1 blocks forward, 2 (cp-1) backward (K/V and dK/dV)
        assert ring[0].comm_bytes * (cp - 1) / cp == pytest.approx(blocks * (cp - 1) * block)
        core = ring[0].overlaps
        assert core is not None and core.kind == "attention" and core.phase == phase
        assert core.name.endswith(".core" if phase == "F" else ".core_bwd")
    assert not [op for op in _ops(p, "W")[1] if op.group == "cp"]
    # the compute is the all-gather variant's, op for op
    ag = ParallelSpec(num_gpus=8, cp=cp)
    for phase in "FBW":
        same = lambda q: [(o.name, o.flops, o.bytes) for o in _ops(q, phase)[1] if o.kind != "collective"]  # noqa
        assert same(p) == same(ag)


def test_ring_memory_holds_two_blocks():
    p = ParallelSpec(num_gpus=8, cp=8, micro_batch_size=2, cp_comm="ring")
    block = 2 * SEQ / 8 * KV
    assert cp_gathered_kv_bytes(MID, p, SEQ) == pytest.approx(2 * block)
    assert cp_gathered_kv_bytes(MID, replace(p, cp_comm="all_gather"), SEQ) == pytest.approx(7 * block)
    assert cp_gathered_kv_bytes(MID, ParallelSpec(num_gpus=2, cp=2, cp_comm="ring"), SEQ) == \
           pytest.approx(SEQ / 2 * KV)  # cp 2: one block ever arrives


def test_cp_comm_validation_and_cli():
    with pytest.raises(ValueError, match=r"cp_comm must be one of all_gather, ring"):
        ParallelSpec(num_gpus=8, cp=2, cp_comm="ulysses")
    runner = CliRunner()
    help_text = runner.invoke(app, ["estimate", "--help"]).output
    assert "--cp-comm" in help_text
    bad = runner.invoke(app, ["step", "--model", "llama-3-70b", "--gpu", "h100", "--gpus", "16", "--tp", "8",
                              "--cp", "2", "--cp-comm", "ulysses"])
    assert bad.exit_code == 2 and "cp_comm" in bad.output


def test_plan_key_and_sweep_key(tmp_path):
    from gpuhours.simulator.scenario import DEFAULT_PLAN, load_scenario
    from gpuhours.simulator.sweep import SWEEP_KEYS

    assert "cp_comm" in SWEEP_KEYS
    from importlib import resources

    text = (resources.files("gpuhours.workloads") / "plans" / f"{DEFAULT_PLAN}.toml").read_text(encoding="utf-8")
    text = text.replace("[parallel]\n", '[parallel]\ncp_comm = "ring"\n', 1)
    plan = tmp_path / "ring.toml"
    plan.write_text(text, encoding="utf-8")
    assert load_scenario(str(plan)).parallel.cp_comm == "ring"
    assert load_scenario(str(plan), cp_comm="all_gather").parallel.cp_comm == "all_gather"
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('cp_comm = "ring"', "cp_comm = 3"), encoding="utf-8")
    with pytest.raises(ValueError, match="cp_comm"):
        load_scenario(str(bad))


def test_the_step_prices_the_ring_by_its_closed_form():
    """The hardware coster prices a ring op as `ring_exposed` of its wire time under its attention core: the K/V
    exchange of Llama-3-70B's layers at 128K tokens on CP4 hides entirely (each block of the core computes for
    milliseconds, each transfer takes far less), while the all-gather variant's collective is all exposed."""
    from gpuhours.simulator.scenario import load_scenario

    ring = load_scenario(model="llama-3-70b", gpus=64, pp=1, tp=8, cp=4, cp_comm="ring", seq_len=131072,
                         schedule="1f1b", batch=16, zero_stage=3)
    coster = ring.simulator().coster
    op = next(o for s in layer_passes(ring.model, 0, ring.parallel, 131072, OPTS).forward for o in s.ops
              if o.group == "cp")
    wire = coster.collective(op.collective, op.comm_bytes, op.group)
    core = coster.op_time(op.overlaps)
    assert wire > 0 and core / 4 > wire / 3  # every block outlasts its transfer
    assert coster.op_time(op) == pytest.approx(ring_exposed(wire, 4, core, "F")) == 0.0
    assert coster.op_time(replace(op, overlaps=None)) == pytest.approx(wire)
