"""gpuhours commands about the machine: collectives on a fabric, its topology, MoE routing on it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from gpuhours.cli_support import (UsageError, _echo_json, _output_path, _stderr_console, app, user_errors)


CLUSTER_HELP = ("Fabric preset (deepseek-h800, dgx-h100, dgx-h200, dgx-a100, roce-h100, gb200-nvl72) or a cluster "
                ".toml file with a preset's keys (hwmodels/data/clusters.toml)")
TIERS_HELP = "Force 2 (leaf/spine) or 3 (with a core tier) switch tiers; default: the preset's (auto: from the size)"


@app.command()
def collective(
    kind: str = typer.Argument(..., help="p2p, all_reduce, reduce_scatter, all_gather, all_to_all, ep_dispatch, "
                                         "ep_combine"),
    cluster: str = typer.Option("deepseek-h800", "--cluster", help=CLUSTER_HELP),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Resize the cluster to this many GPUs"),
    tiers: Optional[int] = typer.Option(None, "--tiers", help=TIERS_HELP),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Ranks in the group"),
    per_node: Optional[int] = typer.Option(None, "--per-node", help="Ranks of the group per node"),
    nbytes: Optional[str] = typer.Option(None, "--bytes", help="Buffer size, e.g. 1G or 256M"),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Comma-separated buffer sizes (e.g. 1K,1M,1G): one "
                                                              "row per size with NCCL's protocol, time, busbw"),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="EP: tokens per rank"),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="EP: hidden size"),
    top_k: int = typer.Option(8, "--top-k", help="EP: experts per token"),
    max_nodes: int = typer.Option(4, "--max-nodes", help="EP: most nodes a token may reach"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="EP payload: fp8 (dispatch) or bf16 (combine)"),
    algorithm: str = typer.Option("auto", "--algorithm", help="auto, ring, tree, hierarchical"),
    nic_gbps: Optional[float] = typer.Option(None, "--nic-gbps", help="NIC bandwidth per GPU in Gb/s"),
    oversubscription: Optional[float] = typer.Option(None, "--oversubscription", help="Leaf downlink:uplink"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Time and algorithm/bus bandwidth of one collective on a cluster's fabric graph."""
    from gpuhours.hwmodels.collective_report import collective_report
    from gpuhours.hwmodels.graph_network import GraphNetwork
    from gpuhours.hwmodels.fabric_presets import load_cluster_preset
    from gpuhours.workloads.run import parse_count

    with user_errors():
        overrides = {}
        if gpus is not None:
            overrides["gpus"] = gpus
        if nic_gbps is not None:
            overrides["nic_bw"] = nic_gbps / 8 * 1e9
        if oversubscription is not None:
            overrides["oversubscription"] = oversubscription
        if tiers is not None:
            overrides["tiers"] = tiers
        net = GraphNetwork(load_cluster_preset(cluster, **overrides))
        size = None if nbytes is None else parse_count(nbytes.upper().replace("B", "") or "0", "bytes")
        if sizes is not None:
            rows = [collective_report(kind, net, group_size=group_size, per_node=per_node, algorithm=algorithm,
                                      nbytes=parse_count(x.strip().upper().replace("B", "") or "0", "sizes"))
                    for x in sizes.split(",")]
            if as_json:
                _echo_json(rows)
                return
            typer.echo(f"{kind} on {rows[0]['cluster']}: {rows[0]['group_size']} ranks ({rows[0]['per_node']} per "
                       f"node, {rows[0]['nodes']} nodes), algorithm {rows[0]['algorithm']}")
            typer.echo(f"{'bytes':>14}  {'time_us':>10}  {'algbw GB/s':>10}  {'busbw GB/s':>10}  protocol")
            for r in rows:
                typer.echo(f"{r['bytes']:>14.0f}  {r['time_s'] * 1e6:>10.2f}  {r['algbw_GBps']:>10.2f}  "
                           f"{r['busbw_GBps']:>10.2f}  {r.get('protocol', '-')}")
            return
        data = collective_report(kind, net, group_size=group_size, per_node=per_node, nbytes=size, tokens=tokens,
                                 hidden=hidden, top_k=top_k, max_nodes=max_nodes, dtype=dtype, algorithm=algorithm)
        overflowed = [k for k, v in data.items() if isinstance(v, float) and not math.isfinite(v)]
        if overflowed:  # finite inputs (1e308 bytes, a 1e-300 Gb/s NIC) whose time overflows a float64
            raise UsageError(f"--bytes/--tokens x --hidden/--nic-gbps: {overflowed[0]} overflows a float64 "
                             f"({size if size is not None else f'{tokens} tokens x {hidden} hidden'} bytes over "
                             f"{data.get('group_size')} ranks); allowed: sizes and bandwidths of a real cluster")
    if as_json:
        _echo_json(data)
        return
    typer.echo(f"{kind} on {data['cluster']}: {data['group_size']} ranks ({data['per_node']} per node, "
               f"{data['nodes']} nodes), algorithm {data['algorithm']}")
    typer.echo(f"time {data['time_s'] * 1e3:.3f} ms  algbw {data['algbw_GBps']:.1f} GB/s  "
               f"busbw {data['busbw_GBps']:.1f} GB/s")
    if data.get("protocol"):
        typer.echo(f"NCCL protocol: {data['protocol']}")
    if "rdma_GBps" in data:
        typer.echo(f"DeepEP-style figures: RDMA {data['rdma_GBps']:.1f} GB/s, NVLink {data['nvl_GBps']:.1f} GB/s, "
                   f"{data['mean_nodes_per_token']:.2f} nodes per token")
    if data.get("bottleneck_link"):
        typer.echo(f"bottleneck link: {data['bottleneck_link'][0]} -> {data['bottleneck_link'][1]}")


@app.command()
def topology(
    cluster: str = typer.Option("deepseek-h800", "--cluster", help=CLUSTER_HELP),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Resize the cluster to this many GPUs"),
    tiers: Optional[int] = typer.Option(None, "--tiers", help=TIERS_HELP),
    png: Optional[Path] = typer.Option(None, "--png", help="Draw a small cluster of the same kind (.png)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """GPUs, nodes, switches per tier, per-tier and bisection bandwidth of a cluster's fabric."""
    from gpuhours.hwmodels.fabric_presets import load_cluster_preset
    from gpuhours.hwmodels.topology import build_topology, describe

    with user_errors():
        if png is not None:
            _output_path(png, (".png",), "--png")
        spec = load_cluster_preset(cluster, **({"gpus": gpus} if gpus else {}),
                                   **({"tiers": tiers} if tiers is not None else {}))
        info = describe(build_topology(spec))
        info["cluster"] = cluster
        if png is not None:
            from gpuhours.reports.topology_plot import draw_topology

            gpn = spec.gpus_per_node  # up to four nodes, at most 128 GPUs (one NVL72 rack)
            small = spec.with_(gpus=min(spec.gpus, max(gpn, 128 // gpn * gpn) if gpn > 32 else 4 * gpn))
            draw_topology(small, png, title=f"{cluster}: {small.gpus} of {spec.gpus} GPUs drawn")
    if as_json:
        _echo_json(info)
        return
    sw = ", ".join(f"{n} {k}" for k, n in info["switches"].items() if n)
    typer.echo(f"{cluster}: {info['gpus']} GPUs in {info['nodes']} nodes, {info['nics']} NICs; {spec.tiers} switch "
               f"tiers: {sw}")
    for tier, bw in info["tier_bandwidth_Bps"].items():
        if bw:
            typer.echo(f"  {tier:<11} {bw / 1e12:9.2f} TB/s (one direction, all links)")
    typer.echo(f"  bisection   {info['bisection_Bps'] / 1e12:9.2f} TB/s")
    if png is not None:
        typer.echo(f"wrote {png}")


# ------------------------------------------------------------------------------------------------- routing
# Assumption: bounds on what one `routing` run may route, so that no input runs for minutes or exhausts memory
# (every token is scored against every expert; measured on this project's 2-core machine, DeepSeek-V3's 256
# experts: `gpuhours routing --tokens 40000` = 2.56M tokens took 11.7 s of CPU, `--steps 10` at the default
# size 3.5 s, so the bounds below stay near 10-20 s). One micro-batch: 8x the default (4,096 tokens x EP64);
# balancing: steps x tokens x ep, e.g. 64 steps at the default size or 1,024 steps of 256 tokens per rank.
# The "clt" balancing method (auto from 32,768 tokens) routes far fewer (routing_dynamics.balancing_work):
# about 8,390 steps at the default size (~1 min; 1,000 steps take ~6-7 s of CPU).
MAX_ROUTED_TOKENS = 2**21
MAX_BALANCING_TOKENS = 2**24


def _check_routing_work(tokens: int, ep: int, steps: int, balancing_method: str = "exact") -> None:
    if tokens * ep > MAX_ROUTED_TOKENS:
        raise UsageError(f"--tokens x --ep: {tokens:,} x {ep:,} tokens is more than {MAX_ROUTED_TOKENS:,} routed "
                         f"tokens a micro-batch; allowed: fewer tokens per rank or a smaller EP group")
    from gpuhours.workloads.routing import RoutingConfig
    from gpuhours.workloads.routing_dynamics import balancing_work  # the "clt" method routes a pool, not all

    if steps > 0 and balancing_work(RoutingConfig(), tokens * ep, steps, balancing_method) > MAX_BALANCING_TOKENS:
        raise UsageError(f"--steps: {steps:,} steps x {tokens:,} tokens x EP{ep} is more than "
                         f"{MAX_BALANCING_TOKENS:,} routed tokens; allowed: fewer steps or fewer --tokens per rank")


@app.command()
def routing(
    model: str = typer.Option("deepseek-v3", "--model", "-m", help="MoE preset or model file"),
    ep: int = typer.Option(64, "--ep", help="Expert-parallel size"),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    tokens: int = typer.Option(4096, "--tokens", help="Tokens per EP rank (one micro-batch)"),
    skew: float = typer.Option(0.0, "--skew", help="Zipf exponent of expert popularity (0: uniform)"),
    routing_: Optional[str] = typer.Option(None, "--routing", help="balanced, skew:<s> or file:<path> "
                                                                  "(overrides --skew)"),
    steps: int = typer.Option(0, "--steps", help="Simulate this many steps of bias balancing"),
    gamma: float = typer.Option(0.001, "--gamma", help="Bias update speed (DeepSeek-V3: 0.001)"),
    balancing_method: str = typer.Option("auto", "--balancing-method",
                                         help="--steps: exact (route every token every step), clt (normal law "
                                              "of a step's loads from a re-routed pool of tokens), auto (clt "
                                              "from 32,768 tokens per micro-batch)"),
    redundant: int = typer.Option(0, "--redundant", help="EPLB: redundant expert slots to add"),
    seed: int = typer.Option(0, "--seed"),
    detail: bool = typer.Option(False, "--detail", help="Price every rank of one EP group: stragglers and waits"),
    png: Optional[Path] = typer.Option(None, "--png", help="Plot imbalance per balancing step (.png)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Expert load imbalance of one micro-batch, its bias balancing over steps, and what EPLB recovers."""
    from gpuhours.simulator.scenario import resolve_model
    from gpuhours.workloads.routing import EPGroup, RoutingConfig, ep_rank_loads, route, simulate_balancing

    with user_errors():
        if png is not None:
            _output_path(png, (".png",), "--png")
            if steps < 1:
                raise UsageError("--png plots the balancing steps: give --steps N (N >= 1)")
        _check_routing_work(tokens, ep, steps, balancing_method)
        spec = resolve_model(model)
        if spec.moe is None:
            raise UsageError(f"model {spec.name!r} has no experts: routing needs an MoE model")
        choice = routing_ or (f"skew:{skew}" if skew else "skew:0")
        loads = ep_rank_loads(spec.moe, ep, gpus_per_node, tokens, choice, seed=seed)
        data = {"model": spec.name, "ep": ep, "tokens_per_rank": tokens, **loads.summary()}
        if steps:
            from rich.progress import Progress

            config = RoutingConfig(skew="zipf", value=skew, seed=seed)
            with Progress(transient=True, console=_stderr_console()) as bar:
                task = bar.add_task("bias balancing", total=steps)

                def progress(done, total):
                    bar.update(task, completed=done, total=total, description=f"bias balancing: step {done}")

                stats = simulate_balancing(spec.moe, EPGroup(ep, gpus_per_node), tokens, config, steps, gamma,
                                           progress=progress, method=balancing_method)
            data["balancing"] = [{"step": b.step, "imbalance": b.imbalance} for b in stats]
            from gpuhours.workloads.routing_dynamics import balancing_method as used_method

            data["balancing_method"] = used_method(config, tokens * ep, balancing_method)
            if png is not None:
                from gpuhours.reports.routing_plot import draw_balancing

                draw_balancing(stats, png, title=f"{spec.name}: EP{ep}, Zipf {skew}, gamma {gamma}")
        if redundant:
            from gpuhours.workloads.eplb import balance_experts

            r = route(spec.moe, EPGroup(ep, gpus_per_node), tokens,
                      RoutingConfig(skew="zipf" if skew else "uniform", value=skew, seed=seed))
            plan = balance_experts(r.expert_rows, ep, gpus_per_node, redundant)
            data["eplb"] = {"redundant": redundant, "imbalance_before": plan.imbalance_before,
                            "imbalance_after": plan.imbalance_after}
        if detail:
            from gpuhours.simulator.ep_detail import ep_group_detail
            from gpuhours.simulator.scenario import load_scenario

            data["detail"] = ep_group_detail(load_scenario(model=model, ep=ep, routing=choice))
    if as_json:
        _echo_json(data)
        return
    typer.echo(f"{spec.name} EP{ep}, {tokens} tokens per rank, routing {data['routing']}")
    typer.echo(f"imbalance (max/mean rows per rank) {data['imbalance']:.3f}; nodes per token mean "
               f"{data['mean_nodes_per_token']:.2f}, max {data['max_nodes_per_token']}")
    if steps:
        traj = data["balancing"]
        picks = sorted({0, len(traj) // 4, len(traj) // 2, 3 * len(traj) // 4, len(traj) - 1})
        typer.echo("balancing: " + ", ".join(f"step {traj[i]['step']}: {traj[i]['imbalance']:.3f}" for i in picks))
    if redundant:
        e = data["eplb"]
        typer.echo(f"EPLB with {redundant} redundant experts: imbalance {e['imbalance_before']:.3f} -> "
                   f"{e['imbalance_after']:.3f}")
    if detail:
        d = data["detail"]
        busiest = sorted(d["ranks"], key=lambda r: -r["mlp_forward_ms"])[:4]
        typer.echo(f"layer {d['layer']} MoE forward: slowest rank {d['slowest_rank']} {d['slowest_ms']:.2f} ms; "
                   f"the others wait {d['mean_wait_ms']:.2f} ms on average in the combine")
        typer.echo("  busiest ranks: " + ", ".join(f"{r['rank']} ({r['rows']:.0f} rows, {r['mlp_forward_ms']:.2f} ms)"
                                                   for r in busiest))
    if png is not None:
        typer.echo(f"wrote {png}")


# ------------------------------------------------------------------------------------------------- calibration
