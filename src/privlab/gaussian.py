r"""Gaussian noise calibrated to L2 sensitivity: the classic bound and the exact (analytic) one.

The Gaussian mechanism releases :math:`f(D) + \mathcal{N}(0, \sigma^2 I)`. Two calibrations:

- classic (Dwork and Roth 2014, Theorem A.1): :math:`\sigma = \Delta_2\sqrt{2\ln(1.25/\delta)}/\varepsilon`,
  proven only for :math:`\varepsilon < 1`;
- analytic (Balle and Wang 2018, arXiv:1805.06530): the smallest :math:`\sigma` whose exact
  :math:`\delta(\varepsilon)` (:func:`gaussian_delta`) is at most the target, for any :math:`\varepsilon`.

>>> round(analytic_gaussian_sigma(sensitivity=1, epsilon=1, delta=1e-5), 4)
3.7306

Used in: chapters 2, 4.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import erfcx, log_ndtr

from privlab._validate import check_delta, check_epsilon, check_nonnegative, check_positive

__all__ = ["classic_gaussian_sigma", "gaussian_delta", "analytic_gaussian_sigma"]



def classic_gaussian_sigma(*, sensitivity, epsilon, delta) -> float:
    r"""Classic Gaussian calibration, :math:`\sigma = \Delta_2 \sqrt{2 \ln(1.25/\delta)} / \varepsilon`, for :math:`\varepsilon < 1`.

    The proof needs :math:`\varepsilon < 1`, so larger values are refused; use
    :func:`analytic_gaussian_sigma`, valid for every :math:`\varepsilon` (and
    smaller where the classic one is valid). Reference: Dwork and Roth (2014), Theorem A.1.

    Args:
        sensitivity: :math:`\Delta_2 \ge 0`, the L2 sensitivity.
        epsilon: :math:`\varepsilon \in (0, 1)`.
        delta: :math:`\delta \in (0, 1)`.

    Returns:
        :math:`\sigma`.

    Raises:
        ValueError: invalid parameters, or ``epsilon >= 1``.

    >>> round(classic_gaussian_sigma(sensitivity=1, epsilon=0.5, delta=1e-5), 4)
    9.6896

    Used in: chapter 2.
    """
    epsilon, delta = check_epsilon(epsilon), check_delta(delta)
    sensitivity = check_nonnegative("sensitivity", sensitivity)
    if epsilon >= 1:
        raise ValueError(
            f"the classic Gaussian calibration is only valid for epsilon < 1 (Dwork & Roth 2014, "
            f"Theorem A.1), got epsilon={epsilon}; use analytic_gaussian_sigma (Balle & Wang 2018)"
        )
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def _log_gaussian_delta(ratio: float, epsilon: float) -> float:
    """log of gaussian_delta as a function of ratio = sigma / Delta_2 (see gaussian_delta)."""
    if ratio == 0:  # sigma / Delta underflowed: no noise, delta = 1
        return 0.0
    h, x = 0.5 / ratio, epsilon * ratio
    a, b = h - x, -h - x  # delta = Phi(a) - e^eps Phi(b)
    if a < 30.0:
        # log Phi(z) = log(erfcx(-z/sqrt2) / 2) - z^2/2, and (b^2 - a^2)/2 = eps exactly, so the
        # large Gaussian exponents cancel on paper: gap = log Phi(a) - log(e^eps Phi(b)).
        scaled_a, scaled_b = erfcx(-a / math.sqrt(2.0)), erfcx(-b / math.sqrt(2.0))
        if scaled_b == 0:  # sigma / Delta overflowed to inf: no privacy loss at all
            return -math.inf
        gap = math.log(scaled_a) - math.log(scaled_b)
    else:  # erfcx(-a/sqrt2) would overflow; Phi(a) = 1 here and there is no cancellation
        gap = float(log_ndtr(a) - epsilon - log_ndtr(b))
    if gap <= 0:  # delta is 0 to within rounding
        return -math.inf
    # log(e^la - e^lb) = la + log(-expm1(lb - la))
    return float(log_ndtr(a)) + math.log(-math.expm1(-gap))


def _log_gaussian_delta_upper(ratio: float, epsilon: float) -> float:
    """An upper bound on log gaussian_delta that covers its rounding (what the sigma search accepts).

    For small epsilon, ``a = h - x`` and ``b = -h - x`` lose digits to rounding when ``h << x``, and
    ``delta`` is a difference of nearly equal terms: add the most that an error of a few ulps of
    ``x`` in ``a`` and ``b`` (``delta`` moves by at most ``phi(a)`` per unit of either) and a few
    ulps in the log-gap (``Phi(a)`` per unit) can change it.
    """
    if ratio == 0:
        return 0.0
    h, x = 0.5 / ratio, epsilon * ratio
    a = h - x
    log_phi = -0.5 * min(a, 0.0) ** 2 - 0.5 * math.log(2 * math.pi)  # phi at the point of [b, a] nearest 0
    log_slack = math.log(8 * 2.0**-52) + float(np.logaddexp(math.log(max(x, h)) + log_phi, log_ndtr(a)))
    return float(np.logaddexp(_log_gaussian_delta(ratio, epsilon) + 1e-12, log_slack))


def gaussian_delta(*, sigma, sensitivity, epsilon) -> float:
    r"""The exact :math:`\delta` of the Gaussian mechanism at :math:`\varepsilon`.

    .. math::

        \delta(\varepsilon; \sigma) = \Phi\Big(\frac{\Delta}{2\sigma} - \frac{\varepsilon\sigma}{\Delta}\Big)
            - e^{\varepsilon}\, \Phi\Big(-\frac{\Delta}{2\sigma} - \frac{\varepsilon\sigma}{\Delta}\Big)

    :math:`f(D) + \mathcal N(0, \sigma^2 I)` is :math:`(\varepsilon,\delta)`-DP
    if and only if :math:`\delta \ge \delta(\varepsilon; \sigma)`. Computed in
    log space with ``erfcx`` and ``log_ndtr`` (the Gaussian exponents and the
    :math:`e^\varepsilon` cancel analytically), so it neither overflows for
    :math:`\varepsilon` in the hundreds nor loses precision for tiny :math:`\delta`
    (relative error about 1e-10 or better for epsilon >= 1e-3). Reference: Balle and Wang (2018),
    "Improving the Gaussian mechanism for differential privacy", arXiv:1805.06530, Theorem 8.

    Args:
        sigma: :math:`\sigma > 0`, the noise standard deviation.
        sensitivity: :math:`\Delta = \Delta_2 \ge 0`, the L2 sensitivity.
        epsilon: :math:`\varepsilon > 0`.

    Returns:
        :math:`\delta(\varepsilon; \sigma) \in [0, 1]`; 0 when ``sensitivity`` is 0.

    Raises:
        ValueError: invalid ``sigma``, ``sensitivity`` or ``epsilon``.

    >>> round(gaussian_delta(sigma=1.0, sensitivity=1.0, epsilon=1.0), 6)
    0.126937

    Used in: chapter 2.
    """
    sigma = check_positive("sigma", sigma)
    sensitivity = check_nonnegative("sensitivity", sensitivity)
    epsilon = check_epsilon(epsilon)
    return 0.0 if sensitivity == 0 else math.exp(_log_gaussian_delta(sigma / sensitivity, epsilon))


def analytic_gaussian_sigma(*, sensitivity, epsilon, delta) -> float:
    r"""The analytic Gaussian mechanism: the smallest :math:`\sigma` that is :math:`(\varepsilon, \delta)`-DP.

    .. math:: \sigma^* = \min\{\sigma > 0 : \delta(\varepsilon; \sigma) \le \delta\}

    with :math:`\delta(\varepsilon; \sigma)` from :func:`gaussian_delta`,
    decreasing in :math:`\sigma` and depending only on :math:`\sigma/\Delta_2`.
    The root is bracketed by doubling and halving :math:`\sigma/\Delta_2` (at
    most 2,000 steps each way), then found by Brent's method on
    :math:`\log \delta(\varepsilon; \sigma) - \log\delta`, and stepped up until an upper bound
    on :math:`\delta(\varepsilon; \sigma)` that covers its rounding is below :math:`\delta` (checked
    against 80-digit arithmetic down to :math:`\varepsilon = 10^{-14}`). Where double precision
    cannot resolve :math:`\delta` the result is larger than :math:`\sigma^*`, never smaller: from
    about :math:`\varepsilon = 10^{-8}` for :math:`\delta \le 10^{-50}` (0.4% larger at
    :math:`10^{-10}`), more below :math:`10^{-12}`; below about :math:`10^{-32}` it raises.
    Reference: Balle and Wang (2018), arXiv:1805.06530,
    Theorem 8 and Algorithm 1.

    Args:
        sensitivity: :math:`\Delta_2 \ge 0`.
        epsilon: :math:`\varepsilon > 0`.
        delta: :math:`\delta \in (0, 1)`.

    Returns:
        :math:`\sigma^*` (0 when ``sensitivity`` is 0).

    Raises:
        ValueError: invalid parameters, or an epsilon too small (below about 1e-32) for double
            precision to certify any sigma.

    >>> round(analytic_gaussian_sigma(sensitivity=1, epsilon=0.5, delta=1e-5), 4)
    7.0318
    >>> round(analytic_gaussian_sigma(sensitivity=1, epsilon=50, delta=1e-12), 4)
    0.1907

    Used in: chapter 2.
    """
    epsilon, delta = check_epsilon(epsilon), check_delta(delta)
    sensitivity = check_nonnegative("sensitivity", sensitivity)
    if sensitivity == 0:
        return 0.0
    log_target = math.log(delta)

    def excess(t: float) -> float:  # > 0 while sigma = e^t * Delta is too small
        return max(_log_gaussian_delta(math.exp(t), epsilon), -1e300) - log_target

    lo = hi = math.log(math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon)  # classic sigma / Delta
    for _ in range(2000):  # delta(sigma) -> 0 as sigma -> inf
        if excess(hi) <= 0:
            break
        lo, hi = hi, hi + math.log(2.0)
    for _ in range(2000):  # delta(sigma) -> 1 > delta as sigma -> 0
        if excess(lo) > 0:
            break
        lo, hi = lo - math.log(2.0), lo
    if not excess(lo) > 0 >= excess(hi):  # pragma: no cover - impossible for a valid delta
        raise RuntimeError(f"could not bracket sigma for epsilon={epsilon}, delta={delta}")
    sigma = sensitivity * math.exp(brentq(excess, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500))
    # Brent may stop a hair short, and for tiny epsilon delta(sigma) is itself rounded: step up
    # (by 2^-52, 2^-51, ...) until an upper bound on delta(sigma) that covers the rounding is <= delta
    for k in range(64):
        if _log_gaussian_delta_upper(sigma / sensitivity, epsilon) <= log_target:
            return sigma
        sigma *= 1.0 + 2.0 ** (k - 52)
    # reached for epsilon below about 1e-32: the rounding bound swamps delta itself
    raise ValueError(f"double precision cannot certify a sigma for epsilon={epsilon}, delta={delta}: "
                     f"epsilon is too small for the exact delta to be resolved")

