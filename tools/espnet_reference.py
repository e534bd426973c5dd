"""Train the toolkit's model with ESPnet's own trainer, as an outside reference for the training loop.

    # 1. train: the architecture, data and token inventory of a toolkit config, N updates of
    #    ``python -m espnet2.bin.asr_train``, then the dev set (or --eval) decoded and scored
    python tools/espnet_reference.py RUN_DIR/config.yaml OUT --from-run RUN_DIR
    python tools/espnet_reference.py CONFIG.yaml OUT --max-updates 4112

    # 2. compare: the toolkit run's dev curve and the reference's side by side, both models
    #    decoded by the same ESPnet decoder; writes docs/bench/espnet_reference.{md,json}
    python tools/espnet_reference.py --compare RUN_DIR OUT [--doc docs/bench/espnet_reference]

Paths inside CONFIG that are relative are read against ``--root`` (default: the working
directory, which is where the toolkit run was started). ESPnet's subprocesses inherit the
environment (``OMP_NUM_THREADS`` included) and the niceness of this process.

OUT after step 1::

    data/{train,dev,eval}/   wav.scp (absolute paths), text (normalised with kd.data.normalize_text)
    tokens/                  tokens.txt (the toolkit's inventory, ESPnet layout) and bpe.model
    conf/collect_stats.yaml  the model without feature normalisation (stats are not known yet)
    conf/train.yaml          the ESPnet training config (``--config``)
    stats/                   collect_stats output: {train,valid}/speech_shape, feats_stats.npz
    exp/                     ESPnet's output dir: checkpoint.pth, valid.acc.{best,ave}.pth, ...
    logs/                    collect_stats.log, train.log (ESPnet's stderr)
    plan.json                updates, batches per epoch, batch_bins and how they were chosen
    curve.json, summary.md   the learning curve (per epoch: updates, train and valid loss/acc)
                             and the decoded set's CER/WER

What the ESPnet run shares with the toolkit run, and what it cannot:

- Architecture: the config of ``kd.models.export_espnet.espnet_config`` (the one an exported toolkit
  model decodes with): DefaultFrontend with the toolkit's n_fft / win_length / hop_length /
  n_mels, Transformer encoder (conv2d input layer, pre-norm) and decoder with the toolkit's
  d_model, heads, ffn units and layers, dropout 0.1, ctc_weight 0.3, lsm_weight 0.15,
  length_normalized_loss false, no SpecAugment. The toolkit's uncertainty head has no ESPnet
  counterpart and is left out (it does not take part in decoding).
- Feature normalisation: ESPnet's default, ``global_mvn`` with the training set's mean and
  variance from the ``--collect_stats`` pass. The toolkit normalises each utterance by its own
  mean (``utterance_mvn``, no variance); ``--normalize utterance_mvn`` selects the toolkit's.
- Optimiser: adam with the toolkit's betas, eps and weight decay; ESPnet's ``warmuplr``
  (lr * w^0.5 * min(t^-0.5, t * w^-1.5), peak lr at t = w), with the toolkit's peak lr and
  warmup steps by default. ESPnet's recipes use warmup_steps 25000, which would keep a run of a
  few thousand updates in warmup throughout; ``--lr`` / ``--warmup-steps`` override. For the
  toolkit's ``warmup_inverse_sqrt`` this is the same schedule; for ``warmup_cosine`` the
  warmup is the same and the decay after it is not.
- Batches: ESPnet's ``numel`` sampler with only the speech shape file sorts utterances by
  length and closes a batch once ``len(batch) * longest`` (in samples) exceeds batch_bins,
  the toolkit's ``data.max_seconds`` rule (which closes it before the limit is exceeded, and
  also caps utterances at ``data.max_utterances``, which ESPnet cannot). batch_bins is
  therefore searched for the value whose number of batches per epoch is the toolkit's
  (plan.json records both counts); ``--num_iters_per_epoch`` is that count and max_epoch the
  number of epochs that reaches N updates, so ESPnet validates once per toolkit epoch.
- Not reproduced: the toolkit's noise / reverberation augmentation (``data.augment``); ESPnet
  runs without it. Gradient clipping at the toolkit's clip_norm; accum_grad 1.
- Checkpoints: ``best_model_criterion valid acc max``, ``keep_nbest_models`` = the toolkit's
  ``checkpoint.average_best``; the model decoded is ESPnet's average of those
  (``valid.acc.ave.pth``). The toolkit's averaged model is ranked by its ``checkpoint.best_by``.
- Curves: the valid loss of ESPnet is w * CTC + (1 - w) * attention; the toolkit's dev loss
  adds the uncertainty head's loss to the attention branch, so only the accuracies (teacher-
  forced token accuracy of the decoder) compare directly. ESPnet averages the accuracy over
  batches weighted by utterances, the toolkit over tokens.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DOC = ROOT / "docs" / "bench" / "espnet_reference"
ESPNET_TRAIN = "espnet2.bin.asr_train"
NORMALIZE_CHOICES = ("global_mvn", "utterance_mvn")
DECODE_CHOICES = ("beam", "greedy")
BEAM_SIZE = 5
DECODE_CTC_WEIGHT = 0.3


# ---------------------------------------------------------------- reading the toolkit side


def load_train_config(path: str | os.PathLike, root: Path):
    """The TrainConfig of ``path`` with its data and token paths made absolute against ``root``."""
    import dataclasses

    from kd.training.config import TrainConfig

    config = TrainConfig.from_yaml(path)
    if config.kd is not None:
        raise ValueError(f"{path}: expected a training config without a kd section (ESPnet's trainer does not "
                         "distil), found a kd section")
    if config.model.init_from is not None:
        raise ValueError(f"{path}: expected a model trained from scratch (model.preset), found model.init_from "
                         f"{config.model.init_from!r}")
    if config.optim.grad_accum != 1:
        raise ValueError(f"{path}: expected optim.grad_accum 1 (one batch per update, as the reference's accum_grad), "
                         f"found {config.optim.grad_accum}")
    if config.data.dev is None:
        raise ValueError(f"{path}: expected data.dev (ESPnet validates every epoch), found none")

    def absolute(p: str | None) -> str | None:
        return None if p is None else str((root / p).resolve())

    data = dataclasses.replace(config.data, train=tuple(absolute(p) for p in config.data.train),
                               dev=absolute(config.data.dev))
    tokens = dataclasses.replace(config.tokens, path=absolute(config.tokens.path))
    return dataclasses.replace(config, data=data, tokens=tokens)


def run_updates(run_dir: str | os.PathLike) -> int:
    """Optimizer steps of a toolkit run: ``result.json`` when it finished, else the last row of
    ``log.csv`` (a run still training, or stopped)."""
    run_dir = Path(run_dir)
    result = run_dir / "result.json"
    if result.is_file():
        return int(json.loads(result.read_text(encoding="utf-8"))["steps"])
    rows = read_csv(run_dir / "log.csv") if (run_dir / "log.csv").is_file() else []
    if not rows:
        raise FileNotFoundError(f"--from-run: expected {result} or rows in {run_dir / 'log.csv'}, found neither")
    return int(rows[-1]["step"])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def toolkit_batches(durations: Sequence[float], config) -> int:
    """Micro-batches per epoch of the toolkit's bucketing (one process)."""
    from kd.data.batching import bucket_batches

    return len(bucket_batches(durations, max_seconds=config.data.max_seconds,
                              max_utterances=config.data.max_utterances, shuffle=False))


def peak_lr(config, d_model: int) -> float:
    """The toolkit schedule's learning rate at the end of warmup (its largest)."""
    from kd.training.schedule import learning_rate

    w = max(1, config.optim.warmup_steps)
    return learning_rate(config.optim, w, d_model=d_model, total_steps=max(w, config.optim.max_steps or w))


# ---------------------------------------------------------------- ESPnet inputs


def write_data_dir(out: Path, utterances) -> Path:
    """``wav.scp`` (absolute paths) and ``text`` (normalised) for ``utterances``, sorted by id as
    ESPnet's readers expect."""
    from kd.core.io import atomic_write_text
    from kd.data import normalize_text

    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted(utterances, key=lambda u: u.utt)
    atomic_write_text(out / "wav.scp", "".join(f"{u.utt} {Path(u.path).resolve()}\n" for u in ordered))
    atomic_write_text(out / "text", "".join(f"{u.utt} {normalize_text(u.text)}\n" for u in ordered))
    return out


def token_settings(config, tokenizer, tokens_dir: Path) -> dict[str, Any]:
    """ESPnet's token_type / bpemodel / token_list for the toolkit's inventory (same ids)."""
    from kd.data.text import SentencePieceTokenizer

    if isinstance(tokenizer, SentencePieceTokenizer):
        return {"token_type": "bpe", "bpemodel": str(Path(tokenizer.model_path).resolve()),
                "token_list": str((tokens_dir / "tokens.txt").resolve())}
    return {"token_type": "char", "bpemodel": None, "token_list": str((tokens_dir / "tokens.txt").resolve())}


def model_section(model_config, tokens: list[str], token: dict[str, Any], normalize: str,
                  stats_file: str | None) -> dict[str, Any]:
    """The architecture part of the ESPnet config: the exported toolkit model's, with the
    feature normalisation of ``normalize`` (``stats_file`` for global_mvn; None: no
    normalisation, for the collect_stats pass) and the token list as a file."""
    from kd.models.export_espnet import espnet_config

    conf = espnet_config(model_config, tokens, token_type=token["token_type"], bpemodel=token["bpemodel"])
    conf["token_list"] = token["token_list"]
    # pre-norm blocks are ESPnet's default and what the toolkit builds; written out so that the
    # config states the architecture whole
    conf["encoder_conf"]["normalize_before"] = True
    conf["decoder_conf"]["normalize_before"] = True
    if stats_file is None:
        conf["normalize"], conf["normalize_conf"] = None, {}
    elif normalize == "global_mvn":
        conf["normalize"], conf["normalize_conf"] = "global_mvn", {"stats_file": stats_file}
    elif normalize != "utterance_mvn":
        raise ValueError(f"--normalize: expected one of {NORMALIZE_CHOICES}, found {normalize!r}")
    return conf


def training_section(config, *, lr: float, warmup_steps: int, batch_bins: int, iters_per_epoch: int,
                     max_epoch: int, ngpu: int) -> dict[str, Any]:
    """ESPnet trainer options (the ``--config`` keys) for the reference run."""
    o = config.optim
    return {
        "optim": "adam",
        "optim_conf": {"lr": lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay},
        "scheduler": "warmuplr",
        "scheduler_conf": {"warmup_steps": warmup_steps},
        "batch_type": "numel",
        "batch_bins": batch_bins,
        "valid_batch_bins": batch_bins,
        "num_iters_per_epoch": iters_per_epoch,
        "max_epoch": max_epoch,
        "accum_grad": 1,
        # ESPnet always clips; a bound no norm reaches stands for the toolkit's "no clipping"
        "grad_clip": o.clip_norm if o.clip_norm is not None else 1e30,
        "grad_clip_type": 2.0,
        "seed": config.seed,
        "num_workers": 0,
        "ngpu": ngpu,
        "use_amp": False,
        "best_model_criterion": [["valid", "acc", "max"]],
        "keep_nbest_models": config.checkpoint.average_best,
        "patience": None,
        "num_att_plot": 0,
        "use_matplotlib": False,
        "use_tensorboard": False,
        "log_interval": 50,
    }


def batch_count(shape_file: Path, batch_bins: int) -> int:
    """Batches per epoch of ESPnet's numel sampler over ``shape_file``."""
    from espnet2.samplers.num_elements_batch_sampler import NumElementsBatchSampler

    return len(NumElementsBatchSampler(batch_bins=batch_bins, shape_files=[str(shape_file)]))


def match_batch_bins(shape_file: Path, target_batches: int, nominal: int) -> tuple[int, int]:
    """The batch_bins whose number of batches per epoch is ``target_batches`` (and that count).

    The count falls as batch_bins grows, so bisection finds the range of values that give
    ``target_batches``; of it, the value nearest ``nominal`` (the toolkit's max_seconds in
    samples). When no value gives the count exactly, the one whose count is nearest, fewer
    batches on a tie.
    """
    lengths = [int(line.split()[1].split(",")[0]) for line in shape_file.read_text().splitlines() if line.strip()]
    whole = max(lengths) * len(lengths)  # one batch of everything

    def smallest_with_at_most(n: int) -> int:
        lo, hi = 1, whole
        while lo < hi:
            mid = (lo + hi) // 2
            if batch_count(shape_file, mid) <= n:
                hi = mid
            else:
                lo = mid + 1
        return lo

    low = smallest_with_at_most(target_batches)
    if batch_count(shape_file, low) == target_batches:
        high = smallest_with_at_most(target_batches - 1) - 1 if target_batches > 1 else max(whole, nominal)
        best = min(max(nominal, low), high)
    else:
        options = [b for b in (low, low - 1) if b >= 1]
        best = min(options, key=lambda b: (abs(batch_count(shape_file, b) - target_batches), -b))
    return best, batch_count(shape_file, best)


def epochs_for(updates: int, batches_per_epoch: int) -> tuple[int, int]:
    """(iterations per epoch, epochs): epochs of at most ``batches_per_epoch`` iterations that
    together make at least ``updates`` (exactly, when it divides)."""
    if updates < 1:
        raise ValueError(f"--max-updates: expected a positive number of updates, found {updates}")
    epochs = math.ceil(updates / max(1, batches_per_epoch))
    return math.ceil(updates / epochs), epochs


# ---------------------------------------------------------------- running ESPnet


def data_args(out: Path) -> list[str]:
    return ["--train_data_path_and_name_and_type", f"{out / 'data/train/wav.scp'},speech,sound",
            "--train_data_path_and_name_and_type", f"{out / 'data/train/text'},text,text",
            "--valid_data_path_and_name_and_type", f"{out / 'data/dev/wav.scp'},speech,sound",
            "--valid_data_path_and_name_and_type", f"{out / 'data/dev/text'},text,text"]


def run_espnet(args: list[str], log: Path) -> float:
    """``python -m espnet2.bin.asr_train ARGS`` with its output in ``log``; returns the seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.call([sys.executable, "-m", ESPNET_TRAIN, *args], stdout=f, stderr=subprocess.STDOUT,
                               env=os.environ.copy())
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-20:])
        raise RuntimeError(f"{ESPNET_TRAIN}: expected exit status 0, found {code} (log {log}):\n{tail}")
    return time.perf_counter() - start


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    from kd.core.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


# ---------------------------------------------------------------- reading ESPnet's results


_EPOCH_LINE = re.compile(r"(\d+)epoch results: (.*)$")
_SECTION = re.compile(r"\[(\w+)\] (.*?)(?=, \[\w+\] |$)")
_NUMBER = re.compile(r"(\w+)=(-?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf))(?=,|$)")


def parse_curve(log_text: str, iters_per_epoch: int) -> list[dict[str, Any]]:
    """The per-epoch rows of ESPnet's training log ("N epoch results: [train] k=v, ... [valid]
    k=v, ..."): epoch, updates (epoch * iterations per epoch) and the numeric values of each
    section. A resumed run logs an epoch again; the last line of an epoch wins."""
    rows: dict[int, dict[str, Any]] = {}
    for line in log_text.splitlines():
        m = _EPOCH_LINE.search(line)
        if m is None:
            continue
        epoch = int(m.group(1))
        row: dict[str, Any] = {"epoch": epoch, "updates": epoch * iters_per_epoch}
        for name, body in _SECTION.findall(m.group(2)):
            # values ESPnet could not compute (cer without report_cer) are nan: left out, so that
            # curve.json stays strict JSON
            row[name] = {k: float(v) for k, v in _NUMBER.findall(body) if math.isfinite(float(v))}
        rows[epoch] = row
    return [rows[e] for e in sorted(rows)]


def espnet_weights(exp: Path) -> Path:
    """The model ESPnet chose: the average of the best checkpoints by valid acc, else the best."""
    for name in ("valid.acc.ave.pth", "valid.acc.best.pth"):
        if (exp / name).exists():
            return exp / name
    raise FileNotFoundError(f"Expected valid.acc.ave.pth or valid.acc.best.pth in {exp}, found neither")


# ---------------------------------------------------------------- decoding


def load_speech2text(config_path: Path, state: dict, bpemodel: str | None):
    """ESPnet's Speech2Text (beam 5, CTC weight 0.3) built from ``config_path`` with ``state``
    loaded strictly (ESPnet's own loader is not strict, so a misnamed tensor would stay random)."""
    from kd.core.quiet import espnet_imports

    espnet_imports()
    from espnet2.bin.asr_inference import Speech2Text

    s2t = Speech2Text(asr_train_config=str(config_path), asr_model_file=None, device="cpu",
                      beam_size=BEAM_SIZE, ctc_weight=DECODE_CTC_WEIGHT, lm_weight=0.0, penalty=0.0,
                      maxlenratio=0.0, minlenratio=0.0, nbest=1, bpemodel=bpemodel)
    s2t.asr_model.load_state_dict(state, strict=True)
    s2t.asr_model.eval()
    return s2t


def decode_set(s2t, tokenizer, data_dir: Path, methods: Sequence[str]) -> dict[str, Any]:
    """Decode every utterance of ``data_dir`` with each of ``methods``; corpus CER/WER of each."""
    import torch

    from kd.data import load_data_dir
    from kd.data.audio import read_audio
    from kd.evaluation.evaluate import score_texts

    data = load_data_dir(data_dir)
    refs = [u.text for u in data.utterances]
    hyps: dict[str, list[str]] = {m: [] for m in methods}
    seconds = {m: 0.0 for m in methods}
    for u in data.utterances:
        wave = read_audio(u.path, utt=u.utt)
        if "beam" in methods:
            start = time.perf_counter()
            with torch.no_grad():
                results = s2t(wave)
            hyps["beam"].append(results[0][0] if results else "")
            seconds["beam"] += time.perf_counter() - start
        if "greedy" in methods:
            start = time.perf_counter()
            with torch.no_grad():
                speech = torch.from_numpy(wave).unsqueeze(0)
                enc, enc_lens = s2t.asr_model.encode(speech, torch.tensor([speech.shape[1]]))
                best = s2t.asr_model.ctc.argmax(enc)[0, : int(enc_lens[0])].tolist()
            ids = [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
            hyps["greedy"].append(tokenizer.decode(ids))
            seconds["greedy"] += time.perf_counter() - start
    out = {}
    for m in methods:
        score = score_texts(refs, hyps[m]).to_dict()
        out[m] = {**score, "seconds": round(seconds[m], 2),
                  "examples": [{"utt": u.utt, "ref": r, "hyp": h}
                               for u, r, h in list(zip(data.utterances, refs, hyps[m]))[:5]]}
    return out


def decode_espnet_run(out: Path, tokenizer, methods: Sequence[str]) -> dict[str, Any]:
    import torch

    from kd.core.io import load_yaml

    exp = out / "exp"
    conf = load_yaml((exp / "config.yaml").read_text(encoding="utf-8"))
    weights = espnet_weights(exp)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    s2t = load_speech2text(exp / "config.yaml", state, conf.get("bpemodel"))
    return {"weights": weights.name, **decode_set(s2t, tokenizer, out / "data" / "eval", methods)}


def decode_toolkit_run(run_dir: Path, eval_dir: Path, work: Path, methods: Sequence[str],
                       weights: str) -> dict[str, Any]:
    """The toolkit run's model decoded by the same ESPnet decoder (its own utterance-mean
    normalisation, the exported config of kd.models.export_espnet)."""
    from safetensors.torch import load_file

    from kd.data.text import SentencePieceTokenizer
    from kd.models.asr import AsrConfig
    from kd.models.export_espnet import espnet_config
    from kd.training.data import load_run_tokenizer
    from kd.training.teachers import MODEL_CONFIG_FILE

    tokenizer = load_run_tokenizer(run_dir)
    model_config = AsrConfig.from_yaml((run_dir / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    bpemodel = str(Path(tokenizer.model_path).resolve()) if isinstance(tokenizer, SentencePieceTokenizer) else None
    conf = espnet_config(model_config, list(tokenizer.tokens), token_type="bpe" if bpemodel else "char",
                         bpemodel=bpemodel)
    config_path = write_yaml(work / "config.yaml", conf)
    prefix = "espnet."
    state = {k[len(prefix):]: v for k, v in load_file(str(run_dir / weights)).items() if k.startswith(prefix)}
    s2t = load_speech2text(config_path, state, bpemodel)
    return {"weights": weights, **decode_set(s2t, tokenizer, eval_dir, methods)}


# ---------------------------------------------------------------- the two entries


def prepare(config_path: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Data dirs, token inventory, ESPnet configs and the collect_stats pass; returns the plan."""
    from kd.data import load_data_dir
    from kd.training.data import build_tokenizer
    from kd.training.setup import model_config_for

    config = load_train_config(config_path, Path(args.root).resolve())
    train_dirs = [load_data_dir(p, skip_bad=config.data.skip_bad) for p in config.data.train]
    dev_dir = load_data_dir(config.data.dev, skip_bad=config.data.skip_bad)
    eval_path = Path(args.eval).resolve() if args.eval else Path(config.data.dev)
    eval_dir = load_data_dir(eval_path, skip_bad=config.data.skip_bad)
    write_data_dir(out / "data" / "train", [u for d in train_dirs for u in d.utterances])
    write_data_dir(out / "data" / "dev", dev_dir.utterances)
    write_data_dir(out / "data" / "eval", eval_dir.utterances)

    tokenizer = build_tokenizer(config.tokens, train_dirs, out / "tokens")
    if args.from_run:
        from kd.training.data import load_run_tokenizer

        theirs = load_run_tokenizer(args.from_run).tokens
        if tuple(theirs) != tuple(tokenizer.tokens):
            raise ValueError(f"--from-run: expected the token inventory of the config, found another one in "
                             f"{args.from_run} ({len(theirs)} symbols, the config's {len(tokenizer.tokens)})")
    model_config, _ = model_config_for(config, tokenizer)
    token = token_settings(config, tokenizer, out / "tokens")
    tokens = list(tokenizer.tokens)

    collect_conf = write_yaml(out / "conf" / "collect_stats.yaml",
                              model_section(model_config, tokens, token, args.normalize, None))
    stats = out / "stats"
    if not (stats / "train" / "feats_stats.npz").is_file() or not (stats / "train" / "speech_shape").is_file():
        seconds = run_espnet(["--collect_stats", "true", "--config", str(collect_conf), "--output_dir", str(stats),
                              "--train_shape_file", str(out / "data/train/wav.scp"),
                              "--valid_shape_file", str(out / "data/dev/wav.scp"),
                              "--ngpu", "0", "--num_workers", "0", *data_args(out)],
                             out / "logs" / "collect_stats.log")
        print(f"collect_stats: {seconds:.1f} s", flush=True)

    # batches: the toolkit's count per epoch, matched by ESPnet's numel sampler
    shape = stats / "train" / "speech_shape"
    samples = {line.split()[0]: int(line.split()[1].split(",")[0]) for line in shape.read_text().splitlines()
               if line.strip()}
    rate = model_config.sample_rate
    target = toolkit_batches([samples[k] / rate for k in sorted(samples)], config)
    nominal = int(round(config.data.max_seconds * rate))
    batch_bins, espnet_batches = match_batch_bins(shape, target, nominal)

    if args.max_updates is not None:
        updates, source = args.max_updates, "--max-updates"
    elif args.from_run:
        updates, source = run_updates(args.from_run), f"--from-run {args.from_run}"
    else:
        limits = [n for n in (target * (config.optim.max_epochs or 0), config.optim.max_steps or 0) if n]
        if not limits:
            raise ValueError("expected --max-updates, --from-run or optim.max_epochs / max_steps in the config, "
                             "found none")
        updates, source = min(limits), "the config's max_epochs / max_steps"
    iters, epochs = epochs_for(updates, espnet_batches)

    lr = args.lr if args.lr is not None else peak_lr(config, model_config.d_model)
    warmup = args.warmup_steps if args.warmup_steps is not None else config.optim.warmup_steps
    stats_file = str((stats / "train" / "feats_stats.npz").resolve())
    train_conf = {**model_section(model_config, tokens, token, args.normalize, stats_file),
                  **training_section(config, lr=lr, warmup_steps=max(1, warmup), batch_bins=batch_bins,
                                     iters_per_epoch=iters, max_epoch=epochs, ngpu=args.ngpu)}
    write_yaml(out / "conf" / "train.yaml", train_conf)
    plan = {
        "config": shown(config_path),
        "updates_asked": updates, "updates_source": source, "updates": iters * epochs,
        "iters_per_epoch": iters, "max_epoch": epochs,
        "toolkit_batches_per_epoch": target, "espnet_batches_per_epoch": espnet_batches,
        "batch_bins": batch_bins, "batch_bins_nominal": nominal,
        "lr": lr, "warmup_steps": warmup, "toolkit_schedule": config.optim.schedule.value,
        "normalize": args.normalize, "toolkit_feature_norm": model_config.feature_norm.value,
        "augment_dropped": config.data.augment is not None,
        "train_utterances": len(samples), "eval": shown(eval_path),
        "model": {k: getattr(model_config, k) for k in ("vocab_size", "d_model", "attention_heads", "encoder_layers",
                                                         "decoder_layers", "ffn_units", "n_mels", "n_fft",
                                                         "win_length", "hop_length")},
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    return plan


def reference(config_path: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Prepare, train with ESPnet, decode and score; writes curve.json and summary.md."""
    from kd.training.data import load_run_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    plan = prepare(config_path, out, args)
    seconds = run_espnet(["--config", str(out / "conf/train.yaml"), "--output_dir", str(out / "exp"),
                          "--train_shape_file", str(out / "stats/train/speech_shape"),
                          "--valid_shape_file", str(out / "stats/valid/speech_shape"),
                          "--resume", "true", *data_args(out)],
                         out / "logs" / "train.log")
    print(f"asr_train: {seconds:.1f} s for {plan['updates']} updates", flush=True)
    curve = parse_curve((out / "logs" / "train.log").read_text(encoding="utf-8", errors="replace"),
                        plan["iters_per_epoch"])
    if len(curve) != plan["max_epoch"]:
        raise RuntimeError(f"{out / 'logs/train.log'}: expected {plan['max_epoch']} epoch results, "
                           f"found {len(curve)}")
    decoded = decode_espnet_run(out, load_run_tokenizer(out / "tokens"), args.decode)
    result = {"plan": plan, "train_seconds": round(seconds, 1), "curve": curve, "decode": decoded}
    (out / "curve.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(result), encoding="utf-8")
    return result


def architecture(model: dict[str, Any]) -> str:
    """One line naming the dimensions of ``plan["model"]``."""
    return (f"d_model {model['d_model']}, {model['attention_heads']} heads, {model['encoder_layers']} encoder and "
            f"{model['decoder_layers']} decoder layers, ffn {model['ffn_units']}, {model['n_mels']} mels, "
            f"{model['vocab_size']} tokens")


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when inside it: the written documents name
    the files the way the commands that made them did, not by this machine's layout."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _fmt(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def summary_markdown(result: dict[str, Any]) -> str:
    plan = result["plan"]
    lines = [f"# ESPnet reference: {plan['updates']} updates of `{ESPNET_TRAIN}`", "",
             f"Config `{plan['config']}`; {architecture(plan['model'])}; lr {plan['lr']:g}, warmuplr "
             f"{plan['warmup_steps']} steps; batch_bins {plan['batch_bins']} ({plan['espnet_batches_per_epoch']} "
             f"batches per epoch, the toolkit {plan['toolkit_batches_per_epoch']}); normalize {plan['normalize']}; "
             f"training {result['train_seconds']} s.", "",
             "| epoch | updates | train loss | train acc | valid loss | valid acc |", "|---|---|---|---|---|---|"]
    for r in result["curve"]:
        t, v = r.get("train", {}), r.get("valid", {})
        lines.append(f"| {r['epoch']} | {r['updates']} | {_fmt(t.get('loss'))} | {_fmt(t.get('acc'))} | "
                     f"{_fmt(v.get('loss'))} | {_fmt(v.get('acc'))} |")
    lines += ["", f"Decoded `{plan['eval']}` with `{result['decode']['weights']}`:", "",
              "| decoding | utterances | CER % | WER % |", "|---|---|---|---|"]
    for m in DECODE_CHOICES:
        if m in result["decode"]:
            d = result["decode"][m]
            lines.append(f"| {decoding_name(m)} | {d['utterances']} | {100 * d['cer']:.2f} | {100 * d['wer']:.2f} |")
    return "\n".join(lines) + "\n"


def decoding_name(method: str) -> str:
    return f"beam {BEAM_SIZE}, CTC weight {DECODE_CTC_WEIGHT}" if method == "beam" else "greedy CTC"


def compare(run_dir: Path, out: Path, doc: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The toolkit run's dev curve beside the reference's, and both models' CER/WER on the
    reference's decoded set with the same decoder; writes ``doc``.md and ``doc``.json."""
    ref = json.loads((out / "curve.json").read_text(encoding="utf-8"))
    methods = [m for m in DECODE_CHOICES if m in ref["decode"]]
    dev = [{"step": int(r["step"]), "epoch": float(r["epoch"]), "dev_loss": float(r["dev_loss"]),
            "dev_acc": float(r["dev_acc"]) if r.get("dev_acc") else None}
           for r in read_csv(run_dir / "dev.csv")]
    import yaml

    from kd.recipes.shipped import provenance

    toolkit = decode_toolkit_run(run_dir, out / "data" / "eval", out / "toolkit_decode", methods, args.toolkit_weights)
    model = yaml.safe_load((run_dir / "model" / "config.yaml").read_text(encoding="utf-8"))["asr"]
    plan = {**ref["plan"], "config": shown(ref["plan"]["config"]), "eval": shown(ref["plan"]["eval"]),
            "toolkit_uncertainty_head": bool(model.get("uncertainty_head"))}
    data = {"toolkit_run": shown(run_dir), "reference": shown(out), "plan": plan,
            "toolkit_curve": dev,
            "espnet_curve": [{"epoch": r["epoch"], "updates": r["updates"],
                              "valid_loss": r.get("valid", {}).get("loss"), "valid_acc": r.get("valid", {}).get("acc")}
                             for r in ref["curve"]],
            "decode": {"toolkit": toolkit, "espnet": ref["decode"]}, "measured": provenance(ROOT, ["kd", "tools"])}
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    doc.with_suffix(".md").write_text(compare_markdown(data), encoding="utf-8")
    return data


def compare_markdown(data: dict[str, Any]) -> str:
    plan = data["plan"]
    lines = ["# The toolkit's training loop against ESPnet's trainer", "",
             f"Toolkit run `{data['toolkit_run']}`; ESPnet reference `{data['reference']}` "
             f"(`python tools/espnet_reference.py`): the same architecture ({architecture(plan['model'])}), data "
             f"and token inventory, {plan['updates']} updates, adam with warmuplr (peak lr {plan['lr']:g} at "
             f"{plan['warmup_steps']} updates; the toolkit's schedule: {plan['toolkit_schedule']}), "
             f"{plan['espnet_batches_per_epoch']} batches per epoch (the toolkit {plan['toolkit_batches_per_epoch']}), "
             f"feature normalisation {plan['normalize']} (the toolkit's: {plan['toolkit_feature_norm']})"
             + ("; the toolkit's noise/reverberation augmentation has no counterpart in the reference" if
                plan["augment_dropped"] else "") + ".", "",
             "Dev curves by updates. Accuracy is the decoder's teacher-forced token accuracy in both"
             + ("; the losses differ in definition (the toolkit's adds its uncertainty head's loss)."
                if plan.get("toolkit_uncertainty_head", True) else
                "; the loss is w * CTC + (1 - w) * attention in both (the toolkit run has no uncertainty head)."),
             "",
             "| updates | toolkit dev acc | ESPnet valid acc | toolkit dev loss | ESPnet valid loss |",
             "|---|---|---|---|---|"]
    toolkit = {r["step"]: r for r in data["toolkit_curve"]}
    espnet = {r["updates"]: r for r in data["espnet_curve"]}
    for step in sorted(set(toolkit) | set(espnet)):
        t, e = toolkit.get(step, {}), espnet.get(step, {})
        lines.append(f"| {step} | {_fmt(t.get('dev_acc'))} | {_fmt(e.get('valid_acc'))} | "
                     f"{_fmt(t.get('dev_loss'), 2)} | {_fmt(e.get('valid_loss'), 2)} |")
    ev = data["decode"]
    lines += ["", f"Final models on `{plan['eval']}`, both decoded by ESPnet's Speech2Text (toolkit: "
              f"`{ev['toolkit']['weights']}`; ESPnet: `{ev['espnet']['weights']}`):", "",
              "| decoding | toolkit CER % | ESPnet CER % | toolkit WER % | ESPnet WER % |", "|---|---|---|---|---|"]
    for m in DECODE_CHOICES:
        if m in ev["espnet"] and m in ev["toolkit"]:
            t, e = ev["toolkit"][m], ev["espnet"][m]
            lines.append(f"| {decoding_name(m)} | {100 * t['cer']:.2f} | {100 * e['cer']:.2f} | "
                         f"{100 * t['wer']:.2f} | {100 * e['wer']:.2f} |")
    if "measured" in data:  # compared (and the toolkit run decoded) on this date, machine and commit
        m = data["measured"]
        lines += ["", f"Compared on {m['date']}, {m['machine']} ({m['cpu']}), commit {m['commit']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="toolkit training config (a TrainConfig YAML, e.g. RUN/config.yaml)")
    parser.add_argument("out", help="output folder of the ESPnet reference")
    parser.add_argument("--max-updates", type=int, help="optimizer updates of the ESPnet run")
    parser.add_argument("--from-run", help="toolkit run dir whose optimizer steps (result.json, else log.csv) "
                                           "set the updates and whose tokens must equal the config's")
    parser.add_argument("--root", default=".", help="folder that relative paths in the config are read against")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the toolkit schedule's peak)")
    parser.add_argument("--warmup-steps", type=int, help="warmuplr warmup (default: the toolkit's warmup_steps)")
    parser.add_argument("--normalize", choices=NORMALIZE_CHOICES, default="global_mvn",
                        help="feature normalisation (default: ESPnet's global_mvn from collect_stats)")
    parser.add_argument("--eval", help="data dir to decode after training (default: the config's data.dev)")
    parser.add_argument("--decode", default="beam,greedy",
                        help=f"comma-separated decodings, of {DECODE_CHOICES} (default: both)")
    parser.add_argument("--ngpu", type=int, default=0, help="ESPnet's --ngpu (default 0: CPU)")
    parser.add_argument("--compare", metavar="TOOLKIT_RUN_DIR",
                        help="write the side-by-side comparison of this toolkit run and the reference in OUT")
    parser.add_argument("--doc", default=str(DEFAULT_DOC), help="comparison output, without suffix (.md and .json)")
    parser.add_argument("--toolkit-weights", default="model_avg.safetensors",
                        help="weights file of the toolkit run to decode in --compare")
    args = parser.parse_args(argv)
    args.decode = [m.strip() for m in args.decode.split(",") if m.strip()]
    for m in args.decode:
        if m not in DECODE_CHOICES:
            parser.error(f"--decode: expected names of {DECODE_CHOICES}, found {m!r}")
    if args.max_updates is not None and args.from_run:
        parser.error("expected one of --max-updates and --from-run, found both")
    if args.config is None and args.compare is None:
        parser.error("expected CONFIG OUT, or --compare TOOLKIT_RUN_DIR OUT; found only OUT")
    out = Path(args.out)
    if args.config is not None:
        reference(Path(args.config), out, args)
        print(f"wrote {out / 'curve.json'} and {out / 'summary.md'}")
    if args.compare is not None:
        compare(Path(args.compare), out, Path(args.doc), args)
        print(f"wrote {args.doc}.md and {args.doc}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
