"""Candidate splits share what does not depend on the split (issue 14): layer templates are keyed by the layout
without its layers per stage, and stage-class profiles are shared between costers of one pricing context
(`simulator.stage_classes._shared_profiles`). Both change how figures are computed, never what: checked against
direct layer builds and against steps simulated with sharing off. Nothing here is timed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuhours.simulator import stage_classes
from gpuhours.simulator.chunks import HardwareCoster
from gpuhours.simulator.scenario import load_scenario
from gpuhours.simulator.step import StepSimulator
from gpuhours.workloads.layer_ops import layer_passes
from gpuhours.workloads.layer_templates import clear_templates, layer_passes_for, template_of

# a dense model on PP4 (80 layers) and DeepSeek-V3 on PP8 (dense first layers, MoE, head and MTP on the last stage)
LAYOUTS = {
    "llama-70b": (dict(model="llama-3-70b", gpus=64, pp=4, tp=4, schedule="1f1b", seq_len=1024, batch=64),
                  [(20, 20, 20, 20), (21, 20, 20, 19), (19, 21, 21, 19)]),
    "deepseek-v3": (dict(gpus=256, pp=8, ep=32, seq_len=1024, batch=64),
                    [(8, 8, 8, 8, 8, 8, 8, 5), (8, 8, 8, 8, 8, 8, 7, 6), (7, 8, 8, 8, 8, 8, 8, 6)]),
}


def _parts(label):
    overrides, splits = LAYOUTS[label]
    s = load_scenario(**overrides)
    sim = s.simulator()  # its compute model, network and options are what every candidate shares
    return sim, splits


def _candidate(sim, split):
    return StepSimulator(sim.model, replace(sim.parallel, stage_layers=split), sim.cluster, sim.compute,
                         sim.network, sim.seq_len, sim.opts, sim.recipe)


@pytest.mark.parametrize("label", LAYOUTS)
def test_templates_shared_between_splits_equal_direct_builds(label):
    sim, splits = _parts(label)
    clear_templates()
    a, b = (replace(sim.parallel, stage_layers=split) for split in splits[:2])
    layer = sim.model.n_layers - 2
    ua = layer_passes_for(sim.model, layer, a, sim.seq_len, sim.opts, stage_position=3)
    ub = layer_passes_for(sim.model, layer, b, sim.seq_len, sim.opts, stage_position=3)
    assert template_of(ua) is not None and template_of(ua) is template_of(ub)  # one template for both splits
    # and each equals its direct build under its own layout
    assert ua == layer_passes(sim.model, layer, a, sim.seq_len, sim.opts, stage_position=3)
    assert ub == layer_passes(sim.model, layer, b, sim.seq_len, sim.opts, stage_position=3)


@pytest.mark.parametrize("label", LAYOUTS)
def test_shared_profiles_give_the_same_steps(label, monkeypatch):
    sim, splits = _parts(label)
    m = 2 * sim.parallel.pp
    stage_classes._CONTEXTS.clear()
    shared = [_candidate(sim, split).step(m) for split in splits]
    assert len(stage_classes._CONTEXTS) == 1  # the candidates are one pricing context
    profiles = next(iter(stage_classes._CONTEXTS.values()))["profiles"]
    assert profiles  # and their classes were priced there
    monkeypatch.setattr(stage_classes, "_shared_profiles", lambda coster: None)
    alone = [_candidate(sim, split).step(m) for split in splits]
    for x, y in zip(shared, alone):
        assert x.step_time == y.step_time
        assert x.busy_per_rank == y.busy_per_rank and x.bubble_per_rank == y.bubble_per_rank
        assert x.exposed_comm_per_rank == y.exposed_comm_per_rank and x.dp_tail_per_rank == y.dp_tail_per_rank


def test_another_context_does_not_share():
    sim, splits = _parts("llama-70b")
    stage_classes._CONTEXTS.clear()
    base = _candidate(sim, splits[0]).coster
    entry = stage_classes._shared_profiles(base)
    assert stage_classes._shared_profiles(_candidate(sim, splits[1]).coster) is entry  # only the split differs
    longer = HardwareCoster(sim.model, sim.parallel, sim.cluster, sim.compute, sim.network, 2 * sim.seq_len,
                            splits[0], sim.opts, base.recipe)
    assert stage_classes._shared_profiles(longer) is not entry  # another sequence length
    other = load_scenario(**LAYOUTS["llama-70b"][0]).simulator()  # equal values, another compute model object
    twin = HardwareCoster(sim.model, sim.parallel, sim.cluster, other.compute, other.network, sim.seq_len,
                          splits[0], sim.opts, base.recipe)
    # keyed by value (`stage_classes.pricing_key`: sweep points share; tests/test_profile_content_key.py), by
    # identity before
    assert stage_classes._shared_profiles(twin) is entry
