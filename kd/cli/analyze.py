"""``kd analyze``: the layer-wise analysis report of a model on a data dir (:mod:`kd.analyze`)."""

from __future__ import annotations

import argparse

from kd.cli.common import DEVICE_HELP, device


def register(sub: argparse._SubParsersAction) -> None:
    """Add the analyze command group to the ``kd`` parser's subcommands."""
    an = sub.add_parser("analyze", help="layer-wise analysis of a model on a data dir")
    an.add_argument("model_dir", help="Hugging Face checkpoint folder or kd ASR model dir")
    an.add_argument("--data", required=True, help="data dir (alignments.jsonl enables phone/word analyses)")
    an.add_argument("--out", required=True, help="output folder for report.json, report.md, figures/")
    an.add_argument("--max-utterances", type=int, default=200)
    an.add_argument("--frames-per-utterance", type=int, default=48)
    an.add_argument("--no-attention", action="store_true", help="skip attention analyses")
    an.add_argument("--probe-kind", choices=("linear", "mlp1", "mlp2"), default="linear",
                    help="phone and speaker probe depth: linear, one hidden layer (mlp1) or two (mlp2)")
    an.add_argument("--probe-depths", action="store_true",
                    help="also the phone probe at each of the three depths, side by side (a figure of its own)")
    an.add_argument("--mi-pairs", type=int, default=4,
                    help="label-free MI bound: section pairs per utterance (each section run through the model alone)")
    an.add_argument("--device", default=None, help=DEVICE_HELP)
    an.add_argument("--seed", type=int, default=0)
    an.set_defaults(run=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from kd.analyze.layerwise import AnalyzeConfig, analyze_model_dir

    config = AnalyzeConfig(max_utterances=args.max_utterances, device=device(args.device), seed=args.seed,
                           attention=not args.no_attention, frames_per_utterance=args.frames_per_utterance,
                           mi_pairs=args.mi_pairs, probe_kind=args.probe_kind,
                           probe_depths=args.probe_depths)
    report = analyze_model_dir(args.model_dir, args.data, args.out, config)
    print(report.to_markdown())
    print(f"report: {args.out}/report.json, {args.out}/report.md, figures in {args.out}/figures/")
    return 0
