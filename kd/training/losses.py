"""Knowledge-distillation losses with uncertainty matching (Kim et al. 2021).

Kim et al. (2021), "Multi-domain Knowledge Distillation via Uncertainty-Matching for End-to-End
ASR Models", train a student with

    L    = alpha * L_NLL + (1 - alpha) * sum_k r_k L_KD^(k)
    L_KD = beta * tok-KD + (1 - beta) * unc-KD

tok-KD is KL(p || q) of the decoder's token distributions under teacher forcing on the ground
truth, with q = softmax(s / T) the student's softened distribution and p the teacher's soft
labels, and unc-KD the squared distance between the L2-normalised variance vectors of the
teacher's and the student's uncertainty heads, token by token.

Soft labels (`SoftLabels`, ``KDLossConfig.soft_labels``). The paper's teacher distribution is
the one its sampled-softmax loss models (`kd.models.uncertainty`):

    p = (1/S) sum_s softmax(g_s / T),   g_s = f + sigma * eps_s,   eps_s ~ N(0, I)

with f the teacher's mean logits and sigma^2 its uncertainty head's per-class variance
(`sampled_soft_labels`). This is the default (``sampled``); ``mean_logits`` is p = softmax(f / T),
what the toolkit used before 2026-12-07. The noise comes from the generator given to `kd_loss`:
in training the run's noise generator, seeded from the run's seed and saved in every checkpoint,
so a run is reproducible, resumes exactly, and gives the same numbers with cached teacher outputs
(which hold f and sigma^2, not draws) as with online ones.

Frame level (``KDLevel.FRAME``) matches the CTC posteriors instead. CTC branches have no variance
head, so there is no uncertainty to match or to sample from there: the soft labels are the
teacher's softened posteriors (sigma = 0, whatever ``soft_labels`` says), and the second term is
spread-KD, the same normalised distance on the posteriors' spread p * (1 - p) per class
(`posterior_spread`). That spread is a function of the posterior alone, so it carries no
information the KL term does not: it is an extra penalty on the shape of the posteriors, not an
uncertainty. Likewise ``TeacherWeighting.POSTERIOR_SPREAD`` weighs teachers per frame by how
peaked their posteriors are.

Choices this module makes where the paper leaves them open:
- Temperature: both distributions are softened by T and the KL is multiplied by T^2 (Hinton
  et al. 2015) so that gradient sizes do not depend on T. With sampled soft labels T divides
  each noisy logit vector g_s, as in the formula above.
- Averages: every term is a mean over real (unmasked) positions of the batch. In ``kd_loss``
  the KD term can instead be summed over each utterance's positions and divided by the number
  of utterances (``KDReduction.SUM_PER_UTTERANCE``), the normalisation of ESPnet's hybrid loss
  that serves as L_NLL. Mixing a per-token KD mean with ESPnet's per-utterance NLL makes the KD
  term about 1/(tokens per utterance) as strong as alpha says (measured on the built-in corpus:
  NLL ~155 against a KD term of ~0.3, ~1/500), so recipes distilling the hybrid model use the sum.
- Teacher weights r_k are normalised to sum to 1 (per position for the uncertainty and
  posterior-spread modes), so alpha keeps its meaning whatever the number of teachers. See
  `TeacherWeighting`.
- Teacher tensors are detached: gradients reach the student only.
- Frame level: a teacher with another frame rate is resampled to the student's frames (see
  `resample_frames`).
"""

from __future__ import annotations

from kd.core.config import CONFIG, parse_config, with_config
from kd.core.io import load_yaml  # noqa: E402

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

__all__ = [
    "DEFAULT_TEMPERATURE",
    "FrameOutputs",
    "KDLevel",
    "KDLossConfig",
    "KDReduction",
    "SoftLabels",
    "TeacherWeighting",
    "TokenOutputs",
    "ctc_kd",
    "ctc_spread_kd",
    "fixed_teacher_weights",
    "kd_loss",
    "posterior_spread",
    "resample_frames",
    "sampled_soft_labels",
    "token_kd",
    "uncertainty_kd",
    "uncertainty_teacher_weights",
]


# the temperature T of the softened distributions when none is given: KDLossConfig's and every
# loss function's default, written once
DEFAULT_TEMPERATURE = 1.0


class KDLevel(enum.Enum):
    """What the student matches: decoder tokens or CTC frames."""

    TOKEN = "token"  # decoder logits + uncertainty-head variances, teacher-forced
    FRAME = "frame"  # CTC log posteriors, frame rates matched by resampling


class KDReduction(enum.Enum):
    """How the KD term of ``kd_loss`` is reduced over positions (tokens or frames)."""

    MEAN = "mean"  # mean over real positions (the scale of token_kd / uncertainty_kd)
    # sum over real positions divided by the number of utterances: the normalisation of ESPnet's
    # losses without length normalisation, i.e. of AsrOutput.loss, so alpha weighs like with like
    SUM_PER_UTTERANCE = "sum_per_utterance"


class SoftLabels(enum.Enum):
    """The teacher distribution p that token-level KD matches (see the module docstring)."""

    # p = (1/S) sum_s softmax((f + sigma * eps_s) / T), sigma^2 from the teacher's uncertainty
    # head (Kim et al. 2021): the default
    SAMPLED = "sampled"
    MEAN_LOGITS = "mean_logits"  # p = softmax(f / T): the head's variance is not used


class TeacherWeighting(enum.Enum):
    """How the teachers' KD terms are weighted (r_k).

    FIXED: r_k = w_k / sum_j w_j from `KDLossConfig.teacher_weights` (uniform when None).
    DEV_WER: r_k = softmax_k(-WER_k / tau) with WER_k the teacher's dev WER as a fraction and
        tau = `KDLossConfig.wer_temperature`; tau -> 0 picks the best teacher, tau -> inf is
        uniform.
    UNCERTAINTY (level=token): per position i, r_{k,i} = (1 / u_{k,i}) / sum_j (1 / u_{j,i})
        with u_{k,i} = sum_v sigma^2_{k,i,v} + eps the total variance of the teacher's
        uncertainty head: inverse-variance (precision) weighting, so a less uncertain teacher
        counts more, token by token. It does not change when all variances are scaled by one
        factor.
    POSTERIOR_SPREAD (level=frame): the same formula with u_{k,i} = sum_v p_v (1 - p_v) + eps
        = 1 - sum_v p_v^2 + eps, the spread of teacher k's CTC posterior p at frame i: a
        teacher with a more peaked posterior counts more. The CTC branch has no uncertainty
        head; this reads the posterior only.
    """

    FIXED = "fixed"
    DEV_WER = "dev_wer"
    UNCERTAINTY = "uncertainty"
    POSTERIOR_SPREAD = "posterior_spread"


class TokenOutputs(Protocol):
    """Decoder outputs under teacher forcing (`kd.models.asr.AsrOutput` has these)."""

    logits: Tensor  # [batch, length, vocab]
    variances: Tensor | None  # [batch, length, vocab]
    token_mask: Tensor  # [batch, length] bool


class FrameOutputs(Protocol):
    """CTC outputs (`kd.models.asr.AsrOutput` has these)."""

    ctc_log_probs: Tensor | None  # [batch, frames, vocab]
    encoder_lengths: Tensor  # [batch]


_ENUM_FIELDS: dict[str, type[enum.Enum]] = {"level": KDLevel, "weighting": TeacherWeighting,
                                             "reduction": KDReduction, "soft_labels": SoftLabels}


@dataclass(frozen=True)
@with_config(CONFIG)
class KDLossConfig:
    """Weights of L = alpha * NLL + (1 - alpha) * sum_k r_k [beta tok-KD + (1 - beta) unc-KD].

    At level=frame the second term is spread-KD (`ctc_spread_kd`) instead of unc-KD.
    """

    alpha: float = 0.5  # weight of the student's own supervised loss
    # share of tok-KD within the KD term; the rest is unc-KD (level=token) or spread-KD (frame)
    beta: float = 0.5
    temperature: float = DEFAULT_TEMPERATURE  # T of the softened distributions
    level: KDLevel = KDLevel.TOKEN
    # the teacher distribution of tok-KD: the paper's, averaged over noisy logits drawn from the
    # teacher's uncertainty head (needs teachers with one), or softmax of the mean logits. Level
    # frame has no variances: its soft labels are the softened CTC posteriors either way.
    soft_labels: SoftLabels = SoftLabels.SAMPLED
    # SAMPLED: S noise draws per teacher, position and step; 10 as the aleatoric loss's default S
    # (kd.models.asr.AsrConfig.num_noise_samples)
    num_samples: int = 10
    weighting: TeacherWeighting = TeacherWeighting.FIXED
    teacher_weights: tuple[float, ...] | None = None  # FIXED: one per teacher; None = uniform
    dev_wers: tuple[float, ...] | None = None  # DEV_WER: one per teacher, fractions
    wer_temperature: float = 0.05  # DEV_WER: tau, in WER units (0.05 = 5 points)
    variance_eps: float = 1e-8  # UNCERTAINTY, POSTERIOR_SPREAD: added to each teacher's total
    # MEAN: the KD term is a mean per token while the hybrid model's NLL (ESPnet's normalisation)
    # is a sum over an utterance's tokens and frames: with 40-token utterances the KD term then
    # weighs ~1/40 of what alpha says. SUM_PER_UTTERANCE puts both on the same scale.
    reduction: KDReduction = KDReduction.MEAN
    version: int = 1

    def __post_init__(self) -> None:
        for name, kind in _ENUM_FIELDS.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(
                    f"KDLossConfig.{name}: expected {kind.__name__}, found {getattr(self, name)!r}"
                )
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"KDLossConfig.{name}: expected [0, 1], found {value!r}")
        for name in ("temperature", "wer_temperature", "variance_eps"):
            value = getattr(self, name)
            if not value > 0.0:
                raise ValueError(f"KDLossConfig.{name}: expected > 0, found {value!r}")
        n = self.num_samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"KDLossConfig.num_samples: expected an integer >= 1, found {n!r}")
        if self.weighting is TeacherWeighting.UNCERTAINTY and self.level is KDLevel.FRAME:
            raise ValueError(
                "KDLossConfig.weighting: expected posterior_spread for per-frame weights at "
                "level=frame, found 'uncertainty' (it reads the decoder's uncertainty head; the "
                "CTC posterior's spread p * (1 - p) that it used at level=frame is no uncertainty "
                "and is now called posterior_spread)"
            )
        if self.weighting is TeacherWeighting.POSTERIOR_SPREAD and self.level is KDLevel.TOKEN:
            raise ValueError(
                "KDLossConfig.weighting: expected uncertainty for per-token weights at "
                "level=token, found 'posterior_spread' (it is defined for level=frame)"
            )
        if self.teacher_weights is not None:
            weights = self.teacher_weights
            if not weights or min(weights) < 0.0 or sum(weights) <= 0.0:
                raise ValueError(
                    "KDLossConfig.teacher_weights: expected non-negative values with a positive "
                    f"sum, found {weights!r}"
                )
        if self.weighting is TeacherWeighting.DEV_WER:
            if not self.dev_wers or min(self.dev_wers) < 0.0:
                raise ValueError(
                    "KDLossConfig.dev_wers: expected one non-negative WER per teacher for "
                    f"weighting=dev_wer, found {self.dev_wers!r}"
                )
        if self.version != 1:
            raise ValueError(f"KDLossConfig.version: expected 1, found {self.version!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in _ENUM_FIELDS:
            out[name] = out[name].value
        for name in ("teacher_weights", "dev_wers"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "KDLossConfig":
        return parse_config(cls, data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "KDLossConfig":
        data = load_yaml(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"KDLossConfig YAML: expected a mapping, found {type(data).__name__}")
        return cls.from_dict(data)


# ---------------------------------------------------------------- validation helpers


def _check_pair(student: Tensor, teacher: Tensor, names: tuple[str, str]) -> None:
    if student.dim() != 3:
        raise ValueError(
            f"{names[0]}: expected [batch, length, vocab], found {tuple(student.shape)}"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"{names[1]}: expected the shape of {names[0]} {tuple(student.shape)} "
            f"(same batch, length and vocabulary), found {tuple(teacher.shape)}"
        )


def _check_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask: expected dtype torch.bool (True at real tokens), found {mask.dtype}"
        )
    if mask.shape != like.shape[:2]:
        raise ValueError(f"mask: expected shape {tuple(like.shape[:2])}, found {tuple(mask.shape)}")
    return mask


def _masked_mean(values: Tensor, mask: Tensor, *, check: bool = True) -> Tensor:
    """Mean over the True positions. ``check``: raise on a mask without any (reading the count
    makes the host wait for an accelerator); without it such a mask gives 0."""
    count = mask.sum()
    if check and int(count) == 0:
        raise ValueError("mask: expected at least one True position, found none")
    return values.masked_fill(~mask, 0.0).sum() / count.clamp(min=1)


def _lengths_mask(lengths: Tensor, frames: int, name: str) -> Tensor:
    if lengths.dim() != 1:
        raise ValueError(f"{name}: expected shape [batch], found {tuple(lengths.shape)}")
    if int(lengths.min()) < 1 or int(lengths.max()) > frames:
        raise ValueError(f"{name}: expected values in [1, {frames}], found {lengths.tolist()}")
    return torch.arange(frames, device=lengths.device) < lengths.unsqueeze(1)


# ---------------------------------------------------------------- per-position terms


def _kl_per_position(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), `[batch, length]`."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return kl * temperature**2


def _kl_from_probs(student_log_probs: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(p || softmax(s / T)), p as probabilities (zeros allowed), `[batch, length]`."""
    log_q = F.log_softmax(student_log_probs / temperature, dim=-1)
    kl = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_q).sum(-1)
    return kl * temperature**2


def _normalised_distance(student_var: Tensor, teacher_var: Tensor) -> Tensor:
    """||s / ||s|| - t / ||t|| ||^2 per position, `[batch, length]`."""
    s = F.normalize(student_var, p=2.0, dim=-1)
    t = F.normalize(teacher_var.detach(), p=2.0, dim=-1)
    return (s - t).pow(2).sum(-1)


# ---------------------------------------------------------------- token level


def token_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean over real positions of T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    Args:
        student_logits: `[batch, length, vocab]`.
        teacher_logits: `[batch, length, vocab]` (detached here).
        temperature: T > 0.
        mask: bool `[batch, length]`, True at real tokens; all positions when None.

    Returns:
        Scalar tensor (nats).
    """
    _check_pair(student_logits, teacher_logits, ("student_logits", "teacher_logits"))
    if not temperature > 0.0:
        raise ValueError(f"temperature: expected > 0, found {temperature!r}")
    mask = _check_mask(mask, student_logits)
    return _masked_mean(_kl_per_position(student_logits, teacher_logits, temperature), mask)


def sampled_soft_labels(
    logits: Tensor,
    variances: Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The paper's teacher distribution p = (1/S) sum_s softmax(g_s / T), g_s = f + sigma * eps_s.

    sigma = sqrt(variances), the parametrisation of `kd.models.uncertainty.UncertaintyHead`
    (softplus gives sigma^2). The S draws eps_s ~ N(0, I) are made in order s = 1..S, each as
    ``torch.randn(logits.shape, generator=generator)``, one `[..., vocab]` tensor at a time (not
    S of them). The mean is a running mean m_s = m_{s-1} + (q_s - m_{s-1}) / s, which is exact
    when every q_s is the same: zero variances give softmax(f / T) to the last bit.

    Args:
        logits: the teacher's mean logits f `[..., vocab]` (detached here).
        variances: sigma^2 `[..., vocab]`, the shape of `logits` (detached here).
        temperature: T > 0.
        num_samples: S >= 1.
        generator: random generator on the logits' device; None: torch's global one.

    Returns:
        Probabilities `[..., vocab]` (the dtype of `logits`), summing to 1 over the vocabulary.
    """
    if logits.shape != variances.shape:
        raise ValueError(
            f"variances: expected the shape of logits {tuple(logits.shape)}, "
            f"found {tuple(variances.shape)}"
        )
    if not temperature > 0.0:
        raise ValueError(f"temperature: expected > 0, found {temperature!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected an integer >= 1, found {num_samples!r}")
    f = logits.detach()
    # no floor on the variance (unlike the aleatoric loss): no gradient flows through sigma here
    sigma = variances.detach().to(f.dtype).clamp_min(0.0).sqrt()
    mean = None
    for s in range(1, num_samples + 1):
        eps = torch.randn(f.shape, generator=generator, device=f.device, dtype=f.dtype)
        q = F.softmax((f + sigma * eps) / temperature, dim=-1)
        mean = q if mean is None else mean + (q - mean) / s
    return mean


def uncertainty_kd(
    student_var: Tensor, teacher_var: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    """Mean over real positions of the squared L2 distance of the L2-normalised variance vectors.

    Args:
        student_var: uncertainty-head variances `[batch, length, vocab]`.
        teacher_var: `[batch, length, vocab]` (detached here).
        mask: bool `[batch, length]`, True at real tokens; all positions when None.

    Returns:
        Scalar tensor in [0, 4] (0 to 2 for non-negative variances).
    """
    _check_pair(student_var, teacher_var, ("student_var", "teacher_var"))
    mask = _check_mask(mask, student_var)
    return _masked_mean(_normalised_distance(student_var, teacher_var), mask)


# ---------------------------------------------------------------- frame level


def resample_frames(
    values: Tensor, source_lengths: Tensor, target_lengths: Tensor, target_frames: int
) -> Tensor:
    """Linear interpolation along time from each utterance's source length to its target length.

    Target frame j of an utterance with n source and m target frames samples the source at
    x = (j + 0.5) * n / m - 0.5 (frame centres aligned, as `align_corners=False`), clamped to
    [0, n - 1], between frames floor(x) and floor(x) + 1. Frames past the target length are
    filled the same way and are meant to be masked.

    Args:
        values: `[batch, source_frames, dim]`.
        source_lengths: valid source frames `[batch]`.
        target_lengths: valid target frames `[batch]`.
        target_frames: padded target length (>= max target length).

    Returns:
        `[batch, target_frames, dim]`.
    """
    src = source_lengths.to(torch.float64).unsqueeze(1)  # (B, 1)
    tgt = target_lengths.to(torch.float64).unsqueeze(1)
    j = torch.arange(target_frames, device=values.device, dtype=torch.float64).unsqueeze(0)
    x = ((j + 0.5) * src / tgt - 0.5).clamp(min=0.0)
    x = torch.minimum(x, src - 1.0)  # (B, T_target)
    lo = x.floor().long()
    hi = torch.minimum(lo + 1, source_lengths.unsqueeze(1).long() - 1)
    w = (x - lo.to(torch.float64)).to(values.dtype).unsqueeze(-1)
    dim = values.size(-1)
    v_lo = values.gather(1, lo.unsqueeze(-1).expand(-1, -1, dim))
    v_hi = values.gather(1, hi.unsqueeze(-1).expand(-1, -1, dim))
    return (1.0 - w) * v_lo + w * v_hi


def posterior_spread(log_probs: Tensor) -> Tensor:
    """Per-class spread p * (1 - p) of a categorical posterior p, `[..., vocab]`.

    The variance of the indicator of class v when a class is drawn from p: a function of p
    alone, not an uncertainty estimate (see the module docstring). Its sum over the classes
    is 1 - sum_v p_v^2.
    """
    p = log_probs.exp()
    return p * (1.0 - p)


def _frame_inputs(
    student: Tensor,
    teacher: Tensor,
    student_lengths: Tensor,
    teacher_lengths: Tensor,
    names: tuple[str, str],
) -> Tensor:
    """Validate a student/teacher frame pair; the student's valid-frame mask `[batch, frames]`."""
    for name, tensor in zip(names, (student, teacher)):
        if tensor.dim() != 3:
            raise ValueError(
                f"{name}: expected [batch, frames, vocab], found {tuple(tensor.shape)}"
            )
    if student.size(0) != teacher.size(0) or student.size(2) != teacher.size(2):
        raise ValueError(
            f"{names[1]}: expected batch {student.size(0)} and vocabulary {student.size(2)} "
            f"as {names[0]}, found {tuple(teacher.shape)}"
        )
    batch = student.size(0)
    pairs = (("student_lengths", student_lengths), ("teacher_lengths", teacher_lengths))
    for name, lengths in pairs:
        if lengths.shape != (batch,):
            raise ValueError(f"{name}: expected shape ({batch},), found {tuple(lengths.shape)}")
    _lengths_mask(teacher_lengths, teacher.size(1), "teacher_lengths")
    return _lengths_mask(student_lengths, student.size(1), "student_lengths")


def _to_student_frames(
    values: Tensor, teacher_lengths: Tensor, student_lengths: Tensor, student_frames: int
) -> Tensor:
    if values.size(1) == student_frames and torch.equal(teacher_lengths, student_lengths):
        return values
    return resample_frames(values, teacher_lengths, student_lengths, student_frames)


def ctc_kd(
    student_log_probs: Tensor,
    teacher_log_probs: Tensor,
    *,
    student_lengths: Tensor,
    teacher_lengths: Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
) -> Tensor:
    """Mean over the student's valid frames of T^2 * KL(teacher || student) of CTC posteriors.

    The teacher's posteriors are softened at its own frame rate, then, when its frame count
    differs from the student's, resampled to the student's frames by linear interpolation of
    the probabilities (`resample_frames`) and renormalised (a convex combination of two
    distributions is one; renormalising only removes rounding).

    Args:
        student_log_probs: `[batch, student_frames, vocab]` log posteriors (or logits).
        teacher_log_probs: `[batch, teacher_frames, vocab]` (detached here).
        student_lengths: valid student frames `[batch]`.
        teacher_lengths: valid teacher frames `[batch]`.
        temperature: T > 0.

    Returns:
        Scalar tensor (nats).
    """
    mask = _frame_inputs(
        student_log_probs, teacher_log_probs, student_lengths, teacher_lengths,
        ("student_log_probs", "teacher_log_probs"),
    )  # fmt: skip
    if not temperature > 0.0:
        raise ValueError(f"temperature: expected > 0, found {temperature!r}")
    teacher_probs = _teacher_frame_probs(
        teacher_log_probs, teacher_lengths, student_lengths, student_log_probs.size(1), temperature
    )
    return _masked_mean(_kl_from_probs(student_log_probs, teacher_probs, temperature), mask)


def _teacher_frame_probs(
    teacher_log_probs: Tensor,
    teacher_lengths: Tensor,
    student_lengths: Tensor,
    frames: int,
    temperature: float,
) -> Tensor:
    """Softened teacher posteriors on the student's frames `[batch, frames, vocab]`."""
    probs = F.softmax(teacher_log_probs.detach() / temperature, dim=-1)
    resampled = _to_student_frames(probs, teacher_lengths, student_lengths, frames)
    if resampled is probs:
        return probs
    return resampled / resampled.sum(-1, keepdim=True)


def ctc_spread_kd(
    student_spread: Tensor,
    teacher_spread: Tensor,
    *,
    student_lengths: Tensor,
    teacher_lengths: Tensor,
) -> Tensor:
    """Spread-KD: the normalised distance of `uncertainty_kd` between per-frame spread vectors,
    after resampling the teacher in time.

    Args:
        student_spread: `[batch, student_frames, vocab]`, `posterior_spread(student_log_probs)`.
        teacher_spread: `[batch, teacher_frames, vocab]` (detached here; linearly resampled to
            the student's frames when the frame counts differ).
        student_lengths: valid student frames `[batch]`.
        teacher_lengths: valid teacher frames `[batch]`.

    Returns:
        Scalar tensor.
    """
    mask = _frame_inputs(
        student_spread, teacher_spread, student_lengths, teacher_lengths,
        ("student_spread", "teacher_spread"),
    )  # fmt: skip
    teacher = _to_student_frames(
        teacher_spread.detach(), teacher_lengths, student_lengths, student_spread.size(1)
    )
    return _masked_mean(_normalised_distance(student_spread, teacher), mask)


# ---------------------------------------------------------------- teacher weights


def fixed_teacher_weights(config: KDLossConfig, num_teachers: int) -> Tensor:
    """r_k for the FIXED and DEV_WER modes (see `TeacherWeighting`), float64 `[num_teachers]`."""
    if config.weighting in (TeacherWeighting.UNCERTAINTY, TeacherWeighting.POSTERIOR_SPREAD):
        raise ValueError(
            f"config.weighting: {config.weighting.value} weights are per position; they are "
            "computed inside kd_loss (uncertainty_teacher_weights for the uncertainty mode)"
        )
    if config.weighting is TeacherWeighting.DEV_WER:
        wers = config.dev_wers
        if wers is None or len(wers) != num_teachers:
            raise ValueError(f"config.dev_wers: expected {num_teachers} values, found {wers!r}")
        wers_t = torch.tensor(wers, dtype=torch.float64)
        return torch.softmax(-wers_t / config.wer_temperature, dim=0)
    if config.teacher_weights is None:
        return torch.full((num_teachers,), 1.0 / num_teachers, dtype=torch.float64)
    if len(config.teacher_weights) != num_teachers:
        raise ValueError(
            f"config.teacher_weights: expected {num_teachers} values, "
            f"found {config.teacher_weights!r}"
        )
    weights = torch.tensor(config.teacher_weights, dtype=torch.float64)
    return weights / weights.sum()


def uncertainty_teacher_weights(teacher_vars: Sequence[Tensor], *, eps: float = 1e-8) -> Tensor:
    """Per-position inverse-total-variance weights normalised over teachers (UNCERTAINTY).

    Args:
        teacher_vars: K tensors `[batch, length, vocab]` of uncertainty-head variances.
        eps: added to each total variance.

    Returns:
        `[K, batch, length]`, non-negative, summing to 1 over K at every position.
    """
    return _inverse_total_weights(teacher_vars, eps, "teacher_vars")


def _inverse_total_weights(vectors: Sequence[Tensor], eps: float, name: str) -> Tensor:
    """r_k = (1 / (sum_v x_k + eps)) / sum_j (1 / (sum_v x_j + eps)) per position, `[K, batch, length]`,
    for K tensors x_k `[batch, length, vocab]`: variances (UNCERTAINTY) or spreads (POSTERIOR_SPREAD)."""
    if not vectors:
        raise ValueError(f"{name}: expected at least one tensor, found none")
    totals = torch.stack([v.detach().sum(-1) for v in vectors])  # (K, B, L)
    precision = 1.0 / (totals + eps)
    return precision / precision.sum(0, keepdim=True)


# ---------------------------------------------------------------- combined loss


def kd_loss(
    student_out: TokenOutputs | FrameOutputs,
    teacher_outs: Sequence[TokenOutputs | FrameOutputs],
    nll: Tensor,
    config: KDLossConfig,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = alpha * nll + (1 - alpha) * sum_k r_k [beta * tok-KD_k + (1 - beta) * unc-KD_k].

    At level=frame spread-KD (`ctc_spread_kd`) takes the place of unc-KD.

    Args:
        student_out: student outputs (`TokenOutputs` for KDLevel.TOKEN, `FrameOutputs` for
            KDLevel.FRAME); for example a `kd.models.asr.AsrOutput`.
        teacher_outs: K >= 1 teacher outputs on the same batch.
        nll: the student's scalar supervised loss (for the hybrid model, `AsrOutput.loss`).
        config: weights and modes.
        generator: draws the noise of sampled soft labels (level=token, soft_labels=sampled),
            teacher after teacher (`sampled_soft_labels`), on the teachers' device; None:
            torch's global generator. Not used otherwise.

    Returns:
        The scalar loss and detached parts: `nll`, `kd`, `tok_kd`, `unc_kd` (teacher-weighted),
        and per teacher k `tok_kd/k`, `unc_kd/k` and `weight/k` (mean r_k over positions).
        At level=frame `spread_kd` and `spread_kd/k` take the place of the `unc_kd` entries.
        `unc_kd` and `spread_kd` entries are absent when beta = 1.

    The means over positions do not read the number of positions back to the host (that would
    make it wait for an accelerator every step): a mask without any True position gives a KD
    term of 0. The training loop's batches always have one (``AsrModel.check_batch``).
    """
    if len(teacher_outs) == 0:
        raise ValueError("teacher_outs: expected at least one teacher, found none")
    if nll.dim() != 0:
        raise ValueError(f"nll: expected a scalar tensor, found shape {tuple(nll.shape)}")
    need_second = config.beta < 1.0
    if config.level is KDLevel.TOKEN:
        second_name = "unc_kd"
        mask, tok, second, totals = _token_terms(student_out, teacher_outs, config, need_second, generator)
    else:
        second_name = "spread_kd"
        mask, tok, second, totals = _frame_terms(student_out, teacher_outs, config, need_second)

    if config.weighting in (TeacherWeighting.UNCERTAINTY, TeacherWeighting.POSTERIOR_SPREAD):
        weights = _inverse_total_weights(totals, config.variance_eps, "teacher_outs")
    else:
        fixed = fixed_teacher_weights(config, len(teacher_outs))
        weights = fixed.to(tok[0].dtype).to(tok[0].device)[:, None, None].expand(-1, *mask.shape)

    per_teacher = [
        config.beta * tok[k] + ((1.0 - config.beta) * second[k] if need_second else 0.0)
        for k in range(len(teacher_outs))
    ]
    # the sum over real positions, divided by their number (MEAN) or by the number of utterances
    denominator = mask.size(0) if config.reduction is KDReduction.SUM_PER_UTTERANCE else mask.sum().clamp(min=1)
    kd = sum(w * term for w, term in zip(weights, per_teacher)).masked_fill(~mask, 0.0).sum() / denominator
    loss = config.alpha * nll + (1.0 - config.alpha) * kd

    # kd: the term as it enters the loss; tok_kd, unc_kd / spread_kd and the per-teacher parts:
    # means per position
    parts = {"nll": nll.detach(), "kd": kd.detach()}
    with torch.no_grad():
        parts["tok_kd"] = _masked_mean(sum(w * t for w, t in zip(weights, tok)), mask, check=False)
        if need_second:
            parts[second_name] = _masked_mean(sum(w * u for w, u in zip(weights, second)), mask, check=False)
        for k in range(len(teacher_outs)):
            parts[f"tok_kd/{k}"] = _masked_mean(tok[k], mask, check=False)
            if need_second:
                parts[f"{second_name}/{k}"] = _masked_mean(second[k], mask, check=False)
            parts[f"weight/{k}"] = _masked_mean(weights[k], mask, check=False)
    return loss, parts


def _token_terms(
    student: TokenOutputs,
    teachers: Sequence[TokenOutputs],
    config: KDLossConfig,
    need_unc: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """Mask, per-teacher tok-KD and unc-KD `[batch, length]`, and the variances for weighting."""
    mask = _check_mask(student.token_mask, student.logits)
    sampled = config.soft_labels is SoftLabels.SAMPLED
    weighted = config.weighting is TeacherWeighting.UNCERTAINTY
    # what reads the teachers' variances (named in the error for a teacher without them)
    uses = [use for use, on in (("soft_labels=sampled", sampled), ("beta < 1 (unc-KD)", need_unc),
                                ("weighting=uncertainty", weighted)) if on]
    if need_unc and student.variances is None:
        raise ValueError(
            "student_out.variances: expected a tensor for beta < 1 (unc-KD), found None"
        )
    tok, unc, teacher_vars = [], [], []
    for k, teacher in enumerate(teachers):
        names = ("student_out.logits", f"teacher_outs[{k}].logits")
        _check_pair(student.logits, teacher.logits, names)
        if not torch.equal(_check_mask(teacher.token_mask, teacher.logits), mask):
            raise ValueError(
                f"teacher_outs[{k}].token_mask: expected the student's mask (same batch and "
                "targets), found a different one"
            )
        if uses and teacher.variances is None:
            raise ValueError(
                f"teacher_outs[{k}].variances: expected a tensor (from the teacher's uncertainty "
                f"head) for {' and '.join(uses)}, found None"
            )
        if uses:
            _check_pair(teacher.logits, teacher.variances,
                        (f"teacher_outs[{k}].logits", f"teacher_outs[{k}].variances"))
        if sampled:
            probs = sampled_soft_labels(teacher.logits, teacher.variances, temperature=config.temperature,
                                        num_samples=config.num_samples, generator=generator)
            tok.append(_kl_from_probs(student.logits, probs, config.temperature))
        else:
            tok.append(_kl_per_position(student.logits, teacher.logits, config.temperature))
        if need_unc:
            names = ("student_out.variances", f"teacher_outs[{k}].variances")
            _check_pair(student.variances, teacher.variances, names)
            unc.append(_normalised_distance(student.variances, teacher.variances))
        if weighted:
            teacher_vars.append(teacher.variances)
    return mask, tok, unc, teacher_vars


def _frame_terms(
    student: FrameOutputs, teachers: Sequence[FrameOutputs], config: KDLossConfig, need_spread: bool
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """Mask, per-teacher tok-KD and spread-KD `[batch, frames]`, and the teachers' spreads for
    weighting. No noise is drawn: the CTC branch has no variances (soft labels: sigma = 0)."""
    if student.ctc_log_probs is None:
        raise ValueError("student_out.ctc_log_probs: expected a tensor for level=frame, found None")
    s_lp, s_len = student.ctc_log_probs, student.encoder_lengths
    s_spread = posterior_spread(s_lp) if need_spread else None
    tok, spread, teacher_spreads = [], [], []
    mask = None
    for k, teacher in enumerate(teachers):
        if teacher.ctc_log_probs is None:
            raise ValueError(
                f"teacher_outs[{k}].ctc_log_probs: expected a tensor for level=frame, found None"
            )
        t_lp, t_len = teacher.ctc_log_probs, teacher.encoder_lengths
        names = ("student_out.ctc_log_probs", f"teacher_outs[{k}].ctc_log_probs")
        mask = _frame_inputs(s_lp, t_lp, s_len, t_len, names)
        probs = _teacher_frame_probs(t_lp, t_len, s_len, s_lp.size(1), config.temperature)
        tok.append(_kl_from_probs(s_lp, probs, config.temperature))
        if need_spread or config.weighting is TeacherWeighting.POSTERIOR_SPREAD:
            # spread of the unsoftened (T = 1) posteriors, on the student's frames
            t_spread = posterior_spread(t_lp.detach())
            t_spread = _to_student_frames(t_spread, t_len, s_len, s_lp.size(1))
            teacher_spreads.append(t_spread)
            if need_spread:
                spread.append(_normalised_distance(s_spread, t_spread))
    assert mask is not None
    return mask, tok, spread, teacher_spreads
