"""Tests of privlab.metrics: rankings worked out by hand, scikit-learn as the oracle for the pointwise
metrics, a loop over users (and over all tie orders) as the oracle for Recall@K and NDCG@K, the
per-group table against the filtered subsets, and invalid input (hypothesis)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from privlab.config import make_rng
from privlab.metrics import (
    accuracy,
    f1_score,
    metrics_table,
    ndcg_at_k,
    ranking_per_user,
    recall_at_k,
    roc_auc,
)

L2, L4, L5, L6 = math.log2(3), math.log2(4), math.log2(5), math.log2(6)  # discounts of ranks 2, 3, 4, 5

# Three users, rows interleaved on purpose. Rankings by score:
#   user 10: 0.9 (0), 0.7 (1), 0.5 (0), 0.3 (1), 0.1 (1)   -> R = 3, relevant at ranks 2, 4, 5
#   user 20: 0.8 (0), 0.6 (0), 0.2 (1)                     -> R = 1, relevant at rank 3
#   user 30: 0.4 (0), 0.35 (0)                             -> R = 0, skipped
USER = [10, 20, 10, 30, 10, 20, 10, 30, 10, 20]
LABEL = [0, 1, 1, 0, 0, 0, 1, 0, 1, 0]
SCORE = [0.9, 0.2, 0.7, 0.4, 0.5, 0.8, 0.3, 0.35, 0.1, 0.6]


def test_hand_computed_ranking():
    r2 = ranking_per_user(USER, LABEL, SCORE, k=2)
    assert r2.users.tolist() == [10, 20] and r2.n_skipped == 1 and r2.n_relevant.tolist() == [3, 1]
    np.testing.assert_allclose(r2.recall, [1 / 3, 0.0])
    np.testing.assert_allclose(r2.ndcg, [(1 / L2) / (1 + 1 / L2), 0.0])
    r3 = ranking_per_user(USER, LABEL, SCORE, k=3)
    np.testing.assert_allclose(r3.recall, [1 / 3, 1.0])
    np.testing.assert_allclose(r3.ndcg, [(1 / L2) / (1 + 1 / L2 + 1 / L4), 1 / L4])
    r5 = ranking_per_user(USER, LABEL, SCORE, k=5)
    np.testing.assert_allclose(r5.recall, [1.0, 1.0])
    np.testing.assert_allclose(r5.ndcg, [(1 / L2 + 1 / L5 + 1 / L6) / (1 + 1 / L2 + 1 / L4), 1 / L4])
    assert recall_at_k(USER, LABEL, SCORE, k=3) == pytest.approx((1 / 3 + 1) / 2)
    assert ndcg_at_k(USER, LABEL, SCORE, k=5) == pytest.approx(r5.ndcg.mean())


def test_ties_hand_computed_and_equal_to_average_over_tie_orders():
    # four tied candidates, one relevant: it sits at each rank with probability 1/4
    r = ranking_per_user([0] * 4, [1, 0, 0, 0], [1.0] * 4, k=2)
    np.testing.assert_allclose(r.recall, [0.5])
    np.testing.assert_allclose(r.ndcg, [0.25 * (1 + 1 / L2)])
    # a mixed case against the brute-force average over every order of each tie block
    label = np.array([1, 0, 1, 1, 0, 0, 1])
    score = np.array([3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    for k in (1, 2, 3, 4, 6):
        recalls, ndcgs = [], []
        blocks = [np.flatnonzero(score == v) for v in (3.0, 2.0, 1.0)]
        for orders in itertools.product(*(itertools.permutations(b) for b in blocks)):
            ranked = label[np.concatenate(orders)]
            recalls.append(ranked[:k].sum() / label.sum())
            dcg = sum(ranked[j] / math.log2(j + 2) for j in range(k))
            ndcgs.append(dcg / sum(1 / math.log2(j + 2) for j in range(min(k, label.sum()))))
        r = ranking_per_user(np.zeros(7), label, score, k=k)
        np.testing.assert_allclose(r.recall, [np.mean(recalls)], rtol=1e-12)
        np.testing.assert_allclose(r.ndcg, [np.mean(ndcgs)], rtol=1e-12)


def _loop_reference(user, label, score, k):
    """Recall@K and NDCG@K user by user with Python's sort (no ties in the data)."""
    out = {}
    for u in np.unique(user):
        m = user == u
        ranked = label[m][np.argsort(-score[m])]
        n_rel = ranked.sum()
        if n_rel == 0:
            continue
        dcg = sum(ranked[j] / math.log2(j + 2) for j in range(min(k, ranked.size)))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(k, n_rel)))
        out[u] = (ranked[:k].sum() / n_rel, dcg / idcg)
    return out


@pytest.mark.parametrize("k", [1, 3, 20])
def test_ranking_equals_loop_over_users(k):
    rng = make_rng(k)
    n = 3_000
    user = rng.integers(0, 150, n)
    label = (rng.random(n) < 0.1).astype(int)
    score = rng.standard_normal(n)
    r = ranking_per_user(user, label, score, k=k)
    ref = _loop_reference(user, label, score, k)
    assert r.users.tolist() == sorted(ref)
    assert r.n_skipped == np.unique(user).size - len(ref)
    np.testing.assert_allclose(r.recall, [ref[u][0] for u in r.users], rtol=1e-12)
    np.testing.assert_allclose(r.ndcg, [ref[u][1] for u in r.users], rtol=1e-12)
    # the result does not depend on the order of the rows
    p = rng.permutation(n)
    np.testing.assert_allclose(ranking_per_user(user[p], label[p], score[p], k=k).ndcg, r.ndcg, rtol=1e-12)


def test_perfect_ranking_and_monotone_recall():
    rng = make_rng(1)
    n = 2_000
    user = rng.integers(0, 100, n)
    label = (rng.random(n) < 0.2).astype(int)
    perfect = label * 10.0 + rng.random(n)  # every relevant item above every other
    assert ndcg_at_k(user, label, perfect, k=5) == pytest.approx(1.0)
    r = ranking_per_user(user, label, perfect, k=5)
    np.testing.assert_allclose(r.recall, np.minimum(r.n_relevant, 5) / r.n_relevant)
    score = rng.standard_normal(n)
    recalls = [recall_at_k(user, label, score, k=k) for k in range(1, 60)]
    assert np.all(np.diff(recalls) >= -1e-12)
    assert recalls[-1] == pytest.approx(1.0)  # K above every user's candidate count


def test_pointwise_against_sklearn():
    rng = make_rng(2)
    y = (rng.random(5_000) < 0.3).astype(int)
    s = np.round(rng.random(5_000) + 0.3 * y, 2)  # rounded: many ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert accuracy(y, s) == pytest.approx(skm.accuracy_score(y, s >= 0.5))
    assert f1_score(y, s) == pytest.approx(skm.f1_score(y, s >= 0.5))
    logit = s - 0.5
    assert accuracy(y, logit, threshold=0.0) == accuracy(y, s)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75  # sklearn's documented example
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert f1_score([0, 0, 0], [0.1, 0.2, 0.3]) == 0.0  # nothing positive, nothing predicted


def test_evaluate_groups_equal_filtered_subsets():
    rng = make_rng(3)
    n, m = 4_000, 6_000
    y, s = (rng.random(n) < 0.4).astype(int), rng.random(n)
    seg = rng.integers(0, 3, n)
    cu = rng.integers(0, 300, m)
    cl, cs = (rng.random(m) < 0.1).astype(int), rng.random(m)
    user_seg = rng.integers(0, 3, 300)
    groups = {f"g{j}": (seg == j, user_seg[cu] == j) for j in range(3)}
    df = metrics_table(y, s, cu, cl, cs, k=10, groups=groups)
    assert list(df.index) == ["overall", "g0", "g1", "g2"]
    for name, (tm, cm) in groups.items():
        row = df.loc[name]
        assert row["auc"] == pytest.approx(roc_auc(y[tm], s[tm]))
        assert row["accuracy"] == pytest.approx(accuracy(y[tm], s[tm]))
        assert row["f1"] == pytest.approx(f1_score(y[tm], s[tm]))
        assert row["recall@10"] == pytest.approx(recall_at_k(cu[cm], cl[cm], cs[cm], k=10))
        assert row["ndcg@10"] == pytest.approx(ndcg_at_k(cu[cm], cl[cm], cs[cm], k=10))
        assert row["n_rows"] == tm.sum()
    assert df.loc["overall", "recall@10"] == pytest.approx(recall_at_k(cu, cl, cs, k=10))
    # a group with one class gets AUC NaN, not an error
    one = metrics_table([1, 1], [0.2, 0.9], [0], [1], [0.5], k=1)
    assert np.isnan(one.loc["overall", "auc"])


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    assert roc_auc(torch.tensor([0, 1]), torch.tensor([0.1, 0.9])) == 1.0


# --------------------------------------------------------------------------- invalid input


@settings(max_examples=25, deadline=None)
@given(k=st.integers(max_value=0))
def test_k_below_one_raises(k):
    with pytest.raises(ValueError, match=f"k must be an integer >= 1, got {k}"):
        recall_at_k([0, 0], [1, 0], [0.5, 0.2], k=k)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 20), pos=st.integers(0, 19), bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nonfinite_scores_raise(n, pos, bad):
    s = np.linspace(0, 1, n)
    s[pos % n] = bad
    y = np.arange(n) % 2
    for call in (lambda: roc_auc(y, s), lambda: accuracy(y, s), lambda: ndcg_at_k(np.zeros(n), y, s, k=2)):
        with pytest.raises(ValueError, match="must be finite"):
            call()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 10), extra=st.integers(1, 5))
def test_mismatched_lengths_raise(n, extra):
    y, s = np.zeros(n, int), np.zeros(n + extra)
    with pytest.raises(ValueError, match="same length"):
        f1_score(y, s)
    with pytest.raises(ValueError, match="same length"):
        ranking_per_user(np.zeros(n), y, s, k=1)


def test_other_bad_input_raises():
    with pytest.raises(ValueError, match="only 0 and 1, got a value 2"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="needs both classes"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="must be a non-empty 1-D array"):
        accuracy([], [])
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 2.5"):
        ndcg_at_k([0], [1], [0.1], k=2.5)
    with pytest.raises(ValueError, match="threshold must be finite, got nan"):
        accuracy([0], [0.1], threshold=float("nan"))
    with pytest.raises(ValueError, match="group 'g'"):
        metrics_table([0, 1], [0.1, 0.9], [0], [1], [0.5], groups={"g": (np.ones(3, bool), np.ones(1, bool))})
