"""DeepSeekMoE routing and dispatch, and the MTP module (sharing, 2-token loss shapes)."""

import dataclasses

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from gpuhours.validation.block import DeepSeekModel, scaled_down  # noqa: E402
from gpuhours.validation.moe import MoE, reference_moe  # noqa: E402
from gpuhours.workloads.model import MoESpec  # noqa: E402
from gpuhours.workloads.presets import load_preset  # noqa: E402

V3 = load_preset("deepseek-v3")
TINY = scaled_down(V3)
H = 32
# 32 experts in 8 groups of 4; a token may use 2 groups; top-6 so that without the limit tokens spread wider.
SPEC = MoESpec(n_routed_experts=32, n_shared_experts=1, expert_intermediate=8, top_k=6, n_groups=8, topk_groups=2,
               score_func="sigmoid", route_scale=2.5)


def _moe(spec=SPEC, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return MoE(H, spec).to(dtype)


def _groups_used(idx, spec):
    return torch.tensor([len(set((row // spec.experts_per_group).tolist())) for row in idx])


def test_no_token_uses_more_than_topk_groups():
    moe = _moe()
    x = torch.randn(400, H, dtype=torch.float64)
    _, idx = moe.gate(x)
    assert _groups_used(idx, SPEC).max().item() <= SPEC.topk_groups
    # the limit binds: with all groups allowed, some tokens spread over more groups
    free = _moe(dataclasses.replace(SPEC, topk_groups=SPEC.n_groups))
    _, idx_free = free.gate(x)
    assert _groups_used(idx_free, SPEC).max().item() > SPEC.topk_groups


def test_group_score_is_sum_of_top_two():
    """Group 0 holds the single best expert (0.95, 0.10); group 1 two good ones (0.80, 0.80). Sum of the top-2
    picks group 1 (1.60 > 1.05); the max would pick group 0."""
    spec = MoESpec(n_routed_experts=8, n_shared_experts=0, expert_intermediate=4, top_k=2, n_groups=4, topk_groups=1)
    moe = MoE(8, spec).double()
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(8, dtype=torch.float64))
    p = torch.tensor([[0.95, 0.10, 0.80, 0.80, 0.05, 0.05, 0.05, 0.05]], dtype=torch.float64)
    w, idx = moe.gate(torch.logit(p))
    assert sorted(idx[0].tolist()) == [2, 3]
    assert torch.allclose(w, torch.full_like(w, spec.route_scale / 2))


def test_bias_changes_selection_not_gate_normalisation():
    moe = _moe()
    x = torch.randn(200, H, dtype=torch.float64)
    w0, idx0 = moe.gate(x)
    with torch.no_grad():
        moe.gate.bias[5] = 10.0  # expert 5 (group 1) is selected by every token after this
    w1, idx1 = moe.gate(x)
    assert (idx1 == 5).any(dim=1).all() and not (idx0 == 5).any(dim=1).all()
    s = torch.sigmoid(x @ moe.gate.weight.t())  # affinities without the bias
    for w, idx in ((w0, idx0), (w1, idx1)):
        assert torch.allclose(w.sum(-1), torch.full((200,), SPEC.route_scale, dtype=torch.float64))
        expect = s.gather(1, idx) / s.gather(1, idx).sum(-1, keepdim=True) * SPEC.route_scale
        assert torch.allclose(w, expect, rtol=1e-12, atol=0)


@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
def test_vectorised_equals_reference_loop(score_func):
    spec = dataclasses.replace(SPEC, score_func=score_func)
    moe = _moe(spec)
    if moe.gate.bias is not None:
        with torch.no_grad():
            moe.gate.bias.copy_(torch.randn(spec.n_routed_experts, dtype=torch.float64) * 0.1)
    x = torch.randn(3, 7, H, dtype=torch.float64)
    y = moe(x)
    y_ref, w_ref, idx_ref = reference_moe(moe, x)
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    w, idx = moe.gate(x.reshape(-1, H))
    assert torch.equal(idx.sort(-1).values, idx_ref.sort(-1).values)
    assert torch.allclose(w.sort(-1).values, w_ref.sort(-1).values, rtol=0, atol=1e-14)


def test_identical_experts_give_route_scale_times_expert():
    """Conservation: weights sum to route_scale, so with equal experts the routed part is route_scale * expert(x)."""
    moe = _moe(dataclasses.replace(SPEC, n_shared_experts=0))
    with torch.no_grad():
        for w in (moe.experts.w1, moe.experts.w2, moe.experts.w3):
            w.copy_(w[0].expand_as(w))
    x = torch.randn(50, H, dtype=torch.float64)
    assert torch.allclose(moe(x), SPEC.route_scale * moe.experts.expert(0, x), rtol=1e-12, atol=1e-12)


def test_backward_reaches_selected_experts_only():
    moe = _moe(dtype=torch.float32)
    x = torch.randn(6, H, requires_grad=True)
    _, idx = moe.gate(x.detach())
    moe(x).square().sum().backward()
    used = set(idx.flatten().tolist())
    assert moe.gate.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in moe.shared.parameters())
    for e in range(SPEC.n_routed_experts):
        g = moe.experts.w1.grad[e].abs().sum().item()
        assert (g > 0) == (e in used), e
    assert len(used) < SPEC.n_routed_experts  # some experts are idle, so the zero branch is exercised


# -- MTP ------------------------------------------------------------------------------------------------------------

def test_mtp_shares_embedding_and_head_objects():
    model = DeepSeekModel(TINY)
    mtp = model.mtp[0]
    assert mtp.embed is model.embed and mtp.head is model.head
    assert mtp.embed.weight is model.embed.weight and mtp.head.weight is model.head.weight
    ids = [id(p) for p in model.parameters()]
    assert len(ids) == len(set(ids))  # counted once
    assert mtp.block.is_moe


@pytest.mark.parametrize("depth", [1, 2])
def test_mtp_loss_shapes(depth):
    torch.manual_seed(0)
    spec = dataclasses.replace(TINY, mtp_depth=depth)
    model = DeepSeekModel(spec)
    B, S = 2, 10
    tokens = torch.randint(0, spec.vocab, (B, S))
    out = model(tokens)
    assert len(out["mtp_logits"]) == depth
    for k, (logits, loss) in enumerate(zip(out["mtp_logits"], out["mtp_losses"]), start=1):
        assert logits.shape == (B, S - k, spec.vocab)  # position i predicts token i + k + 1
        manual = F.cross_entropy(logits[:, : S - k - 1].reshape(-1, spec.vocab), tokens[:, k + 1:].reshape(-1),
                                 reduction="sum") / (B * (S - k - 1))
        assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_mtp_loss_trains_shared_head_embedding_and_main_model():
    torch.manual_seed(0)
    model = DeepSeekModel(TINY)
    tokens = torch.randint(0, TINY.vocab, (2, 8))
    out = model(tokens)
    out["mtp_losses"][0].backward()
    assert model.head.weight.grad.abs().sum() > 0
    rows = model.embed.weight.grad.abs().sum(-1)
    # The MTP loss covers positions 0..S-3 (targets t_2..t_{S-1}); causally they see the main model's tokens
    # 0..S-3 and the MTP embeddings of tokens 1..S-2. The last token (S-1) only feeds dropped positions.
    seen = tokens[:, :-1].unique()
    assert (rows[seen] > 0).all()
    unseen = torch.ones_like(rows, dtype=torch.bool)
    unseen[seen] = False
    assert (rows[unseen] == 0).all() and unseen.any()
    assert model.layers[0].attn.wo.weight.grad.abs().sum() > 0
    assert model.norm.weight.grad is None  # the main model's final norm is not on the MTP path


def test_mtp_needs_enough_tokens():
    model = DeepSeekModel(TINY)
    with pytest.raises(ValueError, match="sequence length"):
        model(torch.randint(0, TINY.vocab, (1, 2)))
