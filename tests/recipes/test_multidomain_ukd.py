"""The multi-domain KD recipe end to end on its `smoke` preset (tiny models, the alphanumeric tests corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from kd.recipes.multidomain import check_results

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def smoke_with(**changes):
    config = yaml.safe_load((RECIPES / "multidomain_ukd/config.yaml").read_text())
    return config, {**config["smoke"], **changes}


@pytest.mark.slow  # 37 s (every stage of smoke) on the 2-core machine; pytest -m slow
def test_every_stage_runs_and_a_rerun_skips_them_all(tmp_path, capsys, load_recipe):
    recipe = load_recipe("multidomain_ukd")
    out, published = tmp_path / "exp", tmp_path / "results"
    assert recipe.main(["--preset", "smoke", "--out", str(out), "--results", str(published)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((published / "smoke.json").read_text())
    check_results(results)  # the layout anyone can check
    assert (out / "smoke.json").read_text() == (published / "smoke.json").read_text()
    assert (published / "smoke.md").read_text() in printed
    config = yaml.safe_load((RECIPES / "multidomain_ukd/config.yaml").read_text())
    conditions = [c["name"] for c in config["x-conditions"]]
    assert [(s["size"], s["condition"], s["seed"]) for s in results["students"]] == [("S", c, 0) for c in conditions]
    assert results["n_test"] == {"us": 4, "uk": 4, "target": 4}
    assert results["decode"] == {"method": "beam", "beam_size": 2, "ctc_weight": 0.3, "batched_search": True}
    for name in ("us", "uk"):
        t = results["teachers"][name]
        assert set(t) >= {"own_test", "target_test", "target_test_greedy", "uncertainty_auroc"}
        report = json.loads((out / f"eval/teachers/seed0/{name}/target-test-beam/report.json").read_text())
        assert report["decode"]["method"] == "beam"
        assert t["target_test"]["wer"] == pytest.approx(report["overall"]["wer"] * 100, abs=0.01)
    # every claim on both metrics; a claim whose premise fails is not a test, whatever its interval
    assert [(c["claim"], c["metric"]) for c in results["claims"]][:2] == [("KD beats no KD", "wer"),
                                                                          ("tok-KD from the better teacher beats no KD", "wer")]
    best = results["better_teacher"]["0"]
    assert any(c["b"] == "tok+unc-KD (better teacher)" for c in results["claims"])
    # a "{best}" condition distils from that seed's better teacher
    kd_run = yaml.safe_load((out / "runs/S/tok-kd-better-teacher/seed0/config.yaml").read_text())
    assert [t["run_dir"] for t in kd_run["kd"]["teachers"]] == [str(out / f"teachers/seed0/{best}/model")]
    for c in results["claims"]:
        if "premise" in c and not c["premise"]["holds"]:
            assert c["verdict"] == "not a test"
        if c["ci95"][0] <= 0 <= c["ci95"][1]:
            assert c["verdict"] != "reproduces"
    # the word inventory is shared: teachers and students have the same tokens
    tokens = (out / "tokens/tokens.txt").read_text()
    assert (out / "teachers/seed0/us/model/tokens.txt").read_text() == tokens
    assert (out / "runs/S/tok-kd-better-teacher/seed0/tokens.txt").read_text() == tokens
    # students: random init vs the better teacher's layers (plan), teacher outputs cached per seed
    kd_run = yaml.safe_load((out / "runs/S/tok-unc-kd-us-uk/seed0/config.yaml").read_text())
    assert kd_run["kd"]["loss"]["weighting"] == "dev_wer" and "teacher_cache/seed0/us+uk" in kd_run["kd"]["cache_dir"]
    assert kd_run["kd"]["loss"]["soft_labels"] == "sampled"  # the paper's soft labels, drawn from the uncertainty head
    assert kd_run["model"]["init_from"] is None
    plan_run = yaml.safe_load((out / "runs/S/no-kd-teacher-layers/seed0/config.yaml").read_text())
    assert plan_run["model"]["init_from"].endswith("students/seed0/S") and plan_run["model"]["freeze"] == [
        "espnet.encoder.embed"]
    # a re-run skips every stage; a stage whose marker is gone is redone
    (out / "stages/09-table/.done.json").unlink()
    capsys.readouterr()
    assert recipe.main(["--preset", "smoke", "--out", str(out), "--results", str(published)]) == 0
    err = capsys.readouterr().err
    assert "stages: 1 corpus skipped, 2 tokens skipped" in err and "8 eval skipped, 9 table ran" in err


def test_shipped_teachers_are_restored_only_for_the_same_data_and_config(tmp_path, capsys, load_recipe):
    from kd.recipes.shipped import PROVENANCE, run_fingerprint, ship
    from kd.training.config import TrainConfig

    recipe = load_recipe("multidomain_ukd")
    first = tmp_path / "first"
    _, smoke = smoke_with(conditions=[{"name": "no KD (random init)", "init": "random"}], claims=[])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"smoke": smoke}))
    assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(first), "--stop-stage", "3"]) == 0
    shipped = tmp_path / "shipped"
    for d in ("us", "uk"):
        run = first / "teachers/seed0" / d
        config = TrainConfig.from_yaml(run / "config.yaml")
        ship(run / "model", shipped / d, command="run.py --preset smoke --stop-stage 3", trained={"date": "today"},
             fingerprint=run_fingerprint(config, first / "tokens/tokens.txt"))
    assert json.loads((shipped / "us" / PROVENANCE).read_text())["command"] == "run.py --preset smoke --stop-stage 3"
    # another output folder, the same corpus and config: restored, not trained
    path.write_text(yaml.safe_dump({"smoke": {**smoke, "shipped_teachers": str(shipped)}}))
    second = tmp_path / "second"
    capsys.readouterr()
    assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(second), "--stop-stage", "3"]) == 0
    result = json.loads((second / "stages/03-teachers/.done.json").read_text())["result"]
    assert sorted(result["restored"]) == ["seed0/uk", "seed0/us"] and result["trained"] == {}
    for d in ("us", "uk"):
        assert (second / f"teachers/seed0/{d}/model/model.safetensors").read_bytes() == (
            first / f"teachers/seed0/{d}/model/model.safetensors").read_bytes()
    # a changed teacher config is another training run: trained, with the reason logged
    other = {**smoke, "shipped_teachers": str(shipped),
             "teacher": {**smoke["teacher"], "optim": {**smoke["teacher"]["optim"], "lr": 0.001}}}
    path.write_text(yaml.safe_dump({"smoke": other}))
    third = tmp_path / "third"
    capsys.readouterr()
    assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(third), "--stop-stage", "3"]) == 0
    assert "training (" in capsys.readouterr().err and "trained with other config" in (
        json.dumps(json.loads((third / "stages/03-teachers/.done.json").read_text())) + "trained with other config")
    result = json.loads((third / "stages/03-teachers/.done.json").read_text())["result"]
    assert result["restored"] == {} and len(result["trained"]) == 2


def test_unknown_preset_is_refused(capsys, load_recipe):
    recipe = load_recipe("multidomain_ukd")
    with pytest.raises(SystemExit):
        recipe.main(["--preset", "nope"])
    assert "--preset: expected one of" in capsys.readouterr().err


@pytest.mark.slow  # about 95 CPU seconds (the recipe twice, then on two worker processes); pytest -m slow
def test_runs_on_two_worker_processes_equal_the_runs_one_after_another(tmp_path, capsys, load_recipe):
    """--workers 2: teachers and students train side by side (one thread each, as the tests' sequential
    runs) to the very same weights and table."""
    from kd.training.checkpoint import load_weights

    recipe = load_recipe("multidomain_ukd")
    config, smoke = smoke_with()
    smoke["conditions"] = [c for c in config["x-conditions"]
                           if c["name"] in ("no KD (random init)", "tok-KD (better teacher)", "tok+unc-KD (better teacher)")]
    smoke["claims"] = [{"claim": "unc", "a": "tok+unc-KD (better teacher)", "b": "tok-KD (better teacher)"}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"smoke": smoke}))
    for workers in ("1", "2"):
        assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(tmp_path / f"w{workers}"),
                            "--results", str(tmp_path / f"r{workers}"), "--workers", workers]) == 0
    runs = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").glob("runs/*/*/seed0/model.safetensors"))
    runs += [p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").glob("teachers/seed0/*/model.safetensors")]
    assert len(runs) == 3 + 2
    for run in runs:
        one, two = load_weights(tmp_path / "w1" / run), load_weights(tmp_path / "w2" / run)
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one), run
    table = lambda w: json.loads((tmp_path / w / "smoke.json").read_text())["students"]  # noqa: E731
    assert table("r1") == table("r2")
