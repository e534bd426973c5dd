"""``kd analyze`` end to end on a tiny model and the tests corpus; capture adapters; the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from analysis.capture import HFSpeechEncoder, iter_activations
from analysis.report import AnalysisReport
from kd.analyze.layerwise import AnalyzeConfig, analyze_model_dir
from kd.cli import main
from kd.testing import tiny_w2v2


def test_hf_capture_padded_batch_equals_one_by_one():
    enc = HFSpeechEncoder(tiny_w2v2())
    assert enc.batch_consistent and enc.frame_rate == 50.0 and enc.num_layers == 4
    torch.manual_seed(1)
    a, b = torch.randn(8000) * 0.1, torch.randn(5000) * 0.1
    speech = torch.zeros(2, 8000)
    speech[0], speech[1, :5000] = a, b
    both = list(iter_activations(enc, [(["a", "b"], speech, torch.tensor([8000, 5000]))], attentions=True))
    alone = list(iter_activations(enc, [(["b"], b[None], torch.tensor([5000]))], attentions=True))
    assert both[1].hidden[0].shape == alone[0].hidden[0].shape
    for x, y in zip(both[1].hidden, alone[0].hidden):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    for x, y in zip(both[1].attentions, alone[0].attentions):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_group_norm_models_run_one_by_one():
    enc = HFSpeechEncoder(tiny_w2v2(stable=False))
    assert not enc.batch_consistent
    speech = torch.randn(2, 8000) * 0.1
    speech[1, 5000:] = 0
    out = list(iter_activations(enc, [(["a", "b"], speech, torch.tensor([8000, 5000]))]))
    alone = list(iter_activations(enc, [(["b"], speech[1:, :5000], torch.tensor([5000]))]))
    torch.testing.assert_close(out[1].hidden[-1], alone[0].hidden[-1])


def test_espnet_capture_shapes():
    from kd.analyze.espnet_capture import EspnetEncoderCapture
    from kd.models.asr import AsrConfig, build_asr_model

    cap = EspnetEncoderCapture(build_asr_model(AsrConfig.tiny(vocab_size=30)))
    acts = list(iter_activations(cap, [(["a", "b"], torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000]))],
                                 attentions=True))
    assert cap.frame_rate == 25.0 and cap.num_layers == 3
    assert [h.shape[0] for h in acts[0].hidden] == [24] * 3 and acts[1].hidden[0].shape[0] == 18
    assert acts[1].attentions[0].shape[-1] == 18
    torch.testing.assert_close(acts[1].attentions[0].sum(-1), torch.ones(acts[1].attentions[0].shape[:2]))


@pytest.mark.slow  # 88 s (every analysis on 12 utterances) on the 2-core machine; pytest -m slow
def test_kd_analyze_end_to_end(tests_corpus, tmp_path, capsys):
    root, _ = tests_corpus
    tiny_w2v2(tmp_path / "model")
    out = tmp_path / "analysis"
    code = main(["analyze", str(tmp_path / "model"), "--data", str(root / "us" / "train"), "--out", str(out),
                 "--device", "cpu"])
    assert code == 0
    report = AnalysisReport.load(out / "report.json")
    assert report.num_layers == 4 and report.num_utterances == 12
    for name in ("linear_cka", "svcca", "pwcca"):
        mat = report.similarity[name]
        assert len(mat) == 4 and all(len(r) == 4 for r in mat)
        for i in range(4):
            # CKA is exactly 1 on the diagonal; the CCA family slightly below (ridge epsilon)
            assert mat[i][i] == pytest.approx(1.0, abs=1e-9 if name == "linear_cka" else 1e-3)
            for j in range(4):
                assert 0.0 <= mat[i][j] <= 1.0 + 1e-9 and mat[i][j] == pytest.approx(mat[j][i], abs=1e-6)
    jsd = report.attention["jsd_head_averaged"]
    assert len(jsd) == 3 and all(jsd[i][i] == pytest.approx(0.0, abs=1e-9) for i in range(3))
    for key in ("cca_fbank", "cca_phone", "cca_word", "probe_phone_accuracy", "mi_phone_bits"):
        assert len(report.per_layer[key]) == 4
    # label-free bound: up to mi_pairs section pairs per utterance, each section run alone; a bound at
    # or below 0 bits is labelled vacuous, never reported as a finding
    pairs = report.extras["mi_cluster_pairs"]
    assert 12 < pairs <= 12 * AnalyzeConfig().mi_pairs
    assert report.extras["mi_cluster_vacuous"] == [not v > 0 for v in report.per_layer["mi_cluster_bits"]]
    assert report.vacuous_layers("mi_cluster_bits") == [i for i, v in enumerate(report.extras["mi_cluster_vacuous"])
                                                         if v]
    # every curve carries its bootstrap interval over utterances, each layer's value inside its own
    assert set(report.intervals) == set(report.per_layer) >= {"cca_fbank", "cca_phone", "probe_phone_accuracy",
                                                              "probe_speaker_accuracy", "mi_phone_bits"}
    for key, values in report.per_layer.items():
        iv = report.intervals[key]
        assert iv["n_boot"] == 1000 and iv["utterances"] >= 2 and len(iv["low"]) == len(values) == 4
        assert iv["estimate"] == pytest.approx(values, abs=1e-9)
        if None in iv["low"]:  # bound / H: a replicate drew held-out pairs all of one cluster (H = 0)
            assert key == "mi_cluster_normalized"
            assert any(path.startswith(f"report.intervals.{key}.low[") for path in report.undefined)
            continue
        for layer, value in enumerate(values):
            assert iv["low"][layer] - 1e-9 <= value <= iv["high"][layer] + 1e-9, (key, layer)
            assert iv["vs_last"][layer] == pytest.approx(value - values[-1], abs=1e-9)
        assert iv["vs_last_low"][-1] == pytest.approx(0.0, abs=1e-12)
        assert iv["vs_best_low"][iv["best"]] == pytest.approx(0.0, abs=1e-12)
    assert report.intervals["cca_fbank"]["utterances"] == 12  # cross-validated: every utterance held out once
    assert report.data == str((root / "us" / "train").resolve())
    timing = report.extras["timing"]
    assert list(timing["seconds"]) == ["forward_and_statistics", "similarity", "attention", "feature_cca",
                                       "phone_probes_and_mi", "speaker_probe", "mi_cluster"]
    assert timing["total_seconds"] == pytest.approx(sum(timing["seconds"].values()))
    import soundfile as sf

    from kd.data import load_data_dir
    audio = sum(sf.info(str(u.path)).duration for u in load_data_dir(root / "us" / "train").utterances)
    assert timing["audio_seconds"] == pytest.approx(audio)  # all 12 utterances analysed
    assert timing["audio_seconds_per_second"] == pytest.approx(audio / timing["total_seconds"])
    assert sorted(p.name for p in (out / "figures").iterdir()) >= ["attention_jsd.png", "linear_cka.png"]
    text = (out / "report.md").read_text()
    assert "Layer-wise analysis" in text and ("Skipped analyses" in text) == bool(report.skipped)
    assert f"Analysed data dir: `{report.data}`" in text and "A layer is called best only where" in text
    assert "data_in_model_training" not in report.extras  # a Hugging Face folder records no training data
    assert ("Label-free MI bound: vacuous at" in text) == any(report.extras["mi_cluster_vacuous"])
    assert "report:" in capsys.readouterr().out


def test_report_never_carries_silent_nan(tmp_path):
    report = AnalysisReport(model="m", data="d", num_utterances=1, num_frames=10, frame_rate=50.0, num_layers=2,
                            per_layer={"mi_cluster_normalized": [0.5, math.nan]})
    report.save(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["per_layer"]["mi_cluster_normalized"] == [0.5, None]
    assert "report.per_layer.mi_cluster_normalized[1]" in data["undefined"]
    assert AnalysisReport.load(tmp_path / "r.json").per_layer["mi_cluster_normalized"][1] is None


def _intervals(estimate, low, high, vs_best_low, *, utterances=20):
    """CurveIntervals.to_dict() of a three-layer curve with hand-set bounds; the paired upper bounds
    and the differences to the last layer follow from them."""
    best = max(range(len(estimate)), key=lambda i: (estimate[i], -i))
    return {"level": 0.95, "n_boot": 1000, "utterances": utterances, "estimate": estimate, "low": low, "high": high,
            "best": best, "vs_best": [estimate[best] - v for v in estimate], "vs_best_low": vs_best_low,
            "vs_best_high": [b + 0.1 if i != best else 0.0 for i, b in enumerate(vs_best_low)],
            "vs_last": [v - estimate[-1] for v in estimate],  # at best: vs_best of the last layer
            "vs_last_low": [vs_best_low[-1] if i == best else -0.1 for i in range(len(estimate) - 1)] + [0.0],
            "vs_last_high": [vs_best_low[-1] + 0.1 if i == best else 0.1 for i in range(len(estimate) - 1)] + [0.0]}


def test_report_calls_a_layer_best_only_where_its_paired_intervals_separate_it():
    values = [0.35, 0.54, 0.45]
    separated = _intervals(values, [0.30, 0.50, 0.40], [0.40, 0.58, 0.50], [0.12, 0.0, 0.05])
    report = AnalysisReport(model="m", data="/data/us/dev", num_utterances=100, num_frames=10, frame_rate=50.0,
                            num_layers=3, per_layer={"probe_phone_accuracy": values, "cca_phone": values},
                            intervals={"probe_phone_accuracy": separated})
    text = report.to_markdown()
    assert "Analysed data dir: `/data/us/dev`: 100 utterances" in text
    assert ("- Best layer for phone probe: 1 (0.540, 95% interval 0.500-0.580): the paired 95% interval of layer 1 "
            "minus each other layer lies above 0 (20 held-out utterances); last layer: 0.450 (layer 1 - last: "
            "+9.0 points, paired 95% interval [+5.0, +15.0] points).") in text
    assert report.tied_layers("probe_phone_accuracy") == [1]
    # no interval: the highest layer is named, never called best
    assert ("- Highest layer for CCA with phones: 1 (0.540; no bootstrap interval, so no layer is called best); "
            "last layer: 0.450.") in text
    assert report.tied_layers("cca_phone") is None
    # overlapping: layer 2's paired difference to layer 1 holds 0, so the two are tied at the top
    report.intervals["probe_phone_accuracy"] = _intervals(values, [0.30, 0.50, 0.40], [0.40, 0.58, 0.50],
                                                          [0.12, 0.0, -0.01])
    text = report.to_markdown()
    assert "Best layer for phone probe" not in text
    assert ("- Top layers for phone probe, tied: 1, 2 (highest: layer 1, 0.540, 95% interval 0.500-0.580; the paired "
            "95% interval of layer 1 minus layer 2 holds 0, 20 held-out utterances); no single best layer; last "
            "layer: 0.450 (layer 1 - last: +9.0 points, paired 95% interval [-1.0, +9.0] points).") in text
    assert report.tied_layers("probe_phone_accuracy") == [1, 2]
    # the table gives each value's interval; curves other than accuracies keep their own units
    assert "| 1 | 0.540 | 0.540 [0.500, 0.580] |" in text
    report.intervals["cca_phone"] = _intervals(values, [0.30, 0.50, 0.40], [0.40, 0.58, 0.50], [-0.01, 0.0, -0.02])
    assert ("- Top layers for CCA with phones, tied: 0, 1, 2 (highest: layer 1, 0.540, 95% interval 0.500-0.580; "
            "the paired 95% interval of layer 1 minus layers 0, 2 holds 0, 20 held-out utterances); no single best "
            "layer; last layer: 0.450 (layer 1 - last: +0.090, paired 95% interval [-0.020, +0.080]).") \
        in report.to_markdown()


def test_per_layer_figures_draw_every_interval_as_a_band(tmp_path):
    from matplotlib.collections import PolyCollection
    import matplotlib.pyplot as plt

    values = [0.35, 0.54, 0.45]
    report = AnalysisReport(model="m", data="d", num_utterances=100, num_frames=10, frame_rate=50.0, num_layers=3,
                            per_layer={"cca_fbank": values, "cca_phone": values, "mi_cluster_bits": [0.0, 0.4, 0.2]},
                            intervals={"cca_fbank": _intervals(values, [0.3, 0.5, 0.4], [0.4, 0.58, 0.5], [0.1, 0, 0.05]),
                                       "cca_phone": _intervals(values, [0.3, 0.5, 0.4], [0.4, 0.58, 0.5], [0.1, 0, 0.05]),
                                       "mi_cluster_bits": _intervals([0.0, 0.4, 0.2], [-0.1, 0.3, 0.1],
                                                                     [0.1, 0.5, 0.3], [0.3, 0.0, 0.1])})
    fig = report.per_layer_figure(["cca_fbank", "cca_phone"])
    bands = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one fill_between per curve
    assert [line.get_label().split(";")[1] for line in fig.axes[0].lines] == [" band: 95% interval, 20 utts"] * 2
    plt.close(fig)
    # a vacuous layer (bound <= 0 bits) is no value: neither its line point nor its band is drawn
    fig = report.per_layer_figure(["mi_cluster_bits"])
    band, = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    xs = np.concatenate([path.vertices[:, 0] for path in band.get_paths()])
    assert xs.min() >= 1.0 - 1e-9
    plt.close(fig)
    assert sorted(p.name for p in report.save_figures(tmp_path)) == ["per_layer_cca.png", "per_layer_mi.png"]


def test_report_warns_when_the_data_dir_trained_the_model(tmp_path):
    from kd.analyze.layerwise import run_training_data

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model_config.yaml").write_text("encoder: {}\n")
    (run / "config.yaml").write_text(f"data:\n  train: [{tmp_path / 'us' / 'train'}]\n  dev: {tmp_path / 'us' / 'dev'}\n")
    (run / "model" / "config.yaml").write_text("format: kd-asr\n")
    assert run_training_data(run / "model") == run_training_data(run) == [str((tmp_path / "us" / "train").resolve())]
    assert run_training_data(tmp_path) is None
    report = AnalysisReport(model="m", data=str(tmp_path / "us" / "train"), num_utterances=1, num_frames=1,
                            frame_rate=50.0, num_layers=1,
                            extras={"model_training_data": [str(tmp_path / "us" / "train")],
                                    "data_in_model_training": True})
    assert f"**Warning**: `{tmp_path / 'us' / 'train'}` is among the model's training data" in report.to_markdown()


def test_peak_layer_summary_gives_the_paired_interval(tmp_path):
    from kd.analyze.summary import peak_layers_markdown

    for name, low in (("a", 0.05), ("b", -0.01)):
        phone = _intervals([0.35, 0.54, 0.45], [0.30, 0.50, 0.40], [0.40, 0.58, 0.50], [0.1, 0.0, 0.05])
        phone["vs_last_low"][1] = low
        cca = _intervals([0.3, 0.2, 0.1], [0.2, 0.1, 0.0], [0.4, 0.3, 0.2], [0.0, 0.05, 0.1])
        AnalysisReport(model=name, data="d", num_utterances=100, num_frames=10, frame_rate=50.0, num_layers=3,
                       per_layer={"probe_phone_accuracy": [0.35, 0.54, 0.45], "cca_phone": [0.3, 0.2, 0.1]},
                       intervals={"probe_phone_accuracy": phone, "cca_phone": cca}).save(tmp_path / f"{name}.json")
    table = peak_layers_markdown({"A": tmp_path / "a.json", "B": tmp_path / "b.json"})
    assert ("| A | 2 | 0 (0.300; last 0.100; peak - last [+0.100, +0.200] *) | 1 (0.540; last 0.450; peak - last "
            "[+5.0, +15.0] points *) |") in table
    assert "| B | 2 | 0 (0.300; last 0.100; peak - last [+0.100, +0.200] *) | 1 (0.540; last 0.450; peak - last " \
           "[-1.0, +15.0] points) |" in table


def test_malformed_report_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a JSON analysis report"):
        AnalysisReport.load(tmp_path / "bad.json")
    (tmp_path / "v.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="v.json: Expected analysis report version 1, found 99"):
        AnalysisReport.load(tmp_path / "v.json")


def test_analyze_config_validation():
    with pytest.raises(ValueError, match="frames_per_utterance: expected >= 2, found 1"):
        AnalyzeConfig(frames_per_utterance=1)
    with pytest.raises(ValueError, match=r"bootstrap: expected >= 0 \(0: no intervals\), found -1"):
        AnalyzeConfig(bootstrap=-1)


@pytest.mark.slow  # 80 s (kd analyze, kd plan by each method, kd compress) on the 2-core machine; pytest -m slow
def test_plan_and_compress_from_report(tests_corpus, tmp_path):
    """analyze -> plan (each method) -> compress -> plain transformers loads the student."""
    from transformers import Wav2Vec2Model

    from kd.plan import CompressionPlan

    root, _ = tests_corpus
    teacher = tiny_w2v2(tmp_path / "model")
    assert main(["analyze", str(tmp_path / "model"), "--data", str(root / "uk" / "train"), "--out",
                 str(tmp_path / "an"), "--device", "cpu", "--no-attention"]) == 0
    plans = {}
    for method in ("analysis", "first-k", "every-k", "linspace"):
        out = tmp_path / f"{method}.json"
        assert main(["plan", str(tmp_path / "an" / "report.json"), "--budget", "2", "--method", method,
                     "--out", str(out)]) == 0
        plans[method] = CompressionPlan.load(out)
        assert plans[method].num_student_layers == 2
    assert plans["first-k"].keep_layers == (0, 1) or list(plans["first-k"].keep_layers) == [0, 1]
    assert list(plans["linspace"].keep_layers) == [0, 2]
    # a latency budget: 10 ms fixed + 5 ms per layer, 21 ms -> 2 layers
    assert main(["plan", str(tmp_path / "an" / "report.json"), "--budget-ms", "21", "--latency", "3:25",
                 "--latency", "1:15", "--method", "first-k", "--out", str(tmp_path / "ms.json")]) == 0
    assert CompressionPlan.load(tmp_path / "ms.json").keep_layers == (0, 1)
    with pytest.raises(SystemExit, match="exactly one of --budget"):
        main(["plan", str(tmp_path / "an" / "report.json"), "--out", str(tmp_path / "x.json")])
    assert main(["compress", str(tmp_path / "model"), str(tmp_path / "linspace.json"), "--out",
                 str(tmp_path / "student")]) == 0
    student = Wav2Vec2Model.from_pretrained(tmp_path / "student").eval()
    assert student.config.num_hidden_layers == 2
    x = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        ref = teacher(x, output_hidden_states=True).hidden_states
        out = student(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(out[1], ref[1])  # kept teacher layer 0 -> student layer 0
    assert main(["plan", str(tmp_path / "an" / "report.json"), "--budget", "9", "--out", str(tmp_path / "x.json")]) == 2


def test_nan_activations_are_an_error_naming_the_utterance(tests_corpus):
    from analysis.capture import LayerOutputs
    from kd.analyze.layerwise import analyze
    from kd.data import load_data_dir, read_alignments

    class Broken:
        frame_rate, num_layers, batch_consistent = 50.0, 2, True

        def extract(self, speech, lengths, *, attentions=False):
            frames = (lengths // 320).long()
            h = torch.randn(speech.shape[0], int(frames.max()), 8)
            h[:, 3, 2] = float("nan")
            return LayerOutputs(hidden=[h, h.clone()], lengths=frames)

    root, _ = tests_corpus
    data = load_data_dir(root / "us" / "train")
    with pytest.raises(ValueError, match=r"utterance 'us-train-s\d+-\d+': the model produced NaN or inf activations at "
                                         r"layers \[0, 1\]"):
        analyze(Broken(), data, read_alignments(root / "us" / "train"), AnalyzeConfig(attention=False))


def test_protocol_model_without_attention_is_reported_as_skipped(tests_corpus):
    from analysis.capture import LayerOutputs
    from kd.analyze.layerwise import analyze
    from kd.data import load_data_dir

    class Plain:
        frame_rate, num_layers, batch_consistent = 50.0, 3, True

        def extract(self, speech, lengths, *, attentions=False):
            frames = (lengths // 320).long()
            g = torch.Generator().manual_seed(int(lengths.sum()))
            base = torch.randn(speech.shape[0], int(frames.max()), 6, generator=g)
            return LayerOutputs(hidden=[base, base * 2 + 1, base @ torch.randn(6, 6, generator=g)], lengths=frames)

    root, _ = tests_corpus
    report = analyze(Plain(), load_data_dir(root / "us" / "train"), None, AnalyzeConfig())
    assert report.skipped["attention"] == "the model returned no attention maps"
    assert "phones_and_words" in report.skipped
    cka = report.similarity["linear_cka"]
    assert cka[0][1] == pytest.approx(1.0, abs=1e-9)  # CKA is invariant to isotropic scaling and offsets
    assert cka[0][2] < 1.0


def test_report_summary_names_the_earliest_of_equally_good_layers():
    report = AnalysisReport(model="m", data="d", num_utterances=10, num_frames=10, frame_rate=50.0, num_layers=3,
                            per_layer={"probe_speaker_accuracy": [1.0, 1.0, 0.95]})
    assert ("- Highest layer for speaker probe: 0 (1.000; no bootstrap interval, so no layer is called best); "
            "last layer: 0.950.") in report.to_markdown()


def test_vacuous_mi_bounds_are_labelled_not_reported_as_findings(tmp_path):
    from kd.analyze.summary import peak_layers_markdown

    report = AnalysisReport(model="m", data="d", num_utterances=100, num_frames=10, frame_rate=50.0, num_layers=3,
                            per_layer={"mi_cluster_bits": [0.0, 0.4, -0.2],
                                       "mi_cluster_normalized": [0.0, 0.2, -0.1],
                                       "mi_phone_bits": [-0.1, -0.3, -0.2]})
    assert report.vacuous_layers("mi_cluster_bits") == report.vacuous_layers("mi_cluster_normalized") == [0, 2]
    assert report.vacuous_layers("mi_phone_bits") == [0, 1, 2] and report.vacuous_layers("cca_phone") == []
    assert report.plotted_values("mi_cluster_normalized") == [None, 0.2, None]
    text = report.to_markdown()
    assert "- Label-free MI bound: vacuous at layers 0, 2 (bound at or below 0 bits" in text
    assert ("- Highest layer for label-free MI bound: 1 (0.400; no bootstrap interval, so no layer is called best); "
            "last layer: vacuous.") in text
    # columns: mi_phone_bits, mi_cluster_bits, mi_cluster_normalized
    assert "| 1 | vacuous (-0.300) | 0.400 | 0.200 |" in text
    assert "| 2 | vacuous (-0.200) | vacuous (-0.200) | vacuous (-0.100) |" in text
    report.save(tmp_path / "r.json")
    # peak layers skip vacuous layers; a curve vacuous everywhere reads "vacuous"
    assert "| r | 2 | vacuous | 1 (0.200) |" in peak_layers_markdown({"r": tmp_path / "r.json"})
    everywhere = AnalysisReport(model="m", data="d", num_utterances=100, num_frames=10, frame_rate=50.0,
                                num_layers=2, per_layer={"mi_cluster_bits": [-0.1, 0.0]})
    text = everywhere.to_markdown()
    assert "- Label-free MI bound: vacuous at every layer" in text and "layer for label-free" not in text
    assert [p.name for p in everywhere.save_figures(tmp_path / "figures")] == ["per_layer_mi.png"]


def test_probe_depth_is_an_analyze_option(monkeypatch, tmp_path):
    import kd.analyze.layerwise

    seen = {}

    def fake_analyze_model_dir(model_dir, data, out, config):
        seen["config"] = config
        return AnalysisReport(model="m", data="d", num_utterances=1, num_frames=1, frame_rate=50.0, num_layers=1)

    monkeypatch.setattr(kd.analyze.layerwise, "analyze_model_dir", fake_analyze_model_dir)
    for kind in ("linear", "mlp1", "mlp2"):
        assert main(["analyze", "m", "--data", "d", "--out", str(tmp_path), "--device", "cpu",
                     "--probe-kind", kind, "--mi-pairs", "2"]) == 0
        assert seen["config"].probe_kind == kind and seen["config"].mi_pairs == 2
        assert not seen["config"].probe_depths
    assert main(["analyze", "m", "--data", "d", "--out", str(tmp_path), "--probe-depths"]) == 0
    assert seen["config"].probe_depths
    assert AnalyzeConfig().probe_kind == "linear"
    with pytest.raises(ValueError, match=r"probe_kind: expected one of \['linear', 'mlp1', 'mlp2'\], found 'mlp3'"):
        AnalyzeConfig(probe_kind="mlp3")
    with pytest.raises(ValueError, match="mi_pairs: expected >= 1, found 0"):
        AnalyzeConfig(mi_pairs=0)


@pytest.mark.slow  # 20-40 s on the 2-core machine (every analysis of analyze, on 10 utterances)
def test_probe_depths_put_the_phone_probe_of_each_depth_side_by_side(tests_corpus, tmp_path):
    """probe_depths: the phone probe at each depth as its own curve with its interval (the configured
    kind's curve is the phone probe's), drawn together in one figure."""
    from analysis.capture import LayerOutputs
    from kd.analyze.layerwise import analyze
    from kd.data import load_data_dir
    from kd.data import read_alignments

    class Plain:
        frame_rate, num_layers, batch_consistent = 50.0, 2, True

        def extract(self, speech, lengths, *, attentions=False):
            frames = (lengths // 320).long()
            g = torch.Generator().manual_seed(int(lengths.sum()))
            base = torch.randn(speech.shape[0], int(frames.max()), 6, generator=g)
            return LayerOutputs(hidden=[base, torch.tanh(base * 3)], lengths=frames)

    root, _ = tests_corpus
    config = AnalyzeConfig(attention=False, probe_depths=True, probe_kind="mlp1", probe_epochs=2, bootstrap=20,
                           max_utterances=10, frames_per_utterance=8, cca_folds=2, mi_clusters=2, mi_pairs=1,
                           top_words=20)
    report = analyze(Plain(), load_data_dir(root / "us" / "train"), read_alignments(root / "us" / "train"), config)
    kinds = ("linear", "mlp1", "mlp2")
    for kind in kinds:
        curve = report.per_layer[f"probe_phone_accuracy_{kind}"]
        assert len(curve) == 2 and all(0.0 <= v <= 1.0 for v in curve)
        assert report.intervals[f"probe_phone_accuracy_{kind}"]["estimate"] == pytest.approx(curve)
    assert report.per_layer["probe_phone_accuracy_mlp1"] == report.per_layer["probe_phone_accuracy"]
    assert tmp_path / "per_layer_probe_depths.png" in report.save_figures(tmp_path)
    assert "phone probe (2 hidden layers)" in report.to_markdown()
