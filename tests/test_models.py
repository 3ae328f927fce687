"""Tests of privlab.models: shapes, parameter counts worked out by hand, no BatchNorm (Opacus's
ModuleValidator as the oracle), per-example losses of shape (B,), and invalid sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from privlab.models import MLP, StreamRecClickPredictor, count_parameters


def _linear(i: int, o: int) -> int:
    return (i + 1) * o


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_click_predictor_output_is_a_vector_of_logits(batch):
    model = StreamRecClickPredictor().eval()
    logits = model(torch.randn(batch, 40))
    assert logits.shape == (batch,)
    y = torch.randint(0, 2, (batch,)).float()
    per_example = nn.BCEWithLogitsLoss(reduction="none")(logits, y)
    assert per_example.shape == (batch,)  # never (B, 1): see the comment in forward
    per_example.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_click_predictor_architecture_and_parameter_count():
    model = StreamRecClickPredictor()
    expected = _linear(40, 128) + _linear(128, 64) + _linear(64, 32) + _linear(32, 1) + 2 * (128 + 64 + 32)
    assert count_parameters(model) == expected == 16_065
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Dropout] * 3
    assert all(m.p == 0.1 for m in model.modules() if isinstance(m, nn.Dropout))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [128, 64, 32, 1]


def test_click_predictor_is_valid_for_opacus():
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(StreamRecClickPredictor(), strict=False) == []


def test_click_predictor_configurable():
    model = StreamRecClickPredictor(12, (16, 8), dropout=0.0)
    assert count_parameters(model) == _linear(12, 16) + _linear(16, 8) + _linear(8, 1) + 2 * (16 + 8)
    assert model(torch.zeros(3, 12)).shape == (3,)
    one_block = StreamRecClickPredictor(5, 4)
    assert count_parameters(one_block) == _linear(5, 4) + 2 * 4 + _linear(4, 1)
    # eval mode is deterministic (dropout off)
    model = StreamRecClickPredictor().eval()
    x = torch.randn(5, 40)
    torch.testing.assert_close(model(x), model(x))


def test_mlp_factory():
    net = MLP(10, 64, 5)
    assert count_parameters(net) == _linear(10, 64) + _linear(64, 5) == 1_029
    assert net(torch.zeros(4, 10)).shape == (4, 5)
    deep = MLP(3, [8, 8], 2, activation=nn.Tanh)
    assert [type(m) for m in deep] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert count_parameters(deep) == _linear(3, 8) + _linear(8, 8) + _linear(8, 2)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: StreamRecClickPredictor(0), "n_features must be an integer >= 1, got 0"),
        (lambda: StreamRecClickPredictor(40, (128, -1)), r"hidden\[1\] must be an integer >= 1, got -1"),
        (lambda: StreamRecClickPredictor(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (lambda: MLP(10, 64, 0), "out_features must be an integer >= 1, got 0"),
        (lambda: MLP(10, 2.5, 1), r"hidden\[0\] must be an integer >= 1, got 2.5"),
    ],
)
def test_invalid_sizes_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
