"""Probing classifiers on frozen per-layer features, trained for all layers at once.

Frame-level phone probing and utterance-level speaker probing (mean pooling) follow Audio
ALBERT (Chi et al., 2021) and SUPERB (Yang et al., 2021); the SUPERB weighted layer sum
learns softmax-normalised layer weights (initialised at zero, i.e. uniform) jointly with a
probe on the weighted sum.

Conventions:
- The probes of the ``L`` layers are one batched model (weights ``[L, in, out]``, applied
  with ``baddbmm``); the loss is the sum over layers of each layer's mean cross-entropy, so
  each layer's probe gets exactly the gradient it would get alone. Every layer's probe is
  initialised from its own generator seeded by (seed, layer index).
- Held-out data are whole groups (utterances): ``grouped_split`` never puts frames of one
  utterance on both sides.
- Features are standardised per layer and dimension with training-split statistics
  (``config.standardize``); layers of different widths are zero-padded to the widest (zero
  inputs leave a linear probe's outputs unchanged).
- Training runs a fixed number of epochs with AdamW; no early stopping, no model selection
  on the held-out split. Held-out cross-entropy is reported in nats and in bits.
- Determinism: all randomness (init, split, minibatch order) comes from CPU generators
  seeded by ``config.seed``; a CPU run is bit-for-bit reproducible.
- Features stay where the caller keeps them; minibatches are gathered there and moved to
  ``config.device``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from analysis.config import CONFIG, parse_config, to_plain, with_config

if TYPE_CHECKING:
    from analysis.stats import CurveIntervals

logger = logging.getLogger(__name__)

PROBE_CONFIG_VERSION = 1
_LN2 = math.log(2.0)


class ProbeKind(str, Enum):
    LINEAR = "linear"
    MLP1 = "mlp1"  # one hidden ReLU layer
    MLP2 = "mlp2"  # two hidden ReLU layers

    @property
    def hidden_layers(self) -> int:
        return {"linear": 0, "mlp1": 1, "mlp2": 2}[self.value]


@dataclass(frozen=True)
@with_config(CONFIG)
class ProbeConfig:
    """Options shared by every probe in this module; read from a mapping by ``from_dict``
    (:func:`analysis.config.parse_config`)."""

    kind: ProbeKind = ProbeKind.LINEAR  # linear, or an MLP with 1 or 2 hidden layers
    hidden_size: int = 256  # width of each hidden layer of an MLP probe
    epochs: int = 20  # passes over the training split
    lr: float = 1e-3  # AdamW learning rate (also for the weighted-sum layer weights)
    weight_decay: float = 0.0  # AdamW decoupled weight decay on probe weights (not layer weights)
    batch_size: int = 1024  # examples per optimisation step
    heldout_fraction: float = 0.2  # share of groups (utterances) held out for scoring
    standardize: bool = True  # z-score each layer's features with training statistics
    seed: int = 0  # seeds init, split and minibatch order
    device: str = "cpu"  # where the probes train ("cpu", "cuda", ...)
    version: int = PROBE_CONFIG_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ProbeKind):  # a constructor's string ("mlp1"); from_dict gives the member
            try:
                object.__setattr__(self, "kind", ProbeKind(self.kind))
            except ValueError as err:
                options = [k.value for k in ProbeKind]
                raise ValueError(f"ProbeConfig.kind: expected one of {options}, found {self.kind!r}") from err
        for name in ("hidden_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name}: expected at least 1, found {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"ProbeConfig.lr: expected a number > 0, found {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"ProbeConfig.weight_decay: expected at least 0, found {self.weight_decay}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"ProbeConfig.heldout_fraction: expected a number in (0, 1), "
                             f"found {self.heldout_fraction}")
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"ProbeConfig.device: expected a torch device, found {self.device!r}") from err
        if self.version != PROBE_CONFIG_VERSION:
            raise ValueError(f"ProbeConfig.version: expected {PROBE_CONFIG_VERSION}, found {self.version}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> "ProbeConfig":
        """The config written by :meth:`to_dict`, read by :func:`analysis.config.parse_config` (``where``
        names it in errors; default ``ProbeConfig``)."""
        return parse_config(cls, data, where)


@dataclass(frozen=True)
class ProbeResult:
    """Held-out scores of one probe per layer; tensors are ``[layers]`` float64."""

    accuracy: torch.Tensor
    cross_entropy_nats: torch.Tensor
    cross_entropy_bits: torch.Tensor
    majority_accuracy: torch.Tensor  # share of the most frequent held-out class (a chance level)
    num_train: int
    num_heldout: int
    num_classes: int
    # per held-out example, whether each layer's probe got it right: [layers, num_heldout] bool
    heldout_correct: torch.Tensor | None = field(default=None, repr=False, compare=False)
    # the utterance (group) of each held-out example [num_heldout], where the caller gave one
    heldout_groups: torch.Tensor | None = field(default=None, repr=False, compare=False)
    # per held-out example, each layer's probe cross-entropy in nats: [layers, num_heldout] float64
    heldout_cross_entropy_nats: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        per_example = ("heldout_correct", "heldout_groups", "heldout_cross_entropy_nats")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in per_example}
        return {key: value.tolist() if isinstance(value, torch.Tensor) else value for key, value in data.items()}

    def intervals(self, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> "CurveIntervals":
        """Bootstrap intervals of each layer's held-out accuracy and of the paired differences between
        layers, resampling whole held-out utterances (``heldout_groups``; default: each example).

        Resampled: the held-out utterances, through their per-layer correct counts. Held fixed: the
        fitted probes (trained once; a replicate re-scores nothing), so the interval covers the choice
        of held-out utterances, not the probe's training. The differences are paired (the same
        resampled utterances for both layers): they say whether one layer beats another beyond what
        the choice of held-out utterances does.
        """
        if self.heldout_correct is None:
            raise ValueError("intervals: this result holds no per-example held-out scores (heldout_correct)")
        correct = self.heldout_correct.to(torch.float64)  # [L, m]
        inverse, num_utts = _utterance_index(self.heldout_groups, correct.shape[1])
        # per held-out utterance: correct examples per layer [U, L] and its number of examples [U]
        counts = torch.zeros(num_utts, correct.shape[0], dtype=torch.float64).index_add_(0, inverse, correct.T).numpy()
        sizes = torch.bincount(inverse, minlength=num_utts).to(torch.float64).numpy()

        from analysis.stats import curve_intervals

        return curve_intervals(lambda w: (w @ counts) / (w @ sizes), num_utts, n_boot=n_boot, seed=seed, level=level)


def _utterance_index(groups: torch.Tensor | None, num_examples: int) -> tuple[torch.Tensor, int]:
    """Position of each held-out example's utterance among the sorted distinct ones ``[m]`` and their
    number; without groups every example is its own utterance. At least 2 utterances are needed."""
    groups = torch.arange(num_examples) if groups is None else torch.as_tensor(groups).cpu()
    ids, inverse = torch.unique(groups, return_inverse=True)
    if ids.numel() < 2:
        raise ValueError(f"intervals: expected at least 2 held-out utterances, found {ids.numel()}")
    return inverse, int(ids.numel())


@dataclass(frozen=True)
class WeightedSumProbeResult:
    """SUPERB weighted layer sum: learned softmaxed ``layer_weights`` ``[layers]`` and held-out scores."""

    layer_weights: torch.Tensor
    accuracy: float
    cross_entropy_nats: float
    cross_entropy_bits: float
    num_train: int
    num_heldout: int
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layer_weights"] = self.layer_weights.tolist()
        return data


def stack_layers(features: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``[layers, n, dim]`` from a tensor of that shape or one ``[n, dim_l]`` tensor per layer.

    Narrower layers are zero-padded to the widest.
    """
    if isinstance(features, torch.Tensor):
        if features.dim() != 3:
            raise ValueError(f"Expected features of shape [layers, n, dim], found {tuple(features.shape)}")
        return features
    if len(features) == 0:
        raise ValueError("Expected features for at least one layer, found an empty sequence")
    n = features[0].shape[0]
    for layer, x in enumerate(features):
        if x.dim() != 2 or x.shape[0] != n:
            raise ValueError(f"Expected features[{layer}] of shape [{n}, dim], found {tuple(x.shape)}")
    width = max(x.shape[1] for x in features)
    out = features[0].new_zeros(len(features), n, width)
    for layer, x in enumerate(features):
        out[layer, :, : x.shape[1]] = x
    return out


def grouped_split(groups: torch.Tensor, heldout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split examples into training and held-out indices by whole groups.

    Args:
        groups: ``[n]`` integer group (utterance) id per example.

    Returns:
        ``(train_index, heldout_index)``, sorted ``[n_train]`` and ``[n_heldout]`` long tensors.
        ``round(heldout_fraction x groups)`` groups (at least 1, at most all but 1) are held out.
    """
    groups = torch.as_tensor(groups).cpu()
    if groups.dim() != 1:
        raise ValueError(f"Expected groups of shape [n], found {tuple(groups.shape)}")
    unique, inverse = torch.unique(groups, return_inverse=True)
    if unique.numel() < 2:
        raise ValueError(f"Expected at least 2 distinct groups (utterances) to split, found {unique.numel()}")
    num_heldout = min(max(1, round(heldout_fraction * unique.numel())), unique.numel() - 1)
    order = torch.randperm(unique.numel(), generator=torch.Generator().manual_seed(seed))
    is_heldout = torch.zeros(unique.numel(), dtype=torch.bool)
    is_heldout[order[:num_heldout]] = True
    heldout = is_heldout[inverse]
    return (~heldout).nonzero().flatten(), heldout.nonzero().flatten()


def _segment_sum(x: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Deterministic per-segment sums: ``x`` ``[layers, n, dim]``, ``segment`` ``[n]`` in
    [0, num_segments) -> ``[layers, num_segments, dim]`` float64 (cumulative sums at segment ends,
    so no scatter-add atomics)."""
    order = torch.argsort(segment, stable=True)
    counts = torch.bincount(segment, minlength=num_segments)
    ends = torch.cumsum(counts, 0)
    out = torch.zeros(x.shape[0], num_segments, x.shape[2], dtype=torch.float64, device=x.device)
    nonempty = (counts > 0).nonzero().flatten().to(x.device)
    for layer in range(x.shape[0]):
        csum = torch.cumsum(x[layer, order.to(x.device)].to(torch.float64), dim=0)  # [n, dim]
        csum = torch.cat([csum.new_zeros(1, x.shape[2]), csum])
        at_end = csum[ends.to(x.device)] - csum[(ends - counts).to(x.device)]
        out[layer, nonempty] = at_end[nonempty]
    return out


def mean_pool(
    features: torch.Tensor | Sequence[torch.Tensor], utterance_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over each utterance's frames.

    Args:
        features: ``[layers, frames, dim]`` (or one ``[frames, dim]`` per layer).
        utterance_ids: ``[frames]`` integer utterance id of each frame.

    Returns:
        ``(pooled, ids)``: ``[utts, layers, dim]`` float32 means and the ``[utts]`` sorted ids.
    """
    x = stack_layers(features)
    ids = torch.as_tensor(utterance_ids)
    if ids.shape != (x.shape[1],):
        raise ValueError(f"Expected utterance_ids of shape [{x.shape[1]}], found {tuple(ids.shape)}")
    unique, inverse = torch.unique(ids.cpu(), return_inverse=True)
    sums = _segment_sum(x, inverse, unique.numel())
    counts = torch.bincount(inverse, minlength=unique.numel()).to(device=sums.device, dtype=torch.float64)
    return (sums / counts[None, :, None]).transpose(0, 1).to(torch.float32), unique


class _LayerProbes(torch.nn.Module):
    """``num_probes`` independent probes evaluated together: ``[P, batch, in] -> [P, batch, classes]``."""

    def __init__(self, num_probes: int, dim: int, num_classes: int, config: ProbeConfig) -> None:
        super().__init__()
        sizes = [dim] + [config.hidden_size] * config.kind.hidden_layers + [num_classes]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            w = torch.empty(num_probes, fan_in, fan_out)
            b = torch.empty(num_probes, 1, fan_out)
            self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(b))
        with torch.no_grad():
            for p in range(num_probes):
                # per-probe generator: a layer's init does not depend on the other layers
                generator = torch.Generator().manual_seed(config.seed * 1_000_003 + p)
                for w, b in zip(self.weights, self.biases):
                    bound = 1.0 / math.sqrt(w.shape[1])  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                    w[p].uniform_(-bound, bound, generator=generator)
                    b[p].uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
        return x


def _standardizer(x: torch.Tensor, index: torch.Tensor, device: torch.device, enabled: bool):
    """Per-layer, per-dimension mean and std ``[layers, 1, dim]`` over rows ``index`` (chunked, float64)."""
    layers, _, dim = x.shape
    if not enabled:
        zeros = torch.zeros(layers, 1, dim, device=device)
        return zeros, torch.ones_like(zeros)
    total = torch.zeros(layers, dim, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    for start in range(0, index.numel(), 65536):
        chunk = x[:, index[start : start + 65536].to(x.device)].to(device=device, dtype=torch.float64)
        total += chunk.sum(1)
        total_sq += (chunk * chunk).sum(1)
    mean = total / index.numel()
    var = (total_sq / index.numel() - mean * mean).clamp_min(0.0)
    std = torch.where(var > 1e-12, var.sqrt(), torch.ones_like(var))  # constant dims: leave unscaled
    return mean.unsqueeze(1).float(), std.unsqueeze(1).float()


def _train_and_score(
    features: torch.Tensor,
    targets: torch.Tensor,
    train_index: torch.Tensor,
    heldout_index: torch.Tensor,
    config: ProbeConfig,
    num_classes: int,
    weighted_sum: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared training loop: held-out CE in nats ``[P]``, accuracy ``[P]``, layer logits ``[L]``,
    per-example correctness ``[P, m]`` (bool) and per-example CE in nats ``[P, m]`` (float64)."""
    layers, n, dim = features.shape
    if targets.shape != (layers, n):
        raise ValueError(f"Expected targets of shape [{n}] or [{layers}, {n}], found {tuple(targets.shape)}")
    if targets.numel() and not 0 <= targets.min().item() <= targets.max().item() < num_classes:
        raise ValueError(
            f"Expected targets in [0, num_classes={num_classes}), found [{targets.min().item()}, {targets.max().item()}]"
        )
    if train_index.numel() == 0 or heldout_index.numel() == 0:
        raise ValueError(
            f"Expected non-empty training and held-out splits, found {train_index.numel()} and {heldout_index.numel()}"
        )
    device = torch.device(config.device)
    mean, std = _standardizer(features, train_index, device, config.standardize)
    num_probes = 1 if weighted_sum else layers
    probes = _LayerProbes(num_probes, dim, num_classes, config).to(device)
    groups = [{"params": list(probes.parameters()), "weight_decay": config.weight_decay}]
    layer_logits = torch.zeros(layers, device=device, requires_grad=True)
    if weighted_sum:
        groups.append({"params": [layer_logits], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr)

    def batch(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = features[:, index.to(features.device)].to(device=device, dtype=torch.float32)  # [L, b, D]
        x = (x - mean) / std
        y = targets[:, index].to(device)  # [L, b]
        if weighted_sum:
            x = torch.einsum("l,lbd->bd", torch.softmax(layer_logits, 0), x).unsqueeze(0)  # [1, b, D]
            y = y[:1]
        return x, y

    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        order = train_index[torch.randperm(train_index.numel(), generator=generator)]
        for start in range(0, order.numel(), config.batch_size):
            x, y = batch(order[start : start + config.batch_size])
            logits = probes(x)  # [P, b, C]
            loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("probe epoch %d/%d: last batch loss %.4f nats", epoch + 1, config.epochs, loss.item())

    losses, hits = [], []
    with torch.no_grad():
        for start in range(0, heldout_index.numel(), 4 * config.batch_size):
            x, y = batch(heldout_index[start : start + 4 * config.batch_size])
            logits = probes(x).float()
            losses.append(F.cross_entropy(logits.transpose(1, 2), y, reduction="none").to(torch.float64).cpu())
            hits.append((logits.argmax(-1) == y).cpu())
    m = heldout_index.numel()
    correct = torch.cat(hits, dim=1)  # [P, m]
    per_example = torch.cat(losses, dim=1)  # [P, m] nats
    accuracy = correct.to(torch.float64).sum(1) / m
    return per_example.sum(1) / m, accuracy, layer_logits.detach().cpu(), correct, per_example


def _as_index(index: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(index).cpu().long().flatten()


def fit_probes(
    features: torch.Tensor,
    targets: torch.Tensor,
    train_index: torch.Tensor,
    heldout_index: torch.Tensor,
    config: ProbeConfig,
    *,
    num_classes: int,
    groups: torch.Tensor | None = None,
) -> ProbeResult:
    """Train one probe per layer on ``train_index`` and score it on ``heldout_index``.

    Args:
        features: ``[layers, n, dim]`` frozen features.
        targets: ``[n]`` class per example, shared by all layers, or ``[layers, n]`` one
            target per layer (e.g. per-layer cluster ids); values in [0, num_classes).
        train_index, heldout_index: ``[n_train]`` / ``[n_heldout]`` example indices.
        groups: ``[n]`` utterance of each example, kept for the held-out examples so that
            ``ProbeResult.intervals`` resamples whole utterances.
    """
    layers, n, _ = features.shape
    targets = torch.as_tensor(targets).cpu().long()
    if targets.dim() == 1:
        targets = targets.unsqueeze(0).expand(layers, -1)
    train_index, heldout_index = _as_index(train_index), _as_index(heldout_index)
    ce, accuracy, _, correct, per_example = _train_and_score(
        features, targets, train_index, heldout_index, config, num_classes, weighted_sum=False
    )
    held = targets[:, heldout_index]
    m = heldout_index.numel()
    majority = torch.stack([torch.bincount(row, minlength=num_classes).max() for row in held]).to(torch.float64) / m
    return ProbeResult(
        accuracy=accuracy,
        cross_entropy_nats=ce,
        cross_entropy_bits=ce / _LN2,
        majority_accuracy=majority,
        num_train=train_index.numel(),
        num_heldout=m,
        num_classes=num_classes,
        heldout_correct=correct,
        heldout_groups=None if groups is None else torch.as_tensor(groups).cpu()[heldout_index],
        heldout_cross_entropy_nats=per_example,
    )


def fit_weighted_sum_probe(
    features: torch.Tensor,
    targets: torch.Tensor,
    train_index: torch.Tensor,
    heldout_index: torch.Tensor,
    config: ProbeConfig,
    *,
    num_classes: int,
) -> WeightedSumProbeResult:
    """Train one probe on the SUPERB weighted layer sum and score it on ``heldout_index``.

    Args:
        features: ``[layers, n, dim]`` frozen features.
        targets: ``[n]`` class per example, values in [0, num_classes).
        train_index, heldout_index: ``[n_train]`` / ``[n_heldout]`` example indices.
    """
    layers, n, _ = features.shape
    targets = torch.as_tensor(targets).cpu().long()
    if targets.shape != (n,):
        raise ValueError(f"Expected targets of shape [{n}] for the weighted layer sum, found {tuple(targets.shape)}")
    train_index, heldout_index = _as_index(train_index), _as_index(heldout_index)
    shared = targets.unsqueeze(0).expand(layers, -1)
    ce, accuracy, layer_logits, _, _ = _train_and_score(
        features, shared, train_index, heldout_index, config, num_classes, weighted_sum=True
    )
    return WeightedSumProbeResult(
        layer_weights=torch.softmax(layer_logits.to(torch.float64), 0),
        accuracy=accuracy.item(),
        cross_entropy_nats=ce.item(),
        cross_entropy_bits=ce.item() / _LN2,
        num_train=train_index.numel(),
        num_heldout=heldout_index.numel(),
        num_classes=num_classes,
    )


def _check_labels(labels: torch.Tensor, n: int, num_classes: int | None, name: str = "labels") -> int:
    labels = torch.as_tensor(labels)
    if labels.shape != (n,):
        raise ValueError(f"Expected {name} of shape [{n}], found {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"Expected integer {name}, found dtype {labels.dtype}")
    if n and labels.min().item() < 0:
        raise ValueError(f"Expected {name} >= 0, found {labels.min().item()}")
    found = int(labels.max().item()) + 1 if n else 0
    if num_classes is None:
        return found
    if found > num_classes:
        raise ValueError(f"Expected {name} < num_classes={num_classes}, found {found - 1}")
    return num_classes


def _prepare(features, labels, groups, config, num_classes):
    x = stack_layers(features)
    n = x.shape[1]
    num_classes = _check_labels(labels, n, num_classes)
    groups = torch.as_tensor(groups)
    if groups.shape != (n,):
        raise ValueError(f"Expected groups (utterance ids) of shape [{n}], found {tuple(groups.shape)}")
    train_index, heldout_index = grouped_split(groups, config.heldout_fraction, config.seed)
    return x, torch.as_tensor(labels), train_index, heldout_index, num_classes


def probe_frames(
    features: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    utterance_ids: torch.Tensor,
    config: ProbeConfig = ProbeConfig(),
    *,
    num_classes: int | None = None,
) -> ProbeResult:
    """Frame-level probing (e.g. phones) of every layer.

    Args:
        features: ``[layers, frames, dim]`` or one ``[frames, dim]`` tensor per layer.
        labels: ``[frames]`` class of each frame.
        utterance_ids: ``[frames]`` utterance of each frame; held-out frames are whole utterances.
        num_classes: number of classes; default ``labels.max() + 1``.
    """
    x, y, train_index, heldout_index, c = _prepare(features, labels, utterance_ids, config, num_classes)
    return fit_probes(x, y, train_index, heldout_index, config, num_classes=c, groups=utterance_ids)


def probe_utterances(
    pooled: torch.Tensor,
    labels: torch.Tensor,
    config: ProbeConfig = ProbeConfig(),
    *,
    groups: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> ProbeResult:
    """Utterance-level probing (e.g. speaker) of every layer on mean-pooled features.

    Args:
        pooled: ``[utts, layers, dim]`` per-utterance features (see ``mean_pool``).
        labels: ``[utts]`` class of each utterance.
        groups: ``[utts]`` split groups; default: each utterance its own group.
    """
    if pooled.dim() != 3:
        raise ValueError(f"Expected pooled of shape [utts, layers, dim], found {tuple(pooled.shape)}")
    if groups is None:
        groups = torch.arange(pooled.shape[0])
    x, y, train_index, heldout_index, c = _prepare(pooled.transpose(0, 1), labels, groups, config, num_classes)
    return fit_probes(x, y, train_index, heldout_index, config, num_classes=c, groups=groups)


def probe_weighted_sum(
    features: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    groups: torch.Tensor,
    config: ProbeConfig = ProbeConfig(),
    *,
    num_classes: int | None = None,
) -> WeightedSumProbeResult:
    """SUPERB weighted layer sum: one probe on ``sum_l softmax(w)_l x_l``, ``w`` learned from 0.

    Args:
        features: ``[layers, n, dim]`` (or one ``[n, dim]`` per layer); for utterance-level
            tasks pass ``pooled.transpose(0, 1)``.
        labels: ``[n]`` class per example.
        groups: ``[n]`` split group (utterance id) per example.
    """
    x, y, train_index, heldout_index, c = _prepare(features, labels, groups, config, num_classes)
    return fit_weighted_sum_probe(x, y, train_index, heldout_index, config, num_classes=c)
