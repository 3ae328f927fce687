r"""Shared statistics of every audit: Clopper-Pearson, the lower bound on epsilon, thresholds, run sizing.

If :math:`M` is :math:`(\varepsilon, \delta)`-DP, then for neighbouring
:math:`D, D'` and *every* set :math:`S` (a rejection region of a test),

.. math::

    \varepsilon \;\ge\; \ln\frac{\Pr[M(D) \in S] - \delta}{\Pr[M(D') \in S]}.

Sampling :math:`M(D)` and :math:`M(D')` :math:`N` times each, counting the
outputs in :math:`S`, and replacing the two probabilities by a Clopper-Pearson
lower bound (numerator) and upper bound (denominator) turns this into a lower
confidence bound on :math:`\varepsilon` (:func:`epsilon_lower_bound`), valid
with probability at least :math:`1 - \alpha` when :math:`S` is fixed before the
counted samples are drawn: :func:`choose_threshold` picks :math:`S = \{s \ge t\}`
on a separate pilot sample and :func:`pilot_then_main` runs the two stages.
:func:`runs_for_power` sizes the main sample.

>>> round(epsilon_lower_bound(900, 100, 1000, 1000), 3)
1.99

References: Jagielski, Ullman, Oprea (2020), "Auditing differentially private
machine learning: how private is private SGD?", arXiv:2006.07709;
Nasr et al. (2021), "Adversary instantiation", arXiv:2101.04535;
Clopper and Pearson (1934), Biometrika 26(4).

Used in: chapter 12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, norm

from privlab._validate import check_array, check_delta, check_int, check_positive, check_probability

__all__ = [
    "DPSGDAuditResult", "audit_result", "choose_threshold", "clopper_pearson", "epsilon_bounds",
    "epsilon_lower_bound", "gaussian_test_runs", "pilot_then_main", "runs_for_power",
]  # fmt: skip


def _counts(name: str, k, n: int) -> np.ndarray:
    arr = check_array(name, k)
    if np.any(arr < 0) or np.any(arr > n) or np.any(arr != np.round(arr)):
        bad = arr[(arr < 0) | (arr > n) | (arr != np.round(arr))].ravel()[0]
        raise ValueError(f"{name} must be integers in [0, {n}], got {bad}")
    return arr


def _out(x):
    return float(x) if np.ndim(x) == 0 else x


def clopper_pearson(k, n, *, alpha=0.05):
    r"""The exact (Clopper-Pearson) two-sided :math:`1 - \alpha` confidence interval of a binomial proportion.

    .. math::

        p_{\mathrm{low}} = B^{-1}\big(\tfrac{\alpha}{2}; k, n - k + 1\big), \qquad
        p_{\mathrm{high}} = B^{-1}\big(1 - \tfrac{\alpha}{2}; k + 1, n - k\big)

    (:math:`p_{\mathrm{low}} = 0` at :math:`k = 0`, :math:`p_{\mathrm{high}} = 1`
    at :math:`k = n`), :math:`B^{-1}` the Beta quantile; each side alone holds
    with probability :math:`\ge 1 - \alpha/2`. Reference: Clopper and Pearson (1934).

    Args:
        k: successes, integers in :math:`[0, n]` (scalar or array).
        n: trials, an integer :math:`\ge 1`.
        alpha: :math:`\alpha \in (0, 1)`.

    Returns:
        ``(low, high)``, floats or arrays of the shape of ``k``.

    Raises:
        ValueError: ``k`` outside :math:`[0, n]` or not integers; invalid ``n`` or ``alpha``.

    >>> [round(v, 4) for v in clopper_pearson(5, 10)]
    [0.1871, 0.8129]

    Used in: chapter 12.
    """
    n = check_int("n", n)
    alpha = check_probability("alpha", alpha, open_high=True)
    k = _counts("k", k, n)
    with np.errstate(invalid="ignore"):
        low = np.where(k == 0, 0.0, beta.ppf(alpha / 2.0, k, n - k + 1))
        high = np.where(k == n, 1.0, beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return _out(low), _out(high)



def epsilon_bounds(tp, fp, n_pos, n_neg, delta, alpha):
    r"""The two one-sided epsilon bounds (set :math:`S`, its complement) and the Clopper-Pearson bounds behind them.

    Unclipped (can be negative or :math:`-\infty`), vectorised over counts; :func:`epsilon_lower_bound` is
    their maximum with 0. Returns ``(on_set, on_complement, p_low, q_high)``.

    >>> [round(float(v), 3) for v in epsilon_bounds(900, 100, 1000, 1000, 0.0, 0.05)[:2]]
    [1.99, 1.99]
    """
    p_low, _ = clopper_pearson(tp, n_pos, alpha=alpha)
    _, q_high = clopper_pearson(fp, n_neg, alpha=alpha)
    p_low, q_high = np.asarray(p_low), np.asarray(q_high)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Pr[M(D) in S] <= e^eps Pr[M(D') in S] + delta, and Pr[M(D') notin S] <= e^eps Pr[M(D) notin S] + delta
        on_set = np.where(p_low > delta, np.log(p_low - delta) - np.log(q_high), -np.inf)
        on_complement = np.where(1 - q_high > delta, np.log(1 - q_high - delta) - np.log1p(-p_low), -np.inf)
    return on_set, on_complement, p_low, q_high



def epsilon_lower_bound(tp, fp, n_pos, n_neg, *, delta=0.0, alpha=0.05):
    r"""A :math:`1 - \alpha` lower confidence bound on :math:`\varepsilon` from one test's true and false positives.

    With :math:`\bar p` the Clopper-Pearson lower bound of :math:`\mathrm{TPR} =`
    ``tp / n_pos`` (outputs of :math:`M(D)` in the rejection set) and
    :math:`\bar q` the upper bound of :math:`\mathrm{FPR} =` ``fp / n_neg``
    (outputs of :math:`M(D')`), each one-sided at :math:`\alpha/2`:

    .. math::

        \varepsilon \ge \max\Big(\ln\frac{\bar p - \delta}{\bar q},\;
            \ln\frac{1 - \bar q - \delta}{1 - \bar p},\; 0\Big)

    (the set and its complement). Vectorised over arrays of counts; each entry
    holds with probability :math:`\ge 1 - \alpha` (use ``alpha / m`` for
    :math:`m` sets at once, Bonferroni). Reference: Jagielski, Ullman, Oprea
    (2020), arXiv:2006.07709; Kairouz, Oh, Viswanath (2015), Theorem 2.1.

    Args:
        tp: outputs of :math:`M(D)` in the set, integers in :math:`[0, n_{pos}]`.
        fp: outputs of :math:`M(D')` in the set, integers in :math:`[0, n_{neg}]`.
        n_pos: runs on :math:`D`.
        n_neg: runs on :math:`D'`.
        delta: :math:`\delta \in [0, 1)`, the claimed delta.
        alpha: :math:`\alpha \in (0, 1)`.

    Returns:
        The bound, :math:`\ge 0` (a float, or an array for array counts).

    Raises:
        ValueError: counts outside their range; invalid sizes, ``delta`` or ``alpha``.

    >>> epsilon_lower_bound(50, 50, 100, 100)
    0.0

    Used in: chapter 12.
    """
    delta = check_delta(delta, allow_zero=True)
    n_pos, n_neg = check_int("n_pos", n_pos), check_int("n_neg", n_neg)
    on_set, on_complement, _, _ = epsilon_bounds(tp, fp, n_pos, n_neg, delta, alpha)
    return _out(np.maximum(np.maximum(on_set, on_complement), 0.0))



def choose_threshold(scores_in: np.ndarray, scores_out: np.ndarray, *, delta: float, alpha: float,
                     midpoints: bool = True) -> float:  # fmt: skip
    """The threshold (``score >= t``: "in") that maximises the lower bound on pilot scores.

    Candidates are the distinct pilot scores, or (``midpoints``) the lowest score and the
    midpoints between consecutive distinct scores, so a threshold sits in the middle of a gap
    rather than on the edge of the pilot's "in" scores.

    >>> choose_threshold(np.arange(50.0) + 60, np.arange(50.0), delta=0.0, alpha=0.05)   # the gap 49..60
    54.5
    >>> choose_threshold(np.arange(50.0) + 60, np.arange(50.0), delta=0.0, alpha=0.05, midpoints=False)
    60.0
    """
    cand = np.unique(np.concatenate([scores_in, scores_out]))
    if midpoints:
        cand = np.concatenate([cand[:1], (cand[1:] + cand[:-1]) / 2])
    tp = scores_in.size - np.searchsorted(np.sort(scores_in), cand, side="left")
    fp = scores_out.size - np.searchsorted(np.sort(scores_out), cand, side="left")
    bounds = epsilon_lower_bound(tp, fp, scores_in.size, scores_out.size, delta=delta, alpha=alpha)
    return float(cand[int(np.argmax(bounds))])



@dataclass(frozen=True)
class DPSGDAuditResult:
    """The outcome of a canary audit of DP-SGD (``caught``: the lower bound exceeds the accountant's epsilon)."""

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



def pilot_then_main(scores: Callable[[str, bool, int], np.ndarray], *, n_pilot: int, n_runs: int,
                    epsilon_accountant: float, delta: float, alpha: float, midpoints: bool = True,
                    **run) -> DPSGDAuditResult:  # fmt: skip
    r"""Choose the threshold on pilot runs, then count the main runs against it: the two stages of every canary audit.

    ``scores(stage, include, n)`` returns ``n`` scores of runs with (``include``) or without the canary,
    ``stage`` being ``"pilot"`` or ``"main"``; it is called for (pilot, in), (pilot, out), (main, in),
    (main, out) in that order. The threshold is :func:`choose_threshold` on the pilot scores, so the set
    :math:`\{s \ge t\}` is fixed before the main runs are seen and the bound
    :math:`\varepsilon \ge \ln((\underline{\mathrm{TPR}} - \delta)/\overline{\mathrm{FPR}})` of
    :func:`audit_result` holds with probability :math:`\ge 1 - \alpha` (Jagielski et al. 2020, arXiv:2006.07709).

    >>> rng = np.random.default_rng(0)
    >>> r = pilot_then_main(lambda stage, inc, n: rng.normal(3.0 * inc, 1.0, n), n_pilot=500, n_runs=2000,
    ...                     epsilon_accountant=1.0, delta=1e-5, alpha=0.05, noise_multiplier=1.0, sample_rate=1.0,
    ...                     steps=1, sampler="poisson", optimizer="toy")
    >>> r.caught, r.n_runs
    (True, 2000)

    Used in: chapter 12.
    """
    threshold = choose_threshold(scores("pilot", True, n_pilot), scores("pilot", False, n_pilot), delta=delta,
                                 alpha=alpha, midpoints=midpoints)
    return audit_result(scores("main", True, n_runs), scores("main", False, n_runs), threshold,
                        epsilon_accountant=epsilon_accountant, alpha=alpha, delta=delta, **run)


def runs_for_power(*, tpr: float, fpr: float, epsilon: float, delta: float, alpha: float = 0.05,
                   margin: float = 0.5, z: float = 3.0, max_runs: int = 10**7) -> int:  # fmt: skip
    r"""Runs per world :math:`R` whose bound exceeds ``epsilon + margin`` with pessimistic counts.

    Found by doubling, then bisection between the last two powers of 2. The rounded counts make
    the bound not quite monotone in :math:`R`, so a few smaller values can also pass (tpr 0.9,
    fpr 0.01, epsilon 1: 66 returned, 58 passes): a sufficient :math:`R`, not always the smallest.

    The counts are :math:`\lfloor R\,\mathrm{TPR} - z\sqrt{R\,\mathrm{TPR}(1-\mathrm{TPR})}\rfloor`
    true and :math:`\lceil R\,\mathrm{FPR} + z\sqrt{R\,\mathrm{FPR}(1-\mathrm{FPR})}\rceil` false positives
    (:math:`z` binomial standard deviations on the unlucky side), turned into a bound by
    :func:`epsilon_lower_bound`.

    Raises:
        ValueError: if no :math:`R \le` ``max_runs`` suffices (the attack is too weak).

    >>> runs_for_power(tpr=1.0, fpr=0.0, epsilon=1.0, delta=1e-5, margin=0.5)   # ln(2/alpha) e^1.5 is 16.6
    19

    Used in: chapter 12.
    """
    tpr = check_probability("tpr", tpr, open_low=False)
    fpr = check_probability("fpr", fpr, open_low=False)
    epsilon = check_positive("epsilon", epsilon)
    delta = check_delta(delta, allow_zero=True)
    check_positive("z", z)

    def ok(r: int) -> bool:
        tp = max(0, math.floor(r * tpr - z * math.sqrt(r * tpr * (1 - tpr))))
        fp = min(r, math.ceil(r * fpr + z * math.sqrt(r * fpr * (1 - fpr))))
        return float(epsilon_lower_bound(tp, fp, r, r, delta=delta, alpha=alpha)) > epsilon + margin

    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > max_runs:
            raise ValueError(f"no number of runs up to {max_runs} reaches epsilon {epsilon} + {margin} "
                             f"with tpr={tpr}, fpr={fpr}")
    lo = hi // 2
    while hi - lo > 1:  # the bound grows with R at fixed rates (up to rounding)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def gaussian_test_runs(mu: float, *, epsilon: float, delta: float, alpha: float = 0.05, margin: float = 0.5,
                       z: float = 3.0, max_runs: int = 10**7) -> int:  # fmt: skip
    r"""Runs per world for a threshold test between :math:`\mathcal{N}(\mu, 1)` ("in") and :math:`\mathcal{N}(0, 1)` ("out").

    The least :func:`runs_for_power` found over thresholds :math:`t \in [0, \mu + 6]` (step 0.05), with
    :math:`\mathrm{TPR} = \Phi(\mu - t)`, :math:`\mathrm{FPR} = \Phi(-t)`; each threshold's search is
    capped at the best so far, so a threshold whose own :math:`R` is smaller but whose doubling
    overshoots the cap is skipped. A sufficient :math:`R` (conservative), not always the smallest.

    >>> gaussian_test_runs(4.0, epsilon=2.0, delta=1e-5) < gaussian_test_runs(3.0, epsilon=2.0, delta=1e-5)
    True

    Used in: chapter 12.
    """
    mu = check_positive("mu", mu)
    best = None
    for t in np.arange(0.0, mu + 6.0, 0.05):
        try:
            r = runs_for_power(tpr=float(norm.sf(t - mu)), fpr=float(norm.sf(t)), epsilon=epsilon, delta=delta,
                               alpha=alpha, margin=margin, z=z, max_runs=max_runs if best is None else best)
        except ValueError:
            continue
        best = r if best is None else min(best, r)
    if best is None:
        raise ValueError(f"no number of runs up to {max_runs} reaches epsilon {epsilon} + {margin} at mu = {mu}")
    return best

