"""Data: readers, validation, audio I/O, token inventories, batching and features."""

from kd.data.audio import AudioError, Problem, inspect_audio, read_audio, resample_audio
from kd.data.datadir import (DataDir, DataDirError, Issue, SkipReport, Utterance, load_data_dir,
                             load_librispeech, read_alignments, scan_data_dir, write_subset)
from kd.data.text import CharTokenizer, SentencePieceTokenizer, UnknownCharacterError, normalize_text

__all__ = [
    "AudioError", "Problem", "inspect_audio", "read_audio", "resample_audio",
    "DataDir", "DataDirError", "Issue", "SkipReport", "Utterance", "load_data_dir", "load_librispeech",
    "read_alignments", "scan_data_dir", "write_subset",
    "CharTokenizer", "SentencePieceTokenizer", "UnknownCharacterError", "normalize_text",
]
