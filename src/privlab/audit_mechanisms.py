r"""Auditing a mechanism from its samples: a confidence lower bound on its epsilon.

If :math:`M` is :math:`(\varepsilon, \delta)`-DP, then for neighbouring
:math:`D, D'` and *every* set :math:`S` (a rejection region of a test),

.. math::

    \varepsilon \;\ge\; \ln\frac{\Pr[M(D) \in S] - \delta}{\Pr[M(D') \in S]}.

Sampling :math:`M(D)` and :math:`M(D')` :math:`N` times each, counting the
outputs in :math:`S`, and replacing the two probabilities by a Clopper-Pearson
lower bound (numerator) and upper bound (denominator) turns this into a lower
confidence bound on :math:`\varepsilon`, valid with probability at least
:math:`1 - \alpha`. :func:`audit_mechanism` tries a family of threshold sets
:math:`\{y \ge t\}`, their complements and both orders of :math:`D, D'`, with a
Bonferroni correction over the family, and flags the mechanism when the bound
exceeds its claimed :math:`\varepsilon`: an honest mechanism is flagged with
probability at most :math:`\alpha`.

>>> round(epsilon_lower_bound(900, 100, 1000, 1000), 3)
1.99

References: Jagielski, Ullman, Oprea (2020), "Auditing differentially private
machine learning: how private is private SGD?", arXiv:2006.07709;
Ding, Wang, Wang, Zhang, Kifer (2018), "Detecting violations of differential
privacy", CCS; Clopper and Pearson (1934), Biometrika 26(4).

Used in: chapter 11.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta
from tqdm.auto import tqdm

from privlab._validate import (
    check_array,
    check_delta,
    check_epsilon,
    check_int,
    check_probability,
    check_rng,
)

__all__ = ["AuditResult", "audit_mechanism", "choose_threshold", "clopper_pearson", "epsilon_lower_bound"]


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

    Used in: chapter 11.
    """
    n = check_int("n", n)
    alpha = check_probability("alpha", alpha, open_high=True)
    k = _counts("k", k, n)
    with np.errstate(invalid="ignore"):
        low = np.where(k == 0, 0.0, beta.ppf(alpha / 2.0, k, n - k + 1))
        high = np.where(k == n, 1.0, beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return _out(low), _out(high)


def _bounds(tp, fp, n_pos, n_neg, delta, alpha):
    """The two one-sided epsilon bounds (set S, complement of S) and the CP bounds behind them."""
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

    Used in: chapter 11.
    """
    delta = check_delta(delta, allow_zero=True)
    n_pos, n_neg = check_int("n_pos", n_pos), check_int("n_neg", n_neg)
    on_set, on_complement, _, _ = _bounds(tp, fp, n_pos, n_neg, delta, alpha)
    return _out(np.maximum(np.maximum(on_set, on_complement), 0.0))


@dataclass(frozen=True)
class AuditResult:
    r"""The outcome of :func:`audit_mechanism`.

    Attributes:
        epsilon_lower: the :math:`1 - \alpha` lower confidence bound on :math:`\varepsilon` (Bonferroni over the family).
        epsilon_estimate: :math:`\ln((\hat p - \delta)/\hat q)` for the best set (a point estimate, no guarantee).
        claimed_epsilon: the mechanism's claim.
        claimed_delta: the claim's :math:`\delta`.
        flagged: ``epsilon_lower > claimed_epsilon``: the claim is refuted at level :math:`\alpha`.
        best_set: the rejection set of the best bound, e.g. ``"y >= 1.5"``.
        direction: ``"D vs D'"`` (:math:`\Pr[M(D) \in S] \le e^\varepsilon \Pr[M(D') \in S] + \delta` violated) or ``"D' vs D"``.
        p_low: the Clopper-Pearson lower bound of the numerator probability of the best set.
        q_high: the Clopper-Pearson upper bound of its denominator probability.
        count_numerator: outputs in the best set from the numerator's data set.
        count_denominator: outputs in the best set from the other.
        n_samples: runs on each data set.
        n_sets: set-and-direction pairs tried (the Bonferroni factor).
        alpha: the overall confidence level.
    """

    epsilon_lower: float
    epsilon_estimate: float
    claimed_epsilon: float
    claimed_delta: float
    flagged: bool
    best_set: str
    direction: str
    p_low: float
    q_high: float
    count_numerator: int
    count_denominator: int
    n_samples: int
    n_sets: int
    alpha: float


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


def _log_ratio(p: float, q: float) -> float:
    """ln(p / q) with the limits: -inf for p <= 0, +inf for q = 0 < p."""
    return -math.inf if p <= 0 else (math.inf if q == 0 else math.log(p / q))


def _sample(mechanism, data, n: int, rng, batched: bool, progress: bool, label: str) -> np.ndarray:
    if batched:
        out = np.asarray(mechanism(data, rng, n), dtype=float)
        if out.shape != (n,):
            raise ValueError(f"a batched mechanism must return shape ({n},), got {out.shape}")
    else:
        out = np.array([float(mechanism(data, rng)) for _ in tqdm(range(n), desc=label, disable=not progress)])
    if not np.all(np.isfinite(out)):
        raise ValueError(f"mechanism outputs must be finite, got {out[~np.isfinite(out)][0]}")
    return out


def audit_mechanism(
    mechanism: Callable, d, d_prime, *, claimed_epsilon, claimed_delta=0.0, n_samples: int,
    rng: np.random.Generator, alpha=0.05, thresholds=None, n_thresholds: int = 50, batched: bool = False,
    progress: bool = False,
) -> AuditResult:  # fmt: skip
    r"""Audit a scalar-output mechanism on neighbours :math:`D, D'`: a lower confidence bound on its :math:`\varepsilon`.

    1. Thresholds :math:`t_1, \dots, t_T` (given, or quantiles of a separate
       pilot run of ``max(200, n_samples // 10)`` draws per data set, so the
       family is fixed before the main samples are seen).
    2. :math:`N` runs on each of :math:`D, D'`; counts in :math:`S_j = \{y \ge t_j\}`.
    3. For each :math:`S_j` and each order of :math:`(D, D')`:
       :func:`epsilon_lower_bound` (set and complement) at level
       :math:`\alpha / m`, :math:`m = 2T` (Bonferroni), so all :math:`m`
       bounds hold together with probability :math:`\ge 1 - \alpha`.
    4. :math:`\varepsilon_{\mathrm{lower}} = \max` over the family; flag it if
       above ``claimed_epsilon``.

    Reference: Jagielski, Ullman, Oprea (2020), arXiv:2006.07709; Ding et al.
    (2018), "Detecting violations of differential privacy", CCS.

    Args:
        mechanism: ``mechanism(data, rng) -> number``; with ``batched=True``,
            ``mechanism(data, rng, n) -> array of n independent outputs``.
        d: :math:`D`, passed to ``mechanism`` as is.
        d_prime: :math:`D'`, a neighbour of :math:`D`.
        claimed_epsilon: the :math:`\varepsilon > 0` the mechanism claims.
        claimed_delta: its :math:`\delta \in [0, 1)`.
        n_samples: :math:`N`, runs per data set.
        rng: the source of randomness, passed to ``mechanism``.
        alpha: :math:`\alpha \in (0, 1)`, the probability of flagging an honest mechanism.
        thresholds: the :math:`t_j` (finite); default: pilot quantiles.
        n_thresholds: :math:`T` for the pilot quantiles.
        batched: call ``mechanism`` once per data set for all :math:`N` outputs.
        progress: show a progress bar (unbatched only).

    Returns:
        An :class:`AuditResult`.

    Raises:
        ValueError: invalid claims, sizes, ``alpha``, ``thresholds`` or ``rng``; non-finite outputs.

    >>> from privlab.config import make_rng
    >>> from privlab.mechanisms import randomized_response
    >>> rr = lambda bit, rng, n: randomized_response([bit] * n, epsilon=1.0, rng=rng)
    >>> audit_mechanism(rr, 0, 1, claimed_epsilon=1.0, n_samples=20_000, rng=make_rng(0), batched=True).flagged
    False

    Used in: chapter 11.
    """
    claimed_epsilon = check_epsilon(claimed_epsilon, name="claimed_epsilon")
    claimed_delta = check_delta(claimed_delta, name="claimed_delta", allow_zero=True)
    n, rng = check_int("n_samples", n_samples), check_rng(rng)
    alpha = check_probability("alpha", alpha, open_high=True)
    if thresholds is None:
        n_pilot = max(200, n // 10)
        pilot = np.concatenate([_sample(mechanism, x, n_pilot, rng, batched, progress, "pilot") for x in (d, d_prime)])
        levels = np.linspace(0.0, 1.0, check_int("n_thresholds", n_thresholds) + 2)[1:-1]
        t = np.unique(np.quantile(pilot, levels, method="inverted_cdf"))
    else:
        t = np.unique(check_array("thresholds", thresholds, ndim=1))
    a = np.sort(_sample(mechanism, d, n, rng, batched, progress, "D"))
    b = np.sort(_sample(mechanism, d_prime, n, rng, batched, progress, "D'"))
    in_a, in_b = n - np.searchsorted(a, t, side="left"), n - np.searchsorted(b, t, side="left")  # #{y >= t}
    n_sets = 2 * t.size
    # candidates: (bound, threshold index, direction, complement?) over both orders and set/complement
    candidates = []
    for direction, (num, den) in (("D vs D'", (in_a, in_b)), ("D' vs D", (in_b, in_a))):
        on_set, on_comp, p_low, q_high = _bounds(num, den, n, n, claimed_delta, alpha / n_sets)
        for complement, eps in ((False, on_set), (True, on_comp)):
            j = int(np.argmax(eps))
            candidates.append((float(eps[j]), j, direction, complement, num, den, p_low, q_high))
    eps, j, direction, complement, num, den, p_low, q_high = max(candidates, key=lambda c: c[0])
    if complement:  # the set is {y < t}; the data sets swap roles: numerator = the other
        direction = "D' vs D" if direction == "D vs D'" else "D vs D'"
        k_num, k_den, lo, hi, best = n - int(den[j]), n - int(num[j]), 1 - float(q_high[j]), 1 - float(p_low[j]), "<"
    else:
        k_num, k_den, lo, hi, best = int(num[j]), int(den[j]), float(p_low[j]), float(q_high[j]), ">="
    return AuditResult(
        epsilon_lower=max(eps, 0.0), epsilon_estimate=_log_ratio(k_num / n - claimed_delta, k_den / n),
        claimed_epsilon=claimed_epsilon,
        claimed_delta=claimed_delta, flagged=max(eps, 0.0) > claimed_epsilon, best_set=f"y {best} {t[j]:.6g}",
        direction=direction, p_low=lo, q_high=hi, count_numerator=k_num, count_denominator=k_den, n_samples=n,
        n_sets=n_sets, alpha=alpha,
    )  # fmt: skip
