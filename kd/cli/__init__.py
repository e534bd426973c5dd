"""The ``kd`` command. Each subcommand is a thin wrapper over one library function.

One module per command group, in the order data flows through the toolkit: :mod:`kd.cli.corpus`,
:mod:`kd.cli.data`, :mod:`kd.cli.analyze`, :mod:`kd.cli.plan` (``plan``, ``compress``),
:mod:`kd.cli.compare`, :mod:`kd.cli.train` (``train``, ``distill``, ``distill-layers``),
:mod:`kd.cli.bench`, :mod:`kd.cli.ssl`, :mod:`kd.cli.evaluate` (``eval``, ``export``). Each has a
``register(sub)`` that adds its subcommands; :mod:`kd.cli.common` holds what several share.

The library modules (and through them torch, transformers, ESPnet) are imported inside the
functions that run the subcommands, and no parser default calls into them, so that ``kd --help``
and ``kd corpus ...`` start in a fraction of a second (tests/kd/cli/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import sys

from kd.cli import analyze, bench, compare, corpus, data, evaluate, plan, ssl, train

# the command groups in the order ``kd --help`` lists them
GROUPS = (corpus, data, analyze, plan, compare, train, bench, ssl, evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd", description="Analyse, compress and distil speech Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"kd: error: {e}", file=sys.stderr)
        return 2
