"""``kd train``, ``kd distill`` (:mod:`kd.training`) and ``kd distill-layers`` (:mod:`kd.ssl.layer_distill`)."""

from __future__ import annotations

import argparse
import json

from kd.cli.common import refuse_flat_keys
from kd.core.config import with_overrides


def register(sub: argparse._SubParsersAction) -> None:
    """Add the train command group to the ``kd`` parser's subcommands."""
    for name, text in (("train", "train an ASR model (teacher, or student without KD) from a YAML config"),
                       ("distill", "train a student with knowledge distillation from a YAML config")):
        tr = sub.add_parser(name, help=text)
        tr.add_argument("config", help="YAML config (see recipes/ and kd/training/config.py)")
        tr.add_argument("out", help="run dir (resumed from its newest finished checkpoint if present)")
        tr.add_argument("--no-resume", action="store_true", help="refuse a run dir that already has checkpoints")
        tr.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                        help="config fields over the YAML (optim.lr=0.001, model.overrides.encoder_layers=3, ...)")
        tr.set_defaults(run=_train)

    dl = sub.add_parser("distill-layers", help="layer-to-layer distillation (DistilHuBERT) of a wav2vec2-family "
                                               "student built by a plan")
    dl.add_argument("teacher", help="Hugging Face checkpoint folder (wav2vec2 / HuBERT / WavLM) or a student folder")
    dl.add_argument("plan", help="plan JSON (kd plan); its layer map pairs teacher and student layers")
    dl.add_argument("--data", nargs="+", required=True, help="data dirs (audio only is used)")
    dl.add_argument("--out", required=True, help="stage folder: student/, heads, log.csv (a finished one is skipped)")
    dl.add_argument("--student", default=None, help="initial student folder (default: kd.compress(teacher, plan))")
    dl.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"])
    dl.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                    help="LayerDistillConfig fields over the preset (seed=1, cos_weight=0.5, ...) and SECTION.FIELD of "
                         "its optim (kd.training.config.OptimConfig), data and checkpoint sections (optim.max_steps=400, "
                         "optim.lr=1e-4, data.max_seconds=20, checkpoint.every_steps=50, ...)")
    dl.set_defaults(run=_distill_layers)


def _train(args: argparse.Namespace) -> int:
    from kd.training.loop import distill_from_yaml, train_from_yaml

    fn = distill_from_yaml if args.command == "distill" else train_from_yaml
    result = fn(args.config, args.out, resume=not args.no_resume, overrides=args.set)
    print(json.dumps(result.to_dict(), indent=1))
    return 0


def _distill_layers(args: argparse.Namespace) -> int:
    import dataclasses

    from kd.compression import count_parameters, load_student
    from kd.ssl.layer_distill import LayerDistillConfig, distill_plan
    from kd.training.config import OptimConfig

    # the flat optimiser settings this command took before it read KEY.PATH=VALUE
    refuse_flat_keys(args.set, (f.name for f in dataclasses.fields(OptimConfig)), "optim", "an optimiser setting")
    data = with_overrides(LayerDistillConfig.from_preset(args.preset).to_dict(), args.set)
    config = LayerDistillConfig.from_dict(data)
    result = distill_plan(args.teacher, args.plan, args.data, args.out, config, student_dir=args.student,
                          progress=True)
    student = load_student(result.model_dir)
    print(f"student ({count_parameters(student):,} parameters) after {result.steps} updates"
          f"{' (finished earlier; skipped)' if result.skipped else ''}: {result.model_dir}")
    return 0
