"""Where each communication group of a step runs: its size, the nodes it spans, the network switches its longest
path crosses and the most loaded link of its collective (for `gpuhours step`)."""

from __future__ import annotations

from gpuhours.hwmodels.topology import SWITCH_KINDS

# The collective the simulator prices for each group (workloads.ops, simulator.step).
_KINDS = {"tp": "reduce_scatter", "cp": "all_gather", "dp": "reduce_scatter", "edp": "reduce_scatter",
          "etp": "all_gather", "tp_ep": "all_gather"}


def placement_rows(coster) -> list[dict]:
    """One row per group kind with more than one rank (and the pipeline send between stages 0 and 1), on the fabric
    graph; empty for a network model without one."""
    if not coster.placed:
        return []
    p, net, layout = coster.parallel, coster.network, coster.layout
    allgather = p.moe_dispatch == "allgather"  # workloads.moe_dispatch: its group is tp_ep, not ep
    sizes = {"tp": p.tp, "cp": p.cp, "dp": p.grad_dp, "ep": 1 if allgather else p.ep, "edp": p.expert_dp,
             "etp": p.etp, "tp_ep": p.ep * p.etp if allgather else 1}
    rows = []
    for name, size in sizes.items():
        if size == 1 or (name == "edp" and p.ep * p.etp == 1):
            continue
        first = coster.groups(name)[0]
        if name == "ep":
            phase = net.placed_ep_phase(layout, coster.model.moe.top_k, coster.nodes_per_token)
        else:
            phase = max(net.placed_phases(_KINDS[name], layout, name), key=lambda ph: ph.coef * ph.share,
                        default=None)
        pairs = [(first[0], g) for g in first[1:]]
        rows.append(_row(name, _KINDS.get(name, "all_to_all (DeepEP)"), size, first, pairs, phase, net))
    if p.pp > 1:
        flows = layout.pipeline_flows(0, 1)
        first = [flows[0][0], flows[0][1]]
        rows.append(_row("pp", "send, stage 0 -> 1", 2, first, [(a, b) for a, b, _ in flows[:1]],
                         net.placed_p2p(layout, 0, 1), net))
    return rows


def _row(name, kind, size, gpus, pairs, phase, net) -> dict:
    switches = 0
    for a, b in pairs:
        links = net.route(a, b).links
        switches = max(switches, sum(net.edges[e][0][0] in SWITCH_KINDS for e in links))
    nodes = len({int(net._node_of[g]) for g in gpus})
    bottleneck = phase.bottleneck if phase is not None else None
    return {"group": name, "collective": kind, "size": size, "nodes": nodes, "switches": switches,
            "bottleneck": [list(x) for x in bottleneck] if bottleneck else None}


def placement_lines(rows: list[dict], order: tuple[str, ...]) -> list[str]:
    if not rows:
        return []
    out = [f"groups (placement {'-'.join(order)}, innermost first; switches: network switches on the longest path)",
           f"  {'group':<6} {'ranks':>6} {'nodes':>6} {'switches':>8}  {'collective':<22} bottleneck link"]
    for r in rows:
        link = " -> ".join(_node(n) for n in r["bottleneck"]) if r["bottleneck"] else "-"
        out.append(f"  {r['group']:<6} {r['size']:>6} {r['nodes']:>6} {r['switches']:>8}  {r['collective']:<22} {link}")
    return out


def _node(n) -> str:
    return f"{n[0]} {'.'.join(str(x) for x in n[1:])}" if isinstance(n, (list, tuple)) else str(n)
