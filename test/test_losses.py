"""KD losses against hand computations (doc/method.md §5)."""
import math

import pytest
import torch

from blspkd.losses import cif_quantity_loss, embedding_ce, kd_kl


def test_kd_kl_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[0.5, 2.5, 0.0], [1.0, 0.0, 2.0]])
    for temperature in (1.0, 2.0):
        total = 0.0
        for r in range(2):
            zs = [math.exp(v / temperature) for v in s[r].tolist()]
            zt = [math.exp(v / temperature) for v in t[r].tolist()]
            ps = [v / sum(zs) for v in zs]
            pt = [v / sum(zt) for v in zt]
            total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
        assert kd_kl(s, t, temperature).item() == pytest.approx(total / 2, rel=1e-5)


def test_kd_kl_zero_for_equal_logits_and_empty_rows():
    z = torch.randn(4, 11)
    assert kd_kl(z, z.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_kl(torch.zeros(0, 5), torch.zeros(0, 5)).item() == 0.0


def test_kd_kl_gradient_only_to_student_and_shape_error():
    s = torch.randn(3, 7, requires_grad=True)
    t = torch.randn(3, 7)
    kd_kl(s, t, 2.0).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="same shape"):
        kd_kl(torch.randn(2, 5), torch.randn(3, 5))


def test_kd_kl_bf16_inputs_computed_in_float32():
    s, t = torch.randn(5, 13), torch.randn(5, 13)
    ref = kd_kl(s, t, 2.0)
    low = kd_kl(s.bfloat16(), t.bfloat16(), 2.0)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=0.05)


def test_cif_quantity_loss_by_hand():
    loss = cif_quantity_loss(torch.tensor([3.0, 5.0, 12.0]), torch.tensor([4, 5, 10]))
    assert loss.item() == pytest.approx((0.25 + 0.0 + 0.2) / 3)


def test_embedding_ce_exact_embeddings_and_norm_term():
    torch.manual_seed(0)
    emb = torch.randn(20, 8)
    targets = torch.tensor([3, 7, 7, 19])
    loss, acc = embedding_ce(emb[targets], targets, emb, temperature=0.1)
    cos = torch.nn.functional.normalize(emb[targets], dim=-1) @ torch.nn.functional.normalize(emb, dim=-1).T
    expected_ce = torch.nn.functional.cross_entropy(cos / 0.1, targets)
    assert acc.item() == 1.0
    assert loss.item() == pytest.approx(expected_ce.item(), rel=1e-5)
    # same direction, twice the norm: CE unchanged, plus (log 2)^2
    loss2, _ = embedding_ce(2 * emb[targets], targets, emb, temperature=0.1)
    assert loss2.item() == pytest.approx(expected_ce.item() + math.log(2) ** 2, rel=1e-5)
    # the caller's normalised matrix (the model keeps the frozen one): the same loss and gradient
    v = (2 * emb[targets]).requires_grad_(True)
    loss3, _ = embedding_ce(v, targets, emb, 0.1, unit_embedding=torch.nn.functional.normalize(emb, dim=-1))
    (grad3,) = torch.autograd.grad(loss3, v)
    v.grad = None
    (grad2,) = torch.autograd.grad(embedding_ce(v, targets, emb, 0.1)[0], v)
    assert loss3.item() == pytest.approx(loss2.item(), rel=1e-6)
    assert torch.allclose(grad3, grad2, rtol=1e-5, atol=1e-7)
