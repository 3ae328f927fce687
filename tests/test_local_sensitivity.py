"""Smooth sensitivity, propose-test-release and sample-and-aggregate against brute force and closed forms."""

import itertools
import math

import numpy as np
import pytest

from privlab import local_sensitivity as ls
from privlab.config import make_rng

LAM = 6


def _local_sensitivity_brute(d):
    med, best = np.median(d), 0.0
    for i in range(d.size):
        for v in range(LAM + 1):
            e = d.copy()
            e[i] = v
            best = max(best, abs(np.median(e) - med))
    return best


def _a_k_brute(x, k):
    best = 0.0
    for idx in itertools.combinations(range(x.size), k):
        for vals in itertools.product(range(LAM + 1), repeat=k):
            d = x.copy()
            d[list(idx)] = vals
            best = max(best, _local_sensitivity_brute(d))
    return best


@pytest.mark.parametrize("x", [[1.0, 2.0, 2.0, 4.0, 5.0], [0.0, 0.0, 3.0, 3.0, 6.0], [3.0, 3.0, 3.0]])
def test_smooth_sensitivity_equals_brute_force_on_a_grid(x):
    # A^(k), the largest local sensitivity within distance k, against enumeration of every data
    # set on the grid {0..6} at distance k (k <= 2 keeps it to seconds); S* from the A^(k)
    x = np.array(x)
    xs = np.sort(x)
    for k in range(3):
        assert ls._gaps(xs, float(LAM), k) == _a_k_brute(x, k), k
    beta = 0.3
    expected = max(math.exp(-k * beta) * ls._gaps(xs, float(LAM), k) for k in range(x.size + 1))
    assert math.isclose(ls.smooth_sensitivity_median(x, upper=LAM, beta=beta), expected, rel_tol=1e-12)
    assert ls.local_sensitivity_median(x, upper=LAM) == _local_sensitivity_brute(x)


def test_local_sensitivity_zero_is_revealed_by_the_noise_scale():
    # D has three equal middle values (LS = 0): "noise scaled to LS" releases the exact median;
    # on a neighbour D' the LS is positive. Seeing a non-median output rules D out: epsilon = infinity.
    d = np.array([0.0, 3.0, 3.0, 3.0, 6.0])
    d_prime = np.array([0.0, 3.0, 3.0, 5.0, 6.0])
    assert ls.local_sensitivity_median(d, upper=LAM) == 0.0
    assert ls.local_sensitivity_median(d_prime, upper=LAM) > 0.0


def test_ptr_refuses_on_unstable_data_and_answers_on_stable_data():
    rng = make_rng(0)
    stable = np.sort(make_rng(1).uniform(40, 60, size=2001))
    unstable = np.r_[np.zeros(1000), [50.0], np.full(1000, 100.0)]
    answers = [ls.ptr_median(stable, upper=100, bound=1.0, epsilon=1.0, delta=1e-6, rng=rng) for _ in range(50)]
    refused = [ls.ptr_median(unstable, upper=100, bound=1.0, epsilon=1.0, delta=1e-6, rng=rng) for _ in range(50)]
    assert all(a is not None for a in answers) and all(r is None for r in refused)


def test_smooth_median_error_scales_with_smooth_sensitivity():
    x = np.sort(make_rng(2).uniform(0, 100, size=1001))
    s = ls.smooth_sensitivity_median(x, upper=100, beta=1.0 / (2 * math.log(2 / 1e-6)))
    draws = ls.smooth_median(x, upper=100, epsilon=1.0, delta=1e-6, rng=make_rng(0), size=2000)
    # Laplace(2 s / eps): mean absolute error 2 s / eps; 2000 draws give 3% relative precision
    np.testing.assert_allclose(np.mean(np.abs(draws - np.median(x))), 2 * s, rtol=0.1)
    assert 2 * s < 100 / 20   # far below the global-sensitivity Laplace error (upper / eps = 100)


def test_sample_and_aggregate_is_unbiased_for_a_clipped_statistic():
    data = make_rng(3).normal(5.0, 1.0, size=10_000)
    vals = [ls.sample_and_aggregate(data, np.mean, blocks=100, lower=0, upper=10, epsilon=1.0, rng=make_rng(i))
            for i in range(200)]
    # noise sd sqrt(2) * 10 / (100 * 1) = 0.14, plus block sampling: mean of 200 within 0.05
    assert abs(np.mean(vals) - 5.0) < 0.05


def _blocks_seen(mechanism, data, seed):
    seen = []

    def stat(rows):
        seen.append(frozenset(np.asarray(rows).tolist()))
        return 0.0

    mechanism(data, stat, blocks=5, lower=0.0, upper=1.0, epsilon=1.0, rng=make_rng(seed))
    return seen


def test_sample_and_aggregate_adding_a_record_changes_exactly_one_block():
    """The add/remove coupling the guarantee rests on: each record's block is its own draw, so with the
    same seed D' = D + {x} has D's blocks except one, which gains x. A balanced partition (the twin)
    reshuffles: most blocks differ (the expert review's counterexample, chapter 5)."""
    d = np.arange(40.0)
    d_prime = np.r_[d, 99.0]
    for seed in range(20):
        before, after = _blocks_seen(ls.sample_and_aggregate, d, seed), _blocks_seen(ls.sample_and_aggregate, d_prime, seed)
        before += [frozenset()] * (5 - len(before))  # an empty block is not passed to the statistic
        after += [frozenset()] * (5 - len(after))
        assert len(set(after) - set(before)) == 1 and len(set(before) - set(after)) == 1, seed
        [grown] = set(after) - set(before)
        assert 99.0 in grown and grown - {99.0} in set(before), seed
    reshuffled = sum(len(set(_blocks_seen(ls.broken_balanced_sample_and_aggregate, d, s))
                         - set(_blocks_seen(ls.broken_balanced_sample_and_aggregate, d_prime, s))) for s in range(20))
    assert reshuffled > 20 * 3  # on average most of the 5 blocks differ


def test_sample_and_aggregate_empty_blocks_count_as_the_midpoint_and_are_not_computed():
    calls = []

    def stat(rows):
        calls.append(len(rows))
        return 1.0

    # 3 records in 50 blocks: at least 47 empty blocks, each the midpoint 0.5 of [0, 1]
    out = ls.sample_and_aggregate(np.ones(3), stat, blocks=50, lower=0.0, upper=1.0, epsilon=1e9, rng=make_rng(2))
    assert 0 not in calls and sum(calls) == 3
    assert out == pytest.approx((len(calls) * 1.0 + (50 - len(calls)) * 0.5) / 50, abs=1e-6)
    with pytest.raises(ValueError, match="need at least one record per block: 3 records, blocks=50"):
        ls.broken_balanced_sample_and_aggregate(np.ones(3), stat, blocks=50, lower=0.0, upper=1.0, epsilon=1.0,
                                                rng=make_rng(2))


def test_ptr_answer_rate_matches_the_laplace_test_closed_form():
    # answers iff gamma + Lap(1/eps) > ln(1/delta)/eps: P = 1 - exp(-(gamma - thr) eps)/2 above the
    # threshold, exp((gamma - thr) eps)/2 below; 20k draws: binomial se <= 0.0036, tolerance 5 se
    x = np.sort(np.r_[np.zeros(30), 5 + 0.035 * np.arange(-40, 41), np.full(30, 10.0)])
    eps, delta, n = 0.5, 1e-6, 20_000
    gamma = ls.distance_to_instability_median(x, upper=10.0, bound=1.0)
    thr = math.log(1 / delta) / eps
    p = 1 - math.exp(-(gamma - thr) * eps) / 2 if gamma > thr else math.exp((gamma - thr) * eps) / 2
    out = ls.ptr_median(x, upper=10.0, bound=1.0, epsilon=eps, delta=delta, rng=make_rng(4), size=n)
    answered = ~np.isnan(out)
    assert abs(answered.mean() - p) < 5 * math.sqrt(p * (1 - p) / n), (answered.mean(), p)
    # the answers are median + Lap(b / eps): mean absolute deviation b / eps = 2 (se 0.02 at ~12k)
    assert abs(np.mean(np.abs(out[answered] - 5.0)) - 2.0) < 0.1
    single = [ls.ptr_median(x, upper=10.0, bound=1.0, epsilon=eps, delta=delta, rng=make_rng(i)) for i in range(50)]
    assert all(v is None or isinstance(v, float) for v in single)


def test_local_sensitivity_noise_twin_releases_the_exact_median_on_d_only():
    d, d_prime = np.array([3.0, 5.0, 5.0, 5.0, 9.0]), np.array([3.0, 5.0, 5.0, 7.0, 9.0])
    on_d = ls.broken_local_sensitivity_median(d, upper=10.0, epsilon=1.0, rng=make_rng(5), size=1_000)
    on_d_prime = ls.broken_local_sensitivity_median(d_prime, upper=10.0, epsilon=1.0, rng=make_rng(6), size=1_000)
    assert np.all(on_d == 5.0) and not np.any(on_d_prime == 5.0)


def test_sample_and_aggregate_maps_undefined_blocks_to_the_midpoint():
    # a block statistic that is NaN (log of 0) or infinite must not make the release NaN: it counts
    # as the public default (a + b) / 2, so one record still moves the mean by at most (b - a) / m
    data = np.r_[np.zeros(4), np.ones(4)]
    log_mean = lambda rows: float(np.log(np.mean(rows)))  # noqa: E731  (-inf on an all-zero block)
    nan_stat = lambda rows: math.nan  # noqa: E731
    for stat in (log_mean, nan_stat):
        with np.errstate(divide="ignore"):
            out = ls.sample_and_aggregate(data, stat, blocks=4, lower=-1.0, upper=1.0, epsilon=1e9,
                                          rng=make_rng(0))
        assert math.isfinite(out) and -1.0 <= out <= 1.0
    # every block undefined: exactly the midpoint (up to the vanishing noise)
    assert ls.sample_and_aggregate(data, nan_stat, blocks=4, lower=0.0, upper=1.0, epsilon=1e9,
                                   rng=make_rng(1)) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("x", [[1.0, 2.0], [1.0, 2.0, 11.0]])
def test_median_tools_refuse_even_length_or_out_of_range(x):
    with pytest.raises(ValueError, match="odd length|upper"):
        ls.local_sensitivity_median(x, upper=10.0)


@pytest.mark.parametrize("lower, upper", [(-math.inf, 10.0), (0.0, math.inf), (math.nan, 1.0)])
def test_sample_and_aggregate_refuses_infinite_bounds(lower, upper):
    # an infinite bound made the noise scale infinite: the release was inf
    with pytest.raises(ValueError, match="finite"):
        ls.sample_and_aggregate(np.ones(10), np.mean, blocks=2, lower=lower, upper=upper, epsilon=1.0, rng=make_rng(0))


def test_sample_and_aggregate_bounds_must_be_real_numbers():
    import numpy as np

    from privlab.config import make_rng
    from privlab.local_sensitivity import sample_and_aggregate

    for lower, upper in (("0", 1), (False, True)):
        with pytest.raises(ValueError, match="must be a finite real number"):
            sample_and_aggregate(np.arange(10.0), np.mean, blocks=2, lower=lower, upper=upper, epsilon=1,
                                 rng=make_rng(0))
