"""Re-identification helpers against hand-built tables."""

import numpy as np
import pandas as pd
import pytest

from privlab import anonymity as an


@pytest.fixture
def table():
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "zip": [100, 100, 100, 200, 200, 300],
            "sex": ["f", "f", "m", "m", "m", "f"],
            "dx": ["flu", "flu", "hiv", "flu", "cold", "hiv"],
        }
    )


def test_uniqueness_and_k(table):
    # classes on (zip, sex): {1,2}, {3}, {4,5}, {6} -> 2 of 6 unique
    assert an.uniqueness(table, ["zip", "sex"]) == pytest.approx(2 / 6)
    assert an.k_anonymity(table, ["zip", "sex"]) == 1
    assert an.k_anonymity(table, ["sex"]) == 3


def test_linkage_attack_counts_only_correct_unique_matches(table):
    aux = table[["id", "zip", "sex"]].iloc[[0, 2, 5]]  # targets 1 (class of 2), 3 and 6 (unique)
    res = an.linkage_attack(table, aux, ["zip", "sex"], id_column="id")
    assert (res.targets, res.unique_matches, res.correct) == (3, 2, 2)
    assert res.reidentification_rate == pytest.approx(2 / 3)


def test_linkage_attack_target_absent_from_release(table):
    aux = pd.DataFrame({"id": [99], "zip": [300], "sex": ["f"]})  # matches record 6, but is not 6
    res = an.linkage_attack(table, aux, ["zip", "sex"], id_column="id")
    assert (res.unique_matches, res.correct) == (1, 0)


def test_homogeneity_and_l_diversity(table):
    res = an.homogeneity_attack(table, ["zip", "sex"], "dx")
    # every class is homogeneous except (200, m) with {flu, cold}
    assert (res.classes, res.homogeneous_classes, res.exposed_records) == (4, 3, 4)
    assert an.l_diversity(table, ["zip", "sex"], "dx") == 1
    assert an.l_diversity(table, ["sex"], "dx") == 2


def test_generalise_and_suppress(table):
    g = an.generalise(table, {"zip": lambda s: an.band(s, 1000)})
    assert an.k_anonymity(g, ["zip", "sex"]) == 3
    s = an.suppress_small_classes(table, ["zip", "sex"], k=2)
    assert an.k_anonymity(s, ["zip", "sex"]) == 2 and len(s) == 4


def test_band_labels_each_row():
    v = pd.Series([0, 9, 10, 25, -3, 10, 7], index=list("abcdefg"))
    b = an.band(v, 10)
    assert list(b) == ["0-9", "0-9", "10-19", "20-29", "-10--1", "10-19", "0-9"]
    assert list(b.index) == list(v.index) and b.dtype == object
    floored = an.band(v, 10, lower=0)
    assert list(floored) == ["0-9", "0-9", "10-19", "20-29", "0-9", "10-19", "0-9"]
    assert len(an.band(v.iloc[:0], 10)) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda t: an.uniqueness(t.iloc[:0], ["zip"]),
        lambda t: an.uniqueness(t, []),
        lambda t: an.uniqueness(t, ["age"]),
        lambda t: an.band(t["zip"], 0),
        lambda t: an.suppress_small_classes(t, ["zip"], k=0),
    ],
)
def test_bad_input_raises(table, call):
    with pytest.raises(ValueError):
        call(table)


def test_missing_sensitive_values_count_and_bands_do_not_overlap():
    # an all-missing class had distinct l = 0 and was not homogeneous; lower = 18 gave bands 18-27 and 20-29
    t = pd.DataFrame({"zip": ["a", "a", "b", "b"], "dx": [np.nan, np.nan, "flu", "cold"]})
    assert an.l_diversity(t, ["zip"], "dx") == 1
    r = an.homogeneity_attack(t, ["zip"], "dx")
    assert (r.homogeneous_classes, r.exposed_records) == (1, 2)
    with pytest.raises(ValueError, match="lower must be a multiple of width=10, got 18"):
        an.band(pd.Series([5, 19, 21, 25]), 10, lower=18)


def test_band_width_must_be_an_integer():
    import pandas as pd

    from privlab.anonymity import band

    with pytest.raises(ValueError, match="width must be an integer"):
        band(pd.Series([20, 25]), 2.5)  # gave labels like '22.5-24.0'
    assert band(pd.Series([20, 25]), 10).tolist() == ["20-29", "20-29"]
