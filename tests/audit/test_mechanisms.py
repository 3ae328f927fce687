"""Tests of privlab.audit.stats and privlab.audit.mechanisms: Clopper-Pearson against scipy's exact binomial interval, the
coverage of the epsilon lower bound, honest mechanisms passing (Laplace, Gaussian, randomized response,
discrete Laplace and Gaussian, snapping), broken ones flagged (half the noise, wrong sensitivity, an
over-claimed epsilon), and invalid input (hypothesis).

All runs are seeded; the audit's own guarantee (an honest mechanism is flagged with probability at
most alpha) is what the honest cases rely on.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from privlab.audit import AuditResult, audit_mechanism, clopper_pearson, epsilon_lower_bound
from privlab.config import make_rng
from privlab.discrete import (
    discrete_gaussian_epsilon,
    discrete_gaussian_mechanism,
    discrete_laplace_mechanism,
    snapping_mechanism,
)
from privlab.mechanisms import gaussian_mechanism, laplace_mechanism, randomized_response

N = 40_000


def batched(release):
    """mechanism(data, rng, n): n independent releases on data."""
    return lambda x, rng, n: release(np.full(n, x), rng)


def laplace(sensitivity, epsilon):
    return batched(lambda v, rng: laplace_mechanism(v, sensitivity=sensitivity, epsilon=epsilon, rng=rng))


def gaussian(sensitivity, epsilon, delta):
    return batched(lambda v, rng: gaussian_mechanism(v, sensitivity=sensitivity, epsilon=epsilon, delta=delta, rng=rng))


# ----------------------------------------------------------------------------- Clopper-Pearson and the bound


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (3, 17), (500, 1000), (1, 100_000)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    low, high = clopper_pearson(k, n, alpha=0.1)
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)


def test_epsilon_lower_bound_formula_and_vectorisation():
    lo, _ = clopper_pearson(900, 1000)
    _, hi = clopper_pearson(100, 1000)
    assert epsilon_lower_bound(900, 100, 1000, 1000) == pytest.approx(math.log(lo / hi))
    assert epsilon_lower_bound(900, 100, 1000, 1000, delta=0.01) == pytest.approx(math.log((lo - 0.01) / hi))
    # the complement: few positives on D, many on D'... seen from S^c
    assert epsilon_lower_bound(100, 900, 1000, 1000) == 0.0
    assert epsilon_lower_bound(0, 0, 10, 10) == 0.0
    out = epsilon_lower_bound(np.array([900, 500]), np.array([100, 500]), 1000, 1000)
    assert out.shape == (2,) and out[1] == 0.0


def test_epsilon_lower_bound_coverage():
    # randomized response with epsilon = 1: the bound exceeds the true epsilon in at most alpha of repeats
    rng, reps, n, alpha = make_rng(1), 4000, 300, 0.1
    p = math.e / (1 + math.e)
    tp, fp = rng.binomial(n, p, size=reps), rng.binomial(n, 1 - p, size=reps)
    misses = np.mean(epsilon_lower_bound(tp, fp, n, n, alpha=alpha) > 1.0)
    assert misses <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / reps)


# ----------------------------------------------------------------------------- honest mechanisms pass

HONEST = {
    "laplace": (laplace(1.0, 1.0), 0.0, 1.0, 1.0, 0.0),
    "laplace, sensitivity 3": (laplace(3.0, 0.5), 10.0, 13.0, 0.5, 0.0),
    "gaussian": (gaussian(1.0, 1.0, 1e-5), 0.0, 1.0, 1.0, 1e-5),
    "randomized response": (batched(lambda v, rng: randomized_response(v, epsilon=1.0, rng=rng)), 0, 1, 1.0, 0.0),
    "discrete laplace": (batched(lambda v, rng: discrete_laplace_mechanism(v, epsilon=1, rng=rng)), 0, 1, 1.0, 0.0),
    "discrete gaussian": (
        batched(lambda v, rng: discrete_gaussian_mechanism(v, sigma2=2, rng=rng)), 0, 1,
        discrete_gaussian_epsilon(sigma2=2, delta=1e-5), 1e-5,
    ),
    "snapping": (
        batched(lambda v, rng: snapping_mechanism(v, sensitivity=1.0, epsilon=1, lower=-40, upper=40, grid_bits=3,
                                                  rng=rng, elementwise=True)),
        0.0, 1.0, 1.0, 0.0,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_mechanisms_pass(name):
    mechanism, d, d_prime, eps, delta = HONEST[name]
    res = audit_mechanism(mechanism, d, d_prime, claimed_epsilon=eps, claimed_delta=delta, n_samples=N,
                          rng=make_rng(2), batched=True)  # fmt: skip
    assert isinstance(res, AuditResult)
    assert not res.flagged and res.epsilon_lower <= eps
    assert res.epsilon_lower > 0.3 * eps  # and the audit is not vacuous


def test_pure_mechanisms_are_audited_close_to_their_epsilon():
    for name in ("laplace", "randomized response", "discrete laplace"):
        mechanism, d, d_prime, eps, _ = HONEST[name]
        res = audit_mechanism(mechanism, d, d_prime, claimed_epsilon=eps, n_samples=N, rng=make_rng(3), batched=True)
        assert 0.85 * eps < res.epsilon_lower <= eps


def test_unbatched_mechanism_and_result_fields():
    res = audit_mechanism(lambda x, rng: laplace_mechanism(x, sensitivity=1, epsilon=1, rng=rng), 0.0, 1.0,
                          claimed_epsilon=1.0, n_samples=4000, rng=make_rng(4), n_thresholds=20)  # fmt: skip
    assert not res.flagged and res.n_samples == 4000 and res.n_sets <= 40
    assert res.epsilon_lower == pytest.approx(math.log(res.p_low / res.q_high))
    assert res.p_low <= res.count_numerator / 4000 and res.q_high >= res.count_denominator / 4000
    assert res.direction in ("D vs D'", "D' vs D") and res.best_set.startswith("y ")


# ----------------------------------------------------------------------------- broken mechanisms are flagged

BROKEN = {
    "laplace, half the noise": (laplace(0.5, 1.0), 0.0, 1.0, 1.0, 0.0, N),
    "laplace, sensitivity 1 for a query of sensitivity 2": (laplace(1.0, 1.0), 0.0, 2.0, 1.0, 0.0, N),
    "gaussian, half the noise": (gaussian(0.5, 1.0, 1e-5), 0.0, 1.0, 1.0, 1e-5, 400_000),
    "randomized response, epsilon over-claimed": (
        batched(lambda v, rng: randomized_response(v, epsilon=1.0, rng=rng)), 0, 1, 0.7, 0.0, N,
    ),
    "discrete laplace, half the scale": (
        batched(lambda v, rng: discrete_laplace_mechanism(v, epsilon=2, rng=rng)), 0, 1, 1.0, 0.0, N,
    ),
    "discrete gaussian, sigma2 = 1/2 run, sigma2 = 4 claimed": (
        batched(lambda v, rng: discrete_gaussian_mechanism(v, sigma2=Fraction(1, 2), rng=rng)), 0, 1,
        discrete_gaussian_epsilon(sigma2=4, delta=1e-5), 1e-5, N,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_mechanisms_are_flagged(name):
    mechanism, d, d_prime, eps, delta, n = BROKEN[name]
    res = audit_mechanism(mechanism, d, d_prime, claimed_epsilon=eps, claimed_delta=delta, n_samples=n,
                          rng=make_rng(5), batched=True)  # fmt: skip
    assert res.flagged and res.epsilon_lower > eps


# ----------------------------------------------------------------------------- invalid input


@settings(max_examples=40, deadline=None)
@given(bad=st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf)))
def test_invalid_claimed_epsilon_raises_naming_the_value(bad):
    with pytest.raises(ValueError, match="claimed_epsilon") as info:
        audit_mechanism(laplace(1.0, 1.0), 0.0, 1.0, claimed_epsilon=bad, n_samples=100, rng=make_rng(0), batched=True)
    assert repr(bad) in str(info.value)


@settings(max_examples=40, deadline=None)
@given(bad=st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.just(math.nan)))
def test_invalid_delta_and_alpha_raise(bad):
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound(1, 1, 10, 10, delta=bad)
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson(1, 10, alpha=bad)


@settings(max_examples=40, deadline=None)
@given(k=st.one_of(st.integers(max_value=-1), st.integers(min_value=11), st.just(2.5), st.just(math.nan)))
def test_counts_out_of_range_raise(k):
    with pytest.raises(ValueError):
        epsilon_lower_bound(k, 1, 10, 10)
    with pytest.raises(ValueError):
        clopper_pearson(k, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_samples": 0},
        {"rng": None},
        {"thresholds": [0.0, math.nan]},
        {"mechanism": lambda x, rng, n: np.zeros(n - 1)},
        {"mechanism": lambda x, rng, n: np.full(n, math.inf)},
        {"claimed_delta": 1.0},
    ],
)
def test_audit_invalid_inputs_raise(kwargs):
    args = {"claimed_epsilon": 1.0, "n_samples": 100, "rng": make_rng(0), "batched": True} | kwargs
    mechanism = args.pop("mechanism", laplace(1.0, 1.0))
    with pytest.raises(ValueError):
        audit_mechanism(mechanism, 0.0, 1.0, **args)
