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
its inputs' arrival times, without waiting for simulated time to pass: each rank is still a simpy process, but it
yields an event only when it needs an input whose sender has not yet reached the send (the sender triggers it
once it knows the arrival time, and the rank resumes at that instant). On GPT 1T's 1F1B step (PP64, 512
micro-batches: 65,536 instructions) the events drop from 195,000 to 32,000, one per rank switch: a rank in the
steady phase alternates inputs from both neighbours, so it rarely gets more than two instructions ahead.

The check: `plain` below. A rank with gradient buckets (`nic_share`) or whose instructions hold the interface
(the all-to-all share of a send is decided at the send's instant, by what the rank runs then) makes the engine
run every instruction as an event, as does a run that records the timeline (spans come in event order).
"""

from __future__ import annotations

import simpy


def plain(holds: list[bool], buckets: list) -> bool:
    """Whether the run can take the fast path: no rank's instructions hold its interface (`holds[rank]`) and no
    rank has gradient buckets."""
    return not any(buckets) and not any(holds)


def run_ahead(steps: list[list[tuple]], tail) -> tuple:
    """Every rank's program as `run_pipeline` builds it (`simulator.programs`: instruction, profile, inputs,
    chunks allocated, chunks freed, arrival keys of its sends, their seconds, load), `tail(rank)` or None.
    Returns per rank (finish, end, nic_busy, nic_wait, peak), and the instructions run, as `run_pipeline`
    reports them."""
    env = simpy.Environment()
    pp = len(steps)
    known: dict[tuple, float] = {}           # arrival key -> when it arrives (once its sender got there)
    waiting: dict[tuple, simpy.Event] = {}   # arrival key -> the event a blocked rank waits on
    finish, end = [0.0] * pp, [0.0] * pp
    nic_busy, nic_wait, peak = [0.0] * pp, [0.0] * pp, [0] * pp
    counter = [0]

    def deliver(key: tuple, at: float) -> None:
        known[key] = at
        event = waiting.pop(key, None)
        if event is not None:  # wake the blocked rank at the arrival instant
            event._ok, event._value = True, None
            env.schedule(event, delay=max(0.0, at - env.now))

    def rank_process(rank: int, program: list[tuple]):
        clock = 0.0      # when the rank's previous instruction ended
        nic_free = 0.0   # when the rank's last send leaves its interface
        busy_nic, live, top, ran = 0.0, 0, 0, 0
        get = known.get
        for _, prof, needs, forwards, weights, keys, delays, _ in program:
            start = clock
            for key in needs:
                at = get(key)
                if at is None:  # its sender has not got there yet: wait until it has
                    event = waiting[key] = env.event()
                    yield event
                    at = known[key]
                if at > start:
                    start = at
            live += forwards
            if live > top:
                top = live
            clock = start + prof.duration
            ran += 1
            live -= weights
            for key, delay in zip(keys, delays):
                if delay <= 0.0:
                    deliver(key, clock)
                else:
                    leave = (clock if clock >= nic_free else nic_free) + delay
                    busy_nic += delay
                    nic_free = leave
                    deliver(key, leave)
            finish[rank] = clock
            counter[0] += 1
        peak[rank], nic_busy[rank] = top, busy_nic
        end[rank] = clock
        if tail is not None:
            start = clock if clock >= nic_free else nic_free
            nic_wait[rank] = start - clock
            end[rank] = start + tail(rank)

    for rank, program in enumerate(steps):
        env.process(rank_process(rank, program))
    env.run()
    return finish, end, nic_busy, nic_wait, peak, counter[0]
