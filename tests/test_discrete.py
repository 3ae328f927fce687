"""Tests of privlab.discrete: exact distributions (chi-squared against the true pmf, both the vectorised
and the arbitrary-precision paths), the Bernoulli(exp(-gamma)) coin, the pmfs and the exact delta of
the discrete Gaussian against mpmath, the mechanisms (snapping's rounding and sensitivity), and invalid
input (hypothesis).

Statistical tolerances: 6 standard errors, or chi-squared p-values above 1e-4, with seeded generators.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privlab import _discrete_core as core
from privlab.config import make_rng
from privlab.discrete import (
    discrete_gaussian_delta,
    discrete_gaussian_epsilon,
    discrete_gaussian_mechanism,
    discrete_gaussian_pmf,
    discrete_laplace_mechanism,
    discrete_laplace_pmf,
    sample_bernoulli_exp,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    snapping_grid_index,
    snapping_grid_sensitivity,
    snapping_mechanism,
)
from privlab.gaussian import gaussian_delta

Z = 6.0
P_MIN = 1e-4


def chi2_pvalue(draws: np.ndarray, pmf) -> float:
    """Chi-squared goodness of fit of integer draws to a pmf symmetric about 0.

    Bins: each of -K+1..K-1, and the two tails z <= -K and z >= K, with K the largest k whose
    expected count n pmf(k) is at least 5 (so every bin expects at least 5).
    """
    n = draws.size
    k = np.arange(0, 200_000)
    K = max(int(np.flatnonzero(n * pmf(k) >= 5)[-1]), 1)
    inner = np.arange(-K + 1, K)
    p_inner = pmf(inner)
    p_tail = (1.0 - p_inner.sum()) / 2.0  # each tail, by symmetry
    middle = np.bincount(draws[np.abs(draws) < K] + K - 1, minlength=inner.size)
    observed = np.concatenate([[np.sum(draws <= -K)], middle, [np.sum(draws >= K)]])
    expected = n * np.concatenate([[p_tail], p_inner, [p_tail]])
    return float(stats.chisquare(observed, expected * n / expected.sum()).pvalue)


# ----------------------------------------------------------------------------- Bernoulli(exp(-gamma))


@pytest.mark.parametrize("gamma", [0, Fraction(1, 3), 1, Fraction(5, 2), 7, Fraction(10**20 + 1, 10**20)])
def test_bernoulli_exp_frequency(gamma):
    n = 100_000
    p = math.exp(-float(gamma))
    freq = sample_bernoulli_exp(gamma, rng=make_rng(1), size=n).mean()
    assert abs(freq - p) <= Z * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("gamma", [Fraction(1, 2), Fraction(13, 5)])
def test_bernoulli_exp_scalar_path_frequency(gamma):
    n = 20_000
    p = math.exp(-float(gamma))
    src = core.UniformIntegers(make_rng(2))
    freq = np.mean([core.bernoulli_exp(gamma.numerator, gamma.denominator, src) for _ in range(n)])
    assert abs(freq - p) <= Z * math.sqrt(p * (1 - p) / n)


def test_uniform_integers_are_uniform_for_awkward_bounds():
    # the top bits (r * 8 // m) and the low residue (r mod 3) are both uniform, to within 1/m
    src = core.UniformIntegers(make_rng(3))
    for m in (3, 2**64 + 3, 3 * 2**70 + 1):
        r = [src.below(m) for _ in range(20_000)]
        assert 0 <= min(r) and max(r) < m
        for counts in (np.bincount([v * 8 // m for v in r], minlength=8), np.bincount([v % 3 for v in r])):
            assert stats.chisquare(counts[counts > 0]).pvalue > P_MIN


# ----------------------------------------------------------------------------- exact distributions


@pytest.mark.parametrize("scale", [Fraction(1, 3), 1, Fraction(7, 2), 40])
def test_discrete_laplace_chi_squared(scale):
    draws = sample_discrete_laplace(scale, rng=make_rng(4), size=100_000)
    assert draws.dtype == np.int64 and draws.shape == (100_000,)
    assert chi2_pvalue(draws, lambda k: discrete_laplace_pmf(k, scale=scale)) > P_MIN


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), 1, Fraction(10, 3), 400])
def test_discrete_gaussian_chi_squared(sigma2):
    draws = sample_discrete_gaussian(sigma2, rng=make_rng(5), size=100_000)
    assert chi2_pvalue(draws, lambda k: discrete_gaussian_pmf(k, sigma2=sigma2)) > P_MIN


def test_chi_squared_has_power_against_rounded_continuous_noise():
    # rounding continuous noise to integers is not the discrete Gaussian: the same test rejects it
    rounded = np.round(make_rng(6).normal(0, 0.5, size=100_000)).astype(np.int64)
    assert chi2_pvalue(rounded, lambda k: discrete_gaussian_pmf(k, sigma2=Fraction(1, 4))) < 1e-10


@pytest.mark.parametrize(
    "draw, pmf",
    [
        (lambda src: core.discrete_laplace(3, 2, src), lambda k: discrete_laplace_pmf(k, scale=Fraction(3, 2))),
        (lambda src: core.discrete_gaussian(2, 1, src), lambda k: discrete_gaussian_pmf(k, sigma2=2)),
    ],
)
def test_scalar_path_chi_squared(draw, pmf):
    draws = core._scalar_loop(draw, make_rng(7), 20_000)
    assert chi2_pvalue(draws, pmf) > P_MIN


def test_huge_parameters_take_the_arbitrary_precision_path():
    s2 = Fraction(10**12, 3)  # 2 p q t^2 > 2^62: Python integers
    draws = sample_discrete_gaussian(s2, rng=make_rng(8), size=3_000).astype(float)
    var = float(s2)
    assert abs(draws.mean()) < Z * math.sqrt(var / draws.size)
    assert abs(draws.var() - var) < Z * var * math.sqrt(2 / draws.size)


def test_single_draws_secure_mode_and_shapes():
    assert isinstance(sample_discrete_laplace(2, rng=make_rng(0)), int)
    assert sample_discrete_gaussian(3, rng=make_rng(0), size=(2, 3)).shape == (2, 3)
    assert sample_bernoulli_exp(1, rng=make_rng(0), size=0).shape == (0,)
    secure = sample_discrete_laplace(Fraction(5, 2), rng=random.SystemRandom(), size=4_000)  # unseeded: loose
    assert abs(secure.mean()) < 8 * math.sqrt(2 * math.exp(-0.4) / (1 - math.exp(-0.4)) ** 2 / secure.size)


def test_same_seed_same_draws():
    a = sample_discrete_gaussian(Fraction(9, 2), rng=make_rng(11), size=1000)
    b = sample_discrete_gaussian(Fraction(9, 2), rng=make_rng(11), size=1000)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- pmfs and privacy


def test_pmfs_sum_to_one_and_match_closed_forms():
    k = np.arange(-2000, 2001)
    for t in (Fraction(1, 3), 1, 25):
        p = discrete_laplace_pmf(k, scale=t)
        assert p.sum() == pytest.approx(1.0, rel=1e-12)
        assert p[2001] / p[2002] == pytest.approx(math.exp(1 / float(t)), rel=1e-12)
    for s2 in (Fraction(1, 4), 2, 900):
        theta = mpmath.jtheta(3, 0, mpmath.exp(-1 / (2 * mpmath.mpf(float(s2)))))  # sum_k q^(k^2)
        assert discrete_gaussian_pmf(0, sigma2=s2) == pytest.approx(float(1 / theta), rel=1e-12)
        assert discrete_gaussian_pmf(k, sigma2=s2).sum() == pytest.approx(1.0, rel=1e-12)
    big = 10**13  # Poisson summation branch
    assert discrete_gaussian_pmf(0, sigma2=big) * math.sqrt(2 * math.pi * big) == pytest.approx(1.0, rel=1e-12)


def _delta_mpmath(s2: float, eps: float, d: int) -> float:
    """sum_z max(0, p(z) - e^eps p(z - d)) at 40 digits: the definition of the tight delta."""
    mpmath.mp.dps = 40
    s2m = mpmath.mpf(s2)
    norm = mpmath.nsum(lambda y: mpmath.exp(-y * y / (2 * s2m)), [-mpmath.inf, mpmath.inf])
    k = int(40 * math.sqrt(s2)) + 50
    p = [mpmath.exp(-mpmath.mpf(z) ** 2 / (2 * s2m)) / norm for z in range(-k - d, k + 1)]
    return float(sum(max(0, p[i + d] - mpmath.exp(eps) * p[i]) for i in range(len(p) - d)))


@pytest.mark.parametrize(
    "s2, eps, d", [(1, 1.0, 1), (4, 0.5, 1), (Fraction(7, 3), 0.2, 2), (100, 0.34, 1), (Fraction(1, 2), 3.0, 1)]
)
def test_discrete_gaussian_delta_against_definition(s2, eps, d):
    assert discrete_gaussian_delta(sigma2=s2, sensitivity=d, epsilon=eps) == pytest.approx(
        _delta_mpmath(float(s2), eps, d), rel=1e-9
    )


def test_discrete_gaussian_epsilon_is_tight_and_close_to_continuous():
    for s2, delta in ((4, 1e-5), (Fraction(1, 2), 1e-3), (10_000, 1e-7)):
        eps = discrete_gaussian_epsilon(sigma2=s2, delta=delta)
        assert discrete_gaussian_delta(sigma2=s2, epsilon=eps) <= delta
        assert discrete_gaussian_delta(sigma2=s2, epsilon=eps * (1 - 1e-9)) > delta
        rho = 1 / (2 * float(s2))
        assert eps <= rho + 2 * math.sqrt(rho * math.log(1 / delta))  # CKS Theorem 4 + zCDP conversion
    # for large sigma the discrete Gaussian is as private as the continuous one (CKS Section 1)
    eps = discrete_gaussian_epsilon(sigma2=10_000, delta=1e-7)
    assert gaussian_delta(sigma=100.0, sensitivity=1.0, epsilon=eps) == pytest.approx(1e-7, rel=1e-2)
    assert discrete_gaussian_epsilon(sigma2=1, delta=0.99) == 0.0


# ----------------------------------------------------------------------------- mechanisms


def test_discrete_laplace_mechanism_distribution():
    x = np.full(60_000, 17)
    out = discrete_laplace_mechanism(x, sensitivity=2, epsilon=Fraction(1, 3), rng=make_rng(9))
    assert out.dtype == np.int64
    assert chi2_pvalue(out - 17, lambda k: discrete_laplace_pmf(k, scale=6)) > P_MIN
    assert isinstance(discrete_laplace_mechanism(3, epsilon=1, rng=make_rng(0)), int)
    assert discrete_laplace_mechanism([1.0, 2.0], epsilon=1, rng=make_rng(0)).shape == (2,)


def test_discrete_gaussian_mechanism_distribution():
    out = discrete_gaussian_mechanism(np.full(60_000, -4), sigma2=Fraction(5, 2), rng=make_rng(10))
    assert chi2_pvalue(out + 4, lambda k: discrete_gaussian_pmf(k, sigma2=Fraction(5, 2))) > P_MIN


def test_snapping_mechanism_grid_noise_and_clamp():
    gamma, delta, eps = 0.25, 0.3, Fraction(1, 2)  # ceil(0.3 / 0.25) = 2 grid steps of sensitivity
    out = snapping_mechanism(np.full(60_000, 3.1), sensitivity=delta, epsilon=eps, lower=-100, upper=100,
                             grid_bits=2, rng=make_rng(12), elementwise=True)  # 60,000 scalar releases  # fmt: skip
    steps = out / gamma
    assert np.all(steps == np.round(steps))
    snapped = 3.0  # floor(3.1 / 0.25 + 1/2) = 12
    assert chi2_pvalue((steps - snapped / gamma).astype(np.int64), lambda k: discrete_laplace_pmf(k, scale=4)) > P_MIN
    clamped = snapping_mechanism(np.full(1000, 5.0), sensitivity=1, epsilon=1, lower=0, upper=0.5, rng=make_rng(0))
    one = [snapping_mechanism(3.1, sensitivity=delta, epsilon=eps, lower=-100, upper=100, grid_bits=2,
                              rng=make_rng(1000 + r)) for r in range(2000)]  # the scalar path, one at a time
    assert chi2_pvalue((np.array(one) / gamma - 12).astype(np.int64), lambda k: discrete_laplace_pmf(k, scale=4)) > P_MIN
    assert clamped.min() >= 0 and clamped.max() <= 0.5


@settings(max_examples=200, deadline=None)
@given(
    x=st.floats(-1e6, 1e6), shift=st.floats(0, 1), delta=st.floats(1e-3, 50), k=st.integers(-8, 20),
)  # fmt: skip
def test_snapping_rounding_adds_at_most_one_grid_step(x, shift, delta, k):
    # |x - x'| <= Delta  =>  |n - n'| <= ceil(Delta / gamma), the sensitivity the noise is calibrated to
    xp = x + shift * delta
    if abs(xp - x) > delta:
        return
    n = snapping_grid_index(np.array([x, xp]), -1e7, 1e7, k)
    assert abs(int(n[1]) - int(n[0])) <= math.ceil(Fraction(delta) * 2**k)


def test_snapping_vector_is_calibrated_to_the_grid_l1_sensitivity():
    # issue 13, defect 3: d = 100, gamma = 1, Delta = 1; 0.495 and 0.505 in every coordinate are L1-neighbours
    # (distance 1) whose grid indices differ by 1 in each of the 100 coordinates: ||n - n'||_1 = 100.
    # The noise must be Lap_Z(100 / eps) per coordinate (the old calibration used ceil(Delta / gamma) = 1).
    d = 100
    x, xp = np.full(d, 0.495), np.full(d, 0.505)
    n, n_p = snapping_grid_index(x, -1e3, 1e3, 0), snapping_grid_index(xp, -1e3, 1e3, 0)
    assert np.abs(n_p - n).sum() == d == snapping_grid_sensitivity(sensitivity=1.0, grid_bits=0, size=d)
    out = snapping_mechanism(x, sensitivity=1.0, epsilon=1, lower=-1e4, upper=1e4, grid_bits=0, rng=make_rng(21))
    draws = np.concatenate([snapping_mechanism(x, sensitivity=1.0, epsilon=1, lower=-1e4, upper=1e4, grid_bits=0,
                                               rng=make_rng(100 + r)) for r in range(300)]).astype(np.int64)
    # 300 releases of the vector: every coordinate is n_i + Z_i = 0 + Z_i
    assert out.shape == (d,)
    assert chi2_pvalue(draws, lambda k: discrete_laplace_pmf(k, scale=d)) > P_MIN
    with pytest.raises(ValueError, match="elementwise"):
        snapping_mechanism(x, sensitivity=1.0, epsilon=1, lower=0, upper=1, rng=make_rng(0), elementwise="yes")


@settings(max_examples=200, deadline=None)
@given(x=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6), w=st.lists(st.floats(0, 1, allow_subnormal=False), min_size=6, max_size=6),
       delta=st.floats(1e-3, 50), k=st.integers(-4, 12))  # fmt: skip
def test_snapping_vector_grid_indices_within_the_stated_sensitivity(x, w, delta, k):
    # any x' with ||x - x'||_1 <= Delta has ||n - n'||_1 <= ceil(Delta / gamma) + d - 1
    x = np.array(x)
    shift = np.array(w[: x.size]) * (np.array([1, -1, 1, -1, 1, -1])[: x.size])
    if np.abs(shift).sum() > 0:
        shift *= delta / np.abs(shift).sum()
    xp = x + shift
    if not np.all(np.isfinite(xp)) or np.abs(xp - x).sum() > delta:
        return
    n, n_p = snapping_grid_index(x, -1e7, 1e7, k), snapping_grid_index(xp, -1e7, 1e7, k)
    diff = sum(abs(int(a) - int(b)) for a, b in zip(n, n_p))
    assert diff <= snapping_grid_sensitivity(sensitivity=delta, grid_bits=k, size=x.size)


@settings(max_examples=200, deadline=None)
@given(m=st.integers(-(2**40), 2**40), k=st.integers(-10, 10), frac=st.sampled_from([0.0, 0.25, 0.5, 0.75]))
def test_grid_index_float_path_is_exact(m, k, frac):
    x = math.ldexp(m + frac, -k)  # includes exact ties (m + 1/2) gamma
    exact = math.floor(Fraction(x) * Fraction(2) ** k + Fraction(1, 2))
    assert int(snapping_grid_index(np.array([x]), -math.inf, math.inf, k)[0]) == exact


# ----------------------------------------------------------------------------- invalid input

not_rational = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), st.none(), st.booleans()
)


@settings(max_examples=60, deadline=None)
@given(bad=not_rational)
def test_non_rational_parameters_raise_naming_the_value(bad):
    for call in (
        lambda: sample_discrete_laplace(bad, rng=make_rng(0)),
        lambda: sample_discrete_gaussian(bad, rng=make_rng(0)),
        lambda: sample_bernoulli_exp(bad, rng=make_rng(0)),
        lambda: discrete_laplace_pmf(0, scale=bad),
        lambda: discrete_gaussian_pmf(0, sigma2=bad),
        lambda: discrete_laplace_mechanism(1, epsilon=bad, rng=make_rng(0)),
        lambda: snapping_mechanism(0.5, sensitivity=1, epsilon=bad, lower=0, upper=1, rng=make_rng(0)),
    ):
        with pytest.raises(ValueError, match="got") as info:
            call()
        assert repr(bad) in str(info.value)


@settings(max_examples=40, deadline=None)
@given(bad=st.one_of(st.integers(-100, 0), st.fractions(max_value=0)))
def test_zero_or_negative_scale_raises(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        sample_discrete_laplace(bad, rng=make_rng(0))
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        discrete_gaussian_pmf(1, sigma2=bad)
    with pytest.raises(ValueError):
        sample_bernoulli_exp(bad - 1, rng=make_rng(0))


@pytest.mark.parametrize(
    "call",
    [
        lambda: discrete_laplace_mechanism(1.5, epsilon=1, rng=make_rng(0)),
        lambda: discrete_laplace_mechanism([1, float("nan")], epsilon=1, rng=make_rng(0)),
        lambda: discrete_laplace_mechanism([], epsilon=1, rng=make_rng(0)),
        lambda: discrete_laplace_mechanism(1, sensitivity=0, epsilon=1, rng=make_rng(0)),
        lambda: discrete_gaussian_mechanism(1, sigma2=1, rng=None),
        lambda: sample_discrete_laplace(1, rng=42),
        lambda: sample_discrete_laplace(1, rng=make_rng(0), size=-1),
        lambda: snapping_mechanism(0.5, sensitivity=1, epsilon=1, lower=1, upper=0, rng=make_rng(0)),
        lambda: snapping_mechanism(0.5, sensitivity=float("nan"), epsilon=1, lower=0, upper=1, rng=make_rng(0)),
        lambda: snapping_mechanism(float("inf"), sensitivity=1, epsilon=1, lower=0, upper=1, rng=make_rng(0)),
        lambda: snapping_mechanism(0.5, sensitivity=1, epsilon=1, lower=0, upper=1, rng=make_rng(0), grid_bits=99),
        lambda: discrete_gaussian_delta(sigma2=1, epsilon=float("nan")),
        lambda: discrete_gaussian_epsilon(sigma2=1, delta=0),
        lambda: discrete_laplace_pmf(0.5, scale=1),
    ],
)
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("value", [2**63 + 5, np.array([2**64 - 1, 7], dtype=np.uint64), np.int64(2**63 - 1),
                                   -(2**62)])
def test_integers_that_would_wrap_in_int64_are_refused(value):
    # 2^63 + 5 came back as -9223372036854775803; a uint64 2^64 - 1 as -1
    from privlab.discrete import discrete_laplace_mechanism

    with pytest.raises(ValueError, match="below 2\\^62 in absolute value"):
        discrete_laplace_mechanism(value, epsilon=1, rng=random.Random(0))


def test_a_noisy_count_that_would_wrap_around_int64_is_refused():
    # 2^62 - 1 plus noise of scale 10^18 wrapped to a negative "count" (a review)
    from fractions import Fraction

    import numpy as np

    from privlab import discrete as di
    from privlab.config import make_rng

    with pytest.raises(ValueError, match="does not fit in int64"):
        di.discrete_laplace_mechanism(np.full(300, 2**62 - 1), epsilon=Fraction(1, 10**18), rng=make_rng(0))
    with pytest.raises(ValueError, match="epsilon"):
        di.discrete_gaussian_delta(sigma2=4, epsilon=False)
    assert di.discrete_gaussian_delta(sigma2=4, epsilon=0) > 0
