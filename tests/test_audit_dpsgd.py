"""Empirical audits of DP-SGD: privlab's optimizer passes, every planted bug is caught."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.audit import (
    PLANTED_BUGS,
    NoClipOptimizer,
    NoNoiseOptimizer,
    WrongNoiseScaleOptimizer,
    audit_dpsgd,
    one_run_audit_dpsgd,
    one_run_epsilon_lower_bound,
    one_run_p_value,
)
from privlab.dpsgd import DPOptimizer

# one regime for all many-run audits: 4 epochs of 20 steps, batch 10 (N = 200), sigma 1.2 -> PLD eps ~2.2
SETTING = dict(noise_multiplier=1.2, sample_rate=0.05, steps=80, delta=1e-5, n_runs=1500)


@pytest.mark.parametrize("name", list(PLANTED_BUGS))
def test_many_run_audit(name):
    cls, sampler = PLANTED_BUGS[name]
    r = audit_dpsgd(cls, sampler=sampler, generator=torch.Generator().manual_seed(11), **SETTING)
    assert math.isfinite(r.epsilon_accountant) and r.epsilon_accountant > 1
    if name == "honest":
        assert not r.caught and r.epsilon_lower < r.epsilon_accountant
    else:
        assert r.caught, (name, r.epsilon_lower, r.epsilon_accountant)


def test_honest_audit_below_accountant_over_sigma():
    for sigma in (0.6, 1.0, 2.0):
        r = audit_dpsgd(noise_multiplier=sigma, sample_rate=0.05, steps=40, delta=1e-5, n_runs=600,
                        generator=torch.Generator().manual_seed(3))
        assert r.epsilon_lower < r.epsilon_accountant


ONE_RUN = dict(noise_multiplier=1.5, sample_rate=0.05, steps=100, delta=1e-5, m=2000, k_plus=100, k_minus=100)


@pytest.mark.parametrize("cls", [DPOptimizer, NoNoiseOptimizer, NoClipOptimizer, WrongNoiseScaleOptimizer])
def test_one_run_audit(cls):
    r = one_run_audit_dpsgd(cls, generator=torch.Generator().manual_seed(5), **ONE_RUN)
    assert r.caught == (cls is not DPOptimizer), (cls.__name__, r)


def test_one_run_bound_matches_binomial_tail_at_delta_zero():
    # delta = 0: the bound is the eps whose Binomial(r, e^eps/(1+e^eps)) upper tail at v equals beta
    from scipy.stats import binom

    eps = one_run_epsilon_lower_bound(m=1000, r=200, v=170, delta=0.0, beta=0.05)
    p = 1 / (1 + math.exp(-eps))
    assert binom.sf(169, 200, p) == pytest.approx(0.05, rel=1e-6)
    # chance-level guessing gives nothing; delta only loosens the bound
    assert one_run_epsilon_lower_bound(m=1000, r=200, v=100, delta=0.0) == 0.0
    assert one_run_epsilon_lower_bound(m=1000, r=200, v=170, delta=1e-4) <= eps


def test_one_run_p_value_is_valid_for_randomized_response():
    # eps-randomized response on m bits is exactly the extremal case: the p-value must be ~uniform-or-larger
    rng = np.random.default_rng(0)
    eps, m, trials = 1.0, 200, 400
    p_true = math.exp(eps) / (1 + math.exp(eps))
    pvals = np.array([one_run_p_value(m=m, r=m, v=int(rng.binomial(m, p_true)), epsilon=eps, delta=0.0)
                      for _ in range(trials)])
    # P[p <= 0.05] <= 0.05, within 5 binomial standard errors
    assert np.mean(pvals <= 0.05) <= 0.05 + 5 * math.sqrt(0.05 * 0.95 / trials)


@settings(max_examples=20, deadline=None)
@given(bad=st.one_of(st.floats(max_value=0.0), st.just(float("nan"))))
def test_invalid_noise_rejected(bad):
    with pytest.raises(ValueError, match="noise_multiplier"):
        audit_dpsgd(noise_multiplier=bad, sample_rate=0.1, steps=5, delta=1e-5, n_runs=10,
                    generator=torch.Generator())


@settings(max_examples=20, deadline=None)
@given(v=st.integers(min_value=101, max_value=10**4))
def test_one_run_rejects_inconsistent_counts(v):
    with pytest.raises(ValueError):
        one_run_p_value(m=100, r=100, v=v, epsilon=1.0, delta=0.0)


def test_bad_sampler_and_generator():
    with pytest.raises(ValueError, match="sampler"):
        audit_dpsgd(noise_multiplier=1.0, sample_rate=0.1, steps=5, delta=1e-5, n_runs=10, sampler="batch",
                    generator=torch.Generator())
    with pytest.raises(ValueError, match="generator"):
        audit_dpsgd(noise_multiplier=1.0, sample_rate=0.1, steps=5, delta=1e-5, n_runs=10, generator=0)
