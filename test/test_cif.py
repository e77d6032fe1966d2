"""CIF (doc/method.md §3.3) against a deliberately simple frame-by-frame loop, gradients, and the CFormer adapter."""
import pytest
import torch

from blspkd.models.cif import CFormer, cif_weights, integrate_and_fire, pool_frames


def loop_cif(hidden, alphas, num_tokens=None, threshold=1.0):
    """Textbook CIF, one utterance and one frame at a time: accumulate weight; whenever the accumulator reaches the
    threshold, spend just enough of the current frame to fill it, emit a token, and go on with the rest of the frame.
    The last token gets whatever is left at the end."""
    out, counts = [], []
    for b in range(hidden.shape[0]):
        a = alphas[b].double()
        h = hidden[b].double()
        total = float(a.sum())
        n = max(1, round(total / threshold)) if num_tokens is None else int(num_tokens[b])
        a = a * n * threshold / max(total, 1e-6)
        tokens, acc_w, acc_v = [], 0.0, torch.zeros(h.shape[1], dtype=torch.float64)
        for t in range(h.shape[0]):
            remaining = float(a[t])
            while acc_w + remaining >= threshold and len(tokens) < n - 1:
                take = threshold - acc_w
                tokens.append(acc_v + take * h[t])
                acc_w, acc_v = 0.0, torch.zeros_like(acc_v)
                remaining -= take
            acc_w += remaining
            acc_v = acc_v + remaining * h[t]
        tokens.append(acc_v)
        out.append(torch.stack(tokens))
        counts.append(n)
    return out, counts


def random_case(b, t, c, seed, big=False, lengths=None):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, c, generator=g)
    alphas = torch.rand(b, t, generator=g) * (3.0 if big else 1.0)
    if lengths is not None:
        mask = torch.arange(t).view(1, -1) < torch.tensor(lengths).view(-1, 1)
        alphas = alphas * mask
    return hidden, alphas


def check_against_loop(hidden, alphas, num_tokens=None, threshold=1.0):
    tokens, mask, counts = integrate_and_fire(hidden, alphas, num_tokens, threshold)
    ref, ref_counts = loop_cif(hidden, alphas, num_tokens, threshold)
    assert counts.tolist() == ref_counts
    assert mask.sum(1).tolist() == ref_counts
    assert tokens.shape == (hidden.shape[0], max(ref_counts), hidden.shape[2])
    for b, r in enumerate(ref):
        torch.testing.assert_close(tokens[b, : len(r)].double(), r, atol=1e-5, rtol=1e-5)
        assert torch.all(tokens[b, len(r):] == 0)


@pytest.mark.parametrize("b,t,c,seed", [(1, 7, 3, 0), (3, 20, 5, 1), (4, 57, 8, 2), (2, 200, 16, 3)])
def test_matches_loop_natural_count(b, t, c, seed):
    check_against_loop(*random_case(b, t, c, seed))


def test_matches_loop_with_padding():
    hidden, alphas = random_case(3, 30, 4, 4, lengths=[30, 11, 2])
    check_against_loop(hidden, alphas)
    check_against_loop(hidden, alphas, torch.tensor([9, 5, 3]))


def test_matches_loop_alphas_above_one_fire_several_times_per_frame():
    hidden, alphas = random_case(2, 10, 4, 5, big=True)
    # forcing many more tokens than frames makes every frame fire several tokens
    check_against_loop(hidden, alphas, torch.tensor([35, 23]))


def test_matches_loop_forced_counts_larger_and_smaller():
    hidden, alphas = random_case(4, 40, 6, 6)
    natural = alphas.sum(1).round().long()
    check_against_loop(hidden, alphas, natural + torch.tensor([5, 0, 1, 9]))
    check_against_loop(hidden, alphas, (natural - torch.tensor([3, 7, 1, 2])).clamp(min=1))
    check_against_loop(hidden, alphas, torch.ones(4, dtype=torch.long))


def test_non_unit_threshold():
    hidden, alphas = random_case(2, 25, 3, 7)
    check_against_loop(hidden, alphas, torch.tensor([4, 6]), threshold=0.8)
    check_against_loop(hidden, alphas, None, threshold=0.8)


def test_mass_conservation_and_unit_weights():
    """With constant hidden = 1 the token value is its total weight: 1 for all but the last, total mass N."""
    _, alphas = random_case(3, 50, 1, 8, lengths=[50, 33, 9])
    n = torch.tensor([12, 20, 4])
    tokens, mask, counts = integrate_and_fire(torch.ones(3, 50, 1), alphas, n)
    w = tokens[..., 0]
    for b in range(3):
        k = int(counts[b])
        torch.testing.assert_close(w[b, : k - 1], torch.ones(k - 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(w[b, :k].sum(), torch.tensor(float(k)), atol=1e-4, rtol=0)


def test_dense_weights_rows_and_columns():
    """W[k, :] sums to 1 for every token but the last, which gets the rest; column t sums to alpha'_t."""
    _, alphas = random_case(2, 30, 1, 10, big=True, lengths=[30, 17])
    n = torch.tensor([25, 6])
    w = cif_weights(alphas, n)
    assert w.shape == (2, 25, 30) and w.dtype == torch.float64
    scaled = alphas.double() * (n / alphas.double().sum(1)).unsqueeze(1)
    torch.testing.assert_close(w.sum(1), scaled, atol=1e-9, rtol=0)
    torch.testing.assert_close(w[0, :24].sum(1), torch.ones(24, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(w[1, :5].sum(1), torch.ones(5, dtype=torch.float64), atol=1e-9, rtol=0)
    assert torch.all(w[1, 6:] == 0) and torch.all(w[1, :, 17:] == 0)


def test_tiny_and_zero_alpha_sum_are_safe():
    hidden = torch.randn(2, 6, 3)
    alphas = torch.zeros(2, 6, requires_grad=True)
    tokens, mask, counts = integrate_and_fire(hidden, alphas * 1e-12 + torch.tensor([0.0, 1e-9]).view(2, 1))
    assert counts.tolist() == [1, 1]
    assert torch.isfinite(tokens).all()
    tokens.sum().backward()
    assert torch.isfinite(alphas.grad).all()
    tokens, _, _ = integrate_and_fire(hidden, torch.zeros(2, 6), torch.tensor([3, 2]))
    assert torch.isfinite(tokens).all() and tokens.abs().max() == 0


def test_zero_token_count_is_an_error():
    with pytest.raises(ValueError, match="every num_tokens must be >= 1"):
        integrate_and_fire(torch.randn(1, 4, 2), torch.rand(1, 4), torch.tensor([0]))


def test_gradcheck_double():
    torch.manual_seed(9)
    hidden = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    alphas = (torch.rand(2, 6, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    n = torch.tensor([3, 2])
    assert torch.autograd.gradcheck(lambda h, a: integrate_and_fire(h, a, n)[0], (hidden, alphas), eps=1e-7,
                                    atol=1e-5)


def test_pool_frames_ignores_padding():
    x = torch.arange(10.0).view(1, 5, 2).repeat(2, 1, 1)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    pooled, pmask = pool_frames(x, mask, 2)
    assert pmask.tolist() == [[True, True, True], [True, True, False]]
    torch.testing.assert_close(pooled[0], torch.tensor([[1.0, 2.0], [5.0, 6.0], [8.0, 9.0]]))
    torch.testing.assert_close(pooled[1, :2], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))


@pytest.mark.parametrize("pooling", [1, 2])
def test_cformer_shapes_counts_and_batch_invariance(pooling):
    torch.manual_seed(0)
    adapter = CFormer(input_dim=12, llm_dim=20, d_model=16, num_heads=2, ffn_dim=32, num_pre_cif_layers=2,
                      num_post_cif_layers=2, frame_pooling=pooling).eval()
    frames = torch.randn(3, 40, 12)
    lengths = torch.tensor([40, 25, 9])
    mask = torch.arange(40).view(1, -1) < lengths.view(-1, 1)
    n = torch.tensor([7, 4, 2])
    out = adapter(frames, mask, n)
    assert out.embeds.shape == (3, 7, 20)
    assert out.mask.sum(1).tolist() == [7, 4, 2]
    assert torch.all(out.embeds[~out.mask] == 0)
    for b in range(3):
        single = adapter(frames[b:b + 1, : lengths[b]], mask[b:b + 1, : lengths[b]], n[b:b + 1])
        torch.testing.assert_close(out.embeds[b, : n[b]], single.embeds[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.alpha_sum[b], single.alpha_sum[0], atol=1e-5, rtol=1e-5)
    predicted = adapter(frames, mask)
    expected = out.alpha_sum.round().clamp(min=1).long()
    assert predicted.num_tokens.tolist() == expected.tolist()


def test_cformer_gradients_reach_alphas():
    torch.manual_seed(1)
    adapter = CFormer(input_dim=8, llm_dim=8, d_model=8, num_heads=2, ffn_dim=16, num_pre_cif_layers=1,
                      num_post_cif_layers=1)
    frames = torch.randn(2, 10, 8)
    out = adapter(frames, torch.ones(2, 10, dtype=torch.bool), torch.tensor([3, 4]))
    (out.embeds.sum() + out.alpha_sum.sum()).backward()
    assert adapter.alpha_norm.weight.grad is not None and adapter.alpha_norm.weight.grad[-1] != 0
    assert all(torch.isfinite(p.grad).all() for p in adapter.parameters() if p.grad is not None)
