"""Closed forms for communication streamed under the computation that consumes (or produces) it in pieces."""

from __future__ import annotations


def exposed_streamed(comm: float, pieces: int, compute: float) -> float:
    """Seconds a transfer of `comm` s cut into `pieces` equal pieces adds to a computation of `compute` s that
    consumes them in order (or produces them, for a reduce-scatter after a GEMM), one piece ahead: the pieces run
    back to back on the link, and the computation can neither start before the first piece (comm / pieces) nor
    end before the last piece arrives and its share computes (comm + compute / pieces). Exposed:
    max(comm / pieces, comm - compute (pieces - 1) / pieces); all of it when there is nothing to hide under.
    Used for FSDP's once-per-step gathers under the first forward (pieces: layers) and for tensor-parallel
    collectives decomposed around their GEMM (pieces: tp ranks)."""
    n = max(1, pieces)
    if compute <= 0:
        return comm
    return max(comm / n, comm - compute * (n - 1) / n)
