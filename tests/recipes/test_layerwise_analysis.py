"""The layer-wise analysis recipe end to end on its `smoke` preset."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # 30 s (every stage of smoke) on the 2-core machine; pytest -m slow
def test_every_stage_writes_its_reports_and_figures(tmp_path, capsys, load_recipe):
    recipe = load_recipe("layerwise_analysis")
    out, published = tmp_path / "exp", tmp_path / "results"
    assert recipe.main(["--preset", "smoke", "--out", str(out), "--results", str(published)]) == 0
    for name in ("linear_cka", "pwcca", "attention_jsd", "per_layer_cca", "per_layer_probes", "per_layer_mi"):
        assert (out / f"analysis/asr_teacher/figures/{name}.png").stat().st_size > 1000
    ssl_reports = sorted(p.parent.name for p in (out / "analysis/ssl").glob("*/report.json"))
    assert ssl_reports == ["final", "step-2", "step-4"]
    dynamics = json.loads((out / "stages/06-dynamics/.done.json").read_text())["result"]["figures"]
    assert any(f.endswith("dynamics_cca_phone.png") for f in dynamics)
    assert any(f.endswith("pretraining_curves.png") for f in dynamics)
    cka = json.loads((out / "figures/dynamics_cka/comparison.json").read_text())
    assert len(cka["same_layer_cka"]) == 2 and all(len(c) == 3 for c in cka["same_layer_cka"])
    summary = (out / "summary.md").read_text()
    assert "| ESPnet ASR teacher | 3 |" in summary and "| wav2vec 2.0, final | 2 |" in summary
    assert summary in capsys.readouterr().out
    # the ESPnet teacher along its training: its two kept checkpoints analysed and scored, the tracking
    # table written (the smoke bound is undefined on 4 utterances: no points, said so)
    tracking = json.loads((out / "asr_dynamics/tracking.json").read_text())
    assert tracking["checkpoints"] == ["step 1", "step 2"] and tracking["wer_decoding"] == "CTC greedy"
    assert sorted(p.parent.name for p in (out / "asr_dynamics/analysis").glob("*/report.json")) == ["step-1", "step-2"]
    assert all(0.0 <= row["wer"] for row in tracking["per_checkpoint"].values())
    assert any(f.endswith("checkpoints_probe_phone_accuracy.png") for f in tracking["figures"])
    assert "| step 2 |" in (out / "asr_dynamics.md").read_text()
    # the table stage: the teacher's report and the tracking table, in the results folder and the output folder
    results = json.loads((published / "smoke.json").read_text())
    assert results == json.loads((out / "smoke.json").read_text())
    assert results["asr_teacher"]["layers"] == 3 and results["asr_dynamics"]["checkpoints"] == ["step 1", "step 2"]
    assert results["asr_teacher"]["report"]["data"] == "us/dev" and str(tmp_path) not in json.dumps(results)
    text = (published / "smoke.md").read_text()
    assert text.startswith("Preset `smoke`") and "| step 2 |" in text and "lowest linear CKA" in text


def test_a_teacher_from_another_recipe_is_reused_only_with_the_same_settings(tmp_path, load_recipe):
    """asr_teacher_run: a run with other data dirs and tokens but the same model, optimiser and
    limits is reused; one trained for other epochs is not (its differing section is named)."""
    import yaml

    from kd.recipes.experiment import training_differs
    from kd.training.config import TrainConfig

    recipe = load_recipe("layerwise_analysis")
    section = yaml.safe_load((recipe.HERE / "config.yaml").read_text())["cpu"]["asr_teacher"]
    other = {**section, "data": {**section["data"], "train": ["/elsewhere/us/train"], "dev": "/elsewhere/us/dev"},
             "tokens": {"kind": "list", "path": "/elsewhere/tokens.txt"}}
    saved = tmp_path / "config.yaml"
    saved.write_text(TrainConfig.from_dict(other).to_yaml())
    assert training_differs(saved, section) == []
    fewer = {**other, "optim": {**other["optim"], "max_epochs": 8}}
    saved.write_text(TrainConfig.from_dict(fewer).to_yaml())
    assert training_differs(saved, section) == ["optim"]


def test_a_pretraining_from_another_recipe_is_reused_only_with_the_same_settings(tmp_path, capsys, load_recipe):
    """ssl_run: a finished pre-training is analysed in place only when its SSLConfig is the preset's;
    one with other settings is trained again, saying why."""
    import yaml

    from kd.core.io import mark_done, write_json
    from kd.ssl.config import SSLConfig

    recipe = load_recipe("layerwise_analysis")
    presets = yaml.safe_load((recipe.HERE / "config.yaml").read_text())
    other = tmp_path / "other_ssl"
    other.mkdir()
    write_json(other / "ssl_config.json", SSLConfig.from_preset("tiny", normalize_waveforms=True).to_dict())
    mark_done(other, {"stage": "ssl-pretrain"})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"smoke": {**presets["smoke"], "ssl_run": str(other)}}))
    out = tmp_path / "exp"
    args = ["--preset", "smoke", "--config", str(config), "--out", str(out), "--stop-stage", "4"]
    assert recipe.main(args) == 0
    assert f"ssl_run {other}: pre-trained with other settings (['normalize_waveforms'] differ)" in capsys.readouterr().out
    result = json.loads((out / "stages/04-ssl-pretrain/.done.json").read_text())["result"]
    assert result["run"] == str(out / "ssl") and (out / "ssl/model/config.json").is_file()
    # the same settings: reused, not trained
    write_json(other / "ssl_config.json", SSLConfig.from_preset("tiny").to_dict())
    assert recipe.main(args + ["--stage", "4", "--force"]) == 0
    result = json.loads((out / "stages/04-ssl-pretrain/.done.json").read_text())["result"]
    assert result == {"run": str(other.resolve()), "reused": True}
