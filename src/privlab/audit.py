r"""Empirical privacy auditing of DP-SGD: canaries, many runs or one run, a lower bound on epsilon.

**Many runs** (Jagielski, Ullman, Oprea 2020, arXiv:2006.07709; Nasr et al.
2021, arXiv:2101.04535). Train :math:`R` times with a canary and :math:`R`
times without it, score every run, threshold the score: with :math:`\mathrm{TP}`
runs with the canary and :math:`\mathrm{FP}` runs without it above the
threshold, an :math:`(\varepsilon, \delta)`-DP training satisfies

.. math::
    \varepsilon \;\ge\; \ln\frac{\underline{\mathrm{TPR}} - \delta}{\overline{\mathrm{FPR}}}

with Clopper-Pearson bounds :math:`\underline{\mathrm{TPR}}, \overline{\mathrm{FPR}}`
(:func:`privlab.audit_mechanisms.epsilon_lower_bound`). The threshold is chosen
on separate pilot runs, so the bound holds with probability :math:`\ge 1-\alpha`.

**The canary.** A *Dirac gradient canary* (Nasr et al. 2023, arXiv:2302.07956):
an example whose gradient is :math:`a\,e_0`, a fixed direction no other example
touches (the other gradients are orthogonal to it, the worst case for privacy),
with :math:`a` = ``canary_norm`` :math:`> C` so that clipping matters. The run
is DP-SGD in gradient space, vectorised over the :math:`R` runs and the
:math:`T` steps, and it goes through the optimizer's own named stages
(:meth:`~privlab.dpsgd.DPOptimizer.clip_factors`, ``add_noise`` with its
``noise_std``, ``scale``), so a bug planted by subclassing
:class:`privlab.dpsgd.DPOptimizer` is audited exactly as it would train. The
auditor sees every update :math:`\tilde g_t` (white box) and scores a run by
the log-likelihood ratio of the *claimed* algorithm, with
:math:`u_t = qN\,\tilde g_t[0]` and :math:`s = \sigma C`,

.. math::
    \text{Poisson: } \sum_t \ln\bigl(1 - q + q\, e^{(C u_t - C^2/2)/s^2}\bigr),
    \qquad \text{shuffle: } \sum_{\text{epochs}} \ln \tfrac{1}{T_e} \sum_{t \in \text{epoch}} e^{(C u_t - C^2/2)/s^2}.

**One run** (Steinke, Nasr, Jagielski 2023, arXiv:2305.08846). :math:`m`
canaries, each included independently with probability 1/2, in *one* training
run; guess "in" for the :math:`k_+` highest scores and "out" for the
:math:`k_-` lowest; :math:`v` correct of :math:`r = k_+ + k_-` guesses. Their main
result for :math:`(\varepsilon, \delta)`-DP bounds the tail of :math:`v`; the
p-value is their Appendix D algorithm (``p_value_DP_audit``, arXiv:2305.08846v1
pp. 45-46), which :func:`one_run_p_value` reproduces line for line, and
:func:`one_run_epsilon_lower_bound` inverts it as their ``get_eps_audit`` does.

Planted bugs (:data:`PLANTED_BUGS`): noise off, clipping off, noise std
:math:`C/(qN)` instead of :math:`\sigma C`, and shuffled batches accounted as
Poisson (Chua et al. 2024, arXiv:2403.17673).

Used in: chapter 11.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom

from privlab._validate import check_delta, check_int, check_positive, check_probability
from privlab.audit_mechanisms import choose_threshold, epsilon_lower_bound
from privlab.dpsgd import DPOptimizer

__all__ = [
    "PLANTED_BUGS",
    "DPSGDAuditResult",
    "NoClipOptimizer",
    "NoNoiseOptimizer",
    "OneRunAuditResult",
    "WrongNoiseScaleOptimizer",
    "audit_dpsgd",
    "audit_result",
    "canary_scores",
    "one_run_audit_dpsgd",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
]


# ----- planted bugs ---------------------------------------------------------------------------
class NoNoiseOptimizer(DPOptimizer):
    """Planted bug: ``add_noise`` returns its input (the accountant still claims sigma)."""

    def add_noise(self, grads):
        return grads


class NoClipOptimizer(DPOptimizer):
    """Planted bug: ``clip_factors`` returns ones (no clipping)."""

    def clip_factors(self, norms):
        return torch.ones_like(norms)


class WrongNoiseScaleOptimizer(DPOptimizer):
    r"""Planted bug: noise std :math:`C/(qN)` (the scale of the *averaged* gradient) instead of :math:`\sigma C`."""

    def noise_std(self):
        return self.max_grad_norm / self.expected_batch_size


#: name -> (optimizer class, sampler) of each planted bug; ``"honest"`` is the reference.
PLANTED_BUGS = {
    "honest": (DPOptimizer, "poisson"),
    "no noise": (NoNoiseOptimizer, "poisson"),
    "no clipping": (NoClipOptimizer, "poisson"),
    "noise C/B": (WrongNoiseScaleOptimizer, "poisson"),
    "shuffle as Poisson": (DPOptimizer, "shuffle"),
}

SAMPLERS = ("poisson", "shuffle")


def _check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return sampler


def _presence(shape_runs: tuple, *, steps: int, sample_rate: float, sampler: str, included: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
    """(T, *runs) 0/1: is the canary in step t's batch (given it is in the data set: ``included``)."""
    if sampler == "poisson":
        hit = torch.rand((steps, *shape_runs), generator=generator, dtype=torch.float64) < sample_rate
    else:
        per_epoch = max(1, round(1 / sample_rate))
        epochs = math.ceil(steps / per_epoch)
        pos = torch.randint(0, per_epoch, (epochs, *shape_runs), generator=generator)
        t = torch.arange(steps)
        hit = (t % per_epoch).view(steps, *[1] * len(shape_runs)) == pos[t // per_epoch]
    return (hit & included).to(torch.float64)


def _background_counts(presence: torch.Tensor, *, present: bool, batch_size: int, sample_rate: float,
                       sampler: str, generator: torch.Generator) -> torch.Tensor:
    """(T, R) number of background examples in each batch; the data set has ``N = b * round(1/q)`` examples with
    the canary, ``N - 1`` without it (add/remove neighbours)."""
    per_epoch = max(1, round(1 / sample_rate))
    n_bg = batch_size * per_epoch - 1  # background examples (both worlds)
    if sampler == "poisson":
        return torch.binomial(torch.full(presence.shape, float(n_bg), dtype=torch.float64),
                              torch.full(presence.shape, sample_rate, dtype=torch.float64), generator=generator)
    if present:  # fixed-size batches; the canary takes one slot of its batch
        return batch_size - presence
    counts = torch.full(presence.shape, float(batch_size), dtype=torch.float64)
    last = torch.arange(presence.shape[0]) % per_epoch == per_epoch - 1
    counts[last] = float(n_bg - (per_epoch - 1) * batch_size)  # the short last batch of N - 1 examples
    return counts


def _run_gradient_dpsgd(dp: DPOptimizer, presence: torch.Tensor, canary_norm: float,
                        background: torch.Tensor | None = None) -> torch.Tensor:
    """Updates, unscaled by the lot size, through the optimizer's clip, noise and scale stages.

    The canary's gradient is ``canary_norm * e_0``; each background example's is ``-C e_1`` (``background``
    holds their counts per batch). Returns ``(T, R)`` (canary coordinate) or ``(T, R, 2)`` with background.
    """
    c = dp.max_grad_norm
    norms = torch.full_like(presence, canary_norm)
    factors = dp.clip_factors(norms.reshape(-1)).reshape(presence.shape).to(torch.float64)
    canary = presence * factors * canary_norm  # the canary's clipped gradient, where it is in the batch
    if background is None:
        summed = canary
    else:
        f_bg = dp.clip_factors(torch.full_like(presence, c).reshape(-1)).reshape(presence.shape).to(torch.float64)
        summed = torch.stack([canary, -background * f_bg * c], dim=-1)
    noisy = dp.add_noise([summed])
    return dp.scale(noisy)[0] * dp.expected_batch_size  # the auditor knows qN


def canary_scores(updates: torch.Tensor, *, noise_multiplier: float, max_grad_norm: float, sample_rate: float,
                  sampler: str, batch_size: int | None = None) -> np.ndarray:
    r"""Log-likelihood-ratio score of each run from its updates ``(T, R)`` or ``(T, R, 2)``; higher: "canary in".

    Uses the *claimed* noise :math:`s = \sigma C` (see the module docstring). For ``"shuffle"`` with the
    background coordinate, each epoch's last batch adds the evidence of its size (``b`` with the canary,
    ``b - 1`` without it).
    """
    s2 = (noise_multiplier * max_grad_norm) ** 2
    c = max_grad_norm
    u0 = updates[..., 0] if updates.ndim == 3 else updates
    log_lr = (c * u0 - c * c / 2) / s2  # per step, canary in the batch vs not
    if _check_sampler(sampler) == "poisson":
        q = sample_rate
        score = torch.logaddexp(torch.full_like(log_lr, math.log1p(-q)), log_lr + math.log(q)).sum(0)
    else:
        per_epoch = max(1, round(1 / sample_rate))
        steps = log_lr.shape[0]
        score = torch.zeros(log_lr.shape[1:], dtype=log_lr.dtype)
        for start in range(0, steps, per_epoch):
            block = log_lr[start:start + per_epoch]
            score = score + torch.logsumexp(block, 0) - math.log(block.shape[0])
            if updates.ndim == 3 and block.shape[0] == per_epoch and batch_size is not None:
                u1 = updates[start + per_epoch - 1, ..., 1]  # last batch: b background (in) vs b - 1 (out)
                score = score - (c * u1 + (batch_size - 0.5) * c * c) / s2
    return score.numpy()


def _optimizer(cls, *, noise_multiplier, max_grad_norm, batch_size, generator) -> DPOptimizer:
    param = torch.zeros(1, requires_grad=True)
    return cls(torch.optim.SGD([param], lr=1.0), noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
               expected_batch_size=float(batch_size), generator=generator)


@dataclass(frozen=True)
class DPSGDAuditResult:
    """The outcome of :func:`audit_dpsgd` (``caught``: the lower bound exceeds the accountant's epsilon)."""

    epsilon_lower: float
    epsilon_accountant: float
    caught: bool
    tp: int
    fp: int
    n_runs: int
    threshold: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    sampler: str
    optimizer: str
    alpha: float


def audit_dpsgd(
    dp_optimizer_cls: type[DPOptimizer] = DPOptimizer, *, noise_multiplier: float, max_grad_norm: float = 1.0,
    sample_rate: float, steps: int, delta: float, n_runs: int, generator: torch.Generator,
    sampler: str = "poisson", accountant: str = "pld", canary_norm: float | None = None, alpha: float = 0.05,
    n_pilot: int | None = None, batch_size: int = 10,
) -> DPSGDAuditResult:  # fmt: skip
    r"""Audit DP-SGD with a Dirac gradient canary over ``n_runs`` runs with and without it.

    The accountant's claim is :math:`\varepsilon(\sigma, q, T, \delta)` of Poisson-sampled
    DP-SGD (:func:`privlab.accounting.epsilon`), whatever ``sampler`` really runs.

    Args:
        dp_optimizer_cls: :class:`privlab.dpsgd.DPOptimizer` or a subclass (a planted bug).
        noise_multiplier: :math:`\sigma > 0` (claimed).
        max_grad_norm: :math:`C > 0`.
        sample_rate: :math:`q \in (0, 1]`; an epoch is :math:`\mathrm{round}(1/q)` steps.
        steps: :math:`T`.
        delta: :math:`\delta \in (0, 1)`.
        n_runs: :math:`R` runs per world (plus ``n_pilot`` pilot runs to choose the threshold).
        generator: ``torch.Generator``, the only source of randomness.
        sampler: ``"poisson"`` or ``"shuffle"`` (what the implementation actually does).
        accountant: ``"pld"`` or ``"rdp"``.
        canary_norm: the canary gradient's norm, default :math:`10 C`.
        alpha: the bound holds with probability :math:`\ge 1 - \alpha`.
        n_pilot: pilot runs per world, default ``max(200, n_runs // 4)``.
        batch_size: :math:`b = qN \ge 2`; the data set holds :math:`N = b\,\mathrm{round}(1/q)` examples
            with the canary (:math:`N - 1` background examples of gradient :math:`-C e_1`, known to the
            auditor), :math:`N - 1` without it.

    Returns:
        :class:`DPSGDAuditResult`.

    Raises:
        ValueError: naming the bad argument.

    Reference: Jagielski et al. 2020 (arXiv:2006.07709); Nasr et al. 2021 (arXiv:2101.04535), 2023 (arXiv:2302.07956).

    >>> r = audit_dpsgd(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5, n_runs=500,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> r.caught
    False

    Used in: chapter 11.
    """
    from privlab.accounting import epsilon

    sigma = check_positive("noise_multiplier", noise_multiplier)
    c = check_positive("max_grad_norm", max_grad_norm)
    q = check_probability("sample_rate", sample_rate)
    steps, n_runs = check_int("steps", steps), check_int("n_runs", n_runs)
    delta = check_delta(delta)
    _check_sampler(sampler)
    a = 10 * c if canary_norm is None else check_positive("canary_norm", canary_norm)
    n_pilot = max(200, n_runs // 4) if n_pilot is None else check_int("n_pilot", n_pilot)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    eps_claim = float(epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant))
    b = check_int("batch_size", batch_size, minimum=2)
    dp = _optimizer(dp_optimizer_cls, noise_multiplier=sigma, max_grad_norm=c, batch_size=b, generator=generator)

    def scores(present: bool, n: int) -> np.ndarray:
        included = torch.full((n,), present, dtype=torch.bool)
        pres = _presence((n,), steps=steps, sample_rate=q, sampler=sampler, included=included, generator=generator)
        bg = _background_counts(pres, present=present, batch_size=b, sample_rate=q, sampler=sampler,
                                generator=generator)
        upd = _run_gradient_dpsgd(dp, pres, a, bg)
        return canary_scores(upd, noise_multiplier=sigma, max_grad_norm=c, sample_rate=q, sampler=sampler,
                             batch_size=b)

    # pilot: choose the threshold (and so the set) before the main runs are seen
    threshold = choose_threshold(scores(True, n_pilot), scores(False, n_pilot), delta=delta, alpha=alpha,
                                 midpoints=False)
    return audit_result(scores(True, n_runs), scores(False, n_runs), threshold, epsilon_accountant=eps_claim,
                        alpha=alpha, noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, sampler=sampler,
                        optimizer=dp_optimizer_cls.__name__)


def audit_result(s_in: np.ndarray, s_out: np.ndarray, threshold: float, *, epsilon_accountant: float,
                 alpha: float, delta: float, **run) -> DPSGDAuditResult:  # fmt: skip
    """Score the main runs against a pilot-chosen threshold: counts, the lower bound, the verdict.

    ``run`` holds the descriptive fields of :class:`DPSGDAuditResult` (noise multiplier,
    sample rate, steps, sampler, optimizer).
    """
    n_runs = s_in.size
    tp, fp = int(np.sum(s_in >= threshold)), int(np.sum(s_out >= threshold))
    lower = float(epsilon_lower_bound(tp, fp, n_runs, s_out.size, delta=delta, alpha=alpha))
    return DPSGDAuditResult(
        epsilon_lower=lower, epsilon_accountant=epsilon_accountant, caught=lower > epsilon_accountant, tp=tp, fp=fp,
        n_runs=n_runs, threshold=threshold, delta=delta, alpha=alpha, **run)


# ----- one run: Steinke, Nasr, Jagielski 2023 ---------------------------------------------------
def one_run_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    r"""Upper bound on :math:`\Pr[\text{at least } v \text{ of } r \text{ guesses correct}]` under :math:`(\varepsilon, \delta)`-DP.

    With :math:`p = e^\varepsilon / (1 + e^\varepsilon)`, the bound of Steinke, Nasr, Jagielski 2023
    (arXiv:2305.08846v1) for :math:`(\varepsilon, \delta)`-DP as their Appendix D computes it
    (``p_value_DP_audit``, pp. 45-46; the approximate-DP tail bound of their Section 5, Corollary 5.4):

    .. math::
        \Pr[W \ge v] \le \Pr[\mathrm{Bin}(r, p) \ge v]
        + 2 m \delta \max_{1 \le i \le v} \tfrac{1}{i} \Pr[v - i \le \mathrm{Bin}(r, p) < v].

    >>> round(one_run_p_value(m=100, r=100, v=50, epsilon=0.0, delta=0.0), 3)
    0.54

    Used in: chapter 11.
    """
    m, r = check_int("m", m), check_int("r", r)
    v = check_int("v", v, minimum=0)
    if not v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    delta = check_delta(delta, allow_zero=True)
    p = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(binom.sf(v - 1, r, p))
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    pmf = binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[Bin = v - i], i = 1..v
    alpha_ = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(beta + alpha_ * delta * 2 * m, 1.0)


def one_run_epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    r"""The largest :math:`\varepsilon` that :func:`one_run_p_value` rejects at level ``beta`` (bisection).

    Holds with probability :math:`\ge 1 - \beta` (Steinke, Nasr, Jagielski 2023, arXiv:2305.08846v1,
    Appendix D, ``get_eps_audit``; bisection to 40 steps instead of their 30).

    >>> round(one_run_epsilon_lower_bound(m=1000, r=100, v=100, delta=0.0), 2)   # all 100 guesses right
    3.49
    >>> round(one_run_epsilon_lower_bound(m=1000, r=100, v=75, delta=1e-4), 3)   # their Appendix D example
    0.673

    Used in: chapter 11.
    """
    beta = check_probability("beta", beta, open_high=True)
    lo, hi = 0.0, 1.0
    if one_run_p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= beta:
        return 0.0
    while one_run_p_value(m=m, r=r, v=v, epsilon=hi, delta=delta) < beta:
        lo, hi = hi, hi + 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if one_run_p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunAuditResult:
    """The outcome of :func:`one_run_audit_dpsgd`: ``correct`` of ``guesses`` right among ``m`` canaries."""

    epsilon_lower: float
    epsilon_accountant: float
    caught: bool
    m: int
    guesses: int
    correct: int
    sampler: str
    optimizer: str


def one_run_audit_dpsgd(
    dp_optimizer_cls: type[DPOptimizer] = DPOptimizer, *, noise_multiplier: float, max_grad_norm: float = 1.0,
    sample_rate: float, steps: int, delta: float, m: int, k_plus: int, k_minus: int, generator: torch.Generator,
    sampler: str = "poisson", accountant: str = "pld", canary_norm: float | None = None, beta: float = 0.05,
) -> OneRunAuditResult:  # fmt: skip
    r"""Audit DP-SGD in ONE run: :math:`m` Dirac canaries (one coordinate each), each in the data with probability 1/2.

    Guess "in" for the ``k_plus`` highest scores, "out" for the ``k_minus`` lowest,
    count the correct guesses, and convert with :func:`one_run_epsilon_lower_bound`.

    Reference: Steinke, Nasr, Jagielski 2023, "Privacy auditing with one (1) training run", arXiv:2305.08846.

    >>> r = one_run_audit_dpsgd(NoNoiseOptimizer, noise_multiplier=2.0, sample_rate=0.1, steps=50, delta=1e-5,
    ...                         m=1000, k_plus=100, k_minus=0, generator=torch.Generator().manual_seed(0))
    >>> r.correct, r.caught
    (100, True)

    Used in: chapter 11.
    """
    from privlab.accounting import epsilon

    sigma = check_positive("noise_multiplier", noise_multiplier)
    c = check_positive("max_grad_norm", max_grad_norm)
    q = check_probability("sample_rate", sample_rate)
    steps, m = check_int("steps", steps), check_int("m", m)
    k_plus, k_minus = check_int("k_plus", k_plus, minimum=0), check_int("k_minus", k_minus, minimum=0)
    if not 1 <= k_plus + k_minus <= m:
        raise ValueError(f"need 1 <= k_plus + k_minus <= m = {m}, got {k_plus} + {k_minus}")
    delta = check_delta(delta)
    _check_sampler(sampler)
    a = 10 * c if canary_norm is None else check_positive("canary_norm", canary_norm)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    eps_claim = float(epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant))
    dp = _optimizer(dp_optimizer_cls, noise_multiplier=sigma, max_grad_norm=c, batch_size=max(1, round(q * m)),
                    generator=generator)
    included = torch.rand(m, generator=generator) < 0.5  # S_j = +1 (in) or -1 (out)
    pres = _presence((m,), steps=steps, sample_rate=q, sampler=sampler, included=included, generator=generator)
    upd = _run_gradient_dpsgd(dp, pres, a)  # one run: the model has one coordinate per canary
    score = canary_scores(upd, noise_multiplier=sigma, max_grad_norm=c, sample_rate=q, sampler=sampler)
    order = np.argsort(score, kind="stable")
    inc = included.numpy()
    correct = int(inc[order[m - k_plus:]].sum() if k_plus else 0) + int((~inc[order[:k_minus]]).sum())
    lower = one_run_epsilon_lower_bound(m=m, r=k_plus + k_minus, v=correct, delta=delta, beta=beta)
    return OneRunAuditResult(epsilon_lower=lower, epsilon_accountant=eps_claim, caught=lower > eps_claim, m=m,
                             guesses=k_plus + k_minus, correct=correct, sampler=sampler,
                             optimizer=dp_optimizer_cls.__name__)
