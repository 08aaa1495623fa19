"""Expert tensor parallelism (issue 11, item 5): experts split over etp ranks, the etp group placed innermost, the
ETP all-gather / reduce-scatter around the expert GEMMs, and expert state divided by etp."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.hwmodels.placement import RankLayout
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.step import rank_params
from gpuhours.validation.cases import load_cases
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.ops import OpOptions
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.presets import load_preset
from gpuhours.workloads.zero import unit_params

V3 = load_preset("deepseek-v3")  # h 7168, 256 routed experts of intermediate 2048, top-8, 58 MoE layers of 61


def test_expert_groups_follow_megatrons_etp_ep_edp_grid():
    """One stage of 8 ranks (tp 2 x dp 4), ep 2, etp 2: etp groups are consecutive pairs, an EP group takes ranks
    etp apart inside a block of ep x etp = 4, the expert replicas are 4 apart (Megatron-Core's etp-ep-edp)."""
    lay = RankLayout(tp=2, dp=4, ep=2, etp=2)
    assert lay.groups("etp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lay.groups("ep") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert lay.groups("tp_ep") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert lay.groups("edp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    for name in ("etp", "ep", "tp_ep", "edp"):  # each family partitions the stage
        assert sorted(g for grp in lay.groups(name) for g in grp) == list(range(8))


def test_etp_one_keeps_consecutive_ep_groups():
    lay = RankLayout(dp=8, ep=4)
    assert lay.groups("ep") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert lay.groups("edp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert lay.groups("etp") == [[g] for g in range(8)]


def test_expert_data_parallel_rule():
    p = ParallelSpec(num_gpus=64, pp=2, tp=2, ep=4, etp=2)  # 32 ranks a stage
    assert p.expert_dp == 32 // (4 * 2)
    with pytest.raises(ValueError, match=r"ep x etp \(8 x 8\) must divide the 32 ranks"):
        ParallelSpec(num_gpus=64, pp=2, tp=2, ep=8, etp=8)
    with pytest.raises(ValueError, match="etp must be a positive integer"):
        ParallelSpec(num_gpus=8, etp=0)
    with pytest.raises(ValueError, match="etp"):
        ParallelSpec(num_gpus=8, tp=2, etp=2).check_model(load_preset("llama-3-70b"))  # dense: no experts to split


def test_expert_gemms_split_and_flops_conserved():
    """EP64 x ETP2 on 4,096 tokens: each rank's 4 experts see the etp group's rows, 2 x 4,096 x 8 / 4 = 16,384
    per expert, against an intermediate slice of 2048 / 2 = 1024; the FLOPs per rank are those of ETP1."""
    p1 = ParallelSpec(num_gpus=2048, pp=16, ep=64, schedule="dualpipe", comm_sms=20)
    p2 = ParallelSpec(num_gpus=2048, pp=16, ep=64, etp=2, schedule="dualpipe", comm_sms=20)

    def gemms(p):
        ops = [op for seg in layer_passes(V3, 10, p, 4096, OpOptions()).forward for op in seg.ops]
        return {op.name.split(".")[-1]: op for op in ops if op.name.endswith(("experts.w13", "experts.w2"))}

    g1, g2 = gemms(p1), gemms(p2)
    assert (g2["w13"].gemm.m, g2["w13"].gemm.n, g2["w13"].gemm.k, g2["w13"].groups) == (16384, 2 * 1024, 7168, 4)
    assert (g2["w2"].gemm.m, g2["w2"].gemm.n, g2["w2"].gemm.k) == (16384, 7168, 1024)
    for name in ("w13", "w2"):
        assert g2[name].flops == g1[name].flops


def test_etp_collectives_closed_form():
    """Forward: dispatch all-to-all over EP, then an all-gather over the etp group of the rows the rank received,
    4,096 tokens x top-8 rows each (the FP8 payload: 7,168 + 4 x 56 scale bytes), gathered buffer x etp; after the
    experts a reduce-scatter of the BF16 partial outputs of those rows, then the combine all-to-all. The backward
    mirrors it (combine, all-gather of the output gradients as they arrived, in FP8 (DeepSeek-V3 sec. 3.3.2);
    reduce-scatter of the BF16 input gradients, dispatch)."""
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64, etp=2, schedule="dualpipe", comm_sms=20)
    passes = layer_passes(V3, 10, p, 4096, OpOptions())
    f = [s.name for s in passes.forward]
    i = f.index("dispatch(F)")
    assert f[i:i + 5] == ["dispatch(F)", "etp.all_gather(F)", "mlp(F)", "etp.reduce_scatter(F)", "combine(F)"]
    b = [s.name for s in passes.backward]
    i = b.index("combine(B)")
    assert b[i:i + 5] == ["combine(B)", "etp.all_gather(B)", "mlp(B)", "etp.reduce_scatter(B)", "dispatch(B)"]
    op = {(s.name): s.ops[0] for s in passes.forward + passes.backward if s.name.startswith("etp.")}
    rows = 2 * 4096 * 8
    assert op["etp.all_gather(F)"].comm_bytes == rows * (7168 + 4 * 56)
    assert op["etp.reduce_scatter(F)"].comm_bytes == rows * 7168 * 2
    assert op["etp.all_gather(B)"].comm_bytes == rows * (7168 + 4 * 56)
    assert op["etp.reduce_scatter(B)"].comm_bytes == rows * 7168 * 2
    assert all(o.group == "etp" for o in op.values())
    assert not any(s.name.startswith("etp.") for s in passes.weight)


def test_etp_one_has_no_etp_collectives():
    p = ParallelSpec(num_gpus=2048, pp=16, ep=64, schedule="dualpipe", comm_sms=20)
    passes = layer_passes(V3, 10, p, 4096, OpOptions())
    assert not any("etp" in s.name for s in passes.forward + passes.backward)


def test_expert_parameters_divide_by_ep_times_etp():
    """A stage of layers 3..6 (4 MoE layers): routed parameters 4 x 256 x 3 x 7168 x 2048 over ep x etp."""
    routed = 4 * 256 * 3 * 7168 * 2048
    for etp in (1, 2, 4):
        p = ParallelSpec(num_gpus=2048, pp=16, ep=32, etp=etp, schedule="dualpipe", comm_sms=20)
        split = (3, 4) + (4,) * 13 + (2,)
        dense, expert = rank_params(V3, p, split, {1})
        assert expert == pytest.approx(routed / (32 * etp), rel=1e-12)
        units = unit_params(V3, p, range(3, 7), False, False)
        assert sum(e for _, _, e in units) == pytest.approx(routed / (32 * etp), rel=1e-12)
        assert dense == pytest.approx(sum(d for _, d, _ in units), rel=1e-12)  # dense part untouched by etp


def test_etp_group_is_priced_inside_a_node():
    """DeepSeek-V3's plan with ETP2: the etp group is two neighbouring GPUs of a node; the EP group's 64 ranks
    then span 16 nodes (4 per node), and its collectives cost time."""
    sc = load_scenario(etp=2)
    coster = sc.simulator().coster
    assert coster.comm_group("etp").nodes == 1 and coster.comm_group("etp").size == 2
    assert coster.comm_group("ep").size == 64 and coster.comm_group("ep").per_node == 4
    assert coster.collective("all_gather", 1e8, "etp") > 0
    assert sc.parallel.expert_dp == 128 // (64 * 2)


def test_plan_toml_and_validation_case_take_etp(tmp_path):
    plan = tmp_path / "etp.toml"
    plan.write_text('[model]\npreset = "deepseek-v3"\n[cluster]\ngpu = "H800"\ngpus = 2048\n'
                    '[parallel]\npp = 16\nep = 32\netp = 2\nschedule = "dualpipe"\ncomm_sms = 20\n'
                    '[run]\ntokens = "1T"\nseq_len = 4096\nbatch_start = 15360\nbatch_end = 15360\n'
                    'price_per_gpu_hour = 2.0\n')
    assert load_scenario(plan).parallel.etp == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(plan.read_text().replace("etp = 2", 'etp = "two"'))
    with pytest.raises(ValueError, match="etp must be an integer"):
        load_scenario(bad)
    case = load_cases()[0]
    case = replace(case, layout={**case.layout, "etp": 2})
    assert not any("ETP" in g or "expert tensor" in g for g in case.gaps())
