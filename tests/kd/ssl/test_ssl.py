"""The self-supervised teacher stages: pre-training, checkpoints, re-runs, CTC fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kd.core.io import read_csv_log
from kd.ssl.common import list_stage_checkpoints, write_folder_atomic
from kd.ssl.config import CTCConfig, SSLConfig, legacy_stage_config, ssl_optim, upgrade_saved_config
from kd.testing import shortest_subset_dir
from kd.training.schedule import learning_rate


# deterministic algorithms: a resumed run ends with exactly the weights of an uninterrupted one
TINY = SSLConfig.from_preset("tiny", deterministic=True,
                             data=dataclasses.replace(SSLConfig.from_preset("tiny").data, max_seconds=8.0))


@pytest.fixture(scope="module")
def pretrained(tests_corpus, tmp_path_factory):
    from kd.ssl.pretrain import pretrain

    root, _ = tests_corpus
    out = tmp_path_factory.mktemp("ssl") / "pretrain"
    data = [root / "us" / "train"]
    return pretrain(TINY, data, out, progress=False), data


# ---- configuration --------------------------------------------------------------------------
def test_config_round_trip_and_presets():
    for name in ("tiny", "cpu", "gpu"):
        config = SSLConfig.from_preset(name)
        assert SSLConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        ctc = CTCConfig.from_preset(name)
        assert CTCConfig.from_dict(json.loads(json.dumps(ctc.to_dict()))) == ctc
    gpu = SSLConfig.from_preset("gpu")
    assert (gpu.hidden_size, gpu.num_layers, gpu.samples_per_frame) == (768, 12, 320)
    w2v = gpu.to_wav2vec2_config()
    assert (w2v.num_hidden_layers, w2v.num_codevectors_per_group, w2v.do_stable_layer_norm) == (12, 320, True)


@pytest.mark.parametrize("field, value, message", [
    ("num_heads", 5, "hidden_size: expected a multiple of num_heads"),
    ("mask_prob", 1.0, r"mask_prob: expected a value in \[0, 1\)"),
    ("gumbel_min", 3.0, "gumbel_min: expected a value <= gumbel_max"),
    ("checkpoint_steps", (4, 2), "checkpoint_steps: expected strictly increasing steps"),
    ("checkpoint_steps", (2, 9), r"in 1..optim.max_steps \(4\)"),
    ("conv_kernel", (10, 3), "as many entries as conv_dim"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        SSLConfig.from_preset("tiny", **{field: value})


def test_from_dict_checks_names_and_types():
    data = SSLConfig.from_preset("tiny").to_dict()
    with pytest.raises(ValueError, match=r"SSLConfig: unknown field 'hidden' \(did you mean 'hidden_size'\?\)"):
        SSLConfig.from_dict({**data, "hidden": 3})
    with pytest.raises(ValueError, match="SSLConfig.num_layers: expected an integer, found '4'"):
        SSLConfig.from_dict({**data, "num_layers": "4"})
    expected = r"SSLConfig.optim.mixed_precision: expected one of \['no', 'bf16', 'fp16'\], found 'fp8'"
    with pytest.raises(ValueError, match=expected):
        SSLConfig.from_dict({**data, "optim": {**data["optim"], "mixed_precision": "fp8"}})
    with pytest.raises(ValueError, match="version: this code reads version 1, found 2"):
        CTCConfig.from_dict({**CTCConfig().to_dict(), "version": 2})
    with pytest.raises(ValueError, match=r"SSLConfig.optim.lr: expected > 0, found -1.0"):
        SSLConfig.from_dict({**data, "optim": {**data["optim"], "lr": -1.0}})
    with pytest.raises(ValueError, match=r"CTCConfig.checkpoint.keep_last: expected >= 1"):
        CTCConfig.from_dict({"checkpoint": {"keep_last": 0}})


def test_settings_of_the_earlier_layout_name_their_new_place():
    """optim.steps, optim.max_batch_seconds, ... of the stages' own optimiser settings before the one
    training stack: refused with the field to set instead."""
    for old, new in (("steps", "optim.max_steps"), ("max_batch_seconds", "data.max_seconds"),
                     ("num_workers", "data.num_workers"), ("seed", "seed")):
        with pytest.raises(ValueError, match=rf"SSLConfig.optim.{old}: this setting is now {new}"):
            SSLConfig.from_dict({"optim": {old: 1}})
    # a section given in part takes its other fields from the stage's default, not from OptimConfig's
    optim = CTCConfig.from_dict({"optim": {"lr": 1e-4}}).optim
    assert optim == ssl_optim(lr=1e-4, warmup_steps=500) and optim.decoupled_weight_decay


def test_configs_saved_before_the_one_training_stack_still_read_and_stay_finished():
    """A config in the earlier layout (what finished stages saved, and their completion markers hold)
    reads as the same run, and legacy_stage_config gives that layout back."""
    gpu = SSLConfig.from_preset("gpu")
    old = {k: v for k, v in gpu.to_dict().items() if k not in ("data", "checkpoint", "seed", "deterministic")}
    old["optim"] = {"steps": 2500, "lr": 5e-4, "warmup_steps": 250, "min_lr_ratio": 0.05, "weight_decay": 0.01,
                    "betas": [0.9, 0.98], "eps": 1e-6, "grad_accum": 1, "clip_norm": 10.0, "mixed_precision": "bf16",
                    "max_batch_seconds": 192.0, "max_utterances": 96, "num_workers": 8, "seed": 0,
                    "time_limit_s": 480.0}
    assert json.loads(json.dumps(legacy_stage_config(gpu))) == old
    upgraded = SSLConfig.from_dict(upgrade_saved_config(old))
    assert dataclasses.replace(upgraded, checkpoint=gpu.checkpoint) == gpu
    adam = dataclasses.replace(gpu, optim=dataclasses.replace(gpu.optim, decoupled_weight_decay=False))
    assert legacy_stage_config(adam) is None  # a setting the earlier layout did not have


def test_learning_rate_schedule():
    optim = ssl_optim(max_steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    rate = lambda step: learning_rate(optim, step, d_model=64, total_steps=110)  # noqa: E731
    assert rate(5) == pytest.approx(0.5)
    assert rate(10) == pytest.approx(1.0)
    assert rate(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert rate(110) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="step: expected >= 1, found 0"):
        rate(0)


# ---- masking --------------------------------------------------------------------------------
def test_masks_and_negatives_stay_within_each_utterance():
    from kd.ssl.pretrain import conv_output_frames, sample_masks

    np.random.seed(0)
    config = SSLConfig.from_preset("tiny")
    lengths = torch.tensor([32000, 9000, 20000])
    mask, negatives = sample_masks(lengths, 32000, config)
    frames = conv_output_frames(lengths, config.conv_kernel, config.conv_stride)
    total = mask.shape[1]
    assert total == conv_output_frames(32000, config.conv_kernel, config.conv_stride)
    for b in range(3):
        masked = set(mask[b].nonzero().flatten().tolist())
        assert len(masked) >= 2 and max(masked) < frames[b]  # never in the padding
        for t in masked:
            picks = negatives[b, t].tolist()
            assert all(b * total <= p < (b + 1) * total for p in picks)  # same utterance
            assert all(p - b * total in masked and p - b * total != t for p in picks)  # other masked frames
    with pytest.raises(ValueError, match="fewer than mask_length"):
        sample_masks(torch.tensor([32000, 1000]), 32000, config)


def test_feature_penalty_is_a_masked_mean_square():
    from kd.ssl.pretrain import feature_penalty

    features = torch.randn(2, 3, 5, dtype=torch.float64)
    expected = np.mean([features[0, :, t].pow(2).mean().item() for t in range(5)]
                       + [features[1, :, t].pow(2).mean().item() for t in range(2)])
    features[1, :, 2:] = 1e9  # padding
    assert feature_penalty(features, torch.tensor([5, 2])).item() == pytest.approx(expected, rel=1e-6)


def test_feature_grad_mult_scales_only_the_feature_encoder_gradient():
    from kd.ssl.pretrain import build_pretraining_model

    grads = {}
    x = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    for mult in (1.0, 0.1):
        torch.manual_seed(0)
        model = build_pretraining_model(SSLConfig.from_preset("tiny", feature_grad_mult=mult)).eval()  # no masking
        model(x).projected_states.pow(2).sum().backward()
        grads[mult] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    conv = "wav2vec2.feature_extractor.conv_layers.1.conv.weight"
    torch.testing.assert_close(grads[0.1][conv], 0.1 * grads[1.0][conv])
    q = "wav2vec2.encoder.layers.0.attention.q_proj.weight"
    torch.testing.assert_close(grads[0.1][q], grads[1.0][q])


def test_feature_lr_scale_slows_the_encoder_where_feature_grad_mult_does_not():
    """AdamW's first update moves each parameter by lr * g / (|g| + eps): a gradient scale
    (feature_grad_mult) leaves the encoder's step as it was, a learning-rate scale shrinks it."""
    import numpy as np

    from kd.ssl.pretrain import build_pretraining_model, pretraining_param_groups, sample_masks
    from kd.training.engine import build_optimizer, set_learning_rate

    x = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([16000, 12000])

    def first_step(**settings):
        config = SSLConfig.from_preset("tiny", **settings)
        torch.manual_seed(0)
        np.random.seed(0)  # masks and negatives
        model = build_pretraining_model(config).train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = build_optimizer(pretraining_param_groups(model, config), config.optim)
        first = learning_rate(config.optim, 1, d_model=config.hidden_size, total_steps=config.optim.max_steps)
        set_learning_rate(optimizer, first)  # as the loop does before each step
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([first, first * config.feature_lr_scale])
        mask, negatives = sample_masks(lengths, 16000, config)
        out = model(x, mask_time_indices=mask, sampled_negative_indices=negatives)
        (out.loss / mask.sum()).backward()
        optimizer.step()
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}

    full = first_step(feature_grad_mult=1.0)
    grad_scaled = first_step(feature_grad_mult=0.1)
    lr_scaled = first_step(feature_grad_mult=1.0, feature_lr_scale=0.1)
    conv = "wav2vec2.feature_extractor.conv_layers.1.conv.weight"
    q = "wav2vec2.encoder.layers.0.attention.q_proj.weight"
    assert full[conv].abs().max() > 0
    torch.testing.assert_close(lr_scaled[conv], 0.1 * full[conv], rtol=1e-4, atol=1e-7)  # float32 p - p0
    # a tenth of the gradient: nearly the same step (it differs only where |g| is near eps)
    assert (grad_scaled[conv] - full[conv]).norm() < 0.05 * full[conv].norm()
    for steps in (grad_scaled, lr_scaled):  # the rest of the model takes the same step
        torch.testing.assert_close(steps[q], full[q])
    with pytest.raises(ValueError, match="SSLConfig.feature_lr_scale"):
        SSLConfig.from_preset("tiny", feature_lr_scale=0.0)


def test_contrastive_chance_counts_negatives_distinct_from_the_positive():
    from kd.ssl.pretrain import contrastive_chance

    q = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [3.0, 0.0]]])  # frames 0 and 1 share a code
    mask = torch.tensor([[True, True, True, False]])
    negatives = torch.tensor([[[1, 2], [0, 2], [0, 1], [0, 0]]])  # row 3 is unmasked and unused
    # frame 0: negatives 1 (equal), 2 (distinct) -> ln 2; frame 1 the same; frame 2: two distinct -> ln 3
    expected = (2 * math.log(2) + math.log(3)) / 3
    assert contrastive_chance(q, mask, negatives).item() == pytest.approx(expected, rel=1e-6)
    collapsed = torch.ones(1, 4, 2)  # one code for every frame: every negative is masked out
    assert contrastive_chance(collapsed, mask, negatives).item() == 0.0


def test_contrastive_chance_is_the_loss_of_an_uninformative_model():
    """With the context projection zeroed every candidate gets logit 0: the model's own contrastive
    loss per masked frame is then exactly the chance level."""
    from kd.ssl.pretrain import build_pretraining_model, contrastive_chance, sample_masks

    config = SSLConfig.from_preset("tiny", num_codevectors_per_group=2)  # few codes: many repeats
    torch.manual_seed(0)
    model = build_pretraining_model(config).eval()
    torch.nn.init.zeros_(model.project_hid.weight)
    torch.nn.init.zeros_(model.project_hid.bias)
    lengths = torch.tensor([16000, 12000])
    x = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    mask, negatives = sample_masks(lengths, 16000, config)
    with torch.no_grad():
        out = model(x, mask_time_indices=mask, sampled_negative_indices=negatives)
    chance = contrastive_chance(out.projected_quantized_states, mask, negatives).item()
    assert 0.0 < chance < math.log(1 + config.num_negatives)  # some negatives repeat their positive
    assert out.contrastive_loss.item() / mask.sum().item() == pytest.approx(chance, rel=1e-5)


def test_frame_perplexity_counts_the_codes_one_frame_draws_from():
    from kd.ssl.pretrain import frame_perplexity

    mask = torch.tensor([[True, True, False]])
    certain = torch.full((1, 3, 2 * 4), -1e4)
    certain[..., 1] = certain[..., 6] = 0.0  # one code per group, every frame
    assert frame_perplexity(certain, mask, 2).item() == pytest.approx(2.0)  # G: each draw is certain
    assert frame_perplexity(torch.zeros(1, 3, 8), mask, 2).item() == pytest.approx(8.0)  # G x V: uniform draws
    two = torch.full((1, 3, 8), -1e4)
    two[0, :, :2] = 0.0  # group 0: two codes at even odds (perplexity 2); group 1: uniform over 4
    two[0, :, 4:] = 0.0
    two[0, 2] = 5.0  # the unmasked frame does not count
    assert frame_perplexity(two, mask, 2).item() == pytest.approx(2.0 + 4.0)
    # exp of the mean entropy, not the mean of per-frame perplexities
    mixed = torch.full((1, 2, 2), -1e4)
    mixed[0, 0] = 0.0  # frame 0: entropy ln 2; frame 1: certain (entropy 0)
    mixed[0, 1, 0] = 0.0
    assert frame_perplexity(mixed, torch.ones(1, 2, dtype=torch.bool), 1).item() == pytest.approx(math.sqrt(2.0))
    with pytest.raises(ValueError, match="last dimension 8 is not a multiple of groups=3"):
        frame_perplexity(certain, mask, 3)
    with pytest.raises(ValueError, match="no masked frame"):
        frame_perplexity(certain, torch.zeros(1, 3, dtype=torch.bool), 2)


def test_frame_perplexity_reads_the_quantiser_the_model_runs():
    """The tap sees the logits the quantiser draws from: their pooled distribution is what the
    model reports as its codevector perplexity, and no frame draws from more codes than that."""
    from kd.ssl.pretrain import build_pretraining_model, frame_perplexity, sample_masks

    config = SSLConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = build_pretraining_model(config).train()
    lengths = torch.tensor([16000, 12000])
    x = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    mask, negatives = sample_masks(lengths, 16000, config)
    with torch.no_grad():
        out = model(x, mask_time_indices=mask, sampled_negative_indices=negatives)
    logits = model.quantizer_tap.logits
    assert logits.shape == (2, mask.shape[1], config.codebook_size)
    probs = torch.softmax(logits[mask].view(-1, config.num_codevector_groups, config.num_codevectors_per_group), -1)
    pooled = probs.mean(0)
    assert out.codevector_perplexity.item() == pytest.approx(
        torch.exp(-(pooled * torch.log(pooled + 1e-7)).sum(-1)).sum().item(), rel=1e-4)
    drawn = frame_perplexity(logits, mask, config.num_codevector_groups).item()
    assert config.num_codevector_groups <= drawn <= out.codevector_perplexity.item() + 1e-4  # concavity of entropy


def test_neighbour_codes_counts_adjacent_frames_that_share_a_code():
    from kd.ssl.pretrain import neighbour_codes

    def logits_of(codes, v):  # [B, T, G] code indices -> logits whose argmax they are
        return torch.nn.functional.one_hot(torch.tensor(codes), v).float().flatten(2)

    # utterance 0: group 0 holds one code (agreement 1, chance 1), group 1 alternates two codes
    # (agreement 0, chance 1/2); utterance 1 is padding after 2 frames: one pair, and its padded
    # frames (which would agree with each other) are left out
    codes = [[[0, 1], [0, 2], [0, 1], [0, 2], [0, 1]],
             [[3, 3], [3, 0], [1, 1], [1, 1], [1, 1]]]
    agreement, chance = neighbour_codes(logits_of(codes, 4), torch.tensor([5, 2]), 2)
    # pairs: 4 in utterance 0 (group 0 all agree, group 1 none), 1 in utterance 1 (group 0 agrees, group 1 not)
    assert agreement.item() == pytest.approx((4 + 0 + 1 + 0) / (5 * 2))
    # chance per utterance: (1 + (0.6^2 + 0.4^2)) / 2 = 0.76 and (1 + 0.5) / 2 = 0.75, weighted 4 : 1
    assert chance.item() == pytest.approx((4 * 0.76 + 1 * 0.75) / 5)
    # codes drawn at random: agreement near chance; codes held for runs of 10 frames: far above it
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 200, 2 * 16, generator=g)
    a, c = neighbour_codes(noise, torch.full((8,), 200), 2)
    assert c.item() == pytest.approx(1 / 16, abs=0.01) and abs(a.item() - c.item()) < 0.03
    held = noise[:, ::10].repeat_interleave(10, dim=1)
    a, c = neighbour_codes(held, torch.full((8,), 200), 2)
    assert a.item() == pytest.approx(0.9 + 0.1 * c.item(), abs=0.03)
    with pytest.raises(ValueError, match="last dimension 8 is not a multiple of groups=3"):
        neighbour_codes(logits_of(codes, 4), torch.tensor([5, 2]), 3)
    with pytest.raises(ValueError, match=r"frames: expected 2 counts in \[0, 5\], found \[6, 2\]"):
        neighbour_codes(logits_of(codes, 4), torch.tensor([6, 2]), 2)
    with pytest.raises(ValueError, match="no utterance has two frames"):
        neighbour_codes(logits_of(codes, 4), torch.tensor([1, 1]), 2)


# ---- pre-training ---------------------------------------------------------------------------
def test_pretrain_logs_losses_and_keeps_checkpoints(pretrained):
    from transformers import Wav2Vec2ForPreTraining

    result, _ = pretrained
    assert result.steps == 4 and not result.skipped and not result.stopped_early
    rows = read_csv_log(result.out_dir / "log.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for column in ("loss", "contrastive", "chance", "diversity", "feature_penalty", "perplexity",
                       "frame_perplexity", "neighbour_codes", "neighbour_codes_chance", "temperature", "lr",
                       "grad_norm"):
            assert math.isfinite(r[column]), column
        assert 0.0 <= r["neighbour_codes"] <= 1.0 and 0.0 < r["neighbour_codes_chance"] <= 1.0
        # the optimised loss is the per-frame contrastive loss + alpha * diversity + beta * feature penalty
        expected = (r["contrastive"] + TINY.diversity_weight * r["diversity"]
                    + TINY.feature_penalty_weight * r["feature_penalty"])
        assert r["loss"] == pytest.approx(expected, rel=1e-4)
        assert 0.0 <= r["diversity"] <= 1.0
        assert 1.0 <= r["perplexity"] <= TINY.codebook_size == 2 * 16
        assert TINY.num_codevector_groups <= r["frame_perplexity"] <= r["perplexity"] + 1e-3
        temperature = max(TINY.gumbel_min, TINY.gumbel_max * TINY.gumbel_decay ** (r["step"] - 1))
        assert r["temperature"] == pytest.approx(temperature, rel=1e-5)
    assert [s for s, _ in list_stage_checkpoints(result.out_dir)] == [2, 4]
    assert (result.out_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the learning curves
    # the outcome of the last updates, returned, kept in the completion marker and logged
    assert result.metrics["state"] in ("learning", "at chance", "collapsed") and result.metrics["updates"] == 4
    assert result.metrics["contrastive"] == pytest.approx(sum(r["contrastive"] for r in rows) / 4)
    assert json.loads((result.out_dir / ".done.json").read_text())["outcome"] == result.metrics
    models = {s: Wav2Vec2ForPreTraining.from_pretrained(p) for s, p in list_stage_checkpoints(result.out_dir)}
    final = Wav2Vec2ForPreTraining.from_pretrained(result.model_dir)
    assert final.config.num_hidden_layers == TINY.num_layers
    w = "wav2vec2.encoder.layers.0.attention.q_proj.weight"
    assert torch.equal(models[4].state_dict()[w], final.state_dict()[w])  # the last update is step 4
    assert not torch.equal(models[2].state_dict()[w], final.state_dict()[w])  # training moved the weights


def test_pretraining_outcome_tells_learning_from_chance_and_collapse(tmp_path):
    from kd.ssl.pretrain import pretraining_outcome

    def log(name, rows):
        path = tmp_path / f"{name}.csv"
        path.write_text("step,contrastive,chance,perplexity,frame_perplexity\n"
                        + "".join(f"{i + 1},{c},{ch},{p},{f}\n" for i, (c, ch, p, f) in enumerate(rows)))
        return path

    # learnt early, back at chance for the last 20 updates: the verdict reads the end only
    unlearnt = log("unlearnt", [(2.9, 3.3, 5.0, 2.5)] * 30 + [(3.90, 3.88, 12.0, 4.0)] * 20)
    out = pretraining_outcome(unlearnt, groups=2, codebook_size=128)
    assert out["state"] == "at chance" and out["updates"] == 20
    assert out["below_chance"] == pytest.approx(-0.02) and out["perplexity"] == pytest.approx(12.0)
    assert out["message"].startswith("at chance: over the last 20 updates the contrastive loss is 3.900 against "
                                     "a chance level of 3.880 (0.020 nats above), codebook perplexity 12.0 of 128")
    learning = log("learning", [(3.5, 3.6, 9.0, 3.0), (3.3, 3.6, 9.0, 3.0)])  # mean 0.2 below chance
    out = pretraining_outcome(learning, groups=2, codebook_size=128)
    assert out["state"] == "learning" and out["updates"] == 2 and out["below_chance"] == pytest.approx(0.2)
    collapsed = log("collapsed", [(0.4, 0.5, 2.1, 2.0)] * 5)  # low loss, low chance: one code per group
    assert pretraining_outcome(collapsed, groups=2, codebook_size=128)["state"] == "collapsed"
    assert pretraining_outcome(learning, groups=2, codebook_size=128, window=1)["below_chance"] == pytest.approx(0.3)
    # where the log has them, how often neighbouring frames share a code (and by chance) joins the line
    timed = tmp_path / "timed.csv"
    timed.write_text("step,contrastive,chance,perplexity,frame_perplexity,neighbour_codes,neighbour_codes_chance\n"
                     "1,3.93,3.93,120.0,3.5,0.034,0.026\n2,3.93,3.93,120.0,3.5,0.036,0.028\n")
    out = pretraining_outcome(timed, groups=2, codebook_size=128)
    assert out["state"] == "at chance" and out["neighbour_codes"] == pytest.approx(0.035)
    assert out["message"].endswith("(3.5 per frame); neighbouring frames share their code 3.5% of the time "
                                   "(2.7% by chance)")
    old = tmp_path / "old.csv"
    old.write_text("step,contrastive,perplexity,temperature\n1,3.9,5.0,2.0\n")
    with pytest.raises(ValueError, match=r"old.csv: column\(s\) \['chance', 'frame_perplexity'\] missing"):
        pretraining_outcome(old, groups=2, codebook_size=128)
    empty = log("empty", [])
    with pytest.raises(ValueError, match="empty.csv: expected at least one logged update"):
        pretraining_outcome(empty, groups=2, codebook_size=128)


def test_moving_average_skips_non_finite_values():
    from kd.analyze.figures import _moving_average

    assert _moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    smoothed = _moving_average([1.0, float("nan"), float("nan"), 3.0, 5.0], 2)
    assert smoothed[:2] == [1.0, 1.0] and math.isnan(smoothed[2]) and smoothed[3:] == [3.0, 4.0]


def test_pretraining_curves_need_the_logged_columns(tmp_path):
    from kd.analyze.figures import plot_pretraining_curves

    empty = tmp_path / "empty.csv"
    empty.write_text("step,contrastive,perplexity,temperature\n")
    with pytest.raises(ValueError, match="empty.csv: expected at least one logged update"):
        plot_pretraining_curves(empty, tmp_path / "a.png", codebook_size=8)
    old = tmp_path / "old.csv"  # a log without the chance column still plots; one without perplexity does not
    old.write_text("step,contrastive,perplexity,temperature\n1,3.9,5.0,2.0\n2,3.8,6.0,1.9\n")
    assert plot_pretraining_curves(old, tmp_path / "old.png", codebook_size=8).is_file()
    bad = tmp_path / "bad.csv"
    bad.write_text("step,contrastive,temperature\n1,3.9,2.0\n")
    with pytest.raises(ValueError, match="bad.csv: column 'perplexity' missing"):
        plot_pretraining_curves(bad, tmp_path / "b.png", codebook_size=8)


def test_cli_pretrain_takes_settings_over_the_preset(tests_corpus, tmp_path, capsys):
    from kd.cli import main

    root, _ = tests_corpus
    out = tmp_path / "ssl"
    args = ["ssl", "pretrain", "--data", str(root / "us" / "train"), "--out", str(out), "--preset", "tiny",
            "--seed", "3", "--set", "diversity_weight=0.3", "checkpoint_steps=[1]", "optim.max_steps=2",
            "data.max_seconds=8", "optim.lr=3e-4"]
    assert main(args) == 0
    saved = SSLConfig.from_dict(json.loads((out / "ssl_config.json").read_text()))
    tiny = SSLConfig.from_preset("tiny")
    assert saved == dataclasses.replace(tiny, diversity_weight=0.3, checkpoint_steps=(1,), optim=dataclasses.replace(
        tiny.optim, max_steps=2, lr=3e-4), data=dataclasses.replace(tiny.data, max_seconds=8.0), seed=3)
    assert [s for s, _ in list_stage_checkpoints(out)] == [1] and len(read_csv_log(out / "log.csv")) == 2
    capsys.readouterr()
    for setting, message in (("diversity_wieght=0.3", "SSLConfig: unknown field 'diversity_wieght'"),
                             ("optim.lr=fast", "SSLConfig.optim.lr: expected a finite number, found 'fast'"),
                             ("model.lr=1", "SSLConfig: unknown field 'model'"),
                             ("optim.lr", "--set: expected KEY.PATH=VALUE, found 'optim.lr'"),
                             ("optim.steps=2", "SSLConfig.optim.steps: this setting is now optim.max_steps"),
                             ("mask_prob=1.5", "SSLConfig.mask_prob")):
        assert main(args[:args.index("--set") + 1] + [setting]) == 2, setting
        assert message in capsys.readouterr().err, setting
    finetune = ["ssl", "finetune", str(out), "--data", str(root / "us" / "train"), "--out", str(tmp_path / "ft"),
                "--preset", "tiny", "--set", "optim.stepz=3"]
    assert main(finetune) == 2
    assert "unknown field 'stepz'" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()  # the settings are checked before anything is written


def test_pretraining_records_and_applies_its_input_convention(pretrained, tests_corpus, tmp_path, monkeypatch):
    """Raw waveforms by default; with normalize_waveforms every utterance reaches the model at zero
    mean and unit variance over its valid samples, and the saved folders say so."""
    import kd.ssl.pretrain as P
    from kd.models.hf_processor import read_input_spec

    result, data = pretrained
    assert not read_input_spec(result.model_dir).normalize
    assert not read_input_spec(dict(list_stage_checkpoints(result.out_dir))[2]).normalize
    seen = []
    build = P.build_pretraining_model

    def build_and_watch(config):
        model = build(config)
        model.wav2vec2.feature_extractor.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].clone()))
        return model

    monkeypatch.setattr(P, "build_pretraining_model", build_and_watch)
    config = dataclasses.replace(TINY, normalize_waveforms=True, checkpoint_steps=(1,),
                                 optim=dataclasses.replace(TINY.optim, max_steps=1))
    out = P.pretrain(config, data, tmp_path / "normalised", progress=False)
    assert read_input_spec(out.model_dir).normalize
    assert read_input_spec(dict(list_stage_checkpoints(out.out_dir))[1]).normalize
    speech = seen[0]  # [B, S] the first batch as the feature encoder got it
    assert speech.shape[0] >= 2
    for row in speech:
        valid = row[: int((row != 0).nonzero().max()) + 1]  # padding is set to 0 after normalising
        assert valid.double().mean().item() == pytest.approx(0.0, abs=1e-4)
        assert valid.double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_rerun_skips_a_finished_stage(pretrained):
    from kd.ssl.pretrain import pretrain

    result, data = pretrained
    weights = result.model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = pretrain(TINY, data, result.out_dir, progress=False)
    assert again.skipped and again.steps == 4 and again.model_dir == result.model_dir
    assert again.metrics == result.metrics  # the outcome, read back from the completion marker
    assert weights.stat().st_mtime_ns == before


def test_finished_config_reads_a_finished_run_only(pretrained, tmp_path):
    from kd.ssl.pretrain import finished_config

    result, _ = pretrained
    assert finished_config(result.out_dir) == TINY
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "ssl_config.json").write_text((result.out_dir / "ssl_config.json").read_text())
    assert finished_config(unfinished) is None  # no completion marker: a run that did not finish
    assert finished_config(tmp_path / "missing") is None


def test_unfinished_checkpoint_is_never_listed(tmp_path):
    from kd.training.checkpoint import begin_checkpoint, finish_checkpoint

    def crash(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed half way through the save

    # a model folder written atomically (the stages' final model/ and student/)
    with pytest.raises(KeyboardInterrupt):
        write_folder_atomic(tmp_path / "model", crash)
    assert (tmp_path / ".tmp-model" / "config.json").is_file()
    assert not (tmp_path / "model").exists()
    write_folder_atomic(tmp_path / "model", lambda f: (f / "config.json").write_text("{}"))
    assert (tmp_path / "model" / "config.json").is_file() and not (tmp_path / ".tmp-model").exists()
    # a checkpoint with its model folder: listed once its marker is written and the folder renamed
    root = tmp_path / "checkpoints"
    tmp = begin_checkpoint(root, 7)
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{}")  # killed here: no marker, a .tmp-step-* folder
    assert list_stage_checkpoints(tmp_path) == []
    finish_checkpoint(tmp, model_state={"w": torch.zeros(1)}, optimizer_state={}, step=7, epoch=0, batch=7,
                      dev_loss=None, world_size=1,
                      files=lambda folder: (folder / "model" / "weights.txt").write_text("w"))
    assert list_stage_checkpoints(tmp_path) == [(7, root / "step-00000007" / "model")]
    assert (root / "step-00000007" / "model" / "weights.txt").is_file()
    # the ckpt-N folders that stages kept before the one training stack are listed too
    (tmp_path / "ckpt-3").mkdir()
    (tmp_path / "ckpt-3" / "config.json").write_text("{}")
    (tmp_path / ".tmp-ckpt-5").mkdir()
    assert list_stage_checkpoints(tmp_path) == [(3, tmp_path / "ckpt-3"), (7, root / "step-00000007" / "model")]


def test_interrupted_pretraining_resumes_to_the_uninterrupted_weights(pretrained, tmp_path, monkeypatch):
    """Killed after the checkpoint of step 2, run again: it continues from that checkpoint (weights, AdamW
    state, the numpy RNG of the masks and negatives, the torch RNG of the Gumbel noise, the data position)
    and ends with exactly the weights and log of the run that was not interrupted."""
    from kd.ssl.pretrain import pretrain
    from kd.training.checkpoint import list_checkpoints, load_weights

    result, data = pretrained
    temperature = SSLConfig.gumbel_temperature

    def killed_at_step_3(self, step):
        if step == 2:  # before_update of step 3
            raise KeyboardInterrupt
        return temperature(self, step)

    monkeypatch.setattr(SSLConfig, "gumbel_temperature", killed_at_step_3)
    out = tmp_path / "pretrain"
    with pytest.raises(KeyboardInterrupt):
        pretrain(TINY, data, out, progress=False)
    assert [c.step for c in list_checkpoints(out / "checkpoints")] == [2]
    monkeypatch.setattr(SSLConfig, "gumbel_temperature", temperature)
    resumed = pretrain(TINY, data, out, progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 4 and not resumed.skipped
    a = load_weights(result.model_dir / "model.safetensors")
    b = load_weights(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full, parts = read_csv_log(result.out_dir / "log.csv"), read_csv_log(out / "log.csv")
    assert [r["step"] for r in parts] == [1, 2, 3, 4]  # every step once
    for column in ("loss", "contrastive", "lr", "temperature", "grad_norm"):
        assert [r[column] for r in parts] == [r[column] for r in full], column
    assert [s for s, _ in list_stage_checkpoints(out)] == [2, 4]


def test_ssl_and_asr_runs_write_the_same_checkpoints_and_log_columns(pretrained, tests_corpus, tmp_path):
    """One training stack: a wav2vec 2.0 stage and an ASR run keep checkpoints of one format (files and
    marker fields) and log the loop's columns alike, the trainer's own parts in between."""
    from kd.testing import make_config
    from kd.training.checkpoint import list_checkpoints
    from kd.training.loop import train

    result, _ = pretrained
    asr = train(make_config([tests_corpus[0] / "us/train"], steps=1, max_seconds=8.0), tmp_path / "asr")
    ssl_ckpt = list_checkpoints(result.out_dir / "checkpoints")[-1].path
    asr_ckpt = list_checkpoints(Path(asr.out_dir) / "checkpoints")[-1].path
    files = {"checkpoint.json", "model.safetensors", "optimizer.pt", "rng-0.pt"}
    assert {p.name for p in ssl_ckpt.iterdir()} - {"model"} == {p.name for p in asr_ckpt.iterdir()} == files
    marker = lambda path: json.loads((path / "checkpoint.json").read_text())  # noqa: E731
    assert marker(ssl_ckpt).keys() == marker(asr_ckpt).keys()
    assert marker(ssl_ckpt)["step"] == 4 and marker(ssl_ckpt)["format"] == marker(asr_ckpt)["format"]
    ssl_columns = list(read_csv_log(result.out_dir / "log.csv")[0])
    asr_columns = list(read_csv_log(Path(asr.out_dir) / "log.csv")[0])
    for columns in (ssl_columns, asr_columns):
        assert columns[:4] == ["step", "epoch", "lr", "loss"] and columns[-2:] == ["audio_s_per_s", "steps_per_s"]
        assert "grad_norm" in columns


def test_a_stage_finished_before_the_one_training_stack_stays_finished(pretrained, tmp_path):
    """A stage folder as the earlier version left it (its marker for the config in the earlier layout,
    ckpt-N model folders, no checkpoints/): skipped, its model untouched, its ckpt-N folders listed."""
    import shutil

    from kd.core.io import mark_done
    from kd.ssl.pretrain import _legacy_stage_key, pretrain

    result, data = pretrained
    config = dataclasses.replace(TINY, deterministic=False)  # a field the earlier layout did not have
    old = tmp_path / "old"
    shutil.copytree(result.out_dir, old)
    for step, folder in list_stage_checkpoints(old):
        shutil.copytree(folder, old / f"ckpt-{step}")
    shutil.rmtree(old / "checkpoints")
    mark_done(old, _legacy_stage_key(config, data), steps=4, stopped_early=False, outcome=result.metrics)
    before = (old / "model" / "model.safetensors").stat().st_mtime_ns
    again = pretrain(config, data, old, progress=False)
    assert again.skipped and again.steps == 4 and again.metrics == result.metrics
    assert (old / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert list_stage_checkpoints(old) == [(2, old / "ckpt-2"), (4, old / "ckpt-4")]


def test_an_unfinished_stage_of_before_starts_afresh_saying_why(tmp_path, caplog):
    """ckpt-N folders hold no optimiser state or data position: no resume from them, a warning, a clean
    start; checkpoints of the same stage are kept for the resume, those of another stage are not."""
    from kd.ssl.common import prepare_stage_dir
    from kd.training.checkpoint import begin_checkpoint, finish_checkpoint

    class OneProcess:
        is_main_process = True

        def wait_for_everyone(self):
            pass

    out, key = tmp_path / "stage", {"stage": "ssl-pretrain", "config": TINY.to_dict()}
    (out / "ckpt-2").mkdir(parents=True)
    (out / "log.csv").write_text("step\n1\n")
    assert prepare_stage_dir(out, key, ["log.csv"], OneProcess()) is None
    assert not (out / "ckpt-2").exists() and not (out / "log.csv").exists()
    assert "ckpt-2 were kept by a version without resumable checkpoints" in caplog.text
    finish_checkpoint(begin_checkpoint(out / "checkpoints", 3), model_state={"w": torch.zeros(1)}, optimizer_state={},
                      step=3, epoch=0, batch=3, dev_loss=None, world_size=1)
    longer = {**key, "config": {**key["config"], "optim": {**key["config"]["optim"], "max_steps": 9}}}
    assert prepare_stage_dir(out, longer, [], OneProcess()) == 3  # max_steps may change on resume
    other = {**key, "config": {**key["config"], "mask_prob": 0.5}}
    assert prepare_stage_dir(out, other, [], OneProcess()) is None  # another stage: a fresh start


def test_changed_config_is_not_skipped(pretrained, monkeypatch):
    from kd.core.io import is_done
    from kd.ssl import pretrain as module

    result, data = pretrained
    assert is_done(result.out_dir, module._stage_key(TINY, data))
    assert not is_done(result.out_dir, module._stage_key(dataclasses.replace(TINY, mask_prob=0.5), data))


# ---- CTC ------------------------------------------------------------------------------------
def test_greedy_ctc_decode_merges_repeats_and_drops_blanks():
    from kd.ssl.finetune import greedy_ctc_decode

    path = [[0, 3, 3, 0, 3, 4, 4, 1, 5, 5], [4, 4, 0, 0, 2, 2, 2, 2, 2, 2]]
    logits = torch.nn.functional.one_hot(torch.tensor(path), 6).float()  # [2, 10, 6]
    assert greedy_ctc_decode(logits, torch.tensor([10, 4])) == [[3, 3, 4, 1, 5], [4]]
    assert greedy_ctc_decode(logits, torch.tensor([10, 10]), drop=[1]) == [[3, 3, 4, 5], [4, 2]]


def test_score_normalises_both_sides():
    from kd.ssl.finetune import score

    result = score(["Hello, World!", "a b"], ["hello world", "a c"])
    assert result["wer"] == pytest.approx(1 / 4) and result["cer"] == pytest.approx(1 / 14)
    with pytest.raises(ValueError, match="as many hypotheses as references"):
        score(["a"], [])


@pytest.mark.slow  # 55 s (fine-tuning to a low error) on the 2-core machine; pytest -m slow
def test_ctc_finetuning_overfits_a_few_utterances(tests_corpus, tmp_path):
    from transformers import Wav2Vec2ForCTC

    from kd.data import CharTokenizer
    from kd.ssl.finetune import evaluate_ctc, finetune_ctc
    from kd.ssl.pretrain import build_pretraining_model

    root, _ = tests_corpus
    data = shortest_subset_dir(root / "target" / "train", tmp_path / "data", 2)
    torch.manual_seed(0)
    build_pretraining_model(SSLConfig.from_preset("tiny")).save_pretrained(tmp_path / "pretrained")
    config = CTCConfig.from_preset("tiny")
    result = finetune_ctc(tmp_path / "pretrained", [data], tmp_path / "ctc", config, eval_dirs=[data], progress=False)
    losses = [r["loss"] for r in read_csv_log(tmp_path / "ctc" / "log.csv")]
    assert len(losses) == config.optim.max_steps
    # blank-only output sits near 2.7 nats per character; memorising the transcripts goes far below
    assert np.mean(losses[-5:]) < 1.0 and np.mean(losses[-5:]) < 0.25 * losses[0]
    model = Wav2Vec2ForCTC.from_pretrained(result.model_dir)
    tokens = CharTokenizer.load(result.model_dir / "tokens.txt")
    vocab = json.loads((result.model_dir / "vocab.json").read_text())
    assert vocab["<blank>"] == model.config.pad_token_id == 0 and model.config.vocab_size == tokens.vocab_size
    (metrics,) = result.metrics.values()
    assert metrics["utterances"] == 2 and metrics["cer"] < 0.5  # greedy decoding of the memorised utterances
    assert evaluate_ctc(result.model_dir, data) == metrics
    again = finetune_ctc(tmp_path / "pretrained", [data], tmp_path / "ctc", config, eval_dirs=[data], progress=False)
    assert again.skipped and again.metrics == result.metrics


def test_ctc_finetuning_of_a_student_keeps_its_structure(tests_corpus, tmp_path):
    from kd.compression import compress, count_parameters, load_student, save_student
    from kd.plan import CompressionPlan
    from kd.ssl.finetune import finetune_ctc
    from kd.ssl.pretrain import build_pretraining_model

    root, _ = tests_corpus
    data = shortest_subset_dir(root / "target" / "train", tmp_path / "data", 2)
    torch.manual_seed(0)
    teacher = build_pretraining_model(SSLConfig.from_preset("tiny", num_layers=4))
    plan = CompressionPlan(keep_layers=(0, 1, 3), share_groups=((0, 1),))
    save_student(compress(teacher, plan), plan, tmp_path / "student")
    config = CTCConfig.from_preset("tiny", optim=dataclasses.replace(CTCConfig.from_preset("tiny").optim, max_steps=2))
    result = finetune_ctc(tmp_path / "student", [data], tmp_path / "ctc", config, progress=False)
    model = load_student(result.model_dir)
    assert type(model).__name__ == "Wav2Vec2ForCTC" and model.config.num_hidden_layers == 3
    layers = model.wav2vec2.encoder.layers
    assert layers[0].attention.q_proj.weight is layers[1].attention.q_proj.weight  # sharing survived
    assert (result.model_dir / "tokens.txt").is_file()
    assert count_parameters(model) < count_parameters(compress(teacher, CompressionPlan(keep_layers=(0, 1, 3))))
