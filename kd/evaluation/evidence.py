"""Verdicts on claims from paired intervals over seeds and test utterances.

A claim says that one system (``a``) makes fewer errors than another (``b``) on a test set. Both
were run with the same seeds and scored on the same utterances, so the difference is paired twice:
by seed and by utterance. Its 95% interval comes from a two-level bootstrap:

    for r = 1..R:
        draw S seeds from the S seeds, with replacement           (seed variation: training noise)
        draw N utterances from the N test utterances, with replacement   (test-set variation)
        d_r = mean over the drawn seeds s of
              [ sum_i err_a,s,i / sum_i len_i  -  sum_i err_b,s,i / sum_i len_i ]   (i over the drawn utterances)
    interval = the 2.5% and 97.5% percentiles of d_1..d_R

The same utterance draw serves both systems and every seed (the test set is one sample, shared by
all runs). With one seed only the utterances are resampled, and the interval says nothing of the
training noise; the JSON says how many seeds there were.

Verdicts (`verdict`):
- "reproduces": the whole interval lies below 0 (``a`` makes fewer errors);
- "does not reproduce": the interval holds 0 (a tie, whatever the mean says) or lies above 0;
- "not a test": the premise of the comparison failed (e.g. the teacher is not better than the
  student it should teach), whatever the interval.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["UttErrors", "Interval", "paired_interval", "verdict", "read_utterance_errors", "auroc"]

REPRODUCES = "reproduces"
DOES_NOT_REPRODUCE = "does not reproduce"
NOT_A_TEST = "not a test"


@dataclass(frozen=True)
class UttErrors:
    """Edit errors of one system on each utterance of one test set, in a fixed utterance order."""

    utts: tuple[str, ...]
    errors: np.ndarray  # [N] substitutions + deletions + insertions (words or characters)
    lengths: np.ndarray  # [N] reference words or characters

    def __post_init__(self) -> None:
        if not (len(self.utts) == len(self.errors) == len(self.lengths)):
            raise ValueError(f"UttErrors: expected as many errors and lengths as utterances ({len(self.utts)}), "
                             f"found {len(self.errors)} and {len(self.lengths)}")
        if not self.utts:
            raise ValueError("UttErrors: expected at least one utterance, found none")

    @property
    def rate(self) -> float:
        """Corpus-level error rate: total errors / total reference length."""
        return float(self.errors.sum() / max(self.lengths.sum(), 1))


@dataclass(frozen=True)
class Interval:
    diff: float  # mean over seeds of rate(a) - rate(b), in percentage points
    lo: float  # 95% interval, percentage points
    hi: float
    seeds: int
    utterances: int

    @property
    def holds_zero(self) -> bool:
        return self.lo <= 0.0 <= self.hi


def read_utterance_errors(report_dir: str | os.PathLike, metric: str, domain: str | None = None) -> UttErrors:
    """Per-utterance errors from ``utterances.jsonl`` of a ``kd eval`` output folder.

    Args:
        metric: "wer" (word errors / reference words) or "cer" (character errors / reference characters).
        domain: keep the utterances of this domain only (a report over several test sets).
    """
    if metric not in ("wer", "cer"):
        raise ValueError(f"metric: expected 'wer' or 'cer', found {metric!r}")
    path = Path(report_dir) / "utterances.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-utterance results (written by kd eval with an output folder)")
    errors_key, length_key = ("errors", "ref_words") if metric == "wer" else ("char_errors", "ref_chars")
    utts, errors, lengths = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if domain is not None and row.get("domain") != domain:
            continue
        if errors_key not in row or length_key not in row:
            raise ValueError(f"{path}:{n}: expected fields {errors_key!r} and {length_key!r} (re-run the "
                             f"evaluation with this version of kd eval), found {sorted(row)}")
        utts.append(row["utt"])
        errors.append(row[errors_key])
        lengths.append(row[length_key])
    if not utts:
        raise ValueError(f"{path}: no utterance of domain {domain!r}")
    order = np.argsort(utts, kind="stable")
    return UttErrors(tuple(utts[i] for i in order), np.asarray(errors, float)[order], np.asarray(lengths, float)[order])


def _stack(runs: Mapping[object, UttErrors], utts: tuple[str, ...], name: str) -> np.ndarray:
    for seed, run in runs.items():
        if run.utts != utts:
            raise ValueError(f"{name}, seed {seed}: expected the same test utterances as the other runs "
                             f"({len(utts)}), found {len(run.utts)} others")
    return np.stack([runs[s].errors for s in runs])  # [S, N]


def paired_interval(a: Mapping[object, UttErrors], b: Mapping[object, UttErrors], *, resamples: int = 2000,
                    level: float = 0.95, seed: int = 0) -> Interval:
    """The interval of rate(a) - rate(b) (percentage points) from the two-level paired bootstrap
    of the module docstring. ``a`` and ``b`` map the same seeds to the runs of each system; every
    run scores the same utterances."""
    if set(a) != set(b) or not a:
        raise ValueError(f"paired_interval: expected the same seeds on both sides, found {sorted(map(str, a))} "
                         f"and {sorted(map(str, b))}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), found {level}")
    seeds = sorted(a, key=str)
    first = a[seeds[0]]
    ea = _stack({s: a[s] for s in seeds}, first.utts, "a")
    eb = _stack({s: b[s] for s in seeds}, first.utts, "b")
    lengths = first.lengths
    for s in seeds:
        if not (np.array_equal(a[s].lengths, lengths) and np.array_equal(b[s].lengths, lengths)):
            raise ValueError(f"seed {s}: the reference lengths differ between runs; expected one test set")
    diff_per_utt = ea - eb  # [S, N]
    estimate = float(diff_per_utt.sum(1).mean() / lengths.sum()) * 100.0
    rng = np.random.default_rng(seed)
    S, N = diff_per_utt.shape
    draws = np.empty(resamples)
    for r in range(resamples):
        seed_idx = rng.integers(S, size=S) if S > 1 else np.zeros(1, dtype=int)
        utt_idx = rng.integers(N, size=N)
        draws[r] = diff_per_utt[np.ix_(seed_idx, utt_idx)].sum(1).mean() / lengths[utt_idx].sum()
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [tail, 1.0 - tail]) * 100.0
    return Interval(diff=estimate, lo=float(lo), hi=float(hi), seeds=S, utterances=N)


def verdict(interval: Interval, *, premise: bool = True) -> str:
    """"reproduces" only when the premise holds and the whole interval lies below 0 (``a`` better)."""
    if not premise:
        return NOT_A_TEST
    return REPRODUCES if interval.hi < 0.0 else DOES_NOT_REPRODUCE


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve with which ``scores`` rank the positive ``labels`` above the negative
    ones: the Mann-Whitney probability P(score of a positive > score of a negative), ties counted one
    half. 0.5 is chance; NaN when one class is empty."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"auroc: expected scores and labels of one shape [N], found {scores.shape} and {labels.shape}")
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


@dataclass(frozen=True)
class TokenUncertainty:
    """Teacher-forced decoder outputs of one model on one data dir, one entry per target token
    (transcript tokens and <eos>), utterances in the data dir's order."""

    utts: tuple[str, ...]  # [U]
    offsets: np.ndarray  # [U + 1]: the tokens of utterance u are offsets[u]:offsets[u + 1]
    variance: np.ndarray  # [T] mean over the vocabulary of sigma_i^2 (the uncertainty head's variance vector)
    error: np.ndarray  # [T] bool: argmax of the mean logits f_i is not the reference token
    variance_predicted: np.ndarray  # [T] sigma^2 of the predicted token (the argmax of f_i)
    posterior_doubt: np.ndarray  # [T] 1 - max softmax(f_i): what the posterior alone says, for reference


def token_uncertainty(model_dir: str | os.PathLike, data_dir: str | os.PathLike, *, device: str = "cpu",
                      max_batch_seconds: float = 60.0) -> TokenUncertainty:
    """Per-token variance and teacher-forced error of a kd model dir on a data dir.

    Three scores per token: the mean of the head's variance vector sigma_i^2 over the vocabulary (the
    magnitude of the noise the sampled-softmax loss learnt to put on the logits there; the uncertainty
    KD term matches the L2-normalised vectors, i.e. their direction), the variance of the predicted
    token's logit (the noise that can flip the model's own choice), and, as the reference any
    uncertainty must beat, 1 - the posterior's largest probability. Dropout is off; no noise is drawn
    for the outputs used.
    """
    import torch

    from kd.data.batching import AudioDataset, bucket_batches, collate
    from kd.data.datadir import load_data_dir
    from kd.models.model_dir import load_model_dir

    model, tokenizer = load_model_dir(model_dir, device=device)
    if model.uncertainty is None:
        raise ValueError(f"{model_dir}: the model has no uncertainty head (model_config.yaml: uncertainty_head)")
    model.eval()
    data = load_data_dir(data_dir, sample_rate=model.config.sample_rate)
    dataset = AudioDataset(data, tokenizer=tokenizer, sample_rate=model.config.sample_rate)
    per_utt: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for indices in bucket_batches(dataset.durations(), max_seconds=max_batch_seconds, shuffle=False):
            batch = collate([dataset[i] for i in indices]).to(device)
            out = model(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths, generator=generator)
            variance = out.variances.mean(-1)  # [B, L+1]
            predicted = out.logits.argmax(-1)  # [B, L+1]
            error = predicted != out.targets
            variance_predicted = out.variances.gather(-1, predicted[..., None])[..., 0]
            doubt = 1.0 - out.logits.softmax(-1).amax(-1)
            for row, i in enumerate(indices):
                mask = out.token_mask[row]
                per_utt[i] = tuple(x[row][mask].double().cpu().numpy()
                                   for x in (variance, error, variance_predicted, doubt))
    order = range(len(data.utterances))
    lengths = [len(per_utt[i][0]) for i in order]
    return TokenUncertainty(
        utts=tuple(u.utt for u in data.utterances),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(int),
        variance=np.concatenate([per_utt[i][0] for i in order]),
        error=np.concatenate([per_utt[i][1] for i in order]).astype(bool),
        variance_predicted=np.concatenate([per_utt[i][2] for i in order]),
        posterior_doubt=np.concatenate([per_utt[i][3] for i in order]),
    )


def uncertainty_summary(tokens: TokenUncertainty) -> dict[str, float]:
    """AUROCs with which each per-token score predicts the model's own teacher-forced token errors, the
    mean variance, the token error rate and the number of tokens.

    ``auroc``: the predicted token's variance, the headline (it is the noise that can change the model's
    choice); ``auroc_mean_variance``: the variance vector's mean over the vocabulary (mostly classes the
    model never considers); ``auroc_posterior``: 1 - max probability, which needs no uncertainty head:
    a variance that predicts errors no better than it adds nothing the posterior does not say.
    """
    return {"auroc": auroc(tokens.variance_predicted, tokens.error),
            "auroc_mean_variance": auroc(tokens.variance, tokens.error),
            "auroc_posterior": auroc(tokens.posterior_doubt, tokens.error),
            "mean_variance": float(tokens.variance.mean()),
            "token_error": float(tokens.error.mean()), "tokens": int(len(tokens.error))}


def variance_correlation(a: TokenUncertainty, b: TokenUncertainty) -> float:
    """Pearson correlation of two models' per-token variances on the same tokens (log variances:
    the head's softplus output spans orders of magnitude)."""
    if a.utts != b.utts or not np.array_equal(a.offsets, b.offsets):
        raise ValueError("variance_correlation: expected the outputs of two models on the same data dir and tokens")
    return float(np.corrcoef(np.log(a.variance), np.log(b.variance))[0, 1])
