"""MLA (naive vs weight-absorbed), the DeepSeek-V3-shaped block and the tiny model's parameter count."""

import dataclasses
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from gpuhours.validation.block import Block, DeepSeekModel, scaled_down  # noqa: E402
from gpuhours.validation.mla import MLA, apply_rope, rope_cos_sin  # noqa: E402
from gpuhours.workloads.model import AttentionSpec  # noqa: E402
from gpuhours.workloads.presets import load_preset  # noqa: E402

V3 = load_preset("deepseek-v3")
TINY = scaled_down(V3)
# float64 on CPU: the two forms differ only by reassociation, so agreement to ~1e-15 relative is expected;
# we allow 1e-12.
TOL64 = 1e-12


def _mla(q_lora: bool, seed=0):
    torch.manual_seed(seed)
    att = TINY.attention if q_lora else dataclasses.replace(TINY.attention, q_lora_rank=0)
    return MLA(TINY.hidden, att).double(), att


@pytest.mark.parametrize("q_lora", [True, False])
def test_absorbed_equals_naive_float64(q_lora):
    mla, _ = _mla(q_lora)
    x = torch.randn(2, 11, TINY.hidden, dtype=torch.float64)
    a, b = mla(x, absorbed=False), mla(x, absorbed=True)
    assert ((a - b).abs().max() / a.abs().max()).item() < TOL64


def test_naive_matches_sdpa_with_scale_one_over_sqrt_qk_head_dim():
    """Independent core: torch SDPA's default scale is 1/sqrt(q.size(-1)) = 1/sqrt(nope + rope)."""
    mla, att = _mla(True)
    x = torch.randn(2, 9, TINY.hidden, dtype=torch.float64)
    q_nope, q_pe, c, k_pe = mla._project(x)
    H = att.n_heads
    k_nope, v = mla.wkv_b(c).unflatten(-1, (H, -1)).split([att.qk_nope_head_dim, att.v_head_dim], -1)
    q = torch.cat([q_nope, q_pe], -1).transpose(1, 2)
    k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, H, -1)], -1).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True).transpose(1, 2)
    ref = mla.wo(o.flatten(-2))
    assert q.shape[-1] == att.qk_head_dim
    assert torch.allclose(mla(x), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("absorbed", [False, True])
def test_causal_future_tokens_do_not_change_the_past(absorbed):
    mla, _ = _mla(True)
    x = torch.randn(1, 10, TINY.hidden, dtype=torch.float64)
    y = x.clone()
    y[:, 6:] += torch.randn_like(y[:, 6:])
    a, b = mla(x, absorbed=absorbed), mla(y, absorbed=absorbed)
    assert torch.allclose(a[:, :6], b[:, :6], rtol=0, atol=1e-13)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = rope_cos_sin(16, 8, 10000.0, dtype=torch.float64)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    qs = apply_rope(q.expand(1, 16, 1, 8), cos, sin)[0, :, 0]
    ks = apply_rope(k.expand(1, 16, 1, 8), cos, sin)[0, :, 0]
    s = qs @ ks.t()
    assert torch.allclose(s[5, 2], s[12, 9]) and torch.allclose(s[3, 3], q @ k)
    assert not torch.allclose(s[5, 2], s[5, 3])


@pytest.mark.parametrize("absorbed", [False, True])
def test_forward_backward_reaches_every_weight(absorbed):
    mla, _ = _mla(True)
    mla = mla.float()
    x = torch.randn(2, 8, TINY.hidden, requires_grad=True)
    mla(x, absorbed=absorbed).square().mean().backward()
    for name, p in mla.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_mla_rejects_gqa():
    with pytest.raises(ValueError, match="kind"):
        MLA(64, AttentionSpec(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=16))


# -- block and model --------------------------------------------------------------------------------------------

def test_block_is_residual():
    """With the output projections of attention and FFN zeroed, a block is the identity (pre-norm residual)."""
    torch.manual_seed(0)
    blk = Block(TINY, 0)
    assert not blk.is_moe
    with torch.no_grad():
        blk.attn.wo.weight.zero_()
        blk.ffn.w2.weight.zero_()
    x = torch.randn(2, 5, TINY.hidden)
    assert torch.equal(blk(x), x)
    assert Block(TINY, TINY.n_layers - 1).is_moe


def _mla_params(h, a):
    H = a.n_heads
    q = (h * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * H * a.qk_head_dim) if a.q_lora_rank else h * H * a.qk_head_dim
    kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank + a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim)
    return q + kv + H * a.v_head_dim * h


def _ffn_params(h, inter):
    return 3 * h * inter


def _moe_params(h, m):
    """gate + routed experts + shared experts (the selection bias is a buffer, counted separately)."""
    return m.n_routed_experts * h + m.n_routed_experts * _ffn_params(h, m.expert_intermediate) \
        + _ffn_params(h, m.n_shared_experts * m.expert_intermediate)


def _block_params(spec, layer):
    ffn = _moe_params(spec.hidden, spec.moe) if spec.is_moe_layer(layer) else _ffn_params(spec.hidden, spec.dense_intermediate)
    return 2 * spec.hidden + _mla_params(spec.hidden, spec.attention) + ffn


def _main_params(spec):
    h, V = spec.hidden, spec.vocab
    return V * h + sum(_block_params(spec, i) for i in range(spec.n_layers)) + h + (0 if spec.tie_embeddings else V * h)


def _mtp_params(spec):
    """per module: 3 RMSNorms (hidden, embedding, before the shared head) + the 2h -> h projection + one block."""
    return spec.mtp_depth * (3 * spec.hidden + 2 * spec.hidden * spec.hidden + _block_params(spec, spec.n_layers))


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_tiny_model_parameter_count_matches_formula():
    torch.manual_seed(0)
    model = DeepSeekModel(TINY)
    assert _count(model) == _main_params(TINY) + _mtp_params(TINY)


def test_full_v3_on_meta_matches_formula_and_published_sizes():
    with torch.device("meta"):
        model = DeepSeekModel(V3)
    total = _count(model)
    main, mtp = _main_params(V3), _mtp_params(V3)
    assert total == main + mtp
    # reference sheet (config-derived): 671.03B main model, MLA 187.1M per layer, one expert 44.04M,
    # README_WEIGHTS: MTP 11.5B unique.
    assert main == pytest.approx(671.03e9, rel=2e-4)
    assert _mla_params(V3.hidden, V3.attention) == pytest.approx(187.1e6, rel=1e-3)
    assert _ffn_params(V3.hidden, V3.moe.expert_intermediate) == pytest.approx(44.04e6, rel=1e-3)
    assert mtp == pytest.approx(11.5e9, rel=1e-2)


def test_tiny_model_forward_backward_on_cpu():
    torch.manual_seed(0)
    model = DeepSeekModel(TINY)
    tokens = torch.randint(0, TINY.vocab, (2, 16))
    out = model(tokens)
    assert out["logits"].shape == (2, 16, TINY.vocab)
    # at initialisation the logits are small, so the loss is near ln(V) (uniform prediction)
    assert abs(out["loss"].item() - math.log(TINY.vocab)) < 1.0
    total = DeepSeekModel.total_loss(out, mtp_weight=0.3)
    assert total.item() == pytest.approx(out["loss"].item() + 0.3 * out["mtp_losses"][0].item(), rel=1e-6)
    total.backward()
    for name, p in model.named_parameters():
        if ".experts." in name:
            continue  # an expert no token chose has no gradient; checked in test_validation_moe
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # absorbed attention gives the same model output
    with torch.no_grad():
        b = model(tokens, absorbed=True)["logits"]
    assert torch.allclose(out["logits"], b, atol=1e-4)


def test_scaled_down_keeps_the_shape_of_v3():
    t = TINY
    assert t.hidden == 64 and t.n_layers == 2 and t.mtp_depth == V3.mtp_depth
    assert t.moe.topk_groups / t.moe.n_groups == V3.moe.topk_groups / V3.moe.n_groups
    assert t.moe.route_scale == V3.moe.route_scale and t.moe.score_func == V3.moe.score_func
    assert t.moe.n_shared_experts == V3.moe.n_shared_experts and t.moe.top_k == V3.moe.top_k
    assert t.attention.qk_rope_head_dim * 2 == t.attention.qk_nope_head_dim  # 64 : 128 in V3
    assert t.n_dense_layers == 1 and t.n_moe_layers == 1
