"""DP-FedAvg: clipping, noise scale, Poisson client sampling, cumulative epsilon, sample-level DP-SGD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privlab.accounting import dpsgd_epsilon
from privlab.config import make_rng, make_torch_generator
from privlab.federated import (
    ClientLevelDP,
    FedAvg,
    SampleLevelDP,
    clip_updates,
    epsilon_per_round,
    hospital_sites,
    make_model,
    simulate,
)
from privlab.federated.dp import client_secret_seeds



@pytest.fixture(scope="module")
def hospitals():
    return hospital_sites(rng=make_rng(0), num_features=4)


def _model(seed=0):
    return make_model(4, 8, generator=make_torch_generator(seed))


def test_clipping_bounds_every_update_and_keeps_small_ones():
    d = torch.randn(50, 20, generator=make_torch_generator(0)) * torch.logspace(-2, 1, 50)[:, None]
    c = clip_updates(d, clip_norm=1.0)
    assert float(c.norm(dim=1).max()) <= 1.0 + 1e-6
    small = d.norm(dim=1) <= 1.0
    torch.testing.assert_close(c[small], d[small])
    direction = lambda t: t[~small] / t[~small].norm(dim=1, keepdim=True)
    torch.testing.assert_close(direction(c), direction(d))


def test_server_noise_has_standard_deviation_sigma_c_over_qk():
    rule = ClientLevelDP(clip_norm=0.5, noise_multiplier=1.3, delta=1e-5)
    algo = FedAvg(clients_per_round=20)
    k, p = 100, 200_000
    out = rule.finish(torch.zeros(p, dtype=torch.float64), k, algo, make_rng(0))
    want = 1.3 * 0.5 / (0.2 * k)
    # the sample variance of p normals has relative standard error sqrt(2/p)
    assert abs(float(out.var()) / want**2 - 1) < 6 * math.sqrt(2 / p)
    assert abs(float(out.mean())) < 6 * want / math.sqrt(p)


def test_clients_join_by_poisson_sampling_at_rate_q():
    rule, algo, k = ClientLevelDP(), FedAvg(clients_per_round=30), 100
    rng = make_rng(1)
    sizes = np.array([len(rule.select(k, algo, rng)) for _ in range(2000)])
    # Binomial(100, 0.3): compare the counts with the pmf by a chi-squared test on pooled bins
    edges = np.array([0, 22, 25, 27, 29, 31, 33, 35, 38, 101])
    observed = np.histogram(sizes, bins=edges)[0]
    expected = np.diff(stats.binom.cdf(edges - 1, k, 0.3)) * len(sizes)
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-4
    assert np.array_equal(rule.select(k, FedAvg(), rng), np.arange(k))  # q = 1: everyone


def test_epsilon_is_cumulative_and_comes_from_privlab_accounting(hospitals):
    rule = ClientLevelDP(clip_norm=1.0, noise_multiplier=1.1, delta=1e-4)
    algo = FedAvg(rounds=4, clients_per_round=3, local_lr=0.2)
    h = simulate(_model(), hospitals, algo, rng=make_rng(0), privacy=rule).history
    eps = h["epsilon"].to_numpy()
    assert np.all(np.diff(eps) > 0)  # composed over rounds, never reset
    for t, e in enumerate(eps, start=1):
        assert e == pytest.approx(dpsgd_epsilon(noise_multiplier=1.1, sample_rate=0.6, steps=t, delta=1e-4))
    np.testing.assert_allclose(
        epsilon_per_round(noise_multiplier=1.1, sample_rate=0.6, rounds=4, delta=1e-4), eps, rtol=1e-12)


def test_epsilon_per_round_agrees_with_dp_accounting():
    import dp_accounting

    acc = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0))
    ours = epsilon_per_round(noise_multiplier=1.0, sample_rate=0.1, rounds=3, delta=1e-5, steps_per_round=10,
                             accountant="rdp")
    for t in range(3):
        acc.compose(event, 10)
        assert ours[t] == pytest.approx(acc.get_epsilon(1e-5), rel=0.02)


def test_dp_fedavg_with_no_clipping_and_tiny_noise_is_fedavg_with_uniform_weights(hospitals):
    algo = FedAvg(rounds=2, local_lr=0.2)
    # clip_norm far above any update, noise sigma * C / K = 2e-8: DP-FedAvg's arithmetic, no privacy
    rule = ClientLevelDP(clip_norm=100.0, noise_multiplier=1e-9, delta=1e-5, accountant="rdp")
    dp = simulate(_model(), hospitals, algo, rng=make_rng(3), privacy=rule)
    # the same rounds by hand: local models from plain FedAvg's trainer, uniform mean of updates
    from privlab.federated.fedavg import ClientTensors, train_vmap

    spec, clients = dp.spec, ClientTensors(hospitals)
    params = spec.flat_from_model(_model())
    base = int(make_rng(3).integers(2**31))
    for t in (1, 2):
        new = train_vmap(_model(), spec, params, clients, np.arange(5), algo, base, t)
        params = params + (new - params).mean(0)
    torch.testing.assert_close(dp.params, params, rtol=0, atol=1e-5)


def test_client_level_dp_with_secure_aggregation_in_rounds_of_one_and_zero_clients(hospitals):
    # issue 13, defect 6(b): secure aggregation raised when Poisson sampling picked one client
    # (K = 5, q = 0.2: 41% of rounds; 27% at K = 10). Such rounds must run: the noise is still added
    # and the accounting is unchanged, so the run equals the same run without secure aggregation.
    from privlab.federated import SecAggConfig

    algo = FedAvg(rounds=4, clients_per_round=1, local_lr=0.2)
    rule = ClientLevelDP(clip_norm=1.0, noise_multiplier=1.0, delta=1e-4)
    plain = simulate(_model(), hospitals, algo, rng=make_rng(1), privacy=rule)
    secure = simulate(_model(), hospitals, algo, rng=make_rng(1), privacy=rule, secure_aggregation=SecAggConfig())
    assert secure.history["clients"].tolist() == [1, 0, 1, 0]  # rounds of one client and of none
    assert secure.history["epsilon"].tolist() == plain.history["epsilon"].tolist()
    torch.testing.assert_close(secure.params, plain.params, rtol=0, atol=1e-5)
    # and the noise was added: the model moved in the rounds with no client at all
    assert float((secure.params - _model_params()).norm()) > 0.1


def _model_params():
    from privlab.federated.fedavg import ParamSpec

    m = _model()
    return ParamSpec(m).flat_from_model(m)


def test_sample_level_dp_vectorised_equals_the_dpsgd_kernel_loop(hospitals):
    rule = SampleLevelDP(clip_norm=0.7, noise_multiplier=0.8, sample_rate=0.05, local_steps=4, delta=1e-5,
                         client_seeds=client_secret_seeds(hospitals.num_clients, entropy=11))
    algo = FedAvg(rounds=2, local_lr=0.3, clients_per_round=4, mu=0.1)
    fast = simulate(_model(), hospitals, algo, rng=make_rng(1), privacy=rule, method="vmap")
    slow = simulate(_model(), hospitals, algo, rng=make_rng(1), privacy=rule, method="loop")
    torch.testing.assert_close(fast.params, slow.params, rtol=0, atol=1e-5)
    want = [dpsgd_epsilon(noise_multiplier=0.8, sample_rate=0.05, steps=4 * t, delta=1e-5) for t in (1, 2)]
    np.testing.assert_allclose(fast.history["epsilon"], want, rtol=1e-12)


def test_sample_level_noise_cannot_be_rebuilt_from_the_servers_seed(hospitals):
    from privlab.federated.dp import private_client_rng, sample_level_draws
    from privlab.federated.fedavg import ParamSpec
    from privlab.federated.local import client_rng

    spec, sel = ParamSpec(_model()), np.arange(hospitals.num_clients)
    base_seed, t = 1234, 3
    seeds = client_secret_seeds(hospitals.num_clients, entropy=99)
    secret = SampleLevelDP(noise_multiplier=1.0, sample_rate=0.1, local_steps=2, client_seeds=seeds)
    fresh = SampleLevelDP(noise_multiplier=1.0, sample_rate=0.1, local_steps=2)
    for rule in (secret, fresh):
        for k, (masks, noise) in zip(sel, sample_level_draws(hospitals, sel, spec, rule, base_seed, t)):
            # what the server can compute: the draws of every stream derived from its own seed
            for g in (client_rng(base_seed, t, int(k)), private_client_rng(base_seed, t, int(k))):
                g.random(masks.shape)
                assert not np.allclose(g.standard_normal(noise.shape), noise)
    # a client-held seed reproduces the draws whatever the server's seed; OS entropy never repeats
    a = sample_level_draws(hospitals, sel, spec, secret, 1, t)
    b = sample_level_draws(hospitals, sel, spec, secret, 2, t)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    c, d = (sample_level_draws(hospitals, sel, spec, fresh, 1, t) for _ in range(2))
    assert not any(np.array_equal(x[1], y[1]) for x, y in zip(c, d))


def test_one_client_cannot_rebuild_another_clients_noise(hospitals):
    from privlab.federated.dp import private_client_rng, sample_level_draws
    from privlab.federated.fedavg import ParamSpec

    spec, sel, t = ParamSpec(_model()), np.arange(hospitals.num_clients), 2
    seeds = client_secret_seeds(hospitals.num_clients, entropy=5)
    rule = SampleLevelDP(noise_multiplier=1.0, sample_rate=0.1, local_steps=2, client_seeds=seeds)
    draws = sample_level_draws(hospitals, sel, spec, rule, 0, t)
    # client 0 knows its own seed only; with it, under any client id, it gets none of the others' noise
    for k in sel[1:]:
        for kk in sel:
            g = private_client_rng(seeds[0], t, int(kk))
            g.random(draws[k][0].shape)
            assert not np.allclose(g.standard_normal(draws[k][1].shape), draws[k][1])
    with pytest.raises(ValueError, match="distinct"):
        SampleLevelDP(client_seeds=(31,) * hospitals.num_clients)
    with pytest.raises(ValueError, match="no secret seed"):
        SampleLevelDP(client_seeds=seeds[:2]).client_seed_of(3)


def test_more_noise_less_epsilon():
    e = [epsilon_per_round(noise_multiplier=s, sample_rate=0.2, rounds=5, delta=1e-5)[-1] for s in (0.8, 1.5, 3.0)]
    assert e[0] > e[1] > e[2]


@settings(max_examples=30, deadline=None)
@given(field=st.sampled_from(["clip_norm", "noise_multiplier", "delta"]),
       value=st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf"))))
def test_invalid_privacy_parameters_raise(field, value):
    for rule in (ClientLevelDP, SampleLevelDP):
        with pytest.raises(ValueError, match=field):
            rule(**{field: value})


@pytest.mark.parametrize("kwargs", [{"sample_rate": 0.0}, {"sample_rate": 1.5}, {"local_steps": 0},
                                    {"accountant": "moments"}])
def test_invalid_sample_level_settings_raise(kwargs):
    with pytest.raises(ValueError):
        SampleLevelDP(**kwargs)


def test_simulate_warns_when_delta_is_not_below_one_over_the_units():
    from privlab.config import make_rng, make_torch_generator
    from privlab.federated import ClientLevelDP, FedAvg, hospital_sites, make_model, simulate

    data = hospital_sites(rng=make_rng(0))
    model = make_model(data.num_features, 4, generator=make_torch_generator(0))
    with pytest.warns(RuntimeWarning, match=f"not below 1/{data.num_clients}"):
        simulate(model, data, FedAvg(rounds=1), rng=make_rng(1),
                 privacy=ClientLevelDP(clip_norm=1.0, noise_multiplier=1.0, delta=0.5))
