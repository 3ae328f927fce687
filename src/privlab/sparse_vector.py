r"""The sparse vector technique (SVT), and published variants that are not private.

A stream of queries :math:`q_1, q_2, \dots` (each of sensitivity :math:`\Delta`)
is compared with a threshold :math:`T`; only the *indices* of the first
:math:`c` queries above it are released, and the privacy cost does not grow with
the number of queries below it. Lyu, Su and Li's Algorithm 1 (the standard SVT):

.. math::
    \rho \sim \mathrm{Lap}(\Delta/\varepsilon_1), \qquad
    \nu_i \sim \mathrm{Lap}(2c\Delta/\varepsilon_2), \qquad
    \text{output } \top \text{ iff } q_i + \nu_i \ge T + \rho,

stopping after :math:`c` answers :math:`\top`, with
:math:`\varepsilon_1 = \varepsilon_2 = \varepsilon/2`; it is
:math:`\varepsilon`-DP (with monotonic queries, such as counts under
add/remove, :math:`\nu_i \sim \mathrm{Lap}(c\Delta/\varepsilon_2)` suffices).
With :math:`c = 1` it is AboveThreshold (Dwork and Roth 2014, Algorithm 1,
Theorem 3.23, which uses :math:`\mathrm{Lap}(2\Delta/\varepsilon)` and
:math:`\mathrm{Lap}(4\Delta/\varepsilon)`: the same mechanism).

Outputs are coded per query: 1 for :math:`\top`, 0 for :math:`\bot`, -1 for
"not answered" (after the :math:`c`-th :math:`\top`). The neighbouring relation
is that of the queries: every :math:`q_i` moves by at most :math:`\Delta`
(e.g. counting queries, one record added or removed).

**Broken variants.** Lyu, Su and Li (2017) show that several published SVT
variants are not :math:`\varepsilon`-DP. Three are implemented here as
*planted-broken twins* (for the DP test suite to catch, never for use):

* :func:`broken_svt_noisy_answer` (their Algorithm 3, from Roth's 2011 lecture
  notes): releases the noisy answer :math:`q_i + \nu_i` of every query above the
  threshold instead of :math:`\top`; the privacy loss grows with the number of
  :math:`\bot` answers before it, so no finite :math:`\varepsilon'` holds;
* :func:`broken_svt_threshold_noise_only` (their Algorithm 5, Stoddard et al.
  2014): no noise on the queries and no cutoff; not :math:`\varepsilon'`-DP
  for any finite :math:`\varepsilon'`;
* :func:`broken_svt_unscaled_query_noise` (their Algorithm 6, Chen et al. 2015):
  query noise :math:`\mathrm{Lap}(\Delta/\varepsilon_2)` that does not grow with
  the number of answers, and no cutoff; also :math:`\infty`-DP.

>>> from privlab.config import make_rng
>>> sparse_vector([0, 0, 100, 0, 100], threshold=50, c=1, epsilon=1.0, sensitivity=1.0,
...               rng=make_rng(0))
array([ 0,  0,  1, -1, -1], dtype=int8)

References: Dwork and Roth (2014), section 3.6; Lyu, Su and Li (2017),
"Understanding the sparse vector technique for differential privacy", PVLDB,
arXiv:1603.01699.

Used in: the chapter "Selection, the sparse vector and local DP".
"""

from __future__ import annotations

import numpy as np

from privlab._validate import (check_array, check_bool, check_epsilon, check_int, check_positive, check_real,
                               check_rng)

__all__ = [
    "sparse_vector", "above_threshold",
    "broken_svt_threshold_noise_only", "broken_svt_unscaled_query_noise", "broken_svt_noisy_answer",
    "BROKEN_VARIANTS",
]  # fmt: skip


def _queries(values) -> np.ndarray:
    if np.asarray(values).dtype.kind == "b":  # True/False are not query answers
        raise ValueError(f"values must be numbers, got booleans {values!r}")
    q = check_array("values", values)
    if q.ndim != 1:
        raise ValueError(f"values must be a 1-D array of query answers, got shape {q.shape}")
    return q


def _threshold(threshold) -> float:
    return check_real("threshold", threshold)


def _code(above: np.ndarray, c: int | None) -> np.ndarray:
    """Outputs 1 / 0 per query, -1 after the c-th 1 (``c=None``: no cutoff). ``above``: (n, m)."""
    out = above.astype(np.int8)
    if c is not None:
        before = np.cumsum(above, axis=1) - above            # number of tops strictly before query i
        out[before >= c] = -1
    return out


def _checked(values, c, epsilon, sensitivity, rng):
    """The validated ``(queries, c, epsilon, sensitivity, rng)`` every SVT variant starts from."""
    q = _queries(values)
    c = check_int("c", c)
    return q, c, check_epsilon(epsilon), check_positive("sensitivity", sensitivity), check_rng(rng)


def _draws(size) -> int:
    return 1 if size is None else check_int("size", size)


def sparse_vector(values, *, threshold, c: int, epsilon, sensitivity, rng: np.random.Generator,
                  monotonic: bool = False, size=None) -> np.ndarray:
    r"""The standard SVT (Lyu, Su and Li 2017, Algorithm 1): :math:`\varepsilon`-DP.

    Args:
        values: the query answers :math:`q_i(D)`, a finite 1-D array.
        threshold: :math:`T`.
        c: the number of :math:`\top` answers before stopping.
        epsilon: :math:`\varepsilon > 0` (half on the threshold, half on the queries).
        sensitivity: :math:`\Delta > 0` of every query.
        rng: the source of randomness.
        monotonic: queries all move the same way between neighbours (halves the query noise).
        size: ``None`` for one run, else the number of independent runs.

    Returns:
        ``int8`` codes (1, 0, -1) of shape ``(m,)``, or ``(size, m)``.

    Raises:
        ValueError: invalid privacy parameters, ``values``, ``c`` or ``rng``.
    """
    q, c, eps, d, rng = _checked(values, c, epsilon, sensitivity, rng)
    n = _draws(size)
    eps1 = eps2 = eps / 2
    rho = rng.laplace(scale=d / eps1, size=(n, 1))
    nu = rng.laplace(scale=(1 if check_bool("monotonic", monotonic) else 2) * c * d / eps2, size=(n, q.size))
    out = _code(q + nu >= _threshold(threshold) + rho, c)
    return out[0] if size is None else out


def above_threshold(values, *, threshold, epsilon, sensitivity, rng: np.random.Generator, size=None):
    r"""AboveThreshold (Dwork and Roth 2014, Algorithm 1): the index of the first query above :math:`T`.

    :func:`sparse_vector` with :math:`c = 1`. Returns the index, or ``-1`` when
    no query is above (an integer array with ``size``).

    >>> from privlab.config import make_rng
    >>> above_threshold([0, 0, 100], threshold=50, epsilon=1.0, sensitivity=1.0, rng=make_rng(0))
    2
    """
    codes = np.atleast_2d(sparse_vector(values, threshold=threshold, c=1, epsilon=epsilon,
                                        sensitivity=sensitivity, rng=rng, size=size))
    hit = codes == 1
    idx = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return int(idx[0]) if size is None else idx


# ------------------------------------------------------------------ planted-broken twins (not DP)


def broken_svt_threshold_noise_only(values, *, threshold, c: int, epsilon, sensitivity,
                                    rng: np.random.Generator, size=None) -> np.ndarray:
    r"""NOT DP: Lyu, Su and Li (2017), Algorithm 5 (from Stoddard et al. 2014). A planted-broken twin.

    :math:`\rho \sim \mathrm{Lap}(2\Delta/\varepsilon)`, no noise on the queries,
    every query answered (``c`` is ignored, as in the original). Output
    :math:`(\bot, \top)` on :math:`q = (0, 1)` has positive probability
    (:math:`0 < \rho \le 1`, with :math:`T = 0`) and on the neighbour
    :math:`q' = (1, 0)` probability zero: no finite :math:`\varepsilon` holds.
    """
    q, _, eps, d, rng = _checked(values, c, epsilon, sensitivity, rng)  # no cutoff: c unused
    rho = rng.laplace(scale=2 * d / eps, size=(_draws(size), 1))
    out = _code(q[None, :] >= _threshold(threshold) + rho, None)
    return out[0] if size is None else out


def broken_svt_unscaled_query_noise(values, *, threshold, c: int, epsilon, sensitivity,
                                    rng: np.random.Generator, size=None) -> np.ndarray:
    r"""NOT DP: Lyu, Su and Li (2017), Algorithm 6 (from Chen et al. 2015). A planted-broken twin.

    :math:`\rho \sim \mathrm{Lap}(\Delta/\varepsilon_1)`,
    :math:`\nu_i \sim \mathrm{Lap}(\Delta/\varepsilon_2)` (not scaled by the
    number of answers) and no cutoff. Every answered query leaks
    :math:`\varepsilon_2` again: on :math:`q = (1^m, 0^m)` against
    :math:`q' = (0^m, 1^m)` the shared :math:`\rho` cancels in (tops among the
    first :math:`m`) minus (tops among the last :math:`m`), whose distributions
    separate more as :math:`m` grows: the privacy loss of the outcome "every one of
    the first :math:`m` and none of the last :math:`m` is a top" is 4.0 at
    :math:`m = 5` and 8.4 at :math:`m = 10`, :math:`\varepsilon = 1` (computed exactly
    by integrating over :math:`\rho`, in a review), growing about linearly with
    :math:`m` against the claimed :math:`\varepsilon`.
    """
    q, _, eps, d, rng = _checked(values, c, epsilon, sensitivity, rng)  # no cutoff: c unused
    n = _draws(size)
    rho = rng.laplace(scale=d / (eps / 2), size=(n, 1))
    nu = rng.laplace(scale=d / (eps / 2), size=(n, q.size))
    out = _code(q + nu >= _threshold(threshold) + rho, None)
    return out[0] if size is None else out


def broken_svt_noisy_answer(values, *, threshold, c: int, epsilon, sensitivity,
                            rng: np.random.Generator, size=None) -> tuple[np.ndarray, np.ndarray]:
    r"""NOT DP: Lyu, Su and Li (2017), Algorithm 3 (from Roth 2011). A planted-broken twin.

    As :func:`sparse_vector` (threshold noise :math:`\rho \sim \mathrm{Lap}(\Delta/\varepsilon_1)`,
    cutoff after :math:`c` answers above, :math:`\varepsilon_1 = \varepsilon_2 = \varepsilon/2`),
    with query noise :math:`\nu_i \sim \mathrm{Lap}(c\Delta/\varepsilon_2)`, but every
    answer above the threshold is the *noisy answer* :math:`a_i = q_i + \nu_i`, not
    :math:`\top`. Releasing :math:`a_i` pins :math:`\nu_i`, so the proof's shift of the
    :math:`\top` query's noise is no longer free, and each :math:`\bot` before it leaks.

    Counterexample (:math:`c = 1`, :math:`T = 0`): :math:`q = 0^m` against
    :math:`q' = (\Delta)^m` (every query up by :math:`\Delta`, a monotone pair) and the
    output "the first :math:`m - 1` answers :math:`\bot`, then :math:`a_m \le 0`". It
    needs :math:`\rho \le a_m \le 0`, where every factor of its probability is in the
    left Laplace tail: :math:`\Pr[\nu_i < \rho - \Delta] = e^{-\Delta/b}\Pr[\nu_i < \rho]`
    and the density of :math:`a_m` likewise, with :math:`b = c\Delta/\varepsilon_2`. The
    ratio of the two probabilities is exactly

    .. math::
        e^{m\Delta/b} = e^{m\varepsilon/(2c)},

    which exceeds :math:`e^{\varepsilon'}` for any :math:`\varepsilon'` once
    :math:`m > 2c\varepsilon'/\varepsilon` (privacy loss 3 at :math:`m = 6`,
    :math:`\varepsilon = 1`).

    Returns:
        ``(codes, answers)``: the ``int8`` codes of :func:`sparse_vector` (1 above, 0 below,
        -1 not answered) and a float array of the same shape holding :math:`a_i` where the
        code is 1 and NaN elsewhere.

    >>> from privlab.config import make_rng
    >>> codes, answers = broken_svt_noisy_answer([0, 100, 0], threshold=50, c=1, epsilon=1e6,
    ...                                          sensitivity=1.0, rng=make_rng(0))
    >>> codes.tolist(), round(float(answers[1]), 3)
    ([0, 1, -1], 100.0)
    """
    q, c, eps, d, rng = _checked(values, c, epsilon, sensitivity, rng)
    n = _draws(size)
    eps1 = eps2 = eps / 2
    rho = rng.laplace(scale=d / eps1, size=(n, 1))
    noisy = q + rng.laplace(scale=c * d / eps2, size=(n, q.size))
    codes = _code(noisy >= _threshold(threshold) + rho, c)
    answers = np.where(codes == 1, noisy, np.nan)
    return (codes[0], answers[0]) if size is None else (codes, answers)


#: name -> (function, a worst-case pair of neighbouring query vectors, threshold, c). The
#: functions of the first two return codes; Alg. 3's returns ``(codes, answers)``.
BROKEN_VARIANTS = {
    "SVT, threshold noise only (Lyu et al. Alg. 5)": (
        broken_svt_threshold_noise_only, (np.array([0.0, 1.0]), np.array([1.0, 0.0])), 0.0, 1),
    "SVT, query noise not scaled by c (Lyu et al. Alg. 6)": (
        broken_svt_unscaled_query_noise,
        (np.r_[np.ones(10), np.zeros(10)], np.r_[np.zeros(10), np.ones(10)]), 0.0, 1),
    "SVT, noisy answer output (Lyu et al. Alg. 3)": (
        broken_svt_noisy_answer, (np.zeros(6), np.ones(6)), 0.0, 1),
}
