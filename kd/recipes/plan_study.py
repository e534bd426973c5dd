"""Compression plans compared at an equal budget: the plans, and the table of their students.

``recipes/w2v2_compress/run.py`` builds the plans of one teacher's analysis (:func:`equal_budget_plans`),
distils and fine-tunes a student per plan and seed, measures their speed and tabulates error rates,
speed and how far each pruned teacher layer is from its nearest kept layer (:func:`plan_study_table`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from kd.recipes.experiment import merge_sections, paired_differences, seed_summary

if TYPE_CHECKING:
    from kd.plan import CompressionPlan

__all__ = ["PLAN_NAMES", "equal_budget_plans", "per_seed", "plan_study_table", "save_plans", "with_seed"]

# the plans of equal_budget_plans, in the table's order
PLAN_NAMES = ("analysis", "first-k", "every-k", "linspace", "analysis-shared", "attention-reuse")


def equal_budget_plans(report: str | os.PathLike, budget_layers: int,
                       reuse_threshold: float) -> dict[str, CompressionPlan]:
    """The plans of :data:`PLAN_NAMES` from an analysis report (``kd analyze``'s ``report.json``):
    ``budget_layers`` teacher layers kept by the analysis-driven plan, by first-k, every-k and linspace,
    and by the analysis-driven plan with weights shared within its blocks; and every layer kept with
    attention reused where the attention JSD to an earlier layer is below ``reuse_threshold``."""
    import json

    from kd.plan.from_report import PlanMethod, plan_from_report

    num_layers = json.loads(Path(report).read_text(encoding="utf-8"))["num_layers"] - 1
    k = budget_layers
    return {
        "analysis": plan_from_report(report, budget_layers=k, method=PlanMethod.ANALYSIS),
        "first-k": plan_from_report(report, budget_layers=k, method=PlanMethod.FIRST_K),
        "every-k": plan_from_report(report, budget_layers=k, method=PlanMethod.EVERY_K),
        "linspace": plan_from_report(report, budget_layers=k, method=PlanMethod.LINSPACE),
        "analysis-shared": plan_from_report(report, budget_layers=k, method=PlanMethod.ANALYSIS, share_blocks=True),
        # every layer kept; followers reuse the attention of an earlier layer whose JSD is small
        "attention-reuse": plan_from_report(report, budget_layers=num_layers, method=PlanMethod.ANALYSIS,
                                            reuse_threshold=reuse_threshold),
    }


def save_plans(plans: Mapping[str, CompressionPlan], folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Save each plan as ``folder/<name>.json``; returns them as dicts (``CompressionPlan.to_dict``)."""
    for name, plan in plans.items():
        plan.save(Path(folder) / f"{name}.json")
    return {name: plan.to_dict() for name, plan in plans.items()}


def with_seed(config: Any, seed: int) -> Any:
    """The same run (a stage config dataclass with ``to_dict`` / ``from_dict`` and a ``seed`` field)
    with ``seed = seed``."""
    return type(config).from_dict(merge_sections(config.to_dict(), {"seed": seed}))


def per_seed(cells: Sequence[tuple[int, str]], values: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``values[i]`` of the run ``cells[i] = (seed, plan name)`` as ``{str(seed): {plan name: value}}``
    (a stage's result: JSON keys are strings)."""
    grouped: dict[str, dict[str, Any]] = {str(seed): {} for seed, _ in cells}
    for (seed, name), value in zip(cells, values):
        grouped[str(seed)][name] = value
    return grouped


def _percent(stats: Mapping[str, float], sign: str = "") -> str:
    """A ``{mean, std, runs}`` of fractions, in percent (points); the std only over several runs."""
    return f"{stats['mean'] * 100:{sign}.1f}" + (f" ± {stats['std'] * 100:.1f}" if stats["runs"] > 1 else "")


def plan_study_table(teacher_eval: Mapping[str, Mapping[str, float]],
                     student_evals: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
                     plans: Mapping[str, Mapping[str, Any]], speed: Sequence[Mapping[str, Any]],
                     cka: Sequence[Sequence[float]], *, seeds: Sequence[int], budget_layers: int,
                     domain: str) -> tuple[dict[str, Any], str]:
    """The results (JSON-able) and their markdown: per model, its kept layers, share / reuse groups,
    stand-in dissimilarity, parameters, latency and error rates (mean ± std over seeds); per seed; and
    each plan against the analysis plan, paired by seed.

    Args:
        teacher_eval: the teacher's CTC fine-tuning evaluation, ``{eval dir: {"wer", "cer"}}`` (one eval
            dir; fractions).
        student_evals: seed (a string) -> plan name -> ``{"eval": {eval dir: {"wer", "cer"}}}``, per
            plan of :data:`PLAN_NAMES`.
        plans: plan name -> ``CompressionPlan.to_dict()``.
        speed: ``kd.bench.speed.bench_speed`` rows of the teacher (``teacher``) and each plan's student.
        cka: the teacher's linear CKA between its layers, input included (``[L + 1, L + 1]``).
        budget_layers: the plans' budget (the table's title).
        domain: the test set's domain (a column name).
    """
    from kd.plan.planners import stand_in_dissimilarity

    plan_names = list(PLAN_NAMES)
    batch_sizes = sorted({r["batch_size"] for r in speed})
    first = lambda e: next(iter(e.values()))  # noqa: E731  (one eval dir: DOMAIN/test)
    # per model, its runs' {wer, cer}: the teacher's one run, each student's per seed
    runs = {"teacher": {"teacher": first(teacher_eval)},
            **{n: {str(seed): first(student_evals[str(seed)][n]["eval"]) for seed in seeds} for n in plan_names}}
    summary = seed_summary(runs)
    # how far each teacher layer is from its nearest kept layer on the analysis (pruning plans only)
    stand_in = {n: stand_in_dissimilarity(cka, p["keep_layers"], includes_input=True) for n, p in plans.items()
                if not p.get("share_groups") and not p.get("attention_reuse")}
    header = ["model", "teacher layers kept", "shared / reuse groups", "1 - CKA to nearest kept (mean)", "params",
              *[f"latency b={b} (ms)" for b in batch_sizes], f"{domain} test WER (%)", "CER (%)", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ["teacher", *plan_names]:
        rows = {r["batch_size"]: r for r in speed if r["model"] == name}
        plan = plans.get(name, {})
        groups = [g for g in plan.get("share_groups", []) + plan.get("attention_reuse", []) if len(g) > 1]
        lines.append("| " + " | ".join([
            name, str(plan.get("keep_layers", "all")), str(groups) if groups else "",
            f"{stand_in[name]['mean']:.4f}" if name in stand_in else "",
            f"{rows[batch_sizes[0]]['parameters'] / 1e6:.2f}M",
            *[f"{rows[b]['latency_ms']:.1f}" for b in batch_sizes],
            _percent(summary[name]["wer"]), _percent(summary[name]["cer"]), str(summary[name]["wer"]["runs"])]) + " |")
    per_seed = ["| model | " + " | ".join(f"seed {s} WER / CER (%)" for s in seeds) + " |",
                "|---|" + "---|" * len(seeds)]
    for name in plan_names:
        per_seed.append(f"| {name} | " + " | ".join(
            f"{runs[name][str(s)]['wer'] * 100:.1f} / {runs[name][str(s)]['cer'] * 100:.1f}" for s in seeds) + " |")
    # paired by seed (one seed: the same batch order and head initialisation for every plan):
    # each plan's error rate minus the analysis plan's, so a difference can be told from noise
    paired = paired_differences({n: runs[n] for n in plan_names}, "analysis")
    paired_lines = ["| model | WER - analysis WER (points) | CER - analysis CER (points) |", "|---|---|---|"]
    paired_lines += [f"| {n} | {_percent(paired[n]['wer'], '+')} | {_percent(paired[n]['cer'], '+')} |"
                     for n in plan_names[1:]]
    text = (f"wav2vec 2.0 teacher and students of {budget_layers} layers (speed on {speed[0]['device']}); students' "
            f"error rates: mean ± std over seeds {list(seeds)}\n\n" + "\n".join(lines) + "\n\nPer seed\n\n"
            + "\n".join(per_seed) + "\n\nAgainst the analysis plan, paired by seed (mean ± std of the per-seed "
            "differences; positive: more errors than the analysis plan)\n\n" + "\n".join(paired_lines) + "\n")
    results = {"wer": runs, "summary": summary, "paired_vs_analysis": paired, "seeds": list(seeds),
               "speed": list(speed), "plans": dict(plans), "stand_in_dissimilarity": stand_in}
    return results, text
