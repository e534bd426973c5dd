"""The wav2vec 2.0 compression recipe end to end on its `smoke` preset."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # 28 s (every stage of smoke) on the 2-core machine; pytest -m slow
def test_plans_students_and_table(tmp_path, capsys, load_recipe):
    recipe = load_recipe("w2v2_compress")
    out = tmp_path / "exp"
    assert recipe.main(["--preset", "smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    names = ["teacher", "analysis", "first-k", "every-k", "linspace", "analysis-shared", "attention-reuse"]
    assert sorted(results["wer"]) == sorted(names)
    # the smoke preset's two seeds: every student twice, aggregated over seeds and paired by seed
    # against the analysis plan (kd.recipes.experiment.seed_summary / paired_differences, tested there)
    assert results["seeds"] == [0, 1] and list(results["wer"]["teacher"]) == ["teacher"]
    for name in names[1:]:
        assert list(results["wer"][name]) == ["0", "1"]
        assert results["summary"][name]["wer"]["runs"] == 2 and results["summary"][name]["cer"]["runs"] == 2
    assert results["summary"]["teacher"]["wer"]["runs"] == 1
    assert sorted(results["paired_vs_analysis"]) == sorted(names[2:])
    plans = results["plans"]
    assert plans["first-k"]["keep_layers"] == [0, 1] and plans["linspace"]["keep_layers"] == [0, 2]
    assert len(plans["analysis"]["keep_layers"]) == 2
    assert len(plans["analysis-shared"]["keep_layers"]) == 3  # depth kept, 2 weight sets
    # the pruning plans scored on the teacher's CKA (kd.plan.planners.stand_in_dissimilarity, tested there)
    stand_in = results["stand_in_dissimilarity"]
    assert sorted(stand_in) == ["analysis", "every-k", "first-k", "linspace"]
    assert all(0.0 <= s["mean"] <= s["max"] <= 2.0 for s in stand_in.values())
    assert f"| first-k | [0, 1] |  | {stand_in['first-k']['mean']:.4f} |" in (out / "results.md").read_text()
    params = {r["model"]: r["parameters"] for r in results["speed"]}
    assert params["first-k"] < params["teacher"] and params["analysis-shared"] < params["teacher"]
    printed = capsys.readouterr().out
    assert (out / "results.md").read_text() in printed
    for name in names[1:]:
        assert (out / "students_ctc" / name / "model").is_dir() and (out / "students_ctc-seed1" / name / "model").is_dir()
    # the seed reaches both trainings; seed 1's distilled student has weights of its own
    import torch

    from kd.compression import load_student

    assert json.loads((out / "students_ctc-seed1" / "first-k" / "ctc_config.json").read_text())["seed"] == 1
    zero, one = (load_student(out / d / "first-k" / "student").state_dict() for d in ("students", "students-seed1"))
    assert zero.keys() == one.keys() and not all(torch.equal(zero[k], one[k]) for k in zero)
    # student_ctc_overrides: fewer updates for the students, every other setting the teacher's
    teacher = json.loads((out / "teacher_ctc" / "ctc_config.json").read_text())
    student = json.loads((out / "students_ctc" / "first-k" / "ctc_config.json").read_text())
    assert teacher["optim"]["max_steps"] == 4 and student["optim"]["max_steps"] == 3
    assert {**student["optim"], "max_steps": 4} == teacher["optim"] and {**student, "optim": None} == {
        **teacher, "optim": None}
    assert json.loads((out / "students_ctc" / "first-k" / "results.json").read_text())["steps"] == 3


@pytest.mark.slow  # about 65 CPU seconds (the recipe twice, then on two worker processes); pytest -m slow
def test_plans_on_two_worker_processes_equal_the_plans_one_after_another(tmp_path, capsys, load_recipe):
    """--workers 2: the six layer distillations and CTC fine-tunings run side by side (one thread
    each, as the tests' sequential runs) to the very same students and error rates."""
    import torch

    from kd.compression import load_student

    recipe = load_recipe("w2v2_compress")
    for workers in ("1", "2"):
        assert recipe.main(["--preset", "smoke", "--out", str(tmp_path / f"w{workers}"), "--workers", workers,
                            "--seeds", "0"]) == 0
    assert "6 jobs on 2 worker processes, 1 thread(s) each" in capsys.readouterr().out
    names = ["analysis", "first-k", "every-k", "linspace", "analysis-shared", "attention-reuse"]
    for name in names:
        one, two = (load_student(tmp_path / w / "students" / name / "student").state_dict() for w in ("w1", "w2"))
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one), name
    wer = lambda w: json.loads((tmp_path / w / "results.json").read_text())["wer"]  # noqa: E731
    assert wer("w1") == wer("w2")
