r"""The basic mechanisms: Laplace, Gaussian (classic and analytic), exponential, randomized response.

:math:`M` is :math:`(\varepsilon, \delta)`-DP when, for all neighbouring
:math:`D \simeq D'` and all output sets :math:`S`,
:math:`\Pr[M(D) \in S] \le e^{\varepsilon} \Pr[M(D') \in S] + \delta`.
Privacy parameters are keyword-only and validated at once; all randomness comes
from an explicit ``rng`` (``privlab.config.make_rng(seed)``); sensitivities
come from :mod:`privlab.sensitivity`, whose Gaussian calibrations
(:func:`classic_gaussian_sigma`, :func:`gaussian_delta`,
:func:`analytic_gaussian_sigma`) are re-exported here.

>>> laplace_scale(sensitivity=1.0, epsilon=0.5)
2.0
>>> round(analytic_gaussian_sigma(sensitivity=1.0, epsilon=1.0, delta=1e-5), 4)
3.7306

Floating point: these mechanisms teach the proofs, which are about real numbers. Their samplers
are numpy's double-precision ones, and such noise leaks through its low-order bits: an output
reachable from one input and not from its neighbour (Mironov 2012). Chapter 12 attacks
:func:`laplace_mechanism`'s sampler (``privlab.audit.fpattack``; the two are bit for bit the same
draws) and names the input far above the epsilon-DP ceiling. For a release, use the exact integer
samplers of :mod:`privlab.discrete` (discrete Laplace and Gaussian, the grid mechanism).

References: Dwork and Roth (2014), "The Algorithmic Foundations of Differential
Privacy"; Balle and Wang (2018), arXiv:1805.06530; McSherry and Talwar (2007);
Warner (1965); Mironov (2012), "On significance of the least significant bits for
differential privacy", CCS.

Used in: chapter 2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import expit, logsumexp

from privlab._validate import check_array, check_bool, check_epsilon, check_nonnegative, check_positive, check_rng
from privlab.gaussian import analytic_gaussian_sigma, classic_gaussian_sigma, gaussian_delta

__all__ = [
    "laplace_scale", "laplace_mechanism", "laplace_expected_abs_error",
    "classic_gaussian_sigma", "gaussian_delta", "analytic_gaussian_sigma", "gaussian_mechanism",
    "gaussian_expected_abs_error", "exponential_log_probabilities", "exponential_mechanism",
    "exponential_mechanism_gumbel", "randomized_response_keep_probability", "randomized_response",
    "randomized_response_estimate", "RandomizedResponseEstimate",
    "randomized_response_noise_standard_error",
]  # fmt: skip


def _add_noise(value, noise_scale: float, sampler) -> float | np.ndarray:
    """``value + noise_scale * sampler(shape)``: a float for scalar input, else an array of its shape."""
    x = check_array("value", value)
    noisy = x + noise_scale * sampler(size=x.shape)
    return float(noisy) if np.ndim(value) == 0 else noisy


# --------------------------------------------------------------------------- Laplace


def laplace_scale(*, sensitivity, epsilon) -> float:
    r"""Scale of the Laplace mechanism, :math:`b = \Delta_1 / \varepsilon`.

    Noise :math:`\mathrm{Lap}(b)` (density :math:`\frac{1}{2b} e^{-|x|/b}`)
    makes a query of L1 sensitivity :math:`\Delta_1` :math:`\varepsilon`-DP.
    Reference: Dwork and Roth (2014), Theorem 3.6.

    Args:
        sensitivity: :math:`\Delta_1 \ge 0`.
        epsilon: :math:`\varepsilon > 0`.

    Returns:
        :math:`b`.

    Raises:
        ValueError: ``epsilon`` not finite and > 0; ``sensitivity`` negative, NaN or infinite.

    >>> laplace_scale(sensitivity=2.0, epsilon=0.1)
    20.0

    Used in: chapter 2.
    """
    epsilon = check_epsilon(epsilon)
    return check_nonnegative("sensitivity", sensitivity) / epsilon


def laplace_mechanism(value, *, sensitivity, epsilon, rng: np.random.Generator):
    r"""Release :math:`f(D) + Z`, :math:`Z_j \sim \mathrm{Lap}(\Delta_1/\varepsilon)` i.i.d. per coordinate.

    For a vector answer (a histogram), independent Laplace noise on every
    coordinate with the L1 sensitivity of the whole vector is
    :math:`\varepsilon`-DP (vector Laplace). Reference: Dwork and Roth (2014),
    Definition 3.3 and Theorem 3.6. The guarantee is the real-valued mechanism's: this sampler is
    numpy's double-precision Laplace, which leaks through its low-order bits (Mironov 2012;
    chapter 12 attacks it); :func:`privlab.discrete.discrete_laplace_mechanism` is exact.

    Args:
        value: :math:`f(D)`, a finite number or a non-empty finite array.
        sensitivity: :math:`\Delta_1`, the L1 sensitivity of ``value``.
        epsilon: :math:`\varepsilon > 0`.
        rng: the source of randomness.

    Returns:
        A float for a scalar ``value``, else an array of its shape.

    Raises:
        ValueError: invalid ``epsilon``, ``sensitivity`` or ``rng``; empty, NaN or infinite ``value``.

    Used in: chapter 2.
    """
    b = laplace_scale(sensitivity=sensitivity, epsilon=epsilon)
    return _add_noise(value, b, check_rng(rng).laplace)


def laplace_expected_abs_error(*, sensitivity, epsilon) -> float:
    r"""Expected absolute error of the Laplace mechanism, :math:`\mathbb E|Z| = b = \Delta_1/\varepsilon`.

    (Its standard deviation is :math:`\sqrt 2\, b`.)

    Args:
        sensitivity: :math:`\Delta_1 \ge 0`.
        epsilon: :math:`\varepsilon > 0`.

    Returns:
        :math:`\Delta_1 / \varepsilon`.

    Raises:
        ValueError: as :func:`laplace_scale`.

    >>> laplace_expected_abs_error(sensitivity=1, epsilon=0.5)
    2.0

    Used in: chapter 2.
    """
    return laplace_scale(sensitivity=sensitivity, epsilon=epsilon)


# --------------------------------------------------------------------------- Gaussian


def gaussian_mechanism(value, *, sensitivity, epsilon, delta, rng: np.random.Generator, calibration="analytic"):
    r"""Release :math:`f(D) + Z`, :math:`Z_j \sim \mathcal N(0, \sigma^2)` i.i.d. per coordinate.

    :math:`\sigma` from :func:`analytic_gaussian_sigma` (``"analytic"``, any
    :math:`\varepsilon`) or :func:`classic_gaussian_sigma` (``"classic"``, only
    :math:`\varepsilon < 1`), with the L2 sensitivity of the whole vector.
    Reference: Dwork and Roth (2014), Theorem A.1; Balle and Wang (2018), arXiv:1805.06530.
    As for :func:`laplace_mechanism`, the guarantee is the real-valued mechanism's (double-precision
    normal noise has the same kind of low-order-bit leak); the exact one is
    :func:`privlab.discrete.discrete_gaussian_mechanism`.

    Args:
        value: :math:`f(D)`, a finite number or a non-empty finite array.
        sensitivity: :math:`\Delta_2`.
        epsilon: :math:`\varepsilon`.
        delta: :math:`\delta`.
        rng: the source of randomness.
        calibration: ``"analytic"`` or ``"classic"``.

    Returns:
        A float for a scalar ``value``, else an array of its shape.

    Raises:
        ValueError: invalid parameters, ``rng`` or ``value``; an unknown calibration;
            ``epsilon >= 1`` with ``"classic"``.

    Used in: chapter 2.
    """
    calibrations = {"analytic": analytic_gaussian_sigma, "classic": classic_gaussian_sigma}
    if calibration not in calibrations:
        raise ValueError(f"calibration must be one of {tuple(calibrations)}, got {calibration!r}")
    sigma = calibrations[calibration](sensitivity=sensitivity, epsilon=epsilon, delta=delta)
    return _add_noise(value, sigma, check_rng(rng).standard_normal)


def gaussian_expected_abs_error(*, sigma) -> float:
    r"""Expected absolute error of Gaussian noise, :math:`\mathbb E|Z| = \sigma\sqrt{2/\pi}` for :math:`Z \sim \mathcal N(0, \sigma^2)`.

    Args:
        sigma: :math:`\sigma \ge 0`.

    Returns:
        :math:`\sigma \sqrt{2/\pi}`.

    Raises:
        ValueError: negative, NaN or infinite ``sigma``.

    >>> round(gaussian_expected_abs_error(sigma=1.0), 6)
    0.797885

    Used in: chapter 2.
    """
    return check_nonnegative("sigma", sigma) * math.sqrt(2.0 / math.pi)


# --------------------------------------------------------------------------- exponential


def _exponential_scores(utilities, epsilon, sensitivity, monotonic: bool) -> np.ndarray:
    """The exponents eps * (u - max u) / (2 Delta_u) (without the 2 when monotonic).

    Shifted by the largest utility first (the distribution is unchanged): with utilities near 2^52
    the unshifted exponents lose the digits that tell candidates apart, and the Gumbel draws added
    to them are rounded to the exponents' coarse grid.
    """
    epsilon, sensitivity = check_epsilon(epsilon), check_positive("sensitivity", sensitivity)
    monotonic = check_bool("monotonic", monotonic)
    u = check_array("utilities", utilities, ndim=1)
    with np.errstate(over="ignore"):  # a spread beyond 1e308 gives -inf: probability 0, as it is
        return epsilon * (u - u.max()) / (sensitivity if monotonic else 2.0 * sensitivity)


def exponential_log_probabilities(utilities, *, epsilon, sensitivity, monotonic: bool = False) -> np.ndarray:
    r"""Log selection probabilities of the exponential mechanism.

    .. math::

        \log \Pr[M(D) = r] = \frac{\varepsilon u(D, r)}{2\Delta u}
            - \log \sum_{r'} \exp\Big(\frac{\varepsilon u(D, r')}{2\Delta u}\Big)

    computed with ``logsumexp`` (the maximum is subtracted before
    exponentiating), so utilities in the tens of thousands are exact. With
    ``monotonic=True`` (utilities that all move the same way between
    neighbours, such as counts under add/remove neighbouring; under
    replace-one one count rises while another falls, so counts are not
    monotonic and the factor 2 must stay) the factor 2 is dropped.
    Reference: McSherry and Talwar (2007), "Mechanism design via differential privacy"; Dwork and Roth (2014), Theorem 3.10.

    Args:
        utilities: :math:`u(D, r)` per candidate :math:`r`, a finite non-empty 1-D array.
        epsilon: :math:`\varepsilon > 0`.
        sensitivity: :math:`\Delta u > 0`.
        monotonic: drop the factor 2.

    Returns:
        The log probabilities, one per candidate.

    Raises:
        ValueError: invalid ``epsilon``, ``sensitivity`` (0 included) or ``utilities``.

    >>> exponential_log_probabilities([42_000, 38_000], epsilon=1, sensitivity=1)
    array([    0., -2000.])

    Used in: chapter 2.
    """
    scores = _exponential_scores(utilities, epsilon, sensitivity, monotonic)
    return scores - logsumexp(scores)


def exponential_mechanism(utilities, *, epsilon, sensitivity, rng: np.random.Generator, monotonic=False, size=None):
    r"""Sample candidate :math:`r` with :math:`\Pr[r] \propto \exp(\varepsilon u(D, r) / (2\Delta u))`, by inverse CDF.

    Draws :math:`U \sim \mathrm{Uniform}[0, 1)` and returns the first :math:`r`
    with :math:`\sum_{r' \le r} \Pr[r'] > U`, the probabilities from
    :func:`exponential_log_probabilities`. Reference: McSherry and Talwar (2007).
    In double precision :math:`U` is a multiple of :math:`2^{-53}`, so each probability is realised
    as a whole number of :math:`2^{-53}` steps (0 or 1 for one below :math:`2^{-53}`): pure
    :math:`\varepsilon`-DP up to an additive :math:`2^{-53}` or so per candidate. The exact
    alternative samples on integers (Ilvento 2020, the base-2 exponential mechanism).

    Args:
        utilities: :math:`u(D, r)`, a finite non-empty 1-D array.
        epsilon: :math:`\varepsilon > 0`.
        sensitivity: :math:`\Delta u > 0`.
        rng: the source of randomness.
        monotonic: drop the factor 2.
        size: ``None`` for one draw, else the number (or shape) of independent draws.

    Returns:
        An ``int`` index, or an integer array of shape ``size``.

    Raises:
        ValueError: invalid parameters, ``utilities`` or ``rng``.

    >>> from privlab.config import make_rng
    >>> exponential_mechanism([100, 0], epsilon=1, sensitivity=1, rng=make_rng(0))
    0

    Used in: chapter 2.
    """
    log_p = exponential_log_probabilities(utilities, epsilon=epsilon, sensitivity=sensitivity, monotonic=monotonic)
    cdf = np.cumsum(np.exp(log_p))
    idx = np.searchsorted(cdf, check_rng(rng).random(size) * cdf[-1], side="right")
    idx = np.minimum(idx, len(cdf) - 1)
    return int(idx) if size is None else idx


def exponential_mechanism_gumbel(
    utilities, *, epsilon, sensitivity, rng: np.random.Generator, monotonic=False, size=None
):
    r"""The exponential mechanism by the Gumbel-max trick, :math:`\arg\max_r \big(\frac{\varepsilon u(D, r)}{2\Delta u} + G_r\big)`.

    With :math:`G_r` i.i.d. standard Gumbel,
    :math:`\Pr[\arg\max_r (s_r + G_r) = r] = e^{s_r} / \sum_{r'} e^{s_{r'}}`:
    the distribution of :func:`exponential_mechanism`, with no normalisation
    (report-noisy-max with Gumbel noise). Reference: Durfee and Rogers (2019),
    arXiv:1905.04273.

    Args:
        utilities: :math:`u(D, r)`, a finite non-empty 1-D array.
        epsilon: :math:`\varepsilon > 0`.
        sensitivity: :math:`\Delta u > 0`.
        rng: the source of randomness.
        monotonic: drop the factor 2.
        size: ``None`` for one draw, else the number (or shape) of independent draws.

    Returns:
        An ``int`` index, or an integer array of shape ``size``.

    Raises:
        ValueError: invalid parameters, ``utilities`` or ``rng``.

    Used in: chapter 2.
    """
    scores = _exponential_scores(utilities, epsilon, sensitivity, monotonic)
    shape = () if size is None else tuple(np.atleast_1d(size))
    idx = np.argmax(scores + check_rng(rng).gumbel(size=shape + scores.shape), axis=-1)
    return int(idx) if size is None else idx


# --------------------------------------------------------------------------- randomized response


def randomized_response_keep_probability(*, epsilon) -> float:
    r"""Probability that randomized response reports the true bit, :math:`p = e^\varepsilon / (1 + e^\varepsilon)`.

    Then :math:`p / (1 - p) = e^\varepsilon`: exactly :math:`\varepsilon`-DP.

    Args:
        epsilon: :math:`\varepsilon > 0`.

    Returns:
        :math:`p \in (1/2, 1]`.

    Raises:
        ValueError: invalid ``epsilon``.

    >>> round(randomized_response_keep_probability(epsilon=math.log(3)), 6)
    0.75

    Used in: chapter 2.
    """
    return float(expit(check_epsilon(epsilon)))


def _check_bits(name: str, bits) -> np.ndarray:
    b = check_array(name, bits)
    if not np.all((b == 0) | (b == 1)):
        raise ValueError(f"{name} must contain only 0 and 1, got {b[(b != 0) & (b != 1)].ravel()[0]}")
    return b.astype(np.int64)


def randomized_response(bits, *, epsilon, rng: np.random.Generator) -> np.ndarray:
    r"""Warner's randomized response: each bit kept with probability :math:`e^\varepsilon/(1+e^\varepsilon)`, else flipped.

    .. math:: \Pr[y = x] = \frac{e^\varepsilon}{1 + e^\varepsilon}, \qquad \Pr[y = 1 - x] = \frac{1}{1 + e^\varepsilon}

    Each report is :math:`\varepsilon`-DP for its respondent (local DP): the keep probability is
    rounded down to the uniform draw's grid of :math:`2^{-53}`, so in double precision the report
    is at least as private as claimed, never less (the realised :math:`\varepsilon` is at most
    :math:`\ln(2^{53} - 1) \approx 36.7`, and about 36.04 for :math:`36.5 \le \varepsilon <
    54 \ln 2 \approx 37.4`).
    Reference: Warner (1965), "Randomized response: a survey technique for
    eliminating evasive answer bias", JASA 60(309); Dwork and Roth (2014), Section 3.2.

    Args:
        bits: the true bits :math:`x \in \{0, 1\}`, a non-empty array of any shape.
        epsilon: :math:`\varepsilon > 0`.
        rng: the source of randomness.

    Returns:
        The reported bits :math:`y`, an integer array of the shape of ``bits``.

    Raises:
        ValueError: invalid ``epsilon`` or ``rng``; empty ``bits`` or values other than 0 and 1.

    >>> from privlab.config import make_rng
    >>> randomized_response([0, 1, 1], epsilon=1000, rng=make_rng(0))
    array([0, 1, 1])

    Used in: chapter 2.
    """
    p = _keep_threshold(epsilon)
    rng = check_rng(rng)
    x = _check_bits("bits", bits)
    return np.where(rng.random(size=x.shape) < p, x, 1 - x)


#: ``rng.random()`` returns multiples of this: ``P(U < t) = t`` exactly for ``t`` a multiple of it.
UNIFORM_GRID = 2.0**-53


#: A computed probability is trusted to this relative error (a few ulps of its formula), no closer.
_PROBABILITY_RTOL = 2.0**-48


def threshold_at_most(p: float) -> float:
    """The largest ``t = j 2^-53 < 1`` below ``p``: the event ``rng.random() < t`` has probability
    exactly ``t <= p`` (``p`` is first lowered by :data:`_PROBABILITY_RTOL`, its rounding)."""
    return min(math.floor(p * (1 - _PROBABILITY_RTOL) / UNIFORM_GRID) * UNIFORM_GRID, 1.0 - UNIFORM_GRID)


def threshold_at_least(q: float) -> float:
    """The smallest ``t = j 2^-53 > 0`` above ``q``: the event ``rng.random() < t`` has probability
    exactly ``t >= q`` (``q`` first raised by :data:`_PROBABILITY_RTOL`; never 0, so an event of
    tiny probability still happens sometimes)."""
    return max(math.ceil(q * (1 + _PROBABILITY_RTOL) / UNIFORM_GRID) * UNIFORM_GRID, UNIFORM_GRID)


def _keep_threshold(epsilon) -> float:
    """The ``t`` with ``rng.random() < t`` as randomized response's keep event.

    ``P(keep) = t``, rounded *down* from ``1 - expit(-eps)`` (the flip probability is accurate for
    any eps) onto the uniform's grid, never 1.0 (for eps >= 37, ``expit(eps)`` is 1.0 in double
    precision: no bit would ever be flipped) and never below 1/2 (for eps below about 3e-16 the
    step down would make a flip likelier than a keep).
    """
    q = float(expit(-check_epsilon(epsilon)))
    return max(threshold_at_most(1.0 - q * (1 + _PROBABILITY_RTOL)), 0.5)


class RandomizedResponseEstimate(NamedTuple):
    """An estimated proportion and its standard error."""

    estimate: float
    standard_error: float


def randomized_response_estimate(responses, *, epsilon) -> RandomizedResponseEstimate:
    r"""Unbiased estimate of the true proportion of ones from randomized responses, with its standard error.

    With :math:`\bar y` the share of reported ones among :math:`n` and
    :math:`p` the keep probability, :math:`\mathbb E \bar y = (1 - p) + (2p - 1)\pi`, so

    .. math::

        \hat\pi = \frac{\bar y - (1 - p)}{2p - 1}, \qquad
        \widehat{\mathrm{se}}(\hat\pi) = \frac{\sqrt{\bar y (1 - \bar y) / n}}{2p - 1},
        \qquad 2p - 1 = \tanh(\varepsilon/2).

    :math:`\hat\pi` is unbiased (it can leave :math:`[0, 1]`); the standard
    error is Warner's plug-in one, for :math:`\pi` the proportion of a *population*
    from which the :math:`n` people are a random sample: it counts the sampling
    variation as well as the flips. For the share of ones in the dataset itself
    (the bits fixed, only the flips random) use
    :func:`randomized_response_noise_standard_error`, which is smaller.
    Reference: Warner (1965).

    Args:
        responses: the reported bits :math:`y`, a non-empty array of 0 and 1.
        epsilon: :math:`\varepsilon`, as given to :func:`randomized_response`.

    Returns:
        ``RandomizedResponseEstimate(estimate, standard_error)``.

    Raises:
        ValueError: invalid ``epsilon``; empty ``responses`` or values other than 0 and 1.

    >>> randomized_response_estimate([1, 1, 0, 1], epsilon=math.log(3))
    RandomizedResponseEstimate(estimate=0.99..., standard_error=0.433...)

    Used in: chapter 2.
    """
    epsilon = check_epsilon(epsilon)
    y = _check_bits("responses", responses).ravel()
    y_bar = float(np.mean(y))
    flip, gain = float(expit(-epsilon)), math.tanh(epsilon / 2.0)  # 1 - p, 2p - 1
    return RandomizedResponseEstimate(
        estimate=(y_bar - flip) / gain, standard_error=math.sqrt(y_bar * (1.0 - y_bar) / y.size) / gain
    )


def randomized_response_noise_standard_error(*, epsilon, n) -> float:
    r"""Standard error of :math:`\hat\pi` due to the flips alone, for fixed true bits.

    When the estimand is the share of ones among the :math:`n` people who answered
    (their bits fixed), only randomized response's flips are random. Each report
    is flipped independently with probability :math:`1 - p`, so
    :math:`\operatorname{Var}(\bar y) = p(1 - p)/n` whatever the bits, and

    .. math::

        \mathrm{se}(\hat\pi) = \frac{\sqrt{p(1 - p)/n}}{2p - 1}
        = \frac{e^{\varepsilon/2}}{(e^{\varepsilon} - 1)\sqrt{n}}.

    Unlike :func:`randomized_response_estimate`'s plug-in standard error it does
    not depend on the data, and it leaves out the sampling variation of a
    population proportion.

    Args:
        epsilon: :math:`\varepsilon > 0`, as given to :func:`randomized_response`.
        n: the number of reports, a positive integer.

    Returns:
        The standard error.

    Raises:
        ValueError: invalid ``epsilon``; ``n`` not a positive integer.

    >>> round(randomized_response_noise_standard_error(epsilon=math.log(3), n=4), 4)
    0.433

    Used in: chapter 2.
    """
    epsilon = check_epsilon(epsilon)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return math.exp(epsilon / 2.0) / (math.expm1(epsilon) * math.sqrt(int(n)))
