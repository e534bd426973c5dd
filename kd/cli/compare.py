"""``kd compare``: linear CKA between the layers of several models (:mod:`kd.analyze.compare`)."""

from __future__ import annotations

import argparse

from kd.cli.common import DEVICE_HELP, device


def register(sub: argparse._SubParsersAction) -> None:
    """Add the compare command group to the ``kd`` parser's subcommands."""
    cm = sub.add_parser("compare", help="linear CKA between the layers of models (checkpoints, teacher vs student)")
    cm.add_argument("models", nargs="+", help="model folders to compare with the reference")
    cm.add_argument("--reference", required=True, help="the model each one is compared with")
    cm.add_argument("--data", required=True, help="data dir whose utterances all models run")
    cm.add_argument("--out", required=True, help="folder for comparison.json and same_layer_cka.png")
    cm.add_argument("--max-utterances", type=int, default=100)
    cm.add_argument("--device", default=None, help=DEVICE_HELP)
    cm.add_argument("--seed", type=int, default=0)
    cm.set_defaults(run=_compare)


def _compare(args: argparse.Namespace) -> int:
    from kd.analyze.compare import compare_models, save_comparison

    result = compare_models(args.models, args.reference, args.data, max_utterances=args.max_utterances,
                            device=device(args.device), seed=args.seed, progress=True)
    paths = save_comparison(result, args.out)
    for model, curve in zip(result.models, (result.same_layer(i) for i in range(len(result.models)))):
        print(f"{model}: same-layer CKA " + " ".join(f"{v:.3f}" for v in curve))
    print(f"written: {', '.join(map(str, paths))}")
    return 0
