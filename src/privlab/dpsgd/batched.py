r"""Many small MLPs at once: batched forward, backpropagation written out, per-example gradients.

:math:`R` independent copies of an MLP (runs of a sweep, or clients of a federated round)
share nothing but their architecture, so their parameters are stacked along a leading
axis, :math:`W_\ell \in \mathbb{R}^{R \times d_\ell \times d_{\ell-1}}` (torch's ``(out, in)``
layout), :math:`b_\ell \in \mathbb{R}^{R \times d_\ell}`, and every layer of every copy runs
in one ``torch.baddbmm``. Shapes below: :math:`R` copies, :math:`B` examples each.

**Forward.** A Linear layer maps its input :math:`a_\ell` to :math:`z_\ell = W_\ell a_\ell + b_\ell`;
an activation is applied elementwise. :func:`forward` keeps every layer's input.

**Backward.** With :math:`g = \partial \ell_i / \partial z` at the output
(:func:`output_grads`: :math:`\sigma(z) - y` for binary cross-entropy on one logit,
:math:`\mathrm{softmax}(z) - e_y` for cross-entropy), a Linear layer passes
:math:`g W_\ell` down and a ReLU passes :math:`g \odot \mathbf{1}[a > 0]` (:func:`backward`).
Example :math:`i`'s gradient of a Linear layer is then the outer product and the vector

.. math::
    \nabla_{W_\ell} \ell_i = g_{\ell,i}\, a_{\ell,i}^\top, \qquad \nabla_{b_\ell} \ell_i = g_{\ell,i},

so its squared norm needs no outer product (:func:`per_example_grad_norms`),

.. math::
    \|\nabla \ell_i\|^2 = \sum_\ell \bigl(\|a_{\ell,i}\|^2 + 1\bigr)\, \|g_{\ell,i}\|^2

(the :math:`+1` for the bias, absent without one), and any weighted sum of the
per-example gradients, DP-SGD's clipped sum with :math:`c_i = \min(1, C/\|\nabla\ell_i\|)`
or a batch mean with :math:`c_i = 1/|b|`, is one matrix product per layer
(:func:`grad_sums`):

.. math::
    \sum_i c_i \nabla_{W_\ell} \ell_i = (c \odot g_\ell)^\top a_\ell, \qquad
    \sum_i c_i \nabla_{b_\ell} \ell_i = \sum_i c_i\, g_{\ell,i}.

No autograd, no per-example gradient materialised: the trick of Goodfellow 2015
(arXiv:1510.01799) for the norms, and backpropagation as in any textbook (Goodfellow,
Bengio, Courville, *Deep Learning*, section 6.5). The tests check every piece against
autograd, example by example.

A network is given as ``layers``: a list whose items are either a Linear layer's stacked
``(W (R, out, in), b (R, out) or None)`` or an elementwise activation (a callable);
:func:`backward` knows :data:`RELU` only.

Used by: :mod:`privlab.experiments.privacy_cliff` (the 66-run sweep) and
:func:`privlab.federated.local.local_updates_bmm` (thousands of clients).

Used in: chapters 7, 9 (through those modules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "RELU", "backward", "forward", "grad_sums", "output_grads", "per_example_grad_norms"]

#: The activation :func:`backward` differentiates by hand.
RELU = torch.relu
#: Losses :func:`output_grads` knows: binary cross-entropy on one logit, cross-entropy on class logits.
LOSSES = ("bce", "ce")

Layer = tuple[Tensor, Tensor | None] | Callable[[Tensor], Tensor]


def _is_linear(layer) -> bool:
    return isinstance(layer, tuple)


def forward(layers: Sequence[Layer], x: Tensor) -> tuple[Tensor, list[Tensor]]:
    r"""All :math:`R` networks on their own batches: ``x (R, B, d)`` -> output ``(R, B, K)`` and each layer's input.

    Returns:
        ``(out, inputs)`` with ``inputs[l]`` the input :math:`a_\ell` of ``layers[l]`` (``inputs[0] = x``).

    >>> W, b = torch.ones(2, 3, 4), torch.zeros(2, 3)
    >>> out, inputs = forward([(W, b), RELU], torch.ones(2, 5, 4))
    >>> tuple(out.shape), len(inputs), out[0, 0].tolist()
    ((2, 5, 3), 2, [4.0, 4.0, 4.0])
    """
    inputs, h = [], x
    for layer in layers:
        inputs.append(h)
        if _is_linear(layer):
            w, b = layer
            h = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        else:
            h = layer(h)
    return h, inputs


def output_grads(out: Tensor, y: Tensor, loss: str) -> Tensor:
    r""":math:`\partial \ell_i / \partial z_i` at the output ``out (R, B, K)``, per example: ``(R, B, K)``.

    ``"bce"`` (:math:`K = 1`, ``y`` in {0, 1}): :math:`\sigma(z) - y`;
    ``"ce"`` (``y`` class indices): :math:`\mathrm{softmax}(z) - e_y`.

    >>> output_grads(torch.zeros(1, 2, 1), torch.tensor([[0.0, 1.0]]), "bce").flatten().tolist()
    [0.5, -0.5]
    >>> output_grads(torch.zeros(1, 1, 2), torch.tensor([[1]]), "ce").flatten().tolist()
    [0.5, -0.5]
    """
    if loss == "bce":
        return torch.sigmoid(out) - y.unsqueeze(-1).to(out.dtype)
    if loss == "ce":
        return torch.softmax(out, dim=-1) - F.one_hot(y.long(), out.shape[-1]).to(out.dtype)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def backward(layers: Sequence[Layer], inputs: Sequence[Tensor], g: Tensor) -> list[Tensor | None]:
    r"""Backpropagate ``g`` (:math:`\partial\ell/\partial z` at the output, ``(R, B, K)``) through ``layers``.

    Returns:
        For each layer, the gradient at its *output* :math:`g_\ell` ``(R, B, d_\ell)`` if it is
        a Linear layer, ``None`` for an activation. The first layer's input gradient is not
        computed.

    Raises:
        ValueError: for an activation other than :data:`RELU`.

    >>> W = torch.tensor([[[1.0, -1.0]]])   # one copy, 2 -> 1
    >>> gs = backward([(W, None), RELU, (torch.ones(1, 1, 1), None)], [None, torch.tensor([[[-2.0]]]), None],
    ...               torch.ones(1, 1, 1))
    >>> gs[0].tolist(), gs[1], gs[2].tolist()   # the ReLU was off: nothing reaches the first layer
    ([[[0.0]]], None, [[[1.0]]])
    """
    out: list[Tensor | None] = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if _is_linear(layer):
            out[i] = g
            if i:
                g = torch.bmm(g, layer[0])  # g W: (R, B, out) @ (R, out, in)
        elif layer is RELU:
            g = g.masked_fill(inputs[i] <= 0, 0.0)  # g * 1[a > 0]
        else:
            raise ValueError(f"backward differentiates ReLU only, got {layer!r}; use autograd")
    return out


def per_example_grad_norms(layers: Sequence[Layer], inputs: Sequence[Tensor], gs: Sequence[Tensor | None]) -> Tensor:
    r""":math:`\|\nabla\ell_i\|` over all parameters of each copy, ``(R, B)``, from :func:`backward`'s output.

    :math:`\|\nabla\ell_i\|^2 = \sum_\ell (\|a_{\ell,i}\|^2 + 1)\,\|g_{\ell,i}\|^2` (no :math:`+1` without a bias).

    >>> a, g = torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[2.0]]])   # |a|^2 = 25, |g|^2 = 4
    >>> per_example_grad_norms([(torch.ones(1, 1, 2), torch.zeros(1, 1))], [a], [g]).item()   # sqrt(26 * 4)
    10.198039054870605
    """
    total = None
    for layer, a, g in zip(layers, inputs, gs, strict=True):
        if not _is_linear(layer):
            continue
        sq_in = (a * a).sum(-1) + (0.0 if layer[1] is None else 1.0)
        term = sq_in * (g * g).sum(-1)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("layers contain no Linear layer")
    return total.sqrt()


def grad_sums(layers: Sequence[Layer], inputs: Sequence[Tensor], gs: Sequence[Tensor | None],
              weights: Tensor | None = None) -> list[tuple[Tensor, Tensor | None]]:  # fmt: skip
    r""":math:`\bigl((c \odot g_\ell)^\top a_\ell,\ \sum_i c_i g_{\ell,i}\bigr)` for each Linear layer, in order.

    The weighted sum over examples of the per-example gradients, one matrix product per layer.

    Args:
        layers, inputs, gs: as from :func:`forward` and :func:`backward`.
        weights: :math:`c` ``(R, B)`` (clip factors times the padding mask, or batch-mean weights);
            ``None`` when ``gs`` are weighted already.

    Returns:
        ``[(grad_W (R, out, in), grad_b (R, out) or None), ...]``, one pair per Linear layer.

    >>> a, g = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), torch.tensor([[[1.0], [1.0]]])
    >>> [(w.tolist(), b.tolist()) for w, b in grad_sums([(torch.ones(1, 1, 2), torch.zeros(1, 1))], [a], [g],
    ...                                                 torch.tensor([[1.0, 0.5]]))]
    [([[[2.5, 4.0]]], [[1.5]])]
    """
    out = []
    for layer, a, g in zip(layers, inputs, gs, strict=True):
        if not _is_linear(layer):
            continue
        cg = g if weights is None else g * weights.unsqueeze(-1)
        out.append((torch.bmm(cg.transpose(1, 2), a), None if layer[1] is None else cg.sum(1)))
    return out
