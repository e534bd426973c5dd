"""kd.core.config: parse_config, to_plain and with_overrides (the ``--set KEY.PATH=VALUE`` of every command that takes a config)."""

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
