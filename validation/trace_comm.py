"""What DeepSeek's traced pair says about DeepEP's kernels, for the trace profile's `comm` section
(`validation.calibrate_trace`): the notify kernels' time per EP call, and the dispatch and combine kernels' time
over our transfers of the same calls (`hwmodels.deepep` reads both).
"""

from __future__ import annotations

from gpuhours.hwmodels.deepep import kernel_of
from gpuhours.simulator.chunks import HardwareCoster
from gpuhours.validation.traced_pair import BACKWARD_STAGE, FORWARD_STAGE


def pair_ep_ops(coster: HardwareCoster) -> list:
    """The traced pair's EP dispatch and combine ops: the forward chunk's, then the backward chunk's."""
    return [op for stage, passes in ((FORWARD_STAGE, "forward"), (BACKWARD_STAGE, "backward"))
            for unit in coster.stages[stage] for seg in getattr(unit, passes) for op in seg.ops
            if op.collective in ("ep_dispatch", "ep_combine")]


def notify_per_call(measured, coster: HardwareCoster, file_name: str) -> dict:
    """DeepEP's notify kernels' resident time per dispatch or combine call of the traced pair (read by
    `HardwareCoster` for overlapped F&B pairs, `hwmodels/deepep.py`): the notify kernel time over our EP calls."""
    notify = measured.comm_classes.get("a2a_notify", 0.0)
    calls = len(pair_ep_ops(coster))
    if notify <= 0 or calls == 0:
        return {}
    p = coster.parallel
    tokens = coster.seq_len * p.micro_batch_size // max(1, p.cp)
    return {"deepep_notify_per_call_ms": round(notify * 1e3 / calls, 6),
            "deepep_notify_tokens": tokens,
            "deepep_notify_provenance": f"trace {file_name}: {notify * 1e3:.3f} ms of notify kernels (size exchange "
                                        f"and barrier, including the wait for peers) over the pair's {calls} EP "
                                        f"dispatch/combine calls of {tokens} tokens a rank; charged in overlapped "
                                        f"F&B pairs only, in proportion to a call's tokens"}


def kernel_time_ratio(measured, coster: HardwareCoster, file_name: str) -> dict:
    """DeepEP's dispatch and combine kernels' time in the traced pair over our transfers of the same calls (the
    busiest rank's rows at the slower of the fabric and the kernels' published rate, notify excluded), per kernel
    as DeepEP runs them (`hwmodels.deepep.kernel_of`): read by `HardwareCoster` as `comm.deepep_kernel_time_ratio`.
    Empty where the base profile's coster has no DeepEP kernels or the trace no such kernels."""
    if coster.deepep is None:
        return {}
    ops = pair_ep_ops(coster)
    modelled = {"dispatch": 0.0, "combine": 0.0}
    for op in ops:
        modelled[kernel_of(op.collective, op.phase)] += coster.op_time(op)
    traced = {k: measured.comm_classes.get(f"a2a_{k}", 0.0) for k in modelled}
    if not all(modelled[k] > 0 and traced[k] > 0 for k in modelled):
        return {}
    return {"deepep_kernel_time_ratio": {k: round(traced[k] / modelled[k], 6) for k in modelled},
            "deepep_kernel_time_provenance": f"trace {file_name}: " + ", ".join(
                f"{k} kernels {traced[k] * 1e3:.3f} ms against our {modelled[k] * 1e3:.3f} ms" for k in modelled)
            + f" for the pair's {len(ops)} EP calls (DeepEP's published rates, {coster.parallel.comm_sms} SMs, the "
              f"busiest rank's rows; notify excluded)"}
