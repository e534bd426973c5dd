"""KD losses against float64 NumPy references written out with explicit loops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from kd.training.losses import (
    KDLevel,
    KDLossConfig,
    SoftLabels,
    TeacherWeighting,
    ctc_kd,
    ctc_spread_kd,
    fixed_teacher_weights,
    kd_loss,
    posterior_spread,
    resample_frames,
    sampled_soft_labels,
    token_kd,
    uncertainty_kd,
    uncertainty_teacher_weights,
)

MEAN = SoftLabels.MEAN_LOGITS  # soft labels softmax(f / T): the tests whose references use the mean logits


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


def test_ctc_spread_kd_matches_reference():
    s_var = posterior_spread(frame_log_probs(0, 2, 4))
    t_var = posterior_spread(frame_log_probs(1, 2, 8))
    s_len, t_len = torch.tensor([4, 3]), torch.tensor([8, 5])
    got = ctc_spread_kd(s_var, t_var, student_lengths=s_len, teacher_lengths=t_len)
    values = []
    for b in range(2):
        n, m = int(t_len[b]), int(s_len[b])
        t_res = ref_resample(t_var[b].double().numpy(), n, m)
        values += [np_unc(s_var[b, j].double().numpy(), t_res[j]) for j in range(m)]
    assert got.item() == pytest.approx(float(np.mean(values)), rel=1e-5)


def test_posterior_spread_formula():
    lp = frame_log_probs(0, 1, 2)
    p = lp.exp()
    torch.testing.assert_close(posterior_spread(lp), p - p * p)
    torch.testing.assert_close(posterior_spread(lp).sum(-1), 1 - (p * p).sum(-1))


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
    loss, parts = kd_loss(s, [t], nll, KDLossConfig(alpha=0.0, beta=1.0, temperature=2.0, soft_labels=MEAN))
    expected = token_kd(s.logits, t.logits, temperature=2.0, mask=MASK)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "unc_kd" not in parts
    loss, _ = kd_loss(s, [t], nll, KDLossConfig(alpha=0.0, beta=0.0, soft_labels=MEAN))
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
    from kd.training.losses import KDReduction

    s, t = make_outs(0, MASK), make_outs(1, MASK)
    mean_config = KDLossConfig(alpha=0.0, beta=0.5, soft_labels=MEAN)
    summed = KDLossConfig(alpha=0.0, beta=0.5, reduction=KDReduction.SUM_PER_UTTERANCE, soft_labels=MEAN)
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
    loss, _ = kd_loss(s, [t], torch.tensor(0.0), KDLossConfig(alpha=0.0, beta=1.0, soft_labels=MEAN))
    assert loss.item() == pytest.approx(token_kd(s.logits, t.logits, mask=MASK).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"teacher_outs\[0\].variances: expected a tensor \(from the teacher's "
                                         r"uncertainty head\) for soft_labels=sampled, found None"):
        kd_loss(s, [t], torch.tensor(0.0), KDLossConfig(alpha=0.0, beta=1.0))


def _per_teacher_kd(s, t, config):
    tok = token_kd(s.logits, t.logits, temperature=config.temperature, mask=MASK).item()
    unc = uncertainty_kd(s.variances, t.variances, mask=MASK).item()
    return config.beta * tok + (1 - config.beta) * unc


def test_fixed_weights_are_normalised():
    s, t1, t2 = make_outs(0, MASK), make_outs(1, MASK), make_outs(2, MASK)
    config = KDLossConfig(alpha=0.25, beta=0.6, temperature=2.0, teacher_weights=(1.0, 3.0), soft_labels=MEAN)
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
        wer_temperature=0.05, soft_labels=MEAN,
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
    config = KDLossConfig(alpha=0.0, beta=0.7, temperature=1.5, weighting=TeacherWeighting.UNCERTAINTY,
                          soft_labels=MEAN)
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
    loss, parts = kd_loss(s, [t], torch.tensor(0.0), config)
    expected = ctc_spread_kd(
        posterior_spread(s_lp), posterior_spread(t_lp), student_lengths=s_len, teacher_lengths=t_len
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the posterior's spread is logged under its own name, not as an uncertainty term
    assert "spread_kd" in parts and "spread_kd/0" in parts and not any(k.startswith("unc_kd") for k in parts)


def test_frame_level_soft_labels_draw_nothing_and_equal_the_posteriors():
    """CTC has no variance head: sampled soft labels are the softened posteriors (sigma = 0)."""
    s_lp, t_lp = frame_log_probs(0, 2, 5), frame_log_probs(1, 2, 10)
    dummy = torch.ones(2, 1, dtype=torch.bool)
    s = Outs(None, None, dummy, s_lp, torch.tensor([5, 4]))
    t = Outs(None, None, dummy, t_lp, torch.tensor([10, 8]))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    losses = [kd_loss(s, [t], torch.tensor(0.0), KDLossConfig(beta=0.5, temperature=2.0, level=KDLevel.FRAME,
                                                              soft_labels=labels), generator=g)[0]
              for labels in SoftLabels]
    assert losses[0].item() == losses[1].item()
    assert torch.equal(g.get_state(), state)


def test_posterior_spread_weights_per_frame_match_reference():
    s_lp, t1, t2 = frame_log_probs(0, 2, 6), frame_log_probs(1, 2, 6), frame_log_probs(2, 2, 6)
    t2 = torch.log_softmax(t2 / 10.0, -1)  # a flat, spread-out teacher 2
    lengths = torch.tensor([6, 4])
    dummy = torch.ones(2, 1, dtype=torch.bool)
    outs = [Outs(None, None, dummy, lp, lengths) for lp in (s_lp, t1, t2)]
    config = KDLossConfig(alpha=0.0, beta=1.0, level=KDLevel.FRAME, weighting=TeacherWeighting.POSTERIOR_SPREAD)
    loss, parts = kd_loss(outs[0], outs[1:], torch.tensor(0.0), config)
    values, w0 = [], []
    for b in range(2):
        for j in range(int(lengths[b])):
            u = [1.0 - (np.exp(t[b, j].double().numpy()) ** 2).sum() + config.variance_eps for t in (t1, t2)]
            r = [(1 / uk) / sum(1 / ui for ui in u) for uk in u]
            kls = [np_kl(t[b, j].double().numpy(), s_lp[b, j].double().numpy(), 1.0) for t in (t1, t2)]
            values.append(r[0] * kls[0] + r[1] * kls[1])
            w0.append(r[0])
    assert loss.item() == pytest.approx(float(np.mean(values)), rel=1e-5)
    assert parts["weight/0"].item() == pytest.approx(float(np.mean(w0)), rel=1e-5)
    assert parts["weight/0"].item() > 0.5  # the peaked teacher counts more


# ---------------------------------------------------------------- sampled soft labels


def np_sampled_soft_labels(logits, variances, eps, t):
    """(1/S) sum_s softmax((f + sqrt(v) eps_s) / T) per position, float64; eps: S arrays of f's shape."""
    g = logits[None] + np.sqrt(variances)[None] * np.stack(eps)  # (S, ..., V)
    z = g / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).mean(0)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("num_samples", [1, 3, 10])
def test_sampled_soft_labels_with_zero_variance_are_the_softmax_exactly(temperature, num_samples):
    f = make_outs(0, MASK).logits
    got = sampled_soft_labels(f, torch.zeros_like(f), temperature=temperature, num_samples=num_samples,
                              generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, torch.softmax(f / temperature, dim=-1))
    # and the loss: the same as with mean-logit soft labels, to rounding (another KL formula)
    s, t = make_outs(1, MASK), make_outs(0, MASK)
    t.variances = torch.zeros_like(t.variances)
    sampled, _ = kd_loss(s, [t], torch.tensor(0.0), KDLossConfig(alpha=0.0, temperature=temperature,
                                                                 num_samples=num_samples))
    mean, _ = kd_loss(s, [t], torch.tensor(0.0), KDLossConfig(alpha=0.0, temperature=temperature, soft_labels=MEAN))
    assert sampled.item() == pytest.approx(mean.item(), rel=1e-6)


def test_sampled_soft_labels_match_numpy_with_the_same_noise():
    out = make_outs(0, MASK)
    f, v = out.logits.double(), out.variances.double()
    got = sampled_soft_labels(f, v, temperature=1.5, num_samples=6, generator=torch.Generator().manual_seed(4))
    # the documented draw order: one randn of the logits' shape per sample, s = 1..S
    g = torch.Generator().manual_seed(4)
    eps = [torch.randn(f.shape, generator=g, dtype=torch.float64).numpy() for _ in range(6)]
    ref = np_sampled_soft_labels(f.numpy(), v.numpy(), eps, 1.5)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.sum(-1), torch.ones(MASK.shape, dtype=torch.float64))


def test_sampled_soft_labels_converge_to_the_expected_softmax():
    """Two classes: E[softmax(g / T)]_0 = E[sigmoid((d + s z) / T)], z ~ N(0, 1), with d = f_0 - f_1 and
    s^2 = sigma_0^2 + sigma_1^2; the expectation by Gauss-Hermite quadrature (NumPy, 80 nodes)."""
    f, var, t = np.array([1.5, 0.0]), np.array([2.0, 1.0]), 1.2
    z, w = np.polynomial.hermite_e.hermegauss(80)  # nodes and weights for the weight exp(-z^2 / 2)
    expected = float((w / (1.0 + np.exp(-(f[0] - f[1] + np.sqrt(var.sum()) * z) / t))).sum() / w.sum())
    rows = 20_000  # identical rows: 20000 x 10 = 200000 draws in all
    logits = torch.tensor(f, dtype=torch.float64).expand(rows, 2)
    variances = torch.tensor(var, dtype=torch.float64).expand(rows, 2)
    got = sampled_soft_labels(logits, variances, temperature=t, num_samples=10,
                              generator=torch.Generator().manual_seed(0))[:, 0].mean().item()
    # standard error about 0.25 / sqrt(200000) = 6e-4
    assert got == pytest.approx(expected, abs=3e-3)
    softmax_of_mean = 1.0 / (1.0 + np.exp(-(f[0] - f[1]) / t))
    assert abs(softmax_of_mean - expected) > 0.05  # the mean logits give another distribution


def test_sampled_soft_labels_flatten_as_sigma_grows():
    f = torch.tensor([2.0, 0.0, -1.0, -1.0], dtype=torch.float64).expand(5000, 4)
    entropies = []
    for variance in (0.0, 0.5, 2.0, 8.0):
        p = sampled_soft_labels(f, torch.full_like(f, variance), temperature=1.0, num_samples=4,
                                generator=torch.Generator().manual_seed(0)).mean(0)
        entropies.append(float(-(p * p.log()).sum()))
    assert all(a < b for a, b in zip(entropies, entropies[1:])), entropies
    assert entropies[-1] < np.log(4)


def test_sampled_soft_labels_same_seed_same_loss_and_several_teachers():
    s, t1, t2 = make_outs(0, MASK), make_outs(1, MASK), make_outs(2, MASK)
    config = KDLossConfig(alpha=0.0, beta=0.5, temperature=2.0, teacher_weights=(1.0, 3.0), num_samples=5)

    def loss(seed):
        return kd_loss(s, [t1, t2], torch.tensor(0.0), config, generator=torch.Generator().manual_seed(seed))

    (a, parts_a), (b, parts_b) = loss(3), loss(3)
    assert a.item() == b.item() and all(torch.equal(parts_a[k], parts_b[k]) for k in parts_a)
    assert loss(4)[0].item() != a.item()
    # the reference: teacher 0's draws, then teacher 1's, from the one generator
    g = torch.Generator().manual_seed(3)
    kd = []
    for t in (t1, t2):
        p = sampled_soft_labels(t.logits, t.variances, temperature=2.0, num_samples=5, generator=g).double().numpy()
        ref = []
        for bi in range(2):
            for i in range(4):
                if MASK[bi, i]:
                    q = np_softmax(s.logits[bi, i].double().numpy() / 2.0)
                    tok = 4.0 * float((p[bi, i] * np.log(p[bi, i] / q)).sum())
                    unc = np_unc(s.variances[bi, i].double().numpy(), t.variances[bi, i].double().numpy())
                    ref.append(0.5 * tok + 0.5 * unc)
        kd.append(float(np.mean(ref)))
    assert a.item() == pytest.approx(0.25 * kd[0] + 0.75 * kd[1], rel=1e-5)


def test_sampled_soft_labels_argument_errors():
    f = make_outs(0, MASK).logits
    with pytest.raises(ValueError, match=r"variances: expected the shape of logits \(2, 4, 5\), found \(2, 4, 4\)"):
        sampled_soft_labels(f, f[..., :4].abs(), num_samples=2)
    with pytest.raises(ValueError, match="num_samples: expected an integer >= 1, found 0"):
        sampled_soft_labels(f, f.abs(), num_samples=0)
    with pytest.raises(ValueError, match="temperature: expected > 0, found -1.0"):
        sampled_soft_labels(f, f.abs(), temperature=-1.0, num_samples=2)


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
    with pytest.raises(ValueError, match="KDLossConfig: unknown field 'gamma'"):
        KDLossConfig.from_dict({"gamma": 1.0})


def test_soft_label_config_default_values_and_errors():
    config = KDLossConfig()
    assert config.soft_labels is SoftLabels.SAMPLED and config.num_samples == 10  # the paper's soft labels
    mean = KDLossConfig.from_dict({"soft_labels": "mean_logits", "num_samples": 3})
    assert mean.soft_labels is MEAN and KDLossConfig.from_yaml(mean.to_yaml()) == mean
    with pytest.raises(ValueError, match=r"KDLossConfig.soft_labels: expected one of \['sampled', 'mean_logits'\], "
                                         r"found 'noisy'"):
        KDLossConfig.from_dict({"soft_labels": "noisy"})
    with pytest.raises(TypeError, match="KDLossConfig.soft_labels: expected SoftLabels, found 'sampled'"):
        KDLossConfig(soft_labels="sampled")
    for bad in (0, -2, 2.5, True, "10"):
        # 0 and -2 fail the range check, the others the type check
        with pytest.raises(ValueError, match=rf"KDLossConfig.num_samples: expected an integer( >= 1)?, found {bad!r}"):
            KDLossConfig.from_dict({"num_samples": bad})


def test_posterior_spread_is_not_called_uncertainty():
    """At level=frame the teachers are weighed by their posteriors' spread: the old name is refused."""
    with pytest.raises(ValueError, match="KDLossConfig.weighting: expected posterior_spread .* level=frame, "
                                         "found 'uncertainty'"):
        KDLossConfig.from_dict({"level": "frame", "weighting": "uncertainty"})
    with pytest.raises(ValueError, match="KDLossConfig.weighting: expected uncertainty .* level=token, "
                                         "found 'posterior_spread'"):
        KDLossConfig.from_dict({"weighting": "posterior_spread"})
    config = KDLossConfig.from_dict({"level": "frame", "weighting": "posterior_spread"})
    assert config.weighting is TeacherWeighting.POSTERIOR_SPREAD
    with pytest.raises(ValueError, match="posterior_spread weights are per position"):
        fixed_teacher_weights(config, 2)
