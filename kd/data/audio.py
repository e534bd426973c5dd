"""Audio reading with validation: every failure names the file and the utterance.

Audio I/O goes through ``soundfile`` (its wheel bundles libsndfile); resampling through
``torchaudio.functional.resample``.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class Problem(enum.Enum):
    """Kinds of bad input, shared by the loaders and ``kd data check``."""

    MISSING_AUDIO = "missing audio file"
    CORRUPT_AUDIO = "unreadable audio"
    EMPTY_AUDIO = "empty audio"
    TRUNCATED_AUDIO = "truncated audio"
    SAMPLE_RATE = "wrong sample rate"
    CHANNELS = "not mono"
    NAN_AUDIO = "NaN or inf samples"
    EMPTY_TRANSCRIPT = "empty transcript"
    UNKNOWN_CHARACTERS = "characters outside the token inventory"
    MISSING_ID = "utterance id missing from a file"
    DUPLICATE_ID = "duplicate utterance id"
    MALFORMED_LINE = "malformed line"
    SPEAKER_MISMATCH = "utt2spk and spk2utt disagree"
    UNSUPPORTED = "unsupported entry"


class AudioError(ValueError):
    """A problem with one utterance's audio."""

    def __init__(self, problem: Problem, path: str | os.PathLike, detail: str, utt: str | None = None):
        self.problem, self.path, self.detail, self.utt = problem, str(path), detail, utt
        who = f"utterance {utt!r}: " if utt else ""
        super().__init__(f"{who}{problem.value}: {detail} ({self.path})")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file, compare the data size its header declares with the bytes present."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                present = size - (pos + 8)
                if chunk_size != 0xFFFFFFFF and present < chunk_size:
                    return f"header declares {chunk_size} bytes of samples, file holds {present}"
                return None
            pos += 8 + chunk_size + (chunk_size & 1)
    return "no data chunk before the end of the file"


def inspect_audio(path: str | os.PathLike, *, utt: str | None = None, sample_rate: int | None = 16000,
                  check_samples: bool = False) -> AudioInfo:
    """Validate an audio file's header (and, with ``check_samples``, its samples).

    Raises :class:`AudioError` for a missing, unreadable, empty, truncated, multi-channel
    or wrongly sampled file (``sample_rate=None`` accepts any rate), and with
    ``check_samples`` for NaN/inf samples.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(Problem.MISSING_AUDIO, path, "no such file", utt)
    if path.stat().st_size == 0:
        raise AudioError(Problem.EMPTY_AUDIO, path, "file has 0 bytes", utt)
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises several types for undecodable files
        raise AudioError(Problem.CORRUPT_AUDIO, path, f"cannot decode ({e})", utt) from None
    truncated = _wav_truncation(path)
    if truncated:
        raise AudioError(Problem.TRUNCATED_AUDIO, path, truncated, utt)
    if info.frames <= 0:
        raise AudioError(Problem.EMPTY_AUDIO, path, "0 samples", utt)
    if info.channels != 1:
        raise AudioError(Problem.CHANNELS, path, f"expected 1 channel, found {info.channels}", utt)
    if sample_rate is not None and info.samplerate != sample_rate:
        raise AudioError(Problem.SAMPLE_RATE, path, f"expected {sample_rate} Hz, found {info.samplerate} Hz", utt)
    result = AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), str(info.subtype))
    if check_samples:
        read_audio(path, utt=utt, sample_rate=sample_rate)
    return result


def read_audio(path: str | os.PathLike, *, utt: str | None = None, sample_rate: int | None = 16000,
               resample: bool = False) -> np.ndarray:
    """Read a mono file as float32 samples in [-1, 1]. ``[samples]``

    With ``resample=True`` a file at another rate is resampled to ``sample_rate``;
    otherwise a rate mismatch raises :class:`AudioError`.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(Problem.MISSING_AUDIO, path, "no such file", utt)
    try:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(Problem.CORRUPT_AUDIO, path, f"cannot decode ({e})", utt) from None
    if x.shape[0] == 0:
        raise AudioError(Problem.EMPTY_AUDIO, path, "0 samples", utt)
    if x.shape[1] != 1:
        raise AudioError(Problem.CHANNELS, path, f"expected 1 channel, found {x.shape[1]}", utt)
    x = x[:, 0]
    bad = ~np.isfinite(x)
    if bad.any():
        raise AudioError(Problem.NAN_AUDIO, path, f"{int(bad.sum())} of {x.size} samples are NaN or inf", utt)
    if sample_rate is not None and rate != sample_rate:
        if not resample:
            raise AudioError(Problem.SAMPLE_RATE, path, f"expected {sample_rate} Hz, found {rate} Hz", utt)
        x = resample_audio(x, rate, sample_rate)
    return np.ascontiguousarray(x, dtype=np.float32)


def resample_audio(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation). ``[samples] -> [samples']``"""
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.asarray(x, dtype=np.float32)), orig_rate, new_rate).numpy()
