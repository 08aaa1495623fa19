"""Transformer Engine's userbuffers tensor-parallel overlap takes SMs from the GEMM it overlaps (issue 15, item 3):
TE's default config per GEMM read by hand from its source (hwmodels/tp_overlap_sms.py), and the GEMM + collective
pair's time checked against hand-derived closed forms."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpuhours.hwmodels.tp_overlap_sms import te_userbuffers
from gpuhours.simulator import nccl_sms
from gpuhours.simulator.nccl_sms import tp_overlap_time
from gpuhours.simulator.phases import SCENARIO_KEYS
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.sweep_spec import SWEEP_KEYS
from gpuhours.workloads.ops import Op
from gpuhours.workloads.parallel import ParallelSpec

MS = 1e-3


def _coster(impl: str, sms: int = 132, schedule: str = "1f1b", comm_sms: int = 0, tp: int = 8):
    parallel = ParallelSpec(num_gpus=16 * tp, pp=2, tp=tp, schedule=schedule, comm_sms=comm_sms,
                            tp_comm_overlap=True, tp_comm_overlap_impl=impl)
    return SimpleNamespace(parallel=parallel, cluster=SimpleNamespace(gpu=SimpleNamespace(sms=sms)))


def _coll(kind: str, phase: str) -> Op:
    return Op(f"L0.mlp.tp_{kind}", "collective", phase, "mlp", collective=kind, group="tp", comm_bytes=1e6)


# --------------------------------------------------------------------------------- TE's defaults, by hand
def test_te_default_methods_per_collective():
    # base.py: pipeline (proj/fc2_fprop) num_sm 16, set_sm_margin, 4 splits
    for tp in (2, 4, 8):  # num_splits 4 whatever the group
        pipe = te_userbuffers("reduce_scatter", "F", tp)
        assert (pipe.method, pipe.held_sms, pipe.pieces) == ("pipeline", 16, 4)
    # ring_exchange (qkv/fc1_fprop, proj/fc2_dgrad): num_sm 1 without set_sm_margin, copy engines: no SMs; tp pieces
    for kind, phase in (("all_gather", "F"), ("all_gather", "B")):
        ring = te_userbuffers(kind, phase, 8)
        assert (ring.method, ring.held_sms, ring.pieces) == ("ring_exchange", 0, 8)
    # bulk (qkv/fc1_dgrad all-gather, qkv/fc1_wgrad reduce-scatter): num_sm 16, set_sm_margin, side by side
    for kind, phase in (("reduce_scatter", "B"), ("all_gather", "W")):
        bulk = te_userbuffers(kind, phase, 8)
        assert (bulk.method, bulk.held_sms, bulk.pieces) == ("bulk", 16, 1)


def test_te_without_sequence_parallelism_is_refused():
    with pytest.raises(ValueError, match="sequence_parallel"):
        te_userbuffers("all_reduce", "F", 8)
    with pytest.raises(ValueError, match="sequence_parallel"):
        ParallelSpec(num_gpus=8, tp=8, tp_comm_overlap=True, tp_comm_overlap_impl="te-userbuffers",
                     sequence_parallel=False)
    # without tp_comm_overlap the implementation does not matter
    ParallelSpec(num_gpus=8, tp=8, tp_comm_overlap_impl="te-userbuffers", sequence_parallel=False)


def test_bad_impl_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"tp_comm_overlap_impl must be one of asynctp, te-userbuffers; got 'nccl'"):
        ParallelSpec(num_gpus=8, tp=8, tp_comm_overlap_impl="nccl")


# ----------------------------------------------------------------------------------- closed forms, by hand
def test_pipeline_reduce_scatter_stretches_its_gemm_by_avail_over_avail_less_16():
    # GEMM 1.16 ms alone on 132 SMs; on 116 it takes 1.16 x 132 / 116 = 1.32 ms. Reduce-scatter 0.4 ms in 4 chunks
    # of 0.1 ms after each 0.33 ms GEMM chunk: the chunks keep up, so the pair ends one chunk after the GEMM:
    # 1.32 + 0.1 = 1.42 ms; the collective op carries 1.42 - 1.16 = 0.26 ms.
    charged = tp_overlap_time(_coster("te-userbuffers"), _coll("reduce_scatter", "F"), 0.4 * MS, 1.16 * MS)
    assert charged == pytest.approx(0.26 * MS, rel=1e-12)
    assert 1.16 * MS + charged == pytest.approx(1.16 * MS * 132 / 116 + 0.4 * MS / 4, rel=1e-12)


def test_pipeline_bound_by_the_wire_ends_one_gemm_chunk_after_it():
    # 8 ms of reduce-scatter under a 1.32 ms (slowed) GEMM in 4 chunks of 0.33 ms: the first 2 ms piece starts when
    # the first chunk ends (0.33 ms) and the link stays busy from then on: 0.33 + 8 = 8.33 ms in all.
    charged = tp_overlap_time(_coster("te-userbuffers"), _coll("reduce_scatter", "F"), 8 * MS, 1.16 * MS)
    assert 1.16 * MS + charged == pytest.approx(0.33 * MS + 8 * MS, rel=1e-12)


def test_bulk_runs_beside_its_gemm_without_a_dependency():
    coster = _coster("te-userbuffers")
    # short collective: hidden, only the GEMM's stretch 1.32 - 1.16 = 0.16 ms remains
    assert tp_overlap_time(coster, _coll("reduce_scatter", "B"), 0.4 * MS, 1.16 * MS) == pytest.approx(0.16 * MS)
    # long collective: the pair lasts max(1.32, 2) = 2 ms
    charged = tp_overlap_time(coster, _coll("all_gather", "W"), 2 * MS, 1.16 * MS)
    assert 1.16 * MS + charged == pytest.approx(2 * MS, rel=1e-12)


@pytest.mark.parametrize("phase", ["F", "B"])
def test_ring_exchange_is_asynctp_exactly(phase):
    # all-gather 0.8 ms in 8 pieces under a 0.4 ms GEMM (0.05 ms a piece): max(0.1, 0.8 - 0.35) = 0.45 ms, both ways
    op = _coll("all_gather", phase)
    te = tp_overlap_time(_coster("te-userbuffers"), op, 0.8 * MS, 0.4 * MS)
    asynctp = tp_overlap_time(_coster("asynctp"), op, 0.8 * MS, 0.4 * MS)
    assert te == asynctp == pytest.approx(0.45 * MS, rel=1e-12)


def test_asynctp_holds_no_sms():
    # pipelined reduce-scatter under asynctp: tp pieces, GEMM unslowed: max(0.4 / 8, 0.4 - 1.16 x 7/8) = 0.05 ms
    charged = tp_overlap_time(_coster("asynctp"), _coll("reduce_scatter", "F"), 0.4 * MS, 1.16 * MS)
    assert charged == pytest.approx(0.05 * MS, rel=1e-12)


def test_avail_is_what_compute_has_under_dualpipe():
    # DeepEP's 20 of 132 SMs reserved: the GEMM has 112, TE takes 16 more -> 112 / 96 of its time (bulk, hidden)
    coster = _coster("te-userbuffers", schedule="dualpipe", comm_sms=20)
    charged = tp_overlap_time(coster, _coll("reduce_scatter", "B"), 0.1 * MS, 0.96 * MS)
    assert charged == pytest.approx(0.96 * MS * 112 / 96 - 0.96 * MS, rel=1e-12)


def test_switch_off_keeps_te_pieces_without_the_stretch(monkeypatch):
    monkeypatch.setattr(nccl_sms, "ENABLED", False)
    # pipeline, GEMM at full speed: 0.4 ms in 4 pieces under 1.16 ms -> only the last piece, 0.1 ms
    charged = tp_overlap_time(_coster("te-userbuffers"), _coll("reduce_scatter", "F"), 0.4 * MS, 1.16 * MS)
    assert charged == pytest.approx(0.1 * MS, rel=1e-12)


# --------------------------------------------------------------------------------------- wiring, end to end
def _layer_times(impl: str) -> dict[str, float]:
    sc = load_scenario("deepseek-v3", model="llama-3-70b", gpus=64, gpu="h100-sxm", tp=8, pp=2, ep=1,
                       schedule="1f1b", tp_comm_overlap=True, tp_comm_overlap_impl=impl, fp8=False, batch=64)
    from gpuhours.workloads.layer_ops import layer_passes

    coster = sc.simulator().coster
    lp = layer_passes(sc.model, 3, sc.parallel, sc.plan.seq_len, coster.opts)
    out = {}
    for segs in (lp.forward, lp.backward, lp.weight):
        for seg in segs:
            for op in seg.ops:
                if op.overlaps is not None:
                    out[f"{op.phase}:{op.name}"] = (coster.op_time(op), coster.op_time(op.overlaps))
    return out


def test_scenario_wiring_charges_only_the_sm_holding_overlaps():
    asynctp, te = _layer_times("asynctp"), _layer_times("te-userbuffers")
    assert asynctp.keys() == te.keys() and len(te) == 10  # 4 forward, 4 backward, 2 weight-pass collectives
    for key, (t, gemm) in te.items():
        assert gemm == asynctp[key][1]  # the GEMM op itself is priced the same
        if key.endswith("tp_all_gather") and key[0] in ("F", "B"):
            assert t == asynctp[key][0]  # ring_exchange: copy engines
        else:  # pipeline or bulk: at least the GEMM's stretch by 16 of the H100's 132 SMs
            assert t >= gemm * 16 / 116 * (1 - 1e-12)


def test_option_reaches_plan_sweep_and_cli():
    assert "tp_comm_overlap_impl" in SCENARIO_KEYS and "tp_comm_overlap_impl" in SWEEP_KEYS
    from typer.testing import CliRunner

    from gpuhours.cli import app

    result = CliRunner().invoke(app, ["estimate", "--model", "llama-3-70b", "--gpus", "64", "--gpu", "h100-sxm",
                                      "--tp", "8", "--pp", "2", "--tp-comm-overlap", "--tp-comm-overlap-impl", "nccl"])
    assert result.exit_code == 2
    assert "tp_comm_overlap_impl must be one of asynctp, te-userbuffers" in result.output


def test_sweep_point_and_plan_key_set_the_impl():
    from gpuhours.simulator.sweep import point_scenario

    sc = point_scenario("deepseek-v3", {}, {"tp_comm_overlap_impl": "te-userbuffers"})
    assert sc.parallel.tp_comm_overlap_impl == "te-userbuffers"
    assert load_scenario("deepseek-v3").parallel.tp_comm_overlap_impl == "asynctp"  # default: today's figures


def test_case_layout_key_is_checked():
    from gpuhours.validation.cases import _check_layout

    with pytest.raises(ValueError, match="tp_comm_overlap_impl must be one of asynctp, te-userbuffers"):
        _check_layout({"gpu": "h100-sxm", "gpus": 64, "tp": 8, "pp": 2, "batch": 64, "seq_len": 4096,
                       "tp_comm_overlap_impl": "userbuffers"}, "case 'x'", "step_time_s")
