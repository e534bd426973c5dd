"""``kd eval`` and ``kd export espnet``: error rates of a model (:mod:`kd.evaluation`), its export to ESPnet
(:mod:`kd.models.export_espnet`)."""

from __future__ import annotations

import argparse

from kd.cli.common import DEVICE_HELP, device


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluate command group to the ``kd`` parser's subcommands."""
    ev = sub.add_parser("eval", help="WER/CER per domain, parameters and real-time factor of an ASR model dir "
                                     "or a Hugging Face CTC checkpoint folder")
    ev.add_argument("model_dir", help="a kd model dir (config.yaml), or a Hugging Face *ForCTC folder (config.json, "
                                      "vocab.json or tokens.txt) or compressed student of one")
    ev.add_argument("--data", nargs="+", required=True, help="one or more data dirs")
    ev.add_argument("--out", default=None, help="folder for report.json, report.md, hyp.txt, utterances.jsonl")
    ev.add_argument("--method", default=None, choices=["beam", "ctc_greedy"], type=lambda s: s.replace("-", "_"),
                    help="kd.evaluation.decode.DecodeMethod, as in a decode config (ctc-greedy is read as ctc_greedy); "
                         "default: beam for a kd model dir, ctc_greedy (the only one) for a Hugging Face CTC folder")
    ev.add_argument("--beam-size", type=int, default=10)
    ev.add_argument("--ctc-weight", type=float, default=0.3)
    ev.add_argument("--penalty", type=float, default=0.0)
    ev.add_argument("--maxlenratio", type=float, default=0.0)
    ev.add_argument("--batched-search", action="store_true",
                    help="beam search of a batch of utterances at once (kd.evaluation.beam: the same tokens as "
                         "ESPnet's search up to float rounding, several times faster on CPU; no LM)")
    ev.add_argument("--batched-encoder", action="store_true",
                    help="encode a padded batch at once (faster; not identical to one-by-one encoding at the edges, "
                         "see kd.evaluation.decode)")
    ev.add_argument("--device", default=None, help=DEVICE_HELP)
    ev.set_defaults(run=_eval)

    ex = sub.add_parser("export", help="export a model dir to another toolkit's format")
    ex_sub = ex.add_subparsers(dest="export_format", required=True)
    es = ex_sub.add_parser("espnet", help="ESPnet model folder that espnet2's Speech2Text decodes")
    es.add_argument("model_dir")
    es.add_argument("--out", required=True)
    es.set_defaults(run=_export)


def _eval(args: argparse.Namespace) -> int:
    from kd.evaluation.decode import DecodeConfig, DecodeMethod
    from kd.evaluation.evaluate import evaluate

    from kd.evaluation.hf_ctc import is_hf_model_folder

    method = args.method or ("ctc_greedy" if is_hf_model_folder(args.model_dir) else "beam")
    config = DecodeConfig(method=DecodeMethod(method), beam_size=args.beam_size,
                          ctc_weight=args.ctc_weight, penalty=args.penalty, maxlenratio=args.maxlenratio,
                          batched_search=args.batched_search, batched_encoder=args.batched_encoder)
    report = evaluate(args.model_dir, args.data, config, device=device(args.device), out_dir=args.out,
                      progress=True)
    print(report.to_markdown())
    return 0


def _export(args: argparse.Namespace) -> int:
    from kd.models.export_espnet import export_espnet

    out = export_espnet(args.model_dir, args.out)
    print(f"ESPnet model folder written to {out} (config.yaml + model.pth; decode with Speech2Text)")
    return 0
