r"""Auditing a scalar-output mechanism from its samples: a confidence lower bound on its epsilon.

:func:`audit_mechanism` tries a family of threshold sets :math:`\{y \ge t\}`,
their complements and both orders of :math:`D, D'`, with a Bonferroni
correction over the family, and bounds :math:`\varepsilon` from below with
:func:`privlab.audit.stats.epsilon_bounds` (Clopper-Pearson); it flags the
mechanism when the bound exceeds its claimed :math:`\varepsilon`: an honest
mechanism is flagged with probability at most :math:`\alpha`.

References: Jagielski, Ullman, Oprea (2020), "Auditing differentially private
machine learning: how private is private SGD?", arXiv:2006.07709;
Ding, Wang, Wang, Zhang, Kifer (2018), "Detecting violations of differential
privacy", CCS.

Used in: chapters 5, 12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from privlab._validate import check_array, check_delta, check_epsilon, check_int, check_probability, check_rng
from privlab.audit.stats import epsilon_bounds

__all__ = ["AuditResult", "audit_mechanism"]


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
       :func:`~privlab.audit.stats.epsilon_lower_bound` (set and complement) at level
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

    Used in: chapters 5, 12.
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
        on_set, on_comp, p_low, q_high = epsilon_bounds(num, den, n, n, claimed_delta, alpha / n_sets)
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
