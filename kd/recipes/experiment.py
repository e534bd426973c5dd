"""Building blocks of the multi-domain KD recipe: shared tokens, student runs, result tables.

The recipe (``recipes/multidomain_ukd``) trains two domain teachers, builds students from a
teacher's layers by an analysis-driven plan (or randomly initialised students of the same
size), distils them on the target domain under several conditions and seeds, and reports
mean and standard deviation over seeds. The functions here turn the recipe's YAML sections
into :class:`~kd.training.config.TrainConfig` objects and the evaluations into a table; the
recipe script only strings them together.

Conditions (``Condition``): ``init`` is ``random`` (the teacher architecture with the student's
depth, fresh weights) or ``plan`` (the teacher's layers chosen by the plan); ``teachers`` names
the domain teachers to distil from (none: no KD); ``beta`` is the share of tok-KD in the KD
term (1: tok-KD only, 0.5: tok-KD + unc-KD, or + spread-KD at ``level: frame``); ``weighting``
combines several teachers (``fixed`` uniform, ``dev_wer`` from their dev WER on the target domain,
``uncertainty`` per token, ``posterior_spread`` per frame). The teachers' soft labels are
``KDLossConfig``'s default, the paper's sampled ones (``kd.training.losses.SoftLabels``).
"""

from __future__ import annotations

import copy
import enum
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from kd.core.config import CONFIG, parse_config, with_config
from kd.training.config import TrainConfig, with_added_fields
from kd.training.losses import KDLevel, KDLossConfig, KDReduction, TeacherWeighting

__all__ = ["Condition", "Init", "StudentSize", "check_pairs", "evaluate_once", "mean_std", "merge_sections",
           "paired_differences", "seed_summary", "student_train_config", "train_run", "training_differs",
           "write_token_list"]

class Init(enum.Enum):
    """How a student starts: fresh weights, or the teacher's layers chosen by the analysis-driven plan."""

    RANDOM = "random"
    PLAN = "plan"


_KD = KDLossConfig()  # the KD loss's defaults, written once (kd.training.losses); a condition's KD fields start there
_CONDITION_ENUMS = {"init": Init, "level": KDLevel, "weighting": TeacherWeighting, "reduction": KDReduction}


@dataclass(frozen=True)
@with_config(CONFIG)
class Condition:
    """One row of the benchmark: how the student starts and what it distils. The KD fields (``beta`` to
    ``level``) are those of :class:`kd.training.losses.KDLossConfig`, with its defaults."""

    name: str  # row label in the table, e.g. "tok+unc-KD (us)"
    init: Init = Init.PLAN
    teachers: tuple[str, ...] = ()  # domain teachers to distil from; () = no KD
    beta: float = _KD.beta  # tok-KD share of the KD term (1 - beta: unc-KD, or spread-KD at level frame)
    alpha: float = _KD.alpha  # weight of the student's own loss
    temperature: float = _KD.temperature
    weighting: TeacherWeighting = _KD.weighting  # several teachers: fixed, dev_wer, uncertainty, posterior_spread
    reduction: KDReduction = _KD.reduction  # of the KD term over tokens: mean or sum_per_utterance
    level: KDLevel = _KD.level  # what is matched: decoder tokens or CTC frames

    def __post_init__(self) -> None:
        for field_name, kind in _CONDITION_ENUMS.items():  # YAML strings to members, naming the condition
            value = getattr(self, field_name)
            if not isinstance(value, kind):
                allowed = [m.value for m in kind]
                if value not in allowed:
                    raise ValueError(f"Condition {self.name!r}: {field_name}: expected one of {allowed}, "
                                     f"found {value!r}")
                object.__setattr__(self, field_name, kind(value))
        object.__setattr__(self, "teachers", tuple(self.teachers))
        try:  # the KD fields checked by the loss config itself
            self.loss_config()
        except ValueError as e:
            raise ValueError(f"Condition {self.name!r}: {e}") from None

    def loss_config(self) -> KDLossConfig:
        """The KD loss of this condition; a ``dev_wer`` weighting gets placeholder WERs (each run's own
        are the teachers' on the target dev set: :func:`student_train_config`)."""
        wers = (1.0,) * max(1, len(self.teachers)) if self.weighting is TeacherWeighting.DEV_WER else None
        return KDLossConfig(alpha=self.alpha, beta=self.beta, temperature=self.temperature, level=self.level,
                            weighting=self.weighting, reduction=self.reduction, dev_wers=wers)

    @property
    def slug(self) -> str:
        """The name as a folder name: lower case, runs of other characters as one '-'."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Condition":
        return parse_config(cls, data)


@dataclass(frozen=True)
@with_config(CONFIG)
class StudentSize:
    name: str  # e.g. "S"
    encoder_layers: int  # kept teacher encoder layers (the plan's budget)
    decoder_keep: tuple[int, ...]  # teacher decoder layers kept, in order
    share_encoder: bool = False  # share weights within the plan's blocks of similar layers

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> "StudentSize":
        """The size ``name`` (a key of a preset's ``student_sizes``) from its fields."""
        where = f"student_sizes.{name}"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping of encoder_layers, decoder_keep and share_encoder, "
                             f"found {data!r}")
        if "name" in data:
            raise ValueError(f"{where}: unknown field 'name' (the key names the size)")
        return parse_config(cls, {**data, "name": name}, where)


def write_token_list(data_dirs: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """The character inventory of all transcripts of ``data_dirs``, shared by teachers and students."""
    from kd.data import load_data_dir
    from kd.data.text import CharTokenizer

    texts = [u.text for d in data_dirs for u in load_data_dir(d).utterances]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    CharTokenizer.from_texts(texts).save(path)
    return path


def merge_sections(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``override`` merged in, mapping by mapping (YAML config sections)."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        out[k] = merge_sections(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def student_train_config(base: Mapping[str, Any], condition: Condition, *, train: Sequence[str | os.PathLike],
                         dev: str | os.PathLike, tokens: str | os.PathLike | Mapping[str, Any], seed: int,
                         teacher_model: Mapping[str, Any], size: StudentSize, plan_student: str | os.PathLike | None,
                         teacher_runs: Mapping[str, str | os.PathLike], dev_wers: Mapping[str, float],
                         cache_root: str | os.PathLike, freeze: Sequence[str] = (),
                         teacher_weights: str = "model_avg.safetensors") -> TrainConfig:
    """The run config of one (size, condition, seed) cell.

    Args:
        base: the recipe's ``student`` training section (optim, data limits, checkpoint, logging,
            and ``model.overrides`` with training-only model fields such as SpecAugment).
        condition: what to distil and how to initialise.
        train, dev: target-domain data dirs.
        tokens: the shared token list (a file of characters), or the tokens section of the run.
        teacher_model: the teachers' ``model`` section (preset + overrides); a random student
            takes it with the student's depth.
        plan_student: the model dir of the student built from the teacher's layers (``plan`` init).
        teacher_runs: domain name -> teacher run dir.
        dev_wers: domain name -> the teacher's WER on the target dev set (for ``dev_wer``).
        cache_root: folder for cached teacher outputs, shared by every run with the same teachers.
        freeze: parameter names or prefixes (``TrainConfig.model.freeze``) that a student built
            from the teacher's layers keeps as the teacher trained them; a random student trains all.
        teacher_weights: the weights file in each of ``teacher_runs`` (``model.safetensors`` when they
            are model dirs, e.g. a run's ``model/`` folder or a shipped teacher).
    """
    base = dict(base)
    # the student section's own model overrides (training-only fields such as SpecAugment) go
    # on top of either initialisation
    student_model = dict(base.pop("model", None) or {})
    if set(student_model) - {"overrides"}:
        raise ValueError(f"student.model: expected only 'overrides' (the architecture comes from the teacher and "
                         f"the size), found {sorted(student_model)}")
    student_overrides = dict(student_model.get("overrides") or {})
    section = merge_sections(base, {
        "data": {"train": [str(d) for d in train], "dev": str(dev)},
        # a token list file (characters), or a whole tokens section (e.g. a SentencePiece model)
        "tokens": dict(tokens) if isinstance(tokens, Mapping) else {"kind": "list", "path": str(tokens)},
        "seed": seed,
    })
    if condition.init is Init.PLAN:
        if plan_student is None:
            raise ValueError(f"condition {condition.name!r}: init 'plan' needs the student built from the plan")
        section["model"] = {"preset": None, "init_from": str(plan_student), "freeze": list(freeze),
                            "overrides": student_overrides}
    else:
        model = merge_sections(teacher_model, {"overrides": {"encoder_layers": size.encoder_layers,
                                                     "decoder_layers": len(size.decoder_keep),
                                                     **student_overrides}})
        section["model"] = model
    if condition.teachers:
        missing = [t for t in condition.teachers if t not in teacher_runs]
        if missing:
            raise ValueError(f"condition {condition.name!r}: unknown teacher(s) {missing}; "
                             f"expected some of {sorted(teacher_runs)}")
        loss: dict[str, Any] = {"alpha": condition.alpha, "beta": condition.beta,
                                "temperature": condition.temperature, "weighting": condition.weighting.value,
                                "reduction": condition.reduction.value, "level": condition.level.value}
        if condition.weighting is TeacherWeighting.DEV_WER:
            loss["dev_wers"] = [float(dev_wers[t]) for t in condition.teachers]
        section["kd"] = {
            "teachers": [{"run_dir": str(teacher_runs[t]), "weights": teacher_weights} for t in condition.teachers],
            "loss": loss,
            "teacher_outputs": "cached",
            # one cache per teacher set and level (a cache holds one level's outputs)
            "cache_dir": str(Path(cache_root) / ("+".join(condition.teachers)
                                                 + ("" if condition.level is KDLevel.TOKEN else f"-{condition.level.value}"))),
        }
    return TrainConfig.from_dict(section)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std: expected at least one value, found none")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0, 1
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var), len(values)


def seed_summary(runs: Mapping[str, Mapping[str, Mapping[str, float]]],
                 metrics: Sequence[str] = ("wer", "cer")) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and metric, ``{"mean", "std", "runs"}`` (:func:`mean_std`) over its runs.

    ``runs``: model name -> run name (e.g. a seed) -> metric -> value.
    """
    out = {}
    for name, by_run in runs.items():
        if not by_run:
            raise ValueError(f"runs[{name!r}]: expected at least one run, found none")
        out[name] = {m: dict(zip(("mean", "std", "runs"), mean_std(r[m] for r in by_run.values()))) for m in metrics}
    return out


def paired_differences(runs: Mapping[str, Mapping[str, Mapping[str, float]]], reference: str,
                       metrics: Sequence[str] = ("wer", "cer")) -> dict[str, dict[str, dict[str, float]]]:
    """Per model other than ``reference`` and metric: mean, sample std and count of the per-run
    differences ``model - reference`` (runs paired by name, e.g. by seed).

    Paired differences remove what a seed does to every model alike (batch order, head
    initialisation), so their spread is the noise that a difference between models must beat.
    Every model must have exactly the reference's runs.
    """
    if reference not in runs:
        raise ValueError(f"reference: expected one of {sorted(runs)}, found {reference!r}")
    base = runs[reference]
    out = {}
    for name, by_run in runs.items():
        if name == reference:
            continue
        if set(by_run) != set(base):
            raise ValueError(f"runs[{name!r}]: expected the runs of {reference!r} {sorted(base)} to pair with, "
                             f"found {sorted(by_run)}")
        out[name] = {m: dict(zip(("mean", "std", "runs"), mean_std(by_run[r][m] - base[r][m] for r in base)))
                     for m in metrics}
    return out


def check_pairs(pairs: Any, names: Sequence[str], *, what: str = "a condition") -> None:
    """Check ``pairs``: a list of ``[a, b]`` lists of two names, each one of ``names``.

    The error names the offending pair or name and what was expected, e.g. ``'tok KD' is not a
    condition; expected one of [...]``.
    """
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f"expected a list of [a, b] condition pairs, found {pairs!r}")
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(n, str) for n in pair)):
            shown = list(pair) if isinstance(pair, tuple) else pair
            raise ValueError(f"expected [a, b] condition names, found {shown!r}")
        for name in pair:
            if name not in names:
                raise ValueError(f"{name!r} is not {what}; expected one of {list(names)}")


def evaluate_once(model_dir: str | os.PathLike, data_dirs: Sequence[str | os.PathLike], decode: Mapping[str, Any],
                  out_dir: str | os.PathLike, *, device: str = "cpu") -> dict[str, Any]:
    """``kd.evaluation.evaluate.evaluate`` with a completion marker: a re-run with the same inputs reads the report.

    Returns ``{"params", "rtf", "overall": {"wer", "cer"}, "domains": {name: {"wer", "cer"}}}``.
    """
    import json

    from kd.core.io import is_done, mark_done
    from kd.evaluation.decode import DecodeConfig
    from kd.evaluation.evaluate import evaluate

    import hashlib

    out = Path(out_dir)
    weights = Path(model_dir) / "model.safetensors"  # the model's identity: a retrained model is re-evaluated
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else None
    key = {"model": str(model_dir), "weights": digest, "data": [str(d) for d in data_dirs], "decode": dict(decode)}
    if not is_done(out, key):
        evaluate(model_dir, list(data_dirs), DecodeConfig.from_dict(dict(decode)), device=device, out_dir=out)
        mark_done(out, key)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    pick = lambda s: {"wer": s["wer"], "cer": s["cer"], "utterances": s["utterances"]}  # noqa: E731
    return {"params": report["num_parameters"], "rtf": report["rtf"], "overall": pick(report["overall"]),
            "domains": {d: pick(s) for d, s in report["domains"].items()}}


def train_run(config: TrainConfig, out_dir: str | os.PathLike, *, log=print):
    """``kd.training.loop.train`` for a recipe: a run dir left by other settings is moved aside, not reused.

    A recipe re-run with changed settings (for example teacher weights from new dev error rates)
    would otherwise meet a run dir that ``train`` refuses to resume. The old run is renamed to
    ``<name>.replaced-<digest of its config>`` (nothing is deleted) and the run starts afresh;
    a run dir with the same settings resumes or is skipped as usual.
    """
    import yaml

    from kd.core.io import config_digest, load_yaml
    from kd.training.loop import train

    out = Path(out_dir)
    old_config = out / "config.yaml"
    if old_config.is_file():
        old = load_yaml(old_config.read_text(encoding="utf-8"))
        try:  # compared as configs: fields added to the toolkit since the old run read as that run had them
            same = TrainConfig.from_dict(with_added_fields(old)).identity() == config.identity()
        except (TypeError, ValueError):  # not a readable config any more: not the same run
            same = False
        if not same:
            target = out.with_name(f"{out.name}.replaced-{config_digest(old)}")
            if target.exists():
                import shutil

                shutil.rmtree(target)  # an older copy of the very same settings
            out.rename(target)
            log(f"{out}: held a run with other settings; moved to {target.name}")
    return train(config, out)


def training_differs(saved_config: str | os.PathLike, section: Mapping[str, Any]) -> list[str]:
    """The sections of the run config ``saved_config`` (a run dir's ``config.yaml``) that differ from the
    training ``section``, data dirs and token inventory apart: whether a run that another recipe trained
    on its own copy of the corpus can stand in for this one (an empty list)."""
    saved = TrainConfig.from_yaml(saved_config)
    mine = saved.to_dict()
    wanted = TrainConfig.from_dict(merge_sections(section, {
        "data": {"train": mine["data"]["train"], "dev": mine["data"]["dev"]}, "tokens": mine["tokens"]}))
    a, b = saved.identity(), wanted.identity()
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
