"""Partitions: the real CPS1988 silos, the five-hospital demo, Dirichlet and quantity skew, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.config import make_rng
from privlab.datasets import CPS1988_WAGE_THRESHOLD, cps1988_public_features, load_cps1988
from privlab.federated import (
    HOSPITAL_SITES,
    FederatedDataset,
    cps1988_silos,
    dirichlet_label_skew,
    hospital_sites,
    iid_partition,
    quantity_skew,
)


def _pooled_toy(n=600, classes=3, seed=0):
    rng = make_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, classes, n)


def _same_records(fd: FederatedDataset, x: np.ndarray) -> bool:
    """Every record appears exactly once across clients (rows compared as tuples)."""
    got = sorted(map(tuple, np.concatenate(fd.x).round(5)))
    return got == sorted(map(tuple, x.astype(np.float32).round(5)))


def test_cps1988_silos_are_four_regions_of_different_size_and_label_rate():
    fd = cps1988_silos()
    s = fd.summary()
    assert list(s["client"]) == ["northeast", "midwest", "south", "west"]
    assert s["samples"].sum() == 28155 and s["samples"].nunique() == 4
    assert np.isclose(s["share"].sum(), 1.0)
    # label = wage above the public USD 500 threshold: about half overall, different per region
    pooled_rate = (s["samples"] * s["positive_rate"]).sum() / s["samples"].sum()
    assert abs(pooled_rate - 0.5) < 0.03
    assert s["positive_rate"].max() - s["positive_rate"].min() > 0.1
    x, y = fd.pooled()
    assert fd.num_features == len(fd.feature_names) == 6
    # public scaling: the uniform distribution on the codebook's ranges, not the rows' mean and std
    assert x[:, :2].min() >= -np.sqrt(3) - 1e-6 and x[:, :2].max() <= np.sqrt(3) + 1e-6
    np.testing.assert_allclose(x[:, 2], (x[:, 1].astype(float) ** 2 - 1) / np.sqrt(0.8), atol=1e-5)
    df = load_cps1988()
    order = np.concatenate([np.flatnonzero(df["region"].astype(str) == r) for r in fd.names])
    edu = (df["education"].to_numpy()[order] - 9) / (18 / np.sqrt(12))
    np.testing.assert_allclose(x[:, 0], edu, atol=1e-5)
    np.testing.assert_array_equal(y, (df["wage"].to_numpy()[order] > 500).astype(np.float32))


def test_cps1988_public_constants_do_not_read_the_rows():
    df = load_cps1988()
    shifted = df.assign(wage=df["wage"] * 3, education=df["education"].clip(upper=12))
    a, b = cps1988_public_features(df.head(5)), cps1988_public_features(shifted.head(5))
    np.testing.assert_allclose(a["experience"], b["experience"])  # the map is fixed, not fitted
    assert np.isclose(a.loc[0, "education"], (df.loc[0, "education"] - 9) / (18 / np.sqrt(12)))
    assert CPS1988_WAGE_THRESHOLD == 500.0


def test_hospital_sites_match_the_published_demo_and_are_learnable():
    fd = hospital_sites(rng=make_rng(3))
    s = fd.summary()
    assert list(s["client"]) == [name for name, _, _ in HOSPITAL_SITES]
    assert s["samples"].tolist() == [800, 500, 350, 200, 150]
    np.testing.assert_allclose(s["positive_rate"], [0.3, 0.4, 0.35, 0.25, 0.5], atol=0.5 / 350)
    # the label depends on the features: a least-squares linear score separates the classes
    x, y = fd.pooled()
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.linalg.lstsq(xb, y, rcond=None)[0]
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, xb @ w) > 0.7  # chance is 0.5
    # reproducible from the generator
    again = hospital_sites(rng=make_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(fd.x, again.x))


def test_iid_partition_uses_every_record_once():
    x, y = _pooled_toy()
    fd = iid_partition(x, y, num_clients=7, rng=make_rng(1))
    assert fd.sizes.sum() == len(y) and fd.sizes.max() - fd.sizes.min() <= 1
    assert _same_records(fd, x)


def test_dirichlet_label_skew_concentration_controls_the_skew():
    x, y = _pooled_toy(n=3000, classes=3)
    skewed = dirichlet_label_skew(x, y, num_clients=10, alpha=0.1, rng=make_rng(2))
    near_iid = dirichlet_label_skew(x, y, num_clients=10, alpha=1000.0, rng=make_rng(2))
    for fd in (skewed, near_iid):
        assert fd.sizes.sum() == len(y) and fd.sizes.min() >= 1 and _same_records(fd, x)
    rates = lambda fd: fd.summary()[["rate_0", "rate_1", "rate_2"]].to_numpy()
    # alpha = 1000: every client within a few binomial standard errors of 1/3 per class
    se = np.sqrt((1 / 3) * (2 / 3) / near_iid.sizes.min())
    assert np.abs(rates(near_iid) - 1 / 3).max() < 6 * se
    # alpha = 0.1: clients dominated by one class (IID would give about 1/3)
    assert np.median(rates(skewed).max(axis=1)) > 0.6


def test_quantity_skew_sizes_vary_labels_do_not():
    x, y = _pooled_toy(n=5000, classes=2)
    fd = quantity_skew(x, y, num_clients=20, alpha=0.5, rng=make_rng(4), min_size=10)
    assert fd.sizes.sum() == len(y) and fd.sizes.min() >= 10 and _same_records(fd, x)
    assert fd.sizes.max() / fd.sizes.min() > 5
    big = fd.sizes >= 200
    s = fd.summary()
    se = np.sqrt(0.25 / fd.sizes[big])
    assert np.all(np.abs(s["positive_rate"][big] - y.mean()) < 6 * se)


def test_bad_clients_are_named():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="'b'.*zero samples"):
        FederatedDataset(("a", "b"), (x, np.zeros((0, 2))), (np.zeros(3), np.zeros(0)))
    with pytest.raises(ValueError, match="'b' has 3 features"):
        FederatedDataset(("a", "b"), (x, np.zeros((3, 3))), (np.zeros(3), np.zeros(3)))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="'b' has NaN"):
        FederatedDataset(("a", "b"), (x, bad), (np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="no Dirichlet"):
        dirichlet_label_skew(*_pooled_toy(n=20), num_clients=15, alpha=0.01, rng=make_rng(0), min_size=2)


@settings(max_examples=25, deadline=None)
@given(alpha=st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf"))))
def test_invalid_alpha_raises(alpha):
    x, y = _pooled_toy(n=50)
    for split in (dirichlet_label_skew, quantity_skew):
        with pytest.raises(ValueError, match="alpha"):
            split(x, y, num_clients=3, alpha=alpha, rng=make_rng(0))


@settings(max_examples=25, deadline=None)
@given(k=st.one_of(st.integers(max_value=0), st.integers(min_value=51, max_value=10**6)))
def test_invalid_num_clients_raises(k):
    x, y = _pooled_toy(n=50)
    with pytest.raises(ValueError, match="num_clients"):
        iid_partition(x, y, num_clients=k, rng=make_rng(0))
