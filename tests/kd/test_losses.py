"""KD losses against float64 NumPy references written out with explicit loops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from kd.losses import (
    KDLevel,
    KDLossConfig,
    TeacherWeighting,
    ctc_kd,
    ctc_uncertainty_kd,
    fixed_teacher_weights,
    kd_loss,
    posterior_variance,
    resample_frames,
    token_kd,
    uncertainty_kd,
    uncertainty_teacher_weights,
)


# ---------------------------------------------------------------- references


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def np_kl(teacher_logits: np.ndarray, student_logits: np.ndarray, t: float) -> float:
    p = np_softmax(teacher_logits / t)
    q = np_softmax(student_logits / t)
    return float(t * t * sum(p[v] * np.log(p[v] / q[v]) for v in range(len(p))))


def np_unc(student_var: np.ndarray, teacher_var: np.ndarray) -> float:
    s = student_var / np.sqrt((student_var**2).sum())
    t = teacher_var / np.sqrt((teacher_var**2).sum())
    return float(((s - t) ** 2).sum())


def ref_token_kd(s, t, temperature, mask):
    s, t = s.double().numpy(), t.double().numpy()
    values = [
        np_kl(t[b, i], s[b, i], temperature)
        for b in range(s.shape[0])
        for i in range(s.shape[1])
        if mask[b, i]
    ]
    return float(np.mean(values))


def ref_resample(values: np.ndarray, n: int, m: int) -> np.ndarray:
    """Interpolate the first n frames of `values` [frames, dim] to m frames, frame centres aligned."""
    out = np.zeros((m, values.shape[1]))
    for j in range(m):
        x = min(max((j + 0.5) * n / m - 0.5, 0.0), n - 1.0)
        lo = int(np.floor(x))
        hi = min(lo + 1, n - 1)
        w = x - lo
        out[j] = (1 - w) * values[lo] + w * values[hi]
    return out


@dataclass
class Outs:
    """A fake model output with the fields the KD losses read."""

    logits: torch.Tensor
    variances: torch.Tensor | None
    token_mask: torch.Tensor
    ctc_log_probs: torch.Tensor | None = None
    encoder_lengths: torch.Tensor | None = None


def make_outs(seed: int, mask: torch.Tensor, vocab: int = 5, requires_grad: bool = False) -> Outs:
    g = torch.Generator().manual_seed(seed)
    shape = (*mask.shape, vocab)
    logits = (2.0 * torch.randn(shape, generator=g)).requires_grad_(requires_grad)
    variances = (torch.rand(shape, generator=g) + 0.05).requires_grad_(requires_grad)
    return Outs(logits, variances, mask)


MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


# ---------------------------------------------------------------- token_kd


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_token_kd_matches_reference(temperature):
    s, t = make_outs(0, MASK).logits, make_outs(1, MASK).logits
    got = token_kd(s, t, temperature=temperature, mask=MASK)
    assert got.item() == pytest.approx(ref_token_kd(s, t, temperature, MASK), rel=1e-5)


def test_token_kd_without_mask_averages_all_positions():
    s, t = make_outs(0, MASK).logits, make_outs(1, MASK).logits
    full = torch.ones_like(MASK)
    assert token_kd(s, t).item() == pytest.approx(ref_token_kd(s, t, 1.0, full), rel=1e-5)


def test_token_kd_identical_logits_is_zero():
    s = make_outs(0, MASK).logits
    assert token_kd(s, s.clone(), temperature=3.0, mask=MASK).item() == 0.0


def test_token_kd_ignores_masked_positions_and_logit_offsets():
    s, t = make_outs(0, MASK).logits, make_outs(1, MASK).logits
    base = token_kd(s, t, temperature=2.0, mask=MASK)
    s2, t2 = s.clone(), t.clone()
    s2[~MASK] = 100.0 * torch.randn_like(s2[~MASK])
    t2[~MASK] = -50.0
    # a constant added to all logits of one position leaves its softmax unchanged
    t2 = t2 + torch.randn(*MASK.shape, 1)
    assert token_kd(s2, t2, temperature=2.0, mask=MASK).item() == pytest.approx(base.item(), rel=1e-5)


def test_token_kd_high_temperature_limit():
    # T^2 KL(softmax(t/T) || softmax(s/T)) -> (1/(2V)) sum_v (d_v - mean d)^2 with d = t - s
    s, t = make_outs(0, MASK).logits, make_outs(1, MASK).logits
    d = (t - s).double()
    d = d - d.mean(-1, keepdim=True)
    limit = (d.pow(2).sum(-1) / (2 * s.size(-1)))[MASK].mean().item()
    got = token_kd(s.double(), t.double(), temperature=1000.0, mask=MASK).item()
    assert got == pytest.approx(limit, rel=1e-3)


# ---------------------------------------------------------------- uncertainty_kd


def test_uncertainty_kd_matches_reference():
    s, t = make_outs(0, MASK).variances, make_outs(1, MASK).variances
    ref = np.mean(
        [np_unc(s[b, i].double().numpy(), t[b, i].double().numpy())
         for b in range(2) for i in range(4) if MASK[b, i]]
    )  # fmt: skip
    assert uncertainty_kd(s, t, mask=MASK).item() == pytest.approx(ref, rel=1e-5)


def test_uncertainty_kd_is_scale_invariant_and_zero_for_equal_directions():
    s, t = make_outs(0, MASK).variances, make_outs(1, MASK).variances
    base = uncertainty_kd(s, t, mask=MASK).item()
    assert uncertainty_kd(7.0 * s, 0.1 * t, mask=MASK).item() == pytest.approx(base, rel=1e-5)
    assert uncertainty_kd(s, 3.0 * s, mask=MASK).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- frame level


def ref_ctc_kd(s_lp, t_lp, s_len, t_len, temperature):
    values = []
    for b in range(s_lp.shape[0]):
        n, m = int(t_len[b]), int(s_len[b])
        p = np.stack([np_softmax(t_lp[b, i].double().numpy() / temperature) for i in range(n)])
        p = ref_resample(p, n, m)
        for j in range(m):
            pj = p[j] / p[j].sum()
            q = np_softmax(s_lp[b, j].double().numpy() / temperature)
            values.append(temperature**2 * float((pj * np.log(pj / q)).sum()))
    return float(np.mean(values))


def frame_log_probs(seed, batch, frames, vocab=6):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(2.0 * torch.randn(batch, frames, vocab, generator=g), -1)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_ctc_kd_same_rate_matches_reference(temperature):
    s, t = frame_log_probs(0, 2, 6), frame_log_probs(1, 2, 6)
    lengths = torch.tensor([6, 4])
    got = ctc_kd(s, t, student_lengths=lengths, teacher_lengths=lengths, temperature=temperature)
    ref = ref_ctc_kd(s, t, lengths, lengths, temperature)
    assert got.item() == pytest.approx(ref, rel=1e-5)


def test_ctc_kd_resamples_teacher_to_student_frames():
    s, t = frame_log_probs(0, 2, 5), frame_log_probs(1, 2, 9)
    s_len, t_len = torch.tensor([5, 3]), torch.tensor([9, 7])
    got = ctc_kd(s, t, student_lengths=s_len, teacher_lengths=t_len, temperature=1.5)
    assert got.item() == pytest.approx(ref_ctc_kd(s, t, s_len, t_len, 1.5), rel=1e-5)


def test_ctc_kd_teacher_at_double_rate_with_repeated_frames_equals_same_rate():
    s, t = frame_log_probs(0, 2, 6), frame_log_probs(1, 2, 6)
    lengths = torch.tensor([6, 5])
    same = ctc_kd(s, t, student_lengths=lengths, teacher_lengths=lengths)
    doubled = ctc_kd(
        s, t.repeat_interleave(2, dim=1), student_lengths=lengths, teacher_lengths=2 * lengths
    )
    assert doubled.item() == pytest.approx(same.item(), rel=1e-5)


def test_resample_frames_matches_reference_loop():
    values = torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(3))
    src, tgt = torch.tensor([7, 4]), torch.tensor([3, 6])
    got = resample_frames(values, src, tgt, 6)
    for b in range(2):
        n, m = int(src[b]), int(tgt[b])
        ref = ref_resample(values[b].double().numpy(), n, m)
        np.testing.assert_allclose(got[b, :m].double().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_ctc_uncertainty_kd_matches_reference():
    s_var = posterior_variance(frame_log_probs(0, 2, 4))
    t_var = posterior_variance(frame_log_probs(1, 2, 8))
    s_len, t_len = torch.tensor([4, 3]), torch.tensor([8, 5])
    got = ctc_uncertainty_kd(s_var, t_var, student_lengths=s_len, teacher_lengths=t_len)
    values = []
    for b in range(2):
        n, m = int(t_len[b]), int(s_len[b])
        t_res = ref_resample(t_var[b].double().numpy(), n, m)
        values += [np_unc(s_var[b, j].double().numpy(), t_res[j]) for j in range(m)]
    assert got.item() == pytest.approx(float(np.mean(values)), rel=1e-5)


def test_posterior_variance_formula():
    lp = frame_log_probs(0, 1, 2)
    p = lp.exp()
    torch.testing.assert_close(posterior_variance(lp), p - p * p)


# ---------------------------------------------------------------- gradients


def test_gradient_reaches_student_only():
    student = make_outs(0, MASK, requires_grad=True)
    teacher = make_outs(1, MASK, requires_grad=True)
    nll = torch.tensor(1.0, requires_grad=True)
    loss, _ = kd_loss(student, [teacher], nll, KDLossConfig(alpha=0.3, beta=0.5))
    loss.backward()
    assert teacher.logits.grad is None and teacher.variances.grad is None
    assert student.logits.grad.abs().sum() > 0 and student.variances.grad.abs().sum() > 0
    assert nll.grad.item() == pytest.approx(0.3)
    # masked positions receive no gradient
    assert student.logits.grad[~MASK].abs().sum() == 0

    s = frame_log_probs(0, 2, 5).requires_grad_(True)
    t = frame_log_probs(1, 2, 7).requires_grad_(True)
    ctc_kd(s, t, student_lengths=torch.tensor([5, 4]), teacher_lengths=torch.tensor([7, 6])).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------- kd_loss


def test_alpha_one_is_pure_nll():
    nll = torch.tensor(2.345)
    loss, parts = kd_loss(make_outs(0, MASK), [make_outs(1, MASK)], nll, KDLossConfig(alpha=1.0))
    assert loss.item() == nll.item()
    assert parts["kd"].item() > 0


def test_beta_one_is_pure_token_kd_and_beta_zero_pure_uncertainty_kd():
    s, t = make_outs(0, MASK), make_outs(1, MASK)
    nll = torch.tensor(5.0)
    loss, parts = kd_loss(s, [t], nll, KDLossConfig(alpha=0.0, beta=1.0, temperature=2.0))
    expected = token_kd(s.logits, t.logits, temperature=2.0, mask=MASK)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "unc_kd" not in parts
    loss, _ = kd_loss(s, [t], nll, KDLossConfig(alpha=0.0, beta=0.0))
    assert loss.item() == pytest.approx(uncertainty_kd(s.variances, t.variances, mask=MASK).item(), rel=1e-6)


def test_kd_loss_reads_nothing_back_and_an_empty_mask_gives_zero_kd():
    from kd.training.syncs import HostSyncCounter

    s, t = make_outs(0, MASK), make_outs(1, MASK)
    with HostSyncCounter() as counter:
        kd_loss(s, [t], torch.tensor(1.0), KDLossConfig(alpha=0.5, beta=0.5))
    assert counter.total == 0  # no wait for an accelerator inside the training step's loss
    empty = torch.zeros_like(MASK)
    loss, parts = kd_loss(make_outs(0, empty), [make_outs(1, empty)], torch.tensor(1.0),
                          KDLossConfig(alpha=0.5, beta=0.5))
    assert parts["kd"].item() == 0.0 and loss.item() == 0.5


def test_sum_per_utterance_reduction_puts_kd_on_the_nll_scale():
    from kd.losses import KDReduction

    s, t = make_outs(0, MASK), make_outs(1, MASK)
    mean_config = KDLossConfig(alpha=0.0, beta=0.5)
    summed = KDLossConfig(alpha=0.0, beta=0.5, reduction=KDReduction.SUM_PER_UTTERANCE)
    loss_mean, parts_mean = kd_loss(s, [t], torch.tensor(0.0), mean_config)
    loss_sum, parts_sum = kd_loss(s, [t], torch.tensor(0.0), summed)
    # MASK has 3 + 2 real positions in 2 utterances: the sum per utterance is 2.5 x the mean
    assert loss_sum.item() == pytest.approx(2.5 * loss_mean.item(), rel=1e-6)
    assert parts_sum["tok_kd"].item() == pytest.approx(parts_mean["tok_kd"].item())  # logged parts stay means
    assert KDLossConfig.from_dict({"reduction": "sum_per_utterance"}).reduction is KDReduction.SUM_PER_UTTERANCE
    with pytest.raises(ValueError, match="KDLossConfig.reduction: expected one of"):
        KDLossConfig.from_dict({"reduction": "total"})


def test_beta_one_does_not_need_variances():
    s, t = make_outs(0, MASK), make_outs(1, MASK)
    s.variances = t.variances = None
    loss, _ = kd_loss(s, [t], torch.tensor(0.0), KDLossConfig(alpha=0.0, beta=1.0))
    assert loss.item() == pytest.approx(token_kd(s.logits, t.logits, mask=MASK).item(), rel=1e-6)


def _per_teacher_kd(s, t, config):
    tok = token_kd(s.logits, t.logits, temperature=config.temperature, mask=MASK).item()
    unc = uncertainty_kd(s.variances, t.variances, mask=MASK).item()
    return config.beta * tok + (1 - config.beta) * unc


def test_fixed_weights_are_normalised():
    s, t1, t2 = make_outs(0, MASK), make_outs(1, MASK), make_outs(2, MASK)
    config = KDLossConfig(alpha=0.25, beta=0.6, temperature=2.0, teacher_weights=(1.0, 3.0))
    nll = torch.tensor(1.5)
    loss, parts = kd_loss(s, [t1, t2], nll, config)
    kd = 0.25 * _per_teacher_kd(s, t1, config) + 0.75 * _per_teacher_kd(s, t2, config)
    assert loss.item() == pytest.approx(0.25 * 1.5 + 0.75 * kd, rel=1e-5)
    assert parts["weight/0"].item() == pytest.approx(0.25)
    # default: uniform
    default = fixed_teacher_weights(KDLossConfig(), 3)
    torch.testing.assert_close(default, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_dev_wer_weights_are_softmax_of_negative_wer():
    s, t1, t2 = make_outs(0, MASK), make_outs(1, MASK), make_outs(2, MASK)
    config = KDLossConfig(
        alpha=0.0, beta=0.5, weighting=TeacherWeighting.DEV_WER, dev_wers=(0.10, 0.20),
        wer_temperature=0.05,
    )  # fmt: skip
    r = np.exp([-2.0, -4.0]) / np.exp([-2.0, -4.0]).sum()
    loss, parts = kd_loss(s, [t1, t2], torch.tensor(0.0), config)
    kd = r[0] * _per_teacher_kd(s, t1, config) + r[1] * _per_teacher_kd(s, t2, config)
    assert loss.item() == pytest.approx(kd, rel=1e-5)
    assert parts["weight/0"].item() == pytest.approx(r[0], rel=1e-6)
    assert r[0] > r[1]


def test_uncertainty_weights_per_token_match_reference():
    s, t1, t2 = make_outs(0, MASK), make_outs(1, MASK), make_outs(2, MASK)
    t2.variances[0, 1] *= 50.0  # teacher 2 very unsure at one token
    config = KDLossConfig(alpha=0.0, beta=0.7, temperature=1.5, weighting=TeacherWeighting.UNCERTAINTY)
    loss, _ = kd_loss(s, [t1, t2], torch.tensor(0.0), config)
    values = []
    for b in range(2):
        for i in range(4):
            if not MASK[b, i]:
                continue
            u = [t.variances[b, i].double().sum().item() + config.variance_eps for t in (t1, t2)]
            r = [(1 / uk) / sum(1 / uj for uj in u) for uk in u]
            terms = [
                0.7 * np_kl(t.logits[b, i].double().numpy(), s.logits[b, i].double().numpy(), 1.5)
                + 0.3 * np_unc(s.variances[b, i].double().numpy(), t.variances[b, i].double().numpy())
                for t in (t1, t2)
            ]
            values.append(r[0] * terms[0] + r[1] * terms[1])
    assert loss.item() == pytest.approx(float(np.mean(values)), rel=1e-5)
    weights = uncertainty_teacher_weights([t1.variances, t2.variances])
    torch.testing.assert_close(weights.sum(0), torch.ones(2, 4))
    assert weights[0, 0, 1] > 0.9  # the confident teacher dominates at the token where t2 is unsure


def test_frame_level_kd_loss_uses_ctc_terms():
    s_lp, t_lp = frame_log_probs(0, 2, 5), frame_log_probs(1, 2, 10)
    s_len, t_len = torch.tensor([5, 4]), torch.tensor([10, 8])
    dummy = torch.ones(2, 1, dtype=torch.bool)
    s = Outs(None, None, dummy, s_lp, s_len)
    t = Outs(None, None, dummy, t_lp, t_len)
    config = KDLossConfig(alpha=0.0, beta=1.0, temperature=2.0, level=KDLevel.FRAME)
    loss, _ = kd_loss(s, [t], torch.tensor(0.0), config)
    expected = ctc_kd(s_lp, t_lp, student_lengths=s_len, teacher_lengths=t_len, temperature=2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    config = KDLossConfig(alpha=0.0, beta=0.0, level=KDLevel.FRAME)
    loss, _ = kd_loss(s, [t], torch.tensor(0.0), config)
    expected = ctc_uncertainty_kd(
        posterior_variance(s_lp), posterior_variance(t_lp), student_lengths=s_len, teacher_lengths=t_len
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- validation and config


def test_shape_vocab_and_mask_errors():
    s, t = make_outs(0, MASK).logits, make_outs(1, MASK).logits
    with pytest.raises(ValueError, match="teacher_logits: expected the shape"):
        token_kd(s, t[..., :4])
    with pytest.raises(ValueError, match="student_logits: expected \\[batch, length, vocab\\]"):
        token_kd(s[0], t[0])
    with pytest.raises(ValueError, match="mask: expected dtype torch.bool"):
        token_kd(s, t, mask=MASK.float())
    with pytest.raises(ValueError, match="mask: expected shape"):
        uncertainty_kd(s, t, mask=MASK[:, :3])
    with pytest.raises(ValueError, match="at least one True"):
        token_kd(s, t, mask=torch.zeros_like(MASK))
    with pytest.raises(ValueError, match="temperature"):
        token_kd(s, t, temperature=0.0)
    lp = frame_log_probs(0, 2, 5)
    with pytest.raises(ValueError, match="vocabulary 6"):
        ctc_kd(lp, lp[..., :5], student_lengths=torch.tensor([5, 5]), teacher_lengths=torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="teacher_lengths: expected values in \\[1, 5\\]"):
        ctc_kd(lp, lp, student_lengths=torch.tensor([5, 5]), teacher_lengths=torch.tensor([6, 5]))


def test_kd_loss_errors():
    s, t = make_outs(0, MASK), make_outs(1, MASK)
    with pytest.raises(ValueError, match="at least one teacher"):
        kd_loss(s, [], torch.tensor(0.0), KDLossConfig())
    with pytest.raises(ValueError, match="teacher_weights: expected 2 values"):
        kd_loss(s, [t, t], torch.tensor(0.0), KDLossConfig(teacher_weights=(1.0,)))
    with pytest.raises(ValueError, match="dev_wers: expected 2 values"):
        config = KDLossConfig(weighting=TeacherWeighting.DEV_WER, dev_wers=(0.1,))
        kd_loss(s, [t, t], torch.tensor(0.0), config)
    no_var = Outs(t.logits, None, MASK)
    with pytest.raises(ValueError, match=r"teacher_outs\[0\].variances"):
        kd_loss(s, [no_var], torch.tensor(0.0), KDLossConfig(beta=0.5))
    other_mask = Outs(t.logits, t.variances, torch.ones_like(MASK))
    with pytest.raises(ValueError, match="token_mask"):
        kd_loss(s, [other_mask], torch.tensor(0.0), KDLossConfig())
    with pytest.raises(ValueError, match="nll: expected a scalar"):
        kd_loss(s, [t], torch.zeros(2), KDLossConfig())


def test_config_validation_and_yaml_round_trip():
    config = KDLossConfig(
        alpha=0.2, beta=0.8, temperature=2.0, level=KDLevel.FRAME,
        weighting=TeacherWeighting.DEV_WER, dev_wers=(0.12, 0.3),
    )  # fmt: skip
    assert KDLossConfig.from_yaml(config.to_yaml()) == config
    assert KDLossConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="KDLossConfig.alpha: expected \\[0, 1\\], found 1.5"):
        KDLossConfig(alpha=1.5)
    with pytest.raises(ValueError, match="KDLossConfig.dev_wers"):
        KDLossConfig(weighting=TeacherWeighting.DEV_WER)
    with pytest.raises(ValueError, match="KDLossConfig.weighting: expected one of"):
        KDLossConfig.from_dict({"weighting": "best"})
    with pytest.raises(TypeError, match="KDLossConfig.level"):
        KDLossConfig(level="token")
    with pytest.raises(ValueError, match="unknown fields \\['gamma'\\]"):
        KDLossConfig.from_dict({"gamma": 1.0})
