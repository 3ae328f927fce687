r"""Functional entry points: epsilon of a DP-SGD run, and the noise that meets a target.

:func:`dpsgd_epsilon` composes ``steps`` Poisson-sampled Gaussian steps in the chosen
accountant and reads off epsilon; :func:`calibrate_noise` inverts it with one
generic routine, :func:`calibrate`, used for every accountant: it brackets the
answer by doubling, then shrinks the bracket on :math:`\log\sigma` by false
position with the Illinois modification and a bisection fallback (Dowell and
Jarratt 1971), until :math:`\sigma_{hi}/\sigma_{lo} \le 1 + 10^{-3}`. Every loop
is bounded, so a target that cannot be met raises ``ValueError`` instead of
running forever.

>>> round(dpsgd_epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=1, delta=1e-5, accountant="zcdp"), 4)
5.2985
>>> sigma = calibrate_noise(target_epsilon=5.2985, delta=1e-5, sample_rate=1.0, steps=1, accountant="zcdp")
>>> abs(sigma - 1.0) < 1e-3
True

Used in: chapters 4, 6, 7, 8, 9, 13.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

from privlab._validate import check_delta, check_epsilon, check_int, check_positive, check_probability

from .pld_pairs import PldGridTooLargeError
from .base import Accountant
from .composition import AdvancedCompositionAccountant, BasicCompositionAccountant
from .events import dpsgd_event
from .pld import PldAccountant
from .rdp import RdpAccountant
from .zcdp import ZcdpAccountant

__all__ = ["ACCOUNTANTS", "DPSGD_ACCOUNTANTS", "make_accountant", "dpsgd_epsilon", "calibrate_noise", "calibrate"]

#: The accountants by name: the one registry every name check (CLI, configs) reads.
ACCOUNTANTS: dict[str, type[Accountant]] = {
    cls.name: cls
    for cls in (BasicCompositionAccountant, AdvancedCompositionAccountant, RdpAccountant, ZcdpAccountant,
                PldAccountant)
}
#: The accountants whose epsilon for Poisson-subsampled Gaussian steps is tight enough to state for
#: DP-SGD training (:class:`privlab.dpsgd.DPSGDConfig`, DP-FedAvg, a pipeline's plan): PLD, then RDP.
DPSGD_ACCOUNTANTS: tuple[str, ...] = ("pld", "rdp")

MIN_NOISE, MAX_NOISE = 1e-3, 1e5


def make_accountant(name: str, **options) -> Accountant:
    """A fresh accountant by name: ``"basic"``, ``"advanced"``, ``"rdp"``, ``"zcdp"`` or ``"pld"``.

    >>> make_accountant("rdp")
    RdpAccountant(num_events=0, distinct=0)
    """
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {sorted(ACCOUNTANTS)}, got {name!r}")
    return ACCOUNTANTS[name](**options)


#: The most steps :func:`dpsgd_epsilon` and :func:`calibrate_noise` take (far beyond any training run).
MAX_STEPS = 10**12


def _check_run(sample_rate, steps, delta, accountant) -> tuple[float, int, float]:
    q = check_probability("sample_rate", sample_rate)
    k = check_int("steps", steps)
    if k > MAX_STEPS:  # the PLD's FFT counts in C longs: 1e21 steps was an OverflowError traceback
        raise ValueError(f"steps must be at most {MAX_STEPS:.0e}, got {steps!r}")
    d = check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {sorted(ACCOUNTANTS)}, got {accountant!r}")
    if accountant == "zcdp" and q != 1.0:
        raise ValueError(
            f"accountant='zcdp' has no analysis of Poisson subsampling: it needs sample_rate=1 "
            f"(full batch), got sample_rate={sample_rate!r}; use 'rdp' or 'pld'")
    return q, k, d


def dpsgd_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "pld") -> float:
    r"""Epsilon of DP-SGD: ``steps`` Poisson-sampled Gaussian steps, at ``delta``.

    Args:
        noise_multiplier: :math:`\sigma > 0` (noise std over the clipping norm).
        sample_rate: :math:`q \in (0, 1]` (expected batch size over dataset size).
        steps: number of steps, an integer >= 1.
        delta: :math:`\delta \in (0, 1)`.
        accountant: ``"pld"`` (default, tightest), ``"rdp"``, ``"zcdp"`` (full
            batch only), ``"basic"`` or ``"advanced"``.

    Returns:
        Epsilon (``math.inf`` when no finite epsilon can be certified).

    Raises:
        ValueError: any argument out of range, or ``"zcdp"`` with ``sample_rate < 1``.

    Reference: Abadi et al. 2016 (arXiv:1607.00133) for the algorithm; see each accountant.

    >>> round(dpsgd_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=10_000, delta=1e-5, accountant="rdp"), 3)
    6.713

    Used in: chapters 4, 6, 7, 8, 13.
    """
    sigma = check_positive("noise_multiplier", noise_multiplier)
    q, k, d = _check_run(sample_rate, steps, delta, accountant)
    event = dpsgd_event(noise_multiplier=sigma, sample_rate=q, steps=k)
    try:
        return make_accountant(accountant).compose(event).get_epsilon(d)
    except PldGridTooLargeError as err:
        # where the PLD's grid would be too large (a tiny sigma, or a tiny q whose per-step loss variance
        # sets a step far finer than the composed loss's span), RDP's epsilon: a valid bound, looser.
        # (It used to be an error saying the epsilon was astronomically large, which at q = 1e-7 it was
        # not: 0.07 by dp_accounting's PLD, a red-team read.)
        warnings.warn(f"the PLD accountant cannot discretise this run ({err}); epsilon is the RDP "
                      "accountant's instead (a valid bound, looser)", stacklevel=2)
        return make_accountant("rdp").compose(event).get_epsilon(d)


def calibrate(fn: Callable[[float], float], *, target: float, initial: float = 1.0, rel_tol: float = 1e-3,
              lower: float = MIN_NOISE, upper: float = MAX_NOISE, max_iter: int = 100,
              name: str = "target_epsilon") -> float:
    r"""Smallest :math:`x` in [lower, upper] with ``fn(x) <= target``, for ``fn`` non-increasing in :math:`x`.

    Brackets the answer by doubling from ``initial``, then shrinks the bracket
    :math:`[x_{lo}, x_{hi}]` (``fn(x_lo) > target >= fn(x_hi)``) by false
    position on :math:`(\ln x, \ln f(x))` with the Illinois modification, falling
    back to bisection when a step is not finite or not useful, until
    :math:`x_{hi}/x_{lo} \le 1 + \mathrm{rel\_tol}`. Returns :math:`x_{hi}`.

    Raises:
        ValueError: if even ``fn(upper) > target`` (the target is unreachable),
            or the iteration budget runs out.

    >>> x = calibrate(lambda s: 10.0 / s, target=2.0)
    >>> 5.0 <= x <= 5.0 * 1.001
    True

    Used in: chapters 4, 6, 13.
    """
    log_target = math.log(check_epsilon(target, name=name))

    def g(x: float) -> float:  # log fn(x) - log target, with 0 -> -inf and inf -> +inf
        v = fn(x)
        if v != v:  # NaN compared as "meets the target" (a red-team read): never silently
            raise ValueError(f"the function being calibrated returned NaN at {x!r}")
        return math.inf if v == math.inf else (-math.inf if v <= 0 else math.log(v) - log_target)

    x = min(max(initial, lower), upper)
    gx = g(x)
    lo = hi = None
    for _ in range(max_iter):  # bracket by doubling / halving
        if gx > 0:
            lo, g_lo = x, gx
            if hi is not None:
                break
            if x >= upper:
                raise ValueError(
                    f"{name}={math.exp(log_target):g} cannot be reached with noise_multiplier <= {upper:g} "
                    f"(epsilon there is {fn(upper):g})")
            x = min(2 * x, upper)
        else:
            hi, g_hi = x, gx
            if lo is not None:
                break
            if x <= lower:
                return lower
            x = max(x / 2, lower)
        gx = g(x)
    else:
        raise ValueError(f"could not bracket {name}={math.exp(log_target):g}")  # pragma: no cover

    side = 0
    margin = 0.45 * math.log1p(rel_tol)
    for _ in range(max_iter):
        if hi / lo <= 1 + rel_tol:
            return hi
        u, v = math.log(lo), math.log(hi)
        mid = 0.5 * (u + v)
        w = u + (v - u) * g_lo / (g_lo - g_hi) if math.isfinite(g_lo) and math.isfinite(g_hi) else mid
        # aim just past the estimated root, towards the end that did not move last, so that an
        # accurate estimate closes the bracket from both sides in two steps
        w += margin if side <= 0 else -margin
        w = min(max(w, u + margin), v - margin) if v - u > 2 * margin else mid
        x = math.exp(w)
        gx = g(x)
        if gx > 0:
            lo, g_lo = x, gx
            if side == -1:
                g_hi /= 2  # Illinois: the other end has stayed put twice
            side = -1
        else:
            hi, g_hi = x, gx
            if side == 1:
                g_lo /= 2
            side = 1
    raise ValueError(f"calibration of {name}={math.exp(log_target):g} did not converge")  # pragma: no cover


def _initial_noise(eps: float, q: float, k: int, d: float) -> float:
    """A central-limit guess: composed loss std sqrt(k q^2 (e^{1/sigma^2} - 1)) = eps / z(delta)."""
    z = math.sqrt(2 * math.log(1 / d))
    ratio = (eps / z) ** 2 / (k * q * q)
    return 1.0 / math.sqrt(math.log1p(ratio)) if ratio > 0 else 1.0


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "pld") -> float:
    r"""The smallest noise multiplier :math:`\sigma` whose DP-SGD epsilon is at most ``target_epsilon``.

    Accurate to 0.1% relative: the result :math:`\sigma` meets the target and
    :math:`\sigma / 1.001` does not (as computed by the same accountant).

    Args:
        target_epsilon: :math:`\varepsilon > 0`.
        delta: :math:`\delta \in (0, 1)`.
        sample_rate: :math:`q \in (0, 1]`.
        steps: number of steps.
        accountant: ``"pld"`` (default), ``"rdp"``, ``"zcdp"`` (full batch only),
            ``"basic"`` or ``"advanced"``.

    Returns:
        :math:`\sigma`.

    Raises:
        ValueError: bad arguments, or a target no :math:`\sigma \le 10^5` reaches.

    >>> round(calibrate_noise(target_epsilon=6.713, delta=1e-5, sample_rate=0.01, steps=10_000,
    ...                       accountant="rdp"), 2)
    1.0

    Used in: chapters 4, 6, 8, 13.
    """
    eps = check_epsilon(target_epsilon, name="target_epsilon")
    q, k, d = _check_run(sample_rate, steps, delta, accountant)

    if accountant == "rdp":  # the order grid stops at 63: no sigma certifies less than this
        floor = RdpAccountant.epsilon_floor(d)
        if eps <= floor:
            raise ValueError(f"target_epsilon={target_epsilon!r} is at or below the smallest epsilon the RDP "
                             f"accountant can certify at delta={d:g} ({floor:.4g}, set by its largest order, "
                             f"{max(RdpAccountant().orders):g}), whatever the noise: use accountant='pld'")

    def fn(sigma: float) -> float:
        return make_accountant(accountant).compose(
            dpsgd_event(noise_multiplier=sigma, sample_rate=q, steps=k)).get_epsilon(d)

    try:
        return calibrate(fn, target=eps, initial=_initial_noise(eps, q, k, d))
    except PldGridTooLargeError as err:
        # one accountant for the whole search: mixing PLD (where its grid fits) with RDP (where it
        # does not) made the answer sit at the grid's limit whatever the target (a review's finding)
        try:
            sigma = calibrate_noise(target_epsilon=eps, delta=d, sample_rate=q, steps=k, accountant="rdp")
        except ValueError as rdp_err:
            raise ValueError(f"target_epsilon={target_epsilon!r} cannot be calibrated here: the PLD accountant "
                             f"cannot discretise some of the runs searched ({err}), and the RDP accountant "
                             f"cannot reach it either ({rdp_err})") from err
        warnings.warn(f"the PLD accountant cannot discretise some of the runs searched ({err}); sigma is "
                      "calibrated with the RDP accountant instead (valid, looser)", stacklevel=2)
        return sigma
