"""Launch overheads measured on a CUDA GPU: the profile's ``launch`` section (read by hwmodels/launch.py).

Three figures, from `n` back-to-back trivial kernels (``x.add_(1.0)`` on a one-element tensor: one elementwise
kernel each, nothing to compute) launched from PyTorch eager on one stream:

- ``eager_dispatch_us``: host seconds per launch, ``time.perf_counter`` around the loop of `n` launches divided
  by `n`, while the GPU is held busy by a spin kernel (``torch.cuda._sleep``) queued first, so no launch waits
  for the GPU (the launch queue holds about a thousand entries; `n` stays below that).
- ``launch_interval_us``: GPU start-to-start interval of those kernels with the host ahead: CUDA events
  recorded before the first and after the last of the `n` kernels (all queued behind the spin kernel),
  elapsed / n. It is one kernel's own duration plus the gap.
- ``kernel_gap_us``: the idle time between one kernel's end and the next one's start, as data/launch.toml's
  figure was read off DeepSeek's trace: the same launches recorded by the PyTorch profiler (Kineto/CUPTI kernel
  timestamps), the median of next.start - prev.end. Where the profiler gives no kernel records, the interval
  above stands in as an upper bound (said so in the provenance).

Each figure is the median of `rounds` rounds. CPU: not measured (there is no GPU-side launch), said so.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import torch

SPIN_CYCLES = 50_000_000  # torch.cuda._sleep: ~25-30 ms at 1.7-2 GHz SM clocks; longer than n launches on the host


def _issue(x: torch.Tensor, n: int) -> float:
    """Host seconds to launch n trivial kernels."""
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1.0)
    return time.perf_counter() - t0


def _round(x: torch.Tensor, n: int) -> tuple[float, float]:
    """(host seconds per launch, GPU start-to-start seconds per kernel) of one round, the host ahead."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(SPIN_CYCLES)
    start.record()
    host = _issue(x, n)
    end.record()
    torch.cuda.synchronize()
    return host / n, start.elapsed_time(end) / 1e3 / n


def _kernel_gaps(x: torch.Tensor, n: int) -> list[float]:
    """Seconds between consecutive trivial kernels (end to next start) as the profiler records them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda._sleep(SPIN_CYCLES)
        _issue(x, n)
        torch.cuda.synchronize()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    kernels = sorted((float(e["ts"]), float(e.get("dur", 0.0))) for e in events
                     if e.get("cat") == "kernel" and "spin" not in str(e.get("name", "")).lower()
                     and "sleep" not in str(e.get("name", "")).lower())  # the spin kernel itself left out
    return [(b[0] - (a[0] + a[1])) * 1e-6 for a, b in zip(kernels, kernels[1:])]


def bench_launch(device: str, quick: bool) -> tuple[dict | None, list[str]]:
    """(the ``launch`` section or None, notes)."""
    if device != "cuda":
        return None, ["launch: not measured: needs a CUDA GPU (the GPU-side gap and cudaLaunchKernel host time); "
                      "data/launch.toml's figures hold"]
    n, rounds = (200, 3) if quick else (500, 10)
    x = torch.zeros(1, device="cuda")
    _round(x, n)  # warm-up: the add kernel loaded, the allocator and the event pool primed
    host, interval = zip(*(_round(x, n) for _ in range(rounds)))
    section = {"eager_dispatch_us": statistics.median(host) * 1e6,
               "launch_interval_us": statistics.median(interval) * 1e6}
    how = "profiler (Kineto/CUPTI) kernel timestamps, median of end-to-next-start"
    try:
        gaps = _kernel_gaps(x, n)
    except Exception as e:  # noqa: BLE001 (any profiler failure leaves the upper bound)
        gaps, how = [], f"profiler failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if len(gaps) >= n // 2:
        section["kernel_gap_us"] = max(0.0, statistics.median(gaps) * 1e6)
    else:
        section["kernel_gap_us"] = section["launch_interval_us"]
        how += f"; {len(gaps)} kernel gaps recorded: the start-to-start interval stands in (an upper bound)"
    section["provenance"] = (f"validation/bench_launch.py: {n} back-to-back x.add_(1) kernels (one-element "
                             f"tensor) from PyTorch eager behind a torch.cuda._sleep spin kernel, median of "
                             f"{rounds} rounds; host: time.perf_counter per launch; interval: CUDA events / n; "
                             f"gap: {how}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    return section, []
