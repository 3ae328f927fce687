"""Tests of privlab.mechanisms: statistics of every mechanism, the analytic Gaussian against its
defining equation and two oracles (mpmath at 60 digits, dp_accounting), the exponential-mechanism
claim of chapter 2, Gumbel-max = inverse CDF in distribution, and invalid input (hypothesis).

Statistical tolerances are 6 standard errors of the quantity tested, with seeded generators.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privlab.config import make_rng
from privlab.mechanisms import (
    RandomizedResponseEstimate,
    analytic_gaussian_sigma,
    classic_gaussian_sigma,
    exponential_log_probabilities,
    exponential_mechanism,
    exponential_mechanism_gumbel,
    gaussian_delta,
    gaussian_expected_abs_error,
    gaussian_mechanism,
    laplace_expected_abs_error,
    laplace_mechanism,
    laplace_scale,
    randomized_response,
    randomized_response_estimate,
    randomized_response_keep_probability,
    randomized_response_noise_standard_error,
)

N = 200_000  # draws per statistical test
Z = 6.0  # tolerance in standard errors

# ----------------------------------------------------------------------------- Laplace


def test_laplace_scale_and_expected_error():
    assert laplace_scale(sensitivity=1, epsilon=0.5) == 2.0
    assert laplace_scale(sensitivity=0, epsilon=0.5) == 0.0
    assert laplace_expected_abs_error(sensitivity=3, epsilon=1.5) == 2.0


def test_laplace_mechanism_moments_and_distribution():
    b, loc = laplace_scale(sensitivity=2.0, epsilon=0.5), 3.0
    out = laplace_mechanism(np.full(N, loc), sensitivity=2.0, epsilon=0.5, rng=make_rng(1))
    assert out.shape == (N,)
    # mean: Var = 2 b^2; variance: Var(s^2) ~ (mu4 - sigma^4)/n = (24 - 4) b^4 / n; E|Z| = b, Var|Z| = b^2
    assert abs(out.mean() - loc) < Z * math.sqrt(2 * b**2 / N)
    assert abs(out.var(ddof=1) - 2 * b**2) < Z * math.sqrt(20 * b**4 / N)
    assert abs(np.abs(out - loc).mean() - b) < Z * b / math.sqrt(N)
    assert stats.kstest(out, stats.laplace(loc=loc, scale=b).cdf).pvalue > 1e-4


def test_laplace_scalar_and_vector_shapes():
    rng = make_rng(2)
    assert isinstance(laplace_mechanism(5, sensitivity=1, epsilon=1, rng=rng), float)
    hist = np.array([[10, 20, 30], [1, 2, 3]])
    assert laplace_mechanism(hist, sensitivity=1, epsilon=1, rng=rng).shape == (2, 3)
    assert laplace_mechanism(hist, sensitivity=0, epsilon=1, rng=rng).tolist() == hist.tolist()


def test_vector_laplace_is_iid_per_coordinate():
    b = laplace_scale(sensitivity=1, epsilon=0.25)
    noise = laplace_mechanism(np.zeros((N // 4, 4)), sensitivity=1, epsilon=0.25, rng=make_rng(3))
    assert np.all(np.abs(noise.var(axis=0, ddof=1) - 2 * b**2) < Z * math.sqrt(20 * b**4 / len(noise)))
    corr = np.corrcoef(noise, rowvar=False)[np.triu_indices(4, 1)]
    assert np.all(np.abs(corr) < Z / math.sqrt(len(noise)))


def test_seeded_runs_are_reproducible():
    a = laplace_mechanism([1.0, 2.0], sensitivity=1, epsilon=1, rng=make_rng(7))
    b = laplace_mechanism([1.0, 2.0], sensitivity=1, epsilon=1, rng=make_rng(7))
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- Gaussian calibration


def _mp_gaussian_delta(sigma, sensitivity, epsilon):
    """Theorem 8 of Balle & Wang (2018) in 60-digit arithmetic: the slow, obviously-correct oracle."""
    with mpmath.workdps(60):
        s, d, e = mpmath.mpf(sigma), mpmath.mpf(sensitivity), mpmath.mpf(epsilon)
        return float(mpmath.ncdf(d / (2 * s) - e * s / d) - mpmath.exp(e) * mpmath.ncdf(-d / (2 * s) - e * s / d))


EPSILONS = np.geomspace(0.01, 50.0, 12)
DELTAS = [1e-12, 1e-9, 1e-6, 1e-3, 0.1]


@pytest.mark.parametrize("delta", DELTAS)
def test_analytic_sigma_solves_its_defining_equation(delta):
    for eps in EPSILONS:
        sigma = analytic_gaussian_sigma(sensitivity=1.0, epsilon=eps, delta=delta)
        assert np.isfinite(sigma) and sigma > 0
        # delta(sigma*) == delta, with delta(sigma*) <= delta: the release is (eps, delta)-DP ...
        assert gaussian_delta(sigma=sigma, sensitivity=1.0, epsilon=eps) == pytest.approx(delta, rel=1e-9)
        assert gaussian_delta(sigma=sigma, sensitivity=1.0, epsilon=eps) <= delta
        # ... and sigma* is the smallest such sigma: 1e-7 less noise breaks the guarantee
        assert gaussian_delta(sigma=sigma * (1 - 1e-7), sensitivity=1.0, epsilon=eps) > delta
        # the high-precision oracle agrees that sigma* meets delta
        assert _mp_gaussian_delta(sigma, 1.0, eps) == pytest.approx(delta, rel=1e-8)
        if eps < 1:
            assert sigma <= classic_gaussian_sigma(sensitivity=1.0, epsilon=eps, delta=delta)


def test_gaussian_delta_matches_high_precision_oracle():
    for eps in [1e-3, 0.01, 0.3, 1.0, 7.0, 50.0, 200.0]:
        for sigma in [0.05, 0.3, 1.0, 4.0, 30.0, 500.0]:
            exact = _mp_gaussian_delta(sigma, 1.0, eps)
            got = gaussian_delta(sigma=sigma, sensitivity=1.0, epsilon=eps)
            if exact < 1e-280:  # below double precision: we must return a tiny number, not garbage
                assert got < 1e-250
            else:
                assert got == pytest.approx(exact, rel=1e-9, abs=0)


def test_analytic_sigma_matches_dp_accounting():
    plm = pytest.importorskip("dp_accounting.pld.privacy_loss_mechanism")
    common = pytest.importorskip("dp_accounting.pld.common")
    for eps, delta in [(0.1, 1e-6), (1.0, 1e-5), (3.0, 1e-9), (10.0, 1e-3), (50.0, 1e-12)]:
        ours = analytic_gaussian_sigma(sensitivity=2.0, epsilon=eps, delta=delta)
        params = common.DifferentialPrivacyParameters(eps, delta)
        theirs = plm.GaussianPrivacyLoss.from_privacy_guarantee(params, sensitivity=2.0).standard_deviation
        assert ours == pytest.approx(theirs, rel=1e-6)


def test_gaussian_calibration_scaling_and_edge_cases():
    s1 = analytic_gaussian_sigma(sensitivity=1.0, epsilon=2.0, delta=1e-6)
    assert analytic_gaussian_sigma(sensitivity=3.0, epsilon=2.0, delta=1e-6) == pytest.approx(3 * s1, rel=1e-12)
    assert analytic_gaussian_sigma(sensitivity=0.0, epsilon=2.0, delta=1e-6) == 0.0
    assert gaussian_delta(sigma=1.0, sensitivity=0.0, epsilon=1.0) == 0.0
    # large epsilon: no overflow of e^epsilon, still the exact root
    for eps in [100.0, 300.0, 1000.0]:
        sigma = analytic_gaussian_sigma(sensitivity=1.0, epsilon=eps, delta=1e-10)
        assert gaussian_delta(sigma=sigma, sensitivity=1.0, epsilon=eps) == pytest.approx(1e-10, rel=1e-9)
    # monotone: more privacy (smaller epsilon or delta) needs more noise
    sig = [analytic_gaussian_sigma(sensitivity=1, epsilon=e, delta=1e-5) for e in EPSILONS]
    assert np.all(np.diff(sig) < 0)
    assert classic_gaussian_sigma(sensitivity=1, epsilon=0.5, delta=1e-5) == pytest.approx(
        2 * math.sqrt(2 * math.log(1.25e5)), rel=1e-15
    )


@settings(max_examples=60, deadline=None)
@given(eps=st.floats(1e-3, 500.0), log10_delta=st.floats(-15.0, -0.31))
def test_analytic_sigma_is_the_smallest_valid_sigma(eps, log10_delta):
    delta = 10.0**log10_delta
    sigma = analytic_gaussian_sigma(sensitivity=1.0, epsilon=eps, delta=delta)
    assert gaussian_delta(sigma=sigma, sensitivity=1.0, epsilon=eps) <= delta
    assert gaussian_delta(sigma=sigma * (1 - 1e-6), sensitivity=1.0, epsilon=eps) > delta


@settings(max_examples=60, deadline=None)
@given(
    log_sigma=st.floats(-700.0, 700.0),
    log_sens=st.floats(-700.0, 700.0),
    eps=st.floats(1e-300, 1e6),
)
def test_gaussian_delta_is_a_probability_and_never_fails(log_sigma, log_sens, eps):
    d = gaussian_delta(sigma=math.exp(log_sigma), sensitivity=math.exp(log_sens), epsilon=eps)
    assert 0.0 <= d <= 1.0
    assert gaussian_delta(sigma=2 * math.exp(log_sigma), sensitivity=math.exp(log_sens), epsilon=eps) <= d


@pytest.mark.parametrize("eps", [1.0, 1.5, 50.0])
def test_classic_gaussian_refuses_epsilon_at_least_one(eps):
    with pytest.raises(ValueError, match=r"epsilon < 1.*Theorem A\.1.*analytic_gaussian_sigma"):
        classic_gaussian_sigma(sensitivity=1, epsilon=eps, delta=1e-5)
    with pytest.raises(ValueError, match="epsilon < 1"):
        gaussian_mechanism(0.0, sensitivity=1, epsilon=eps, delta=1e-5, rng=make_rng(0), calibration="classic")


# ----------------------------------------------------------------------------- Gaussian mechanism


@pytest.mark.parametrize(("calibration", "eps"), [("analytic", 2.0), ("analytic", 0.5), ("classic", 0.5)])
def test_gaussian_mechanism_moments(calibration, eps):
    sigma = {"analytic": analytic_gaussian_sigma, "classic": classic_gaussian_sigma}[calibration](
        sensitivity=1.5, epsilon=eps, delta=1e-6
    )
    out = gaussian_mechanism(
        np.full(N, -2.0), sensitivity=1.5, epsilon=eps, delta=1e-6, rng=make_rng(4), calibration=calibration
    )
    assert abs(out.mean() + 2.0) < Z * sigma / math.sqrt(N)
    assert abs(out.var(ddof=1) - sigma**2) < Z * sigma**2 * math.sqrt(2 / (N - 1))
    expected_abs = gaussian_expected_abs_error(sigma=sigma)  # Var|Z| = sigma^2 (1 - 2/pi)
    assert abs(np.abs(out + 2.0).mean() - expected_abs) < Z * sigma * math.sqrt((1 - 2 / math.pi) / N)
    assert stats.kstest(out, stats.norm(loc=-2.0, scale=sigma).cdf).pvalue > 1e-4


def test_gaussian_mechanism_shapes():
    assert isinstance(gaussian_mechanism(1, sensitivity=1, epsilon=1, delta=1e-5, rng=make_rng(0)), float)
    out = gaussian_mechanism(np.zeros((2, 3)), sensitivity=1, epsilon=1, delta=1e-5, rng=make_rng(0))
    assert out.shape == (2, 3)


# ----------------------------------------------------------------------------- exponential mechanism


def test_exponential_claim_runner_up_is_e_to_minus_2000():
    """COURSE.md chapter 2: a published demo claims 0.2% for the runner-up; the truth is about e^-2000."""
    log_p = exponential_log_probabilities([42_000, 38_000], epsilon=1.0, sensitivity=1.0)
    assert np.all(np.isfinite(log_p))
    assert abs(log_p[1] - (-2000.0)) < 1.0
    assert log_p[0] == pytest.approx(0.0, abs=1e-12)
    assert log_p[1] < math.log(0.002) - 1000  # the 0.2% claim is off by ~870 orders of magnitude
    mono = exponential_log_probabilities([42_000, 38_000], epsilon=1.0, sensitivity=1.0, monotonic=True)
    assert abs(mono[1] - (-4000.0)) < 1.0
    assert np.all(exponential_mechanism([42_000, 38_000], epsilon=1, sensitivity=1, rng=make_rng(0), size=2000) == 0)
    assert np.all(exponential_mechanism_gumbel([42_000, 38_000], epsilon=1, sensitivity=1, rng=make_rng(0), size=2000) == 0)


def test_exponential_log_probabilities_normalised_and_shift_invariant():
    u = np.array([3.0, -1.0, 7.5, 7.5, 0.0])
    log_p = exponential_log_probabilities(u, epsilon=0.7, sensitivity=2.0)
    assert np.exp(log_p).sum() == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(log_p, exponential_log_probabilities(u + 1e4, epsilon=0.7, sensitivity=2.0), atol=1e-9)
    ref = np.exp(0.7 * u / 4.0) / np.exp(0.7 * u / 4.0).sum()  # direct formula: fine for small utilities
    np.testing.assert_allclose(np.exp(log_p), ref, rtol=1e-12)


UTILITIES = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 4.0])


@pytest.mark.parametrize("sampler", [exponential_mechanism, exponential_mechanism_gumbel])
def test_exponential_samplers_match_exact_probabilities(sampler):
    p = np.exp(exponential_log_probabilities(UTILITIES, epsilon=1.0, sensitivity=1.0))
    draws = sampler(UTILITIES, epsilon=1.0, sensitivity=1.0, rng=make_rng(5), size=N)
    counts = np.bincount(draws, minlength=len(UTILITIES))
    assert np.all(np.abs(counts / N - p) < Z * np.sqrt(p * (1 - p) / N))
    assert stats.chisquare(counts, N * p).pvalue > 1e-4


def test_gumbel_and_inverse_cdf_equal_in_distribution():
    kw = dict(epsilon=2.0, sensitivity=1.0, monotonic=True)
    a = exponential_mechanism(UTILITIES, rng=make_rng(6), size=N, **kw)
    b = exponential_mechanism_gumbel(UTILITIES, rng=make_rng(7), size=N, **kw)
    table = np.stack([np.bincount(a, minlength=6), np.bincount(b, minlength=6)])
    table = table[:, table.sum(axis=0) > 0]
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_exponential_sampler_shapes():
    for sampler in (exponential_mechanism, exponential_mechanism_gumbel):
        one = sampler([1.0, 2.0, 3.0], epsilon=1, sensitivity=1, rng=make_rng(0))
        assert isinstance(one, int) and 0 <= one < 3
        many = sampler([1.0, 2.0, 3.0], epsilon=1, sensitivity=1, rng=make_rng(0), size=(4, 5))
        assert many.shape == (4, 5) and many.min() >= 0 and many.max() < 3


# ----------------------------------------------------------------------------- randomized response


def test_randomized_response_keep_probability_gives_e_eps_ratio():
    for eps in [0.1, 1.0, math.log(3), 5.0]:
        p = randomized_response_keep_probability(epsilon=eps)
        assert p / (1 - p) == pytest.approx(math.exp(eps), rel=1e-12)


def test_randomized_response_flips_at_the_right_rate():
    eps = 1.0
    bits = (make_rng(8).random(N) < 0.3).astype(int)
    reports = randomized_response(bits, epsilon=eps, rng=make_rng(9))
    assert reports.shape == bits.shape and set(np.unique(reports)) <= {0, 1}
    q = 1 - randomized_response_keep_probability(epsilon=eps)
    assert abs(np.mean(reports != bits) - q) < Z * math.sqrt(q * (1 - q) / N)


def test_randomized_response_estimate_is_unbiased_with_calibrated_standard_error():
    eps, pi, reps, n = 0.8, 0.3, 400, 2_000
    rng = make_rng(10)
    bits = (rng.random((reps, n)) < pi).astype(int)
    reports = randomized_response(bits, epsilon=eps, rng=rng)
    results = [randomized_response_estimate(row, epsilon=eps) for row in reports]
    est = np.array([r.estimate for r in results])
    se = np.array([r.standard_error for r in results])
    # unbiased: the mean of the estimates is within 6 standard errors of the truth
    assert abs(est.mean() - pi) < Z * est.std(ddof=1) / math.sqrt(reps)
    # the reported standard error matches the spread of the estimates (SE of an SD ~ sd / sqrt(2(R-1)))
    assert abs(est.std(ddof=1) - se.mean()) < Z * se.mean() / math.sqrt(2 * (reps - 1))
    # one big sample: the estimate is within 6 of its own standard errors of the truth
    big = randomized_response_estimate(reports.ravel(), epsilon=eps)
    assert isinstance(big, RandomizedResponseEstimate)
    assert abs(big.estimate - pi) < Z * big.standard_error


def test_randomized_response_noise_standard_error_matches_the_flips_alone():
    # fixed bits, only the flips random: the spread of the estimates matches the formula
    eps, reps, n = 2.0, 400, 2_000
    rng = make_rng(11)
    bits = (rng.random(n) < 0.3).astype(int)
    est = np.array([
        randomized_response_estimate(randomized_response(bits, epsilon=eps, rng=rng), epsilon=eps).estimate
        for _ in range(reps)
    ])
    se = randomized_response_noise_standard_error(epsilon=eps, n=n)
    p = randomized_response_keep_probability(epsilon=eps)
    assert se == pytest.approx(math.sqrt(p * (1 - p) / n) / (2 * p - 1), rel=1e-12)
    assert abs(est.mean() - bits.mean()) < Z * se / math.sqrt(reps)
    assert abs(est.std(ddof=1) - se) < Z * se / math.sqrt(2 * (reps - 1))
    # the plug-in (population) standard error is larger: it adds the sampling term
    plug_in = randomized_response_estimate(randomized_response(bits, epsilon=eps, rng=rng), epsilon=eps)
    assert plug_in.standard_error > 1.1 * se  # 1.15 here
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            randomized_response_noise_standard_error(epsilon=eps, n=bad)


def test_randomized_response_estimate_exact_values():
    est, se = randomized_response_estimate([1, 1, 0, 1], epsilon=math.log(3))
    assert est == pytest.approx(1.0) and se == pytest.approx(math.sqrt(0.75 * 0.25 / 4) / 0.5)


# ----------------------------------------------------------------------------- invalid input

BAD_EPSILON = st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf, -math.inf]))
BAD_DELTA = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan))
BAD_SENSITIVITY = st.one_of(st.floats(max_value=0.0, exclude_max=True), st.sampled_from([math.nan, math.inf]))
GOOD = dict(epsilon=0.5, delta=1e-5, sensitivity=1.0)


def _call(name, **override):
    """Call the public function ``name`` with valid arguments, except those in ``override``."""
    kw = {**GOOD, **override}
    e, d, s = kw["epsilon"], kw["delta"], kw["sensitivity"]
    rng = kw.get("rng", make_rng(0))
    value = u = kw.get("value", [1.0, 2.0])  # the data: a query answer, or utilities
    bits = kw.get("value", [0, 1, 1])
    calls = {
        "laplace_scale": lambda: laplace_scale(sensitivity=s, epsilon=e),
        "laplace_expected_abs_error": lambda: laplace_expected_abs_error(sensitivity=s, epsilon=e),
        "laplace_mechanism": lambda: laplace_mechanism(value, sensitivity=s, epsilon=e, rng=rng),
        "classic_gaussian_sigma": lambda: classic_gaussian_sigma(sensitivity=s, epsilon=e, delta=d),
        "analytic_gaussian_sigma": lambda: analytic_gaussian_sigma(sensitivity=s, epsilon=e, delta=d),
        "gaussian_delta": lambda: gaussian_delta(sigma=kw.get("sigma", 1.0), sensitivity=s, epsilon=e),
        "gaussian_mechanism": lambda: gaussian_mechanism(value, sensitivity=s, epsilon=e, delta=d, rng=rng),
        "exponential_log_probabilities": lambda: exponential_log_probabilities(u, epsilon=e, sensitivity=s),
        "exponential_mechanism": lambda: exponential_mechanism(u, epsilon=e, sensitivity=s, rng=rng),
        "exponential_mechanism_gumbel": lambda: exponential_mechanism_gumbel(u, epsilon=e, sensitivity=s, rng=rng),
        "randomized_response_keep_probability": lambda: randomized_response_keep_probability(epsilon=e),
        "randomized_response": lambda: randomized_response(bits, epsilon=e, rng=rng),
        "randomized_response_estimate": lambda: randomized_response_estimate(bits, epsilon=e),
    }
    return calls[name]()


WITH_EPSILON = [
    "laplace_scale", "laplace_expected_abs_error", "laplace_mechanism", "classic_gaussian_sigma",
    "analytic_gaussian_sigma", "gaussian_delta", "gaussian_mechanism", "exponential_log_probabilities",
    "exponential_mechanism", "exponential_mechanism_gumbel", "randomized_response_keep_probability",
    "randomized_response", "randomized_response_estimate",
]  # fmt: skip
WITH_DELTA = ["classic_gaussian_sigma", "analytic_gaussian_sigma", "gaussian_mechanism"]
WITH_SENSITIVITY = WITH_EPSILON[:10]
WITH_ARRAY = [
    "laplace_mechanism", "gaussian_mechanism", "exponential_log_probabilities", "exponential_mechanism",
    "exponential_mechanism_gumbel", "randomized_response", "randomized_response_estimate",
]  # fmt: skip
WITH_RNG = ["laplace_mechanism", "gaussian_mechanism", "exponential_mechanism", "exponential_mechanism_gumbel",
            "randomized_response"]  # fmt: skip
FAST = settings(max_examples=25, deadline=None)


@pytest.mark.parametrize("name", WITH_EPSILON)
@FAST
@given(eps=BAD_EPSILON)
def test_invalid_epsilon_raises(name, eps):
    with pytest.raises(ValueError, match="epsilon"):
        _call(name, epsilon=eps)


@pytest.mark.parametrize("name", WITH_DELTA)
@FAST
@given(delta=BAD_DELTA)
def test_invalid_delta_raises(name, delta):
    with pytest.raises(ValueError, match="delta"):
        _call(name, delta=delta)


@pytest.mark.parametrize("name", WITH_SENSITIVITY)
@FAST
@given(sens=BAD_SENSITIVITY)
def test_invalid_sensitivity_raises(name, sens):
    with pytest.raises(ValueError, match="sensitivity"):
        _call(name, sensitivity=sens)


@pytest.mark.parametrize("name", ["exponential_log_probabilities", "exponential_mechanism", "exponential_mechanism_gumbel"])
def test_exponential_mechanism_refuses_zero_sensitivity(name):
    with pytest.raises(ValueError, match="sensitivity"):
        _call(name, sensitivity=0.0)


@FAST
@given(sigma=st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf])))
def test_invalid_sigma_raises(sigma):
    with pytest.raises(ValueError, match="sigma"):
        gaussian_delta(sigma=sigma, sensitivity=1.0, epsilon=1.0)
    if not sigma == 0:  # sigma = 0 is a valid (no-noise) expected error
        with pytest.raises(ValueError, match="sigma"):
            gaussian_expected_abs_error(sigma=sigma)


@pytest.mark.parametrize("name", WITH_ARRAY)
@pytest.mark.parametrize("empty", [[], np.zeros(0), np.zeros((0, 3))])
def test_empty_array_raises(name, empty):
    with pytest.raises(ValueError):
        _call(name, value=empty)


@pytest.mark.parametrize("name", WITH_ARRAY)
@FAST
@given(
    values=st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=20),
    position=st.integers(min_value=0),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
)
def test_array_with_nan_or_inf_raises(name, values, position, bad):
    values[position % len(values)] = bad
    with pytest.raises(ValueError, match="finite"):
        _call(name, value=values)


@pytest.mark.parametrize("name", WITH_RNG)
@pytest.mark.parametrize("rng", [None, 42, np.random.RandomState(0)])
def test_implicit_randomness_is_refused(name, rng):
    with pytest.raises(ValueError, match="rng"):
        _call(name, rng=rng)


@pytest.mark.parametrize("name", ["randomized_response", "randomized_response_estimate"])
@pytest.mark.parametrize("bits", [[0, 2], [0.5, 1], [-1]])
def test_randomized_response_refuses_non_bits(name, bits):
    with pytest.raises(ValueError, match="0 and 1"):
        _call(name, value=bits)


def test_other_invalid_arguments():
    with pytest.raises(ValueError, match="calibration"):
        gaussian_mechanism(0.0, sensitivity=1, epsilon=1, delta=1e-5, rng=make_rng(0), calibration="exact")
    with pytest.raises(ValueError, match="dimension"):
        exponential_log_probabilities([[1.0, 2.0]], epsilon=1, sensitivity=1)
    # a spread beyond double range: the far candidate's probability is 0, as it is exactly (once refused)
    assert exponential_log_probabilities([1e308, 0.0], epsilon=10, sensitivity=0.1).tolist() == [0.0, -math.inf]


@pytest.mark.parametrize("epsilon, delta", [(1e-3, 1e-10), (1e-8, 1e-10), (1e-12, 1e-5), (1e-13, 1e-50),
                                            (1e-14, 1e-50), (1e-13, 1e-300)])
def test_analytic_sigma_meets_delta_exactly_even_for_tiny_epsilon(epsilon, delta):
    """For tiny epsilon, delta(sigma) is a difference of nearly equal terms: rounding once let the
    search accept a sigma whose exact delta was 2e-26 against a target of 1e-50 (epsilon 1e-14)."""
    mp = pytest.importorskip("mpmath")
    from privlab.mechanisms import analytic_gaussian_sigma

    sigma = analytic_gaussian_sigma(sensitivity=1.0, epsilon=epsilon, delta=delta)
    with mp.workdps(80):
        s, e = mp.mpf(sigma), mp.mpf(epsilon)
        exact = mp.ncdf(1 / (2 * s) - e * s) - mp.exp(e) * mp.ncdf(-1 / (2 * s) - e * s)
        assert exact <= delta, (sigma, mp.nstr(exact, 6))
        if epsilon < 1e-12:  # beyond double precision's reach the bound is conservative: safe, not tight
            return
        # and not needlessly large: 1% less noise breaks the target
        s = s * mp.mpf("0.99")
        assert mp.ncdf(1 / (2 * s) - e * s) - mp.exp(e) * mp.ncdf(-1 / (2 * s) - e * s) > delta


@pytest.mark.parametrize("epsilon", [1e-17, 3e-16, 1e-6, 0.5, 1.0, 4.0, 10.0, 30.0, 36.0, 36.5, 37.0, 40.0, 1000.0])
def test_randomized_response_is_at_least_as_private_as_claimed_in_double_precision(epsilon):
    """The keep event is U < p with U = rng.random() on the grid of 2^-53: P(keep) = p exactly. It was
    expit(eps), which rounds to 1.0 for eps >= 37 (never a flip: no finite epsilon) and rounded up
    below that (eps 36 was 36.04-DP)."""
    from fractions import Fraction

    from privlab.mechanisms import _keep_threshold

    p = _keep_threshold(epsilon)
    keep = Fraction(math.ceil(Fraction(p) * 2**53), 2**53)  # P(U < p), U uniform on k 2^-53
    assert 0 < 1 - keep and keep == Fraction(p)
    with mpmath.workdps(60):
        realised = mpmath.log(mpmath.mpf(keep.numerator) / (keep.denominator - keep.numerator))
        assert abs(realised) <= epsilon  # both ways: for eps ~ 1e-16 a flip once became likelier
        if epsilon <= 10:  # and only a rounding away from it (the grid is coarse next to tiny flip rates)
            assert epsilon - realised < 1e-9


def test_flags_and_inputs_that_would_be_read_wrongly_are_refused():
    # "False" is truthy: it once dropped the factor 2 (half the noise); "12" and 1+2j became numbers
    from privlab import selection, sparse_vector
    from privlab.mechanisms import exponential_log_probabilities, laplace_mechanism

    with pytest.raises(ValueError, match="monotonic must be True or False, got 'False'"):
        exponential_log_probabilities([1.0, 0.0], epsilon=1.0, sensitivity=1.0, monotonic="False")
    with pytest.raises(ValueError, match="monotonic must be True or False, got 'no'"):
        selection.report_noisy_max([1.0, 0.0], epsilon=1.0, sensitivity=1.0, rng=make_rng(0), monotonic="no")
    with pytest.raises(ValueError, match="monotonic must be True or False, got 0"):
        sparse_vector.sparse_vector([1.0, 0.0], threshold=0.5, c=1, epsilon=1.0, sensitivity=1.0,
                                    rng=make_rng(0), monotonic=0)
    for bad in ("12", ["1", "2"], 1 + 2j, np.array([1 + 0j])):
        with pytest.raises(ValueError, match="value must be real numbers"):
            laplace_mechanism(bad, sensitivity=1.0, epsilon=1.0, rng=make_rng(0))


def test_exponential_mechanism_is_exact_for_utilities_near_two_to_the_52():
    # unshifted, the exponents lost the digits that tell candidates apart: probabilities summed to 1.135
    from privlab.mechanisms import exponential_log_probabilities

    p = np.exp(exponential_log_probabilities([2.0**52, 2.0**52 + 4], epsilon=4.0, sensitivity=4.0))
    np.testing.assert_allclose(p, [1 / (1 + math.e**2), math.e**2 / (1 + math.e**2)], rtol=1e-12)
