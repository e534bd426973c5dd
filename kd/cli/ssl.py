"""``kd ssl pretrain|finetune``: a self-supervised wav2vec 2.0 teacher (:mod:`kd.ssl`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kd.core.config import with_overrides


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ssl command group to the ``kd`` parser's subcommands."""
    ssl = sub.add_parser("ssl", help="a self-supervised wav2vec 2.0 teacher")
    ssl_sub = ssl.add_subparsers(dest="ssl_command", required=True)
    sp = ssl_sub.add_parser("pretrain", help="wav2vec 2.0 pre-training (keeps checkpoints for learning dynamics)")
    sp.add_argument("--data", nargs="+", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"])
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                    help="SSLConfig fields over the preset (diversity_weight=0.3, mask_length=4, ...) and "
                         "SECTION.FIELD of its optim, data and checkpoint sections (optim.lr=1e-4, "
                         "optim.max_steps=400, data.max_seconds=30, checkpoint.every_steps=100, ...)")
    sp.set_defaults(run=_ssl_pretrain)
    sf = ssl_sub.add_parser("finetune", help="CTC fine-tuning of a pre-trained encoder")
    sf.add_argument("pretrained", help="the pretrain stage folder (or its model/ folder)")
    sf.add_argument("--data", nargs="+", required=True)
    sf.add_argument("--eval", nargs="*", default=[], help="data dirs scored (WER/CER) after training")
    sf.add_argument("--out", required=True)
    sf.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"])
    sf.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                    help="CTCConfig fields over the preset (freeze_feature_encoder=false, ...) and SECTION.FIELD "
                         "of its optim, data and checkpoint sections (optim.max_steps=800, ...)")
    sf.set_defaults(run=_ssl_finetune)


def _preset_with_settings(cls, preset: str, items: list[str], option: str = "--set"):
    """``cls.from_preset(preset)`` with ``KEY.PATH=VALUE`` settings over it (:func:`kd.core.config.with_overrides`):
    fields of ``cls``, or ``SECTION.FIELD`` of its optim (kd.training.config.OptimConfig), data and checkpoint
    sections; names and types checked by ``cls.from_dict``."""
    return cls.from_dict(with_overrides(cls.from_preset(preset).to_dict(), items, option))


def _ssl_pretrain(args: argparse.Namespace) -> int:
    from kd.ssl.config import SSLConfig
    from kd.ssl.pretrain import pretrain

    config = _preset_with_settings(SSLConfig, args.preset, args.set + [f"seed={args.seed}"])
    result = pretrain(config, args.data, args.out)
    print(result)
    if "message" in result.metrics:
        print(f"pre-training outcome: {result.metrics['message']}")
    return 0


def _ssl_finetune(args: argparse.Namespace) -> int:
    from kd.ssl.config import CTCConfig
    from kd.ssl.finetune import finetune_ctc

    pretrained = Path(args.pretrained)
    if (pretrained / "model" / "config.json").is_file():  # a pretrain stage folder: its final model
        pretrained = pretrained / "model"
    result = finetune_ctc(pretrained, args.data, args.out, _preset_with_settings(CTCConfig, args.preset, args.set),
                          eval_dirs=args.eval)
    print(result)
    return 0
