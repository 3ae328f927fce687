"""Checks and conversions shared by the synthesizers and the evaluation: frames, dtypes, generators.

>>> import pandas as pd
>>> check_frame("df", pd.DataFrame({"a": [1.0, float("nan")]}))
Traceback (most recent call last):
...
ValueError: column 'a' of df has missing values (not counted: a count is data); impute or drop them first
>>> check_frame("df", pd.DataFrame())
Traceback (most recent call last):
...
ValueError: df must have at least one row and one column, got shape (0, 0)

Used in: chapter 10.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from privlab.config import make_rng

__all__ = ["check_frame", "as_rng", "restore_dtypes"]


def check_frame(name: str, df, *, columns: list | None = None) -> pd.DataFrame:
    """A non-empty DataFrame with distinct column names and no missing or infinite values.

    Args:
        name: how to call the frame in messages.
        df: the frame.
        columns: when given, the frame must have exactly these columns (any order);
            the result is reordered to match.

    Raises:
        ValueError: not a DataFrame, no rows or columns, duplicate or missing
            columns, an all-NaN column, any NaN, or an infinite number.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {df.shape}")
    if df.columns.duplicated().any():
        raise ValueError(f"{name} has duplicate column names: {list(df.columns[df.columns.duplicated()])}")
    if columns is not None:
        missing, extra = set(columns) - set(df.columns), set(df.columns) - set(columns)
        if missing or extra:
            raise ValueError(f"{name} must have columns {list(columns)}; missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        df = df[list(columns)]
    for col in df.columns:  # the messages give no counts: the frame may be the private table
        if df[col].isna().any():
            raise ValueError(f"column {col!r} of {name} has missing values (not counted: a count is data); "
                             "impute or drop them first")
        if pd.api.types.is_float_dtype(df[col]) and not np.isfinite(df[col].to_numpy()).all():
            raise ValueError(f"column {col!r} of {name} has infinite values")
    return df


def as_rng(rng, seed: int | None) -> np.random.Generator:
    """``rng`` if it is a Generator, ``make_rng(rng)`` for an int, else ``make_rng(seed)``.

    ``seed=None`` then means fresh OS entropy, never a global state.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return make_rng(seed)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return make_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {rng!r}")


def restore_dtypes(df: pd.DataFrame, dtypes: dict) -> pd.DataFrame:
    """Cast the columns of ``df`` back to ``dtypes`` (categories of a Categorical kept).

    Raises:
        ValueError: a value of a Categorical column outside its categories (the
            message gives their number, never the values).
    """
    out = {}
    for col, dtype in dtypes.items():
        s = df[col]
        if isinstance(dtype, pd.CategoricalDtype):
            out[col] = pd.Categorical(s.astype(object), categories=dtype.categories, ordered=dtype.ordered)
            lost = out[col].isna() & s.notna().to_numpy()
            if lost.any():  # a generator produced a category the schema does not have
                raise ValueError(f"column {col!r}: {int(lost.sum())} sampled value(s) not among the "
                                 f"categories {list(dtype.categories)} (not shown: they may be data)")
        elif pd.api.types.is_integer_dtype(dtype):
            out[col] = np.round(s.to_numpy(dtype=float)).astype(dtype)
        elif pd.api.types.is_bool_dtype(dtype):
            out[col] = s.astype(bool)
        else:
            out[col] = s.astype(dtype)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))
