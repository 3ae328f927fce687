"""Regression tests for the accounting defects of issue 13 (defect 7) and issue 15 (PLD against basic).

Each test reproduces the failing input from the issue; the values the old code gave are in the comments.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from privlab.accounting import (
    BasicCompositionAccountant,
    GaussianEvent,
    LaplaceEvent,
    PldAccountant,
    PoissonSampledEvent,
    calibrate_noise,
    dpsgd_epsilon,
    gaussian_epsilon,
)
from privlab.accounting.composition import amplify_by_sampling


# ----- 7(a): PLD accuracy at small delta ------------------------------------------------------
@pytest.mark.parametrize("sigma,delta,old", [(1.0, 1e-10, 6.6049), (2.0, 1e-9, 2.9364)])
def test_pld_meets_its_documented_accuracy_at_small_delta(sigma, delta, old):
    # the inputs: the old PLD gave 6.6049 (exact 6.5479, +0.87%) and 2.9364 (exact 2.9097, +0.92%)
    # (the discretised PLD itself: get_epsilon takes the minimum with basic composition, exact for one Gaussian)
    exact = gaussian_epsilon(noise_multiplier=sigma, delta=delta)
    acc = PldAccountant().compose(GaussianEvent(sigma))
    ours = acc._pld_epsilon(delta)
    assert exact <= ours <= exact * (1 + 1e-3)
    assert ours < old - 0.02
    assert acc.get_epsilon(delta) == exact


@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.0, 2.0, 5.0, 20.0])
@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("delta", [1e-5, 1e-8, 1e-10, 1e-12])
def test_pld_accuracy_is_pinned_against_the_exact_gaussian(sigma, k, delta):
    # k Gaussians of noise sigma are one Gaussian of noise sigma / sqrt(k) (Balle and Wang 2018, exact);
    # the documented accuracy: an upper bound, at most 1e-3 relative above (old code: up to 4.2% above)
    exact = gaussian_epsilon(noise_multiplier=sigma / math.sqrt(k), delta=delta)
    acc = PldAccountant().compose(GaussianEvent(sigma), count=k)
    ours = acc._pld_epsilon(delta)  # the discretised PLD, not its minimum with basic composition
    assert exact <= ours <= exact * (1 + 1e-3)
    assert exact <= acc.get_epsilon(delta) <= ours


def test_pld_at_small_delta_agrees_with_dp_accounting():
    pldlib = pytest.importorskip("dp_accounting.pld.privacy_loss_distribution")
    logging.getLogger().setLevel(logging.ERROR)
    for q, sigma, steps, delta in [(0.01, 1.0, 1000, 1e-10), (0.1, 2.0, 100, 1e-12)]:
        ours = dpsgd_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
        theirs = pldlib.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=1e-3,
                                                use_connect_dots=True).self_compose(steps)
        assert ours == pytest.approx(theirs.get_epsilon_for_delta(delta), rel=1e-3)


# ----- 7(b): the last-resort path never returns 0 below a valid bound -------------------------
class _WindowAboveTheAnswer:
    """A composed PLD whose FFT window, at every tilt, starts at loss 5 while its bulk lies lower (at 4).

    delta(5) is at most the target already, so the answer lies below the window: the window's lowest
    loss, 5, is a valid upper bound; 0 is not (the PLD with its mass at loss 4 has epsilon near 4).
    """

    p_inf, support, step = 0.0, (0, 100), 1.0

    def tilt(self, lam):
        return 4.0, 1.0

    def saddle(self, target):
        return 0.0

    def best_tilt(self, lam, log_delta, guess):
        return 0.0

    def density(self, lam, log_delta, guess):
        s, p = np.array([5.0, 6.0, 7.0]), np.array([1e-7, 0.0, 0.0])
        return s, p, 0.0, lambda eps: 0.0, lambda j: 0.0


def test_pld_last_resort_returns_a_valid_upper_bound():
    # every tilted attempt finds the answer below its window, so the last resort runs: the old code
    # returned epsilon 0.0 there; the window's lowest loss is the valid upper bound
    assert PldAccountant._epsilon_one(_WindowAboveTheAnswer(), 1e-5) == 5.0


# ----- 7(c): amplification by sampling in log space -------------------------------------------
def test_amplify_never_overflows():
    # ln(1 + q(e^eps - 1)): the old code computed e^eps and raised OverflowError for eps > 709
    for q in (1e-6, 0.01, 0.5, 1.0):
        for eps in (1e-8, 1.0, 700.0, 709.5, 710.0, 5e4):
            got, _ = amplify_by_sampling(eps, 0.0, q)
            want = math.log1p(q * math.expm1(eps)) if eps < 709 else eps + math.log(q)  # e^-eps (1-q)/q: nil
            assert got == pytest.approx(want, rel=1e-14)
    assert amplify_by_sampling(5e4, 1e-6, 0.5) == (5e4 + math.log(0.5), 5e-7)
    # continuity across the switch at 700: both forms agree there
    assert amplify_by_sampling(700.0, 0.0, 0.01)[0] == pytest.approx(math.log1p(0.01 * math.expm1(700.0)), rel=1e-15)


def test_calibrate_noise_with_basic_composition_at_a_huge_target():
    # the input: raised OverflowError
    sigma = calibrate_noise(target_epsilon=5e4, delta=1e-5, sample_rate=0.01, steps=100, accountant="basic")
    assert 0 < sigma < 1
    assert dpsgd_epsilon(noise_multiplier=sigma, sample_rate=0.01, steps=100, delta=1e-5, accountant="basic") <= 5e4


# ----- issue 15: the PLD never reports more than basic composition ----------------------------
def test_pld_takes_the_minimum_with_basic_composition():
    # chapter 3's odometer: four Laplace queries at 0.2 and one at 0.15; PLD reported 0.9502 against basic's 0.95
    pld, basic = PldAccountant(), BasicCompositionAccountant()
    for eps in [0.2] * 4 + [0.15]:
        pld.compose(LaplaceEvent.from_epsilon(eps))
        basic.compose(LaplaceEvent.from_epsilon(eps))
    assert pld.get_epsilon(1e-6) <= basic.get_epsilon(1e-6) == pytest.approx(0.95, rel=1e-15)
    assert pld.get_delta(0.95) == 0.0
    # where the PLD is tighter it is unchanged: ten Laplace queries at delta 1e-5
    many = PldAccountant().compose(LaplaceEvent.from_epsilon(0.1), count=10)
    assert many.get_epsilon(1e-5) < 0.99


def test_pld_alone_on_request_is_the_discretised_pld_at_or_above_the_closed_form():
    """basic_fallback=False reports the PLD itself (chapter 4 compares it with closed forms; with the
    default, one subsampled Laplace event returns basic composition, i.e. the formula, verbatim)."""
    event = PoissonSampledEvent(0.01, LaplaceEvent.from_epsilon(1.0))
    formula = math.log1p(0.01 * math.expm1(1.0))
    default = PldAccountant().compose(event)
    alone = PldAccountant(basic_fallback=False).compose(event)
    assert default.get_epsilon(1e-12) == formula  # the minimum with basic composition: the formula itself
    assert alone.get_epsilon(1e-12) == alone._pld_epsilon(1e-12)
    assert formula < alone.get_epsilon(1e-12) <= formula * (1 + 1e-3)
    # delta too: for one Laplace event basic composition's delta is 0 above its epsilon, the PLD's is not
    assert default.get_delta(1.0) == 0.0 and alone.get_delta(1.0) >= 0.0
    assert alone.get_delta(formula * 0.9) > default.get_delta(formula * 0.9) * (1 - 1e-12) > 0
    with pytest.raises(ValueError, match="basic_fallback must be True or False, got 0"):
        PldAccountant(basic_fallback=0)


@pytest.mark.parametrize("rho", [1e-9, 1e-7, 1e-5, 1e-3, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("epsilon", [0.0, 1e-3, 0.1, 1.0, 5.0])
def test_optimal_zcdp_delta_is_the_minimum_over_orders(rho, epsilon):
    """Regression: at small epsilon and tiny rho the search bracket held only alpha in (1, 2]
    (the minimiser is near 1 / sqrt(2 rho)): rho = 1e-7, epsilon = 0 gave delta 0.105, the
    optimum is 2.7e-4. Compared with a dense log-spaced grid of orders."""
    from privlab.accounting import zcdp_to_delta

    a = np.exp(np.linspace(math.log(1 + 1e-9), math.log(1e9), 200_001))
    log_d = (a - 1) * (rho * a - epsilon + np.log1p(-1 / a)) - np.log(a)
    grid = math.exp(min(float(log_d.min()), 0.0))
    ours = zcdp_to_delta(rho=rho, epsilon=epsilon, conversion="optimal")
    assert ours <= grid * (1 + 1e-4) and ours >= grid * (1 - 1e-3), (ours, grid)


def test_rdp_of_a_huge_noise_multiplier_is_the_conversion_floor_not_an_overflow():
    # the fractional-order series squared sigma: OverflowError from sigma = 1.4e154 with q < 1
    import warnings

    from privlab.accounting.rdp import HUGE_SIGMA, subsampled_gaussian_rdp

    orders = [1.5, 2.0, 32.0, 256.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from log(e^0 - 1) either
        small = subsampled_gaussian_rdp(sample_rate=0.01, noise_multiplier=HUGE_SIGMA / 10, orders=orders)
        eps = [dpsgd_epsilon(noise_multiplier=s, sample_rate=0.01, steps=100, delta=1e-5, accountant="rdp")
               for s in (1e99, 1e101, 1e200, 1e300)]
    assert np.all(np.abs(small) < 1e-15)  # the series at sigma = 1e99: zero up to its rounding
    assert eps == [eps[0]] * 4 and eps[0] < 0.11  # log(1/delta) / (alpha_max - 1): the curve is ~0
    huge = subsampled_gaussian_rdp(sample_rate=0.01, noise_multiplier=1e200, orders=orders)
    assert np.all((huge >= 0) & (huge < 1e-300))  # the full-batch bound, alpha / (2 sigma^2)
