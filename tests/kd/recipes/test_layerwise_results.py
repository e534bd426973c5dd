"""The layer-wise recipe's results file (kd.recipes.layerwise.layerwise_results): the teacher's report
with machine-independent names, how unlike its layers are, the tracking table; its markdown."""

from __future__ import annotations

import json

from analysis.report import AnalysisReport
from kd.recipes.layerwise import layerwise_results, layerwise_results_markdown

CKA = [[1.0, 0.9, 0.8, 0.7],  # row/column 0: the embedding output, left out of the lowest pair
       [0.9, 1.0, 0.95, 0.6],
       [0.8, 0.95, 1.0, 0.85],
       [0.7, 0.6, 0.85, 1.0]]


def _report(tmp_path):
    report = AnalysisReport(model=str(tmp_path / "exp/asr/teacher/model"), data=str(tmp_path / "corpus/us/dev"),
                            num_utterances=10, num_frames=200, frame_rate=25.0, num_layers=4,
                            similarity={"linear_cka": CKA}, per_layer={"cca_phone": [0.1, 0.3, 0.2, 0.15]},
                            extras={"model_training_data": [str(tmp_path / "corpus/us/train")]})
    report.save(tmp_path / "report.json")
    return tmp_path / "report.json"


def test_results_name_the_least_similar_layers_without_machine_paths(tmp_path):
    tracking = {"checkpoints": ["step 1"], "figures": [str(tmp_path / "fig.png")]}
    results = layerwise_results(preset="p", teacher_report=_report(tmp_path), tracking=tracking,
                                provenance={"date": "d", "commit": "c", "cpu": "x"})
    t = results["asr_teacher"]
    assert t["layers"] == 3 and t["lowest_cka"] == 0.6 and t["lowest_cka_layers"] == [1, 3]
    assert t["adjacent_cka_min"] == 0.85
    assert t["report"]["model"] == "teacher/model" and t["report"]["data"] == "us/dev"
    assert t["report"]["extras"]["model_training_data"] == ["us/train"]
    assert results["asr_dynamics"] == {"checkpoints": ["step 1"]} and str(tmp_path) not in json.dumps(results)
    assert AnalysisReport.from_dict(t["report"]).per_layer == {"cca_phone": [0.1, 0.3, 0.2, 0.15]}


def test_markdown_titles_the_teacher_and_leaves_out_a_tracking_table_not_run(tmp_path):
    results = layerwise_results(preset="p", teacher_report=_report(tmp_path), tracking=None,
                                provenance={"date": "2026-12-07", "commit": "abc", "cpu": "x"})
    text = layerwise_results_markdown(results)
    assert text.startswith("Preset `p`; 2026-12-07, commit abc, x.")
    assert "lowest linear CKA between two of its layers 0.600 (layers [1, 3]), between neighbours 0.850" in text
    assert "# Layer-wise analysis" not in text and "`us/dev`" in text and "along its training" not in text
