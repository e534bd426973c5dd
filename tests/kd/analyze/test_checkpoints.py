"""kd.analyze.checkpoints: checkpoints as model dirs, Spearman's rho with a bootstrap interval, tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd.analyze.checkpoints import export_run_checkpoints, rank_correlation, tracking_table


def test_rank_correlation_matches_scipy_and_reads_monotone_and_unrelated_pairs():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + 0.5 * rng.normal(size=40)
    ties = np.round(y)  # tied ranks share their mean rank, as in scipy
    for b in (y, ties, -x):
        assert rank_correlation(x, b)["rho"] == pytest.approx(spearmanr(x, b).statistic, abs=1e-4)
    up = rank_correlation(x, np.exp(x))
    assert up["rho"] == 1.0 and up["excludes_zero"] and up["ci95"] == [1.0, 1.0] and up["n"] == 40
    down = rank_correlation(x, -x ** 3)
    assert down["rho"] == -1.0 and down["excludes_zero"]
    unrelated = rank_correlation(x, rng.normal(size=40))
    assert unrelated["ci95"][0] < 0 < unrelated["ci95"][1] and not unrelated["excludes_zero"]
    with pytest.raises(ValueError, match="3 or more values"):
        rank_correlation([1, 2], [3, 4])
    with pytest.raises(ValueError, match="finite"):
        rank_correlation([1, 2, float("nan")], [3, 4, 5])


def _report(path, bound, probe):
    from analysis.report import AnalysisReport

    AnalysisReport(model="m", data="d", num_utterances=4, num_frames=40, frame_rate=25.0, num_layers=len(bound),
                   per_layer={"mi_cluster_normalized": bound, "probe_phone_accuracy": probe}).save(path)
    return path


def test_tracking_table_over_checkpoints_and_layers(tmp_path):
    # four checkpoints of a 3-layer model (index 0: the input); the bound and the probe rise together along
    # training and over layers, and the WER falls
    reports, wers = {}, {}
    for k in range(4):
        bound = [0.0] + [0.1 * k + 0.02 * layer for layer in (1, 2, 3)]
        probe = [0.1] + [0.3 + 0.1 * k + 0.01 * layer for layer in (1, 2, 3)]
        reports[f"step {100 * (k + 1)}"] = _report(tmp_path / f"r{k}.json", bound, probe)
        wers[f"step {100 * (k + 1)}"] = 90.0 - 10 * k
    table = tracking_table(reports, wers)
    assert table["bound_vs_probe_over_checkpoints_and_layers"]["rho"] == 1.0
    assert table["bound_vs_probe_over_checkpoints_and_layers"]["n"] == 12  # the input layer left out
    assert table["last_layer_bound_vs_wer"]["rho"] == -1.0 and table["best_layer_bound_vs_wer"]["rho"] == -1.0
    assert [table[k]["tracks"] for k in ("bound_vs_probe_over_checkpoints_and_layers", "last_layer_bound_vs_wer")] \
        == ["yes", "yes"]
    assert table["bound_vs_probe_over_checkpoints_and_layers"]["vacuous"] == 0
    assert table["per_checkpoint"]["step 400"] == {"wer": 60.0, "bound_last_layer": 0.36, "bound_best_layer": 0.36}
    with pytest.raises(ValueError, match="expected a WER per report"):
        tracking_table(reports, {"step 100": 1.0})


def test_checkpoints_of_a_run_become_model_dirs_with_their_own_weights(tmp_path, tests_corpus):
    from kd.models.model_dir import load_model_dir
    from kd.testing import make_config
    from kd.training.loop import train

    corpus, _ = tests_corpus
    config = make_config([corpus / "us/train"], steps=4, checkpoint={"every_steps": 2, "keep_last": 5})
    train(config, tmp_path / "run")
    exported = export_run_checkpoints(tmp_path / "run", tmp_path / "ckpts")
    assert list(exported) == ["step 2", "step 4"]
    two, _ = load_model_dir(exported["step 2"])
    four, _ = load_model_dir(exported["step 4"])
    from kd.models.weights import load_weights

    saved = load_weights(tmp_path / "run/checkpoints" / sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()
                                                                 if p.name.startswith("step-"))[0] / "model.safetensors")
    assert all(torch.equal(two.state_dict()[k], saved[k]) for k in saved)
    assert not all(torch.equal(two.state_dict()[k], four.state_dict()[k]) for k in saved)
    assert export_run_checkpoints(tmp_path / "run", tmp_path / "ckpts") == exported  # kept, not rewritten
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        export_run_checkpoints(tmp_path / "ckpts", tmp_path / "none")


def test_tracking_leaves_out_vacuous_bounds_and_reads_the_direction(tmp_path):
    """A bound at or below 0 is no point of the correlations (counted); a bound that rises with the WER, or
    falls as the probe rises, is the opposite of tracking, not tracking."""
    reports, wers = {}, {}
    for k in range(6):  # checkpoint k: bound and probe move apart, the WER rises with the bound
        bound = [0.0] + [(0.1 * k + 0.01 * layer) if k else -0.2 for layer in (1, 2)]
        probe = [0.1] + [0.9 - 0.1 * k - 0.01 * layer for layer in (1, 2)]
        reports[f"step {k + 1}"] = _report(tmp_path / f"r{k}.json", bound, probe)
        wers[f"step {k + 1}"] = 20.0 + 10 * k
    table = tracking_table(reports, wers)
    probe = table["bound_vs_probe_over_checkpoints_and_layers"]
    assert probe["vacuous"] == 2 and probe["n"] == 10 and probe["rho"] == -1.0 and probe["tracks"] == "opposite"
    last = table["last_layer_bound_vs_wer"]
    assert last["vacuous"] == 1 and last["n"] == 5 and last["tracks"] == "opposite"
    few = tracking_table(dict(list(reports.items())[:3]), dict(list(wers.items())[:3]))
    assert few["last_layer_bound_vs_wer"]["rho"] is None
    assert few["last_layer_bound_vs_wer"]["note"] == "the bound is vacuous at 1 of 3 points"
    from kd.recipes.layerwise import tracking_markdown
    text = tracking_markdown({**table, "per_checkpoint": dict(sorted(table["per_checkpoint"].items(), reverse=True))})
    assert text.index("| step 1 |") < text.index("| step 6 |")  # training order, not the mapping's
    assert "-0.2000 (vacuous)" in text and "no: the opposite direction" in text
