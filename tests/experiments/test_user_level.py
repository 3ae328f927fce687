"""User-level DP-SGD (privlab.experiments.user_level) and the guarantees over time and selection."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from privlab.accounting import dpsgd_epsilon
from privlab.dpsgd import DPSGDConfig, clipped_grad_sum
from privlab.experiments.streamrec_privacy import (
    group_privacy,
    random_stopping_epsilon,
    retraining_epsilon,
    study_epsilon,
)
from privlab.experiments.user_level import masked_loss, pack_by_user, train_user_level, user_clipped_sum_reference
from privlab.models import StreamRecClickPredictor

BCE = nn.BCEWithLogitsLoss(reduction="none")


def _data(n=80, users=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    return rng.integers(0, users, n), torch.randn(n, 40, generator=g), (torch.rand(n, generator=g) < 0.4).float()


def test_pack_by_user_caps_masks_and_keeps_rows():
    user, X, y = _data()
    p = pack_by_user(user, [X], y, max_rows=5, rng=np.random.default_rng(1))
    counts = np.bincount(user)
    assert p.users.tolist() == np.flatnonzero(counts).tolist()
    assert p.rows_per_user.tolist() == np.minimum(counts[counts > 0], 5).tolist()
    assert p.rows_kept == int(np.minimum(counts, 5).sum()) and p.rows_total == user.size
    for j, u in enumerate(p.users):  # every kept row is one of the user's rows, padding is zero
        mask = p.targets[j, :, 1] > 0
        rows = {tuple(np.round(r.numpy(), 5)) for r in X[user == u]}
        assert all(tuple(np.round(r.numpy(), 5)) in rows for r in p.inputs[0][j][mask])
        assert torch.all(p.inputs[0][j][~mask] == 0) and torch.all(p.targets[j, ~mask] == 0)


@pytest.mark.parametrize("bad", [dict(max_rows=0), dict(labels=torch.zeros(3))])
def test_pack_by_user_rejects_bad_input(bad):
    user, X, y = _data()
    kw = {"max_rows": 4, "labels": y, **bad}
    with pytest.raises(ValueError):
        pack_by_user(user, [X], kw["labels"], max_rows=kw["max_rows"], rng=np.random.default_rng(0))


@pytest.mark.parametrize("c", [0.05, 0.5, 100.0])
def test_user_level_kernel_equals_the_per_user_loop(c):
    torch.manual_seed(0)
    user, X, y = _data()
    model = StreamRecClickPredictor(dropout=0.0)
    p = pack_by_user(user, [X], y, max_rows=1000, rng=np.random.default_rng(0))
    fast = clipped_grad_sum(model, masked_loss(BCE), p.inputs[0], p.targets, max_grad_norm=c)
    ref = user_clipped_sum_reference(model, BCE, [X], y, user, max_grad_norm=c)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_user_level_kernel_with_embeddings():
    from privlab.experiments.movielens import MovieLensRecommender

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    user = rng.integers(0, 6, 50)
    item = torch.from_numpy(rng.integers(0, 11, 50))
    y = torch.from_numpy((rng.random(50) < 0.3).astype(np.float32))
    model = MovieLensRecommender(6, 11, rng.random((11, 4)).astype(np.float32), dim=3, hidden=(8,))
    u = torch.from_numpy(user)
    p = pack_by_user(user, [u, item], y, max_rows=100, rng=rng)
    fast = clipped_grad_sum(model, masked_loss(BCE), p.inputs, p.targets, max_grad_norm=0.3)
    ref = user_clipped_sum_reference(model, BCE, [u, item], y, user, max_grad_norm=0.3)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_train_user_level_samples_users():
    user, X, y = _data(n=200, users=40)
    p = pack_by_user(user, [X], y, max_rows=8, rng=np.random.default_rng(0))
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=10, epochs=2, accountant="pld",
                      delta=1e-4, progress=False, record_grad_norms=True)
    res = train_user_level(StreamRecClickPredictor(), p, row_loss=BCE, config=cfg,
                           generator=torch.Generator().manual_seed(0))
    assert res.sample_rate == pytest.approx(10 / p.n_users) and res.steps == 2 * round(p.n_users / 10)
    assert res.epsilon == pytest.approx(dpsgd_epsilon(noise_multiplier=1.0, sample_rate=10 / p.n_users,
                                                      steps=res.steps, delta=1e-4), rel=1e-6)


def test_group_privacy():
    assert group_privacy(epsilon=0.5, delta=1e-8, k=2) == (1.0, pytest.approx(2 * math.exp(0.5) * 1e-8))
    assert group_privacy(epsilon=1.0, delta=1e-6, k=2000)[1] == math.inf
    with pytest.raises(ValueError):
        group_privacy(epsilon=1.0, delta=1e-6, k=0)


def test_retraining_and_study_composition():
    kw = dict(noise_multiplier=1.0, sample_rate=0.02, steps=50, delta=1e-6)
    e = [retraining_epsilon(**kw, trainings=w) for w in (1, 30, 365)]
    assert e[0] < e[1] < e[2]
    assert e[1] == pytest.approx(dpsgd_epsilon(noise_multiplier=1.0, sample_rate=0.02, steps=1500, delta=1e-6))
    run = {"noise_multiplier": 1.0, "sample_rate": 0.02, "steps": 50}
    assert study_epsilon([run] * 30, delta=1e-6) == pytest.approx(e[1], rel=1e-3)
    with pytest.raises(ValueError):
        study_epsilon([], delta=1e-6)


def test_random_stopping_bound():
    run = dict(noise_multiplier=1.0, sample_rate=0.02, steps=500)
    single = dpsgd_epsilon(**run, delta=1e-6, accountant="rdp")
    r = [random_stopping_epsilon(candidates=[run], delta=1e-6, mean_candidates=m) for m in (1, 5, 50)]
    assert single < r[0] < r[1] < r[2]  # tuning always costs, more candidates cost more
    assert r[2] < 50 * single  # far below composing 50 runs
    # a less private candidate raises the bound: the curve is the pointwise maximum
    weaker = dict(run, noise_multiplier=0.7)
    both = random_stopping_epsilon(candidates=[run, weaker], delta=1e-6, mean_candidates=5)
    assert both == pytest.approx(random_stopping_epsilon(candidates=[weaker], delta=1e-6, mean_candidates=5))
    assert both > r[1]
    with pytest.raises(ValueError):
        random_stopping_epsilon(candidates=[run], delta=1e-6, mean_candidates=0.5)
    with pytest.raises(ValueError):
        random_stopping_epsilon(candidates=[], delta=1e-6, mean_candidates=2)
