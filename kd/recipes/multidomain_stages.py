"""The stages of the multi-domain KD benchmark (Kim et al. 2021) as library functions.

``recipes/multidomain_ukd/run.py`` parses a preset into a :class:`MultidomainSetup` and runs one
function per stage (:mod:`kd.recipes.stages` skips the finished ones); each function takes the setup, the
earlier stages' results it needs and the number of worker processes, and returns the JSON-able
summary that the stage's marker keeps. The claims, the results layout and its markdown are in
:mod:`kd.recipes.multidomain`.

Layout of the output folder ``out``::

    corpus/<domain>/<split>                    the built-in corpus
    tokens/                                    tokens.txt (and words.model for word units)
    teachers/seed<s>/<domain>/                 a teacher's training run (model/: its model dir)
    eval/teachers/seed<s>/<domain>/<set>-<how> a teacher's evaluation, e.g. target-test-beam
    analysis/seed<s>/<domain>/                 the layer-wise analysis of a teacher (report.json)
    students/seed<s>/<size>[.plan.json]        a student built from the better teacher's layers, its plan
    teacher_cache/seed<s>/                     cached teacher outputs of the KD runs
    runs/<size>/<condition slug>/seed<s>/      a student's training run; eval-beam/, eval-greedy/
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping, Sequence

from kd.recipes.experiment import Condition, StudentSize, check_pairs, merge_sections, student_train_config, train_run
from kd.recipes.multidomain import (BEST, GREEDY, Claim, check_results, claims_table, evaluate_model, evaluate_runs,
                                    results_markdown)

if TYPE_CHECKING:
    from kd.analyze.layerwise import AnalyzeConfig
    from kd.recipes.presets import CorpusSection, MultidomainPreset
    from kd.training.config import TrainConfig

__all__ = ["MultidomainSetup", "analyse_teachers", "build_students", "distil_students", "evaluate_students",
           "evaluate_teachers", "make_corpus", "make_tokens", "publish_results", "results_table", "ship_teachers",
           "shipped_teacher_dir", "student_config", "student_rows", "teacher_config", "teacher_means", "train_teachers"]

METRICS = ("wer", "cer")


def _no_section(key: str) -> ContextManager[Any]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class MultidomainSetup:
    """One preset of the benchmark, its sections parsed and checked, and where its files go."""

    out: Path  # the output folder (layout: the module docstring)
    corpus: CorpusSection  # kd.corpus.synth.build_corpus's preset and seed
    tokens: str  # "words" (a word-level SentencePiece model) or "chars" (a character list)
    domains: tuple[str, ...]  # the teachers' domains
    target: str  # the students' domain: little data, shifted recording conditions
    teacher: Mapping[str, Any]  # the teachers' TrainConfig section (data, tokens and seed filled in here)
    student: Mapping[str, Any]  # the students' section of kd.recipes.experiment.student_train_config
    sizes: tuple[StudentSize, ...]
    conditions: tuple[Condition, ...]
    claims: tuple[Claim, ...]
    seeds: tuple[int, ...]  # the students' training seeds, and the teachers' unless teacher_seed_fixed is set
    decode: Mapping[str, Any]  # the headline decoding (a DecodeConfig section); GREEDY is the other
    analysis: AnalyzeConfig  # the teachers' layer-wise analysis
    device: str = "cpu"  # evaluation and analysis
    shipped: Path | None = None  # shipped teachers (kd.recipes.shipped), see shipped_teacher; None: trained here
    freeze: tuple[str, ...] = ()  # parameters that students built from the teacher's layers keep
    teacher_seed_fixed: int | None = None  # every student seed's teachers are this seed's (None: the student's seed)

    @classmethod
    def from_preset(cls, preset: MultidomainPreset | Mapping[str, Any], out: Path, *, seeds: Sequence[int],
                    recipe_dir: Path,
                    section: Callable[[str], ContextManager[Any]] = _no_section) -> "MultidomainSetup":
        """Build every run's settings from a preset of ``recipes/multidomain_ukd/config.yaml``, so that a bad
        value stops the recipe before its first stage.

        Args:
            preset: the preset (:class:`kd.recipes.presets.MultidomainPreset`, or the mapping it is read from).
            out: the output folder.
            seeds: the seeds to run (the preset's, or the command line's).
            recipe_dir: the folder that the preset's ``shipped_teachers`` is relative to.
            section: ``section(key)`` is entered while the preset section ``key`` is parsed; the
                recipe passes :func:`kd.recipes.stages.preset_section` to turn an error into a command-line
                error that names the section.
        """
        from kd.analyze.layerwise import AnalyzeConfig
        from kd.core.config import parse_config
        from kd.evaluation.decode import DecodeConfig
        from kd.recipes.presets import MultidomainPreset

        if not isinstance(preset, MultidomainPreset):
            preset = parse_config(MultidomainPreset, preset, "preset")
        domains, target, device = preset.teacher_domains, preset.target_domain, preset.device
        sizes, conditions, claims = preset.sizes(), preset.conditions, preset.claims
        with section("decode"):
            DecodeConfig.from_dict(preset.decode)
        with section("claims"):
            names = [c.name for c in conditions]
            for claim in claims:  # {best} may stand for either teacher
                for d in domains:
                    r = claim.resolve(d)
                    check_pairs([[r.a, r.b]] + ([[r.premise, r.premise]] if r.premise else []), names,
                                what="a condition of this preset")
        with section("analysis"):
            analysis = parse_config(AnalyzeConfig, {**preset.analysis, "device": device})
        shipped = recipe_dir / preset.shipped_teachers if preset.shipped_teachers else None
        setup = cls(out=out, corpus=preset.corpus, tokens=preset.tokens, domains=domains, target=target,
                    teacher=preset.teacher, student=preset.student, sizes=sizes, conditions=conditions,
                    claims=claims, seeds=tuple(seeds), decode=preset.decode, analysis=analysis, device=device,
                    shipped=shipped, freeze=preset.student_freeze, teacher_seed_fixed=preset.teacher_seed)
        with section("teacher"):
            for d in domains:
                teacher_config(setup, d, setup.teacher_seeds[0])
        with section("student / conditions"):
            for size in sizes:
                for c in conditions:
                    student_config(setup, size, c, setup.seeds[0], None)
        return setup

    @property
    def tokens_dir(self) -> Path:
        return self.out / "tokens"

    @property
    def tokens_section(self) -> dict[str, str]:
        """The ``tokens`` section of every run: the shared inventory of :func:`make_tokens`."""
        if self.tokens == "words":
            return {"kind": "sentencepiece", "path": str(self.tokens_dir / "words.model")}
        return {"kind": "list", "path": str(self.tokens_dir / "tokens.txt")}

    def data(self, domain: str, split: str) -> Path:
        return self.out / "corpus" / domain / split

    def teacher_seed(self, seed: int) -> int:
        """The seed of the teachers that the students of ``seed`` learn from."""
        return seed if self.teacher_seed_fixed is None else self.teacher_seed_fixed

    @property
    def teacher_seeds(self) -> tuple[int, ...]:
        """The teachers' training seeds, each once, in the order of the students' seeds."""
        return tuple(dict.fromkeys(self.teacher_seed(s) for s in self.seeds))

    def teacher_run(self, seed: int, domain: str) -> Path:
        """The training run of the teacher of ``domain`` and the teachers' seed ``seed``."""
        return self.out / "teachers" / f"seed{seed}" / domain

    def shipped_teacher(self, seed: int, domain: str) -> Path | None:
        """The shipped teacher of ``domain`` and the teachers' seed ``seed`` (:func:`shipped_teacher_dir`
        under the preset's ``shipped_teachers``); None when the preset ships none."""
        return None if self.shipped is None else shipped_teacher_dir(self.shipped, seed, domain)

    def teacher_eval(self, seed: int, domain: str, name: str) -> Path:
        return self.out / "eval" / "teachers" / f"seed{seed}" / domain / name

    def student_dir(self, seed: int, size: StudentSize) -> Path:
        return self.out / "students" / f"seed{seed}" / size.name

    def run_dir(self, size: StudentSize, condition: Condition, seed: int) -> Path:
        return self.out / "runs" / size.name / condition.slug / f"seed{seed}"

    def cells(self) -> list[tuple[StudentSize, Condition, int]]:
        """Every student run, (size, condition, seed), size-major."""
        return [(size, c, seed) for size in self.sizes for c in self.conditions for seed in self.seeds]


def teacher_config(setup: MultidomainSetup, domain: str, seed: int) -> TrainConfig:
    """The training run of the teacher of ``domain`` and ``seed``: its domain's train and dev sets."""
    from kd.training.config import TrainConfig

    return TrainConfig.from_dict(merge_sections(setup.teacher, {
        "data": {"train": [str(setup.data(domain, "train"))], "dev": str(setup.data(domain, "dev"))},
        "tokens": setup.tokens_section, "seed": seed}))


def student_config(setup: MultidomainSetup, size: StudentSize, condition: Condition, seed: int,
                   teacher_eval: Mapping[str, Any] | None) -> TrainConfig:
    """The training run of one student on the target domain.

    ``teacher_eval``: the result of :func:`evaluate_teachers`, whose target dev WERs weigh the teachers
    of a ``dev_wer`` condition (None, before it ran: every teacher alike).
    """
    ts = setup.teacher_seed(seed)
    dev_wers = ({d: teacher_eval[f"seed{ts}/{d}"]["target_dev_beam"]["wer"] / 100.0 for d in setup.domains}
                if teacher_eval else {d: 1.0 for d in setup.domains})
    # a condition's teacher "{best}": this seed's better teacher (before the teachers are evaluated: the first)
    if BEST in condition.teachers:
        best = teacher_eval[f"seed{ts}/best"] if teacher_eval else setup.domains[0]
        condition = dataclasses.replace(condition, teachers=tuple(best if t == BEST else t for t in condition.teachers))
    return student_train_config(
        setup.student, condition, train=[setup.data(setup.target, "train")], dev=setup.data(setup.target, "dev"),
        tokens=setup.tokens_section, seed=seed, teacher_model=setup.teacher["model"], size=size,
        plan_student=setup.student_dir(seed, size),
        teacher_runs={d: setup.teacher_run(ts, d) / "model" for d in setup.domains}, dev_wers=dev_wers,
        cache_root=setup.out / "teacher_cache" / f"seed{seed}", freeze=setup.freeze,
        teacher_weights="model.safetensors")


def make_corpus(setup: MultidomainSetup) -> dict[str, Any]:
    """Stage ``corpus``: the built-in corpus (teacher domains, and the target domain with little data).
    With shipped teachers the teacher domains' training audio is not rendered here: the teachers stage
    renders it for a teacher it has to train (every data dir is written either way)."""
    from kd.corpus.domains import SPLITS
    from kd.corpus.synth import build_corpus

    splits = [f"{d}/{s}" for d in (*setup.domains, setup.target) for s in SPLITS
              if setup.shipped is None or not (d in setup.domains and s == "train")]
    summary = build_corpus(setup.out / "corpus", setup.corpus.preset, seed=setup.corpus.seed,
                           splits=splits)
    return {"hours": summary["hours"], "not_rendered": summary["not_rendered"]}


def make_tokens(setup: MultidomainSetup) -> dict[str, Any]:
    """Stage ``tokens``: one inventory (words or characters) of every domain's training transcripts."""
    from kd.corpus.synth import task_vocabulary
    from kd.recipes.experiment import write_token_list
    from kd.recipes.multidomain import write_word_inventory

    train = [setup.data(d, "train") for d in [*setup.domains, setup.target]]
    if setup.tokens == "words":
        write_word_inventory(train, setup.tokens_dir, task_vocabulary(setup.corpus.preset))
    else:
        write_token_list(train, setup.tokens_dir / "tokens.txt")
    return {"tokens": len((setup.tokens_dir / "tokens.txt").read_text().splitlines())}


def shipped_teacher_dir(base: Path, seed: int, domain: str) -> Path:
    """Where a shipped teacher (or its resume point) of ``domain`` and the teachers' seed ``seed`` lives under
    ``base``: ``<base>/<domain>`` for seed 0, the main job's, and ``<base>/seed<N>/<domain>`` for another
    seed. A model there stands in for a training run only when its fingerprint, which holds the seed, is
    the run's (:func:`kd.recipes.shipped.restore_for_run`)."""
    return base / domain if seed == 0 else base / f"seed{seed}" / domain


def train_teachers(setup: MultidomainSetup, workers: int) -> dict[str, Any]:
    """Stage ``teachers``: a teacher per domain and seed, restored from the shipped teachers when they were
    trained on exactly this data, config and seed (:func:`kd.recipes.shipped.restore`,
    :meth:`MultidomainSetup.shipped_teacher`), else trained.

    Returns the restored teachers' sources and the trained ones' wall seconds, by run dir.
    """
    from kd.recipes.parallel import Job, run_jobs
    from kd.recipes.shipped import restore_for_run

    jobs, restored, render = [], {}, set()
    for seed in setup.teacher_seeds:
        for d in setup.domains:
            config, run = teacher_config(setup, d, seed), setup.teacher_run(seed, d)
            shipped = setup.shipped_teacher(seed, d)
            if restore_for_run(shipped, run, config, setup.tokens_dir / "tokens.txt", f"teacher {d}, seed {seed}"):
                restored[f"seed{seed}/{d}"] = str(shipped)
                continue
            render.add(f"{d}/train")
            jobs.append(Job(str(run), train_run, (config, run)))
    if render:  # the training audio of the teachers to train (make_corpus may have left it out)
        from kd.corpus.synth import build_corpus

        build_corpus(setup.out / "corpus", setup.corpus.preset, seed=setup.corpus.seed,
                     splits=sorted(render))
    trained = run_jobs(jobs, workers=workers)
    return {"restored": restored, "trained": {j.label: r.wall_seconds for j, r in zip(jobs, trained)}}


def ship_teachers(setup: MultidomainSetup, base: Path, *, command: Callable[[int], str], trained: Mapping[str, Any],
                  resume_points: bool = False) -> list[Path]:
    """Ship every teacher that this setup trained (:func:`kd.recipes.shipped.ship_run`) into
    ``base`` in the layout of :func:`shipped_teacher_dir`, with ``command(seed)`` as the command that
    retrains it; or, with ``resume_points``, every unfinished one as a resume point
    (:func:`kd.recipes.shipped.ship_resume_point`), for a training longer than one sitting.

    A teacher restored from the shipped ones is not shipped again, nor a finished one as a resume point;
    each is named on stdout. Returns the folders written; a run that can be neither (unfinished, or without
    a checkpoint) is a ValueError naming it.
    """
    from kd.recipes.shipped import ship_resume_point, ship_run
    from kd.training.checkpoint import CHECKPOINTS_DIR

    shipped = []
    for seed in setup.teacher_seeds:
        for d in setup.domains:
            run, target = setup.teacher_run(seed, d), shipped_teacher_dir(base, seed, d)
            result = run / "result.json"
            finished = result.is_file() and not json.loads(result.read_text(encoding="utf-8")).get("stopped_early")
            if not result.is_file() and (run / "model").is_dir() and not (run / CHECKPOINTS_DIR).is_dir():
                print(f"not shipped: {run} was restored from {setup.shipped_teacher(seed, d)}")
            elif resume_points and finished:
                print(f"not shipped as a resume point: {run} finished training (ship it with --ship-teachers)")
            elif resume_points:
                shipped.append(ship_resume_point(run, setup.tokens_dir / "tokens.txt", target,
                                                 command=command(seed), trained=trained))
            else:
                shipped.append(ship_run(run, setup.tokens_dir / "tokens.txt", target, command=command(seed),
                                        trained=trained))
    return shipped


def evaluate_teachers(setup: MultidomainSetup, workers: int) -> dict[str, Any]:
    """Stage ``teacher-eval``: each teacher on its own and the target test sets (beam search and CTC
    greedy) and on the target dev set; whether its uncertainty predicts its token errors
    (:func:`kd.recipes.multidomain.teacher_uncertainty`); the better teacher per seed.

    Returns ``{"seed<s>/<domain>": {"own_test_beam", "own_test_greedy", "target_test_beam",
    "target_test_greedy", "target_dev_beam"}, "seed<s>/uncertainty": ..., "seed<s>/best": domain}``,
    each evaluation as :func:`kd.recipes.multidomain.evaluate_model` returns it.
    """
    from kd.recipes.multidomain import teacher_uncertainty
    from kd.recipes.parallel import Job, run_jobs

    target, device = setup.target, setup.device
    jobs = []
    for seed in setup.teacher_seeds:
        for d in setup.domains:
            model = setup.teacher_run(seed, d) / "model"
            for test in (d, target):
                for name, how in (("beam", setup.decode), ("greedy", GREEDY)):
                    jobs.append(Job(f"{d} on {test}", evaluate_model, (model, setup.data(test, "test"), how,
                                    setup.teacher_eval(seed, d, f"{test}-test-{name}")), {"device": device}))
            jobs.append(Job(f"{d} on {target} dev", evaluate_model, (model, setup.data(target, "dev"), setup.decode,
                            setup.teacher_eval(seed, d, f"{target}-dev-beam")), {"device": device}))
    reports = iter(run_jobs(jobs, workers=workers if device == "cpu" else 1))
    result: dict[str, Any] = {}
    for seed in setup.teacher_seeds:
        for d in setup.domains:
            r = {f"{test}_test_{name}": next(reports) for test in ("own", "target") for name in ("beam", "greedy")}
            r["target_dev_beam"] = next(reports)
            result[f"seed{seed}/{d}"] = r
        unc = teacher_uncertainty({d: setup.teacher_run(seed, d) / "model" for d in setup.domains},
                                  {d: setup.data(d, "dev") for d in setup.domains}, setup.data(target, "dev"),
                                  setup.out / "eval" / "teachers" / f"seed{seed}" / "uncertainty.json")
        result[f"seed{seed}/uncertainty"] = unc
        # the better teacher: the lower target dev WER under the headline decoding
        result[f"seed{seed}/best"] = min(setup.domains,
                                         key=lambda d: result[f"seed{seed}/{d}"]["target_dev_beam"]["wer"])
    return result


def analyse_teachers(setup: MultidomainSetup) -> dict[str, Any]:
    """Stage ``analysis``: ``kd analyze`` of each teacher on its own dev set."""
    from kd.analyze.layerwise import analyze_model_dir

    for seed in setup.teacher_seeds:
        for d in setup.domains:
            analyze_model_dir(setup.teacher_run(seed, d) / "model", setup.data(d, "dev"),
                              setup.out / "analysis" / f"seed{seed}" / d, setup.analysis)
    return {"analysed": [f"seed{s}/{d}" for s in setup.teacher_seeds for d in setup.domains]}


def build_students(setup: MultidomainSetup, teacher_eval: Mapping[str, Any]) -> dict[str, Any]:
    """Stage ``students``: per seed and size, a student of the better teacher's layers, chosen by the
    analysis-driven plan from the teacher's analysis (the plan saved next to it)."""
    from kd.compression.asr import asr_student
    from kd.models.model_dir import load_model_dir, save_model_dir
    from kd.plan import CompressionPlan
    from kd.plan.from_report import plan_from_report

    built = {}
    for seed in setup.seeds:
        ts = setup.teacher_seed(seed)
        best = teacher_eval[f"seed{ts}/best"]
        teacher, tokenizer = load_model_dir(setup.teacher_run(ts, best) / "model")
        for size in setup.sizes:
            plan = plan_from_report(setup.out / "analysis" / f"seed{ts}" / best / "report.json",
                                    budget_layers=size.encoder_layers, share_blocks=size.share_encoder)
            plan.save(setup.student_dir(seed, size).with_suffix(".plan.json"))
            student = asr_student(teacher, plan, CompressionPlan(keep_layers=list(size.decoder_keep)))
            save_model_dir(student, tokenizer, setup.student_dir(seed, size))
            built[f"seed{seed}/{size.name}"] = {"teacher": best, "encoder_layers": list(plan.keep_layers),
                                                "share_groups": plan.share_groups}
    return built


def distil_students(setup: MultidomainSetup, teacher_eval: Mapping[str, Any] | None, workers: int) -> dict[str, Any]:
    """Stage ``distill``: every (size, condition, seed) training run on the target domain."""
    from kd.recipes.parallel import Job, run_jobs

    jobs = [Job(str(setup.run_dir(*cell)), train_run,
                (student_config(setup, *cell, teacher_eval), setup.run_dir(*cell))) for cell in setup.cells()]
    run_jobs(jobs, workers=workers)
    return {"runs": len(jobs)}


def evaluate_students(setup: MultidomainSetup, workers: int) -> dict[str, Any]:
    """Stage ``eval``: every student on the target test set by beam search and CTC greedy decoding.

    Returns ``{"<size>/<condition>/seed<s>": {"beam": ..., "greedy": ...}}``
    (:func:`kd.recipes.multidomain.evaluate_model`).
    """
    runs = {f"{size.name}/{c.name}/seed{seed}": setup.run_dir(size, c, seed) for size, c, seed in setup.cells()}
    return evaluate_runs(runs, setup.data(setup.target, "test"), setup.decode, device=setup.device, workers=workers)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def teacher_means(teacher_eval: Mapping[str, Any], domains: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """The results' ``teachers``: per domain, its error rates (%, 2 decimals) and uncertainty AUROCs
    (4 decimals) as means over the seeds, each seed's uncertainty summary and its parameter count.

    ``teacher_eval``: the result of :func:`evaluate_teachers`.
    """
    teachers = {}
    for d in domains:
        rows = [teacher_eval[f"seed{s}/{d}"] for s in seeds]
        unc = [teacher_eval[f"seed{s}/uncertainty"]["teachers"][d] for s in seeds]
        pick = lambda key: {m: round(_mean([r[key][m] for r in rows]), 2) for m in METRICS}  # noqa: E731
        auroc = lambda key: {p: round(_mean([u[p][key] for u in unc]), 4)  # noqa: E731
                             for p in ("own_dev", "target_dev")}
        teachers[d] = {"own_test": pick("own_test_beam"), "target_test": pick("target_test_beam"),
                       "own_test_greedy": pick("own_test_greedy"), "target_test_greedy": pick("target_test_greedy"),
                       "target_dev": pick("target_dev_beam"), "uncertainty_auroc": auroc("auroc"),
                       "posterior_auroc": auroc("auroc_posterior"), "uncertainty": unc,
                       "params": rows[0]["own_test_beam"]["params"]}
    return teachers


def student_rows(student_eval: Mapping[str, Any], sizes: Sequence[str], conditions: Sequence[str],
                 seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The results' ``students``: one row per (size, condition, seed), size-major, error rates in %
    (2 decimals). ``student_eval``: the result of :func:`evaluate_students`."""
    rows = []
    for size in sizes:
        for c in conditions:
            for seed in seeds:
                ev = student_eval[f"{size}/{c}/seed{seed}"]
                rows.append({"size": size, "condition": c, "seed": seed,
                             "target_test": {m: round(ev["beam"][m], 2) for m in METRICS},
                             "target_test_greedy": {m: round(ev["greedy"][m], 2) for m in METRICS},
                             "params": ev["beam"]["params"]})
    return rows


def results_table(setup: MultidomainSetup, teacher_eval: Mapping[str, Any], student_eval: Mapping[str, Any], *,
                  preset: str, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The results file (layout: :func:`kd.recipes.multidomain.check_results`, which checks it): the teachers,
    the students, each claim's interval and verdict per size and metric (from the evaluations'
    per-utterance errors), the correlation of the teachers' uncertainties and ``provenance``."""
    te, seeds, target = teacher_eval, list(setup.seeds), setup.target
    teacher_seeds = list(setup.teacher_seeds)
    best = {s: te[f"seed{setup.teacher_seed(s)}/best"] for s in seeds}
    student_dirs = {(size.name, c.name, seed): setup.run_dir(size, c, seed) / "eval-beam"
                    for size, c, seed in setup.cells()}
    teacher_dirs = {s: setup.teacher_eval(setup.teacher_seed(s), best[s], f"{target}-test-beam") for s in seeds}
    claimed = [row for size in setup.sizes for metric in METRICS
               for row in claims_table(setup.claims, students=student_dirs, teachers=teacher_dirs, best=best,
                                       size=size.name, metric=metric, domain=target)]
    n_test = {d: te[f"seed{teacher_seeds[0]}/{d}"]["own_test_beam"]["utterances"] for d in setup.domains}
    n_test[target] = te[f"seed{teacher_seeds[0]}/{setup.domains[0]}"]["target_test_beam"]["utterances"]
    correlation = te[f"seed{teacher_seeds[0]}/uncertainty"]["target_dev_variance_correlation"]
    results = {"preset": preset, "seeds": seeds, "teacher_seeds": teacher_seeds, "decode": dict(setup.decode),
               "n_test": n_test, "teachers": teacher_means(te, setup.domains, teacher_seeds), "better_teacher": best,
               "students": student_rows(student_eval, [s.name for s in setup.sizes],
                                        [c.name for c in setup.conditions], seeds),
               "claims": claimed,
               "uncertainty": {"target_dev_variance_correlation": {
                   k: round(_mean([te[f"seed{s}/uncertainty"]["target_dev_variance_correlation"][k]
                                   for s in teacher_seeds]), 4)
                   for k in correlation}},
               "provenance": dict(provenance)}
    check_results(results)
    return results


def publish_results(results: Mapping[str, Any], folders: Sequence[Path],
                    to_markdown: Callable[[Mapping[str, Any]], str] = results_markdown, *,
                    name: str | None = None) -> str:
    """Write ``<name>.json`` and its markdown ``<name>.md`` (``name``: the results' preset by default;
    ``to_markdown``: the multi-domain table by default) into each of ``folders``; returns the markdown."""
    from kd.core.io import atomic_write_text, write_json

    text, name = to_markdown(results), name or results["preset"]
    for folder in folders:
        write_json(folder / f"{name}.json", results)
        atomic_write_text(folder / f"{name}.md", text)
    return text
