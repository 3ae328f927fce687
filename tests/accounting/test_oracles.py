"""Our accountants against independent oracles: Opacus, dp_accounting, closed forms, quadrature."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
from scipy import integrate, special

from privlab.accounting import (
    DEFAULT_ORDERS,
    AdvancedCompositionAccountant,
    BasicCompositionAccountant,
    EpsilonDeltaEvent,
    GaussianEvent,
    LaplaceEvent,
    PldAccountant,
    PoissonSampledEvent,
    RdpAccountant,
    ZcdpAccountant,
    advanced_composition,
    dpsgd_epsilon,
    dpsgd_event,
    gaussian_epsilon,
    gaussian_rdp,
    laplace_rdp,
    rdp_to_epsilon,
    subsampled_gaussian_rdp,
    zcdp_to_epsilon,
)
from privlab.gaussian import gaussian_delta

opacus_rdp = pytest.importorskip("opacus.accountants.analysis.rdp")
from opacus.accountants import RDPAccountant as OpacusRDP  # noqa: E402

pldlib = pytest.importorskip("dp_accounting.pld.privacy_loss_distribution")
logging.getLogger().setLevel(logging.ERROR)  # dp_accounting logs a warning for optimistic estimates

# ----- RDP against Opacus: equal to 1e-6 relative ------------------------------------------------
RDP_PAIRS = [(1e-4, 0.8), (1e-3, 1.1), (0.01, 1.0), (0.01, 0.5), (0.05, 2.0), (0.3, 1.3), (0.99, 0.9), (1.0, 3.0)]


def test_default_orders_are_opacus_default_alphas():
    assert list(DEFAULT_ORDERS) == list(OpacusRDP.DEFAULT_ALPHAS)


@pytest.mark.parametrize("q,sigma", RDP_PAIRS)
def test_rdp_epsilon_equals_opacus(q, sigma):
    orders = OpacusRDP.DEFAULT_ALPHAS
    theirs_curve = np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders))
    ours_curve = subsampled_gaussian_rdp(sample_rate=q, noise_multiplier=sigma, orders=orders)
    np.testing.assert_allclose(ours_curve, theirs_curve, rtol=1e-5)  # Opacus loses digits at tiny q
    for steps in (1, 1000, 100_000):
        for delta in (1e-5, 1e-8, 1e-12):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Opacus warns when the best order is at the edge
                theirs, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=theirs_curve * steps, delta=delta)
            ours = dpsgd_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="rdp")
            assert ours == pytest.approx(theirs, rel=1e-6), (q, sigma, steps, delta)


def test_rdp_accountant_matches_opacus_accountant_on_a_mixed_history():
    theirs = OpacusRDP()
    theirs.history = [(1.0, 0.01, 500), (2.0, 0.05, 100)]
    ours = RdpAccountant().compose(dpsgd_event(noise_multiplier=1.0, sample_rate=0.01, steps=500))
    ours.compose(dpsgd_event(noise_multiplier=2.0, sample_rate=0.05, steps=100))
    assert ours.get_epsilon(1e-6) == pytest.approx(theirs.get_epsilon(delta=1e-6), rel=1e-6)


# ----- RDP closed forms and quadrature ----------------------------------------------------------
def test_gaussian_rdp_closed_form_and_full_batch():
    orders = np.array([1.5, 2.0, 7.0, 32.0])
    np.testing.assert_allclose(gaussian_rdp(noise_multiplier=2.0, orders=orders), orders / 8.0)
    np.testing.assert_allclose(subsampled_gaussian_rdp(sample_rate=1.0, noise_multiplier=2.0, orders=orders),
                               orders / 8.0)


@pytest.mark.parametrize("q,sigma,alpha", [(0.1, 1.0, 2.0), (0.1, 1.0, 2.5), (0.02, 0.7, 5.0), (0.3, 2.0, 3.7),
                                           (1e-4, 0.8, 1.1)])
def test_subsampled_gaussian_rdp_against_quadrature(q, sigma, alpha):
    # A_alpha = E_{x ~ N(0, s^2)} [((1 - q) + q exp((2x - 1) / (2 s^2)))^alpha]
    f = lambda x: np.exp(-x * x / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi)) * (  # noqa: E731
        (1 - q) + q * np.exp((2 * x - 1) / (2 * sigma**2))) ** alpha
    a, _ = integrate.quad(f, -30 * sigma, 30 * sigma + 40, limit=400, epsabs=0, epsrel=1e-12)
    ours = subsampled_gaussian_rdp(sample_rate=q, noise_multiplier=sigma, orders=[alpha])[0]
    # log(a) loses digits when a ~ 1 + 1e-9 (tiny q): compare the excess a - 1 there
    assert ours == pytest.approx(math.log(a) / (alpha - 1), rel=1e-8 if q > 1e-3 else 1e-6)


@pytest.mark.parametrize("b,alpha", [(1.0, 2.0), (0.5, 3.5), (3.0, 1.5)])
def test_laplace_rdp_against_quadrature(b, alpha):
    p = lambda x: np.exp(-abs(x) / b) / (2 * b)  # noqa: E731
    q = lambda x: np.exp(-abs(x - 1) / b) / (2 * b)  # noqa: E731
    val = sum(integrate.quad(lambda x: p(x) ** alpha * q(x) ** (1 - alpha), lo, hi, epsrel=1e-12)[0]
              for lo, hi in [(-60 * b, 0), (0, 1), (1, 60 * b)])
    assert laplace_rdp(scale=b, orders=[alpha])[0] == pytest.approx(math.log(val) / (alpha - 1), rel=1e-8)


def test_rdp_conversion_formula():
    # Balle et al. 2020 / CKS 2020: eps = rho + log((a-1)/a) - (log delta + log a)/(a-1), at the best order
    eps, order = rdp_to_epsilon(orders=[2.0, 4.0], rdp=[0.1, 0.2], delta=1e-5)
    expected = 0.2 + math.log(3 / 4) - (math.log(1e-5) + math.log(4)) / 3
    assert (eps, order) == (pytest.approx(expected, rel=1e-12), 4.0)


# ----- zCDP closed forms ------------------------------------------------------------------------
def test_zcdp_conversion_closed_form():
    acc = ZcdpAccountant().compose(GaussianEvent(2.0), count=10).compose(LaplaceEvent(4.0), count=4)
    rho = 10 / (2 * 4.0) + 4 * (0.25**2) / 2
    assert acc.rho == pytest.approx(rho)
    assert acc.get_epsilon(1e-6) == pytest.approx(rho + 2 * math.sqrt(rho * math.log(1e6)), rel=1e-12)
    assert acc.get_delta(acc.get_epsilon(1e-6)) == pytest.approx(1e-6, rel=1e-9)


def test_zcdp_optimal_conversion_is_tighter_and_matches_rdp_of_a_gaussian():
    for rho in (0.01, 0.5, 20.0):
        classic = zcdp_to_epsilon(rho=rho, delta=1e-6)
        optimal = zcdp_to_epsilon(rho=rho, delta=1e-6, conversion="optimal")
        assert optimal <= classic
        # a Gaussian with 1/(2 s^2) = rho has RDP rho * alpha: the RDP accountant on a fine grid agrees
        orders = np.linspace(1.001, 400, 400_000)
        fine, _ = rdp_to_epsilon(orders=orders, rdp=rho * orders, delta=1e-6)
        assert optimal == pytest.approx(fine, rel=1e-6)


# ----- composition theorems -------------------------------------------------------------------
def test_basic_and_advanced_composition_numbers_from_the_course():
    assert BasicCompositionAccountant().compose(LaplaceEvent.from_epsilon(0.01), 1000).get_epsilon(1e-5) == \
        pytest.approx(10.0)
    adv = AdvancedCompositionAccountant().compose(LaplaceEvent.from_epsilon(0.01), 1000).get_epsilon(1e-5)
    assert adv == pytest.approx(0.01 * math.sqrt(2000 * math.log(1e5)) + 10 * math.expm1(0.01))
    assert round(adv, 2) == 1.62  # the published 1.51 drops the second term
    six = advanced_composition(epsilon=1.4 / 6, k=6, delta_prime=1e-5)[0]
    assert round(six, 2) == 3.11  # the published 1.146 is wrong; basic gives 1.4


def test_advanced_composition_spends_fixed_deltas_first():
    acc = AdvancedCompositionAccountant().compose(EpsilonDeltaEvent(0.1, 1e-7), 10)
    assert acc.get_epsilon(2e-6) == pytest.approx(advanced_composition(
        epsilon=0.1, delta=1e-7, k=10, delta_prime=1e-6)[0])
    assert acc.get_epsilon(1e-6) == math.inf  # the events alone already spend 1e-6


# ----- PLD against closed forms ---------------------------------------------------------------
@pytest.mark.parametrize("sigma,k,delta", [(1.0, 1, 1e-5), (1.0, 10, 1e-6), (2.0, 1000, 1e-5), (0.3, 10, 1e-5),
                                           (5.0, 3, 1e-12)])
def test_pld_gaussian_composition_is_a_tight_upper_bound(sigma, k, delta):
    # k Gaussians with noise sigma compose exactly into one Gaussian with noise sigma / sqrt(k)
    exact = gaussian_epsilon(noise_multiplier=sigma / math.sqrt(k), delta=delta)
    ours = PldAccountant().compose(GaussianEvent(sigma), count=k).get_epsilon(delta)
    assert exact <= ours <= exact * 1.003 + 1e-9


def test_pld_gaussian_delta_matches_the_analytic_profile():
    acc = PldAccountant().compose(GaussianEvent(1.0), count=4)
    for eps in (0.5, 2.0, 6.0):
        exact = gaussian_delta(sigma=0.5, sensitivity=1.0, epsilon=eps)
        assert exact <= acc.get_delta(eps) <= exact * 1.02


@pytest.mark.parametrize("b", [0.5, 1.0, 4.0])
def test_pld_laplace_profile_closed_form(b):
    # one Laplace mechanism: delta(eps) = 1 - exp((eps - 1/b) / 2) for eps < 1/b
    acc = PldAccountant().compose(LaplaceEvent(b))
    for frac in (0.0, 0.3, 0.8):
        eps = frac / b
        exact = -math.expm1((eps - 1 / b) / 2)
        assert exact - 1e-12 <= acc.get_delta(eps) <= exact * 1.01
    assert acc.get_epsilon(1e-9) <= 1 / b * 1.001  # pure DP: never above 1/b


def test_pld_epsilon_delta_event_is_exact_for_one_event():
    acc = PldAccountant().compose(EpsilonDeltaEvent(1.0, 1e-6))
    assert acc.get_delta(1.0) == pytest.approx(1e-6, rel=1e-6)
    assert 0.99 <= acc.get_epsilon(2e-6) <= 1.0
    assert acc.get_epsilon(0.5e-6) == math.inf  # delta below the event's own delta: no epsilon works


# ----- PLD against dp_accounting -------------------------------------------------------------
PLD_CONFIGS = [(0.01, 1.0, 1000, 1e-5), (0.05, 0.8, 200, 1e-5), (0.2, 2.0, 50, 1e-5), (1.0, 3.0, 20, 1e-6),
               (0.3, 5.0, 300, 1e-5)]


def _dp_accounting(q, sigma, steps, delta, pessimistic):
    pld = pldlib.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=1e-3,
                                         pessimistic_estimate=pessimistic, use_connect_dots=pessimistic)
    return pld.self_compose(steps).get_epsilon_for_delta(delta)


@pytest.mark.parametrize("q,sigma,steps,delta", PLD_CONFIGS)
def test_pld_within_one_percent_of_dp_accounting_and_above_its_lower_bound(q, sigma, steps, delta):
    # at these settings dp_accounting's grid of 1e-3 is fine: the per-step loss spread is >> 1e-3
    ours = dpsgd_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    assert ours == pytest.approx(_dp_accounting(q, sigma, steps, delta, True), rel=1e-2)
    assert ours >= _dp_accounting(q, sigma, steps, delta, False)  # optimistic PLD: a lower bound


def test_pld_handles_mixed_compositions_like_dp_accounting():
    ours = PldAccountant().compose(PoissonSampledEvent(0.1, GaussianEvent(1.0)), 30).compose(
        LaplaceEvent(2.0), 3).get_epsilon(1e-6)
    a = pldlib.from_gaussian_mechanism(1.0, sampling_prob=0.1, value_discretization_interval=1e-3).self_compose(30)
    b = pldlib.from_laplace_mechanism(2.0, value_discretization_interval=1e-3).self_compose(3)
    assert ours == pytest.approx(a.compose(b).get_epsilon_for_delta(1e-6), rel=1e-2)


def test_pld_is_tighter_than_rdp_and_rdp_than_zcdp_on_full_batch():
    run = dict(noise_multiplier=1.0, sample_rate=1.0, steps=100, delta=1e-5)
    assert dpsgd_epsilon(**run) < dpsgd_epsilon(**run, accountant="rdp") < dpsgd_epsilon(**run, accountant="zcdp")


def test_gaussian_delta_formula():
    # Balle and Wang 2018, Thm 8, written out
    s, e = 0.8, 1.3
    expected = special.ndtr(0.5 / s - e * s) - math.exp(e) * special.ndtr(-0.5 / s - e * s)
    assert gaussian_delta(sigma=s, sensitivity=1.0, epsilon=e) == pytest.approx(expected, rel=1e-12)
