"""Multi-domain uncertainty-matching KD (Kim et al. 2021) on the built-in corpus.

    python recipes/multidomain_ukd/run.py --preset cpu [--stage N] [--stop-stage M] [--seeds 0 1 2]

Stages (each skipped when finished with the same settings; see kd.recipes.stages):
  1 corpus        synthesise the built-in corpus (us, uk: teacher domains; target: little data, shifted)
  2 tokens        one token inventory (words or characters) for teachers and students
  3 teachers      a teacher per teacher domain and seed: restored from the recipe's shipped teachers when
                  they were trained on exactly this data and config (kd.recipes.shipped), else trained
  4 teacher-eval  teachers on their own test set and the target dev/test sets (beam search and CTC
                  greedy), and whether their uncertainty predicts their own token errors
  5 analysis      layer-wise analysis of each teacher on its dev set (kd analyze)
  6 students      students built from the better teacher's layers by the analysis-driven plan
  7 distill       every (size, condition, seed) run on the target domain
  8 eval          students on the target test set (beam search and CTC greedy)
  9 table         results/<preset>.json and .md: the premise, the students, each claim's interval and verdict
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kd.recipes.multidomain_stages import (MultidomainSetup, analyse_teachers, build_students, distil_students,
                                           evaluate_students, evaluate_teachers, make_corpus, make_tokens,
                                           publish_results, results_table, ship_teachers, train_teachers)
from kd.recipes.presets import MultidomainPreset
from kd.recipes.shipped import provenance
from kd.recipes.stages import (Stage, add_workers_argument, load_preset, preset_section, preset_seeds, preset_workers,
                               recipe_parser, run_recipe)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WATCHED = ["kd", "recipes/multidomain_ukd/run.py", "recipes/multidomain_ukd/config.yaml"]  # a change: "+changes"


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, HERE / "config.yaml", "multidomain_ukd")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="where the table stage also writes <preset>.json and .md (default: the recipe's results/)")
    parser.add_argument("--ship-teachers", action="store_true",
                        help="after the stages, copy the teachers trained here (not restored) into the recipe's "
                             "teachers/ folder with their provenance (seed 0's as teachers/<domain>, another seed's "
                             "as teachers/seed<N>/<domain>), for presets that restore them")
    parser.add_argument("--ship-resume-points", type=Path, default=None, metavar="DIR",
                        help="instead of running stages: copy the teachers' unfinished runs (stop them first) into "
                             "DIR in the layout of teachers/ as resume points, which a run with "
                             "`--set shipped_teachers=DIR` continues exactly (for teachers that take longer than one "
                             "sitting)")
    add_workers_argument(parser, "training runs")
    args = parser.parse_args(argv)
    preset, written, out = load_preset(parser, args, MultidomainPreset)
    seeds, workers = preset_seeds(parser, args, preset.seeds), preset_workers(parser, args, preset.workers)
    # every run's settings built now, so that a bad preset value stops the run before stage 1
    setup = MultidomainSetup.from_preset(preset, out, seeds=seeds, recipe_dir=HERE,
                                         section=lambda key: preset_section(parser, args, key))
    if args.ship_resume_points is not None:
        try:
            ship_teachers(setup, args.ship_resume_points, trained=provenance(REPO, WATCHED), resume_points=True,
                          command=lambda seed: f"python recipes/multidomain_ukd/run.py --preset {args.preset} "
                                               f"--seeds {seed} --stop-stage 3 --set {' '.join(args.set)} shipped_teachers="
                                               f"{os.path.relpath(args.ship_resume_points.resolve(), HERE)}")
        except ValueError as e:
            raise SystemExit(f"--ship-resume-points: {e}") from None
        return 0
    n_runs = len(setup.sizes) * len(setup.conditions) * len(seeds)

    def table(done):
        results = results_table(setup, done["teacher-eval"], done["eval"], preset=args.preset,
                                provenance=provenance(REPO, WATCHED))
        print(publish_results(results, [out, args.results]))
        return {"results": str(args.results / f"{args.preset}.md")}

    # the stages' markers record the preset's sections as written (kd.recipes.stages.load_preset)
    stages = [
        Stage(1, "corpus", lambda done: make_corpus(setup), written["corpus"], "synthesise the built-in corpus"),
        Stage(2, "tokens", lambda done: make_tokens(setup),
              {"domains": [*written["teacher_domains"], written["target_domain"]], "tokens": written["tokens"]},
              "token inventory"),
        Stage(3, "teachers", lambda done: train_teachers(setup, workers),
              {"teacher": written["teacher"], "seeds": seeds, "shipped": str(setup.shipped)},
              f"teachers on {list(setup.domains)}"),
        Stage(4, "teacher-eval", lambda done: evaluate_teachers(setup, workers),
              {"decode": written["decode"], "seeds": seeds}, "teachers' error rates"),
        Stage(5, "analysis", lambda done: analyse_teachers(setup),
              {"analysis": written.get("analysis", {}), "seeds": seeds}, "layer-wise analysis of each teacher"),
        Stage(6, "students", lambda done: build_students(setup, done["teacher-eval"]),
              {"sizes": written["student_sizes"], "seeds": seeds}, "students from the better teacher's layers"),
        Stage(7, "distill", lambda done: distil_students(setup, done["teacher-eval"], workers),
              {"student": written["student"], "conditions": written["conditions"], "seeds": seeds,
               "freeze": written.get("student_freeze", [])}, f"{n_runs} student runs"),
        Stage(8, "eval", lambda done: evaluate_students(setup, workers), {"decode": written["decode"], "seeds": seeds},
              "students' error rates"),
        Stage(9, "table", table, {"seeds": seeds, "claims": written["claims"], "version": 1}, "results and claims"),
    ]
    run_recipe(stages, out, args)
    if args.ship_teachers:
        try:
            ship_teachers(setup, HERE / "teachers", trained=provenance(REPO, WATCHED),
                          command=lambda seed: f"python recipes/multidomain_ukd/run.py --preset {args.preset} "
                                               f"--seeds {seed} --stop-stage 3 --ship-teachers")
        except ValueError as e:
            raise SystemExit(f"--ship-teachers: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
