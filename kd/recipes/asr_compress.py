"""Compression plans of an ESPnet hybrid CTC/attention teacher compared at an equal budget.

The stages that ``recipes/asr_compress/run.py`` strings together. One deep teacher (12 encoder layers
in the ``cpu`` preset) is trained on one domain of the built-in corpus, or restored from the recipe's
shipped teacher when it was trained on exactly this data and config (:mod:`kd.recipes.shipped`). It is analysed
on its dev set (``kd analyze``: linear CKA between its layers, among the rest). At each budget of
``k`` encoder layers:

- ``analysis``: the analysis-driven plan (:func:`kd.plan.planners.plan_from_similarity`: one layer per
  block of similar layers);
- ``first-k``, ``every-k``, ``linspace``: the heuristics;
- ``shared``: every layer kept, its blocks sharing weights (Audio ALBERT): the teacher's depth with
  the parameters of ``k`` layers.

Besides, ``unshared``: every layer kept without sharing, trained like the students (the control of the
shared students). Each student is built from the teacher's layers (:func:`kd.compression.asr.asr_student`,
the decoder layers of ``decoder_keep``), then fine-tuned with the hybrid CTC/attention loss on the
teacher's training data, once per seed. A preset with a ``layer_distill`` section (a
:class:`kd.ssl.layer_distill.LayerDistillConfig`) first distils each (student, seed) layer to layer from
the teacher on the same data, as the wav2vec 2.0 students of ``recipes/w2v2_compress`` are
(:mod:`kd.ssl.asr_layer_distill`: DistilHuBERT's loss, student layer s predicting the teacher layer it
was copied from, or teacher layer s in a shared student), and fine-tunes the distilled student of the same
seed; without one, the students are fine-tuned directly from the teacher's layers. Every model is scored
on the domain's test set by beam search (the headline) and CTC greedy decoding, and its encoder's
latency is measured.

Each comparison (the analysis plan against each heuristic; shared against pruned of the same parameter
count and against unshared) is a paired interval over seeds and test utterances (:mod:`kd.evaluation.evidence`)
with a verdict: which side makes fewer errors, or a tie when the interval holds 0.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping, Sequence

from kd.recipes.experiment import merge_sections, train_run
from kd.evaluation.evidence import NOT_A_TEST
from kd.recipes.multidomain import GREEDY, evaluate_model, evaluate_runs

if TYPE_CHECKING:
    from kd.recipes.presets import AsrCompressPreset, CorpusSection

__all__ = ["AsrCompressSetup", "HEURISTICS", "LAYERS_DIFFER_BELOW", "SHARED", "UNSHARED", "analyse_teacher",
           "build_students", "compare", "compare_trainings", "distill_students", "evaluate_students", "evaluate_teacher",
           "layer_distill_config", "make_corpus", "make_tokens", "results_markdown", "results_table", "student_config",
           "train_students", "train_teacher", "trainings_markdown", "verdict"]

HEURISTICS = ("first-k", "every-k", "linspace")
ANALYSIS = "analysis"
SHARED = "shared"  # every layer kept, blocks sharing weights: the parameters of `budget` layers
UNSHARED = "unshared"  # every layer kept, no sharing: the control of SHARED (not a budget's plan)
PLANS = (ANALYSIS, *HEURISTICS, SHARED)
METRICS = ("wer", "cer")
TIE = "tie"
# the premise of comparing plans: the teacher's layers are not all alike (the lowest linear CKA between
# two of its layers below this); otherwise every plan keeps near-copies of the same layer and a
# comparison of plans says nothing about the analysis
LAYERS_DIFFER_BELOW = 0.7


def _no_section(key: str) -> ContextManager[Any]:
    import contextlib

    return contextlib.nullcontext()


@dataclass(frozen=True)
class AsrCompressSetup:
    """One preset of the recipe, parsed and checked, and where its files go."""

    out: Path
    corpus: CorpusSection  # kd.corpus.synth.build_corpus's preset and seed
    domain: str  # the teacher's and the students' domain (train, dev: analysis, test: scores)
    teacher: Mapping[str, Any]  # the teacher's TrainConfig section (data, tokens and seed filled in here)
    student: Mapping[str, Any]  # the students' TrainConfig section (optim, data limits, checkpoint, logging)
    budgets: tuple[int, ...]  # encoder layers (weight sets of a shared student) per student
    decoder_keep: tuple[int, ...]  # the teacher's decoder layers every student keeps
    seeds: tuple[int, ...]  # the students' training seeds (one teacher: the teacher's seed is 0)
    decode: Mapping[str, Any]  # the headline decoding (a DecodeConfig section); GREEDY is the other
    analysis: Any  # kd.analyze.layerwise.AnalyzeConfig of the teacher's analysis
    speed: Mapping[str, Any]  # kd.bench.speed.bench_speed's settings that the preset gives (batch_sizes, ...)
    device: str = "cpu"
    shipped: Path | None = None  # the shipped teacher's folder (kd.recipes.shipped); None: trained here
    # the students' layer-to-layer distillation before fine-tuning (a kd.ssl.layer_distill.LayerDistillConfig,
    # its seed set per run); None: fine-tuned directly
    layer_distill: Any = None

    @classmethod
    def from_preset(cls, preset: AsrCompressPreset | Mapping[str, Any], out: Path, *, seeds: Sequence[int],
                    recipe_dir: Path,
                    section: Callable[[str], ContextManager[Any]] = _no_section) -> "AsrCompressSetup":
        """Build every run's settings from a preset of ``recipes/asr_compress/config.yaml`` (a
        :class:`kd.recipes.presets.AsrCompressPreset`, or the mapping it is read from), so that a bad value
        stops the recipe before its first stage (``section(key)`` is entered while the section ``key`` is
        parsed, as in :class:`kd.recipes.multidomain_stages.MultidomainSetup`)."""
        from kd.analyze.layerwise import AnalyzeConfig
        from kd.core.config import parse_config
        from kd.evaluation.decode import DecodeConfig
        from kd.recipes.presets import AsrCompressPreset

        if not isinstance(preset, AsrCompressPreset):
            preset = parse_config(AsrCompressPreset, preset, "preset")
        device, budgets, keep = preset.device, preset.budgets, preset.decoder_keep
        with section("decode"):
            DecodeConfig.from_dict(preset.decode)
        with section("budgets"):
            if not budgets or min(budgets) < 1 or len(set(budgets)) != len(budgets):
                raise ValueError(f"expected a list of distinct layer counts >= 1, found {list(budgets)}")
            layers = int(preset.teacher.get("model", {}).get("overrides", {}).get("encoder_layers", 0) or 0)
            if layers and max(budgets) >= layers:
                raise ValueError(f"a budget must be below the teacher's {layers} encoder layers, found {list(budgets)}")
        with section("decoder_keep"):
            if not keep or min(keep) < 0:
                raise ValueError(f"expected a list of the teacher's decoder layer indices, found {list(keep)}")
        with section("analysis"):
            analysis = parse_config(AnalyzeConfig, {**preset.analysis, "device": device})
        layer_distill = None
        if preset.layer_distill is not None:
            with section("layer_distill"):
                layer_distill = layer_distill_config(preset.layer_distill)
        shipped = recipe_dir / preset.shipped_teacher if preset.shipped_teacher else None
        setup = cls(out=out, corpus=preset.corpus, domain=preset.domain, teacher=preset.teacher,
                    student=preset.student, budgets=budgets, decoder_keep=keep, seeds=tuple(seeds),
                    decode=preset.decode, analysis=analysis, speed=preset.speed.given(), device=device,
                    shipped=shipped, layer_distill=layer_distill)
        with section("teacher"):
            setup.teacher_config()
        with section("student"):
            for name in setup.students():
                student_config(setup, name, setup.seeds[0])
        return setup

    # -- where things go ---------------------------------------------------------------------------
    def data(self, split: str) -> Path:
        return self.out / "corpus" / self.domain / split

    @property
    def tokens_dir(self) -> Path:
        return self.out / "tokens"

    @property
    def tokens_section(self) -> dict[str, str]:
        return {"kind": "sentencepiece", "path": str(self.tokens_dir / "words.model")}

    @property
    def teacher_run(self) -> Path:
        return self.out / "teacher"

    def teacher_config(self) -> Any:
        from kd.training.config import TrainConfig

        return TrainConfig.from_dict(merge_sections(self.teacher, {
            "data": {"train": [str(self.data("train"))], "dev": str(self.data("dev"))},
            "tokens": self.tokens_section, "seed": 0}))

    def students(self) -> list[str]:
        """Every student's name: ``<budget>/<plan>`` per budget and plan of :data:`PLANS`, and :data:`UNSHARED`."""
        return [f"{b}/{p}" for b in self.budgets for p in PLANS] + [UNSHARED]

    def student_dir(self, name: str) -> Path:  # the student as built from the teacher's layers
        return self.out / "students" / name

    def distill_dir(self, name: str, seed: int) -> Path:  # its layer distillation (kd.ssl.asr_layer_distill)
        return self.out / "layer_distill" / name / f"seed{seed}"

    def finetune_init(self, name: str, seed: int) -> Path:
        """The model dir a fine-tuning run starts from: the distilled student of the same seed, or, without
        layer distillation, the student as built."""
        if self.layer_distill is None:
            return self.student_dir(name)
        from kd.ssl.layer_distill import STUDENT_DIR

        return self.distill_dir(name, seed) / STUDENT_DIR

    def run_dir(self, name: str, seed: int) -> Path:
        return self.out / "runs" / name / f"seed{seed}"

    def cells(self) -> list[tuple[str, int]]:
        return [(name, seed) for name in self.students() for seed in self.seeds]


def layer_distill_config(section: Mapping[str, Any]) -> Any:
    """The preset's ``layer_distill`` section as a :class:`kd.ssl.layer_distill.LayerDistillConfig` (a section
    given in part takes the other fields from LayerDistillConfig's defaults); errors name the field as
    ``layer_distill.<field>``. The seed is each run's (:func:`distill_students`), not the section's."""
    from kd.ssl.config import stage_config
    from kd.ssl.layer_distill import LayerDistillConfig

    if isinstance(section, Mapping) and "seed" in section:
        raise ValueError(f"layer_distill.seed: expected no value (each run takes its student's seed, from seeds or "
                         f"--seeds), found {section['seed']!r}")
    return stage_config(LayerDistillConfig, section, "layer_distill")


def student_config(setup: AsrCompressSetup, name: str, seed: int) -> Any:
    """The fine-tuning run of one student (built by :func:`build_students`, layer-distilled by
    :func:`distill_students` when the preset asks for it) and seed."""
    from kd.training.config import TrainConfig

    section = dict(setup.student)
    student_model = dict(section.pop("model", None) or {})
    if set(student_model) - {"overrides"}:
        raise ValueError(f"student.model: expected only 'overrides' (the architecture is the plan's), "
                         f"found {sorted(student_model)}")
    return TrainConfig.from_dict(merge_sections(section, {
        "data": {"train": [str(setup.data("train"))], "dev": str(setup.data("dev"))},
        "tokens": setup.tokens_section, "seed": seed,
        "model": {"preset": None, "init_from": str(setup.finetune_init(name, seed)),
                  "overrides": dict(student_model.get("overrides") or {})}}))


# -- stages -----------------------------------------------------------------------------------------
def make_corpus(setup: AsrCompressSetup) -> dict[str, Any]:
    """Stage ``corpus``: the built-in corpus; only the audio of the recipe's domain is rendered (the other
    domains' transcripts are written too: the token inventory reads them)."""
    from kd.corpus.domains import SPLITS
    from kd.corpus.synth import build_corpus

    summary = build_corpus(setup.out / "corpus", setup.corpus.preset, seed=setup.corpus.seed,
                           splits=[f"{setup.domain}/{s}" for s in SPLITS])
    return {"hours": summary["hours"], "not_rendered": summary["not_rendered"]}


def make_tokens(setup: AsrCompressSetup) -> dict[str, Any]:
    """Stage ``tokens``: the word inventory of every domain's training transcripts and the task's words,
    the same inventory as the multi-domain recipe's on the same corpus."""
    from kd.corpus.domains import DOMAINS
    from kd.corpus.synth import task_vocabulary
    from kd.recipes.multidomain import write_word_inventory

    # the multi-domain recipe's order (kd.recipes.multidomain_stages.make_tokens): the teacher domains, then the target
    train = [setup.out / "corpus" / d.name / "train" for d in DOMAINS]
    write_word_inventory(train, setup.tokens_dir, task_vocabulary(setup.corpus.preset))
    return {"tokens": len((setup.tokens_dir / "tokens.txt").read_text(encoding="utf-8").splitlines())}


def train_teacher(setup: AsrCompressSetup) -> dict[str, Any]:
    """Stage ``teacher``: restored from the shipped teacher when its fingerprint matches, else trained."""
    from kd.recipes.shipped import restore_for_run

    config, run = setup.teacher_config(), setup.teacher_run
    if restore_for_run(setup.shipped, run, config, setup.tokens_dir / "tokens.txt", "teacher"):
        return {"restored": str(setup.shipped)}
    result = train_run(config, run)
    return {"trained": result.wall_seconds, "steps": result.steps}


def evaluate_teacher(setup: AsrCompressSetup) -> dict[str, Any]:
    """Stage ``teacher-eval``: the teacher on the test set, beam search and CTC greedy."""
    model = setup.teacher_run / "model"
    return {name: evaluate_model(model, setup.data("test"), how, setup.out / "eval" / "teacher" / name,
                                 device=setup.device)
            for name, how in (("beam", setup.decode), ("greedy", GREEDY))}


def analyse_teacher(setup: AsrCompressSetup) -> dict[str, Any]:
    """Stage ``analysis``: ``kd analyze`` of the teacher on its dev set; the least similar pair of layers."""
    from analysis.report import AnalysisReport
    from kd.analyze.layerwise import analyze_model_dir
    from kd.recipes.layerwise import least_similar_layers

    folder = setup.out / "analysis" / "teacher"
    analyze_model_dir(setup.teacher_run / "model", setup.data("dev"), folder, setup.analysis)
    cka = AnalysisReport.load(folder / "report.json").similarity["linear_cka"]
    return {"report": str(folder / "report.json"), **least_similar_layers(cka)}


def _plan(setup: AsrCompressSetup, name: str, report: Path, layers: int) -> Any:
    from kd.plan import CompressionPlan
    from kd.plan.from_report import PlanMethod, plan_from_report

    if name == UNSHARED:
        return CompressionPlan(keep_layers=list(range(layers)), num_teacher_layers=layers)
    budget, plan = name.split("/")
    method = {ANALYSIS: PlanMethod.ANALYSIS, SHARED: PlanMethod.ANALYSIS, "first-k": PlanMethod.FIRST_K,
              "every-k": PlanMethod.EVERY_K, "linspace": PlanMethod.LINSPACE}[plan]
    return plan_from_report(report, budget_layers=int(budget), method=method, share_blocks=plan == SHARED)


def build_students(setup: AsrCompressSetup, analysis: Mapping[str, Any]) -> dict[str, Any]:
    """Stage ``students``: each student built from the teacher's layers by its plan (saved beside it)."""
    from kd.compression import count_parameters
    from kd.compression.asr import asr_student
    from kd.models.model_dir import load_model_dir, save_model_dir
    from kd.plan import CompressionPlan

    teacher, tokenizer = load_model_dir(setup.teacher_run / "model")
    built = {}
    for name in setup.students():
        plan = _plan(setup, name, Path(analysis["report"]), analysis["layers"])
        folder = setup.student_dir(name)
        plan.save(folder.with_suffix(".plan.json"))
        student = asr_student(teacher, plan, CompressionPlan(keep_layers=list(setup.decoder_keep)))
        save_model_dir(student, tokenizer, folder)
        built[name] = {"keep_layers": list(plan.keep_layers),
                       "share_groups": [list(g) for g in plan.share_groups if len(g) > 1],
                       "params": count_parameters(student)}
    return built


def distill_students(setup: AsrCompressSetup, workers: int) -> dict[str, Any]:
    """Stage ``layer-distill``: every (student, seed) distilled layer to layer from the teacher on its training
    data (:func:`kd.ssl.asr_layer_distill.distill_asr_plan`), side by side on ``workers`` processes; nothing
    when the preset has no ``layer_distill`` section."""
    import dataclasses

    from kd.recipes.parallel import Job, run_jobs
    from kd.ssl.asr_layer_distill import distill_asr_plan

    if setup.layer_distill is None:
        return {"runs": 0}

    def job(name: str, seed: int) -> Job:
        plan, out = setup.student_dir(name).with_suffix(".plan.json"), setup.distill_dir(name, seed)
        config = dataclasses.replace(setup.layer_distill, seed=seed)
        return Job(str(out), distill_asr_plan, (setup.teacher_run / "model", plan, [setup.data("train")], out, config),
                   {"student_dir": setup.student_dir(name), "progress": False})

    jobs = [job(name, seed) for name, seed in setup.cells()]
    results = run_jobs(jobs, workers=workers)
    return {"runs": len(jobs), "steps": max(r.steps for r in results),
            "wall_seconds": round(sum(r.seconds for r in results), 1)}


def train_students(setup: AsrCompressSetup, workers: int) -> dict[str, Any]:
    """Stage ``finetune``: every (student, seed) run on the teacher's training data, from the student as built
    or, with layer distillation, from its distilled student of the same seed."""
    from kd.recipes.parallel import Job, run_jobs

    jobs = [Job(str(setup.run_dir(name, seed)), train_run, (student_config(setup, name, seed), setup.run_dir(name, seed)))
            for name, seed in setup.cells()]
    results = run_jobs(jobs, workers=workers)
    return {"runs": len(jobs), "wall_seconds": round(sum(r.wall_seconds for r in results), 1)}


def evaluate_students(setup: AsrCompressSetup, workers: int) -> dict[str, Any]:
    """Stage ``eval``: every student on the test set (beam search and CTC greedy).

    Returns ``{"<student>/seed<s>": {"beam": ..., "greedy": ...}}`` (:func:`kd.recipes.multidomain.evaluate_model`)."""
    runs = {f"{name}/seed{seed}": setup.run_dir(name, seed) for name, seed in setup.cells()}
    return evaluate_runs(runs, setup.data("test"), setup.decode, device=setup.device, workers=workers)


def measure_speed(setup: AsrCompressSetup) -> dict[str, Any]:
    """Stage ``speed``: the encoder latency of the teacher and of each student (seed 0's run: the seeds
    differ in weights, not in architecture)."""
    from kd.bench.speed import bench_speed

    models = {"teacher": setup.teacher_run / "model",
              **{name: setup.run_dir(name, setup.seeds[0]) / "model" for name in setup.students()}}
    return {"rows": bench_speed(list(models.values()), names=list(models), device=setup.device, warmup=1,
                                **setup.speed)}


# -- the table --------------------------------------------------------------------------------------
def compare(a: Mapping[int, Path], b: Mapping[int, Path], *, metric: str, resamples: int = 2000) -> dict[str, Any]:
    """The paired interval of rate(a) - rate(b) (eval folders per seed) and its verdict: ``"a"`` or ``"b"``
    (whose error rate is lower) when the 95% interval excludes 0, else :data:`TIE`."""
    from kd.evaluation.evidence import paired_interval, read_utterance_errors

    interval = paired_interval({s: read_utterance_errors(p, metric) for s, p in a.items()},
                               {s: read_utterance_errors(p, metric) for s, p in b.items()}, resamples=resamples)
    side = "a" if interval.hi < 0 else "b" if interval.lo > 0 else TIE
    return {"metric": metric, "diff": round(interval.diff, 3), "ci95": [round(interval.lo, 3), round(interval.hi, 3)],
            "seeds": interval.seeds, "utterances": interval.utterances, "better": side}


def verdict(better: str, a: str, b: str, premise: str | None = None) -> str:
    """A comparison's verdict from :func:`compare`'s ``better``: the better side, or a tie; "not a test"
    when the comparison's ``premise`` (why it fails) does not hold, whatever the interval says."""
    if premise is not None:
        return f"{NOT_A_TEST} ({premise})"
    return {"a": f"{a} better", "b": f"{b} better", TIE: TIE}[better]


def _comparisons(setup: AsrCompressSetup) -> list[tuple[str, str, str]]:
    """(what is asked, a, b): the analysis plan against each heuristic; shared against the pruned
    student of the same parameters and against the unshared student of the same depth."""
    pairs = []
    for budget in setup.budgets:
        for h in HEURISTICS:
            pairs.append((f"analysis plan vs {h}, {budget} layers", f"{budget}/{ANALYSIS}", f"{budget}/{h}"))
        pairs.append((f"shared (depth of the teacher, {budget} weight sets) vs pruned to {budget} layers",
                      f"{budget}/{SHARED}", f"{budget}/{ANALYSIS}"))
        pairs.append((f"shared ({budget} weight sets) vs unshared, same depth", f"{budget}/{SHARED}", UNSHARED))
    return pairs


def results_table(setup: AsrCompressSetup, done: Mapping[str, Any], *, preset: str,
                  provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The results file: the teacher (error rates, layers, how unlike its layers are), how the students were
    trained (``layer_distill``: None when fine-tuned directly), every student (plan, parameters, error rates
    per seed), the encoder latencies, and each comparison per metric."""
    seeds = list(setup.seeds)
    student_eval, built = done["eval"], done["students"]
    students = []
    for name in setup.students():
        runs = {s: student_eval[f"{name}/seed{s}"] for s in seeds}
        students.append({"name": name, **built[name],
                         **{how: {m: round(statistics.fmean(r[how][m] for r in runs.values()), 2) for m in METRICS}
                            for how in ("beam", "greedy")},
                         "per_seed": {str(s): {m: round(r["beam"][m], 2) for m in METRICS} for s, r in runs.items()}})
    lowest = done["analysis"]["lowest_cka"]
    alike = (None if lowest < LAYERS_DIFFER_BELOW else
             f"the teacher's layers are alike: lowest linear CKA {lowest:.3f}, not below {LAYERS_DIFFER_BELOW}")
    comparisons = []
    for asked, a, b in _comparisons(setup):
        # analysis against a heuristic needs layers that differ; sharing against pruning or no sharing does not
        premise = alike if b.split("/")[-1] in HEURISTICS else None
        for metric in METRICS:
            row = compare({s: setup.run_dir(a, s) / "eval-beam" for s in seeds},
                          {s: setup.run_dir(b, s) / "eval-beam" for s in seeds}, metric=metric)
            row["verdict"] = verdict(row["better"], a, b, premise)
            comparisons.append({"comparison": asked, "a": a, "b": b, **row})
    teacher = done["teacher-eval"]
    ld = setup.layer_distill
    layer_distill = None if ld is None else {"steps": done["layer-distill"]["steps"], "lr": ld.optim.lr,
                                             "cos_weight": ld.cos_weight}
    return {"preset": preset, "seeds": seeds, "domain": setup.domain, "decode": dict(setup.decode),
            "layer_distill": layer_distill,
            "n_test": teacher["beam"]["utterances"],
            "teacher": {"layers": done["analysis"]["layers"], "params": teacher["beam"]["params"],
                        **{how: {m: round(teacher[how][m], 2) for m in METRICS} for how in ("beam", "greedy")},
                        **{k: done["analysis"][k] for k in ("lowest_cka", "lowest_cka_layers", "adjacent_cka_min")},
                        "layers_differ": alike is None},
            "students": students, "speed": done["speed"]["rows"], "comparisons": comparisons,
            "provenance": dict(provenance)}


def _training_line(layer_distill: Mapping[str, Any] | None) -> str:
    """How the students were trained (results files written before layer distillation have no entry: direct)."""
    if layer_distill is None:
        return "Students: the teacher's layers, fine-tuned directly with the hybrid loss (no layer distillation)."
    return (f"Students: the teacher's layers, distilled layer to layer from the teacher ({layer_distill['steps']} "
            f"updates, peak learning rate {layer_distill['lr']:g}, cosine weight {layer_distill['cos_weight']:g}), "
            "then fine-tuned with the hybrid loss.")


def results_markdown(results: Mapping[str, Any]) -> str:
    """The results file as markdown: the teacher, the students, the latencies, the comparisons."""
    t, dec = results["teacher"], results["decode"]
    decoding = (f"beam {dec.get('beam_size')}, CTC weight {dec.get('ctc_weight')}"
                + (f", length bonus {dec['penalty']}" if dec.get("penalty") else ""))
    prov = results["provenance"]
    lines = [f"Preset `{results['preset']}`, {results['domain']} test set ({results['n_test']} utterances), seeds "
             f"{results['seeds']}; {decoding} (CTC greedy beside it). {prov['date']}, commit {prov['commit']}, "
             f"{prov['cpu']}.", "",
             f"Teacher: {t['layers']} encoder layers, {t['params'] / 1e6:.2f}M parameters, WER {t['beam']['wer']:.1f}% / "
             f"CER {t['beam']['cer']:.1f}% (greedy {t['greedy']['wer']:.1f} / {t['greedy']['cer']:.1f}); lowest "
             f"linear CKA between two of its layers {t['lowest_cka']:.3f} (layers {t['lowest_cka_layers']}), "
             f"between neighbours {t['adjacent_cka_min']:.3f}"
             + ("." if t["layers_differ"] else f": its layers are alike (not below {LAYERS_DIFFER_BELOW}), so the "
                "comparisons of the analysis plan with the heuristics are not a test."), "",
             _training_line(results.get("layer_distill")), ""]
    batch = sorted({r["batch_size"] for r in results["speed"]})
    latency = {(r["model"], r["batch_size"]): r["latency_ms"] for r in results["speed"]}
    header = ["student", "teacher layers kept", "shared groups", "params",
              *[f"encoder ms (b={b})" for b in batch], "WER %", "CER %", "greedy WER %", "WER per seed"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append("| teacher | all | | " + f"{t['params'] / 1e6:.2f}M | "
                 + " | ".join(f"{latency[('teacher', b)]:.1f}" for b in batch)
                 + f" | {t['beam']['wer']:.1f} | {t['beam']['cer']:.1f} | {t['greedy']['wer']:.1f} | |")
    for s in results["students"]:
        lines.append("| " + " | ".join([
            s["name"], str(s["keep_layers"]), str(s["share_groups"]) if s["share_groups"] else "",
            f"{s['params'] / 1e6:.2f}M", *[f"{latency[(s['name'], b)]:.1f}" for b in batch],
            f"{s['beam']['wer']:.1f}", f"{s['beam']['cer']:.1f}", f"{s['greedy']['wer']:.1f}",
            " / ".join(f"{v['wer']:.1f}" for v in s["per_seed"].values())]) + " |")
    lines += ["", "Paired differences a - b (points; 95% interval over seeds and test utterances): a verdict names "
              "the better side only where the interval excludes 0.", "",
              "| comparison | a | b | metric | a - b | 95% interval | verdict |", "|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        lines.append(f"| {c['comparison']} | {c['a']} | {c['b']} | {c['metric'].upper()} | {c['diff']:+.2f} | "
                     f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] | {c['verdict']} |")
    return "\n".join(lines) + "\n"


# -- two ways of training the same students -------------------------------------------------------------
def _same(field: str, a: Any, b: Any, a_name: str, b_name: str) -> None:
    if a != b:
        raise ValueError(f"{field} differs: {a!r} in {a_name}, {b!r} in {b_name}; the runs must share the teacher, "
                         "its test set and the students' plans to be compared student by student")


def compare_trainings(a: AsrCompressSetup, b: AsrCompressSetup, a_results: Mapping[str, Any],
                      b_results: Mapping[str, Any], *, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Each student of run ``a`` against the same student of run ``b``: the same teacher, plan and seeds,
    trained another way (for example distilled layer to layer before the fine-tuning in ``a``, fine-tuned
    directly in ``b``). ``a_results`` and ``b_results`` are the runs' results files (:func:`results_table`);
    a ValueError names what differs when the runs do not share the teacher (its error rates and layers),
    the test set, the decoding, the seeds and every student's kept layers and shared groups. The runs compared
    are those of the results files' seeds (``a`` and ``b`` give the run folders).

    Returns ``{"name": "<a>-vs-<b>", "a": {"preset", "layer_distill", "commit"}, "b": ..., "domain", "n_test",
    "seeds", "decode", "teacher": {"beam", "greedy"}, "comparisons": [{"student", "metric", "a", "b", "diff",
    "ci95", "seeds", "utterances", "better", "verdict"}], "provenance"}``: ``a`` and ``b`` in a comparison are
    the mean error rates over seeds, ``diff`` and ``ci95`` the paired difference a - b (:func:`compare`)."""
    an, bn = a_results["preset"], b_results["preset"]
    for field in ("domain", "n_test", "decode", "seeds"):
        _same(field, a_results[field], b_results[field], an, bn)
    for field in ("layers", "params", "beam", "greedy"):
        _same(f"teacher.{field}", a_results["teacher"][field], b_results["teacher"][field], an, bn)
    seeds = a_results["seeds"]  # the seeds whose runs each results file averages (checked the same above)
    b_students = {s["name"]: s for s in b_results["students"]}
    _same("students", [s["name"] for s in a_results["students"]], list(b_students), an, bn)
    comparisons = []
    for student in a_results["students"]:
        name, other = student["name"], b_students[student["name"]]
        for field in ("keep_layers", "share_groups"):
            _same(f"{name}: {field}", student[field], other[field], an, bn)
        for metric in METRICS:
            row = compare({s: a.run_dir(name, s) / "eval-beam" for s in seeds},
                          {s: b.run_dir(name, s) / "eval-beam" for s in seeds}, metric=metric)
            comparisons.append({"student": name, "metric": metric, "a": student["beam"][metric],
                                "b": other["beam"][metric], **row, "verdict": verdict(row["better"], an, bn)})
    return {"name": f"{an}-vs-{bn}",
            **{side: {"preset": r["preset"], "layer_distill": r.get("layer_distill"),
                      "commit": r["provenance"]["commit"]} for side, r in (("a", a_results), ("b", b_results))},
            **{k: a_results[k] for k in ("domain", "n_test", "seeds", "decode")},
            "teacher": {how: a_results["teacher"][how] for how in ("beam", "greedy")},
            "comparisons": comparisons, "provenance": dict(provenance)}


def trainings_markdown(results: Mapping[str, Any]) -> str:
    """:func:`compare_trainings`'s file as markdown: how each side trained, then a row per student and metric,
    then how many students each side wins per metric."""
    a, b, prov, t = results["a"], results["b"], results["provenance"], results["teacher"]
    lines = [f"Each student of `{a['preset']}` (a, results of commit {a['commit']}) against the same student of "
             f"`{b['preset']}` (b, commit {b['commit']}): the same teacher (WER {t['beam']['wer']:.1f}%, CER "
             f"{t['beam']['cer']:.1f}%), plans and seeds {results['seeds']}; {results['domain']} test set "
             f"({results['n_test']} utterances), beam search. Written {prov['date']}, commit {prov['commit']}, "
             f"{prov['cpu']}.", "",
             f"- a: {_training_line(a['layer_distill'])}", f"- b: {_training_line(b['layer_distill'])}", "",
             "Paired differences a - b (points; 95% interval over seeds and test utterances): a verdict names the "
             "better side only where the interval excludes 0.", "",
             "| student | metric | a % | b % | a - b | 95% interval | verdict |", "|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        lines.append(f"| {c['student']} | {c['metric'].upper()} | {c['a']:.1f} | {c['b']:.1f} | {c['diff']:+.2f} | "
                     f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] | {c['verdict']} |")
    lines.append("")
    for metric in METRICS:
        rows = [c for c in results["comparisons"] if c["metric"] == metric]
        count = {side: sum(c["better"] == side for c in rows) for side in ("a", "b", TIE)}
        lines.append(f"{metric.upper()}: `{a['preset']}` better for {count['a']} of {len(rows)} students, "
                     f"`{b['preset']}` better for {count['b']}, tie for {count[TIE]}.")
    return "\n".join(lines) + "\n"
