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


def _toy():
    rng = make_rng(2)
    df = pd.DataFrame({"region": rng.choice(list("ab"), 3000), "area": rng.choice(list("xyz"), 3000),
                       "cell": rng.choice(["u", "v", "w"], 3000, p=[0.9, 0.08, 0.02])})
    return topdown.build_hierarchy(df, levels=["region", "area"], cell="cell")


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
