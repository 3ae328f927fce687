"""Selection, the sparse vector technique, local DP and continual release: distributions and closed forms."""

import functools
import math

import mpmath
import numpy as np
import pytest
from scipy import stats

from privlab import continual, local_dp, selection, sparse_vector
from privlab.config import make_rng
from privlab.mechanisms import exponential_log_probabilities

N = 40_000


def test_gumbel_noisy_max_is_the_exponential_mechanism():
    q = np.array([10.0, 8.0, 7.0, 3.0])
    draws = selection.report_noisy_max(q, epsilon=1.0, sensitivity=1.0, rng=make_rng(0), noise="gumbel", size=N)
    expected = np.exp(exponential_log_probabilities(q, epsilon=1.0, sensitivity=1.0)) * N
    observed = np.bincount(draws, minlength=q.size)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_permute_and_flip_two_candidates_closed_form():
    # order random: the runner-up is visited first w.p. 1/2 and kept w.p. exp(eps (q2 - q1) / 2)
    eps, gap = 1.0, 1.0
    draws = selection.permute_and_flip([gap, 0.0], epsilon=eps, sensitivity=1.0, rng=make_rng(1), size=N)
    p_runner_up = 0.5 * math.exp(-eps * gap / 2)
    se = math.sqrt(p_runner_up * (1 - p_runner_up) / N)
    assert abs((draws == 1).mean() - p_runner_up) < 5 * se


def test_permute_and_flip_never_worse_than_exponential_mechanism():
    q = np.array([20.0, 18.0, 18.0, 15.0, 5.0, 5.0])
    pf = selection.permute_and_flip(q, epsilon=0.5, sensitivity=1.0, rng=make_rng(2), size=N)
    em = selection.report_noisy_max(q, epsilon=0.5, sensitivity=1.0, rng=make_rng(3), noise="gumbel", size=N)
    gap_pf, gap_em = selection.expected_score_gap(q, pf), selection.expected_score_gap(q, em)
    se = math.sqrt(q.var() * 2 / N)
    assert gap_pf <= gap_em + 4 * se


def test_exponential_noise_max_equals_permute_and_flip():
    q = np.array([5.0, 4.0, 1.0])
    a = selection.report_noisy_max(q, epsilon=1.0, sensitivity=1.0, rng=make_rng(4), noise="exponential", size=N)
    b = selection.permute_and_flip(q, epsilon=1.0, sensitivity=1.0, rng=make_rng(5), size=N)
    table = np.stack([np.bincount(a, minlength=3), np.bincount(b, minlength=3)])
    assert stats.chi2_contingency(table).pvalue > 1e-3


@pytest.mark.parametrize("bad", [{"epsilon": 0.0}, {"epsilon": float("nan")}, {"sensitivity": -1.0}])
def test_selection_rejects_bad_parameters(bad):
    kw = {"epsilon": 1.0, "sensitivity": 1.0, "rng": make_rng(0)} | bad
    with pytest.raises(ValueError, match=str(list(bad.values())[0])):
        selection.permute_and_flip([1.0, 2.0], **kw)


def test_selection_rejects_unknown_noise():
    with pytest.raises(ValueError, match="'cauchy'"):
        selection.report_noisy_max([1.0], epsilon=1.0, sensitivity=1.0, rng=make_rng(0), noise="cauchy")


def test_sparse_vector_stops_after_c_tops():
    out = sparse_vector.sparse_vector(np.full(10, 1e6), threshold=0, c=3, epsilon=1.0, sensitivity=1.0,
                                      rng=make_rng(0))
    assert out.tolist() == [1, 1, 1] + [-1] * 7


def test_above_threshold_finds_the_first_query_above():
    idx = sparse_vector.above_threshold([0, 0, 0, 1e6, 1e6], threshold=1e3, epsilon=1.0, sensitivity=1.0,
                                        rng=make_rng(0), size=1000)
    assert (idx == 3).all()


def test_honest_svt_respects_its_epsilon_on_the_broken_variants_worst_case():
    # the pair that breaks Alg. 5 does not break the standard SVT: P[(bot, top)] ratio within e^eps
    a, b = np.array([0.0, 1.0]), np.array([1.0, 0.0])
    oa = sparse_vector.sparse_vector(a, threshold=0.0, c=1, epsilon=1.0, sensitivity=1.0, rng=make_rng(1), size=N)
    ob = sparse_vector.sparse_vector(b, threshold=0.0, c=1, epsilon=1.0, sensitivity=1.0, rng=make_rng(2), size=N)
    pa, pb = (oa == [0, 1]).all(1).mean(), (ob == [0, 1]).all(1).mean()
    assert pb > 0 and pa / pb < math.e * 1.15


def test_broken_threshold_only_svt_has_an_impossible_output_on_the_neighbour():
    f, (a, b), t, c = sparse_vector.BROKEN_VARIANTS["SVT, threshold noise only (Lyu et al. Alg. 5)"]
    oa = f(a, threshold=t, c=c, epsilon=1.0, sensitivity=1.0, rng=make_rng(3), size=N)
    ob = f(b, threshold=t, c=c, epsilon=1.0, sensitivity=1.0, rng=make_rng(4), size=N)
    assert (oa == [0, 1]).all(1).mean() > 0.1 and not (ob == [0, 1]).all(1).any()


def _late_low_answer_rate(fn, q, n, seed):
    """P[bot for the first m - 1 queries, then a top whose noisy answer is <= 0] (c = 1, T = 0)."""
    out = fn(q, threshold=0.0, c=1, epsilon=1.0, sensitivity=1.0, rng=make_rng(seed), size=n)
    codes, answers = out if isinstance(out, tuple) else (out, None)
    hit = np.all(codes[:, :-1] == 0, axis=1) & (codes[:, -1] == 1)
    if answers is not None:
        hit &= answers[:, -1] <= 0
    return hit.mean()


def test_noisy_answer_svt_releases_the_noisy_answer_of_tops_only():
    q = np.array([0.0, 5.0, -5.0, 5.0])
    codes, answers = sparse_vector.broken_svt_noisy_answer(q, threshold=0.0, c=2, epsilon=1.0, sensitivity=1.0,
                                                           rng=make_rng(7), size=2_000)
    assert np.array_equal(np.isfinite(answers), codes == 1)
    assert np.all((codes == 1).sum(1) <= 2)
    # the released answers are q_i + Lap(c / eps2) = q_i + Lap(4): mean q_i given top is biased up,
    # but the answer of query 1 (q = 5) is above the noisy threshold with probability > 1/2
    assert np.mean(codes[:, 1] == 1) > 0.5


def test_noisy_answer_svt_has_privacy_loss_m_eps_over_2_on_the_monotone_pair():
    # Lyu et al. Alg. 3, the docstring's counterexample with m = 3: the event's probability ratio is
    # exactly e^(m eps / 2) = e^1.5 (> e^eps); 400k draws give ~2,000 and ~470 events: log-ratio se
    # sqrt(1/2000 + 1/470) = 0.05, tolerance 5 se
    m, n = 3, 400_000
    f = sparse_vector.broken_svt_noisy_answer
    p, p_prime = _late_low_answer_rate(f, np.zeros(m), n, 1), _late_low_answer_rate(f, np.ones(m), n, 2)
    log_ratio = math.log(p / p_prime)
    se = math.sqrt(1 / (p * n) + 1 / (p_prime * n))
    assert abs(log_ratio - m / 2) < 5 * se and log_ratio - 5 * se > 1.0, (log_ratio, se)
    # the honest SVT on the same pair and event (without the answer): within e^eps, both the general one
    # and the monotone one, whose query noise Lap(c / eps2) is Alg. 3's (the control without the bug)
    for seed, h in [(3, sparse_vector.sparse_vector), (5, functools.partial(sparse_vector.sparse_vector,
                                                                             monotonic=True))]:
        ph, ph_prime = _late_low_answer_rate(h, np.zeros(m), n, seed), _late_low_answer_rate(h, np.ones(m), n, seed + 1)
        se_h = math.sqrt(1 / (ph * n) + 1 / (ph_prime * n))
        assert abs(math.log(ph / ph_prime)) < 1.0 + 5 * se_h, (ph, ph_prime)


def test_grr_and_unary_estimates_are_unbiased_with_the_closed_form_variance():
    k, n, eps = 5, 2_000, 1.0
    truth = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    values = np.repeat(np.arange(k), (truth * n).astype(int))
    rng = make_rng(5)
    for name, est, (p, q) in [
        ("grr", lambda: local_dp.grr_estimate(local_dp.grr_perturb(values, k=k, epsilon=eps, rng=rng),
                                               k=k, epsilon=eps), local_dp.grr_probabilities(k=k, epsilon=eps)),
        ("oue", lambda: local_dp.unary_estimate(local_dp.unary_perturb(values, k=k, epsilon=eps, rng=rng),
                                                 epsilon=eps), local_dp.unary_probabilities(epsilon=eps)),
        ("rappor", lambda: local_dp.unary_estimate(
            local_dp.unary_perturb(values, k=k, epsilon=eps, rng=rng, kind="symmetric"), epsilon=eps,
            kind="symmetric"), local_dp.unary_probabilities(epsilon=eps, kind="symmetric")),
    ]:
        reps = np.array([est() / n for _ in range(300)])
        var = np.array([local_dp.frequency_variance(p=p, q=q, n=n, f=f) for f in truth])
        se_mean = np.sqrt(var / 300)
        assert np.all(np.abs(reps.mean(0) - truth) < 5 * se_mean), name
        # sample variance of 300 draws: relative sd about sqrt(2/299) = 8%
        assert np.all(np.abs(reps.var(0, ddof=1) / var - 1) < 0.35), name


def test_count_mean_sketch_recovers_frequencies():
    values = np.repeat([3, 17, 42], [5_000, 3_000, 2_000])
    j, signs = local_dp.cms_client(values, epsilon=4.0, m=64, h=16, rng=make_rng(6))
    est = local_dp.cms_estimate(j, signs, [3, 17, 42, 99], epsilon=4.0, m=64, h=16) / values.size
    np.testing.assert_allclose(est, [0.5, 0.3, 0.2, 0.0], atol=0.05)


def test_local_dp_costs_a_factor_of_order_n_against_central():
    for n in (1_000, 100_000):
        p, q = local_dp.unary_probabilities(epsilon=1.0)
        ratio = local_dp.frequency_variance(p=p, q=q, n=n) / local_dp.central_laplace_frequency_variance(
            epsilon=1.0, n=n)
        assert 0.5 * n < ratio < 5 * n


def test_local_dp_rejects_values_outside_the_domain():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        local_dp.grr_perturb([0, 1, 3], k=3, epsilon=1.0, rng=make_rng(0))


def test_tree_mechanism_error_matches_its_closed_form():
    T = 64
    x = make_rng(7).integers(0, 2, T)
    rng = make_rng(8)
    errs = np.array([continual.binary_tree_counts(x, epsilon=1.0, rng=rng) - np.cumsum(x) for _ in range(2_000)])
    np.testing.assert_allclose(errs.std(0), continual.tree_error_std(T, epsilon=1.0), rtol=0.12)
    naive = np.array([continual.noisy_increment_counts(x, epsilon=1.0, rng=rng) - np.cumsum(x)
                      for _ in range(2_000)])
    np.testing.assert_allclose(naive.std(0)[-1], math.sqrt(2 * T), rtol=0.12)


def test_tree_prefix_noise_shape_and_scale():
    noise = continual.tree_prefix_noise(16, std=2.0, rng=make_rng(9), dim=3000)
    assert noise.shape == (16, 3000)
    # prefix t sums one node per set bit of t: t = 15 (1111b) four nodes, t = 16 (10000b) one
    np.testing.assert_allclose(noise[14].std(), 2.0 * math.sqrt(4), rtol=0.1)
    np.testing.assert_allclose(noise[15].std(), 2.0, rtol=0.1)


@pytest.mark.parametrize("noise", ["laplace", "exponential", "gumbel"])
def test_exact_selection_probabilities_match_sampling(noise):
    q = np.array([10.0, 9.0, 8.0, 5.0])
    p = selection.selection_probabilities(q, epsilon=0.5, sensitivity=1.0, noise=noise,
                                          monotonic=True)
    assert abs(p.sum() - 1) < 1e-8
    draws = selection.report_noisy_max(q, epsilon=0.5, sensitivity=1.0, rng=make_rng(3),
                                       noise=noise, monotonic=True, size=N)
    assert stats.chisquare(np.bincount(draws, minlength=q.size), p * N).pvalue > 1e-3


def test_exact_permute_and_flip_gain_is_at_most_a_factor_of_two():
    q = np.array([20.0, 19.0, 19.0, 15.0, 3.0])
    for eps in [0.1, 1.0, 3.0]:
        short = {nz: q.max() - selection.selection_probabilities(
            q, epsilon=eps, sensitivity=1.0, noise=nz) @ q
            for nz in ["gumbel", "exponential"]}
        gain = 1 - short["exponential"] / short["gumbel"]
        assert -1e-8 <= gain <= 0.5 + 1e-6, (eps, gain)


def test_count_mean_sketch_exact_debiasing_removes_the_fixed_hash_bias():
    values = np.repeat(np.arange(10), 2_000)
    truth = np.full(10, 2_000.0)
    C = local_dp.cms_collision_matrix(np.arange(10), m=64, h=8)
    assert np.allclose(np.diag(C), 1.0)
    # Apple's correction in expectation: bias -(n - n_d)/(m - 1) when nothing collides
    apple_mean = 64 / 63 * (C @ truth - truth.sum() / 64)
    assert np.all(apple_mean < truth - 100), apple_mean
    runs = []
    for s in range(5):
        j, signs = local_dp.cms_client(values, epsilon=4.0, m=64, h=8, rng=make_rng(s))
        runs.append(local_dp.cms_estimate(j, signs, np.arange(10), epsilon=4.0, m=64,
                                          h=8,
                                          debias="exact"))
    est = np.mean(runs, axis=0)
    # per-value sd of one run 37-70 (10 seeds); mean of 5 runs: sd <= 32: 200 is 6 sd
    # (and fails on Apple's debiasing, whose bias here is below -100)
    assert np.all(np.abs(est - truth) < 200), est


def test_central_replace_one_has_four_times_the_add_remove_variance():
    ar = local_dp.central_laplace_frequency_variance(epsilon=1.0, n=100)
    ro = local_dp.central_laplace_frequency_variance(epsilon=1.0, n=100,
                                                     relation="replace-one")
    assert math.isclose(ro, 4 * ar)


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 9, 12, 16, 17, 31, 33])
def test_tree_levels_counts_only_the_nodes_that_enter_a_prefix(T):
    """The Laplace scale L/eps must count every released node holding a step, and no more.

    Regression: L was ceil(log2 T) + 1, one level too many when T is not a power of 2
    (T = 9: 5 levels charged, 4 ever released).
    """
    used = set()
    for t in range(1, T + 1):                      # greedy dyadic decomposition of [0, t)
        start = 0
        for lvl in reversed(range(T.bit_length() + 2)):
            if start + 2**lvl <= t:
                used.add((lvl, start // 2**lvl))
                start += 2**lvl
    per_step = [sum((lvl, s // 2**lvl) in used for lvl in range(T.bit_length() + 2)) for s in range(T)]
    assert max(per_step) == continual.tree_levels(T)   # attained (step 0): the bound is tight


@pytest.mark.parametrize("release", [continual.naive_fresh_counts, continual.noisy_increment_counts,
                                     continual.binary_tree_counts])
@pytest.mark.parametrize("bad", [5.0, -7.0, 1.5])
def test_continual_counts_refuse_events_outside_zero_one(release, bad):
    # the noise is calibrated to one event moving each count by at most 1: x = 5 once lost 5 epsilon
    x = np.array([0.0, 1.0, bad, 0.0])
    with pytest.raises(ValueError, match=rf"x\[2\] = {bad}"):
        release(x, epsilon=1.0, rng=make_rng(0))
    release(np.array([0.0, 0.5, 1.0]), epsilon=1.0, rng=make_rng(0))  # fractions of an event are fine


def test_local_dp_servers_refuse_reports_they_would_misread():
    # +-1 reports cast to bool all read as 1; j = -1 landed in the last sketch row; 0.5 became value 0
    pm1 = np.where(make_rng(0).random((50, 3)) < 0.5, -1, 1)
    with pytest.raises(ValueError, match=r"array of bits .* values \[-1\]"):
        local_dp.unary_estimate(pm1, epsilon=1.0)
    j, signs = local_dp.cms_client([1, 2, 3], epsilon=1.0, m=8, h=4, rng=make_rng(0))
    with pytest.raises(ValueError, match=r"in \[0, h=4\)"):
        local_dp.cms_estimate(np.r_[j[:-1], -1], signs, [1, 2, 3], epsilon=1.0, m=8, h=4)
    with pytest.raises(ValueError, match=r"\(n, m=8\) array of -1 and \+1"):
        local_dp.cms_estimate(j, signs * 2, [1, 2, 3], epsilon=1.0, m=8, h=4)
    with pytest.raises(ValueError, match="values must be integers, got 0.5"):
        local_dp.cms_client([1, 0.5], epsilon=1.0, m=8, h=4, rng=make_rng(0))
    # a fractional candidate was truncated and read another value's buckets
    with pytest.raises(ValueError, match="candidates must be integers, got 2.5"):
        local_dp.cms_estimate(j, signs, [1, 2.5], epsilon=1.0, m=8, h=4)
    with pytest.raises(ValueError, match="candidates must be integers, got 2.5"):
        local_dp.cms_collision_matrix([1, 2.5], m=8, h=4)


@pytest.mark.parametrize("epsilon", [1.0, 800.0, 2000.0])
def test_local_dp_probabilities_do_not_overflow(epsilon):
    # math.exp(800) raised OverflowError, naming no value
    p, q = local_dp.grr_probabilities(k=4, epsilon=epsilon)
    assert p + 3 * q == pytest.approx(1.0, abs=0, rel=1e-15)
    if epsilon < 700:
        assert p / q == pytest.approx(math.exp(epsilon), rel=1e-12)
    j, signs = local_dp.cms_client([1, 2], epsilon=epsilon, m=8, h=4, rng=make_rng(0))
    assert np.isfinite(local_dp.cms_estimate(j, signs, [1, 2], epsilon=epsilon, m=8, h=4)).all()


@pytest.mark.parametrize("epsilon", [1e-3, 1.0, 10.0, 36.0, 38.0, 76.0, 800.0, 2000.0])
def test_local_dp_samplers_are_at_least_as_private_as_claimed_in_double_precision(monkeypatch, epsilon):
    """The samplers compare rng.random(), a multiple of 2^-53, with thresholds: rounded to nearest, GRR kept
    every report for eps >= 38 and unary encoding sent q = 0 (a 1 named the value). The thresholds they use
    now, read off the comparisons, realise at most epsilon (exact fractions)."""
    from fractions import Fraction

    import privlab.mechanisms as mech

    seen = []
    for name in ("threshold_at_most", "threshold_at_least"):
        real = getattr(mech, name)
        monkeypatch.setattr(local_dp, name, lambda p, real=real: (seen.append(real(p)), seen[-1])[1])

    def mp(f):  # an exact fraction as a 60-digit mpf
        return mpmath.mpf(f.numerator) / f.denominator

    def realised(keep_t, other_t):  # log of the worst likelihood ratio, exactly
        with mpmath.workdps(60):
            return abs(mpmath.log(mp(Fraction(keep_t)) / mp(Fraction(other_t))))

    k = 5
    local_dp.grr_perturb([0, 1], k=k, epsilon=epsilon, rng=make_rng(0))
    t = Fraction(seen[-1])
    assert 0 < t < 1 and realised(t, (1 - t) / (k - 1)) <= epsilon
    for kind in ("symmetric", "optimized"):
        seen.clear()
        local_dp.unary_perturb([0, 1], k=k, epsilon=epsilon, rng=make_rng(0), kind=kind)
        p, q = (Fraction(x) for x in seen[-2:])
        assert 0 < q <= p < 1
        with mpmath.workdps(60):
            ratio = mpmath.log(mp(p * (1 - q)) / mp((1 - p) * q))
        assert 0 <= ratio <= epsilon
    seen.clear()
    local_dp.cms_client([1, 2], epsilon=epsilon, m=8, h=4, rng=make_rng(0))
    f = Fraction(seen[-1])
    assert 0 < f <= Fraction(1, 2)
    with mpmath.workdps(60):  # one coordinate's flip: (1 - f) / f, two coordinates change: squared
        assert 2 * mpmath.log(mp(1 - f) / mp(f)) <= epsilon + 1e-12


def test_red_team_inputs_refused_by_name():
    # each of these returned a number (a review of the less-visited modules)
    import numpy as np

    from privlab import local_dp, sparse_vector
    from privlab.config import make_rng

    for kw, match in ((dict(p=0.2, q=0.6), "q < p"), (dict(p=float("nan"), q=0.1), "p must"),
                      (dict(p=0.5, q=0.1, f=5), "f must"), (dict(p=0.5, q=0.5), "q < p")):
        with pytest.raises(ValueError, match=match):
            local_dp.frequency_variance(n=10, **kw)
    common = dict(c=1, epsilon=1, sensitivity=1, rng=make_rng(0))
    for values, threshold, match in (([1.0, 2.0], True, "threshold"), ([1.0, 2.0], [1, 2], "threshold"),
                                     (np.array([True, False]), 0.5, "booleans")):
        with pytest.raises(ValueError, match=match):
            sparse_vector.sparse_vector(values, threshold=threshold, **common)
