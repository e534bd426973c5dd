"""Recipe stages: markers, skips, redo of half-finished and changed stages, ranges."""

from __future__ import annotations

import json

import pytest

from kd.recipes.stages import Stage, run_stages, stage_dir


class Recorder:
    """Stage functions that record their calls and the results they were handed."""

    def __init__(self):
        self.calls: list[str] = []
        self.seen: dict[str, dict] = {}
        self.fail: set[str] = set()

    def stage(self, number, name, config=None):
        def run(done):
            self.calls.append(name)
            self.seen[name] = dict(done)
            if name in self.fail:
                raise RuntimeError(f"{name} interrupted")
            return {"value": number * 10}

        return Stage(number, name, run, config if config is not None else {"n": number})


def quiet(_line):
    pass


def test_finished_stages_are_skipped_and_their_results_handed_on(tmp_path):
    r = Recorder()
    stages = [r.stage(1, "a"), r.stage(2, "b"), r.stage(3, "c")]
    first = run_stages(stages, tmp_path, log=quiet)
    assert [o.status for o in first] == ["ran", "ran", "ran"]
    assert r.seen["c"] == {"a": {"value": 10}, "b": {"value": 20}}
    marker = json.loads((stage_dir(tmp_path, stages[1]) / ".done.json").read_text())
    assert marker["result"] == {"value": 20}
    r.calls.clear()
    second = run_stages(stages, tmp_path, log=quiet)
    assert r.calls == []
    assert [o.status for o in second] == ["skipped"] * 3
    assert [o.result for o in second] == [{"value": 10}, {"value": 20}, {"value": 30}]


def test_a_half_finished_stage_is_redone_and_earlier_ones_are_not(tmp_path):
    r = Recorder()
    r.fail = {"b"}
    stages = [r.stage(1, "a"), r.stage(2, "b"), r.stage(3, "c")]
    with pytest.raises(RuntimeError, match="b interrupted"):
        run_stages(stages, tmp_path, log=quiet)
    assert r.calls == ["a", "b"]
    assert not (stage_dir(tmp_path, stages[1]) / ".done.json").exists()
    r.calls.clear()
    r.fail = set()
    outcomes = run_stages(stages, tmp_path, log=quiet)
    assert r.calls == ["b", "c"]
    assert [o.status for o in outcomes] == ["skipped", "ran", "ran"]
    assert r.seen["b"] == {"a": {"value": 10}}  # the skipped stage's result, read from its marker


def test_a_changed_config_redoes_that_stage_and_every_later_one(tmp_path):
    r = Recorder()
    run_stages([r.stage(1, "a"), r.stage(2, "b"), r.stage(3, "c")], tmp_path, log=quiet)
    r.calls.clear()
    run_stages([r.stage(1, "a"), r.stage(2, "b", {"n": 2, "lr": 0.1}), r.stage(3, "c")], tmp_path, log=quiet)
    assert r.calls == ["b", "c"]


def test_stage_range_force_and_cleared_later_markers(tmp_path):
    r = Recorder()
    stages = [r.stage(1, "a"), r.stage(2, "b"), r.stage(3, "c")]
    outcomes = run_stages(stages, tmp_path, start=2, stop=2, log=quiet)
    assert r.calls == ["b"]
    assert [o.status for o in outcomes] == ["outside", "ran", "outside"]
    assert r.seen["b"] == {"a": None}  # stage 1 never ran: no result
    run_stages(stages, tmp_path, log=quiet)
    r.calls.clear()
    run_stages(stages, tmp_path, start=2, stop=2, force=True, log=quiet)
    assert r.calls == ["b"]
    # redoing stage 2 invalidated stage 3, so a full run redoes 3 only
    r.calls.clear()
    run_stages(stages, tmp_path, log=quiet)
    assert r.calls == ["c"]


@pytest.mark.parametrize("kwargs, message", [
    ({"number": 0, "name": "a"}, r"Stage.number: expected an integer >= 1, found 0"),
    ({"number": 1, "name": "Bad Name"}, r"Stage.name: expected lower-case letters"),
])
def test_malformed_stages_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Stage(run=lambda done: None, **kwargs)


def test_bad_ranges_and_duplicate_numbers_are_refused(tmp_path):
    r = Recorder()
    with pytest.raises(ValueError, match=r"expected unique stage numbers, found \[1, 1\]"):
        run_stages([r.stage(1, "a"), r.stage(1, "b")], tmp_path, log=quiet)
    with pytest.raises(ValueError, match="stop stage: expected >= start stage 3, found 2"):
        run_stages([r.stage(1, "a")], tmp_path, start=3, stop=2, log=quiet)
    with pytest.raises(ValueError, match=r"expected an overlap with the recipe's stages \[1\]"):
        run_stages([r.stage(1, "a")], tmp_path, start=4, log=quiet)
    assert r.calls == []
