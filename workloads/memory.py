"""Per-GPU memory of a layout: weights, gradients, optimizer states, in-flight activations and headroom.

Training state of a rank holding dense parameters P_d (split by tp) and expert parameters P_e (split by ep x etp)
over the stages it holds (`simulator.step.rank_params`; DualPipe ranks hold two stages, `params_copies` = 2):

    weights    = w (P_d + P_e)                         w: working-weight bytes (BF16: 2)
    gradients  = g (P_d + P_e)                         g: gradient bytes (FP32: 4); ZeRO-0/1 do not shard them
    master     = m (P_d / dp' + P_e / expert_dp)       ZeRO >= 1 (ZeRO-0: m (P_d + P_e))
    moments    = 2 a (P_d / dp' + P_e / expert_dp)     AdamW's two moments of a bytes (BF16: 2); ZeRO-0 unsharded
dp' = dp x cp (`ParallelSpec.grad_dp`): context-parallel ranks hold the same parameters and shard their state too.
ZeRO-2 shards the gradients: g S, with S = P_d / dp' + P_e / expert_dp. ZeRO-3 (FSDP) shards the weights too, and
adds the unsharded parameters of the units being gathered and their gradients before the reduce-scatter: the two
largest units the rank holds, G (the current and the prefetched one, `simulator.chunks`):
    weights = w (S + G),  gradients = g (S + G)
(Rajbhandari et al. 2020, sec. 5: (2 + 2 + K) Psi / N_d per device, plus the working buffers.)
Under pipeline parallelism (`ParallelSpec.fsdp_deferred_reduce`) gradients accumulate unsharded until the step's
one reduce-scatter and a backward leaves its stage's parameters gathered: weights w P, gradients g P, as ZeRO-1.
g is the gradient reduction's dtype (`ParallelSpec.grad_reduce_dtype`, default the recipe's).

Activations: a rank's program runs in a fixed order, so the chunks alive on it follow from that order alone: a
chunk (one micro-batch on one stage) is alive from the start of its F until the end of its W (or BW) -- the same
rule the engine counts `peak_activations_per_rank` by. Walking the program with each chunk weighted by its stage's
bytes gives the peak bytes; chunk bytes = tokens x sum over the stage's units of `unit_bytes_per_token` / tp.

Per token, what the backward needs (c = cached-GEMM-input bytes: FP8 1 + 4/128 with 1x128 scales, or BF16 2;
b = 2 (BF16); o = attention-output bytes, E5M6 1.5; H heads, h hidden; terms named in `layer_terms`):
- Recomputation (`OpOptions.recompute`, a policy of `workloads.recompute`): each module of a selective policy
  drops the terms it regenerates (`recompute.DROPS`): "layernorm" the norm outputs x_norm c h, h_norm c h and
  router_in b h; "mla_up_proj" the latent norms c (q_lora + kv_lora) and the up-projected q, k, v
  b H (2 d_qk + d_v); "core_attn" attn.lse (below); "mlp" the dense FFN's activation input; "moe" the top-k
  choice, the routed rows and the shared experts' activation input; "shared_experts" the latter; "moe_act"
  nothing (the activation output is never kept, see below). "deepseek" (the recipe, DeepSeek-V3 sec. 3.3.2) is
  layernorm + mla_up_proj, "selective" is core_attn. Under "full:N" the first N layers of each stage follow
  "full", the others "none" (an MTP block follows "full").
  "selective" (Korthikanti et al. 2022): the attention core is recomputed in backward. The core modelled here is
  FlashAttention-style: it keeps no L x L scores / softmax / dropout mask (the 5 a s / h terms Korthikanti drops),
  only its output and softmax statistics. Recomputing it regenerates the statistics, so attn.lse is dropped;
  attn.out stays (it is wo's input, needed by wo's weight gradient, which may run after the backward) and so do
  q, k, v (the recomputation's inputs). The saving is therefore small. Under Megatron-LM's unfused core
  (`attention_impl = "megatron-unfused"`) it is Korthikanti's 5 a s^2 b / t per layer (`chunk_bytes`).
  "full": a layer keeps only its input, layer.in b h per token (every other term is recomputed); without sequence
  parallelism that input is replicated on the TP ranks, so the term is b h tp before the division by tp below.
  "torchtitan-op" (torchtitan's op-level SAC): the block keeps its input, the outputs of wq, wv, w1, w2 and of
  SDPA (with its log-sum-exp), all BF16 (`workloads.op_sac.kept_terms`), and nothing else.
  Non-layer terms (head, MTP norm/projection inputs, embedding) are unchanged by the policy.
- attention (MLA): x_in b h (attention RMSNorm input), c_q b q_lora, c_kv b (kv_lora + rope) (inputs of the
  recomputed latent norms and up-projections), attn_out o H d_v (core backward and wo input), lse 4 H (softmax
  statistics). GQA: x_in, q/k/v b (H + 2 H_kv) d, attn_out o H d, lse 4 H.
- FFN input: h_mid b h (FFN RMSNorm input; none in a parallel block, whose FFN norm reads the kept x_in).
- dense FFN: SwiGLU input c 2 i, term ffn.swiglu_in (output recomputed in backward, DeepSeek-V3 sec. 3.3.4); a GELU
  FFN (`ffn_activation = "gelu"`) keeps its activation input c i, term ffn.gelu_in (output recomputed likewise);
  squared ReLU ("relu2") the same, term ffn.relu2_in. LayerNorm vs RMSNorm (`ModelSpec.norm`) keeps the same
  norm input; its per-token statistics (mean and 1/std, 8 bytes, vs RMSNorm's 4) are not counted for either.
- MoE: top-k choice k (4 + 4) (FP32 score, int32 index); shared experts' SwiGLU input c 2 n_s e; routed rows
  k x imbalance x (c h [received w13 input: the dispatch payload, on another rank, so not recomputable locally]
  + c 2 e [SwiGLU input] + gate_bytes).
  The routing probability multiplies the SwiGLU output (W2 is linear, so g W2 a = W2 (g a)): its gradient is
  <dA, A> from the w2 input-gradient and the recomputed SwiGLU output, so expert outputs need not be kept.
- head: final-norm input b h, head input b h (BF16 head), logits logit_bytes V / tp, lse 4.
- MTP module: its two norm inputs 2 b h, projection input c 2 h, one block (the last layer's kind), a head.
Context parallelism (cp > 1): a chunk holds micro-batch x seq_len / cp tokens, so its bytes are divided by cp;
the layer being computed also holds the K/V gathered from the other cp ranks, (cp-1)/cp x micro-batch x seq_len
x `workloads.layer_ops.cp_kv_bytes_per_token` (one layer's buffer, added once to the rank's activations; gathered K/V
kept for the backward of in-flight layers are not counted).
All per-token terms are divided by tp: sequence parallelism splits the token-wise ones, tensor parallelism the
head- and channel-wise ones (Korthikanti et al., arXiv 2205.05198, sec. 4.2-4.3).

Headroom: a reserved amount plus a fragmentation share of everything allocated (data/memory.toml, with reasons).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gpuhours.simulator.schedules import build_schedule
from gpuhours.simulator.step import _stages_per_rank, rank_params
from gpuhours.workloads.in_flight import peak_in_flight
from gpuhours.workloads.model import ModelSpec
from gpuhours.workloads.ops import recompute_policy
from gpuhours.workloads.recompute import DROPS, layer_policy, modules
from gpuhours.workloads import op_sac
from gpuhours.workloads.zero import grad_reduce_bytes, unit_params
from gpuhours.workloads.parallel import ParallelSpec
from gpuhours.workloads.pipeline_layout import StageHolds, stage_holds
from gpuhours.workloads.recipe import MemoryRecipe, load_recipe  # noqa: F401  (load_recipe re-exported)

_GIB = 2**30
BF16 = 2.0
FP32 = 4.0
INT32 = 4.0


# -- activations per token ---------------------------------------------------------------------------------------
def _attention_terms(model: ModelSpec, recipe: MemoryRecipe, fp8: bool) -> dict[str, float]:
    """What the attention block keeps without recomputation."""
    a, h = model.attention, model.hidden
    c = recipe.cached_input_bytes(fp8)
    H = a.n_heads
    terms = {"attn.x_in": BF16 * h, "attn.x_norm": c * h}
    if a.kind == "mla":
        if a.q_lora_rank:
            terms["attn.c_q"] = BF16 * a.q_lora_rank
        terms["attn.c_kv"] = BF16 * (a.kv_lora_rank + a.qk_rope_head_dim)
        terms["attn.latent_norms"] = c * (a.q_lora_rank + a.kv_lora_rank)
        terms["attn.qkv"] = BF16 * H * (2 * a.qk_head_dim + a.v_head_dim)
    else:
        terms["attn.qkv"] = BF16 * (H + 2 * a.n_kv_heads) * a.head_dim
    terms["attn.out"] = recipe.attn_out_bytes * H * a.out_head_dim
    terms["attn.lse"] = FP32 * H
    return terms


def layer_terms(model: ModelSpec, layer: int, recipe: MemoryRecipe, fp8: bool = True,
                recompute: str | bool = "deepseek", imbalance: float = 1.0, tp_replicas: int = 1, etp: int = 1
                ) -> dict[str, float]:
    """Bytes kept per token for the backward of transformer layer `layer` (before the division by tp).
    `tp_replicas`: copies of a token-wise tensor across the TP group (tp without sequence parallelism, else 1);
    only the "full" policy's layer input uses it (the other terms keep the module's /tp convention).
    `etp`: expert tensor parallelism keeps etp x the routed rows (all-gathered over the etp group), each with
    its e / etp slice of the SwiGLU input (`workloads.moe_dispatch`).
    A selective policy drops, from what the layer keeps without recomputation, the terms of each of its modules
    (`workloads.recompute.DROPS`; "mla_up_proj" only on MLA, where q, k, v are up-projection outputs); a "full:N"
    policy applies to layers already resolved by `recompute.layer_policy` (here, unresolved, as "full")."""
    policy = layer_policy(recompute_policy(recompute), None)
    h = model.hidden
    if policy == "full":
        return {"layer.in": BF16 * h * tp_replicas}
    if policy == op_sac.POLICY:  # torchtitan's op-level SAC: the saved op outputs (`workloads.op_sac`)
        return op_sac.kept_terms(model)
    terms = _keep_terms(model, layer, recipe, fp8, imbalance, etp)
    for module in modules(policy):
        if module == "mla_up_proj" and model.attention.kind != "mla":
            continue
        for name in DROPS[module]:
            terms.pop(name, None)
    return terms


def _keep_terms(model: ModelSpec, layer: int, recipe: MemoryRecipe, fp8: bool, imbalance: float, etp: int
                ) -> dict[str, float]:
    """What layer `layer` keeps per token without recomputation (terms in the module docstring)."""
    h = model.hidden
    c = recipe.cached_input_bytes(fp8)
    terms = _attention_terms(model, recipe, fp8)
    if not model.parallel_block:  # a parallel block's FFN norm reads the layer input, kept as attn.x_in
        terms["ffn.h_mid"] = BF16 * h
    terms["ffn.h_norm"] = c * h
    if not model.is_moe_layer(layer):
        if model.ffn_activation in ("gelu", "relu2"):  # w1 output, the activation's input
            terms[f"ffn.{model.ffn_activation}_in"] = c * model.dense_intermediate
        else:
            terms["ffn.swiglu_in"] = c * 2 * model.dense_intermediate  # w1 and w3 outputs, the SwiGLU inputs
        return terms
    moe = model.moe
    e = moe.expert_intermediate
    terms["moe.router_in"] = BF16 * h
    terms["moe.topk"] = moe.top_k * (FP32 + INT32)
    if moe.n_shared_experts:
        terms["moe.shared_swiglu_in"] = c * 2 * moe.n_shared_experts * e
    terms["moe.routed_rows"] = moe.top_k * imbalance * etp * (c * h + c * 2 * e / etp + recipe.gate_bytes)
    return terms


def head_terms(model: ModelSpec, recipe: MemoryRecipe) -> dict[str, float]:
    """Final RMSNorm input, head input (BF16 head), logits for the loss backward, loss statistics."""
    return {"head.norm_in": BF16 * model.hidden, "head.in": BF16 * model.hidden,
            "head.logits": recipe.logit_bytes * model.vocab, "head.lse": FP32}


def unit_bytes_per_token(model: ModelSpec, layers: range, first: bool, last: bool, recipe: MemoryRecipe,
                         fp8: bool = True, recompute: str | bool = "deepseek", imbalance: float = 1.0,
                         tp_replicas: int = 1, etp: int = 1, holds: StageHolds | None = None) -> float:
    """Bytes per token a stage keeps for one micro-batch (before /tp): its layers, and on the last stage the head
    and the MTP modules (norm inputs, projection input, block, head). The embedding keeps only token ids.
    `holds` (`workloads.pipeline_layout.stage_holds`, default: head and MTP on the last stage) places the head
    and the MTP modules' inputs and blocks, and their heads, where a pipeline layout puts them."""
    policy = recompute_policy(recompute)
    # "full:N": the first N layers of the stage keep only their input, the others keep everything
    total = sum(sum(layer_terms(model, i, recipe, fp8, layer_policy(policy, i - layers.start), imbalance,
                                tp_replicas, etp).values()) for i in layers)
    holds = holds or StageHolds(first, last, last, last)
    if holds.head or holds.mtp_modules or holds.mtp_heads:
        head = sum(head_terms(model, recipe).values())
        c = recipe.cached_input_bytes(fp8)
        block = sum(layer_terms(model, model.n_layers - 1, recipe, fp8, recompute, imbalance, tp_replicas,
                                etp).values())
        module = (2 * BF16 * model.hidden + c * 2 * model.hidden + block if holds.mtp_modules else 0.0) + (
            head if holds.mtp_heads else 0.0)
        total += (head if holds.head else 0.0) + model.mtp_depth * module
    return total


def chunk_bytes(model: ModelSpec, parallel: ParallelSpec, seq_len: int, stage_layers: tuple[int, ...],
                recipe: MemoryRecipe, fp8: bool = True, recompute: str | bool = "deepseek",
                imbalance: float = 1.0, attention_impl: str = "flash") -> tuple[float, ...]:
    """Activation bytes of one chunk of each stage: micro-batch x seq_len / cp tokens x bytes per token / tp
    (context parallelism: each rank keeps the activations of its own seq_len / cp tokens).
    `attention_impl` "megatron-unfused" (`workloads.unfused_attention`): every layer whose core is not recomputed
    also keeps Korthikanti's 5 a s^2 b / t bytes (softmax output, dropout mask, dropout output); its attn.lse
    term (4 a bytes per token, under 1/(s) of it) is left in."""
    tokens = parallel.micro_batch_size * seq_len // parallel.cp
    out, start = [], 0
    last = len(stage_layers) - 1
    for s, n in enumerate(stage_layers):
        per_token = unit_bytes_per_token(model, range(start, start + n), s == 0, s == last, recipe, fp8, recompute,
                                         imbalance, 1 if parallel.sequence_parallel else parallel.tp,
                                         parallel.etp,
                                         stage_holds(parallel, range(start, start + n), s == 0, s == last))
        out.append(tokens * per_token / parallel.tp + _unfused_scores(model, parallel, seq_len, range(start, start + n),
                                                                      recompute, attention_impl))
        start += n
    return tuple(out)


def _unfused_scores(model: ModelSpec, parallel: ParallelSpec, seq_len: int, layers: range, recompute,
                    attention_impl: str) -> float:
    """Score-matrix bytes a stage's chunk keeps under Megatron-LM's unfused core: `kept_score_bytes` per layer
    that recomputes neither its core ("core_attn", "selective") nor the whole layer ("full")."""
    from gpuhours.workloads.unfused_attention import UNFUSED, check_attention_impl, kept_score_bytes

    if check_attention_impl(attention_impl) != UNFUSED:
        return 0.0
    policy = recompute_policy(recompute)
    kept = 0
    for i in layers:
        lp = layer_policy(policy, i - layers.start)
        kept += not (lp == "full" or (lp != op_sac.POLICY and "core_attn" in modules(lp)))
    heads = model.attention.n_heads // parallel.tp
    return kept * kept_score_bytes(parallel.micro_batch_size, heads, seq_len)


def cp_gathered_kv_bytes(model: ModelSpec, parallel: ParallelSpec, seq_len: int) -> float:
    """Context parallelism's transient buffer: the K/V of the other cp ranks' tokens that one layer gathers,
    (cp-1)/cp x micro_batch_size x seq_len x kv bytes per token (0 without context parallelism). Ring attention
    (`cp_comm = "ring"`, `workloads.ring_cp`) holds at most two received K/V blocks at a time, the one being
    computed and the one arriving: min(2, cp-1) x micro_batch_size x seq_len / cp x kv bytes per token.
    PyTorch's (`cp_comm = "torch"`, `workloads.torch_cp`) all-gathers every rank's K/V, its own included
    (`ft_c.all_gather_tensor` of the concatenated K/V), at the query heads: micro_batch_size x seq_len x
    `sdpa_kv_bytes_per_token`; the fp32 merge and dK/dV buffers are not counted."""
    if parallel.cp == 1:
        return 0.0
    if getattr(parallel, "cp_comm", "all_gather") == "ring":
        from gpuhours.workloads.ring_cp import kv_block_bytes_per_token

        return (min(2, parallel.cp - 1) * parallel.micro_batch_size * seq_len / parallel.cp
                * kv_block_bytes_per_token(model, parallel))
    if getattr(parallel, "cp_comm", "all_gather") == "torch":  # the whole sequence's K/V at the query heads
        from gpuhours.workloads.torch_cp import sdpa_kv_bytes_per_token

        return parallel.micro_batch_size * seq_len * sdpa_kv_bytes_per_token(model, parallel)
    from gpuhours.workloads.layer_ops import cp_kv_bytes_per_token

    return (parallel.cp - 1) / parallel.cp * parallel.micro_batch_size * seq_len * cp_kv_bytes_per_token(model,
                                                                                                         parallel)


# -- the breakdown -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on the busiest rank of a pipeline (every data-parallel replica looks alike)."""

    rank: int
    weights: float
    gradients: float
    master_weights: float
    optimizer_moments: float
    activations: float
    headroom: float
    capacity: float                      # GPUSpec.hbm_bytes
    dense_params: float                  # parameters this rank holds (dense split by tp, experts by ep)
    expert_params: float
    weight_copies: int                   # ParallelSpec.params_copies (DualPipe: 2 stages per rank)
    stages: tuple[int, ...]              # stages the rank holds
    in_flight_chunks: int                # peak chunks alive on this rank
    chunk_bytes: tuple[float, ...]       # activation bytes of one chunk of each stage
    total_per_rank: tuple[float, ...] = field(default=())
    recipe: str = "deepseek-v3"

    @property
    def state(self) -> float:
        return self.weights + self.gradients + self.master_weights + self.optimizer_moments

    @property
    def total(self) -> float:
        return self.state + self.activations + self.headroom

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def free(self) -> float:
        return self.capacity - self.total

    def reason(self) -> str:
        """Empty when it fits; otherwise a one-line explanation with the largest terms."""
        if self.fits:
            return ""
        return (f"out of memory on rank {self.rank}: needs {self.total / _GIB:.1f} GiB of {self.capacity / _GIB:.1f} "
                f"(activations {self.activations / _GIB:.1f}, weights+grads+optimizer {self.state / _GIB:.1f}, "
                f"headroom {self.headroom / _GIB:.1f})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(state=self.state, total=self.total, fits=self.fits, free=self.free,
                 total_gib=self.total / _GIB, capacity_gib=self.capacity / _GIB)
        d["stages"] = list(self.stages)
        d["chunk_bytes"] = list(self.chunk_bytes)
        d["total_per_rank"] = list(self.total_per_rank)
        return d


def rank_state_bytes(dense: float, expert: float, parallel: ParallelSpec, recipe: MemoryRecipe,
                     gathered: float = 0.0) -> dict[str, float]:
    """Weights, gradients, master weights and moments for (dense, expert) parameters held (formulas above).
    `gathered`: ZeRO-3's unsharded working set G, parameters of the units gathered at once."""
    held = dense + expert
    shard = dense / parallel.grad_dp + expert / parallel.expert_dp if parallel.zero_stage >= 1 else held
    once = parallel.fsdp_deferred_reduce  # ZeRO-3 under PP: unsharded gradients, weights gathered after a backward
    weights = held if parallel.zero_stage < 3 or once else shard + gathered
    grads = held if parallel.zero_stage < 2 or once else shard + (gathered if parallel.zero_stage == 3 else 0.0)
    grad_bytes = grad_reduce_bytes(parallel, recipe.grad_bytes)  # the buffer has the reduction's dtype
    return {"weights": recipe.weight_bytes * weights, "gradients": grad_bytes * grads,
            "master_weights": recipe.master_bytes * shard, "optimizer_moments": 2 * recipe.moment_bytes * shard}


def gathered_params(model: ModelSpec, parallel: ParallelSpec, stage_layers: tuple[int, ...], stages) -> float:
    """ZeRO-3's unsharded working set on a rank holding `stages`: the parameters of its two largest units (0
    below ZeRO-3 or without data parallelism)."""
    if parallel.zero_stage < 3 or parallel.fsdp_deferred_reduce or (parallel.grad_dp == 1 and parallel.expert_dp == 1):
        return 0.0
    starts = [0]
    for n in stage_layers:
        starts.append(starts[-1] + n)
    last = len(stage_layers) - 1
    sizes = sorted((d + e for s in stages
                    for _, d, e in unit_params(model, parallel, range(starts[s], starts[s + 1]), s == 0, s == last)),
                   reverse=True)
    return float(sum(sizes[:2]))


def memory_breakdown(scenario, step_result, recipe: MemoryRecipe | None = None) -> MemoryBreakdown:
    """Memory of every rank of the pipeline for the simulated step; the busiest rank is reported."""
    recipe = recipe or load_recipe()
    model, p = scenario.model, scenario.parallel
    stage_layers = tuple(step_result.stage_layers)
    schedule = build_schedule(p.schedule, p.pp, step_result.num_microbatches, vpp=p.vpp)
    opts = scenario.effective_opts()
    per_stage = chunk_bytes(model, p, scenario.plan.seq_len, stage_layers, recipe, opts.fp8, opts.recompute,
                            opts.kept_imbalance, opts.attention_impl)
    act_bytes, act_chunks = peak_in_flight(schedule, per_stage)
    gathered_kv = cp_gathered_kv_bytes(model, p, scenario.plan.seq_len)
    act_bytes = tuple(b + gathered_kv for b in act_bytes)
    rows = []
    for rank, stages in enumerate(_stages_per_rank(schedule)):
        dense, expert = rank_params(model, p, stage_layers, stages)
        state = rank_state_bytes(dense, expert, p, recipe, gathered_params(model, p, stage_layers, stages))
        allocated = sum(state.values()) + act_bytes[rank]
        headroom = recipe.reserved_bytes + recipe.fragmentation * allocated
        rows.append((allocated + headroom, rank, dense, expert, state, headroom, stages))
    total, rank, dense, expert, state, headroom, stages = max(rows, key=lambda r: (r[0], -r[1]))
    return MemoryBreakdown(
        rank=rank, **state, activations=act_bytes[rank], headroom=headroom,
        capacity=scenario.cluster.gpu.hbm_bytes, dense_params=dense, expert_params=expert,
        weight_copies=p.params_copies, stages=tuple(sorted(stages)), in_flight_chunks=act_chunks[rank],
        chunk_bytes=per_stage, total_per_rank=tuple(r[0] for r in rows), recipe=recipe.name)
