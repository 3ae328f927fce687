r"""The fidelity and privacy metrics of :func:`privlab.synthetic.evaluate_synthetic`, one function each.

Fidelity of one column: the Kolmogorov-Smirnov statistic
:math:`\sup_x |F(x) - G(x)|` for a numeric column, the total variation distance
:math:`\tfrac12 \sum_v |p_v - q_v|` for a categorical one (both 0 for the same
distribution, at most 1).

Associations between columns, on one scale in :math:`[-1, 1]` or :math:`[0, 1]`:
Pearson's :math:`r` for two numeric columns; the correlation ratio
:math:`\eta = \sqrt{\sum_g n_g(\bar y_g - \bar y)^2 / \sum_i (y_i - \bar y)^2}`
for numeric :math:`y` against categorical :math:`g`; Cramér's :math:`V` for two
categorical columns, bias-corrected by default (Bergsma 2013, J. Korean Stat.
Soc. 42: 323-328), which is about 0 for independent columns instead of
:math:`O(1/\sqrt n)`. A constant column has association 0 with everything.

Distances between records (:func:`nearest_distances`) are Euclidean on the
encoded features of :func:`privlab.synthetic.evaluate_synthetic` and found with
scikit-learn's :class:`~sklearn.neighbors.NearestNeighbors`.

>>> ks_statistic([1, 2, 3], [1, 2, 3])
0.0
>>> total_variation(["a", "a", "b"], ["a", "b", "b"])
0.3333333333333333
>>> round(cramers_v(["a", "b"] * 50, ["x", "y"] * 50), 6)
1.0

Used in: chapter 10.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "ks_statistic", "total_variation", "contingency_table", "cramers_v", "correlation_ratio", "pearson",
    "association_matrix", "correlation_distance", "nearest_distances", "nndr", "holdout_test",
]  # fmt: skip


def ks_statistic(a, b) -> float:
    r"""Two-sample Kolmogorov-Smirnov statistic :math:`\sup_x |F_a(x) - F_b(x)|` (scipy)."""
    return float(stats.ks_2samp(np.asarray(a, dtype=float), np.asarray(b, dtype=float)).statistic)


def total_variation(a, b) -> float:
    r"""Total variation distance :math:`\tfrac12\sum_v |p_v - q_v|` of two samples' value frequencies.

    Missing values count as a value of their own (``value_counts`` would drop them); empty samples
    are an error.
    """
    a, b = pd.Series(np.asarray(a, dtype=object)), pd.Series(np.asarray(b, dtype=object))
    if a.empty or b.empty:
        raise ValueError(f"total_variation needs two non-empty samples, got sizes {len(a)} and {len(b)}")
    p = a.value_counts(normalize=True, dropna=False)
    q = b.value_counts(normalize=True, dropna=False)
    return float(0.5 * p.subtract(q, fill_value=0.0).abs().sum())


def pearson(x, y) -> float:
    """Pearson's r; 0 when either column is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def correlation_ratio(categories, values) -> float:
    r"""Correlation ratio :math:`\eta` of numeric ``values`` on ``categories`` (0 if ``values`` is constant)."""
    y = np.asarray(values, dtype=float)
    codes = pd.factorize(pd.Series(np.asarray(categories, dtype=object)))[0]
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return 0.0
    n_g = np.bincount(codes)
    mean_g = np.bincount(codes, weights=y) / n_g
    between = float((n_g * (mean_g - y.mean()) ** 2).sum())
    return float(np.sqrt(min(between / total, 1.0)))


def contingency_table(x, y) -> np.ndarray:
    """Counts of the observed value pairs of ``x`` and ``y``: rows and columns are the observed values.

    The same counts as ``pd.crosstab`` (rows and columns in order of appearance, not sorted), without
    its grouping machinery: a bincount of the paired codes.

    >>> contingency_table(["a", "b", "a"], ["x", "x", "y"]).tolist()
    [[1, 1], [1, 0]]
    """
    xc, xu = pd.factorize(pd.Series(np.asarray(x, dtype=object)))
    yc, yu = pd.factorize(pd.Series(np.asarray(y, dtype=object)))
    ok = (xc >= 0) & (yc >= 0)  # missing values (code -1) are left out, as crosstab does
    flat = np.bincount(xc[ok] * len(yu) + yc[ok], minlength=len(xu) * len(yu))
    return flat.reshape(len(xu), len(yu))


def cramers_v(x, y, *, bias_corrected: bool = True) -> float:
    r"""Cramér's :math:`V = \sqrt{\phi^2 / \min(r-1, k-1)}`, :math:`\phi^2 = \chi^2/n`.

    With ``bias_corrected`` (Bergsma 2013): :math:`\tilde\phi^2 = \max(0, \phi^2 - (k-1)(r-1)/(n-1))`,
    :math:`\tilde r = r - (r-1)^2/(n-1)`, :math:`\tilde k = k - (k-1)^2/(n-1)` and
    :math:`V = \sqrt{\tilde\phi^2 / \min(\tilde r - 1, \tilde k - 1)}`. 0 when a column is constant.
    """
    table = contingency_table(x, y)
    n, (r, k) = table.sum(), table.shape
    if r < 2 or k < 2:
        return 0.0
    expected = np.outer(table.sum(1), table.sum(0)) / n
    phi2 = float(((table - expected) ** 2 / expected).sum() / n)
    if bias_corrected:
        phi2 = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
        r, k = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    denom = min(r - 1, k - 1)
    return float(np.sqrt(min(phi2 / denom, 1.0))) if denom > 0 else 0.0


def association_matrix(df: pd.DataFrame, numeric: list, *, bias_corrected: bool = True) -> pd.DataFrame:
    """The mixed-type association matrix of ``df`` (1 on the diagonal), columns in ``df``'s order.

    Args:
        df: the table.
        numeric: the names of its numeric columns; the others are categorical.
        bias_corrected: for Cramér's V.

    >>> df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [2.0, 4.0, 6.0, 8.0]})
    >>> association_matrix(df, ["x", "y"]).to_numpy().tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    cols = list(df.columns)
    unknown = sorted(set(numeric) - set(cols))
    if unknown:  # a misspelt name would quietly make that column categorical
        raise ValueError(f"numeric names columns the table does not have: {unknown}")
    a = np.eye(len(cols))
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            ci, cj = cols[i], cols[j]
            ni, nj = ci in numeric, cj in numeric
            if ni and nj:
                v = pearson(df[ci], df[cj])
            elif ni:
                v = correlation_ratio(df[cj], df[ci])
            elif nj:
                v = correlation_ratio(df[ci], df[cj])
            else:
                v = cramers_v(df[ci], df[cj], bias_corrected=bias_corrected)
            a[i, j] = a[j, i] = v
    return pd.DataFrame(a, index=cols, columns=cols)


def correlation_distance(a, b) -> tuple[float, float]:
    r"""``(Frobenius, mean absolute)`` distance of two association matrices.

    Frobenius :math:`\lVert A - B\rVert_F` over the whole (symmetric) matrix, so
    each pair counts twice; the mean absolute difference is over the pairs
    :math:`i < j` only. Two DataFrames are compared by label (``b`` reordered to ``a``'s rows and
    columns), arrays by position.
    """
    if isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame):
        if set(a.columns) != set(b.columns) or set(a.index) != set(b.index):
            raise ValueError(f"the matrices name different variables: {list(a.columns)} and {list(b.columns)}")
        b = b.loc[a.index, a.columns]
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    iu = np.triu_indices(d.shape[0], k=1)
    return float(np.linalg.norm(d)), float(np.abs(d[iu]).mean()) if iu[0].size else 0.0


def nearest_distances(reference: np.ndarray, queries: np.ndarray, k: int = 1) -> np.ndarray:
    """Euclidean distances from each query row to its ``k`` nearest reference rows, shape ``(m, k)``."""
    nn = NearestNeighbors(n_neighbors=k, algorithm="auto").fit(reference)
    dist, _ = nn.kneighbors(queries)
    return dist


def nndr(reference: np.ndarray, queries: np.ndarray) -> np.ndarray:
    r"""Nearest-neighbour distance ratio :math:`d_1/d_2` of each query to ``reference``.

    :math:`d_1, d_2` are the distances to the first and second nearest reference
    rows. Near 0: the query sits on one reference record, far from all others
    (a sign of memorisation); near 1: it is about as close to two of them. We set
    :math:`0/0 = 1` (a query on two identical records is equally near both).
    """
    d = nearest_distances(reference, queries, k=2)
    return np.divide(d[:, 0], d[:, 1], out=np.ones(len(d)), where=d[:, 1] > 0)


def holdout_test(train: np.ndarray, holdout: np.ndarray, queries: np.ndarray) -> tuple[float, float]:
    r"""Platzer and Reutterer's holdout test: the share of queries nearer ``train`` than ``holdout``, and its null SE.

    ``train`` and ``holdout`` must have the same number of rows :math:`m` (a larger set is nearer by
    its size alone). Each query scores the share of training rows among its nearest records in the
    pooled :math:`2m` rows: 1 for a training row, 0 for a holdout row, and for a tie the share among
    all the rows at that distance (1/2 for one of each; 2/3 for two training copies and one holdout
    copy); the share is the mean over the :math:`Q` queries: about 1/2 for records as near to new people as to the training ones, 1 for
    copies. Under the null that the two halves are exchangeable (a random split, and a generator
    that prefers neither), the labels of the pooled rows are a random half, so the share's
    permutation variance is

    .. math::

        \operatorname{Var} = \frac{1}{4Q^2}\,\frac{2m}{2m-1}\Big(\sum_j c_j^2 - \frac{Q^2}{2m}\Big),

    where :math:`c_j` counts the queries whose nearest pooled row (the first one listed, for a tie) is
    row :math:`j`. It is about the binomial :math:`1/(4Q)` when every query has its own nearest row,
    and larger when queries crowd onto a few rows (a tie's fractional score is not modelled in it).

    Reference: Platzer and Reutterer 2021, "Holdout-based empirical assessment of mixed-type
    synthetic data", Frontiers in Big Data 4 (arXiv:2104.00635).

    Returns:
        ``(share, standard error under the null)``.

    Raises:
        ValueError: ``train`` and ``holdout`` of different sizes, or fewer than one row each.

    >>> train, hold = np.array([[0.0], [10.0]]), np.array([[5.0], [20.0]])
    >>> holdout_test(train, hold, np.array([[0.1], [9.0], [7.5]]))[0]  # train, train, a tie
    0.8333333333333334

    Used in: chapter 10.
    """
    m = len(train)
    if m < 1 or len(holdout) != m:
        raise ValueError(f"train and holdout need the same number of rows (>= 1), got {m} and {len(holdout)}")
    pool = np.vstack([train, holdout])
    nn = NearestNeighbors().fit(pool)
    k = min(2, 2 * m)
    while True:  # enough neighbours to see every row at each query's nearest distance
        dist, idx = nn.kneighbors(queries, n_neighbors=k)
        nearest = dist == dist[:, :1]
        if k == 2 * m or not nearest[:, -1].any():
            break
        k = min(2 * k, 2 * m)
    in_train = idx < m
    share = float(np.mean((in_train & nearest).sum(1) / nearest.sum(1)))
    q, counts = len(queries), np.bincount(idx[:, 0], minlength=2 * m).astype(float)
    var = (2 * m / (2 * m - 1)) * max((counts**2).sum() - q**2 / (2 * m), 0.0) / (4 * q**2)
    return share, float(np.sqrt(var))
