"""The training loop: determinism, full-batch equivalences, empty batches, shuffling, accounting, profiling."""

from __future__ import annotations

import dataclasses
import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from privlab.dpsgd import (
    DPSGDConfig,
    PoissonAccountingWarning,
    clipped_grad_sum,
    per_example_grad_norms,
    profile_grad_norms,
    summarize_grad_norms,
    train,
)

train_module = importlib.import_module("privlab.dpsgd.train")  # the module, not the function it exports



def ce(out, t):
    return F.cross_entropy(out, t, reduction="none")


def data(n=60, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 3))


def config(**kw):
    base = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "batch_size": 16, "epochs": 2, "accountant": None,
            "progress": False}
    return DPSGDConfig(**{**base, **kw})


def test_deterministic_given_generator_and_global_rng_untouched():
    X, y = data()
    models = [model(dropout=0.2) for _ in range(3)]  # model() seeds torch itself; train() must not
    state = torch.get_rng_state()
    runs = []
    for seed, m in zip((3, 3, 4), models):
        r = train(m, X, y, loss_fn=ce, config=config(), generator=torch.Generator().manual_seed(seed))
        runs.append((r.losses, [p.detach().clone() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][0] != runs[2][0]
    assert torch.equal(torch.get_rng_state(), state)


def test_full_batch_nonprivate_equals_gradient_descent():
    X, y = data()
    m, ref = model(), model()
    cfg = config(noise_multiplier=0.0, max_grad_norm=None, sample_rate=1.0, batch_size=None, epochs=3, lr=0.2)
    r = train(m, X, y, loss_fn=ce, config=cfg, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    for _ in range(3):
        opt.zero_grad()
        ce(ref(X), y).mean().backward()
        opt.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    assert r.steps == 3 and r.epsilon == math.inf


def test_full_batch_dp_without_noise_equals_clipped_mean_descent():
    X, y = data()
    m, ref = model(), model()
    cfg = config(noise_multiplier=0.0, max_grad_norm=0.3, sample_rate=1.0, batch_size=None, epochs=2, lr=0.5)
    train(m, X, y, loss_fn=ce, config=cfg, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        grads = clipped_grad_sum(ref, ce, X, y, max_grad_norm=0.3, method="loop")
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= 0.5 * g / len(X)
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_public_expected_batch_size_is_the_updates_denominator():
    # strict add/remove: the denominator qN fixed in advance instead of q len(X)
    X, y = data()
    m, ref, default = model(), model(), model()
    cfg = config(noise_multiplier=0.0, max_grad_norm=0.3, sample_rate=1.0, batch_size=None, epochs=2,
                 lr=0.5, expected_batch_size=40.0)
    train(m, X, y, loss_fn=ce, config=cfg, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        grads = clipped_grad_sum(ref, ce, X, y, max_grad_norm=0.3, method="loop")
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= 0.5 * g / 40.0
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the default reads len(X) = 60: the same as giving 60
    same = model()
    train(default, X, y, loss_fn=ce, config=dataclasses.replace(cfg, expected_batch_size=None),
          generator=torch.Generator().manual_seed(0))
    train(same, X, y, loss_fn=ce, config=dataclasses.replace(cfg, expected_batch_size=60.0),
          generator=torch.Generator().manual_seed(0))
    for a, b in zip(default.parameters(), same.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_expected_batch_size_must_be_positive(bad):
    with pytest.raises(ValueError, match="expected_batch_size"):
        config(expected_batch_size=bad)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_methods_train_identically(method):
    X, y = data()
    runs = []
    for meth in ("fast", method):
        m = model()
        train(m, X, y, loss_fn=ce, config=config(method=meth, epochs=1), generator=torch.Generator().manual_seed(1))
        runs.append([p.detach() for p in m.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_empty_batches_still_add_noise():
    X, y = data(n=6)
    m = model()
    before = [p.detach().clone() for p in m.parameters()]
    r = train(m, X, y, loss_fn=ce, config=config(sample_rate=0.01, batch_size=None, epochs=1),
              generator=torch.Generator().manual_seed(0))
    assert r.steps == 100
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert math.isfinite(r.losses[0]) or math.isnan(r.losses[0])


def test_shuffle_warns_and_is_flagged():
    X, y = data()
    with pytest.warns(PoissonAccountingWarning):
        r = train(model(), X, y, loss_fn=ce, config=config(sampler="shuffle"), generator=torch.Generator().manual_seed(0))
    assert r.accounting_valid is False and r.steps == 2 * 4


def test_epsilon_comes_from_privlab_accounting(monkeypatch):
    calls = []

    def fake_epsilon(*, noise_multiplier, sample_rate, steps, delta, accountant="pld"):
        calls.append((noise_multiplier, sample_rate, steps, delta, accountant))
        return 0.1 * steps

    monkeypatch.setattr(train_module, "dpsgd_epsilon", fake_epsilon)
    train_module._epsilon.cache_clear()
    X, y = data()
    r = train(model(), X, y, loss_fn=ce, config=config(accountant="rdp", delta=1e-3, epochs=3),
              generator=torch.Generator().manual_seed(0))
    train_module._epsilon.cache_clear()
    q = 16 / 60
    # the whole run first (checked before the first step), then each epoch (the last one cached)
    assert calls == [(1.0, q, 12, 1e-3, "rdp")] + [(1.0, q, 4 * k, 1e-3, "rdp") for k in (1, 2)]
    assert r.epsilons == pytest.approx((0.4, 0.8, 1.2))
    assert [row["epoch"] for row in r.history()] == [1, 2, 3]


def test_epsilon_with_the_real_accountant():
    X, y = data()
    r = train(model(), X, y, loss_fn=ce, config=config(accountant="rdp", epochs=2),
              generator=torch.Generator().manual_seed(0))
    assert 0 < r.epsilons[0] < r.epsilons[1] < math.inf


def test_tuple_inputs_eval_fn_and_history():
    class Rec(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(10, 4), nn.Linear(4 + 5, 3)

        def forward(self, ids, x):
            return self.fc(torch.cat([self.emb(ids), x], 1))

    X, y = data()
    ids = torch.randint(0, 10, (60,), generator=torch.Generator().manual_seed(1))
    seen = []

    def eval_fn(m):
        seen.append((m.training, torch.is_grad_enabled()))
        return float(ce(m(ids, X), y).mean())

    r = train(Rec(), (ids, X), y, loss_fn=ce, config=config(optimizer="adam", lr=0.01), eval_fn=eval_fn,
              generator=torch.Generator().manual_seed(0))
    assert seen == [(False, False)] * 2 and len(r.evals) == 2
    assert len(r.epoch_seconds) == 2 and all(s > 0 for s in r.epoch_seconds)


def test_grad_norm_profile_matches_recorded_norms():
    X, y = data()
    cfg = config(epochs=1, record_grad_norms=True)
    r = train(model(), X, y, loss_fn=ce, config=cfg, generator=torch.Generator().manual_seed(0))
    assert r.grad_norms.size > 0 and np.all(r.grad_norms >= 0)
    prof = profile_grad_norms(model(), X, y, loss_fn=ce, config=cfg, clip_norms=[0.5, 1.0],
                              generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(prof.norms, r.grad_norms, rtol=1e-6)
    assert prof.fraction_clipped[0.5] == pytest.approx(np.mean(r.grad_norms > 0.5))
    assert prof.median == pytest.approx(np.median(r.grad_norms))
    assert prof.fraction_clipped_at(1.0) == prof.fraction_clipped[1.0]


def test_nonprivate_profile_and_first_step_norms():
    X, y = data()
    cfg = config(noise_multiplier=0.0, max_grad_norm=None, sample_rate=1.0, batch_size=None, epochs=1)
    prof = profile_grad_norms(model(), X, y, loss_fn=ce, config=cfg, clip_norms=[1.0],
                              generator=torch.Generator().manual_seed(0))
    exact = per_example_grad_norms(model(), ce, X, y, method="loop").numpy()  # q = 1: the one step sees all of X
    np.testing.assert_allclose(np.sort(prof.norms), np.sort(exact), rtol=1e-5)
    assert summarize_grad_norms([], clip_norms=[1.0]).count == 0


def test_bad_inputs_raise():
    X, y = data()
    with pytest.raises(ValueError, match="generator"):
        train(model(), X, y, loss_fn=ce, config=config(), generator=0)
    with pytest.raises(ValueError, match="leading dimension"):
        train(model(), X, y[:5], loss_fn=ce, config=config(), generator=torch.Generator())
    with pytest.raises(ValueError, match="sample_rate"):
        train(model(), X, y, loss_fn=ce, config=config(batch_size=100), generator=torch.Generator())
    with pytest.raises(ValueError, match="config"):
        train(model(), X, y, loss_fn=ce, config=dataclasses.asdict(config()), generator=torch.Generator())


@pytest.mark.parametrize("n", [1_000, 200_000, 10_000_000])
def test_default_delta_is_well_below_one_over_n(n):
    """Issue 13, defect 8: the old default min(1e-5, 1/N) was 1/N itself for N > 1e5."""
    cfg = config()
    assert cfg.delta is None and cfg.delta_rule() == train_module.DEFAULT_DELTA_RULE
    delta = cfg.delta_for(n)
    assert delta <= 0.1 / n and delta <= 1e-5
    assert delta == min(1e-5, 0.1 / n)


def test_result_states_delta_and_how_it_was_chosen():
    X, y = data()
    r = train(model(), X, y, loss_fn=ce, config=config(accountant="rdp"), generator=torch.Generator().manual_seed(0))
    assert r.delta == min(1e-5, 0.1 / 60) and r.delta_rule == "min(1e-5, 1/(10 N))"
    r = train(model(), X, y, loss_fn=ce, config=config(accountant="rdp", delta=1e-4),
              generator=torch.Generator().manual_seed(0))
    assert r.delta == 1e-4 and r.delta_rule == "given"


def test_given_delta_at_least_one_over_n_warns():
    X, y = data()
    with pytest.warns(RuntimeWarning, match="delta = 0.05 >= 1/N"):
        train(model(), X, y, loss_fn=ce, config=config(accountant="rdp", delta=0.05),
              generator=torch.Generator().manual_seed(0))


def test_a_run_the_pld_cannot_discretise_reports_rdps_epsilon_and_says_so():
    """PLD cannot discretise a tiny sigma (its grid would be too large): the run is accounted by RDP,
    a valid bound, with a warning (it used to be refused as 'astronomically large', which at a tiny
    sample rate it was not; a red-team read of the accountants)."""
    from privlab.accounting import dpsgd_epsilon

    x, y = torch.randn(200, 3), torch.randn(200)
    cfg = DPSGDConfig(noise_multiplier=0.01, max_grad_norm=1.0, batch_size=20, epochs=2, lr=0.1, progress=False,
                      delta=1e-5)
    with pytest.warns(UserWarning, match="epsilon is the RDP accountant's instead"):
        result = train(nn.Linear(3, 1), x, y, loss_fn=lambda o, t: (o.squeeze(1) - t) ** 2, config=cfg,
                       generator=torch.Generator().manual_seed(0))
    assert result.epsilons[-1] == dpsgd_epsilon(noise_multiplier=0.01, sample_rate=0.1, steps=result.steps,
                                                delta=1e-5, accountant="rdp")


def test_train_refuses_bad_data_naming_it():
    """y as a list was an AttributeError from deep inside the loop (a red-team read); N = 0 and a y of
    another length are named too."""
    from privlab.dpsgd import DPSGDConfig, train

    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=2, accountant=None, progress=False)
    mse = lambda out, t: (out.squeeze(1) - t) ** 2  # noqa: E731
    run = lambda X, y: train(nn.Linear(2, 1), X, y, loss_fn=mse, config=cfg,  # noqa: E731
                             generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="y must be a tensor \\(or None\\), got list"):
        run(torch.randn(4, 2), [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"y must have leading dimension N = 4, got shape \(3,\)"):
        run(torch.randn(4, 2), torch.randn(3))
    with pytest.raises(ValueError, match="X must contain at least one example, got N = 0"):
        run(torch.randn(0, 2), torch.randn(0))
