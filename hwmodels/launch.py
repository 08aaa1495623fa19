"""Per-kernel launch overhead and host dispatch: what a stream of kernels costs beyond the kernels themselves.

Two effects, both from `data/launch.toml` (sources there):

- GPU side. Back-to-back kernels on one stream leave a gap between one's end and the next's start even when the
  host has queued them long before (DeepSeek's trace: 2 us). An op of k kernels whose roofline time is t occupies
  its stream for
        t + k * gap
  so an op whose kernels are shorter than the gap takes about k x gap, the floor of k back-to-back launches,
  and a long GEMM changes by 2 us in milliseconds. Under a trace calibration the kernel times are measured
  (their own floor is in them); the gap between kernels is not, so adding it counts nothing twice.
- Host side. Where the host launches every kernel from PyTorch eager (`host_dispatch = "eager"`), it spends
  `eager_dispatch_us` of CPU per kernel. The host runs ahead of the GPU within an instruction (the kernels of
  one forward, backward or F&B pair are issued without waiting), so an instruction with GPU span S and n
  kernels takes
        max(S, n * dispatch)
  (the GPU cannot end before the host has launched the last kernel; with long kernels the host is far ahead
  and S holds). Assumption: the host does not run ahead across instructions (pipeline receives and FSDP's
  gathers make it wait at their boundaries). Under CUDA graphs (`"graphs"`) the host term is none; `"none"`
  drops both effects (the model before issue 15, for comparisons).

A calibration profile with a ``launch`` section (measured by ``gpuhours calibrate bench``, validation/bench_launch.py;
schema in hwmodels/profile_sections.py) replaces ``kernel_gap_us`` and/or ``eager_dispatch_us`` with its own
figures (`LaunchModel.for_profile`). A profile calibrated from a trace may also carry ``kernels_per_op``: how many
kernels the traced software stack launched per op of ours, by op kind (validation/trace_launch.py counts them; an
eager stack runs bookkeeping kernels -- fills, index and copy kernels -- beside the fused ones we decompose). It
replaces the kind's count of data/launch.toml for the gap and the host terms; the CUDA-graphs figure stays
data/launch.toml's.

Which stacks launch eagerly (`OpOptions.host_dispatch`): every framework in the accuracy suite does without
CUDA graphs -- Megatron-LM with Transformer Engine, DeepSeek's own (its trace shows the host 16 ms ahead),
torchtitan with or without torch.compile's default mode (Inductor's kernels are launched from Python too) -- so
"eager" is the default; with their long fused kernels the host term binds only where kernels are short.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from gpuhours.workloads.ops import HOST_DISPATCH, Op

DATA = Path(__file__).resolve().parent / "data" / "launch.toml"


@dataclass(frozen=True)
class LaunchModel:
    """Launch overheads (seconds) and kernels per op kind (`data/launch.toml`)."""

    kernel_gap_s: float          # GPU-side gap between back-to-back kernels of one stream
    eager_dispatch_s: float      # host CPU time per kernel launched from PyTorch eager
    graphs_dispatch_s: float     # host time per kernel under CUDA graphs
    kernels: tuple[tuple[str, int], ...]  # (op kind or "attention_forward"/"attention_backward", kernels)
    measured_kernels: tuple[tuple[str, float], ...] = ()  # a profile's kernels per op by kind (replace `kernels`)

    def __post_init__(self):
        for name in ("kernel_gap_s", "eager_dispatch_s", "graphs_dispatch_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{name} must be a number of seconds in [0, 1), got {v!r}")
        for kind, n in self.kernels:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"kernels.{kind} must be a whole number >= 1, got {n!r}")
        table = dict(self.kernels)
        for kind, n in self.measured_kernels:
            if kind not in table:
                raise ValueError(f"kernels_per_op: unknown kind {kind!r}; allowed: {', '.join(sorted(table))}")
            if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 < n < 1e4:
                raise ValueError(f"kernels_per_op.{kind} must be a number of kernels in (0, 1e4), got {n!r}")

    @staticmethod
    @lru_cache(maxsize=1)
    def load() -> "LaunchModel":
        doc = tomllib.loads(DATA.read_text())
        return LaunchModel(doc["gpu"]["kernel_gap_us"] * 1e-6, doc["host"]["eager_dispatch_us"] * 1e-6,
                           doc["host"]["graphs_dispatch_us"] * 1e-6, tuple(sorted(doc["kernels"].items())))

    @staticmethod
    def for_profile(profile) -> "LaunchModel":
        """data/launch.toml's model with the profile's measured ``launch`` figures in place of its own (the
        bundled figures where the profile has none)."""
        base = LaunchModel.load()
        measured = getattr(profile, "launch", None)
        if measured is None:
            return base
        out = base
        if measured.kernel_gap_us is not None:
            out = replace(out, kernel_gap_s=measured.kernel_gap_us * 1e-6)
        if measured.eager_dispatch_us is not None:
            out = replace(out, eager_dispatch_s=measured.eager_dispatch_us * 1e-6)
        if measured.kernels_per_op:
            out = replace(out, measured_kernels=tuple(sorted(measured.kernels_per_op)))
        return out

    def kinds(self) -> tuple[str, ...]:
        """The op kinds with a kernel count (data/launch.toml [kernels])."""
        return tuple(k for k, _ in self.kernels)

    def kind_of(self, op: Op) -> str | None:
        """`op`'s key in the kernel counts: its kind, attention by direction; None for a collective."""
        if op.kind == "collective":
            return None
        key = op.kind
        if op.kind == "attention":
            key = "attention_forward" if op.phase == "F" else "attention_backward"
        if key not in dict(self.kernels):
            raise ValueError(f"op {op.name!r}: kind {op.kind!r} has no kernel count in {DATA.name}; allowed kinds: "
                             f"{', '.join(self.kinds())}")
        return key

    def kernel_count(self, op: Op, measured: bool = True) -> float:
        """GPU kernels `op` launches: per kind, attention by direction (collectives: 0, their network model
        prices their own latency); the profile's measured kernels per op of that kind where it has one (a mean:
        not a whole number), data/launch.toml's count otherwise (always, with ``measured=False``)."""
        key = self.kind_of(op)
        if key is None:
            return 0
        if measured:
            got = dict(self.measured_kernels).get(key)
            if got is not None:
                return got
        return dict(self.kernels)[key]

    def op_time(self, gpu_seconds: float, kernels: float, host_dispatch: str = "eager") -> float:
        """Stream time of an op of `kernels` kernels whose roofline time is `gpu_seconds`: t + k x gap (t under
        host_dispatch "none", the model without launch overheads)."""
        self.dispatch_s(host_dispatch)  # refuses unknown values
        return gpu_seconds if host_dispatch == "none" else gpu_seconds + kernels * self.kernel_gap_s

    def dispatch_s(self, host_dispatch: str) -> float:
        """Host seconds per kernel under `host_dispatch` (HOST_DISPATCH)."""
        if host_dispatch not in HOST_DISPATCH:
            raise ValueError(f"host_dispatch must be one of {', '.join(HOST_DISPATCH)}; got {host_dispatch!r}")
        return {"eager": self.eager_dispatch_s, "graphs": self.graphs_dispatch_s}.get(host_dispatch, 0.0)

    def instruction_time(self, gpu_span: float, kernels: float, host_dispatch: str) -> float:
        """An instruction's time when its host issues `kernels` kernels: max(GPU span, kernels x dispatch)."""
        return max(gpu_span, kernels * self.dispatch_s(host_dispatch))
