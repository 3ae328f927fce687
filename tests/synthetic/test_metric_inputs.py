"""Inputs the synthetic-data metrics and domains would read wrongly are errors (from a red-team read):
empty samples, missing values dropped, matrices compared by position, misspelt numeric columns, ties among
three or more nearest rows, NaN binned into the top bin, edges that only look like half-integers."""

import numpy as np
import pandas as pd
import pytest

from privlab.config import make_rng
from privlab.federated.partitions import FederatedDataset
from privlab.synthetic.domain import NumericDomain, dp_numeric_domain
from privlab.synthetic.metrics import association_matrix, correlation_distance, holdout_test, total_variation


def test_total_variation_counts_missing_values_and_refuses_empty_samples():
    assert total_variation(["a", None, None, None], ["a"]) == pytest.approx(0.75)  # was 0.0
    with pytest.raises(ValueError, match="non-empty samples, got sizes 0 and 2"):
        total_variation([], ["a", "b"])


def test_association_matrices_are_compared_by_label():
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 5.0], "y": [2.0, 1.0, 6.0, 8.0], "c": list("abab")})
    a = association_matrix(df, ["x", "y"])
    assert correlation_distance(a, a.loc[["c", "y", "x"], ["c", "y", "x"]]) == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"does not have: \['Y'\]"):
        association_matrix(df, ["x", "Y"])


def test_holdout_ties_among_three_rows_score_the_training_share():
    train, hold = np.array([[0.0], [0.0], [9.0]]), np.array([[0.0], [5.0], [7.0]])
    share, _ = holdout_test(train, hold, np.array([[0.0]]))  # two training copies and one holdout copy
    assert share == pytest.approx(2 / 3)  # was 1.0 or 0.5 by listing order


def test_domains_refuse_nan_and_edges_that_are_not_half_integers():
    with pytest.raises(ValueError, match="half-integer edges"):
        NumericDomain((0.5, 100000.0, 200000.5), integer=True)
    with pytest.raises(ValueError, match="must not be NaN"):
        NumericDomain((0.5, 1.5, 2.5), integer=True).encode([1.0, np.nan])
    with pytest.raises(ValueError, match="values must be finite, got nan"):
        dp_numeric_domain([1.0, np.nan], sigma=1.0, rng=make_rng(0), bins=4, integer=False)


def test_federated_labels_must_be_class_integers():
    with pytest.raises(ValueError, match="labels must be integers 0..C-1, got 0.4"):
        FederatedDataset(names=("a",), x=(np.zeros((2, 1)),), y=(np.array([0.4, 1.0]),))
