"""Every recipe preset is checked before stage 1: known keys only, and every stage's settings built.

A misspelt or malformed setting is a command-line error (exit status 2) that names the config
file, the preset and the key, before any stage runs, instead of being ignored (an unknown key) or
failing hours into a run (a bad value used by a late stage).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kd.core.config import parse_config
from kd.recipes.presets import PRESETS, AsrCompressPreset


RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALL_PRESETS = [(recipe, preset) for recipe in ("multidomain_ukd", "layerwise_analysis", "w2v2_compress", "asr_compress")
               for preset in yaml.safe_load((RECIPES / recipe / "config.yaml").read_text())
               if not preset.startswith("x-")]


def run_error(recipe, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("recipe_name,preset", ALL_PRESETS)
def test_every_shipped_preset_passes_the_checks(recipe_name, preset, tmp_path, capsys, load_recipe):
    """--stage past the last stage: the run stops at the range check, after the preset's key check
    and every stage's settings were built, and before any stage ran."""
    err = run_error(load_recipe(recipe_name), ["--preset", preset, "--out", str(tmp_path), "--stage", "99"], capsys)
    assert "stage range 99" in err and "unknown key" not in err
    assert not (tmp_path / "stages").exists()


def _with_preset(tmp_path, recipe: str, edit) -> Path:
    data = yaml.safe_load((RECIPES / recipe / "config.yaml").read_text())
    edit(data["smoke"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("recipe_name,edit,expected", [
    # unknown, missing and misshapen keys
    ("w2v2_compress", lambda p: p.update(seed=[0, 1]), "unknown field 'seed' (did you mean 'seeds'?)"),
    ("multidomain_ukd", lambda p: p.update(target_domian="us"),
     "unknown field 'target_domian' (did you mean 'target_domain'?)"),
    ("layerwise_analysis", lambda p: p.pop("asr_domain"), "asr_domain: required field missing (expected a string)"),
    ("w2v2_compress", lambda p: p["corpus"].update(sed=1), "corpus: unknown field 'sed' (did you mean 'seed'?)"),
    ("w2v2_compress", lambda p: p["speed"].update(repeat=3),
     "speed: unknown field 'repeat' (did you mean 'repeats'?)"),
    ("multidomain_ukd", lambda p: p.update(corpus="tests"), "corpus: expected a mapping, found 'tests' (str)"),
    ("multidomain_ukd", lambda p: p.update(seeds=[0, 0]), "seeds: expected a list of distinct integers >= 0, found [0, 0]"),
    ("w2v2_compress", lambda p: p.update(seeds=3), "seeds: expected a list (each item an integer), found 3 (int)"),
    ("asr_compress", lambda p: p["corpus"].update(seed="0"), "corpus.seed: expected an integer, found '0' (str)"),
    ("multidomain_ukd", lambda p: p["conditions"][1].update(init="copy"),
     "conditions[1].init: expected one of ['random', 'plan'], found 'copy'"),
    ("multidomain_ukd", lambda p: p["student_sizes"]["S"].update(encoder_layer=2),
     "student_sizes.S: unknown field 'encoder_layer' (did you mean 'encoder_layers'?)"),
    # bad values of late stages (layer distillation is stage 6 of 9) fail before the first stage
    ("w2v2_compress", lambda p: p.update(distill_overrides={"optim": {"stepz": 5}}),
     "distill_preset / distill_overrides: LayerDistillConfig.optim: unknown field 'stepz'"),
    ("w2v2_compress", lambda p: p.update(ssl_overrides={"num_layer": 3}),
     "ssl_preset / ssl_overrides: SSLConfig: unknown field 'num_layer'"),
    ("w2v2_compress", lambda p: p.update(ssl_overrides={"optim": {"stepz": 3}}),
     "ssl_preset / ssl_overrides: SSLConfig.optim: unknown field 'stepz'"),
    ("w2v2_compress", lambda p: p["analysis"].update(probe_epoch=3),
     "analysis: AnalyzeConfig: unknown field 'probe_epoch' (did you mean 'probe_epochs'?)"),
    ("layerwise_analysis", lambda p: p.update(ssl_preset="huge"), "ssl_preset: preset: expected one of"),
    ("multidomain_ukd", lambda p: p["student"]["optim"].update(lr_max=1.0),
     "student / conditions: TrainConfig.optim: unknown field 'lr_max'"),
    ("multidomain_ukd", lambda p: p.update(decode={"method": "beem"}), "decode: DecodeConfig.method"),
    ("multidomain_ukd", lambda p: p.update(tokens="bpe"), "tokens: expected one of ['words', 'chars'], found 'bpe'"),
    ("multidomain_ukd", lambda p: p["claims"].append({"claim": "x", "a": "no KD (random init)", "b": "tok KD (uk)"}),
     "claims: 'tok KD (uk)' is not a condition of this preset"),
    ("multidomain_ukd", lambda p: p["claims"].append({"claim": "x", "a": "tok-KD (us)", "b": "tok-KD (uk)",
                                                      "premis": "no KD"}),
     "claims[7]: unknown field 'premis' (did you mean 'premise'?)"),
    ("multidomain_ukd", lambda p: p["teacher"].pop("model"), "student / conditions: missing key 'model'"),
    ("asr_compress", lambda p: p.update(budgets=[4]), "budgets: a budget must be below the teacher's 4 encoder layers"),
    ("asr_compress", lambda p: p.update(budgets=[2, 2]), "budgets: expected a list of distinct layer counts >= 1"),
    ("asr_compress", lambda p: p["speed"].update(repeat=3), "speed: unknown field 'repeat'"),
    ("asr_compress", lambda p: p["speed"].update(warmup=3), "speed: expected batch_sizes, seconds, repeats"),
    ("asr_compress", lambda p: p["student"].update(model={"preset": "tiny"}),
     "student.model: expected only 'overrides'"),
    # the students' layer distillation (stage 7 of 11): each field named by its path in the preset
    ("asr_compress", lambda p: p["layer_distill"].update(cos_weight=-1.0),
     "layer_distill.cos_weight: expected a value >= 0, found -1.0"),
    ("asr_compress", lambda p: p["layer_distill"]["optim"].update(lr="fast"),
     "layer_distill.optim.lr: expected a finite number, found 'fast' (str)"),
    ("asr_compress", lambda p: p["layer_distill"]["optim"].update(max_steps=0),
     "layer_distill.optim.max_steps: expected >= 1 or null, found 0"),
    ("asr_compress", lambda p: p["layer_distill"].update(cos_wieght=1.0),
     "layer_distill: unknown field 'cos_wieght' (did you mean 'cos_weight'?)"),
    ("asr_compress", lambda p: p["layer_distill"].update(seed=3), "layer_distill.seed: expected no value"),
    ("asr_compress", lambda p: p["layer_distill"]["data"].update(max_utterances=0),
     "layer_distill.data: BatchConfig.max_utterances: expected a value > 0, found 0"),
    ("multidomain_ukd", lambda p: p.update(student_freeze="espnet.encoder.embed"),
     "student_freeze: expected a list (each item a string), found 'espnet.encoder.embed' (str)"),
])
def test_bad_keys_and_values_fail_before_the_first_stage_naming_file_preset_and_key(recipe_name, edit, expected,
                                                                                   tmp_path, capsys, load_recipe):
    config = _with_preset(tmp_path, recipe_name, edit)
    out = tmp_path / "exp"
    err = run_error(load_recipe(recipe_name), ["--preset", "smoke", "--config", str(config), "--out", str(out)], capsys)
    assert f"{config}: preset 'smoke': {expected}" in err
    assert not out.exists()


@pytest.mark.parametrize("text,expected", [
    ("smoke: [unclosed\n", "cannot read the recipe's YAML"),
    ("- smoke\n- cpu\n", "expected a mapping of preset names to settings, found list"),
    ("smoke: 3\n", "preset 'smoke': expected a mapping of settings, found int"),
])
def test_malformed_config_files(text, expected, tmp_path, capsys, load_recipe):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    err = run_error(load_recipe("w2v2_compress"), ["--preset", "smoke", "--config", str(config),
                                                   "--out", str(tmp_path / "exp")], capsys)
    assert expected in err


@pytest.mark.parametrize("recipe_name,items,expected", [
    # --set goes through the same checks as the YAML: a misspelt key, a bad value of a late stage
    ("multidomain_ukd", ["seed=[0]"], "unknown field 'seed' (did you mean 'seeds'?)"),
    ("asr_compress", ["budgets=[4]"], "budgets: a budget must be below the teacher's 4 encoder layers"),
    ("multidomain_ukd", ["student.optim.lr_max=1.0"], "student / conditions: TrainConfig.optim: unknown field 'lr_max'"),
    ("w2v2_compress", ["seeds.first=1"], "--set 'seeds.first=1': seeds is [0, 1], not a section"),
])
def test_set_overrides_a_preset_before_its_checks(recipe_name, items, expected, tmp_path, capsys, load_recipe):
    out = tmp_path / "exp"
    err = run_error(load_recipe(recipe_name), ["--preset", "smoke", "--out", str(out), "--set", *items], capsys)
    assert f"preset 'smoke': {expected}" in err
    assert not out.exists()


def test_set_values_reach_the_stages(tmp_path, capsys, load_recipe):
    """An accepted --set changes the preset that the stages get: here the seeds that --stage 99 checks."""
    recipe = load_recipe("asr_compress")
    err = run_error(recipe, ["--preset", "smoke", "--out", str(tmp_path), "--stage", "99", "--set", "seeds=[3, 4, 5]",
                             "teacher.optim.max_steps=3"], capsys)
    assert "stage range 99" in err
    preset, written, _ = recipe.load_preset(
        recipe.recipe_parser(recipe.__doc__, recipe.HERE / "config.yaml", "asr_compress"),
        _args(recipe, ["--preset", "smoke", "--set", "seeds=[3, 4, 5]", "teacher.optim.max_steps=3"]),
        AsrCompressPreset)
    assert preset.seeds == (3, 4, 5) and preset.teacher["optim"]["max_steps"] == 3
    assert preset.teacher["optim"]["lr"] == 0.002  # the rest of the section as the YAML has it
    assert written["seeds"] == [3, 4, 5] and written["teacher"] == preset.teacher


def _args(recipe, argv):
    return recipe.recipe_parser(recipe.__doc__, recipe.HERE / "config.yaml", "asr_compress").parse_args(argv)


@pytest.mark.parametrize("recipe_name,preset", ALL_PRESETS)
def test_every_shipped_preset_reads_into_its_recipes_preset_class(recipe_name, preset):
    """Each preset of each recipes/*/config.yaml is a valid instance of the recipe's class in kd.recipes.presets,
    and the typed values are the YAML's."""
    written = yaml.safe_load((RECIPES / recipe_name / "config.yaml").read_text())[preset]
    typed = parse_config(PRESETS[recipe_name], written, f"preset {preset!r}")
    assert typed.corpus.preset == written["corpus"]["preset"] and typed.corpus.seed == written["corpus"]["seed"]
    for key, value in written.items():
        if isinstance(value, dict) and key not in ("corpus", "speed", "student_sizes"):
            assert getattr(typed, key) == value, key  # sections the recipe completes stay mappings


@pytest.mark.parametrize("recipe_name", sorted(PRESETS))
def test_a_misspelt_preset_key_names_its_path(recipe_name):
    written = yaml.safe_load((RECIPES / recipe_name / "config.yaml").read_text())["smoke"]
    with pytest.raises(ValueError, match=r"^preset 'smoke': unknown field 'corpsu' \(did you mean 'corpus'\?\)"):
        parse_config(PRESETS[recipe_name], {**written, "corpsu": written["corpus"]}, "preset 'smoke'")
    nested = {**written, "corpus": {**written["corpus"], "sede": 1}}
    with pytest.raises(ValueError, match=r"^preset 'smoke': corpus: unknown field 'sede' \(did you mean 'seed'\?\)"):
        parse_config(PRESETS[recipe_name], nested, "preset 'smoke'")
