r"""A comparison becomes a verdict only against a tolerance from the right standard error.

The chapters compare two things measured over replicate seeds (a DP model and its
clipping-only twin, two training methods, a curve and its non-private end) and state a
verdict. The statistics are few and live here, each with the standard error it uses:

* :func:`difference_verdict`: a claimed positive difference against a tolerance
  (typically :math:`t \times` s.e.): *holds*, *contradicted* or *unresolved*.
* :func:`paired_equivalence`: seed-paired differences :math:`d_s`, equivalence against a
  margin :math:`\Delta` fixed in advance by two one-sided tests (Schuirmann 1987):
  *flat* when the :math:`1 - 2\alpha` :math:`t` interval of :math:`\bar d` lies inside
  :math:`(-\Delta, \Delta)`, *gap* when the :math:`1 - \alpha` two-sided interval excludes 0,
  else *unresolved*.
* :func:`paired_interval`: a one-sided :math:`t` interval for a seed-paired mean whose
  variance adds a known part (the paired test-set variance, :func:`paired_test_var`), with
  Welch-Satterthwaite degrees of freedom; :func:`interval_verdict` reads it against a margin.
* :func:`two_sample_contrast`: two independent samples (different seeds per arm): the mean
  difference, Welch's standard error and whether :math:`|\bar a - \bar b| > t \cdot
  \mathrm{s.e.}`.

With :math:`n` seeds, :math:`\mathrm{s.e.}(\bar d) = \mathrm{sd}(d)/\sqrt{n}` and the
quantiles are Student's :math:`t` with :math:`n - 1` degrees of freedom unless stated.

Reference: Schuirmann, *A comparison of the two one-sided tests procedure and the power
approach for assessing the equivalence of average bioavailability*, J. Pharmacokinetics
and Biopharmaceutics 15 (1987); Welch, Biometrika 34 (1947).

Used in: chapters 5, 6, 7, 11, 13.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["difference_verdict", "interval_verdict", "paired_equivalence", "paired_interval", "paired_test_var",
           "two_sample_contrast"]


def _sample(name: str, values, minimum: int = 2) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite, got {x.tolist()}")
    return x


def _level(level: float) -> float:
    if not 0.5 < level < 1:
        raise ValueError(f"level must be in (0.5, 1), got {level}")
    return level


def difference_verdict(diff, tolerance):
    r"""A claimed positive difference read against a tolerance: ``"holds"``, ``"contradicted"`` or ``"unresolved"``.

    *holds* when :math:`\mathrm{diff} > \mathrm{tol}`, *contradicted* when
    :math:`\mathrm{diff} < -\mathrm{tol}`, else *unresolved*. The tolerance should be
    :math:`t \times` the standard error of the contrast (say which one). Arrays give an
    array of verdicts, elementwise.

    Raises:
        ValueError: a negative or NaN tolerance, or a NaN difference.

    >>> difference_verdict(0.3, 0.1), difference_verdict(-0.3, 0.1), difference_verdict(0.05, 0.1)
    ('holds', 'contradicted', 'unresolved')
    >>> difference_verdict(np.array([0.3, 0.0]), np.array([0.1, 0.1])).tolist()
    ['holds', 'unresolved']

    Used in: chapters 7, 13.
    """
    d, tol = np.asarray(diff, dtype=float), np.asarray(tolerance, dtype=float)
    if np.any(np.isnan(tol)) or np.any(tol < 0):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if np.any(np.isnan(d)):  # NaN compares False both ways: it would read "unresolved"
        raise ValueError(f"diff must not be NaN, got {diff}")
    out = np.where(d > tol, "holds", np.where(d < -tol, "contradicted", "unresolved"))
    return str(out) if out.ndim == 0 else out


def paired_equivalence(d, *, margin: float, alpha: float = 0.05) -> dict:
    r"""Seed-paired equivalence test: ``"flat"``, ``"gap"`` or ``"unresolved"``, with the mean and its interval.

    With :math:`\bar d` the mean of the paired differences, :math:`s = \mathrm{sd}(d)/\sqrt{n}`
    and :math:`t_p` Student's quantile with :math:`n - 1` degrees of freedom:

    .. math::
        \text{flat} \iff |\bar d| + t_{1-\alpha}\, s < \Delta, \qquad
        \text{gap} \iff |\bar d| > t_{1-\alpha/2}\, s

    (flat is checked first; two one-sided tests at level :math:`\alpha`, Schuirmann 1987).

    Args:
        d: the paired differences, one per seed (at least 2).
        margin: :math:`\Delta > 0`, fixed before the runs.
        alpha: :math:`\alpha \in (0, 0.5)`.

    Returns:
        ``{"verdict", "mean", "s.e.", "<1-2 alpha>% interval": (low, high)}``.

    Raises:
        ValueError: fewer than two differences, non-finite values, a bad margin or alpha.

    >>> r = paired_equivalence([0.001, -0.002, 0.0, 0.001], margin=0.005)
    >>> r["verdict"], sorted(r)
    ('flat', ['90% interval', 'mean', 's.e.', 'verdict'])
    >>> paired_equivalence([0.05, 0.06, 0.04, 0.05], margin=0.005)["verdict"]
    'gap'

    Used in: chapters 6, 7.
    """
    d = _sample("d", d)
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a finite number > 0, got {margin}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    se_d = float(np.std(d, ddof=1) / np.sqrt(len(d)))
    half = stats.t.ppf(1 - alpha, len(d) - 1) * se_d
    if abs(d.mean()) + half < margin:
        v = "flat"
    elif abs(d.mean()) > stats.t.ppf(1 - alpha / 2, len(d) - 1) * se_d:
        v = "gap"
    else:
        v = "unresolved"
    return {"verdict": v, "mean": float(d.mean()), "s.e.": se_d,
            f"{100 * (1 - 2 * alpha):g}% interval": (float(d.mean() - half), float(d.mean() + half))}


def paired_test_var(a, b) -> float:
    r"""Variance of the mean of :math:`a - b` over the shared test rows: :math:`\mathrm{var}(a - b)/n`.

    For two models scored on the *same* rows (0/1 correctness, or seeds averaged), only
    the rows where they differ contribute, as in McNemar's test.

    >>> paired_test_var([1, 1, 0, 0], [1, 0, 0, 1])
    0.16666666666666666

    Used in: chapter 11.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:  # no broadcasting: the rows are paired
        raise ValueError(f"a and b need the same >= 2 rows, got shapes {a.shape} and {b.shape}")
    diff = _sample("a", a) - _sample("b", b)
    return float(diff.var(ddof=1) / diff.size)


def paired_interval(per_seed, test_var: float = 0.0, level: float = 0.95) -> dict:
    r"""Mean of a per-seed contrast and its one-sided limits at ``level``, seed and test-set variance combined.

    .. math::
        \mathrm{s.e.}^2 = \frac{\mathrm{sd}(d)^2}{n} + v_\text{test}, \qquad
        \nu = (n - 1)\Bigl(\frac{\mathrm{s.e.}^2}{\mathrm{sd}(d)^2/n}\Bigr)^2, \qquad
        \bar d \pm t_{\text{level}, \nu}\, \mathrm{s.e.}

    (Welch-Satterthwaite degrees of freedom with the test set's part taken as known. When the
    seeds agree exactly, e.g. every seed at a 100% ceiling, their variance estimate is 0 but
    not the variance: :math:`\nu = n - 1`, the formula's smallest value, so with a test-set
    variance a ceiling does not pass for certainty. With ``test_var = 0`` as well the standard
    error is 0 and the interval is the mean alone: pass the test set's variance.)

    Args:
        per_seed: the contrast on each seed (at least 2).
        test_var: :math:`v_\text{test} \ge 0`, e.g. from :func:`paired_test_var`.
        level: one-sided coverage of each limit.

    Returns:
        ``{"mean", "se", "df", "lower", "upper"}``.

    >>> r = paired_interval([0.01, 0.02, 0.03], 0.0)
    >>> round(r["mean"], 4), round(r["lower"], 4), float(r["df"])
    (0.02, 0.0031, 2.0)
    >>> paired_interval([0.0, 0.0], 1e-4)["df"]   # two seeds at a ceiling: 1, not infinity
    1

    Used in: chapter 11.
    """
    per_seed = _sample("per_seed", per_seed)
    if not (math.isfinite(test_var) and test_var >= 0):
        raise ValueError(f"test_var must be a finite number >= 0, got {test_var}")
    level = _level(level)
    v_seed = per_seed.var(ddof=1) / per_seed.size
    se = math.sqrt(v_seed + test_var)
    df = (per_seed.size - 1) * (se**2 / v_seed) ** 2 if v_seed > 0 else per_seed.size - 1
    t = float(stats.t.ppf(level, df)) if se > 0 else 0.0
    m = float(per_seed.mean())
    return {"mean": m, "se": se, "df": df, "lower": m - t * se, "upper": m + t * se}


def interval_verdict(lower: float, upper: float, margin: float) -> str:
    r"""Read a gap's interval against a margin: flat, below by more than the margin, a measured gap, undetermined.

    *flat*: upper :math:`< \Delta`; *below by more than the margin*: lower :math:`> \Delta`;
    *a measured gap*: :math:`0 <` lower :math:`\le \Delta`; else *undetermined*.

    >>> interval_verdict(-0.01, 0.005, 0.01), interval_verdict(0.002, 0.03, 0.01)
    ('flat', 'a measured gap')

    Used in: chapter 11.
    """
    if not (math.isfinite(lower) and math.isfinite(upper) and lower <= upper):
        raise ValueError(f"need finite lower <= upper, got ({lower}, {upper})")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if upper < margin:
        return "flat"
    if lower > margin:
        return "below by more than the margin"
    return "a measured gap" if lower > 0 else "undetermined"


def two_sample_contrast(a, b, *, level: float = 0.95, df: float | None = None) -> tuple[float, float, bool]:
    r"""Mean difference :math:`\bar a - \bar b` of two independent samples, Welch's s.e. and a two-sided :math:`t` test.

    .. math::
        \mathrm{s.e.} = \sqrt{s_a^2/n_a + s_b^2/n_b}, \qquad
        \text{resolved} \iff |\bar a - \bar b| > t_{(1+\text{level})/2,\,\nu}\, \mathrm{s.e.}

    with :math:`\nu` Welch-Satterthwaite's degrees of freedom unless ``df`` is given. (The pooled
    test's :math:`n_a + n_b - 2` are never fewer, so with Welch's s.e. they make the test
    anti-conservative when the variances differ; pass ``df`` only with a reason.) Two constant
    samples have s.e. 0: any difference between them is then "resolved".

    Returns:
        ``(difference, s.e., resolved)``.

    >>> diff, se, resolved = two_sample_contrast([1.0, 1.1, 0.9], [0.0, 0.1, -0.1])
    >>> round(diff, 3), round(se, 4), resolved
    (1.0, 0.0816, True)

    Used in: chapter 5.
    """
    xa, xb = _sample("a", a), _sample("b", b)
    level = _level(level)
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    diff, se = float(xa.mean() - xb.mean()), math.sqrt(va + vb)
    if df is None:
        df = (va + vb) ** 2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1)) if va + vb > 0 else math.inf
    crit = stats.t.ppf((1 + level) / 2, df)
    return diff, se, bool(abs(diff) > crit * se)
