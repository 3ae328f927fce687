r"""The floating-point attack on textbook Laplace noise (Mironov 2012), and the yardstick it breaks.

A textbook Laplace mechanism releases :math:`\mathrm{fl}(x + \mathrm{fl}(b \ln \dots))`
in double precision. The uniform :math:`u` behind the noise lives on the grid
:math:`k\,2^{-53}`, so the noise takes at most :math:`2^{53}` values, sparse
among the doubles where :math:`|\text{noise}|` is large, and adding :math:`x`
rounds them differently for different :math:`x`. An output is then typically
*reachable* from only one of two neighbouring inputs, whatever :math:`\varepsilon`:
the attacker replays the sampler (the map :math:`k \mapsto` output is monotone,
so a bisection over :math:`k` finds whether some :math:`k` gives exactly the
output) and names the input that can produce it. Two samplers are replayed
bit for bit:

- ``"numpy"``: ``value + rng.laplace(0, b)``; numpy draws :math:`U = k\,2^{-53}`
  (``Generator.random``, :math:`k \ge 1`) and returns :math:`b\ln(2U)` for
  :math:`U < 1/2`, else :math:`-b\ln((2 - U) - U)` (``random_laplace`` in numpy's
  ``distributions.c``; its ``log`` is the C library's, as is :func:`math.log`);
- ``"inverse_cdf"``: :math:`u = U - 1/2`, noise :math:`-b\,\mathrm{sign}(u)\ln(1 - 2|u|)`.

Against exact mechanisms (:mod:`privlab.discrete`) every output in the support
is reachable from both inputs, and the attack is a coin flip.

>>> round(dp_success_bound(epsilon=0.1), 4)
0.525

Reference: Mironov (2012), "On significance of the least significant bits for
differential privacy", ACM CCS 2012.

Used in: chapter 12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from privlab._validate import check_array, check_delta, check_epsilon, check_int, check_positive, check_rng

__all__ = [
    "LAPLACE_SAMPLERS", "AttackResult", "distinguishing_attack", "dp_success_bound", "grid_reachable",
    "textbook_laplace_mechanism", "textbook_laplace_noise", "textbook_laplace_reachable",
]  # fmt: skip

#: The float64 Laplace samplers the attack replays bit for bit: numpy's, and the textbook inverse CDF.
LAPLACE_SAMPLERS = ("numpy", "inverse_cdf")
_K_MAX = 2**53 - 1  # U = k 2^-53 with 1 <= k <= 2^53 - 1 (U = 0 is never used)


def _check_sampler(sampler: str) -> str:
    if sampler not in LAPLACE_SAMPLERS:
        raise ValueError(f"sampler must be one of {LAPLACE_SAMPLERS}, got {sampler!r}")
    return sampler


def _noise_of_index(k: int, b: float, sampler: str) -> float:
    """The noise the sampler returns for its uniform U = k 2^-53, with its exact float operations."""
    u = k * 2.0**-53  # exact: k < 2^53
    if sampler == "numpy":  # distributions.c random_laplace, loc = 0
        return 0.0 - b * math.log((2.0 - u) - u) if u >= 0.5 else 0.0 + b * math.log(u + u)
    u -= 0.5  # exact
    return -b * math.copysign(1.0, u) * math.log(1.0 - 2.0 * abs(u)) if u != 0 else 0.0


def textbook_laplace_mechanism(value, *, scale, rng: np.random.Generator, sampler: str = "numpy", size=None):
    r"""The textbook (leaky) Laplace mechanism, :math:`\mathrm{fl}(x + Z)`, :math:`Z \sim \mathrm{Lap}(b)` in float64.

    ``"numpy"``: ``value + rng.laplace(0.0, scale)``; ``"inverse_cdf"``:
    :math:`Z = -b\,\mathrm{sign}(u)\ln(1 - 2|u|)`, :math:`u = U - 1/2`,
    :math:`U` from ``rng.random()`` (redrawn if 0). Both are the
    :math:`\varepsilon = \Delta/b` mechanism on paper and leak through their low
    bits in practice; for teaching the attack only. Reference: Mironov (2012).

    Args:
        value: :math:`x`, a finite number.
        scale: :math:`b > 0`.
        rng: the source of randomness.
        sampler: ``"numpy"`` or ``"inverse_cdf"``.
        size: ``None`` for one output, else the number of outputs.

    Returns:
        A float, or a float array of length ``size``.

    Raises:
        ValueError: invalid ``value``, ``scale``, ``rng``, ``sampler`` or ``size``.

    Used in: chapter 12.
    """
    x, b = float(check_array("value", value, ndim=0)), check_positive("scale", scale)
    rng, sampler = check_rng(rng), _check_sampler(sampler)
    n = 1 if size is None else check_int("size", size, minimum=0)
    if sampler == "numpy":
        out = x + rng.laplace(0.0, b, size=n)
    else:
        u = rng.random(n)
        while np.any(u == 0.0):  # probability 2^-53 each; ln(0) otherwise
            u[u == 0.0] = rng.random(int(np.sum(u == 0.0)))
        out = x + np.array([_noise_of_index(int(k), b, sampler) for k in (u * 2.0**53).astype(np.int64)])
    return float(out[0]) if size is None else out


def textbook_laplace_noise(u, *, scale, sampler: str = "numpy") -> float:
    r"""Replay a textbook sampler: the noise it returns for its uniform draw :math:`U \in (0, 1)` on the grid :math:`2^{-53}\mathbb Z`.

    Bit-exact: ``textbook_laplace_noise(rng.random(), scale=b)`` equals
    ``rng.laplace(0, b)`` for two generators in the same state.

    Args:
        u: :math:`U`, a multiple of :math:`2^{-53}` in :math:`(0, 1)`.
        scale: :math:`b > 0`.
        sampler: ``"numpy"`` or ``"inverse_cdf"``.

    Returns:
        The noise, a float.

    Raises:
        ValueError: ``u`` off the grid or outside :math:`(0, 1)`; invalid ``scale`` or ``sampler``.

    >>> textbook_laplace_noise(0.5, scale=1.0)
    0.0
    >>> textbook_laplace_noise(0.25, scale=2.0) == 2.0 * math.log(0.5)
    True

    Used in: chapter 12.
    """
    k = float(check_array("u", u, ndim=0)) * 2.0**53
    if not (1 <= k <= _K_MAX and k.is_integer()):
        raise ValueError(f"u must be a multiple of 2^-53 in (0, 1), got {u!r}")
    return _noise_of_index(int(k), check_positive("scale", scale), _check_sampler(sampler))


def textbook_laplace_reachable(output, candidate, *, scale, sampler: str = "numpy") -> bool:
    r"""Whether the textbook sampler can output exactly ``output`` from input ``candidate``: :math:`\exists k: \mathrm{fl}(x + Z(k)) = y`.

    :math:`k \mapsto \mathrm{fl}(x + Z(k))` is non-decreasing (every
    operation is monotone under round-to-nearest), so a bisection over
    :math:`1 \le k < 2^{53}` finds the first :math:`k` with output
    :math:`\ge y` in 53 replays. Reference: Mironov (2012).

    Args:
        output: :math:`y`, the released float.
        candidate: :math:`x`, a hypothesised input.
        scale: :math:`b > 0`.
        sampler: ``"numpy"`` or ``"inverse_cdf"``.

    Returns:
        ``True`` if some uniform draw gives exactly ``output``.

    Raises:
        ValueError: NaN or infinite ``output`` or ``candidate``; invalid ``scale`` or ``sampler``.

    >>> textbook_laplace_reachable(1.0, 1.0, scale=1.0)
    True

    Used in: chapter 12.
    """
    y, x = (float(check_array(n, v, ndim=0)) for n, v in (("output", output), ("candidate", candidate)))
    b, sampler = check_positive("scale", scale), _check_sampler(sampler)
    lo, hi = 1, _K_MAX
    if not x + _noise_of_index(lo, b, sampler) <= y <= x + _noise_of_index(hi, b, sampler):
        return False
    while lo < hi:  # invariant: the first k with output >= y lies in [lo, hi]
        mid = (lo + hi) // 2
        if x + _noise_of_index(mid, b, sampler) >= y:
            hi = mid
        else:
            lo = mid + 1
    return x + _noise_of_index(lo, b, sampler) == y


def grid_reachable(output, candidate, *, gamma=1, lower=-math.inf, upper=math.inf) -> bool:
    r"""Reachability for the exact mechanisms: :math:`y \in \gamma\mathbb Z \cap [a, b]` or :math:`y \in \{a, b\}`, for every input.

    The discrete Laplace and Gaussian have full support on the integers, and
    :func:`privlab.discrete.snapping_mechanism` reaches every grid point of
    :math:`[a, b]` (and the clamps) from every input, so ``candidate`` cannot
    change the answer: the reachability attack is a coin flip.

    Args:
        output: :math:`y`.
        candidate: :math:`x` (ignored, kept for the common signature).
        gamma: the grid spacing (1 for integer mechanisms), an ``int`` or ``Fraction``.
        lower: :math:`a`.
        upper: :math:`b`.

    Returns:
        ``True`` if ``output`` is in the mechanism's support.

    Raises:
        ValueError: NaN or infinite ``output``.

    >>> grid_reachable(0.75, 0.0, gamma=Fraction(1, 4), lower=0, upper=1)
    True

    Used in: chapter 12.
    """
    y = Fraction(float(check_array("output", output, ndim=0)))
    return y in (lower, upper) or (lower <= y <= upper and (y / Fraction(gamma)).denominator == 1)


@dataclass(frozen=True)
class AttackResult:
    r"""Outcome of :func:`distinguishing_attack`.

    Attributes:
        success_rate: the share of trials whose secret input was named correctly.
        standard_error: :math:`\sqrt{\hat p (1 - \hat p) / n}`.
        n_trials: trials run.
        n_correct: trials named correctly.
        decisive_rate: the share of outputs reachable from exactly one input.
        reachable_rate: the share of outputs reachable from at least one input (1 for a mechanism
            whose outputs all lie in the support the attacker was given).
    """

    success_rate: float
    standard_error: float
    n_trials: int
    n_correct: int
    decisive_rate: float
    reachable_rate: float


def distinguishing_attack(
    mechanism: Callable, x0, x1, *, reachable: Callable, n_trials: int, rng: np.random.Generator
) -> AttackResult:
    r"""Play the distinguishing game: a fair secret bit picks :math:`x_0` or :math:`x_1`, the attacker sees one output.

    The attacker names the input from which the output is reachable; when both
    or neither are, it flips a fair coin. An :math:`(\varepsilon, \delta)`-DP
    mechanism caps the success rate at :func:`dp_success_bound`; the textbook
    float sampler is far above it. Reference: Mironov (2012).

    Args:
        mechanism: ``mechanism(x, rng) -> float``, one release.
        x0: the first neighbouring input.
        x1: the second.
        reachable: ``reachable(output, candidate) -> bool``.
        n_trials: number of games.
        rng: the source of randomness (secret bits, coins, and the mechanism's draws).

    Returns:
        An :class:`AttackResult`.

    Raises:
        ValueError: invalid ``n_trials`` or ``rng``.

    Used in: chapter 12.
    """
    n, rng = check_int("n_trials", n_trials), check_rng(rng)
    secrets, coins = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
    correct = decisive = in_support = 0
    for secret, coin in zip(secrets.tolist(), coins.tolist()):
        y = mechanism(x1 if secret else x0, rng)
        r0, r1 = reachable(y, x0), reachable(y, x1)
        guess = coin if r0 == r1 else int(r1)
        decisive += r0 != r1
        in_support += r0 or r1
        correct += guess == secret
    p = correct / n
    return AttackResult(p, math.sqrt(p * (1.0 - p) / n), n, correct, decisive / n, in_support / n)


def dp_success_bound(*, epsilon, delta=0.0) -> float:
    r"""The highest success rate of any distinguisher (fair prior) against an :math:`(\varepsilon, \delta)`-DP mechanism.

    .. math:: \Pr[\text{correct}] \le \frac12 + \frac12\Big(\frac{(e^{\varepsilon} - 1)(1 - \delta)}{e^{\varepsilon} + 1} + \delta\Big)

    from :math:`\mathrm{TPR} \le e^\varepsilon \mathrm{FPR} + \delta` and
    :math:`1 - \mathrm{FPR} \le e^\varepsilon (1 - \mathrm{TPR}) + \delta`
    (:math:`e^\varepsilon/(1 + e^\varepsilon)` for :math:`\delta = 0`).
    Reference: Kairouz, Oh, Viswanath (2015), "The composition theorem for differential privacy", Theorem 2.1.

    Args:
        epsilon: :math:`\varepsilon > 0`.
        delta: :math:`\delta \in [0, 1)`.

    Returns:
        The bound, in :math:`[1/2, 1]`.

    Raises:
        ValueError: invalid ``epsilon`` or ``delta``.

    >>> round(dp_success_bound(epsilon=math.log(3)), 6)
    0.75

    Used in: chapter 12.
    """
    epsilon, delta = check_epsilon(epsilon), check_delta(delta, allow_zero=True)
    return 0.5 + 0.5 * (math.tanh(epsilon / 2.0) * (1.0 - delta) + delta)  # (e^eps - 1)/(e^eps + 1) = tanh(eps/2)
