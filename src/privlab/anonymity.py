r"""Re-identification, k-anonymity and l-diversity: why "anonymised" is not anonymous.

A *quasi-identifier* (QI) is a set of attributes that is not a name but that, combined,
singles people out (Sweeney 2000: ZIP code, birth date and sex identify 87% of the US
population). This module measures that on a real table:

- :func:`uniqueness` -- the share of records whose QI values no other record shares;
- :func:`linkage_attack` -- join a "de-identified" release to an auxiliary table that carries
  names, on the QIs, and count correct unique matches;
- :func:`generalise` and :func:`k_anonymity` -- coarsen QIs until every equivalence class has
  at least :math:`k` members (Sweeney 2002);
- :func:`homogeneity_attack` and :func:`l_diversity` -- k-anonymity does not stop an attacker
  who learns a sensitive value shared by a whole class (Machanavajjhala et al. 2007).

>>> import pandas as pd
>>> df = pd.DataFrame({"zip": [1, 1, 2, 3], "sex": ["f", "f", "m", "m"], "dx": ["a", "b", "a", "a"]})
>>> uniqueness(df, ["zip", "sex"])
0.5
>>> k_anonymity(df, ["sex"])
2
>>> l_diversity(df, ["sex"], "dx")
1

Used in: chapter 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from privlab._validate import check_int


def _check_columns(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    cols = list(columns)
    if len(df) == 0:
        raise ValueError("the table is empty")
    if not cols:
        raise ValueError("at least one quasi-identifier column is needed, got []")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table (has {list(df.columns)})")
    return cols


def class_sizes(df: pd.DataFrame, qi: Sequence[str]) -> pd.Series:
    """Size of each record's equivalence class (records sharing all QI values), aligned to ``df``.

    >>> class_sizes(pd.DataFrame({"a": [1, 1, 2]}), ["a"]).tolist()
    [2, 2, 1]
    """
    cols = _check_columns(df, qi)
    return df.groupby(cols, observed=True, dropna=False)[cols[0]].transform("size").astype(int)


def uniqueness(df: pd.DataFrame, qi: Sequence[str]) -> float:
    r"""Share of records unique on the quasi-identifiers: :math:`\frac{1}{n}\#\{i : |[x_i]| = 1\}`.

    Reference: Sweeney (2000), "Simple demographics often identify people uniquely".
    """
    return float((class_sizes(df, qi) == 1).mean())


def k_anonymity(df: pd.DataFrame, qi: Sequence[str]) -> int:
    r"""The :math:`k` of the table: the size of its smallest equivalence class (Sweeney 2002)."""
    return int(class_sizes(df, qi).min())


def l_diversity(df: pd.DataFrame, qi: Sequence[str], sensitive: str) -> int:
    r"""Distinct :math:`\ell`-diversity: the fewest distinct sensitive values in any class.

    Reference: Machanavajjhala, Kifer, Gehrke, Venkitasubramaniam (2007), Definition 4.1
    (distinct l-diversity, the simplest instantiation).
    """
    cols = _check_columns(df, list(qi) + [sensitive])[:-1]
    # a missing sensitive value counts as a value (nunique drops it: an all-missing class had l = 0)
    return int(df.groupby(cols, observed=True, dropna=False)[sensitive].nunique(dropna=False).min())


@dataclass(frozen=True)
class LinkageResult:
    """Outcome of a linkage attack on ``targets`` people known to the attacker."""

    targets: int
    unique_matches: int
    correct: int

    @property
    def reidentification_rate(self) -> float:
        """Share of targets re-identified correctly (a unique match that is the right record)."""
        return self.correct / self.targets


def linkage_attack(release: pd.DataFrame, auxiliary: pd.DataFrame, qi: Sequence[str], *, id_column: str) -> LinkageResult:
    """Join a de-identified ``release`` to an ``auxiliary`` table on the QIs.

    The auxiliary table holds, for each target, their identity (``id_column``) and their QI
    values, like a voter roll; the release holds the QIs and the sensitive data, and (for
    scoring only, never used in the join) the same ``id_column``. A target is re-identified
    when exactly one released record matches their QIs and it is theirs.

    Reference: Sweeney (2002), Section 2 (linking medical data to a voter list).
    """
    cols = _check_columns(release, qi)
    _check_columns(auxiliary, cols + [id_column])
    if id_column not in release.columns:
        raise ValueError(f"release has no {id_column!r} column to score the attack with")
    sizes = release.groupby(cols, observed=True, dropna=False).size().rename("n_match").reset_index()
    truth = release[cols + [id_column]].rename(columns={id_column: "_released_id"})
    joined = auxiliary[cols + [id_column]].merge(sizes, on=cols, how="left")
    joined["n_match"] = joined["n_match"].fillna(0).astype(int)
    unique = joined[joined["n_match"] == 1].merge(truth, on=cols, how="left")
    correct = int((unique["_released_id"] == unique[id_column]).sum())
    return LinkageResult(targets=len(auxiliary), unique_matches=len(unique), correct=correct)


def generalise(df: pd.DataFrame, rules: Mapping[str, Callable[[pd.Series], pd.Series]]) -> pd.DataFrame:
    """Return a copy of ``df`` with each column in ``rules`` replaced by ``rule(column)``.

    >>> g = generalise(pd.DataFrame({"age": [23, 37]}), {"age": lambda s: band(s, 10)})
    >>> g["age"].tolist()
    ['20-29', '30-39']
    """
    out = df.copy()
    for col, rule in rules.items():
        _check_columns(df, [col])
        out[col] = rule(df[col])
    return out


def band(values: pd.Series, width: int, *, lower: int | None = None) -> pd.Series:
    """Coarsen integers into bands ``"a-b"`` of ``width`` (a generalisation hierarchy level).

    ``lower``: bottom coding, values below it join the first band ``lower``-``lower + width - 1``
    (which keeps that label); a multiple of ``width``, so that the bands do not overlap.
    """
    width = check_int("width", width)  # 2.5 gave labels like '22.5-24.0'
    if lower is not None:
        lower = check_int("lower", lower, minimum=-(2**62))
    if lower is not None and lower % width:  # 18 with width 10 gave bands 18-27 and 20-29
        raise ValueError(f"lower must be a multiple of width={width}, got {lower}")
    v = np.asarray(values, dtype=int)
    lo = (v // width) * width if lower is None else np.maximum(lower, (v // width) * width)
    starts, which = np.unique(lo, return_inverse=True)  # format each band once, not each row
    labels = np.array([f"{a}-{a + width - 1}" for a in starts], dtype=object)
    return pd.Series(labels[which.reshape(-1)], index=values.index)


def suppress_small_classes(df: pd.DataFrame, qi: Sequence[str], *, k: int) -> pd.DataFrame:
    """Drop the records in classes smaller than ``k`` (suppression), making the table k-anonymous."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return df[class_sizes(df, qi) >= k].copy()


@dataclass(frozen=True)
class HomogeneityResult:
    """Classes (and records) whose sensitive value is the same for every member."""

    classes: int
    homogeneous_classes: int
    records: int
    exposed_records: int

    @property
    def exposed_share(self) -> float:
        """Share of records whose sensitive value an attacker learns from their QIs alone."""
        return self.exposed_records / self.records


def homogeneity_attack(df: pd.DataFrame, qi: Sequence[str], sensitive: str) -> HomogeneityResult:
    """Count classes in which every record has the same ``sensitive`` value.

    Knowing only a target's QIs (and that they are in the table), the attacker learns the
    sensitive value of every member of a homogeneous class, however large ``k`` is.
    Reference: Machanavajjhala et al. (2007), Section 3.1.
    """
    cols = _check_columns(df, list(qi) + [sensitive])[:-1]
    grouped = df.groupby(cols, observed=True, dropna=False)[sensitive]
    distinct, size = grouped.nunique(dropna=False), grouped.size()  # missing counts as a value
    homogeneous = distinct == 1
    return HomogeneityResult(
        classes=int(len(distinct)),
        homogeneous_classes=int(homogeneous.sum()),
        records=int(size.sum()),
        exposed_records=int(size[homogeneous].sum()),
    )
