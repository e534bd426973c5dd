"""Multi-domain uncertainty-matching KD (Kim et al. 2021) on the built-in corpus.

    python recipes/multidomain_ukd/run.py --preset cpu [--stage N] [--stop-stage M] [--seeds 0 1 2]

Stages (each skipped when finished with the same settings; see kd.stages):
  1 corpus        synthesise the built-in corpus (us, uk: teacher domains; target: little data, shifted)
  2 tokens        one token inventory (words or characters) for teachers and students
  3 teachers      a teacher per teacher domain and seed: restored from the recipe's shipped teachers when
                  they were trained on exactly this data and config (kd.shipped), else trained
  4 teacher-eval  teachers on their own test set and the target dev/test sets (beam search and CTC
                  greedy), and whether their uncertainty predicts their own token errors
  5 analysis      layer-wise analysis of each teacher on its dev set (kd analyze)
  6 students      students built from the better teacher's layers by the analysis-driven plan
  7 distill       every (size, condition, seed) run on the target domain
  8 eval          students on the target test set (beam search and CTC greedy)
  9 table         results/<preset>.json and .md: the premise, the students, each claim's interval and verdict
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

from kd.analyze import AnalyzeConfig, analyze_model_dir
from kd.corpus.synth import build_corpus, task_vocabulary
from kd.decode import DecodeConfig
from kd.experiment import (Condition, StudentSize, check_pairs, merge_sections, student_train_config, train_run,
                           write_token_list)
from kd.io import atomic_write_text, write_json
from kd.multidomain import (GREEDY, Claim, check_results, claims_table, evaluate_model, results_markdown,
                            teacher_uncertainty, write_word_inventory)
from kd.parallel import Job, run_jobs
from kd.shipped import restore, run_fingerprint
from kd.stages import (CORPUS_KEYS, PresetKeys, Stage, add_workers_argument, load_preset, preset_section,
                       preset_seeds, preset_workers, recipe_parser, run_recipe)
from kd.training.config import TrainConfig

HERE = Path(__file__).resolve().parent
PRESET_KEYS = PresetKeys(
    required=["corpus", "tokens", "teacher_domains", "target_domain", "teacher", "student", "student_sizes",
              "conditions", "claims", "seeds", "decode"],
    optional=["analysis", "device", "shipped_teachers", "student_freeze", "workers"],
    sections={"corpus": CORPUS_KEYS})


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, HERE / "config.yaml", "multidomain_ukd")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="where the table stage also writes <preset>.json and .md (default: the recipe's results/)")
    parser.add_argument("--ship-teachers", action="store_true",
                        help="after the stages, copy the seed-0 teachers (trained, not restored) into the recipe's "
                             "teachers/ folder with their provenance, for presets that restore them")
    add_workers_argument(parser, "training runs")
    args = parser.parse_args(argv)
    cfg, out = load_preset(parser, args, PRESET_KEYS)
    seeds, workers = preset_seeds(parser, args, cfg), preset_workers(parser, args, cfg)
    corpus, domains, target = out / "corpus", cfg["teacher_domains"], cfg["target_domain"]
    device, decode = cfg.get("device", "cpu"), cfg["decode"]
    with preset_section(parser, args, "tokens"):
        if cfg["tokens"] not in ("words", "chars"):
            raise ValueError(f"expected 'words' or 'chars', found {cfg['tokens']!r}")
    with preset_section(parser, args, "decode"):
        DecodeConfig.from_dict(decode)
    tokens_dir = out / "tokens"
    tokens = ({"kind": "sentencepiece", "path": str(tokens_dir / "words.model")} if cfg["tokens"] == "words"
              else {"kind": "list", "path": str(tokens_dir / "tokens.txt")})
    with preset_section(parser, args, "student_sizes"):
        sizes = [StudentSize.from_dict(name, spec) for name, spec in cfg["student_sizes"].items()]
    with preset_section(parser, args, "conditions"):
        conditions = [Condition.from_dict(c) for c in cfg["conditions"]]
    with preset_section(parser, args, "claims"):
        claims = [Claim.from_dict(c) for c in cfg["claims"]]
        names = [c.name for c in conditions]
        for claim in claims:  # {best} may stand for either teacher
            for d in domains:
                r = claim.resolve(d)
                check_pairs([[r.a, r.b]] + ([[r.premise, r.premise]] if r.premise else []), names,
                            what="a condition of this preset")
    with preset_section(parser, args, "analysis"):
        analyze = AnalyzeConfig(**cfg.get("analysis", {}), device=device)
    shipped = HERE / cfg["shipped_teachers"] if cfg.get("shipped_teachers") else None
    freeze = cfg.get("student_freeze", [])
    with preset_section(parser, args, "student_freeze"):
        if not (isinstance(freeze, list) and all(isinstance(n, str) and n for n in freeze)):
            raise ValueError(f"expected a list of parameter names or prefixes, found {freeze!r}")

    data = lambda domain, split: corpus / domain / split  # noqa: E731
    teacher_run = lambda seed, d: out / "teachers" / f"seed{seed}" / d  # noqa: E731
    teacher_eval = lambda seed, d, name: out / "eval" / "teachers" / f"seed{seed}" / d / name  # noqa: E731
    run_dir = lambda size, c, seed: out / "runs" / size.name / c.slug / f"seed{seed}"  # noqa: E731
    plan_student = lambda seed, size: out / "students" / f"seed{seed}" / size.name  # noqa: E731

    def teacher_config(d: str, seed: int) -> TrainConfig:
        return TrainConfig.from_dict(merge_sections(cfg["teacher"], {
            "data": {"train": [str(data(d, "train"))], "dev": str(data(d, "dev"))}, "tokens": tokens, "seed": seed}))

    def stage_corpus(done):
        return {"hours": build_corpus(corpus, cfg["corpus"]["preset"], seed=cfg["corpus"].get("seed", 0))["hours"]}

    def stage_tokens(done):
        train = [data(d, "train") for d in [*domains, target]]
        if cfg["tokens"] == "words":
            write_word_inventory(train, tokens_dir, task_vocabulary(cfg["corpus"]["preset"]))
        else:
            write_token_list(train, tokens_dir / "tokens.txt")
        return {"tokens": len((tokens_dir / "tokens.txt").read_text().splitlines())}

    def stage_teachers(done):
        jobs, restored = [], {}
        for seed in seeds:
            for d in domains:
                config = teacher_config(d, seed)
                # shipped teachers are seed 0's; a run that finished here is kept
                if shipped is not None and seed == 0 and not (teacher_run(seed, d) / ".done.json").is_file():
                    reason = restore(shipped / d, teacher_run(seed, d) / "model",
                                     run_fingerprint(config, tokens_dir / "tokens.txt"))
                    if reason is None:
                        restored[f"seed{seed}/{d}"] = str(shipped / d)
                        continue
                    print(f"teacher {d}, seed {seed}: training ({reason})", file=sys.stderr)
                jobs.append(Job(str(teacher_run(seed, d)), train_run, (config, teacher_run(seed, d))))
        trained = run_jobs(jobs, workers=workers)
        return {"restored": restored, "trained": {j.label: r.wall_seconds for j, r in zip(jobs, trained)}}

    def stage_teacher_eval(done):
        jobs = []
        for seed in seeds:
            for d in domains:
                model = teacher_run(seed, d) / "model"
                for test in (d, target):
                    for name, how in (("beam", decode), ("greedy", GREEDY)):
                        jobs.append(Job(f"{d} on {test}", evaluate_model, (model, data(test, "test"), how,
                                        teacher_eval(seed, d, f"{test}-test-{name}")), {"device": device}))
                jobs.append(Job(f"{d} on {target} dev", evaluate_model, (model, data(target, "dev"), decode,
                                teacher_eval(seed, d, f"{target}-dev-beam")), {"device": device}))
        reports = iter(run_jobs(jobs, workers=workers if device == "cpu" else 1))
        result = {}
        for seed in seeds:
            for d in domains:
                r = {f"{test}_test_{name}": next(reports) for test in ("own", "target") for name in ("beam", "greedy")}
                r["target_dev_beam"] = next(reports)
                result[f"seed{seed}/{d}"] = r
            unc = teacher_uncertainty({d: teacher_run(seed, d) / "model" for d in domains},
                                      {d: data(d, "dev") for d in domains}, data(target, "dev"),
                                      out / "eval" / "teachers" / f"seed{seed}" / "uncertainty.json")
            result[f"seed{seed}/uncertainty"] = unc
            # the better teacher: the lower target dev WER under the headline decoding
            result[f"seed{seed}/best"] = min(domains, key=lambda d: result[f"seed{seed}/{d}"]["target_dev_beam"]["wer"])
        return result

    def stage_analysis(done):
        for seed in seeds:
            for d in domains:
                analyze_model_dir(teacher_run(seed, d) / "model", data(d, "dev"), out / "analysis" / f"seed{seed}" / d,
                                  analyze)
        return {"analysed": [f"seed{s}/{d}" for s in seeds for d in domains]}

    def stage_students(done):
        from kd.compression.asr import asr_student
        from kd.model_dir import load_model_dir, save_model_dir
        from kd.plan import CompressionPlan
        from kd.plan_cli import plan_from_report

        built = {}
        for seed in seeds:
            best = done["teacher-eval"][f"seed{seed}/best"]
            teacher, tokenizer = load_model_dir(teacher_run(seed, best) / "model")
            for size in sizes:
                plan = plan_from_report(out / "analysis" / f"seed{seed}" / best / "report.json",
                                        budget_layers=size.encoder_layers, share_blocks=size.share_encoder)
                plan.save(plan_student(seed, size).with_suffix(".plan.json"))
                student = asr_student(teacher, plan, CompressionPlan(keep_layers=list(size.decoder_keep)))
                save_model_dir(student, tokenizer, plan_student(seed, size))
                built[f"seed{seed}/{size.name}"] = {"teacher": best, "encoder_layers": list(plan.keep_layers),
                                                    "share_groups": plan.share_groups}
        return built

    def cell_config(size, condition, seed, done) -> TrainConfig:
        teacher_eval_result = done["teacher-eval"] if done else None
        dev_wers = ({d: teacher_eval_result[f"seed{seed}/{d}"]["target_dev_beam"]["wer"] / 100.0 for d in domains}
                    if teacher_eval_result else {d: 1.0 for d in domains})
        return student_train_config(
            cfg["student"], condition, train=[data(target, "train")], dev=data(target, "dev"), tokens=tokens,
            seed=seed, teacher_model=cfg["teacher"]["model"], size=size, plan_student=plan_student(seed, size),
            teacher_runs={d: teacher_run(seed, d) / "model" for d in domains}, dev_wers=dev_wers,
            cache_root=out / "teacher_cache" / f"seed{seed}", freeze=freeze, teacher_weights="model.safetensors")

    def stage_distill(done):
        jobs = [Job(str(run_dir(size, c, seed)), train_run, (cell_config(size, c, seed, done), run_dir(size, c, seed)))
                for size in sizes for c in conditions for seed in seeds]
        run_jobs(jobs, workers=workers)
        return {"runs": len(jobs)}

    def stage_eval(done):
        cells = [(size, c, seed) for size in sizes for c in conditions for seed in seeds]
        jobs = [Job(f"{run_dir(*cell)} {name}", evaluate_model, (run_dir(*cell) / "model", data(target, "test"), how,
                                                                run_dir(*cell) / f"eval-{name}"), {"device": device})
                for cell in cells for name, how in (("beam", decode), ("greedy", GREEDY))]
        reports = iter(run_jobs(jobs, workers=workers if device == "cpu" else 1))
        return {f"{size.name}/{c.name}/seed{seed}": {name: next(reports) for name in ("beam", "greedy")}
                for size, c, seed in cells}

    def stage_table(done):
        te, ev = done["teacher-eval"], done["eval"]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        teachers = {}
        for d in domains:
            rows = [te[f"seed{s}/{d}"] for s in seeds]
            unc = [te[f"seed{s}/uncertainty"]["teachers"][d] for s in seeds]
            pick = lambda key, m: round(mean([r[key][m] for r in rows]), 2)  # noqa: E731
            teachers[d] = {"own_test": {m: pick("own_test_beam", m) for m in ("wer", "cer")},
                           "target_test": {m: pick("target_test_beam", m) for m in ("wer", "cer")},
                           "own_test_greedy": {m: pick("own_test_greedy", m) for m in ("wer", "cer")},
                           "target_test_greedy": {m: pick("target_test_greedy", m) for m in ("wer", "cer")},
                           "target_dev": {m: pick("target_dev_beam", m) for m in ("wer", "cer")},
                           "uncertainty_auroc": {p: round(mean([u[p]["auroc"] for u in unc]), 4)
                                                 for p in ("own_dev", "target_dev")},
                           "posterior_auroc": {p: round(mean([u[p]["auroc_posterior"] for u in unc]), 4)
                                               for p in ("own_dev", "target_dev")},
                           "uncertainty": unc, "params": rows[0]["own_test_beam"]["params"]}
        students = [{"size": size.name, "condition": c.name, "seed": seed,
                     "target_test": {m: round(ev[f"{size.name}/{c.name}/seed{seed}"]["beam"][m], 2) for m in ("wer", "cer")},
                     "target_test_greedy": {m: round(ev[f"{size.name}/{c.name}/seed{seed}"]["greedy"][m], 2)
                                            for m in ("wer", "cer")},
                     "params": ev[f"{size.name}/{c.name}/seed{seed}"]["beam"]["params"]}
                    for size in sizes for c in conditions for seed in seeds]
        best = {s: te[f"seed{s}/best"] for s in seeds}
        student_dirs = {(size.name, c.name, seed): run_dir(size, c, seed) / "eval-beam"
                        for size in sizes for c in conditions for seed in seeds}
        teacher_dirs = {s: teacher_eval(s, best[s], f"{target}-test-beam") for s in seeds}
        claimed = [row for size in sizes for metric in ("wer", "cer")
                   for row in claims_table(claims, students=student_dirs, teachers=teacher_dirs, best=best,
                                           size=size.name, metric=metric, domain=target)]
        n_test = {d: te[f"seed{seeds[0]}/{d}"]["own_test_beam"]["utterances"] for d in domains}
        n_test[target] = te[f"seed{seeds[0]}/{domains[0]}"]["target_test_beam"]["utterances"]
        results = {"preset": args.preset, "seeds": seeds, "decode": dict(decode), "n_test": n_test,
                   "teachers": teachers, "better_teacher": best, "students": students, "claims": claimed,
                   "uncertainty": {"target_dev_variance_correlation": {
                       k: round(mean([te[f"seed{s}/uncertainty"]["target_dev_variance_correlation"][k] for s in seeds]), 4)
                       for k in te[f"seed{seeds[0]}/uncertainty"]["target_dev_variance_correlation"]}},
                   "provenance": _provenance()}
        check_results(results)
        text = results_markdown(results)
        for folder in (out, args.results):
            write_json(folder / f"{args.preset}.json", results)
            atomic_write_text(folder / f"{args.preset}.md", text)
        print(text)
        return {"results": str(args.results / f"{args.preset}.md")}

    # every run's settings built now, so that a bad preset value stops the run before stage 1
    with preset_section(parser, args, "teacher"):
        for d in domains:
            teacher_config(d, seeds[0])
    with preset_section(parser, args, "student / conditions"):
        for size in sizes:
            for c in conditions:
                cell_config(size, c, seeds[0], None)

    stages = [
        Stage(1, "corpus", stage_corpus, cfg["corpus"], "synthesise the built-in corpus"),
        Stage(2, "tokens", stage_tokens, {"domains": [*domains, target], "tokens": cfg["tokens"]}, "token inventory"),
        Stage(3, "teachers", stage_teachers, {"teacher": cfg["teacher"], "seeds": seeds, "shipped": str(shipped)},
              f"teachers on {domains}"),
        Stage(4, "teacher-eval", stage_teacher_eval, {"decode": decode, "seeds": seeds}, "teachers' error rates"),
        Stage(5, "analysis", stage_analysis, {"analysis": cfg.get("analysis", {}), "seeds": seeds},
              "layer-wise analysis of each teacher"),
        Stage(6, "students", stage_students, {"sizes": cfg["student_sizes"], "seeds": seeds},
              "students from the better teacher's layers"),
        Stage(7, "distill", stage_distill, {"student": cfg["student"], "conditions": cfg["conditions"], "seeds": seeds,
                                            "freeze": freeze}, f"{len(sizes) * len(conditions) * len(seeds)} student runs"),
        Stage(8, "eval", stage_eval, {"decode": decode, "seeds": seeds}, "students' error rates"),
        Stage(9, "table", stage_table, {"seeds": seeds, "claims": cfg["claims"], "version": 1}, "results and claims"),
    ]
    run_recipe(stages, out, args)
    if args.ship_teachers:
        ship_teachers([teacher_run(0, d) for d in domains], tokens_dir / "tokens.txt", HERE / "teachers",
                      command=f"python recipes/multidomain_ukd/run.py --preset {args.preset} --seeds 0 --stop-stage 3 "
                              "--ship-teachers")
    return 0


def ship_teachers(runs: list[Path], tokens: Path, target: Path, *, command: str) -> None:
    """Copy finished teacher runs' model dirs to ``target/<domain>`` with their fingerprint and provenance."""
    import json

    from kd.shipped import ship

    for run in runs:
        if not (run / "result.json").is_file():
            raise SystemExit(f"--ship-teachers: {run} is not a finished training run (restored teachers are not shipped)")
        config = TrainConfig.from_yaml(run / "config.yaml")
        wall = json.loads((run / "result.json").read_text())["wall_seconds"]
        ship(run / "model", target / run.name, command=command, trained={**_provenance(), "wall_seconds": wall},
             fingerprint=run_fingerprint(config, tokens))
        print(f"shipped {run} to {target / run.name}")


def _provenance() -> dict[str, str]:
    """Date, machine and commit of a results file."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kd", "recipes/multidomain_ukd/run.py",
                                "recipes/multidomain_ukd/config.yaml"], cwd=HERE.parents[1], capture_output=True,
                               text=True, check=True).stdout.strip()
        commit += "+changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import os

    from kd.shipped import cpu_model

    return {"date": datetime.date.today().isoformat(), "commit": commit, "cpu": cpu_model(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}


if __name__ == "__main__":
    sys.exit(main())
