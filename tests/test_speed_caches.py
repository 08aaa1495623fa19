"""The sweep-speed caches (issue 14) change how things are computed, never what: layers renamed from their kind's
template equal layers built one by one, stage memory from per-stage memos equals `memory.chunk_bytes`, whole
steps are bit-identical with the caches on and off, a cache keyed by a layout does not answer for another, and a
cache whose assumption fails falls back to building directly. Nothing here is timed."""

from __future__ import annotations

import pytest

from gpuhours.simulator import balance, split_memo
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.stage_classes import _signature, stage_signature
from gpuhours.workloads import layer_templates
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.layer_templates import (clear_templates, layer_passes_for, template_of,
                                                templates_enabled)
from gpuhours.workloads.memory import chunk_bytes
from gpuhours.workloads.recipe import load_recipe
from gpuhours.workloads.stage_ops import stage_units

# (label, load_scenario overrides): MoE with its dense first layers, full:N recomputation (two policies per stage),
# a dense model with TP and sequence parallelism, TP without it and with overlap (ops with `overlaps` partners),
# ring context parallelism (K/V exchange paired with the attention core)
LAYOUTS = {
    "deepseek-v3": dict(gpus=256, pp=8, ep=32, seq_len=1024, batch=64),
    "v3-full:2": dict(gpus=256, pp=8, ep=32, seq_len=1024, batch=64, recompute="full:2"),
    "llama-70b-tp4": dict(model="llama-3-70b", gpus=64, pp=4, tp=4, schedule="1f1b", seq_len=1024, batch=64),
    "llama-70b-tp-overlap": dict(model="llama-3-70b", gpus=64, pp=4, tp=4, schedule="1f1b", seq_len=1024,
                                 batch=64, sequence_parallel=False, tp_comm_overlap=True),
    "llama-70b-ring-cp": dict(model="llama-3-70b", gpus=64, pp=4, tp=2, cp=2, cp_comm="ring", schedule="1f1b",
                              seq_len=4096, batch=64),
}


def _stages(scenario):
    sim = scenario.simulator()
    starts = [0]
    for n in sim.stage_layers:
        starts.append(starts[-1] + n)
    last = len(sim.stage_layers) - 1
    return [stage_units(scenario.model, scenario.parallel, scenario.plan.seq_len, range(starts[s], starts[s + 1]),
                        s == 0, s == last, scenario.effective_opts()) for s in range(len(sim.stage_layers))]


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_templates()
    split_memo.clear_split_memos()
    yield
    clear_templates()
    split_memo.clear_split_memos()


@pytest.mark.parametrize("label", LAYOUTS)
def test_templated_stages_equal_stages_built_layer_by_layer(label):
    scenario = load_scenario(**LAYOUTS[label])
    with templates_enabled(False):
        direct = _stages(scenario)
    templated = _stages(scenario)
    assert templated == direct  # every field of every op, segment and unit
    renamed = [u for units in templated for u in units if template_of(u) is not None]
    assert len(renamed) >= scenario.model.n_layers - 4  # the layers did come from templates
    # a renamed layer's names are its own: "L<i>." on every op, segments carry layer i
    for u in renamed:
        i = int(u.name[1:])
        for seg in u.forward + u.backward + u.weight:
            assert seg.layer == i
            assert all(op.name.startswith(f"L{i}.") for op in seg.ops)
    # the shared price signature is each unit's own
    assert [stage_signature(units) for units in templated] == [tuple(map(_signature, units)) for units in direct]


@pytest.mark.parametrize("label", ["deepseek-v3", "v3-full:2", "llama-70b-tp-overlap"])
def test_steps_are_bit_identical_with_the_caches_on_and_off(label, monkeypatch):
    scenario = load_scenario(**LAYOUTS[label])

    def step():
        sim = scenario.simulator()
        r = sim.step(2 * scenario.parallel.pp)
        return sim.stage_layers, r.step_time, r.busy_per_rank, r.dp_tail_per_rank, r.peak_activations_per_rank

    on = step()
    direct = lambda model, p, seq_len, sl, recipe, opts: chunk_bytes(  # noqa: E731
        model, p, seq_len, sl, recipe, opts.fp8, opts.recompute, opts.kept_imbalance)
    monkeypatch.setattr(balance, "stage_chunk_bytes", direct)
    monkeypatch.setattr(balance, "held_params_memo", lambda model, p: {})
    monkeypatch.setattr(balance, "SPLIT_RANK_MEMO", False)  # every rank computed (`split_memo.rank_memory_memo`)
    with templates_enabled(False):
        off = step()
    assert on == off


def test_a_template_does_not_answer_for_another_key():
    """Keyed by model, layout, sequence and options: changing any one builds (and checks) a new template."""
    base = load_scenario(**LAYOUTS["llama-70b-tp4"])
    model, p, opts = base.model, base.parallel, base.effective_opts()
    a = layer_passes_for(model, 5, p, 1024, opts)
    assert a == layer_passes(model, 5, p, 1024, opts)
    for changed in (dict(seq_len=2048), dict(p=load_scenario(**{**LAYOUTS["llama-70b-tp4"], "tp": 8}).parallel),
                    dict(opts=load_scenario(**{**LAYOUTS["llama-70b-tp4"], "recompute": "full"}).effective_opts())):
        args = dict(model=model, p=p, seq_len=1024, opts=opts) | changed
        got = layer_passes_for(args["model"], 7, args["p"], args["seq_len"], args["opts"])
        assert got == layer_passes(args["model"], 7, args["p"], args["seq_len"], args["opts"])
        assert got != layer_passes(model, 7, p, 1024, opts)
    assert len(layer_templates._CACHE) == 4


def test_a_layer_that_depends_on_its_index_falls_back_to_direct_builds(monkeypatch):
    """If layer_ops made odd layers differ (say, a sliding window every other layer), the template's check
    against the next layer fails and every layer of that kind is built directly."""
    real = layer_templates.layer_passes

    def alternating(model, layer, p, seq_len, opts, stage_position=None):
        out = real(model, layer, p, seq_len, opts, stage_position=stage_position)
        return out if layer % 2 == 0 else type(out)(out.name, out.forward[::-1], out.backward, out.weight)

    monkeypatch.setattr(layer_templates, "layer_passes", alternating)
    s = load_scenario(**LAYOUTS["llama-70b-tp4"])
    model, p, opts = s.model, s.parallel, s.effective_opts()
    got = [layer_passes_for(model, i, p, 1024, opts) for i in range(6)]
    assert got == [alternating(model, i, p, 1024, opts) for i in range(6)]
    assert list(layer_templates._CACHE.values()) == [None]  # marked: built directly from now on


@pytest.mark.parametrize("recompute", ["deepseek", "full:2", "full"])
@pytest.mark.parametrize("split", [(10, 10, 10, 10, 10, 11), (11, 10, 10, 10, 10, 10), (9, 11, 10, 10, 11, 10)])
def test_stage_memory_memo_equals_chunk_bytes(split, recompute):
    s = load_scenario(gpus=192, pp=6, ep=32, seq_len=1024, batch=48, recompute=recompute)
    opts = s.effective_opts()
    args = (s.model, s.parallel, s.plan.seq_len)
    for sl in (split, (10, 10, 10, 10, 10, 11)):  # the second call reads the memo filled by the first
        assert split_memo.stage_chunk_bytes(*args, sl, load_recipe(), opts) == chunk_bytes(
            *args, sl, load_recipe(), opts.fp8, opts.recompute, opts.kept_imbalance)


def test_stage_memory_memo_falls_back_when_chunk_bytes_reads_more(monkeypatch):
    """When `chunk_bytes` disagrees with the per-stage figures (it changed to read something else), the memo's
    first check marks the key and `chunk_bytes` answers from then on."""
    import gpuhours.workloads.memory as memory

    real = memory.chunk_bytes
    monkeypatch.setattr(memory, "chunk_bytes", lambda *a, **k: tuple(2 * x for x in real(*a, **k)))
    s = load_scenario(gpus=192, pp=6, ep=32, seq_len=1024, batch=48)
    opts = s.effective_opts()
    sl = (10, 10, 10, 10, 10, 11)
    expected = tuple(2 * x for x in real(s.model, s.parallel, s.plan.seq_len, sl, load_recipe(), opts.fp8,
                                         opts.recompute, opts.kept_imbalance))
    for _ in range(2):
        assert split_memo.stage_chunk_bytes(s.model, s.parallel, s.plan.seq_len, sl, load_recipe(), opts) == expected
    assert list(split_memo._CHUNK_MEMO.values()) == [None]
