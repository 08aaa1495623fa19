"""Activation recomputation policies: which parts of a transformer layer the backward pass runs forward again, and
so which activations the layer need not keep (`OpOptions.recompute`; time in `workloads.layer_ops`, memory in
`workloads.memory`).

A policy is written as one string (CLI `--recompute`, plan `[numerics] recompute`, sweep key `recompute`):

    none                      nothing is recomputed: every activation the backward needs is kept
    full                      every layer runs its whole forward again before its backward; it keeps only its input
    full:N                    the first N transformer layers of every pipeline stage (every virtual stage under
                              interleaving) are fully recomputed, the others recompute nothing: Megatron-Core's
                              `--recompute-granularity full --recompute-method block --recompute-num-layers N`
    selective:m1,m2,...       the named modules of every layer are recomputed (Megatron-Core's
                              `--recompute-granularity selective --recompute-modules m1 m2 ...`)
    selective                 alias of selective:core_attn (Korthikanti et al. 2022, arXiv 2205.05198)
    deepseek                  alias of selective:layernorm,mla_up_proj (DeepSeek-V3, arXiv 2412.19437 sec. 3.3.2:
                              every RMSNorm and the MLA up-projections)
    torchtitan-op             torchtitan's op-level selective AC (`selective_ac_option = "op"`, torchtitan 9dec370
                              torchtitan/parallelisms/parallelize_llama.py lines 214-271, `_save_list` and
                              `_custom_policy`): every block keeps the outputs of its mms but every second one
                              (wq, wv, w1, w2 kept; wk, wo, w3 run again) and of SDPA, and recomputes all its
                              element-wise ops; the attention core is not recomputed (`workloads.op_sac`)

A plan may also give a list of module names (`recompute = ["core_attn", "layernorm"]`) or the legacy booleans
(true: "deepseek", false: "none"). Megatron-Core takes the module list only with selective granularity and the
layer count only with full granularity (`recompute_num_layers` "must be None for selective"), so a policy is one or
the other: "full:2+selective:core_attn" is not a policy.

Modules (Megatron-Core's `TransformerConfig.recompute_modules` names; what each means in this model's ops):
    core_attn       the attention core (QK^T, softmax, PV): run again just before its backward; the softmax
                    statistics are no longer kept (a FlashAttention-style core keeps no L x L scores anyway).
    layernorm       the two norms of the layer (before attention and before the FFN): their outputs (the cached
                    inputs of the QKV / down-projection GEMMs, of the FFN or MoE GEMMs, and the router's input)
                    are dropped and the norms run again at the start of their blocks' backward.
    mla_up_proj     MLA only: the latent norms and the query and key/value up-projections run again; their
                    outputs (the latent-norm outputs and the up-projected q, k, v) are dropped. The RoPE of the
                    recomputed q and k is not charged again (Assumption: fused into the up-projection epilogue,
                    as DeepSeek-V3's recipe is counted here since it was first modelled).
    mlp             dense-FFN layers: the whole FFN (its GEMMs, its activation and its tensor-parallel
                    collectives) runs again before its backward; the FFN keeps only its input, so the activation's
                    input (the w1/w3 outputs) is dropped.
    moe_act         the routed experts' activation: its output is recomputed from its input before w2's
                    backward. Every FFN in this model already does so (DeepSeek-V3 sec. 3.3.4: the SwiGLU input
                    is cached and its output recomputed, counted in the activation's backward traffic), so this
                    module adds no op and drops no byte beyond "none"; it is accepted for Megatron-Core
                    compatibility.
    moe             MoE layers: the whole MoE block (router, dispatch, routed and shared experts, combine) runs
                    again before its backward; the block keeps only its input (top-k choice, routed rows and the
                    shared experts' activation input are dropped).
    shared_experts  MoE layers: the shared experts' FFN runs again before its backward; their activation input is
                    dropped. Inside "moe" when both are given.
"""

from __future__ import annotations

MODULES = ("core_attn", "layernorm", "mla_up_proj", "mlp", "moe_act", "moe", "shared_experts")
NAMED = ("none", "deepseek", "selective", "full", "torchtitan-op")  # named policies (not module sets)
ALIASES = {"selective": frozenset({"core_attn"}), "deepseek": frozenset({"layernorm", "mla_up_proj"})}

# Activation terms of `workloads.memory.layer_terms` each module drops (mla_up_proj's only on MLA layers).
DROPS = {
    "core_attn": ("attn.lse",),
    "layernorm": ("attn.x_norm", "ffn.h_norm", "moe.router_in"),
    "mla_up_proj": ("attn.latent_norms", "attn.qkv"),
    "mlp": ("ffn.swiglu_in", "ffn.gelu_in", "ffn.relu2_in"),
    "moe_act": (),
    "moe": ("moe.topk", "moe.shared_swiglu_in", "moe.routed_rows"),
    "shared_experts": ("moe.shared_swiglu_in",),
}

def _bad(value) -> ValueError:
    return ValueError(f"recompute must be one of none, deepseek, selective, full, torchtitan-op, full:N (the first "
                      f"N layers of "
                      f"every pipeline stage) or selective:<modules> (comma-separated, from {', '.join(MODULES)}), "
                      f"or true/false; got {value!r}")


def _modules_policy(names, value) -> str:
    mods = set()
    for name in names:
        name = name.strip() if isinstance(name, str) else name
        if name not in MODULES:
            raise ValueError(f"recompute: unknown module {name!r} in {value!r}; allowed modules: {', '.join(MODULES)}")
        mods.add(name)
    if not mods:
        return "none"
    for alias, alias_mods in ALIASES.items():
        if mods == alias_mods:
            return alias
    return "selective:" + ",".join(m for m in MODULES if m in mods)


def recompute_policy(value) -> str:
    """The canonical policy string of a CLI / plan value (see the module docstring): a name, "full:N",
    "selective:<modules>", a list of module names, or a legacy boolean. Module sets equal to an alias's become
    the alias ("selective:core_attn" -> "selective"), the others list their modules in `MODULES` order. Raises a
    one-line ValueError naming `recompute` and the allowed values (or the allowed modules)."""
    if isinstance(value, bool):
        return "deepseek" if value else "none"
    if isinstance(value, (list, tuple)):
        return _modules_policy(value, value)
    if not isinstance(value, str):
        raise _bad(value)
    text = value.strip()
    if text in NAMED:
        return text
    kind, sep, rest = text.partition(":")
    if sep and kind.strip() == "selective":
        names = [n for n in rest.split(",")]
        if not rest.strip() or any(not n.strip() for n in names):
            raise _bad(value)
        return _modules_policy(names, value)
    if sep and kind.strip() == "full":
        n = rest.strip()
        if "selective" in n or "+" in n or "," in n:
            raise ValueError(f"recompute: full:N and selective modules cannot be combined (Megatron-Core takes "
                             f"--recompute-modules only with selective granularity and --recompute-num-layers only "
                             f"with full); got {value!r}")
        if not n.isdigit():
            raise ValueError(f"recompute full:N needs N, the layers of every pipeline stage to recompute, as a whole "
                             f"number >= 0; got {value!r}")
        return f"full:{int(n)}"
    raise _bad(value)


def full_layers(policy: str) -> int | None:
    """N of a "full:N" policy; None for every other policy."""
    return int(policy.split(":", 1)[1]) if policy.startswith("full:") else None


def modules(policy: str) -> frozenset[str]:
    """The modules a selective policy recomputes (empty for none, full and full:N)."""
    if policy in ALIASES:
        return ALIASES[policy]
    if policy.startswith("selective:"):
        return frozenset(policy.split(":", 1)[1].split(","))
    return frozenset()


def layer_policy(policy: str, stage_position: int | None) -> str:
    """The policy one transformer layer follows. Under "full:N" a layer among the first N of its (virtual) stage
    (`stage_position` < N, counted from 0) is fully recomputed ("full") and the others recompute nothing ("none");
    a block outside the stage's layer count (`stage_position` None: an MTP module's block) follows "full", as
    Megatron-Core checkpoints its MTP layers whenever the granularity is full. Other policies apply to every
    layer unchanged."""
    n = full_layers(policy)
    if n is None:
        return policy
    return "full" if stage_position is None or stage_position < n else "none"
