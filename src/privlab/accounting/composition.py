r"""Basic and advanced composition of (epsilon, delta)-DP mechanisms.

Basic composition (Dwork, McSherry, Nissim, Smith 2006; Dwork and Roth 2014,
Thm 3.16): running mechanisms that are :math:`(\varepsilon_i, \delta_i)`-DP is
:math:`(\sum_i \varepsilon_i, \sum_i \delta_i)`-DP.

Advanced composition (Dwork, Rothblum, Vadhan 2010, Thm III.3; Dwork and Roth
2014, Thm 3.20): :math:`k` adaptive :math:`(\varepsilon, \delta)`-DP mechanisms
are :math:`(\varepsilon', k\delta + \delta')`-DP for every :math:`\delta' > 0`, with

.. math::
    \varepsilon' = \varepsilon \sqrt{2k \ln(1/\delta')} + k\varepsilon(e^{\varepsilon} - 1).

For mechanisms with different :math:`\varepsilon_i` the same Azuma argument gives
:math:`\sqrt{2\ln(1/\delta')\sum_i \varepsilon_i^2} + \sum_i \varepsilon_i(e^{\varepsilon_i}-1)`,
which is what :class:`AdvancedCompositionAccountant` uses.

Gaussian events have no single (epsilon, delta): these accountants give each
Gaussian step a share :math:`\delta_0` of the delta budget and use its exact
(analytic) epsilon, :func:`gaussian_epsilon` (Balle and Wang 2018), amplified by
Poisson sampling as :math:`\varepsilon' = \ln(1 + q(e^{\varepsilon}-1))`,
:math:`\delta' = q\delta` (Balle, Barthe, Gaboardi 2018, arXiv:1807.01647).
This is how "basic composition" of DP-SGD is usually computed, and it is very
loose; RDP and PLD exist for that reason (chapter 4).

>>> basic_composition(epsilon=0.01, k=1000)
(10.0, 0.0)
>>> round(advanced_composition(epsilon=0.01, k=1000, delta_prime=1e-5)[0], 2)
1.62
>>> advanced_is_worse(epsilon=1.4 / 6, k=6, delta_prime=1e-5)
True

Used in: chapters 3, 4, 13.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

from privlab._validate import check_delta, check_int, check_nonnegative, check_positive
from privlab.gaussian import gaussian_delta

from .base import Accountant, handles
from .events import EpsilonDeltaEvent, GaussianEvent, LaplaceEvent, PoissonSampledEvent

__all__ = [
    "BasicCompositionAccountant",
    "AdvancedCompositionAccountant",
    "basic_composition",
    "advanced_composition",
    "advanced_is_worse",
    "advanced_crossover",
    "amplify_by_sampling",
    "gaussian_epsilon",
]


def gaussian_epsilon(*, noise_multiplier: float, delta: float) -> float:
    r"""Smallest epsilon with :math:`\delta(\varepsilon) \le` ``delta`` for the Gaussian mechanism.

    Inverts :func:`privlab.gaussian.gaussian_delta` (monotone decreasing, at
    sensitivity 1 and :math:`\sigma` the noise multiplier) by Brent's method, then
    moves up until :math:`\delta(\varepsilon) \le` ``delta`` holds as computed, so the
    result is never below the root (an upper bound, within 1e-12 relative).

    Args:
        noise_multiplier: :math:`\sigma`.
        delta: :math:`\delta \in (0, 1)`.

    Returns:
        :math:`\varepsilon \ge 0`.

    Reference: Balle and Wang 2018 (arXiv:1805.06530).

    >>> round(gaussian_epsilon(noise_multiplier=1.0, delta=1e-5), 3)
    4.377

    Used in: chapters 2, 3, 4.
    """
    s = check_positive("noise_multiplier", noise_multiplier)
    d = check_delta(delta)
    # at epsilon = 0 the profile is Phi(1/(2 sigma)) - Phi(-1/(2 sigma)) (gaussian_delta takes epsilon > 0)
    delta_at_zero = float(special.ndtr(0.5 / s) - math.exp(special.log_ndtr(-0.5 / s)))

    def f(e: float) -> float:
        return (delta_at_zero if e == 0 else gaussian_delta(sigma=s, sensitivity=1.0, epsilon=e)) - d

    if f(0.0) <= 0:
        return 0.0
    hi = 1.0
    while f(hi) > 0:
        hi *= 2.0
    eps = float(optimize.brentq(f, 0.0, hi, xtol=1e-14, rtol=1e-12))
    while f(eps) > 0:  # the root is found to a tolerance: step up until delta(eps) <= delta holds
        eps = math.nextafter(eps, math.inf) * (1.0 + 1e-13)
    return eps


def basic_composition(*, epsilon: float, delta: float = 0.0, k: int) -> tuple[float, float]:
    r"""Basic composition of ``k`` :math:`(\varepsilon, \delta)`-DP mechanisms: :math:`(k\varepsilon, k\delta)`.

    Reference: Dwork and Roth 2014, Thm 3.16.

    >>> basic_composition(epsilon=0.5, delta=1e-6, k=4)
    (2.0, 4e-06)

    Used in: chapter 3.
    """
    e = check_nonnegative("epsilon", epsilon)
    d = check_delta(delta, allow_zero=True)
    k = check_int("k", k)
    return k * e, k * d


def advanced_composition(
    *, epsilon: float, delta: float = 0.0, k: int, delta_prime: float
) -> tuple[float, float]:
    r"""Advanced composition: :math:`(\varepsilon\sqrt{2k\ln(1/\delta')} + k\varepsilon(e^\varepsilon-1),\ k\delta+\delta')`.

    Args:
        epsilon: per-mechanism :math:`\varepsilon \ge 0`.
        delta: per-mechanism :math:`\delta \in [0, 1)`.
        k: number of mechanisms.
        delta_prime: the extra :math:`\delta' \in (0, 1)` the theorem spends.

    Returns:
        ``(epsilon_total, delta_total)``.

    Reference: Dwork, Rothblum, Vadhan 2010, Thm III.3; Dwork and Roth 2014, Thm 3.20.

    >>> round(advanced_composition(epsilon=1.4 / 6, k=6, delta_prime=1e-5)[0], 2)
    3.11

    Used in: chapter 3.
    """
    e = check_nonnegative("epsilon", epsilon)
    d = check_delta(delta, allow_zero=True)
    k = check_int("k", k)
    dp = check_delta(delta_prime, name="delta_prime")
    return e * math.sqrt(2 * k * math.log(1 / dp)) + k * e * math.expm1(e), k * d + dp


def advanced_is_worse(*, epsilon: float, k: int, delta_prime: float) -> bool:
    r"""Whether advanced composition gives a larger epsilon than basic composition (:math:`k\varepsilon`).

    >>> advanced_is_worse(epsilon=0.01, k=1000, delta_prime=1e-5)
    False

    Used in: chapter 3.
    """
    adv, _ = advanced_composition(epsilon=epsilon, k=k, delta_prime=delta_prime)
    return adv > k * check_nonnegative("epsilon", epsilon)


def advanced_crossover(*, k: int, delta_prime: float) -> float:
    r"""Per-mechanism epsilon above which advanced composition is worse than basic.

    Solving :math:`\varepsilon\sqrt{2k\ln(1/\delta')} + k\varepsilon(e^\varepsilon - 1) = k\varepsilon`
    gives :math:`\varepsilon^* = \ln\!\big(2 - \sqrt{2\ln(1/\delta')/k}\big)`;
    when :math:`2\ln(1/\delta') \ge k` advanced composition never helps and the
    result is 0.

    >>> round(advanced_crossover(k=1000, delta_prime=1e-5), 3)
    0.614
    >>> advanced_crossover(k=6, delta_prime=1e-5)
    0.0

    Used in: chapter 3.
    """
    k = check_int("k", k)
    dp = check_delta(delta_prime, name="delta_prime")
    r = math.sqrt(2 * math.log(1 / dp) / k)
    return math.log(2 - r) if r < 1 else 0.0


def amplify_by_sampling(eps: float, delta: float, q: float) -> tuple[float, float]:
    r"""(eps, delta) of a mechanism run on a Poisson subsample of rate q: :math:`\ln(1 + q(e^\varepsilon - 1))`, :math:`q\delta`.

    Amplification by Poisson subsampling (Balle, Barthe, Gaboardi 2018, arXiv:1807.01647),
    computed in log space so that it never overflows (``e^eps`` does for eps > 709):

    >>> amplify_by_sampling(5e4, 0.0, 0.5)[0] == 5e4 + math.log(0.5)
    True
    """
    if q == 1.0:  # no sampling: exactly (eps, delta), not a round trip through expm1 and log1p
        return eps, delta
    if eps <= 700.0:  # log1p(q expm1(eps)): accurate for small eps, no overflow below 709
        return math.log1p(q * math.expm1(eps)), q * delta
    # ln(1 + q(e^eps - 1)) = ln(q e^eps + (1 - q)) = eps + ln q + ln(1 + (1 - q) e^-eps / q)
    return eps + math.log(q) + math.log1p((1.0 - q) * math.exp(-eps) / q), q * delta


class _EpsDeltaComposition(Accountant):
    """Shared part of basic and advanced composition: per-leaf (eps, delta) pairs."""

    @handles(EpsilonDeltaEvent, LaplaceEvent, GaussianEvent,
             (PoissonSampledEvent, EpsilonDeltaEvent), (PoissonSampledEvent, LaplaceEvent),
             (PoissonSampledEvent, GaussianEvent))
    def _record(self, event, count) -> None:
        pass  # nothing to precompute: the history kept by the base class is the state

    def _split(self):
        """Fixed (eps, delta, count) terms, and Gaussian (sigma, q, count) terms."""
        fixed, gauss = [], []
        for ev, c in self.history:
            q, inner = (ev.sample_rate, ev.event) if isinstance(ev, PoissonSampledEvent) else (1.0, ev)
            if isinstance(inner, GaussianEvent):
                gauss.append((inner.noise_multiplier, q, c))
            else:
                e, d = (inner.epsilon, 0.0) if isinstance(inner, LaplaceEvent) else (inner.epsilon, inner.delta)
                fixed.append((*amplify_by_sampling(e, d, q), c))
        return fixed, gauss

    @staticmethod
    def _gaussian_terms(gauss, budget: float):
        """Give the Gaussian steps a total delta ``budget`` evenly; their amplified (eps, delta, count)."""
        n = sum(c for _, _, c in gauss)
        out = []
        for sigma, q, c in gauss:
            d0 = min(0.5, budget / (n * q))
            eps0 = gaussian_epsilon(noise_multiplier=sigma, delta=d0)
            out.append((*amplify_by_sampling(eps0, d0, q), c))
        return out


class BasicCompositionAccountant(_EpsDeltaComposition):
    r"""Basic composition: epsilons add up, deltas add up.

    Gaussian steps get an equal share of ``delta`` (see the module docstring).

    >>> acc = BasicCompositionAccountant().compose(LaplaceEvent.from_epsilon(0.1), count=10)
    >>> round(acc.get_epsilon(1e-6), 12), acc.get_delta(1.0)
    (1.0, 0.0)

    Used in: chapters 3, 13.
    """

    name = "basic"

    def _epsilon(self, delta: float) -> float:
        fixed, gauss = self._split()
        fixed_delta = sum(d * c for _, d, c in fixed)
        free = delta - fixed_delta
        if free < -1e-12 * delta or (gauss and free <= 0):  # (tolerating round-off in the sum)
            return math.inf
        terms = fixed + (self._gaussian_terms(gauss, free) if gauss else [])
        return sum(e * c for e, _, c in terms)

    def _delta(self, epsilon: float) -> float:
        fixed, gauss = self._split()
        if gauss:
            return super()._delta(epsilon)
        eps_total = sum(e * c for e, _, c in fixed)
        return sum(d * c for _, d, c in fixed) if epsilon >= eps_total * (1 - 1e-12) else 1.0


class AdvancedCompositionAccountant(_EpsDeltaComposition):
    r"""Advanced composition (Dwork, Rothblum, Vadhan 2010) with heterogeneous epsilons.

    .. math::
        \varepsilon' = \sqrt{2\ln(1/\delta')\textstyle\sum_i \varepsilon_i^2}
            + \textstyle\sum_i \varepsilon_i (e^{\varepsilon_i} - 1),
        \qquad \delta = \textstyle\sum_i \delta_i + \delta'.

    Args:
        delta_split: the share of the free delta budget (``delta`` minus the
            deltas of (epsilon, delta) events) that goes to :math:`\delta'`; the
            rest is spread over the Gaussian steps. ``None`` (default) picks the
            split that minimises epsilon. Without Gaussian steps all of the free
            budget is :math:`\delta'` and the split is not used.

    Note: for a *fixed* sequence of epsilons this is valid; for epsilons chosen
    adaptively (an odometer) a privacy filter is needed (Rogers, Roth, Ullman,
    Vadhan 2016, arXiv:1605.08294).

    >>> acc = AdvancedCompositionAccountant().compose(LaplaceEvent.from_epsilon(0.01), count=1000)
    >>> round(acc.get_epsilon(1e-5), 2)
    1.62

    Used in: chapters 3, 13.
    """

    name = "advanced"

    def __init__(self, *, delta_split: float | None = None) -> None:
        super().__init__()
        if delta_split is not None:
            delta_split = check_delta(delta_split, name="delta_split")
        self.delta_split = delta_split

    @staticmethod
    def _bound(terms, delta_prime: float) -> float:
        s2 = sum(c * e * e for e, _, c in terms)
        if any(e > 709 for e, _, _ in terms):  # expm1 overflows past 709.78: the bound is inf, as documented
            return math.inf
        s1 = sum(c * e * math.expm1(e) for e, _, c in terms)
        return math.sqrt(2 * math.log(1 / delta_prime) * s2) + s1

    def _epsilon(self, delta: float) -> float:
        fixed, gauss = self._split()
        free = delta - sum(d * c for _, d, c in fixed)
        if free <= 0:
            return math.inf
        if not gauss:
            return self._bound(fixed, free)

        def eps_at(split: float) -> float:
            return self._bound(fixed + self._gaussian_terms(gauss, (1 - split) * free), split * free)

        if self.delta_split is not None:
            return eps_at(self.delta_split)
        grid = np.linspace(0.02, 0.98, 25)
        values = [eps_at(s) for s in grid]
        i = int(np.argmin(values))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = optimize.minimize_scalar(eps_at, bounds=(lo, hi), method="bounded",
                                       options={"xatol": 1e-4})
        return float(min(values[i], res.fun))

    def _delta(self, epsilon: float) -> float:
        fixed, gauss = self._split()
        if gauss:
            return super()._delta(epsilon)
        fixed_delta = sum(d * c for _, d, c in fixed)
        if any(e > 709 for e, _, _ in fixed):  # the bound is inf: nothing below delta 1 is certified
            return 1.0
        s2 = sum(c * e * e for e, _, c in fixed)
        s1 = sum(c * e * math.expm1(e) for e, _, c in fixed)
        if s2 == 0:
            return fixed_delta
        if epsilon <= s1:
            return 1.0
        return fixed_delta + math.exp(-((epsilon - s1) ** 2) / (2 * s2))
