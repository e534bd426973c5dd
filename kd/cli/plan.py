"""``kd plan`` and ``kd compress``: a plan from an analysis report (:mod:`kd.plan`), a student from a plan
(:mod:`kd.compression`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the plan command group to the ``kd`` parser's subcommands."""
    pl = sub.add_parser("plan", help="compression plan from an analysis report")
    pl.add_argument("report", help="report.json written by kd analyze")
    pl.add_argument("--budget", type=int, default=None, help="number of Transformer layers (weight sets with --share)")
    pl.add_argument("--budget-ms", type=float, default=None,
                    help="latency budget: the most layers whose predicted latency fits (needs --latency)")
    pl.add_argument("--latency", action="append", metavar="LAYERS:MS",
                    help="a measured latency of a model of that depth (kd bench speed); two or more depths")
    pl.add_argument("--method", default="analysis", choices=["analysis", "first-k", "every-k", "linspace"])
    pl.add_argument("--share", action="store_true", help="keep depth, share weights within similar blocks")
    pl.add_argument("--reuse-threshold", type=float, default=None, help="attention JSD (bits) below which to reuse")
    pl.add_argument("--out", required=True, help="plan.json")
    pl.set_defaults(run=_plan)

    co = sub.add_parser("compress", help="apply a plan to a Hugging Face checkpoint or a kd ASR model dir")
    co.add_argument("model_dir")
    co.add_argument("plan", help="plan.json (for a kd ASR model dir: over its encoder layers)")
    co.add_argument("--decoder-plan", default=None, help="kd ASR model dirs: plan.json over the decoder layers")
    co.add_argument("--out", required=True)
    co.set_defaults(run=_compress)


def _plan(args: argparse.Namespace) -> int:
    from kd.plan.from_report import PlanMethod, plan_from_report

    budget = args.budget
    if (budget is None) == (args.budget_ms is None):
        raise SystemExit("kd plan: give exactly one of --budget (layers) and --budget-ms (with --latency)")
    if args.budget_ms is not None:
        from analysis.report import AnalysisReport
        from kd.plan.planners import layers_for_latency_budget

        measured = []
        for item in args.latency or []:
            layers, _, ms = item.partition(":")
            try:
                measured.append((int(layers), float(ms)))
            except ValueError:
                raise SystemExit(f"kd plan: --latency expects LAYERS:MS (e.g. 12:85.0), found {item!r}") from None
        teacher_layers = AnalysisReport.load(args.report).num_layers - 1
        budget = layers_for_latency_budget(measured, args.budget_ms, teacher_layers)
        print(f"latency budget {args.budget_ms} ms -> {budget} layers")
    plan = plan_from_report(args.report, budget_layers=budget, method=PlanMethod(args.method),
                            share_blocks=args.share, reuse_threshold=args.reuse_threshold)
    plan.save(args.out)
    print(plan.to_json())
    return 0


def _compress(args: argparse.Namespace) -> int:
    from kd.compression.apply import compress_model_dir

    out = compress_model_dir(args.model_dir, args.plan, args.out, decoder_plan_path=args.decoder_plan)
    print(f"student saved to {out}")
    return 0
