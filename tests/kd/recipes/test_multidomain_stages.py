"""The multi-domain benchmark's stages as library functions: the preset parsed, run settings, the results
file assembled from the stages' outputs (fake evaluations; the recipe test runs the real ones)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from kd.recipes.experiment import Condition, StudentSize
from kd.recipes.multidomain import Claim, check_results
from kd.recipes.multidomain_stages import (MultidomainSetup, publish_results, results_table, ship_teachers,
                                           student_config, student_rows, teacher_config, teacher_means)
from kd.training.losses import KDLevel, TeacherWeighting

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
SMOKE = yaml.safe_load((RECIPES / "multidomain_ukd/config.yaml").read_text())["smoke"]


def _sectioned():
    """A ``section`` callback that records the sections entered and names the failing one."""
    entered = []

    @contextlib.contextmanager
    def section(key):
        entered.append(key)
        try:
            yield
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"[{key}] {e}") from e

    return section, entered


def test_from_preset_parses_every_section_in_order_and_lays_out_the_output_folder(tmp_path):
    section, entered = _sectioned()
    setup = MultidomainSetup.from_preset(SMOKE, tmp_path, seeds=[0, 1], recipe_dir=tmp_path / "recipe",
                                         section=section)
    # (keys, types and the sizes, conditions and claims themselves: checked as the preset is read)
    assert entered == ["decode", "claims", "analysis", "teacher", "student / conditions"]
    assert setup.domains == ("us", "uk") and setup.target == "target" and setup.seeds == (0, 1)
    assert setup.sizes == (StudentSize("S", 2, (1,)),) and setup.shipped is None
    assert setup.freeze == ("espnet.encoder.embed",) and setup.analysis.max_utterances == 6
    assert setup.tokens_section == {"kind": "sentencepiece", "path": str(tmp_path / "tokens/words.model")}
    size, condition = setup.sizes[0], setup.conditions[-1]
    assert setup.run_dir(size, condition, 1) == tmp_path / "runs/S/frame-kd-better-teacher/seed1"
    assert setup.cells()[:2] == [(size, setup.conditions[0], 0), (size, setup.conditions[0], 1)]
    assert len(setup.cells()) == len(setup.conditions) * 2
    shipped = MultidomainSetup.from_preset({**SMOKE, "shipped_teachers": "teachers"}, tmp_path, seeds=[0],
                                           recipe_dir=tmp_path / "recipe")
    assert shipped.shipped == tmp_path / "recipe/teachers"


@pytest.mark.parametrize("change,expected", [
    ({"tokens": "bpe"}, "preset.tokens: expected one of ['words', 'chars'], found 'bpe'"),
    ({"student_sizes": {"S": {"encoder_layers": 2}}}, "preset: student_sizes.S.decoder_keep: required field missing"),
    ({"claims": [{"claim": "x", "a": "no KD (random init)", "b": "nope"}]},
     "[claims] 'nope' is not a condition of this preset"),
    ({"student_freeze": "espnet"}, "preset.student_freeze: expected a list (each item a string), found 'espnet'"),
    ({"student_freeze": [""]}, "preset: student_freeze: expected parameter names or prefixes, found ['']"),
    ({"analysis": {"probe_epoch": 2}}, "[analysis] AnalyzeConfig: unknown field 'probe_epoch'"),
    ({"teacher": {"model": {"preset": "tiny"}, "optim": {"stepz": 1}}}, "[teacher] TrainConfig.optim"),
    ({"student": {"optim": {"lr_max": 1.0}}}, "[student / conditions] TrainConfig.optim: unknown field 'lr_max'"),
])
def test_from_preset_names_the_section_of_a_bad_value(change, expected, tmp_path):
    section, _ = _sectioned()
    with pytest.raises(ValueError) as info:
        MultidomainSetup.from_preset({**SMOKE, **change}, tmp_path, seeds=[0], recipe_dir=tmp_path, section=section)
    assert expected in str(info.value)


def test_teacher_and_student_runs_use_the_shared_tokens_and_the_teachers_dev_wers(tmp_path):
    setup = MultidomainSetup.from_preset({**SMOKE, "tokens": "chars"}, tmp_path, seeds=[3], recipe_dir=tmp_path)
    teacher = teacher_config(setup, "uk", 3)
    assert list(teacher.data.train) == [str(tmp_path / "corpus/uk/train")] and teacher.seed == 3
    assert teacher.tokens.path == str(tmp_path / "tokens/tokens.txt")
    two = next(c for c in setup.conditions if c.weighting is TeacherWeighting.DEV_WER)
    evaluated = {"seed3/us": {"target_dev_beam": {"wer": 30.0}}, "seed3/uk": {"target_dev_beam": {"wer": 50.0}}}
    assert student_config(setup, setup.sizes[0], two, 3, evaluated).kd.loss.dev_wers == (0.3, 0.5)
    before = student_config(setup, setup.sizes[0], two, 3, None)  # teacher-eval not run: every teacher alike
    assert before.kd.loss.dev_wers == (1.0, 1.0)
    assert [t.run_dir for t in before.kd.teachers] == [str(tmp_path / f"teachers/seed3/{d}/model")
                                                       for d in ("us", "uk")]
    assert before.kd.cache_dir == str(tmp_path / "teacher_cache/seed3/us+uk")
    frame = next(c for c in setup.conditions if c.level is KDLevel.FRAME)  # the presets' frame-KD condition
    framed = student_config(setup, setup.sizes[0], frame, 3, {**evaluated, "seed3/best": "uk"})
    assert framed.kd.loss.level is KDLevel.FRAME and framed.kd.loss.beta == 1.0
    assert [t.run_dir for t in framed.kd.teachers] == [str(tmp_path / "teachers/seed3/uk/model")]
    assert framed.kd.cache_dir == str(tmp_path / "teacher_cache/seed3/uk-frame")  # not the token-level cache
    planned = student_config(setup, setup.sizes[0], Condition("p", init="plan"), 3, None)
    assert planned.model.init_from == str(tmp_path / "students/seed3/S") and planned.data.dev == str(
        tmp_path / "corpus/target/dev")


def test_a_condition_of_the_better_teacher_distils_from_each_seeds_better_teacher(tmp_path):
    """teachers: ["{best}"]: the teacher chosen on the target dev set of that seed (the first domain
    before the teachers are evaluated), with the cache of that teacher."""
    setup = MultidomainSetup.from_preset({**SMOKE, "tokens": "chars"}, tmp_path, seeds=[0, 1], recipe_dir=tmp_path)
    better = Condition.from_dict({"name": "tok-KD (better teacher)", "init": "random", "teachers": ["{best}"],
                                  "beta": 1.0})
    evaluated = {"seed0/best": "uk", "seed1/best": "us",
                 **{f"seed{s}/{d}": {"target_dev_beam": {"wer": 40.0}} for s in (0, 1) for d in ("us", "uk")}}
    for seed, domain in ((0, "uk"), (1, "us")):
        config = student_config(setup, setup.sizes[0], better, seed, evaluated)
        assert [t.run_dir for t in config.kd.teachers] == [str(tmp_path / f"teachers/seed{seed}/{domain}/model")]
        assert config.kd.cache_dir == str(tmp_path / f"teacher_cache/seed{seed}/{domain}")
    before = student_config(setup, setup.sizes[0], better, 0, None)
    assert [t.run_dir for t in before.kd.teachers] == [str(tmp_path / "teachers/seed0/us/model")]


def test_a_fixed_teacher_seed_teaches_every_students_seed(tmp_path):
    """teacher_seed: 0 with students' seeds 0, 1, 2: one pair of teachers (seed 0's) trained, evaluated and
    analysed once; every student seed learns from them, each with its own cache and its own student."""
    setup = MultidomainSetup.from_preset({**SMOKE, "teacher_seed": 0}, tmp_path, seeds=[0, 1, 2], recipe_dir=tmp_path)
    assert setup.teacher_seeds == (0,) and [setup.teacher_seed(s) for s in (0, 1, 2)] == [0, 0, 0]
    two = next(c for c in setup.conditions if c.weighting is TeacherWeighting.DEV_WER)
    evaluated = {"seed0/best": "uk", "seed0/us": {"target_dev_beam": {"wer": 30.0}},
                 "seed0/uk": {"target_dev_beam": {"wer": 50.0}}}  # no seed 1 or 2 teachers: a KeyError if read
    config = student_config(setup, setup.sizes[0], two, 2, evaluated)
    assert config.seed == 2 and config.kd.loss.dev_wers == (0.3, 0.5)
    assert [t.run_dir for t in config.kd.teachers] == [str(tmp_path / f"teachers/seed0/{d}/model") for d in ("us", "uk")]
    assert config.kd.cache_dir == str(tmp_path / "teacher_cache/seed2/us+uk")
    default = MultidomainSetup.from_preset(SMOKE, tmp_path, seeds=[0, 1], recipe_dir=tmp_path)
    assert default.teacher_seeds == (0, 1) and default.teacher_seed(1) == 1
    with pytest.raises(ValueError, match="teacher_seed"):
        MultidomainSetup.from_preset({**SMOKE, "teacher_seed": "zero"}, tmp_path, seeds=[0], recipe_dir=tmp_path)


def _teacher_run(folder, *, finished=True, restored=False):
    """A teacher's run dir as stage 3 leaves it: trained (model, config, result), restored (model only) or
    unfinished (config only, no checkpoint)."""
    from kd.training.config import TrainConfig

    folder.mkdir(parents=True)
    if not restored:
        config = TrainConfig.from_dict({"data": {"train": ["train"], "dev": "dev"},
                                        "tokens": {"kind": "list", "path": "t"}, "model": {"preset": "tiny"},
                                        "optim": {"max_steps": 2}})
        (folder / "config.yaml").write_text(config.to_yaml())
    if finished or restored:
        (folder / "model").mkdir()
        (folder / "model/model.safetensors").write_bytes(folder.parent.name.encode() + b" weights")
    if finished and not restored:
        (folder / "result.json").write_text(json.dumps({"wall_seconds": 10.0}))
    return folder


def test_each_seeds_teachers_are_shipped_and_restored_from_their_own_folder(tmp_path, monkeypatch, capsys):
    """Seed 0's teachers live in teachers/<domain> (the main job's), another seed's in teachers/seed<N>/<domain>;
    a restored teacher is not shipped again, and a resume point is shipped for unfinished runs only."""
    from kd.recipes import shipped

    monkeypatch.setattr(shipped, "run_fingerprint", lambda config, tokens: {"tokens": str(tokens)})
    setup = MultidomainSetup.from_preset({**SMOKE, "shipped_teachers": "teachers"}, tmp_path / "out", seeds=[0, 1],
                                         recipe_dir=tmp_path / "recipe")
    assert [setup.shipped_teacher(s, d) for s, d in ((0, "us"), (1, "uk"))] == [
        tmp_path / "recipe/teachers/us", tmp_path / "recipe/teachers/seed1/uk"]
    _teacher_run(setup.teacher_run(0, "us"), restored=True)
    for seed, d in ((0, "uk"), (1, "us"), (1, "uk")):
        _teacher_run(setup.teacher_run(seed, d))
    base = tmp_path / "shipped"
    written = ship_teachers(setup, base, command=lambda seed: f"retrain --seeds {seed}", trained={"date": "today"})
    assert written == [base / "uk", base / "seed1/us", base / "seed1/uk"]
    assert (base / "seed1/us/model.safetensors").read_bytes() == b"seed1 weights"
    assert json.loads((base / "seed1/uk/provenance.json").read_text())["command"] == "retrain --seeds 1"
    assert not (base / "us").exists()
    assert f"not shipped: {setup.teacher_run(0, 'us')} was restored from {tmp_path / 'recipe/teachers/us'}" in (
        capsys.readouterr().out)
    # as resume points: the finished runs are named and left alone; an unfinished run without a checkpoint is an error
    assert ship_teachers(setup, tmp_path / "resume", command=str, trained={}, resume_points=True) == []
    out = capsys.readouterr().out
    assert "not shipped as a resume point: " + str(setup.teacher_run(1, "uk")) in out and "restored" in out
    one = MultidomainSetup.from_preset({**SMOKE, "shipped_teachers": "teachers"}, tmp_path / "out2", seeds=[2],
                                       recipe_dir=tmp_path / "recipe")
    _teacher_run(one.teacher_run(2, "us"), finished=False)
    with pytest.raises(ValueError, match="seed2/us"):
        ship_teachers(one, tmp_path / "resume", command=str, trained={}, resume_points=True)


def _report(wer, cer=None, utterances=4, params=1000):
    return {"wer": wer, "cer": wer / 2 if cer is None else cer, "utterances": utterances, "params": params}


def _uncertainty(own, target, correlation):
    summary = lambda auroc: {"auroc": auroc, "auroc_posterior": auroc / 2}  # noqa: E731
    return {"teachers": {"us": {"own_dev": summary(own), "target_dev": summary(target)},
                         "uk": {"own_dev": summary(own + 0.1), "target_dev": summary(target + 0.1)}},
            "target_dev_variance_correlation": {"uk-us": correlation}}


def _teacher_eval(seeds=(0, 1)):
    te = {}
    for s in seeds:
        for i, d in enumerate(("us", "uk")):
            te[f"seed{s}/{d}"] = {"own_test_beam": _report(10.0 + s + i, utterances=5),
                                  "own_test_greedy": _report(20.0 + s),
                                  "target_test_beam": _report(30.0 + s + i, utterances=7),
                                  "target_test_greedy": _report(40.0 + s),
                                  "target_dev_beam": _report(50.0 + i)}
        te[f"seed{s}/uncertainty"] = _uncertainty(0.6 + 0.1 * s, 0.5, 0.2 + 0.3 * s)
        te[f"seed{s}/best"] = "us"
    return te


def test_teacher_means_average_over_the_seeds():
    teachers = teacher_means(_teacher_eval(), ["us", "uk"], [0, 1])
    assert list(teachers) == ["us", "uk"]
    us = teachers["us"]
    assert us["own_test"] == {"wer": 10.5, "cer": 5.25} and us["target_test"] == {"wer": 30.5, "cer": 15.25}
    assert us["own_test_greedy"] == {"wer": 20.5, "cer": 10.25} and us["target_dev"] == {"wer": 50.0, "cer": 25.0}
    assert us["uncertainty_auroc"] == {"own_dev": 0.65, "target_dev": 0.5}
    assert us["posterior_auroc"] == {"own_dev": 0.325, "target_dev": 0.25}
    assert teachers["uk"]["uncertainty_auroc"] == {"own_dev": 0.75, "target_dev": 0.6}
    assert len(us["uncertainty"]) == 2 and us["params"] == 1000


def test_student_rows_are_size_major_and_rounded():
    ev = {f"{size}/{c}/seed{s}": {"beam": _report(12.3456 + s), "greedy": _report(20.0, params=7)}
          for size in ("S", "XS") for c in ("a", "b") for s in (0, 1)}
    rows = student_rows(ev, ["S", "XS"], ["a", "b"], [0, 1])
    assert [(r["size"], r["condition"], r["seed"]) for r in rows][:3] == [("S", "a", 0), ("S", "a", 1), ("S", "b", 0)]
    assert len(rows) == 8
    assert rows[1]["target_test"] == {"wer": 13.35, "cer": 6.67} and rows[1]["target_test_greedy"]["wer"] == 20.0
    assert rows[1]["params"] == 1000  # the beam evaluation's count


def _utterances(folder, errors, domain="target"):
    folder.mkdir(parents=True)
    folder.joinpath("utterances.jsonl").write_text("".join(
        json.dumps({"utt": f"u{i}", "domain": domain, "errors": e, "ref_words": 4, "char_errors": e,
                    "ref_chars": 10}) + "\n" for i, e in enumerate(errors)))


def test_results_table_from_the_stages_outputs(tmp_path):
    """The results file from teacher-eval's and eval's results and the per-utterance errors of the
    evaluation folders that the claims resample; it passes the published layout check."""
    claims = [{"claim": "KD beats no KD", "a": "kd", "b": "none", "premise": "none"}]
    conditions = [{"name": "none", "init": "random"}, {"name": "kd", "init": "random", "teachers": ["us"]}]
    setup = MultidomainSetup.from_preset({**SMOKE, "conditions": conditions, "claims": claims}, tmp_path,
                                         seeds=[0, 1], recipe_dir=tmp_path)
    for s in (0, 1):
        _utterances(setup.teacher_eval(s, "us", "target-test-beam"), [0, 0, 0, 0, 0, 0])
        _utterances(setup.run_dir(setup.sizes[0], setup.conditions[0], s) / "eval-beam", [2, 3, 2, 3, 2, 3])
        _utterances(setup.run_dir(setup.sizes[0], setup.conditions[1], s) / "eval-beam", [1, 1, 1, 1, 1, 2])
    ev = {f"S/{c}/seed{s}": {"beam": _report(25.0), "greedy": _report(30.0)} for c in ("none", "kd") for s in (0, 1)}
    results = results_table(setup, _teacher_eval(), ev, preset="smoke", provenance={"commit": "abc"})
    check_results(results)
    assert results["seeds"] == [0, 1] and results["decode"] == SMOKE["decode"]
    assert results["n_test"] == {"us": 5, "uk": 5, "target": 7}
    assert results["better_teacher"] == {0: "us", 1: "us"}
    assert results["uncertainty"] == {"target_dev_variance_correlation": {"uk-us": 0.35}}
    assert results["provenance"] == {"commit": "abc"}
    assert [(c["claim"], c["metric"]) for c in results["claims"]] == [("KD beats no KD", "wer"),
                                                                      ("KD beats no KD", "cer")]
    wer = results["claims"][0]
    assert wer["diff"] < 0 and wer["premise"]["holds"] and wer["verdict"] == "reproduces"
    folders = [tmp_path / "out", tmp_path / "published"]
    text = publish_results(results, folders)
    for folder in folders:
        assert (folder / "smoke.md").read_text() == text and "| KD beats no KD | S | WER | kd | none |" in text
        assert json.loads((folder / "smoke.json").read_text())["better_teacher"] == {"0": "us", "1": "us"}


def test_results_table_with_a_fixed_teacher_seed_says_what_its_intervals_hold(tmp_path):
    claims = [{"claim": "KD beats no KD", "a": "kd", "b": "none", "premise": "none"}]
    conditions = [{"name": "none", "init": "random"}, {"name": "kd", "init": "random", "teachers": ["us"]}]
    setup = MultidomainSetup.from_preset({**SMOKE, "conditions": conditions, "claims": claims, "teacher_seed": 0},
                                         tmp_path, seeds=[0, 1, 2], recipe_dir=tmp_path)
    _utterances(setup.teacher_eval(0, "us", "target-test-beam"), [0, 0, 0, 0, 0, 0])
    for s in (0, 1, 2):
        _utterances(setup.run_dir(setup.sizes[0], setup.conditions[0], s) / "eval-beam", [2, 3, 2, 3, 2, 3])
        _utterances(setup.run_dir(setup.sizes[0], setup.conditions[1], s) / "eval-beam", [2, 3, 2, 3, 2, 2 + s % 2])
    ev = {f"S/{c}/seed{s}": {"beam": _report(25.0), "greedy": _report(30.0)} for c in ("none", "kd")
          for s in (0, 1, 2)}
    results = results_table(setup, _teacher_eval((0,)), ev, preset="smoke", provenance={})
    assert results["seeds"] == [0, 1, 2] and results["teacher_seeds"] == [0]
    assert results["better_teacher"] == {0: "us", 1: "us", 2: "us"}
    assert results["teachers"]["us"]["own_test"]["wer"] == 10.0  # seed 0's teacher alone
    wer = results["claims"][0]
    assert wer["seeds"] == 3 and wer["premise"]["holds"] and wer["verdict"] == "does not reproduce"
    text = publish_results(results, [tmp_path / "out"])
    assert "students' seeds [0, 1, 2], every seed's students taught by the teachers of seed 0" in text


def test_results_table_refuses_a_claim_on_a_missing_condition(tmp_path):
    setup = MultidomainSetup.from_preset({**SMOKE, "conditions": [{"name": "none", "init": "random"}], "claims": []},
                                         tmp_path, seeds=[0], recipe_dir=tmp_path)
    setup = dataclasses.replace(setup, claims=(Claim("x", "none", "kd"),))  # not checked by from_preset
    ev = {"S/none/seed0": {"beam": _report(25.0), "greedy": _report(30.0)}}
    with pytest.raises(ValueError, match="no runs of condition 'kd'"):
        results_table(setup, _teacher_eval((0,)), ev, preset="smoke", provenance={})
