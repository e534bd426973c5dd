"""Aleatoric uncertainty head for the attention decoder and its sampled-softmax loss.

The head follows Kendall & Gal (2017), "What Uncertainties Do We Need in Bayesian Deep
Learning for Computer Vision?", section 3.3 (heteroscedastic classification), as used for
ASR decoders by Kim et al. (2021), "Multi-domain Knowledge Distillation via
Uncertainty-Matching for End-to-End ASR Models":

    sigma_i^2 = softplus(W h_i + b)                  variance, same shape as the logits f_i
    g_{i,s}   = f_i + sigma_i * eps_s,  eps_s ~ N(0, I),  s = 1..S
    L_i       = -log( (1/S) sum_s softmax(g_{i,s})[y_i] )

where h_i is the decoder's pre-logit state (the layer-normalised output of the last decoder
block) and y_i the target token. The average is taken over probabilities, not log
probabilities, and computed with logsumexp so that a sample with a tiny probability of the
target cannot underflow.
"""

from __future__ import annotations

import enum
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AleatoricMode", "UncertaintyHead", "aleatoric_nll", "sample_noisy_logits"]

# Smallest variance whose square root is taken: softplus underflows to 0 in float32 for
# inputs below about -104, where d sqrt(v)/dv would be infinite.
_MIN_VARIANCE = 1e-12


class AleatoricMode(enum.Enum):
    """How the aleatoric loss enters the attention branch of the hybrid CTC/attention loss.

    ADD: attention loss = label-smoothed CE on the mean logits f (ESPnet's criterion,
        unchanged) + aleatoric loss on the noisy logits. The mean logits keep exactly the
        recipe ESPnet trains with (label smoothing 0.15), and the aleatoric term is what
        trains the variance head. This is the default.
    REPLACE: attention loss = aleatoric loss only (Kendall & Gal's formulation, where the
        sampled softmax replaces the cross-entropy; label smoothing is then not used).
    """

    ADD = "add"
    REPLACE = "replace"


class UncertaintyHead(nn.Module):
    """Linear projection of the decoder's pre-logit state through softplus.

    Args:
        hidden_size: size D of the decoder state h_i.
        vocab_size: size V of the token inventory (the variance has the logits' shape).
        initial_variance: value the bias is set to produce, so that training starts with
            little logit noise (softplus(b) = initial_variance).
    """

    def __init__(self, hidden_size: int, vocab_size: int, *, initial_variance: float = 1e-2):
        super().__init__()
        if hidden_size < 1 or vocab_size < 2:
            raise ValueError(
                f"Expected hidden_size >= 1 and vocab_size >= 2, found {hidden_size}, {vocab_size}"
            )
        if not initial_variance > 0.0:
            raise ValueError(f"Expected initial_variance > 0, found {initial_variance}")
        self.projection = nn.Linear(hidden_size, vocab_size)
        # inverse softplus: b = log(exp(v) - 1), written with expm1 for small v
        with torch.no_grad():
            self.projection.bias.fill_(math.log(math.expm1(initial_variance)))

    def forward(self, hidden: Tensor) -> Tensor:
        """Variance sigma^2 of the logit noise.

        Args:
            hidden: decoder pre-logit states `[batch, length, hidden_size]`.

        Returns:
            Variances `[batch, length, vocab]`, strictly positive up to float underflow.
        """
        return F.softplus(self.projection(hidden))


def sample_noisy_logits(
    logits: Tensor,
    variance: Tensor,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw g_s = f + sigma * eps_s for s = 1..S.

    Args:
        logits: mean logits f `[..., vocab]`.
        variance: sigma^2 with the shape of `logits`.
        num_samples: S >= 1.
        generator: optional random generator on the logits' device.

    Returns:
        Noisy logits `[num_samples, ..., vocab]`.
    """
    if logits.shape != variance.shape:
        raise ValueError(
            f"Expected variance with the logits' shape {tuple(logits.shape)}, "
            f"found {tuple(variance.shape)}"
        )
    if num_samples < 1:
        raise ValueError(f"Expected num_samples >= 1, found {num_samples}")
    eps = torch.randn(
        (num_samples, *logits.shape),
        generator=generator,
        device=logits.device,
        dtype=logits.dtype,
    )
    sigma = variance.clamp_min(_MIN_VARIANCE).sqrt()
    return logits.unsqueeze(0) + sigma.unsqueeze(0) * eps


def aleatoric_nll(
    logits: Tensor,
    variance: Tensor,
    targets: Tensor,
    *,
    num_samples: int,
    ignore_id: int = -1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sampled-softmax aleatoric negative log-likelihood per token (Kendall & Gal 2017).

    Args:
        logits: mean logits f `[batch, length, vocab]`.
        variance: sigma^2 `[batch, length, vocab]`.
        targets: token ids `[batch, length]`, `ignore_id` at padding.
        num_samples: number S of noise samples.
        ignore_id: target value marking padding.
        generator: optional random generator on the logits' device.

    Returns:
        Per-token losses `[batch, length]` (natural log), 0 at padding.
    """
    if logits.dim() != 3:
        raise ValueError(f"Expected logits [batch, length, vocab], found {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"Expected targets [batch, length] = {tuple(logits.shape[:2])}, "
            f"found {tuple(targets.shape)}"
        )
    mask = targets != ignore_id
    safe_targets = targets.masked_fill(~mask, 0)
    noisy = sample_noisy_logits(logits, variance, num_samples, generator=generator)
    # (S, B, L): log softmax(g_s)[y] without forming the full log-softmax
    index = safe_targets.unsqueeze(0).unsqueeze(-1).expand(num_samples, -1, -1, 1)
    target_logp = noisy.gather(-1, index).squeeze(-1) - torch.logsumexp(noisy, dim=-1)
    # log of the mean over samples of the target probability, (B, L)
    log_mean_prob = torch.logsumexp(target_logp, dim=0) - math.log(num_samples)
    return (-log_mean_prob).masked_fill(~mask, 0.0)
