"""The training / distillation loop on accelerate: overfitting, exact resume, KD, configs, DDP on CPU."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kd.testing import all_equal, make_config, read_csv, subset_dir
from kd.training.checkpoint import list_checkpoints, load_weights
from kd.training.config import OptimConfig, Schedule, TrainConfig
from kd.training.schedule import learning_rate


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def greedy_ctc(log_probs: torch.Tensor, length: int) -> list[int]:
    """Argmax per frame, repeats collapsed, blanks (id 0) dropped. ``log_probs``: [frames, vocab]."""
    best = log_probs[:length].argmax(-1).tolist()
    return [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]


@pytest.fixture(scope="module")
def corpus(tests_corpus):
    return tests_corpus[0]


@pytest.fixture(scope="module")
def teachers(corpus, tmp_path_factory):
    """Two tiny teachers (different seeds and data) that share one character inventory."""
    from kd.training.loop import train

    root = tmp_path_factory.mktemp("teachers")
    first = train(make_config([corpus / "us/train", corpus / "uk/train"], steps=3, seed=1), root / "t1")
    tokens = {"kind": "list", "path": str(root / "t1/tokens.txt")}
    train(make_config([corpus / "uk/train"], steps=3, seed=2, tokens=tokens), root / "t2")
    assert first.steps == 3
    return root / "t1", root / "t2"


# ---------------------------------------------------------------- learning

@pytest.mark.slow  # 13 s (training to 0% WER) on the 2-core machine; pytest -m slow
def test_tiny_teacher_overfits_four_utterances_to_zero_wer(corpus, tmp_path):
    from kd.data import load_data_dir
    from kd.data.batching import AudioDataset, collate
    from kd.training.loop import train
    from kd.training.teachers import load_run_model

    data = subset_dir(corpus / "us/train", tmp_path / "four", 4)
    config = make_config([data], steps=60, max_seconds=20.0, overrides={"dropout_rate": 0.0},
                         optim={"lr": 3e-3, "warmup_steps": 15})
    result = train(config, tmp_path / "run")
    rows = read_csv(tmp_path / "run/log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) / 3  # label smoothing keeps the attention loss up
    assert float(rows[-1]["loss_ctc"]) < float(rows[0]["loss_ctc"]) / 20
    assert result.final_loss == pytest.approx(float(rows[-1]["loss"]), rel=1e-5)

    model, tokenizer = load_run_model(tmp_path / "run", "model.safetensors")
    dataset = AudioDataset(load_data_dir(data), tokenizer)
    batch = collate([dataset[i] for i in range(4)])
    with torch.no_grad():
        out = model.eval()(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths)
    for i, utt in enumerate(batch.utts):
        hyp = tokenizer.decode(greedy_ctc(out.ctc_log_probs[i], int(out.encoder_lengths[i])))
        assert hyp.split() == batch.texts[i].split(), utt  # WER 0 on the training utterances
    # the run also leaves its averaged model as a model dir that kd eval reads
    from kd.evaluation.decode import DecodeConfig, DecodeMethod
    from kd.evaluation.evaluate import evaluate

    report = evaluate(tmp_path / "run" / "model", [data], DecodeConfig(method=DecodeMethod.CTC_GREEDY))
    assert report.to_dict()["num_parameters"] > 0


def test_schedules_follow_their_formulas():
    def lr(schedule, t, **kw):
        config = OptimConfig(lr=1.0, schedule=schedule, warmup_steps=10, max_steps=100, **kw)
        return learning_rate(config, t, d_model=64, total_steps=100)

    assert lr(Schedule.WARMUP_INVERSE_SQRT, 5) == pytest.approx(0.5)
    assert lr(Schedule.WARMUP_INVERSE_SQRT, 10) == pytest.approx(1.0)
    assert lr(Schedule.WARMUP_INVERSE_SQRT, 40) == pytest.approx(0.5)
    assert lr(Schedule.NOAM, 10) == pytest.approx(64**-0.5 * 10**-0.5)
    assert lr(Schedule.NOAM, 3) == pytest.approx(64**-0.5 * 3 * 10**-1.5)
    assert lr(Schedule.CONSTANT, 2) == pytest.approx(0.2) and lr(Schedule.CONSTANT, 50) == 1.0
    assert lr(Schedule.WARMUP_COSINE, 10, min_lr_ratio=0.1) == pytest.approx(1.0)
    assert lr(Schedule.WARMUP_COSINE, 55, min_lr_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr(Schedule.WARMUP_COSINE, 100, min_lr_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="step: expected >= 1"):
        lr(Schedule.CONSTANT, 0)


# ---------------------------------------------------------------- resume


def test_resumed_run_ends_with_exactly_the_uninterrupted_weights(corpus, tmp_path):
    """Dropout, aleatoric noise, accumulation (with a short last group) and a mid-epoch stop."""
    from kd.training.loop import train

    def config(steps):
        return make_config([corpus / "us/train"], dev=corpus / "us/dev", steps=steps, max_seconds=7.0,
                           optim={"grad_accum": 2}, checkpoint={"every_steps": 3})

    full = train(config(9), tmp_path / "full")
    first = train(config(4), tmp_path / "parts")  # stops mid-epoch (3 steps per epoch)
    assert first.steps == 4 and 0 < first.epochs % 1
    import yaml  # the run as a version without model.freeze / data.augment wrote it: resumable all the same
    saved = yaml.safe_load((tmp_path / "parts/config.yaml").read_text())
    del saved["model"]["freeze"], saved["data"]["augment"]
    (tmp_path / "parts/config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    second = train(config(9), tmp_path / "parts")  # max_steps may change on resume
    assert second.resumed_from == 4 and second.steps == full.steps == 9
    a, b = load_weights(tmp_path / "full/model.safetensors"), load_weights(tmp_path / "parts/model.safetensors")
    assert all_equal(a, b)
    # the resumed log holds every step once, with the uninterrupted run's losses
    full_rows, part_rows = read_csv(tmp_path / "full/log.csv"), read_csv(tmp_path / "parts/log.csv")
    assert [r["step"] for r in part_rows] == [r["step"] for r in full_rows] == [str(s) for s in range(1, 10)]
    assert [r["loss"] for r in part_rows] == [r["loss"] for r in full_rows]
    # a finished run is skipped; a changed run-defining field is refused
    again = train(config(9), tmp_path / "parts")
    assert again.skipped and again.steps == 9
    changed = dataclasses.replace(config(12), seed=5)
    with pytest.raises(ValueError, match=r"another configuration \(differs in \['seed'\]\)"):
        train(changed, tmp_path / "parts")
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        train(config(12), tmp_path / "parts", resume=False)


# ---------------------------------------------------------------- distillation


def _kd_section(teacher_dirs, mode: str, **loss):
    return {"teachers": [{"run_dir": str(d), "weights": "model.safetensors"} for d in teacher_dirs],
            "teacher_outputs": mode, "loss": {"alpha": 0.4, "beta": 0.6, "temperature": 2.0, **loss}}


def test_kd_with_one_teacher_matches_a_direct_float64_computation(corpus, teachers, tmp_path):
    """Step 1's logged tok-KD / unc-KD against NumPy on the initial student and the teacher (soft labels
    from the mean logits; the sampled ones are checked against NumPy in test_losses.py)."""
    from accelerate.utils import set_seed

    from kd.data import load_data_dir
    from kd.data.batching import AudioDataset, collate
    from kd.models.asr import AsrConfig, build_asr_model
    from kd.training.loop import distill
    from kd.training.teachers import load_run_model

    t1, _ = teachers
    tokens = {"kind": "list", "path": str(t1 / "tokens.txt")}
    # max_seconds: all 8 target utterances in one micro-batch, so step 1 sees all of them
    config = make_config([corpus / "target/train"], steps=2, max_seconds=40.0, tokens=tokens,
                         overrides={"dropout_rate": 0.0}, kd=_kd_section([t1], "online", soft_labels="mean_logits"))
    result = distill(config, tmp_path / "student")
    rows = read_csv(tmp_path / "student/log.csv")
    assert result.steps == 2 and len(rows) == 2

    teacher, tokenizer = load_run_model(t1, "model.safetensors")
    set_seed(0)
    student = build_asr_model(AsrConfig.tiny(tokenizer.vocab_size, dropout_rate=0.0), list(tokenizer.tokens))
    dataset = AudioDataset(load_data_dir(corpus / "target/train"), tokenizer)
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        args = (batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths)
        s, t = student.eval()(*args), teacher.eval()(*args)
    mask = s.token_mask.numpy()
    T = 2.0

    def log_softmax(x):
        x = x.astype(np.float64) / T
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)

    lp_t, lp_s = log_softmax(t.logits.numpy()), log_softmax(s.logits.numpy())
    tok = (T**2 * (np.exp(lp_t) * (lp_t - lp_s)).sum(-1))[mask].mean()
    vs, vt = s.variances.numpy().astype(np.float64), t.variances.numpy().astype(np.float64)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    unc = ((unit(vs) - unit(vt)) ** 2).sum(-1)[mask].mean()
    first = {k: float(v) for k, v in rows[0].items() if v}
    assert first["tok_kd"] == pytest.approx(tok, rel=1e-4) and first["unc_kd"] == pytest.approx(unc, rel=1e-4)
    assert first["kd"] == pytest.approx(0.6 * tok + 0.4 * unc, rel=1e-4)
    assert first["loss"] == pytest.approx(0.4 * first["nll"] + 0.6 * first["kd"], rel=1e-4)
    assert first["weight/0"] == 1.0


def test_kd_with_two_teachers_and_the_cache_equal_to_online(corpus, teachers, tmp_path):
    from kd.training.loop import distill

    t1, t2 = teachers
    tokens = {"kind": "list", "path": str(t1 / "tokens.txt")}
    runs = {}
    for mode in ("online", "cached"):
        config = make_config([corpus / "target/train"], steps=3, max_seconds=8.0, tokens=tokens,
                             kd=_kd_section([t1, t2], mode))
        # the default soft labels are sampled: the cache holds logits and variances, the draws are the run's
        assert config.kd.loss.soft_labels.value == "sampled"
        runs[mode] = distill(config, tmp_path / mode)
    online, cached = read_csv(tmp_path / "online/log.csv"), read_csv(tmp_path / "cached/log.csv")
    keys = set(online[0])
    assert {"nll", "kd", "tok_kd", "unc_kd", "tok_kd/0", "tok_kd/1", "unc_kd/0", "unc_kd/1"} <= keys
    assert all(math.isfinite(float(r[k])) for r in online for k in keys if r[k])
    assert online[0]["weight/0"] == online[0]["weight/1"] == "0.5"  # uniform fixed weights
    speed = {"audio_s_per_s", "steps_per_s"}
    assert [{k: v for k, v in r.items() if k not in speed} for r in cached] == \
        [{k: v for k, v in r.items() if k not in speed} for r in online]
    assert all_equal(load_weights(tmp_path / "online/model.safetensors"),
                     load_weights(tmp_path / "cached/model.safetensors"))
    cache = tmp_path / "cached/teacher_cache"
    assert (cache / ".done.json").is_file()
    assert sorted(p.name for p in (cache / "teacher-1").iterdir()) == ["index-r0.json", "shard-r0-00000.safetensors"]
    # a second run reuses the finished cache: the shard is not rewritten
    stamp = (cache / "teacher-0/shard-r0-00000.safetensors").stat().st_mtime_ns
    distill(make_config([corpus / "target/train"], steps=1, max_seconds=8.0, tokens=tokens,
                        kd={**_kd_section([t1, t2], "cached"), "cache_dir": str(cache)}), tmp_path / "again")
    assert (cache / "teacher-0/shard-r0-00000.safetensors").stat().st_mtime_ns == stamp


def test_frame_level_kd_from_yaml_cached_equals_online(corpus, teachers, tmp_path):
    """CTC-posterior KD with per-frame posterior-spread weighting, configured through YAML files."""
    from kd.training.loop import distill_from_yaml

    t1, t2 = teachers
    tokens = {"kind": "list", "path": str(t1 / "tokens.txt")}
    logs = {}
    for mode in ("online", "cached"):
        kd = _kd_section([t1, t2], mode, level="frame", weighting="posterior_spread")
        path = tmp_path / f"{mode}.yaml"
        path.write_text(make_config([corpus / "target/train"], steps=2, tokens=tokens, kd=kd).to_yaml())
        result = distill_from_yaml(path, tmp_path / mode)
        assert result.steps == 2 and not result.skipped
        logs[mode] = read_csv(tmp_path / mode / "log.csv")
    assert logs["online"][0]["tok_kd"] == logs["cached"][0]["tok_kd"]
    assert logs["online"][0]["loss"] == logs["cached"][0]["loss"]
    assert logs["online"][0]["spread_kd"] and "unc_kd" not in logs["online"][0]  # beta 0.6: the spread term
    weights = [float(logs["online"][0][f"weight/{k}"]) for k in (0, 1)]
    assert sum(weights) == pytest.approx(1.0) and weights[0] != weights[1]  # per-frame, not uniform


def test_distillation_with_sampled_soft_labels_resumes_exactly(corpus, teachers, tmp_path):
    """The teachers' noise is drawn from the run's checkpointed generator: interrupted == uninterrupted."""
    from kd.training.loop import distill

    t1, t2 = teachers
    tokens = {"kind": "list", "path": str(t1 / "tokens.txt")}

    def config(steps):
        kd = {**_kd_section([t1, t2], "cached", num_samples=3), "cache_dir": str(tmp_path / "cache")}
        return make_config([corpus / "target/train"], steps=steps, max_seconds=8.0, tokens=tokens,
                           checkpoint={"every_steps": 2}, kd=kd)

    assert config(4).kd.loss.soft_labels.value == "sampled"
    full = distill(config(4), tmp_path / "full")
    assert distill(config(2), tmp_path / "parts").steps == 2
    second = distill(config(4), tmp_path / "parts")
    assert second.resumed_from == 2 and second.steps == full.steps == 4
    assert all_equal(load_weights(tmp_path / "full/model.safetensors"),
                     load_weights(tmp_path / "parts/model.safetensors"))
    full_rows, part_rows = read_csv(tmp_path / "full/log.csv"), read_csv(tmp_path / "parts/log.csv")
    assert [(r["step"], r["tok_kd"]) for r in part_rows] == [(r["step"], r["tok_kd"]) for r in full_rows]


def test_teacher_with_another_token_inventory_is_refused(corpus, teachers, tmp_path):
    from kd.training.loop import distill

    t1, _ = teachers
    symbols = (t1 / "tokens.txt").read_text().splitlines()
    (tmp_path / "tokens.txt").write_text("\n".join([*symbols[:-1], "#", symbols[-1]]) + "\n")
    tokens = {"kind": "list", "path": str(tmp_path / "tokens.txt")}
    config = make_config([corpus / "target/train"], steps=1, tokens=tokens, kd=_kd_section([t1], "online"))
    with pytest.raises(ValueError, match=rf"kd.teachers\[0\].*share one token inventory; {len(symbols)} tokens, "
                                         rf"expected {len(symbols) + 1}"):
        distill(config, tmp_path / "student")
    with pytest.raises(ValueError, match="expected a kd section"):
        distill(make_config([corpus / "target/train"], steps=1), tmp_path / "plain")


def test_init_from_a_run_starts_from_its_weights(corpus, teachers, tmp_path):
    from kd.training.loop import train

    t1, _ = teachers
    tokens = {"kind": "list", "path": str(t1 / "tokens.txt")}
    config = make_config([corpus / "target/train"], steps=1, tokens=tokens, optim={"lr": 1e-12},
                         model={"preset": None, "init_from": str(t1), "init_weights": "model.safetensors"})
    train(config, tmp_path / "student")
    start, after = load_weights(t1 / "model.safetensors"), load_weights(tmp_path / "student/model.safetensors")
    assert start.keys() == after.keys()
    for k in start:  # one Adam step moves each weight by about lr
        torch.testing.assert_close(after[k], start[k], rtol=0, atol=1e-9)
    assert (tmp_path / "student/model_config.yaml").read_text() == (t1 / "model_config.yaml").read_text()
    with pytest.raises(ValueError, match="TrainConfig.model.preset: expected a preset name or model.init_from"):
        make_config([corpus / "target/train"], steps=1, model={"preset": "tiny", "init_from": str(t1)})


def test_frozen_parameters_keep_the_teachers_values_and_the_rest_train(corpus, teachers, tmp_path):
    """model.freeze: the named module keeps its initial values bit for bit, everything else moves;
    a name that matches no parameter is refused with the model's module names."""
    from kd.training.checkpoint import load_optimizer_state, latest_checkpoint
    from kd.training.loop import train

    t1, _ = teachers
    tokens = {"kind": "list", "path": str(t1 / "tokens.txt")}
    config = make_config([corpus / "target/train"], steps=2, tokens=tokens,
                         model={"preset": None, "init_from": str(t1), "init_weights": "model.safetensors",
                                "freeze": ["espnet.encoder.embed", "uncertainty"]})
    result = train(config, tmp_path / "student")
    start, after = load_weights(t1 / "model.safetensors"), load_weights(tmp_path / "student/model.safetensors")
    frozen = [k for k in start if k.startswith(("espnet.encoder.embed.", "uncertainty."))]
    assert result.frozen_parameters == sum(start[k].numel() for k in frozen) > 0
    assert any(".conv." in k for k in frozen) and any(k.startswith("uncertainty.") for k in frozen)
    for k in frozen:
        assert torch.equal(after[k], start[k]), k
    moved = [k for k in start if k not in frozen and not torch.equal(after[k], start[k])]
    assert any(k.startswith("espnet.encoder.encoders.") for k in moved) and any("decoder" in k for k in moved)
    # the optimizer holds state for the trained parameters only
    state = load_optimizer_state(latest_checkpoint(tmp_path / "student/checkpoints"))["optimizer"]["state"]
    named = dict(_named_parameters(t1))
    assert len(state) == sum(1 for k in named if k not in frozen) < len(named)

    bad = make_config([corpus / "target/train"], steps=1, tokens=tokens,
                      model={"preset": None, "init_from": str(t1), "init_weights": "model.safetensors",
                             "freeze": ["espnet.encoder.embd"]})
    with pytest.raises(ValueError, match=r"TrainConfig.model.freeze: 'espnet.encoder.embd' names no parameter of the "
                                         r"model; expected a parameter name or a prefix such as one of \[.*"
                                         r"'espnet.encoder.embed'"):
        train(bad, tmp_path / "bad")
    with pytest.raises(ValueError, match=r"TrainConfig.model.freeze: expected parameter names or dotted prefixes"):
        make_config([corpus / "target/train"], steps=1, model={"preset": "tiny", "freeze": ["espnet.encoder."]})


def _named_parameters(run_dir):
    from kd.training.teachers import load_run_model

    model, _ = load_run_model(run_dir, "model.safetensors")
    return model.named_parameters()


def test_bf16_run_logs_to_tensorboard_what_it_logs_to_csv(corpus, tmp_path):
    """A bf16-autocast run (CPU) trains with finite losses; TensorBoard holds the CSV's scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kd.training.loop import train

    config = make_config([corpus / "us/train"], steps=3, optim={"mixed_precision": "bf16"},
                         logging={"every_steps": 1, "progress": False, "tensorboard": True})
    train(config, tmp_path / "run")
    rows = read_csv(tmp_path / "run/log.csv")
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    events = EventAccumulator(str(tmp_path / "run/tb"))
    events.Reload()
    for key in ("loss", "loss_ctc", "acc", "lr"):
        logged = [e.value for e in events.Scalars(f"train/{key}")]
        assert logged == pytest.approx([float(r[key]) for r in rows], rel=1e-5), key
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("text, message", [
    ("model: {preset: tiny}\n", r"TrainConfig.data: required field missing"),
    ("data: {train: [a]}\noptim: {max_steps: 2, learning_rate: 1}\n",
     r"TrainConfig.optim: unknown field 'learning_rate'"),
    ("data: {train: [a]}\noptim: {max_steps: 2, lr: fast}\n",
     r"TrainConfig.optim.lr: expected a finite number, found 'fast' \(str\)"),
    ("data: {train: a}\noptim: {max_steps: 2}\n",
     r"TrainConfig.data.train: expected a list \(each item a string\), found 'a'"),
    ("data: {train: [a]}\noptim: {max_steps: 2, schedule: linear}\n",
     r"TrainConfig.optim.schedule: expected one of \['noam', 'warmup_inverse_sqrt'"),
    ("data: {train: [a]}\noptim: {max_steps: 2.5}\n", r"TrainConfig.optim.max_steps: expected an integer or null"),
    ("data: {train: [a]}\n", r"TrainConfig.optim.max_steps: expected a number of steps, or optim.max_epochs"),
    ("data: {train: [a]}\noptim: {max_steps: 2}\nkd: {teachers: [{run: x}]}\n",
     r"TrainConfig.kd.teachers\[0\]: unknown field 'run'"),
    ("data: {train: [a]}\noptim: {max_steps: 2}\nkd: {teachers: [{run_dir: x}], loss: {alpha: 2}}\n",
     r"TrainConfig.kd.loss: KDLossConfig.alpha: expected \[0, 1\], found 2"),
    ("data: {train: [a]\n", r"not valid YAML"),
])
def test_malformed_yaml_names_the_field(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises((ValueError, TypeError), match=message) as info:
        TrainConfig.from_yaml(path)
    assert str(path) in str(info.value)


def test_config_yaml_round_trip_and_unquoted_no(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data: {train: [a, b], dev: d}\noptim: {max_epochs: 3, mixed_precision: no, betas: [0.9, 0.99]}\n"
                    "kd: {teachers: [{run_dir: t}], teacher_outputs: cached, loss: {level: frame}}\n")
    config = TrainConfig.from_yaml(path)
    assert config.optim.mixed_precision.value == "no" and config.optim.betas == (0.9, 0.99)
    assert config.kd.loss.level.value == "frame" and config.data.train == ("a", "b")
    path.write_text(config.to_yaml())
    assert TrainConfig.from_yaml(path) == config


def test_yaml_reads_exponent_floats_without_a_dot(tmp_path):
    """PyYAML (YAML 1.1) leaves ``3e-5`` a string; configs are read as YAML 1.2 does, as a float."""
    import yaml

    from kd.core.io import load_yaml

    assert yaml.safe_load("lr: 3e-5") == {"lr": "3e-5"}  # the trap
    assert load_yaml("a: 3e-5\nb: 1E+4\nc: -2e3\nd: 1.5e3\ne: 1_000\nf: '1e2'\ng: 3e\nh: e5\ni: 0.5") == {
        "a": 3e-5, "b": 1e4, "c": -2000.0, "d": 1500.0, "e": 1000, "f": "1e2", "g": "3e", "h": "e5", "i": 0.5}
    assert yaml.safe_load("lr: 3e-5") == {"lr": "3e-5"}  # the library's own loader is left as it was
    with pytest.raises(yaml.constructor.ConstructorError):  # still safe: no Python objects
        load_yaml("x: !!python/object/apply:os.getcwd []")
    path = tmp_path / "config.yaml"
    path.write_text("data: {train: [a]}\noptim: {max_steps: 2, lr: 3e-5, weight_decay: 1e-2}\n")
    config = TrainConfig.from_yaml(path)
    assert config.optim.lr == 3e-5 and config.optim.weight_decay == 0.01


# ---------------------------------------------------------------- several processes


@pytest.mark.slow  # about 17 CPU seconds (a launch of two processes); pytest -m slow
def test_two_cpu_processes_train_like_one_process_with_accumulation(corpus, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a machine without CUDA runs DDP on CPU (gloo).

    Process r takes micro-batches r, r + 2, ...; averaging the two gradients is what one process
    does with grad_accum=2 over the same pairs, so the weights agree up to float rounding.
    (Dropout and the aleatoric noise are off: their random draws differ between processes.)
    """
    from kd.training.loop import train

    overrides = {"dropout_rate": 0.0, "uncertainty_head": False}
    ddp = make_config([corpus / "us/train"], dev=corpus / "us/dev", steps=2, max_seconds=5.0, overrides=overrides,
                      checkpoint={"every_steps": 1})
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(ddp.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "kd.training.loop", str(config_path), str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    latest = list_checkpoints(tmp_path / "ddp/checkpoints")[-1]
    assert latest.step == 2 and latest.world_size == 2
    assert (latest.path / "rng-0.pt").is_file() and (latest.path / "rng-1.pt").is_file()
    assert [r["step"] for r in read_csv(tmp_path / "ddp/log.csv")] == ["1", "2"]

    single = dataclasses.replace(ddp, optim=dataclasses.replace(ddp.optim, grad_accum=2))
    train(single, tmp_path / "single")
    a, b = load_weights(tmp_path / "ddp/model.safetensors"), load_weights(tmp_path / "single/model.safetensors")
    before = load_weights(tmp_path / "ddp/checkpoints/step-00000001/model.safetensors")
    assert not all_equal(a, before)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    print(f"2-process DDP launch: {elapsed:.1f} s")


@pytest.mark.slow  # about 60 CPU seconds (three launches of two processes); pytest -m slow
def test_two_cpu_processes_resume_exactly(corpus, tmp_path):
    """DDP on CPU: 4 steps in one go == 2 steps, stop, resume to 4 (three launches, about 20 s)."""
    def launch(steps, out):
        config = make_config([corpus / "us/train"], dev=corpus / "us/dev", steps=steps, max_seconds=5.0,
                             checkpoint={"every_steps": 2})
        path = tmp_path / f"ddp-{steps}.yaml"
        path.write_text(config.to_yaml())
        proc = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
             "-m", "kd.training.loop", str(path), str(out)],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    launch(4, tmp_path / "full")
    launch(2, tmp_path / "parts")
    launch(4, tmp_path / "parts")
    assert all_equal(load_weights(tmp_path / "full/model.safetensors"),
                     load_weights(tmp_path / "parts/model.safetensors"))


def test_a_second_process_training_into_a_busy_run_dir_fails_at_once(corpus, tmp_path):
    from kd.core.io import LockedError, file_lock
    from kd.training.loop import RUN_LOCK, train

    config = make_config([corpus / "us/train"], steps=1)
    with file_lock(tmp_path / "run" / RUN_LOCK):  # as if another process trained into run/
        with pytest.raises(LockedError, match=rf"training run {tmp_path / 'run'}: another process holds its lock"):
            train(config, tmp_path / "run")
    assert not (tmp_path / "run/checkpoints").exists()
    assert train(config, tmp_path / "run").steps == 1  # the lock went with its holder


@pytest.mark.slow  # about 16 CPU seconds (two worker processes, then the runs alone); pytest -m slow
def test_runs_sharing_a_teacher_cache_side_by_side_equal_the_runs_alone(corpus, teachers, tmp_path):
    """Two distillation runs on two worker processes fill one cache dir once (under its lock) and
    train exactly as they do one after the other in this process."""
    from kd.recipes.parallel import Job, run_jobs
    from kd.training.loop import distill

    t1, t2 = teachers
    tokens = {"kind": "list", "path": str(t1 / "tokens.txt")}

    def config(seed, cache):
        return make_config([corpus / "target/train"], steps=2, max_seconds=8.0, tokens=tokens, seed=seed,
                           kd={**_kd_section([t1, t2], "cached"), "cache_dir": str(cache)})

    jobs = [Job(f"seed{s}", distill, (config(s, tmp_path / "shared_cache"), tmp_path / "side" / f"seed{s}"))
            for s in (0, 1)]
    results = run_jobs(jobs, workers=2, threads=1, log=None)
    assert [r.steps for r in results] == [2, 2]
    assert (tmp_path / "shared_cache/.done.json").is_file() and (tmp_path / "shared_cache.lock").is_file()
    for s in (0, 1):
        alone = distill(config(s, tmp_path / f"cache_alone{s}"), tmp_path / "alone" / f"seed{s}")
        assert alone.steps == 2
        assert all_equal(load_weights(tmp_path / "side" / f"seed{s}/model.safetensors"),
                         load_weights(tmp_path / "alone" / f"seed{s}/model.safetensors"))
