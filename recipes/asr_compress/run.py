"""Compression plans of a deep ESPnet teacher compared at an equal budget, on the built-in corpus.

    python recipes/asr_compress/run.py --preset cpu [--stage N] [--stop-stage M] [--seeds 0 1 2]
    python recipes/asr_compress/run.py --preset cpu_postln_ld --against cpu_postln [--against-out DIR]

Stages (each skipped when finished with the same settings; see kd.recipes.stages; the stage logic is
kd.recipes.asr_compress):
  1 corpus        synthesise the built-in corpus
  2 tokens        the word inventory (the multi-domain recipe's)
  3 teacher       restored from the recipe's shipped teacher when it was trained on exactly this data and
                  config (kd.recipes.shipped), else trained
  4 teacher-eval  the teacher on its domain's test set (beam search and CTC greedy)
  5 analysis      kd analyze of the teacher on its dev set (linear CKA between its layers, ...)
  6 students      per budget: the analysis-driven plan, first-k, every-k, linspace and the shared student;
                  and every layer unshared; each built from the teacher's layers
  7 layer-distill with a layer_distill section: every (student, seed) distilled layer to layer from the
                  teacher on its training data (kd.ssl.asr_layer_distill); without one, nothing
  8 finetune      every (student, seed) run on the teacher's training data, from the distilled student of
                  the same seed when there is one
  9 eval          students on the test set (beam search and CTC greedy)
 10 speed         encoder latency of the teacher and each student
 11 table         results/<preset>.json and .md: students, latencies, each comparison's interval and verdict

With --against OTHER, no stage runs: each student of this preset's finished run is compared with the same
student of OTHER's finished run (the same teacher, plans and seeds, trained another way, for example
without layer distillation), into results/<preset>-vs-<OTHER>.json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kd.recipes.asr_compress import (AsrCompressSetup, analyse_teacher, build_students, compare_trainings,
                                     distill_students, evaluate_students, evaluate_teacher, make_corpus, make_tokens,
                                     measure_speed, results_markdown, results_table, train_students, train_teacher,
                                     trainings_markdown)
from kd.recipes.multidomain_stages import publish_results
from kd.recipes.presets import AsrCompressPreset
from kd.recipes.shipped import provenance, ship_run
from kd.recipes.stages import (Stage, add_workers_argument, load_preset, preset_section, preset_seeds, preset_workers,
                               recipe_parser, run_recipe)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WATCHED = ["kd", "recipes/asr_compress/run.py", "recipes/asr_compress/config.yaml"]  # a change: "+changes"


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, HERE / "config.yaml", "asr_compress")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's students' seeds")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="where the table stage also writes <preset>.json and .md (default: the recipe's results/)")
    parser.add_argument("--ship-teacher", action="store_true",
                        help="after the stages, copy the teacher (trained, not restored) into the recipe's teacher/ "
                             "folder with its provenance")
    parser.add_argument("--against", default=None, metavar="OTHER",
                        help="instead of running stages: compare each student with the same student of preset OTHER's "
                             "finished run, into results/<preset>-vs-<OTHER>.json and .md")
    parser.add_argument("--against-out", type=Path, default=None, metavar="DIR",
                        help="OTHER's output folder (default: exp/asr_compress/OTHER)")
    add_workers_argument(parser, "training runs")
    args = parser.parse_args(argv)
    preset, written, out = load_preset(parser, args, AsrCompressPreset)
    seeds, workers = preset_seeds(parser, args, preset.seeds), preset_workers(parser, args, preset.workers)
    setup = AsrCompressSetup.from_preset(preset, out, seeds=seeds, recipe_dir=HERE,
                                        section=lambda key: preset_section(parser, args, key))

    if args.against is not None:
        return against(parser, args, setup, out)

    def table(done):
        results = results_table(setup, done, preset=args.preset, provenance=provenance(REPO, WATCHED))
        print(publish_results(results, [out, args.results], to_markdown=results_markdown))
        return {"results": str(args.results / f"{args.preset}.md")}

    # the stages' markers record the preset's sections as written (kd.recipes.stages.load_preset)
    stages = [
        Stage(1, "corpus", lambda done: make_corpus(setup), written["corpus"], "synthesise the built-in corpus"),
        Stage(2, "tokens", lambda done: make_tokens(setup), {"tokens": "words"}, "word inventory"),
        Stage(3, "teacher", lambda done: train_teacher(setup),
              {"teacher": written["teacher"], "shipped": str(setup.shipped)}, f"the teacher on {setup.domain}"),
        Stage(4, "teacher-eval", lambda done: evaluate_teacher(setup), {"decode": written["decode"]},
              "teacher's error rates"),
        Stage(5, "analysis", lambda done: analyse_teacher(setup), {"analysis": written.get("analysis", {})},
              "layer-wise analysis of the teacher"),
        Stage(6, "students", lambda done: build_students(setup, done["analysis"]),
              {"budgets": written["budgets"], "decoder_keep": written["decoder_keep"]},
              "students from the teacher's layers"),
        Stage(7, "layer-distill", lambda done: distill_students(setup, workers),
              {"layer_distill": written.get("layer_distill"), "seeds": seeds},
              f"{len(setup.cells())} layer distillations" if setup.layer_distill else "no layer distillation"),
        Stage(8, "finetune", lambda done: train_students(setup, workers),
              {"student": written["student"], "seeds": seeds},
              f"{len(setup.cells())} student runs"),
        Stage(9, "eval", lambda done: evaluate_students(setup, workers), {"decode": written["decode"], "seeds": seeds},
              "students' error rates"),
        Stage(10, "speed", lambda done: measure_speed(setup), {"speed": written.get("speed", {})}, "encoder latency"),
        Stage(11, "table", table, {"seeds": seeds, "version": 2}, "results and comparisons"),
    ]
    run_recipe(stages, out, args)
    if args.ship_teacher:
        try:
            if setup.shipped is None:
                raise ValueError(f"the preset {args.preset!r} names no shipped_teacher folder")
            ship_run(setup.teacher_run, setup.tokens_dir / "tokens.txt", setup.shipped,
                     trained=provenance(REPO, WATCHED),
                     command=f"python recipes/asr_compress/run.py --preset {args.preset} --stop-stage 3 --ship-teacher")
        except ValueError as e:
            raise SystemExit(f"--ship-teacher: {e}") from None
    return 0


def against(parser, args, setup: AsrCompressSetup, out: Path) -> int:
    """--against: this preset's finished run against OTHER's, student by student."""
    import json

    other_args = argparse.Namespace(**{**vars(args), "preset": args.against, "out": args.against_out, "set": []})
    other_preset, _, other_out = load_preset(parser, other_args, AsrCompressPreset)
    other = AsrCompressSetup.from_preset(other_preset, other_out, seeds=setup.seeds, recipe_dir=HERE,
                                         section=lambda key: preset_section(parser, other_args, key))
    found = []
    for name, folder in ((args.preset, out), (args.against, other_out)):
        path = folder / f"{name}.json"
        if not path.is_file():
            parser.error(f"--against: {path} not found: run the preset {name!r} through its table stage first")
        found.append(json.loads(path.read_text(encoding="utf-8")))
    try:
        results = compare_trainings(setup, other, *found, provenance=provenance(REPO, WATCHED))
    except ValueError as e:
        parser.error(f"--against: {e}")
    print(publish_results(results, [out, args.results], to_markdown=trainings_markdown, name=results["name"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
