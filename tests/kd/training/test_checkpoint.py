"""Atomic checkpoints: unfinished ones are never read, retention, averaging, RNG states."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kd.testing import all_equal, make_config, read_csv
from kd.training import checkpoint as ckpt
from kd.training.checkpoint import (average_checkpoints, begin_checkpoint, capture_rng, finish_checkpoint,
                                    latest_checkpoint, list_checkpoints, load_weights, prune_checkpoints,
                                    restore_rng)
from kd.training.config import Criterion

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _fake(root, step, dev_loss, value=0.0, dev_acc=None):
    """A finished checkpoint holding one tensor filled with ``value``."""
    tmp = begin_checkpoint(root, step)
    return finish_checkpoint(tmp, model_state={"w": torch.full((2, 3), value)}, optimizer_state={"state": {}},
                             step=step, epoch=0, batch=step, dev_loss=dev_loss, dev_acc=dev_acc, world_size=1)


def test_unfinished_checkpoints_are_not_listed(tmp_path):
    _fake(tmp_path, 1, 3.0)
    _fake(tmp_path, 2, 2.0)
    (tmp_path / ".tmp-step-00000003").mkdir()  # a write in progress (or a crash)
    (tmp_path / ".tmp-step-00000003" / "model.safetensors").write_bytes(b"partial")
    shutil.copytree(tmp_path / "step-00000002", tmp_path / "step-00000004")
    (tmp_path / "step-00000004" / "checkpoint.json").unlink()  # no marker
    shutil.copytree(tmp_path / "step-00000002", tmp_path / "step-00000005")  # marker says step 2
    assert [c.step for c in list_checkpoints(tmp_path)] == [1, 2]
    assert latest_checkpoint(tmp_path).step == 2
    removed = ckpt.remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == [".tmp-step-00000003", "step-00000004", "step-00000005"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000002"]


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    _fake(tmp_path, 1, 1.0)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_weights", crash)
    with pytest.raises(OSError, match="disk full"):
        _fake(tmp_path, 2, 0.5)
    assert [c.step for c in list_checkpoints(tmp_path)] == [1]
    assert (tmp_path / ".tmp-step-00000002").is_dir()  # never mistaken for a checkpoint


def test_prune_keeps_the_last_k_and_the_best_n(tmp_path):
    for step, dev in [(1, 5.0), (2, 1.0), (3, 4.0), (4, 2.0), (5, 6.0), (6, 7.0)]:
        _fake(tmp_path, step, dev)
    removed = prune_checkpoints(tmp_path, keep_last=2, keep_best=2)
    assert sorted(p.name for p in removed) == ["step-00000001", "step-00000003"]
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 4, 5, 6]


def test_ranking_by_dev_accuracy(tmp_path):
    # the dev loss bottoms out early (steps 1-2) while the accuracy keeps rising (steps 4-5)
    for step, loss, acc in [(1, 1.0, 0.50), (2, 1.1, 0.60), (3, 1.4, 0.70), (4, 1.6, 0.80), (5, 1.9, 0.80), (6, 2.2, 0.75)]:
        _fake(tmp_path, step, loss, dev_acc=acc)
    found = list_checkpoints(tmp_path)
    assert [c.dev_acc for c in found] == [0.5, 0.6, 0.7, 0.8, 0.8, 0.75]
    assert [c.step for c in ckpt.best_checkpoints(found, 2)] == [1, 2]
    assert [c.step for c in ckpt.best_checkpoints(found, 2, by="acc")] == [5, 4]  # tie: the later first
    assert [c.step for c in ckpt.best_checkpoints(found, 3, by="acc")] == [5, 4, 6]
    assert ckpt.best_checkpoints(found, 3, by=Criterion.ACC) == ckpt.best_checkpoints(found, 3, by="acc")
    assert ckpt.best_checkpoints(found, 2, by=Criterion.LOSS) == ckpt.best_checkpoints(found, 2)
    with pytest.raises(ValueError, match="by must be 'loss' or 'acc'"):
        ckpt.best_checkpoints(found, 2, by="wer")
    prune_checkpoints(tmp_path, keep_last=1, keep_best=2, by="acc")
    assert [c.step for c in list_checkpoints(tmp_path)] == [4, 5, 6]


def test_markers_without_an_accuracy_still_load_and_rank_by_loss(tmp_path):
    _fake(tmp_path, 1, 2.0)
    _fake(tmp_path, 2, 1.0)
    marker = tmp_path / "step-00000002" / "checkpoint.json"
    data = json.loads(marker.read_text())
    del data["dev_acc"]  # as written before the accuracy was recorded
    marker.write_text(json.dumps(data))
    found = list_checkpoints(tmp_path)
    assert [c.dev_acc for c in found] == [None, None]
    assert [c.step for c in ckpt.best_checkpoints(found, 1)] == [2]
    assert [c.step for c in ckpt.best_checkpoints(found, 1, by="acc")] == [2]  # no accuracies: the latest


def test_a_prune_killed_midway_leaves_no_visible_partial_checkpoint(tmp_path, monkeypatch):
    for step, dev in [(1, 5.0), (2, 1.0), (3, 4.0)]:
        _fake(tmp_path, step, dev)
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):  # deletes one file, then the process dies
        next(p for p in sorted(path.iterdir()) if p.is_file()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, keep_last=1, keep_best=1)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ["step-00000002", "step-00000003"]
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 3]
    assert [p.name for p in ckpt.remove_partial_checkpoints(tmp_path)] == [".tmp-step-00000001.delete"]


def test_average_is_the_elementwise_mean(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3)]
    for i, a in enumerate(arrays):
        save_file({"w": torch.from_numpy(a), "count": torch.tensor([i]), "h": torch.from_numpy(a[0]).half()},
                  str(tmp_path / f"{i}.safetensors"))
    avg = average_checkpoints([tmp_path / f"{i}.safetensors" for i in range(3)])
    expected = np.mean(np.stack(arrays).astype(np.float64), axis=0)
    np.testing.assert_allclose(avg["w"].numpy(), expected.astype(np.float32), rtol=0, atol=0)
    assert avg["w"].dtype == torch.float32 and avg["h"].dtype == torch.float16
    np.testing.assert_allclose(avg["h"].numpy(), np.mean([a[0].astype(np.float16).astype(np.float64)
                                                          for a in arrays], axis=0).astype(np.float16))
    assert avg["count"].tolist() == [2]  # integer tensors come from the last file
    save_file({"w": torch.zeros(3, 5), "count": torch.tensor([0]), "h": torch.zeros(4).half()},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="tensor 'w' has shape"):
        average_checkpoints([tmp_path / "0.safetensors", tmp_path / "bad.safetensors"])
    save_file({"w": torch.zeros(3, 4)}, str(tmp_path / "fewer.safetensors"))
    with pytest.raises(ValueError, match=r"found differences in \['count', 'h'\]"):
        average_checkpoints([tmp_path / "0.safetensors", tmp_path / "fewer.safetensors"])


def test_rng_states_round_trip():
    noise = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # numpy's cached Gaussian must survive too
    states = capture_rng(noise)
    first = (random.random(), np.random.normal(3), torch.rand(3), torch.randn(2, generator=noise))
    restore_rng(states, noise)
    second = (random.random(), np.random.normal(3), torch.rand(3), torch.randn(2, generator=noise))
    assert first[0] == second[0] and np.array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])


def test_run_resumes_from_the_newest_finished_checkpoint_and_averages_the_best(tests_corpus, tmp_path):
    from kd.training.loop import train

    corpus = tests_corpus[0]

    def config(steps):
        return make_config([corpus / "us/train"], dev=corpus / "us/dev", steps=steps,
                           checkpoint={"every_steps": 1, "keep_last": 1, "average_best": 3})

    reference = train(config(6), tmp_path / "reference")
    train(config(3), tmp_path / "run")
    root = tmp_path / "run/checkpoints"
    # an interrupted later write: a temp folder, and a step folder without a marker
    shutil.copytree(root / "step-00000003", root / ".tmp-step-00000004")
    shutil.copytree(root / "step-00000003", root / "step-00000005")
    (root / "step-00000005/checkpoint.json").unlink()
    result = train(config(6), tmp_path / "run")
    assert result.resumed_from == 3
    assert all_equal(load_weights(tmp_path / "run/model.safetensors"),
                     load_weights(tmp_path / "reference/model.safetensors"))
    assert not (root / ".tmp-step-00000004").exists()
    assert json.loads((root / "step-00000005/checkpoint.json").read_text())["step"] == 5  # rewritten for real

    # the files load with safetensors and torch.load(weights_only=True)
    latest = latest_checkpoint(root)
    for name in ("optimizer.pt", "rng-0.pt"):
        assert isinstance(torch.load(latest.path / name, weights_only=True), dict)

    # kept: the last one and the 3 best by dev loss; model_avg is the mean of those 3
    dev = {int(r["step"]): float(r["dev_loss"]) for r in read_csv(tmp_path / "run/dev.csv")}
    assert sorted(dev) == [1, 2, 3, 4, 5, 6]
    best = sorted(sorted(dev, key=lambda s: (dev[s], -s))[:3])
    assert result.averaged_steps == tuple(best) == reference.averaged_steps
    assert [c.step for c in list_checkpoints(root)] == sorted(set(best) | {6})
    states = [load_weights(root / f"step-{s:08d}/model.safetensors") for s in best]
    averaged = load_weights(tmp_path / "run/model_avg.safetensors")
    for name, tensor in averaged.items():
        expected = np.mean([s[name].numpy().astype(np.float64) for s in states], axis=0)
        np.testing.assert_allclose(tensor.numpy(), expected.astype(np.float32), rtol=0, atol=0, err_msg=name)


def test_best_by_accuracy_keeps_and_averages_the_most_accurate_checkpoint(tests_corpus, tmp_path):
    from kd.data import load_data_dir, normalize_text, read_audio
    from kd.models.model_dir import load_model_dir
    from kd.training.loop import train

    corpus = tests_corpus[0]
    config = make_config([corpus / "us/train"], dev=corpus / "us/dev", steps=5,
                         checkpoint={"every_steps": 1, "keep_last": 1, "average_best": 1, "best_by": "acc"})
    result = train(config, tmp_path / "run")
    rows = read_csv(tmp_path / "run/dev.csv")
    acc = {int(r["step"]): float(r["dev_acc"]) for r in rows}
    assert sorted(acc) == [1, 2, 3, 4, 5] and all(0.0 <= a <= 1.0 for a in acc.values())
    best = max(acc, key=lambda s: (acc[s], s))
    assert result.averaged_steps == (best,) and result.best_dev_acc == pytest.approx(acc[best], abs=1e-6)
    assert result.best_dev_loss == pytest.approx(min(float(r["dev_loss"]) for r in rows), rel=1e-5)
    # the dev accuracy is the corpus-level fraction of correct argmax predictions (transcript + <eos>),
    # here recomputed one utterance at a time with the kept model
    model, tokenizer = load_model_dir(tmp_path / "run/model")
    correct = positions = 0
    with torch.no_grad():
        for u in load_data_dir(corpus / "us/dev").utterances:
            speech = torch.from_numpy(read_audio(u.path))[None]
            tokens = torch.tensor([tokenizer.encode(normalize_text(u.text))])
            out = model(speech, torch.tensor([speech.shape[1]]), tokens, torch.tensor([tokens.shape[1]]))
            correct += int((out.logits.argmax(-1) == out.targets)[out.token_mask].sum())
            positions += int(out.token_mask.sum())
    assert correct / positions == pytest.approx(result.best_dev_acc, abs=1e-7)  # float32 per batch
