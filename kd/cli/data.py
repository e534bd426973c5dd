"""``kd data check``: validation of a Kaldi/ESPnet data dir (:mod:`kd.data`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data command group to the ``kd`` parser's subcommands."""
    data = sub.add_parser("data", help="data dirs")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a Kaldi/ESPnet data dir")
    check.add_argument("data_dir")
    check.add_argument("--sample-rate", type=int, default=16000)
    check.add_argument("--token-list", default=None, help="ESPnet-style character token list to check against")
    check.add_argument("--headers-only", action="store_true", help="do not decode samples (skips the NaN check)")
    check.set_defaults(run=_data_check)


def _data_check(args: argparse.Namespace) -> int:
    from kd.data.check import check_data_dir

    report = check_data_dir(args.data_dir, sample_rate=args.sample_rate, token_list=args.token_list,
                            check_samples=not args.headers_only)
    for issue in report.issues:
        print(issue)
    print(report.summary())
    return 0 if report.ok else 1
