"""The teachers that the multidomain_ukd recipe ships (recipes/multidomain_ukd/teachers/): seed 0's
(teachers/<domain>) belong to the `cpu` preset's teacher config, another seed's (teachers/seed<N>/<domain>)
to the `cpu_evidence` preset's with that seed; retraining one reproduces its weights on this kind of
machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from kd.recipes.experiment import merge_sections
from kd.recipes.multidomain_stages import shipped_teacher_dir
from kd.recipes.shipped import PROVENANCE, settings_digest
from kd.training.config import TrainConfig

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = RECIPES / "multidomain_ukd" / "teachers"
DOMAINS = ("us", "uk")


def _cpu_preset(name: str = "cpu") -> dict:
    return yaml.safe_load((RECIPES / "multidomain_ukd/config.yaml").read_text())[name]


def _preset_teacher(domain: str, root, seed: int = 0, preset: str = "cpu") -> TrainConfig:
    """The teacher config the recipe builds for a preset and seed (data under ``root``)."""
    return TrainConfig.from_dict(merge_sections(_cpu_preset(preset)["teacher"], {
        "data": {"train": [str(root / "corpus" / domain / "train")], "dev": str(root / "corpus" / domain / "dev")},
        "tokens": {"kind": "sentencepiece", "path": str(root / "tokens" / "words.model")}, "seed": seed}))


# every shipped teacher: seed 0's of both domains, and those of the other seeds that are shipped
SHIPPED_TEACHERS = [(0, d) for d in DOMAINS] + [(int(p.parent.name.removeprefix("seed")), p.name)
                                                 for p in sorted(SHIPPED.glob("seed*/*")) if p.is_dir()]


@pytest.mark.parametrize("seed,domain", SHIPPED_TEACHERS)
def test_shipped_teacher_belongs_to_its_preset_and_seed(seed, domain, tmp_path):
    """A change of the cpu preset's teacher settings must come with retrained shipped teachers
    (otherwise the main job would silently train them itself, far beyond its time budget); a seed's
    teachers are that seed's training (the seed is part of the settings digest)."""
    folder = shipped_teacher_dir(SHIPPED, seed, domain)
    provenance = json.loads((folder / PROVENANCE).read_text())
    preset = "cpu" if seed == 0 else "cpu_evidence"
    assert provenance["fingerprint"]["config"] == settings_digest(_preset_teacher(domain, tmp_path, seed, preset).to_dict())
    assert provenance["fingerprint"]["config"] != settings_digest(_preset_teacher(domain, tmp_path, seed + 1).to_dict())
    assert "--ship-teachers" in provenance["command"] and f"--seeds {seed}" in provenance["command"]
    from kd.models.model_dir import load_model_dir

    model, tokenizer = load_model_dir(folder)  # a complete, loadable model dir
    assert model.config.encoder_layers == 6 and tokenizer.vocab_size == model.config.vocab_size


@pytest.mark.retrain
def test_retraining_a_teacher_reproduces_the_shipped_weights(tmp_path):
    """Retrains the us teacher as the recipe does (one thread, as each of the recipe's two workers) on a
    freshly synthesised corpus (the cpu preset's): about 85 minutes on the 2-core machine. Floating-point kernels differ between
    CPU models, so the weights are compared only on the CPU model that trained them.

    Marked ``retrain``, not ``slow``: too long for CI's 90 minutes, so in neither step of ``.ci/run``; run it
    with ``pytest -m retrain tests/recipes/test_shipped_teachers.py``."""
    from kd.corpus.synth import build_corpus, task_vocabulary
    from kd.recipes.experiment import train_run
    from kd.recipes.multidomain import write_word_inventory
    from kd.recipes.shipped import cpu_model, run_fingerprint
    from kd.training.checkpoint import load_weights

    provenance = json.loads((SHIPPED / "us" / PROVENANCE).read_text())
    cpu = cpu_model()
    if provenance["trained"].get("cpu") != cpu:
        pytest.skip(f"shipped teachers were trained on {provenance['trained'].get('cpu')!r}, this is {cpu!r}")
    corpus = _cpu_preset()["corpus"]
    build_corpus(tmp_path / "corpus", corpus["preset"], seed=corpus["seed"], splits=["us/train", "us/dev"],
                 progress=False)
    write_word_inventory([tmp_path / "corpus" / d / "train" for d in ("us", "uk", "target")], tmp_path / "tokens",
                         task_vocabulary(corpus["preset"]))
    config = _preset_teacher("us", tmp_path)
    assert run_fingerprint(config, tmp_path / "tokens" / "tokens.txt") == provenance["fingerprint"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(config, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    ours, shipped = load_weights(tmp_path / "run/model/model.safetensors"), load_weights(SHIPPED / "us/model.safetensors")
    assert ours.keys() == shipped.keys()
    assert [k for k in ours if not torch.equal(ours[k], shipped[k])] == []



@pytest.mark.parametrize("preset,post_ln", [("cpu", False), ("cpu_postln", True)])
def test_shipped_asr_compress_teacher_belongs_to_its_preset(preset, post_ln, tmp_path):
    """The 12-layer teachers of recipes/asr_compress/ (teacher/: pre-LN, teacher_postln/: post-LN): each trained
    with its preset's teacher settings (else the recipe would train it itself, for 40 minutes to hours), and a
    complete 12-layer model dir of the encoder it names."""
    from kd.models.model_dir import load_model_dir
    from kd.recipes.asr_compress import AsrCompressSetup

    cpu = yaml.safe_load((RECIPES / "asr_compress/config.yaml").read_text())[preset]
    setup = AsrCompressSetup.from_preset(cpu, tmp_path, seeds=cpu["seeds"], recipe_dir=RECIPES / "asr_compress")
    shipped = RECIPES / "asr_compress" / cpu["shipped_teacher"]
    assert setup.shipped == shipped
    provenance = json.loads((shipped / PROVENANCE).read_text())
    assert provenance["fingerprint"]["config"] == settings_digest(setup.teacher_config().to_dict())
    assert "--ship-teacher" in provenance["command"]
    model, tokenizer = load_model_dir(shipped)
    assert model.config.encoder_layers == 12 and tokenizer.vocab_size == model.config.vocab_size
    assert model.config.encoder_normalize_before is (not post_ln)
