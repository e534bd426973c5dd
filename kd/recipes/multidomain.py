"""The multi-domain KD benchmark (Kim et al. 2021): its claims, evaluations and results file.

Its stages, which ``recipes/multidomain_ukd/run.py`` strings together, are in :mod:`kd.recipes.multidomain_stages`.
The benchmark asks whether distillation from teachers of other domains helps a student of a target
domain with little data, and tests the paper's claims with paired intervals (:mod:`kd.evaluation.evidence`):

- KD beats no KD;
- the uncertainty term added to token-level KD beats token-level KD alone;
- two teachers beat the better single teacher;

each only where its premise holds: the better teacher (chosen on the target dev set) must be
better on the target test set than the student that the claim's KD rows are compared with, under
the same decoding, with an interval that excludes 0. Otherwise the claim is "not a test".

Decoding: every model is scored by joint CTC/attention beam search (the headline, ``decode``; it
uses the attention decoder that token-level KD trains) and by CTC greedy decoding (``greedy``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from kd.core.config import CONFIG, parse_config, with_config
from kd.core.io import write_json
from kd.evaluation.evidence import (DOES_NOT_REPRODUCE, NOT_A_TEST, REPRODUCES, paired_interval, read_utterance_errors,
                                    token_uncertainty, uncertainty_summary, variance_correlation, verdict)

__all__ = ["Claim", "GREEDY", "RESULTS_LAYOUT", "check_results", "claims_table", "evaluate_model", "evaluate_runs",
           "results_markdown",
           "teacher_uncertainty", "write_word_inventory"]

GREEDY = {"method": "ctc_greedy"}
BEST = "{best}"  # in a claim's condition name: the better teacher's domain (chosen on the target dev set)


def write_word_inventory(data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                         vocabulary: Sequence[str] = ()) -> Path:
    """A word-level SentencePiece model of every word in the transcripts of ``data_dirs`` and in
    ``vocabulary`` (the task's closed word list, if it has one: a word that no training transcript
    holds would otherwise be outside the inventory of the dev and test transcripts) as ``words.model``,
    and its token list (``tokens.txt``); returns the model's path.

    Word units suit a small vocabulary: CTC greedy output cannot misspell a word, and beam search takes
    one step per word instead of one per character. The token list, not the model file, identifies the
    inventory (SentencePiece writes its output path into the model file).
    """
    from kd.core.io import atomic_write_text
    from kd.data import load_data_dir
    from kd.data.text import SentencePieceTokenizer

    # transcripts only: a split of the built-in corpus may not have its audio rendered (build_corpus's splits)
    texts = [u.text for d in data_dirs for u in load_data_dir(d, check_audio=False).utterances]
    words = {w for t in texts for w in t.split()}
    missing = sorted(set(vocabulary) - words)  # one line each; none when the transcripts hold every word
    texts += missing
    words |= set(missing)
    out = Path(out_dir)
    tokenizer = SentencePieceTokenizer.train(texts, out / "words", vocab_size=len(words) + 1, model_type="word")
    atomic_write_text(out / "tokens.txt", "".join(t + "\n" for t in tokenizer.tokens))
    return out / "words.model"


def evaluate_model(model_dir: str | os.PathLike, data_dir: str | os.PathLike, decode: Mapping[str, Any],
                   out_dir: str | os.PathLike, device: str = "cpu") -> dict[str, float]:
    """WER and CER (%) of a model on one test set under one decoding (skipped when done; the report
    folder keeps the per-utterance errors that the intervals resample)."""
    from kd.recipes.experiment import evaluate_once

    report = evaluate_once(model_dir, [data_dir], decode, out_dir, device=device)
    return {"wer": report["overall"]["wer"] * 100.0, "cer": report["overall"]["cer"] * 100.0,
            "utterances": report["overall"]["utterances"], "params": report["params"]}


def evaluate_runs(runs: Mapping[str, str | os.PathLike], data_dir: str | os.PathLike, decode: Mapping[str, Any], *,
                  device: str = "cpu", workers: int = 1) -> dict[str, dict[str, dict[str, float]]]:
    """Every run (``{key: run dir}``) on one test set by ``decode`` (the headline, ``"beam"``) and by CTC
    greedy decoding (``"greedy"``): ``{key: {"beam": ..., "greedy": ...}}`` of :func:`evaluate_model`,
    the reports in ``<run>/eval-beam`` and ``<run>/eval-greedy``. On the CPU ``workers`` processes
    decode at once (one thread each); on a GPU one."""
    from kd.recipes.parallel import Job, run_jobs

    ways = (("beam", decode), ("greedy", GREEDY))
    jobs = [Job(f"{run} {name}", evaluate_model, (Path(run) / "model", data_dir, how, Path(run) / f"eval-{name}"),
                {"device": device}) for run in runs.values() for name, how in ways]
    reports = iter(run_jobs(jobs, workers=workers if device == "cpu" else 1))
    return {key: {name: next(reports) for name, _ in ways} for key in runs}


def teacher_uncertainty(model_dirs: Mapping[str, str | os.PathLike], dev_dirs: Mapping[str, str | os.PathLike],
                        target_dev: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Does the teachers' uncertainty carry signal? Per teacher, on its own dev set and on the target dev
    set: the AUROC with which its per-token variance predicts its own teacher-forced token errors, the
    mean variance and the token error rate; and the correlation of the teachers' per-token log variances
    on the target dev set (the paper: similar probabilities, different uncertainties)."""
    result: dict[str, Any] = {"teachers": {}}
    target_tokens = {}
    for name, model_dir in model_dirs.items():
        own = uncertainty_summary(token_uncertainty(model_dir, dev_dirs[name]))
        target_tokens[name] = token_uncertainty(model_dir, target_dev)
        result["teachers"][name] = {"own_dev": own, "target_dev": uncertainty_summary(target_tokens[name])}
    names = sorted(target_tokens)
    result["target_dev_variance_correlation"] = {
        f"{a}-{b}": variance_correlation(target_tokens[a], target_tokens[b])
        for i, a in enumerate(names) for b in names[i + 1:]}
    write_json(Path(out), result)
    return result


@dataclass(frozen=True)
@with_config(CONFIG)
class Claim:
    """``a`` makes fewer errors than ``b`` on the target test set (condition names; ``{best}`` stands for
    the better teacher's domain). ``premise``: the condition whose students the better teacher must beat
    for the claim to be a test (None: no premise)."""

    claim: str
    a: str
    b: str
    premise: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Claim":
        return parse_config(cls, data)

    def resolve(self, best: str) -> "Claim":
        fill = lambda s: s.replace(BEST, best) if s else s  # noqa: E731
        return Claim(self.claim.replace(BEST, best), fill(self.a), fill(self.b), fill(self.premise))


def claims_table(claims: Sequence[Claim], *, students: Mapping[tuple[str, str, int], Path],
                 teachers: Mapping[int, Path], best: Mapping[int, str], size: str, metric: str,
                 domain: str, resamples: int = 2000) -> list[dict[str, Any]]:
    """Each claim's paired interval and verdict.

    Args:
        students: (size, condition, seed) -> eval folder of the student on the target test set.
        teachers: seed -> eval folder of that seed's better teacher on the target test set.
        best: seed -> the better teacher's domain (the same in every seed, or claims naming
            ``{best}`` are ambiguous: an error).
        metric: "wer" or "cer".
    """
    bests = set(best.values())
    seeds = sorted(best)
    out = []
    for claim in claims:
        if BEST in claim.a + claim.b + claim.claim + (claim.premise or "") and len(bests) > 1:
            raise ValueError(f"claim {claim.claim!r}: the better teacher differs between seeds ({best}); "
                             "name the teacher instead of {best}")
        c = claim.resolve(next(iter(bests)))
        runs = lambda cond: {s: read_utterance_errors(students[(size, cond, s)], metric) for s in seeds}  # noqa: E731
        for name in (c.a, c.b, c.premise):
            if name is not None and (size, name, seeds[0]) not in students:
                raise ValueError(f"claim {c.claim!r}: no runs of condition {name!r} (size {size}); "
                                 "expected a condition of the preset")
        interval = paired_interval(runs(c.a), runs(c.b), resamples=resamples)
        row: dict[str, Any] = {"claim": c.claim, "a": c.a, "b": c.b, "size": size, "metric": metric,
                               "diff": round(interval.diff, 3), "ci95": [round(interval.lo, 3), round(interval.hi, 3)],
                               "seeds": interval.seeds, "utterances": interval.utterances}
        holds = True
        if c.premise is not None:
            teacher_runs = {s: read_utterance_errors(teachers[s], metric, domain=domain) for s in seeds}
            premise = paired_interval(teacher_runs, runs(c.premise), resamples=resamples)
            holds = premise.hi < 0.0
            row["premise"] = {"teacher": next(iter(bests)), "student": c.premise, "diff": round(premise.diff, 3),
                              "ci95": [round(premise.lo, 3), round(premise.hi, 3)], "holds": holds}
        row["verdict"] = verdict(interval, premise=holds)
        out.append(row)
    return out


# the results file's layout (issue-stated, so that anyone can check it); check_results enforces it
RESULTS_LAYOUT = {
    "preset": str, "seeds": list, "decode": dict, "n_test": dict, "teachers": dict, "students": list, "claims": list,
}
_VERDICTS = (REPRODUCES, DOES_NOT_REPRODUCE, NOT_A_TEST)


def check_results(results: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the field when ``results`` does not follow the layout::

        {"preset", "seeds", "decode", "n_test": {domain: utterances},
         "teachers": {name: {"own_test": {"cer", "wer"}, "target_test": {"cer", "wer"},
                             "uncertainty_auroc": {"own_dev", "target_dev"}}},
         "students": [{"size", "condition", "seed", "target_test": {"cer", "wer"}}],
         "claims": [{"claim", "a", "b", "metric", "diff", "ci95": [lo, hi], "verdict"}]}

    (WER/CER in %). A claim whose interval holds 0 must not be reported as reproducing.
    """
    def need(mapping: Any, key: str, kind: type, where: str) -> Any:
        if not isinstance(mapping, Mapping) or key not in mapping:
            raise ValueError(f"results: expected {where}.{key}, found none")
        value = mapping[key]
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ValueError(f"results: {where}.{key}: expected {kind.__name__}, found {value!r}")
        return value

    for key, kind in RESULTS_LAYOUT.items():
        need(results, key, kind, "results")
    for name, teacher in results["teachers"].items():
        where = f"teachers.{name}"
        for part in ("own_test", "target_test"):
            for m in ("cer", "wer"):
                need(need(teacher, part, dict, where), m, float, f"{where}.{part}")
        auroc = need(teacher, "uncertainty_auroc", dict, where)
        for part in ("own_dev", "target_dev"):
            need(auroc, part, float, f"{where}.uncertainty_auroc")
    for i, student in enumerate(results["students"]):
        where = f"students[{i}]"
        need(student, "size", str, where)
        need(student, "condition", str, where)
        need(student, "seed", int, where)
        for m in ("cer", "wer"):
            need(need(student, "target_test", dict, where), m, float, f"{where}.target_test")
    for i, claim in enumerate(results["claims"]):
        where = f"claims[{i}]"
        for key in ("claim", "a", "b", "metric"):
            need(claim, key, str, where)
        need(claim, "diff", float, where)
        ci = need(claim, "ci95", list, where)
        if len(ci) != 2 or not all(isinstance(v, (int, float)) for v in ci) or ci[0] > ci[1]:
            raise ValueError(f"results: {where}.ci95: expected [lo, hi] with lo <= hi, found {ci!r}")
        v = need(claim, "verdict", str, where)
        if v not in _VERDICTS:
            raise ValueError(f"results: {where}.verdict: expected one of {list(_VERDICTS)}, found {v!r}")
        if v == REPRODUCES and ci[0] <= 0.0 <= ci[1]:
            raise ValueError(f"results: {where}: reported as reproducing although its interval {ci} holds 0")


def _fmt(values: Sequence[float]) -> str:
    import statistics

    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def results_markdown(results: Mapping[str, Any]) -> str:
    """The results file as markdown: teachers (the premise), students, uncertainty, claims."""
    decode = results["decode"]
    teacher_seeds = results.get("teacher_seeds", results["seeds"])
    seeds = (f"seeds {results['seeds']}" if teacher_seeds == results["seeds"] else
             f"students' seeds {results['seeds']}, every seed's students taught by the teachers of seed "
             f"{', '.join(map(str, teacher_seeds))} (the intervals hold the students' seeds and the test utterances, "
             f"not the teachers' training)")
    head = (f"`{results['preset']}` preset, {seeds}; headline decoding: joint CTC/attention beam "
            f"search (beam {decode['beam_size']}, CTC weight {decode['ctc_weight']}); greedy: CTC greedy. "
            f"Test sets: " + ", ".join(f"{d} {n} utterances" for d, n in results["n_test"].items()) + ". WER/CER in %.")
    lines = [head, "", "Teachers (means over the teachers' seeds)", "",
             "| teacher | own test WER | own test CER | target test WER | target test CER | target test WER (greedy) "
             "| variance AUROC own dev | target dev | posterior AUROC own dev | target dev |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in results["teachers"].items():
        posterior = t.get("posterior_auroc", {})
        lines.append(f"| {name} | {t['own_test']['wer']:.1f} | {t['own_test']['cer']:.1f} | {t['target_test']['wer']:.1f}"
                     f" | {t['target_test']['cer']:.1f} | {t['target_test_greedy']['wer']:.1f} | "
                     f"{t['uncertainty_auroc']['own_dev']:.3f} | {t['uncertainty_auroc']['target_dev']:.3f} | "
                     f"{_num(posterior.get('own_dev'))} | {_num(posterior.get('target_dev'))} |")
    lines += ["", "AUROC: how well a per-token score ranks the teacher's own teacher-forced token errors above its "
              "correct tokens (0.5: chance). Variance: the uncertainty head's variance of the predicted token; "
              "posterior: 1 - the largest probability, which needs no uncertainty head."]
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in results["students"]:
        groups.setdefault((s["size"], s["condition"]), []).append(s)
    lines += ["", "Students on the target test set", "",
              "| size | condition | WER | CER | WER (greedy) | CER (greedy) | params |", "|---|---|---|---|---|---|---|"]
    for (size, condition), rows in groups.items():
        lines.append(f"| {size} | {condition} | {_fmt([r['target_test']['wer'] for r in rows])} | "
                     f"{_fmt([r['target_test']['cer'] for r in rows])} | "
                     f"{_fmt([r['target_test_greedy']['wer'] for r in rows])} | "
                     f"{_fmt([r['target_test_greedy']['cer'] for r in rows])} | {rows[0]['params'] / 1e6:.2f}M |")
    unc = results.get("uncertainty", {})
    if unc.get("target_dev_variance_correlation"):
        pairs = ", ".join(f"{k} {v:.3f}" for k, v in unc["target_dev_variance_correlation"].items())
        lines += ["", f"Correlation of the teachers' per-token log variances on the target dev set: {pairs}."]
    lines += ["", "Claims (a - b in points; 95% interval from a paired bootstrap over seeds and test utterances; "
              "premise: the better teacher minus the named student on the target test set)", "",
              "| claim | size | metric | a | b | a - b | 95% interval | premise | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in results["claims"]:
        premise = "none"
        if "premise" in c:
            p = c["premise"]
            premise = (f"teacher {p['teacher']} - {p['student']}: {p['diff']:+.1f} [{p['ci95'][0]:+.1f}, "
                       f"{p['ci95'][1]:+.1f}] ({'holds' if p['holds'] else 'fails'})")
        lines.append(f"| {c['claim']} | {c['size']} | {c['metric'].upper()} | {c['a']} | {c['b']} | {c['diff']:+.1f} | "
                     f"[{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}] | {premise} | {c['verdict']} |")
    provenance = results.get("provenance")
    if provenance:
        lines += ["", f"Run on {provenance.get('date')}, {provenance.get('machine')}, commit "
                      f"{provenance.get('commit')}."]
    return "\n".join(lines) + "\n"


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    check_results(results)
    return results


_BLOCK = "<!-- results: {name} -->"
_END = "<!-- end results -->"


def readme_blocks(text: str) -> dict[str, str]:
    """The results blocks of a README: ``<!-- results: NAME -->`` ... ``<!-- end results -->`` -> NAME: content."""
    import re

    blocks = {}
    for m in re.finditer(r"<!-- results: (\S+) -->\n(.*?)" + re.escape(_END), text, flags=re.S):
        blocks[m.group(1)] = m.group(2)
    return blocks


def sync_readme(readme: str | os.PathLike, results_dir: str | os.PathLike) -> list[str]:
    """Replace each results block of ``readme`` by ``results_dir/NAME.md`` (the committed results file);
    returns the names of the blocks that changed. A block whose file is missing is an error."""
    import re

    readme, results_dir = Path(readme), Path(results_dir)
    text = readme.read_text(encoding="utf-8")
    changed = []

    def fill(m: "re.Match[str]") -> str:
        name = m.group(1)
        path = results_dir / f"{name}.md"
        if not path.is_file():
            raise FileNotFoundError(f"{readme}: results block {name!r} has no results file {path}")
        body = path.read_text(encoding="utf-8")
        if body != m.group(2):
            changed.append(name)
        return _BLOCK.format(name=name) + "\n" + body + _END

    new = re.sub(r"<!-- results: (\S+) -->\n(.*?)" + re.escape(_END), fill, text, flags=re.S)
    if changed:
        from kd.core.io import atomic_write_text

        atomic_write_text(readme, new)
    return changed
