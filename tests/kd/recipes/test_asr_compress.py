"""kd.recipes.asr_compress: the verdict of a comparison, from per-utterance errors; the students' layer
distillation in the preset, the fine-tuning runs and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kd.recipes.asr_compress import TIE, compare


def _eval(folder, errors, words=5):
    folder.mkdir(parents=True)
    rows = [{"utt": f"u{i:02d}", "errors": e, "ref_words": words, "char_errors": 2 * e, "ref_chars": 4 * words}
            for i, e in enumerate(errors)]
    (folder / "utterances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_compare_names_the_better_side_only_when_the_interval_excludes_zero(tmp_path):
    few = {s: _eval(tmp_path / f"few{s}", [0, 1] * 20) for s in (0, 1)}
    many = {s: _eval(tmp_path / f"many{s}", [2, 3] * 20) for s in (0, 1)}
    noisy = {s: _eval(tmp_path / f"noisy{s}", [1, 0] * 20) for s in (0, 1)}
    # a makes 2 errors fewer per utterance of 5 words: 40 points, on every resample
    better = compare(few, many, metric="wer")
    assert better["better"] == "a" and better["diff"] == pytest.approx(-40.0) and better["ci95"][1] < 0
    assert compare(many, few, metric="cer")["better"] == "b"
    assert compare(few, many, metric="cer")["diff"] == pytest.approx(-20.0)  # 4 of 20 characters per utterance
    # the same total errors, spread differently: an interval around 0
    tie = compare(few, noisy, metric="wer")
    assert tie["better"] == TIE and tie["ci95"][0] < 0 < tie["ci95"][1]
    assert tie["seeds"] == 2 and tie["utterances"] == 40
    with pytest.raises(ValueError, match="same seeds"):
        compare(few, {0: many[0]}, metric="wer")


RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "asr_compress"


def test_students_fine_tune_from_their_distilled_selves_only_when_the_preset_distils(tmp_path):
    from kd.recipes.asr_compress import AsrCompressSetup, student_config

    smoke = yaml.safe_load((RECIPE / "config.yaml").read_text())["smoke"]
    distilled = AsrCompressSetup.from_preset(smoke, tmp_path, seeds=[0, 1], recipe_dir=RECIPE)
    assert distilled.layer_distill.optim.max_steps == 2 and distilled.layer_distill.optim.lr == 1e-4
    assert distilled.layer_distill.cos_weight == 1.0  # LayerDistillConfig's default: the section gives it in part
    init = student_config(distilled, "2/first-k", 1).model.init_from
    assert init == str(tmp_path / "layer_distill" / "2" / "first-k" / "seed1" / "student")
    direct = AsrCompressSetup.from_preset({**smoke, "layer_distill": None}, tmp_path, seeds=[0, 1], recipe_dir=RECIPE)
    assert direct.layer_distill is None
    assert student_config(direct, "2/first-k", 1).model.init_from == str(tmp_path / "students" / "2" / "first-k")


def test_the_table_of_a_run_without_layer_distillation_says_so_and_is_otherwise_as_it_was():
    """The committed results (written before the students could be distilled) render as they were committed,
    with one line more: how the students were trained."""
    from kd.recipes.asr_compress import results_markdown

    results = json.loads((RECIPE / "results" / "cpu_postln.json").read_text())
    line = "Students: the teacher's layers, fine-tuned directly with the hybrid loss (no layer distillation).\n\n"
    rendered = results_markdown(results)
    assert line in rendered and rendered.replace(line, "") == (RECIPE / "results" / "cpu_postln.md").read_text()
    distilled = results_markdown({**results, "layer_distill": {"steps": 250, "lr": 5e-4, "cos_weight": 1.0}})
    assert ("distilled layer to layer from the teacher (250 updates, peak learning rate 0.0005, cosine weight 1), "
            "then fine-tuned") in distilled


def _finished_run(out, setup, preset, errors, *, layer_distill=None):
    """A run's results file and its students' beam-search evaluations: ``errors[name]`` per utterance, every seed."""
    students = []
    for name in setup.students():
        for s in setup.seeds:
            _eval(setup.run_dir(name, s) / "eval-beam", errors[name])
        wer = 100.0 * sum(errors[name]) / (5 * len(errors[name]))
        students.append({"name": name, "keep_layers": [0, 1], "share_groups": None,
                         "beam": {"wer": wer, "cer": wer / 2}})
    return {"preset": preset, "domain": "us", "n_test": 40, "decode": {"beam_size": 2}, "seeds": list(setup.seeds),
            "teacher": {"layers": 3, "params": 1000, "beam": {"wer": 10.0, "cer": 5.0}, "greedy": {"wer": 12.0, "cer": 6.0}},
            "students": students, "layer_distill": layer_distill, "provenance": {"commit": f"c-{preset}"}}


def test_two_trainings_of_the_same_students_are_compared_student_by_student(tmp_path):
    from kd.recipes.asr_compress import AsrCompressSetup, compare_trainings, trainings_markdown

    smoke = yaml.safe_load((RECIPE / "config.yaml").read_text())["smoke"]
    a = AsrCompressSetup.from_preset(smoke, tmp_path / "a", seeds=[0, 1], recipe_dir=RECIPE)
    b = AsrCompressSetup.from_preset({**smoke, "layer_distill": None}, tmp_path / "b", seeds=[0, 1], recipe_dir=RECIPE)
    names = a.students()
    # a: 2 errors fewer per utterance than b for the first student, the same errors elsewhere
    b_errors = {n: [2, 3] * 20 for n in names}
    a_errors = {**b_errors, names[0]: [0, 1] * 20}
    ld = {"steps": 2, "lr": 1e-4, "cos_weight": 1.0}
    ra, rb = _finished_run(a.out, a, "ld", a_errors, layer_distill=ld), _finished_run(b.out, b, "direct", b_errors)
    prov = {"date": "2026-12-07", "commit": "abc", "cpu": "AMD EPYC"}
    result = compare_trainings(a, b, ra, rb, provenance=prov)
    assert result["name"] == "ld-vs-direct" and result["a"]["layer_distill"] == ld and result["b"]["commit"] == "c-direct"
    rows = {(c["student"], c["metric"]): c for c in result["comparisons"]}
    assert len(rows) == 2 * len(names)
    first = rows[(names[0], "wer")]
    assert first["diff"] == pytest.approx(-40.0) and first["verdict"] == "ld better" and first["a"] < first["b"]
    assert rows[(names[0], "cer")]["diff"] == pytest.approx(-20.0)
    assert all(rows[(n, m)]["verdict"] == TIE and rows[(n, m)]["diff"] == 0.0 for n in names[1:] for m in ("wer", "cer"))
    text = trainings_markdown(result)
    assert "- a: Students: the teacher's layers, distilled layer to layer" in text
    assert "- b: Students: the teacher's layers, fine-tuned directly" in text
    assert f"WER: `ld` better for 1 of {len(names)} students, `direct` better for 0, tie for {len(names) - 1}." in text
    # runs that do not share the teacher, the plans or the seeds are refused, naming what differs
    other_teacher = {**rb, "teacher": {**rb["teacher"], "beam": {"wer": 11.0, "cer": 5.0}}}
    with pytest.raises(ValueError, match=r"teacher\.beam differs.*ld.*direct"):
        compare_trainings(a, b, ra, other_teacher, provenance=prov)
    moved = {**rb, "students": [{**rb["students"][0], "keep_layers": [0, 2]}, *rb["students"][1:]]}
    with pytest.raises(ValueError, match=f"{names[0]}: keep_layers differs"):
        compare_trainings(a, b, ra, moved, provenance=prov)
    with pytest.raises(ValueError, match="seeds differs"):
        compare_trainings(a, b, ra, {**rb, "seeds": [0]}, provenance=prov)
