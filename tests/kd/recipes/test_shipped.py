"""Shipping finished training runs with their provenance; the provenance of a results file.

Restoring by fingerprint, end to end: tests/recipes/test_multidomain_ukd.py."""

from __future__ import annotations

import json
import subprocess

import pytest

from kd.recipes import shipped
from kd.recipes.shipped import PROVENANCE, provenance, restore, ship_run


def _run(folder, *, finished=True, resumed_from=None):
    from kd.training.config import TrainConfig

    config = TrainConfig.from_dict({"data": {"train": ["train"], "dev": "dev"}, "tokens": {"kind": "list", "path": "t"},
                                    "model": {"preset": "tiny"}, "optim": {"max_steps": 2}})
    (folder / "model").mkdir(parents=True)
    (folder / "model/model.safetensors").write_bytes(b"weights")
    (folder / "config.yaml").write_text(config.to_yaml())
    if finished:
        (folder / "result.json").write_text(json.dumps({"wall_seconds": 12.5, "resumed_from": resumed_from}))
    return folder


def test_ship_run_copies_each_model_with_its_fingerprint_and_wall_time(tmp_path, monkeypatch, capsys):
    # the fingerprint reads the run's data dirs; here it is the run's config only
    monkeypatch.setattr(shipped, "run_fingerprint", lambda config, tokens: {"config": config.optim.max_steps,
                                                                            "tokens": str(tokens)})
    runs = [_run(tmp_path / "runs/us"), _run(tmp_path / "runs/uk")]
    target = tmp_path / "teachers"
    assert [ship_run(run, tmp_path / "tokens.txt", target / run.name, command="run.py --ship", trained={"date": "today"})
            for run in runs] == [
        target / "us", target / "uk"]
    found = json.loads((target / "uk" / PROVENANCE).read_text())
    assert found == {"fingerprint": {"config": 2, "tokens": str(tmp_path / "tokens.txt")}, "command": "run.py --ship",
                     "trained": {"date": "today", "wall_seconds": 12.5}}
    assert (target / "us/model.safetensors").read_bytes() == b"weights"
    assert f"shipped {runs[1]} to {target / 'uk'}" in capsys.readouterr().out
    # what was shipped is restored for the same fingerprint only
    assert restore(target / "us", tmp_path / "again/model", found["fingerprint"]) is None
    other = {**found["fingerprint"], "config": 3}
    assert "trained with other config" in restore(target / "us", tmp_path / "other/model", other)


def test_a_shipped_resumed_run_says_its_wall_time_covers_the_updates_after_the_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "run_fingerprint", lambda config, tokens: {})
    run = _run(tmp_path / "runs/teacher", resumed_from=5140)
    assert shipped.ship_run(run, tmp_path / "tokens.txt", tmp_path / "shipped", command="c", trained={}) == (
        tmp_path / "shipped")
    assert json.loads((tmp_path / "shipped" / PROVENANCE).read_text())["trained"] == {"wall_seconds": 12.5,
                                                                                      "resumed_from": 5140}


def test_ship_run_refuses_a_run_that_did_not_finish(tmp_path):
    run = _run(tmp_path / "runs/us", finished=False)
    with pytest.raises(ValueError, match=r"runs/us is not a finished training run \(restored teachers are not"):
        ship_run(run, tmp_path / "tokens.txt", tmp_path / "teachers" / "us", command="c", trained={})
    assert not (tmp_path / "teachers").exists()


def test_provenance_names_the_commit_and_uncommitted_changes_to_the_watched_paths(tmp_path):
    assert provenance(tmp_path)["commit"] == "unknown"  # not a git checkout

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "kd").mkdir()
    (tmp_path / "kd/a.py").write_text("a\n")
    (tmp_path / "notes.txt").write_text("n\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "--short", "HEAD")
    found = provenance(tmp_path, ["kd"])
    assert found["commit"] == head and set(found) == {"date", "commit", "cpu", "machine"}
    (tmp_path / "notes.txt").write_text("changed\n")
    assert provenance(tmp_path, ["kd"])["commit"] == head  # not a watched path
    (tmp_path / "kd/a.py").write_text("changed\n")
    assert provenance(tmp_path, ["kd"])["commit"] == f"{head}+changes"


def test_reidentify_swaps_audio_digests_for_plan_digests_only_for_the_same_audio(tmp_path):
    """A model shipped with audio digests of its data gets the plan digests of the same built-in corpus
    splits; data whose audio differs from what it was trained on is refused and nothing is written."""
    from kd.corpus.synth import build_corpus

    corpus = tmp_path / "corpus"
    build_corpus(corpus, "alnum_tests", seed=0, jobs=1, progress=False, splits=["us/train", "us/dev"])
    train, dev = corpus / "us/train", corpus / "us/dev"
    model = tmp_path / "teacher"
    model.mkdir()
    record = {"fingerprint": {"train": [shipped.audio_digest(train)], "dev": shipped.audio_digest(dev),
                              "config": "c", "tokens": "t"}, "command": "retrain", "trained": {"date": "d"}}
    (model / PROVENANCE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"the dev data given \(.*us/train\) has audio digest"):
        shipped.reidentify(model, train=[train], dev=train)
    assert json.loads((model / PROVENANCE).read_text()) == record
    new = shipped.reidentify(model, train=[train], dev=dev)
    assert new == {"train": [shipped.data_digest(train)], "dev": shipped.data_digest(dev), "config": "c", "tokens": "t"}
    assert new["dev"].startswith("plan-") and new["dev"] != new["train"][0]
    found = json.loads((model / PROVENANCE).read_text())
    assert found["fingerprint"] == new and found["audio_fingerprint"] == {k: record["fingerprint"][k]
                                                                          for k in ("train", "dev")}
    assert found["command"] == "retrain"


def test_a_shipped_resume_point_continues_the_run_exactly_in_another_run_dir(tests_corpus, tmp_path, capsys):
    """A run stopped by its time limit ships its newest checkpoint; a run of the same fingerprint in another
    dir continues from it and ends with exactly the uninterrupted run's weights; another config does not
    take it; the finished run ships with the time spent before the resume."""
    from kd.testing import all_equal, make_config
    from kd.training.checkpoint import list_checkpoints
    from kd.training.loop import train
    from kd.models.weights import load_weights

    corpus = tests_corpus[0]

    def config(limit=None, lr=2e-3):
        return make_config([corpus / "us/train"], dev=corpus / "us/dev", steps=6, max_seconds=7.0,
                           optim={"time_limit_s": limit, "lr": lr}, checkpoint={"every_steps": 2})

    full = train(config(), tmp_path / "full")
    part = train(config(limit=1e-9), tmp_path / "part")  # stops after its first step, with a checkpoint
    assert part.stopped_early and part.steps == 1
    assert not (tmp_path / "part/.done.json").exists()  # not finished: running it again continues it
    tokens = tmp_path / "part/tokens.txt"
    with pytest.raises(ValueError, match=r"part was stopped by its time limit at step 1: ship it as a resume point"):
        shipped.ship_run(tmp_path / "part", tokens, tmp_path / "shipped/us", command="c", trained={})
    target = shipped.ship_resume_point(tmp_path / "part", tokens, tmp_path / "shipped/us", command="retrain",
                                       trained={"date": "d"})
    record = json.loads((target / PROVENANCE).read_text())
    assert record["resume"] == {"step": 1} and record["command"] == "retrain"
    assert record["fingerprint"] == shipped.run_fingerprint(config(), tokens)  # the time limit is not part of it
    assert record["trained"]["date"] == "d" and record["trained"]["wall_seconds"] > 0
    assert [c.step for c in list_checkpoints(target / "resume/checkpoints")] == [1]

    # another config: trained from the start, nothing copied
    assert not shipped.restore_for_run(target, tmp_path / "other", config(lr=1e-3), tokens, "teacher us")
    assert "the resume point" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # the same config: continued from the resume point
    assert not shipped.restore_for_run(target, tmp_path / "again", config(), tokens, "teacher us")
    assert "from the shipped resume point" in capsys.readouterr().err
    again = train(config(), tmp_path / "again")
    assert again.resumed_from == 1 and again.steps == full.steps == 6 and not again.stopped_early
    assert all_equal(load_weights(tmp_path / "full/model.safetensors"), load_weights(tmp_path / "again/model.safetensors"))
    # a run here that is as far as the resume point is left alone
    assert not shipped.restore_for_run(target, tmp_path / "again", config(), tokens, "teacher us")
    final = shipped.ship_run(tmp_path / "again", tokens, tmp_path / "final", command="c", trained={})
    timing = json.loads((final / PROVENANCE).read_text())["trained"]
    assert timing["resumed_from"] == 1 and timing["wall_seconds_before_resume"] == record["trained"]["wall_seconds"]
    with pytest.raises(ValueError, match="finished training: ship its model"):
        shipped.ship_resume_point(tmp_path / "again", tokens, tmp_path / "x", command="c", trained={})
