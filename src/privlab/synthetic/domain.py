r"""Public domains for tabular data, and the discretisation a marginal synthesizer needs.

A differentially private synthesizer sees the data only through noisy
measurements, so everything it uses to *shape* those measurements must be
public: the list of categories of every categorical column and the bin edges
of every numeric column. Reading them off the data (its minimum, maximum or
set of observed values) leaks: a single outlier moves the range. Here a domain
comes from one of three public sources:

* categories declared by the analyst (:class:`CategoricalDomain`, or a list in
  ``domain=``); ``bool`` columns have the public domain ``(False, True)``;
* bounds or edges given by the analyst (:class:`NumericDomain`);
* a differentially private estimate of a numeric column's range
  (:func:`dp_numeric_domain`: a noisy histogram on a fixed grid of signed
  powers of two, paid for out of the privacy budget).

The categories of a pandas ``Categorical`` are *not* taken as a domain:
``astype("category")`` and ``pd.Categorical(values)`` read them off the data, so
one record's rare value would become a category of the synthetic output (a
distinguisher with :math:`\varepsilon = \infty`), and a dtype does not say where
its categories came from. Such a column needs its categories declared
explicitly. No error message shows a value of the data.

A numeric column value :math:`x` falls in bin :math:`i` when
:math:`e_i \le x < e_{i+1}`; values outside :math:`[e_0, e_k]` are clipped
into the end bins (clipping to a public range is a standard DP step).
Integer columns use half-integer edges, so bin :math:`i` holds the integers
:math:`e_i + \tfrac12, \dots, e_{i+1} - \tfrac12`. Decoding draws uniformly
within a bin (uniformly over its integers for an integer column).

>>> d = NumericDomain.integers(0, 18, max_bins=32)
>>> d.size, d.encode([0, 12, 18, 25]).tolist()
(19, [0, 12, 18, 18])
>>> NumericDomain.integers(-6, 64, max_bins=10).size
10
>>> CategoricalDomain(("no", "yes")).encode(["yes", "no"]).tolist()
[1, 0]

Used in: chapter 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from privlab._validate import check_int, check_positive, check_rng
from privlab.datasets.real import CPS1988_CATEGORIES

__all__ = [
    "CategoricalDomain", "NumericDomain", "ColumnDomain", "cps1988_domain",
    "resolve_domain", "dp_numeric_domain", "POWER_OF_TWO_GRID",
]  # fmt: skip


@dataclass(frozen=True)
class CategoricalDomain:
    """The public list of values of a categorical column, in code order.

    Args:
        categories: the values (hashable, distinct, at least one).
    """

    categories: tuple

    def __post_init__(self) -> None:
        cats = tuple(self.categories)
        if not cats:
            raise ValueError("categories must not be empty")
        if len(set(cats)) != len(cats):
            raise ValueError(f"categories must be distinct, got {cats!r}")
        object.__setattr__(self, "categories", cats)

    @property
    def size(self) -> int:
        return len(self.categories)

    def encode(self, values, *, column: str = "column") -> np.ndarray:
        """Codes ``0..size-1`` of ``values``; a value outside the domain is a ``ValueError``.

        The message says neither which values are outside nor how many (both are data: a red-team
        read found the count in the message, an exact statistic of the private table).
        """
        index = pd.Index(self.categories)
        codes = index.get_indexer(pd.Series(values, dtype=object))
        if (codes < 0).any():
            raise ValueError(
                f"column {column!r} has values outside its public domain "
                f"{list(self.categories)} (neither shown nor counted: they are data); declare a domain that covers every possible "
                "value, or map the others to a declared category first"
            )
        return codes.astype(np.int64)

    def decode(self, codes, rng: np.random.Generator) -> np.ndarray:
        """The values of ``codes`` (an object array)."""
        return np.asarray(self.categories, dtype=object)[np.asarray(codes)]


@dataclass(frozen=True)
class NumericDomain:
    r"""Public bin edges :math:`e_0 < e_1 < \dots < e_k` of a numeric column.

    Args:
        edges: the increasing, finite edges (at least two).
        integer: the column holds integers; the edges must then be half-integers
            so every bin holds at least one integer.
    """

    edges: tuple
    integer: bool = False

    def __post_init__(self) -> None:
        e = np.asarray(self.edges, dtype=float)
        if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
            raise ValueError(f"edges must be at least two finite, strictly increasing numbers, got {self.edges!r}")
        if self.integer and not np.array_equal(e - 0.5, np.round(e - 0.5)):  # exactly (allclose let
            # 100000.0 pass as 100000.5 by relative tolerance: decoded bins then re-encoded elsewhere)
            raise ValueError(f"an integer domain needs half-integer edges, got {self.edges!r}")
        object.__setattr__(self, "edges", tuple(float(v) for v in e))

    @property
    def size(self) -> int:
        return len(self.edges) - 1

    @classmethod
    def linear(cls, lower: float, upper: float, bins: int, *, integer: bool = False) -> NumericDomain:
        """``bins`` equal-width bins on ``[lower, upper]`` (integer edges rounded to half-integers)."""
        bins = check_int("bins", bins)
        if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
            raise ValueError(f"need finite lower < upper, got {lower!r}, {upper!r}")
        if integer:
            return cls.integers(math.ceil(lower), math.floor(upper), max_bins=bins)
        return cls(tuple(np.linspace(lower, upper, bins + 1)))

    @classmethod
    def log(cls, lower: float, upper: float, bins: int, *, integer: bool = False) -> NumericDomain:
        """``bins`` bins of equal width in :math:`\\log x` on ``[lower, upper]``, ``lower > 0``."""
        bins = check_int("bins", bins)
        check_positive("lower", lower)
        if not (math.isfinite(upper) and lower < upper):
            raise ValueError(f"need finite lower < upper, got {lower!r}, {upper!r}")
        edges = np.geomspace(lower, upper, bins + 1)
        if integer:  # half-integer edges, bins without an integer merged away
            edges = np.floor(edges) - 0.5
            edges[-1] = math.floor(upper) + 0.5
            edges = np.unique(edges)
        return cls(tuple(edges), integer=integer)

    @classmethod
    def integers(cls, lower: int, upper: int, *, max_bins: int) -> NumericDomain:
        """The integers ``lower..upper``: one bin each if they fit in ``max_bins``, else ``max_bins`` runs."""
        max_bins = check_int("max_bins", max_bins)
        lower, upper = int(lower), int(upper)
        if upper < lower:
            raise ValueError(f"need lower <= upper, got {lower}, {upper}")
        count = upper - lower + 1
        if count <= max_bins:
            starts = np.arange(lower, upper + 2)
        else:  # max_bins runs of (almost) equal length
            starts = np.unique(lower + np.floor(np.linspace(0, count, max_bins + 1)).astype(np.int64))
        return cls(tuple(starts - 0.5), integer=True)

    def encode(self, values) -> np.ndarray:
        """Bin codes ``0..size-1`` of ``values`` (clipped to the end bins; NaN is an error, not the top bin)."""
        x = np.asarray(values, dtype=float)
        if np.isnan(x).any():
            raise ValueError("values to encode must not be NaN")
        codes = np.searchsorted(np.asarray(self.edges), x, side="right") - 1
        return np.clip(codes, 0, self.size - 1).astype(np.int64)

    def decode(self, codes, rng: np.random.Generator) -> np.ndarray:
        """Values drawn uniformly within each code's bin (over its integers for an integer domain)."""
        codes = np.asarray(codes, dtype=np.int64)
        e = np.asarray(self.edges)
        lo, hi = e[codes], e[codes + 1]
        if self.integer:  # integers lo + 1/2, ..., hi - 1/2
            first = np.round(lo + 0.5).astype(np.int64)
            count = np.round(hi - lo).astype(np.int64)
            return first + np.floor(rng.random(codes.shape) * count).astype(np.int64)
        return lo + rng.random(codes.shape) * (hi - lo)


ColumnDomain = CategoricalDomain | NumericDomain


def cps1988_domain(bins: int = 16) -> dict[str, ColumnDomain]:
    """A public domain for :func:`privlab.datasets.load_cps1988`, from the survey's sampling frame.

    The data set's documentation (AER's ``?CPS1988``, from Bierens and Ginther 2001)
    describes "a sample of men aged 18 to 70 with positive annual income greater than
    USD 50 in 1992, who are not self-employed nor working without pay", with
    experience computed as "age - education - 6". So ``education`` is 0 to 18 years
    (the pre-1992 CPS coding; one bin per year), ``experience`` lies in
    18 - 18 - 6 = -6 .. 70 - 0 - 6 = 64 (integer runs; :data:`privlab.datasets.real.CPS1988_RANGES`),
    and ``wage`` gets ``bins`` log-spaced bins on [50, 20000] USD/week. The lower
    edge 50 is the documented income floor (annual, so a weekly wage could in
    principle lie below it: such values fall into the bottom bin). The cap 20,000 is
    not documented: it is our choice, a round figure, and it is not a statistic of
    the DP release's input (it was, however, set by people who had seen this public
    data set, whose largest wage is just below it); any value above it is clipped
    into the top bin, which costs accuracy, never privacy. The categories are those
    of the documentation. Nothing here is computed from the rows.

    >>> sorted(cps1988_domain())
    ['education', 'ethnicity', 'experience', 'parttime', 'region', 'smsa', 'wage']

    Used in: chapter 10.
    """
    domain: dict[str, ColumnDomain] = {
        "wage": NumericDomain.log(50.0, 20_000.0, bins),
        "education": NumericDomain.integers(0, 18, max_bins=max(bins, 19)),
        "experience": NumericDomain.integers(-6, 64, max_bins=bins),
    }
    domain.update({c: CategoricalDomain(tuple(v)) for c, v in CPS1988_CATEGORIES.items()})
    return domain


def is_numeric_column(series: pd.Series) -> bool:
    """Numeric (int or float, not bool) columns are binned; everything else is categorical."""
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def resolve_domain(df: pd.DataFrame, domain: dict | None, bins: int) -> tuple[dict, list[str]]:
    """The public domain of every column of ``df``, and the numeric columns left for DP estimation.

    ``domain[col]`` may be a :class:`CategoricalDomain` or :class:`NumericDomain`,
    a ``(lower, upper)`` pair for a numeric column (``bins`` bins: one per
    integer or integer runs for an integer column, equal width otherwise), or a
    list of categories for a categorical column. A categorical column not in
    ``domain`` is refused, whatever its dtype (a ``bool`` column excepted: its
    domain is ``(False, True)``): the categories of a pandas ``Categorical`` may
    have been read off the data. A numeric column not in ``domain`` is returned
    for DP estimation.

    Raises:
        ValueError: a categorical column without a declared domain, a key naming
            no column, or a malformed entry (no message shows a data value).

    >>> df = pd.DataFrame({"c": pd.Categorical(["a", "b", "rare"])})
    >>> resolve_domain(df, None, 8)
    Traceback (most recent call last):
    ...
    ValueError: column 'c' is a pandas Categorical, but its categories are no public domain: astype('category') and pd.Categorical(values) read them off the data. Declare them: domain={'c': [...all possible values...]} (or a CategoricalDomain), from a public source such as a codebook, never from the data
    >>> resolve_domain(df, {"c": ["a", "b", "rare", "other"]}, 8)[0]["c"].size
    4
    """
    domain = dict(domain or {})
    unknown = set(domain) - set(df.columns)
    if unknown:
        raise ValueError(f"domain names columns not in the data: {sorted(unknown)}")
    out: dict[str, ColumnDomain] = {}
    estimate: list[str] = []
    for col in df.columns:
        s, spec = df[col], domain.get(col)
        numeric = is_numeric_column(s)
        integer = numeric and pd.api.types.is_integer_dtype(s)
        if isinstance(spec, (CategoricalDomain, NumericDomain)):
            if isinstance(spec, NumericDomain) != numeric:
                raise ValueError(f"column {col!r}: {type(spec).__name__} does not fit dtype {s.dtype}")
            out[col] = spec
        elif spec is not None and numeric:
            if len(spec) != 2:
                raise ValueError(f"column {col!r}: give (lower, upper) bounds, got {spec!r}")
            lo, hi = float(spec[0]), float(spec[1])
            out[col] = (NumericDomain.integers(math.ceil(lo), math.floor(hi), max_bins=bins) if integer
                        else NumericDomain.linear(lo, hi, bins))
        elif spec is not None:
            out[col] = CategoricalDomain(tuple(spec))
        elif numeric:
            estimate.append(col)
        elif pd.api.types.is_bool_dtype(s):
            out[col] = CategoricalDomain((False, True))
        elif isinstance(s.dtype, pd.CategoricalDtype):
            raise ValueError(
                f"column {col!r} is a pandas Categorical, but its categories are no public domain: "
                "astype('category') and pd.Categorical(values) read them off the data. Declare them: "
                f"domain={{{col!r}: [...all possible values...]}} (or a CategoricalDomain), from a public source "
                "such as a codebook, never from the data"
            )
        else:
            raise ValueError(
                f"column {col!r} (dtype {s.dtype}) has no public domain: pass domain={{{col!r}: [...all possible "
                "values...]}} (or a CategoricalDomain), from a public source; reading the categories off the data "
                "is not private"
            )
    return out, estimate


#: Edges of the public grid for DP range estimation: 0, +-1, +-2, +-4, ..., +-2**48.
POWER_OF_TWO_GRID = np.concatenate([-(2.0 ** np.arange(48, -1, -1)), [0.0], 2.0 ** np.arange(0, 49)])


def dp_numeric_domain(values, *, sigma: float, rng: np.random.Generator, bins: int, integer: bool,
                      threshold: float = 5.0) -> tuple[NumericDomain, np.ndarray]:
    r"""Estimate a numeric column's range with DP, then bin it on a public rule.

    Counts the values in the buckets of the fixed grid :data:`POWER_OF_TWO_GRID`
    (:math:`[-2^{48}, 2^{48}]`, buckets :math:`[2^{j-1}, 2^j)` and their
    mirror images, values beyond the grid clipped), adds
    :math:`\mathcal N(0, \sigma^2)` to each count, and keeps the span from the
    lowest to the highest bucket whose noisy count exceeds
    ``threshold`` :math:`\times\,\sigma`. Every record falls in one bucket, so the
    histogram has L2 sensitivity 1: this is one Gaussian measurement, costing
    :math:`\rho = 1/(2\sigma^2)` in zCDP (Bun and Steinke 2016, Prop 1.6). The
    bins then follow a public rule: one per integer (or integer runs) for an
    integer column, log-spaced when the range is positive and spans a factor of
    at least 64, equal width otherwise.

    Args:
        values: the column (finite numbers).
        sigma: :math:`\sigma > 0`, the noise standard deviation.
        rng: the source of the noise.
        bins: the number of bins.
        integer: the column holds integers.
        threshold: a bucket counts as occupied above ``threshold * sigma``; at the
            default 5 an empty bucket passes with probability 2.9e-7, so a spurious
            one among the 98 buckets is a 1-in-35,000 event.

    Returns:
        ``(domain, noisy_counts)``.

    Raises:
        ValueError: no bucket clears the threshold (too little data for this
            sigma: give public bounds instead).

    Used in: chapter 10.
    """
    sigma = check_positive("sigma", sigma)
    grid = POWER_OF_TWO_GRID
    x = np.asarray(values, dtype=float)
    if not np.isfinite(x).all():  # NaN would be counted in the top bucket (range up to 2^48)
        raise ValueError(f"values must be finite, got {x[~np.isfinite(x)][0]}")
    codes = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, grid.size - 2)
    noisy = np.bincount(codes, minlength=grid.size - 1) + check_rng(rng).normal(0.0, sigma, grid.size - 1)
    occupied = np.flatnonzero(noisy > threshold * sigma)
    if occupied.size == 0:
        raise ValueError(
            f"DP range estimation found no bucket above {threshold} * sigma = {threshold * sigma:.3g}: "
            "too few records for this budget; pass public bounds in `domain`"
        )
    lo, hi = float(grid[occupied[0]]), float(grid[occupied[-1] + 1])
    if integer:
        domain = NumericDomain.integers(int(lo), int(hi) - 1, max_bins=bins)  # bucket [lo, hi): lo..hi-1
    elif lo > 0 and hi / lo >= 64:
        domain = NumericDomain.log(lo, hi, bins)
    else:
        domain = NumericDomain.linear(lo, hi, bins)
    return domain, noisy
