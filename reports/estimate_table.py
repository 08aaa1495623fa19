"""The estimate as a JSON-ready dict and as a readable table."""

from __future__ import annotations

from gpuhours.hwmodels.gpus import run_energy
from gpuhours.simulator.run import RunEstimate
from gpuhours.simulator.scenario import is_calibration_case, scenario_warnings
from gpuhours.simulator.step import StepResult
from gpuhours.workloads.params import param_breakdown


def step_dict(step: StepResult) -> dict:
    return {
        "schedule": step.schedule,
        "num_microbatches": step.num_microbatches,
        "tokens": step.tokens,
        "step_time_s": step.step_time,
        "pipeline_time_s": step.pipeline_time,
        "dp_sync_time_s": step.dp_sync_time,
        "tokens_per_s_per_gpu": step.tokens_per_s_per_gpu,
        "mfu_bf16": step.mfu("bf16"),
        "mfu_fp8": step.mfu("fp8") if step.peak_fp8 else None,
        "bubble_share": step.bubble_share,
        "imbalance_share": step.imbalance_share,
        "exposed_comm_share": step.exposed_comm_share,
        "stage_layers": list(step.stage_layers),
        "busy_per_rank_s": list(step.busy_per_rank),
        "comm_busy_per_rank_s": list(step.comm_busy_per_rank),
        "bubble_per_rank_s": list(step.bubble_per_rank),
        "peak_activations_per_rank": list(step.peak_activations_per_rank),
    }


def estimate_dict(scenario, est: RunEstimate) -> dict:
    params = param_breakdown(scenario.model)
    steady = est.steady.step
    p, c, prof = scenario.parallel, scenario.cluster, scenario.profile
    return {
        "model": scenario.model.name,
        "params_total": params.total,
        "params_active": params.active,
        "params_mtp": params.mtp_unique,
        "gpu": c.gpu.name,
        "gpus": p.num_gpus,
        "layout": {"pp": p.pp, "ep": p.ep, "tp": p.tp, "dp": p.dp, "vpp": p.vpp, "schedule": p.schedule,
                   "zero_stage": p.zero_stage, "micro_batch_size": p.micro_batch_size, "comm_sms": p.comm_sms,
                   "stage_layers": list(steady.stage_layers), "cp": p.cp, "order": "-".join(p.order)},
        "precision": "fp8" if scenario.opts.fp8 else "bf16",
        "tokens": est.tokens,
        "seq_len": scenario.plan.seq_len,
        "gpu_hours": est.gpu_hours,
        "wall_clock_days": est.wall_clock_days,
        "cost_usd": est.cost_usd,
        "price_per_gpu_hour": est.price_per_gpu_hour,
        "price_source": scenario.plan.price_source or None,
        "energy": _energy_dict(c.gpu, est.gpu_hours),
        "step_time_s": steady.step_time,
        "tokens_per_s_per_gpu": est.tokens / (est.wall_clock_s * est.num_gpus),
        "mfu": steady.mfu("bf16"),
        "mfu_bf16": steady.mfu("bf16"),
        "mfu_fp8": steady.mfu("fp8") if steady.peak_fp8 else None,
        "bubble_share": steady.bubble_share,
        "imbalance_share": steady.imbalance_share,
        "exposed_comm_share": steady.exposed_comm_share,
        "calibration": {"name": prof.name, "source": prof.source, "device": prof.provenance.device,
                        "basis": prof.provenance.basis or None, "calibrated_on": prof.calibrated_on or None},
        "calibration_case": is_calibration_case(scenario),
        "warnings": scenario_warnings(scenario),
        "network_model": scenario.network_name,
        "network": _network_dict(scenario),
        "routing": _routing_dict(scenario),
        "segments": [
            {"tokens": s.tokens, "batch": s.batch_requested, "batch_simulated": s.batch_simulated,
             "microbatches": s.num_microbatches, "micro_batch_size": s.micro_batch_size, "steps": s.steps,
             "step_time_s": s.step.step_time,
             "days": s.seconds / 86400} for s in est.segments
        ],
        "notes": list(est.notes),
    }


def _energy_dict(gpu, gpu_hours: float) -> dict | None:
    """The run's energy (gpus.run_energy: GPU-hours x board power x PUE); None for a GPU without board power."""
    if not gpu.power_w > 0:
        return None
    return run_energy(gpu_hours, gpu).as_dict()


def _energy_line(e: dict | None) -> str:
    if not e:
        return "not computed (no board power catalogued for this GPU)"
    figure = f"{e['mwh'] / 1e3:.2f} GWh" if e["mwh"] >= 1e3 else f"{e['mwh']:.1f} MWh"
    return f"{figure}  ({e['gpu']} {e['gpu_power_w']:g} W x PUE {e['pue']:g}; GPU board power only, at full TDP)"


def _network_dict(scenario) -> dict:
    c = scenario.cluster
    d = {"model": scenario.network_name, "nvlink_GBps": c.nvlink_bw / 1e9, "ib_GBps_per_gpu": c.ib_bw / 1e9}
    if scenario.network_name == "graph":
        f = scenario.network().spec
        d.update({"fabric": f.name, "planes": f.planes, "tiers": f.tiers, "rail_optimised": f.rail_optimised,
                  "oversubscription": f.oversubscription, "nic_GBps": f.nic_bw / 1e9})
    return d


def _routing_dict(scenario) -> dict:
    loads = scenario.routing_loads()
    if loads is None:
        return {"model": "none (dense or ep = 1)"}
    out = {"model": loads.routing or scenario.routing, "imbalance": loads.imbalance,
           "mean_nodes_per_token": loads.mean_nodes_per_token, "max_nodes_per_token": loads.max_nodes_per_token}
    c = scenario.opts.capacity_factor
    if c is not None:
        out |= {"capacity_factor": c, "dropped_share": dropped_share(loads.rows_per_rank, c)}
    return out


def dropped_share(rows_per_rank, capacity_factor: float) -> float:
    """Share of routed rows an EP group drops when each rank keeps at most capacity_factor x the mean: counted per
    rank, a lower bound on expert-level dropping (a rank's experts are not balanced among themselves)."""
    import numpy as np

    rows = np.asarray(rows_per_rank, dtype=float)
    total = rows.sum()
    return float(np.maximum(rows - capacity_factor * rows.mean(), 0.0).sum() / total) if total > 0 else 0.0


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


_GIB = 2**30


def _memory_line(m: dict | None) -> str:
    if not m:
        return "not computed"
    return (f"{m['total'] / _GIB:.1f} of {m['capacity'] / _GIB:.0f} GiB on rank {m['rank']}: weights "
            f"{m['weights'] / _GIB:.1f}, grads {m['gradients'] / _GIB:.1f}, optimizer "
            f"{(m['master_weights'] + m['optimizer_moments']) / _GIB:.1f}, activations {m['activations'] / _GIB:.1f} "
            f"({m['in_flight_chunks']} chunks), headroom {m['headroom'] / _GIB:.1f}"
            f"{'' if m['fits'] else '  DOES NOT FIT'}")


def render_phases(d: dict) -> str:
    """A phased plan: one row per phase, then the total beside the published figures."""
    head = f"{'phase':<19}{'layout':<42}{'seq':>7}{'batch':>7}{'step s':>8}{'days':>7}{'GPU-hours':>12}{'memory':>13}"
    lines = [f"plan {d['plan']}", head]
    for p in d["phases"]:
        ref = f"  (published {p['reference_gpu_hours'] / 1e3:,.0f}K)" if p.get("reference_gpu_hours") else ""
        mem = f"{p['memory_gib']:.0f}/{p['memory_capacity_gib']:.0f} GiB" + ("" if p["fits"] else "!")
        lines.append(f"{p['name']:<19}{p['layout']:<42}{p['seq_len']:>7}{p['batch']:>7}{p['step_time_s']:>8.2f}"
                     f"{p['wall_clock_days']:>7.1f}{p['gpu_hours'] / 1e3:>11,.1f}K{mem:>13}{ref}")
    t = d["total"]
    ref = d.get("reference", {}).get("total_gpu_hours")
    lines.append(f"{'total':<19}{'':<42}{'':>7}{'':>7}{'':>8}{t['wall_clock_days']:>7.1f}"
                 f"{t['gpu_hours'] / 1e3:>11,.1f}K  ${t['cost_usd'] / 1e6:.2f}M"
                 + (f"  (published {ref / 1e3:,.0f}K)" if ref else ""))
    for p in d["phases"]:
        for note in p.get("notes", []):
            lines.append(f"note ({p['name']}): {note}")
    return "\n".join(lines)


def _network_line(n: dict) -> str:
    if n["model"] == "graph":
        return (f"graph: {n['fabric']} fabric, {n['planes']} plane(s), {n['tiers']} tiers, "
                f"{n['nic_GBps']:.0f} GB/s NIC, oversubscription {n['oversubscription']:g}:1")
    return f"alpha-beta: NVLink {n['nvlink_GBps']:.0f} GB/s, IB {n['ib_GBps_per_gpu']:.0f} GB/s per GPU"


def _routing_line(r: dict) -> str:
    if "imbalance" not in r:
        return r["model"]
    line = (f"{r['model']}: busiest EP rank {r['imbalance']:.2f}x the mean, "
            f"{r['mean_nodes_per_token']:.2f} nodes per token")
    if "capacity_factor" in r:
        line += (f"; capacity factor {r['capacity_factor']:g}: the busiest rank keeps "
                 f"{min(r['imbalance'], r['capacity_factor']):.2f}x, {r['dropped_share']:.2%} of routed rows dropped")
    if "gpu_hours_balanced" in r:
        line += f"; balanced routing would take {r['gpu_hours_balanced'] / 1e6:.3f}M GPU-hours"
    return line


def _gpu_hours_rows(d: dict) -> list[tuple[str, str]]:
    """GPU-hours, and in a calibration case what it rests on beside the hardware-only figure; the published
    figure when the run is the plan's own."""
    cal, figure = d["calibration"], f"{d['gpu_hours'] / 1e6:.3f}M"
    if not d.get("calibration_case"):
        rows = [("GPU-hours", figure)]
    else:
        basis = f"{cal['basis']}: " if cal.get("basis") else ""
        rows = [("GPU-hours", f"{figure}  ({cal['name']}: {basis}a calibration case, not a prediction)")]
        hw = d.get("hardware_only")
        if hw:
            rest = f": {hw['basis']}" if hw.get("basis") else ""
            rows.append(("hardware-only", f"{hw['gpu_hours'] / 1e6:.3f}M  ({hw['profile']}{rest}; nothing measured "
                                          f"on this model)"))
    pub = d.get("published")
    if pub:
        ours = [f"{cal['name']} {d['gpu_hours'] / pub['gpu_hours'] - 1:+.1%}"]
        if d.get("calibration_case") and d.get("hardware_only"):
            ours.append(f"hardware-only {d['hardware_only']['gpu_hours'] / pub['gpu_hours'] - 1:+.1%}")
        source = f"  ({pub['source']})" if pub.get("source") else ""
        rows.append(("published", f"{pub['gpu_hours'] / 1e6:.3f}M  {', '.join(ours)}{source}"))
    return rows


def render_estimate(d: dict) -> str:
    lay = d["layout"]
    cal = d["calibration"]
    mfu_fp8 = f" ({d['mfu_fp8']:.1%} of FP8)" if d["mfu_fp8"] is not None else ""
    rows = [
        ("model", f"{d['model']}: {_si(d['params_total'])} parameters, {_si(d['params_active'])} active per token"),
        ("cluster", f"{d['gpus']} x {d['gpu']}"),
        ("layout", f"PP{lay['pp']} EP{lay['ep']} TP{lay['tp']} DP{lay['dp']}, {lay['schedule']}"
                   f"{' v=' + str(lay['vpp']) if lay['schedule'] == 'interleaved-1f1b' else ''}, "
                   f"ZeRO-{lay['zero_stage']}, {d['precision'].upper()}, {lay['comm_sms']} SMs for communication"
                   + (f", CP{lay['cp']}" if lay.get("cp", 1) > 1 else "")
                   + (f", placement {lay['order']}" if lay.get("order", "tp-cp-dp-pp") != "tp-cp-dp-pp" else "")),
        ("layers per stage", " ".join(str(x) for x in lay["stage_layers"])),
        ("run", f"{_si(d['tokens'])} tokens at sequence length {d['seq_len']}, {len(d['segments'])} batch segments"),
        ("step time", f"{d['step_time_s']:.2f} s at batch {d['segments'][-1]['batch_simulated']}"),
        ("tokens/s per GPU", f"{d['tokens_per_s_per_gpu']:,.0f} (run average)"),
        ("MFU", f"{d['mfu_bf16']:.1%} of BF16 peak{mfu_fp8}"),
        ("pipeline bubble", f"{d['bubble_share']:.1%} of rank time, of which {d['imbalance_share']:.1%} uneven "
                            f"work across ranks"),
        ("exposed comm", f"{d['exposed_comm_share']:.1%} of rank time (EP/TP waits + data-parallel tail)"),
        ("memory per GPU", _memory_line(d.get("memory"))),
        ("wall clock", f"{d['wall_clock_days']:.1f} days"),
        *_gpu_hours_rows(d),
        ("cost", f"${d['cost_usd'] / 1e6:.3f}M at ${d['price_per_gpu_hour']:g}/GPU-hour"
                 + (f"  ({d['price_source']})" if d.get("price_source") else "")),
        *([("energy", _energy_line(d["energy"]))] if "energy" in d else []),
        ("calibration", f"{cal['name']} ({cal['source']}, {cal['device']})"),
        ("network model", _network_line(d["network"])),
        ("MoE routing", _routing_line(d["routing"])),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in d["notes"]]
    lines += [f"warning: {w}" for w in d.get("warnings", [])]
    if "schedules" in d:
        lines += ["", f"{'schedule':<18}{'step time':>10}{'bubble':>8}{'MFU':>7}{'GPU-hours':>11}{'days':>7}"]
        for name, r in d["schedules"].items():
            if "error" in r:
                lines.append(f"{name:<18}  {r['error']}")
                continue
            lines.append(f"{name:<18}{r['step_time_s']:>9.2f}s{r['bubble_share']:>8.1%}{r['mfu_bf16']:>7.1%}"
                         f"{r['gpu_hours'] / 1e6:>10.3f}M{r['wall_clock_days']:>7.1f}")
    return "\n".join(lines)
