"""kd.core.config: parse_config, to_plain and with_overrides (the ``--set KEY.PATH=VALUE`` of every command
that takes a config)."""

from __future__ import annotations

import pytest

from kd.core.config import with_overrides


def test_dotted_paths_set_nested_values_read_as_yaml_without_changing_the_input():
    base = {"optim": {"lr": 0.004, "max_epochs": 36}, "model": {"preset": "small"}, "seeds": [0]}
    out = with_overrides(base, ["optim.lr=0.001", "model.overrides.encoder_layers=3", "seeds=[0, 1, 2]",
                                "logging.progress=false", "name=teacher"])
    assert out == {"optim": {"lr": 0.001, "max_epochs": 36}, "seeds": [0, 1, 2], "name": "teacher",
                   "model": {"preset": "small", "overrides": {"encoder_layers": 3}}, "logging": {"progress": False}}
    assert base == {"optim": {"lr": 0.004, "max_epochs": 36}, "model": {"preset": "small"}, "seeds": [0]}
    assert with_overrides(base, []) == base and with_overrides(base, ["x="]) == {**base, "x": None}


@pytest.mark.parametrize("item,expected", [
    ("optim.lr", r"--set: expected KEY.PATH=VALUE, found 'optim.lr'"),
    ("optim..lr=1", r"--set: expected KEY.PATH=VALUE, found 'optim..lr=1'"),
    ("=3", r"--set: expected KEY.PATH=VALUE, found '=3'"),
    ("seeds.first=1", r"--set 'seeds.first=1': seeds is \[0\], not a section"),
])
def test_malformed_items_and_paths_through_values_are_errors(item, expected):
    with pytest.raises(ValueError, match=expected):
        with_overrides({"seeds": [0]}, [item])


def test_kd_train_reads_the_overrides_and_names_the_file_and_field_of_a_bad_one(tmp_path):
    from kd.training.config import TrainConfig

    path = tmp_path / "run.yaml"
    path.write_text("data: {train: [a], dev: b}\ntokens: {kind: list, path: t.txt}\n"
                    "model: {preset: tiny}\noptim: {lr: 0.004, max_steps: 10}\n")
    config = TrainConfig.from_yaml(path, ["optim.lr=0.001", "model.overrides.encoder_layers=3", "seed=7"])
    assert config.optim.lr == 0.001 and config.optim.max_steps == 10 and config.seed == 7
    assert config.model.overrides["encoder_layers"] == 3
    with pytest.raises(ValueError, match=rf"{path}: .*optim.*'lr_max'"):
        TrainConfig.from_yaml(path, ["optim.lr_max=1.0"])


# ---------------------------------------------------------------- parse_config and to_plain


def test_parse_config_reads_enums_by_value_and_tuples_from_lists():
    from kd.core.config import parse_config, to_plain
    from kd.training.config import MixedPrecision, Schedule, TrainConfig

    data = {"data": {"train": ["a", "b"]}, "optim": {"max_steps": 2, "schedule": "noam", "betas": [0.9, 0.99],
                                                     "lr": 1, "mixed_precision": "bf16"}}
    config = parse_config(TrainConfig, data)
    assert config.optim.schedule is Schedule.NOAM and config.optim.mixed_precision is MixedPrecision.BF16
    assert config.data.train == ("a", "b") and config.optim.betas == (0.9, 0.99)
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)  # a float field takes an integer
    assert parse_config(TrainConfig, {**data, "optim": {"max_steps": 2, "mixed_precision": False}}).optim \
        .mixed_precision is MixedPrecision.NO  # YAML 1.1's unquoted no
    plain = to_plain(config)
    assert plain["optim"]["schedule"] == "noam" and plain["data"]["train"] == ["a", "b"]
    assert plain == config.to_dict() and parse_config(TrainConfig, plain) == config
    assert parse_config(TrainConfig, {**data, "optim": config.optim}) == config  # a dataclass value is taken too


@pytest.mark.parametrize("data,message", [
    # unknown keys name their path, with the closest known key
    ({"optim": {"max_steps": 2, "warmup_step": 1}},
     r"^TrainConfig.optim: unknown field 'warmup_step' \(did you mean 'warmup_steps'\?\); expected one of \['betas', "),
    ({"optim": {"max_steps": 2, "lr_max": 1}}, r"^TrainConfig.optim: unknown field 'lr_max'; expected one of"),
    ({"kd": {"teachers": [{"run_dir": "t", "weight": "w"}]}},
     r"^TrainConfig.kd.teachers\[0\]: unknown field 'weight' \(did you mean 'weights'\?\)"),
    ({"data": {"train": ["a"], "augment": {"noise": 1, "rt": 2}}},
     r"^TrainConfig.data.augment: unknown fields \['noise', 'rt'\]"),
    # wrong types name their path, the value and what was expected
    ({"optim": {"max_steps": "2"}}, r"^TrainConfig.optim.max_steps: expected an integer or null, found '2' \(str\)"),
    ({"optim": {"max_steps": 2, "fused": "yes"}}, r"^TrainConfig.optim.fused: expected true or false, found 'yes'"),
    ({"data": {"train": ["a", 3]}}, r"^TrainConfig.data.train\[1\]: expected a string, found 3 \(int\)"),
    ({"optim": {"max_steps": 2, "lr": float("nan")}}, r"^TrainConfig.optim.lr: expected a finite number, found nan"),
    ({"tokens": {"kind": "bpe"}}, r"^TrainConfig.tokens.kind: expected one of \['char', 'list', 'sentencepiece'\], "
                                  r"found 'bpe'"),
    ({"kd": "t"}, r"^TrainConfig.kd: expected a mapping or null, found 't' \(str\)"),
    ({"model": {"overrides": {3: 1}}}, r"^TrainConfig.model.overrides: expected text keys, found 3 \(int\)"),
    # a check of a nested section's __post_init__ names the section
    ({"data": {"train": ["a"], "augment": {"noise_prob": 2}}},
     r"^TrainConfig.data.augment: AugmentConfig.noise_prob: expected a probability in \[0, 1\], found 2.0"),
])
def test_parse_config_errors_name_the_class_and_the_dotted_path(data, message):
    from kd.core.config import parse_config
    from kd.training.config import TrainConfig

    data = {"data": {"train": ["a"]}, "optim": {"max_steps": 2}, **data}
    with pytest.raises(ValueError, match=message):
        parse_config(TrainConfig, data)


def test_a_section_given_in_part_keeps_the_fields_default():
    """The other fields of a section come from the field's default, which for a stage's optim section is the
    stage's own (kd.ssl.config.ssl_optim), not OptimConfig's."""
    from kd.core.config import parse_config
    from kd.ssl.config import CTCConfig, ssl_optim
    from kd.training.config import OptimConfig, TrainConfig

    assert parse_config(CTCConfig, {"optim": {"lr": 1e-4}}).optim == ssl_optim(lr=1e-4, warmup_steps=500)
    assert parse_config(TrainConfig, {"data": {"train": ["a"]}, "optim": {"max_steps": 3}}).optim == OptimConfig(
        max_steps=3)


def test_parse_config_names_where_and_refuses_what_is_not_a_mapping():
    from kd.core.config import parse_config
    from kd.evaluation.decode import DecodeConfig

    with pytest.raises(ValueError, match=r"^DecodeConfig: expected a mapping of DecodeConfig fields, found \[1\]"):
        parse_config(DecodeConfig, [1])
    with pytest.raises(ValueError, match=r"^run.yaml: decode: beam_size: expected an integer, found 2.5 \(float\)"):
        parse_config(DecodeConfig, {"beam_size": 2.5}, "run.yaml: decode")
    with pytest.raises(ValueError, match=r"^decode.beam_size: expected an integer"):
        parse_config(DecodeConfig, {"beam_size": 2.5}, "decode")
    with pytest.raises(ValueError, match=r"^DecodeConfig.beam_size: expected a positive int, found 0"):
        parse_config(DecodeConfig, {"beam_size": 0})  # the dataclass's own check


def test_a_config_class_needs_the_shared_pydantic_configuration():
    from dataclasses import dataclass

    from kd.core.config import parse_config

    @dataclass(frozen=True)
    class Loose:
        x: int = 0

    with pytest.raises(TypeError, match="needs @with_config"):
        parse_config(Loose, {"x": 1})
