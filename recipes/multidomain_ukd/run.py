"""Multi-domain uncertainty-matching KD (Kim et al. 2021) on the built-in corpus.

    python recipes/multidomain_ukd/run.py --preset cpu [--stage N] [--stop-stage M] [--seeds 0 1 2]

Stages (each skipped when finished with the same settings; see kd.stages):
  1 corpus     synthesise the built-in corpus (us, uk: teacher domains; target: little data, shifted)
  2 tokens     one character inventory for teachers and students
  3 teachers   train a teacher per teacher domain
  4 teacher-eval  teachers' WER on the target dev/test sets and on their own domain
  5 analysis   layer-wise analysis of each teacher (kd analyze)
  6 students   plans from the analysis; students built from the best teacher's layers
  7 distill    every (size, condition, seed) run on the target domain
  8 eval       students' WER on the target test set (and the teacher domains)
  9 table      mean ± std over seeds: results.json, results.md, printed
 10 conditions  target test error rates by recording condition (noise, reverberation, voice, speaker)
                for the teachers and the first student size: results-conditions.md, .json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kd.analyze import AnalyzeConfig, analyze_model_dir
from kd.compression.asr import asr_student
from kd.corpus.conditions import condition_table, error_by_condition, read_manifest, read_utterances
from kd.corpus.synth import build_corpus
from kd.data.datadir import write_subset
from kd.decode import DecodeConfig
from kd.experiment import (Condition, StudentSize, check_pairs, comparison_table, evaluate_once, merge_sections,
                           results_table, student_train_config, train_run, write_token_list)
from kd.io import atomic_write_text, config_digest, write_json
from kd.model_dir import load_model_dir, save_model_dir
from kd.parallel import Job, run_jobs
from kd.plan import CompressionPlan
from kd.plan_cli import PlanMethod, plan_from_report
from kd.stages import (CORPUS_KEYS, PresetKeys, Stage, add_workers_argument, load_preset, preset_section,
                       preset_seeds, preset_workers, recipe_parser, run_recipe)
from kd.train import train
from kd.training.config import TrainConfig
from kd.training.setup import freeze_parameters

HERE = Path(__file__).resolve().parent
PRESET_KEYS = PresetKeys(
    required=["corpus", "teacher_domains", "target_domain", "teacher", "student", "student_sizes", "conditions",
              "seeds", "decode"],
    optional=["analysis", "comparisons", "device", "relative_to_first", "results_name", "runs_name", "student_freeze",
              "target_train_utterances", "teacher_metric", "test_decode", "test_decode_name", "test_teacher_domains",
              "workers"],
    sections={"corpus": CORPUS_KEYS})


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, HERE / "config.yaml", "multidomain_ukd")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    add_workers_argument(parser, "training runs")
    args = parser.parse_args(argv)
    cfg, out = load_preset(parser, args, PRESET_KEYS)
    seeds = preset_seeds(parser, args, cfg)  # --seeds, else the preset's
    workers = preset_workers(parser, args, cfg)  # how many training runs at once
    corpus = out / "corpus"
    domains, target = cfg["teacher_domains"], cfg["target_domain"]
    tokens = out / "tokens.txt"
    teacher_runs = {d: out / "teachers" / d for d in domains}
    with preset_section(parser, args, "student_sizes"):
        sizes = [StudentSize.from_dict(name, spec) for name, spec in cfg["student_sizes"].items()]
    with preset_section(parser, args, "conditions"):
        conditions = [Condition.from_dict(c) for c in cfg["conditions"]]
    # pairs of conditions [a, b] whose per-seed differences a - b the table stage reports with a
    # confidence interval (kd.experiment.comparison_table): the papers' claims, seed noise removed
    comparisons = cfg.get("comparisons", [])
    with preset_section(parser, args, "comparisons"):
        check_pairs(comparisons, [c.name for c in conditions], what="a condition of this preset")
    # results.md/.json and runs.json; a preset that adds conditions to another preset's output
    # folder (--out) names its own files, e.g. results-plans.md
    tag = cfg.get("results_name", "results")
    runs_file = out / ("runs.json" if tag == "results" else f"{tag}-runs.json")
    # a low-resource target: the students train on a seeded random subset of the target's training
    # set; such a preset names its own run and teacher-cache folders (runs_name), so that it can
    # share another preset's output folder (teachers, analysis, students) without touching its runs
    subset = cfg.get("target_train_utterances")
    runs_root = out / cfg.get("runs_name", "runs")
    cache_root = out / ("teacher_cache" if runs_root.name == "runs" else f"teacher_cache-{runs_root.name}")
    device = cfg.get("device", "cpu")
    # settings used by later stages, built now so that a bad value stops the run before stage 1
    with preset_section(parser, args, "analysis"):
        analyze = AnalyzeConfig(**cfg.get("analysis", {}), device=device)
    for key in ("decode", "test_decode"):
        with preset_section(parser, args, key):
            DecodeConfig.from_dict(cfg.get(key, cfg["decode"]))
    # stage 4 ranks and weights the teachers by their target dev error under `decode`; stage 8 scores
    # the test sets under `test_decode` (default: the same). A preset with another test decoding
    # (e.g. joint CTC/attention beam search, which uses the attention decoder that token-level KD
    # trains) keeps its reports apart: RUN/eval-<name>/, eval/teachers/DOMAIN/test-<name>/
    test_decode = cfg.get("test_decode", cfg["decode"])
    # test sets scored in stage 8: the target's and (test_teacher_domains, default true) the teachers'
    test_teacher_domains = cfg.get("test_teacher_domains", True)
    if not isinstance(test_teacher_domains, bool):
        parser.error(f"test_teacher_domains: expected true or false, found {test_teacher_domains!r}")
    scored = [target, *domains] if test_teacher_domains else [target]
    eval_name = "eval" if test_decode == cfg["decode"] else f"eval-{cfg.get('test_decode_name') or config_digest(test_decode)[:8]}"
    # how teachers are ranked (init teacher) and weighted (dev_wer weighting): "wer", or "cer"
    # where word error rates are saturated (the cpu preset's small teachers are near 100% WER)
    metric = cfg.get("teacher_metric", "wer")
    if metric not in ("wer", "cer"):
        parser.error(f"teacher_metric: expected 'wer' or 'cer', found {metric!r}")

    # parameters that students built from a teacher's layers (init: plan) keep as the teacher trained
    # them, e.g. [espnet.encoder.embed], the convolutional subsampling: 1.4x faster steps on a CPU
    student_freeze = cfg.get("student_freeze", [])
    with preset_section(parser, args, "student_freeze"):
        if not (isinstance(student_freeze, list) and all(isinstance(n, str) and n for n in student_freeze)):
            raise ValueError(f"expected a list of parameter names or prefixes, found {student_freeze!r}")

    def data(domain: str, split: str) -> Path:
        return corpus / domain / split

    def stage_corpus(done):
        summary = build_corpus(corpus, cfg["corpus"]["preset"], seed=cfg["corpus"].get("seed", 0))
        return {"hours": summary.get("hours")}

    def stage_tokens(done):
        write_token_list([data(d, "train") for d in [*domains, target]], tokens)
        return {"tokens": len(tokens.read_text().splitlines())}

    def teacher_config(d: str) -> TrainConfig:
        return TrainConfig.from_dict(merge_sections(cfg["teacher"], {
            "data": {"train": [str(data(d, "train"))], "dev": str(data(d, "dev"))},
            "tokens": {"kind": "list", "path": str(tokens)}}))

    def stage_teachers(done):
        jobs = []
        for d in domains:
            jobs.append(Job(str(teacher_runs[d]), train, (teacher_config(d), teacher_runs[d])))
        trained = run_jobs(jobs, workers=workers)
        return {d: {"steps": r.steps, "best_dev_loss": r.best_dev_loss, "wall_seconds": r.wall_seconds}
                for d, r in zip(domains, trained)}

    def stage_teacher_eval(done):
        results = {}
        for d in domains:
            model = teacher_runs[d] / "model"
            dev = evaluate_once(model, [data(target, "dev")], cfg["decode"], out / "eval/teachers" / d / "target-dev",
                                device=device)
            test = evaluate_once(model, [data(x, "test") for x in [*domains, target]], cfg["decode"],
                                 out / "eval/teachers" / d / "test", device=device)
            results[d] = {"target_dev_wer": dev["overall"]["wer"], "target_dev_cer": dev["overall"]["cer"],
                          "params": test["params"], "rtf": test["rtf"],
                          **{f"{x}_{m}": test["domains"][x][m] for x in [*domains, target] for m in ("wer", "cer")}}
        return results

    def stage_analysis(done):
        for d in domains:
            analyze_model_dir(teacher_runs[d] / "model", data(d, "dev"), out / "analysis" / d, analyze)
        return {d: str(out / "analysis" / d / "report.md") for d in domains}

    # planners whose students some condition starts from ("analysis" always: it is the reference)
    plan_methods = ["analysis", *sorted({c.plan for c in conditions if c.init == "plan"} - {"analysis"})]

    def plan_student(size: StudentSize, method: str) -> Path:
        return out / "students" / size.name / ("init" if method == "analysis" else f"init-{method}")

    def stage_students(done):
        teacher_eval = done["teacher-eval"]
        best = min(domains, key=lambda d: teacher_eval[d][f"target_dev_{metric}"])
        teacher, tokenizer = load_model_dir(teacher_runs[best] / "model")
        built = {"init_teacher": best}
        for size in sizes:
            for method in plan_methods:
                if size.share_encoder and method != "analysis":
                    raise ValueError(f"student size {size.name}: share_encoder needs the analysis plan's blocks of "
                                     f"similar layers; the {method} plan has none (leave such conditions out)")
                plan = plan_from_report(out / "analysis" / best / "report.json", budget_layers=size.encoder_layers,
                                        method=PlanMethod(method), share_blocks=size.share_encoder)
                suffix = "" if method == "analysis" else f"-{method}"
                plan.save(out / "students" / size.name / f"encoder_plan{suffix}.json")
                student = asr_student(teacher, plan, CompressionPlan(keep_layers=list(size.decoder_keep)))
                save_model_dir(student, tokenizer, plan_student(size, method))
                try:  # a name that the student lacks stops the run here, before the distillation
                    freeze_parameters(student, student_freeze)
                except ValueError as e:
                    raise ValueError(f"student_freeze: {e}") from None
                built[size.name + suffix] = {"encoder_layers": list(plan.keep_layers),
                                             "share_groups": plan.share_groups,
                                             "decoder_layers": list(size.decoder_keep)}
        return built

    def teacher_test(domain: str) -> Path:
        folder = "test" if eval_name == "eval" else eval_name.replace("eval", "test", 1)
        return out / "eval/teachers" / domain / folder

    def run_dir(size: StudentSize, condition: Condition, seed: int) -> Path:
        return runs_root / size.name / condition.slug / f"seed{seed}"

    def student_train() -> Path:
        if subset is None:
            return data(target, "train")
        return write_subset(data(target, "train"), corpus / target / f"train-{subset}", subset, seed=0)

    def cell_config(size: StudentSize, condition: Condition, seed: int, train_dir: Path,
                    dev_wers: dict[str, float]) -> TrainConfig:
        return student_train_config(
            cfg["student"], condition, train=[train_dir], dev=data(target, "dev"), tokens=tokens, seed=seed,
            teacher_model=cfg["teacher"]["model"], size=size, plan_student=plan_student(size, condition.plan),
            teacher_runs=teacher_runs, dev_wers=dev_wers, cache_root=cache_root, freeze=student_freeze)

    def stage_distill(done):
        train_dir = student_train()
        dev_wers = {d: done["teacher-eval"][d][f"target_dev_{metric}"] for d in domains}
        jobs = []
        for size in sizes:
            for condition in conditions:
                for seed in seeds:
                    config = cell_config(size, condition, seed, train_dir, dev_wers)
                    jobs.append(Job(str(run_dir(size, condition, seed)), train_run,
                                    (config, run_dir(size, condition, seed))))
        run_jobs(jobs, workers=workers)
        return {"runs": len(jobs)}

    def stage_eval(done):
        test_dirs = [data(x, "test") for x in scored]
        cells = [(size, condition, seed) for size in sizes for condition in conditions for seed in seeds]
        jobs = [Job(str(run_dir(*cell)), evaluate_once,
                    (run_dir(*cell) / "model", test_dirs, test_decode, run_dir(*cell) / eval_name), {"device": device})
                for cell in cells]
        if eval_name != "eval":  # the teachers' test error rates under this preset's decoding too
            jobs += [Job(f"teacher {d}", evaluate_once, (teacher_runs[d] / "model", test_dirs, test_decode,
                                                         teacher_test(d)), {"device": device}) for d in domains]
        reports = run_jobs(jobs, workers=workers if device == "cpu" else 1)
        rates = lambda r: {f"{x}_{m}": r["domains"][x][m] for x in scored for m in ("wer", "cer")}  # noqa: E731
        rows = [{"size": size.name, "condition": condition.name, "seed": seed, "params": r["params"], "rtf": r["rtf"],
                 **rates(r)} for (size, condition, seed), r in zip(cells, reports)]
        write_json(runs_file, rows)
        teachers = {d: {"params": r["params"], "rtf": r["rtf"], **rates(r)} for d, r in zip(domains, reports[len(cells):])}
        return {"rows": len(rows), **({"teachers": teachers} if teachers else {})}

    def stage_table(done):
        rows = json.loads(runs_file.read_text(encoding="utf-8"))
        other = "cer" if metric == "wer" else "wer"
        metrics = [f"{target}_{metric}", f"{target}_{other}", *[f"{d}_{metric}" for d in scored[1:]]]
        summary, table = results_table(rows, group=("size", "condition"), metrics=metrics,
                                       relative_to=conditions[0].name if cfg.get("relative_to_first", True) else None)
        # the teachers' test rates: under the test decoding when it is not stage 4's
        teacher_eval = (done.get("eval") or {}).get("teachers") or done["teacher-eval"]
        lines = ["| teacher | " + " | ".join(f"{m} (%)" for m in metrics) + " | params |",
                 "|---|" + "---|" * (len(metrics) + 1)]
        for d in domains:
            t = teacher_eval[d]
            lines.append(f"| {d} | " + " | ".join(f"{t[m] * 100:.1f}" for m in metrics) + f" | {t['params'] / 1e6:.2f}M |")
        text = (f"Teachers (decode: {test_decode})\n\n" + "\n".join(lines) + "\n\n"
                f"Students on the {target} domain, mean ± std over seeds {seeds}\n\n{table}")
        compared = []
        if comparisons:
            compared, pairs = comparison_table(rows, comparisons, metric=metrics[0])
            one = "; one seed gives no interval: add seeds (--seeds 0 1 2) to tell a difference from noise"
            text += (f"\nPaired differences of {metrics[0]} over seeds {seeds} (a - b, seed by seed; "
                     f"negative: a makes fewer errors{one if len(seeds) < 2 else ''})\n\n{pairs}")
        write_json(out / f"{tag}.json", {"teachers": teacher_eval, "students": summary, "comparisons": compared,
                                         "seeds": seeds})
        atomic_write_text(out / f"{tag}.md", text)
        print(text)
        return {"results": str(out / f"{tag}.md")}

    def stage_conditions(done):
        manifest = read_manifest(corpus)
        target_rows = lambda path: [r for r in read_utterances(path) if r["domain"] == target]  # noqa: E731
        results = {f"teacher {d}": error_by_condition(target_rows(teacher_test(d) / "utterances.jsonl"), manifest)
                   for d in domains}
        size = sizes[0]
        for condition in conditions:  # the seeds' utterances pooled: one corpus-level rate per condition
            rows = [r for seed in seeds for r in target_rows(run_dir(size, condition, seed) / eval_name / "utterances.jsonl")]
            results[f"{size.name} {condition.name}"] = error_by_condition(rows, manifest)
        text = (f"{target} test set by recording condition, {metric.upper()} (%), decode {test_decode}; students of size "
                f"{size.name}, the utterances of seeds {seeds} pooled\n\n" + condition_table(results, metric))
        write_json(out / f"{tag}-conditions.json", results)
        atomic_write_text(out / f"{tag}-conditions.md", text)
        return {"conditions": str(out / f"{tag}-conditions.md")}

    # every training run's settings built now (placeholder teacher dev error rates), so that a bad
    # `teacher` / `student` / `conditions` value stops the run before stage 1, not hours later
    with preset_section(parser, args, "teacher"):
        for d in domains:
            teacher_config(d)
    with preset_section(parser, args, "student / conditions"):
        for size in sizes:
            for condition in conditions:
                cell_config(size, condition, seeds[0], data(target, "train"), {d: 1.0 for d in domains})

    stages = [
        Stage(1, "corpus", stage_corpus, cfg["corpus"], "synthesise the built-in corpus"),
        Stage(2, "tokens", stage_tokens, {"domains": [*domains, target]}, "shared character inventory"),
        Stage(3, "teachers", stage_teachers, cfg["teacher"], f"train teachers on {domains}"),
        Stage(4, "teacher-eval", stage_teacher_eval, {"decode": cfg["decode"], "version": 2}, "teacher WER"),
        Stage(5, "analysis", stage_analysis, cfg.get("analysis", {}), "layer-wise analysis of each teacher"),
        Stage(6, "students", stage_students, {"sizes": cfg["student_sizes"], "teacher_metric": metric,
                                              **({"plans": plan_methods} if len(plan_methods) > 1 else {})},
              "plans and students from the best teacher's layers"),
        Stage(7, "distill", stage_distill, {"student": cfg["student"], "conditions": cfg["conditions"], "seeds": seeds,
                                            "teacher_metric": metric,
                                            **({"runs": runs_root.name} if runs_root.name != "runs" else {}),
                                            **({"target_train_utterances": subset} if subset else {}),
                                            **({"student_freeze": student_freeze} if student_freeze else {})},
              f"{len(sizes) * len(conditions) * len(seeds)} student runs on {target}"),
        Stage(8, "eval", stage_eval, {"decode": test_decode, "seeds": seeds,
                                      **({"eval_name": eval_name} if eval_name != "eval" else {}),
                                      **({"test_sets": scored} if not test_teacher_domains else {})}, "student WER"),
        Stage(9, "table", stage_table, {"seeds": seeds, "teacher_metric": metric,
                                        **({"comparisons": comparisons} if comparisons else {})}, "results table"),
        Stage(10, "conditions", stage_conditions, {"seeds": seeds, "teacher_metric": metric},
              "error rates by recording condition"),
    ]
    run_recipe(stages, out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
