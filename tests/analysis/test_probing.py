import math

import numpy as np
import pytest
import torch

from analysis.probing import (
    ProbeConfig,
    ProbeResult,
    fit_probes,
    ProbeKind,
    grouped_split,
    mean_pool,
    probe_frames,
    probe_utterances,
    probe_weighted_sum,
    stack_layers,
)

FAST = ProbeConfig(epochs=10, batch_size=128, lr=1e-2, hidden_size=32)


def _frames(seed=0, layers=4, utts=80, frames=20, dim=8, classes=4, informative=2):
    """Random frame labels; only layer ``informative`` carries them (class means + noise)."""
    g = torch.Generator().manual_seed(seed)
    n = utts * frames
    labels = torch.randint(classes, (n,), generator=g)
    utterance_ids = torch.arange(n) // frames
    features = torch.randn(layers, n, dim, generator=g)
    features[informative] += 2.0 * torch.randn(classes, dim, generator=g)[labels]
    return features, labels, utterance_ids


@pytest.mark.parametrize("kind", list(ProbeKind))
def test_only_the_informative_layer_is_decodable(kind):
    features, labels, utts = _frames()
    result = probe_frames(features, labels, utts, ProbeConfig.from_dict({**FAST.to_dict(), "kind": kind.value}))
    assert result.accuracy.shape == (4,)
    assert result.accuracy[2] > 0.95
    for layer in (0, 1, 3):
        assert result.accuracy[layer] < 0.36  # chance is ~0.25 with 4 balanced classes
        assert result.cross_entropy_bits[layer] > 1.8  # log2(4) = 2 bits for a chance-level probe
    assert result.cross_entropy_bits[2] < 0.5
    torch.testing.assert_close(result.cross_entropy_bits, result.cross_entropy_nats / math.log(2.0))
    assert result.num_train + result.num_heldout == labels.numel()
    assert result.num_classes == 4


def test_probe_is_deterministic_given_a_seed():
    features, labels, utts = _frames(layers=2, informative=1)
    first = probe_frames(features, labels, utts, FAST)
    second = probe_frames(features, labels, utts, FAST)
    assert torch.equal(first.cross_entropy_nats, second.cross_entropy_nats)
    assert torch.equal(first.accuracy, second.accuracy)
    other = probe_frames(features, labels, utts, ProbeConfig.from_dict({**FAST.to_dict(), "seed": 1}))
    assert not torch.equal(first.cross_entropy_nats, other.cross_entropy_nats)


def test_grouped_split_keeps_utterances_whole():
    groups = torch.arange(200) // 10  # 20 utterances of 10 frames
    train, heldout = grouped_split(groups, 0.25, seed=3)
    assert set(groups[train].tolist()).isdisjoint(groups[heldout].tolist())
    assert len(set(groups[heldout].tolist())) == 5
    assert sorted(train.tolist() + heldout.tolist()) == list(range(200))
    with pytest.raises(ValueError, match="at least 2 distinct groups"):
        grouped_split(torch.zeros(5, dtype=torch.long), 0.5, seed=0)


def test_mean_pool_matches_numpy_with_interleaved_utterances():
    g = torch.Generator().manual_seed(5)
    features = torch.randn(3, 12, 4, generator=g)
    ids = torch.tensor([7, 2, 7, 7, 2, 9, 9, 2, 7, 9, 2, 2])
    pooled, unique = mean_pool(features, ids)
    assert unique.tolist() == [2, 7, 9]
    x = features.numpy().astype(np.float64)
    for i, u in enumerate([2, 7, 9]):
        want = x[:, ids.numpy() == u].mean(axis=1)  # [layers, dim]
        np.testing.assert_allclose(pooled[i].numpy(), want, rtol=0, atol=1e-6)


def test_speaker_probe_on_mean_pooled_features():
    g = torch.Generator().manual_seed(6)
    speakers, utts_per_speaker, frames, dim = 6, 20, 15, 8
    utts = speakers * utts_per_speaker
    speaker = torch.arange(utts) % speakers
    utterance_ids = torch.arange(utts).repeat_interleave(frames)
    features = 2.0 * torch.randn(3, utts * frames, dim, generator=g)  # frame noise
    features[1] += 1.5 * torch.randn(speakers, dim, generator=g)[speaker[utterance_ids]]  # speaker offset
    pooled, _ = mean_pool(features, utterance_ids)
    result = probe_utterances(pooled, speaker, ProbeConfig(epochs=40, batch_size=32, lr=1e-2, heldout_fraction=0.25))
    assert result.num_heldout == 30
    assert result.accuracy[1] > 0.9
    assert result.accuracy[0] < 0.45 and result.accuracy[2] < 0.45  # chance 1/6


def test_weighted_sum_puts_its_weight_on_the_informative_layer():
    features, labels, utts = _frames()
    result = probe_weighted_sum(features, labels, utts, ProbeConfig(epochs=10, batch_size=128, lr=3e-2))
    assert result.layer_weights.shape == (4,)
    assert result.layer_weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert int(result.layer_weights.argmax()) == 2
    assert result.layer_weights[2] > 0.6
    assert result.accuracy > 0.95


def test_per_layer_list_with_different_widths_is_zero_padded():
    g = torch.Generator().manual_seed(7)
    narrow, wide = torch.randn(10, 3, generator=g), torch.randn(10, 5, generator=g)
    stacked = stack_layers([narrow, wide])
    assert stacked.shape == (2, 10, 5)
    assert torch.equal(stacked[0, :, :3], narrow) and (stacked[0, :, 3:] == 0).all()
    with pytest.raises(ValueError, match=r"features\[1\] of shape \[10, dim\], found \(9, 5\)"):
        stack_layers([narrow, wide[:9]])


def test_config_round_trip_and_validation():
    config = ProbeConfig(kind="mlp2", hidden_size=64, seed=4)
    assert config.kind is ProbeKind.MLP2
    assert ProbeConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["kind"] == "mlp2"
    with pytest.raises(ValueError, match=r"^ProbeConfig.kind: expected one of \['linear', 'mlp1', 'mlp2'\], "
                                         r"found 'mlp3'"):
        ProbeConfig(kind="mlp3")
    with pytest.raises(ValueError, match=r"^ProbeConfig.heldout_fraction: expected a number in \(0, 1\)"):
        ProbeConfig(heldout_fraction=1.0)
    with pytest.raises(ValueError, match=r"^ProbeConfig: unknown field 'epoch' \(did you mean 'epochs'\?\)"):
        ProbeConfig.from_dict({"epoch": 3})


def test_label_validation():
    features, labels, utts = _frames(layers=1, informative=0, utts=4)
    with pytest.raises(TypeError, match="integer labels"):
        probe_frames(features, labels.float(), utts, FAST)
    with pytest.raises(ValueError, match="labels >= 0"):
        probe_frames(features, labels - 1, utts, FAST)
    with pytest.raises(ValueError, match="num_classes=2"):
        probe_frames(features, labels, utts, FAST, num_classes=2)
    with pytest.raises(ValueError, match="groups"):
        probe_frames(features, labels, utts[:-1], FAST)


def test_fit_probes_with_per_layer_targets_checks_their_range():
    features, labels, utts = _frames(layers=2, informative=0, utts=10)
    train, heldout = grouped_split(utts, 0.2, seed=0)
    per_layer = torch.stack([labels, labels.flip(0)])  # [layers, frames]
    result = fit_probes(features, per_layer, train, heldout, FAST, num_classes=4)
    assert result.accuracy.shape == (2,)
    with pytest.raises(ValueError, match=r"targets in \[0, num_classes=3\), found \[0, 3\]"):
        fit_probes(features, per_layer, train, heldout, FAST, num_classes=3)
    with pytest.raises(ValueError, match=r"targets of shape \[200\] or \[2, 200\]"):
        fit_probes(features, per_layer[:, :5], train, heldout, FAST, num_classes=4)


def test_probe_intervals_resample_heldout_utterances_by_hand():
    """Percentile bootstrap over held-out utterances, checked against the resampling written out."""
    g = torch.Generator().manual_seed(0)
    utts, per_utt, layers = 12, 5, 3
    groups = torch.arange(utts * per_utt) // per_utt
    correct = torch.rand(layers, utts * per_utt, generator=g) < torch.tensor([[0.7], [0.5], [0.45]])
    result = ProbeResult(accuracy=correct.double().mean(1), cross_entropy_nats=torch.zeros(layers),
                         cross_entropy_bits=torch.zeros(layers), majority_accuracy=torch.zeros(layers),
                         num_train=0, num_heldout=utts * per_utt, num_classes=2,
                         heldout_correct=correct, heldout_groups=groups)
    got = result.intervals(n_boot=500, seed=3, level=0.9)
    counts = correct.double().reshape(layers, utts, per_utt).sum(2).T.numpy()  # [utts, layers]
    draws = np.random.default_rng(3).integers(0, utts, size=(500, utts))
    acc = counts[draws].sum(1) / (per_utt * utts)  # [boot, layers]: every utterance has per_utt examples
    diff = acc - acc[:, -1:]
    np.testing.assert_allclose(got.low, np.quantile(acc, 0.05, axis=0), atol=1e-12)
    np.testing.assert_allclose(got.high, np.quantile(acc, 0.95, axis=0), atol=1e-12)
    np.testing.assert_allclose(got.vs_last_low, np.quantile(diff, 0.05, axis=0), atol=1e-12)
    np.testing.assert_allclose(got.vs_last_high, np.quantile(diff, 0.95, axis=0), atol=1e-12)
    np.testing.assert_allclose(got.vs_last, (result.accuracy - result.accuracy[-1]).numpy(), atol=1e-12)
    assert got.vs_last_low[-1] == got.vs_last_high[-1] == 0.0  # the last layer against itself
    best = int(np.argmax(result.accuracy.numpy()))
    assert got.best == best == 0
    np.testing.assert_allclose(got.vs_best_low, np.quantile(acc[:, best:best + 1] - acc, 0.05, axis=0), atol=1e-12)
    np.testing.assert_allclose(got.vs_best_high, np.quantile(acc[:, best:best + 1] - acc, 0.95, axis=0), atol=1e-12)
    assert got.utterances == utts and got.level == 0.9 and got.to_dict()["n_boot"] == 500
    # without groups every held-out example is its own item
    alone = ProbeResult(**{**result.__dict__, "heldout_groups": None}).intervals(n_boot=50)
    assert alone.utterances == utts * per_utt


def test_probe_intervals_pair_the_layers():
    """Layer 2 carries the labels, the last layer does not: the paired difference is clearly positive,
    and it is tighter than the spread of the accuracies for two similar layers."""
    features, labels, utts = _frames(utts=40)
    result = probe_frames(features, labels, utts, FAST)
    intervals = result.intervals(n_boot=300)
    assert intervals.utterances == torch.unique(result.heldout_groups).numel() and 2 <= intervals.utterances < 40
    assert intervals.vs_last_low[2] > 0.5
    for layer in range(4):
        assert intervals.low[layer] <= float(result.accuracy[layer]) <= intervals.high[layer]
    # a layer copied from the last one: per-example correctness nearly equal, the paired interval narrow
    features[0] = features[3] + 0.01 * torch.randn_like(features[3])
    twin = probe_frames(features, labels, utts, FAST).intervals(n_boot=300)
    assert twin.vs_last_high[0] - twin.vs_last_low[0] < 0.5 * (twin.high[0] - twin.low[0])
    assert intervals.best == 2 and intervals.tied_with_best() == [2]  # the informative layer beats every other
    assert "heldout_correct" not in result.to_dict() and len(result.to_dict()["accuracy"]) == 4


def test_probe_intervals_need_per_example_scores_and_two_utterances():
    result = ProbeResult(accuracy=torch.ones(2), cross_entropy_nats=torch.zeros(2), cross_entropy_bits=torch.zeros(2),
                         majority_accuracy=torch.zeros(2), num_train=1, num_heldout=3, num_classes=2)
    with pytest.raises(ValueError, match="holds no per-example held-out scores"):
        result.intervals()
    one = ProbeResult(**{**result.__dict__, "heldout_correct": torch.ones(2, 3, dtype=torch.bool),
                         "heldout_groups": torch.tensor([7, 7, 7])})
    with pytest.raises(ValueError, match="expected at least 2 held-out utterances, found 1"):
        one.intervals()
