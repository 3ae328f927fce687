r"""Gradient inversion: reconstructing a client's examples from one federated update.

A client with :math:`B` examples :math:`(x_i, y_i)` takes one local step from
the global model :math:`\theta` (FedSGD, or FedAvg with one epoch of one batch)
and uploads
:math:`\Delta = -\eta\, \nabla_\theta \frac1B \sum_i \ell(\theta; x_i, y_i)`.
The server knows :math:`\theta` and :math:`\eta`. Zhu, Liu, Han (2019, "Deep
Leakage from Gradients", arXiv:1906.08935) find inputs whose gradient matches
:math:`\Delta` by gradient descent on the inputs; Geiping, Bauermeister, Droge,
Moeller (2020, "Inverting Gradients", arXiv:2003.14053) match the *direction*
with the cosine distance, which is blind to the step size (and to clipping):

.. math::
    \hat x = \arg\min_{x \in [0, 1]^{B \times d}}\;
    1 - \frac{\langle \nabla_\theta L(\theta; x, \hat y),\; -\Delta\rangle}
             {\|\nabla_\theta L(\theta; x, \hat y)\|\,\|\Delta\|}.

The labels come first, from the last layer's bias (Zhao, Mopuri, Bilen 2020,
iDLG, arXiv:2001.02610): for the cross-entropy,
:math:`\partial L/\partial b_c = \frac1B\sum_i (p_{ic} - [y_i = c])`, negative
for the classes present (when the model is not yet confident), so the
:math:`B` largest entries of :math:`\Delta_b` name them (distinct labels assumed).

In central DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963) the client only
clips its update to norm :math:`C` and the *server* adds
:math:`\mathcal N(0, \sigma^2 C^2 I)` to the sum, so a server that sees
individual updates sees them clipped and noise-free; clipping changes only the
length, which the cosine ignores, and the attack succeeds. :func:`privatize_update`
adds *local* noise, by the client before upload (or the released sum of a round
with one participant): that noise is what stops the attack. Protecting uploads
from the server at central noise levels needs secure aggregation with
distributed noise (Kairouz, Liu, Steinke 2021, arXiv:2102.06387). The clip norm
must not depend on the client's private data (take it from public data or fix it).

Used in: chapter 9.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.func import functional_call

from .._validate import check_int, check_nonnegative, check_positive

__all__ = [
    "client_update",
    "infer_labels",
    "invert_update",
    "matched_mse",
    "privatize_update",
]


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _flat_grad(model, params, x, y, *, create_graph: bool) -> Tensor:
    loss = nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def client_update(model: nn.Module, x, y, *, lr: float) -> Tensor:
    r"""The flat update of one local step, :math:`-\eta\nabla_\theta\frac1B\sum_i\ell`.

    Args:
        model: the global model (class logits; not modified). x: ``(B, d)``.
        y: ``(B,)`` integer labels. lr: :math:`\eta > 0`.

    Returns:
        ``(P,)``, parameters in ``model.named_parameters()`` order.
    """
    eta = check_positive("lr", lr)
    params = {k: v.clone().requires_grad_(True) for k, v in _params(model).items()}
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    return -eta * _flat_grad(model, params, x, y, create_graph=False).detach()


def privatize_update(update: Tensor, *, clip_norm: float, noise_multiplier: float,
                     generator: torch.Generator) -> Tensor:  # fmt: skip
    r"""Local noise on one client's update: clip to norm :math:`C`, add Gaussian noise.

    This is the client adding the noise itself (local DP, or a one-client round's
    release), not central DP-FedAvg's client step, which clips only (the server
    adds the noise to the sum).

    .. math:: \Delta \min(1, C/\|\Delta\|) + \mathcal N(0, \sigma^2 C^2 I)

    Args:
        update: ``(P,)``. clip_norm: :math:`C > 0`.
        noise_multiplier: :math:`\sigma \ge 0`.
        generator: the noise's source.

    Returns:
        ``(P,)``.

    >>> u = privatize_update(torch.tensor([3.0, 4.0]), clip_norm=1.0,
    ...                      noise_multiplier=0.0, generator=torch.Generator())
    >>> u.tolist()
    [0.6000000238418579, 0.800000011920929]
    """
    c = check_positive("clip_norm", clip_norm)
    sigma = check_nonnegative("noise_multiplier", noise_multiplier)
    clipped = update * torch.clamp(c / update.norm().clamp_min(1e-12), max=1.0)
    noise = torch.randn(update.shape, generator=generator, dtype=update.dtype)
    return clipped + sigma * c * noise


def infer_labels(model: nn.Module, update: Tensor, n_examples: int) -> Tensor:
    r"""The :math:`B` labels read off the output bias's update (iDLG; distinct labels).

    Args:
        model: the global model; its last parameter must be the output bias.
        update: ``(P,)`` the (possibly noisy) update. n_examples: :math:`B`.

    Returns:
        ``(B,)`` labels, the classes with the largest bias updates, ascending.
    """
    b = check_int("n_examples", n_examples)
    names = [k for k, _ in model.named_parameters()]
    last = dict(model.named_parameters())[names[-1]]
    if last.dim() != 1:
        raise ValueError(
            f"the last parameter must be the output bias, got shape {tuple(last.shape)}"
        )
    bias_update = update[-last.numel() :]
    return torch.sort(torch.topk(bias_update, b).indices).values


def invert_update(model: nn.Module, update: Tensor, labels, *, steps: int = 300,
                  lr: float = 0.1, generator: torch.Generator) -> Tensor:  # fmt: skip
    r"""Inputs in :math:`[0, 1]^d` whose gradient points along :math:`-\Delta`.

    The inputs are parameterised as :math:`x = \mathrm{sigmoid}(u)` (so they stay in
    the box), :math:`u` starts from :math:`\mathcal N(0, 1)` and Adam minimises the
    cosine distance. Geiping et al. 2020, arXiv:2003.14053, eq. 4 (without the
    total-variation prior, which needs images larger than 8 by 8).

    Args:
        model: the global model the update started from. update: ``(P,)``.
        labels: ``(B,)`` integer labels (from :func:`infer_labels`).
        steps: Adam iterations. lr: Adam's step size. generator: the start's source.

    Returns:
        ``(B, d)`` reconstructed inputs, :math:`d` the model's input width.
    """
    steps, lr = check_int("steps", steps), check_positive("lr", lr)
    y = torch.as_tensor(labels, dtype=torch.long)
    first = next(p for p in model.parameters() if p.dim() == 2)
    d = first.shape[1]
    params = {k: v.clone().requires_grad_(True) for k, v in _params(model).items()}
    target = -update.detach()
    target = target / target.norm().clamp_min(1e-12)
    u = torch.randn((len(y), d), generator=generator).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    for _ in range(steps):
        g = _flat_grad(model, params, torch.sigmoid(u), y, create_graph=True)
        loss = 1 - (g @ target) / g.norm().clamp_min(1e-12)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.sigmoid(u).detach()


def matched_mse(reconstructed, truth) -> float:
    r"""Mean squared error per feature after pairing reconstructions with true examples.

    The pairing minimises the total error (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`): the attacker need not know
    which reconstruction is which example.

    >>> matched_mse(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1], [1, 0]]))
    0.0
    """
    r, t = np.asarray(reconstructed, dtype=float), np.asarray(truth, dtype=float)
    if r.shape != t.shape or r.ndim != 2:
        raise ValueError(
            f"need two (B, d) arrays of one shape, got {r.shape} and {t.shape}"
        )
    cost = ((r[:, None, :] - t[None, :, :]) ** 2).mean(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())
