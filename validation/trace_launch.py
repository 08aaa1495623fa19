"""Kernels per op: how many GPU kernels a traced software stack launched for each op of ours, by op kind.

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
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

from gpuhours.hwmodels.launch import LaunchModel
from gpuhours.workloads.ops import Op


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


def launch_section(per_op: dict[str, float], record: dict, where: str) -> dict:
    """The profile's ``launch`` section for `per_op` (None-free), its provenance naming `where` was counted."""
    unmatched = record["unmatched_kernels"]
    text = (f"{where}: kernels per op of ours by kind = the trace's kernels per class, shared among the kinds with "
            f"ops in that class by data/launch.toml's counts, over our ops of the same work "
            f"(validation/trace_launch.py): measured {sum(record['measured_kernels'].values()):.1f} kernels "
            f"against the {sum(record['modelled_kernels'].values()):.1f} that data/launch.toml gives our ops")
    if unmatched:
        text += "; left out, no op of ours in their class: " + ", ".join(f"{c} {n:g}" for c, n in unmatched.items())
    return {"kernels_per_op": per_op, "provenance": text}
