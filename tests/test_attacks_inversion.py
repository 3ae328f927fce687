"""Gradient inversion (privlab.attacks.inversion): labels, inputs, the DP defence."""

import numpy as np
import pytest
import torch

from privlab.attacks import (
    client_update,
    infer_labels,
    invert_update,
    matched_mse,
    privatize_update,
)
from privlab.federated import make_model
from privlab.federated.local import local_update


def _client():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, 12), generator=g)
    y = torch.tensor([1, 4, 6])
    return x, y, make_model(12, 16, 8, generator=torch.Generator().manual_seed(1))


def test_client_update_is_one_local_step_of_privlab():
    x, y, model = _client()
    params = {k: v.detach() for k, v in model.named_parameters()}
    plan = np.array([[0, 1, 2]])
    new = local_update(model, params, x, y.float(), plan=plan, lr=0.3, loss="ce")
    flat = torch.cat([(new[k] - params[k]).reshape(-1) for k in params])
    torch.testing.assert_close(
        client_update(model, x, y, lr=0.3), flat, rtol=1e-5, atol=1e-7
    )


def test_labels_and_inputs_are_recovered_without_noise_and_not_with_it():
    x, y, model = _client()
    upd = client_update(model, x, y, lr=0.1)
    assert infer_labels(model, upd, 3).tolist() == [1, 4, 6]
    floor = matched_mse(np.tile(x.mean(0).numpy(), (3, 1)), x.numpy())
    clipped = privatize_update(
        upd,
        clip_norm=0.1 * float(upd.norm()),
        noise_multiplier=0.0,
        generator=torch.Generator(),
    )
    rec = invert_update(
        model, clipped, y, steps=200, lr=0.1, generator=torch.Generator().manual_seed(2)
    )
    assert (
        matched_mse(rec.numpy(), x.numpy()) < 0.05 * floor
    )  # clipping alone does not stop it
    noisy = privatize_update(
        upd,
        clip_norm=0.1 * float(upd.norm()),
        noise_multiplier=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    rec = invert_update(
        model, noisy, y, steps=200, lr=0.1, generator=torch.Generator().manual_seed(2)
    )
    assert matched_mse(rec.numpy(), x.numpy()) > 0.5 * floor


def test_validation_and_matching():
    assert matched_mse(np.eye(2), np.eye(2)[::-1]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        matched_mse(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match="clip_norm"):
        privatize_update(
            torch.ones(2),
            clip_norm=0.0,
            noise_multiplier=1.0,
            generator=torch.Generator(),
        )
    with pytest.raises(ValueError, match="lr"):
        client_update(_client()[2], torch.zeros(1, 12), torch.tensor([0]), lr=-1.0)
