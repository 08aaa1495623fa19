"""The records of a layout search (`simulator.planner`): a candidate layout, its simulated row, and the result with
its table, each with its JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    tp: int
    pp: int
    cp: int
    ep: int
    schedule: str
    micro_batch_size: int
    recompute: str = "none"
    zero_stage: int = 1
    etp: int = 1  # expert tensor parallelism (MoE only)
    comm_sms: int | None = None  # SMs for DeepEP under an overlapping schedule; None: the saturating 20

    @property
    def overlaps_comm(self) -> bool:
        """DualPipe / DualPipeV with expert parallelism: the all-to-alls run beside compute on comm_sms SMs."""
        return self.schedule in ("dualpipe", "dualpipev") and self.ep > 1

    @property
    def label(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}"] + ([f"CP{self.cp}"] if self.cp > 1 else [])
        parts += [f"EP{self.ep}"] if self.ep > 1 else []
        parts += [f"ETP{self.etp}"] if self.etp > 1 else []
        parts += [self.schedule, f"mbs{self.micro_batch_size}", f"recompute={self.recompute}",
                  f"ZeRO-{self.zero_stage}"]
        return " ".join(parts + ([f"comm_sms={self.comm_sms}"] if self.comm_sms is not None else []))


@dataclass(frozen=True)
class PlanRow:
    candidate: Candidate
    layout: str
    dp: int
    fits: bool
    step_time_s: float
    days: float
    gpu_hours: float
    cost_usd: float
    memory_gib: float
    capacity_gib: float
    mfu: float
    bubble_share: float
    exposed_comm_share: float
    microbatches: int
    score_s: float            # the cheap ranking score (seconds per step)
    seconds: float            # wall time of its simulation
    reason: str = ""          # why it loses to the best (empty for the best)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "candidate"}
        d["candidate"] = dict(self.candidate.__dict__)
        return d


@dataclass(frozen=True)
class PlanResult:
    model: str
    gpu: str
    gpus: int
    seq_len: int
    tokens: float
    batch: int
    batch_note: str
    goal: str
    max_days: float | None
    precision: str
    best: PlanRow | None
    rows: tuple[PlanRow, ...]          # every simulated candidate, best first
    enumerated: int
    pruned: dict[str, int]
    simulated: int
    wall_s: float
    notes: tuple[str, ...] = field(default=())
    budget: float | None = None            # dollars: dearer layouts are refused

    def top(self, n: int = 5) -> tuple[PlanRow, ...]:
        return self.rows[:n]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("model", "gpu", "gpus", "seq_len", "tokens", "batch", "batch_note",
                                              "goal", "max_days", "budget", "precision", "enumerated", "pruned",
                                              "simulated", "wall_s")} | {
            "best": self.best.to_dict() if self.best else None, "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes)}

    def lines(self, n: int = 8) -> list[str]:
        out = [f"plan        {self.model} on {self.gpus} x {self.gpu}, seq {self.seq_len}, {self.tokens:.3g} tokens, "
               f"batch {self.batch} ({self.batch_note}), {self.precision}, goal {self.goal}"
               + (f", max {self.max_days:g} days" if self.max_days else "")
               + (f", budget ${self.budget:,.0f}" if self.budget else ""),
               f"candidates  {self.enumerated} enumerated; pruned " +
               ", ".join(f"{k} {v}" for k, v in self.pruned.items()) + f"; {self.simulated} simulated "
               f"in {self.wall_s:.1f} s"]
        if self.best is None:
            limits = [name for name, v in (("max_days", self.max_days), ("budget", self.budget)) if v]
            out.append("best        none: no simulated layout fits" + (f" within {' and '.join(limits)}" if limits else ""))
        head = f"{'#':>2}  {'layout':<78} {'step s':>7} {'days':>7} {'GPU-h':>9} {'cost $':>9} {'GiB':>11} " \
               f"{'MFU':>6}  why not"
        out += [head, "-" * len(head)]
        shown = [(i, r) for i, r in enumerate(self.rows, 1) if i <= n or "[plan " in r.layout]  # and the plan's own
        for i, r in shown:
            out.append(f"{i:>2}  {r.layout:<78} {r.step_time_s:>7.3g} {r.days:>7.4g} {_human(r.gpu_hours):>9} "
                       f"{_human(r.cost_usd):>9} {r.memory_gib:>5.1f}/{r.capacity_gib:<5.0f} {r.mfu:>6.1%}  "
                       f"{r.reason or 'best'}")
        return out + [f"note: {n}" for n in self.notes]


# -- enumeration ---------------------------------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{max(0.0, x):.1%}"


def _human(x: float) -> str:
    return f"{x / 1e6:.3f}M" if x >= 1e6 else f"{x / 1e3:.1f}K" if x >= 1e3 else f"{x:.2f}"
