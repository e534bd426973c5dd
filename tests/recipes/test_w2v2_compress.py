"""The wav2vec 2.0 compression recipe end to end on its `smoke` preset."""

from __future__ import annotations

import json


def test_plans_students_and_table(tmp_path, capsys, load_recipe):
    recipe = load_recipe("w2v2_compress")
    out = tmp_path / "exp"
    assert recipe.main(["--preset", "smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    names = ["teacher", "analysis", "first-k", "every-k", "linspace", "analysis-shared", "attention-reuse"]
    assert sorted(results["wer"]) == sorted(names)
    plans = results["plans"]
    assert plans["first-k"]["keep_layers"] == [0, 1] and plans["linspace"]["keep_layers"] == [0, 2]
    assert len(plans["analysis"]["keep_layers"]) == 2
    assert len(plans["analysis-shared"]["keep_layers"]) == 3  # depth kept, 2 weight sets
    params = {r["model"]: r["parameters"] for r in results["speed"]}
    assert params["first-k"] < params["teacher"] and params["analysis-shared"] < params["teacher"]
    printed = capsys.readouterr().out
    assert (out / "results.md").read_text() in printed
    for name in names[1:]:
        assert (out / "students_ctc" / name / "model").is_dir()
