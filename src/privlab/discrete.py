r"""Exact samplers for the discrete Laplace and discrete Gaussian, and the mechanisms built on them.

Floating-point noise leaks through its low-order bits (Mironov 2012; see
:mod:`privlab.audit.fpattack`). The fix of Canonne, Kamath and Steinke (2020,
arXiv:2004.00010) samples *integer* noise exactly, with integer arithmetic only:

.. math::

    \Pr[\mathrm{Lap}_{\mathbb Z}(t) = z] = \frac{e^{1/t} - 1}{e^{1/t} + 1}\, e^{-|z|/t}, \qquad
    \Pr[\mathcal N_{\mathbb Z}(0, \sigma^2) = z] = \frac{e^{-z^2/(2\sigma^2)}}{\sum_{y \in \mathbb Z} e^{-y^2/(2\sigma^2)}}.

Every coin is :math:`\mathrm{Bernoulli}(n/d)`, drawn as "a uniform integer
below :math:`d` is below :math:`n`", and :math:`\mathrm{Bernoulli}(e^{-\gamma})`
for rational :math:`\gamma` is built from such coins (CKS Algorithm 1). So the
parameters are exact rationals: ``int`` or :class:`fractions.Fraction`; a float
(``0.1`` is not 1/10) or NaN is refused.

Randomness: ``rng`` is either a :class:`numpy.random.Generator` (reproducible,
for teaching and tests; ``rng.integers``, whose bounded integers are exactly
uniform, vectorised over a batch of draws, or 64-bit words turned into uniform
integers of any size by rejection) or a :class:`random.SystemRandom` (the
operating system's CSPRNG, for a release that must resist an adversary who
could predict a seeded PRNG; ``randrange``, one draw at a time, about 10x
slower). Both give exactly uniform integers, so the samplers are exact in
either mode; the algorithms are in :mod:`privlab._discrete_core`.

>>> discrete_laplace_pmf(0, scale=1) == math.tanh(0.5)
True
>>> round(discrete_gaussian_delta(sigma2=1, epsilon=1), 6)
0.141351

Used in: chapter 12.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from scipy.optimize import brentq

from privlab import _discrete_core as core
from privlab._validate import check_array, check_bool, check_int, check_positive, check_probability

__all__ = [
    "discrete_gaussian_delta", "discrete_gaussian_epsilon", "discrete_gaussian_mechanism", "discrete_gaussian_pmf",
    "discrete_laplace_mechanism", "discrete_laplace_pmf", "sample_bernoulli_exp", "sample_discrete_gaussian",
    "sample_discrete_laplace", "snapping_grid_index", "snapping_grid_sensitivity", "snapping_mechanism",
]  # fmt: skip

_TAIL = 50.0  # terms below e^-50 (2e-22) of the largest are dropped from pmf sums
_MAX_TERMS = 10**6  # beyond this many terms the normaliser comes from Poisson summation


def _draw(draw, single, size, rng):
    """``single(src)`` for size None (a Python int), else ``draw(rng, n)`` reshaped to ``size``."""
    if size is None:
        return single(core.UniformIntegers(rng))
    shape = tuple(check_int("size", s, minimum=0) for s in np.atleast_1d(size).tolist())
    return draw(rng, math.prod(shape)).reshape(shape)


# --------------------------------------------------------------------------- samplers


def sample_bernoulli_exp(gamma, *, rng, size=None):
    r"""Exact :math:`\mathrm{Bernoulli}(e^{-\gamma})` for rational :math:`\gamma \ge 0`.

    For :math:`\gamma \le 1`: draw :math:`A_k \sim \mathrm{Bernoulli}(\gamma/k)`
    for :math:`k = 1, 2, \dots` until the first :math:`A_K = 0`; then
    :math:`\Pr[K \text{ odd}] = e^{-\gamma}`. For :math:`\gamma > 1`: the product
    of :math:`\lfloor\gamma\rfloor` coins :math:`\mathrm{Bernoulli}(e^{-1})` and
    one :math:`\mathrm{Bernoulli}(e^{-(\gamma - \lfloor\gamma\rfloor)})`.
    Reference: Canonne, Kamath, Steinke (2020), arXiv:2004.00010, Algorithm 1.

    Args:
        gamma: :math:`\gamma \ge 0`, an ``int`` or ``Fraction``.
        rng: a numpy ``Generator`` or a ``random.SystemRandom``.
        size: ``None`` for one draw, else the number (or shape) of draws.

    Returns:
        0 or 1 (a Python ``int``), or an int64 array of shape ``size``.

    Raises:
        ValueError: ``gamma`` negative or not an exact rational; an invalid ``rng``.

    >>> from privlab.config import make_rng
    >>> sample_bernoulli_exp(0, rng=make_rng(0), size=3)
    array([1, 1, 1])

    Used in: chapter 12.
    """
    g = core.check_rational("gamma", gamma, allow_zero=True)
    n, d = g.numerator, g.denominator
    return _draw(
        lambda r, m: core.draw_bernoulli_exp(n, d, r, m), lambda src: core.bernoulli_exp(n, d, src), size, rng
    )


def sample_discrete_laplace(scale, *, rng, size=None):
    r"""Exact draws of the discrete Laplace :math:`\mathrm{Lap}_{\mathbb Z}(t)`, :math:`\Pr[z] \propto e^{-|z|/t}`.

    With :math:`t = a/b`: :math:`U` uniform below :math:`a`, kept with
    probability :math:`e^{-U/a}`, plus :math:`a V` with :math:`V` geometric
    (coins :math:`e^{-1}`), divided by :math:`b` and rounded down, with a fair
    sign (rejecting :math:`-0`). Reference: Canonne, Kamath, Steinke (2020),
    arXiv:2004.00010, Algorithm 2 (expected :math:`O(1)` coins, Section 5).

    Args:
        scale: :math:`t > 0`, an ``int`` or ``Fraction``.
        rng: a numpy ``Generator`` or a ``random.SystemRandom``.
        size: ``None`` for one draw, else the number (or shape) of draws.

    Returns:
        A Python ``int``, or an int64 array of shape ``size``.

    Raises:
        ValueError: ``scale`` not a positive exact rational; an invalid ``rng``.

    Used in: chapter 12.
    """
    t = core.check_rational("scale", scale)
    a, b = t.numerator, t.denominator
    return _draw(
        lambda r, m: core.draw_discrete_laplace(a, b, r, m), lambda src: core.discrete_laplace(a, b, src), size, rng
    )


def sample_discrete_gaussian(sigma2, *, rng, size=None):
    r"""Exact draws of the discrete Gaussian :math:`\mathcal N_{\mathbb Z}(0, \sigma^2)`, :math:`\Pr[z] \propto e^{-z^2/(2\sigma^2)}`.

    Rejection sampling from :math:`Y \sim \mathrm{Lap}_{\mathbb Z}(t)`,
    :math:`t = \lfloor\sigma\rfloor + 1`, accepting with probability
    :math:`\exp\!\big(-(|Y| - \sigma^2/t)^2 / (2\sigma^2)\big)`. Reference:
    Canonne, Kamath, Steinke (2020), arXiv:2004.00010, Algorithm 3.

    Args:
        sigma2: :math:`\sigma^2 > 0`, an ``int`` or ``Fraction`` (note: the
            variance of the output is slightly below :math:`\sigma^2`).
        rng: a numpy ``Generator`` or a ``random.SystemRandom``.
        size: ``None`` for one draw, else the number (or shape) of draws.

    Returns:
        A Python ``int``, or an int64 array of shape ``size``.

    Raises:
        ValueError: ``sigma2`` not a positive exact rational; an invalid ``rng``.

    Used in: chapter 12.
    """
    s2 = core.check_rational("sigma2", sigma2)
    p, q = s2.numerator, s2.denominator
    return _draw(
        lambda r, m: core.draw_discrete_gaussian(p, q, r, m), lambda src: core.discrete_gaussian(p, q, src), size, rng
    )


# --------------------------------------------------------------------------- exact pmfs


def _shape_like(k, out):
    return float(out) if np.ndim(k) == 0 else out


def discrete_laplace_pmf(k, *, scale):
    r"""Probability mass function of :math:`\mathrm{Lap}_{\mathbb Z}(t)`.

    .. math:: \Pr[Z = k] = \frac{e^{1/t} - 1}{e^{1/t} + 1} e^{-|k|/t} = \tanh\Big(\frac{1}{2t}\Big) e^{-|k|/t}

    Reference: Canonne, Kamath, Steinke (2020), arXiv:2004.00010, Definition 28.

    Args:
        k: integers, any shape.
        scale: :math:`t > 0`, an ``int`` or ``Fraction``.

    Returns:
        A float for scalar ``k``, else an array of its shape.

    Raises:
        ValueError: ``scale`` not a positive exact rational; ``k`` not integers.

    >>> round(discrete_laplace_pmf(1, scale=Fraction(1, 2)), 6)
    0.103071

    Used in: chapter 12.
    """
    t = float(core.check_rational("scale", scale))
    z = core.check_integers("k", k)
    return _shape_like(k, math.tanh(0.5 / t) * np.exp(-np.abs(z) / t))


def _dg_log_normalizer(s2: float) -> float:
    """log sum_y exp(-y^2 / (2 s2)), summed until the terms fall below e^-50 of the largest."""
    k_max = math.ceil(math.sqrt(2.0 * s2 * _TAIL))
    if k_max > _MAX_TERMS:  # Poisson summation: sqrt(2 pi s2) (1 + 2 sum_m e^(-2 pi^2 s2 m^2)), here < 1e-300 off
        return 0.5 * math.log(2.0 * math.pi * s2)
    y = np.arange(1, k_max + 1, dtype=float)
    return math.log1p(2.0 * float(np.sum(np.exp(-y * y / (2.0 * s2)))))


def discrete_gaussian_pmf(k, *, sigma2):
    r"""Probability mass function of :math:`\mathcal N_{\mathbb Z}(0, \sigma^2)`.

    .. math:: \Pr[Z = k] = e^{-k^2/(2\sigma^2)} \Big/ \sum_{y \in \mathbb Z} e^{-y^2/(2\sigma^2)}

    The normaliser is summed over :math:`|y| \le \sqrt{100\,\sigma^2}` (the
    terms beyond are below :math:`e^{-50}`); past :math:`10^6` terms it is
    :math:`\sqrt{2\pi\sigma^2}`, exact in double precision there by Poisson
    summation. Reference: Canonne, Kamath, Steinke (2020), arXiv:2004.00010, Definition 1.

    Args:
        k: integers, any shape.
        sigma2: :math:`\sigma^2 > 0`, an ``int`` or ``Fraction``.

    Returns:
        A float for scalar ``k``, else an array of its shape.

    Raises:
        ValueError: ``sigma2`` not a positive exact rational; ``k`` not integers.

    >>> round(discrete_gaussian_pmf(0, sigma2=1), 6)
    0.398942

    Used in: chapter 12.
    """
    s2 = float(core.check_rational("sigma2", sigma2))
    z = core.check_integers("k", k).astype(float)
    return _shape_like(k, np.exp(-z * z / (2.0 * s2) - _dg_log_normalizer(s2)))


# --------------------------------------------------------------------------- privacy of the discrete Gaussian


def discrete_gaussian_delta(*, sigma2, sensitivity=1, epsilon) -> float:
    r"""The exact :math:`\delta(\varepsilon)` of adding :math:`\mathcal N_{\mathbb Z}(0, \sigma^2)` to an integer query.

    .. math::

        \delta = \Pr\Big[Y > \frac{\varepsilon\sigma^2}{\Delta} - \frac{\Delta}{2}\Big]
            - e^{\varepsilon} \Pr\Big[Y > \frac{\varepsilon\sigma^2}{\Delta} + \frac{\Delta}{2}\Big]
          = \sum_{z < \Delta/2 - \varepsilon\sigma^2/\Delta} p(z)\big(1 - e^{\varepsilon - L(z)}\big),
        \quad L(z) = \frac{\Delta^2 - 2 z \Delta}{2\sigma^2},

    :math:`Y \sim \mathcal N_{\mathbb Z}(0, \sigma^2)`, :math:`\Delta` the
    sensitivity; tight. Summed term by term as :math:`p(z) \cdot
    (-\mathrm{expm1}(\varepsilon - L(z)))` (no cancellation), over :math:`z`
    until :math:`p(z)` is below :math:`e^{-50}` of the largest term. (The looser
    alternative is the concentrated-DP bound, :math:`\rho = \Delta^2/(2\sigma^2)`-zCDP, CKS Section 2.)
    Reference: Canonne, Kamath, Steinke (2020), arXiv:2004.00010, Theorem 7.

    Args:
        sigma2: :math:`\sigma^2 > 0`, an ``int`` or ``Fraction``.
        sensitivity: :math:`\Delta`, an integer :math:`\ge 1`.
        epsilon: :math:`\varepsilon \ge 0`, a real number.

    Returns:
        :math:`\delta \in [0, 1]`.

    Raises:
        ValueError: invalid ``sigma2``, ``sensitivity`` or ``epsilon``.

    >>> round(discrete_gaussian_delta(sigma2=4, sensitivity=1, epsilon=0.5), 6)
    0.054007

    Used in: chapter 12.
    """
    s2 = float(core.check_rational("sigma2", sigma2))
    d = check_int("sensitivity", sensitivity)
    eps = 0.0 if epsilon == 0 and not isinstance(epsilon, bool) else check_positive("epsilon", epsilon)
    c = d / 2.0 - eps * s2 / d  # the loss exceeds epsilon exactly for z < c
    z_hi = math.ceil(c) - 1
    z_lo = min(z_hi, 0) - math.ceil(math.sqrt(2.0 * s2 * _TAIL))
    z = np.arange(z_lo, z_hi + 1, dtype=float)
    log_p = -z * z / (2.0 * s2) - _dg_log_normalizer(s2)
    loss = (d * d - 2.0 * z * d) / (2.0 * s2)
    return float(min(1.0, np.sum(np.exp(log_p) * -np.expm1(eps - loss))))


def discrete_gaussian_epsilon(*, sigma2, sensitivity=1, delta) -> float:
    r"""The smallest :math:`\varepsilon` with :func:`discrete_gaussian_delta` :math:`\le \delta`.

    Bracketed by the zCDP conversion :math:`\varepsilon \le \rho + 2\sqrt{\rho\ln(1/\delta)}`,
    :math:`\rho = \Delta^2/(2\sigma^2)` (CKS Section 2; Bun and Steinke 2016,
    Proposition 1.3), then found by Brent's method on the exact :math:`\delta(\varepsilon)`.
    Reference: Canonne, Kamath, Steinke (2020), arXiv:2004.00010, Theorem 7.

    Args:
        sigma2: :math:`\sigma^2 > 0`, an ``int`` or ``Fraction``.
        sensitivity: :math:`\Delta`, an integer :math:`\ge 1`.
        delta: :math:`\delta \in (0, 1)`.

    Returns:
        :math:`\varepsilon \ge 0`.

    Raises:
        ValueError: invalid ``sigma2``, ``sensitivity`` or ``delta``.

    >>> round(discrete_gaussian_epsilon(sigma2=100, delta=1e-5), 4)
    0.3408

    Used in: chapter 12.
    """
    delta = check_probability("delta", delta, open_high=True)
    s2, d = core.check_rational("sigma2", sigma2), check_int("sensitivity", sensitivity)

    def excess(eps: float) -> float:
        return discrete_gaussian_delta(sigma2=s2, sensitivity=d, epsilon=eps) - delta

    if excess(0.0) <= 0:
        return 0.0
    rho = d * d / (2.0 * float(s2))
    hi = rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))
    while excess(hi) > 0:  # pragma: no cover - the zCDP bound always suffices
        hi *= 2.0
    eps = brentq(excess, 0.0, hi, xtol=1e-14, rtol=1e-14)
    while excess(eps) > 0:
        eps = math.nextafter(eps, math.inf) * (1.0 + 1e-15)
    return eps


# --------------------------------------------------------------------------- mechanisms


def discrete_laplace_mechanism(value, *, sensitivity=1, epsilon, rng):
    r"""Release an integer query plus :math:`\mathrm{Lap}_{\mathbb Z}(\Delta/\varepsilon)` noise: exactly :math:`\varepsilon`-DP.

    The ratio of :math:`e^{-|z|/t}` at neighbouring outputs is at most
    :math:`e^{\Delta/t} = e^{\varepsilon}` for :math:`t = \Delta/\varepsilon`,
    computed as a ``Fraction``; every coordinate gets its own noise (the L1
    sensitivity of the whole vector). Reference: Canonne, Kamath, Steinke
    (2020), arXiv:2004.00010, Section 2; Ghosh, Roughgarden, Sundararajan (2009).

    Args:
        value: integer counts, a scalar or an array.
        sensitivity: :math:`\Delta`, an integer :math:`\ge 1` (L1).
        epsilon: :math:`\varepsilon > 0`, an ``int`` or ``Fraction``.
        rng: a numpy ``Generator`` or a ``random.SystemRandom``.

    Returns:
        An ``int`` for a scalar ``value``, else an int64 array of its shape.

    Raises:
        ValueError: ``value`` not integers; invalid ``sensitivity``, ``epsilon`` or ``rng``.

    Used in: chapter 12.
    """
    scale = Fraction(check_int("sensitivity", sensitivity)) / core.check_rational("epsilon", epsilon)
    x = core.check_integers("value", value)
    noisy = core.add_noise("value", x, sample_discrete_laplace(scale, rng=rng, size=x.shape))
    return int(noisy) if np.ndim(value) == 0 else noisy


def discrete_gaussian_mechanism(value, *, sigma2, rng):
    r"""Release an integer query plus :math:`\mathcal N_{\mathbb Z}(0, \sigma^2)` noise per coordinate.

    Its privacy: :func:`discrete_gaussian_delta` / :func:`discrete_gaussian_epsilon`
    (exact, CKS Theorem 7, for one coordinate of integer sensitivity
    :math:`\Delta`); for vectors, :math:`\rho = \Delta_2^2/(2\sigma^2)`-zCDP
    (CKS Section 2). Reference: Canonne, Kamath, Steinke (2020), arXiv:2004.00010.

    Args:
        value: integer values, a scalar or an array.
        sigma2: :math:`\sigma^2 > 0`, an ``int`` or ``Fraction``.
        rng: a numpy ``Generator`` or a ``random.SystemRandom``.

    Returns:
        An ``int`` for a scalar ``value``, else an int64 array of its shape.

    Raises:
        ValueError: ``value`` not integers; invalid ``sigma2`` or ``rng``.

    Used in: chapter 12.
    """
    s2 = core.check_rational("sigma2", sigma2)
    x = core.check_integers("value", value)
    noisy = core.add_noise("value", x, sample_discrete_gaussian(s2, rng=rng, size=x.shape))
    return int(noisy) if np.ndim(value) == 0 else noisy


def snapping_mechanism(value, *, sensitivity, epsilon, lower, upper, rng, grid_bits: int = 10,
                       elementwise: bool = False):
    r"""A real-valued :math:`\varepsilon`-DP release on the grid :math:`\gamma\mathbb Z`, :math:`\gamma = 2^{-k}`, with exact noise.

    .. math::

        M(D)_i = \mathrm{clamp}_{[a, b]}\big(\gamma\,(n_i + Z_i)\big), \quad
        n_i = \Big\lfloor \frac{\mathrm{clamp}_{[a, b]}(f(D)_i)}{\gamma} + \frac12 \Big\rfloor, \quad
        Z_i \sim \mathrm{Lap}_{\mathbb Z}\Big(\frac{\Delta_{\mathbb Z}}{\varepsilon}\Big),
        \quad \Delta_{\mathbb Z} = \Big\lceil \frac{\Delta}{\gamma} \Big\rceil + d - 1,

    for :math:`f(D) \in \mathbb R^d` (:math:`d = 1` for a scalar) with L1
    sensitivity :math:`\Delta`, independent noise in every coordinate. With
    ``elementwise=True`` every element is instead its own scalar query (a batch
    of independent releases, each :math:`\varepsilon`-DP with :math:`d = 1`, as
    an audit draws them); their privacy composes, it is not :math:`\varepsilon` for the batch.

    Why :math:`\Delta_{\mathbb Z}` (the L1 sensitivity of the grid indices
    :math:`n`): clamping to the public :math:`[a, b]` is 1-Lipschitz per
    coordinate, so the clamped neighbours still satisfy
    :math:`\sum_i |x_i - x'_i| \le \Delta`. Writing :math:`u_i = |x_i - x'_i|/\gamma`,
    rounding gives :math:`|n_i - n'_i| \le \lceil u_i \rceil` (two reals at distance
    :math:`u` round to integers at distance at most :math:`\lceil u \rceil`), and
    :math:`\lceil u \rceil + \lceil v \rceil \le \lceil u + v \rceil + 1` (the left
    side is an integer below :math:`u + v + 2`). Over the :math:`m \le d`
    coordinates that differ,

    .. math::

        \lVert n - n' \rVert_1 \le \sum_{i:\, u_i > 0} \lceil u_i \rceil
            \le \Big\lceil \sum_i u_i \Big\rceil + m - 1
            \le \Big\lceil \frac{\Delta}{\gamma} \Big\rceil + d - 1 = \Delta_{\mathbb Z},

    and this is tight: :math:`\Delta = \gamma = 1`, :math:`d = 100`, every
    coordinate 0.495 against 0.505 gives :math:`n = 0` against :math:`n' = 1`
    in all 100 coordinates. The discrete Laplace mechanism with scale
    :math:`\Delta_{\mathbb Z}/\varepsilon` on an integer vector of L1 sensitivity
    :math:`\Delta_{\mathbb Z}` is :math:`\varepsilon`-DP (:func:`discrete_laplace_mechanism`);
    the output clamp is post-processing. The price of the grid: noise
    :math:`(\lceil\Delta/\gamma\rceil + d - 1)/(\Delta/\gamma)` times that of the
    ideal mechanism, so choose :math:`\gamma \le \Delta/d` (``grid_bits`` at least
    :math:`\log_2(d/\Delta)`) to keep it below about 2; and :math:`\gamma/2`
    rounding error per coordinate.

    The rounding is exact (a double is a dyadic rational: in floating point where
    scaling by :math:`2^k` is exact, else in ``Fraction``). Outputs are multiples
    of :math:`\gamma` (or :math:`a`, :math:`b`), whatever the input's low-order
    bits. The idea of a power-of-two grid and clamping is Mironov's snapping
    mechanism (a scalar mechanism that rounds float Laplace noise; here the noise
    is exact and vectors are calibrated as above). Neighbouring relation: any
    two datasets whose ``value`` differs by at most :math:`\Delta` in L1 norm
    (the caller's relation, add/remove or replace-one, fixes :math:`\Delta`).
    Reference: Mironov (2012), "On significance of the least significant bits
    for differential privacy", ACM CCS; Canonne, Kamath, Steinke (2020), arXiv:2004.00010.

    Args:
        value: :math:`f(D)`, a finite real or array of reals (:math:`d` = its size).
        sensitivity: :math:`\Delta > 0`, the L1 sensitivity of ``value`` (a real).
        epsilon: :math:`\varepsilon > 0`, an ``int`` or ``Fraction``.
        lower: :math:`a`, finite.
        upper: :math:`b > a`, finite.
        rng: a numpy ``Generator`` or a ``random.SystemRandom``.
        grid_bits: :math:`k`, the grid spacing is :math:`2^{-k}` (:math:`|k| \le 60`).
        elementwise: ``False`` (default): ``value`` is one query in :math:`\mathbb R^d`;
            ``True``: a batch of scalar queries, each calibrated with :math:`d = 1`.

    Returns:
        A float for a scalar ``value``, else a float array of its shape.

    Raises:
        ValueError: invalid ``value``, bounds, ``sensitivity``, ``epsilon``, ``grid_bits`` or ``rng``.

    >>> from privlab.config import make_rng
    >>> snapping_mechanism(0.3, sensitivity=1.0, epsilon=Fraction(10**9), lower=0, upper=1,
    ...                    grid_bits=2, rng=make_rng(0))
    0.25
    >>> snapping_grid_sensitivity(sensitivity=1.0, grid_bits=0, size=100)
    100

    Used in: chapter 12.
    """
    eps = core.check_rational("epsilon", epsilon)
    lo, hi = (Fraction(float(check_array(n, v, ndim=0))) for n, v in (("lower", lower), ("upper", upper)))
    if not lo < hi:
        raise ValueError(f"lower must be < upper, got lower={lower!r}, upper={upper!r}")
    x = check_array("value", value)
    check_bool("elementwise", elementwise)
    size = 1 if elementwise else x.size
    step = snapping_grid_sensitivity(sensitivity=sensitivity, grid_bits=grid_bits, size=size)
    n = snapping_grid_index(x, float(lo), float(hi), int(grid_bits))
    z = sample_discrete_laplace(step / eps, rng=rng, size=x.shape)
    out = np.clip(np.ldexp((n + z).astype(float), -int(grid_bits)), float(lo), float(hi))
    return float(out) if np.ndim(value) == 0 else out


def snapping_grid_sensitivity(*, sensitivity, grid_bits: int, size: int) -> int:
    r"""The L1 sensitivity :math:`\lceil \Delta/\gamma \rceil + d - 1` of the grid indices in :func:`snapping_mechanism`.

    Args:
        sensitivity: :math:`\Delta > 0`, the L1 sensitivity of the real-valued query.
        grid_bits: :math:`k`, :math:`\gamma = 2^{-k}` (:math:`|k| \le 60`).
        size: :math:`d \ge 1`, the number of coordinates.

    Returns:
        :math:`\Delta_{\mathbb Z}`, a Python ``int`` (the derivation is in :func:`snapping_mechanism`).

    Raises:
        ValueError: invalid ``sensitivity``, ``grid_bits`` or ``size``.

    >>> snapping_grid_sensitivity(sensitivity=0.3, grid_bits=2, size=1)
    2

    Used in: chapter 12.
    """
    delta = Fraction(check_positive("sensitivity", sensitivity))
    if isinstance(grid_bits, bool) or not isinstance(grid_bits, (int, np.integer)) or abs(grid_bits) > 60:
        raise ValueError(f"grid_bits must be an integer in [-60, 60], got {grid_bits!r}")
    d = check_int("size", size)
    return math.ceil(delta * Fraction(2) ** int(grid_bits)) + d - 1


def snapping_grid_index(x: np.ndarray, lo: float, hi: float, k: int) -> np.ndarray:
    r"""Snapping's grid index of each clamped input, :math:`\lfloor \mathrm{clamp}(x)\,2^k + 1/2 \rfloor`, exactly.

    In floats where the scaling by :math:`2^k` is exact, else in Fractions (Python integers of
    any size). Used by :func:`snapping_mechanism`.

    >>> snapping_grid_index(np.array([0.3, -2.0]), -1.0, 1.0, 2).tolist()
    [1, -4]
    """
    v = np.ldexp(np.clip(x, lo, hi), k)  # clamp(x) / gamma
    if np.all(np.abs(v) < 2**52) and np.array_equal(np.ldexp(v, -k), np.clip(x, lo, hi)):
        f = np.floor(v)
        return (f + (v - f >= 0.5)).astype(np.int64)  # v - floor(v) is exact in binary floating point
    flat = [math.floor(Fraction(min(max(a, lo), hi)) * Fraction(2) ** k + Fraction(1, 2)) for a in x.ravel().tolist()]
    return np.array(flat, dtype=object).reshape(x.shape)  # Python integers: any size
