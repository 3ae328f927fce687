"""The noisy step: noise scale, the sigma = 0 step, named steps that can be overridden, validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from privlab.audit import NoClipOptimizer, NoNoiseOptimizer, WrongNoiseScaleOptimizer  # the planted bugs
from privlab.dpsgd import DPOptimizer, DPSGDConfig, clip_factors, clipped_grad_sum


def mse(out, t):
    return (out.squeeze(1) - t) ** 2


def make_dp(model, *, sigma=1.0, c=1.0, batch=8.0, seed=0, lr=1.0, **kw):
    return DPOptimizer(torch.optim.SGD(model.parameters(), lr=lr), noise_multiplier=sigma, max_grad_norm=c,
                       expected_batch_size=batch, generator=torch.Generator().manual_seed(seed), **kw)


def test_noise_has_std_sigma_c():
    sigma, c, n = 1.7, 0.3, 40_000
    dp = make_dp(nn.Linear(1, 1), sigma=sigma, c=c)
    noisy = dp.add_noise([torch.zeros(n, dtype=torch.float64)])[0]
    var, target = noisy.var().item(), (sigma * c) ** 2
    assert abs(var - target) < 6 * target * math.sqrt(2 / (n - 1))  # SE of a normal sample variance
    assert abs(noisy.mean().item()) < 6 * sigma * c / math.sqrt(n)


def test_empty_batch_step_moves_parameters_by_scaled_noise_only():
    # 3000 parameters, an empty batch: the update is -lr * N(0, (sigma C)^2) / (qN) in each coordinate
    sigma, c, batch, lr = 2.0, 0.5, 10.0, 0.1
    model = nn.Linear(3000, 1, bias=False).double()
    before = model.weight.detach().clone()
    dp = make_dp(model, sigma=sigma, c=c, batch=batch, lr=lr)
    dp.step(model, mse, torch.zeros(0, 3000, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    delta = (model.weight.detach() - before).flatten()
    target = (lr * sigma * c / batch) ** 2
    assert abs(delta.var().item() - target) < 6 * target * math.sqrt(2 / (delta.numel() - 1))


def test_sigma_zero_step_equals_clipped_mean_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 1)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    summed = clipped_grad_sum(model, mse, x, y, max_grad_norm=0.2, method="loop")
    lr = 0.05
    make_dp(model, sigma=0.0, c=0.2, batch=8.0, lr=lr).step(model, mse, x, y)
    for p, p0, g in zip(model.parameters(), before, summed):
        torch.testing.assert_close(p.detach(), p0 - lr * g / 8)


def test_same_generator_same_noise():
    outs = []
    for _ in range(2):
        dp = make_dp(nn.Linear(2, 1), seed=5)
        outs.append(dp.add_noise([torch.zeros(4), torch.zeros(2, 2)]))
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_generator_on_another_device_is_refused():
    dp = make_dp(nn.Linear(2, 1))
    dp.generator = None
    with pytest.raises(ValueError, match="generator"):
        dp.add_noise([torch.zeros(3)])


def test_named_steps_can_be_overridden():
    torch.manual_seed(1)
    model = nn.Linear(3, 1).double()
    x, y = 10 * torch.randn(6, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    # no clipping: the kernel sees factors of one, so the "clipped" sum is the plain gradient sum
    summed = NoClipOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=1e-3,
                        expected_batch_size=6.0).clipped_sum(model, mse, x, y).grads
    plain = torch.autograd.grad(mse(model(x), y).sum(), list(model.parameters()))
    for a, b in zip(summed, plain):
        torch.testing.assert_close(a, b)
    zeros = [torch.zeros(5, dtype=torch.float64)]
    assert not torch.equal(make_dp(model).add_noise(zeros)[0], zeros[0])
    assert torch.equal(NoNoiseOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0,
                               expected_batch_size=6.0, generator=torch.Generator()).add_noise(zeros)[0], zeros[0])
    bug = WrongNoiseScaleOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=2.0, max_grad_norm=1.0,
                         expected_batch_size=100.0, generator=torch.Generator())
    assert bug.noise_std() == pytest.approx(0.01)


def test_nonprivate_step_is_plain_sgd_on_the_batch_mean():
    torch.manual_seed(2)
    model = nn.Linear(3, 1).double()
    ref = nn.Linear(3, 1).double()
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=None,
                expected_batch_size=5.0).step(model, mse, x, y)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    mse(ref(x), y).mean().backward()
    opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


bad_norms = st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(float("nan")), st.just(float("inf")))
bad_noise = st.one_of(st.floats(max_value=0.0, exclude_max=True, allow_nan=False), st.just(float("nan")),
                      st.just(float("inf")))
bad_rates = st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0, exclude_min=True),
                      st.just(float("nan")))


@given(c=bad_norms)
def test_invalid_max_grad_norm_raises_naming_it(c):
    for build in (
        lambda: clipped_grad_sum(nn.Linear(2, 1), mse, torch.zeros(2, 2), torch.zeros(2), max_grad_norm=c),
        lambda: clip_factors(torch.ones(2), max_grad_norm=c),
        lambda: make_dp(nn.Linear(2, 1), c=c),
        lambda: DPSGDConfig(noise_multiplier=1.0, max_grad_norm=c, batch_size=4),
    ):
        with pytest.raises(ValueError, match="max_grad_norm") as err:
            build()
        assert repr(c) in str(err.value)


@given(sigma=bad_noise)
def test_invalid_noise_multiplier_raises_naming_it(sigma):
    for build in (lambda: make_dp(nn.Linear(2, 1), sigma=sigma),
                  lambda: DPSGDConfig(noise_multiplier=sigma, max_grad_norm=1.0, batch_size=4)):
        with pytest.raises(ValueError, match="noise_multiplier") as err:
            build()
        assert repr(sigma) in str(err.value)


@given(q=bad_rates)
def test_invalid_sample_rate_in_config_raises_naming_it(q):
    with pytest.raises(ValueError, match="sample_rate") as err:
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=q)
    assert repr(q) in str(err.value)


def test_other_invalid_configurations():
    with pytest.raises(ValueError, match="needs a max_grad_norm"):
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=None, batch_size=4)
    with pytest.raises(ValueError, match="exactly one"):
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="method"):
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=4, method="ghost")
    with pytest.raises(ValueError, match="expected_batch_size"):
        make_dp(nn.Linear(2, 1), batch=0.0)
    with pytest.raises(ValueError, match="generator"):
        DPOptimizer(torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0), noise_multiplier=1.0,
                    max_grad_norm=1.0, expected_batch_size=4.0, generator=None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_noise_is_drawn_in_float32_for_low_precision_parameters(dtype):
    """Issue 13, defect 8: the Gaussian is drawn in float32 and the noisy sum rounded once, not drawn in bf16."""
    sigma, c, n = 1.0, 0.37, 10_000
    grad = torch.linspace(-3, 3, n).to(dtype)
    dp = make_dp(nn.Linear(1, 1), sigma=sigma, c=c, seed=5)
    noisy = dp.add_noise([grad])[0]
    z = torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    assert noisy.dtype == dtype
    torch.testing.assert_close(noisy, (grad.float() + sigma * c * z).to(dtype), rtol=0, atol=0)


def test_bf16_model_steps_with_float32_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1)).to(torch.bfloat16)
    x, y = torch.randn(6, 4, dtype=torch.bfloat16), torch.randn(6, 1, dtype=torch.bfloat16)
    dp = make_dp(model, sigma=1.0, c=0.5, record_norms=True)
    stats = dp.step(model, lambda o, t: (o - t) ** 2, x, y)
    assert stats.norms.dtype == torch.float32 and torch.isfinite(stats.norms).all()
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
