"""privlab.dpsgd.batched against autograd, example by example, on stacked random MLPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from privlab.dpsgd import batched


def _stacked_mlp(R, sizes, *, bias, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for k, (d_in, d_out) in enumerate(zip(sizes, sizes[1:])):
        if k:
            layers.append(batched.RELU)
        w = torch.randn(R, d_out, d_in, generator=g, dtype=dtype)
        layers.append((w, torch.randn(R, d_out, generator=g, dtype=dtype) if bias else None))
    return layers


def _loss(out, y, loss):  # per-example loss of one example's output (K,)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out[0], y.to(out.dtype))
    return F.cross_entropy(out.unsqueeze(0), y.long().unsqueeze(0))[()]


def _autograd_per_example(layers, x, y, loss):
    """Per-example flat gradients by autograd, one copy and one example at a time: (R, B, P)."""
    R, B = x.shape[:2]
    out = torch.zeros(R, B, sum(t.numel() // R for lay in layers if isinstance(lay, tuple)
                                for t in lay if t is not None), dtype=x.dtype)
    for r in range(R):
        params = [t[r].clone().requires_grad_(True) for lay in layers if isinstance(lay, tuple)
                  for t in lay if t is not None]
        for i in range(B):
            h, it = x[r, i], iter(params)
            for lay in layers:
                if isinstance(lay, tuple):
                    w = next(it)
                    h = w @ h + (next(it) if lay[1] is not None else 0.0)
                else:
                    h = torch.relu(h)
            grads = torch.autograd.grad(_loss(h, y[r, i], loss), params)
            out[r, i] = torch.cat([gg.reshape(-1) for gg in grads])
    return out


@pytest.mark.parametrize("loss,K", [("bce", 1), ("ce", 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_norms_and_weighted_sums_equal_autograd(loss, K, bias):
    R, B, sizes = 3, 5, (4, 6, 5, K)
    layers = _stacked_mlp(R, sizes, bias=bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(R, B, sizes[0], generator=g, dtype=torch.float64)
    y = (torch.rand(R, B, generator=g) > 0.5).double() if loss == "bce" else torch.randint(0, K, (R, B), generator=g)
    per_example = _autograd_per_example(layers, x, y, loss)  # (R, B, P)

    out, inputs = batched.forward(layers, x)
    gs = batched.backward(layers, inputs, batched.output_grads(out, y, loss))
    torch.testing.assert_close(batched.per_example_grad_norms(layers, inputs, gs), per_example.norm(dim=-1))

    c = torch.rand(R, B, generator=g, dtype=torch.float64)
    sums = batched.grad_sums(layers, inputs, gs, c)
    flat = torch.cat([t.reshape(R, -1) for pair in sums for t in pair if t is not None], dim=1)
    torch.testing.assert_close(flat, (per_example * c.unsqueeze(-1)).sum(1))
    # weights applied before backward (the batch-mean convention) give the same sums
    pre = batched.grad_sums(layers, inputs, batched.backward(layers, inputs, batched.output_grads(out, y, loss)
                                                             * c.unsqueeze(-1)))
    for (w1, b1), (w2, b2) in zip(sums, pre):
        torch.testing.assert_close(w1, w2)
        assert (b1 is None) == (b2 is None)


def test_forward_equals_per_copy_modules():
    layers = _stacked_mlp(2, (3, 4, 2), bias=True, dtype=torch.float32)
    x = torch.randn(2, 7, 3)
    out, inputs = batched.forward(layers, x)
    for r in range(2):
        (w1, b1), _, (w2, b2) = layers
        ref = F.linear(torch.relu(F.linear(x[r], w1[r], b1[r])), w2[r], b2[r])
        torch.testing.assert_close(out[r], ref)
    assert [t.shape[-1] for t in inputs] == [3, 4, 4]


def test_backward_refuses_other_activations():
    layers = [(torch.ones(1, 2, 2), None), torch.tanh, (torch.ones(1, 1, 2), None)]
    out, inputs = batched.forward(layers, torch.ones(1, 3, 2))
    with pytest.raises(ValueError, match="ReLU only"):
        batched.backward(layers, inputs, torch.ones_like(out))


def test_bad_loss_and_no_linear_rejected():
    with pytest.raises(ValueError, match="loss must be one of"):
        batched.output_grads(torch.zeros(1, 1, 1), torch.zeros(1, 1), "mse")
    with pytest.raises(ValueError, match="no Linear layer"):
        batched.per_example_grad_norms([batched.RELU], [torch.ones(1, 1, 1)], [None])
