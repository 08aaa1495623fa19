"""Closed forms for communication streamed under the computation that consumes (or produces) it in pieces."""

from __future__ import annotations


def exposed_streamed(comm: float, pieces: int, compute: float, compute_rate: float = 1.0) -> float:
    """Seconds a transfer of `comm` s cut into `pieces` equal pieces adds to a computation of `compute` s that
    consumes them in order (or produces them, for a reduce-scatter after a GEMM), one piece ahead: the pieces run
    back to back on the link, and the computation can neither start before the first piece (comm / pieces) nor
    end before the last piece arrives and its share computes (comm + compute / pieces). Exposed:
    max(comm / pieces, comm - compute (pieces - 1) / pieces); all of it when there is nothing to hide under.
    Used for FSDP's once-per-step gathers under the first forward (pieces: layers) and for tensor-parallel
    collectives decomposed around their GEMM (pieces: tp ranks).

    `compute_rate` < 1: the computation runs at that share of its speed while the transfer is in flight (the SMs
    NCCL's channels hold, `simulator.nccl_sms`). With n pieces and c = compute / n: if c <= rate x comm / n the
    computation keeps up with the pieces even slowed and the last piece still ends it (comm + c, as above);
    otherwise it runs without a break from the first piece on, slowed for the (n - 1) / n x comm the transfer
    still runs, so it ends (1 - rate) x comm (n - 1) / n later than the unslowed comm / n + compute. The two meet
    at c = rate x comm / n; rate 1 gives the form above."""
    n = max(1, pieces)
    if compute <= 0:
        return comm
    if not 0.0 < compute_rate <= 1.0:
        raise ValueError(f"compute_rate must be in (0, 1], got {compute_rate!r}")
    if compute_rate == 1.0:
        return max(comm / n, comm - compute * (n - 1) / n)
    if compute / n <= compute_rate * comm / n:
        return comm - compute * (n - 1) / n
    return comm / n + (1.0 - compute_rate) * comm * (n - 1) / n
