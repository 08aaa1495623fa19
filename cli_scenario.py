"""The scenario options of `estimate` and `step` as a Scenario: values checked, then the plan loaded with them
(`simulator/scenario.py`); and whether `estimate` leaves the layout to the planner."""

from __future__ import annotations

from gpuhours.cli_support import UsageError


def _wants_planned_layout(plan, model, *layout) -> bool:
    """`estimate --model M` with no plan and no layout option: the planner chooses the layout, unless the model
    has a built-in plan of its own (DeepSeek-V3's plan carries its published layout)."""
    from gpuhours.simulator.scenario import list_plans

    if model is not None and not model.strip():  # '' would plan the default model's layout, then run the default
        raise UsageError("--model: empty; give a preset name (`gpuhours presets`) or a .toml / config.json file")
    return (model is not None and plan is None and all(v is None for v in layout)
            and model not in list_plans())


def _scenario(plan, model, gpu, gpus, pp, ep, tp, vpp, schedule, micro_batch_size, tokens, seq_len, price,
              calibration, precision, batch, network=None, cluster=None, nic_gbps=None, oversubscription=None,
              routing=None, redundant_experts=0, stage_layers=None, recompute=None, overlap_grad_reduce=None,
              overlap_param_gather=None, zero_stage=None, cp=None, attention_kernel=None, tp_comm_overlap=None,
              order=None, capacity_factor=None, tiers=None, etp=None, moe_dispatch=None, max_nodes_per_token=None,
              grad_reduce_dtype=None, ramp_micro_batch_size=None, cp_comm=None, pipeline_layout=None,
              sequence_parallel=None, reshard_after_forward=None, dp_bucket_params=None, fp8_recipe=None,
              comm_sms=None, host_dispatch=None, elementwise_kernels=None, link_sharing=None,
              fp8_gemm_kernels=None, tp_comm_overlap_impl=None):
    from gpuhours.simulator.scenario import load_scenario
    from gpuhours.workloads.ops import recompute_policy

    if precision is not None and precision not in ("fp8", "bf16"):
        raise UsageError(f"precision must be fp8 or bf16, got {precision!r}")
    if recompute is not None:  # names, selective:<modules>, full:N (workloads.recompute)
        try:
            recompute = recompute_policy(recompute)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if zero_stage is not None and zero_stage not in (0, 1, 2, 3):
        raise UsageError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if stage_layers is not None:
        try:
            stage_layers = tuple(int(x) for x in stage_layers.split(","))
        except ValueError:
            raise UsageError(f"stage-layers must be comma-separated whole numbers, got {stage_layers!r}") from None
    from gpuhours.simulator.scenario import DEFAULT_PLAN

    return load_scenario(plan or DEFAULT_PLAN, model=model, gpu=gpu, gpus=gpus, pp=pp, ep=ep, tp=tp, vpp=vpp, schedule=schedule,
                         micro_batch_size=micro_batch_size, tokens=tokens, seq_len=seq_len, price=price,
                         calibration=calibration, fp8=None if precision is None else precision == "fp8",
                         batch=batch, network=network, cluster=cluster, nic_gbps=nic_gbps,
                         oversubscription=oversubscription, routing=routing,
                         redundant_experts=redundant_experts, stage_layers=stage_layers, recompute=recompute,
                         overlap_grad_reduce=overlap_grad_reduce, overlap_param_gather=overlap_param_gather,
                         zero_stage=zero_stage, cp=cp, attention_kernel=attention_kernel,
                         tp_comm_overlap=tp_comm_overlap, order=order, capacity_factor=capacity_factor,
                         tiers=tiers, etp=etp, moe_dispatch=moe_dispatch, max_nodes_per_token=max_nodes_per_token,
                         grad_reduce_dtype=grad_reduce_dtype, ramp_micro_batch_size=ramp_micro_batch_size,
                         cp_comm=cp_comm, pipeline_layout=pipeline_layout,
                         sequence_parallel=sequence_parallel, reshard_after_forward=reshard_after_forward,
                         dp_bucket_params=dp_bucket_params, fp8_recipe=fp8_recipe, comm_sms=comm_sms,
                         host_dispatch=host_dispatch, elementwise_kernels=elementwise_kernels,
                         link_sharing=link_sharing, fp8_gemm_kernels=fp8_gemm_kernels,
                         tp_comm_overlap_impl=tp_comm_overlap_impl)
