r"""Zero-concentrated differential privacy (zCDP) accounting.

A mechanism is :math:`\rho`-zCDP if its Rényi divergence of every order
:math:`\alpha > 1` is at most :math:`\rho\alpha` (Bun and Steinke 2016,
arXiv:1605.02065). One number per mechanism, and composition adds them:

* Gaussian with noise multiplier :math:`\sigma`: :math:`\rho = 1/(2\sigma^2)` (Prop 1.6);
* Laplace with scale :math:`b` or any pure :math:`\varepsilon`-DP mechanism:
  :math:`\rho = \varepsilon^2/2` (Prop 1.4 / 3.3).

Conversion to :math:`(\varepsilon, \delta)`-DP, two ways:

* ``conversion="classic"`` (default; Bun and Steinke 2016, Prop 1.3):
  :math:`\varepsilon = \rho + 2\sqrt{\rho\ln(1/\delta)}`;
* ``conversion="optimal"``: the RDP conversion of Canonne, Kamath, Steinke 2020
  (Prop 12, arXiv:2004.00010) applied to :math:`\rho\alpha` and minimised over
  all real :math:`\alpha > 1`,
  :math:`\varepsilon = \min_\alpha \rho\alpha + \ln(1-1/\alpha) - (\ln\delta + \ln\alpha)/(\alpha-1)`,
  always at most the classic value.

zCDP has no good analysis of Poisson subsampling (that needs RDP or PLD), so
subsampled events raise :class:`~privlab.accounting.base.UnsupportedEventError`.

>>> acc = ZcdpAccountant().compose(GaussianEvent(noise_multiplier=1.0), count=1000)
>>> acc.rho
500.0
>>> round(acc.get_epsilon(1e-5), 2)
651.74
>>> round(ZcdpAccountant(conversion="optimal").compose(GaussianEvent(1.0), count=1000).get_epsilon(1e-5), 2)
648.78

Used in: chapters 4, 10.
"""

from __future__ import annotations

import math

from scipy import optimize

from privlab._validate import check_delta, check_epsilon, check_nonnegative

from .base import Accountant, handles
from .events import EpsilonDeltaEvent, GaussianEvent, LaplaceEvent

__all__ = ["ZcdpAccountant", "zcdp_to_epsilon", "zcdp_to_delta", "rho_from_epsilon", "epsilon_from_rho",
           "tight_rho_from_epsilon"]

_CONVERSIONS = ("classic", "optimal")


def _check_conversion(conversion: str) -> str:
    if conversion not in _CONVERSIONS:
        raise ValueError(f"conversion must be one of {_CONVERSIONS}, got {conversion!r}")
    return conversion


def _optimal_log_delta(rho: float, epsilon: float) -> float:
    """min over alpha > 1 of log delta(alpha) for the curve rho * alpha."""

    def log_delta(alpha: float) -> float:
        return (alpha - 1) * (rho * alpha - epsilon + math.log1p(-1 / alpha)) - math.log(alpha)

    # Setting the derivative to zero: (2 alpha - 1) rho - epsilon + O(1/alpha) = 0, so the
    # minimiser is near (epsilon + rho) / (2 rho) when epsilon dominates, and near
    # 1 / sqrt(2 rho) when epsilon is small (the 1/alpha terms balance rho alpha). The bracket
    # covers both (before, only the first: at epsilon ~ 0 and tiny rho it searched (1, 2] and
    # returned delta ~ 0.1 where the optimum is ~ 1e-4).
    guess = max(1.0 + 1e-9, (epsilon + rho) / (2 * rho), 1 / math.sqrt(2 * rho))
    res = optimize.minimize_scalar(log_delta, bounds=(1.0 + 1e-9, max(4.0 * guess, 2.0)), method="bounded",
                                   options={"xatol": 1e-10})
    return min(float(res.fun), log_delta(guess), 0.0)


def zcdp_to_epsilon(*, rho: float, delta: float, conversion: str = "classic") -> float:
    r"""Epsilon of a :math:`\rho`-zCDP mechanism at ``delta``.

    Args:
        rho: :math:`\rho \ge 0`.
        delta: :math:`\delta \in (0, 1)`.
        conversion: ``"classic"`` (:math:`\rho + 2\sqrt{\rho\ln(1/\delta)}`) or ``"optimal"``.

    Returns:
        :math:`\varepsilon \ge 0`.

    Reference: Bun and Steinke 2016, Prop 1.3; Canonne, Kamath, Steinke 2020, Prop 12.

    >>> round(zcdp_to_epsilon(rho=0.5, delta=1e-5), 4)
    5.2985

    Used in: chapter 4.
    """
    r = check_nonnegative("rho", rho)
    d = check_delta(delta)
    if r == 0:
        return 0.0
    if _check_conversion(conversion) == "classic":
        return r + 2 * math.sqrt(r * math.log(1 / d))
    # epsilon(alpha) = rho alpha + log(1 - 1/alpha) - (log delta + log alpha) / (alpha - 1)
    def eps(alpha: float) -> float:
        return r * alpha + math.log1p(-1 / alpha) - (math.log(d) + math.log(alpha)) / (alpha - 1)

    guess = 1 + math.sqrt(math.log(1 / d) / r)
    res = optimize.minimize_scalar(eps, bounds=(1 + 1e-9, 4 * guess + 2), method="bounded",
                                   options={"xatol": 1e-10})
    return max(0.0, min(float(res.fun), eps(guess)))


def zcdp_to_delta(*, rho: float, epsilon: float, conversion: str = "classic") -> float:
    r"""Delta of a :math:`\rho`-zCDP mechanism at ``epsilon``.

    Classic: :math:`\delta = \exp(-(\varepsilon-\rho)^2/(4\rho))` for
    :math:`\varepsilon > \rho` (the inverse of Prop 1.3), else 1.

    >>> round(zcdp_to_delta(rho=0.5, epsilon=5.298539), 7)
    1e-05

    Used in: chapter 4.
    """
    r = check_nonnegative("rho", rho)
    e = check_nonnegative("epsilon", epsilon)
    if r == 0:
        return 0.0
    if _check_conversion(conversion) == "classic":
        return 1.0 if e <= r else math.exp(-((e - r) ** 2) / (4 * r))
    return math.exp(_optimal_log_delta(r, e))


def rho_from_epsilon(*, epsilon: float, delta: float) -> float:
    r"""The zCDP budget :math:`\rho` whose classic conversion at ``delta`` is ``epsilon``.

    Solves :math:`\varepsilon = \rho + 2\sqrt{\rho L}`, :math:`L = \ln(1/\delta)`, a
    quadratic in :math:`\sqrt\rho`: :math:`\rho = (\sqrt{L+\varepsilon} - \sqrt L)^2`.
    Reference: Bun and Steinke 2016, Prop 1.3.

    >>> round(rho_from_epsilon(epsilon=1.0, delta=1e-6), 6)
    0.017469

    Used in: chapter 10.
    """
    eps, log_inv_delta = check_epsilon(epsilon), math.log(1 / check_delta(delta))
    # (sqrt(L + eps) - sqrt(L))^2 = eps^2 / (sqrt(L + eps) + sqrt(L))^2, stable for small eps
    return eps**2 / (math.sqrt(log_inv_delta + eps) + math.sqrt(log_inv_delta)) ** 2


def epsilon_from_rho(*, rho: float, delta: float) -> float:
    r""":math:`\varepsilon = \rho + 2\sqrt{\rho\ln(1/\delta)}` (Bun and Steinke 2016, Prop 1.3).

    :func:`zcdp_to_epsilon` with the classic conversion; the inverse of :func:`rho_from_epsilon`.

    >>> round(epsilon_from_rho(rho=rho_from_epsilon(epsilon=3.0, delta=1e-5), delta=1e-5), 9)
    3.0

    Used in: chapter 10.
    """
    return zcdp_to_epsilon(rho=rho, delta=delta, conversion="classic")


class ZcdpAccountant(Accountant):
    r"""zCDP accountant: adds up :math:`\rho`, converts with the chosen formula.

    Args:
        conversion: ``"classic"`` (default) or ``"optimal"``, see the module docstring.

    Used in: chapters 4, 10.
    """

    name = "zcdp"

    def __init__(self, *, conversion: str = "classic") -> None:
        super().__init__()
        self.conversion = _check_conversion(conversion)
        self.rho = 0.0

    @handles(GaussianEvent)
    def _gaussian(self, event: GaussianEvent, count: int) -> None:
        self.rho += count / (2 * event.noise_multiplier**2)

    @handles(LaplaceEvent)
    def _laplace(self, event: LaplaceEvent, count: int) -> None:
        self.rho += count * event.epsilon**2 / 2

    @handles(EpsilonDeltaEvent, when=lambda e: e.delta == 0, note="delta = 0 only")
    def _pure(self, event: EpsilonDeltaEvent, count: int) -> None:
        self.rho += count * event.epsilon**2 / 2

    def _epsilon(self, delta: float) -> float:
        return zcdp_to_epsilon(rho=self.rho, delta=delta, conversion=self.conversion)

    def _delta(self, epsilon: float) -> float:
        return zcdp_to_delta(rho=self.rho, epsilon=epsilon, conversion=self.conversion)


def tight_rho_from_epsilon(*, epsilon: float, delta: float) -> float:
    r"""The largest :math:`\rho` whose tight zCDP conversion at ``delta`` is at most ``epsilon``.

    Inverts ``zcdp_to_epsilon(rho=..., delta=..., conversion="optimal")`` (Canonne,
    Kamath, Steinke 2020, Prop 12) by root finding, as ``cdp_rho`` of private-pgm's
    ``cdp2adp.py`` does by bisection; the result is then shrunk until its own
    conversion is within ``epsilon``, so the guarantee never exceeds the target.

    >>> round(tight_rho_from_epsilon(epsilon=1.0, delta=1e-6), 5)
    0.02436
    >>> round(rho_from_epsilon(epsilon=1.0, delta=1e-6), 5)  # classic conversion: less budget
    0.01747

    Used in: chapter 10 (privlab.synthetic.marginal).
    """
    eps, d = check_epsilon(epsilon), check_delta(delta)

    def excess(rho: float) -> float:
        return zcdp_to_epsilon(rho=rho, delta=d, conversion="optimal") - eps

    lo = rho_from_epsilon(epsilon=eps, delta=d)  # the classic rho: its tight epsilon is below eps
    hi = 2 * lo
    while excess(hi) <= 0:
        lo, hi = hi, 2 * hi
    rho = optimize.brentq(excess, lo, hi, xtol=1e-15 * hi, rtol=1e-12)
    while excess(rho) > 0:
        rho *= 1 - 1e-12
    return rho
