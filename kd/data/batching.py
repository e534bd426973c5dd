"""Datasets, length-bucketed batches with padding masks, and log-mel FBANK features; loaders of
waveform batches in a new order every epoch (:func:`speech_loader`) and their attention masks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from kd.data.audio import read_audio
from kd.data.datadir import DataDir


class Tokenizer(Protocol):
    def encode(self, text: str, *, utt: str | None = None, allow_unk: bool = False) -> list[int]: ...


@dataclass
class Batch:
    """A padded batch. Padding: 0.0 in ``speech``, -1 in ``tokens``."""

    utts: list[str]
    speech: torch.Tensor  # [B, samples] float32
    speech_lengths: torch.Tensor  # [B] int64
    texts: list[str]
    speakers: list[str]
    domains: list[str | None]
    tokens: torch.Tensor | None = None  # [B, L] int64
    token_lengths: torch.Tensor | None = None  # [B] int64
    extra: dict = field(default_factory=dict)

    @property
    def padding_mask(self) -> torch.Tensor:
        """True at real samples. [B, samples]"""
        return torch.arange(self.speech.shape[1])[None, :] < self.speech_lengths[:, None]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch on ``device``. ``non_blocking`` copies from pinned memory (:meth:`pin_memory`)
        without making the host wait for the accelerator's queue."""
        move = lambda t: t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(self.utts, move(self.speech), move(self.speech_lengths), self.texts, self.speakers,
                     self.domains, move(self.tokens), move(self.token_lengths), self.extra)

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (what ``DataLoader(pin_memory=True)`` calls)."""
        pin = lambda t: t.pin_memory() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(self.utts, pin(self.speech), pin(self.speech_lengths), self.texts, self.speakers,
                     self.domains, pin(self.tokens), pin(self.token_lengths), self.extra)


class AudioDataset(torch.utils.data.Dataset):
    """Utterances of a :class:`DataDir`; each item is a dict with the waveform and labels."""

    def __init__(self, data: DataDir, tokenizer: Tokenizer | None = None, sample_rate: int = 16000):
        self.data, self.tokenizer, self.sample_rate = data, tokenizer, sample_rate
        if tokenizer is not None:  # fail early, naming the utterance, rather than mid-epoch
            self._tokens = [tokenizer.encode(u.text, utt=u.utt) for u in data.utterances]

    def __len__(self) -> int:
        return len(self.data.utterances)

    def __getitem__(self, index: int) -> dict:
        u = self.data.utterances[index]
        wave = read_audio(u.path, utt=u.utt, sample_rate=self.sample_rate)
        item = {"utt": u.utt, "speech": torch.from_numpy(wave), "text": u.text, "speaker": u.speaker,
                "domain": u.domain}
        if self.tokenizer is not None:
            item["tokens"] = torch.tensor(self._tokens[index], dtype=torch.long)
        return item

    def durations(self) -> list[float]:
        """Seconds per utterance, from the file headers."""
        import soundfile as sf

        return [sf.info(str(u.path)).duration for u in self.data.utterances]


def collate(items: Sequence[dict]) -> Batch:
    """Pad waveforms with 0 and token ids with -1 (ESPnet's ignore id)."""
    if not items:
        raise ValueError("Expected at least one item to collate, found an empty list")
    lengths = torch.tensor([it["speech"].shape[0] for it in items], dtype=torch.long)
    speech = torch.zeros(len(items), int(lengths.max()))
    for i, it in enumerate(items):
        speech[i, : lengths[i]] = it["speech"]
    tokens = token_lengths = None
    if "tokens" in items[0]:
        token_lengths = torch.tensor([it["tokens"].shape[0] for it in items], dtype=torch.long)
        tokens = torch.full((len(items), max(1, int(token_lengths.max()))), -1, dtype=torch.long)
        for i, it in enumerate(items):
            tokens[i, : token_lengths[i]] = it["tokens"]
    return Batch([it["utt"] for it in items], speech, lengths, [it["text"] for it in items],
                 [it["speaker"] for it in items], [it["domain"] for it in items], tokens, token_lengths)


def bucket_batches(durations: Sequence[float], *, max_seconds: float, max_utterances: int = 64,
                   shuffle: bool = True, seed: int = 0) -> list[list[int]]:
    """Group utterance indices of similar length so that padding stays small.

    Utterances are sorted by duration and cut into batches whose padded size
    (``len(batch) * longest``) stays within ``max_seconds``; batch order is shuffled with
    ``seed``. An utterance longer than ``max_seconds`` gets a batch of its own.
    """
    if max_seconds <= 0:
        raise ValueError(f"Expected max_seconds > 0, found {max_seconds}")
    order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(durations[i], durations[current[-1]] if current else 0.0)
        if current and (longest * (len(current) + 1) > max_seconds or len(current) >= max_utterances):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches


def fbank(speech: torch.Tensor, lengths: torch.Tensor, *, num_mel_bins: int = 80, sample_rate: int = 16000,
          frame_shift_ms: float = 10.0, frame_length_ms: float = 25.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi-compatible log-mel filterbank features per utterance, padded.

    speech: [B, samples]; lengths: [B]. Returns features [B, frames, num_mel_bins] and
    frame counts [B] (10 ms hop: frames = 1 + (samples - 400) // 160 at 16 kHz).
    """
    from torchaudio.compliance.kaldi import fbank as kaldi_fbank

    feats = []
    for x, n in zip(speech, lengths):
        f = kaldi_fbank(x[: int(n)].unsqueeze(0) * 32768.0, num_mel_bins=num_mel_bins,
                        sample_frequency=sample_rate, frame_shift=frame_shift_ms, frame_length=frame_length_ms,
                        dither=0.0, energy_floor=0.0)
        feats.append(f)
    frames = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    out = torch.zeros(len(feats), int(frames.max()) if len(feats) else 0, num_mel_bins)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, frames


def frame_labels(intervals: Sequence[Sequence], num_frames: int, frame_rate: float,
                 label_index: dict[str, int], *, fill: int = -1) -> np.ndarray:
    """Map ``[start_s, end_s, label]`` intervals onto frames (frame k covers [k/r, (k+1)/r)).

    A frame takes the label of the interval that contains its centre; frames outside
    every interval get ``fill``. Returns [num_frames] int64.
    """
    out = np.full(num_frames, fill, dtype=np.int64)
    centres = (np.arange(num_frames) + 0.5) / frame_rate
    for start, end, label in intervals:
        sel = (centres >= start) & (centres < end)
        out[sel] = label_index[label]
    return out


class EpochBatches(torch.utils.data.Sampler):
    """Length-bucketed batches of indices; every pass over it (an epoch) draws a new batch order."""

    def __init__(self, durations: Sequence[float], *, max_seconds: float, max_utterances: int, seed: int,
                 shuffle: bool = True):
        self.durations, self.max_seconds, self.max_utterances = list(durations), max_seconds, max_utterances
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self._len = len(self._batches(0))

    def _batches(self, epoch: int) -> list[list[int]]:
        return bucket_batches(self.durations, max_seconds=self.max_seconds, max_utterances=self.max_utterances,
                              shuffle=self.shuffle, seed=self.seed + epoch)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return self._len


def speech_loader(dataset, durations: Sequence[float], *, max_seconds: float, max_utterances: int = 64,
                  num_workers: int = 0, seed: int = 0, shuffle: bool = True) -> torch.utils.data.DataLoader:
    """A DataLoader of padded :class:`Batch` objects, length-bucketed, in a new order every epoch."""
    sampler = EpochBatches(durations, max_seconds=max_seconds, max_utterances=max_utterances, seed=seed,
                           shuffle=shuffle)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)


def attention_mask(speech_lengths: torch.Tensor, num_samples: int) -> torch.Tensor:
    """1 at real samples, 0 at padding. ``[B] -> [B, num_samples]`` (int64)."""
    return (torch.arange(num_samples, device=speech_lengths.device)[None, :] < speech_lengths[:, None]).long()
