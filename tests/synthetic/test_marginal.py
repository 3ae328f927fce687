"""The DP marginal synthesizer: its accounting, its noise, its marginals at huge epsilon, bad input.

Statistical tolerances are 6 standard errors of the quantity tested, with seeded generators.
Oracles: privlab.accounting's zCDP accountant, dp_accounting's RDP accountant, and the tight
zCDP -> (epsilon, delta) conversion (Canonne, Kamath, Steinke 2020, Prop 12) written out below on a
grid of orders, inverted by bisection as private-pgm's cdp2adp.cdp_rho does.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pandas as pd
import pytest
from dp_accounting import rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import minimum_spanning_tree

from privlab.accounting import GaussianEvent, ZcdpAccountant, epsilon_from_rho, rho_from_epsilon
from privlab.datasets import load_cps1988
from privlab.synthetic import (
    CategoricalDomain,
    MarginalSynthesizer,
    NumericDomain,
    cps1988_domain,
)
from privlab.synthetic.domain import dp_numeric_domain
from privlab.synthetic.marginal import fit_table_to_margins, project_to_simplex, tight_rho_from_epsilon

Z = 6.0
DELTA = 1e-6


@pytest.fixture(scope="module")
def cps():
    return load_cps1988().sample(3000, random_state=0).reset_index(drop=True)


def declared_categories():
    """Only the categorical columns' public domains: the numeric ranges are then estimated with DP."""
    return {c: d for c, d in cps1988_domain().items() if isinstance(d, CategoricalDomain)}


def cks_epsilon(rho, delta):
    """Canonne-Kamath-Steinke Prop 12 for the RDP curve rho * alpha, minimised on a fine grid of alpha."""
    alpha = 1 + np.geomspace(1e-6, 1e6, 200_001)
    return float(np.min(rho * alpha + np.log1p(-1 / alpha) - (math.log(delta) + np.log(alpha)) / (alpha - 1)))


def cks_rho(epsilon, delta):
    """The largest rho with cks_epsilon(rho, delta) <= epsilon, by bisection (private-pgm's cdp_rho)."""
    lo, hi = 0.0, epsilon + 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cks_epsilon(mid, delta) <= epsilon else (lo, mid)
    return lo


def fitted(df, epsilon, seed=0, **kw):
    kw.setdefault("domain", cps1988_domain())
    return MarginalSynthesizer(epsilon=epsilon, delta=DELTA, **kw).fit(df, rng=seed)


# ----------------------------------------------------------------------------- accounting


@pytest.mark.parametrize(("epsilon", "public"), [(0.1, True), (1.0, True), (10.0, True), (1.0, False), (10.0, False)])
def test_recorded_noise_accounts_for_the_claimed_epsilon(cps, epsilon, public):
    m = fitted(cps, epsilon, domain=cps1988_domain() if public else declared_categories())
    rep = m.privacy_report()
    ms = rep.measurements
    # recompute rho from what was recorded: 1/(2 sigma^2) per Gaussian, eps0^2/8 per selection
    rho = sum(1 / (2 * x.sigma**2) for x in ms if x.sigma is not None)
    rho += sum(x.epsilon**2 / 8 for x in ms if x.epsilon is not None)
    assert rho == pytest.approx(rep.rho_total, rel=1e-12)
    # the tight conversion spends the budget: within it, and not more than 0.1 % below it
    eps = cks_epsilon(rho, DELTA)
    assert eps <= epsilon * (1 + 1e-6) and eps >= 0.999 * epsilon
    assert rep.epsilon == pytest.approx(eps, rel=1e-5)
    assert rep.epsilon <= epsilon and rep.within_budget
    d = cps.shape[1]
    assert sum(x.step == "one_way" for x in ms) == d
    assert sum(x.step == "select" for x in ms) == d - 1 == sum(x.step == "two_way" for x in ms)
    assert sum(x.step == "domain" for x in ms) == (0 if public else 3)
    # MST's split: equal thirds after the domain share
    third = (rep.rho_budget * (1 if public else 0.9)) / 3
    for step in ("one_way", "select", "two_way"):
        assert rep.rho_by_step[step] == pytest.approx(third, rel=1e-9)


def test_accounting_agrees_with_two_oracles(cps):
    rep = fitted(cps, 1.0).privacy_report()
    ours = ZcdpAccountant(conversion="optimal")
    oracle = rdp.RdpAccountant()
    for x in rep.measurements:
        if x.sigma is not None:
            ours.compose(GaussianEvent(x.sigma))
            oracle.compose(dp_accounting.GaussianDpEvent(x.sigma))
        else:  # an eps0-bounded-range mechanism is (eps0^2/8)-zCDP, the zCDP of a Gaussian with sigma 2/eps0
            ours.compose(GaussianEvent(2 / x.epsilon))
            oracle.compose(dp_accounting.ZCDpEvent(x.epsilon**2 / 8))
    assert ours.get_epsilon(DELTA) == pytest.approx(rep.epsilon, rel=1e-9)
    # dp_accounting applies the same tight conversion on a finite list of orders: never below ours, and close
    assert rep.epsilon <= oracle.get_epsilon(DELTA) <= 1.02 * rep.epsilon
    # the classic conversion (Bun-Steinke Prop 1.3) of the same rho certifies more than the target
    assert epsilon_from_rho(rho=rep.rho_total, delta=DELTA) > 1.1 * rep.epsilon_target


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 3.0, 10.0, 100.0])
def test_budget_is_the_tight_conversion_inverted(epsilon):
    rho = tight_rho_from_epsilon(epsilon=epsilon, delta=DELTA)
    assert rho == pytest.approx(cks_rho(epsilon, DELTA), rel=1e-4)
    assert rho > rho_from_epsilon(epsilon=epsilon, delta=DELTA)  # more budget than the classic inversion
    # MST's reference value at epsilon = 1, delta = 1e-6 (private-pgm cdp_rho): 0.0244
    if epsilon == 1.0:
        assert round(rho, 4) == 0.0244


def test_rho_epsilon_conversions_invert_each_other():
    for eps in (1e-3, 0.5, 1.0, 10.0, 100.0):
        for delta in (1e-12, 1e-6, 0.1):
            rho = rho_from_epsilon(epsilon=eps, delta=delta)
            assert epsilon_from_rho(rho=rho, delta=delta) == pytest.approx(eps, rel=1e-9)


def test_noise_has_the_claimed_standard_deviation(cps):
    """Residuals of the noisy 1-way and 2-way counts over many fits are N(0, sigma^2), sigma from epsilon."""
    eps, d = 1.0, cps.shape[1]
    rho = cks_rho(eps, DELTA)
    sigma_1, sigma_2 = math.sqrt(3 * d / (2 * rho)), math.sqrt(3 * (d - 1) / (2 * rho))
    z1, z2 = [], []
    for seed in range(60):
        m = fitted(cps, eps, seed=seed)
        for col, y in m.noisy_one_way_.items():
            true = np.bincount(m._encode(cps[col], m.domain_[col], col), minlength=y.size)
            z1.append((y - true) / sigma_1)
        for (a, b), y in m.noisy_two_way_.items():
            ca = m._encode(cps[a], m.domain_[a], a)
            cb = m._encode(cps[b], m.domain_[b], b)
            true = np.bincount(ca * y.shape[1] + cb, minlength=y.size).reshape(y.shape)
            z2.append(((y - true) / sigma_2).ravel())
    for z in (np.concatenate(z1), np.concatenate(z2)):
        n = z.size
        assert abs(z.mean()) < Z / math.sqrt(n)
        assert abs(z.var() - 1) < Z * math.sqrt(2 / n)


# ----------------------------------------------------------------------------- fidelity at huge epsilon


def test_huge_epsilon_reproduces_one_and_two_way_marginals(cps):
    m = fitted(cps, 1e6)
    codes = {c: m._encode(cps[c], m.domain_[c], c) for c in cps.columns}
    for c, p in m.marginals_.items():
        np.testing.assert_allclose(p, np.bincount(codes[c], minlength=p.size) / len(cps), atol=1e-5)
    for (a, b), t in m.tables_.items():
        true = np.bincount(codes[a] * t.shape[1] + codes[b], minlength=t.size).reshape(t.shape) / len(cps)
        np.testing.assert_allclose(t, true, atol=1e-5)
    # the selected tree is the maximum spanning tree of the scores (selection is near-deterministic)
    cols = list(cps.columns)
    w = np.zeros((len(cols), len(cols)))
    top = max(m.selection_scores_.values())
    for (a, b), s in m.selection_scores_.items():
        w[cols.index(a), cols.index(b)] = top + 1 - s
    best = {frozenset((cols[i], cols[j])) for i, j in zip(*minimum_spanning_tree(w).nonzero())}
    assert {frozenset(e) for e in m.tree_} == best
    # sampled records: 1-way and tree-edge 2-way frequencies within 6 standard errors
    n = 20_000
    syn = m.sample(n, rng=1, n_is_public=True)
    for c, p in m.marginals_.items():
        f = np.bincount(m._encode(syn[c], m.domain_[c], c), minlength=p.size) / n
        assert np.all(np.abs(f - p) <= Z * np.sqrt(p * (1 - p) / n) + 1e-12)
    for (a, b), t in m.tables_.items():
        sa, sb = m._encode(syn[a], m.domain_[a], a), m._encode(syn[b], m.domain_[b], b)
        f = np.bincount(sa * t.shape[1] + sb, minlength=t.size).reshape(t.shape) / n
        assert np.all(np.abs(f - t) <= Z * np.sqrt(t * (1 - t) / n) + 1e-12)


def test_sample_keeps_columns_dtypes_and_ranges(cps):
    m = fitted(cps, 1.0)
    syn = m.sample(500, rng=3, n_is_public=True)
    assert list(syn.columns) == list(cps.columns)
    assert syn.dtypes.equals(cps.dtypes)  # load_cps1988 declares the documented categories, the domain's too
    assert syn["education"].between(0, 18).all() and syn["wage"].between(50, 20_000).all()
    pd.testing.assert_frame_equal(syn, m.sample(500, rng=3, n_is_public=True))
    assert not syn.equals(m.sample(500, rng=4, n_is_public=True))


def test_fit_is_reproducible_given_its_generator(cps):
    a, b = fitted(cps, 1.0, seed=7), fitted(cps, 1.0, seed=7)
    assert a.tree_ == b.tree_
    for c in a.marginals_:
        np.testing.assert_array_equal(a.marginals_[c], b.marginals_[c])


def test_single_column_and_bool_columns():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"flag": rng.random(400) < 0.3})
    m = MarginalSynthesizer(epsilon=1e6, delta=DELTA).fit(df, rng=0)
    assert m.tree_ == [] and m.privacy_report().rho_by_step.keys() == {"one_way"}
    p = m.sample(10_000, rng=1, n_is_public=True)["flag"].mean()
    assert abs(p - df["flag"].mean()) < Z * math.sqrt(0.25 / 10_000)


def test_dp_range_estimate_covers_the_data_at_large_epsilon():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 101, 5000)
    dom, _ = dp_numeric_domain(x, sigma=0.01, rng=rng, bins=200, integer=True)
    assert dom.integer and dom.edges[0] == -0.5 and dom.edges[-1] == 127.5 and dom.size == 128
    y = rng.lognormal(6, 1, 5000)
    dom, _ = dp_numeric_domain(y, sigma=0.01, rng=rng, bins=16, integer=False)
    assert dom.edges[0] <= y.min() and dom.edges[-1] >= y.max() and dom.size == 16
    assert np.allclose(np.diff(np.log(dom.edges)), np.log(dom.edges[1] / dom.edges[0]))  # log-spaced


def test_domain_helpers():
    d = NumericDomain.integers(-6, 64, max_bins=16)
    vals = d.decode(d.encode(np.arange(-6, 65)), np.random.default_rng(0))
    assert np.array_equal(d.encode(vals), d.encode(np.arange(-6, 65)))
    assert NumericDomain.log(1, 1000, 50, integer=True).integer
    np.testing.assert_allclose(project_to_simplex(np.array([5.0, -2.0, 1.0, 0.5]), total=4.0).sum(), 4.0)
    t = fit_table_to_margins(np.ones((3, 2)), np.array([1.0, 2.0, 3.0]), np.array([4.0, 2.0]), 200)
    np.testing.assert_allclose(t.sum(1), [1, 2, 3])
    np.testing.assert_allclose(t.sum(0), [4, 2])


# ----------------------------------------------------------------------------- bad input

bad_numbers = st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf")),
                        st.just(-float("inf")), st.text(max_size=3), st.none())


@settings(max_examples=40, deadline=None)
@given(bad_numbers)
def test_invalid_epsilon_is_refused(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        MarginalSynthesizer(epsilon=epsilon, delta=DELTA)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(float("nan"))))
def test_invalid_delta_is_refused(delta):
    with pytest.raises(ValueError, match="delta"):
        MarginalSynthesizer(epsilon=1.0, delta=delta)


def test_bad_frames_and_values_are_refused(cps):
    syn = MarginalSynthesizer(epsilon=1.0, delta=DELTA, domain=cps1988_domain())
    with pytest.raises(ValueError, match="at least one row"):
        syn.fit(cps.iloc[:0], rng=0)
    with pytest.raises(ValueError, match="DataFrame"):
        syn.fit(cps.to_numpy(), rng=0)
    with pytest.raises(ValueError, match="wage' of .* has missing values \\(not counted"):
        syn.fit(cps.assign(wage=np.nan), rng=0)
    with pytest.raises(ValueError, match="missing"):
        syn.fit(cps.assign(wage=cps["wage"].where(cps.index > 0)), rng=0)
    unseen = cps.astype({"region": object})
    unseen.loc[0, "region"] = "pacific"
    with pytest.raises(ValueError, match="has values outside its public domain") as err:
        syn.fit(unseen, rng=0)
    assert "pacific" not in str(err.value) and "1 value" not in str(err.value)  # no value, no count
    with pytest.raises(ValueError, match="no public domain"):
        MarginalSynthesizer(epsilon=1.0, delta=DELTA).fit(cps.astype({"region": object}), rng=0)
    with pytest.raises(ValueError, match="not in the data"):
        MarginalSynthesizer(epsilon=1.0, delta=DELTA, domain={"age": (0, 99)}).fit(cps, rng=0)
    with pytest.raises(ValueError, match="fit"):
        syn.sample(3)
    with pytest.raises(ValueError, match="fit"):
        MarginalSynthesizer(epsilon=1.0, delta=DELTA).privacy_report()
    with pytest.raises(ValueError, match="n must be"):
        fitted(cps, 1.0).sample(0, n_is_public=True)
    with pytest.raises(ValueError, match="split"):
        MarginalSynthesizer(epsilon=1.0, delta=DELTA, split=(1, 0, 1))
    with pytest.raises(ValueError, match="distinct"):
        CategoricalDomain(("a", "a"))


# ----------------------------------------------------------------------------- issue 13, defect 5


def test_inferred_categories_are_not_a_public_domain():
    # one record's rare value: pd.Categorical(values) and astype("category") make it a category, which the old
    # code copied into the synthetic output's dtype (a distinguisher with epsilon = infinity)
    values = ["a", "b"] * 500 + ["RARE-7f3a"]
    for df in (pd.DataFrame({"c": pd.Categorical(values)}), pd.DataFrame({"c": values}).astype("category")):
        with pytest.raises(ValueError, match="Declare them") as err:
            MarginalSynthesizer(epsilon=1.0, delta=DELTA).fit(df, rng=0)
        assert "RARE-7f3a" not in str(err.value) and "domain={'c'" in str(err.value)
    # declared: the output has the declared categories, whatever the input's dtype holds
    neighbours = (pd.DataFrame({"c": pd.Categorical(values[:-1])}), pd.DataFrame({"c": pd.Categorical(values)}))
    with pytest.raises(ValueError, match="outside its public domain"):
        MarginalSynthesizer(epsilon=1.0, delta=DELTA, domain={"c": ["a", "b"]}).fit(neighbours[1], rng=0)
    cats = []
    for df in (neighbours[0], pd.DataFrame({"c": pd.Categorical(values[:-1], categories=["a", "b", "RARE-7f3a"])})):
        m = MarginalSynthesizer(epsilon=1.0, delta=DELTA, domain={"c": ["a", "b", "z"]}).fit(df, rng=0)
        cats.append(list(m.sample(rng=1)["c"].cat.categories))
    assert cats == [["a", "b", "z"], ["a", "b", "z"]]  # the same on both: nothing read off the data


def test_sample_size_is_a_dp_estimate_or_declared_public(cps):
    m = fitted(cps, 1.0)
    # the old code released len(train) exactly through sample(len(train))
    with pytest.raises(ValueError, match="releases N exactly"):
        m.sample(len(cps))
    # the DP estimate: the inverse-variance average of the noisy 1-way totals, each N + N(0, k sigma_1^2)
    rep = m.privacy_report()
    sigma_1 = next(x.sigma for x in rep.measurements if x.step == "one_way")
    sizes = np.array([m.domain_[c].size for c in cps.columns])
    sd = sigma_1 / math.sqrt(np.sum(1.0 / sizes))  # 1 / sqrt(sum_c 1 / (k_c sigma_1^2))
    out = m.sample(rng=2)
    assert len(out) == max(1, round(m.n_estimate_)) and abs(len(out) - len(cps)) <= Z * sd + 1
    estimates = [fitted(cps, 1.0, seed=s).n_estimate_ for s in range(8)]
    assert len(set(estimates)) == 8  # noisy, not N
    assert len(m.sample(123, rng=2, n_is_public=True)) == 123


def test_no_data_value_in_any_error_message(cps):
    from privlab.synthetic import evaluate_synthetic
    from privlab.synthetic.tables import restore_dtypes

    secret, number = "SECRET-5e1d", 987654.321
    frame = pd.DataFrame({"c": ["a", "b"] * 50 + [secret], "x": [1.0] * 100 + [number]})
    calls = [
        lambda: MarginalSynthesizer(epsilon=1.0, delta=DELTA, domain={"c": ["a", "b"], "x": (0, 10)}).fit(frame),
        lambda: MarginalSynthesizer(epsilon=1.0, delta=DELTA, domain={"x": (0, 10)}).fit(frame),
        lambda: MarginalSynthesizer(epsilon=1.0, delta=DELTA, domain={"x": (0, 10)}).fit(frame.astype({"c": "category"})),
        lambda: CategoricalDomain(("a", "b")).encode(frame["c"], column="c"),
        lambda: restore_dtypes(frame[["c"]], {"c": pd.CategoricalDtype(["a", "b"])}),
        lambda: evaluate_synthetic(frame.iloc[:100].assign(t=[0, 1] * 50), frame.iloc[1:].assign(t=[0, 1] * 50),
                         frame.iloc[:100].assign(t=[0, 1] * 50), target="t", rng=0),
    ]
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        assert secret not in str(err.value) and "987654" not in str(err.value), str(err.value)


def test_too_little_data_for_dp_range_estimation_is_a_clear_error():
    df = pd.DataFrame({"x": np.arange(5, dtype=float)})
    with pytest.raises(ValueError, match="pass public bounds"):
        MarginalSynthesizer(epsilon=0.1, delta=DELTA).fit(df, rng=0)
