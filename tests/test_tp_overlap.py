"""Tensor-parallel communication overlap (ParallelSpec.tp_comm_overlap): which collectives overlap which GEMM,
the closed form of what stays exposed, and that the option reaches the step from plans, the CLI and cases."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gpuhours.cli import app
from gpuhours.simulator.overlap import exposed_streamed
from gpuhours.simulator.scenario import load_scenario
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset

OPTS = OpOptions(fp8=False, recompute="none")


def _scenario(overlap: bool, seq_len: int = 8192):
    sc = load_scenario(model="llama-3-70b", gpu="h100", gpus=64, pp=1, tp=8, schedule="1f1b", seq_len=seq_len,
                       batch=64, tokens=1e9, fp8=False, tp_comm_overlap=overlap)
    return replace(sc, opts=OPTS)


def test_collectives_carry_their_gemm_only_when_asked():
    llama = load_preset("llama-3-70b")
    on = layer_passes(llama, 0, ParallelSpec(num_gpus=8, tp=8, tp_comm_overlap=True), 4096, OPTS)
    off = layer_passes(llama, 0, ParallelSpec(num_gpus=8, tp=8), 4096, OPTS)
    tp_ops = [op for s in on.forward for op in s.ops if op.kind == "collective"]
    # attention: the all-gather feeds the QKV projection, the reduce-scatter drains the output projection; MLP alike
    assert [op.overlaps.name.rsplit(".", 1)[-1] for op in tp_ops] == ["wqkv", "wo", "w13", "w2"]
    assert all(op.overlaps is None for s in off.forward + off.backward for op in s.ops if op.kind == "collective")
    # MoE layers: attention's TP collectives overlap, the expert all-to-alls are not TP collectives and do not
    v3 = load_preset("deepseek-v3")
    moe = layer_passes(v3, 5, ParallelSpec(num_gpus=64, tp=8, ep=8, tp_comm_overlap=True), 4096, OPTS)
    comm = [op for s in moe.forward for op in s.ops if op.kind == "collective"]
    assert [op.overlaps is not None for op in comm if op.group == "tp"] == [True, True]
    assert all(op.overlaps is None for op in comm if op.group == "ep")


def test_exposed_part_is_the_streaming_closed_form():
    sim = _scenario(True).simulator()
    coster = sim.coster
    ops = [op for u in coster.stages[0] for s in u.forward for op in s.ops
           if op.kind == "collective" and op.overlaps is not None]
    assert ops
    for op in ops[:4]:
        wire, gemm = coster.op_time(replace(op, overlaps=None)), coster.op_time(op.overlaps)
        assert coster.op_time(op) == pytest.approx(max(wire / 8, wire - gemm * 7 / 8))
        assert wire / 8 <= coster.op_time(op) <= wire


def test_streaming_closed_form_by_hand():
    # 8 pieces of 1 s before a 4 s GEMM (0.5 s a piece): the last piece lands at 8 s, its share ends at 8.5 s
    assert exposed_streamed(8.0, 8, 4.0) == pytest.approx(4.5)
    assert exposed_streamed(8.0, 8, 80.0) == pytest.approx(1.0)
    assert exposed_streamed(8.0, 1, 80.0) == pytest.approx(8.0)  # one piece cannot overlap anything


def test_overlap_saves_at_most_the_collectives_wire_time():
    on_sim, off_sim = _scenario(True).simulator(), _scenario(False).simulator()
    on, off = on_sim.step(8), off_sim.step(8)
    coster = off_sim.coster
    wire = sum(coster.op_time(op) for u in coster.stages[0] for s in u.forward + u.backward + u.weight
               for op in s.ops if op.kind == "collective" and op.group == "tp")
    assert 0 < off.step_time - on.step_time <= 8 * wire


def test_option_reaches_the_step_from_the_cli():
    args = ["step", "--model", "llama-3-70b", "--gpu", "h100", "--gpus", "64", "--pp", "1", "--tp", "8",
            "--schedule", "1f1b", "--seq-len", "4096", "--precision", "bf16", "--microbatches", "4", "--json"]
    a = CliRunner().invoke(app, args)
    b = CliRunner().invoke(app, args + ["--tp-comm-overlap"])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    assert json.loads(b.stdout)["step_time_s"] < json.loads(a.stdout)["step_time_s"]


def test_asynctp_cases_have_no_overlap_gap():
    from gpuhours.validation.cases import load_cases

    cases = [c for c in load_cases() if c.layout.get("tp_comm_overlap")]
    assert cases and not any("overlap" in g for c in cases for g in c.gaps())
