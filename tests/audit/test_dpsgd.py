"""Empirical audits of DP-SGD: privlab's optimizer passes, every planted bug is caught."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.accounting import dpsgd_epsilon
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
from privlab.audit import audit_dpsgd_input, gaussian_test_runs, input_canary_task, runs_for_power
from privlab.dpsgd import DPOptimizer

# one regime for the optimizer bugs: 4 epochs of 20 steps, batch 10 (N = 200), sigma 1.2 -> PLD eps ~2.2
SETTING = dict(noise_multiplier=1.2, sample_rate=0.05, steps=80, delta=1e-5, n_runs=1500)


@pytest.mark.parametrize("name", [n for n in PLANTED_BUGS if n != "shuffle as Poisson"])
def test_many_run_audit(name):
    cls, sampler = PLANTED_BUGS[name]
    r = audit_dpsgd(cls, sampler=sampler, generator=torch.Generator().manual_seed(11), **SETTING)
    assert math.isfinite(r.epsilon_accountant) and r.epsilon_accountant > 1
    if name == "honest":
        assert not r.caught and r.epsilon_lower < r.epsilon_accountant
    else:
        assert r.caught, (name, r.epsilon_lower, r.epsilon_accountant)


# Shuffled batches accounted as Poisson: N = 1000 (batch 10, 100 steps an epoch), 8 epochs, sigma 1 -> PLD eps ~1.64.
# With fixed-size batches the last batch of every epoch holds b examples with the canary and b - 1 without it; the
# background gradients are known, so each epoch is an unsubsampled Gaussian mechanism of sensitivity C: over E epochs
# a shift of mu = sqrt(E) / sigma = 2.83 standard deviations, with no amplification (Poisson batch sizes hide it).
SHUFFLE = dict(noise_multiplier=1.0, sample_rate=0.01, steps=800, delta=1e-5)


def _shuffle_runs():
    """Runs per world for the leak alone (a Gaussian threshold test, ignoring the canary coordinate, which only
    helps) to clear the claim by 1 with counts 3 binomial sd on the unlucky side."""
    claim = dpsgd_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=800, delta=1e-5)
    return gaussian_test_runs(math.sqrt(8) / 1.0, epsilon=claim, delta=1e-5, margin=1.0, z=3.0)


@pytest.mark.parametrize("seed", [0])
def test_shuffle_as_poisson_caught_with_margin(seed):
    cls, sampler = PLANTED_BUGS["shuffle as Poisson"]
    n_runs = _shuffle_runs()
    assert n_runs < 1000
    r = audit_dpsgd(cls, sampler=sampler, n_runs=n_runs, generator=torch.Generator().manual_seed(seed), **SHUFFLE)
    assert r.caught and r.epsilon_lower > r.epsilon_accountant + 0.5, r
    # the same training with Poisson batches (what the accountant assumes) passes
    p = audit_dpsgd(n_runs=n_runs, generator=torch.Generator().manual_seed(seed), **SHUFFLE)
    assert not p.caught, p


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


def _appendix_d_p_value(m, r, v, eps, delta):
    """An independent transcription of Steinke, Nasr, Jagielski 2023 (arXiv:2305.08846v1), Appendix D:
    a running sum over i with scipy's pmf, as the paper's listing does (privlab uses a vectorised cumsum)."""
    from scipy.stats import binom

    q = 1 / (1 + math.exp(-eps))
    beta = binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1.0)


@pytest.mark.parametrize("m, r, v, eps, delta", [(1000, 100, 75, 0.5, 1e-4), (2000, 200, 150, 1.0, 1e-5),
                                                  (100, 100, 60, 0.2, 1e-3), (50, 10, 10, 2.0, 0.0)])
def test_one_run_p_value_matches_appendix_d_transcription(m, r, v, eps, delta):
    assert one_run_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(
        _appendix_d_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("m, r, v, delta, printed", [
    (1000, 100, 75, 1e-4, 0.673),        # Appendix D's worked example (v1 p. 46), printed rounded
    (100_000, 1510, 1439, 1e-5, 2.675),  # Section 7 (v1 p. 28), printed truncated to 3 decimals
])
def test_one_run_bound_reproduces_printed_values(m, r, v, delta, printed):
    eps = one_run_epsilon_lower_bound(m=m, r=r, v=v, delta=delta, beta=0.05)
    assert abs(eps - printed) < 1e-3, eps   # one unit in the last printed digit


# ----- the whole pipeline: an input-space canary trained through privlab.dpsgd.train ------------------------

# sigma 3, q 1/2, 2 epochs (T = 4 steps): PLD epsilon ~1.49 at delta 1e-5
INPUT = dict(noise_multiplier=3.0, sample_rate=0.5, epochs=2, delta=1e-5)


def _input_runs():
    """Runs per world from the power computation: the no-noise bug separates the worlds perfectly except when the
    canary is never sampled (probability (1 - q)^T), so TPR = 1 - 2^-4 and FPR = 0; 3 binomial sd of margin."""
    claim = dpsgd_epsilon(noise_multiplier=3.0, sample_rate=0.5, steps=4, delta=1e-5)
    return runs_for_power(tpr=1 - 0.5**4, fpr=0.0, epsilon=claim, delta=1e-5, margin=0.5, z=3.0)


def test_input_space_audit_honest_below_accountant():
    r = audit_dpsgd_input(n_runs=_input_runs(), generator=torch.Generator().manual_seed(21), **INPUT)
    assert r.epsilon_accountant == pytest.approx(dpsgd_epsilon(noise_multiplier=3.0, sample_rate=0.5,
                                                               steps=4, delta=1e-5))
    assert not r.caught and r.epsilon_lower < r.epsilon_accountant, r


def test_input_space_audit_catches_no_noise_through_train():
    r = audit_dpsgd_input(NoNoiseOptimizer, n_runs=_input_runs(), generator=torch.Generator().manual_seed(21),
                          **INPUT)
    assert r.caught and r.epsilon_lower > r.epsilon_accountant + 0.5, r   # the margin the power computation planned


def test_runs_for_power_perfect_attack_matches_clopper_pearson():
    # perfect separation: TP = R, FP = 0 gives ln((alpha/2)^(1/R) / (1 - (alpha/2)^(1/R))); the smallest R above
    # 1 + 0.5 must satisfy it and R - 1 must not
    def bound(r):
        lo = 0.025 ** (1 / r)
        return math.log(lo / (1 - lo))

    r = runs_for_power(tpr=1.0, fpr=0.0, epsilon=1.0, delta=0.0, margin=0.5)
    assert bound(r) > 1.5 >= bound(r - 1)
    with pytest.raises(ValueError, match="no number of runs"):
        runs_for_power(tpr=0.5, fpr=0.5, epsilon=1.0, delta=1e-5, max_runs=1000)


def test_input_canary_task_is_a_dirac_feature():
    t = input_canary_task(n=30, d=5, generator=torch.Generator().manual_seed(0))
    X_in, y_in = t.data(True)
    assert X_in.shape == (31, 5) and float(t.X[:, -1].abs().max()) == 0.0 and float(y_in[-1]) == 1.0


@settings(max_examples=20, deadline=None)
@given(bad=st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.floats(min_value=1.0001, max_value=1e6)))
def test_input_audit_and_power_reject_bad_rates(bad):
    with pytest.raises(ValueError, match="sample_rate"):
        audit_dpsgd_input(noise_multiplier=1.0, sample_rate=bad, epochs=1, delta=1e-5, n_runs=2,
                          generator=torch.Generator())
    with pytest.raises(ValueError, match="tpr"):
        runs_for_power(tpr=bad if bad > 1 or bad != bad else -abs(bad) - 1, fpr=0.0, epsilon=1.0, delta=1e-5)
