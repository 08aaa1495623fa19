"""Ranks that run ahead: the engine's fast path when every rank's network interface is a plain FIFO.

`simulator.engine.run_pipeline` moves every instruction with its own simpy timeout. When no instruction holds
the interface (no all-to-alls crossing nodes) and no rank reduces gradient buckets in the engine, a rank's whole
timeline is a function of when its inputs arrive, and nothing else:

    start_i  = max(end_{i-1}, arrival of each input of instruction i)
    end_i    = start_i + duration_i
    a send issued at end_i leaves at max(end_i, when the rank's previous send left) + its seconds (FIFO)
    the tail starts at max(last end, when the last send left)

(the engine's semantics with rho = 0 and one FIFO per rank, term by term and in the same floating-point
operations, so the figures are bit-identical). Schedules are pure, so a rank can compute this as far as it knows
its inputs' arrival times, without waiting for simulated time to pass: each rank is a generator that stops only
when it needs an input whose sender has not yet reached the send; the sender, once it knows the arrival time,
puts the rank back in the queue of ranks that can go on. Nothing here depends on the order ranks are resumed in
(every time is computed from arrival times, not from a clock), so no simpy event is needed: on GPT 1T's 1F1B
step (PP64, 512 micro-batches: 65,536 instructions) a simpy event per rank switch (32,000 of them, against
195,000 events in the full simulation) took half of this path's time. The simpy engine stays for every run that
needs instants: interfaces shared with all-to-alls or buckets, and timelines. Arrival keys are numbered once per
schedule shape (`simulator.programs`), so an arrival is a list slot rather than a dictionary entry, and a rank's
peak of live activation chunks is read from the shape (the order of its instructions fixes it). Where no
instruction waits for or sends more than one arrival (every schedule but DualPipe's and DualPipeV's overlapped
pairs), the ranks run a loop without the inner loops over inputs and sends (`single_process`), the same
operations in the same order.

The check: `plain` below. A rank with gradient buckets (`nic_share`) or whose instructions hold the interface
(the all-to-all share of a send is decided at the send's instant, by what the rank runs then) makes the engine
run every instruction as an event, as does a run that records the timeline (spans come in event order).
"""

from __future__ import annotations

from collections import deque


def plain(holds: list[bool], buckets: list) -> bool:
    """Whether the run can take the fast path: no rank's instructions hold its interface (`holds[rank]`) and no
    rank has gradient buckets."""
    return not any(buckets) and not any(holds)


def run_ahead(runs, tail) -> tuple:
    """Every rank's priced program (`simulator.programs.Programs`: per instruction the numbers of the arrivals it
    waits for and sends, its seconds and its sends' seconds; per rank its peak of live activation chunks, which
    the order of its instructions fixes), `tail(rank)` or None. Returns per rank (finish, end, nic_busy,
    nic_wait, peak), and the instructions run, as `run_pipeline` reports them."""
    shape = runs.shape
    pp = len(shape.io)
    known: list = [None] * shape.arrivals    # arrival number -> when it arrives (once its sender got there)
    waiting: list = [None] * shape.arrivals  # arrival number -> the rank blocked on it
    finish, end = [0.0] * pp, [0.0] * pp
    nic_busy, nic_wait = [0.0] * pp, [0.0] * pp
    ran = [0] * pp

    def rank_process(rank: int):
        clock = 0.0      # when the rank's previous instruction ended
        nic_free = 0.0   # when the rank's last send leaves its interface
        busy_nic = 0.0
        index = 0
        for (needs, sends), duration, delays in zip(shape.io[rank], runs.durations(rank), runs.delays(rank)):
            start = clock
            for key in needs:
                at = known[key]
                if at is None:  # its sender has not got there yet: wait until it has
                    waiting[key] = rank
                    ran[rank] = index
                    yield
                    at = known[key]
                if at > start:
                    start = at
            clock = start + duration
            index += 1
            for key, delay in zip(sends, delays):
                if delay <= 0.0:
                    at = clock
                else:
                    at = (clock if clock >= nic_free else nic_free) + delay
                    busy_nic += delay
                    nic_free = at
                known[key] = at
                woken = waiting[key]
                if woken is not None:  # the blocked rank can go on
                    waiting[key] = None
                    ready(woken)
        close(rank, index, clock, nic_free, busy_nic)

    def close(rank: int, index: int, clock: float, nic_free: float, busy_nic: float) -> None:
        """A rank's totals once its last instruction has run: then its data-parallel tail, if any, on its NIC."""
        ran[rank] = index
        nic_busy[rank] = busy_nic
        finish[rank] = end[rank] = clock
        if tail is not None:
            start = clock if clock >= nic_free else nic_free
            nic_wait[rank] = start - clock
            end[rank] = start + tail(rank)

    def single_process(rank: int):
        """`rank_process` where every instruction waits for at most one arrival and sends at most one (-1: none):
        the same operations without the inner loops."""
        clock = nic_free = busy_nic = 0.0
        index = 0
        for need, send, duration, delay in zip(shape.need[rank], shape.send[rank], runs.durations(rank),
                                               runs.first_delays(rank)):
            start = clock
            if need >= 0:
                at = known[need]
                if at is None:
                    waiting[need] = rank
                    ran[rank] = index
                    yield
                    at = known[need]
                if at > start:
                    start = at
            clock = start + duration
            index += 1
            if send >= 0:
                if delay <= 0.0:
                    at = clock
                else:
                    at = (clock if clock >= nic_free else nic_free) + delay
                    busy_nic += delay
                    nic_free = at
                known[send] = at
                woken = waiting[send]
                if woken is not None:
                    waiting[send] = None
                    ready(woken)
        close(rank, index, clock, nic_free, busy_nic)

    processes = [(single_process if shape.single else rank_process)(rank) for rank in range(pp)]
    queue = deque(range(pp))
    ready, take = queue.append, queue.popleft
    while queue:
        next(processes[take()], None)
    return finish, end, nic_busy, nic_wait, list(shape.peak), sum(ran)
