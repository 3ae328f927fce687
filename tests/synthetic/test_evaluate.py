"""The evaluation of synthetic data on hand-built cases, the metrics against scipy, and bad input.

Statistical tolerances are 6 standard errors under the null being tested, with seeded generators.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.stats.contingency import association

from privlab.datasets import load_cps1988
from privlab.synthetic import CopySynthesizer, IndependentSynthesizer, evaluate_synthetic
from privlab.synthetic.evaluate import encode_features, gain_over_chance
from privlab.synthetic.metrics import (
    association_matrix,
    contingency_table,
    correlation_distance,
    correlation_ratio,
    cramers_v,
    holdout_test,
    ks_statistic,
    nndr,
    pearson,
    total_variation,
)

Z = 6.0


def correlated_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """x ~ N(0, 1); y = x + small noise; c depends on x; d depends on c; t (binary) on x and c."""
    x = rng.normal(size=n)
    y = x + 0.2 * rng.normal(size=n)
    c = np.where(x + 0.3 * rng.normal(size=n) > 0, "hi", "lo")
    d = np.where(rng.random(n) < np.where(c == "hi", 0.9, 0.1), "u", "v")
    t = np.where(x + (c == "hi") + rng.normal(size=n) > 0.5, "yes", "no")
    return pd.DataFrame({"x": x, "y": y, "c": pd.Categorical(c, ["hi", "lo"]), "d": d,
                         "t": pd.Categorical(t, ["no", "yes"])})


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(0)
    return correlated_table(2000, rng), correlated_table(2000, rng), correlated_table(2000, rng)


def test_identical_data_has_zero_distance(tables):
    train, hold, _ = tables
    res = evaluate_synthetic(train, hold, train.copy(), target="t", rng=0)
    assert all(v == 0 for v in res.marginal.values())
    assert res.marginal_metric == {"x": "KS", "y": "KS", "c": "TV", "d": "TV", "t": "TV"}
    assert res.correlation_frobenius == 0 and res.correlation_mean_abs == 0
    assert res.utility_synthetic == res.utility_real and res.utility_ratio == 1.0  # same data, same model seed
    assert res.train_closer_share == 1.0  # every synthetic record sits on a training record, none on a holdout one


def test_exact_copies_are_caught(tables):
    train, hold, _ = tables
    res = evaluate_synthetic(train, hold, train.sample(frac=1.0, random_state=1), target="t", rng=0)
    assert res.dcr_synthetic_median == 0 and res.nndr_mean == 0
    assert res.dcr_share == 1.0 and res.train_closer_share == 1.0
    assert 0.5 < res.nndr_holdout_mean < 1  # fresh real records: the baseline the copies fall far below
    assert res.mia_auc > 0.99  # continuous columns: no holdout record sits on a training record


def test_members_are_the_rows_the_generator_saw(tables):
    # a copy of half the training rows: against those rows it is caught; against all of
    # real_train, half the "members" were never seen and the attack AUC is diluted towards 0.5
    train, hold, _ = tables
    seen = train.iloc[: len(train) // 2]
    syn = seen.sample(frac=1.0, random_state=1)
    diluted = evaluate_synthetic(train, hold, syn, target="t", rng=0)
    exact = evaluate_synthetic(train, hold, syn, target="t", rng=0, members=seen)
    assert exact.mia_auc > 0.99 and exact.dcr_share == 1.0
    assert abs(diluted.mia_auc - 0.75) < 0.03  # 0.5 + share seen / 2
    assert exact.utility_real == diluted.utility_real  # fidelity and utility still use real_train
    with pytest.raises(ValueError):
        evaluate_synthetic(train, hold, syn, target="t", rng=0, members=seen[["x", "y"]])


def test_an_independent_sample_leaks_nothing(tables):
    train, hold, fresh = tables
    res = evaluate_synthetic(train, hold, fresh, target="t", rng=0, max_records=2000)
    n1 = n2 = 2000
    se_auc = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))  # Mann-Whitney AUC under the null
    assert abs(res.mia_auc - 0.5) < Z * se_auc
    assert abs(res.dcr_share - 0.5) < Z * math.sqrt(0.25 / 2000) + Z * se_auc  # median of holdout is estimated
    assert res.correlation_mean_abs < 0.05
    assert max(res.marginal.values()) < Z * math.sqrt(2 / 2000)  # KS and TV noise ~ 1/sqrt(n)
    # the same model trained on another sample: the gain over chance agrees with the real model's, to Z SE of
    # the difference of two AUCs (Hanley-McNeil SE of each, in quadrature, in units of the real gain)
    y = (hold["t"] == "yes").to_numpy()
    n_pos, n_neg, auc = int(y.sum()), int((~y).sum()), res.utility_real
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg))
    assert abs(res.utility_ratio - 1) < Z * math.sqrt(2) * se / (auc - 0.5)
    # Platzer-Reutterer: a fresh sample is as near the holdout as the training set (permutation SE under 0.5)
    assert abs(res.train_closer_share - 0.5) < Z * res.train_closer_se
    assert res.train_closer_se >= 0.5 / math.sqrt(res.n_queries) * 0.99  # never below the binomial SE, about
    # a fresh sample's NNDR is the holdout's (means of 2,000 ratios each, their SEs in quadrature)
    assert abs(res.nndr_mean - res.nndr_holdout_mean) < Z * math.sqrt(2) * 0.5 / math.sqrt(2000)


def test_independent_columns_lose_the_correlations(tables):
    train, hold, _ = tables
    bad = IndependentSynthesizer(seed=0).fit(train).sample(2000, rng=1)
    res = evaluate_synthetic(train, hold, bad, target="t", rng=0)
    a = res.association_real.to_numpy()
    # every real association is lost: the distance is about the real associations themselves
    iu = np.triu_indices(a.shape[0], 1)
    assert res.correlation_mean_abs == pytest.approx(np.abs(a[iu]).mean(), abs=0.05)
    assert res.correlation_mean_abs > 0.4 and res.correlation_frobenius > 1.0
    assert max(res.marginal.values()) < 0.08  # yet the marginals are right
    assert res.utility_synthetic < 0.6 < res.utility_real


def test_summary_and_frame(tables):
    train, hold, fresh = tables
    res = evaluate_synthetic(train, hold, fresh, target="x", rng=0, model="logistic")
    s = res.summary()
    assert list(s.index) == ["marginal_mean", "marginal_max", "corr_frobenius", "corr_mean_abs", "tstr_auc",
                             "trtr_auc", "utility_ratio", "nndr_mean", "nndr_holdout_mean", "dcr_share",
                             "train_closer_share", "mia_auc"]
    f = res.to_frame()
    assert f.loc["marginal[x] (KS)", "value"] == res.marginal["x"] and f.loc["mia_auc", "value"] == res.mia_auc
    assert res.target.startswith("x > ")


def test_evaluate_runs_on_cps_with_copies_caught():
    df = load_cps1988().sample(3000, random_state=0).reset_index(drop=True)
    train, hold = df.iloc[:1500], df.iloc[1500:]
    res = evaluate_synthetic(train, hold, CopySynthesizer(seed=0).fit(train).sample(1500, rng=0), target="parttime", rng=0)
    assert res.dcr_synthetic_median == 0 and res.dcr_share > 0.9 and res.mia_auc > 0.7


def test_utility_ratio_is_the_gain_over_chance(tables):
    """Not the plain AUC ratio, which stays near 0.5 / AUC_real for a table that teaches nothing."""
    train, hold, fresh = tables
    res = evaluate_synthetic(train, hold, fresh, target="t", rng=0)
    assert res.utility_ratio == pytest.approx((res.utility_synthetic - 0.5) / (res.utility_real - 0.5))
    constant = fresh.assign(t=pd.Categorical(["no"] * len(fresh), ["no", "yes"]))  # no label to learn
    useless = evaluate_synthetic(train, hold, constant, target="t", rng=0)
    assert useless.utility_synthetic == 0.5 and useless.utility_ratio == 0.0
    assert gain_over_chance(0.8, 0.8) == 1.0 and math.isnan(gain_over_chance(0.6, 0.5))
    assert gain_over_chance(0.4, 0.9) == pytest.approx(-0.25)  # worse than chance: negative


def test_holdout_baselines_match_a_direct_computation(tables):
    """The holdout NNDR and the holdout test, recomputed from the encoded frames (all rows: no subsampling)."""
    train, hold, fresh = tables
    syn = CopySynthesizer(noise=0.5, seed=0).fit(train).sample(len(train), rng=2)
    res = evaluate_synthetic(train, hold, syn, target="t", rng=0, max_records=len(train))
    num, cats = ["x", "y"], {"c": ["hi", "lo"], "d": ["u", "v"], "t": ["no", "yes"]}
    x_train, x_hold, x_syn = encode_features([train, hold, syn], num, cats, reference=train)
    assert res.nndr_holdout_mean == pytest.approx(nndr(x_train, x_hold).mean())
    to_train = np.sort(np.linalg.norm(x_syn[:, None] - x_train[None], axis=2), axis=1)[:, 0]
    to_hold = np.sort(np.linalg.norm(x_syn[:, None] - x_hold[None], axis=2), axis=1)[:, 0]
    assert res.train_closer_share == pytest.approx(np.mean(to_train < to_hold) + 0.5 * np.mean(to_train == to_hold))
    assert 0.5 < res.train_closer_share < 1  # jittered copies: nearer their sources, not on them


def test_holdout_test_standard_error_is_the_permutation_one():
    """The closed-form null SE against relabelling the pooled rows at random, many times."""
    rng = np.random.default_rng(5)
    train, hold = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    queries = rng.normal(size=(400, 2)) * 0.3  # crowded: many queries share a nearest row
    share, se = holdout_test(train, hold, queries)
    pool = np.vstack([train, hold])
    nearest = np.argmin(((queries[:, None] - pool[None]) ** 2).sum(axis=2), axis=1)
    sims = []
    for _ in range(4000):
        label = np.zeros(len(pool), bool)
        label[rng.permutation(len(pool))[:300]] = True
        sims.append(label[nearest].mean())
    assert share == pytest.approx(np.mean(nearest < 300))  # continuous data: no ties
    # the simulated SD has relative SE about 1/sqrt(2 * 4000)
    assert se == pytest.approx(np.std(sims, ddof=1), rel=Z / math.sqrt(2 * 4000))
    assert se > 1.5 * 0.5 / math.sqrt(len(queries))  # crowding widens it beyond the binomial
    with pytest.raises(ValueError, match="same number of rows"):
        holdout_test(train, hold[:-1], queries)


def test_copy_records_its_sources(tables):
    train, _, _ = tables
    gen = CopySynthesizer(noise=0.1, seed=0).fit(train)
    out = gen.sample(500, rng=3)
    src = train.iloc[gen.source_rows_].reset_index(drop=True)
    assert out[["c", "d", "t"]].equals(src[["c", "d", "t"]])  # categoricals copied exactly
    assert np.abs(out["x"] - src["x"]).max() < Z * 0.1 * train["x"].std(ddof=0)  # jitter of 0.1 SD


# ----------------------------------------------------------------------------- metrics against oracles


def test_metrics_against_scipy_and_hand_values():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=300), rng.normal(0.5, 1, size=300)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)
    assert total_variation(["a"] * 3 + ["b"], ["b"] * 2 + ["c"] * 2) == pytest.approx(0.75)
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0) and pearson(a, np.ones(300)) == 0.0
    x, y = rng.choice(["p", "q", "r"], 500), rng.choice(["s", "t"], 500)
    table = pd.crosstab(x, y).to_numpy()
    assert cramers_v(x, y, bias_corrected=False) == pytest.approx(association(table, method="cramer"))
    ours = pd.DataFrame(contingency_table(x, y), index=pd.unique(x), columns=pd.unique(y))
    pd.testing.assert_frame_equal(ours.sort_index().sort_index(axis=1), pd.crosstab(x, y), check_names=False)
    assert cramers_v(x, y) <= cramers_v(x, y, bias_corrected=False)
    g = rng.choice(["u", "v", "w"], 500)
    v = rng.normal(size=500) + (g == "u")
    frame = pd.DataFrame({"g": g, "v": v})
    between = (frame.groupby("g")["v"].agg(["count", "mean"]).pipe(
        lambda t: (t["count"] * (t["mean"] - v.mean()) ** 2).sum()))
    assert correlation_ratio(g, v) == pytest.approx(math.sqrt(between / ((v - v.mean()) ** 2).sum()))
    assert correlation_ratio(g, np.ones(500)) == 0.0
    m = association_matrix(frame, ["v"])
    assert m.loc["g", "v"] == m.loc["v", "g"] == pytest.approx(correlation_ratio(g, v))
    assert correlation_distance(np.eye(2), np.array([[1, 0.5], [0.5, 1]])) == pytest.approx((math.sqrt(0.5), 0.5))
    ref = np.array([[0.0], [1.0], [3.0]])
    np.testing.assert_allclose(nndr(ref, np.array([[0.0], [0.5], [2.5]])), [0.0, 1.0, 1 / 3])


def test_bias_corrected_cramers_v_is_near_zero_for_independent_columns():
    rng = np.random.default_rng(4)
    x, y = rng.choice(list("abcd"), 5000), rng.choice(list("xyz"), 5000)
    assert cramers_v(x, y) < 0.03 and cramers_v(x, y, bias_corrected=False) > cramers_v(x, y)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused(tables):
    train, hold, fresh = tables
    with pytest.raises(ValueError, match="at least one row"):
        evaluate_synthetic(train, hold, fresh.iloc[:0], target="t", rng=0)
    with pytest.raises(ValueError, match="missing"):
        evaluate_synthetic(train, hold.drop(columns="y"), fresh, target="t", rng=0)
    with pytest.raises(ValueError, match="has missing values"):
        evaluate_synthetic(train, hold, fresh.assign(x=np.nan), target="t", rng=0)
    unseen = fresh.astype({"d": object})
    unseen.loc[0, "d"] = "w"
    with pytest.raises(ValueError, match=r"has values not in real_train's categories"):
        evaluate_synthetic(train, hold, unseen, target="t", rng=0)
    with pytest.raises(ValueError, match=r"column 'd' of members has values not in real_train's categories \(neither"):
        evaluate_synthetic(train, hold, fresh, target="t", rng=0, members=unseen)  # was one-hot as the last level
    with pytest.raises(ValueError, match="numeric in real_train"):
        evaluate_synthetic(train, hold, fresh.assign(x="a"), target="t", rng=0)
    with pytest.raises(ValueError, match="not a column"):
        evaluate_synthetic(train, hold, fresh, target="z", rng=0)
    three = train.assign(d=np.resize(["u", "v", "w"], len(train)))
    with pytest.raises(ValueError, match="two values"):
        evaluate_synthetic(three, hold, fresh, target="d", rng=0)
    with pytest.raises(ValueError, match="one class"):
        evaluate_synthetic(train, hold.assign(t=pd.Categorical(["no"] * len(hold), ["no", "yes"])), fresh, target="t", rng=0)
    with pytest.raises(ValueError, match="model"):
        evaluate_synthetic(train, hold, fresh, target="t", rng=0, model="forest")
    with pytest.raises(ValueError, match="rng"):
        evaluate_synthetic(train, hold, fresh, target="t", rng="seed")


def test_real_only_results_are_reused_not_changed(tables, monkeypatch):
    """The real model's AUC and the real association matrix are computed once per real data and seed:
    the second evaluation reuses them and equals a fresh computation; other real data or seeds refit."""
    import privlab.synthetic.evaluate as ev

    train, hold, syn = tables
    ev._REAL_CACHE.clear()
    fresh = [evaluate_synthetic(train, hold, s, target="t", rng=3) for s in (syn, train.iloc[::2])]
    calls = []
    real_fit = ev._fit_predict_auc
    monkeypatch.setattr(ev, "_fit_predict_auc", lambda *a: calls.append(1) or real_fit(*a))
    again = [evaluate_synthetic(train, hold, s, target="t", rng=3) for s in (syn, train.iloc[::2])]
    assert len(calls) == 2  # the synthetic models only: the real one came from the cache
    for a, b in zip(fresh, again):
        assert a.summary().equals(b.summary())
        pd.testing.assert_frame_equal(a.association_real, b.association_real)
    ev._REAL_CACHE.clear()
    calls.clear()
    evaluate_synthetic(train, hold, syn, target="t", rng=3)
    evaluate_synthetic(train, hold, syn, target="t", rng=4)  # another seed: the real model is refitted
    changed = train.copy()
    changed.loc[0, "x"] += 1.0
    evaluate_synthetic(changed, hold, syn, target="t", rng=3)  # other real data: refitted
    assert len(calls) == 6
