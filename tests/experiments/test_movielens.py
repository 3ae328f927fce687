"""MovieLens preparation (public panel, per-user split, negatives) and the user-level DP runs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from privlab.experiments.movielens import (
    MovieLensFeatureModel,
    MovieLensRecommender,
    prepare_movielens,
    run_movielens,
)


def _ratings(n_users=30, n_items=40, per_user=(6, 25), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    genres = ["Drama", "Comedy", "Action|Drama", "Horror", "Comedy|Romance"]
    for u in range(1, n_users + 1):
        items = rng.choice(n_items, size=rng.integers(*per_user), replace=False)
        for t, i in enumerate(items):
            rows.append((u, int(i) + 100, float(rng.choice([1, 2, 3, 4, 5])), 1000 + 10 * t, genres[i % 5]))
    return pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp", "genres"])


@pytest.fixture(scope="module")
def prepared():
    df = _ratings()
    return df, prepare_movielens(df, rng=np.random.default_rng(0), n_negatives=10, public_fraction=0.2)


def test_public_panel_is_disjoint_from_training_and_evaluation(prepared):
    _, d = prepared
    pub = np.flatnonzero(d.public_user)
    assert pub.size == 6
    assert not np.isin(d.train_user, pub).any() and not np.isin(d.test_user, pub).any()
    assert not np.isin(d.cand_user, pub).any() and np.isin(d.pub_user, pub).all()


def test_each_rating_brings_one_unrated_negative(prepared):
    df, d = prepared
    half = d.train_user.size // 2
    np.testing.assert_array_equal(d.train_user[:half], d.train_user[half:])
    assert (d.y_train[half:] == 0).all()
    # a negative is an item the user did not rate in the training period; the test period is not looked at
    # (excluding the user's later ratings too built the training set from the test period)
    rated_train = set(zip(d.train_user[:half].tolist(), d.train_item[:half].tolist()))
    negatives = list(zip(d.train_user[half:].tolist(), d.train_item[half:].tolist()))
    assert all(pair not in rated_train for pair in negatives)
    test_pairs = set(zip(d.test_user.tolist(), d.test_item.tolist()))
    assert any(pair in test_pairs for pair in negatives)  # a later rating can be a training negative


def test_a_user_with_no_unrated_item_is_an_error_not_a_rated_negative():
    from privlab.experiments.movielens import _sample_unrated

    rated = {(0, 0), (0, 1)}
    with pytest.raises(ValueError, match="user row 0 .userId 1 when ids start at 1. has .almost. no unrated item among 2"):
        _sample_unrated(np.array([0, 0]), rated, 2, np.random.default_rng(0))


def test_time_split_is_per_user_and_latest(prepared):
    df, d = prepared
    counts = df.groupby("userId").size().to_numpy()
    n_test = np.maximum(1, np.ceil(0.2 * counts)).astype(int)
    private = ~d.public_user
    assert d.test_user.size == n_test[private].sum()
    np.testing.assert_array_equal(d.user_activity, counts - n_test)


def test_split_of_a_user_does_not_depend_on_other_users():
    df = _ratings()
    full = prepare_movielens(df, rng=np.random.default_rng(0), n_negatives=5, public_fraction=0.2)
    # drop one user (id 1 is code 0); every other user's test period is unchanged
    fewer = prepare_movielens(df[df["userId"] != 1], rng=np.random.default_rng(0), n_negatives=5,
                              public_fraction=0.2)
    np.testing.assert_array_equal(full.user_activity[1:], fewer.user_activity)


def test_public_catalogue_does_not_depend_on_the_users():
    df = _ratings()
    cat = pd.DataFrame({"movieId": np.arange(100, 150), "genres": ["Drama"] * 50})
    cat.loc[cat["movieId"] < 140, "genres"] = [["Drama", "Comedy", "Action|Drama", "Horror", "Comedy|Romance"][i % 5]
                                               for i in range(40)]
    full = prepare_movielens(df, rng=np.random.default_rng(0), n_negatives=5, catalogue=cat)
    # a user who rated a movie nobody else rated: without a catalogue, that movie leaves with them
    only = df.groupby("movieId")["userId"].nunique()
    u = int(df.loc[df["movieId"].isin(only[only == 1].index), "userId"].iloc[0]) if (only == 1).any() else 1
    fewer = prepare_movielens(df[df["userId"] != u], rng=np.random.default_rng(0), n_negatives=5, catalogue=cat)
    assert full.n_items == fewer.n_items == 50  # unrated movies keep their rows
    np.testing.assert_array_equal(full.genres, fewer.genres)
    assert full.genres[:, 0].sum() > 0  # genres come from the catalogue
    with pytest.raises(ValueError, match="catalogue"):
        prepare_movielens(df, rng=np.random.default_rng(0), catalogue=cat[cat["movieId"] != 100])


def test_public_user_id_range_fixes_the_user_table():
    df = _ratings()
    full = prepare_movielens(df, rng=np.random.default_rng(0), n_negatives=5, max_user_id=40)
    # removing a user changes neither the table's size nor any other user's row
    fewer = prepare_movielens(df[df["userId"] != 3], rng=np.random.default_rng(0), n_negatives=5,
                              max_user_id=40)  # fmt: skip
    assert full.n_users == fewer.n_users == 40
    assert MovieLensRecommender(full.n_users, full.n_items, full.genres).user_emb.weight.shape == (40, 16)
    assert set(np.unique(full.train_user) + 1) <= set(df["userId"])  # user u is row u - 1
    assert 2 not in set(fewer.train_user) and 2 not in set(fewer.test_user)  # user 3's row
    np.testing.assert_array_equal(full.public_user, fewer.public_user)  # drawn from the range
    with pytest.raises(ValueError, match="public range"):
        prepare_movielens(df, rng=np.random.default_rng(0), max_user_id=29)


def test_user_profile_is_mean_genres_of_liked_training_items(prepared):
    _, d = prepared
    assert d.user_profile.shape == (d.n_users, d.genres.shape[1])
    assert (d.user_profile >= 0).all() and (d.user_profile <= 1).all()


@pytest.mark.parametrize("bad", [dict(test_fraction=0.0), dict(public_fraction=1.0), dict(n_negatives=0)])
def test_prepare_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        prepare_movielens(_ratings(), rng=np.random.default_rng(0), **bad)


def test_prepare_rejects_missing_columns():
    with pytest.raises(ValueError, match="columns"):
        prepare_movielens(_ratings().drop(columns="genres"), rng=np.random.default_rng(0))


@pytest.mark.parametrize("model", ["embedding", "features"])
def test_run_movielens_user_level(prepared, model):
    _, d = prepared
    recs = run_movielens(d, epsilons=(3, math.inf), epochs=1, batch_size=8, max_rows=16, model=model)
    dp, base = recs
    n_priv = int((~d.public_user).sum())
    assert dp["privacy_unit"] == "user" and dp["n_units"] == n_priv and dp["delta"] == 1 / (100 * n_priv)
    assert dp["sigma"] > 0 and dp["epsilon_pld"] <= 3 * 1.001 and dp["max_grad_norm"] > 0
    assert 0 <= dp["fraction_clipped"] <= 1 and base["fraction_clipped"] is None and base["sigma"] == 0
    assert dp["rows_kept"] <= 16 * n_priv and dp["model"] == model
    assert dp["prior_log_odds"] == pytest.approx(np.log(d.y_pub.mean() / (1 - d.y_pub.mean())))
    for r in recs:
        assert len(r["train_loss"]) == 1 and 0 <= r["metrics"]["recall@20"] <= 1


def test_run_movielens_rejects_unknown_model(prepared):
    with pytest.raises(ValueError, match="model"):
        run_movielens(prepared[1], model="mf")


def test_feature_model_has_no_per_user_parameters():
    m = MovieLensFeatureModel(np.eye(4, dtype=np.float32))
    assert all(p.shape[0] != 4 or p.ndim == 1 for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) < 10_000


# ----- unit tests of the pure pieces: encoding, labels, candidates, groups, models (no download, no training)

TINY = pd.DataFrame({"userId": [1, 1, 1, 2, 2, 2], "movieId": [10, 11, 12, 10, 11, 13],
                     "rating": [5, 2, 4, 4, 1, 5], "timestamp": [1, 2, 3, 1, 2, 3],
                     "genres": ["A", "B", "A|B", "A", "B", "B"]})


def test_genres_are_the_catalogues_multi_hot_over_a_sorted_vocabulary():
    d = prepare_movielens(TINY, rng=np.random.default_rng(0), n_negatives=1, public_fraction=0.5)
    # items are the sorted movie ids 10, 11, 12, 13; the vocabulary is ["A", "B"]
    np.testing.assert_array_equal(d.genres, [[1, 0], [0, 1], [1, 1], [0, 1]])
    assert d.genres.dtype == np.float32


@pytest.mark.parametrize("threshold", [4.0, 5.0])
def test_likes_follow_the_threshold(threshold):
    df = _ratings(seed=1)
    d = prepare_movielens(df, rng=np.random.default_rng(0), n_negatives=3, like_threshold=threshold)
    half = d.train_user.size // 2  # the ratings, then one sampled negative each
    codes = pd.factorize(df["userId"], sort=True)[0]
    private_rows = ~d.public_user[codes]
    liked = (df["rating"].to_numpy() >= threshold)[private_rows]
    # every private rating is a training or a test row: together they carry its like-label
    assert d.y_train[:half].sum() + d.y_test.sum() == liked.sum()
    assert set(np.unique(d.y_train)) <= {0.0, 1.0} and set(np.unique(d.y_test)) <= {0.0, 1.0}


def test_candidates_are_test_items_plus_unrated_negatives_per_user(prepared):
    df, d = prepared
    n_negatives = 10
    assert (np.diff(d.cand_user) >= 0).all()  # grouped by user
    users = {u: j for j, u in enumerate(sorted(df["userId"].unique()))}
    items = {m: j for j, m in enumerate(sorted(df["movieId"].unique()))}
    rated = {(users[u], items[m]) for u, m in zip(df["userId"], df["movieId"])}
    for u in np.unique(d.cand_user):
        mine = d.cand_user == u
        test_items = d.test_item[d.test_user == u]
        assert d.y_test[d.test_user == u].sum() >= 1  # only users with a liked test item rank
        negatives = d.cand_item[mine & (d.cand_label == 0)]
        assert mine.sum() == test_items.size + n_negatives
        assert sum((int(u), int(i)) not in rated for i in negatives) >= n_negatives
        assert d.cand_label[mine].sum() == d.y_test[d.test_user == u].sum()
    assert not d.public_user[d.cand_user].any()


def test_groups_are_activity_terciles_that_partition_the_rows(prepared):
    _, d = prepared
    groups = d.groups()
    assert list(groups) == ["light_users", "medium_users", "heavy_users"]
    test_cover = sum(t.astype(int) for t, _ in groups.values())
    cand_cover = sum(c.astype(int) for _, c in groups.values())
    assert (test_cover == 1).all() and (cand_cover == 1).all()  # every row in exactly one group
    light = d.user_activity[d.test_user[groups["light_users"][0]]]
    heavy = d.user_activity[d.test_user[groups["heavy_users"][0]]]
    assert light.max() <= heavy.min()


def test_prepare_is_a_function_of_its_generator():
    a, b = (prepare_movielens(_ratings(), rng=np.random.default_rng(7), n_negatives=4) for _ in range(2))
    for name in ("train_item", "y_train", "cand_user", "cand_item", "cand_label", "public_user"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = prepare_movielens(_ratings(), rng=np.random.default_rng(8), n_negatives=4)
    assert not np.array_equal(a.public_user, c.public_user) or not np.array_equal(a.train_item, c.train_item)


def test_recommender_maps_any_id_shape_to_logits_and_keeps_genres_fixed():
    genres = np.eye(7, 3, dtype=np.float32)
    m = MovieLensRecommender(5, 7, genres, dim=4, hidden=(8,))
    users, items = torch.tensor([[0, 1, 2], [3, 4, 0]]), torch.tensor([[6, 5, 4], [3, 2, 1]])
    assert m(users, items).shape == (2, 3)
    assert "genres" not in dict(m.named_parameters())  # the public catalogue is a buffer, never trained
    torch.testing.assert_close(m.genres, torch.from_numpy(genres))
    assert m.user_emb.weight.shape == (5, 4) and m.item_emb.weight.shape == (7, 4)


def test_feature_model_size_does_not_grow_with_the_users():
    genres = np.eye(6, 4, dtype=np.float32)
    small = sum(p.numel() for p in MovieLensFeatureModel(genres).parameters())
    big_catalogue = np.eye(600, 4, dtype=np.float32)
    assert sum(p.numel() for p in MovieLensFeatureModel(big_catalogue).parameters()) == small
    out = MovieLensFeatureModel(genres)(torch.rand(3, 4), torch.tensor([0, 5, 2]))
    assert out.shape == (3,) and torch.isfinite(out).all()
