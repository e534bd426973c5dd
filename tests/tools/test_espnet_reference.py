"""tools/espnet_reference.py: the toolkit config translated into ESPnet's, the batch and update
plan, the reading of ESPnet's log, and (slow) the whole script on the alnum_tests corpus."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("espnet_reference", ROOT / "tools" / "espnet_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def contains(mapping: dict, expected: dict) -> bool:
    """Whether ``mapping`` holds every key of ``expected`` with its value."""
    return all(k in mapping and mapping[k] == v for k, v in expected.items())


def write_config(path: Path, **sections) -> Path:
    base = {"data": {"train": ["corpus/train"], "dev": "corpus/dev", "max_seconds": 8.0, "max_utterances": 3},
            "tokens": {"kind": "char"},
            "model": {"preset": "tiny", "overrides": {"n_mels": 40, "d_model": 32, "ffn_units": 64}},
            "optim": {"lr": 0.004, "schedule": "warmup_inverse_sqrt", "warmup_steps": 7, "max_epochs": 2},
            "logging": {"progress": False, "tensorboard": False}}
    for name, value in sections.items():
        base[name] = {**base.get(name, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(base))
    return path


def test_model_section_has_the_toolkit_dimensions_and_normalisation(ref, tmp_path):
    from kd.models.asr import AsrConfig

    model = AsrConfig.from_preset("small", vocab_size=5, d_model=96, ffn_units=384, n_mels=40, encoder_layers=6)
    tokens = ["<blank>", "<unk>", "<space>", "a", "<sos/eos>"]
    token = {"token_type": "char", "bpemodel": None, "token_list": str(tmp_path / "tokens.txt")}
    conf = ref.model_section(model, tokens, token, "global_mvn", "/s/feats_stats.npz")
    assert contains(conf["encoder_conf"], {"output_size": 96, "attention_heads": 4, "linear_units": 384,
                                           "num_blocks": 6, "dropout_rate": 0.1, "input_layer": "conv2d",
                                           "normalize_before": True})
    assert contains(conf["decoder_conf"], {"attention_heads": 4, "linear_units": 384, "num_blocks": 2,
                                           "normalize_before": True})
    assert conf["frontend"] == "default"
    assert contains(conf["frontend_conf"], {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40})
    assert contains(conf["model_conf"], {"ctc_weight": 0.3, "lsm_weight": 0.15, "length_normalized_loss": False})
    assert conf["specaug"] is None and conf["token_list"] == token["token_list"]
    assert (conf["normalize"], conf["normalize_conf"]) == ("global_mvn", {"stats_file": "/s/feats_stats.npz"})
    # collect_stats runs before the statistics exist
    assert ref.model_section(model, tokens, token, "global_mvn", None)["normalize"] is None
    own = ref.model_section(model, tokens, token, "utterance_mvn", "/s/feats_stats.npz")
    assert (own["normalize"], own["normalize_conf"]) == ("utterance_mvn", {"norm_means": True, "norm_vars": False})


def test_training_section_takes_the_toolkit_optimiser_and_checkpoint_settings(ref, tmp_path):
    from kd.training.config import TrainConfig

    config = TrainConfig.from_yaml(write_config(tmp_path / "c.yaml", checkpoint={"average_best": 4},
                                                optim={"clip_norm": None, "betas": [0.9, 0.99]}, seed=3))
    conf = ref.training_section(config, lr=0.002, warmup_steps=7, batch_bins=1000, iters_per_epoch=9, max_epoch=4,
                                ngpu=0)
    assert contains(conf, {"optim": "adam", "scheduler": "warmuplr", "scheduler_conf": {"warmup_steps": 7},
                         "batch_type": "numel", "batch_bins": 1000, "num_iters_per_epoch": 9, "max_epoch": 4,
                         "accum_grad": 1, "seed": 3, "num_workers": 0, "ngpu": 0, "keep_nbest_models": 4,
                         "best_model_criterion": [["valid", "acc", "max"]]})
    assert conf["optim_conf"] == {"lr": 0.002, "betas": [0.9, 0.99], "eps": 1e-9, "weight_decay": 0.0}
    assert conf["grad_clip"] > 1e20  # the toolkit's "no clipping"
    clipped = TrainConfig.from_yaml(write_config(tmp_path / "d.yaml"))
    assert ref.training_section(clipped, lr=1.0, warmup_steps=1, batch_bins=1, iters_per_epoch=1, max_epoch=1,
                                ngpu=0)["grad_clip"] == 5.0


def test_config_paths_are_read_against_the_root_and_unsupported_runs_refused(ref, tmp_path):
    config = ref.load_train_config(write_config(tmp_path / "c.yaml"), tmp_path)
    assert config.data.train == (str(tmp_path / "corpus/train"),) and config.data.dev == str(tmp_path / "corpus/dev")
    with pytest.raises(ValueError, match="expected optim.grad_accum 1 .*found 2"):
        ref.load_train_config(write_config(tmp_path / "a.yaml", optim={"grad_accum": 2}), tmp_path)
    with pytest.raises(ValueError, match="expected data.dev"):
        ref.load_train_config(write_config(tmp_path / "b.yaml", data={"dev": None}), tmp_path)
    with pytest.raises(ValueError, match="expected a model trained from scratch"):
        ref.load_train_config(write_config(tmp_path / "e.yaml", model={"init_from": "x", "preset": None,
                                                                         "overrides": {}}), tmp_path)


def test_peak_lr_is_the_schedule_at_the_end_of_warmup(ref, tmp_path):
    from kd.training.config import TrainConfig

    plain = TrainConfig.from_yaml(write_config(tmp_path / "a.yaml"))
    assert ref.peak_lr(plain, 32) == pytest.approx(0.004)
    noam = TrainConfig.from_yaml(write_config(tmp_path / "b.yaml", optim={"schedule": "noam", "lr": 5.0}))
    assert ref.peak_lr(noam, 256) == pytest.approx(5.0 * 256 ** -0.5 * 7 ** -0.5)


def test_updates_split_into_epochs_that_reach_them(ref):
    assert ref.epochs_for(4112, 257) == (257, 16)
    assert ref.epochs_for(3, 5) == (3, 1)
    iters, epochs = ref.epochs_for(1000, 257)
    assert iters <= 257 and iters * epochs >= 1000 and iters * epochs - 1000 < epochs
    with pytest.raises(ValueError, match="expected a positive number of updates, found 0"):
        ref.epochs_for(0, 5)


def test_run_updates_from_the_result_else_the_log(ref, tmp_path):
    (tmp_path / "log.csv").write_text("step,epoch,lr,loss\n10,0.1,0.1,5\n20,0.2,0.1,4\n")
    assert ref.run_updates(tmp_path) == 20
    (tmp_path / "result.json").write_text(json.dumps({"steps": 25}))
    assert ref.run_updates(tmp_path) == 25
    with pytest.raises(FileNotFoundError, match="expected .*result.json or rows in"):
        ref.run_updates(tmp_path / "missing")


def test_batch_bins_give_the_toolkit_number_of_batches(ref, tmp_path):
    from kd.training.config import TrainConfig

    lengths = [16000 + 3731 * i % 40000 for i in range(40)]
    shape = tmp_path / "speech_shape"
    shape.write_text("".join(f"u{i:03d} {n}\n" for i, n in enumerate(lengths)))
    config = TrainConfig.from_yaml(write_config(tmp_path / "c.yaml", data={"max_seconds": 10.0,
                                                                            "max_utterances": 64}))
    target = ref.toolkit_batches([n / 16000 for n in lengths], config)
    bins, count = ref.match_batch_bins(shape, target, 160000)
    assert count == target == ref.batch_count(shape, bins)
    # ESPnet closes a batch once it is over the limit, the toolkit before: the same count needs
    # fewer bins than the toolkit's limit
    assert bins <= 160000
    for far in (1, 3, len(lengths)):
        assert ref.match_batch_bins(shape, far, 160000)[1] == far


def test_the_epoch_lines_of_espnet_s_log_become_the_curve(ref):
    log = "\n".join([
        "[vm] 2026 (trainer:394) INFO: 1epoch results: [train] iter_time=0.003, loss_ctc=166.472, acc=0.000e+00, "
        "loss=69.490, optim0_lr0=1.500e-04, train_time=0.049, time=1 hour, 2 minutes and 3.1 seconds, "
        "total_count=3, [valid] loss_ctc=84.272, cer_ctc=nan, acc=0.063, loss=41.363, time=0.04 seconds, "
        "total_count=2",
        "[vm] 2026 (trainer:394) INFO: 2epoch results: [train] loss=50.0, acc=0.1, [valid] acc=0.2, loss=30.5",
        "[vm] 2026 (trainer:394) INFO: 2epoch results: [train] loss=49.0, acc=0.1, [valid] acc=0.25, loss=30.0",
        "[vm] 2026 (trainer:300) INFO: 3/3epoch started",
    ])
    curve = ref.parse_curve(log, 5)
    assert [(r["epoch"], r["updates"]) for r in curve] == [(1, 5), (2, 10)]
    assert contains(curve[0]["train"], {"loss": 69.49, "acc": 0.0, "optim0_lr0": 1.5e-4, "total_count": 3})
    assert curve[0]["valid"] == {"loss_ctc": 84.272, "acc": 0.063, "loss": 41.363, "total_count": 2}
    assert curve[1]["valid"] == {"acc": 0.25, "loss": 30.0}  # a resumed epoch: the last line wins
    assert all(math.isfinite(v) for r in curve for s in ("train", "valid") for v in r[s].values())


def test_the_command_line_asks_for_a_config_or_a_comparison(ref, capsys):
    with pytest.raises(SystemExit):
        ref.main(["out"])
    assert "expected CONFIG OUT, or --compare TOOLKIT_RUN_DIR OUT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ref.main(["c.yaml", "out", "--max-updates", "3", "--from-run", "r"])
    assert "expected one of --max-updates and --from-run, found both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ref.main(["c.yaml", "out", "--decode", "beam,sampling"])
    assert "--decode: expected names of" in capsys.readouterr().err


def test_the_comparison_says_what_the_runs_differ_in(ref):
    """The committed comparison's data written again: the sentences on augmentation and on the losses follow
    the toolkit run (augmented or not, with or without an uncertainty head); every curve row and decoding
    is in the table."""
    data = json.loads((ROOT / "docs/bench/espnet_reference_augmented.json").read_text())
    text = ref.compare_markdown(data)
    assert "the toolkit's noise/reverberation augmentation has no counterpart" in text
    assert "the losses differ in definition (the toolkit's adds its uncertainty head's loss)" in text
    assert "| 4112 | 0.594 | 0.705 |" in text and "| beam 5, CTC weight 0.3 | 14.21 | 9.03 | 19.64 | 13.16 |" in text
    like = {**data, "plan": {**data["plan"], "augment_dropped": False, "toolkit_uncertainty_head": False}}
    text = ref.compare_markdown(like)
    assert "augmentation" not in text and "uncertainty head's loss" not in text
    assert "the loss is w * CTC + (1 - w) * attention in both (the toolkit run has no uncertainty head)" in text


@pytest.mark.slow
def test_the_whole_script_on_alnum_tests(ref, tmp_path, monkeypatch):
    """ESPnet's collect_stats and 3 updates of asr_train, decoding, then the comparison with a
    3-step toolkit run of the same config (about a minute and a half on one core)."""
    from kd.corpus.synth import build_corpus
    from kd.recipes.multidomain import write_word_inventory
    from kd.training.config import TrainConfig
    from kd.training.loop import train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    build_corpus(tmp_path / "corpus", preset="alnum_tests", seed=0, jobs=1, progress=False)
    write_word_inventory([tmp_path / "corpus/us/train", tmp_path / "corpus/us/dev"], tmp_path / "tokens")
    config = write_config(tmp_path / "config.yaml", data={"train": ["corpus/us/train"], "dev": "corpus/us/dev"},
                          tokens={"kind": "sentencepiece", "path": "tokens/words.model"},
                          optim={"warmup_steps": 2, "max_steps": 3}, seed=0)
    run = tmp_path / "run"
    assert train(TrainConfig.from_yaml(config), run).steps == 3

    doc = tmp_path / "doc" / "espnet_reference"
    assert ref.main([str(run / "config.yaml"), "ref", "--from-run", str(run), "--compare", str(run),
                     "--doc", str(doc)]) == 0
    out = tmp_path / "ref"
    for name in ("data/train/wav.scp", "data/train/text", "data/dev/wav.scp", "stats/train/feats_stats.npz",
                 "stats/train/speech_shape", "exp/valid.acc.ave.pth", "logs/train.log", "summary.md"):
        assert (out / name).is_file(), name
    assert all(Path(line.split()[1]).is_absolute() for line in (out / "data/train/wav.scp").read_text().splitlines())

    espnet = yaml.safe_load((out / "exp/config.yaml").read_text())  # what ESPnet itself ran with
    assert contains(espnet["encoder_conf"], {"output_size": 32, "attention_heads": 2, "linear_units": 64,
                                           "num_blocks": 2})
    assert contains(espnet["decoder_conf"], {"linear_units": 64, "num_blocks": 1})
    assert espnet["frontend_conf"]["n_mels"] == 40 and espnet["normalize"] == "global_mvn"
    assert espnet["token_type"] == "bpe"
    assert espnet["token_list"] == (run / "tokens.txt").read_text().splitlines()

    result = json.loads((out / "curve.json").read_text())
    assert result["plan"]["updates"] == 3 and result["plan"]["updates_source"] == f"--from-run {run}"
    assert result["plan"]["espnet_batches_per_epoch"] == result["plan"]["toolkit_batches_per_epoch"]
    assert [(r["epoch"], r["updates"]) for r in result["curve"]] == [(1, 3)]
    assert 0.0 <= result["curve"][0]["valid"]["acc"] <= 1.0
    assert set(result["decode"]) == {"weights", "beam", "greedy"}
    assert result["decode"]["beam"]["utterances"] == 4

    compared = json.loads(doc.with_suffix(".json").read_text())
    assert [r["step"] for r in compared["toolkit_curve"]] == [3]
    assert compared["decode"]["toolkit"]["greedy"]["utterances"] == 4
    assert "| 3 |" in doc.with_suffix(".md").read_text()
