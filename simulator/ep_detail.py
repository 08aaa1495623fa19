"""Every rank of one expert-parallel group, side by side: who computes how long, and who waits for whom.

The step simulation prices the group's busiest rank (its rows set when the all-to-all after the experts can end).
This detail view prices each rank's MoE forward with its own rows, so the stragglers and the time the other
ranks spend waiting in the combine become visible.
"""

from __future__ import annotations

from dataclasses import replace

from gpuhours.simulator.chunks import HardwareCoster
from gpuhours.workloads.layer_ops import layer_passes


def ep_group_detail(scenario, layer: int | None = None) -> dict:
    """Per EP rank of one group: expert rows, MoE forward compute time (mlp(F)) and the wait until the slowest
    rank is done; `layer` defaults to the first MoE layer."""
    model, p = scenario.model, scenario.parallel
    loads = scenario.routing_loads()
    if loads is None:
        raise ValueError(f"model {model.name!r} with ep={p.ep} has no expert-parallel group to detail")
    layer = model.moe.first_k_dense if layer is None else layer
    if not model.is_moe_layer(layer):
        raise ValueError(f"layer {layer} is not an MoE layer (MoE layers: {model.moe.first_k_dense}.."
                         f"{model.n_layers - 1})")
    sim = scenario.simulator()
    coster: HardwareCoster = sim.coster
    base = scenario.effective_opts()
    rows = loads.rows_per_rank
    mean = float(rows.mean())
    times = []
    for r in rows:
        opts = replace(base, imbalance=float(r) / mean)
        mlp = next(s for s in layer_passes(model, layer, p, scenario.plan.seq_len, opts).forward
                   if s.name == "mlp(F)")
        times.append(sum(coster.op_time(op) for op in mlp.ops))
    slowest = max(times)
    return {
        "routing": loads.routing, "layer": layer, "imbalance": loads.imbalance,
        "slowest_rank": times.index(slowest), "slowest_ms": slowest * 1e3,
        "ranks": [{"rank": i, "rows": float(r), "mlp_forward_ms": t * 1e3, "wait_ms": (slowest - t) * 1e3}
                  for i, (r, t) in enumerate(zip(rows, times))],
        "mean_wait_ms": sum(slowest - t for t in times) / len(times) * 1e3,
    }
