"""The equal-budget plan study's table from fake stage outputs (the w2v2_compress recipe test runs the real ones)."""

from __future__ import annotations

import pytest

from kd.recipes.plan_study import PLAN_NAMES, per_seed, plan_study_table, with_seed


def test_per_seed_groups_the_runs_seed_by_seed():
    cells = [(0, "a"), (0, "b"), (3, "a"), (3, "b")]
    assert per_seed(cells, [1, 2, 3, 4]) == {"0": {"a": 1, "b": 2}, "3": {"a": 3, "b": 4}}


def test_with_seed_changes_only_the_seed():
    from kd.ssl.config import CTCConfig

    config = CTCConfig.from_preset("tiny")
    seeded = with_seed(config, 7)
    assert seeded.seed == 7 and {**seeded.to_dict(), "seed": None} == {**config.to_dict(), "seed": None}


def _inputs(seeds):
    """Every plan's student at WER 0.20 + 0.01 * (its index) + 0.02 * seed; the teacher at 0.1."""
    evals = {str(s): {n: {"eval": {"us/test": {"wer": 0.2 + 0.01 * i + 0.02 * s, "cer": 0.1}}}
                      for i, n in enumerate(PLAN_NAMES)} for s in seeds}
    plans = {n: {"keep_layers": [0, 2]} for n in PLAN_NAMES}
    plans["analysis-shared"] = {"keep_layers": [0, 1, 2], "share_groups": [[0, 1], [2]]}
    plans["attention-reuse"] = {"keep_layers": [0, 1, 2], "attention_reuse": [[0], [1, 2]]}
    speed = [{"model": m, "batch_size": b, "parameters": 2_000_000 if m == "teacher" else 1_000_000,
              "latency_ms": 10.0 * b, "device": "cpu"} for m in ("teacher", *PLAN_NAMES) for b in (1, 4)]
    cka = [[1.0, 0.9, 0.5, 0.4], [0.9, 1.0, 0.6, 0.5], [0.5, 0.6, 1.0, 0.8], [0.4, 0.5, 0.8, 1.0]]
    return {"us/test": {"wer": 0.1, "cer": 0.05}}, evals, plans, speed, cka


def test_plan_study_table_summarises_over_seeds_and_pairs_with_the_analysis_plan():
    teacher, evals, plans, speed, cka = _inputs((0, 1))
    results, text = plan_study_table(teacher, evals, plans, speed, cka, seeds=[0, 1], budget_layers=2, domain="us")
    assert results["wer"]["teacher"] == {"teacher": {"wer": 0.1, "cer": 0.05}}
    assert results["wer"]["first-k"] == {"0": {"wer": pytest.approx(0.21), "cer": 0.1},
                                         "1": {"wer": pytest.approx(0.23), "cer": 0.1}}
    assert results["summary"]["first-k"]["wer"]["mean"] == pytest.approx(0.22)
    assert results["summary"]["teacher"]["wer"]["runs"] == 1
    assert results["paired_vs_analysis"]["linspace"]["wer"]["mean"] == pytest.approx(0.03)
    assert results["paired_vs_analysis"]["linspace"]["wer"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert sorted(results["stand_in_dissimilarity"]) == ["analysis", "every-k", "first-k", "linspace"]
    assert results["seeds"] == [0, 1] and results["plans"] == plans and results["speed"] == speed
    assert text.startswith("wav2vec 2.0 teacher and students of 2 layers (speed on cpu); students' error rates: "
                           "mean ± std over seeds [0, 1]\n\n")
    assert "| model | teacher layers kept | shared / reuse groups | 1 - CKA to nearest kept (mean) | params | " \
           "latency b=1 (ms) | latency b=4 (ms) | us test WER (%) | CER (%) | runs |" in text
    assert "| teacher | all |  |  | 2.00M | 10.0 | 40.0 | 10.0 | 5.0 | 1 |" in text
    mean = results["stand_in_dissimilarity"]["first-k"]["mean"]
    assert f"| first-k | [0, 2] |  | {mean:.4f} | 1.00M | 10.0 | 40.0 | 22.0 ± 1.4 | 10.0 ± 0.0 | 2 |" in text
    assert "| analysis-shared | [0, 1, 2] | [[0, 1]] |  | 1.00M |" in text
    assert "| attention-reuse | [0, 1, 2] | [[1, 2]] |  |" in text
    assert "| every-k | 22.0 / 10.0 | 24.0 / 10.0 |" in text  # per seed
    assert "| linspace | +3.0 ± 0.0 | +0.0 ± 0.0 |" in text  # against the analysis plan


def test_one_seed_shows_no_spread():
    teacher, evals, plans, speed, cka = _inputs((0,))
    _, text = plan_study_table(teacher, evals, plans, speed, cka, seeds=[0], budget_layers=2, domain="us")
    assert "| linspace | +3.0 | +0.0 |" in text and "| 1.00M | 10.0 | 40.0 | 21.0 | 10.0 | 1 |" in text
    assert "± 0.0" not in text
