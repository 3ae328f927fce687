"""TopDown in miniature: projections, rounding, consistency and the measurement noise."""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from privlab import topdown
from privlab.config import make_rng


@pytest.mark.parametrize("seed", range(5))
def test_simplex_projection_matches_a_generic_solver(seed):
    v = make_rng(seed).normal(size=6) * 5
    s = 7.0
    x = topdown.project_to_simplex(v, total=s)
    res = minimize(lambda z: np.sum((z - v) ** 2), np.full(6, s / 6), method="SLSQP",
                   bounds=[(0, None)] * 6, constraints=[{"type": "eq", "fun": lambda z: z.sum() - s}],
                   options={"ftol": 1e-12, "maxiter": 500})
    assert np.all(x >= 0) and np.isclose(x.sum(), s)
    # the closed form is at least as close to v as the generic solver's answer, and agrees with it
    assert np.sum((x - v) ** 2) <= np.sum((res.x - v) ** 2) + 1e-9
    np.testing.assert_allclose(x, res.x, atol=1e-3)


def test_rounding_keeps_the_sum_and_stays_within_one():
    x = make_rng(1).uniform(0, 5, size=50)
    x *= 100 / x.sum()
    r = topdown.round_keeping_sum(x, total=100)
    assert r.sum() == 100 and np.all(np.abs(r - x) < 1)


DOMAINS = {"region": list("ab"), "area": list("xyz")}
CELLS = ["u", "v", "w"]


def _toy_frame():
    rng = make_rng(2)
    return pd.DataFrame({"region": rng.choice(list("ab"), 3000), "area": rng.choice(list("xyz"), 3000),
                         "cell": rng.choice(CELLS, 3000, p=[0.9, 0.08, 0.02])})


def _toy():
    return topdown.build_hierarchy(_toy_frame(), levels=["region", "area"], cell="cell", level_domains=DOMAINS,
                                   cell_domain=CELLS)


def test_hierarchy_counts_match_a_groupby_and_parents_are_consistent():
    df, h = _toy_frame(), _toy()
    assert [c.shape for c in h.counts] == [(1, 3), (2, 3), (6, 3)]
    full = df.groupby(["region", "area", "cell"]).size()
    for j, name in enumerate(h.names[2]):
        r, a = name.split(" / ")
        assert h.counts[2][j].tolist() == [int(full.get((r, a, c), 0)) for c in CELLS]
    for level in (1, 2):
        for p in range(h.counts[level - 1].shape[0]):
            np.testing.assert_array_equal(h.counts[level][h.parent[level] == p].sum(0), h.counts[level - 1][p])


def test_hierarchy_shape_comes_from_the_public_domain_not_the_data():
    # a neighbour that empties a node or a cell must not change the shape of the release
    df = _toy_frame()
    emptied = df[~((df["region"] == "b") & (df["area"] == "z")) & (df["cell"] != "w")]
    h = topdown.build_hierarchy(emptied, levels=["region", "area"], cell="cell", level_domains=DOMAINS,
                                cell_domain=CELLS)
    assert [c.shape for c in h.counts] == [c.shape for c in _toy().counts]
    assert h.names == _toy().names and h.cells == CELLS
    assert h.counts[2][h.names[2].index("b / z")].sum() == 0 and h.counts[0][0, 2] == 0
    with pytest.raises(ValueError, match="public domain"):
        topdown.build_hierarchy(df.assign(area="q"), levels=["region", "area"], cell="cell",
                                level_domains=DOMAINS, cell_domain=CELLS)
    with pytest.raises(ValueError, match="level_domains"):
        topdown.build_hierarchy(df, levels=["region", "area"], cell="cell", level_domains={"region": ["a", "b"]},
                                cell_domain=CELLS)


def test_release_is_consistent_nonnegative_integer_with_the_invariant_total():
    h = _toy()
    _, rel = topdown.topdown(h, rho_per_level=[0.01, 0.01, 0.01], rng=make_rng(3))
    assert rel[0].sum() == h.counts[0].sum()
    for level in (1, 2):
        assert np.all(rel[level] >= 0) and rel[level].dtype.kind == "i"
        for p, row in enumerate(rel[level - 1]):
            np.testing.assert_array_equal(rel[level][h.parent[level] == p].sum(axis=0), row)


def test_measurement_noise_has_the_calibrated_variance():
    h = _toy()
    rho = 0.02
    diffs = np.concatenate([
        (topdown.topdown(h, rho_per_level=[rho] * 3, rng=make_rng(10 + i))[0][2] - h.counts[2]).ravel()
        for i in range(300)])
    # discrete Gaussian variance is slightly below sigma^2 = 1 / (2 rho) = 25; 5,400 draws: 2% precision
    assert abs(diffs.var() / 25 - 1) < 0.06


def test_topdown_needs_one_rho_per_level():
    with pytest.raises(ValueError, match="one rho per level"):
        topdown.topdown(_toy(), rho_per_level=[0.1], rng=make_rng(0))


@pytest.mark.parametrize("rho", [0.02, 6e-7, 4e-7, 1e-9])
def test_the_noise_variance_is_never_below_one_over_two_rho(monkeypatch, rho):
    """A tiny rho once became 1e-6 (half the noise: 6e-7) or 0 (a ZeroDivisionError: 4e-7) when
    rounded to a fraction with denominator 10^6; now sigma^2 is rounded up instead."""
    from fractions import Fraction

    seen = []
    real = topdown.sample_discrete_gaussian
    monkeypatch.setattr(topdown, "sample_discrete_gaussian",
                        lambda sigma2, **kw: (seen.append(sigma2), real(sigma2, **kw))[1])
    topdown.topdown(_toy(), rho_per_level=[rho] * 3, rng=make_rng(0))
    want = 1 / (2 * Fraction(rho))
    assert len(seen) == 3 and all(want <= s <= want + Fraction(1, 10**6) for s in seen), (seen, float(want))


@pytest.mark.parametrize("v, total, match", [
    (np.array([1.0, np.nan]), 1.0, "finite"),
    (np.array([1.0, np.inf]), 1.0, "finite"),
    (np.array([]), 1.0, "empty"),
    (np.array([1.0, 2.0]), -1.0, "total"),
    (np.array([1.0, 2.0]), float("nan"), "total"),
    (np.array([1.0, 2.0]), True, "total"),
])
def test_project_to_simplex_refuses_bad_input(v, total, match):
    with pytest.raises(ValueError, match=match):
        topdown.project_to_simplex(v, total=total)


@pytest.mark.parametrize("x, total, match", [
    (np.array([0.5, 1.2]), 1.7, "integer"),   # was floored into a wrong sum silently
    (np.array([0.5, 1.2]), True, "integer"),
    (np.array([0.5, np.nan]), 2, "finite"),
    (np.array([-0.5, 2.5]), 2, ">= 0"),
])
def test_round_keeping_sum_refuses_bad_input(x, total, match):
    with pytest.raises(ValueError, match=match):
        topdown.round_keeping_sum(x, total=total)


def test_marginal_synthesizer_uses_the_same_projection():
    from privlab.synthetic import marginal
    assert marginal.project_to_simplex is topdown.project_to_simplex
