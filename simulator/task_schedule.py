"""One instruction's segments as tasks on a compute and a communication stream, list-scheduled (`simulator.chunks`
builds the tasks; `simulator.nccl_sms` schedules them when NCCL's channels take SMs from compute).

Each stream runs one task at a time; when it is free it starts the ready task that comes first in the
instruction's launch order (a GPU running kernels launched on two streams with events between them).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from gpuhours.simulator.engine import InstructionProfile
from gpuhours.simulator.timeline import Span


@dataclass
class _Task:
    name: str
    stream: str
    duration: float
    deps: tuple[int, ...]
    priority: tuple
    layer: int | None
    kind: str
    uses_nic: bool = False  # a collective whose group spans nodes: it holds the GPU's network interface
    held: float = 0.0  # SMs its NCCL kernel holds from compute beside it (`simulator.nccl_sms`)
    kernels: int = 0  # GPU kernels the host launches for it (`hwmodels.launch`)


def _list_schedule(tasks: list[_Task]) -> InstructionProfile:
    """Run the tasks on a compute and a communication stream; each free stream starts its first ready task.

    A task is ready once every task it depends on has ended; the ready tasks of each stream wait in a heap by
    launch priority, so the graph runs in O(n log n)."""
    n = len(tasks)
    waiting, dependents, ready = task_graph(tasks)
    free_at = {"compute": 0.0, "comm": 0.0}
    running: dict[str, int | None] = {"compute": None, "comm": None}
    busy = {"compute": 0.0, "comm": 0.0}
    spans: list[Span] = []
    now, done = 0.0, 0
    while done < n:
        for stream in ("compute", "comm"):
            if running[stream] is not None or not ready[stream]:
                continue
            _, i = heapq.heappop(ready[stream])
            running[stream] = i
            free_at[stream] = now + tasks[i].duration
        active = [s for s in ("compute", "comm") if running[s] is not None]
        if not active:
            raise RuntimeError("instruction task graph has a cycle")
        stream = min(active, key=lambda s: free_at[s])
        now = free_at[stream]
        for s in active:
            if free_at[s] <= now:
                i = running[s]
                busy[s] += tasks[i].duration
                spans.append(task_span(tasks[i], s, now - tasks[i].duration, now))
                running[s] = None
                done += 1
                release(i, tasks, waiting, dependents, ready)
    return profile_of(tasks, now, busy, spans)


def task_graph(tasks: list[_Task]) -> tuple[list[int], list[list[int]], dict[str, list]]:
    """(unfinished dependencies per task, dependents per task, per-stream heaps of ready tasks by priority)."""
    waiting = [len(set(t.deps)) for t in tasks]
    dependents: list[list[int]] = [[] for _ in tasks]
    for i, t in enumerate(tasks):
        for d in set(t.deps):
            dependents[d].append(i)
    ready: dict[str, list] = {"compute": [], "comm": []}
    for i, t in enumerate(tasks):
        if not waiting[i]:
            heapq.heappush(ready[t.stream], (t.priority, i))
    return waiting, dependents, ready


def release(i: int, tasks: list[_Task], waiting: list[int], dependents: list[list[int]],
            ready: dict[str, list]) -> None:
    """Task i has ended: its dependents with nothing else to wait for join their stream's ready heap."""
    for j in dependents[i]:
        waiting[j] -= 1
        if not waiting[j]:
            heapq.heappush(ready[tasks[j].stream], (tasks[j].priority, j))


def task_span(t: _Task, stream: str, start: float, end: float) -> Span:
    parts = _NAME_PARTS.get(t.name)
    if parts is None:  # a segment's name read once: (its base, its phase argument)
        if len(_NAME_PARTS) >= 4096:
            _NAME_PARTS.clear()
        parts = _NAME_PARTS[t.name] = (t.name.partition("(")[0], (("phase", t.name.partition("(")[2].rstrip(")")),))
    args = parts[1] if t.layer is None else parts[1] + (("layer", t.layer),)
    return Span(0, stream, start, end, t.name, parts[0], None, None, args)


_NAME_PARTS: dict[str, tuple] = {}  # `task_span`: segment name -> (base name, phase argument)


def profile_of(tasks: list[_Task], now: float, busy: dict[str, float], spans: list[Span]) -> InstructionProfile:
    return InstructionProfile(duration=now, compute_busy=busy["compute"], comm_busy=busy["comm"],
                              spans=tuple(spans), nic_busy=sum(t.duration for t in tasks if t.uses_nic))
