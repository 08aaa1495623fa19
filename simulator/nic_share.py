"""A rank's network interface shared by its pipeline sends and its data-parallel gradient buckets.

Pipeline sends and gradient buckets are issued on different communicators and streams (Megatron-Core: the
pipeline's P2P group and the data-parallel group), so neither waits for the other to finish: each kind is a FIFO
of its own, and while both have an item in flight the interface serves them at once with equal shares
(processor sharing between the two kinds; Assumption: NCCL's channels split the link evenly between two
concurrent collectives). An item also shares with the all-to-alls of the instruction running when it starts, as
a plain send does (`simulator.engine`): it is stretched by 1 / (1 - rho / 2) from then on.

Used by `simulator.engine.run_pipeline` only on ranks that have gradient buckets, so every other rank keeps the
engine's one FIFO and its results. The buckets' NCCL channels also take SMs from the backward they fly beside:
`stretch_under_buckets` extends it accordingly (`simulator.nccl_sms.bucket_fraction`).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import simpy

KINDS = ("send", "dp")


class SharedInterface:
    """Two FIFOs (pipeline sends, gradient buckets) served together with equal shares of one interface."""

    def __init__(self, env: simpy.Environment, stretch: Callable[[], float]):
        self.env, self.stretch = env, stretch  # stretch(): 1 / (1 - rho / 2) of the instruction running now
        self.queues = {k: deque() for k in KINDS}
        self.heads: dict[str, list] = {}       # kind -> [work left at full rate (s), stretch, event, work]
        self.last = env.now
        self.version = 0
        self.busy = 0.0                        # seconds the interface carried something
        self.carried = 0.0                     # work completed, seconds at full rate (what was sent)
        self.dp_busy = 0.0                     # seconds a gradient bucket was in flight
        self.idle_waiters: list[simpy.Event] = []

    def submit(self, kind: str, work: float, event: simpy.Event) -> None:
        self._advance()
        self.queues[kind].append((work, event))
        self._start_heads()
        self._reschedule()

    def when_idle(self, event: simpy.Event) -> None:
        """Succeed `event` once everything submitted so far has left."""
        if not self.heads and not any(self.queues.values()):
            event.succeed()
        else:
            self.idle_waiters.append(event)

    def dp_time(self) -> float:
        """Seconds a gradient bucket has been in flight up to now."""
        self._advance()
        return self.dp_busy

    def _share(self) -> float:
        return 1.0 / len(self.heads) if self.heads else 0.0

    def _advance(self) -> None:
        elapsed, self.last = self.env.now - self.last, self.env.now
        if elapsed <= 0 or not self.heads:
            return
        share = self._share()
        self.busy += elapsed
        if "dp" in self.heads:
            self.dp_busy += elapsed
        for head in self.heads.values():
            head[0] -= elapsed * share / head[1]

    def _start_heads(self) -> None:
        for kind in KINDS:
            if kind not in self.heads and self.queues[kind]:
                work, event = self.queues[kind].popleft()
                self.heads[kind] = [work, self.stretch(), event, work]

    def _reschedule(self) -> None:
        self.version += 1
        if not self.heads:
            waiters, self.idle_waiters = self.idle_waiters, []
            for event in waiters:
                event.succeed()
            return
        share = self._share()
        wait = min(max(0.0, head[0]) * head[1] / share for head in self.heads.values())
        version = self.version
        self.env.timeout(wait).callbacks.append(lambda _: self._tick(version))

    def _tick(self, version: int) -> None:
        if version != self.version:  # a later submission rescheduled
            return
        self._advance()
        tolerance = 1e-12 * max(1.0, self.env.now)
        for kind in [k for k, head in self.heads.items() if head[0] * head[1] <= tolerance]:
            _, _, event, work = self.heads.pop(kind)
            self.carried += work
            event.succeed()
        self._start_heads()
        self._reschedule()


def stretch_under_buckets(env: simpy.Environment, nic: SharedInterface, fraction: float, since: float):
    """Extend the instruction running now (a simpy sub-process: ``yield from``) by `fraction` of the time gradient
    buckets have been in flight since the interface's `since` (``dp_time()`` at the instruction's start): the
    buckets' NCCL channels hold SMs (`simulator.nccl_sms.bucket_fraction`), so the compute beside them runs
    slower, and the extension is itself overlapped by buckets still in flight, hence the loop (a geometric series
    of ratio `fraction` < 1)."""
    charged = 0.0
    while fraction > 0.0:
        owed = fraction * (nic.dp_time() - since)
        if owed - charged <= 1e-12 * max(1.0, env.now):
            return
        yield env.timeout(owed - charged)
        charged = owed
