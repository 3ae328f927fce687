r"""Rényi differential privacy (RDP) accounting.

A mechanism is :math:`(\alpha, \rho)`-RDP if the Rényi divergence of order
:math:`\alpha > 1` between its output distributions on neighbouring datasets is
at most :math:`\rho` (Mironov 2017, arXiv:1702.07476). RDP composes by adding
:math:`\rho` order by order, and converts to :math:`(\varepsilon, \delta)`-DP by
(Balle et al. 2020, Thm 21, arXiv:1905.09982; Canonne, Kamath, Steinke 2020,
Prop 12, arXiv:2004.00010)

.. math::
    \varepsilon = \min_\alpha\ \rho(\alpha) + \ln\frac{\alpha-1}{\alpha}
        - \frac{\ln\delta + \ln\alpha}{\alpha - 1}.

Per-mechanism RDP curves:

* Gaussian, noise multiplier :math:`\sigma`: :math:`\rho(\alpha) = \alpha / (2\sigma^2)`;
* Poisson-subsampled Gaussian, rate :math:`q` (Mironov, Talwar, Zhang 2019,
  arXiv:1908.10530, Sec. 3.3): :math:`\rho(\alpha) = \ln(A_\alpha)/(\alpha-1)`
  with, for integer :math:`\alpha`,
  :math:`A_\alpha = \sum_{i=0}^{\alpha}\binom{\alpha}{i}(1-q)^{\alpha-i}q^i e^{(i^2-i)/(2\sigma^2)}`
  and, for fractional :math:`\alpha`, the two-sided series of Sec. 3.3;
* Laplace, scale :math:`b` (Mironov 2017, Prop 6);
* pure :math:`\varepsilon`-DP: :math:`\min(\varepsilon, \alpha\varepsilon^2/2)`
  (:math:`\varepsilon`: an :math:`\varepsilon`-DP mechanism is :math:`(\infty, \varepsilon)`-RDP and RDP
  is non-decreasing in :math:`\alpha`, Mironov 2017, Sec. III; :math:`\alpha\varepsilon^2/2`: Bun and
  Steinke 2016, Prop 3.3).

Everything is computed in log space. For integer orders we sum the *excess*
:math:`A_\alpha - 1 = \sum_{i\ge2}\binom{\alpha}{i}(1-q)^{\alpha-i}q^i(e^{(i^2-i)/(2\sigma^2)}-1)`
(all terms positive, since the binomial weights sum to one) and take
``log1p``, which keeps full relative precision when :math:`q` is tiny.
The default orders are Opacus's ``RDPAccountant.DEFAULT_ALPHAS``, so epsilons
agree with Opacus 1.6 to about 1e-9 relative (per-order values can differ in the
sixth digit at tiny q, where Opacus's sums of nearly cancelling terms lose digits
and ours do not). Per-step curves are cached by (q, sigma, orders).

>>> round(float(gaussian_rdp(noise_multiplier=2.0, orders=[3.0])[0]), 6)
0.375
>>> acc = RdpAccountant().compose(dpsgd_event(noise_multiplier=1.0, sample_rate=0.01, steps=10_000))
>>> round(acc.get_epsilon(1e-5), 3)
6.713

Used in: chapters 4, 6, 7, 8, 13.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special

from privlab._validate import check_delta, check_nonnegative, check_positive, check_probability

from .base import Accountant, handles
from .events import (  # noqa: F401  (dpsgd_event is used by the doctest)
    EpsilonDeltaEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    dpsgd_event,
)

__all__ = [
    "DEFAULT_ORDERS",
    "RdpAccountant",
    "gaussian_rdp",
    "laplace_rdp",
    "subsampled_gaussian_rdp",
    "rdp_to_epsilon",
    "rdp_to_delta",
]

#: Opacus 1.6's ``RDPAccountant.DEFAULT_ALPHAS``: 1.1, 1.2, ..., 10.9, 12, ..., 63.
DEFAULT_ORDERS: tuple = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def _check_rdp(rdp, orders: np.ndarray) -> np.ndarray:
    """One RDP value per order, each >= 0 or +inf (a value within 1e-9 below 0, round-off of the
    fractional-order series at tiny q summed over many steps, is read as 0); -inf, NaN and clearly
    negative values are refused (a red-team read: an RDP of -inf gave epsilon 0, NaN orders were
    skipped silently). :class:`RdpAccountant` clips each event's curve at 0 before adding it."""
    r = np.atleast_1d(np.asarray(rdp, dtype=float))
    if r.shape != orders.shape:
        raise ValueError(f"rdp must have one value per order ({orders.size}), got shape {r.shape}")
    bad = np.isnan(r) | (r < -1e-9)
    if bad.any():
        raise ValueError(f"rdp must be >= 0 or +inf at every order, got {r[bad][:3]!r}")
    return np.maximum(r, 0.0)


def _check_orders(orders) -> np.ndarray:
    a = np.atleast_1d(np.asarray(orders, dtype=float))
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 1):
        raise ValueError(f"orders must be finite numbers > 1, got {orders!r}")
    return a


def gaussian_rdp(*, noise_multiplier: float, orders) -> np.ndarray:
    r"""RDP of the Gaussian mechanism: :math:`\rho(\alpha) = \alpha / (2\sigma^2)`.

    Reference: Mironov 2017, Prop 7. Used in: chapter 4.

    >>> gaussian_rdp(noise_multiplier=1.0, orders=[2, 32]).tolist()
    [1.0, 16.0]
    """
    s = check_positive("noise_multiplier", noise_multiplier)
    return _check_orders(orders) / (2 * s * s)


def laplace_rdp(*, scale: float, orders) -> np.ndarray:
    r"""RDP of the Laplace mechanism with scale :math:`b` (sensitivity 1).

    .. math::
        \rho(\alpha) = \frac{1}{\alpha-1}\ln\!\Big(\frac{\alpha}{2\alpha-1}e^{(\alpha-1)/b}
            + \frac{\alpha-1}{2\alpha-1}e^{-\alpha/b}\Big)

    Reference: Mironov 2017, Prop 6. Used in: chapter 4.

    >>> round(float(laplace_rdp(scale=1.0, orders=[2.0])[0]), 4)
    0.6191
    """
    b = check_positive("scale", scale)
    a = _check_orders(orders)
    # log(x e^u + y e^v) = logaddexp(log x + u, log y + v)
    log_sum = np.logaddexp(np.log(a / (2 * a - 1)) + (a - 1) / b, np.log((a - 1) / (2 * a - 1)) - a / b)
    return log_sum / (a - 1)


def _log_a_integer(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha for integer alphas (vectorised), via log1p of the (positive) excess A_alpha - 1."""
    a = alphas[:, None]
    i = np.arange(2, int(alphas.max()) + 1, dtype=float)[None, :]
    x = (i * i - i) / (2 * sigma * sigma)
    # log(e^x - 1) = x + log1p(-e^-x), stable for large x
    with np.errstate(divide="ignore"):  # x underflows to 0 for a huge sigma: log(e^0 - 1) = -inf, exactly
        log_expm1 = x + np.log1p(-np.exp(-x))
    with np.errstate(invalid="ignore"):
        log_terms = (special.gammaln(a + 1) - special.gammaln(i + 1) - special.gammaln(a - i + 1)
                     + i * math.log(q) + (a - i) * math.log1p(-q) + log_expm1)
    log_terms = np.where(i <= a, log_terms, -np.inf)
    return np.logaddexp(0.0, special.logsumexp(log_terms, axis=1))  # log(1 + excess)


def _log_a_fractional(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha for fractional alphas (vectorised): the two series of Mironov, Talwar, Zhang 2019, Sec. 3.3.

    Each series is summed up to and including its first term below e^-30, as Opacus does.
    """
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    a = alphas[:, None]
    n = 64
    while True:
        i = np.arange(n, dtype=float)[None, :]
        coef = special.binom(a, i)
        log_coef = np.log(np.abs(coef))
        j = a - i
        log_t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
        log_t1 = log_coef + j * math.log(q) + i * math.log(1 - q)
        # log(erfc(x)) = log 2 + log Phi(-x sqrt 2), accurate far in the tail
        log_e0 = special.log_ndtr(-(i - z0) / sigma)
        log_e1 = special.log_ndtr(-(z0 - j) / sigma)
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        small = np.maximum(log_s0, log_s1) < -30
        if small.any(axis=1).all() or n >= 1 << 16:
            break
        n *= 4
    stop = np.where(small.any(axis=1), np.argmax(small, axis=1), n - 1)  # last term kept, per order
    keep = np.arange(n)[None, :] <= stop[:, None]
    sign = np.sign(coef)

    def log_signed_sum(log_s: np.ndarray) -> np.ndarray:
        log_s = np.where(keep, log_s, -np.inf)
        m = log_s.max(axis=1, keepdims=True)
        total = np.sum(sign * np.exp(log_s - m), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, m[:, 0] + np.log(np.where(total > 0, total, 1.0)), -np.inf)

    return np.logaddexp(log_signed_sum(log_s0), log_signed_sum(log_s1))


#: Above this noise multiplier the subsampled Gaussian's RDP is bounded by the full-batch curve
#: (under 1e-190 at the orders used) instead of summed: the series would overflow.
HUGE_SIGMA = 1e100


@lru_cache(maxsize=1024)
def _subsampled_gaussian_rdp_cached(q: float, sigma: float, orders: tuple) -> np.ndarray:
    alphas = np.asarray(orders, dtype=float)
    if q == 1.0 or sigma > HUGE_SIGMA:
        # sigma > HUGE_SIGMA: the series square sigma (overflow past 1.3e154); the full-batch curve
        # alpha / (2 sigma^2) < 1e-190 bounds the subsampled one from above (subsampling only lowers it)
        return alphas / (2 * sigma * sigma)
    out = np.empty_like(alphas)
    integer = alphas == np.round(alphas)
    if integer.any():
        out[integer] = _log_a_integer(q, sigma, alphas[integer])
    if (~integer).any():
        out[~integer] = _log_a_fractional(q, sigma, alphas[~integer])
    out /= alphas - 1
    out.setflags(write=False)
    return out


def subsampled_gaussian_rdp(*, sample_rate: float, noise_multiplier: float, orders) -> np.ndarray:
    r"""RDP of the Poisson-subsampled Gaussian mechanism, :math:`\ln(A_\alpha)/(\alpha-1)`.

    Args:
        sample_rate: :math:`q \in (0, 1]`.
        noise_multiplier: :math:`\sigma > 0`.
        orders: the orders :math:`\alpha > 1` (integer and fractional).

    Returns:
        The RDP of one step at each order.

    Reference: Mironov, Talwar, Zhang 2019, Sec. 3.3 (arXiv:1908.10530).

    >>> rdp = subsampled_gaussian_rdp(sample_rate=1.0, noise_multiplier=1.0, orders=[2.0])
    >>> rdp.tolist()
    [1.0]

    Used in: chapters 4, 6.
    """
    q = check_probability("sample_rate", sample_rate)
    s = check_positive("noise_multiplier", noise_multiplier)
    return _subsampled_gaussian_rdp_cached(q, s, tuple(float(a) for a in _check_orders(orders))).copy()


#: ``subsampled_gaussian_rdp.cache_clear()`` empties the memo of RDP curves (benchmarks time
#: the computation itself, not the lookup).
subsampled_gaussian_rdp.cache_clear = _subsampled_gaussian_rdp_cached.cache_clear


def rdp_to_epsilon(*, orders, rdp, delta: float) -> tuple[float, float]:
    r"""Convert an RDP curve to :math:`(\varepsilon, \delta)`-DP, optimising over the orders.

    .. math::
        \varepsilon = \min_\alpha\ \rho(\alpha) + \ln(1 - 1/\alpha) - \frac{\ln\delta + \ln\alpha}{\alpha-1}

    Args:
        orders: the orders :math:`\alpha`.
        rdp: :math:`\rho(\alpha)` at those orders.
        delta: :math:`\delta \in (0, 1)`.

    Returns:
        ``(epsilon, best_order)``; epsilon is clipped at 0 and is ``inf`` if every
        order is infinite.

    Reference: Balle et al. 2020, Thm 21 (arXiv:1905.09982); Canonne, Kamath,
    Steinke 2020, Prop 12 (arXiv:2004.00010).

    >>> eps, order = rdp_to_epsilon(orders=[2.0, 4.0], rdp=[0.1, 0.2], delta=1e-5)
    >>> round(eps, 4), order
    (3.2879, 4.0)

    Used in: chapter 4.
    """
    a = _check_orders(orders)
    r = _check_rdp(rdp, a)
    d = check_delta(delta)
    with np.errstate(invalid="ignore"):
        eps = r - (math.log(d) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    if np.all(np.isnan(eps)) or np.all(np.isinf(eps)):
        return math.inf, float("nan")
    k = int(np.nanargmin(eps))
    return max(0.0, float(eps[k])), float(a[k])


def rdp_to_delta(*, orders, rdp, epsilon: float) -> tuple[float, float]:
    r"""The smallest :math:`\delta` the RDP curve certifies at ``epsilon``.

    Solving the conversion of :func:`rdp_to_epsilon` for :math:`\delta`:
    :math:`\ln\delta = (\alpha-1)(\rho(\alpha) - \varepsilon + \ln(1-1/\alpha)) - \ln\alpha`.

    Returns:
        ``(delta, best_order)``, delta clipped to [0, 1].

    >>> round(rdp_to_delta(orders=[4.0], rdp=[0.2], epsilon=3.287902)[0], 7)
    1e-05

    Used in: chapter 4.
    """
    a = _check_orders(orders)
    r = _check_rdp(rdp, a)
    e = check_nonnegative("epsilon", epsilon)
    with np.errstate(invalid="ignore"):
        log_d = (a - 1) * (r - e + np.log1p(-1 / a)) - np.log(a)
    k = int(np.nanargmin(log_d))
    return float(min(1.0, math.exp(min(log_d[k], 0.0)))), float(a[k])


class RdpAccountant(Accountant):
    r"""RDP accountant: adds per-event RDP curves on a grid of orders, converts at query time.

    Args:
        orders: the RDP orders; the default is Opacus's ``DEFAULT_ALPHAS``.

    Supports Gaussian, Poisson-subsampled Gaussian, Laplace and pure
    (epsilon, 0) events.

    With the default orders (up to 63, as Opacus) no epsilon below
    :meth:`epsilon_floor` can be certified, however large the noise: the conversion at an order
    :math:`\alpha` costs :math:`(\ln(1/\delta) - \ln\alpha)/(\alpha - 1) + \ln(1 - 1/\alpha)` even at
    zero RDP (0.103 at :math:`\delta = 10^{-5}`, 0.289 at :math:`10^{-10}`). The PLD accountant has
    no such floor.

    Used in: chapters 4, 6, 13.
    """

    name = "rdp"

    def __init__(self, *, orders=DEFAULT_ORDERS) -> None:
        super().__init__()
        self.orders = _check_orders(orders)
        self._rdp = np.zeros_like(self.orders)

    @staticmethod
    def epsilon_floor(delta: float, orders=DEFAULT_ORDERS) -> float:
        """The epsilon these orders certify for a zero RDP curve: the least any run can get.

        >>> round(RdpAccountant.epsilon_floor(1e-5), 3), round(RdpAccountant.epsilon_floor(1e-10), 3)
        (0.103, 0.289)
        """
        a = _check_orders(orders)
        return rdp_to_epsilon(orders=a, rdp=np.zeros_like(a), delta=delta)[0]

    @handles(GaussianEvent)
    def _gaussian(self, event: GaussianEvent, count: int) -> None:
        self._rdp += count * gaussian_rdp(noise_multiplier=event.noise_multiplier, orders=self.orders)

    @handles((PoissonSampledEvent, GaussianEvent))
    def _subsampled_gaussian(self, event: PoissonSampledEvent, count: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            curve = subsampled_gaussian_rdp(
                sample_rate=event.sample_rate, noise_multiplier=event.event.noise_multiplier, orders=self.orders)
        # round-off just below 0 at tiny q is 0; anything else not >= 0 is an overflow of 1/(2 sigma^2)
        # (sigma below ~1e-154) and counts as +inf: clipping it at 0 had printed epsilon 0.83 for
        # sigma = 1e-160 (a red-team read of the CLI)
        curve = np.where(np.isnan(curve) | (curve < -1e-9), np.inf, np.maximum(curve, 0.0))
        with np.errstate(over="ignore"):
            self._rdp += count * curve

    @handles(LaplaceEvent)
    def _laplace(self, event: LaplaceEvent, count: int) -> None:
        self._rdp += count * laplace_rdp(scale=event.scale, orders=self.orders)

    @handles(EpsilonDeltaEvent, when=lambda e: e.delta == 0, note="delta = 0 only")
    def _pure(self, event: EpsilonDeltaEvent, count: int) -> None:
        e = event.epsilon
        self._rdp += count * np.minimum(e, self.orders * e * e / 2)

    @property
    def rdp(self) -> np.ndarray:
        """The composed RDP curve at :attr:`orders`."""
        return self._rdp.copy()

    def get_epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """Epsilon and the order that attains it."""
        return rdp_to_epsilon(orders=self.orders, rdp=self._rdp, delta=delta)

    def _epsilon(self, delta: float) -> float:
        return rdp_to_epsilon(orders=self.orders, rdp=self._rdp, delta=delta)[0]

    def _delta(self, epsilon: float) -> float:
        return rdp_to_delta(orders=self.orders, rdp=self._rdp, epsilon=epsilon)[0]
