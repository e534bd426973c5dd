"""The hybrid CTC/attention training losses, computed without host-device synchronisation.

ESPnet computes the same quantities with Python loops over the utterances of a batch
(``add_sos_eos``, the concatenated CTC targets of ``espnet2.asr.ctc.CTC``), ``.item()`` in its
label-smoothing criterion and ``float()`` in ``th_accuracy``. On an accelerator each of those
makes the host wait until the device has finished all queued work, about two waits per
utterance per micro-batch; the host then cannot queue the next kernels while the device runs.
The functions here give ESPnet's values (tests compare them) with tensor operations only, so
that the device work of a training step can be queued without waiting. ``AsrModel.forward``
uses them unless asked for ESPnet's own functions (``espnet_losses=True``, the reference).

Conventions are ESPnet's: ``text`` is ``[B, L]`` token ids padded with ``ignore_id`` after each
utterance's ``text_lengths`` tokens, and L is the longest length of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ctc_loss", "label_smoothing_loss", "sos_eos", "token_accuracy"]


def sos_eos(text: Tensor, text_lengths: Tensor, sos: int, eos: int, ignore_id: int = -1) -> tuple[Tensor, Tensor]:
    """Decoder inputs ``<sos> y_1 .. y_n`` (padded with eos) and targets ``y_1 .. y_n <eos>``
    (padded with ``ignore_id``), both ``[B, L + 1]``; ESPnet's ``add_sos_eos``."""
    batch = text.size(0)
    ys_in = torch.cat([text.new_full((batch, 1), sos), text.masked_fill(text == ignore_id, eos)], dim=1)
    targets = torch.cat([text, text.new_full((batch, 1), ignore_id)], dim=1)
    targets.scatter_(1, text_lengths.unsqueeze(1).to(torch.long), eos)
    return ys_in, targets


def ctc_loss(log_probs: Tensor, input_lengths: Tensor, text: Tensor, text_lengths: Tensor, *, blank: int = 0,
             zero_infinity: bool = True) -> Tensor:
    """CTC negative log-likelihood summed over the batch and divided by the batch size.

    ``log_probs`` is ``[B, T, V]`` (log-softmax of the CTC layer); the padded targets go to
    ``torch.nn.functional.ctc_loss`` as they are (its ``[B, S]`` form) instead of being cut out
    utterance by utterance. ``zero_infinity`` as in ESPnet's CTC (impossible alignments, an
    input shorter than its target, give 0 instead of inf).
    """
    targets = text.masked_fill(text < 0, blank)  # padding: any valid id (ignored past the lengths)
    loss = F.ctc_loss(log_probs.transpose(0, 1).float(), targets, input_lengths, text_lengths, blank=blank,
                      reduction="none", zero_infinity=zero_infinity)
    return loss.sum() / log_probs.size(0)


def label_smoothing_loss(logits: Tensor, targets: Tensor, *, smoothing: float, normalize_length: bool,
                         ignore_id: int = -1) -> Tensor:
    """ESPnet's ``LabelSmoothingLoss``: KL(q || softmax(logits)) summed over real positions.

    q puts ``1 - smoothing`` on the target and ``smoothing / (V - 1)`` on every other token.
    The sum is divided by the number of real positions (``normalize_length``) or by the batch
    size. KL = sum_v q_v log q_v - sum_v q_v log p_v; the first sum is the same constant for
    every position, the second is ``s * sum_v log p_v + (c - s) * log p_target`` with s the
    smoothing mass per token and c the confidence, so no ``[positions, V]`` distribution is built.
    """
    vocab = logits.size(-1)
    log_p = torch.log_softmax(logits, dim=-1)
    mask = targets != ignore_id
    confidence, spread = 1.0 - smoothing, smoothing / (vocab - 1)
    xlogx = lambda m: m * math.log(m) if m > 0 else 0.0  # noqa: E731
    entropy = xlogx(confidence) + (vocab - 1) * xlogx(spread)
    target_log_p = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    cross = spread * log_p.sum(-1) + (confidence - spread) * target_log_p
    per_position = (entropy - cross).masked_fill(~mask, 0.0)
    denominator = mask.sum() if normalize_length else logits.size(0)
    return per_position.sum() / denominator


def token_accuracy(logits: Tensor, targets: Tensor, ignore_id: int = -1) -> Tensor:
    """Share of real positions whose argmax is the target, as a 0-dim float tensor (no host read)."""
    mask = targets != ignore_id
    correct = (logits.argmax(-1) == targets) & mask
    return correct.sum().to(torch.float32) / mask.sum().clamp(min=1)
