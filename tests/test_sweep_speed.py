"""Issue 14's sweep target: the shortcuts of this file change how figures are computed, never what. Each is
checked against the same computation with it off (or against a hand example); nothing here is timed.

- `balance.split_memory` keeps each rank's figure per its held stages (`split_memo.rank_memory_memo`), so a split
  one layer move away recomputes only the ranks holding the two stages that changed;
- `split_memo.peak_bytes(..., ranks)` sums only the asked rows;
- stage signatures hash once (`stage_classes._HashedTuple`);
- the losing candidate splits are emptied once a split is chosen (`split_search.release`).
"""

from __future__ import annotations

import itertools

import pytest

from gpuhours.simulator import balance, split_memo, split_search, stage_classes
from gpuhours.simulator.balance import split_memory
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.split_memo import peak_bytes
from gpuhours.workloads.layer_templates import clear_templates

# a dense model under 1F1B (one stage per rank) and DeepSeek-V3 under DualPipe (two stages per rank)
LAYOUTS = {
    "llama-70b-1f1b": dict(model="llama-3-70b", gpus=64, pp=4, tp=4, schedule="1f1b", seq_len=1024, batch=64),
    "deepseek-v3-dualpipe": dict(gpus=256, pp=8, ep=32, seq_len=1024, batch=64),
}


@pytest.fixture(autouse=True)
def _fresh():
    clear_templates()
    split_memo.clear_split_memos()
    yield
    clear_templates()
    split_memo.clear_split_memos()


def _moves(split):
    """Every split one layer move away (a layer from a stage to its neighbour), as `fit_memory` asks them."""
    for a, b in itertools.chain(zip(range(len(split)), range(1, len(split))),
                                zip(range(1, len(split)), range(len(split)))):
        if split[a] > 1:
            out = list(split)
            out[a] -= 1
            out[b] += 1
            yield tuple(out)


@pytest.mark.parametrize("label", LAYOUTS)
def test_split_memory_per_rank_memo_equals_every_rank_computed(label, monkeypatch):
    s = load_scenario(**LAYOUTS[label])
    sim = s.simulator()
    args = (sim.model, sim.parallel, sim.seq_len)
    base = sim.stage_layers
    splits = [base, *_moves(base)]
    splits += [m for m in _moves(splits[1])]  # two moves away: ranks memoised from both neighbours
    memoised = [split_memory(*args, sp, sim.recipe, sim.opts) for sp in splits]
    assert split_memo._RANK_MEMORY  # the memo was used
    monkeypatch.setattr(balance, "SPLIT_RANK_MEMO", False)
    split_memo.clear_split_memos()
    direct = [split_memory(*args, sp, sim.recipe, sim.opts) for sp in splits]
    assert memoised == direct  # bit for bit, every rank of every split


@pytest.mark.parametrize("label", LAYOUTS)
def test_one_move_recomputes_only_the_ranks_holding_the_two_stages(label):
    s = load_scenario(**LAYOUTS[label])
    sim = s.simulator()
    split = sim.stage_layers
    split_memo.clear_split_memos()  # balancing asked the neighbours already
    split_memory(sim.model, sim.parallel, sim.seq_len, split, sim.recipe, sim.opts)
    memo = next(iter(split_memo._RANK_MEMORY.values()))
    assert len(memo) == sim.parallel.pp  # every rank once
    before = len(memo)
    moved = list(split)
    moved[1] -= 1
    moved[2] += 1
    split_memory(sim.model, sim.parallel, sim.seq_len, tuple(moved), sim.recipe, sim.opts)
    schedule = build_schedule(sim.parallel.schedule, sim.parallel.pp, 2 * sim.parallel.pp, vpp=sim.parallel.vpp)
    holders = {r for r, program in enumerate(schedule.programs)
               if {ins.stage for ins in program} & {1, 2}}
    # the ranks holding stage 1 or 2 (1F1B: ranks 1 and 2; DualPipe on PP8: ranks 1, 2, 5 and 6)
    assert len(memo) - before == len(holders) == (2 if sim.parallel.schedule == "1f1b" else 4)


def test_peak_bytes_of_some_ranks_equals_those_rows_of_all():
    for name, pp in (("1f1b", 4), ("dualpipe", 4), ("zb1p", 3)):
        schedule = build_schedule(name, pp, 2 * pp)
        stages = schedule.num_stages
        stage_bytes = tuple(1.0 + 0.37 * s for s in range(stages))
        every = peak_bytes(schedule, stage_bytes)
        for ranks in ([0], [pp - 1], [1, 0], list(range(pp))):
            assert peak_bytes(schedule, stage_bytes, ranks) == tuple(every[r] for r in ranks)
    # the hand example of `peak_bytes`: 1F1B on 2 ranks, 2 micro-batches, stages of 1 and 2 bytes
    assert peak_bytes(build_schedule("1f1b", 2, 2), (1.0, 2.0), [1]) == (2.0,)


def test_hashed_signature_is_the_plain_tuple():
    plain = (("a", "compute", ((1, 2.0),)), ("b", "comm", ()))
    hashed = stage_classes._HashedTuple(plain)
    assert hashed == plain and plain == hashed and hash(hashed) == hash(plain)
    d = {plain: 1}
    assert d[hashed] == 1 and {hashed: 2}[plain] == 2


def test_losing_candidates_are_emptied_and_the_winner_is_unchanged(monkeypatch):
    # DeepSeek-V2 on PP8 under ZB1P: the split search simulates candidates, two of which lose
    kw = dict(model="deepseek-v2", gpus=64, pp=8, ep=8, seq_len=1024, batch=256, schedule="zb1p")
    s = load_scenario(**kw)
    seen = []
    real = split_search.release
    monkeypatch.setattr(split_search, "release", lambda sim: (seen.append(sim), real(sim)))
    on = s.simulator()
    assert seen and all(not vars(x) for x in seen)  # emptied: reference counting frees them
    a = on.step(2 * s.parallel.pp)
    monkeypatch.setattr(split_search, "RELEASE_LOSERS", False)
    clear_templates()
    off = load_scenario(**kw).simulator()
    b = off.step(2 * s.parallel.pp)
    assert on.stage_layers == off.stage_layers
    assert (a.step_time, a.busy_per_rank, a.peak_activations_per_rank) == \
        (b.step_time, b.busy_per_rank, b.peak_activations_per_rank)


def test_shared_sm_schedule_hand_example():
    """`nccl_sms.list_schedule_shared` (its streams kept in locals): 4 s of compute beside a 2 s collective holding
    66 of 132 SMs, then a 1 s collective after the compute. Compute runs at half rate for 2 s (1 s of work), then
    alone for 3 s: it ends at 5; the second collective runs 5 to 6. Busy: compute 5, comm 3; spans in end order."""
    from gpuhours.simulator.nccl_sms import list_schedule_shared
    from gpuhours.simulator.task_schedule import _Task

    tasks = [_Task("gemm(F)", "compute", 4.0, (), (0,), 3, "F", False, 0.0),
             _Task("ar(F)", "comm", 2.0, (), (1,), None, "F", False, 66.0),
             _Task("rs(F)", "comm", 1.0, (0,), (2,), None, "F", False, 66.0)]
    prof = list_schedule_shared(tasks, 132)
    assert (prof.duration, prof.compute_busy, prof.comm_busy) == (6.0, 5.0, 3.0)
    assert [(sp.name, sp.stream, sp.start, sp.end) for sp in prof.spans] == [
        ("ar(F)", "comm", 0.0, 2.0), ("gemm(F)", "compute", 0.0, 5.0), ("rs(F)", "comm", 5.0, 6.0)]
    assert prof.spans[1].args == (("phase", "F"), ("layer", 3)) and prof.spans[0].args == (("phase", "F"),)
