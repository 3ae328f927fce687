"""LiRA (privlab.attacks.lira): statistic, scores, ROC, DP bound, batched trainer."""

import math

import numpy as np
import pytest
import torch

from privlab.attacks import (
    dp_tpr_bound,
    lira_scores,
    logit_confidence,
    roc_curve,
    tpr_at_fpr,
    train_mlps,
)
from privlab.attacks.lira import clipped_grad_sums


def test_logit_confidence_matches_the_probability_form():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(5, 7, 4)), rng.integers(0, 4, size=7)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    py = np.take_along_axis(p, np.broadcast_to(y[None, :, None], (5, 7, 1)), -1)[..., 0]
    np.testing.assert_allclose(
        logit_confidence(z, y), np.log(py / (1 - py)), rtol=1e-10
    )
    # stable where p_y rounds to 1
    assert logit_confidence(np.array([[800.0, 0.0]]), np.array([0]))[
        0
    ] == pytest.approx(800.0)


def test_lira_is_the_gaussian_likelihood_ratio_with_leave_one_out_means():
    rng = np.random.default_rng(1)
    keep = np.tile([True, False], (4, 3)).T.reshape(12, 2)  # every example 6 in, 6 out
    phi = rng.normal(size=(12, 2))
    s = lira_scores(phi, keep, global_variance=False)
    m, i = 3, 1
    others = np.arange(12) != m
    ins, outs = phi[others & keep[:, i], i], phi[others & ~keep[:, i], i]

    def logpdf(x, v):
        return -0.5 * (np.log(2 * np.pi * v.var()) + (x - v.mean()) ** 2 / v.var())

    assert s[m, i] == pytest.approx(logpdf(phi[m, i], ins) - logpdf(phi[m, i], outs))


def test_lira_separates_shifted_members_and_offline_is_monotone_in_phi():
    rng = np.random.default_rng(2)
    keep = rng.random((32, 2000)) < 0.5
    phi = rng.normal(size=keep.shape) + 1.5 * keep
    s = lira_scores(phi, keep)
    assert (
        tpr_at_fpr(s, keep, 0.01) > 0.15
    )  # Gaussian shift 1.5: TPR at 1% FPR is about 0.2
    off = lira_scores(phi, keep, online=False)
    assert tpr_at_fpr(off, keep, 0.01) > 0.05
    with pytest.raises(ValueError, match="M >= 3"):
        lira_scores(phi[:2], keep[:2])
    with pytest.raises(ValueError, match="finite"):
        lira_scores(np.where(keep, np.nan, phi), keep)


def test_roc_of_random_scores_hugs_the_diagonal():
    rng = np.random.default_rng(3)
    s, m = rng.normal(size=20000), rng.random(20000) < 0.5
    fpr, tpr = roc_curve(s, m)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert abs(tpr_at_fpr(s, m, 0.1) - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 10000) + 0.01
    with pytest.raises(ValueError, match="both"):
        roc_curve(s, np.ones_like(m))


def test_dp_bound():
    f = np.array([0.0, 0.001, 0.5, 1.0])
    b = dp_tpr_bound(f, epsilon=1.0, delta=1e-5)
    np.testing.assert_allclose(b[:2], math.e * f[:2] + 1e-5)
    assert b[-1] == 1.0 and b[2] == pytest.approx(1 - math.exp(-1) * (0.5 - 1e-5))
    with pytest.raises(ValueError, match="epsilon"):
        dp_tpr_bound(f, epsilon=-1.0, delta=1e-5)
    with pytest.raises(ValueError, match="fpr"):
        dp_tpr_bound(1.5, epsilon=1.0, delta=1e-5)


def test_clipped_sums_match_autograd_per_example():
    g = torch.Generator().manual_seed(0)
    d, h, k, b = 5, 7, 3, 6
    params = [
        torch.randn(1, d, h, generator=g),
        torch.randn(1, 1, h, generator=g),
        torch.randn(1, h, k, generator=g),
        torch.randn(1, 1, k, generator=g),
    ]
    x, y = torch.randn(1, b, d, generator=g), torch.randint(0, k, (1, b), generator=g)
    wts = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]])
    grads, loss_sum, norms = clipped_grad_sums(params, x, y, wts, 0.5)
    ref = [torch.zeros_like(p[0]) for p in params]
    for i in range(b):
        ps = [p[0].clone().requires_grad_() for p in params]
        out = torch.relu(x[0, i] @ ps[0] + ps[1][0]) @ ps[2] + ps[3][0]
        loss = torch.nn.functional.cross_entropy(out[None], y[0, i : i + 1])
        gi = torch.autograd.grad(loss, ps)
        norm = torch.sqrt(sum((t**2).sum() for t in gi))
        assert norms[0, i] == pytest.approx(float(norm), rel=1e-4)
        for r, t in zip(ref, gi):
            r += wts[0, i] * min(1.0, 0.5 / float(norm)) * t
    for gr, r in zip(grads, ref):
        torch.testing.assert_close(gr[0], r, rtol=1e-4, atol=1e-6)


def test_train_mlps_trains_and_validates():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    keep = rng.random((3, 200)) < 0.5
    ens = train_mlps(
        X,
        y,
        keep,
        hidden=8,
        epochs=5,
        sample_rate=0.2,
        lr=0.5,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert ens.logits.shape == (3, 200, 2) and ens.steps == 25
    assert (ens.losses[-1] < ens.losses[0]).all() and 0 <= ens.clipped_fraction <= 1
    assert (ens.logits.argmax(-1) == y).mean() > 0.8
    with pytest.raises(ValueError, match="max_grad_norm"):
        train_mlps(
            X,
            y,
            keep,
            hidden=8,
            epochs=1,
            sample_rate=0.2,
            lr=0.5,
            noise_multiplier=1.0,
            generator=torch.Generator(),
        )


def test_train_mlps_divides_by_a_public_constant():
    """The step is lr / (q p N) with p N public: it ignores the private N_m of each model."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    keep = np.zeros((2, 60), dtype=bool)
    keep[0, :40] = True  # N_m = 40 and 0: an empty model still takes finite noise steps
    kw = dict(hidden=4, epochs=2, sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1.0)
    a = train_mlps(X, y, keep, lr=0.2, inclusion_rate=0.5, generator=torch.Generator().manual_seed(1), **kw)
    b = train_mlps(X, y, keep, lr=0.4, inclusion_rate=1.0, generator=torch.Generator().manual_seed(1), **kw)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)
    assert np.isfinite(a.logits).all()
    with pytest.raises(ValueError, match="inclusion_rate"):
        train_mlps(X, y, keep, lr=0.2, inclusion_rate=0.0, generator=torch.Generator(), **kw)


def test_bootstrap_tpr_matches_tpr_at_fpr():
    """The bootstrap's fast TPR equals tpr_at_fpr, ties and nan included; replicates are paired."""
    from privlab.attacks import bootstrap_tpr
    from privlab.attacks.lira import tpr_at_fpr_flat

    rng = np.random.default_rng(7)
    mem = rng.random((4, 500)) < 0.5
    s = rng.normal(size=(4, 500)) + 0.5 * mem
    s_tied = np.round(s, 1)
    s_tied[0, :5] = np.nan
    for a in (s, s_tied):
        for f in (0.0, 0.001, 0.01, 0.1, 0.5, 1.0):
            assert tpr_at_fpr_flat(a.ravel(), mem.ravel(), f) == pytest.approx(tpr_at_fpr(a, mem, f))
    reps = bootstrap_tpr([s, s], mem, 0.05, n_boot=50, rng=np.random.default_rng(0))
    assert reps.shape == (50, 2) and (reps[:, 0] == reps[:, 1]).all()
    assert abs(reps[:, 0].mean() - tpr_at_fpr(s, mem, 0.05)) < 4 * reps[:, 0].std()


def test_bootstrap_tpr_counts_the_model_to_model_variance():
    """With a per-model effect, the two-way bootstrap's sd matches the sd over fresh data sets.

    Resampling the examples alone (every model in every replicate) misses the models' share.
    """
    from privlab.attacks import bootstrap_tpr
    from privlab.attacks.lira import tpr_at_fpr_flat

    def draw(rng, m=8, n=300):
        mem = rng.random((m, n)) < 0.5
        leak = rng.normal(1.0, 0.5, (m, 1))  # how much each target model leaks
        hard = rng.normal(0.0, 0.5, (1, n))  # each example's difficulty
        return rng.normal(size=(m, n)) + mem * (leak + hard), mem

    rng = np.random.default_rng(3)
    truth = np.std(
        [tpr_at_fpr_flat(*(a.ravel() for a in draw(rng)), 0.05) for _ in range(400)], ddof=1
    )
    two, one = [], []
    for _ in range(20):
        s, mem = draw(rng)
        two.append(bootstrap_tpr([s], mem, 0.05, n_boot=100, rng=rng)[:, 0].std(ddof=1))
        one.append(
            bootstrap_tpr([s], mem, 0.05, n_boot=100, rng=rng, resample_models=False)[
                :, 0
            ].std(ddof=1)
        )
    assert 0.75 < np.mean(two) / truth < 1.5, (np.mean(two), truth)
    assert np.mean(one) / truth < 0.6, (np.mean(one), truth)
    with pytest.raises(ValueError, match="M >= 2"):
        bootstrap_tpr([s[:1]], mem[:1], 0.05, n_boot=2, rng=rng)


def test_random_halves_are_exact_halves_drawn_independently():
    from privlab.attacks.lira import random_halves

    keep = random_halves(400, 10, np.random.default_rng(0))
    assert keep.shape == (400, 10) and (keep.sum(1) == 5).all()
    # each example in each model with probability 1/2, independently across models:
    # the number of models holding an example is Binomial(400, 1/2) (sd 10)
    assert np.all(np.abs(keep.sum(0) - 200) < 4 * 10)
    # the membership of example 0 in model m says nothing about model m + 1's
    agree = (keep[:-1, 0] == keep[1:, 0]).mean()
    assert abs(agree - 0.5) < 4 * 0.5 / math.sqrt(399)
    assert np.array_equal(keep, random_halves(400, 10, np.random.default_rng(0)))


def test_lira_ddof_one_gives_the_unbiased_variance():
    rng = np.random.default_rng(3)
    keep = np.tile([True, False], (3, 3)).T.reshape(6, 3)  # every example 3 in, 3 out
    phi = rng.normal(size=(6, 3))
    s = lira_scores(phi, keep, global_variance=False, ddof=1)
    m, i = 0, 2
    others = np.arange(6) != m
    ins, outs = phi[others & keep[:, i], i], phi[others & ~keep[:, i], i]

    def logpdf(x, v):
        var = v.var(ddof=1)
        return -0.5 * (np.log(2 * np.pi * var) + (x - v.mean()) ** 2 / var)

    assert s[m, i] == pytest.approx(logpdf(phi[m, i], ins) - logpdf(phi[m, i], outs))
    with pytest.raises(ValueError, match="ddof"):
        lira_scores(phi, keep, ddof=2)


def test_auc_flat_matches_sklearn_with_ties_and_nan():
    from sklearn.metrics import roc_auc_score

    from privlab.attacks.lira import auc_flat, bootstrap_auc

    rng = np.random.default_rng(4)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    m = rng.random(300) < 0.4
    assert auc_flat(s, m) == pytest.approx(roc_auc_score(m, s))
    s_nan = s.copy()
    s_nan[:7] = np.nan
    assert auc_flat(s_nan, m) == pytest.approx(roc_auc_score(m[7:], s[7:]))
    # the bootstrap of the AUC is centred on it and spreads like its standard error
    phi = rng.normal(size=(6, 200))
    keep = rng.random((6, 200)) < 0.5
    phi = phi + keep
    boot = bootstrap_auc([phi], keep, n_boot=100, rng=rng)
    assert abs(boot.mean() - auc_flat(phi, keep)) < 0.02 and 0.003 < boot.std() < 0.05


def test_per_example_variances_need_two_models_on_each_side():
    """With one 'in' (or 'out') model left, ddof=1 divided 0 or a rounding residual by 0: members got
    -inf and non-members +inf (AUC 0.38 with no signal at all); such cells are nan now, for both sides."""
    from privlab.attacks.lira import lira_scores

    rng = np.random.default_rng(0)
    m_models, n = 6, 400
    keep = rng.random((m_models, n)) < 0.5
    phi = rng.normal(size=(m_models, n))  # no membership signal
    for ddof in (0, 1):
        scores = lira_scores(phi, keep, online=True, global_variance=False, ddof=ddof)
        n_in = keep.sum(0) - keep
        n_out = (~keep).sum(0) - ~keep
        few = (n_in < 2) | (n_out < 2)
        assert np.isnan(scores[few]).all() and np.isfinite(scores[~few]).all()
        assert np.isnan(scores[keep]).mean() == pytest.approx(np.isnan(scores[~keep]).mean(), abs=0.05)


def test_tied_infinite_scores_are_one_threshold():
    # np.diff(inf, inf) is nan, so each tied inf was a threshold of its own, in input order
    from privlab.attacks.lira import roc_curve, tpr_at_fpr, tpr_at_fpr_flat

    s = np.array([np.inf, np.inf, np.inf, np.inf, 0.0, -1.0])
    for m in (np.array([1, 1, 0, 0, 1, 0], bool), np.array([0, 0, 1, 1, 1, 0], bool)):
        fpr, tpr = roc_curve(s, m)
        assert fpr.tolist()[:2] == [0.0, 2 / 3] and tpr.tolist()[:2] == [0.0, 2 / 3]
        assert tpr_at_fpr(s, m, 0.0) == tpr_at_fpr_flat(s, m, 0.0) == 0.0
    assert np.isnan(tpr_at_fpr_flat(s[:2], np.array([1, 1], bool), 0.1))   # one class: nan, not an error
    assert np.isnan(tpr_at_fpr_flat(s[:2], np.array([0, 0], bool), 0.1))
