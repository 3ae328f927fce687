"""Tests of privlab.audit.fpattack: the bit-exact replay of numpy's Laplace sampler, the reachability test,
the attack's success far above any DP bound on textbook float noise and at chance on the exact
mechanisms of privlab.discrete, and invalid input (hypothesis).

Tolerances: the attack's success rate against chance is checked to 4.5 binomial standard errors
(sqrt(1/4n)), with seeded generators.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privlab.config import make_rng
from privlab.discrete import discrete_gaussian_mechanism, discrete_laplace_mechanism, snapping_mechanism
from privlab.audit.fpattack import (
    LAPLACE_SAMPLERS,
    AttackResult,
    distinguishing_attack,
    dp_success_bound,
    grid_reachable,
    textbook_laplace_mechanism,
    textbook_laplace_noise,
    textbook_laplace_reachable,
)

N_TRIALS = 1500


def chance_tolerance(n: int) -> float:
    return 4.5 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("scale", [0.1, 1.0, 37.5])
def test_replay_is_bit_exact_with_numpy_laplace(scale):
    a = make_rng(1).laplace(0.0, scale, size=5000)
    b = np.array([textbook_laplace_noise(u, scale=scale) for u in make_rng(1).random(5000)])
    np.testing.assert_array_equal(a, b)
    out = textbook_laplace_mechanism(2.5, scale=scale, rng=make_rng(1), size=5000)
    np.testing.assert_array_equal(out, 2.5 + a)


@pytest.mark.parametrize("sampler", LAPLACE_SAMPLERS)
def test_textbook_samplers_are_laplace_on_paper(sampler):
    out = textbook_laplace_mechanism(1.0, scale=2.0, rng=make_rng(2), sampler=sampler, size=50_000)
    assert stats.kstest(out, stats.laplace(loc=1.0, scale=2.0).cdf).pvalue > 1e-4
    assert isinstance(textbook_laplace_mechanism(1.0, scale=2.0, rng=make_rng(2), sampler=sampler), float)


@pytest.mark.parametrize("sampler", LAPLACE_SAMPLERS)
def test_every_output_is_reachable_from_its_input(sampler):
    for x, b in ((0.0, 1.0), (1.0, 1.0), (123.25, 0.3)):
        outs = textbook_laplace_mechanism(x, scale=b, rng=make_rng(3), sampler=sampler, size=300)
        assert all(textbook_laplace_reachable(y, x, scale=b, sampler=sampler) for y in outs)


def test_unreachable_outputs_exist_and_bounds_are_checked():
    assert textbook_laplace_reachable(0.0, 0.0, scale=1.0)  # U = 1/2
    assert not textbook_laplace_reachable(1e6, 0.0, scale=1.0)  # beyond b ln(2^53)
    # a double just next to a tail output is not an output: the noise grid is sparse there
    y = textbook_laplace_noise(2.0**-40, scale=1.0)
    assert textbook_laplace_reachable(y, 0.0, scale=1.0)
    assert not textbook_laplace_reachable(math.nextafter(y, 0.0), 0.0, scale=1.0)


@pytest.mark.parametrize("sampler", LAPLACE_SAMPLERS)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_attack_breaks_textbook_laplace(sampler, scale):
    # epsilon = 1 / scale for inputs 0 and 1: at scale 100 no test may exceed 0.5025, the attack gets ~0.9
    result = distinguishing_attack(
        lambda x, rng: textbook_laplace_mechanism(x, scale=scale, rng=rng, sampler=sampler), 0.0, 1.0,
        reachable=lambda y, x: textbook_laplace_reachable(y, x, scale=scale, sampler=sampler),
        n_trials=N_TRIALS, rng=make_rng(4),
    )  # fmt: skip
    assert isinstance(result, AttackResult) and result.n_trials == N_TRIALS
    assert result.success_rate > 0.8
    assert result.success_rate > dp_success_bound(epsilon=1.0 / scale) + 10 * result.standard_error
    assert result.decisive_rate > 0.7


def test_attack_is_at_chance_against_discrete_laplace():
    result = distinguishing_attack(
        lambda x, rng: discrete_laplace_mechanism(x, epsilon=Fraction(1, 10), rng=rng), 0, 1,
        reachable=lambda y, x: grid_reachable(y, x), n_trials=N_TRIALS, rng=make_rng(5),
    )  # fmt: skip
    assert abs(result.success_rate - 0.5) < chance_tolerance(N_TRIALS)
    assert result.decisive_rate == 0.0 and result.reachable_rate == 1.0  # every output on the integer grid


def test_an_output_off_the_grid_shows_in_the_reachable_rate():
    """The reachability attacker against an exact mechanism is at chance by construction; what the
    result can show is whether the outputs stayed in the support: float noise added to the grid does not."""
    result = distinguishing_attack(
        lambda x, rng: discrete_laplace_mechanism(x, epsilon=Fraction(1, 10), rng=rng) + rng.normal(0, 1e-3), 0, 1,
        reachable=lambda y, x: grid_reachable(y, x), n_trials=200, rng=make_rng(5),
    )  # fmt: skip
    assert result.decisive_rate == 0.0 and result.reachable_rate == 0.0


def test_attack_is_at_chance_against_discrete_gaussian_and_snapping():
    def snap(x, rng):
        return snapping_mechanism(x, sensitivity=1.0, epsilon=Fraction(1, 10), lower=-1e3, upper=1e3, grid_bits=10,
                                  rng=rng)  # fmt: skip

    for mechanism, reach in (
        (lambda x, rng: discrete_gaussian_mechanism(x, sigma2=100, rng=rng), lambda y, x: grid_reachable(y, x)),
        (snap, lambda y, x: grid_reachable(y, x, gamma=Fraction(1, 1024), lower=-1e3, upper=1e3)),
        # the float attacker, pointed at the snapped outputs, learns nothing either
        (snap, lambda y, x: textbook_laplace_reachable(y, x, scale=10.0)),
    ):
        result = distinguishing_attack(mechanism, 0, 1, reachable=reach, n_trials=N_TRIALS, rng=make_rng(6))
        assert abs(result.success_rate - 0.5) < chance_tolerance(N_TRIALS)


def test_grid_reachable_and_dp_success_bound():
    assert grid_reachable(3, 0) and not grid_reachable(3.5, 0)
    assert grid_reachable(0.3, 0, gamma=Fraction(1, 4), lower=0.3, upper=1)  # a clamp value
    assert not grid_reachable(1.25, 0, gamma=Fraction(1, 4), lower=0, upper=1)
    assert dp_success_bound(epsilon=math.log(3)) == pytest.approx(0.75)
    assert dp_success_bound(epsilon=1.0, delta=0.1) == pytest.approx(0.5 + 0.5 * (math.tanh(0.5) * 0.9 + 0.1))


@settings(max_examples=40, deadline=None)
@given(bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_outputs_raise(bad):
    with pytest.raises(ValueError, match="finite"):
        textbook_laplace_reachable(bad, 0.0, scale=1.0)
    with pytest.raises(ValueError, match="finite"):
        grid_reachable(bad, 0.0)


@settings(max_examples=40, deadline=None)
@given(bad=st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf)))
def test_bad_scale_raises_naming_the_value(bad):
    with pytest.raises(ValueError, match="scale"):
        textbook_laplace_mechanism(0.0, scale=bad, rng=make_rng(0))
    with pytest.raises(ValueError, match="scale"):
        textbook_laplace_reachable(0.0, 0.0, scale=bad)


@pytest.mark.parametrize(
    "call",
    [
        lambda: textbook_laplace_mechanism(0.0, scale=1.0, rng=make_rng(0), sampler="mkl"),
        lambda: textbook_laplace_mechanism(0.0, scale=1.0, rng=None),
        lambda: textbook_laplace_noise(0.1 + 2.0**-60, scale=1.0),
        lambda: textbook_laplace_noise(0.0, scale=1.0),
        lambda: distinguishing_attack(lambda x, r: x, 0, 1, reachable=lambda y, x: True, n_trials=0, rng=make_rng(0)),
        lambda: dp_success_bound(epsilon=-1.0),
    ],
)
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_privlabs_laplace_mechanism_is_the_textbook_sampler_the_attack_breaks():
    """``mechanisms.laplace_mechanism`` (every chapter's Laplace) draws the textbook float64 noise bit for
    bit, so the attack names its input far above the epsilon-DP ceiling: its docstring says so."""
    from privlab import mechanisms

    ours = mechanisms.laplace_mechanism(np.zeros(500), sensitivity=1.0, epsilon=0.1, rng=make_rng(5))
    assert np.array_equal(ours, textbook_laplace_mechanism(0.0, scale=10.0, rng=make_rng(5), size=500))
    r = distinguishing_attack(lambda x, rng: mechanisms.laplace_mechanism(float(x), sensitivity=1.0, epsilon=0.1, rng=rng),
                              0, 1, reachable=lambda y, x: textbook_laplace_reachable(y, x, scale=10.0),
                              n_trials=300, rng=make_rng(3))
    assert r.success_rate > dp_success_bound(epsilon=0.1) + 6 * r.standard_error
    assert "Mironov" in mechanisms.laplace_mechanism.__doc__ and "discrete" in mechanisms.gaussian_mechanism.__doc__
