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
