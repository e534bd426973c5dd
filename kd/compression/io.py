"""Save and load compressed students.

A student directory holds:

- ``speechkd_plan.json``: the :class:`~kd.plan.CompressionPlan` (``CompressionPlan.load`` reads it);
- ``speechkd_student.json``: format version, model class and weights file name; written last, so
  its presence marks a finished save;
- Hugging Face models: ``config.json`` (with ``num_hidden_layers`` = the student's depth);
  ESPnet encoders: the ``TransformerEncoder`` keyword arguments inside ``speechkd_student.json``;
- the weights, in safetensors only:

  * a pruned-only Hugging Face student is written by ``save_pretrained`` (``model.safetensors``)
    and loads with plain ``from_pretrained``, without this package;
  * a student with sharing or attention reuse goes to ``speechkd_model.safetensors``, each shared
    tensor stored once under the name ``named_parameters()`` gives it first. The different name
    is deliberate: plain ``from_pretrained`` cannot rebuild sharing or reuse and would silently
    fill the missing tensors with random values. ``load_student`` rebuilds the structure with
    :func:`kd.compression.apply_structure` and then loads the tensors.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from kd.compression import _REGISTRY, _adapter_for, _entry_for, apply_structure
from kd.plan import CompressionPlan

FORMAT_VERSION = 1
PLAN_FILE = "speechkd_plan.json"
STUDENT_FILE = "speechkd_student.json"
HF_WEIGHTS = "model.safetensors"
SHARED_WEIGHTS = "speechkd_model.safetensors"


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every tensor once (first name wins), detached."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        out[name] = tensor.detach()
    return out


def save_weights_from(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the unique tensors of ``model`` to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.contiguous().cpu() for k, v in unique_state_dict(model).items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "speechkd_format_version": str(FORMAT_VERSION)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_weights_from` file into ``model``, which must have the same structure."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    tensors = load_file(str(path))
    expected = set(unique_state_dict(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match the model's structure; missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    result = model.load_state_dict(tensors, strict=False)  # aliases of shared tensors are "missing"
    assert not result.unexpected_keys and expected.isdisjoint(result.missing_keys), result
    return model


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def save_student(model: nn.Module, plan: CompressionPlan, directory: str | os.PathLike, *,
                 encoder_conf: Mapping[str, Any] | None = None) -> Path:
    """Save a student made by ``compress(teacher, plan)`` to ``directory``.

    ``encoder_conf``: for an ESPnet ``TransformerEncoder`` only, the JSON-serialisable keyword
    arguments it was built with (ESPnet's ``encoder_conf``; ``num_blocks`` is set to the student's
    depth). An ``ESPnetASRModel`` or ``AsrModel`` is saved by its own code: build it with the
    student's depth, then use :func:`kd.compression.apply_structure` and :func:`save_weights_from` /
    :func:`load_weights_into`.
    """
    entry, adapter = _entry_for(model), _adapter_for(model)
    depth = len(adapter.layers(model))
    if depth != plan.num_student_layers:
        raise ValueError(f"the plan describes a student with {plan.num_student_layers} layers, the model has {depth}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STUDENT_FILE).unlink(missing_ok=True)  # the marker goes last
    structured = plan.has_sharing or plan.has_attention_reuse
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "class": entry.name}
    if entry.adapters == "kd.compression.hf":
        meta["library"] = "transformers"
        if structured:
            model.config.save_pretrained(directory)
            save_weights_from(model, directory / SHARED_WEIGHTS)
        else:
            model.save_pretrained(directory)
        meta["weights"] = SHARED_WEIGHTS if structured else HF_WEIGHTS
    elif entry.key == "encoder":
        if encoder_conf is None:
            raise ValueError("encoder_conf: an ESPnet TransformerEncoder is saved with the keyword arguments it was "
                             "built with; found None")
        meta.update(library="espnet2", weights=SHARED_WEIGHTS, encoder_conf={**encoder_conf, "num_blocks": depth})
        save_weights_from(model, directory / SHARED_WEIGHTS)
    else:
        raise TypeError(f"save_student does not save a {entry.name}; save its TransformerEncoder, or build the model "
                        "with the student's depth and use apply_structure + save_weights_from/load_weights_into")
    plan.save(directory / PLAN_FILE)
    _write_json(directory / STUDENT_FILE, meta)
    return directory


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / STUDENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {directory} is not a finished student directory "
                                "(save_student writes this file last)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version: expected {FORMAT_VERSION}, found {meta.get('format_version')!r}")
    return meta


def load_student(directory: str | os.PathLike) -> nn.Module:
    """Load a student saved by :func:`save_student`, in eval mode."""
    directory = Path(directory)
    meta = _read_meta(directory)
    plan = CompressionPlan.load(directory / PLAN_FILE)
    library, name = meta.get("library"), meta.get("class")
    if library == "transformers":
        import transformers

        supported = [e.name for e in _REGISTRY if e.adapters == "kd.compression.hf"]
        if name not in supported:
            raise ValueError(f"{directory / STUDENT_FILE}: class: expected one of {supported}, found {name!r}")
        cls = getattr(transformers, name)
        if meta.get("weights") == HF_WEIGHTS:
            model = cls.from_pretrained(directory)
            apply_structure(model, plan)  # checks the depth; no sharing or reuse to apply
        else:
            model = apply_structure(cls(cls.config_class.from_pretrained(directory)), plan)
            load_weights_into(model, directory / SHARED_WEIGHTS)
    elif library == "espnet2" and name == "TransformerEncoder":
        from kd.core.quiet import espnet_imports

        espnet_imports()
        from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

        model = apply_structure(TransformerEncoder(**meta["encoder_conf"]), plan)
        load_weights_into(model, directory / SHARED_WEIGHTS)
    else:
        raise ValueError(f"{directory / STUDENT_FILE}: unsupported library/class {library!r}/{name!r}")
    return model.eval()


def load_speech_model(path: str | os.PathLike, **kwargs: Any):
    """A model from a Hugging Face checkpoint folder or a compressed-student folder, in eval mode.

    A folder with ``speechkd_student.json`` goes through :func:`kd.compression.load_student`
    (which rebuilds weight sharing and attention reuse); any other folder with ``config.json``
    is loaded with the class named in its ``architectures`` field (``kwargs`` go to
    ``from_pretrained``).
    """
    import transformers

    path = Path(path)
    if (path / STUDENT_FILE).is_file():
        return load_student(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"Expected a Hugging Face checkpoint folder (config.json) or a student folder "
                                f"({STUDENT_FILE}) at {path}, found neither")
    config = transformers.AutoConfig.from_pretrained(path)
    arch = (config.architectures or [""])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel
    return cls.from_pretrained(path, **kwargs).eval()
