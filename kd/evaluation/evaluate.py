"""Evaluation of an ASR model directory: WER/CER per domain, parameters, real-time factor.

Scoring: references and hypotheses both go through :func:`kd.data.normalize_text` (the
toolkit's one normalisation), then jiwer scores them at corpus level: WER = (S + D + I) / N
over all words of a group (not a mean of per-utterance rates), CER the same over characters,
the spaces between words included (jiwer's definition). Groups are the domains of
``utt2dom``; a data dir without ``utt2dom`` is one group named ``<parent>/<dir>`` (e.g.
``us/test``). ``all`` pools every utterance.

Real-time factor: wall time of decoding (encoder + search, after one untimed warm-up
utterance, with the device synchronised before and after each batch; audio reading and
text conversion excluded) divided by the seconds of audio decoded. Below 1 is faster than
real time.

Files written with ``out_dir`` (each atomically): ``report.json``, ``report.md``, ``hyp.txt``
(Kaldi text format: ``<utt> <normalised hypothesis>``), ``utterances.jsonl`` (per
utterance: domain, reference, hypothesis, word errors and reference words, character errors and
reference characters: the counts whose sums give the corpus-level WER and CER) and
``confusions.json`` (:func:`word_confusions` of every utterance: which words are substituted by which,
deleted and inserted most often, as sclite's confusion pairs; the report's markdown lists the first ten).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from kd.core.io import atomic_write_text, write_json
from kd.data.text import normalize_text
from kd.evaluation.decode import DecodeConfig, DecodeMethod, decode_ids
from kd.evaluation.hf_ctc import CTCTranscriber, is_hf_model_folder

__all__ = ["EvalReport", "Score", "UttResult", "evaluate", "score_texts", "word_confusions"]

ALL = "all"


@dataclass(frozen=True)
class Score:
    """Error counts and rates of one group of utterances (rates are fractions, not %)."""

    utterances: int
    ref_words: int
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def score_texts(references: Sequence[str], hypotheses: Sequence[str]) -> Score:
    """Corpus-level WER and CER of normalised texts with jiwer.

    Both sides are passed through :func:`normalize_text` first. A reference that is empty
    after normalisation is an error (WER is undefined for it).
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"Expected as many hypotheses as references ({len(references)}), found {len(hypotheses)}")
    if not references:
        raise ValueError("Expected at least one reference to score, found none")
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    for i, r in enumerate(refs):
        if not r:
            raise ValueError(f"references[{i}]: empty after normalisation (was {references[i]!r})")
    words = jiwer.process_words(refs, hyps)
    return Score(
        utterances=len(refs),
        ref_words=sum(len(r.split()) for r in refs),
        wer=float(words.wer),
        cer=float(jiwer.cer(refs, hyps)),
        substitutions=int(words.substitutions),
        deletions=int(words.deletions),
        insertions=int(words.insertions),
        hits=int(words.hits),
    )


def word_confusions(references: Sequence[str], hypotheses: Sequence[str], *, top: int | None = None) -> dict[str, list]:
    """The word errors of normalised reference/hypothesis pairs, counted over jiwer's alignment (the one
    that :func:`score_texts` scores): ``{"substitutions": [[ref, hyp, count], ...], "deletions": [[word,
    count], ...], "insertions": [[word, count], ...]}``, each sorted by count (then by the words), the first
    ``top`` of each (None: all). The counts of each list sum to the S, D and I of the corpus-level WER."""
    import collections

    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"Expected as many hypotheses as references ({len(references)}), found {len(hypotheses)}")
    if not references:
        return {"substitutions": [], "deletions": [], "insertions": []}
    # jiwer's alignment chunks span runs of equal operations (a substitution chunk pairs its words in order);
    # they are counted here word by word (jiwer.collect_error_counts counts whole chunks)
    counts: dict[str, collections.Counter] = {k: collections.Counter() for k in ("substitute", "delete", "insert")}
    words = jiwer.process_words(list(references), list(hypotheses))
    for ref, hyp, chunks in zip(words.references, words.hypotheses, words.alignments):
        for c in chunks:
            r, h = ref[c.ref_start_idx:c.ref_end_idx], hyp[c.hyp_start_idx:c.hyp_end_idx]
            if c.type == "substitute":
                counts["substitute"].update(zip(r, h))
            elif c.type in ("delete", "insert"):
                counts[c.type].update(r if c.type == "delete" else h)
    substitutions, deletions, insertions = counts["substitute"], counts["delete"], counts["insert"]

    def ranked(counts: Mapping[Any, int]) -> list:
        rows = sorted(((*(k if isinstance(k, tuple) else (k,)), int(n)) for k, n in counts.items()),
                      key=lambda row: (-row[-1], row[:-1]))
        return [list(row) for row in rows[:top]]

    return {"substitutions": ranked(substitutions), "deletions": ranked(deletions), "insertions": ranked(insertions)}


@dataclass(frozen=True)
class UttResult:
    utt: str
    domain: str
    ref: str  # normalised reference
    hyp: str  # normalised hypothesis


@dataclass
class EvalReport:
    """Everything one evaluation measured. ``domains`` is sorted by name; ``overall`` pools all."""

    model_dir: str
    data_dirs: list[str]
    decode: dict[str, Any]
    device: str
    torch_threads: int
    num_parameters: int  # the ESPnet model that decoding runs (a Hugging Face model: all, shared ones once)
    num_parameters_total: int  # plus the uncertainty head (training only)
    audio_seconds: float
    decode_seconds: float
    rtf: float  # decode_seconds / audio_seconds
    overall: Score
    domains: dict[str, Score]
    utterances: list[UttResult] = field(repr=False, default_factory=list)
    version: int = 1
    _confusions: dict[str, list] | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self, *, with_utterances: bool = False) -> dict[str, Any]:
        out = {
            "version": self.version,
            "model_dir": self.model_dir,
            "data_dirs": list(self.data_dirs),
            "decode": dict(self.decode),
            "device": self.device,
            "torch_threads": self.torch_threads,
            "num_parameters": self.num_parameters,
            "num_parameters_total": self.num_parameters_total,
            "audio_seconds": self.audio_seconds,
            "decode_seconds": self.decode_seconds,
            "rtf": self.rtf,
            "overall": self.overall.to_dict(),
            "domains": {k: v.to_dict() for k, v in self.domains.items()},
        }
        if with_utterances:
            out["utterances"] = [dataclasses.asdict(u) for u in self.utterances]
        return out

    def confusions(self) -> dict[str, list]:
        """:func:`word_confusions` of every utterance, computed once (``confusions.json``; the markdown's
        first ten of each kind)."""
        if self._confusions is None:
            self._confusions = word_confusions([u.ref for u in self.utterances], [u.hyp for u in self.utterances])
        return self._confusions

    def to_json(self, path: str | os.PathLike, *, with_utterances: bool = False) -> None:
        """Write the report as JSON (atomically; per-utterance results only if asked)."""
        write_json(path, self.to_dict(with_utterances=with_utterances))

    def to_markdown(self, path: str | os.PathLike | None = None) -> str:
        """A summary line and a table (domain, utts, WER, CER, sub/del/ins); written if ``path``."""
        method = self.decode.get("method", "?")
        setting = f"{method}" + (f", beam {self.decode['beam_size']}, ctc_weight {self.decode['ctc_weight']}"
                                 if method == "beam" else "")
        lines = [
            f"Model `{self.model_dir}`: {self.num_parameters / 1e6:.2f} M parameters; decoding {setting} on "
            f"{self.device} ({self.torch_threads} threads): RTF {self.rtf:.3f} "
            f"({self.decode_seconds:.1f} s for {self.audio_seconds:.1f} s of audio).",
            "",
            "| domain | utts | WER % | CER % | sub | del | ins |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        rows = [*self.domains.items(), (ALL, self.overall)]
        for name, s in rows:
            label = f"**{name}**" if name == ALL else name
            lines.append(f"| {label} | {s.utterances} | {100 * s.wer:.2f} | {100 * s.cer:.2f} | "
                         f"{s.substitutions} | {s.deletions} | {s.insertions} |")
        if self.utterances:
            lines += ["", *_confusions_markdown({k: rows[:10] for k, rows in self.confusions().items()})]
        text = "\n".join(lines) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text


def _confusions_markdown(confusions: Mapping[str, list]) -> list[str]:
    """The most frequent errors as one line per kind (``ref -> hyp (count)``, ``word (count)``)."""
    def listed(rows: list, pair: bool) -> str:
        return ", ".join(f"{r[0]} -> {r[1]} ({r[2]})" if pair else f"{r[0]} ({r[1]})" for r in rows) or "none"

    return ["Most frequent word errors (all utterances):", "",
            f"- substituted (reference -> hypothesis): {listed(confusions['substitutions'], True)}",
            f"- deleted: {listed(confusions['deletions'], False)}",
            f"- inserted: {listed(confusions['insertions'], False)}"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(model_dir: str | os.PathLike, data_dirs: Sequence[str | os.PathLike],
             config: DecodeConfig = DecodeConfig(), *, device: str | torch.device = "cpu",
             out_dir: str | os.PathLike | None = None, max_batch_seconds: float = 60.0,
             lm: Any = None, warmup: bool = True, progress: bool = False) -> EvalReport:
    """Decode every utterance of ``data_dirs`` with the model of ``model_dir`` and score it.

    Args:
        model_dir: a model directory (:mod:`kd.models.model_dir`), or a Hugging Face ``*ForCTC``
            checkpoint folder or compressed student of one (:mod:`kd.evaluation.hf_ctc`: greedy CTC
            decoding only, inputs prepared as its ``preprocessor_config.json`` says).
        data_dirs: Kaldi/ESPnet data dirs (a list, even for one).
        config: decoding settings.
        device: where the model runs.
        out_dir: if given, ``report.json``, ``report.md``, ``hyp.txt`` and ``utterances.jsonl``
            are written there.
        max_batch_seconds: padded audio seconds per batch (batches group similar lengths).
        lm: optional ESPnet LM scorer for beam search.
        warmup: decode the first utterance once, untimed, before timing.
        progress: show a progress bar.
    """
    from kd.data.batching import AudioDataset, bucket_batches, collate
    from kd.data.datadir import load_data_dir
    from kd.models.model_dir import load_model_dir

    if isinstance(data_dirs, (str, os.PathLike)):
        raise TypeError(f"data_dirs: expected a list of data dirs, found a single path {str(data_dirs)!r}")
    if not data_dirs:
        raise ValueError("data_dirs: expected at least one data dir, found none")
    device = torch.device(device)
    if is_hf_model_folder(model_dir):  # a Hugging Face CTC checkpoint: greedy CTC decoding
        if config.method is not DecodeMethod.CTC_GREEDY or lm is not None:
            raise ValueError(f"{model_dir}: a Hugging Face CTC model decodes with method ctc_greedy and no LM, found "
                             f"method {config.method.value}{' with an LM' if lm is not None else ''}")
        transcriber = CTCTranscriber.from_folder(model_dir, device=device)
        sample_rate = transcriber.spec.sampling_rate
        num_parameters = num_parameters_total = transcriber.num_parameters

        def run(batch) -> list[list[int]]:
            return transcriber.ids(batch.speech, batch.speech_lengths)

        to_text = transcriber.decode
    else:
        model, tokenizer = load_model_dir(model_dir, device=str(device))
        sample_rate = model.config.sample_rate
        num_parameters = sum(p.numel() for p in model.espnet.parameters())
        num_parameters_total = sum(p.numel() for p in model.parameters())

        def run(batch) -> list[list[int]]:
            return decode_ids(model, batch.speech.to(device), batch.speech_lengths.to(device), config, lm=lm,
                              token_list=tokenizer.tokens)

        to_text = tokenizer.decode

    datasets, seen = [], {}
    for d in data_dirs:
        data = load_data_dir(d, sample_rate=sample_rate)
        for u in data.utterances:
            if u.utt in seen:
                raise ValueError(f"{d}: utterance {u.utt!r} also appears in {seen[u.utt]}")
            seen[u.utt] = d
        datasets.append(AudioDataset(data, sample_rate=sample_rate))
    if not seen:
        raise ValueError(f"data_dirs: expected utterances, found none in {[str(d) for d in data_dirs]}")

    if warmup:  # first-call costs (allocator, kernels, lazy imports) are not the model's speed
        run(collate([datasets[0][0]]))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seen), desc="decoding", unit="utt")
    results: list[UttResult] = []
    audio_seconds = decode_seconds = 0.0
    for d, dataset in zip(data_dirs, datasets):
        fallback = f"{Path(d).resolve().parent.name}/{Path(d).resolve().name}"
        durations = dataset.durations()
        audio_seconds += sum(durations)
        hyps: dict[int, str] = {}
        for indices in bucket_batches(durations, max_seconds=max_batch_seconds, shuffle=False):
            batch = collate([dataset[i] for i in indices])
            _sync(device)
            start = time.perf_counter()
            ids = run(batch)
            _sync(device)
            decode_seconds += time.perf_counter() - start
            for i, seq in zip(indices, ids):
                hyps[i] = normalize_text(to_text(seq))
            if bar is not None:
                bar.update(len(indices))
        for i, u in enumerate(dataset.data.utterances):
            results.append(UttResult(u.utt, u.domain or fallback, normalize_text(u.text), hyps[i]))
    if bar is not None:
        bar.close()

    groups: dict[str, list[UttResult]] = {}
    for r in results:
        groups.setdefault(r.domain, []).append(r)
    report = EvalReport(
        model_dir=str(model_dir),
        data_dirs=[str(d) for d in data_dirs],
        decode=config.to_dict(),
        device=str(device),
        torch_threads=torch.get_num_threads(),
        num_parameters=num_parameters,
        num_parameters_total=num_parameters_total,
        audio_seconds=audio_seconds,
        decode_seconds=decode_seconds,
        rtf=decode_seconds / audio_seconds,
        overall=score_texts([r.ref for r in results], [r.hyp for r in results]),
        domains={k: score_texts([r.ref for r in v], [r.hyp for r in v]) for k, v in sorted(groups.items())},
        utterances=results,
    )
    if out_dir is not None:
        write_outputs(report, out_dir)
    return report


def write_outputs(report: EvalReport, out_dir: str | os.PathLike) -> None:
    """``report.json``, ``report.md``, ``hyp.txt``, ``utterances.jsonl`` and ``confusions.json`` in ``out_dir``."""
    import jiwer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "hyp.txt", "".join(f"{r.utt} {r.hyp}".rstrip() + "\n" for r in report.utterances))
    lines = []
    for r in report.utterances:
        w = jiwer.process_words(r.ref, r.hyp)
        c = jiwer.process_characters(r.ref, r.hyp)  # the alignment jiwer.cer sums over a corpus
        lines.append(json.dumps({"utt": r.utt, "domain": r.domain, "ref": r.ref, "hyp": r.hyp,
                                 "ref_words": len(r.ref.split()),
                                 "errors": w.substitutions + w.deletions + w.insertions,
                                 "ref_chars": c.hits + c.substitutions + c.deletions,
                                 "char_errors": c.substitutions + c.deletions + c.insertions}, ensure_ascii=False))
    atomic_write_text(out_dir / "utterances.jsonl", "".join(line + "\n" for line in lines))
    write_json(out_dir / "confusions.json", report.confusions())
    report.to_markdown(out_dir / "report.md")
    report.to_json(out_dir / "report.json")  # last: its presence marks a finished evaluation
