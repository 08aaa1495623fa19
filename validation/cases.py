"""Accuracy-suite cases: published, measured training runs as data (validation/cases/*.toml).

One TOML file holds one source table: a `[source]` table (paper or repository, table or section, what the
hardware was), `[defaults]` shared by its cases, `assumptions` (inputs the source does not publish, chosen before
any run was simulated), and one `[[case]]` per measured run with the layout as published, what was measured and
the row as printed. A case's keys override the file's defaults; unknown keys are refused so that a typo cannot
silently drop part of a layout.

Layout keys and what the simulator can express today (anything else is reported as a gap, see `gaps`):

    gpu, gpus, gpus_per_node, nic_gbps, cluster     the machine
    tp, pp, vpp, ep, etp (expert tensor parallelism: ParallelSpec.etp), cp,
    dp (optional: checked against gpus / (tp pp cp)),
    schedule, micro_batch_size, batch, seq_len
    sequence_parallel     true/false
    zero_stage            0, 1, 2 or 3;  fsdp: true means ZeRO-3 (parameters resharded after the forward)
    recompute             "none" | "deepseek" (RMSNorm and MLA up-projections) | "selective" | "full" |
                          "torchtitan-op" (torchtitan's op-level SAC, workloads/op_sac.py)
    overlap_grad_reduce, overlap_param_gather   Megatron-Core's bucketed data-parallel overlap (modelled)
    reshard_after_forward FSDP's option (default true)
    grad_reduce_dtype     "fp32" (default) | "bf16": the bytes data parallelism reduces gradients in (16-bit covers FP16)
    tp_comm_overlap       TP collectives pipelined with their GEMMs (modelled: ParallelSpec.tp_comm_overlap)
    tp_comm_overlap_impl  "asynctp" (default: PyTorch AsyncTP, torchtitan) | "te-userbuffers" (Megatron-Core with
                          Transformer Engine's userbuffers: its GEMMs lose 16 SMs, hwmodels/tp_overlap_sms.py)
    torch_compile         true is a gap (compiler-fused kernels; simulated as the eager run)
    precision             "bf16" | "fp8";  fp8_recipe "blockwise" (DeepSeek/DeepGEMM) | "delayed" | "current" |
                          "tensorwise" (torchao's Float8Linear) | "mxfp8"
                          (casts modelled: OpOptions.fp8_recipe; per-tensor GEMMs at published speed-ups over BF16,
                          not measured on the run's part: a gap)
    attention_kernel      a measured attention kernel the run's software used (hwmodels/data/attention_kernels.toml:
                          flash2, cudnn); absent: the calibration profile's attention efficiency
    host_dispatch         "eager" (default: PyTorch eager launches, every framework here) | "graphs" (CUDA graphs) |
                          "none" (no launch overhead): hwmodels/launch.py
    elementwise_kernels   "fused" (default: one kernel per norm, RoPE, activation) | "eager" (unfused PyTorch ops
                          and their autograd kernels: workloads/eager_ops.py)
    calibrations          profiles to run the case under (default: the tool's default profile)

What was measured (`[case.measured]`): exactly one `metric` of step_time_s, tflops_per_gpu (with
`flop_convention`), tokens_per_s_per_gpu, gpu_hours (a whole run: `plan` names the built-in plan that states it)
or traced_pair_ms (DeepSeek-V3's traced DualPipe F&B pair), its `value` as printed and `printed`, the row or
sentence it comes from.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from gpuhours.workloads.hf_config import model_from_hf_config
from gpuhours.workloads.model import AttentionSpec, ModelSpec
from gpuhours.workloads.ops import FP8_RECIPES, RECOMPUTE_POLICIES
from gpuhours.workloads.parallel import CP_COMMS, GRAD_REDUCE_DTYPES, TP_COMM_OVERLAP_IMPLS
from gpuhours.workloads.presets import list_presets, load_preset

METRICS = ("step_time_s", "tflops_per_gpu", "tokens_per_s_per_gpu", "gpu_hours", "traced_pair_ms")
RECOMPUTE = RECOMPUTE_POLICIES
_LAYOUT_KEYS = {"gpu", "gpus", "gpus_per_node", "nic_gbps", "cluster", "tp", "pp", "vpp", "ep", "etp", "cp", "dp",
                "schedule",
                "micro_batch_size", "batch", "seq_len", "sequence_parallel", "zero_stage", "fsdp", "recompute",
                "overlap_grad_reduce", "overlap_param_gather", "tp_comm_overlap", "precision", "fp8_recipe",
                "reshard_after_forward", "torch_compile", "attention_kernel", "cp_comm", "grad_reduce_dtype",
                "calibrations", "plan", "model", "host_dispatch",
                "elementwise_kernels", "tp_comm_overlap_impl"}
_CASE_KEYS = _LAYOUT_KEYS | {"name", "measured", "printed", "notes"}
_MODEL_KEYS = {"preset", "hf_config", "name", "hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab",
               "ffn_hidden", "ffn_activation", "tie_embeddings"}
_MEASURED_KEYS = {"metric", "value", "flop_convention", "printed", "derived"}


def cases_dir() -> Path:
    return Path(str(resources.files("gpuhours.validation").joinpath("cases")))


# ----------------------------------------------------------------------------------------------- FLOP conventions
def megatron_2021_flops(batch: int, seq_len: int, layers: int, hidden: int, vocab: int) -> float:
    """FLOPs of one step as Narayanan et al. 2021 count them (eq. 3): 96 B s l h^2 (1 + s/6h + V/16lh).

    Counts the GEMMs of forward, backward and the full-recomputation forward (4 passes of 24 B s l h^2 for the
    transformer GEMMs, 4 B s^2 h l per pass for attention scores), plus the logit layer (6 B s h V)."""
    b, s, ln, h, v = batch, seq_len, layers, hidden, vocab
    return 96.0 * b * s * ln * h * h * (1 + s / (6 * h) + v / (16 * ln * h))


FLOP_CONVENTIONS = {"megatron-2021": megatron_2021_flops}


# ------------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Measurement:
    metric: str
    value: float
    printed: str
    flop_convention: str | None = None
    derived: str = ""


@dataclass(frozen=True)
class Case:
    """One published, measured run: model, machine, layout as published, and what was measured."""

    name: str
    group: str
    file: str
    source: dict
    model: ModelSpec
    layout: dict
    measured: Measurement
    assumptions: tuple[str, ...] = ()
    notes: str = ""
    calibrations: tuple[str, ...] = field(default=())

    @property
    def gpus(self) -> int:
        return int(self.layout["gpus"])

    def flops_per_step(self) -> float:
        """The step's FLOPs under the source's own convention (for a TFLOP/s measurement)."""
        conv = FLOP_CONVENTIONS[self.measured.flop_convention]
        m, lay = self.model, self.layout
        return conv(lay["batch"], lay["seq_len"], m.n_layers, m.hidden, m.vocab)

    def measured_time(self) -> float:
        """The measured figure as a time: step seconds, run GPU-hours, or the traced pair's milliseconds."""
        m, lay = self.measured, self.layout
        if m.metric == "tflops_per_gpu":
            return self.flops_per_step() / (m.value * 1e12 * self.gpus)
        if m.metric == "tokens_per_s_per_gpu":
            return lay["batch"] * lay["seq_len"] / (m.value * self.gpus)
        return m.value

    def in_printed_units(self, time: float) -> float:
        """A simulated time in the unit the source printed (inverse of `measured_time`)."""
        m, lay = self.measured, self.layout
        if m.metric == "tflops_per_gpu":
            return self.flops_per_step() / (time * 1e12 * self.gpus)
        if m.metric == "tokens_per_s_per_gpu":
            return lay["batch"] * lay["seq_len"] / (time * self.gpus)
        return time

    def gaps(self) -> list[str]:
        """What the simulator cannot express about this run, each with what it simulates instead."""
        lay, out = self.layout, []
        # FSDP under pipeline parallelism is simulated as PyTorch's pipelining runs it, either reshard_after_forward
        # (one reduce-scatter after the last backward, gathers where parameters are sharded): simulator.fsdp_pipeline
        if lay.get("torch_compile"):
            out.append("torch.compile: compiler-fused kernels not modelled, simulated as the eager run")
        if lay.get("precision") == "fp8" and lay.get("fp8_recipe", "blockwise") != "blockwise":
            # the casts follow the recipe (OpOptions.fp8_recipe); the GEMMs are priced by hwmodels/fp8_tensorwise.py
            out.append(f"FP8 {lay['fp8_recipe']} scaling (per-tensor): casts as the recipe fuses them, GEMMs at "
                       f"the profile's BF16 rates times published per-tensor cuBLASLt FP8 speed-ups "
                       f"(hwmodels/data/fp8_tensorwise.toml: H100, 2023, 16,384-token shapes), not measured here")
        return out

    def inexpressible(self) -> str | None:
        """Why the run cannot be simulated at all (None: it can, perhaps with gaps). Context parallelism is
        modelled (ParallelSpec.cp: all-gather K/V with causal load balancing), so every layout key is expressible
        today; the hook stays for keys that are not."""
        return None


# ------------------------------------------------------------------------------------------------------ loading
def load_cases(paths: list[Path] | None = None) -> list[Case]:
    """Every case of the given files (default: the bundled suite), in file order."""
    paths = paths if paths is not None else sorted(cases_dir().glob("*.toml"))
    out: list[Case] = []
    for path in paths:
        out.extend(load_case_file(path))
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"case names must be unique; repeated: {', '.join(dup)}")
    return out


def load_case_file(path: Path) -> list[Case]:
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ValueError(f"cases file {Path(path).name}: not valid TOML ({exc})") from None
    where = Path(path).name
    src = doc.get("source")
    if not isinstance(src, dict) or not {"group", "title", "reference", "where"} <= set(src):
        raise ValueError(f"{where}: [source] must give group, title, reference and where")
    defaults = dict(doc.get("defaults", {}))
    _only(defaults, _LAYOUT_KEYS | {"measured"}, f"{where} [defaults]")
    assumptions = tuple(doc.get("assumptions", ()))
    cases = []
    for raw in doc.get("case", []):
        _only(raw, _CASE_KEYS, f"{where} case {raw.get('name', '?')!r}")
        merged = {**defaults, **raw}
        merged["model"] = {**defaults.get("model", {}), **raw.get("model", {})}
        merged["measured"] = {**defaults.get("measured", {}), **raw.get("measured", {})}
        cases.append(_case(merged, src, where, assumptions))
    if not cases:
        raise ValueError(f"{where}: no [[case]] tables")
    return cases


def _case(d: dict, src: dict, where: str, assumptions: tuple[str, ...]) -> Case:
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: every case needs a name")
    ctx = f"{where} case {name!r}"
    meas = d["measured"]
    _only(meas, _MEASURED_KEYS, f"{ctx} measured")
    metric = meas.get("metric")
    if metric not in METRICS:
        raise ValueError(f"{ctx}: measured.metric must be one of {', '.join(METRICS)}; got {metric!r}")
    value = meas.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{ctx}: measured.value must be a positive number; got {value!r}")
    conv = meas.get("flop_convention")
    if metric == "tflops_per_gpu" and conv not in FLOP_CONVENTIONS:
        raise ValueError(f"{ctx}: measured.flop_convention must be one of {', '.join(FLOP_CONVENTIONS)}")
    printed = d.get("printed") or meas.get("printed")
    if not printed:
        raise ValueError(f"{ctx}: `printed` (the row or sentence as printed) is required")
    measured = Measurement(metric, float(value), printed, conv, meas.get("derived", ""))
    layout = {k: v for k, v in d.items() if k in _LAYOUT_KEYS and k not in ("model", "calibrations")}
    _check_layout(layout, ctx, metric)
    return Case(name=name, group=src["group"], file=where, source=dict(src), model=_model(d["model"], ctx),
                layout=layout, measured=measured, assumptions=assumptions, notes=d.get("notes", ""),
                calibrations=tuple(d.get("calibrations", ())))


def _check_layout(lay: dict, ctx: str, metric: str) -> None:
    if metric in ("gpu_hours", "traced_pair_ms"):
        return  # the built-in plan (or the traced case) states the layout
    for key in ("gpu", "gpus", "tp", "pp", "batch", "seq_len"):
        if key not in lay:
            raise ValueError(f"{ctx}: `{key}` is required")
    if lay.get("recompute", "none") not in RECOMPUTE:
        raise ValueError(f"{ctx}: recompute must be one of {', '.join(RECOMPUTE)}; got {lay['recompute']!r}")
    if "attention_kernel" in lay:
        from gpuhours.hwmodels.attention_kernels import load_attention_kernel
        try:
            load_attention_kernel(lay["attention_kernel"])
        except ValueError as e:
            raise ValueError(f"{ctx}: {e}") from None
    if lay.get("fp8_recipe", "blockwise") not in FP8_RECIPES:
        raise ValueError(f"{ctx}: fp8_recipe must be one of {', '.join(FP8_RECIPES)}; got {lay['fp8_recipe']!r}")
    if lay.get("cp_comm", "all_gather") not in CP_COMMS:
        raise ValueError(f"{ctx}: cp_comm must be one of {', '.join(CP_COMMS)}; got {lay['cp_comm']!r}")
    if lay.get("tp_comm_overlap_impl", "asynctp") not in TP_COMM_OVERLAP_IMPLS:
        raise ValueError(f"{ctx}: tp_comm_overlap_impl must be one of {', '.join(TP_COMM_OVERLAP_IMPLS)}; "
                         f"got {lay['tp_comm_overlap_impl']!r}")
    if lay.get("grad_reduce_dtype", "fp32") not in GRAD_REDUCE_DTYPES:
        raise ValueError(f"{ctx}: grad_reduce_dtype must be one of {', '.join(GRAD_REDUCE_DTYPES)}; "
                         f"got {lay['grad_reduce_dtype']!r}")
    if lay.get("precision", "bf16") not in ("bf16", "fp8"):
        raise ValueError(f"{ctx}: precision must be bf16 or fp8; got {lay['precision']!r}")
    if lay.get("zero_stage", 0) not in (0, 1, 2, 3):
        raise ValueError(f"{ctx}: zero_stage must be 0, 1, 2 or 3; got {lay['zero_stage']!r}")
    dp, rem = divmod(lay["gpus"], lay["tp"] * lay["pp"] * lay.get("cp", 1))
    if "dp" in lay and (rem or lay["dp"] != dp):
        raise ValueError(f"{ctx}: dp {lay['dp']} must equal gpus / (tp x pp x cp) = {lay['gpus']} / "
                         f"{lay['tp'] * lay['pp'] * lay.get('cp', 1)}")
    if rem or lay["batch"] % (dp * lay.get("micro_batch_size", 1)):
        raise ValueError(f"{ctx}: batch {lay['batch']} must split into micro-batches of "
                         f"{lay.get('micro_batch_size', 1)} over {dp} data-parallel replicas")


def _model(d: dict, ctx: str) -> ModelSpec:
    """A preset, a Hugging Face config.json table, or a GPT-style shape (hidden, layers, heads, vocab)."""
    _only(d, _MODEL_KEYS, f"{ctx} model")
    if "preset" in d:
        if d["preset"] not in list_presets():
            raise ValueError(f"{ctx}: model.preset must be one of {', '.join(list_presets())}")
        return load_preset(d["preset"])
    if "hf_config" in d:
        return model_from_hf_config(d["hf_config"], name=d.get("name"))
    for key in ("hidden", "n_layers", "n_heads", "vocab"):
        if key not in d:
            raise ValueError(f"{ctx}: model.{key} is required (or model.preset / model.hf_config)")
    h, heads = d["hidden"], d["n_heads"]
    activation = d.get("ffn_activation", "swiglu")
    ffn = d.get("ffn_hidden", 4 * h if activation == "gelu" else None)
    if ffn is None:
        raise ValueError(f"{ctx}: model.ffn_hidden is required for a SwiGLU FFN")
    extra = {"ffn_activation": activation} if activation != "swiglu" else {}
    return ModelSpec(name=d.get("name", ctx.split("'")[1]), hidden=h, n_layers=d["n_layers"], vocab=d["vocab"],
                     dense_intermediate=ffn, tie_embeddings=d.get("tie_embeddings", False),
                     attention=AttentionSpec("gqa", heads, n_kv_heads=d.get("n_kv_heads", heads),
                                             head_dim=d.get("head_dim", h // heads)), **extra)


def _only(d: dict, allowed: set, ctx: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{ctx}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def megatron_params(case: Case) -> float:
    """Parameters per eq. (2) of Narayanan et al. 2021: 12 l h^2 (1 + 13/12h + (V + s)/12lh)."""
    m, s = case.model, case.layout["seq_len"]
    ln, h, v = m.n_layers, m.hidden, m.vocab
    return 12 * ln * h * h * (1 + 13 / (12 * h) + (v + s) / (12 * ln * h))


