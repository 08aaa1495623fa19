"""Collectives within one node: all-reduce and all-gather bus bandwidth over message sizes, the profile's
``comm.nccl_intra_node`` (schema: hwmodels/profile_sections.py).

One process per visible GPU (``torch.multiprocessing.spawn``, world size = ``torch.cuda.device_count()``),
``torch.distributed`` with the NCCL backend over a TCP rendezvous on 127.0.0.1. For each message size S (bytes
of the full BF16 buffer) every rank times ``iters`` back-to-back calls after ``warmup`` with CUDA events (the
host enqueues them all; one synchronise at the end), the per-call time is the slowest rank's (an all-reduce of
the times with MAX), and, as nccl-tests defines them (NVIDIA/nccl-tests doc/PERFORMANCE.md):

    algbw = S / t;   all-reduce busbw = algbw * 2 (n - 1) / n;   all-gather busbw = algbw * (n - 1) / n

(for all-gather S is the gathered output, each rank contributing S / n). Bus bandwidth is the figure to set
beside the link's bandwidth (NVLink within the node). With fewer than two GPUs nothing is measured and the
section says so ("not measured: 1 GPU"); any failure of the spawned run is recorded the same way, so the rest
of the bench goes on. `run_rank` also runs with the gloo backend on CPU (tests exercise the harness that way).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
import time

import torch

SIZES_FULL = tuple(2**p for p in range(20, 31, 2))   # 1 MiB .. 1 GiB by x4: latency- to bandwidth-bound
SIZES_QUICK = (2**20, 2**24)                          # 1 MiB, 16 MiB
ELEMENT = torch.bfloat16


def bus_factor(collective: str, world: int) -> float:
    """busbw / algbw (nccl-tests PERFORMANCE.md)."""
    return {"all_reduce": 2 * (world - 1) / world, "all_gather": (world - 1) / world}[collective]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_calls(fn, device: str, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def run_rank(rank: int, world: int, port: int, backend: str, sizes: tuple, warmup: int, iters: int,
             out_path: str) -> None:
    """One rank of the measurement (the target of ``torch.multiprocessing.spawn``); rank 0 writes the rows."""
    import torch.distributed as dist

    device = "cuda" if backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        rows = {"all_reduce": [], "all_gather": []}
        for size in sizes:
            count = size // ELEMENT.itemsize // world * world  # divisible among the ranks
            buf = torch.randn(count, device=device).to(ELEMENT)
            shard = buf[: count // world].clone()
            if backend == "nccl":
                gather = lambda: dist.all_gather_into_tensor(buf, shard)  # noqa: E731
            else:  # gloo: the list form
                parts = list(buf.chunk(world))
                gather = lambda: dist.all_gather(parts, shard)  # noqa: E731
            for coll, fn in (("all_reduce", lambda: dist.all_reduce(buf)), ("all_gather", gather)):
                dist.barrier()
                t = torch.tensor([_time_calls(fn, device, warmup, iters)], device=device, dtype=torch.float64)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                nbytes = count * ELEMENT.itemsize
                algbw = nbytes / float(t) / 1e9
                rows[coll].append({"bytes": nbytes, "time_us": float(t) * 1e6, "algbw_gbps": algbw,
                                   "busbw_gbps": algbw * bus_factor(coll, world)})
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def measure(world: int, backend: str, sizes: tuple, warmup: int, iters: int) -> dict:
    """Spawn `world` ranks and return {collective: rows}."""
    import torch.multiprocessing as mp

    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        mp.spawn(run_rank, args=(world, _free_port(), backend, sizes, warmup, iters, out), nprocs=world, join=True)
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def bench_nccl(device: str, quick: bool) -> tuple[dict, list[str]]:
    """(``comm.nccl_intra_node``, notes)."""
    if device != "cuda":
        why = f"device {device}: NCCL needs CUDA GPUs"
        return {"not_measured": why}, [f"comm.nccl_intra_node: not measured: {why}"]
    import torch.distributed as dist

    world = torch.cuda.device_count()
    if world < 2:
        return {"not_measured": f"{world} GPU"}, [f"comm.nccl_intra_node: not measured: {world} GPU"]
    if not (dist.is_available() and dist.is_nccl_available()):
        why = f"torch {torch.__version__} built without NCCL"
        return {"not_measured": why}, [f"comm.nccl_intra_node: not measured: {why}"]
    sizes, warmup, iters = (SIZES_QUICK, 2, 5) if quick else (SIZES_FULL, 5, 20)
    try:
        rows = measure(world, "nccl", sizes, warmup, iters)
    except Exception as e:  # noqa: BLE001 (a failed spawn must not lose the rest of the bench)
        why = f"the NCCL run failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        return {"not_measured": why}, [f"comm.nccl_intra_node: not measured: {why}"]
    peak = {c: max(r["busbw_gbps"] for r in rows[c]) for c in rows}
    v = torch.cuda.nccl.version()
    prov = (f"validation/bench_nccl.py: torch.distributed NCCL {'.'.join(map(str, v)) if isinstance(v, tuple) else v}, "
            f"{world} ranks (one per GPU, mp.spawn), BF16 buffers, {iters} calls after {warmup} warm-up per size, "
            f"CUDA events, slowest rank's time; busbw per nccl-tests PERFORMANCE.md")
    notes = [f"comm.nccl_intra_node: {world} GPUs, highest bus bandwidth all-reduce {peak['all_reduce']:.4g} GB/s, "
             f"all-gather {peak['all_gather']:.4g} GB/s (sizes {min(sizes)}..{max(sizes)} bytes)"]
    return {"world_size": world, "backend": "nccl", "dtype": "bf16", **rows, "provenance": prov}, notes
