"""The host-read-free hybrid losses against ESPnet's own functions, and the host waits they save."""

from __future__ import annotations

import pytest
import torch

from kd.models.asr import AsrConfig, build_asr_model
from kd.models.hybrid_losses import ctc_loss, label_smoothing_loss, sos_eos, token_accuracy
from kd.training.syncs import HostSyncCounter

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

VOCAB = 12  # 0 <blank>, 1..10 tokens, 11 <sos/eos>


def padded_text(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    text = torch.randint(1, VOCAB - 1, (len(lengths), int(lengths.max())), generator=g)
    text = text.masked_fill(torch.arange(text.size(1)) >= lengths[:, None], -1)
    return text, lengths


def test_sos_eos_equals_espnet_add_sos_eos():
    from espnet.nets.pytorch_backend.transformer.add_sos_eos import add_sos_eos

    text, lengths = padded_text([5, 1, 3, 5])
    ys_in, targets = sos_eos(text, lengths, VOCAB - 1, VOCAB - 1, -1)
    ref_in, ref_out = add_sos_eos(text, VOCAB - 1, VOCAB - 1, -1)
    assert torch.equal(ys_in, ref_in) and torch.equal(targets, ref_out)
    assert targets[1].tolist() == [int(text[1, 0]), VOCAB - 1, -1, -1, -1, -1]


def test_ctc_loss_equals_espnet_ctc_with_gradients():
    from espnet2.asr.ctc import CTC

    torch.manual_seed(0)
    layer = CTC(odim=VOCAB, encoder_output_size=8)
    hidden = torch.randn(4, 9, 8, requires_grad=True)
    hidden_lengths = torch.tensor([9, 7, 9, 2])  # the last is shorter than its transcript: zero_infinity
    text, lengths = padded_text([4, 2, 6, 3], seed=1)
    reference = layer(hidden, hidden_lengths, text, lengths)
    (ref_grad,) = torch.autograd.grad(reference, hidden)
    ours = ctc_loss(layer.log_softmax(hidden), hidden_lengths, text, lengths)
    (grad,) = torch.autograd.grad(ours, hidden)
    assert float(ours) == pytest.approx(float(reference), rel=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    # the impossible utterance contributes 0 (not inf), as in ESPnet
    alone = ctc_loss(layer.log_softmax(hidden[3:]), hidden_lengths[3:], text[3:, :3], lengths[3:])
    assert float(alone) == 0.0


@pytest.mark.parametrize("smoothing", [0.0, 0.15, 0.3])
@pytest.mark.parametrize("normalize_length", [False, True])
def test_label_smoothing_loss_equals_espnet_criterion(smoothing, normalize_length):
    from espnet.nets.pytorch_backend.transformer.label_smoothing_loss import LabelSmoothingLoss

    torch.manual_seed(0)
    logits = torch.randn(3, 6, VOCAB, requires_grad=True)
    text, lengths = padded_text([5, 2, 3], seed=2)
    _, targets = sos_eos(text, lengths, VOCAB - 1, VOCAB - 1)
    criterion = LabelSmoothingLoss(VOCAB, -1, smoothing, normalize_length=normalize_length)
    reference = criterion(logits, targets)
    (ref_grad,) = torch.autograd.grad(reference, logits)
    ours = label_smoothing_loss(logits, targets, smoothing=smoothing, normalize_length=normalize_length)
    (grad,) = torch.autograd.grad(ours, logits)
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_token_accuracy_equals_espnet_th_accuracy():
    from espnet.nets.pytorch_backend.nets_utils import th_accuracy

    torch.manual_seed(0)
    logits = torch.randn(3, 6, VOCAB)
    text, lengths = padded_text([5, 2, 3], seed=3)
    _, targets = sos_eos(text, lengths, VOCAB - 1, VOCAB - 1)
    targets[0, :3] = logits[0, :3].argmax(-1)  # some right answers
    ours = token_accuracy(logits, targets)
    assert ours.dim() == 0
    assert float(ours) == pytest.approx(th_accuracy(logits.reshape(-1, VOCAB), targets, -1), abs=1e-7)
    pred = logits.argmax(-1).tolist()
    real = [(b, i) for b in range(3) for i in range(6) if int(targets[b, i]) >= 0]
    assert float(ours) == pytest.approx(sum(pred[b][i] == int(targets[b, i]) for b, i in real) / len(real))
    assert float(ours) >= 3 / len(real)


def model_and_batch(batch_size: int, uncertainty_head: bool = True):
    torch.manual_seed(0)
    model = build_asr_model(AsrConfig.tiny(vocab_size=VOCAB, uncertainty_head=uncertainty_head))
    g = torch.Generator().manual_seed(batch_size)
    lengths = torch.randint(4000, 8000, (batch_size,), generator=g)
    lengths[0] = 8000
    speech = 0.1 * torch.randn(batch_size, 8000, generator=g) * (torch.arange(8000) < lengths[:, None])
    text, text_lengths = padded_text(torch.randint(1, 6, (batch_size,), generator=g).tolist(), seed=batch_size)
    return model, (speech, lengths, text, text_lengths)


def test_model_forward_matches_the_espnet_functions_with_gradients():
    model, batch = model_and_batch(4)
    model.eval()  # no dropout: both passes see the same network
    outs, grads = [], []
    for espnet_losses in (False, True):
        model.zero_grad()
        out = model(*batch, generator=torch.Generator().manual_seed(0), espnet_losses=espnet_losses)
        out.loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    fast, ref = outs
    for name in ("loss", "loss_ctc", "loss_att", "loss_aleatoric", "acc"):
        assert float(getattr(fast, name)) == pytest.approx(float(getattr(ref, name)), rel=1e-5), name
    assert torch.equal(fast.targets, ref.targets)
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def count_training_waits(batch_size: int, espnet_losses: bool) -> HostSyncCounter:
    model, batch = model_and_batch(batch_size)
    model.train()
    if not espnet_losses:
        model.check_batch(*batch)  # the loop checks on the host, before moving the batch
    with HostSyncCounter() as counter:
        out = model(*batch, generator=torch.Generator().manual_seed(0), check=espnet_losses,
                    espnet_losses=espnet_losses)
        out.loss.backward()
    return counter


def test_training_forward_waits_do_not_grow_with_the_batch():
    small, large = count_training_waits(2, False), count_training_waits(8, False)
    # what is left is ESPnet's encoder and decoder (padding masks) and CTC's lengths: a fixed number
    assert small.total == large.total <= 12
    assert not any(site.startswith("kd/models/hybrid_losses") and op != "_ctc_loss" for op, site in large.sites)
    # ESPnet's functions wait about twice per utterance (targets cut out one by one)
    ref_small, ref_large = count_training_waits(2, True), count_training_waits(8, True)
    assert ref_large.total - ref_small.total >= 2 * (8 - 2)
    assert ref_large.total > 2 * large.total


def test_counter_sees_item_and_boolean_masks():
    x = torch.arange(6.0)
    with HostSyncCounter() as counter:
        float(x.sum())
        x[x > 2].sum()
        torch.nonzero(x)
        x.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]))
        x.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]), output_size=7)
        (x * 2).exp()
    assert counter.by_operator() == {"_local_scalar_dense": 1, "index_bool": 1, "nonzero": 1,
                                     "repeat_interleave": 1}
    assert all("tests/kd/models/test_hybrid_losses.py:" in site for _, site in counter.sites)


def test_check_batch_names_misplaced_padding():
    model, (speech, lengths, text, text_lengths) = model_and_batch(3)
    bad = text.clone()
    bad[0, 0] = -1  # padding before a real token
    with pytest.raises(ValueError, match=r"text: utterance 0 of the batch: expected its \d+ tokens"):
        model.check_batch(speech, lengths, bad, text_lengths)
    with pytest.raises(ValueError, match="text_lengths: expected at most the"):
        model.check_batch(speech, lengths, text, text_lengths + text.size(1))
