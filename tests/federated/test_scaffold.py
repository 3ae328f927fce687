"""SCAFFOLD (privlab.federated.scaffold): round 1 is FedAvg, loop equals bmm."""

import numpy as np
import pytest
import torch

from privlab.config import make_rng, make_torch_generator
from privlab.federated import FedAvg, dirichlet_label_skew, make_model, simulate
from privlab.federated.scaffold import Scaffold, simulate_scaffold


def _skewed(seed=0, n=800):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 3))).argmax(1).astype(np.float32)
    return (
        x,
        y,
        dirichlet_label_skew(
            x, y, num_clients=6, alpha=0.2, rng=make_rng(1), min_size=10
        ),
    )


def test_first_round_is_fedavg_and_loop_equals_bmm():
    x, y, data = _skewed()
    model = make_model(5, 8, 3, generator=make_torch_generator(0))
    kw = dict(local_epochs=2, batch_size=16, local_lr=0.1, loss="ce")
    fed = simulate(model, data, FedAvg(rounds=1, **kw), rng=make_rng(3), method="loop")
    sca = simulate_scaffold(model, data, Scaffold(rounds=1, **kw), rng=make_rng(3))
    torch.testing.assert_close(sca.params, fed.params, rtol=1e-5, atol=1e-6)
    loop = simulate_scaffold(
        model, data, Scaffold(rounds=3, **kw), rng=make_rng(3), method="loop"
    )
    bmm = simulate_scaffold(
        model, data, Scaffold(rounds=3, **kw), rng=make_rng(3), method="bmm"
    )
    torch.testing.assert_close(loop.params, bmm.params, rtol=1e-5, atol=1e-6)


def test_scaffold_trains_no_worse_than_fedavg_under_label_skew():
    x, y, data = _skewed(seed=2, n=1200)
    model = make_model(5, 8, 3, generator=make_torch_generator(1))
    kw = dict(rounds=8, local_epochs=5, batch_size=16, local_lr=0.1, loss="ce")
    fed = simulate(model, data, FedAvg(**kw), rng=make_rng(4), eval_data=(x, y))
    sca = simulate_scaffold(
        model, data, Scaffold(**kw), rng=make_rng(4), eval_data=(x, y)
    )
    assert np.isfinite(sca.history["drift"]).all()
    # pooled training data: SCAFFOLD's loss after 8 rounds is no worse than FedAvg's
    assert sca.history["test_loss"].iloc[-1] <= fed.history["test_loss"].iloc[-1] + 0.01


def test_validation():
    with pytest.raises(ValueError, match="mu"):
        Scaffold(mu=0.1)
    x, y, data = _skewed()
    model = make_model(5, 8, 3, generator=make_torch_generator(0))
    with pytest.raises(ValueError, match="Scaffold"):
        simulate_scaffold(model, data, FedAvg(), rng=make_rng(0))
    with pytest.raises(ValueError, match="method"):
        simulate_scaffold(
            model, data, Scaffold(loss="ce"), rng=make_rng(0), method="gpu"
        )
