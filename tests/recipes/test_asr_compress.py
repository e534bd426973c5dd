"""The ESPnet compression recipe end to end on its `smoke` preset (one seed), its students distilled layer to
layer before their fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch

from kd.core.io import read_csv_log
from kd.models.weights import load_weights
from kd.recipes.asr_compress import HEURISTICS, LAYERS_DIFFER_BELOW, PLANS, UNSHARED, verdict


@pytest.mark.slow
def test_plans_students_speed_and_comparisons(tmp_path, capsys, load_recipe):
    recipe = load_recipe("asr_compress")
    out, results_dir = tmp_path / "exp", tmp_path / "results"
    assert recipe.main(["--preset", "smoke", "--out", str(out), "--seeds", "0", "--results", str(results_dir)]) == 0
    results = json.loads((results_dir / "smoke.json").read_text())
    assert (results_dir / "smoke.md").read_text() in capsys.readouterr().out
    assert results == json.loads((out / "smoke.json").read_text())
    students = {s["name"]: s for s in results["students"]}
    assert list(students) == [f"2/{p}" for p in PLANS] + [UNSHARED]
    # the smoke teacher has 4 encoder layers and 2 decoder layers; students keep decoder layer 1
    assert students["2/first-k"]["keep_layers"] == [0, 1] and students["2/linspace"]["keep_layers"] == [0, 3]
    assert len(students["2/analysis"]["keep_layers"]) == 2
    shared = students["2/shared"]
    assert shared["keep_layers"] == [0, 1, 2, 3] and len(shared["share_groups"]) >= 1
    assert students[UNSHARED]["keep_layers"] == [0, 1, 2, 3] and students[UNSHARED]["share_groups"] == []
    # a pruned and a shared student of 2 weight sets have the same parameters, fewer than the unshared one
    assert students["2/first-k"]["params"] == students["2/analysis"]["params"] == shared["params"]
    assert shared["params"] < students[UNSHARED]["params"] < results["teacher"]["params"]
    teacher = results["teacher"]
    assert teacher["layers"] == 4 and 0.0 <= teacher["lowest_cka"] <= teacher["adjacent_cka_min"] <= 1.0 + 1e-6
    assert {r["model"] for r in results["speed"]} == {"teacher", *students}
    # every comparison twice (WER, CER); a verdict names a side only where the interval excludes 0
    assert len(results["comparisons"]) == 2 * (len(HEURISTICS) + 2)
    for c in results["comparisons"]:
        lo, hi = c["ci95"]
        assert lo <= c["diff"] <= hi or c["seeds"] == 1
        expected = f"{c['a']} better" if hi < 0 else f"{c['b']} better" if lo > 0 else "tie"
        if c["b"].split("/")[-1] in HEURISTICS and not teacher["layers_differ"]:
            expected = "not a test (the teacher's layers are alike: lowest linear CKA"
        assert c["verdict"].startswith(expected) and c["seeds"] == 1 and c["utterances"] == results["n_test"]
    assert teacher["layers_differ"] == (teacher["lowest_cka"] < LAYERS_DIFFER_BELOW)
    # stage 7: every student distilled layer to layer (the smoke preset's two updates), each layer paired with
    # the teacher layer it was copied from; a shared student keeps the teacher's depth and is paired layer by layer
    distilled = out / "layer_distill" / "2" / "linspace" / "seed0"
    assert json.loads((distilled / "heads.json").read_text())["layer_map"] == {"0": 0, "3": 1}
    shared_map = json.loads((out / "layer_distill" / "2" / "shared" / "seed0" / "heads.json").read_text())["layer_map"]
    assert shared_map == {str(t): t for t in range(4)}
    assert [row["step"] for row in read_csv_log(distilled / "log.csv")] == [1, 2]
    assert results["layer_distill"] == {"steps": 2, "lr": 1e-4, "cos_weight": 1.0}
    assert "distilled layer to layer from the teacher (2 updates" in (results_dir / "smoke.md").read_text()
    # stage 8: every student run was fine-tuned from its distilled student with its own seed; the distillation
    # changed the weights it starts from
    config = (out / "runs" / "2" / "linspace" / "seed0" / "config.yaml").read_text()
    assert f"init_from: {distilled / 'student'}\n" in config and "seed: 0" in config
    built = load_weights(out / "students" / "2" / "linspace" / "model.safetensors")
    start = load_weights(distilled / "student" / "model.safetensors")
    encoder = [k for k in built if k.startswith("espnet.encoder.encoders.")]
    assert encoder and not all(torch.equal(built[k], start[k]) for k in encoder)
    assert all(torch.equal(built[k], start[k]) for k in built if k.startswith("espnet.decoder."))
    # --against: the finished run student by student against another finished run (here itself: every
    # difference 0); a run that has not reached its table stage is named
    with pytest.raises(SystemExit):
        recipe.main(["--preset", "smoke", "--out", str(out), "--seeds", "0", "--against", "smoke",
                     "--against-out", str(tmp_path / "none"), "--results", str(results_dir)])
    assert f"{tmp_path / 'none' / 'smoke.json'} not found: run the preset 'smoke'" in capsys.readouterr().err
    assert recipe.main(["--preset", "smoke", "--out", str(out), "--seeds", "0", "--against", "smoke",
                        "--against-out", str(out), "--results", str(results_dir)]) == 0
    both = json.loads((results_dir / "smoke-vs-smoke.json").read_text())
    assert len(both["comparisons"]) == 2 * len(students)
    assert all(c["diff"] == 0.0 and c["verdict"] == "tie" for c in both["comparisons"])


def test_a_verdict_names_a_side_only_when_the_premise_holds():
    assert verdict("a", "6/analysis", "6/first-k") == "6/analysis better"
    assert verdict("b", "6/analysis", "6/first-k") == "6/first-k better"
    assert verdict("tie", "6/analysis", "6/first-k") == "tie"
    for better in ("a", "b", "tie"):  # whatever the interval says
        assert verdict(better, "6/analysis", "6/first-k", "layers alike") == "not a test (layers alike)"
