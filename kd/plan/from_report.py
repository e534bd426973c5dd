"""``kd plan``: a compression plan from a ``kd analyze`` report and a layer budget.

Applying a plan to a model folder (``kd compress``) is :func:`kd.compression.apply.compress_model_dir`.
"""

from __future__ import annotations

import enum
import os

from kd.plan import CompressionPlan


class PlanMethod(enum.Enum):
    ANALYSIS = "analysis"  # dynamic programming over the report's linear CKA matrix
    FIRST_K = "first-k"
    EVERY_K = "every-k"
    LINSPACE = "linspace"


def plan_from_report(report_path: str | os.PathLike, *, budget_layers: int, method: PlanMethod = PlanMethod.ANALYSIS,
                     share_blocks: bool = False, reuse_threshold: float | None = None) -> CompressionPlan:
    """Make a plan of ``budget_layers`` Transformer layers from a ``kd analyze`` report.

    The report's matrices include layer 0 (the input of the first Transformer layer); the
    attention JSD matrix covers Transformer layers only. ``every-k`` takes the stride that
    gives ``budget_layers`` layers (``L // budget_layers``) and keeps the last ``budget_layers``
    multiples.
    """
    from analysis.report import AnalysisReport
    from kd.plan import planners

    report = AnalysisReport.load(report_path)
    num_layers = report.num_layers - 1  # Transformer layers
    if not 1 <= budget_layers <= num_layers:
        raise ValueError(f"budget: expected 1..{num_layers} layers for this model, found {budget_layers}")
    if method is PlanMethod.ANALYSIS:
        cka = report.similarity.get("linear_cka")
        if not cka:
            raise ValueError(f"{report_path}: the report has no linear_cka matrix")
        jsd = report.attention.get("jsd_head_averaged") if reuse_threshold is not None else None
        return planners.plan_from_similarity(cka, budget_layers=budget_layers, share_blocks=share_blocks,
                                             attention_jsd=jsd, reuse_threshold=reuse_threshold,
                                             includes_input=True)
    if method is PlanMethod.FIRST_K:
        return planners.first_k(num_layers, budget_layers)
    if method is PlanMethod.LINSPACE:
        return planners.linspace(num_layers, budget_layers)
    stride = max(1, num_layers // budget_layers)
    plan = planners.every_k(num_layers, stride)
    keep = plan.keep_layers[-budget_layers:]
    return CompressionPlan(keep_layers=list(keep), num_teacher_layers=num_layers)
