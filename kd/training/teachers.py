"""Frozen teachers for distillation: loading from run dirs, online outputs and a disk cache.

Teacher outputs are computed under teacher forcing on the ground-truth transcript, in eval
mode (no dropout) and under ``torch.no_grad``. They depend on the batch an utterance is padded
in (ESPnet derives encoder lengths from the padded mask), so the cache is filled with the same
length buckets that training uses; cached and online outputs are then the same numbers.

Cache layout (``<cache_dir>/teacher-<k>/``): safetensors shards ``shard-r<rank>-<n>.safetensors``
holding ``<utt>/logits`` ``[L+1, V]``, ``<utt>/variances`` ``[L+1, V]`` (token level) or
``<utt>/ctc_log_probs`` ``[T', V]`` (frame level), an ``index-r<rank>.json`` (utt -> shard) per
writing process, and the completion marker of :mod:`kd.core.io` over everything that determines the
numbers (teacher weights, utterances, batching, dtype).

The cache holds the teachers' mean logits and variances, not draws: the sampled soft labels
(``kd.training.losses.SoftLabels.SAMPLED``) are drawn from them at loss time with the run's noise generator,
cached or online alike. One cache therefore serves any ``soft_labels``, ``num_samples`` and
temperature, and the draws resume with the generator's state in each checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from kd.core.io import atomic_write_text, file_lock, is_done, mark_done
from kd.training.checkpoint import load_weights
from kd.training.config import TeacherSpec
from kd.training.data import load_run_tokenizer
from kd.training.losses import KDLevel

__all__ = ["MODEL_CONFIG_FILE", "TeacherCache", "TeacherOutput", "load_run_model", "load_teachers",
           "teacher_forward"]

MODEL_CONFIG_FILE = "model_config.yaml"
_SHARD_UTTERANCES = 256


@dataclass(frozen=True)
class TeacherOutput:
    """What the KD loss reads from a teacher (the fields of `kd.training.losses.TokenOutputs`/`FrameOutputs`)."""

    logits: Tensor | None  # [B, L+1, V]
    variances: Tensor | None  # [B, L+1, V]
    token_mask: Tensor  # [B, L+1] bool
    ctc_log_probs: Tensor | None  # [B, T', V]
    encoder_lengths: Tensor  # [B]


def load_run_model(run_dir: str | os.PathLike, weights: str = "model_avg.safetensors"):
    """Rebuild the model a training run saved: ``(AsrModel, tokenizer)``, weights loaded.

    ``run_dir`` may also be a model dir (:mod:`kd.models.model_dir`, e.g. a run's ``model/`` folder or a
    shipped teacher); its own weights file is read then and ``weights`` is not used.
    """
    from kd.models.asr import AsrConfig, build_asr_model

    run_dir = Path(run_dir)
    config_path = run_dir / MODEL_CONFIG_FILE
    if not config_path.is_file() and (run_dir / "model.safetensors").is_file() and (run_dir / "config.yaml").is_file():
        from kd.models.model_dir import load_model_dir

        return load_model_dir(run_dir)
    if not config_path.is_file():
        raise FileNotFoundError(f"Expected a training run dir with {MODEL_CONFIG_FILE} at {run_dir}, found none")
    config = AsrConfig.from_yaml(config_path.read_text(encoding="utf-8"))
    tokenizer = load_run_tokenizer(run_dir)
    model = build_asr_model(config, list(tokenizer.tokens))
    model.load_state_dict(load_weights(run_dir / weights))
    return model, tokenizer


def check_same_tokens(expected: Sequence[str], found: Sequence[str], where: str) -> None:
    """Raise ValueError naming the first difference between two token inventories."""
    if tuple(expected) == tuple(found):
        return
    if len(expected) != len(found):
        detail = f"{len(found)} tokens, expected {len(expected)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
        detail = f"token {i} is {found[i]!r}, expected {expected[i]!r}"
    raise ValueError(
        f"{where}: teachers and student must share one token inventory; {detail}. Train the student with "
        "tokens.kind=list and tokens.path=<teacher run>/tokens.txt"
    )


def load_teachers(specs: Sequence[TeacherSpec], student_tokens: Sequence[str], device: torch.device) -> list:
    """Load frozen teachers (eval mode, no gradients) that share the student's token inventory."""
    teachers = []
    for k, spec in enumerate(specs):
        model, tokenizer = load_run_model(spec.run_dir, spec.weights)
        check_same_tokens(student_tokens, tokenizer.tokens, f"kd.teachers[{k}] ({spec.run_dir})")
        model.eval().requires_grad_(False).to(device)
        teachers.append(model)
    return teachers


def teacher_forward(teacher, batch, *, check: bool = True) -> TeacherOutput:
    """One teacher-forced pass on a batch (``kd.data.batching.Batch`` on the teacher's device).

    ``check=False``: the batch was checked on the host already (see ``AsrModel.forward``).
    """
    # the aleatoric loss inside forward draws noise; a private generator keeps the global RNG untouched
    noise = torch.Generator(device=batch.speech.device).manual_seed(0)
    with torch.no_grad():
        out = teacher(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths, generator=noise,
                      check=check)
    # float32 whatever the autocast dtype, as the cache returns them
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    return TeacherOutput(f32(out.logits), f32(out.variances), out.token_mask, f32(out.ctc_log_probs),
                         out.encoder_lengths)


def _cache_key(specs: Sequence[TeacherSpec], utts: Sequence[str], buckets: Sequence[Sequence[int]],
               level: KDLevel, dtype: str) -> dict[str, Any]:
    files = []
    for spec in specs:
        stat = (Path(spec.run_dir) / spec.weights).stat()
        files.append([str(Path(spec.run_dir).resolve()), spec.weights, stat.st_size, stat.st_mtime_ns])
    return {"teachers": files, "utts": list(utts), "buckets": [list(b) for b in buckets], "level": level.value,
            "dtype": dtype}


class TeacherCache:
    """Teacher outputs stored once per utterance and re-padded into batches on request."""

    def __init__(self, cache_dir: str | os.PathLike, num_teachers: int, level: KDLevel):
        self.root, self.level = Path(cache_dir), level
        self._index: list[dict[str, Path]] = []
        self._open: dict[Path, Any] = {}
        for k in range(num_teachers):
            index: dict[str, Path] = {}
            for path in sorted((self.root / f"teacher-{k}").glob("index-r*.json")):
                for utt, shard in json.loads(path.read_text(encoding="utf-8")).items():
                    index[utt] = path.parent / shard
            self._index.append(index)

    @staticmethod
    def build(cache_dir: str | os.PathLike, *, specs: Sequence[TeacherSpec], teachers: Sequence, dataset,
              buckets: Sequence[Sequence[int]], level: KDLevel, dtype: str, accelerator,
              progress: bool) -> "TeacherCache":
        """Fill the cache unless a complete one for the same inputs exists (all processes call this)."""
        root = Path(cache_dir)
        utts = [u.utt for u in dataset.data.utterances]
        key = _cache_key(specs, utts, buckets, level, dtype)
        # runs of a recipe that share a cache dir may run side by side (kd.recipes.parallel): the first
        # fills it under the lock, the others wait and find it done. The main process locks for
        # its ranks, which look at the marker only after it holds the lock.
        lock = (file_lock(root.with_name(root.name + ".lock")) if accelerator.is_main_process
                else contextlib.nullcontext())
        with lock:
            accelerator.wait_for_everyone()
            if not is_done(root, key):
                TeacherCache._fill(root, key, teachers=teachers, dataset=dataset, buckets=buckets,
                                   level=level, dtype=dtype, accelerator=accelerator, progress=progress)
            accelerator.wait_for_everyone()
        return TeacherCache(root, len(teachers), level)

    @staticmethod
    def _fill(root: Path, key: dict[str, Any], *, teachers, dataset, buckets, level: KDLevel, dtype: str,
              accelerator, progress: bool) -> None:
        """Run every teacher over this process's share of the buckets into fresh shards; mark the cache done."""
        from tqdm.auto import tqdm

        from kd.training.data import make_loader

        if accelerator.is_main_process:
            for k in range(len(teachers)):
                shutil.rmtree(root / f"teacher-{k}", ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        rank, world = accelerator.process_index, accelerator.num_processes
        mine = list(buckets)[rank::world]
        store_dtype = getattr(torch, dtype)
        for k, teacher in enumerate(teachers):
            writer = _ShardWriter(root / f"teacher-{k}", rank)
            loader = make_loader(dataset, mine, num_workers=0)
            bar = tqdm(loader, desc=f"teacher {k} cache", disable=not (progress and accelerator.is_main_process))
            for batch in bar:
                with accelerator.autocast():
                    out = teacher_forward(teacher, batch.to(accelerator.device))
                for i, utt in enumerate(batch.utts):
                    writer.add(utt, _per_utterance(out, i, level, store_dtype))
            writer.close()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            mark_done(root, key)

    def _shard(self, k: int, utt: str):
        from safetensors import safe_open

        path = self._index[k].get(utt)
        if path is None:
            raise ValueError(f"{self.root}: utterance {utt!r} is not in the cache of teacher {k}; "
                             "delete the stale cache")
        if path not in self._open:
            self._open[path] = safe_open(str(path), framework="pt")
        return self._open[path]

    def _tensor(self, k: int, utt: str, name: str) -> Tensor:
        return self._shard(k, utt).get_tensor(f"{utt}/{name}").to(torch.float32)

    def outputs(self, k: int, utts: Sequence[str], token_mask: Tensor, device: torch.device,
                positions: Sequence[int] | None = None) -> TeacherOutput:
        """Teacher k's outputs for a batch, padded with zeros; ``token_mask`` is the student's `[B, L+1]`.

        ``positions``: real positions per utterance (transcript length + 1), known on the host;
        without them they are read from ``token_mask``, which waits for an accelerator.
        """
        lengths = list(positions) if positions is not None else token_mask.sum(1).tolist()
        logits = variances = ctc = None
        encoder_lengths = torch.zeros(len(utts), dtype=torch.long)
        if self.level is KDLevel.TOKEN:
            rows = [self._tensor(k, u, "logits") for u in utts]
            for u, row, n in zip(utts, rows, lengths):
                if row.shape[0] != n:
                    raise ValueError(f"{self.root}: cached teacher {k} has {row.shape[0]} positions for {u!r}, "
                                     f"the batch has {n}; delete the stale cache")
            logits = _pad(rows, token_mask.shape[1])
            if f"{utts[0]}/variances" in self._shard(k, utts[0]).keys():
                variances = _pad([self._tensor(k, u, "variances") for u in utts], token_mask.shape[1])
        else:
            rows = [self._tensor(k, u, "ctc_log_probs") for u in utts]
            encoder_lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
            ctc = _pad(rows, int(encoder_lengths.max()))
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TeacherOutput(move(logits), move(variances), token_mask, move(ctc), move(encoder_lengths))


def _per_utterance(out: TeacherOutput, i: int, level: KDLevel, dtype: torch.dtype) -> dict[str, Tensor]:
    if level is KDLevel.TOKEN:
        n = int(out.token_mask[i].sum())
        rows = {"logits": out.logits[i, :n]}
        if out.variances is not None:
            rows["variances"] = out.variances[i, :n]
    else:
        rows = {"ctc_log_probs": out.ctc_log_probs[i, : int(out.encoder_lengths[i])]}
    return {name: t.detach().to(dtype).cpu().contiguous() for name, t in rows.items()}


def _pad(rows: Sequence[Tensor], length: int) -> Tensor:
    out = torch.zeros(len(rows), length, rows[0].shape[-1])
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


class _ShardWriter:
    """Writes one process's cached tensors into shards of a few hundred utterances."""

    def __init__(self, folder: Path, rank: int):
        self.folder, self.rank = folder, rank
        self.pending: dict[str, Tensor] = {}
        self.count, self.shards = 0, 0
        self.index: dict[str, str] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, utt: str, tensors: dict[str, Tensor]) -> None:
        for name, t in tensors.items():
            self.pending[f"{utt}/{name}"] = t
        self.index[utt] = self._name()
        self.count += 1
        if self.count == _SHARD_UTTERANCES:
            self._flush()

    def _name(self) -> str:
        return f"shard-r{self.rank}-{self.shards:05d}.safetensors"

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if self.pending:
            save_file(self.pending, str(self.folder / self._name()))
            self.shards += 1
        self.pending, self.count = {}, 0

    def close(self) -> None:
        self._flush()
        atomic_write_text(self.folder / f"index-r{self.rank}.json", json.dumps(self.index, sort_keys=True))
