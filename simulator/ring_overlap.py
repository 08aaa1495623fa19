"""Ring attention's exposed communication: the closed form of `workloads.ring_cp` (derivation there)."""

from __future__ import annotations


def ring_step_bytes(phase: str, cp: int) -> list[float]:
    """Bytes of each transfer of the ring in units of one K/V block, in step order. Forward: cp-1 transfers of one
    block (steps 0..cp-2 each send the block the next step computes). Backward: cp transfers, K/V at step 0, K/V
    and the accumulated dK/dV (2 blocks) at steps 1..cp-2, dK/dV only at the last step; 2 (cp-1) blocks in all."""
    if cp <= 1:
        return []
    if phase == "F":
        return [1.0] * (cp - 1)
    return [1.0] + [2.0] * (cp - 2) + [1.0]


def ring_exposed(wire: float, cp: int, compute: float, phase: str) -> float:
    """Seconds the ring's transfers add to an attention core of `compute` s (the rank's whole core, forward or
    backward) when all its transfers take `wire` s back to back: each transfer runs under one block's compute,
    compute / cp, and exposes max(0, transfer - block). Zero when every block computes at least as long as its
    transfer; `wire` when there is no compute to hide under."""
    steps = ring_step_bytes(phase, cp)
    if not steps:
        return 0.0
    if compute <= 0:
        return wire
    per_block = wire / sum(steps)
    block = compute / cp
    return sum(max(0.0, s * per_block - block) for s in steps)


def torch_cp_exposed(wire: float, cp: int, compute: float, name: str) -> float:
    """Seconds PyTorch's context parallelism (`workloads.torch_cp`, cp_comm "torch") exposes of an exchange whose
    transfers take `wire` s, beside an attention core (forward or backward) of `compute` s split into cp blocks
    of compute / cp:
    - the K/V all-gather ("...cp_torch_kv"), issued before the step-0 block and waited at step 1:
      max(0, wire - compute / cp);
    - the dK/dV ring ("...cp_torch_dkv"): cp transfers of t = wire / (cp - 1) (the op's all-gather moves cp-1),
      transfer s waited after block s+1 for s < cp-1, the last after the loop:
      (cp - 1) max(0, t - compute / cp) + t."""
    if cp <= 1:
        return 0.0
    block = max(0.0, compute) / cp
    if name.endswith("cp_torch_dkv"):
        t = wire / (cp - 1)
        return (cp - 1) * max(0.0, t - block) + t
    return max(0.0, wire - block)


def cp_exposed(op, wire: float, cp: int, compute: float) -> float:
    """The exposed seconds of a context-parallel collective `op` with an attention partner: PyTorch's variant by
    its op name (`torch_cp_exposed`), ring attention otherwise (`ring_exposed`)."""
    if ".cp_torch_" in op.name:
        return torch_cp_exposed(wire, cp, compute, op.name)
    return ring_exposed(wire, cp, compute, op.phase)
