"""`gpuhours collective`: the time and bandwidths of one collective on a cluster's fabric graph."""

from __future__ import annotations

from gpuhours.hwmodels.cluster import CommGroup
from gpuhours.hwmodels.collective_flows import group_limited_nodes_distribution, nodes_distribution
from gpuhours.hwmodels.collectives import bf16_bytes_per_token, fp8_bytes_per_token
from gpuhours.hwmodels.graph_network import EP_DTYPES, REPORT_KINDS, GraphNetwork


def collective_report(kind: str, network: GraphNetwork | str = "deepseek-h800", *, group_size: int | None = None,
                      per_node: int | None = None, nbytes: float | None = None, tokens: int | None = None,
                      hidden: int | None = None, top_k: int = 8, max_nodes: int = 4, dtype: str | None = None,
                      algorithm: str = "auto", nodes_per_token=None, num_experts: int = 256) -> dict:
    """Time and bandwidths of one collective on a cluster (for ``gpuhours collective``).

    algbw = data size / time (data = nbytes; EP: tokens * bytes_per_token per rank). busbw (NCCL-tests):
    all_reduce algbw * 2(p-1)/p; reduce_scatter, all_gather, all_to_all algbw * (p-1)/p; p2p algbw.
    EP kinds also give DeepEP's bottleneck figures: rdma_GBps = tokens * E[nodes per token] * bytes / time
    (its count includes the token's own node) and nvl_GBps = tokens received per rank * bytes / time; their
    busbw is the RDMA figure when the group spans nodes, else the NVLink one. NCCL collectives (all_reduce,
    reduce_scatter, all_gather on an NVIDIA fabric) also give ``protocol``: the algorithm/protocol NCCL's tuner
    runs for each phase at this size (``hwmodels/nccl.py``). Unless ``nodes_per_token`` is
    given, EP kinds draw it from ``group_limited_nodes_distribution`` (random scores, at most ``max_nodes``
    nodes, ``num_experts`` routed experts spread over the group's nodes; 256 = DeepSeek-V3).
    """
    if kind not in REPORT_KINDS:
        raise ValueError(f"kind must be one of {REPORT_KINDS}, got {kind!r}")
    net = network if isinstance(network, GraphNetwork) else GraphNetwork(network)
    gpn = net.gpus_per_node
    ep = kind.startswith("ep_")
    p = group_size if group_size is not None else (min(64, net.num_gpus) if ep else gpn)
    q = per_node if per_node is not None else min(p, gpn)
    group = CommGroup(p, q)
    out: dict = {"kind": kind, "cluster": net.spec.name if net.spec else "graph", "group_size": p,
                 "per_node": q, "nodes": group.nodes}
    if ep:
        if tokens is None or hidden is None:
            raise ValueError(f"{kind} needs tokens and hidden")
        dtype = dtype or ("fp8" if kind == "ep_dispatch" else "bf16")
        if dtype not in EP_DTYPES:
            raise ValueError(f"dtype must be one of {EP_DTYPES}, got {dtype!r}")
        bpt = fp8_bytes_per_token(hidden) if dtype == "fp8" else bf16_bytes_per_token(hidden)
        if nodes_per_token is None:
            nodes_per_token = group_limited_nodes_distribution(
                num_nodes=group.nodes, max_nodes=min(max_nodes, group.nodes), top_k=top_k,
                experts_per_node=max(1, num_experts // group.nodes))
        t = net.ep_all_to_all(tokens, bpt, top_k, nodes_per_token, group)
        dist = nodes_distribution(nodes_per_token, top_k)
        r, g = group.nodes, group.per_node
        mean_d = sum(min(d, r) * w for d, w in dist.items())
        recv_tokens = tokens * sum(w * min(d, r) * g * (1 - (1 - 1 / g) ** (top_k / min(d, r)))
                                   for d, w in dist.items())
        data = tokens * bpt
        rdma = tokens * mean_d * bpt / t / 1e9 if t > 0 else 0.0
        nvl = recv_tokens * bpt / t / 1e9 if t > 0 else 0.0
        out.update({"algorithm": "deepep-hierarchical", "tokens": tokens, "hidden": hidden, "top_k": top_k,
                    "dtype": dtype, "bytes_per_token": bpt, "mean_nodes_per_token": mean_d,
                    "ib_bytes_per_rank": tokens * mean_d * (r - 1) / r * bpt, "rdma_GBps": rdma,
                    "nvl_GBps": nvl, "busbw_GBps": rdma if r > 1 else nvl})
        bottleneck = net.ep_phase(group, top_k, nodes_per_token).bottleneck
    else:
        if nbytes is None:
            raise ValueError(f"{kind} needs nbytes")
        data = float(nbytes)
        if kind == "p2p":
            t = net.p2p(data, intra_node=group.nodes == 1)
            factor, bottleneck = 1.0, None
        else:
            groups = net.groups_for(group)
            t = net.collective_time(kind, data, groups, algorithm)
            phases = net.phases(kind, groups, algorithm)
            bottleneck = max(phases, key=lambda ph: ph.time(data)).bottleneck if phases else None
            factor = 2 * (p - 1) / p if kind == "all_reduce" else (p - 1) / p
            chosen = [ph.protocol(data) for ph in phases]
            if any(chosen):  # NCCL's algorithm/protocol per phase (hwmodels/nccl.py); "graph" where NCCL is not tuned
                out["protocol"] = " + ".join(c or "graph" for c in chosen)
        out["algorithm"] = algorithm
        out["busbw_GBps"] = data / t * factor / 1e9 if t > 0 else 0.0
    out.update({"bytes": data, "time_s": t, "algbw_GBps": data / t / 1e9 if t > 0 else 0.0,
                "bottleneck_link": [list(x) for x in bottleneck] if bottleneck else None})
    return out
