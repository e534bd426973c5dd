"""``kd corpus synth``: the built-in synthetic multi-domain corpus (:mod:`kd.corpus`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the corpus command group to the ``kd`` parser's subcommands."""
    from kd.corpus.domains import PRESETS  # plain Python: no torch import for `kd --help`

    corpus = sub.add_parser("corpus", help="the built-in synthetic multi-domain corpus")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    synth = corpus_sub.add_parser("synth", help="synthesise the corpus with eSpeak NG")
    synth.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="size preset")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(run=_corpus_synth)


def _corpus_synth(args: argparse.Namespace) -> int:
    from kd.corpus.synth import build_corpus

    summary = build_corpus(args.out, preset=args.preset, seed=args.seed, jobs=args.jobs, progress=not args.quiet)
    print(format_corpus_summary(summary))
    return 0


def format_corpus_summary(summary: dict) -> str:
    lines = [f"corpus: preset={summary['preset']} seed={summary['seed']} {summary['hours']:.3f} h of audio, "
             f"{summary['num_phones']} phone labels"]
    if summary.get("skipped"):
        lines.append("(already built with these settings: nothing to do)")
    else:
        lines.append(f"synthesis: {summary['synthesis_seconds']:.1f} s wall for {summary['audio_seconds']:.0f} s of "
                     f"audio = {summary['realtime_factor']:.0f}x real time on {summary['jobs']} processes")
    lines.append(f"{'domain':<8} {'split':<6} {'utts':>6} {'spk':>4} {'hours':>8}")
    for domain, splits in summary["splits"].items():
        for split, s in splits.items():
            lines.append(f"{domain:<8} {split:<6} {s['utterances']:>6} {s['speakers']:>4} {s['hours']:>8.3f}")
    return "\n".join(lines)
