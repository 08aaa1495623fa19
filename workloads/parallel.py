"""ParallelSpec: how a model is laid out on the GPUs of one training job."""

from __future__ import annotations

from dataclasses import dataclass

from gpuhours.workloads.model import ModelSpec

SCHEDULES = ("1f1b", "interleaved-1f1b", "zb1p", "dualpipe", "dualpipev")
OVERLAPPING_SCHEDULES = ("dualpipe", "dualpipev")  # run one chunk's communication under another's compute
ZERO_STAGES = (0, 1, 2, 3)
CP_COMMS = ("all_gather", "ring", "torch")  # context parallelism's K/V exchange (`ParallelSpec.cp_comm`)
TP_COMM_OVERLAP_IMPLS = ("asynctp", "te-userbuffers")  # `ParallelSpec.tp_comm_overlap_impl`
GRAD_REDUCE_DTYPES = ("fp32", "bf16")  # data-parallel gradient reduction (workloads.zero.GRAD_REDUCE_BYTES)
MOE_DISPATCHERS = ("alltoall", "allgather")  # Megatron-Core moe_token_dispatcher_type (`workloads.moe_dispatch`)
MAX_GPUS = 131_072  # 8x the largest published training clusters of 2024 (16,384 H100)  # 3: FSDP


@dataclass(frozen=True)
class ParallelSpec:
    """Pipeline (pp), expert (ep), tensor (tp, with sequence parallelism) and context (cp) parallelism; data
    parallelism fills the rest: num_gpus = pp x tp x cp x dp. Expert-parallel groups are drawn from the
    dp x tp x cp ranks that hold the same pipeline stage (`expert_dp` = dp x tp x cp / ep).

    `cp` (context parallelism, the all-gather K/V variant with causal load balancing, as torchtitan and
    Megatron-Core's "all_gather" CP): the sequence of every micro-batch is cut into 2 cp chunks and rank i of the
    cp group takes chunks i and 2cp-1-i, so each rank holds seq_len / cp tokens and an equal share of the causal
    attention work. Every op of a layer (GEMMs, norms, element-wise, MoE, TP collectives, head and loss) runs on
    the rank's micro_batch_size x seq_len / cp tokens; the attention core's queries are the rank's tokens, its keys
    the whole sequence, and its causal FLOPs exactly 1/cp of the whole sequence's core
    (`workloads.layer_ops`). Before
    the core the forward all-gathers K and V over the cp group; the backward reduce-scatters dK and dV
    (collectives on the "cp" group, placed after tp inside a node). CP ranks hold the same parameters, so the
    gradient (and ZeRO sharding) group is dp x cp (`grad_dp`); they share their sequences, so a step trains
    micro-batches x micro_batch_size x seq_len x dp tokens.

    `cp_comm` (CP_COMMS): "all_gather" (above) or "ring" (ring attention, Liu et al. 2023, arXiv 2310.01889;
    Megatron-Core's p2p context parallelism): the K/V blocks travel around the cp ranks, cp-1 exchanges in the
    forward (K/V + dK/dV in the backward), each under the attention block of the previous one, keeping two K/V
    blocks in flight instead of the gathered sequence (`workloads.ring_cp`).
    "torch": PyTorch's experimental context_parallel under SDPA as torchtitan ran it at the end of 2024
    (K/V at the query heads, all-gathered under the diagonal block, dK/dV ring in fp32, fp32 merges;
    `workloads.torch_cp`).

    `stage_layers`: transformer layers per pipeline stage, in order (None: balanced by simulated cost).
    `pipeline_layout`: what each virtual stage holds, Megatron-Core's layout notation ("E|t*3|t*4|t*4|t*3,L";
    grammar and rules in `workloads.pipeline_layout`); it sets `stage_layers` (and `vpp` under interleaved 1F1B
    when left at 1) and where the embedding, head, loss and MTP modules run (`workloads.stage_ops.stage_units`).
    `comm_sms`: streaming multiprocessors communication kernels occupy. Schedules that overlap one chunk's
    all-to-all with another chunk's compute keep them resident for the whole step, so compute runs on the others
    (DeepSeek's trace: every GEMM launched on 112 of 132 SMs); in the others compute and communication take
    turns and compute uses every SM (see `compute_sm_fraction`). comm_sms > 0 also makes the EP all-to-alls
    DeepEP's kernels on that many SMs, priced by their resident time (`hwmodels.deepep`); 0 keeps wire time.
    `vpp`: virtual stages per rank for interleaved 1F1B.
    `etp` / `moe_dispatch`: expert tensor parallelism (each routed expert's w13 column- and w2 row-split over etp
    ranks; ep x etp must divide dp x tp x cp) and the token dispatcher ("alltoall" or "allgather"), see
    `workloads.moe_dispatch`.
    `overlap_grad_reduce` / `overlap_param_gather`: Megatron-Core's data-parallel options. Gradients are reduced
    in buckets of `dp_bucket_params` parameters (0: Megatron-Core's default, max(40M, 1M x dp)) as they become
    ready during the rank's last backward; the updated parameters are gathered bucket by bucket under the next
    step's forward (see `simulator.dp_tail.exposed_dp_comm`; the forward's slow-down: `simulator.param_gather`).
    `grad_reduce_dtype`: the dtype data parallelism reduces gradients in and accumulates them in between
    (Megatron-Core's grad_reduce_in_fp32, PyTorch FSDP's reduce_dtype): "fp32" or "bf16", None for the memory
    recipe's gradient dtype (FP32 in DeepSeek-V3's recipe, so FP32 by default); see `workloads.zero`.
    `tp_comm_overlap`: tensor-parallel collectives decomposed into tp pieces and pipelined with the GEMM that
    consumes or produces them (Megatron-Core / Transformer Engine's userbuffers overlap, PyTorch's AsyncTP):
    all-gathers with the following column-parallel GEMM, reduce-scatters (all-reduces) with the preceding
    row-parallel GEMM, each exposing only what `simulator.overlap.exposed_streamed` leaves. MoE layers have TP
    collectives around attention only; their expert all-to-alls are not affected.
    `tp_comm_overlap_impl` (TP_COMM_OVERLAP_IMPLS): "asynctp" (PyTorch AsyncTP, torchtitan: copy engines, no SMs
    taken from the GEMM) or "te-userbuffers" (Megatron-Core's --tp-comm-overlap, Transformer Engine's default
    userbuffers config: its pipeline and bulk overlaps run the GEMM on SMs - 16; needs sequence parallelism;
    `hwmodels.tp_overlap_sms`, `simulator.nccl_sms.tp_overlap_time`).
    `zero_stage` (ZERO_STAGES, Rajbhandari et al. 2020): 0 replicates everything; 1 shards the optimizer state over
    the data-parallel group (Megatron's distributed optimizer: gradients reduce-scattered and the updated
    parameters all-gathered once per step); 2 also shards the gradients (same traffic as 1); 3 (FSDP) also shards
    the weights: every micro-batch gathers a layer's parameters before its forward (and, with
    `reshard_after_forward`, again before its backward) and reduce-scatters its gradients after its backward
    (`workloads.stage_ops.stage_units`, `workloads.zero`), the step's tail keeps only the optimizer update of the shard.
    """

    num_gpus: int
    pp: int = 1
    ep: int = 1
    tp: int = 1
    cp: int = 1
    zero_stage: int = 1
    micro_batch_size: int = 1
    schedule: str = "1f1b"
    vpp: int = 1
    stage_layers: tuple[int, ...] | None = None
    pipeline_layout: str | None = None  # "E|t*3|...|t*3,L": stage contents (`workloads.pipeline_layout`)
    comm_sms: int = 0
    sequence_parallel: bool = True
    tp_comm_overlap: bool = False
    tp_comm_overlap_impl: str = "asynctp"  # TP_COMM_OVERLAP_IMPLS (`simulator.nccl_sms.tp_overlap_time`)
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    dp_bucket_params: int = 0
    reshard_after_forward: bool = True
    grad_reduce_dtype: str | None = None  # "fp32" or "bf16"; None: the memory recipe's gradient dtype (FP32)
    order: tuple[str, ...] = ("tp", "cp", "dp", "pp")  # rank placement, innermost first (`parse_order`)
    cp_comm: str = "all_gather"  # one of CP_COMMS
    etp: int = 1  # expert tensor parallelism (Megatron-Core expert_tensor_parallel_size; `workloads.moe_dispatch`)
    moe_dispatch: str = "alltoall"  # MOE_DISPATCHERS: how tokens reach the experts (`workloads.moe_dispatch`)

    def __post_init__(self) -> None:
        for name in ("num_gpus", "pp", "ep", "tp", "cp", "micro_batch_size", "vpp", "etp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_gpus > MAX_GPUS:
            raise ValueError(f"gpus must be at most {MAX_GPUS:,} (the largest cluster the fabric models build), "
                             f"got {self.num_gpus:,}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if isinstance(self.zero_stage, bool) or self.zero_stage not in ZERO_STAGES:
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        for name in ("overlap_grad_reduce", "overlap_param_gather", "sequence_parallel", "reshard_after_forward",
                     "tp_comm_overlap"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.tp_comm_overlap_impl not in TP_COMM_OVERLAP_IMPLS:
            raise ValueError(f"tp_comm_overlap_impl must be one of {', '.join(TP_COMM_OVERLAP_IMPLS)}; "
                             f"got {self.tp_comm_overlap_impl!r}")
        if self.tp_comm_overlap_impl == "te-userbuffers" and self.tp_comm_overlap and self.tp > 1 \
                and not self.sequence_parallel:  # Megatron-LM arguments.py asserts it
            raise ValueError("tp_comm_overlap_impl te-userbuffers needs sequence_parallel = true (Megatron-LM "
                             "runs tp_comm_overlap only with sequence parallelism)")
        if self.cp_comm not in CP_COMMS:
            raise ValueError(f"cp_comm must be one of {', '.join(CP_COMMS)}; got {self.cp_comm!r}")
        if isinstance(self.dp_bucket_params, bool) or not isinstance(self.dp_bucket_params, int) \
                or self.dp_bucket_params < 0:
            raise ValueError(f"dp_bucket_params must be a whole number >= 0 (0: Megatron-Core's default), "
                             f"got {self.dp_bucket_params!r}")
        if self.grad_reduce_dtype is not None and self.grad_reduce_dtype not in GRAD_REDUCE_DTYPES:
            raise ValueError(f"grad_reduce_dtype must be one of {', '.join(GRAD_REDUCE_DTYPES)}; "
                             f"got {self.grad_reduce_dtype!r}")
        if self.comm_sms < 0:
            raise ValueError(f"comm_sms must be >= 0, got {self.comm_sms}")
        if self.comm_sms == 0 and self.ep > 1 and self.schedule in OVERLAPPING_SCHEDULES:
            # the overlapped all-to-alls would run beside compute on no SMs at all: free communication
            raise ValueError(f"comm_sms must be >= 1 under {self.schedule} with ep > 1: its all-to-alls run beside "
                             f"compute on SMs of their own (DeepEP's kernels; DeepSeek-V3 gives them 20), got 0")
        if self.num_gpus % (self.pp * self.tp * self.cp):
            raise ValueError(
                f"gpus ({self.num_gpus}) must be a multiple of pp x tp x cp ({self.pp} x {self.tp} x "
                f"{self.cp} = {self.pp * self.tp * self.cp})"
            )
        if (self.dp * self.tp * self.cp) % self.ep:
            raise ValueError(
                f"ep ({self.ep}) must divide the {self.dp * self.tp * self.cp} ranks of a pipeline stage (dp x tp x cp)"
            )
        if (self.dp * self.tp * self.cp) % (self.ep * self.etp):
            raise ValueError(f"ep x etp ({self.ep} x {self.etp}) must divide the {self.dp * self.tp * self.cp} ranks "
                             f"of a pipeline stage (dp x tp x cp), as Megatron-Core's expert-data-parallel rule")
        if self.moe_dispatch not in MOE_DISPATCHERS:
            raise ValueError(f"moe_dispatch must be one of {', '.join(MOE_DISPATCHERS)}; got {self.moe_dispatch!r}")
        object.__setattr__(self, "order", parse_order(self.order))
        if self.pipeline_layout is not None:  # implies stage_layers, and vpp under interleaved 1F1B
            _apply_pipeline_layout(self)
        if self.schedule in ("dualpipe", "dualpipev") and self.pp % 2:
            raise ValueError(f"pp must be even for {self.schedule}, got {self.pp}")

    @property
    def overlaps_comm(self) -> bool:
        return self.schedule in OVERLAPPING_SCHEDULES

    def compute_sm_fraction(self, sms: int) -> float:
        """Share of a GPU's SMs compute kernels run on."""
        return (sms - self.comm_sms) / sms if self.overlaps_comm else 1.0

    @property
    def bucket_params(self) -> int:
        """Parameters per data-parallel gradient bucket: as given, else Megatron-Core's default
        max(40,000,000, 1,000,000 x dp x cp) (DistributedDataParallelConfig.bucket_size, over the gradient
        group)."""
        return self.dp_bucket_params or max(40_000_000, 1_000_000 * self.grad_dp)

    @property
    def dp(self) -> int:
        """Data-parallel replicas: each trains its own sequences (num_gpus / (pp x tp x cp))."""
        return self.num_gpus // (self.pp * self.tp * self.cp)

    @property
    def fsdp_once_per_step(self) -> bool:
        """ZeRO-3 under pipeline parallelism with `reshard_after_forward` off (torchtitan's setting when PP is on).
        PyTorch's pipelining then keeps each stage's gathered parameters and accumulates unsharded gradients over
        the step's micro-batches (torch.distributed.pipelining stage.py, backward_maybe_with_nosync: no reshard
        after backward and no gradient sync until the last backward, then one post-backward reduce-scatter), so
        the parameters are gathered once per step, in the first micro-batch's forward, and the gradients
        reduce-scattered once, after the last backward (`simulator.step`); memory holds unsharded weights and
        gradients like ZeRO-1 (`workloads.memory`)."""
        return self.zero_stage == 3 and self.pp > 1 and not self.reshard_after_forward

    @property
    def fsdp_deferred_reduce(self) -> bool:
        """ZeRO-3 under pipeline parallelism, either `reshard_after_forward`: PyTorch's pipelining runs every
        backward with gradient sync and reshard-after-backward off and reduce-scatters each stage's gradients
        once, after the rank's last backward (its post-backward step), so the step's tail carries the whole
        reduce-scatter and memory holds unsharded gradients. With `reshard_after_forward` the parameters are
        still regathered whenever an instruction finds them sharded (`simulator.fsdp_pipeline`)."""
        return self.zero_stage == 3 and self.pp > 1

    @property
    def grad_dp(self) -> int:
        """Ranks that hold the same dense parameter shard and reduce its gradients (and share its ZeRO shards):
        dp x cp, since the cp ranks of a sequence hold the same parameters."""
        return self.dp * self.cp

    @property
    def expert_dp(self) -> int:
        """Replicas of each expert shard: the stage's dp x tp x cp ranks divided into ep x etp expert grids
        (Megatron-Core's expert-data-parallel size)."""
        return self.dp * self.tp * self.cp // (self.ep * self.etp)

    @property
    def num_stages(self) -> int:
        """Model chunks the layers are cut into: pp x vpp for interleaved 1F1B, 2 pp for DualPipeV."""
        if self.schedule == "interleaved-1f1b":
            return self.pp * self.vpp
        if self.schedule == "dualpipev":
            return 2 * self.pp
        return self.pp

    @property
    def params_copies(self) -> int:
        """Copies of a stage's parameters a rank holds (DualPipe keeps stage r and PP-1-r)."""
        return 2 if self.schedule == "dualpipe" else 1

    def check_model(self, model: ModelSpec) -> None:
        """Raise ValueError when this layout cannot hold `model`."""
        att = model.attention
        if att.n_heads % self.tp:
            raise ValueError(f"tp ({self.tp}) must divide the attention heads ({att.n_heads})")
        if att.kind == "gqa" and att.n_kv_heads % self.tp and self.tp % att.n_kv_heads:
            raise ValueError(f"tp ({self.tp}) must divide or be a multiple of the kv heads ({att.n_kv_heads})")
        if model.moe is None:
            if self.ep != 1:
                raise ValueError(f"ep must be 1 for a dense model ({model.name}), got {self.ep}")
        elif model.moe.n_routed_experts % self.ep:
            raise ValueError(f"ep ({self.ep}) must divide the routed experts ({model.moe.n_routed_experts})")
        if self.etp != 1 and (model.moe is None or model.moe.expert_intermediate % self.etp):
            raise ValueError(f"etp ({self.etp}) must be 1 for a dense model and divide an expert's intermediate "
                             f"size otherwise ({model.name})")
        if self.num_stages > model.n_layers:
            raise ValueError(
                f"pipeline stages ({self.num_stages}) must not exceed the model's layers ({model.n_layers})"
            )
        if self.pipeline_layout is not None:
            from gpuhours.workloads.pipeline_layout import check_layout_model

            check_layout_model(self.pipeline_layout, model.n_layers, model.mtp_depth)
        if self.stage_layers is not None:
            if len(self.stage_layers) != self.num_stages:
                raise ValueError(
                    f"stage_layers has {len(self.stage_layers)} entries; the layout has {self.num_stages} stages"
                )
            if sum(self.stage_layers) != model.n_layers or min(self.stage_layers) < 0:
                raise ValueError(
                    f"stage_layers must be non-negative and add up to the model's {model.n_layers} layers"
                )


def _apply_pipeline_layout(p: ParallelSpec) -> None:
    """Set `stage_layers` (and `vpp` left at 1 under interleaved 1F1B) from `pipeline_layout`; ValueError naming
    `pipeline_layout` when its stage count does not match the schedule's or `stage_layers` disagrees."""
    from gpuhours.workloads.pipeline_layout import layout_stage_layers

    implied = layout_stage_layers(p.pipeline_layout)
    if p.schedule == "interleaved-1f1b" and p.vpp == 1 and len(implied) % p.pp == 0:
        object.__setattr__(p, "vpp", len(implied) // p.pp)
    if len(implied) != p.num_stages:
        raise ValueError(f"pipeline_layout has {len(implied)} stages; schedule {p.schedule} with pp={p.pp}"
                         f"{f' and vpp={p.vpp}' if p.schedule == 'interleaved-1f1b' else ''} needs {p.num_stages} "
                         f"(allowed: pp stages, pp x vpp for interleaved-1f1b, 2 pp for dualpipev)")
    if p.stage_layers is not None and tuple(p.stage_layers) != implied:
        raise ValueError(f"pipeline_layout implies stage_layers {','.join(map(str, implied))}, but stage_layers "
                         f"{','.join(map(str, p.stage_layers))} was given; give one of them")
    object.__setattr__(p, "stage_layers", implied)


ORDER_AXES = ("tp", "cp", "dp", "pp")


def parse_order(value) -> tuple[str, ...]:
    """A rank placement order, innermost (fastest-varying over GPU ids) first: a permutation of tp, cp, dp and
    pp, as a tuple or a dash-joined string ("tp-cp-dp-pp", the default: tensor parallelism inside a node,
    pipeline stages outermost). Megatron-Core's spelling with ep ("tp-cp-ep-dp-pp") is accepted where ep stands
    right before dp: expert groups always take consecutive ranks of a stage (`hwmodels.placement.RankLayout`).
    Raises ValueError naming `order` and the allowed values."""
    axes = tuple(value.split("-")) if isinstance(value, str) else tuple(value)
    if "ep" in axes:
        i = axes.index("ep")
        if axes.count("ep") == 1 and i + 1 < len(axes) and axes[i + 1] == "dp":
            axes = axes[:i] + axes[i + 1:]
        else:
            axes = axes + ("?",)  # refused below
    if sorted(axes) != sorted(ORDER_AXES) or not all(isinstance(a, str) for a in axes):
        raise ValueError(f"order must be a permutation of tp, cp, dp, pp joined by '-' (ep allowed right before "
                         f"dp), innermost first, e.g. tp-cp-dp-pp; got {value!r}")
    return axes
