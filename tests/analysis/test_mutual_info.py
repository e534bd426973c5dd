import math

import numpy as np
import pytest
import torch

from analysis.kmeans import KMeans, KMeansConfig
from analysis.mutual_info import (
    MIBoundConfig,
    cluster_mi_bound,
    labelled_mi_bound,
    pool_sections,
    section_pairs,
    split_halves,
    vacuous_layers,
)
from analysis.probing import ProbeConfig, grouped_split, probe_frames

PROBE = ProbeConfig(epochs=40, batch_size=64, lr=1e-2, heldout_fraction=0.3)


def _blobs(seed, per_cluster=100, spread=0.2):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(per_cluster)
    x = centers[truth] + spread * torch.randn(truth.numel(), 3, generator=g)
    order = torch.randperm(truth.numel(), generator=g)
    return x[order], truth[order], centers


def test_kmeans_recovers_well_separated_clusters():
    x, truth, centers = _blobs(0)
    km = KMeans(KMeansConfig(num_clusters=4, seed=0)).fit(x)
    labels = km.predict(x)
    mapping = {}
    for t in range(4):
        found = labels[truth == t].unique()
        assert found.numel() == 1  # each true cluster lands in one predicted cluster
        mapping[t] = found.item()
    assert sorted(mapping.values()) == [0, 1, 2, 3]  # ... and no two share one
    for t, c in mapping.items():
        assert torch.dist(km.centroids[c], centers[t]) < 0.1
    xs, cs = x.numpy().astype(np.float64), km.centroids.numpy().astype(np.float64)
    want = ((xs[:, None, :] - cs[None]) ** 2).sum(-1).min(1).sum()
    assert km.inertia == pytest.approx(want, rel=1e-5)


def test_kmeans_is_deterministic_and_chunking_does_not_change_it():
    x, _, _ = _blobs(1, spread=3.0)  # overlapping blobs: the result depends on the init
    config = KMeansConfig(num_clusters=6, seed=3)
    a, b = KMeans(config).fit(x), KMeans(config).fit(x)
    assert torch.equal(a.centroids, b.centroids)
    chunked = KMeans(KMeansConfig(num_clusters=6, seed=3, chunk_size=7)).fit(x)
    assert torch.equal(a.predict(x), chunked.predict(x))
    torch.testing.assert_close(a.centroids, chunked.centroids, rtol=0, atol=1e-5)


def test_kmeans_with_fewer_distinct_points_than_clusters():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]).repeat(5, 1)
    km = KMeans(KMeansConfig(num_clusters=4)).fit(x)
    assert km.inertia == pytest.approx(0.0, abs=1e-9)


def test_kmeans_validation():
    with pytest.raises(ValueError, match="call fit first"):
        KMeans().predict(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least num_clusters=5 rows in x, found 3"):
        KMeans(KMeansConfig(num_clusters=5)).fit(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"shape \[frames, dim\]"):
        KMeans(KMeansConfig(num_clusters=1)).fit(torch.randn(3))
    with pytest.raises(ValueError, match=r"^KMeansConfig.num_clusters: expected at least 1, found 0"):
        KMeansConfig(num_clusters=0)
    assert KMeansConfig.from_dict(KMeansConfig(num_clusters=7).to_dict()) == KMeansConfig(num_clusters=7)


def _two_views(seed, utts=1000, dim=6, k=4):
    """Layer 0: both halves show the same latent class; layer 1: the halves are independent."""
    g = torch.Generator().manual_seed(seed)
    shared, unrelated = torch.randint(k, (utts,), generator=g), torch.randint(k, (utts,), generator=g)
    means_b, means_a = 5 * torch.randn(k, dim, generator=g), 5 * torch.randn(k, dim, generator=g)
    z_a = 0.3 * torch.randn(utts, 2, dim, generator=g)
    z_b = 0.3 * torch.randn(utts, 2, dim, generator=g)
    z_a[:, 0] += means_a[shared]
    z_b[:, 0] += means_b[shared]
    z_b[:, 1] += means_b[unrelated]  # clusters exist, but z_a[:, 1] is pure noise
    return z_a, z_b


def test_cluster_bound_is_near_entropy_when_determined_and_near_zero_when_independent():
    z_a, z_b = _two_views(0)
    result = cluster_mi_bound(z_a, z_b, MIBoundConfig(kmeans=KMeansConfig(num_clusters=4), probe=PROBE))
    assert result.num_classes == 4 and result.num_train + result.num_heldout == 700
    assert (result.entropy_bits - 2.0).abs().max() < 0.05  # 4 balanced clusters: ~2 bits
    assert result.normalized_bound[0] > 0.95
    # independent halves: a probe can only learn the marginal; held-out CE >= H up to noise
    assert -0.15 < result.bound_bits[1] < 0.05
    assert (result.bound_bits <= result.entropy_bits + 1e-12).all()
    torch.testing.assert_close(result.bound_bits, result.entropy_bits - result.cross_entropy_bits)
    torch.testing.assert_close(result.normalized_bound, result.bound_bits / result.entropy_bits)


def test_cluster_bound_needs_enough_fit_utterances():
    z_a, z_b = _two_views(1, utts=20)
    config = MIBoundConfig(kmeans=KMeansConfig(num_clusters=10), probe=PROBE)
    with pytest.raises(ValueError, match="num_clusters=10 utterances in the k-means fit split, found 6"):
        cluster_mi_bound(z_a, z_b, config)


def _labelled_frames(seed, utts=200, dim=4):
    """Every utterance holds labels 0,0,0,0,1,1,2,2 in random order: H(Y) = 1.5 bits exactly."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    labels = torch.cat([pattern[torch.randperm(8, generator=g)] for _ in range(utts)])
    groups = torch.arange(utts).repeat_interleave(8)
    features = torch.randn(2, labels.numel(), dim, generator=g)
    features[0] += 6.0 * torch.randn(3, dim, generator=g)[labels]
    return features, labels, groups


def test_labelled_bound_on_a_toy_with_known_entropy():
    features, labels, groups = _labelled_frames(0)
    result = labelled_mi_bound(features, labels, groups, PROBE)
    torch.testing.assert_close(result.entropy_bits, torch.full((2,), 1.5, dtype=torch.float64))
    assert result.bound_bits[0] > 1.4
    assert abs(result.bound_bits[1]) < 0.1
    # same split and probe as probe_frames: the CE is the probe's held-out CE
    probe = probe_frames(features, labels, groups, PROBE)
    assert torch.equal(result.cross_entropy_bits, probe.cross_entropy_bits)
    _, heldout = grouped_split(groups, PROBE.heldout_fraction, PROBE.seed)
    assert result.num_heldout == heldout.numel()


def test_labelled_bound_entropy_matches_numpy_plug_in():
    features, labels, groups = _labelled_frames(1)
    labels[:40] = 2  # unbalance the first 5 utterances
    result = labelled_mi_bound(features, labels, groups, PROBE)
    _, heldout = grouped_split(groups, PROBE.heldout_fraction, PROBE.seed)
    counts = np.bincount(labels[heldout].numpy(), minlength=3).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    assert result.entropy_bits[0].item() == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-12)


def test_split_halves_matches_direct_means():
    g = torch.Generator().manual_seed(2)
    ids = torch.tensor([3, 8, 3, 3, 8, 3, 8, 3, 8, 3, 3])  # utt 3: 7 frames, utt 8: 4 frames, interleaved
    features = torch.randn(2, ids.numel(), 5, generator=g)
    z_a, z_b, unique = split_halves(features, ids, gap_frames=1)
    assert unique.tolist() == [3, 8] and z_a.shape == (2, 2, 5)
    x = features.numpy().astype(np.float64)
    # gap 1: 7 frames -> a = 0..2, b = 4..6; 4 frames -> a = 0, b = 2..3
    for i, (u, a, b) in enumerate([(3, [0, 1, 2], [4, 5, 6]), (8, [0], [2, 3])]):
        frames = x[:, ids.numpy() == u]  # [layers, n, dim] in time order
        np.testing.assert_allclose(z_a[i].numpy(), frames[:, a].mean(1), atol=1e-6)
        np.testing.assert_allclose(z_b[i].numpy(), frames[:, b].mean(1), atol=1e-6)


def test_split_halves_rejects_short_utterances():
    ids = torch.tensor([0, 0, 0, 0, 5, 5])
    features = torch.randn(1, 6, 3)
    with pytest.raises(ValueError, match="at least 3 frames .* utterance 5 with 2 frames"):
        split_halves(features, ids, gap_frames=1)
    with pytest.raises(ValueError, match="at least 6 frames"):
        split_halves(features, ids, min_segment_frames=3)


def test_mi_config_round_trip():
    config = MIBoundConfig(kmeans=KMeansConfig(num_clusters=8), probe=ProbeConfig(kind="mlp1"), fit_fraction=0.4)
    assert MIBoundConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"^MIBoundConfig.fit_fraction: expected a number in \(0, 1\), found 0.0"):
        MIBoundConfig(fit_fraction=0.0)
    assert math.isclose(MIBoundConfig().fit_fraction, 0.3)


# ------------------------------------------------------------------ sections fed on their own


def _tiny_global_attention_encoder():
    """A 3-layer wav2vec 2.0 (global self-attention over all frames), 50 frames/s."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from analysis.capture import HFSpeechEncoder

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 16), conv_kernel=(10, 8, 16),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                         feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(0)
    return HFSpeechEncoder(Wav2Vec2Model(cfg))


def test_section_pairs_are_seeded_non_overlapping_and_inside_the_utterance():
    pairs = section_pairs(48000, 6, 16000, np.random.default_rng(0))
    assert 1 <= len(pairs) <= 6 and len(set(pairs)) == len(pairs)
    for start_a, start_b, length in pairs:
        assert length == 16000  # min(section, 48000 // 3)
        assert 0 <= start_a and start_a + length <= start_b and start_b + length <= 48000
    assert pairs == section_pairs(48000, 6, 16000, np.random.default_rng(0))
    assert {p[2] for p in section_pairs(9000, 3, 16000, np.random.default_rng(1))} == {3000}  # a third
    assert section_pairs(2, 3, 100, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="num_pairs >= 1, found 0"):
        section_pairs(100, 0, 10, np.random.default_rng(0))


def test_sections_fed_alone_differ_from_one_pass_with_global_attention():
    enc = _tiny_global_attention_encoder()
    wave = 0.1 * torch.randn(32000, generator=torch.Generator().manual_seed(1))
    pairs = section_pairs(wave.numel(), 3, 8000, np.random.default_rng(2))
    z_a, z_b = pool_sections(enc, wave, pairs)
    assert z_a.shape == z_b.shape == (len(pairs), 4, 32)
    hop = 320  # samples per frame at 50 frames/s
    later = wave.clone()
    later[24000:] = 0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(3))
    # one pass over the whole utterance, then again with the audio after 1.5 s changed
    whole = enc.extract(wave[None], torch.tensor([wave.numel()])).hidden[-1][0]  # [frames, 32]
    changed = enc.extract(later[None], torch.tensor([later.numel()])).hidden[-1][0]
    before_the_change = 0
    for i, (start_a, start_b, length) in enumerate(pairs):
        for z, start in ((z_a, start_a), (z_b, start_b)):
            # the documented value: the mean of each layer's frames with the section as the whole input
            alone = enc.extract(wave[None, start: start + length], torch.tensor([length]))
            want = torch.stack([h[0].mean(dim=0) for h in alone.hidden])
            torch.testing.assert_close(z[i], want, atol=1e-5, rtol=1e-5)
        # in one pass, section a's frames have attended to everything after it
        one_pass = whole[start_a // hop: (start_a + length) // hop].mean(dim=0)
        assert (one_pass - z_a[i, -1]).abs().max() > 1e-2
        if start_b + length <= 24000:  # changing audio after both sections moves the one-pass means only
            moved = changed[start_a // hop: (start_a + length) // hop].mean(dim=0)
            assert (moved - one_pass).abs().max() > 1e-3
            torch.testing.assert_close(pool_sections(enc, later, [pairs[i]])[0][0], z_a[i], atol=0, rtol=0)
            before_the_change += 1
    assert before_the_change >= 1


def test_vacuous_layers():
    assert vacuous_layers(torch.tensor([0.2, 0.0, -0.1, 1e-9])) == [False, True, True, False]
    assert vacuous_layers([0.5, None]) == [False, True]


def test_bound_intervals_resample_heldout_utterances():
    """The intervals recompute H and CE from the held-out utterances' own terms: the estimate is the
    bound; a replicate that draws every utterance twice is the data again."""
    features, labels, groups = _labelled_frames(2, utts=60)
    result = labelled_mi_bound(features, labels, groups, PROBE)
    got = result.intervals(n_boot=300, seed=4)
    assert got.estimate == pytest.approx(result.bound_bits.tolist(), abs=1e-12)
    assert got.utterances == torch.unique(result.heldout_groups).numel() == 18
    assert got.best == 0 and got.tied_with_best() == [0] and got.vs_best_low[1] > 1.0
    for layer in range(2):
        assert got.low[layer] <= got.estimate[layer] <= got.high[layer]
    normalized = result.intervals(normalized=True, n_boot=300, seed=4)
    assert normalized.estimate == pytest.approx(result.normalized_bound.tolist(), abs=1e-12)
    # the same resampled utterances: a bound's interval and its normalised one share their draws
    assert normalized.low[0] == pytest.approx(got.low[0] / 1.5, abs=0.05)
    assert result.to_dict().keys() == {"bound_bits", "normalized_bound", "entropy_bits", "cross_entropy_bits",
                                       "accuracy", "num_train", "num_heldout", "num_classes"}
    z_a, z_b = _two_views(0)
    cluster = cluster_mi_bound(z_a, z_b, MIBoundConfig(kmeans=KMeansConfig(num_clusters=4), probe=PROBE))
    clustered = cluster.intervals(n_boot=200)
    assert clustered.estimate == pytest.approx(cluster.bound_bits.tolist(), abs=1e-12)
    assert clustered.best == 0 and clustered.vs_best_low[1] > 1.0
    bare = type(result)(**{**result.__dict__, "heldout_cross_entropy_bits": None})
    with pytest.raises(ValueError, match="holds no per-example held-out terms"):
        bare.intervals()
