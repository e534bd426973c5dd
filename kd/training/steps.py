"""What the loop does per micro-batch, per logging window and per dev evaluation."""

from __future__ import annotations

import dataclasses
from typing import Callable, ContextManager, NamedTuple

import torch

from kd.data.augment import augment_batch
from kd.training.config import TrainConfig

__all__ = ["LOG_ORDER", "DevScores", "accumulate", "evaluate", "forward_backward", "micro_batch_loss",
           "micro_batch_step", "reduce_window"]

# first columns of log.csv, when present; per-teacher terms follow
LOG_ORDER = ("loss", "nll", "kd", "tok_kd", "unc_kd", "spread_kd", "loss_ctc", "loss_att", "loss_aleatoric", "acc",
             "grad_norm")


def micro_batch_loss(model, batch, teachers, cache, config: TrainConfig, noise: torch.Generator, device,
                     token_lengths: list[int] | None = None):
    """The scalar training loss of one micro-batch and its detached parts.

    Without kd: the model's hybrid loss. With kd: ``kd.training.losses.kd_loss`` with that loss as the
    NLL term and the teachers' outputs, online (``teachers``) or from the ``cache``. The noise of
    sampled soft labels comes from ``noise`` after the student's own draws: the run's generator,
    saved in checkpoints, so cached and online teachers, and resumed runs, see the same draws.

    The batch must have been checked on the host (``AsrModel.check_batch``) before it was moved
    to ``device``: the forward passes here skip the checks, whose reads would make the host wait
    for the accelerator. ``token_lengths``: the batch's transcript lengths as host integers (the
    cache checks its rows against them without reading the device).
    """
    from kd.training.losses import kd_loss
    from kd.training.teachers import teacher_forward

    out = model(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths, generator=noise, check=False)
    parts = {"loss_att": out.loss_att.detach(), "acc": out.acc}
    if out.loss_ctc is not None:
        parts["loss_ctc"] = out.loss_ctc.detach()
    if out.loss_aleatoric is not None:
        parts["loss_aleatoric"] = out.loss_aleatoric.detach()
    if config.kd is None:
        return out.loss, {"loss": out.loss.detach(), **parts}
    if cache is not None:
        positions = None if token_lengths is None else [n + 1 for n in token_lengths]  # + <eos>
        targets = [cache.outputs(k, batch.utts, out.token_mask, device, positions=positions)
                   for k in range(len(config.kd.teachers))]
    else:
        targets = [teacher_forward(t, batch, check=False) for t in teachers]
    loss, kd_parts = kd_loss(out, targets, out.loss, config.kd.loss, generator=noise)
    return loss, {"loss": loss.detach(), **parts, **kd_parts}


def micro_batch_step(model, batch, teachers, cache, config: TrainConfig, noise: torch.Generator, device,
                     token_lengths: list[int], *, sample_rate: int, autocast: ContextManager):
    """The loss of one micro-batch and its parts, as the loop computes them (the ``compute`` that the
    ASR trainer gives :class:`kd.training.engine.TrainingLoop`).

    Moves the host-checked ``batch`` to ``device`` (asynchronously from pinned memory), adds
    noise and reverberation when ``config.data.augment`` asks for them, and computes the loss with
    :func:`micro_batch_loss` under ``autocast``. Nothing here reads a device value on the host.
    """
    batch = batch.to(device, non_blocking=True)
    if config.data.augment is not None:  # multi-condition training (the global RNG: resumable)
        batch = dataclasses.replace(batch, speech=augment_batch(batch.speech, batch.speech_lengths,
                                                                config.data.augment, sample_rate))
    with autocast:
        return micro_batch_loss(model, batch, teachers, cache, config, noise, device, token_lengths)


def forward_backward(model, batch, teachers, cache, config: TrainConfig, noise: torch.Generator, device,
                     token_lengths: list[int], *, sample_rate: int, window: dict[str, torch.Tensor], group: int,
                     backward: Callable[[torch.Tensor], None], autocast: ContextManager) -> None:
    """One micro-batch of a training step as the loop runs it, for ``kd bench train`` to measure:
    :func:`micro_batch_step`, the loss divided by ``group`` (the micro-batches of the optimizer step)
    back-propagated with ``backward`` (``accelerator.backward`` in the loop), and its parts, divided
    alike, added to ``window`` on the device."""
    loss, parts = micro_batch_step(model, batch, teachers, cache, config, noise, device, token_lengths,
                                   sample_rate=sample_rate, autocast=autocast)
    backward(loss / group)
    accumulate(window, parts, 1.0 / group, device)


def accumulate(window: dict[str, torch.Tensor], parts: dict, scale: float, device) -> None:
    """Add ``scale`` times each part to the window's running sums, on the device.

    No value is read back to the host here: a ``float(tensor)`` per micro-batch would make the
    host wait for the accelerator every step. The sums are read once per logging window.
    """
    for k, v in parts.items():
        v = torch.as_tensor(v, device=device).detach().to(torch.float64) * scale
        window[k] = window[k] + v if k in window else v


def reduce_window(window: dict[str, torch.Tensor], steps: int, audio: float,
                  accelerator) -> tuple[dict[str, float], float]:
    """Per-step means of the window's sums, averaged over processes; audio seconds summed over processes."""
    keys = sorted(window)
    device = accelerator.device
    values = torch.stack([torch.as_tensor(window[k], device=device).to(torch.float64) / max(steps, 1) for k in keys]
                         + [torch.tensor(audio, dtype=torch.float64, device=device)])
    total = accelerator.reduce(values, reduction="sum").cpu()
    n = accelerator.num_processes
    means = {k: float(total[i]) / n for i, k in enumerate(keys)}
    row = {k: means[k] for k in LOG_ORDER if k in means}
    row.update({k: v for k, v in means.items() if k not in row})
    return row, float(total[-1])


class DevScores(NamedTuple):
    """The student's scores on the dev set (NaN for an empty one)."""

    loss: float  # utterance-weighted mean of the model's loss (the training objective's NLL part)
    acc: float  # teacher-forced token accuracy of the attention decoder, over all real positions


def evaluate(model, dataset, buckets, accelerator) -> DevScores:
    """The model's dev loss and token accuracy (each process its own buckets, then gathered).

    Eval mode, no gradients, aleatoric noise from a generator reset per batch: the values do
    not depend on the training RNG, so checkpoints are compared on equal terms. The accuracy
    weighs each batch's by its positions (transcript tokens + end of sentence), so it is the
    corpus-level fraction of correct argmax predictions.
    """
    from kd.training.data import make_loader

    model.eval()
    noise = torch.Generator(device=accelerator.device)
    # (loss * utterances, utterances, acc * positions, positions)
    sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for batch in make_loader(dataset, buckets, num_workers=0):
            model.check_batch(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths)  # on the host
            positions = float(batch.token_lengths.sum()) + len(batch.utts)  # + <eos> each; read on the host
            batch = batch.to(accelerator.device)
            noise.manual_seed(0)
            with accelerator.autocast():
                out = model(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths, generator=noise,
                            check=False)
            n = len(batch.utts)
            sums += torch.stack([out.loss.detach().to(torch.float64) * n, sums.new_tensor(float(n)),  # no host read
                                 out.acc.detach().to(torch.float64) * positions, sums.new_tensor(positions)])
    model.train()
    total = accelerator.gather_for_metrics(sums.unsqueeze(0)).reshape(-1, 4).sum(0).tolist()
    if total[1] <= 0:
        return DevScores(float("nan"), float("nan"))
    return DevScores(total[0] / total[1], total[2] / total[3])
