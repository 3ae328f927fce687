r"""Per-example gradients, materialised: the loop (the reference) and ``torch.func`` vmap.

For a model :math:`f_\theta` and per-example losses :math:`\ell_i(\theta) =
\ell(f_\theta(x_i), y_i)`, the per-example gradient of example :math:`i` is

.. math::  g_i = \nabla_\theta \ell_i(\theta) \in \mathbb{R}^{p}, \qquad i = 1, \dots, B .

Two ways to compute all :math:`B` of them, each returning one tensor of shape
``(B, *param.shape)`` per trainable parameter:

* ``"loop"``: one forward and one backward per example. Slow, obviously right:
  the reference every other method is tested against.
* ``"vmap"``: ``torch.func.vmap(torch.func.grad(loss_of_one_example))`` over
  the batch, through ``torch.func.functional_call`` (Horace He, Richard Zou,
  *functorch*, 2021; the "per-sample-gradients" tutorial of PyTorch).

The third method, ``"fast"``, never materialises the :math:`g_i`; it lives in
:mod:`privlab.dpsgd.fast`.

**Per-example losses.** ``loss_fn(outputs, targets)`` must return one loss per
example, with the batch as its leading dimension: shape ``(B,)``, ``(B, 1)``
or ``(B, k)`` (or any ``(B, ...)``). Everything but the batch dimension is
*summed*, so example :math:`i`'s loss is the scalar
:math:`\ell_i = \sum_j L_{i j}`. A loss already reduced over the batch (shape
``()``) is refused: it has no per-example structure to clip.

Reference: Abadi et al., *Deep Learning with Differential Privacy*, CCS 2016
(arXiv:1607.00133), Algorithm 1, line "compute gradient".

Used in: chapters 6, 7, 8.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "PER_SAMPLE_METHODS",
    "as_input_tuple",
    "batch_size_of",
    "check_per_example_model",
    "loop_grads_and_losses",
    "per_example_losses",
    "per_sample_grads",
    "trainable_parameters",
    "vmap_grads_and_losses",
]

#: The methods that materialise per-example gradients.
PER_SAMPLE_METHODS = ("loop", "vmap")


def as_input_tuple(inputs) -> tuple[Tensor, ...]:
    """The model's positional inputs as a tuple (a lone tensor becomes a 1-tuple)."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(x, Tensor) for x in inputs):
        return tuple(inputs)
    raise ValueError(f"inputs must be a Tensor or a non-empty tuple of Tensors, got {type(inputs).__name__}")


def batch_size_of(inputs) -> int:
    """The batch size ``B``: the common leading dimension of every input tensor.

    >>> batch_size_of((torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)))
    3

    Raises:
        ValueError: if an input has no batch dimension or the inputs disagree.
    """
    xs = as_input_tuple(inputs)
    sizes = {x.shape[0] if x.ndim else None for x in xs}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"every input needs the same leading batch dimension, got shapes {[tuple(x.shape) for x in xs]}"
        )
    return int(sizes.pop())


def trainable_parameters(model: nn.Module, modules=None) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every parameter with ``requires_grad``, in ``model.parameters()`` order.

    Same order, names and de-duplication as ``model.named_parameters()``, computed
    from one ``named_modules()`` walk (``modules``, if the caller already has it)
    with identity de-duplication: cheaper than the generic walk, once per step.
    """
    seen, out = set(), []
    for prefix, m in model.named_modules() if modules is None else modules:
        for n, p in m._parameters.items():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                if p.requires_grad:
                    out.append((f"{prefix}.{n}" if prefix else n, p))
    return out


def check_per_example_model(model: nn.Module, modules=None) -> None:
    """Refuse models whose output for one example depends on the others.

    Per-example gradients, and hence DP-SGD, need :math:`\\ell_i` to depend on
    example :math:`i` alone. BatchNorm in training mode normalises with batch
    statistics, which breaks this (Opacus's ``ModuleValidator`` refuses it too).

    Raises:
        ValueError: naming the first offending module.
    """
    for name, m in model.named_modules() if modules is None else modules:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(
                f"module {name or type(m).__name__!r} ({type(m).__name__}) mixes examples in training mode; "
                "per-example gradients are undefined. Replace it with GroupNorm or LayerNorm "
                "(opacus.validators.ModuleValidator.fix does this) or put it in eval mode"
            )
        if isinstance(m, nn.Embedding) and m.scale_grad_by_freq:
            raise ValueError(
                f"module {name!r}: Embedding(scale_grad_by_freq=True) scales gradients by batch-wide "
                "frequencies, so one example's gradient depends on the others; use scale_grad_by_freq=False"
            )


def per_example_losses(losses: Tensor, batch_size: int) -> Tensor:
    r"""Reduce a per-example loss tensor of shape ``(B, ...)`` to shape ``(B,)`` by summing.

    .. math::  \ell_i = \sum_{j} L_{i, j}

    This is the guard against the Opacus 1.6 ghost-clipping bug: there a
    ``(B, 1)`` loss broadcast against ``(B,)`` clip factors into a ``(B, B)``
    product whose sum is :math:`(\sum_i c_i)(\sum_j \ell_j)`, and clipping was
    silently skipped. Here every shape is reduced to exactly ``(B,)`` first and
    checked, so no broadcasting can happen downstream.

    Args:
        losses: output of ``loss_fn``; the leading dimension must be ``B``.
        batch_size: ``B``.

    Returns:
        Tensor of shape ``(B,)``.

    Raises:
        ValueError: if ``losses`` is not a tensor, is reduced over the batch
            (shape ``()``), or its leading dimension is not ``B``.

    >>> per_example_losses(torch.tensor([[1.0], [2.0]]), 2)
    tensor([1., 2.])
    >>> per_example_losses(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), 3)
    tensor([ 3.,  7., 11.])
    >>> per_example_losses(torch.tensor(1.0), 2)
    Traceback (most recent call last):
    ...
    ValueError: loss_fn must return per-example losses of shape (B, ...) with B = 2, got shape (); use reduction='none'
    """
    if not isinstance(losses, Tensor):
        raise ValueError(f"loss_fn must return a Tensor, got {type(losses).__name__}")
    if losses.ndim == 0 or losses.shape[0] != batch_size:
        raise ValueError(
            f"loss_fn must return per-example losses of shape (B, ...) with B = {batch_size}, "
            f"got shape {tuple(losses.shape)}; use reduction='none'"
        )
    if batch_size > 1 and losses.ndim >= 2 and losses.shape[1:] == (batch_size,):
        warnings.warn(
            f"loss_fn returned shape {tuple(losses.shape)}: a (B, B) loss is usually a (B, 1) output "
            "broadcast against (B,) targets inside the loss, which mixes examples; squeeze the output",
            RuntimeWarning,
            stacklevel=3,
        )
    out = losses.reshape(batch_size, -1).sum(dim=1) if losses.ndim > 1 else losses
    if out.shape != (batch_size,):  # cannot happen; a privacy guarantee rests on it, so check anyway
        raise ValueError(f"per-example losses must have shape ({batch_size},), got {tuple(out.shape)}")
    return out


def _slice_targets(targets, i: int):
    return None if targets is None else targets[i : i + 1]


def loop_grads_and_losses(model, loss_fn, inputs, targets, params):
    """Per-example gradients by one forward and backward pass per example: the slow, obvious reference.

    Args:
        model: the network; ``inputs`` are its positional inputs, a tensor or a tuple, batch first.
        loss_fn: ``loss_fn(outputs, targets)``, per example (summed over all but the batch dimension).
        targets: batch-first targets, or ``None``.
        params: the parameters to differentiate (a gradient of zeros where one is unused).

    Returns:
        ``(grads, losses)``: one ``(B, *p.shape)`` tensor per parameter, and the ``(B,)`` losses.

    Used by :func:`per_sample_grads` (``method="loop"``), the clipping engines and the fast path's fallback.
    """
    xs = as_input_tuple(inputs)
    batch = batch_size_of(xs)
    rows: list[list[Tensor]] = [[] for _ in params]
    losses = []
    for i in range(batch):
        out = model(*(x[i : i + 1] for x in xs))
        loss = per_example_losses(loss_fn(out, _slice_targets(targets, i)), 1).sum()
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        for row, g, p in zip(rows, gs, params):
            row.append(torch.zeros_like(p) if g is None else g)
        losses.append(loss.detach())
    grads = [torch.stack(r) if r else p.new_zeros((0, *p.shape)) for r, p in zip(rows, params)]
    return grads, (torch.stack(losses) if losses else xs[0].new_zeros(0, dtype=torch.float32))


def vmap_grads_and_losses(model, loss_fn, inputs, targets, names: Sequence[str]):
    """Per-example gradients as ``vmap(grad)`` of one example's loss, w.r.t. the parameters ``names``.

    The other parameters are held constant (detached); dropout draws an independent mask per
    example. Arguments as :func:`loop_grads_and_losses`, with parameter names instead of tensors.

    Returns:
        ``(grads, losses)``: ``{name: (B, *shape)}`` and the ``(B,)`` losses.

    Used by :func:`per_sample_grads` (``method="vmap"``), the clipping engines and the fast path's fallback.
    """
    xs = as_input_tuple(inputs)
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}
    # the other parameters enter as constants, detached so no autograd graph leaks into the result
    consts = {n: p.detach() for n, p in named.items() if n not in params}

    def loss_of_one(p, x_one, y_one):
        out = functional_call(model, {**consts, **p}, tuple(x.unsqueeze(0) for x in x_one))
        y1 = None if y_one is None else y_one.unsqueeze(0)
        return per_example_losses(loss_fn(out, y1), 1).sum()

    # randomness="different": dropout draws an independent mask per example.
    in_dims = (None, tuple(0 for _ in xs), None if targets is None else 0)
    g, losses = vmap(grad_and_value(loss_of_one), in_dims=in_dims, randomness="different")(
        params, xs, targets
    )
    return [g[n] for n in names], losses.detach()


def per_sample_grads(model: nn.Module, loss_fn: LossFn, inputs, targets, *, method: str = "vmap") -> list[Tensor]:
    r"""Per-example gradients :math:`g_i = \nabla_\theta \ell_i`, one ``(B, *p.shape)`` tensor per parameter.

    Args:
        model: the network :math:`f_\theta`; every trainable parameter gets a gradient.
        loss_fn: ``loss_fn(outputs, targets)`` returning per-example losses
            ``(B, ...)`` (summed over all but the batch dimension).
        inputs: a tensor ``(B, ...)`` or a tuple of them (the model's positional inputs).
        targets: tensor ``(B, ...)`` or ``None``.
        method: ``"loop"`` (reference) or ``"vmap"``.

    Returns:
        List aligned with ``[p for p in model.parameters() if p.requires_grad]``.

    Raises:
        ValueError: unknown method, bad loss shape, or a model that mixes examples.

    >>> _ = torch.manual_seed(0)
    >>> m = nn.Linear(3, 1)
    >>> x, y = torch.randn(4, 3), torch.randn(4)
    >>> mse = lambda out, t: (out.squeeze(1) - t) ** 2
    >>> a = per_sample_grads(m, mse, x, y, method="loop")
    >>> b = per_sample_grads(m, mse, x, y, method="vmap")
    >>> [tuple(t.shape) for t in a], all(torch.allclose(u, v) for u, v in zip(a, b))
    ([(4, 1, 3), (4, 1)], True)
    """
    if method not in PER_SAMPLE_METHODS:
        raise ValueError(f"method must be one of {PER_SAMPLE_METHODS}, got {method!r}")
    check_per_example_model(model)
    named = trainable_parameters(model)
    batch = batch_size_of(inputs)
    if batch == 0:
        return [p.new_zeros((0, *p.shape)) for _, p in named]
    if method == "loop":
        return loop_grads_and_losses(model, loss_fn, inputs, targets, [p for _, p in named])[0]
    return vmap_grads_and_losses(model, loss_fn, inputs, targets, [n for n, _ in named])[0]
