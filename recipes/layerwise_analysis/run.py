"""Layer-wise analysis of speech Transformers on the built-in corpus: the figures of the papers.

    python recipes/layerwise_analysis/run.py --preset cpu [--stage N] [--stop-stage M]

Stages (each skipped when finished with the same settings; see kd.recipes.stages):
  1 corpus        synthesise the built-in corpus
  2 asr-teacher   train an ESPnet hybrid CTC/attention teacher
  3 asr-analysis  kd analyze: CKA/SVCCA/PWCCA, CCA with FBANK/phones/words, attention JSD, probes, MI
  4 ssl-pretrain  wav2vec 2.0 pre-training, keeping checkpoints
  5 ssl-analysis  kd analyze of every pre-training checkpoint
  6 dynamics      pre-training curves; per-layer curves across checkpoints and same-layer CKA against
                  the final model
  7 summary       summary.md: where each property peaks, per model
  8 asr-dynamics  every kept checkpoint of the ESPnet teacher analysed and scored on the dev set; whether
                  the label-free MI bound tracks the phone probe and the WER (rank correlations)
  9 table         results/<preset>.json and .md: the ESPnet teacher's analysis and its tracking table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kd.analyze.compare import compare_models, save_comparison
from kd.analyze.figures import plot_layer_curves, plot_pretraining_curves, report_curves
from kd.analyze.layerwise import AnalyzeConfig, analyze_model_dir
from kd.analyze.summary import peak_layers_markdown
from kd.core.config import parse_config
from kd.core.io import atomic_write_text
from kd.corpus.domains import SPLITS
from kd.corpus.synth import build_corpus
from kd.recipes.experiment import merge_sections, training_differs
from kd.recipes.layerwise import (analyse_run_checkpoints, layerwise_results, layerwise_results_markdown,
                                  tracking_markdown)
from kd.recipes.multidomain_stages import publish_results
from kd.recipes.presets import LayerwiseAnalysisPreset
from kd.recipes.shipped import provenance
from kd.recipes.stages import Stage, load_preset, preset_section, recipe_parser, run_recipe
from kd.ssl.common import list_stage_checkpoints
from kd.ssl.config import SSLConfig
from kd.ssl.pretrain import finished_config, pretrain, same_training
from kd.training.config import TrainConfig
from kd.training.loop import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WATCHED = ["kd", "analysis", "recipes/layerwise_analysis/run.py", "recipes/layerwise_analysis/config.yaml"]
CURVES = {  # report key -> y label
    "cca_phone": "CCA with phones (frame level)",
    "cca_word": "CCA with words (frame level)",
    "cca_fbank": "CCA with FBANK",
    "probe_phone_accuracy": "phone probe accuracy",
    "mi_phone_bits": "MI bound with phones (bits)",
    "mi_cluster_normalized": "label-free MI bound / H(C)",
}


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, HERE / "config.yaml", "layerwise_analysis")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="where the table stage also writes <preset>.json and .md (default: the recipe's results/)")
    args = parser.parse_args(argv)
    preset, written, out = load_preset(parser, args, LayerwiseAnalysisPreset)
    corpus, domain = out / "corpus", preset.asr_domain
    with preset_section(parser, args, "analysis"):
        analysis = parse_config(AnalyzeConfig, preset.analysis)
    with preset_section(parser, args, "ssl_preset"):
        ssl_config = SSLConfig.from_preset(preset.ssl_preset)
    dev = corpus / domain / "dev"

    def stage_corpus(done):  # the audio the stages read: the ASR domain's splits, the SSL domains' training sets
        splits = [f"{domain}/{s}" for s in SPLITS] + [f"{d}/train" for d in preset.ssl_domains]
        build_corpus(corpus, preset.corpus.preset, seed=preset.corpus.seed, splits=splits)

    def stage_asr_teacher(done):
        existing = preset.asr_teacher_run
        if existing and (Path(existing) / "model/config.yaml").is_file():  # a finished run ...
            differs = training_differs(Path(existing) / "config.yaml", preset.asr_teacher)
            if not differs:  # ... with these settings
                return {"run": str(Path(existing).resolve()), "reused": True}
            print(f"asr_teacher_run {existing}: trained with other settings (sections {differs} differ); "
                  "training the teacher here", flush=True)
        section = merge_sections(preset.asr_teacher, {"data": {"train": [str(corpus / domain / "train")],
                                                               "dev": str(dev)}})
        r = train(TrainConfig.from_dict(section), out / "asr_teacher")
        return {"run": str(out / "asr_teacher"), "steps": r.steps, "wall_seconds": r.wall_seconds}

    def stage_asr_analysis(done):
        analyze_model_dir(Path(done["asr-teacher"]["run"]) / "model", dev, out / "analysis/asr_teacher", analysis)

    def stage_ssl_pretrain(done):
        existing = preset.ssl_run
        if existing and (found := finished_config(existing)) is not None:  # a finished pre-training ...
            if same_training(found, ssl_config):  # ... with these settings (checkpointing aside)
                return {"run": str(Path(existing).resolve()), "reused": True}
            theirs = found.to_dict()
            differs = sorted(k for k, v in ssl_config.to_dict().items() if theirs.get(k) != v and k != "checkpoint")
            print(f"ssl_run {existing}: pre-trained with other settings ({differs} differ); "
                  "pre-training the teacher here", flush=True)
        r = pretrain(ssl_config, [corpus / d / "train" for d in preset.ssl_domains],
                     out / "ssl", progress=False)
        return {"run": str(out / "ssl"), "steps": r.steps, "outcome": r.metrics.get("message")}

    def checkpoints(done) -> dict[str, Path]:
        ssl = Path(done["ssl-pretrain"]["run"])
        found = {f"step {step}": path for step, path in list_stage_checkpoints(ssl)}
        found["final"] = ssl / "model"
        return found

    def stage_ssl_analysis(done):
        for label, path in checkpoints(done).items():
            analyze_model_dir(path, dev, out / "analysis/ssl" / label.replace(" ", "-"), analysis)

    def stage_dynamics(done):
        reports = {label: out / "analysis/ssl" / label.replace(" ", "-") / "report.json" for label in checkpoints(done)}
        ssl = Path(done["ssl-pretrain"]["run"])
        saved = SSLConfig.from_dict(json.loads((ssl / "ssl_config.json").read_text(encoding="utf-8")))
        figures = [str(plot_pretraining_curves(ssl / "log.csv", out / "figures/pretraining_curves.png",
                                               codebook_size=saved.codebook_size))]
        for key, ylabel in CURVES.items():
            curves = report_curves(reports, key)
            if curves:
                figures.append(str(plot_layer_curves(curves, out / f"figures/dynamics_{key}.png", ylabel=ylabel,
                                                     title=f"wav2vec 2.0 pre-training: {ylabel}")))
        models = [p for label, p in checkpoints(done).items() if label != "final"]
        comparison = compare_models(models, Path(done["ssl-pretrain"]["run"]) / "model", dev, max_utterances=preset.compare_utterances,
                                    device=analysis.device)
        figures += [str(p) for p in save_comparison(comparison, out / "figures/dynamics_cka",
                                                    labels=[l for l in checkpoints(done) if l != "final"],
                                                    title="same-layer CKA with the final checkpoint")]
        return {"figures": figures}

    def stage_summary(done):
        text = peak_layers_markdown({"ESPnet ASR teacher": out / "analysis/asr_teacher/report.json",
                                     **{f"wav2vec 2.0, {label}": out / "analysis/ssl" / label.replace(" ", "-") /
                                        "report.json" for label in checkpoints(done)}})
        atomic_write_text(out / "summary.md", text)
        print(text)

    def stage_asr_dynamics(done):
        table = analyse_run_checkpoints(done["asr-teacher"]["run"], dev, out / "asr_dynamics", analysis,
                                        title="ESPnet teacher along training")
        atomic_write_text(out / "asr_dynamics.md", tracking_markdown(table))
        return {"tracks_probe": table["bound_vs_probe_over_checkpoints_and_layers"]["tracks"]}  # yes, no, opposite, None

    def stage_table(done):  # the ESPnet teacher's analysis; its tracking table when asr-dynamics has run
        results = layerwise_results(preset=args.preset, teacher_report=out / "analysis/asr_teacher/report.json",
                                    tracking=done.get("asr-dynamics") and json.loads(
                                        (out / "asr_dynamics/tracking.json").read_text(encoding="utf-8")),
                                    provenance=provenance(REPO, WATCHED))
        print(publish_results(results, [out, args.results], to_markdown=layerwise_results_markdown))
        return {"results": str(args.results / f"{args.preset}.md")}

    # the stages' markers record the preset's sections as written (kd.recipes.stages.load_preset)
    stages = [
        Stage(1, "corpus", stage_corpus, written["corpus"], "synthesise the built-in corpus"),
        Stage(2, "asr-teacher", stage_asr_teacher,
              {"train": written["asr_teacher"], "reuse": written.get("asr_teacher_run")},
              "train the ESPnet teacher (or reuse a finished run)"),
        Stage(3, "asr-analysis", stage_asr_analysis, written["analysis"], "analyse the ESPnet teacher"),
        Stage(4, "ssl-pretrain", stage_ssl_pretrain,
              {"preset": written["ssl_preset"], "domains": written["ssl_domains"], "reuse": written.get("ssl_run")},
              "wav2vec 2.0 pre-training (or reuse a finished one)"),
        Stage(5, "ssl-analysis", stage_ssl_analysis, written["analysis"], "analyse every pre-training checkpoint"),
        Stage(6, "dynamics", stage_dynamics, {"compare_utterances": written["compare_utterances"]},
              "learning-dynamics figures"),
        Stage(7, "summary", stage_summary, {}, "summary.md"),
        Stage(8, "asr-dynamics", stage_asr_dynamics, written["analysis"], "the ESPnet teacher along its training"),
        Stage(9, "table", stage_table, {"version": 1}, "results/<preset>.json and .md"),
    ]
    run_recipe(stages, out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
