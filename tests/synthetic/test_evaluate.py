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
from privlab.synthetic.metrics import (
    association_matrix,
    correlation_distance,
    correlation_ratio,
    cramers_v,
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


def test_exact_copies_are_caught(tables):
    train, hold, _ = tables
    res = evaluate_synthetic(train, hold, train.sample(frac=1.0, random_state=1), target="t", rng=0)
    assert res.dcr_synthetic_median == 0 and res.nndr_mean == 0
    assert res.dcr_share == 1.0
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
    assert res.utility_ratio > 0.95


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
                             "trtr_auc", "utility_ratio", "nndr_mean", "dcr_share", "mia_auc"]
    f = res.to_frame()
    assert f.loc["marginal[x] (KS)", "value"] == res.marginal["x"] and f.loc["mia_auc", "value"] == res.mia_auc
    assert res.target.startswith("x > ")


def test_evaluate_runs_on_cps_with_copies_caught():
    df = load_cps1988().sample(3000, random_state=0).reset_index(drop=True)
    train, hold = df.iloc[:1500], df.iloc[1500:]
    res = evaluate_synthetic(train, hold, CopySynthesizer(seed=0).fit(train).sample(1500, rng=0), target="parttime", rng=0)
    assert res.dcr_synthetic_median == 0 and res.dcr_share > 0.9 and res.mia_auc > 0.7


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
    with pytest.raises(ValueError, match="entirely NaN"):
        evaluate_synthetic(train, hold, fresh.assign(x=np.nan), target="t", rng=0)
    unseen = fresh.astype({"d": object})
    unseen.loc[0, "d"] = "w"
    with pytest.raises(ValueError, match="value\(s\) not in real_train's categories"):
        evaluate_synthetic(train, hold, unseen, target="t", rng=0)
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
