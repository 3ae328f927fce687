r"""Beyond global sensitivity: smooth sensitivity, propose-test-release, sample-and-aggregate.

The global sensitivity of the median of values in :math:`[0, \Lambda]` is
:math:`\Lambda`: one record can move it across the whole range, so
:math:`\mathrm{Lap}(\Lambda/\varepsilon)` noise is useless. On a typical data set
the median barely moves (its *local* sensitivity
:math:`LS(D) = \max_{D' \simeq D} |f(D) - f(D')|` is small), but noise scaled to
:math:`LS(D)` is not private: the noise scale itself depends on the data
(:func:`local_sensitivity_median` has a computed example). Three fixes:

* **smooth sensitivity** (Nissim, Raskhodnikova, Smith 2007):
  :math:`S^*_\beta(D) = \max_k e^{-k\beta} A^{(k)}(D)`, with
  :math:`A^{(k)}(D)` the largest local sensitivity within distance :math:`k`.
  For the median of sorted :math:`x_1 \le \dots \le x_n` (:math:`n` odd,
  :math:`m = (n+1)/2`, :math:`x_i = 0` for :math:`i < 1`, :math:`\Lambda` for
  :math:`i > n`): :math:`A^{(k)} = \max_{0 \le t \le k+1} (x_{m+t} - x_{m+t-k-1})`.
  Releasing :math:`f(D) + \frac{2 S^*_\beta(D)}{\varepsilon} Z`,
  :math:`Z \sim \mathrm{Lap}(1)`, :math:`\beta = \frac{\varepsilon}{2\ln(2/\delta)}`, is
  :math:`(\varepsilon, \delta)`-DP (their Lemma 2.5 and Example 2: Laplace is
  :math:`(\varepsilon/2, \beta)`-admissible);
* **propose-test-release** (Dwork and Lei 2009): propose a bound :math:`b`; compute the
  distance :math:`\gamma` from :math:`D` to the nearest data set whose local sensitivity
  exceeds :math:`b`; if :math:`\gamma + \mathrm{Lap}(1/\varepsilon) \le \ln(1/\delta)/\varepsilon`
  refuse, else release :math:`f(D) + \mathrm{Lap}(b/\varepsilon)`: :math:`(2\varepsilon, \delta)`-DP;
* **sample-and-aggregate** (the framework of Nissim et al. 2007, section 4, whose aggregator is
  a smooth-sensitivity "center of attention"; here with the simplest aggregator, a clipped
  Laplace mean, the later common simplification, cf. Smith 2011's winsorised mean): split the
  data at random into :math:`m` blocks, compute any statistic on each, clip to :math:`[a, b]`
  and release the mean with :math:`\mathrm{Lap}((b-a)/(m\varepsilon))`: one record lies in
  one block.

Neighbouring relation here: replace-one (:math:`n` public, as the median's index
needs), privacy unit one record; for sample-and-aggregate, add/remove or replace-one
(see :func:`sample_and_aggregate`: each record joins a block drawn independently, so a
neighbour changes one block; a balanced partition would not, under add/remove).

>>> x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
>>> local_sensitivity_median(x, upper=10.0)
1.0
>>> round(smooth_sensitivity_median(x, upper=10.0, beta=0.1), 4)
6.0653

References: Nissim, Raskhodnikova, Smith (2007), "Smooth sensitivity and sampling
in private data analysis", STOC; Dwork and Lei (2009), "Differential privacy and
robust statistics", STOC; Smith (2011), "Privacy-preserving statistical estimation with
optimal convergence rates", STOC; Dwork and Roth (2014), section 7.

Used in: the chapter "Selection, the sparse vector and local DP".
"""

from __future__ import annotations

import math

import numpy as np

from privlab._validate import (check_array, check_delta, check_epsilon, check_int, check_positive, check_real,
                               check_rng)

__all__ = [
    "local_sensitivity_median", "smooth_sensitivity_median", "smooth_median", "broken_local_sensitivity_median",
    "broken_balanced_sample_and_aggregate", "distance_to_instability_median", "ptr_median", "sample_and_aggregate",
]  # fmt: skip


def _sorted_odd(x, upper) -> tuple[np.ndarray, float]:
    a = check_array("x", x)
    lam = check_positive("upper", upper)
    if a.ndim != 1 or a.size % 2 == 0:
        raise ValueError(f"x must be a 1-D array of odd length (the median is one value), got shape {a.shape}")
    if a.min() < 0 or a.max() > lam:
        raise ValueError(f"x must lie in [0, upper={lam}]: clip it first (a public bound)")
    return np.sort(a), lam


def _gaps(xs: np.ndarray, lam: float, k: int) -> float:
    r""":math:`A^{(k)} = \max_{0 \le t \le k+1} (x_{m+t} - x_{m+t-k-1})` with the padding 0 / :math:`\Lambda`."""
    n = xs.size
    m = (n + 1) // 2                                  # 1-based index of the median
    t = np.arange(k + 2)
    hi_idx, lo_idx = m + t, m + t - k - 1             # 1-based
    hi = np.where(hi_idx > n, lam, xs[np.clip(hi_idx, 1, n) - 1])
    lo = np.where(lo_idx < 1, 0.0, xs[np.clip(lo_idx, 1, n) - 1])
    return float(np.max(hi - lo))


def local_sensitivity_median(x, *, upper) -> float:
    r"""Local sensitivity of the median under replace-one, :math:`A^{(0)} = \max(x_m - x_{m-1}, x_{m+1} - x_m)`."""
    xs, lam = _sorted_odd(x, upper)
    return _gaps(xs, lam, 0)


def broken_local_sensitivity_median(x, *, upper, epsilon, rng: np.random.Generator, size=None):
    r"""NOT DP: the median plus :math:`\mathrm{Lap}(LS(D)/\varepsilon)`. A planted-broken twin.

    The noise scale is the *local* sensitivity, a function of the data: on a data set
    whose three middle values are equal, :math:`LS(D) = 0` and the exact median comes out;
    on a neighbour with :math:`LS(D') > 0` the output is continuous. The event
    "output = the median" has probability 1 against 0: no finite :math:`\varepsilon` holds.
    For the DP test suite to catch (and the chapter's computed example), never for use.

    >>> from privlab.config import make_rng
    >>> broken_local_sensitivity_median([300.0, 500.0, 500.0, 500.0, 900.0], upper=5000.0,
    ...                                 epsilon=1.0, rng=make_rng(0))
    500.0
    """
    eps = check_epsilon(epsilon)
    xs, lam = _sorted_odd(x, upper)
    noisy = np.median(xs) + _gaps(xs, lam, 0) / eps * check_rng(rng).laplace(size=size)
    return float(noisy) if size is None else noisy


def smooth_sensitivity_median(x, *, upper, beta) -> float:
    r""":math:`S^*_\beta = \max_{k \ge 0} e^{-k\beta} A^{(k)}` for the median of values in :math:`[0, \Lambda]`.

    The search stops once :math:`e^{-k\beta}\Lambda` falls below the best value found
    (no later :math:`k` can beat it), so it costs :math:`O(k^{*2})`, not :math:`O(n^2)`.
    """
    xs, lam = _sorted_odd(x, upper)
    beta = check_positive("beta", beta)
    best, k = 0.0, 0
    while k <= xs.size and math.exp(-k * beta) * lam > best:
        best = max(best, math.exp(-k * beta) * _gaps(xs, lam, k))
        k += 1
    return best


def smooth_median(x, *, upper, epsilon, delta, rng: np.random.Generator, size=None):
    r"""The median with Laplace noise scaled to its smooth sensitivity: :math:`(\varepsilon, \delta)`-DP.

    :math:`\mathrm{med}(x) + \frac{2 S^*_\beta}{\varepsilon} Z`, :math:`Z \sim \mathrm{Lap}(1)`,
    :math:`\beta = \varepsilon / (2 \ln(2/\delta))` (Nissim et al. 2007, Example 2).
    With ``size``, that many independent releases (an array), the sensitivity computed once.
    """
    eps, delta = check_epsilon(epsilon), check_delta(delta)
    xs, lam = _sorted_odd(x, upper)
    s = smooth_sensitivity_median(xs, upper=lam, beta=eps / (2 * math.log(2 / delta)))
    noisy = np.median(xs) + 2 * s / eps * check_rng(rng).laplace(size=size)
    return float(noisy) if size is None else noisy


def distance_to_instability_median(x, *, upper, bound) -> int:
    r""":math:`\gamma = \min\{k : A^{(k)} > b\}`: records to change before the local sensitivity can exceed :math:`b`."""
    xs, lam = _sorted_odd(x, upper)
    b = check_positive("bound", bound)
    for k in range(xs.size + 1):
        if _gaps(xs, lam, k) > b:
            return k
    return xs.size + 1


def ptr_median(x, *, upper, bound, epsilon, delta, rng: np.random.Generator, size=None):
    r"""Propose-test-release for the median (Dwork and Lei 2009): :math:`(2\varepsilon, \delta)`-DP.

    Returns ``None`` (refuse) when :math:`\gamma + \mathrm{Lap}(1/\varepsilon) \le \ln(1/\delta)/\varepsilon`,
    else :math:`\mathrm{med}(x) + \mathrm{Lap}(b/\varepsilon)`. With ``size``, that many
    independent releases as an array, NaN for a refusal (:math:`\gamma` computed once).

    >>> from privlab.config import make_rng
    >>> x = np.r_[np.zeros(40), np.full(41, 5.0), np.full(40, 10.0)]   # gamma = 20
    >>> r = ptr_median(x, upper=10.0, bound=1.0, epsilon=1.0, delta=1e-6, rng=make_rng(0), size=1000)
    >>> bool(np.isnan(r).mean() < 0.01), bool(abs(np.nanmedian(r) - 5.0) < 0.2)
    (True, True)
    """
    eps, delta = check_epsilon(epsilon), check_delta(delta)
    rng = check_rng(rng)
    gamma = distance_to_instability_median(x, upper=upper, bound=bound)
    n = 1 if size is None else check_int("size", size)
    answer = gamma + rng.laplace(scale=1 / eps, size=n) > math.log(1 / delta) / eps
    out = np.where(answer, np.median(np.asarray(x, dtype=float)) + rng.laplace(scale=bound / eps, size=n),
                   np.nan)
    if size is None:
        return None if np.isnan(out[0]) else float(out[0])
    return out


def sample_and_aggregate(data, statistic, *, blocks: int, lower, upper, epsilon, rng: np.random.Generator):
    r"""Sample-and-aggregate: the Laplace mean of a statistic over :math:`m` random disjoint blocks.

    :math:`\frac1m \sum_j \mathrm{clip}(f(B_j), a, b) + \mathrm{Lap}\big(\frac{b-a}{m\varepsilon}\big)`:
    one record changes one block's clipped value by at most :math:`b - a`, so the mean moves by
    :math:`(b-a)/m`. :math:`\varepsilon`-DP under add/remove or replace-one.

    Each record joins a block drawn uniformly and independently of everything else
    (``rng.integers(m)`` per record; blocks have Binomial sizes and may be empty). Add/remove:
    couple the two runs on the blocks of the records both data sets share; the added record
    lands in one block, so exactly one block's content differs. Replace-one: the changed
    record keeps its draw, and again one block differs. A uniformly random *balanced*
    partition (``permutation(n) % m``, sizes differing by at most one) does not have this
    property under add/remove: which records share a block with the added one, and how
    large that block is, change with :math:`n`, and a statistic that depends on them
    (any function is allowed) shows a privacy loss up to about :math:`2\varepsilon`
    (:func:`broken_balanced_sample_and_aggregate`, a planted twin in the DP test suite).

    The guarantee needs every block's value in :math:`[a, b]`: an empty block, or one on which
    the statistic is undefined (NaN or infinite, e.g. a regression on a block whose records
    all share one x, or a log of 0), counts as the public default :math:`(a + b)/2`, so a
    degenerate block, which one record can create, still moves the mean by at most
    :math:`(b - a)/m` and never makes the release NaN. (The statistic is not called on an
    empty block.)

    Args:
        data: an array (or DataFrame) whose rows are records.
        statistic: ``statistic(rows) -> float``, any function (no sensitivity bound needed);
            a non-finite value, or an empty block, counts as :math:`(a + b)/2`.
        blocks: :math:`m`.
        lower, upper: the public clipping range :math:`[a, b]` of the statistic.
        epsilon: :math:`\varepsilon`.
        rng: the source of randomness (the block assignment and the noise).

    >>> from privlab.config import make_rng
    >>> x = np.full(10, np.nan)                         # every block's mean is NaN: counts as 0.5
    >>> round(sample_and_aggregate(x, np.mean, blocks=2, lower=0, upper=1, epsilon=1e9,
    ...                            rng=make_rng(0)), 6)
    0.5
    """
    m, lo, hi, eps, rng = _block_args(blocks, lower, upper, epsilon, rng)
    return _clipped_block_mean(data, statistic, rng.integers(m, size=len(data)), m, lo, hi, eps, rng)


def _block_args(blocks, lower, upper, epsilon, rng):
    """The checked ``(m, a, b, epsilon, rng)`` of a sample-and-aggregate release."""
    eps = check_epsilon(epsilon)
    m = check_int("blocks", blocks, minimum=1)
    lo, hi = check_real("lower", lower), check_real("upper", upper)  # finite: an infinite bound releases inf
    if not hi > lo:
        raise ValueError(f"need finite lower < upper, got [{lower}, {upper}]")
    return m, lo, hi, eps, check_rng(rng)


def _clipped_block_mean(data, statistic, block_of, m, lo, hi, eps, rng) -> float:
    """The mean over blocks ``0..m-1`` of the clipped statistic (empty or undefined: the midpoint), plus noise."""
    take = (lambda idx: data.iloc[idx]) if hasattr(data, "iloc") else (lambda idx: data[idx])
    members = [np.flatnonzero(block_of == j) for j in range(m)]
    raw = np.array([float(statistic(take(idx))) if idx.size else math.nan for idx in members])
    values = np.clip(np.where(np.isfinite(raw), raw, (lo + hi) / 2), lo, hi)   # undefined: public default
    return float(values.mean() + rng.laplace(scale=(hi - lo) / (m * eps)))


def broken_balanced_sample_and_aggregate(data, statistic, *, blocks: int, lower, upper, epsilon,
                                         rng: np.random.Generator) -> float:
    r"""NOT DP under add/remove: :func:`sample_and_aggregate` on a uniformly random *balanced* partition.

    The blocks are ``permutation(n) % m`` (sizes differ by at most one). Under replace-one it is
    :math:`\varepsilon`-DP (one permutation for both data sets). Under add/remove it is not: with
    :math:`n + 1 = qm + r`, adding a record changes which block sizes occur and who shares a block
    with whom, and a statistic that reads them (e.g. ``1{|B| = q+1 and x not in B} + 1{|B| = q and
    x in B}``) moves up to two block values, a privacy loss up to about :math:`2\varepsilon`. Kept as
    the planted twin of "sample-and-aggregate" in the DP test suite (chapter 12), which catches it.
    """
    m, lo, hi, eps, rng = _block_args(blocks, lower, upper, epsilon, rng)
    n = len(data)
    if n < m:
        raise ValueError(f"need at least one record per block: {n} records, blocks={m}")
    return _clipped_block_mean(data, statistic, rng.permutation(n) % m, m, lo, hi, eps, rng)
