"""Recipe building blocks: conditions, run configs, seed statistics and tables, stale runs."""

from __future__ import annotations

import math

import pytest
import yaml

from kd.recipes.experiment import (Condition, StudentSize, mean_std, paired_differences, seed_summary,
                                   student_train_config, train_run)


def test_mean_std_is_the_sample_statistic():
    mean, std, n = mean_std([0.2, 0.4, 0.6])
    assert (mean, n) == (pytest.approx(0.4), 3)
    assert std == pytest.approx(math.sqrt(((0.2) ** 2 + 0 + 0.2 ** 2) / 2))
    assert mean_std([0.5]) == (0.5, 0.0, 1)
    with pytest.raises(ValueError, match="expected at least one value"):
        mean_std([])


def test_seed_summary_and_paired_differences_by_hand():
    runs = {"A": {"0": {"wer": 0.90, "cer": 0.40}, "1": {"wer": 0.80, "cer": 0.50}, "2": {"wer": 0.70, "cer": 0.45}},
            "B": {"0": {"wer": 0.95, "cer": 0.42}, "1": {"wer": 0.84, "cer": 0.51}, "2": {"wer": 0.76, "cer": 0.46}},
            "T": {"only": {"wer": 0.5, "cer": 0.2}}}
    summary = seed_summary(runs)
    assert summary["A"]["wer"] == {"mean": pytest.approx(0.8), "std": pytest.approx(0.1), "runs": 3}
    assert summary["T"]["cer"] == {"mean": 0.2, "std": 0.0, "runs": 1}
    # B - A per seed: wer 0.05, 0.04, 0.06 (std 0.01, though each model's own spread is 0.1 and more)
    paired = paired_differences({"A": runs["A"], "B": runs["B"]}, "A")
    assert list(paired) == ["B"]
    assert paired["B"]["wer"] == {"mean": pytest.approx(0.05), "std": pytest.approx(0.01), "runs": 3}
    assert paired["B"]["cer"]["mean"] == pytest.approx(0.0133333333) and paired["B"]["cer"]["runs"] == 3
    assert summary["B"]["wer"]["std"] > 5 * paired["B"]["wer"]["std"]
    with pytest.raises(ValueError, match=r"runs\['T'\]: expected the runs of 'A' \['0', '1', '2'\]"):
        paired_differences(runs, "A")
    with pytest.raises(ValueError, match="reference: expected one of"):
        paired_differences(runs, "C")
    with pytest.raises(ValueError, match=r"runs\['E'\]: expected at least one run"):
        seed_summary({"E": {}})


def test_condition_kd_defaults_are_the_loss_configs_and_strings_become_enums():
    """One default per KD setting: a condition that omits beta distils as `kd distill` does."""
    from kd.recipes.experiment import Init
    from kd.training.losses import KDLevel, KDLossConfig, KDReduction, TeacherWeighting

    c = Condition.from_dict({"name": "x", "teachers": ["us"], "init": "random", "weighting": "dev_wer",
                             "reduction": "sum_per_utterance"})
    assert c.init is Init.RANDOM and c.weighting is TeacherWeighting.DEV_WER
    assert c.reduction is KDReduction.SUM_PER_UTTERANCE and c.level is KDLevel.TOKEN
    loss, default = Condition("y", teachers=("us",)).loss_config(), KDLossConfig()
    assert (loss.alpha, loss.beta, loss.temperature) == (default.alpha, default.beta, default.temperature) == (
        0.5, 0.5, 1.0)
    assert Condition("z").init is Init.PLAN


def test_condition_validation_and_slug():
    assert Condition("tok+unc-KD (us+uk)").slug == "tok-unc-kd-us-uk"
    with pytest.raises(ValueError, match="init: expected one of"):
        Condition("x", init="copy")
    with pytest.raises(ValueError, match="unknown field 'plan'"):  # plans are compared by recipes/asr_compress
        Condition.from_dict({"name": "x", "plan": "first-k"})
    with pytest.raises(ValueError, match="unknown field 'teacher'"):
        Condition.from_dict({"name": "x", "teacher": ["us"]})
    # mistakes that TrainConfig would only catch at the distillation stage, after the teachers
    with pytest.raises(ValueError, match=r"Condition 'x': reduction: expected one of \['mean', 'sum_per_utterance'\]"):
        Condition("x", teachers=("us",), reduction="sum")
    with pytest.raises(ValueError, match="Condition 'x': weighting: expected one of"):
        Condition("x", teachers=("us", "uk"), weighting="wer")
    with pytest.raises(ValueError, match=r"Condition 'x': KDLossConfig.beta: expected \[0, 1\], found 1.5"):
        Condition("x", teachers=("us",), beta=1.5)
    with pytest.raises(ValueError, match="Condition 'x': KDLossConfig.temperature: expected > 0, found 0"):
        Condition("x", teachers=("us",), temperature=0)
    with pytest.raises(ValueError, match=r"student_sizes.S.decoder_keep: required field missing \(expected a list"):
        StudentSize.from_dict("S", {"encoder_layers": 2})
    with pytest.raises(ValueError, match=r"student_sizes.S.encoder_layers: expected an integer, found '2' \(str\)"):
        StudentSize.from_dict("S", {"encoder_layers": "2", "decoder_keep": [0]})
    assert StudentSize.from_dict("S", {"encoder_layers": 2, "decoder_keep": [0]}) == StudentSize("S", 2, (0,))


def test_student_config_for_each_kind_of_condition(tmp_path):
    base = {"optim": {"lr": 1e-3, "max_epochs": 2, "warmup_steps": 10}}
    teacher_model = {"preset": "small", "overrides": {"d_model": 96, "ffn_units": 384}}
    size = StudentSize("S", 3, (1,))
    common = dict(train=[tmp_path / "t"], dev=tmp_path / "d", tokens=tmp_path / "tokens.txt", seed=4,
                  teacher_model=teacher_model, size=size, plan_student=tmp_path / "init",
                  teacher_runs={"us": tmp_path / "us", "uk": tmp_path / "uk"}, dev_wers={"us": 0.3, "uk": 0.5},
                  cache_root=tmp_path / "cache")
    random_init = student_train_config(base, Condition("scratch", init="random"), **common)
    assert random_init.model.overrides == {"d_model": 96, "ffn_units": 384, "encoder_layers": 3, "decoder_layers": 1}
    assert random_init.kd is None and random_init.seed == 4
    both = student_train_config(base, Condition("both", teachers=("us", "uk"), beta=0.5, weighting="dev_wer"),
                                **common)
    assert both.model.init_from == str(tmp_path / "init")
    assert [t.run_dir for t in both.kd.teachers] == [str(tmp_path / "us"), str(tmp_path / "uk")]
    assert both.kd.loss.dev_wers == (0.3, 0.5) and both.kd.loss.beta == 0.5
    assert both.kd.cache_dir == str(tmp_path / "cache" / "us+uk")
    assert both.kd.loss.level.value == "token"
    frames = student_train_config(base, Condition("ctc", teachers=("us",), level="frame"), **common)
    assert frames.kd.loss.level.value == "frame" and frames.kd.cache_dir == str(tmp_path / "cache" / "us-frame")
    with pytest.raises(ValueError, match=r"level: expected one of \['token', 'frame'\], found 'word'"):
        Condition("x", teachers=("us",), level="word")
    with pytest.raises(ValueError, match=r"unknown teacher\(s\) \['fr'\]"):
        student_train_config(base, Condition("x", teachers=("fr",)), **common)


def test_student_model_overrides_reach_both_initialisations(tmp_path):
    specaug = {"specaug_time_masks": 2, "specaug_time_ratio": 0.05}
    base = {"optim": {"lr": 1e-3, "max_epochs": 2, "warmup_steps": 10}, "model": {"overrides": specaug}}
    common = dict(train=[tmp_path / "t"], dev=tmp_path / "d", tokens=tmp_path / "tokens.txt", seed=0,
                  teacher_model={"preset": "small", "overrides": {"d_model": 96}}, size=StudentSize("S", 3, (1,)),
                  plan_student=tmp_path / "init", teacher_runs={}, dev_wers={}, cache_root=tmp_path / "cache")
    random_init = student_train_config(base, Condition("scratch", init="random"), **common)
    assert random_init.model.overrides == {"d_model": 96, "encoder_layers": 3, "decoder_layers": 1, **specaug}
    plan = student_train_config(base, Condition("layers", init="plan"), **common)
    assert plan.model.init_from == str(tmp_path / "init") and plan.model.overrides == specaug
    with pytest.raises(ValueError, match=r"student.model: expected only 'overrides'.*\['preset'\]"):
        student_train_config({**base, "model": {"preset": "tiny"}}, Condition("scratch", init="random"), **common)


def test_init_from_takes_training_only_overrides_and_names_the_others(tmp_path):
    from kd.training.config import TrainConfig

    section = {"data": {"train": [str(tmp_path)]}, "optim": {"max_steps": 1},
               "model": {"preset": None, "init_from": str(tmp_path),
                         "overrides": {"specaug_time_warp": 2}}}
    assert TrainConfig.from_dict(section).model.overrides == {"specaug_time_warp": 2}
    section["model"]["overrides"] = {"d_model": 64}
    with pytest.raises(ValueError, match=r"model.overrides.*only the fields that leave the architecture.*specaug_"):
        TrainConfig.from_dict(section)


def test_a_run_dir_with_other_settings_is_moved_aside_not_reused(tests_corpus, tmp_path):
    from kd.training.config import TrainConfig

    corpus = tests_corpus[0]

    def config(lr):
        return TrainConfig.from_dict({
            "data": {"train": [str(corpus / "target/train")], "max_seconds": 10.0},
            "model": {"preset": "tiny"}, "optim": {"lr": lr, "warmup_steps": 1, "max_steps": 1},
            "logging": {"progress": False, "tensorboard": False}})

    messages = []
    train_run(config(1e-3), tmp_path / "run", log=messages.append)
    assert messages == []
    again = train_run(config(1e-3), tmp_path / "run", log=messages.append)
    assert again.skipped and messages == []
    train_run(config(2e-3), tmp_path / "run", log=messages.append)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and "moved to run.replaced-" in messages[0]
    assert yaml.safe_load((moved[0] / "config.yaml").read_text())["optim"]["lr"] == 1e-3
    assert yaml.safe_load((tmp_path / "run/config.yaml").read_text())["optim"]["lr"] == 2e-3
    # a run written before the toolkit had optim.fused / optim.tf32 is the same run: skipped, not moved
    from kd.core.io import mark_done

    old = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    for name in ("fused", "tf32"):
        del old["optim"][name]
    for name in ("decoupled_weight_decay", "time_limit_s"):  # added with the one training stack
        del old["optim"][name]
    del old["data"]["augment"]  # added later still
    del old["checkpoint"]["best_by"]  # and later
    del old["model"]["freeze"]  # added in 23135cb
    (tmp_path / "run/config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    mark_done(tmp_path / "run", old, steps=1)  # the marker as that version wrote it
    messages.clear()
    assert train_run(config(2e-3), tmp_path / "run", log=messages.append).skipped and messages == []
    # a non-default value of an added field is part of the run's identity
    faster = TrainConfig.from_dict({**config(2e-3).to_dict(), "optim": {**config(2e-3).to_dict()["optim"],
                                                                        "tf32": False}})
    assert faster.identity()["optim"]["tf32"] is False and "tf32" not in config(2e-3).identity()["optim"]


def test_kd_reduction_mean_keeps_the_identity_of_earlier_kd_runs():
    from kd.training.config import TrainConfig

    base = {"data": {"train": ["x"]}, "optim": {"max_steps": 1}, "kd": {"teachers": [{"run_dir": "t"}]}}
    earlier = TrainConfig.from_dict(base).identity()
    assert "reduction" not in earlier["kd"]["loss"]
    mean = TrainConfig.from_dict({**base, "kd": {**base["kd"], "loss": {"reduction": "mean"}}})
    summed = TrainConfig.from_dict({**base, "kd": {**base["kd"], "loss": {"reduction": "sum_per_utterance"}}})
    assert mean.identity() == earlier and summed.identity() != earlier
    assert summed.identity()["kd"]["loss"]["reduction"] == "sum_per_utterance"


def test_kd_runs_from_before_sampled_soft_labels_read_as_mean_logit_runs():
    """kd.loss.soft_labels defaults to the paper's sampled soft labels; a run written before the field
    existed used the mean logits, and reads so (with_added_fields), so train_run does not reuse it."""
    from kd.training.config import TrainConfig, with_added_fields

    base = {"data": {"train": ["x"]}, "optim": {"max_steps": 1}, "kd": {"teachers": [{"run_dir": "t"}]}}
    new = TrainConfig.from_dict(base)
    assert new.kd.loss.soft_labels.value == "sampled" and new.identity()["kd"]["loss"]["soft_labels"] == "sampled"
    saved = new.to_dict()
    del saved["kd"]["loss"]["soft_labels"], saved["kd"]["loss"]["num_samples"]  # as an earlier version wrote it
    old = TrainConfig.from_dict(with_added_fields(saved))
    assert old.kd.loss.soft_labels.value == "mean_logits" and old.identity() != new.identity()
    explicit = TrainConfig.from_dict({**base, "kd": {**base["kd"], "loss": {"soft_labels": "mean_logits"}}})
    assert explicit.identity() == old.identity() and "soft_labels" not in explicit.identity()["kd"]["loss"]
    without_kd = TrainConfig.from_dict({"data": {"train": ["x"]}, "optim": {"max_steps": 1}}).to_dict()
    assert with_added_fields(without_kd)["kd"] is None


def test_best_by_loss_keeps_the_identity_of_earlier_runs_and_bad_values_are_named():
    from kd.training.config import Criterion, TrainConfig

    base = {"data": {"train": ["x"]}, "optim": {"max_steps": 1}}
    earlier = TrainConfig.from_dict(base)
    assert earlier.checkpoint.best_by is Criterion.LOSS and "best_by" not in earlier.identity()["checkpoint"]
    acc = TrainConfig.from_dict({**base, "checkpoint": {"best_by": "acc"}})
    assert acc.checkpoint.best_by is Criterion.ACC and acc.identity()["checkpoint"]["best_by"] == "acc"
    with pytest.raises(ValueError, match="checkpoint.best_by"):
        TrainConfig.from_dict({**base, "checkpoint": {"best_by": "wer"}})
