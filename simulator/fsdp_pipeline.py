"""FSDP (ZeRO-3) under pipeline parallelism with `reshard_after_forward`: which instructions gather parameters.

What PyTorch's pipelining does (torch.distributed.pipelining, stage.py, read for PyTorch 2.13; the same logic
was in its `backward_maybe_with_nosync` when torchtitan ran its pipelined FSDP runs):
- before every backward of a stage module wrapped by `fully_shard` it turns off the module's gradient
  synchronisation, its resharding after backward and its last-backward flag, then runs the backward; so no
  backward reduce-scatters and none frees the parameters it gathered;
- once the stage's backwards are all done (`perform_reduce_grad`, the post-backward step of the schedule) it
  turns the three back on and runs FSDP's post-backward for every parameter group: one reduce-scatter of the
  accumulated, unsharded gradients per group, after which the parameters are resharded;
- forwards are left alone: FSDP's pre-forward gathers the parameters unless they are already unsharded (its
  `unshard` returns at once when they are), and its post-forward reshards them when `reshard_after_forward`.

So each stage's parameters are in one of two states on a rank, and an instruction gathers exactly when it finds
them sharded: every step starts sharded (the previous step's post-backward resharded them); a forward leaves them
sharded (reshard after forward), a backward leaves them unsharded (no reshard after backward). In 1F1B a rank
thus gathers in each warm-up forward and in the first steady forward, in every steady backward (it follows a
forward), and never in a forward that follows a backward or in a cool-down backward that follows a backward:
m + 1 gathers per stage and step, where gathering every forward and backward would be 2m.

A split weight pass (zero-bubble W) gathers nothing: the weight gradient needs the pass's activations and output
gradients, not the weights (Assumption: FSDP keeps the gradient it accumulates into across a reshard). An
overlapped F&B pair (DualPipe) gathers when either half finds its stage sharded, and is priced with both halves'
gathers (Assumption: an over-count only where one half's stage is already gathered).

Without `reshard_after_forward` (`ParallelSpec.fsdp_once_per_step`) the parameters stay gathered after the
first forward; that case is priced on the step's tail (`simulator.step`). The reduce-scatter of both cases is
on the tail, after the rank's last instruction.
"""

from __future__ import annotations

from dataclasses import replace

from gpuhours.simulator.chunks import HardwareCoster
from gpuhours.simulator.engine import InstructionProfile
from gpuhours.simulator.instructions import Instruction, Schedule


def gathering_instructions(schedule: Schedule) -> frozenset[tuple[int, Instruction]]:
    """(rank, instruction) pairs that find a stage's parameters sharded and gather them (module docstring)."""
    out: set[tuple[int, Instruction]] = set()
    for rank, program in enumerate(schedule.programs):
        sharded: dict[int, bool] = {}
        for ins in program:
            gathers = False
            for kind, _, stage in ins.parts():
                if kind == "W":
                    continue
                gathers |= sharded.get(stage, True)
                sharded[stage] = kind == "F"  # a forward reshards after itself; a backward keeps them gathered
            if gathers:
                out.add((rank, ins))
    return frozenset(out)


class FsdpPipelineCoster:
    """An `InstructionCoster` that prices an instruction with its parameter gathers when it gathers
    (`gathering_instructions`) and without them otherwise; transfers are the gathering coster's."""

    uniform_transfers = True  # as `HardwareCoster.transfer`, which they are

    def __init__(self, gathering: HardwareCoster, plain: HardwareCoster, gathers: frozenset):
        self.gathering, self.plain, self.gathers = gathering, plain, gathers

    def profile(self, rank: int, instruction: Instruction) -> InstructionProfile:
        coster = self.gathering if (rank, instruction) in self.gathers else self.plain
        return coster.profile(rank, instruction)

    def transfer(self, src: int, dst: int, kind: str, microbatch: int, stage: int) -> float:
        return self.gathering.transfer(src, dst, kind, microbatch, stage)


def plain_coster(coster: HardwareCoster) -> HardwareCoster:
    """The same stages priced without ZeRO-3's per-unit collectives (the layout as `fsdp_once_per_step`, whose
    units carry none: `workloads.stage_ops.stage_units`)."""
    return HardwareCoster(coster.model, replace(coster.parallel, reshard_after_forward=False), coster.cluster,
                          coster.compute, coster.network, coster.seq_len, coster.stage_layers, coster.opts,
                          coster.recipe)
