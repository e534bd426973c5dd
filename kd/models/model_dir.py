"""The toolkit's ASR model directory: what training writes and decoding, evaluation and export read.

Layout (format ``kd-asr-model``, version 1)::

    MODEL_DIR/
        model.safetensors   AsrModel.state_dict() (ESPnet model under ``espnet.``, the
                            uncertainty head under ``uncertainty.``), float tensors
        tokens.txt          the token inventory, one symbol a line, ESPnet layout:
                            <blank> first, <unk> second, <sos/eos> last
        bpe.model           SentencePiece model (only for SentencePiece inventories)
        config.yaml         {format, version, asr: AsrConfig.to_dict(), tokens: tokens.txt,
                             tokenizer: char | sentencepiece, bpemodel: bpe.model | null}

``config.yaml`` is written last (every file atomically), so a folder without it is an
unfinished write, never a model. Loading checks that every file is there, that the token
list has ``asr.vocab_size`` symbols, and that the weights hold exactly the model's tensors
with the model's shapes. Weights are read with safetensors only (no pickle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Union

import yaml

from kd.core.io import atomic_write_bytes, atomic_write_text, load_yaml
from kd.data.text import CharTokenizer, SentencePieceTokenizer

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "ModelDirError",
    "TOKENS_NAME",
    "WEIGHTS_NAME",
    "load_model_dir",
    "read_model_dir_config",
    "save_model_dir",
]

FORMAT = "kd-asr-model"
VERSION = 1
CONFIG_NAME = "config.yaml"
TOKENS_NAME = "tokens.txt"
WEIGHTS_NAME = "model.safetensors"
BPE_NAME = "bpe.model"

AnyTokenizer = Union[CharTokenizer, SentencePieceTokenizer]


class ModelDirError(ValueError):
    """A model directory that is incomplete or inconsistent; the message names the file."""


def save_model_dir(model: Any, tokenizer: AnyTokenizer, directory: str | os.PathLike) -> Path:
    """Write ``model`` (a :class:`kd.models.asr.AsrModel`) and its token inventory.

    Args:
        model: the model; its ``config.vocab_size`` must equal the tokenizer's size.
        tokenizer: a ``CharTokenizer`` or ``SentencePieceTokenizer`` (its ``.model`` file is
            copied into the folder as ``bpe.model``).
        directory: the model directory (created if needed; existing files are replaced).

    Returns:
        The path of the written ``config.yaml``.
    """
    from kd.models.weights import weights_bytes

    directory = Path(directory)
    tokens = list(tokenizer.tokens)
    if len(tokens) != model.config.vocab_size:
        raise ValueError(
            f"tokenizer: expected {model.config.vocab_size} tokens (model.config.vocab_size), "
            f"found {len(tokens)}"
        )
    if isinstance(tokenizer, SentencePieceTokenizer):
        kind, bpemodel = "sentencepiece", BPE_NAME
    elif isinstance(tokenizer, CharTokenizer):
        kind, bpemodel = "char", None
    else:
        raise TypeError(
            f"tokenizer: expected CharTokenizer or SentencePieceTokenizer, found {type(tokenizer).__name__}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / CONFIG_NAME
    if config_path.exists():  # the folder is "not a model" until the new config lands
        config_path.unlink()
    # tied (shared) weights are stored once and come back tied (kd.models.weights.load_weights)
    atomic_write_bytes(directory / WEIGHTS_NAME, weights_bytes(model.state_dict(), metadata={"format": FORMAT}))
    atomic_write_text(directory / TOKENS_NAME, "".join(t + "\n" for t in tokens))
    if bpemodel is not None:
        atomic_write_bytes(directory / BPE_NAME, Path(tokenizer.model_path).read_bytes())
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tokens": TOKENS_NAME,
        "tokenizer": kind,
        "bpemodel": bpemodel,
        "asr": model.config.to_dict(),
    }
    atomic_write_text(config_path, yaml.safe_dump(meta, sort_keys=False))
    return config_path


def read_model_dir_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.yaml`` of a model directory (no weights are loaded)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Expected a model directory at {directory}, found no such directory")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; expected {CONFIG_NAME}, {TOKENS_NAME} and {WEIGHTS_NAME} "
                            "(a folder without config.yaml is an unfinished write)")
    meta = load_yaml(path.read_text(encoding="utf-8"))
    if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, Mapping) else type(meta).__name__
        raise ModelDirError(f"{path}: expected format {FORMAT!r}, found {found!r}")
    if meta.get("version") != VERSION:
        raise ModelDirError(f"{path}: expected version {VERSION}, found {meta.get('version')!r}")
    if meta.get("tokenizer") not in ("char", "sentencepiece"):
        raise ModelDirError(f"{path}: tokenizer: expected 'char' or 'sentencepiece', found {meta.get('tokenizer')!r}")
    if not isinstance(meta.get("asr"), Mapping):
        raise ModelDirError(f"{path}: asr: expected a mapping of AsrConfig fields, found {meta.get('asr')!r}")
    names = [meta.get("tokens") or TOKENS_NAME, WEIGHTS_NAME]
    if meta["tokenizer"] == "sentencepiece":
        names.append(meta.get("bpemodel") or BPE_NAME)
    for name in names:
        if not (directory / name).is_file():
            raise ModelDirError(f"{directory / name}: missing from the model directory")
    return dict(meta)


def _load_tokenizer(directory: Path, meta: Mapping[str, Any], vocab_size: int) -> AnyTokenizer:
    tokens_path = directory / (meta.get("tokens") or TOKENS_NAME)
    tokens = tuple(tokens_path.read_text(encoding="utf-8").splitlines())
    if len(tokens) != vocab_size:
        raise ModelDirError(
            f"{tokens_path}: expected {vocab_size} tokens (asr.vocab_size in {CONFIG_NAME}), found {len(tokens)}"
        )
    if meta["tokenizer"] == "char":
        try:
            return CharTokenizer.load(tokens_path)
        except ValueError as e:
            raise ModelDirError(str(e)) from None
    tokenizer = SentencePieceTokenizer(directory / (meta.get("bpemodel") or BPE_NAME))
    if tuple(tokenizer.tokens) != tokens:
        raise ModelDirError(f"{tokens_path}: the token list does not match the pieces of {meta.get('bpemodel')}")
    return tokenizer


def load_model_dir(directory: str | os.PathLike, *, device: str = "cpu") -> tuple[Any, AnyTokenizer]:
    """Load an :class:`~kd.models.asr.AsrModel` (in eval mode) and its tokenizer.

    Raises :class:`ModelDirError` (a ``ValueError``) naming the file for a missing file, a
    token list whose size differs from the model's vocabulary, or weights whose names or
    shapes differ from the model's.
    """
    from kd.models.asr import AsrConfig, build_asr_model
    from kd.models.weights import load_weights

    directory = Path(directory)
    meta = read_model_dir_config(directory)
    try:
        config = AsrConfig.from_dict(meta["asr"])
    except (TypeError, ValueError) as e:
        raise ModelDirError(f"{directory / CONFIG_NAME}: {e}") from None
    tokenizer = _load_tokenizer(directory, meta, config.vocab_size)
    model = build_asr_model(config, list(tokenizer.tokens))
    weights_path = directory / WEIGHTS_NAME
    state = load_weights(weights_path)
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ModelDirError(
            f"{weights_path}: tensors do not match the model of {CONFIG_NAME}: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ModelDirError(
                f"{weights_path}: {name}: expected shape {tuple(expected[name].shape)} "
                f"(from {CONFIG_NAME}), found {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), tokenizer

