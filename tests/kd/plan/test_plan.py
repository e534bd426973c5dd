import json

import numpy as np
import pytest

from kd.plan import PLAN_VERSION, CompressionPlan


def test_lists_become_tuples_and_defaults_fill_in():
    plan = CompressionPlan([1, 3, 5], share_groups=[[2, 0]], attention_reuse=[[0, 1]])
    assert plan.keep_layers == (1, 3, 5)
    assert plan.share_groups == ((2, 0),) and plan.attention_reuse == ((0, 1),)
    assert plan.num_student_layers == 3
    assert plan.teacher_to_student() == {1: 0, 3: 1, 5: 2}
    assert plan.share_leaders() == {0: 2} and plan.reuse_leaders() == {1: 0}
    assert plan.has_sharing and plan.has_attention_reuse
    assert plan.version == PLAN_VERSION


def test_numpy_integers_are_accepted_as_indices():
    plan = CompressionPlan(np.array([0, 2]), layer_map={np.int64(4): np.int64(1)})
    assert plan.keep_layers == (0, 2) and type(plan.keep_layers[0]) is int
    assert plan.teacher_to_student() == {4: 1}


def test_groups_of_one_are_no_ops():
    plan = CompressionPlan([0, 1], share_groups=[[0]], attention_reuse=[[0], [1]])
    assert not plan.has_sharing and not plan.has_attention_reuse
    assert plan.reuse_leaders() == {}


def test_json_round_trip_keeps_everything():
    plan = CompressionPlan([0, 4, 7], share_groups=[[1, 2]], attention_reuse=[[0, 2]],
                           layer_map={3: 0, 4: 1, 11: 2}, num_teacher_layers=12)
    text = plan.to_json()
    assert json.loads(text)["layer_map"] == {"3": 0, "4": 1, "11": 2}
    again = CompressionPlan.from_json(text)
    assert again == plan and hash(again) == hash(plan)
    assert CompressionPlan.from_dict(plan.to_dict()) == plan


def test_save_is_atomic_and_load_reads_it(tmp_path):
    plan = CompressionPlan([0, 2], attention_reuse=[[0, 1]], num_teacher_layers=3)
    path = plan.save(tmp_path / "sub" / "plan.json")
    assert CompressionPlan.load(path) == plan
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]  # no temporary file left


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(keep_layers=[]), ValueError, r"keep_layers: .*empty plan"),
    (dict(keep_layers=[0, 2, 2]), ValueError, r"strictly increasing.*duplicate"),
    (dict(keep_layers=[3, 1]), ValueError, r"strictly increasing.*out of order"),
    (dict(keep_layers=[-1, 2]), ValueError, r"keep_layers: expected a layer index >= 0, found -1"),
    (dict(keep_layers=[0, 1.5]), TypeError, r"keep_layers: expected an integer"),
    (dict(keep_layers=[True]), TypeError, r"keep_layers: expected an integer"),
    (dict(keep_layers="012"), TypeError, r"keep_layers: expected a list"),
    (dict(keep_layers=[0, 5], num_teacher_layers=4), ValueError, r"teacher layer\(s\) \[5\] out of range.*4 layers"),
    (dict(keep_layers=[0, 1], share_groups=[[0, 2]]), ValueError,
     r"share_groups\[0\]: student layer 2 is out of range"),
    (dict(keep_layers=[0, 1, 2], share_groups=[[0, 1], [1, 2]]), ValueError,
     r"share_groups\[1\].*also in share_groups\[0\]"),
    (dict(keep_layers=[0, 1], share_groups=[[0, 0]]), ValueError, r"twice in this group"),
    (dict(keep_layers=[0, 1], share_groups=[[]]), ValueError, r"share_groups\[0\]: .*empty group"),
    (dict(keep_layers=[0, 1, 2], attention_reuse=[[2, 0, 1]]), ValueError,
     r"attention_reuse\[0\]: follower\(s\) \[0, 1\] come before their leader 2"),
    (dict(keep_layers=[0, 1, 2], attention_reuse=[[0, 1], [1, 2]]), ValueError, r"attention_reuse\[1\].*also in"),
    (dict(keep_layers=[0, 1], layer_map={0: 2}), ValueError, r"layer_map\[0\]: student layer 2 is out of range"),
    (dict(keep_layers=[0, 1], layer_map={7: 0}, num_teacher_layers=4), ValueError, r"layer_map: teacher layer"),
    (dict(keep_layers=[0], num_teacher_layers=0), ValueError, r"num_teacher_layers"),
    (dict(keep_layers=[0], version=2), ValueError, r"version: this code reads plan version 1, found 2"),
])
def test_malformed_plans_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        CompressionPlan(**kwargs)


def test_share_groups_may_list_followers_before_the_leader():
    assert CompressionPlan([0, 1, 2], share_groups=[[2, 0, 1]]).share_leaders() == {0: 2, 1: 2}


def test_validate_against_a_model_depth():
    plan = CompressionPlan([0, 6])
    plan.validate(7)
    with pytest.raises(ValueError, match=r"keep_layers: teacher layer\(s\) \[6\] out of range; the model has 4"):
        plan.validate(4)
    with pytest.raises(ValueError, match="made for a teacher with 12 layers, but this model has 7"):
        CompressionPlan([0, 6], num_teacher_layers=12).validate(7)


def test_loading_names_the_file_and_field(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"version": 1, "keep_layers": [0], "keep_layer": [1]}))
    with pytest.raises(ValueError, match=rf"{path}: unknown field 'keep_layer' \(did you mean 'keep_layers'\?\)"):
        CompressionPlan.load(path)
    path.write_text(json.dumps({"version": 7, "keep_layers": [0]}))
    with pytest.raises(ValueError, match=rf"{path}: version: .*found 7"):
        CompressionPlan.load(path)
    path.write_text(json.dumps({"keep_layers": [0]}))
    with pytest.raises(ValueError, match=rf"{path}: missing plan field 'version'"):
        CompressionPlan.load(path)
    path.write_text(json.dumps({"version": 1, "keep_layers": [0, 1], "attention_reuse": [[1, 0]]}))
    with pytest.raises(ValueError, match=rf"{path}: attention_reuse\[0\]"):
        CompressionPlan.load(path)
    path.write_text(json.dumps({"version": 1, "keep_layers": [0], "layer_map": {"x": 0}}))
    with pytest.raises(ValueError, match=rf"{path}: layer_map: expected each key to be an integer, found 'x'"):
        CompressionPlan.load(path)
    path.write_text(json.dumps({"version": 1}))
    with pytest.raises(ValueError, match=rf"{path}: keep_layers: required field missing"):
        CompressionPlan.load(path)
    path.write_text(json.dumps({"version": 1, "keep_layers": [0, 1.5]}))
    with pytest.raises(ValueError, match=rf"{path}: keep_layers\[1\]: expected an integer, found 1.5 \(float\)"):
        CompressionPlan.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{path}: not valid JSON"):
        CompressionPlan.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CompressionPlan.load(tmp_path / "missing.json")


def test_plans_are_frozen():
    plan = CompressionPlan([0])
    with pytest.raises(AttributeError):
        plan.keep_layers = (1,)


def test_from_dict_reads_a_saved_plan_and_names_the_field_in_error():
    """The JSON plans written so far load as they are: layer_map's keys are text, read as teacher layers."""
    saved = ('{"version": 1, "keep_layers": [0, 4, 7], "share_groups": [[1, 2]], "attention_reuse": [[0, 2]], '
             '"layer_map": {"3": 0, "4": 1, "11": 2}, "num_teacher_layers": 12}')
    plan = CompressionPlan.from_dict(json.loads(saved))
    assert plan == CompressionPlan([0, 4, 7], share_groups=[[1, 2]], attention_reuse=[[0, 2]],
                                   layer_map={3: 0, 4: 1, 11: 2}, num_teacher_layers=12)
    assert json.dumps(plan.to_dict()) == saved
    assert CompressionPlan.from_dict({"version": 1, "keep_layers": [2]}) == CompressionPlan([2])
    for data, match in [
        ({"version": 1, "keep_layers": [0], "share_group": [[0]]},
         r"^CompressionPlan: unknown field 'share_group' \(did you mean 'share_groups'\?\); expected one of"),
        ({"version": 1, "keep_layers": [0], "layer_map": {"0": "a"}},
         r"^CompressionPlan.layer_map.0: expected an integer, found 'a' \(str\)"),
        ({"version": 1, "keep_layers": [0], "share_groups": [0]},
         r"^CompressionPlan.share_groups\[0\]: expected a list \(each item an integer\), found 0 \(int\)"),
        ({"version": 1, "keep_layers": [0], "num_teacher_layers": True},
         r"^CompressionPlan.num_teacher_layers: expected an integer or null, found True \(bool\)"),
        ({"version": 1, "keep_layers": [0, 2, 2]}, r"^CompressionPlan: keep_layers: .*duplicate"),
        ({"keep_layers": [0]}, r"^CompressionPlan: missing plan field 'version' \(expected 1\)"),
        ([0, 1], r"^CompressionPlan: expected a mapping of CompressionPlan fields"),
    ]:
        with pytest.raises(ValueError, match=match):
            CompressionPlan.from_dict(data)


def test_a_bare_file_name_is_named_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "keep_layers": [0, 1.5]}))
    with pytest.raises(ValueError, match=r"^\./plan.json: keep_layers\[1\]: expected an integer, found 1.5"):
        CompressionPlan.load("plan.json")
    with pytest.raises(ValueError, match=r"^<string>: keep_layers\[1\]: expected an integer"):
        CompressionPlan.from_json('{"version": 1, "keep_layers": [0, 1.5]}')
