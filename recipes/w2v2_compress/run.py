"""Analysis-guided compression of a wav2vec 2.0 teacher pre-trained on the built-in corpus.

    python recipes/w2v2_compress/run.py --preset cpu [--stage N] [--stop-stage M]

Stages (each skipped when finished with the same settings; see kd.stages):
  1 corpus        synthesise the built-in corpus
  2 ssl-pretrain  wav2vec 2.0 pre-training on unlabelled audio (checkpoints kept)
  3 teacher-ctc   CTC fine-tuning of the teacher: its WER is the reference
  4 analysis      kd analyze of the pre-trained teacher
  5 plans         equal-budget plans: analysis-driven, first-k, every-k, linspace; sharing; attention reuse
  6 distill       per plan: student = compress(teacher, plan), then layer-to-layer distillation
  7 student-ctc   CTC fine-tuning of every student
  8 speed         parameters, latency and real-time factor (kd bench speed protocol)
  9 table         results.md / results.json, printed
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from kd.analyze import AnalyzeConfig, analyze_model_dir
from kd.bench_speed import bench_speed
from kd.corpus.synth import build_corpus
from kd.experiment import merge_sections
from kd.io import atomic_write_text, write_json
from kd.layer_distill import LayerDistillConfig, distill_plan
from kd.parallel import Job, run_jobs
from kd.plan_cli import PlanMethod, plan_from_report
from kd.ssl.config import CTCConfig, SSLConfig
from kd.ssl.finetune import finetune_ctc
from kd.ssl.pretrain import pretrain
from kd.stages import Stage, add_workers_argument, load_preset, preset_workers, recipe_parser, run_recipe

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, HERE / "config.yaml", "w2v2_compress")
    add_workers_argument(parser, "plans distilled and fine-tuned")
    args = parser.parse_args(argv)
    cfg, out = load_preset(parser, args)
    workers = preset_workers(parser, args, cfg)
    corpus, domain = out / "corpus", cfg["asr_domain"]
    ssl_data = [corpus / d / "train" for d in cfg["ssl_domains"]]
    # overrides merge into the preset mapping by mapping (an optim override keeps the other optim fields)
    ctc_config = CTCConfig.from_dict(merge_sections(CTCConfig.from_preset(cfg["ctc_preset"]).to_dict(),
                                                    cfg.get("ctc_overrides", {})))
    # the students' fine-tuning: the teacher's, with student_ctc_overrides on top (a shorter run)
    student_ctc_config = CTCConfig.from_dict(merge_sections(ctc_config.to_dict(), cfg.get("student_ctc_overrides", {})))
    teacher_dir = out / "ssl/model"
    k = cfg["budget_layers"]
    plan_names = ["analysis", "first-k", "every-k", "linspace", "analysis-shared", "attention-reuse"]

    def stage_corpus(done):
        build_corpus(corpus, cfg["corpus"]["preset"], seed=cfg["corpus"].get("seed", 0))

    def stage_pretrain(done):
        r = pretrain(SSLConfig.from_preset(cfg["ssl_preset"], **cfg.get("ssl_overrides", {})), ssl_data, out / "ssl",
                     progress=False)
        return {"steps": r.steps, "seconds": r.seconds}

    def stage_teacher_ctc(done):
        r = finetune_ctc(teacher_dir, [corpus / domain / "train"], out / "teacher_ctc", ctc_config,
                         eval_dirs=[corpus / domain / "test"], progress=False)
        return {"steps": r.steps, "eval": r.metrics}

    def stage_analysis(done):
        analyze_model_dir(teacher_dir, corpus / domain / "dev", out / "analysis", AnalyzeConfig(**cfg["analysis"]))

    def stage_plans(done):
        report = out / "analysis/report.json"
        num_layers = json.loads(report.read_text(encoding="utf-8"))["num_layers"] - 1
        plans = {
            "analysis": plan_from_report(report, budget_layers=k, method=PlanMethod.ANALYSIS),
            "first-k": plan_from_report(report, budget_layers=k, method=PlanMethod.FIRST_K),
            "every-k": plan_from_report(report, budget_layers=k, method=PlanMethod.EVERY_K),
            "linspace": plan_from_report(report, budget_layers=k, method=PlanMethod.LINSPACE),
            "analysis-shared": plan_from_report(report, budget_layers=k, method=PlanMethod.ANALYSIS,
                                                share_blocks=True),
            # every layer kept; followers reuse the attention of an earlier layer whose JSD is small
            "attention-reuse": plan_from_report(report, budget_layers=num_layers, method=PlanMethod.ANALYSIS,
                                                reuse_threshold=cfg["reuse_threshold"]),
        }
        for name, plan in plans.items():
            plan.save(out / "plans" / f"{name}.json")
        return {name: plan.to_dict() for name, plan in plans.items()}

    def stage_distill(done):
        config = LayerDistillConfig.from_dict(merge_sections(
            LayerDistillConfig.from_preset(cfg["distill_preset"]).to_dict(), cfg.get("distill_overrides", {})))
        jobs = [Job(name, distill_plan, (teacher_dir, out / "plans" / f"{name}.json", ssl_data, out / "students" / name,
                                         config), {"progress": False}) for name in plan_names]
        return {name: {"steps": r.steps, "seconds": r.seconds}
                for name, r in zip(plan_names, run_jobs(jobs, workers=workers))}

    def stage_student_ctc(done):
        jobs = [Job(name, finetune_ctc, (out / "students" / name / "student", [corpus / domain / "train"],
                                         out / "students_ctc" / name, student_ctc_config),
                    {"eval_dirs": [corpus / domain / "test"], "progress": False}) for name in plan_names]
        return {name: {"steps": r.steps, "eval": r.metrics}
                for name, r in zip(plan_names, run_jobs(jobs, workers=workers))}

    def stage_speed(done):
        models = [out / "teacher_ctc/model"] + [out / "students_ctc" / n / "model" for n in plan_names]
        rows = bench_speed(models, names=["teacher", *plan_names], **cfg["speed"])
        write_json(out / "speed.json", rows)
        return {"rows": len(rows)}

    def stage_table(done):
        speed = json.loads((out / "speed.json").read_text(encoding="utf-8"))
        batch_sizes = sorted({r["batch_size"] for r in speed})
        wer = {"teacher": done["teacher-ctc"]["eval"], **{n: done["student-ctc"][n]["eval"] for n in plan_names}}
        plans = done["plans"]
        header = ["model", "teacher layers kept", "shared / reuse groups", "params",
                  *[f"latency b={b} (ms)" for b in batch_sizes], f"{domain} test WER (%)", "CER (%)"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in ["teacher", *plan_names]:
            rows = {r["batch_size"]: r for r in speed if r["model"] == name}
            scores = next(iter(wer[name].values()))
            plan = plans.get(name, {})
            groups = [g for g in plan.get("share_groups", []) + plan.get("attention_reuse", []) if len(g) > 1]
            lines.append("| " + " | ".join([
                name, str(plan.get("keep_layers", "all")), str(groups) if groups else "",
                f"{rows[batch_sizes[0]]['parameters'] / 1e6:.2f}M",
                *[f"{rows[b]['latency_ms']:.1f}" for b in batch_sizes],
                f"{scores['wer'] * 100:.1f}", f"{scores['cer'] * 100:.1f}"]) + " |")
        device = speed[0]["device"]
        text = (f"wav2vec 2.0 teacher and students of {k} layers (speed on {device})\n\n" + "\n".join(lines) + "\n")
        write_json(out / "results.json", {"wer": wer, "speed": speed, "plans": plans})
        atomic_write_text(out / "results.md", text)
        print(text)

    stages = [
        Stage(1, "corpus", stage_corpus, cfg["corpus"], "synthesise the built-in corpus"),
        Stage(2, "ssl-pretrain", stage_pretrain, {"preset": cfg["ssl_preset"], "domains": cfg["ssl_domains"],
                                                  "overrides": cfg.get("ssl_overrides", {})},
              "wav2vec 2.0 pre-training"),
        Stage(3, "teacher-ctc", stage_teacher_ctc, ctc_config.to_dict(), "CTC fine-tuning of the teacher"),
        Stage(4, "analysis", stage_analysis, cfg["analysis"], "analyse the pre-trained teacher"),
        Stage(5, "plans", stage_plans, {"budget": k, "reuse": cfg["reuse_threshold"]}, "equal-budget plans"),
        Stage(6, "distill", stage_distill, {"preset": cfg["distill_preset"], "overrides": cfg.get("distill_overrides", {})},
              "layer-to-layer distillation"),
        Stage(7, "student-ctc", stage_student_ctc, student_ctc_config.to_dict(), "CTC fine-tuning of every student"),
        Stage(8, "speed", stage_speed, cfg["speed"], "latency"),
        Stage(9, "table", stage_table, {}, "results table"),
    ]
    run_recipe(stages, out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
