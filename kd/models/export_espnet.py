"""Export a model directory as an ESPnet ASR model folder that ``Speech2Text`` decodes.

Output (ESPnet's layout for a trained ``asr_train`` model)::

    OUT_DIR/
        config.yaml   ESPnet asr_train configuration: token_list (inline), token_type,
                      frontend/frontend_conf, normalize/normalize_conf, encoder/encoder_conf,
                      decoder/decoder_conf, ctc_conf, model/model_conf, preprocessor keys
        model.pth     ``torch.save`` of the ESPnetASRModel state_dict (plain tensors)
        bpe.model     SentencePiece model (only for SentencePiece inventories)

Decode it with::

    Speech2Text(asr_train_config="OUT_DIR/config.yaml", asr_model_file="OUT_DIR/model.pth",
                device="cpu", beam_size=..., ctc_weight=..., penalty=..., maxlenratio=...)

What is dropped: the uncertainty head (``uncertainty.*`` weights, ``num_noise_samples``,
``aleatoric_mode``) is a training-time component of distillation and has no slot in
ESPnet's model; decoding never uses it, so the exported model decodes exactly like ours.

ESPnet quirks handled here:
- ``build_model_from_file`` loads the weights with ``torch.load(weights_only=False)`` and
  ``load_state_dict(strict=False)``, so a misnamed tensor would silently stay at its random
  initial value. ``export_espnet`` therefore rebuilds the model from the written config and
  loads the weights strictly before it reports success (``verify=True``).
- ``DefaultFrontend``'s default ``frontend_conf`` builds a WPE/beamformer front end; the
  config sets it to null explicitly, as :func:`kd.models.asr.build_asr_model` does.
- ``use_flash_attn`` defaults to true in ESPnet's Transformer blocks; the config sets it to
  false, as our builder does, so both run the same attention code.
- ``bpemodel`` is written as an absolute path (Speech2Text resolves it against the working
  directory); after moving the folder, pass ``bpemodel=`` to Speech2Text.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from kd.core.io import atomic_write_bytes, atomic_write_text

__all__ = ["ESPNET_CONFIG_NAME", "ESPNET_WEIGHTS_NAME", "espnet_config", "export_espnet"]

ESPNET_CONFIG_NAME = "config.yaml"
ESPNET_WEIGHTS_NAME = "model.pth"


def espnet_config(config: Any, token_list: list[str], *, token_type: str = "char",
                  bpemodel: str | None = None) -> dict[str, Any]:
    """The ESPnet ``asr_train`` configuration that builds the same ESPnetASRModel.

    Args:
        config: the model's :class:`kd.models.asr.AsrConfig`.
        token_list: the V symbols.
        token_type: ``char`` or ``bpe``.
        bpemodel: path of the SentencePiece model for ``bpe``.
    """
    from kd.models.asr import FeatureNorm, PositionalEncoding

    if len(token_list) != config.vocab_size:
        raise ValueError(f"token_list: expected {config.vocab_size} symbols, found {len(token_list)}")
    if config.pos_enc is not PositionalEncoding.ABS:  # asr_train's encoder_conf cannot name another class
        raise ValueError(f"AsrConfig.pos_enc: ESPnet's Transformer encoder config has no option for "
                         f"{config.pos_enc.value!r}; only 'abs_pos' models can be exported")
    normalize = None if config.feature_norm is FeatureNorm.NONE else "utterance_mvn"
    normalize_conf = {} if normalize is None else {
        "norm_means": True,
        "norm_vars": config.feature_norm is FeatureNorm.UTTERANCE_MEAN_VAR,
    }
    return {
        "token_list": list(token_list),
        "token_type": token_type,
        "bpemodel": bpemodel,
        "non_linguistic_symbols": None,
        "cleaner": None,
        "g2p": None,
        "use_preprocessor": True,
        "preprocessor": "default",
        "preprocessor_conf": {},
        "input_size": None,
        "init": None,
        "frontend": "default",
        "frontend_conf": {
            "fs": config.sample_rate,
            "n_fft": config.n_fft,
            "win_length": config.win_length,
            "hop_length": config.hop_length,
            "n_mels": config.n_mels,
            "frontend_conf": None,  # no WPE/beamformer stage
        },
        "specaug": None,
        "specaug_conf": {},
        "normalize": normalize,
        "normalize_conf": normalize_conf,
        "model": "espnet",
        "model_conf": {
            "ctc_weight": config.ctc_weight,
            "lsm_weight": config.lsm_weight,
            "length_normalized_loss": config.length_normalized_loss,
            "ignore_id": -1,
            "report_cer": False,
            "report_wer": False,
        },
        "preencoder": None,
        "preencoder_conf": {},
        "encoder": "transformer",
        "encoder_conf": {
            "output_size": config.d_model,
            "attention_heads": config.attention_heads,
            "linear_units": config.ffn_units,
            "num_blocks": config.encoder_layers,
            "dropout_rate": config.dropout_rate,
            "positional_dropout_rate": config.dropout_rate,
            "attention_dropout_rate": config.attention_dropout_rate,
            "input_layer": config.input_layer.value,
            "use_flash_attn": False,
            **({} if config.encoder_normalize_before else {"normalize_before": False}),
        },
        "postencoder": None,
        "postencoder_conf": {},
        "decoder": "transformer",
        "decoder_conf": {
            "attention_heads": config.attention_heads,
            "linear_units": config.ffn_units,
            "num_blocks": config.decoder_layers,
            "dropout_rate": config.dropout_rate,
            "positional_dropout_rate": config.dropout_rate,
            "self_attention_dropout_rate": config.attention_dropout_rate,
            "src_attention_dropout_rate": config.attention_dropout_rate,
            "use_flash_attn": False,
        },
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True},
    }


def _verify(conf: dict[str, Any], state: dict[str, torch.Tensor], config_path: Path) -> None:
    """Rebuild the model the way ESPnet does and load the weights strictly."""
    import argparse
    import copy

    from kd.core.quiet import espnet_imports

    espnet_imports()
    from espnet2.tasks.asr import ASRTask

    model = ASRTask.build_model(argparse.Namespace(**copy.deepcopy(conf)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{config_path}: the ESPnet model built from it does not take the exported weights "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )


def export_espnet(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, verify: bool = True) -> Path:
    """Write the model of ``model_dir`` (see :mod:`kd.models.model_dir`) as an ESPnet model folder.

    Args:
        model_dir: a model directory written by :func:`kd.models.model_dir.save_model_dir`.
        out_dir: the ESPnet model folder to write (created if needed).
        verify: rebuild the model from the written config with ESPnet's ``ASRTask`` and
            check that every exported tensor loads (ESPnet itself loads non-strictly).

    Returns:
        The path of the written ``config.yaml``.
    """
    from kd.data.text import SentencePieceTokenizer
    from kd.models.model_dir import load_model_dir

    model, tokenizer = load_model_dir(model_dir, device="cpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / ESPNET_CONFIG_NAME
    if config_path.exists():
        config_path.unlink()
    token_type, bpemodel = "char", None
    if isinstance(tokenizer, SentencePieceTokenizer):
        bpe_path = out_dir / "bpe.model"
        atomic_write_bytes(bpe_path, Path(tokenizer.model_path).read_bytes())
        token_type, bpemodel = "bpe", str(bpe_path.resolve())
    conf = espnet_config(model.config, list(tokenizer.tokens), token_type=token_type, bpemodel=bpemodel)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.espnet.state_dict().items()}
    if verify:
        _verify(conf, state, config_path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(out_dir / ESPNET_WEIGHTS_NAME, buffer.getvalue())
    header = f"# ESPnet asr_train config exported by speech-kd from {Path(model_dir).resolve()}\n"
    atomic_write_text(config_path, header + yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))
    return config_path
