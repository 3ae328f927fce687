r"""The DP-SGD kernel: the sum of per-example gradients, each clipped to norm :math:`C`.

.. math::
    \bar g = \sum_{i=1}^{B} c_i\, g_i, \qquad
    c_i = \min\Bigl(1, \frac{C}{\|g_i\|_2}\Bigr) = \frac{C}{\max(\|g_i\|_2,\, C)},

where :math:`g_i = \nabla_\theta \ell_i` is example :math:`i`'s gradient over
*all* trainable parameters (flattened and concatenated) and :math:`C` is
``max_grad_norm``. The second form of :math:`c_i` needs no epsilon and is exact
for :math:`g_i = 0` (then :math:`c_i = 1`). Every :math:`c_i g_i` has norm at
most :math:`C`, so adding or removing one example moves :math:`\bar g` by at
most :math:`C`: the sensitivity the Gaussian noise is calibrated to.

Three interchangeable methods compute :math:`\bar g` (they agree to float
rounding; the tests check it): ``"loop"`` and ``"vmap"`` materialise the
:math:`g_i` (:mod:`privlab.dpsgd.per_sample`); ``"fast"`` never does
(:mod:`privlab.dpsgd.fast`).

Reference: Abadi et al., *Deep Learning with Differential Privacy*, CCS 2016
(arXiv:1607.00133), Algorithm 1, "clip gradient".

Used in: chapters 6, 7, 8, 13.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._validate import check_positive
from .fast import fast_norms_and_clipped_sum
from .per_sample import (
    as_input_tuple,
    batch_size_of,
    check_per_example_model,
    loop_grads_and_losses,
    trainable_parameters,
    vmap_grads_and_losses,
)
from . import rules
from .rules import weighted_rows

__all__ = ["METHODS", "ClippedSum", "clip_factors", "clipped_grad_sum", "clipped_grad_sum_with_stats",
           "per_example_grad_norms", "removal_gaps"]

#: Methods accepted by :func:`clipped_grad_sum`.
METHODS = ("loop", "vmap", "fast")


class ClippedSum(NamedTuple):
    """The kernel's full answer: the clipped sum, the unclipped norms and the per-example losses."""

    grads: list[Tensor] | None  # one per trainable parameter; None when only norms were asked for
    norms: Tensor  # (B,) ||g_i||, before clipping
    losses: Tensor  # (B,) per-example losses, detached
    params: list[nn.Parameter]  # the trainable parameters the grads belong to, in model.parameters() order


def clip_factors(norms: Tensor, *, max_grad_norm: float) -> Tensor:
    r"""Clip factors :math:`c_i = \min(1, C/\|g_i\|) = C / \max(\|g_i\|, C)`.

    Args:
        norms: per-example gradient norms :math:`\|g_i\|`, shape ``(B,)``.
        max_grad_norm: the clipping norm :math:`C > 0`.

    Returns:
        Tensor ``(B,)`` with entries in ``(0, 1]`` (``1`` for a zero gradient), and ``0`` for an
        example whose norm is not finite (NaN or infinite gradient): it is left out of the sum, as
        if clipped to zero, instead of turning the whole release into NaN (which one example could
        then switch on and off: an unbounded privacy loss). The eager kernel then recomputes the sum
        without it (one host synchronisation per step checks the norms); a step replayed from a
        CUDA graph cannot synchronise, so there every weighted sum replaces that example's rows by
        zeros (:func:`privlab.dpsgd.rules.zero_dropped_rows`) and the step stays finite.

    Raises:
        ValueError: if ``max_grad_norm`` is not a finite number > 0 or ``norms`` is not 1-D.

    >>> clip_factors(torch.tensor([0.0, 0.5, 2.0, 4.0, float("nan")]), max_grad_norm=1.0)
    tensor([1.0000, 1.0000, 0.5000, 0.2500, 0.0000])
    """
    c = check_positive("max_grad_norm", max_grad_norm)
    if norms.ndim != 1:
        raise ValueError(f"norms must have shape (B,), got {tuple(norms.shape)}")
    return torch.where(torch.isfinite(norms), c / norms.clamp_min(c), torch.zeros_like(norms))


def _materialised(per_example: Callable):
    """Build a kernel method from a function returning (per-example grads, losses)."""

    def method(model, loss_fn, xs, targets, factors_fn, named, modules):
        grads, losses = per_example(model, loss_fn, xs, targets, named)
        batch = losses.shape[0]
        # in float32 or wider: a bf16/fp16 norm would misstate the clip factor (a no-op cast in float32)
        acc = functools.reduce(torch.promote_types, (g.dtype for g in grads), torch.float32)
        norms = sum(g.reshape(batch, -1).to(acc).pow(2).sum(1) for g in grads).sqrt()
        if factors_fn is None:
            return None, norms, losses
        c = factors_fn(norms)
        if c.shape != (batch,):
            raise ValueError(f"clip factors must have shape ({batch},), got {tuple(c.shape)}")
        return [weighted_rows(c, g) for g in grads], norms, losses

    return method


def _fast(model, loss_fn, xs, targets, factors_fn, named, modules):
    return fast_norms_and_clipped_sum(model, loss_fn, xs, targets, factors_fn,
                                      params=[p for _, p in named], modules=modules)


_METHOD_IMPLS = {
    "loop": _materialised(lambda m, f, x, y, named: loop_grads_and_losses(m, f, x, y, [p for _, p in named])),
    "vmap": _materialised(lambda m, f, x, y, named: vmap_grads_and_losses(m, f, x, y, [n for n, _ in named])),
    "fast": _fast,
}


def clipped_grad_sum_with_stats(
    model: nn.Module,
    loss_fn,
    inputs,
    targets,
    *,
    factors_fn: Callable[[Tensor], Tensor] | None,
    method: str = "fast",
) -> ClippedSum:
    """The kernel with a pluggable clip rule; also returns norms and losses (see :func:`clipped_grad_sum`).

    ``factors_fn(norms) -> c`` maps norms ``(B,)`` to factors ``(B,)``; ``None``
    computes the norms only. :class:`privlab.dpsgd.DPOptimizer` passes its
    ``clip_factors`` method here, so a subclass can change the clipping rule.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    modules = list(model.named_modules())  # one walk over the model per step
    check_per_example_model(model, modules)
    xs = as_input_tuple(inputs)
    batch = batch_size_of(xs)
    if targets is not None and (targets.ndim == 0 or targets.shape[0] != batch):
        raise ValueError(f"targets must have leading dimension B = {batch}, got shape {tuple(targets.shape)}")
    named = trainable_parameters(model, modules)
    params = [p for _, p in named]
    if batch == 0:  # an empty Poisson batch: the sum over no examples is zero
        device = params[0].device if params else xs[0].device
        empty = torch.zeros(0, device=device)
        grads = None if factors_fn is None else rules.zero_sums(params)
        return ClippedSum(grads, empty, empty, params)
    grads, norms, losses = _METHOD_IMPLS[method](model, loss_fn, xs, targets, factors_fn, named, modules)
    if grads is not None and not rules.capturing() and not bool(torch.isfinite(norms).all()):
        # an example with a NaN or infinite gradient has clip factor 0, but 0 * inf is NaN in the
        # weighted sum: the sum over the other examples, computed again without it (each example's
        # own gradient decides whether it takes part, so each still moves the sum by at most C).
        # The factors are those of the full batch (a rule may read the batch's rows, as a padding
        # mask does); a second pass draws new dropout masks. Not inside a captured CUDA graph.
        finite = torch.isfinite(norms)
        if bool(finite.any()):
            sub = tuple(x[finite] for x in xs)

            def factors_of_rows(sub_norms):
                return factors_fn(norms.masked_scatter(finite, sub_norms))[finite]

            grads = _METHOD_IMPLS[method](model, loss_fn, sub, None if targets is None else targets[finite],
                                          factors_of_rows, named, modules)[0]
        else:
            grads = rules.zero_sums(params)
    return ClippedSum(grads, norms, losses, params)



def clipped_grad_sum(
    model: nn.Module, loss_fn, inputs, targets, *, max_grad_norm: float, method: str = "fast"
) -> list[Tensor]:
    r"""Sum over the batch of per-example gradients, each clipped to L2 norm ``max_grad_norm``.

    .. math::  \bar g = \sum_{i=1}^{B} \min\Bigl(1, \frac{C}{\|g_i\|}\Bigr)\, g_i

    Symbols: :math:`g_i` is the gradient of example :math:`i`'s loss w.r.t. all
    trainable parameters, :math:`C` is ``max_grad_norm``, :math:`B` the batch size.

    Args:
        model: a module whose output for one example depends on that example only
            (BatchNorm in training mode is refused).
        loss_fn: ``loss_fn(outputs, targets)`` returning per-example losses of
            shape ``(B,)``, ``(B, 1)``, ``(B, k)`` or any ``(B, ...)``; all but the
            batch dimension is summed, so example :math:`i`'s loss is a scalar
            (pass ``reduction="none"`` to torch's losses).
        inputs: tensor ``(B, ...)`` or tuple of tensors (the model's positional inputs).
        targets: tensor ``(B, ...)`` or ``None``.
        max_grad_norm: the clipping norm :math:`C`, finite and > 0.
        method: ``"fast"`` (default), ``"vmap"`` or ``"loop"``.

    Returns:
        One tensor per trainable parameter, in ``model.parameters()`` order
        (zeros for an empty batch, ``B = 0``), in the parameter's dtype, or in float32 for a
        16-bit one (the sum is formed there: rounded to bfloat16, one example could move it by
        more than C; :class:`privlab.dpsgd.DPOptimizer` casts after adding the noise).

    Raises:
        ValueError: for a bad ``max_grad_norm`` or ``method``, a loss of the
            wrong shape, or a model that mixes examples.

    Reference: Abadi et al. 2016 (arXiv:1607.00133), Algorithm 1.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 1))
    >>> x, y = torch.randn(5, 3), torch.randn(5)
    >>> mse = lambda out, t: (out.squeeze(1) - t) ** 2
    >>> fast = clipped_grad_sum(model, mse, x, y, max_grad_norm=0.5)
    >>> loop = clipped_grad_sum(model, mse, x, y, max_grad_norm=0.5, method="loop")
    >>> all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fast, loop))
    True

    Used in: chapters 6, 7, 8.
    """
    c = check_positive("max_grad_norm", max_grad_norm)
    result = clipped_grad_sum_with_stats(
        model, loss_fn, inputs, targets, factors_fn=lambda n: clip_factors(n, max_grad_norm=c), method=method
    )
    return result.grads


def per_example_grad_norms(model: nn.Module, loss_fn, inputs, targets, *, method: str = "fast") -> Tensor:
    r"""Per-example gradient norms :math:`\|g_i\|_2` over all trainable parameters, shape ``(B,)``.

    The quantity to profile before choosing :math:`C` (see
    :func:`privlab.dpsgd.profile_grad_norms`).

    Args:
        model, loss_fn, inputs, targets: as in :func:`clipped_grad_sum`.
        method: ``"fast"``, ``"vmap"`` or ``"loop"``.

    Returns:
        Tensor ``(B,)``, detached.

    >>> m = nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[1.0, 0.0]]))
    >>> sq = lambda out, t: 0.5 * out.squeeze(1) ** 2   # gradient = out * x
    >>> per_example_grad_norms(m, sq, torch.tensor([[3.0, 4.0], [0.0, 1.0]]), None)
    tensor([15.,  0.])

    Used in: chapters 6, 13.
    """
    return clipped_grad_sum_with_stats(model, loss_fn, inputs, targets, factors_fn=None, method=method).norms.detach()


def removal_gaps(clipped_sum: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
    r"""How far removing each example moves a clipped sum: :math:`\|\bar g(D) - \bar g(D \setminus \{k\})\|_2`
    for every example :math:`k` of the batch :math:`D`, shape ``(B,)``.

    For a correct clipped sum every gap is at most :math:`C` (each example adds one term of norm
    at most :math:`C`, and no other term depends on it): the add/remove sensitivity the noise is
    calibrated to, measured on one batch. A gap above :math:`C` refutes the implementation (a
    single batch cannot prove it right).

    Args:
        clipped_sum: maps a batch ``(inputs, targets)`` to the clipped sum, one flat tensor.
        inputs, targets: the batch, batch first (one tensor each).

    >>> net = torch.nn.Linear(3, 1)
    >>> x, y = torch.randn(6, 3), torch.randn(6)
    >>> def flat(x, y):
    ...     loss = lambda out, t: (out.squeeze(1) - t) ** 2
    ...     return torch.cat([g.flatten() for g in clipped_grad_sum(net, loss, x, y, max_grad_norm=0.1)])
    >>> bool(removal_gaps(flat, x, y).max() <= 0.1 + 1e-6)
    True

    Used in: chapter 8.
    """
    full = clipped_sum(inputs, targets)
    gaps = []
    for k in range(len(inputs)):
        keep = torch.cat([torch.arange(k), torch.arange(k + 1, len(inputs))]).to(inputs.device)
        gaps.append(torch.linalg.vector_norm(full - clipped_sum(inputs[keep], targets[keep])))
    return torch.stack(gaps)
