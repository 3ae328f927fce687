"""The bundled real tables: a cache that does not hold the table, or a category outside its levels, is an
error (pd.Categorical turned an unknown spelling into NaN, which later code dropped or one-hot encoded
as the last level; a truncated cache was read as the data set)."""

import pandas as pd
import pytest

from privlab.datasets import load_cps1988
from privlab.datasets.real import _cached


def test_a_truncated_cache_is_refused(tmp_path):
    full = load_cps1988()
    full.iloc[:1000].to_csv(tmp_path / "cps1988.csv", index=False)
    with pytest.raises(ValueError, match=r"cps1988.csv \(delete it to fetch it again\) holds 1000 rows"):
        load_cps1988(cache=tmp_path)


def test_an_unknown_category_is_refused(tmp_path):
    full = _cached("cps1988", "AER", "CPS1988", None).copy()
    full.loc[0, "region"] = "Northeast"
    full.to_csv(tmp_path / "cps1988.csv", index=False)
    with pytest.raises(ValueError, match=r"region must take the levels .* got \['Northeast'\]"):
        load_cps1988(cache=tmp_path)
    full.loc[0, "region"] = None
    full.to_csv(tmp_path / "cps1988.csv", index=False)
    with pytest.raises(ValueError, match=r"got \['<missing>'\]"):
        load_cps1988(cache=tmp_path)
    assert isinstance(load_cps1988()["region"].dtype, pd.CategoricalDtype)
