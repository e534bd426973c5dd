"""Analysis-guided compression of a wav2vec 2.0 teacher pre-trained on the built-in corpus.

    python recipes/w2v2_compress/run.py --preset cpu [--stage N] [--stop-stage M]

Stages (each skipped when finished with the same settings; see kd.recipes.stages):
  1 corpus        synthesise the built-in corpus
  2 ssl-pretrain  wav2vec 2.0 pre-training on unlabelled audio (checkpoints kept)
  3 teacher-ctc   CTC fine-tuning of the teacher: its WER is the reference
  4 analysis      kd analyze of the pre-trained teacher
  5 plans         equal-budget plans: analysis-driven, first-k, every-k, linspace; sharing; attention reuse
  6 distill       per plan and seed: student = compress(teacher, plan), then layer-to-layer distillation
  7 student-ctc   CTC fine-tuning of every student
  8 speed         parameters, latency and real-time factor (kd bench speed protocol)
  9 table         results.md / results.json (error rates: mean ± std over the seeds), printed

Seeds (``seeds`` in the preset, or ``--seeds``) vary the student runs: the prediction and CTC
heads' initialisation, batch order and dropout (``seed`` of both trainings); the teacher,
its analysis and the plans are one. Seed 0's runs are in ``students/`` and ``students_ctc/`` (the
layout of a one-seed run), seed s's in ``students-seed<s>/`` and ``students_ctc-seed<s>/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kd.analyze.layerwise import AnalyzeConfig, analyze_model_dir
from kd.bench.speed import bench_speed
from kd.core.config import parse_config
from kd.core.io import atomic_write_text, write_json
from kd.corpus.synth import build_corpus
from kd.recipes.experiment import merge_sections
from kd.recipes.parallel import Job, run_jobs
from kd.recipes.plan_study import PLAN_NAMES, equal_budget_plans, per_seed, plan_study_table, save_plans, with_seed
from kd.recipes.presets import W2v2CompressPreset
from kd.recipes.stages import (Stage, add_workers_argument, load_preset, preset_section, preset_seeds, preset_workers,
                               recipe_parser, run_recipe)
from kd.ssl.config import CTCConfig, SSLConfig
from kd.ssl.finetune import finetune_ctc
from kd.ssl.layer_distill import LayerDistillConfig, distill_plan
from kd.ssl.pretrain import pretrain

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, HERE / "config.yaml", "w2v2_compress")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    add_workers_argument(parser, "plans distilled and fine-tuned")
    args = parser.parse_args(argv)
    preset, written, out = load_preset(parser, args, W2v2CompressPreset)
    workers = preset_workers(parser, args, preset.workers)
    seeds = preset_seeds(parser, args, preset.seeds)
    corpus, domain = out / "corpus", preset.asr_domain
    ssl_data = [corpus / d / "train" for d in preset.ssl_domains]
    # every stage's settings built here, so that a bad value is an error before the first stage;
    # overrides merge into the preset mapping by mapping (an optim override keeps the other optim fields)
    with preset_section(parser, args, "ssl_preset / ssl_overrides"):
        ssl_config = SSLConfig.from_dict(merge_sections(SSLConfig.from_preset(preset.ssl_preset).to_dict(),
                                                        preset.ssl_overrides))
    with preset_section(parser, args, "ctc_preset / ctc_overrides"):
        ctc_config = CTCConfig.from_dict(merge_sections(CTCConfig.from_preset(preset.ctc_preset).to_dict(),
                                                        preset.ctc_overrides))
    with preset_section(parser, args, "student_ctc_overrides"):
        # the students' fine-tuning: the teacher's, with student_ctc_overrides on top (a shorter run)
        student_ctc_config = CTCConfig.from_dict(merge_sections(ctc_config.to_dict(), preset.student_ctc_overrides))
    with preset_section(parser, args, "distill_preset / distill_overrides"):
        distill_config = LayerDistillConfig.from_dict(merge_sections(
            LayerDistillConfig.from_preset(preset.distill_preset).to_dict(), preset.distill_overrides))
    with preset_section(parser, args, "analysis"):
        analyze_config = parse_config(AnalyzeConfig, preset.analysis)
    teacher_dir, k, test = out / "ssl/model", preset.budget_layers, [corpus / domain / "test"]
    runs_dir = lambda kind, seed: out / (kind if seed == 0 else f"{kind}-seed{seed}")  # noqa: E731
    cells = [(seed, name) for seed in seeds for name in PLAN_NAMES]  # seed-major: seed by seed

    def stage_corpus(done):
        build_corpus(corpus, preset.corpus.preset, seed=preset.corpus.seed)

    def stage_pretrain(done):
        r = pretrain(ssl_config, ssl_data, out / "ssl", progress=False)
        return {"steps": r.steps, "seconds": r.seconds, "outcome": r.metrics.get("message")}

    def stage_teacher_ctc(done):
        r = finetune_ctc(teacher_dir, [corpus / domain / "train"], out / "teacher_ctc", ctc_config, eval_dirs=test,
                         progress=False)
        return {"steps": r.steps, "eval": r.metrics}

    def stage_analysis(done):
        analyze_model_dir(teacher_dir, corpus / domain / "dev", out / "analysis", analyze_config)

    def stage_distill(done):
        jobs = [Job(f"{name} seed {seed}", distill_plan,
                    (teacher_dir, out / "plans" / f"{name}.json", ssl_data, runs_dir("students", seed) / name,
                     with_seed(distill_config, seed)), {"progress": False}) for seed, name in cells]
        return per_seed(cells, [{"steps": r.steps, "seconds": r.seconds} for r in run_jobs(jobs, workers=workers)])

    def stage_student_ctc(done):
        jobs = [Job(f"{name} seed {seed}", finetune_ctc,
                    (runs_dir("students", seed) / name / "student", [corpus / domain / "train"],
                     runs_dir("students_ctc", seed) / name, with_seed(student_ctc_config, seed)),
                    {"eval_dirs": test, "progress": False}) for seed, name in cells]
        return per_seed(cells, [{"steps": r.steps, "eval": r.metrics} for r in run_jobs(jobs, workers=workers)])

    def stage_speed(done):  # one seed's students: the seeds differ in weights, not in architecture
        models = [out / "teacher_ctc/model"] + [runs_dir("students_ctc", seeds[0]) / n / "model" for n in PLAN_NAMES]
        rows = bench_speed(models, names=["teacher", *PLAN_NAMES], **preset.speed.given())
        write_json(out / "speed.json", rows)
        return {"rows": len(rows)}

    def stage_table(done):
        report = json.loads((out / "analysis/report.json").read_text(encoding="utf-8"))
        results, text = plan_study_table(
            done["teacher-ctc"]["eval"], done["student-ctc"], done["plans"],
            json.loads((out / "speed.json").read_text(encoding="utf-8")), report["similarity"]["linear_cka"],
            seeds=seeds, budget_layers=k, domain=domain)
        write_json(out / "results.json", results)
        atomic_write_text(out / "results.md", text)
        print(text)

    # the stages' markers record the preset's sections as written (kd.recipes.stages.load_preset)
    stages = [
        Stage(1, "corpus", stage_corpus, written["corpus"], "synthesise the built-in corpus"),
        Stage(2, "ssl-pretrain", stage_pretrain, {"preset": written["ssl_preset"], "domains": written["ssl_domains"],
                                                  "overrides": written.get("ssl_overrides", {})},
              "wav2vec 2.0 pre-training"),
        Stage(3, "teacher-ctc", stage_teacher_ctc, ctc_config.to_dict(), "CTC fine-tuning of the teacher"),
        Stage(4, "analysis", stage_analysis, written["analysis"], "analyse the pre-trained teacher"),
        Stage(5, "plans", lambda done: save_plans(equal_budget_plans(out / "analysis/report.json", k,
                                                                     preset.reuse_threshold), out / "plans"),
              {"budget": k, "reuse": written["reuse_threshold"]}, "equal-budget plans"),
        Stage(6, "distill", stage_distill,
              {"preset": written["distill_preset"], "overrides": written.get("distill_overrides", {}), "seeds": seeds},
              "layer-to-layer distillation"),
        Stage(7, "student-ctc", stage_student_ctc, {**student_ctc_config.to_dict(), "seeds": seeds},
              "CTC fine-tuning of every student"),
        Stage(8, "speed", stage_speed, {**written["speed"], "seed": seeds[0]}, "latency"),
        Stage(9, "table", stage_table, {}, "results table"),
    ]
    run_recipe(stages, out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
