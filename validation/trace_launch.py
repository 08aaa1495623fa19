"""What a traced software stack's launches cost: the kernels it ran per op of ours, and the gap each one leaves.

Why it matters: every kernel pays its stream's launch gap (hwmodels/launch.py; 2 us in DeepSeek's trace). An
eager stack launches small bookkeeping kernels (fills, index and copy kernels, per-tensor casts, reductions)
beside the fused kernels our op decomposition describes. A trace calibration already holds their *durations*
(the class times it fits include them), but not their *gaps*: DeepSeek's F&B pair runs 943 kernels on its
compute streams where our ops of that pair launch 452, so about 1 ms of its 129 ms span was unexplained.

Counting (`kernels_per_op`): per measured kernel class c (the classes the calibration matches to our ops), the
trace's kernel count N_c is shared among the op kinds (data/launch.toml's [kernels] keys) that have ops in c,
in proportion to the kernels data/launch.toml gives those ops; a kind's kernels per op is its shares summed
over the classes, over its number of ops. A class the trace runs but none of our ops is in is reported as
unmatched, its kernels left out (not spread over the others). The profile's ``launch.kernels_per_op`` then
replaces the kind's count of data/launch.toml for that profile (`LaunchModel.for_profile`).

The gap itself (`queued_gaps`, `gap_figure`): the idle time a stream leaves before a kernel that was already
queued, its launch call having started before the stream's previous kernel ended (so the host is not what it
waited for), the median over the compute streams' kernels -- data/launch.toml's 2 us was read off DeepSeek's
trace that way by hand. A kernel waiting on another stream's event is queued too; the median keeps those
few long waits out. The profile's ``launch.kernel_gap_us`` then replaces data/launch.toml's.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Callable, Iterable

from gpuhours.hwmodels.launch import LaunchModel
from gpuhours.workloads.ops import Op

# Assumption: fewer queued gaps than this say too little of a stack's launch gap; the bundled one stays.
MIN_GAPS = 20
TIME_EPS = 1e-9  # s: below the profiler's nanosecond resolution


def queued_gaps(kernels: Iterable[tuple[int, float, float, float | None]]) -> list[float]:
    """Idle seconds before each queued kernel: `kernels` as (stream, start, end, launch) in seconds, launch the
    start of the kernel's launch call (None where unknown: that kernel is left out)."""
    by_stream: dict[int, list[tuple[float, float, float | None]]] = defaultdict(list)
    for stream, start, end, launch in kernels:
        by_stream[stream].append((start, end, launch))
    gaps = []
    for ks in by_stream.values():
        ks.sort(key=lambda k: k[0])
        for (_, prev_end, _), (start, _, launch) in zip(ks, ks[1:]):
            # a stream runs its kernels one after another: a start a rounding error before the previous end
            # (microsecond timestamps turned into seconds) is back to back
            if launch is not None and launch < prev_end <= start + TIME_EPS:
                gaps.append(max(0.0, start - prev_end))
    return gaps


def gap_figure(gaps: list[float]) -> float | None:
    """The median queued gap in microseconds (None below MIN_GAPS gaps)."""
    if len(gaps) < MIN_GAPS:
        return None
    return round(statistics.median(gaps) * 1e6, 4)


def kernels_per_op(measured: dict[str, float], ops: Iterable[tuple[Op, float]], class_of: Callable[[Op], str],
                   launch: LaunchModel | None = None) -> tuple[dict[str, float], dict]:
    """({kind: kernels per op}, record) from `measured` kernels per class and our `ops` ((op, times it runs))
    of the same work; `class_of` names the class an op's kernels are measured in. Kinds whose ops' classes
    the trace has no kernel of are left out (no figure: the bundled count stays)."""
    launch = launch or LaunchModel.load()
    ops_of: dict[str, float] = defaultdict(float)                                # kind -> ops
    kernels_in: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # class -> kind -> kernels
    for op, n in ops:
        kind = launch.kind_of(op)
        if kind is None:
            continue
        ops_of[kind] += n
        kernels_in[class_of(op)][kind] += n * launch.kernel_count(op, measured=False)
    shares: dict[str, float] = defaultdict(float)
    for c, by_kind in kernels_in.items():
        total = sum(by_kind.values())
        for kind, k in by_kind.items():
            shares[kind] += measured.get(c, 0.0) * k / total
    per_op = {kind: float(f"{shares[kind] / ops_of[kind]:.6g}") for kind in sorted(ops_of)
              if shares[kind] > 0 and ops_of[kind] > 0}
    record = {"measured_kernels": {c: round(n, 4) for c, n in measured.items() if c in kernels_in},
              "modelled_kernels": {c: round(sum(d.values()), 4) for c, d in kernels_in.items()},
              "modelled_ops": {k: round(n, 4) for k, n in sorted(ops_of.items())},
              "unmatched_kernels": {c: round(n, 4) for c, n in measured.items() if c not in kernels_in and n > 0}}
    return per_op, record


def launch_section(per_op: dict[str, float], record: dict, where: str, gaps: list[float] | None = None) -> dict:
    """The profile's ``launch`` section for `per_op` and, with MIN_GAPS or more `gaps`, their median as
    ``kernel_gap_us``; its provenance names `where` they were counted."""
    unmatched = record["unmatched_kernels"]
    gap = gap_figure(gaps or [])
    text = (f"{where}: kernels per op of ours by kind = the trace's kernels per class, shared among the kinds with "
            f"ops in that class by data/launch.toml's counts, over our ops of the same work "
            f"(validation/trace_launch.py): measured {sum(record['measured_kernels'].values()):.1f} kernels "
            f"against the {sum(record['modelled_kernels'].values()):.1f} that data/launch.toml gives our ops")
    if unmatched:
        text += "; left out, no op of ours in their class: " + ", ".join(f"{c} {n:g}" for c, n in unmatched.items())
    if gap is None:
        return {"kernels_per_op": per_op, "provenance": text + f"; kernel gap: fewer than {MIN_GAPS} queued kernels, "
                                                               f"data/launch.toml's stays"}
    text += (f"; kernel_gap_us: the median idle time before a kernel queued when its stream's previous kernel "
             f"ended, over {len(gaps)} such compute kernels")
    return {"kernel_gap_us": gap, "kernels_per_op": per_op, "provenance": text}
