r"""Sensitivity of queries, and the bounded queries that make it finite.

The sensitivity of a query :math:`f` is :math:`\Delta_p f = \max_{D \simeq D'}
\lVert f(D) - f(D') \rVert_p` (:math:`p = 1` for Laplace, 2 for Gaussian noise)
and depends on the neighbouring relation, which every helper names:
``"add_remove"`` (:math:`D'` is :math:`D` plus or minus one record) or
``"replace"`` (one record replaced; :math:`n` is public). Bounded queries first
:func:`clip` to a public :math:`[a, b]`.
Gaussian noise calibrated to an L2 sensitivity is in :mod:`privlab.gaussian`.

>>> bounded_sum_sensitivity(lower=0, upper=10, neighbouring="replace")
10.0
>>> bounded_mean([1.0, 5.0, 30.0], lower=0, upper=10)
5.333333333333333

References: Dwork, McSherry, Nissim, Smith (2006), "Calibrating noise to
sensitivity in private data analysis"; Dwork and Roth (2014), "The Algorithmic
Foundations of Differential Privacy", Section 3.3 and Appendix A;

Used in: chapter 2.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from privlab._validate import check_array, check_int

NEIGHBOURING = ("add_remove", "replace")
#: The book's prose and :mod:`privlab.pipeline` spell the two relations "add/remove" and "replace-one";
#: both spellings are accepted here and mean the same relations.
_ALIASES = {"add/remove": "add_remove", "replace-one": "replace"}

__all__ = [
    "NEIGHBOURING", "clip", "bounded_sum", "bounded_mean", "counting_sensitivity",
    "bounded_sum_sensitivity", "bounded_mean_sensitivity", "histogram_l1_sensitivity",
    "histogram_l2_sensitivity", "l1_sensitivity", "l2_sensitivity",
]  # fmt: skip


def _check_neighbouring(neighbouring: str) -> str:
    """The relation's name here (``add_remove`` or ``replace``); the pipeline's spellings are accepted too."""
    name = _ALIASES.get(neighbouring, neighbouring) if isinstance(neighbouring, str) else neighbouring
    if name not in NEIGHBOURING:
        raise ValueError(f"neighbouring must be one of {NEIGHBOURING} (or {tuple(_ALIASES)}), "
                         f"got {neighbouring!r}")
    return name


def _check_bounds(lower, upper) -> tuple[float, float]:
    lo, hi = float(check_array("lower", lower, ndim=0)), float(check_array("upper", upper, ndim=0))
    if lo > hi:
        raise ValueError(f"lower must be <= upper, got lower={lower!r}, upper={upper!r}")
    return lo, hi


# --------------------------------------------------------------------------- bounded queries


def clip(values, lower, upper) -> np.ndarray:
    r"""Clip every value to the public interval :math:`[a, b]`: :math:`\min(\max(x, a), b)`.

    Args:
        values: finite numbers, any shape, not empty.
        lower: :math:`a`, finite.
        upper: :math:`b`, finite, :math:`a \le b`.

    Returns:
        A float array of the shape of ``values``.

    Raises:
        ValueError: empty ``values``; NaN or infinite values or bounds; ``lower > upper``.

    >>> clip([-3.0, 0.5, 7.0], 0, 1)
    array([0. , 0.5, 1. ])

    Used in: chapter 2.
    """
    lo, hi = _check_bounds(lower, upper)
    return np.clip(check_array("values", values), lo, hi)


def bounded_sum(values, *, lower, upper) -> float:
    r"""Sum of the values clipped to :math:`[a, b]`, :math:`\sum_i \operatorname{clip}(x_i)`; see :func:`bounded_sum_sensitivity`.

    Args:
        values: finite numbers, not empty.
        lower: :math:`a`.
        upper: :math:`b`.

    Returns:
        The clipped sum.

    Raises:
        ValueError: as :func:`clip`.

    >>> bounded_sum([1.0, 5.0, 30.0], lower=0, upper=10)
    16.0

    Used in: chapter 2.
    """
    return float(np.sum(clip(values, lower, upper)))


def bounded_mean(values, *, lower, upper) -> float:
    r"""Mean of the values clipped to :math:`[a, b]`, :math:`\frac1n \sum_i \operatorname{clip}(x_i)`; see :func:`bounded_mean_sensitivity`.

    Args:
        values: finite numbers, not empty.
        lower: :math:`a`.
        upper: :math:`b`.

    Returns:
        The clipped mean.

    Raises:
        ValueError: as :func:`clip`.

    >>> bounded_mean([-1.0, 0.5], lower=0, upper=1)
    0.25

    Used in: chapter 2.
    """
    return float(np.mean(clip(values, lower, upper)))


# --------------------------------------------------------------------------- sensitivities


def counting_sensitivity() -> float:
    r"""Sensitivity of a counting query :math:`|\{x \in D : \phi(x)\}|`: :math:`\Delta_1 = \Delta_2 = 1`.

    Adding or removing a record moves the count by at most 1; so does replacing
    one (:math:`-1`, 0 or :math:`+1`). Reference: Dwork and Roth (2014), Section 3.3.

    Returns:
        ``1.0``, under both neighbouring relations.

    >>> counting_sensitivity()
    1.0

    Used in: chapter 2.
    """
    return 1.0


def bounded_sum_sensitivity(*, lower, upper, neighbouring: str = "add_remove") -> float:
    r"""Sensitivity of the sum of values clipped to :math:`[a, b]` (L1 = L2: the answer is one number).

    .. math:: \Delta = \max(|a|, |b|) \ \text{(add/remove)}, \qquad \Delta = b - a \ \text{(replace)}

    Adding a record adds one clipped value; replacing one swaps a value in
    :math:`[a, b]` for another.

    Args:
        lower: :math:`a`.
        upper: :math:`b`, :math:`a \le b`.
        neighbouring: ``"add_remove"`` or ``"replace"``.

    Returns:
        :math:`\Delta`.

    Raises:
        ValueError: non-finite bounds, ``lower > upper``, an unknown relation.

    >>> bounded_sum_sensitivity(lower=-2, upper=5), bounded_sum_sensitivity(lower=-2, upper=5, neighbouring="replace")
    (5.0, 7.0)

    Used in: chapter 2.
    """
    lo, hi = _check_bounds(lower, upper)
    return max(abs(lo), abs(hi)) if _check_neighbouring(neighbouring) == "add_remove" else hi - lo


def bounded_mean_sensitivity(*, lower, upper, n) -> float:
    r"""Sensitivity of the mean of :math:`n` values clipped to :math:`[a, b]`, :math:`\Delta = (b - a)/n`.

    Under replace-one with :math:`n` public: one replaced value moves the sum by
    at most :math:`b - a`. (Under add/remove :math:`n` is private; release a
    noisy sum and a noisy count instead.)

    Args:
        lower: :math:`a`.
        upper: :math:`b`, :math:`a \le b`.
        n: :math:`n \ge 1`, the public number of records.

    Returns:
        :math:`\Delta`.

    Raises:
        ValueError: non-finite bounds, ``lower > upper``, ``n < 1``.

    >>> bounded_mean_sensitivity(lower=0, upper=100, n=1000)
    0.1

    Used in: chapter 2.
    """
    lo, hi = _check_bounds(lower, upper)
    return (hi - lo) / check_int("n", n, minimum=1)


def histogram_l1_sensitivity(*, neighbouring: str = "add_remove") -> float:
    r"""L1 sensitivity of a histogram over disjoint bins: :math:`\Delta_1 = 1` (add/remove), 2 (replace).

    A record lies in one bin; replacing it lowers one count and raises another.
    Reference: Dwork and Roth (2014), Section 3.3.

    Args:
        neighbouring: ``"add_remove"`` or ``"replace"``.

    Returns:
        :math:`\Delta_1`, whatever the number of bins.

    Raises:
        ValueError: an unknown relation.

    >>> histogram_l1_sensitivity(), histogram_l1_sensitivity(neighbouring="replace")
    (1.0, 2.0)

    Used in: chapter 2.
    """
    return 1.0 if _check_neighbouring(neighbouring) == "add_remove" else 2.0


def histogram_l2_sensitivity(*, neighbouring: str = "add_remove") -> float:
    r"""L2 sensitivity of a histogram: :math:`\Delta_2 = 1` (add/remove), :math:`\sqrt{1^2 + 1^2} = \sqrt 2` (replace).

    Args:
        neighbouring: ``"add_remove"`` or ``"replace"``.

    Returns:
        :math:`\Delta_2`.

    Raises:
        ValueError: an unknown relation.

    >>> histogram_l2_sensitivity(neighbouring="replace")
    1.4142135623730951

    Used in: chapter 2.
    """
    return 1.0 if _check_neighbouring(neighbouring) == "add_remove" else math.sqrt(2.0)


def _empirical_sensitivity(f: Callable, neighbours: Iterable, order: int) -> float:
    worst, count = 0.0, 0
    for pair in neighbours:
        if len(pair) != 2:
            raise ValueError(f"neighbours must be pairs (D, D'), got an item of length {len(pair)}")
        d, d_prime = pair
        a = check_array("f(D)", f(d), allow_empty=True)
        b = check_array("f(D')", f(d_prime), allow_empty=True)
        if a.shape != b.shape:
            raise ValueError(f"f(D) and f(D') must have the same shape, got {a.shape} and {b.shape}")
        worst, count = max(worst, float(np.linalg.norm((a - b).ravel(), ord=order))), count + 1
    if count == 0:
        raise ValueError("neighbours must contain at least one pair (D, D'), got none")
    return worst


def l1_sensitivity(f: Callable, neighbours: Iterable) -> float:
    r"""Largest L1 change of ``f`` over the given pairs, :math:`\max_{(D, D') \in \mathcal N} \lVert f(D) - f(D') \rVert_1`.

    A *lower bound* on :math:`\Delta_1 f` (a max over all neighbours): use it to
    check a claimed sensitivity, never to calibrate noise.

    Args:
        f: the query, from a dataset to a number or an array.
        neighbours: an iterable of pairs :math:`(D, D')`, at least one.

    Returns:
        The largest L1 distance.

    Raises:
        ValueError: no pairs; non-finite answers; answers of different shapes.

    >>> l1_sensitivity(len, [([1, 2], [1, 2, 3]), ([], [4])])
    1.0

    Used in: chapter 2.
    """
    return _empirical_sensitivity(f, neighbours, 1)


def l2_sensitivity(f: Callable, neighbours: Iterable) -> float:
    r"""Largest L2 change of ``f`` over the given pairs, :math:`\max_{(D, D') \in \mathcal N} \lVert f(D) - f(D') \rVert_2`.

    A lower bound on :math:`\Delta_2 f`; arguments and errors as :func:`l1_sensitivity`.

    >>> l2_sensitivity(lambda d: np.bincount(d, minlength=3), [([0, 1, 1], [0, 1, 2])])
    1.4142135623730951

    Used in: chapter 2.
    """
    return _empirical_sensitivity(f, neighbours, 2)
