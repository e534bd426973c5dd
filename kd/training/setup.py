"""Setting a run up: the run dir (and what may change on resume), data, model config, teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from kd.core.io import atomic_write_text, clear_done, load_yaml
from kd.training.checkpoint import CHECKPOINTS_DIR, list_checkpoints, load_weights, remove_partial_checkpoints
from kd.training.config import TeacherOutputs, TrainConfig, without_added_defaults

__all__ = ["RESUMABLE_FIELDS", "LenientTokenizer", "freeze_parameters", "load_train_data", "model_config_for",
           "prepare_run_dir", "setup_teachers"]

# config fields a resumed run may change: when to stop, when to save, what to log
RESUMABLE_FIELDS = ("optim.max_steps", "optim.max_epochs", "optim.fused", "optim.tf32", "optim.time_limit_s",
                    "checkpoint.", "logging.", "data.num_workers")
# files of an earlier attempt without checkpoints, removed before a fresh start (the teacher cache
# stays: its marker says which inputs it holds)
FRESH_START_REMOVES = ("tokens.txt", "bpe.model", "model_config.yaml", "log.csv", "dev.csv", "model.safetensors",
                       "model_avg.safetensors", "result.json")


class LenientTokenizer:
    """Dev transcripts may hold characters the training text lacks: they become <unk>."""

    def __init__(self, inner):
        self.inner = inner

    def encode(self, text: str, *, utt: str | None = None, allow_unk: bool = False) -> list[int]:
        return self.inner.encode(text, utt=utt, allow_unk=True)


def load_data_dir(path: str, config: TrainConfig):
    from kd.data import load_data_dir as load

    return load(path, skip_bad=config.data.skip_bad)


def load_train_data(config: TrainConfig) -> list:
    """The training data dirs, loaded and checked."""
    return [load_data_dir(p, config) for p in config.data.train]


def pool(dirs: list):
    """One DataDir with the utterances of several (ids must be unique across them)."""
    from kd.data import DataDir
    from kd.data.datadir import SkipReport

    seen: dict[str, Path] = {}
    utterances = []
    for d in dirs:
        for u in d.utterances:
            if u.utt in seen:
                raise ValueError(f"data.train: utterance id {u.utt!r} appears in {seen[u.utt]} and in {d.root}")
            seen[u.utt] = d.root
            utterances.append(u)
    return DataDir(dirs[0].root, utterances, SkipReport([i for d in dirs for i in d.skipped.issues]))


def model_config_for(config: TrainConfig, tokenizer):
    """The AsrConfig to build and, for ``model.init_from``, the weights to start from (else None)."""
    from kd.models.asr import AsrConfig
    from kd.models.model_dir import CONFIG_NAME as MODEL_DIR_CONFIG
    from kd.models.model_dir import WEIGHTS_NAME as MODEL_DIR_WEIGHTS
    from kd.models.model_dir import read_model_dir_config
    from kd.training.data import load_run_tokenizer
    from kd.training.teachers import MODEL_CONFIG_FILE, check_same_tokens

    m = config.model
    if m.init_from is None:
        return _with_overrides(AsrConfig.from_preset(m.preset, vocab_size=tokenizer.vocab_size), m.overrides), None
    run = Path(m.init_from)
    if (run / MODEL_DIR_CONFIG).is_file() and not (run / MODEL_CONFIG_FILE).is_file():
        # a model dir (kd.models.model_dir), e.g. a student built from a teacher's layers
        meta = read_model_dir_config(run)
        check_same_tokens(tokenizer.tokens, load_run_tokenizer(run).tokens, f"model.init_from ({run})")
        return _with_overrides(AsrConfig.from_dict(meta["asr"]), m.overrides), load_weights(run / MODEL_DIR_WEIGHTS)
    if not (run / MODEL_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"TrainConfig.model.init_from: expected a run dir with {MODEL_CONFIG_FILE} "
                                f"or a model dir with {MODEL_DIR_CONFIG}, found {run}")
    check_same_tokens(tokenizer.tokens, load_run_tokenizer(run).tokens, f"model.init_from ({run})")
    model_config = AsrConfig.from_yaml((run / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    return _with_overrides(model_config, m.overrides), load_weights(run / m.init_weights)


def _with_overrides(model_config, overrides):
    """``model.overrides`` on top of a preset's or an ``init_from`` model's config (for ``init_from``, the
    config validation allows training-only fields only, e.g. SpecAugment)."""
    if not overrides:
        return model_config
    from kd.models.asr import AsrConfig

    try:
        return AsrConfig.from_dict({**model_config.to_dict(), **overrides})
    except (TypeError, ValueError) as e:
        raise type(e)(f"TrainConfig.model.overrides: {e}") from None


def freeze_parameters(model, prefixes) -> int:
    """Stop training the parameters named by ``prefixes`` (``TrainConfig.model.freeze``).

    A prefix names a parameter or a module (``espnet.encoder.embed`` covers
    ``espnet.encoder.embed.conv.0.weight``, ...). Sets ``requires_grad=False`` and returns the
    number of values frozen; a prefix that names no parameter is an error that lists the
    model's top-level modules.
    """
    named = dict(model.named_parameters())
    frozen = 0
    for prefix in prefixes:
        hits = [n for n in named if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            modules = sorted({".".join(n.split(".")[:3]) for n in named})
            raise ValueError(f"TrainConfig.model.freeze: {prefix!r} names no parameter of the model; expected a "
                             f"parameter name or a prefix such as one of {modules}")
        for n in hits:
            if named[n].requires_grad:
                named[n].requires_grad_(False)
                frozen += named[n].numel()
    return frozen


def setup_teachers(config: TrainConfig, tokenizer, train_set, buckets, accelerator, out: Path):
    """``(teachers, None)`` for online outputs, ``(None, cache)`` for cached ones, ``(None, None)`` without kd."""
    from kd.training.teachers import TeacherCache, load_teachers

    kd = config.kd
    if kd is None:
        return None, None
    teachers = load_teachers(kd.teachers, tokenizer.tokens, accelerator.device)
    if kd.teacher_outputs is TeacherOutputs.ONLINE:
        return teachers, None
    cache = TeacherCache.build(kd.cache_dir or out / "teacher_cache", specs=kd.teachers, teachers=teachers,
                               dataset=train_set, buckets=buckets, level=kd.loss.level, dtype=kd.cache_dtype,
                               accelerator=accelerator, progress=config.logging.progress)
    return None, cache


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config as plain dicts, flattened to dotted field paths (``optim.lr``); ``model.overrides`` stays one value."""
    return _flatten(data, prefix)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and k != "overrides":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool) -> None:
    """Check that ``out`` may hold this run, remove unfinished checkpoints, write config.yaml.

    Main process only. A run dir with checkpoints is refused without ``resume``, and with it
    when the saved config differs outside RESUMABLE_FIELDS.
    """
    saved = out / "config.yaml"
    ckpt_root = out / CHECKPOINTS_DIR
    if not resume and list_checkpoints(ckpt_root):
        raise ValueError(f"{out}: holds checkpoints of an earlier run; resume it or choose another out_dir")
    if resume and saved.is_file() and list_checkpoints(ckpt_root):
        # identities: a run written before an option existed compares equal to one with its default
        old = _flatten(without_added_defaults(load_yaml(saved.read_text(encoding="utf-8")) or {}))
        new = _flatten(config.identity())
        changed = sorted(k for k in old.keys() | new.keys()
                         if old.get(k) != new.get(k) and not any(k.startswith(f) for f in RESUMABLE_FIELDS))
        if changed:
            raise ValueError(f"{out}: holds a run with another configuration (differs in {changed}); only "
                             f"{list(RESUMABLE_FIELDS)} may change on resume. Choose another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(ckpt_root)
    if not list_checkpoints(ckpt_root):  # a fresh start: nothing of an earlier attempt may leak in
        for name in FRESH_START_REMOVES:
            (out / name).unlink(missing_ok=True)
    clear_done(out)
    atomic_write_text(saved, config.to_yaml())


def new_accelerator(**kwargs):
    """``accelerate.Accelerator(**kwargs)``, also when an earlier run in this process chose another
    mixed precision (accelerate keeps one process-wide state and refuses to change it): the state is
    then reset, keeping the process group."""
    from accelerate import Accelerator

    try:
        return Accelerator(**kwargs)
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(**kwargs)
