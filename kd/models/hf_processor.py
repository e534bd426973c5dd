"""Input conventions of Hugging Face speech checkpoint folders: the reading side re-exported from
:mod:`analysis.hf_input` (where the convention is described), and the writing side: a model
derived from a folder (``kd compress``, layer distillation, CTC fine-tuning) is written with the
same convention and, for a compressed CTC model, the same vocabulary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from analysis.hf_input import (PREPROCESSOR_FILE, PROCESSOR_FILE, InputSpec, normalize_waveforms,
                               read_input_spec)

__all__ = ["PREPROCESSOR_FILE", "PROCESSOR_FILE", "PROCESSOR_FILES", "InputSpec", "copy_processor_files",
           "normalize_waveforms", "read_input_spec", "write_input_spec"]

# files of a checkpoint's processor that a derived model (a compressed student) keeps
PROCESSOR_FILES = (PREPROCESSOR_FILE, PROCESSOR_FILE, "vocab.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokens.txt")


def write_input_spec(folder: str | os.PathLike, spec: InputSpec) -> Path:
    """Write ``preprocessor_config.json`` for ``spec`` (a ``Wav2Vec2FeatureExtractor`` config, attention mask on)."""
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=spec.sampling_rate, padding_value=0.0,
                             do_normalize=spec.normalize, return_attention_mask=True).save_pretrained(folder)
    return Path(folder) / PREPROCESSOR_FILE


def copy_processor_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy the processor files of checkpoint folder ``source`` that exist into ``target``; their names."""
    copied = []
    for name in PROCESSOR_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(target) / name)
            copied.append(name)
    return copied
