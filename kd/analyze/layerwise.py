"""``kd analyze``: run every layer-wise analysis of ``analysis/`` on a model and a data dir.

One pass over the data accumulates, per utterance and without keeping whole activations:
float64 moments of all layers (CKA / SVCCA / PWCCA), attention redundancy and diagonality,
a bounded sample of frames per utterance (with their phone and word labels and FBANK
features) for held-out CCA and probes, phone and word segment means, utterance means
(speaker probes) and, for the label-free MI bound, the means of pairs of sections of each
utterance, every section fed through the model on its own (``analysis.mutual_info``). Then
every analysis runs on those statistics and the results go into one ``AnalysisReport``.

Every per-layer curve gets a percentile bootstrap interval over utterances (``bootstrap``
replicates): the per-utterance statistics behind it (correct counts, cross-entropy terms, projected
CCA moments) are resampled, the fitted probes, clusters and CCA directions are held fixed.

The data dir should be held out from the model's training (a dev split): the report names the
analysed dir, and warns where a kd training run records it among its training data.
"""

from __future__ import annotations

import os
import time
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from kd.core.config import CONFIG, with_config

ANALYZE_CONFIG_VERSION = 1


@dataclass(frozen=True)
@with_config(CONFIG)
class AnalyzeConfig:
    max_utterances: int | None = 200  # analyse at most this many utterances (None: all)
    batch_seconds: float = 60.0  # padded audio per forward batch
    max_seconds: float = 30.0  # longer utterances run in windows of this length (bounded memory)
    frames_per_utterance: int = 48  # frames sampled per utterance for CCA-with-features and probes
    svcca_keep: float = 0.99  # SVCCA: variance kept by the SVD step
    epsilon: float = 1e-6  # ridge added to covariance diagonals, in activation units (see analysis.similarity)
    attention: bool = True  # attention JSD and diagonality (needs attention maps)
    diagonality_band: int = 2  # frames either side of the diagonal
    cca_folds: int = 5  # utterance-grouped folds of the held-out CCA
    top_words: int = 200  # word labels: the most frequent words; others are left out
    probe_epochs: int = 20
    # depth of the phone and speaker probes (and of the labelled MI bound's probe): "linear", "mlp1"
    # (one hidden ReLU layer) or "mlp2" (two); analysis.probing.ProbeKind. The label-free bound stays linear.
    probe_kind: str = "linear"
    # also the phone probe at every depth ("linear", "mlp1", "mlp2"), side by side as Audio ALBERT compares
    # them: curves probe_phone_accuracy_<kind>, each with its interval
    probe_depths: bool = False
    # bootstrap replicates over utterances for every per-layer curve's interval (0: none)
    bootstrap: int = 1000
    mi_clusters: int = 8  # k of the label-free MI bound
    # label-free MI bound: section pairs drawn per utterance, each section run through the model on its
    # own; several pairs per utterance multiply the bound's samples (all pairs of one utterance share
    # a split). Sections are at most mi_section_seconds long and at most a third of the utterance.
    mi_pairs: int = 4
    mi_section_seconds: float = 2.0
    seed: int = 0
    device: str = "cpu"
    version: int = ANALYZE_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.frames_per_utterance < 2:
            raise ValueError(f"frames_per_utterance: expected >= 2, found {self.frames_per_utterance}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap: expected >= 0 (0: no intervals), found {self.bootstrap}")
        from analysis.probing import ProbeKind

        kinds = [k.value for k in ProbeKind]
        if self.probe_kind not in kinds:
            raise ValueError(f"probe_kind: expected one of {kinds}, found {self.probe_kind!r}")
        if self.mi_pairs < 1:
            raise ValueError(f"mi_pairs: expected >= 1, found {self.mi_pairs}")
        if not self.mi_section_seconds > 0:
            raise ValueError(f"mi_section_seconds: expected > 0, found {self.mi_section_seconds}")
        if self.max_utterances is not None and self.max_utterances < self.cca_folds:
            raise ValueError(f"max_utterances: expected >= cca_folds ({self.cca_folds}), found {self.max_utterances}")


@dataclass
class _Sample:
    """What the single pass keeps (bounded per utterance)."""

    frames: list[torch.Tensor] = field(default_factory=list)  # per utt [L, k, D]
    phone: list[torch.Tensor] = field(default_factory=list)  # per utt [k]
    word: list[torch.Tensor] = field(default_factory=list)  # per utt [k]
    fbank: list[torch.Tensor] = field(default_factory=list)  # per utt [k, 80]
    phone_seg: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # ([L, s, D], [s])
    word_seg: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    mean: list[torch.Tensor] = field(default_factory=list)  # per utt [L, D]
    section_a: list[torch.Tensor] = field(default_factory=list)  # per utt [pairs, L, D], sections fed alone
    section_b: list[torch.Tensor] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)


def sample_utterances(data, max_utterances: int | None, seed: int):
    """``data`` (a ``DataDir``) limited to ``max_utterances`` utterances drawn with ``seed``, in file order."""
    if max_utterances is None or len(data.utterances) <= max_utterances:
        return data
    order = np.random.default_rng(seed).permutation(len(data.utterances))[:max_utterances]
    return type(data)(data.root, [data.utterances[i] for i in sorted(order)], data.skipped)


def load_layerwise_model(model_dir: str | os.PathLike, device: str = "cpu"):
    """A ``LayerwiseModel`` for a Hugging Face checkpoint folder or a toolkit ASR model dir."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        from analysis.capture import load_hf_encoder

        return load_hf_encoder(str(model_dir), device=device)
    if (model_dir / "model_config.yaml").is_file():  # a kd train run dir: its averaged model
        from kd.analyze.espnet_capture import EspnetEncoderCapture
        from kd.training.teachers import load_run_model

        model, _ = load_run_model(model_dir)
        return EspnetEncoderCapture(model.to(device))
    if (model_dir / "config.yaml").is_file():
        from kd.analyze.espnet_capture import EspnetEncoderCapture
        from kd.models.model_dir import load_model_dir

        model, _ = load_model_dir(model_dir)
        return EspnetEncoderCapture(model.to(device))
    raise FileNotFoundError(f"Expected a Hugging Face checkpoint (config.json), a kd model dir (config.yaml) or a "
                            f"kd train run dir (model_config.yaml) "
                            f"in {model_dir}, found neither")


def _segment_means(hidden: torch.Tensor, intervals, rate: float, index: dict[str, int]):
    """Mean of each layer's frames within each labelled interval. hidden: [L, T, D]."""
    means, labels = [], []
    for start, end, label in intervals:
        if label not in index:
            continue
        a, b = int(round(start * rate)), int(round(end * rate))
        b = min(b, hidden.shape[1])
        if b <= a:
            continue
        means.append(hidden[:, a:b].mean(dim=1))
        labels.append(index[label])
    if not means:
        return None
    return torch.stack(means, dim=1), torch.tensor(labels)


def _collect(model, data, alignments, config: AnalyzeConfig, phone_index, word_index, report_extras):
    from analysis.attention import AttentionRedundancy
    from analysis.capture import iter_activations
    from analysis.mutual_info import pool_sections, section_pairs
    from analysis.streaming import LayerMoments
    from kd.data.batching import AudioDataset, bucket_batches, collate, fbank, frame_labels

    dataset = AudioDataset(data)
    durations = dataset.durations()
    batches = bucket_batches(durations, max_seconds=config.batch_seconds, shuffle=False)
    speakers = {u.utt: u.speaker for u in data.utterances}
    rng = np.random.default_rng(config.seed)
    section_rng = np.random.default_rng([config.seed, 1])  # its own stream: the sampled frames do not move
    section_samples = max(1, int(round(config.mi_section_seconds * 16000)))
    moments = None
    redundancy = None
    sample = _Sample()
    frames_total = 0

    pending_fbank: dict[str, torch.Tensor] = {}  # utt -> [frames_10ms, 80], consumed below
    pending_wave: dict[str, torch.Tensor] = {}  # utt -> [samples] at 16 kHz, consumed below

    def batch_iter():
        for b in batches:
            batch = collate([dataset[i] for i in b])
            feats, counts = fbank(batch.speech, batch.speech_lengths)
            for utt, f, c, wave, size in zip(batch.utts, feats, counts, batch.speech, batch.speech_lengths):
                pending_fbank[utt] = f[: int(c)]
                pending_wave[utt] = wave[: int(size)]
            yield batch.utts, batch.speech, batch.speech_lengths

    from tqdm import tqdm

    for utt_act in tqdm(iter_activations(model, batch_iter(), attentions=config.attention, device=config.device,
                                         max_seconds=config.max_seconds),
                        total=len(dataset), desc="analysing", unit="utt"):
        hidden = torch.stack([h.to(torch.float32) for h in utt_act.hidden])  # [L, T, D]
        n = hidden.shape[1]
        wave = pending_wave.pop(utt_act.utt)
        if n < 4:
            report_extras.setdefault("too_short", []).append(utt_act.utt)
            pending_fbank.pop(utt_act.utt, None)
            continue
        bad = ~torch.isfinite(hidden)
        if bad.any():
            layers = sorted({int(i) for i in bad.any(dim=-1).any(dim=-1).nonzero().flatten()})
            raise ValueError(f"utterance {utt_act.utt!r}: the model produced NaN or inf activations at layers {layers}")
        if moments is None:
            moments = LayerMoments([h.shape[-1] for h in utt_act.hidden], device=hidden.device)
        moments.update(list(hidden))
        frames_total += n
        if config.attention and utt_act.attentions is None:
            report_extras["attention_skipped_windowed_utterances"] = \
                report_extras.get("attention_skipped_windowed_utterances", 0) + 1
        if config.attention and utt_act.attentions is not None:
            if redundancy is None:
                redundancy = AttentionRedundancy(len(utt_act.attentions), utt_act.attentions[0].shape[0],
                                                 band=config.diagonality_band)
            redundancy.update_utterance(utt_act.attentions)
        cpu = hidden.cpu()
        k = min(config.frames_per_utterance, n)
        idx = torch.from_numpy(np.sort(rng.choice(n, size=k, replace=False)))
        sample.frames.append(cpu[:, idx])
        sample.mean.append(cpu.mean(dim=1))
        pairs = section_pairs(wave.shape[0], config.mi_pairs, section_samples, section_rng)
        try:
            z_a, z_b = pool_sections(model, wave, pairs, device=config.device)
        except ValueError:  # no pair, or sections too short for the model to give a frame
            report_extras["mi_cluster_too_short"] = report_extras.get("mi_cluster_too_short", 0) + 1
        else:
            sample.section_a.append(z_a)
            sample.section_b.append(z_b)
        sample.speakers.append(speakers[utt_act.utt])
        # FBANK at the model's frame rate: mean of the 10 ms frames inside each model frame
        feats = pending_fbank.pop(utt_act.utt)
        step = 100.0 / model.frame_rate  # 10 ms FBANK frames per model frame
        edges = (np.arange(n + 1) * step).astype(int).clip(0, feats.shape[0] - 1)
        pooled = torch.stack([feats[a:max(b, a + 1)].mean(0) for a, b in zip(edges[:-1], edges[1:])])
        sample.fbank.append(pooled[idx].to(torch.float64))
        align = alignments.get(utt_act.utt) if alignments else None
        if align is not None:
            sample.phone.append(torch.from_numpy(frame_labels(align["phones"], n, model.frame_rate, phone_index))[idx])
            words = [[s, e, w] for s, e, w in align["words"] if w in word_index]
            sample.word.append(torch.from_numpy(frame_labels(words, n, model.frame_rate, word_index))[idx])
            seg = _segment_means(cpu, align["phones"], model.frame_rate, phone_index)
            if seg is not None:
                sample.phone_seg.append(seg)
            seg = _segment_means(cpu, words, model.frame_rate, word_index)
            if seg is not None:
                sample.word_seg.append(seg)
    return moments, redundancy, sample, frames_total, sum(durations)


def _curve(report, key: str, values, intervals, config: AnalyzeConfig) -> None:
    """``per_layer[key]`` = ``values`` and ``intervals[key]`` = ``intervals(n_boot, seed)`` (a
    ``CurveIntervals``), or, where no interval can be drawn (e.g. a single held-out utterance), why
    not in ``skipped[key + "_intervals"]``."""
    report.per_layer[key] = [float(v) for v in values]
    if config.bootstrap == 0:
        return
    try:
        report.intervals[key] = intervals(config.bootstrap, config.seed).to_dict()
    except ValueError as e:
        report.skipped[f"{key}_intervals"] = str(e)


def _cca_curve(report, key: str, results, config: AnalyzeConfig) -> None:
    from analysis.feature_cca import cca_curve_intervals

    _curve(report, key, [r.score for r in results],
           lambda n_boot, seed: cca_curve_intervals(results, n_boot=n_boot, seed=seed), config)


def analyze(model, data, alignments: dict | None, config: AnalyzeConfig = AnalyzeConfig(), *, model_name: str = "",
            data_name: str = ""):
    """Run all analyses. ``model``: an ``analysis.capture.LayerwiseModel``; ``data``: a ``DataDir``."""
    from analysis import feature_cca as fc
    from analysis.kmeans import KMeansConfig
    from analysis.mutual_info import MIBoundConfig, cluster_mi_bound, labelled_mi_bound, vacuous_layers
    from analysis.probing import ProbeConfig, probe_frames, probe_utterances, probe_weighted_sum
    from analysis.report import AnalysisReport
    from analysis.streaming import pairwise_linear_cka, pairwise_pwcca, pairwise_svcca

    data = sample_utterances(data, config.max_utterances, config.seed)
    phones = sorted({p for a in (alignments or {}).values() for _, _, p in a["phones"]})
    phone_index = {p: i for i, p in enumerate(phones)}
    counts: dict[str, int] = {}
    for a in (alignments or {}).values():
        for _, _, w in a["words"]:
            counts[w] = counts.get(w, 0) + 1
    top = sorted(counts, key=lambda w: (-counts[w], w))[: config.top_words]
    word_index = {w: i for i, w in enumerate(top)}
    report = AnalysisReport(model=model_name, data=data_name or str(data.root), num_utterances=0, num_frames=0,
                            frame_rate=float(model.frame_rate), num_layers=int(model.num_layers),
                            config=asdict(config))
    clock = _Laps(config.device)
    moments, redundancy, sample, frames_total, audio = _collect(model, data, alignments, config, phone_index, word_index,
                                                         report.extras)
    clock.lap("forward_and_statistics")
    if moments is None:
        raise ValueError(f"No utterance of {data_name or data.root} gave at least 4 frames; nothing to analyse")
    report.num_utterances, report.num_frames = len(sample.frames), frames_total
    L = model.num_layers
    report.similarity["linear_cka"] = pairwise_linear_cka(moments).tolist()
    report.similarity["svcca"] = pairwise_svcca(moments, keep=config.svcca_keep, epsilon=config.epsilon).tolist()
    report.similarity["pwcca"] = pairwise_pwcca(moments, epsilon=config.epsilon).tolist()
    clock.lap("similarity")
    if redundancy is not None:
        r = redundancy.result()
        report.attention = {"jsd_head_averaged": r.per_head.mean(-1).tolist(),
                            "jsd_of_head_means": r.head_mean_attention.tolist(),
                            "diagonality": r.diagonality.tolist(), "band": r.band}
    elif config.attention:
        report.skipped["attention"] = "the model returned no attention maps"
    clock.lap("attention")
    # ---- held-out CCA with external features (per layer) --------------------------------
    cca_conf = fc.FeatureCCAConfig(n_folds=config.cca_folds, epsilon=config.epsilon, seed=config.seed)
    by_layer = lambda per_utt, l: [x[l] for x in per_utt]  # noqa: E731
    _cca_curve(report, "cca_fbank", [fc.heldout_cca(by_layer(sample.frames, l), sample.fbank, cca_conf)
                                     for l in range(L)], config)
    if alignments and sample.phone:
        _cca_curve(report, "cca_phone", [fc.label_cca(by_layer(sample.frames, l), sample.phone, len(phones), cca_conf)
                                         for l in range(L)], config)
        _cca_curve(report, "cca_word", [fc.label_cca(by_layer(sample.frames, l), sample.word, len(word_index),
                                                     cca_conf) for l in range(L)], config)
        for key, segs, k in (("cca_phone_segment", sample.phone_seg, len(phones)),
                             ("cca_word_segment", sample.word_seg, len(word_index))):
            if len(segs) >= config.cca_folds:
                _cca_curve(report, key, [fc.label_cca([m[l] for m, _ in segs], [y for _, y in segs], k, cca_conf)
                                         for l in range(L)], config)
        clock.lap("feature_cca")
        # ---- probes and the labelled MI bound (frame-level phones) ------------------------
        feats = torch.cat(sample.frames, dim=1)  # [L, n, D]
        labels = torch.cat(sample.phone)
        groups = torch.cat([torch.full((len(p),), i) for i, p in enumerate(sample.phone)])
        keep = labels >= 0
        probe_conf = ProbeConfig(kind=config.probe_kind, epochs=config.probe_epochs, seed=config.seed,
                                 device=config.device)
        phone_probe = probe_frames(feats[:, keep], labels[keep], groups[keep], probe_conf, num_classes=len(phones))
        _curve(report, "probe_phone_accuracy", phone_probe.accuracy,
               lambda n_boot, seed: phone_probe.intervals(n_boot=n_boot, seed=seed), config)
        report.extras["probe_phone_majority_accuracy"] = float(phone_probe.majority_accuracy.ravel()[0])
        if config.probe_depths:
            from analysis.probing import ProbeKind

            for kind in ProbeKind:
                depth = phone_probe if kind.value == config.probe_kind else probe_frames(
                    feats[:, keep], labels[keep], groups[keep], dataclasses.replace(probe_conf, kind=kind),
                    num_classes=len(phones))
                _curve(report, f"probe_phone_accuracy_{kind.value}", depth.accuracy,
                       lambda n_boot, seed, depth=depth: depth.intervals(n_boot=n_boot, seed=seed), config)
        ws = probe_weighted_sum(feats[:, keep], labels[keep], groups[keep], probe_conf, num_classes=len(phones))
        report.extras["superb_phone_layer_weights"] = list(map(float, ws.layer_weights))
        report.extras["superb_phone_accuracy"] = float(ws.accuracy)
        mi = labelled_mi_bound(feats[:, keep], labels[keep], groups[keep], probe_conf, num_classes=len(phones))
        _curve(report, "mi_phone_bits", mi.bound_bits, lambda n_boot, seed: mi.intervals(n_boot=n_boot, seed=seed),
               config)
        report.extras["phone_entropy_bits"] = float(np.asarray(mi.entropy_bits).ravel()[0])
    else:
        report.skipped["phones_and_words"] = "no alignments.jsonl in the data dir"
    clock.lap("phone_probes_and_mi" if alignments and sample.phone else "feature_cca")
    # ---- speakers (utterance level) and the label-free MI bound -----------------------------
    spk_ids = sorted(set(sample.speakers))
    if len(spk_ids) >= 2:
        pooled = torch.stack(sample.mean)  # [utts, L, D]
        labels = torch.tensor([spk_ids.index(s) for s in sample.speakers])
        probe_conf = ProbeConfig(kind=config.probe_kind, epochs=max(config.probe_epochs, 50), seed=config.seed,
                                 device=config.device, batch_size=64)
        spk = probe_utterances(pooled, labels, probe_conf, num_classes=len(spk_ids))
        _curve(report, "probe_speaker_accuracy", spk.accuracy,
               lambda n_boot, seed: spk.intervals(n_boot=n_boot, seed=seed), config)
        clock.lap("speaker_probe")
        report.extras["probe_speaker_majority_accuracy"] = float(spk.majority_accuracy.ravel()[0])
    else:
        report.skipped["speaker_probe"] = f"needs at least 2 speakers, found {len(spk_ids)}"
    mi_conf = MIBoundConfig(kmeans=KMeansConfig(num_clusters=config.mi_clusters, seed=config.seed),
                            probe=ProbeConfig(epochs=max(config.probe_epochs, 50), seed=config.seed, batch_size=64,
                                              weight_decay=1e-2),
                            seed=config.seed)
    try:
        if not sample.section_a:
            raise ValueError("no utterance was long enough to draw a section pair")
        # one group per utterance: its section pairs never straddle a split
        groups = torch.cat([torch.full((len(z),), i) for i, z in enumerate(sample.section_a)])
        mi = cluster_mi_bound(torch.cat(sample.section_a), torch.cat(sample.section_b), mi_conf, groups=groups)
        _curve(report, "mi_cluster_bits", mi.bound_bits, lambda n_boot, seed: mi.intervals(n_boot=n_boot, seed=seed),
               config)
        _curve(report, "mi_cluster_normalized", mi.normalized_bound,
               lambda n_boot, seed: mi.intervals(normalized=True, n_boot=n_boot, seed=seed), config)
        report.extras["mi_cluster_heldout_pairs"] = int(mi.num_heldout)
        report.extras["mi_cluster_pairs"] = int(len(groups))
        report.extras["mi_cluster_vacuous"] = vacuous_layers(mi.bound_bits)
        if all(report.extras["mi_cluster_vacuous"]):
            report.extras["mi_cluster_note"] = (
                f"every layer's bound is at or below 0 bits (vacuous): the probe's held-out cross-entropy is not "
                f"below H(C_b) with {mi.num_heldout} held-out section pairs; analyse more utterances")
    except ValueError as e:
        report.skipped["mi_cluster"] = str(e)
    clock.lap("mi_cluster")
    total = sum(clock.seconds.values())
    report.extras["timing"] = {"audio_seconds": audio, "seconds": clock.seconds, "total_seconds": total,
                               "audio_seconds_per_second": audio / total if total > 0 else None,
                               "device": config.device}
    return report


class _Laps:
    """Wall seconds per phase: ``lap(name)`` adds the time since the previous lap to ``name``."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 4)
        self._last = now


def analyze_model_dir(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      config: AnalyzeConfig = AnalyzeConfig()) -> "AnalysisReport":  # noqa: F821
    """``kd analyze``: load, analyse, write ``report.json``, ``report.md`` and PNG figures to ``out_dir``."""
    from kd.core.io import atomic_write_text
    from kd.data import load_data_dir, read_alignments

    model = load_layerwise_model(model_dir, device=config.device)
    data = load_data_dir(data_dir)
    align_path = Path(data_dir) / "alignments.jsonl"
    alignments = read_alignments(align_path) if align_path.is_file() else None
    analysed = Path(data_dir).resolve()
    report = analyze(model, data, alignments, config, model_name=str(model_dir), data_name=str(analysed))
    training = run_training_data(model_dir)
    if training is not None:
        report.extras["model_training_data"] = training
        report.extras["data_in_model_training"] = str(analysed) in training
    out = Path(out_dir)
    report.save(out / "report.json")
    atomic_write_text(out / "report.md", report.to_markdown())
    report.save_figures(out / "figures")
    return report


def run_training_data(model_dir: str | os.PathLike) -> list[str] | None:
    """The training data dirs (resolved) that a ``kd train`` run records for the model in ``model_dir``
    (the run dir itself, or its ``model/`` folder), or None where no run config names them (e.g. a
    Hugging Face checkpoint)."""
    import yaml

    model_dir = Path(model_dir)
    for run_dir in (model_dir, model_dir.parent):
        config = run_dir / "config.yaml"
        if (run_dir / "model_config.yaml").is_file() and config.is_file():
            try:
                train = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data", {}).get("train")
            except (yaml.YAMLError, AttributeError):
                return None
            if isinstance(train, str):
                train = [train]
            return [str(Path(d).resolve()) for d in train] if isinstance(train, list) else None
    return None
