"""Tests of privlab.datasets.streamrec: sizes per scale, the documented statistics of the generator
(market and segment shares, new users' short and sparse histories, click rates by segment, noisier
features for new users), learnable-but-imperfect features (scikit-learn's logistic regression),
the time split and the candidate sets, determinism, the torch helpers, and invalid configurations.

Statistical tolerances: Z standard errors of the quantity tested, seeded generators.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from privlab.config import make_rng
from privlab.datasets.streamrec import MARKETS, SEGMENTS, StreamRecConfig, generate_streamrec
from privlab.metrics import roc_auc

Z = 5.0
POWER, CASUAL, NEW = range(3)


@pytest.fixture(scope="module")
def data():
    return generate_streamrec("smoke", rng=make_rng(0), progress=False)


@pytest.fixture(scope="module")
def many_users():
    """More users for share statistics (the row count stays at the smoke size)."""
    cfg = StreamRecConfig.for_scale("smoke", n_users=40_000, n_interactions=60_000)
    return generate_streamrec(config=cfg, rng=make_rng(1), progress=False)


def test_sizes_per_scale():
    sizes = {s: StreamRecConfig.for_scale(s) for s in ("smoke", "book", "paper")}
    assert 10_000 <= sizes["smoke"].n_interactions < 100_000
    assert 1_000_000 <= sizes["book"].n_interactions <= 2_000_000
    assert sizes["paper"].n_interactions == 50_000_000
    assert all(c.n_days == 30 for c in sizes.values())


def test_shapes_dtypes_and_time_split(data):
    cfg = data.config
    assert data.n_train + data.n_test == cfg.n_interactions
    assert data.X_train.shape == (data.n_train, 40) and data.X_train.dtype == np.float32
    assert data.X_test.shape == (data.n_test, 40) and data.cand_X.shape == (data.cand_user.size, 40)
    for y in (data.y_train, data.y_test, data.cand_label):
        assert y.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}
    first_test = cfg.n_days - cfg.test_days + 1
    assert data.train_day.min() >= 1 and data.train_day.max() == first_test - 1
    assert data.test_day.min() == first_test and data.test_day.max() == cfg.n_days
    # the features are z-scored tables, and a row is [user features, item features]
    np.testing.assert_allclose(data.user_features.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(data.user_features.std(0), 1, atol=1e-4)
    np.testing.assert_array_equal(data.X_train[:3, :20], data.user_features[data.train_user[:3]])
    np.testing.assert_array_equal(data.X_train[:3, 20:], data.item_features[data.train_item[:3]])
    with pytest.raises(ValueError):
        data.y_train[0] = 1.0  # read-only


def test_market_and_segment_shares(many_users):
    cfg = many_users.config
    n = cfg.n_users
    for codes, shares in ((many_users.user_market, cfg.market_shares), (many_users.user_segment, cfg.segment_shares)):
        for j, share in enumerate(shares):
            se = math.sqrt(share * (1 - share) / n)
            assert abs(np.mean(codes == j) - share) < Z * se
    assert cfg.market_shares[MARKETS.index("eu")] == 0.35


def test_new_users_have_short_sparse_histories(many_users):
    d = many_users
    new = d.user_segment == NEW
    assert d.user_first_day[new].min() >= 2 and np.all(d.user_first_day[~new] == 1)
    active = d.config.n_days - d.user_first_day.astype(int) + 1
    assert active[new].max() < 30
    # no interaction before a user's first day
    for user, day in ((d.train_user, d.train_day), (d.test_user, d.test_day)):
        assert np.all(day >= d.user_first_day[user])
    counts = np.bincount(d.train_user, minlength=d.config.n_users) + np.bincount(d.test_user, minlength=d.config.n_users)
    per_user = [counts[d.user_segment == s].mean() for s in (POWER, CASUAL, NEW)]
    assert per_user[0] > per_user[1] > per_user[2]
    summary = d.summary()
    assert summary.loc["new_users", "per_user"] == pytest.approx(per_user[2])


def test_click_rates_by_segment_in_documented_direction(many_users):
    d = many_users
    y = np.concatenate([d.y_train, d.y_test])
    seg = np.concatenate([d.train_segment, d.test_segment])
    rate = [y[seg == s].mean() for s in (POWER, CASUAL, NEW)]
    se = [math.sqrt(r * (1 - r) / np.sum(seg == s)) for r, s in zip(rate, (POWER, CASUAL, NEW))]
    assert rate[0] - rate[1] > 3 * math.hypot(se[0], se[1])
    assert rate[1] - rate[2] > 3 * math.hypot(se[1], se[2])


def test_new_users_features_are_noisiest(many_users):
    d = many_users
    x, p = d.user_features[:, 2:].astype(float), d.user_latent.astype(float)
    coef, *_ = np.linalg.lstsq(np.c_[p, np.ones(len(p))], x, rcond=None)
    resid = x - np.c_[p, np.ones(len(p))] @ coef
    noise = [resid[d.user_segment == s].var() for s in (POWER, CASUAL, NEW)]
    assert noise[0] < noise[1] < noise[2]


def test_features_carry_real_but_imperfect_signal(data):
    lr = LogisticRegression(max_iter=500).fit(data.X_train, data.y_train)
    auc_lr = roc_auc(data.y_test, lr.decision_function(data.X_test))
    auc_oracle = roc_auc(data.y_test, data.oracle_logit(data.test_user, data.test_item))
    # n_test ~ 7,000: the standard error of an AUC near 0.6 is about 0.007
    assert 0.55 < auc_lr < 0.75
    assert auc_oracle > auc_lr + 0.1
    assert data.ceiling().loc["overall", "auc"] == pytest.approx(auc_oracle, rel=1e-9)


def test_candidates(data):
    cfg = data.config
    keys = data.cand_user.astype(np.int64) * cfg.n_items + data.cand_item
    assert np.unique(keys).size == keys.size  # distinct (user, item) pairs
    assert np.all(np.diff(data.cand_user) >= 0)  # grouped by user
    users, n_cand = np.unique(data.cand_user, return_counts=True)
    assert users.size == cfg.n_eval_users
    assert np.all(np.bincount(data.cand_user, weights=data.cand_label)[users] >= 1)  # each has a click
    # relevant = clicked in the test days; every shown item of an evaluated user is a candidate
    test_keys = data.test_user.astype(np.int64) * cfg.n_items + data.test_item
    clicked = np.unique(test_keys[data.y_test == 1])
    np.testing.assert_array_equal(data.cand_label == 1, np.isin(keys, clicked))
    shown = np.unique(test_keys[np.isin(data.test_user, users)])
    assert np.isin(shown, keys).all()
    n_shown = np.bincount((shown // cfg.n_items).astype(int), minlength=cfg.n_users)[users]
    assert np.all(n_cand <= n_shown + cfg.n_negatives) and np.all(n_cand > n_shown)
    groups = data.groups()
    assert list(groups) == [*SEGMENTS, *(f"{m}_market" for m in MARKETS)]
    assert sum(groups[s][1].sum() for s in SEGMENTS) == data.cand_user.size


def test_determinism_and_seeds(data):
    again = generate_streamrec("smoke", rng=make_rng(0), progress=False)
    for name in ("user_features", "item_features", "train_user", "train_item", "train_day", "y_train",
                 "test_user", "y_test", "cand_user", "cand_item", "cand_label"):  # fmt: skip
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name), err_msg=name)
    other = generate_streamrec("smoke", rng=make_rng(1), progress=False)
    assert not np.array_equal(other.user_features, data.user_features)
    assert not np.array_equal(other.y_train[:1000], data.y_train[:1000])


def test_torch_helpers(data):
    import torch

    X, y = data.tensors("train")
    assert X.dtype == torch.float32 and X.shape == (data.n_train, 40)
    np.testing.assert_array_equal(X.numpy(), data.X_train)
    np.testing.assert_array_equal(y.numpy(), data.y_train)
    chunks = list(data.iter_chunks("cand", chunk_size=5_000))
    assert len(chunks) == math.ceil(data.cand_user.size / 5_000)
    np.testing.assert_array_equal(torch.cat([c[0] for c in chunks]).numpy(), data.cand_X)
    np.testing.assert_array_equal(torch.cat([c[1] for c in chunks]).numpy(), data.cand_label)
    with pytest.raises(ValueError, match="split must be"):
        data.tensors("valid")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"test_days": 30}, "test_days must be < n_days=30, got 30"),
        ({"market_shares": (0.35, 0.45, 0.3)}, "market_shares must be 3 non-negative shares summing to 1"),
        ({"n_users": 0}, "n_users must be an integer >= 1, got 0"),
        ({"segment_bias": (0.0, float("nan"), 1.0)}, "segment_bias must be 3 finite numbers"),
        ({"item_feature_noise": -1.0}, "item_feature_noise must be a finite number >= 0, got -1.0"),
    ],
)
def test_invalid_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        StreamRecConfig.for_scale("smoke", **overrides)


def test_invalid_call_raises():
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        generate_streamrec("smoke", rng=0, progress=False)
    with pytest.raises(ValueError, match="scale must be one of"):
        generate_streamrec("huge", rng=make_rng(0), progress=False)
