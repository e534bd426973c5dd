"""The multi-domain KD recipe end to end on its `smoke` preset (tiny models, the tests corpus)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.recipes.conftest import RECIPES


def smoke_size_s(conditions):
    """The recipe's config and a copy of its smoke preset with size S only and ``conditions``."""
    config = yaml.safe_load((RECIPES / "multidomain_ukd/config.yaml").read_text())
    smoke = {**config["smoke"], "student_sizes": {"S": config["smoke"]["student_sizes"]["S"]}, "conditions": conditions,
             "comparisons": []}
    return config, smoke


def test_every_stage_runs_and_a_rerun_skips_them_all(tmp_path, capsys, load_recipe):
    recipe = load_recipe("multidomain_ukd")
    out = tmp_path / "exp"
    assert recipe.main(["--preset", "smoke", "--out", str(out), "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    config = yaml.safe_load((RECIPES / "multidomain_ukd/config.yaml").read_text())
    conditions = [c["name"] for c in config["x-conditions"]]
    rows = [(s["size"], s["condition"]) for s in results["students"]]
    assert rows == [(size, c) for size in ("S", "XS") for c in conditions]
    for s in results["students"]:
        assert 0.0 <= s["target_wer"]["mean"] and s["seeds"] == 1
    assert "| S | tok+unc-KD (us+uk) |" in printed
    assert (out / "results.md").read_text() in printed
    # students were built from the best teacher's layers by the plan
    built = json.loads((out / "stages/06-students/.done.json").read_text())["result"]
    assert built["init_teacher"] in ("us", "uk")
    assert len(built["S"]["encoder_layers"]) == 2 and built["XS"]["decoder_layers"] == [0]
    # XS shares one set of weights across all 3 teacher layers (share_encoder: true)
    assert built["XS"]["encoder_layers"] == [0, 1, 2] and len(built["XS"]["share_groups"][0]) == 3
    xs = yaml.safe_load((out / "runs/XS/no-kd/seed0/model_config.yaml").read_text())
    assert len(xs["encoder_share_groups"][0]) == 3
    plan_student = json.loads((out / "runs/S/no-kd/seed0/result.json").read_text())
    assert plan_student["steps"] == 1
    # student_freeze: a student built from the teacher's layers keeps the teacher's convolutional
    # subsampling and trains the rest; a random-init student trains everything
    from kd.training.checkpoint import load_weights

    init = load_weights(out / "students/S/init/model.safetensors")
    trained = load_weights(out / "runs/S/no-kd/seed0/model.safetensors")
    embed = [k for k in init if k.startswith("espnet.encoder.embed.")]
    assert embed and all(torch.equal(init[k], trained[k]) for k in embed)
    assert not torch.equal(init["espnet.ctc.ctc_lo.weight"], trained["espnet.ctc.ctc_lo.weight"])
    run_model = {c: yaml.safe_load((out / f"runs/S/{c}/seed0/config.yaml").read_text())["model"]
                 for c in ("no-kd", "no-kd-random-init")}
    assert run_model["no-kd"]["freeze"] == ["espnet.encoder.embed"] and run_model["no-kd-random-init"]["freeze"] == []
    # the two-teacher condition weights teachers by their target dev WER and caches their outputs
    both = (out / "runs/S/tok-unc-kd-us-uk/seed0/config.yaml").read_text()
    assert "dev_wer" in both and "teacher_cache/us+uk" in both
    # target test error rates by recording condition: teachers and every condition of size S, seeds pooled
    by_condition = json.loads((out / "results-conditions.json").read_text())
    assert set(by_condition) == {"teacher us", "teacher uk", *[f"S {c}" for c in conditions]}
    for system in by_condition.values():
        total = system["all"]["all"]["utterances"]
        assert total == 4  # the tests preset's target test set
        assert sum(g["utterances"] for g in system["noise"].values()) == total
        assert sum(g["utterances"] for g in system["clean_dry"].values()) == total
    assert "| clean_dry |" in (out / "results-conditions.md").read_text()
    # a re-run skips every stage, and a stage whose marker is gone is redone
    marker = out / "stages/09-table/.done.json"
    marker.unlink()
    capsys.readouterr()
    assert recipe.main(["--preset", "smoke", "--out", str(out), "--seeds", "0"]) == 0
    err = capsys.readouterr().err
    assert "stages: 1 corpus skipped, 2 tokens skipped" in err and "8 eval skipped, 9 table ran" in err
    # a second seed: the table pairs every condition with `no KD` seed by seed, and the preset's
    # comparisons (the papers' claims) get paired differences with a confidence interval
    assert recipe.main(["--preset", "smoke", "--out", str(out), "--seeds", "0", "1"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    # the smoke preset ranks and reports by WER (teacher_metric: wer, the default)
    runs = {(r["size"], r["condition"], r["seed"]): r["target_wer"] for r in json.loads((out / "runs.json").read_text())}
    assert len(runs) == 2 * len(conditions) * 2
    for s in results["students"]:
        assert s["seeds"] == 2
        if s["condition"] != "no KD":
            diffs = [runs[s["size"], s["condition"], k] - runs[s["size"], "no KD", k] for k in (0, 1)]
            assert s["paired"]["mean"] == pytest.approx(sum(diffs) / 2) and s["paired"]["runs"] == 2
    pairs = config["smoke"]["comparisons"]
    assert [(c["size"], c["a"], c["b"]) for c in results["comparisons"]] == [
        (size, a, b) for size in ("S", "XS") for a, b in pairs]
    for c in results["comparisons"]:
        diffs = [runs[c["size"], c["a"], k] - runs[c["size"], c["b"], k] for k in (0, 1)]
        assert c["mean"] == pytest.approx(sum(diffs) / 2) and c["a_lower"] == sum(d < 0 for d in diffs)
    assert "Paired differences of target_wer over seeds [0, 1]" in printed and "Δ paired (points)" in printed


def test_heuristic_plan_conditions_reuse_the_finished_runs(tmp_path, capsys, load_recipe):
    """A preset adding plan conditions to a finished folder trains only the new runs, into its own table."""
    recipe = load_recipe("multidomain_ukd")
    out = tmp_path / "exp"
    _, smoke = smoke_size_s([{"name": "no KD", "init": "plan"}])
    plans = {**smoke, "conditions": [{"name": "no KD", "init": "plan"},
                                     {"name": "no KD (first-k plan)", "plan": "first-k"},
                                     {"name": "no KD (linspace plan)", "plan": "linspace"}],
             "results_name": "results-plans"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"smoke": smoke, "plans": plans}))
    assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(out), "--seeds", "0"]) == 0
    first = (out / "runs/S/no-kd/seed0/model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert recipe.main(["--preset", "plans", "--config", str(path), "--out", str(out), "--seeds", "0"]) == 0
    assert "stages: 1 corpus skipped" in capsys.readouterr().err
    assert (out / "runs/S/no-kd/seed0/model.safetensors").stat().st_mtime_ns == first  # not trained again
    built = json.loads((out / "stages/06-students/.done.json").read_text())["result"]
    assert built["S-first-k"]["encoder_layers"] == [0, 1] and built["S-linspace"]["encoder_layers"] == [0, 2]
    student = yaml.safe_load((out / "runs/S/no-kd-first-k-plan/seed0/config.yaml").read_text())
    assert student["model"]["init_from"].endswith("students/S/init-first-k")
    rows = [s["condition"] for s in json.loads((out / "results-plans.json").read_text())["students"]]
    assert rows == ["no KD", "no KD (first-k plan)", "no KD (linspace plan)"]
    assert (out / "results.md").is_file() and (out / "results-plans.md").is_file()  # each preset its own table
    # another student_freeze is another distillation: stage 7 runs again and the run trains anew
    path.write_text(yaml.safe_dump({"smoke": smoke, "unfrozen": {**smoke, "student_freeze": []}}))
    assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(out), "--seeds", "0"]) == 0
    capsys.readouterr()
    assert recipe.main(["--preset", "unfrozen", "--config", str(path), "--out", str(out), "--seeds", "0"]) == 0
    assert "6 students skipped, 7 distill ran" in capsys.readouterr().err
    assert yaml.safe_load((out / "runs/S/no-kd/seed0/config.yaml").read_text())["model"]["freeze"] == []
    assert [p.name for p in (out / "runs/S/no-kd").iterdir() if p.name.startswith("seed0.replaced-")]


def test_a_low_resource_target_preset_trains_on_a_subset_in_its_own_folders(tmp_path, capsys, load_recipe):
    """target_train_utterances: the students train on a seeded subset; runs_name keeps the other
    preset's runs and teacher cache untouched."""
    recipe = load_recipe("multidomain_ukd")
    out = tmp_path / "exp"
    _, smoke = smoke_size_s(None)
    smoke["conditions"] = [{"name": "no KD", "init": "plan"},
                           {"name": "tok-KD (us)", "teachers": ["us"], "beta": 1.0},
                           {"name": "frame-KD (us)", "teachers": ["us"], "beta": 0.5, "level": "frame"}]
    low = {**smoke, "target_train_utterances": 5, "runs_name": "runs-low5", "results_name": "results-low5",
           "student": {**smoke["student"], "checkpoint": {"keep_last": 1, "average_best": 1, "best_by": "acc"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"smoke": smoke, "low": low}))
    assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(out), "--seeds", "0"]) == 0
    first = (out / "runs/S/tok-kd-us/seed0/model.safetensors").stat().st_mtime_ns
    cache = sorted(p.name for p in (out / "teacher_cache/us").rglob("*"))
    assert recipe.main(["--preset", "low", "--config", str(path), "--out", str(out), "--seeds", "0"]) == 0
    subset = out / "corpus/target/train-5"
    assert len((subset / "wav.scp").read_text().splitlines()) == 5
    student = yaml.safe_load((out / "runs-low5/S/tok-kd-us/seed0/config.yaml").read_text())
    assert student["data"]["train"] == [str(subset)] and student["checkpoint"]["best_by"] == "acc"
    assert student["kd"]["cache_dir"].endswith("teacher_cache-runs-low5/us")
    assert (out / "runs/S/tok-kd-us/seed0/model.safetensors").stat().st_mtime_ns == first  # untouched
    assert sorted(p.name for p in (out / "teacher_cache/us").rglob("*")) == cache
    rows = json.loads((out / "results-low5-runs.json").read_text())
    assert [r["condition"] for r in rows] == ["no KD", "tok-KD (us)", "frame-KD (us)"]
    frame = yaml.safe_load((out / "runs-low5/S/frame-kd-us/seed0/config.yaml").read_text())
    assert frame["kd"]["loss"]["level"] == "frame" and frame["kd"]["cache_dir"].endswith("teacher_cache-runs-low5/us-frame")
    assert (out / "results-low5.md").is_file() and (out / "results.md").is_file()


def test_unknown_preset_is_refused(capsys, load_recipe):
    recipe = load_recipe("multidomain_ukd")
    with pytest.raises(SystemExit):
        recipe.main(["--preset", "nope"])
    assert "--preset: expected one of" in capsys.readouterr().err


def test_runs_on_two_worker_processes_equal_the_runs_one_after_another(tmp_path, capsys, load_recipe):
    """--workers 2: the teachers and the student runs train side by side (one thread each, as the
    tests' sequential runs) to the very same weights and table; conditions sharing a teacher cache
    wait for the one that fills it."""
    from kd.training.checkpoint import load_weights

    recipe = load_recipe("multidomain_ukd")
    config, smoke = smoke_size_s(None)
    smoke["conditions"] = [c for c in config["x-conditions"]
                           if c["name"] in ("no KD", "tok-KD (us)", "tok+unc-KD (us)", "tok+unc-KD (us+uk)")]
    smoke["comparisons"] = [["tok+unc-KD (us)", "tok-KD (us)"]]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"smoke": smoke}))
    for workers in ("1", "2"):
        assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(tmp_path / f"w{workers}"),
                            "--seeds", "0", "--workers", workers]) == 0
    assert "2 jobs on 2 worker processes" in capsys.readouterr().out
    runs = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").glob("*/*/*/seed0/model.safetensors"))
    runs += [p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").glob("teachers/*/model.safetensors")]
    assert len(runs) == 4 + 2
    for run in runs:
        one, two = load_weights(tmp_path / "w1" / run), load_weights(tmp_path / "w2" / run)
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one), run
    def table(w):  # the error rates; the real-time factor is a timing
        return [{k: v for k, v in s.items() if k != "rtf"} for s in json.loads((tmp_path / w / "results.json").read_text())["students"]]

    assert table("w1") == table("w2")
    assert [c["a"] for c in json.loads((tmp_path / "w1/results.json").read_text())["comparisons"]] == ["tok+unc-KD (us)"]
    with pytest.raises(SystemExit):
        recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(tmp_path / "w0"), "--workers", "0"])


def test_a_test_decoding_preset_scores_finished_runs_into_its_own_reports(tmp_path, capsys, load_recipe):
    """test_decode: stage 8 decodes the test sets another way (here joint CTC/attention beam search)
    into RUN/eval-<name>/ and the teachers' test-<name>/; the CTC-greedy reports, the teacher
    ranking of stage 4 and the trained runs stay as they were."""
    recipe = load_recipe("multidomain_ukd")
    out = tmp_path / "exp"
    _, smoke = smoke_size_s([{"name": "no KD", "init": "plan"}])
    joint = {**smoke, "test_decode": {"method": "beam", "beam_size": 2, "ctc_weight": 0.3, "maxlenratio": -5.0},
             "test_decode_name": "joint", "test_teacher_domains": False, "results_name": "results-joint"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"smoke": smoke, "joint": joint}))
    assert recipe.main(["--preset", "smoke", "--config", str(path), "--out", str(out), "--seeds", "0"]) == 0
    greedy = (out / "runs/S/no-kd/seed0/eval/report.json").read_text()
    weights = (out / "runs/S/no-kd/seed0/model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert recipe.main(["--preset", "joint", "--config", str(path), "--out", str(out), "--seeds", "0"]) == 0
    err = capsys.readouterr().err
    assert "4 teacher-eval skipped" in err and "8 eval ran" in err
    assert (out / "runs/S/no-kd/seed0/eval/report.json").read_text() == greedy
    assert (out / "runs/S/no-kd/seed0/model.safetensors").stat().st_mtime_ns == weights  # not trained again
    report = json.loads((out / "runs/S/no-kd/seed0/eval-joint/report.json").read_text())
    assert report["decode"]["method"] == "beam" and report["decode"]["beam_size"] == 2
    assert list(report["domains"]) == ["target"]  # test_teacher_domains: false
    results = json.loads((out / "results-joint.json").read_text())
    for d in ("us", "uk"):
        teacher = json.loads((out / "eval/teachers" / d / "test-joint/report.json").read_text())
        assert teacher["decode"]["method"] == "beam"
        assert results["teachers"][d]["target_wer"] == teacher["domains"]["target"]["wer"]
    assert results["students"][0]["target_wer"]["values"] == [report["domains"]["target"]["wer"]]
    assert "us_wer" not in results["students"][0] and "us_wer" not in results["teachers"]["us"]
    assert "'method': 'beam'" in (out / "results-joint-conditions.md").read_text()
