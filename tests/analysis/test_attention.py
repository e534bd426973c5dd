import numpy as np
import pytest
import torch

from analysis.attention import (
    AttentionRedundancy,
    AttentionRedundancyResult,
    attention_jsd,
    diagonality,
    utterance_attention_jsd,
    utterance_head_mean_attention_jsd,
)


def _np_jsd_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Direct float64 JSD in bits per row: 1/2 KL(p||m) + 1/2 KL(q||m), 0 log 0 = 0."""
    m = 0.5 * (p + q)

    def kl(a, b):
        safe_a = np.where(a > 0, a, 1.0)
        safe_b = np.where(a > 0, b, 1.0)
        return np.where(a > 0, a * np.log2(safe_a / safe_b), 0.0).sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _random_attention(generator, *shape, sparsity=0.0):
    logits = torch.randn(*shape, generator=generator, dtype=torch.float64)
    if sparsity:
        drop = torch.rand(*shape, generator=generator) < sparsity
        drop[..., 0] = False  # keep every row non-empty
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def _padded_batch(generator, lengths, heads, time):
    """Masked-softmax attention [batch, heads, time, time] plus the unpadded blocks."""
    logits = torch.randn(len(lengths), heads, time, time, generator=generator, dtype=torch.float64)
    key_mask = torch.arange(time)[None, :] >= torch.tensor(lengths)[:, None]  # [batch, time]
    attn = torch.softmax(logits.masked_fill(key_mask[:, None, None, :], float("-inf")), dim=-1)
    attn = attn.masked_fill(key_mask[:, None, :, None], 0.0)  # padded query rows: zeros
    blocks = [torch.softmax(logits[b, :, :n, :n], dim=-1) for b, n in enumerate(lengths)]
    return attn, blocks


def test_identical_rows_have_zero_jsd():
    p = _random_attention(torch.Generator().manual_seed(0), 2, 3, 6, 6, sparsity=0.3)
    assert attention_jsd(p, p.clone()) == pytest.approx(0.0, abs=1e-15)


def test_disjoint_rows_have_one_bit():
    eye = torch.eye(5, dtype=torch.float64)
    shifted = eye.roll(1, dims=1)  # every row's single key differs
    assert attention_jsd(eye, shifted) == pytest.approx(1.0, abs=1e-12)
    left = torch.zeros(4, 6, dtype=torch.float64)
    left[:, :3] = 1 / 3
    assert attention_jsd(left, left.flip(-1)) == pytest.approx(1.0, abs=1e-12)


def test_jsd_is_symmetric_and_matches_numpy_reference():
    g = torch.Generator().manual_seed(1)
    p = _random_attention(g, 3, 2, 7, 7, sparsity=0.4)
    q = _random_attention(g, 3, 2, 7, 7, sparsity=0.4)
    expected = _np_jsd_rows(p.numpy(), q.numpy()).mean()
    assert attention_jsd(p, q) == pytest.approx(expected, abs=1e-12)
    assert attention_jsd(q, p) == pytest.approx(attention_jsd(p, q), abs=1e-15)
    assert attention_jsd(p.float(), q.float()) == pytest.approx(expected, abs=1e-5)
    assert 0.0 < expected < 1.0


@pytest.mark.parametrize(
    "p, q, message",
    [
        (torch.full((3, 3), 1 / 3), torch.full((3, 4), 1 / 4), "same shape"),
        (torch.tensor([[1.5, -0.5]]), torch.tensor([[0.5, 0.5]]), "negative"),
        (torch.tensor([[float("nan"), 1.0]]), torch.tensor([[0.5, 0.5]]), "NaN"),
        (torch.tensor([[0.5, 0.6]]), torch.tensor([[0.5, 0.5]]), "sum to 1"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), r"\[\.\.\., queries, keys\]"),
    ],
)
def test_jsd_rejects_invalid_input(p, q, message):
    with pytest.raises(ValueError, match=message):
        attention_jsd(p, q)


def test_padded_batch_matches_one_by_one():
    g = torch.Generator().manual_seed(2)
    lengths, heads, time = [7, 4, 5], 3, 7
    p, p_blocks = _padded_batch(g, lengths, heads, time)
    q, q_blocks = _padded_batch(g, lengths, heads, time)
    per_head = utterance_attention_jsd(p, q, torch.tensor(lengths))
    head_mean = utterance_head_mean_attention_jsd(p, q, torch.tensor(lengths))
    assert per_head.shape == (3, heads) and head_mean.shape == (3,)
    for b in range(len(lengths)):
        for h in range(heads):
            assert per_head[b, h].item() == pytest.approx(attention_jsd(p_blocks[b][h], q_blocks[b][h]), abs=1e-12)
        expected = attention_jsd(p_blocks[b].mean(0), q_blocks[b].mean(0))
        assert head_mean[b].item() == pytest.approx(expected, abs=1e-12)
    # convexity of the JSD: averaging heads first can only lower it
    assert (head_mean <= per_head.mean(1) + 1e-12).all()


def test_mass_on_padded_keys_is_rejected_unless_renormalized():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, 6, 6, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 4])
    unmasked = torch.softmax(logits, dim=-1)  # utterance 1 leaks mass onto its 2 padded keys
    with pytest.raises(ValueError, match="utterance 1.*renormalize=True"):
        utterance_attention_jsd(unmasked, unmasked.flip(1), lengths)
    # renormalising a softmax over the unpadded keys is the masked softmax
    key_mask = torch.arange(6)[None, :] >= lengths[:, None]
    masked = torch.softmax(logits.masked_fill(key_mask[:, None, None, :], float("-inf")), dim=-1)
    got = utterance_attention_jsd(unmasked, unmasked.flip(1), lengths, renormalize=True)
    want = utterance_attention_jsd(masked, masked.flip(1), lengths)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_diagonality_of_identity_and_uniform_attention():
    eye = torch.eye(6).expand(2, 3, 6, 6)
    torch.testing.assert_close(diagonality(eye, band=0), torch.ones(3, dtype=torch.float64))
    uniform = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    uniform[0] = 1 / 5
    uniform[1, :, :3, :3] = 1 / 3
    # band 1 over n keys: n + 2(n - 1) pairs of n^2; n = 5 -> 13/25, n = 3 -> 7/9
    got = diagonality(uniform, torch.tensor([5, 3]), band=1)
    assert got.item() == pytest.approx((13 / 25 + 7 / 9) / 2, abs=1e-12)
    # band 0: 1/n per row; band >= n - 1: every key
    assert diagonality(uniform[:1], band=0).item() == pytest.approx(1 / 5, abs=1e-12)
    assert diagonality(uniform[:1], band=9).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="band >= 0"):
        diagonality(uniform, band=-1)


def test_redundancy_accumulator_matches_direct_computation_and_streams():
    g = torch.Generator().manual_seed(4)
    num_layers, heads, time, lengths = 3, 2, 6, [6, 3, 5, 4]
    layers = [_padded_batch(g, lengths, heads, time)[0] for _ in range(num_layers)]
    lengths_t = torch.tensor(lengths)

    whole = AttentionRedundancy(num_layers, heads, band=1)
    whole.update(layers, lengths_t)
    result = whole.result()

    streamed = AttentionRedundancy(num_layers, heads, band=1)
    streamed.update([x[:2] for x in layers], lengths_t[:2])
    for b in range(2, 4):  # one utterance at a time, unpadded
        n = lengths[b]
        streamed.update_utterance([x[b, :, :n, :n] for x in layers])
    other = streamed.result()

    assert result.num_utterances == other.num_utterances == 4
    for name in ("per_head", "head_averaged", "head_mean_attention", "diagonality"):
        torch.testing.assert_close(getattr(result, name), getattr(other, name), rtol=0, atol=1e-12)
    for a in range(num_layers):
        for c in range(num_layers):
            want = utterance_attention_jsd(layers[a], layers[c], lengths_t).mean(0)
            torch.testing.assert_close(result.per_head[a, c], want, rtol=0, atol=1e-12)
            want_mean = utterance_head_mean_attention_jsd(layers[a], layers[c], lengths_t).mean()
            assert result.head_mean_attention[a, c].item() == pytest.approx(want_mean.item(), abs=1e-12)
        torch.testing.assert_close(result.diagonality[a], diagonality(layers[a], lengths_t, band=1))
    assert torch.equal(result.per_head, result.per_head.transpose(0, 1))
    assert (result.head_averaged.diagonal() == 0).all()
    torch.testing.assert_close(result.head_averaged, result.per_head.mean(-1))
    restored = AttentionRedundancyResult.from_dict(result.to_dict())
    torch.testing.assert_close(restored.per_head, result.per_head)


def test_redundancy_accumulator_validates_input():
    acc = AttentionRedundancy(2, 2)
    with pytest.raises(ValueError, match="before result"):
        acc.result()
    eye = torch.eye(4).expand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="2 layers, found 1"):
        acc.update([eye])
    with pytest.raises(ValueError, match="2 heads, found 3"):
        acc.update([torch.eye(4).expand(1, 3, 4, 4)] * 2)
    with pytest.raises(ValueError, match=r"lengths\[0\] in \[1, 4\], found 5"):
        acc.update([eye, eye], torch.tensor([5]))


def test_numpy_input_equals_tensor_input():
    g = torch.Generator().manual_seed(7)
    lengths = [5, 3, 4]
    p, _ = _padded_batch(g, lengths, 2, 5)
    q, _ = _padded_batch(g, lengths, 2, 5)
    lengths_t = torch.tensor(lengths)
    # float64 arrays give exactly the tensor result; float32 arrays (and lengths as an array)
    # are computed in float64 like every NumPy input, i.e. as the float64 tensor of their values
    for dtype in (np.float64, np.float32):
        pn, qn = p.numpy().astype(dtype), q.numpy().astype(dtype)
        pt, qt = torch.from_numpy(pn.astype(np.float64)), torch.from_numpy(qn.astype(np.float64))
        block_p, block_q = pn[0, :, :5, :5], qn[0, :, :5, :5]
        assert attention_jsd(block_p, block_q) == attention_jsd(pt[0, :, :5, :5], qt[0, :, :5, :5])
        assert attention_jsd(block_p, qt[0, :, :5, :5]) == attention_jsd(pt[0, :, :5, :5], qt[0, :, :5, :5])
        for lens in (lengths_t, np.asarray(lengths)):
            assert torch.equal(utterance_attention_jsd(pn, qn, lens), utterance_attention_jsd(pt, qt, lengths_t))
            assert torch.equal(utterance_head_mean_attention_jsd(pn, qn, lens),
                               utterance_head_mean_attention_jsd(pt, qt, lengths_t))
            assert torch.equal(diagonality(pn, lens, band=1), diagonality(pt, lengths_t, band=1))
        from_numpy, from_tensor = AttentionRedundancy(2, 2), AttentionRedundancy(2, 2)
        from_numpy.update([pn, qn], np.asarray(lengths))
        from_numpy.update_utterance([pn[1, :, :3, :3], qn[1, :, :3, :3]])
        from_tensor.update([pt, qt], lengths_t)
        from_tensor.update_utterance([pt[1, :, :3, :3], qt[1, :, :3, :3]])
        a, b = from_numpy.result(), from_tensor.result()
        for name in ("per_head", "head_mean_attention", "diagonality"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray, found list"):
        attention_jsd([[1.0]], np.ones((1, 1)))
    with pytest.raises(TypeError, match=r"attentions\[1\] to be a torch.Tensor or numpy.ndarray, found list"):
        AttentionRedundancy(2, 2).update_utterance([pn[0], [[1.0]]])
