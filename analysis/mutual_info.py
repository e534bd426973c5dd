"""Probe-based lower bounds on mutual information, per layer.

Liu, Yeh and Glass (ICASSP 2024): for any classifier q, the held-out cross-entropy
CE = E[-log q(C | Z)] upper-bounds the conditional entropy H(C | Z), hence

    I(Z; C) = H(C) - H(C | Z) >= H(C) - CE.

Label-free bound: Z_a and Z_b are the mean-pooled representations of two different sections
of one utterance; C_b is the k-means cluster of Z_b, with k-means fitted per layer on a separate
split of utterances used for nothing else; a linear probe predicts C_b from Z_a. Labelled
bound: H(Y) - CE(probe predicting Y), through the same code path.

Sections. As in the paper, each section is fed through the model on its own
(``section_pairs`` draws the pairs, ``pool_sections`` runs and pools them): pooled from one
forward pass over the whole utterance, the first half of a model with global self-attention
(or with convolutional context across the boundary) has already seen the second, and the
bound then measures that leak as well as what the two sections share. ``split_halves`` pools
frames that are already computed (one pass) and is kept for such inputs; its ``gap_frames``
only removes the frames at the boundary, not the attention across it. Several pairs per
utterance give the bound more samples; their ``groups`` (the utterance) keep all pairs of
one utterance on the same side of every split.

A bound at or below 0 bits says nothing about the layer (the probe did no better than the
held-out marginal): it is vacuous, not a finding (``vacuous_layers``).

Conventions: everything in bits. H is the plug-in entropy of the targets on the held-out
split, and CE is measured on that same split, so a probe that only learned the training
marginal scores CE >= H (cross-entropy >= entropy): with independent Z the bound is ~0 and
can be slightly negative (finite-sample noise and the training/held-out mismatch of the
marginal); it is never above H, as CE >= 0. ``normalized_bound`` is bound / H (NaN where H = 0).
The plug-in H is biased low when the held-out split is small against the number of clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from analysis.config import CONFIG, parse_config, to_plain, with_config
from analysis.kmeans import KMeans, KMeansConfig
from analysis.probing import ProbeConfig, _check_labels, _segment_sum, fit_probes, grouped_split, stack_layers

if TYPE_CHECKING:
    from analysis.stats import CurveIntervals

MI_CONFIG_VERSION = 1


@dataclass(frozen=True)
@with_config(CONFIG)
class MIBoundConfig:
    """Options of ``cluster_mi_bound``; read from a mapping by ``from_dict`` (:func:`analysis.config.parse_config`,
    its ``kmeans`` and ``probe`` sections given in part take their other fields from the defaults)."""

    kmeans: KMeansConfig = field(default_factory=KMeansConfig)  # clusters C_b (num_clusters = k)
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # probe Z_a -> C_b; its heldout_fraction
    # and seed split the non-fit utterances into probe training and evaluation
    fit_fraction: float = 0.3  # share of utterances used only to fit k-means
    seed: int = 0  # seeds the fit / evaluation split
    version: int = MI_CONFIG_VERSION

    def __post_init__(self) -> None:
        if not 0 < self.fit_fraction < 1:
            raise ValueError(f"MIBoundConfig.fit_fraction: expected a number in (0, 1), found {self.fit_fraction}")
        if not isinstance(self.kmeans, KMeansConfig):
            raise TypeError(f"MIBoundConfig.kmeans: expected a KMeansConfig, found {type(self.kmeans).__name__}")
        if not isinstance(self.probe, ProbeConfig):
            raise TypeError(f"MIBoundConfig.probe: expected a ProbeConfig, found {type(self.probe).__name__}")
        if self.version != MI_CONFIG_VERSION:
            raise ValueError(f"MIBoundConfig.version: expected {MI_CONFIG_VERSION}, found {self.version}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> "MIBoundConfig":
        """The config written by :meth:`to_dict`, read by :func:`analysis.config.parse_config` (``where``
        names it in errors; default ``MIBoundConfig``)."""
        return parse_config(cls, data, where)


@dataclass(frozen=True)
class MIBoundResult:
    """Per-layer bound; tensors are ``[layers]`` float64, in bits."""

    bound_bits: torch.Tensor  # H - CE
    normalized_bound: torch.Tensor  # (H - CE) / H
    entropy_bits: torch.Tensor  # H of the held-out targets
    cross_entropy_bits: torch.Tensor  # held-out CE of the probe
    accuracy: torch.Tensor  # held-out probe accuracy
    num_train: int
    num_heldout: int
    num_classes: int
    # per held-out example: each layer's probe cross-entropy in bits and target [layers, num_heldout],
    # and its utterance (group) [num_heldout]; what ``intervals`` resamples
    heldout_cross_entropy_bits: torch.Tensor | None = field(default=None, repr=False, compare=False)
    heldout_targets: torch.Tensor | None = field(default=None, repr=False, compare=False)
    heldout_groups: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        per_example = ("heldout_cross_entropy_bits", "heldout_targets", "heldout_groups")
        return {f.name: value.tolist() if isinstance(value, torch.Tensor) else value
                for f in fields(self) if f.name not in per_example for value in [getattr(self, f.name)]}

    def intervals(self, *, normalized: bool = False, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> "CurveIntervals":
        """Bootstrap intervals of each layer's bound (``normalized``: bound / H) and of the paired
        differences between layers, resampling whole held-out utterances.

        Resampled: the held-out utterances, each with its examples' cross-entropy terms and target
        counts, so both H (the plug-in entropy of the resampled targets) and CE are recomputed per
        replicate. Held fixed: the fitted probe and, for the label-free bound, the k-means clusters.
        A replicate whose targets fall in one class (H = 0) leaves bound / H undefined, and with it
        the normalised interval (NaN).
        """
        if self.heldout_cross_entropy_bits is None or self.heldout_targets is None:
            raise ValueError("intervals: this result holds no per-example held-out terms (heldout_cross_entropy_bits)")
        from analysis.probing import _utterance_index
        from analysis.stats import curve_intervals

        ce = self.heldout_cross_entropy_bits.to(torch.float64).numpy()  # [L, m]
        targets = self.heldout_targets.long().numpy()  # [L, m]
        layers, m = ce.shape
        inverse, num_utts = _utterance_index(self.heldout_groups, m)
        inverse = inverse.numpy()
        ce_sums = np.zeros((num_utts, layers))  # [U, L] bits
        np.add.at(ce_sums, (np.broadcast_to(inverse, (layers, m)), np.arange(layers)[:, None]), ce)
        class_counts = np.zeros((num_utts, layers, self.num_classes))  # [U, L, K] examples
        np.add.at(class_counts, (np.broadcast_to(inverse, (layers, m)), np.arange(layers)[:, None], targets), 1.0)
        sizes = np.bincount(inverse, minlength=num_utts).astype(np.float64)  # [U]

        def statistic(w: np.ndarray) -> np.ndarray:
            n = w @ sizes
            p = np.einsum("u,ulk->lk", w, class_counts) / n  # [L, K] held-out marginal of the targets
            with np.errstate(divide="ignore", invalid="ignore"):
                h = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(1)
                bound = h - (w @ ce_sums) / n
                return np.where(h > 0, bound / h, np.nan) if normalized else bound

        return curve_intervals(statistic, num_utts, n_boot=n_boot, seed=seed, level=level)


def entropy_bits(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Plug-in entropy in bits of each row of ``targets`` (``[layers, n]`` ints) -> ``[layers]`` float64."""
    out = []
    for row in targets:
        p = torch.bincount(row.long().cpu(), minlength=num_classes).to(torch.float64) / row.numel()
        out.append(-(torch.xlogy(p, p).sum() / math.log(2.0)))
    return torch.stack(out)


def _bound(
    features: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    config: ProbeConfig,
    num_classes: int,
) -> MIBoundResult:
    """H - CE per layer; ``features`` ``[layers, n, dim]``, ``targets`` ``[n]`` or ``[layers, n]``."""
    train_index, heldout_index = grouped_split(groups, config.heldout_fraction, config.seed)
    probe = fit_probes(features, targets, train_index, heldout_index, config, num_classes=num_classes, groups=groups)
    if targets.dim() == 1:
        targets = targets.unsqueeze(0).expand(features.shape[0], -1)
    h = entropy_bits(targets[:, heldout_index], num_classes)
    bound = h - probe.cross_entropy_bits
    normalized = torch.where(h > 0, bound / h.clamp_min(1e-300), torch.full_like(h, float("nan")))
    return MIBoundResult(
        bound_bits=bound,
        normalized_bound=normalized,
        entropy_bits=h,
        cross_entropy_bits=probe.cross_entropy_bits,
        accuracy=probe.accuracy,
        num_train=probe.num_train,
        num_heldout=probe.num_heldout,
        num_classes=num_classes,
        heldout_cross_entropy_bits=probe.heldout_cross_entropy_nats / math.log(2.0),
        heldout_targets=targets[:, heldout_index],
        heldout_groups=probe.heldout_groups,
    )


def split_halves(
    features: torch.Tensor | Sequence[torch.Tensor],
    utterance_ids: torch.Tensor,
    *,
    gap_frames: int = 0,
    min_segment_frames: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean-pooled first and second halves of every utterance.

    An utterance of n frames gives segment a = frames [0, h) and segment b = frames
    [h + gap_frames, n), with h = (n - gap_frames) // 2 (b gets the odd frame).

    Args:
        features: ``[layers, frames, dim]`` (or one ``[frames, dim]`` per layer); the frames
            of each utterance in time order (utterances may be interleaved).
        utterance_ids: ``[frames]`` integer utterance id of each frame.

    Returns:
        ``(z_a, z_b, ids)``: ``[utts, layers, dim]`` float32 segment means and the ``[utts]`` sorted ids.
    """
    if gap_frames < 0:
        raise ValueError(f"Expected gap_frames >= 0, found {gap_frames}")
    if min_segment_frames < 1:
        raise ValueError(f"Expected min_segment_frames >= 1, found {min_segment_frames}")
    x = stack_layers(features)
    ids = torch.as_tensor(utterance_ids).cpu()
    if ids.shape != (x.shape[1],):
        raise ValueError(f"Expected utterance_ids of shape [{x.shape[1]}], found {tuple(ids.shape)}")
    unique, inverse = torch.unique(ids, return_inverse=True)
    counts = torch.bincount(inverse, minlength=unique.numel())
    needed = 2 * min_segment_frames + gap_frames
    short = (counts < needed).nonzero().flatten()
    if short.numel():
        u = short[0].item()
        raise ValueError(
            f"Expected every utterance to have at least {needed} frames (2 x min_segment_frames="
            f"{min_segment_frames} + gap_frames={gap_frames}) to split in halves, found utterance "
            f"{unique[u].item()} with {counts[u].item()} frames ({short.numel()} too short in all)"
        )
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(inverse)
    position[order] = torch.arange(inverse.numel()) - starts[inverse[order]]
    half = (counts - gap_frames) // 2
    in_a = position < half[inverse]
    in_b = position >= (half + gap_frames)[inverse]
    keep = (in_a | in_b).nonzero().flatten()
    segment = 2 * inverse[keep] + in_b[keep].long()  # 2u: first half of u, 2u + 1: second half
    sums = _segment_sum(x[:, keep.to(x.device)], segment, 2 * unique.numel())  # [L, 2U, D]
    sizes = torch.stack([half, counts - half - gap_frames], dim=1).flatten().to(sums.device, torch.float64)
    means = (sums / sizes[None, :, None]).to(torch.float32)
    return means[:, 0::2].transpose(0, 1), means[:, 1::2].transpose(0, 1), unique


def vacuous_layers(bound_bits: torch.Tensor | Sequence[float | None]) -> list[bool]:
    """Per layer, whether the bound is vacuous: at or below 0 bits (or undefined)."""
    values = bound_bits.tolist() if isinstance(bound_bits, torch.Tensor) else list(bound_bits)
    return [v is None or not v > 0.0 for v in values]


def section_pairs(
    num_samples: int, num_pairs: int, section_samples: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Up to ``num_pairs`` distinct pairs of non-overlapping sections of one utterance.

    Each pair is ``(start_a, start_b, length)`` in samples, section a before section b:
    length = min(section_samples, num_samples // 3) (at most a third of the utterance, so that
    a pair can be placed in more than one way), start_a uniform in [0, n - 2 length] and
    start_b uniform in [start_a + length, n - length]. Repeated draws are dropped, so a short
    utterance can give fewer pairs.

    Returns:
        The pairs sorted by (start_a, start_b); empty when the utterance is shorter than 3 samples.
    """
    if num_pairs < 1:
        raise ValueError(f"Expected num_pairs >= 1, found {num_pairs}")
    if section_samples < 1:
        raise ValueError(f"Expected section_samples >= 1, found {section_samples}")
    length = min(section_samples, num_samples // 3)
    if length < 1:
        return []
    pairs = set()
    for _ in range(num_pairs):
        start_a = int(rng.integers(0, num_samples - 2 * length + 1))
        start_b = int(rng.integers(start_a + length, num_samples - length + 1))
        pairs.add((start_a, start_b, length))
    return sorted(pairs)


@torch.no_grad()
def pool_sections(
    model: Any, speech: torch.Tensor, pairs: Sequence[tuple[int, int, int]], *, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled layer outputs of each section of ``pairs``, every section fed to ``model`` alone.

    Args:
        model: an ``analysis.capture.LayerwiseModel``.
        speech: ``[samples]`` one utterance's waveform.
        pairs: ``(start_a, start_b, length)`` in samples, one length for all (``section_pairs``).
        device: where the model runs (default: where ``speech`` is).

    Returns:
        ``(z_a, z_b)``: ``[pairs, layers, dim]`` float32 CPU means over each section's frames.
        All sections have one length, so they run as one batch without padding, which is exact
        also for models whose outputs depend on padding.
    """
    if not pairs:
        raise ValueError("Expected at least one section pair, found none")
    length = pairs[0][2]
    for start_a, start_b, size in pairs:
        if size != length or not (0 <= start_a and start_a + size <= start_b and start_b + size <= speech.shape[-1]):
            raise ValueError(
                f"Expected non-overlapping sections of length {length} inside {speech.shape[-1]} samples, "
                f"found pair {(start_a, start_b, size)}"
            )
    starts = [a for a, _, _ in pairs] + [b for _, b, _ in pairs]  # [2P]: all a sections, then all b
    batch = torch.stack([speech[s: s + length] for s in starts])  # [2P, length]
    if device is not None:
        batch = batch.to(device)
    out = model.extract(batch, torch.full((len(starts),), length, device=batch.device), attentions=False)
    frames = int(out.lengths.min())
    if frames < 1:
        raise ValueError(f"Expected sections of {length} samples to give at least 1 frame, found {frames}")
    pooled = torch.stack([h[:, :frames].float().mean(dim=1) for h in out.hidden], dim=1).cpu()  # [2P, L, D]
    return pooled[: len(pairs)], pooled[len(pairs):]


def cluster_mi_bound(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    config: MIBoundConfig = MIBoundConfig(),
    *,
    groups: torch.Tensor | None = None,
) -> MIBoundResult:
    """Label-free bound I(Z_a; C_b) >= H(C_b) - CE for every layer.

    Args:
        z_a: ``[utts, layers, dim]`` pooled representation of each utterance's first segment.
        z_b: ``[utts, layers, dim]`` pooled representation of its second segment.
        groups: ``[utts]`` split groups (e.g. speakers, to keep them disjoint across splits);
            default: each utterance its own group.

    Returns:
        Per-layer bound; ``num_classes`` is the number of k-means clusters.
    """
    if z_a.dim() != 3 or z_a.shape != z_b.shape:
        raise ValueError(
            f"Expected z_a and z_b of one shape [utts, layers, dim], found {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    utts, layers, _ = z_a.shape
    groups = torch.arange(utts) if groups is None else torch.as_tensor(groups).cpu()
    if groups.shape != (utts,):
        raise ValueError(f"Expected groups of shape [{utts}], found {tuple(groups.shape)}")
    eval_index, fit_index = grouped_split(groups, config.fit_fraction, config.seed)
    k = config.kmeans.num_clusters
    if fit_index.numel() < k:
        raise ValueError(
            f"Expected at least num_clusters={k} utterances in the k-means fit split, found {fit_index.numel()} "
            f"({utts} utterances x fit_fraction={config.fit_fraction}); use more utterances or fewer clusters"
        )
    targets = torch.empty(layers, eval_index.numel(), dtype=torch.long)
    for layer in range(layers):
        kmeans = KMeans(config.kmeans).fit(z_b[fit_index.to(z_b.device), layer])
        targets[layer] = kmeans.predict(z_b[eval_index.to(z_b.device), layer]).cpu()
    features = z_a[eval_index.to(z_a.device)].transpose(0, 1)  # [L, n_eval, D]
    return _bound(features, targets, groups[eval_index], config.probe, k)


def labelled_mi_bound(
    features: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    groups: torch.Tensor,
    config: ProbeConfig = ProbeConfig(),
    *,
    num_classes: int | None = None,
) -> MIBoundResult:
    """Labelled bound I(Z; Y) >= H(Y) - CE for every layer.

    Args:
        features: ``[layers, n, dim]`` (or one ``[n, dim]`` per layer).
        labels: ``[n]`` class per example (phone per frame, speaker per utterance, ...).
        groups: ``[n]`` utterance (or other group) of each example; the held-out split takes
            whole groups.
    """
    x = stack_layers(features)
    labels = torch.as_tensor(labels).cpu()
    num_classes = _check_labels(labels, x.shape[1], num_classes)
    groups = torch.as_tensor(groups).cpu()
    if groups.shape != (x.shape[1],):
        raise ValueError(f"Expected groups of shape [{x.shape[1]}], found {tuple(groups.shape)}")
    return _bound(x, labels.long(), groups, config, num_classes)
