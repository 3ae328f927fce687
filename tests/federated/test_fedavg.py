"""FedAvg, FedProx, FedAdam: vectorised = client-by-client loop, the server rules, sampling, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from privlab.config import make_rng, make_torch_generator
from privlab.federated import (
    FedAdam,
    FedAvg,
    FedProx,
    ParamSpec,
    batch_plan,
    batch_plans,
    fedavg_aggregate,
    hospital_sites,
    make_model,
    quantity_skew,
    sample_clients,
    simulate,
)



@pytest.fixture(scope="module")
def skewed():
    """60 clients of very different sizes (1 to ~100 records) from the hospital demo."""
    x, y = hospital_sites(rng=make_rng(0), num_features=5).pooled()
    return quantity_skew(x[:1500], y[:1500], num_clients=60, alpha=0.7, rng=make_rng(1))


def _model(d, seed=0):
    return make_model(d, 8, generator=make_torch_generator(seed))


@pytest.mark.parametrize("algo", [
    FedAvg(rounds=3, local_epochs=2, batch_size=7, local_lr=0.2),
    FedProx(rounds=3, local_epochs=2, batch_size=7, local_lr=0.2, mu=0.5, clients_per_round=25),
    FedAdam(rounds=3, local_epochs=1, batch_size=16, local_lr=0.1, server_lr=0.05, clients_per_round=40),
], ids=["fedavg", "fedprox-sampled", "fedadam-sampled"])
def test_vectorised_equals_client_by_client_loop(skewed, algo):
    model = _model(skewed.num_features)
    slow = simulate(model, skewed, algo, rng=make_rng(5), method="loop")
    for method in ("vmap", "bmm"):
        fast = simulate(model, skewed, algo, rng=make_rng(5), method=method)
        assert fast.history["clients"].tolist() == slow.history["clients"].tolist()
        torch.testing.assert_close(fast.params, slow.params, rtol=0, atol=1e-5)
    # and the run moved: these are not two copies of theta_0
    assert float((fast.params - ParamSpec(model).flat_from_model(model)).abs().max()) > 1e-2


@pytest.mark.parametrize("arch", ["relu-deep-ce", "tanh-bce", "relu-nobias-bce"])
def test_bmm_hand_backward_and_autograd_fallback_equal_the_loop(skewed, arch):
    """The bmm path's analytic ReLU backward (deep, CE, no bias) and its autograd fallback (Tanh) = the loop."""
    d, g = skewed.num_features, make_torch_generator(3)
    nn = torch.nn
    if arch == "relu-deep-ce":
        model, loss = make_model(d, (8, 6), 3, generator=g), "ce"
    elif arch == "tanh-bce":
        model, loss = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 1)), "bce"
    else:
        model, loss = nn.Sequential(nn.Linear(d, 8, bias=False), nn.ReLU(), nn.Linear(8, 1, bias=False)), "bce"
    algo = FedProx(rounds=2, local_epochs=2, batch_size=5, local_lr=0.2, mu=0.3, loss=loss)
    slow = simulate(model, skewed, algo, rng=make_rng(2), method="loop")
    fast = simulate(model, skewed, algo, rng=make_rng(2), method="bmm")
    torch.testing.assert_close(fast.params, slow.params, rtol=0, atol=1e-5)
    assert float((fast.params - ParamSpec(model).flat_from_model(model)).abs().max()) > 1e-2


def test_vmap_handles_models_bmm_does_not():
    """A model with LayerNorm and a Tanh head: vmap = loop, and bmm refuses rather than guessing."""
    data = hospital_sites(rng=make_rng(1), num_features=4)
    with torch.random.fork_rng():  # the test's own initialisation, global state restored afterwards
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6), torch.nn.Tanh(),
                                    torch.nn.Linear(6, 1))
    algo = FedAvg(rounds=2, batch_size=64, local_lr=0.2, clients_per_round=3)
    slow = simulate(model, data, algo, rng=make_rng(0), method="loop")
    auto = simulate(model, data, algo, rng=make_rng(0))  # auto picks vmap here
    torch.testing.assert_close(auto.params, slow.params, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="bmm"):
        simulate(model, data, algo, rng=make_rng(0), method="bmm")


def test_one_round_of_fedavg_by_hand():
    """Full participation, one round, lr_s = 1: theta_1 = sum_k n_k/n theta_k, each theta_k by plain SGD."""
    data = hospital_sites(rng=make_rng(2), num_features=4)
    model = _model(4)
    algo = FedAvg(rounds=1, local_epochs=1, batch_size=1000, local_lr=0.3)  # one full-batch step per client
    got = simulate(model, data, algo, rng=make_rng(0)).state_dict()
    names = [n for n, _ in model.named_parameters()]
    locals_ = []
    for x, y in zip(data.x, data.y):
        m = _model(4)
        logits = m(torch.from_numpy(x)).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y))
        grads = torch.autograd.grad(loss, list(m.parameters()))
        locals_.append({n: p.detach() - 0.3 * g for n, p, g in zip(names, m.parameters(), grads)})
    want = fedavg_aggregate(locals_, data.sizes)
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-6)


def test_fedadam_server_step_matches_reddi_et_al():
    algo = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    theta, state = torch.zeros(3), algo.init_state(torch.zeros(3))
    d1, d2 = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([0.5, 0.5, 0.5])
    theta = algo.server_step(algo.server_step(theta, d1, state), d2, state)
    m1, v1 = 0.1 * d1, 0.99 * 1e-6 + 0.01 * d1**2
    want = 0.1 * m1 / (v1.sqrt() + 1e-3)
    m2, v2 = 0.9 * m1 + 0.1 * d2, 0.99 * v1 + 0.01 * d2**2
    want = want + 0.1 * m2 / (v2.sqrt() + 1e-3)
    torch.testing.assert_close(theta, want)


def test_fedprox_pulls_local_models_towards_the_global_one(skewed):
    model = _model(skewed.num_features)
    start = ParamSpec(model).flat_from_model(model)
    kw = {"rounds": 1, "local_epochs": 5, "batch_size": 8, "local_lr": 0.1}
    drift = lambda algo: float((simulate(model, skewed, algo, rng=make_rng(0)).params - start).norm())
    assert drift(FedProx(mu=10.0, **kw)) < 0.5 * drift(FedAvg(**kw))


def test_fedavg_learns_the_hospital_task():
    data = hospital_sites(rng=make_rng(0))
    model = _model(data.num_features)
    result = simulate(model, data, FedAvg(rounds=15, local_lr=0.1), rng=make_rng(0), evaluate_train=True)
    h = result.history
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    assert h["train_accuracy"].iloc[-1] > 0.7  # positives are 33%: always-0 scores 0.67
    assert np.all(np.isinf(h["epsilon"]))  # no DP, no guarantee


def test_client_sampling_is_uniform_and_reproducible():
    k, m, trials = 10, 3, 3000
    rng = make_rng(7)
    counts = np.zeros(k)
    for _ in range(trials):
        s = sample_clients(k, m, rng=rng)
        assert len(np.unique(s)) == m
        counts[s] += 1
    assert stats.chisquare(counts).pvalue > 1e-4  # each client with probability m/k
    assert np.array_equal(sample_clients(k, m, rng=make_rng(1)), sample_clients(k, m, rng=make_rng(1)))
    with pytest.raises(ValueError, match="clients_per_round"):
        sample_clients(3, 4, rng=make_rng(0))


def test_aggregation_refuses_bad_clients_by_name():
    ok = {"w": torch.ones(2, 3), "b": torch.ones(3)}
    with pytest.raises(ValueError, match="'bob'.*'w'"):
        fedavg_aggregate([ok, {"w": torch.ones(3, 2), "b": torch.ones(3)}], [1, 1], names=["alice", "bob"])
    with pytest.raises(ValueError, match="'bob'.*0 samples"):
        fedavg_aggregate([ok, ok], [5, 0], names=["alice", "bob"])
    nan = {"w": torch.full((2, 3), float("nan")), "b": torch.ones(3)}
    with pytest.raises(ValueError, match="non-finite.*'bob'"):
        fedavg_aggregate([ok, nan], [5, 5], names=["alice", "bob"])


def test_simulate_names_the_client_whose_update_is_nan():
    data = hospital_sites(rng=make_rng(0), num_features=3)
    blown = data.x[3] * 1e30  # Munich's features overflow the local step to inf / NaN
    bad = type(data)(data.names, data.x[:3] + (blown,) + data.x[4:], data.y)
    with pytest.raises(ValueError, match="Munich"):
        simulate(_model(3), bad, FedAvg(rounds=1, local_lr=1.0), rng=make_rng(0))


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"local_lr": 0.0}, {"batch_size": -1},
                                    {"loss": "hinge"}, {"mu": -1.0}, {"local_lr": float("nan")}])
def test_invalid_configuration_raises(kwargs):
    with pytest.raises(ValueError):
        FedAvg(**kwargs)


def test_fedprox_requires_a_positive_mu_and_unknown_method_is_refused():
    with pytest.raises(ValueError, match="mu"):
        FedProx(mu=0.0)
    with pytest.raises(ValueError, match="method"):
        simulate(_model(8), hospital_sites(rng=make_rng(0)), FedAvg(rounds=1), rng=make_rng(0), method="magic")


def test_batch_plans_cover_every_record_once_per_epoch_and_match_the_single_client_plan():
    sizes, ids = [7, 1, 12, 5], [3, 0, 11, 4]
    plans = batch_plans(sizes, ids, batch_size=4, epochs=3, base_seed=9, round_index=2)
    steps = plans.shape[1] // 3
    for k, (n, cid) in enumerate(zip(sizes, ids)):
        for e in range(3):
            rows = plans[k, e * steps:(e + 1) * steps]
            assert sorted(rows[rows >= 0].tolist()) == list(range(n))
        single = batch_plan(n, batch_size=4, epochs=3, base_seed=9, round_index=2, client_id=cid)
        assert np.array_equal(single, plans[k][(plans[k] >= 0).any(axis=1)])


def test_shuffles_are_uniform_and_differ_by_round_and_client():
    n, trials = 6, 6000
    first = np.array([batch_plans([n], [0], batch_size=n, epochs=1, base_seed=1, round_index=r)[0, 0, 0]
                      for r in range(trials)])
    assert stats.chisquare(np.bincount(first, minlength=n)).pvalue > 1e-4
    # all 720 orders of 6 records appear about equally often across (round, client) pairs
    perms = batch_plans([n] * trials, np.arange(trials), batch_size=n, epochs=1, base_seed=5, round_index=1)[:, 0]
    codes = np.unique(perms @ (n ** np.arange(n)), return_counts=True)[1]
    assert len(codes) == 720 and stats.chisquare(codes).pvalue > 1e-4
