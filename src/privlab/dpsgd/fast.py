r"""The fast path: per-example gradient norms without per-example gradients.

A layer :math:`s = a W^\top + \beta` sees activation :math:`a_i` and, in the
backward pass, the output gradient :math:`b_i = \partial \ell_i / \partial s_i`.
Its per-example weight gradient is :math:`b_i^\top a_i`, whose squared norm needs
neither the gradient nor a second backward:

.. math::
    \|\nabla_W \ell_i\|_F^2 = \|a_i\|^2 \, \|b_i\|^2 \quad (a_i \in \mathbb{R}^{d}),
    \qquad
    \|\nabla_W \ell_i\|_F^2 = \langle a_i a_i^\top,\; b_i b_i^\top \rangle \quad (a_i \in \mathbb{R}^{T \times d}),

plus :math:`\|\textstyle\sum_t b_{i,t}\|^2` for the bias. Summing over layers
gives :math:`\|g_i\|`, then the clip factors :math:`c_i = \min(1, C/\|g_i\|)`, and
the clipped sum is formed from the *same* saved tensors in one weighted pass,
:math:`\sum_i c_i\, b_i^\top a_i = (c \odot b)^\top a`: one matmul per layer,
the cost of the weight-gradient matmul a normal backward does anyway. The
backward pass itself only asks for the output gradients :math:`b`, so autograd
skips the weight-gradient matmuls there.

Layers covered by a rule (:mod:`privlab.dpsgd.rules`; exact type match, so a
subclass with its own forward is never mistaken for its parent): ``Linear``
(any rank), ``LayerNorm``, ``RMSNorm``, ``GroupNorm`` and ``Embedding``.

Memory: the output gradients :math:`b` are kept until the clip factors are
known, so the fast path holds about one more activation-sized tensor per layer
than a plain backward pass. To pay for it, a normalisation layer fed directly by
a ``Linear`` does not keep its input alive: it is recomputed afterwards as
:math:`a W^\top + \beta` from the Linear's saved input (one matmul).

**Fallback, never a silent wrong answer.** Every other module that owns
trainable parameters gets its per-example gradients from ``torch.func``:

* *local* (the usual case, e.g. ``Conv1d`` or a custom module): ``vmap`` over
  the examples of the vector-Jacobian product of that module alone, evaluated
  at its saved input and output gradient from the same forward and backward;
* *global*: ``vmap(grad)`` of the whole model's loss w.r.t. those parameters
  only, for the cases where a layer-local answer could be wrong: a module
  called more than once per forward, parameters shared between modules, a
  module taking keyword tensors or returning a non-tensor, inputs without a
  leading batch dimension, or a saved input modified in place afterwards.
  A covered layer in one of these cases falls back the same way.

Only the fallback layers' gradients are materialised; their squared norms join
the others. (With dropout inside a fallback module, the fallback re-runs it with
fresh masks: still one bounded, clipped contribution per example, so privacy
holds, but not the exact gradient of the batched forward.)

References: Goodfellow, *Efficient per-example gradient computations*, 2015
(arXiv:1510.01799); Lee and Kifer, *Scaling up differentially private deep
learning with fast per-example gradient clipping*, PETS 2021 (arXiv:2009.03106);
Li, Tramèr, Liang, Hashimoto, *Large language models can be strong
differentially private learners*, ICLR 2022 (arXiv:2110.05679), ghost clipping.

Used in: chapters 5, 7, 12.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.func import functional_call, vjp, vmap

from .per_sample import _vmap_grads, as_input_tuple, per_example_losses, trainable_parameters
from .rules import _RULES, Rule, _row_sq_norms, weighted_rows

__all__ = ["fast_norms_and_clipped_sum"]


# ---------------------------------------------------------------------------------------------
# Capturing activations and output-gradient edges during one forward pass.


@dataclass(eq=False)
class _Site:
    """A module owning trainable parameters, and what one forward pass saw of it."""

    name: str
    module: nn.Module
    params: list[tuple[str, nn.Parameter]]  # (attribute, parameter), direct and trainable
    rule: Rule | None
    shared: bool = False
    calls: int = 0
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    versions: tuple = ()
    edge: object = None  # GradientEdge of the output, taken before any in-place change
    out_shape: tuple | None = None
    out_is_tensor: bool = True
    producer: _Site | None = None  # the Linear whose output is this norm layer's input


def _sites(modules) -> list[_Site]:
    sites, owners = [], Counter()
    for name, m in modules:
        ps = [(n, p) for n, p in m._parameters.items() if p is not None and p.requires_grad]
        if ps:
            owners.update(id(p) for _, p in ps)
            sites.append(_Site(name, m, ps, _RULES.get(type(m))))
    for s in sites:
        s.shared = any(owners[id(p)] > 1 for _, p in s.params)
    return sites


_NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)


def _capture_hook(site: _Site, linear_outputs: dict):
    @torch.compiler.disable  # bookkeeping on Python objects: run eagerly under torch.compile
    def hook(module, args, kwargs, output):
        site.calls += 1
        if site.calls > 1:
            return
        site.args, site.kwargs = args, kwargs
        site.versions = tuple(a._version if isinstance(a, Tensor) else None for a in args)
        site.out_is_tensor = isinstance(output, Tensor)
        if site.out_is_tensor and output.requires_grad:
            site.edge, site.out_shape = get_gradient_edge(output), tuple(output.shape)
        if type(module) is nn.Linear and site.out_is_tensor:  # a Linear output may feed a norm layer next
            linear_outputs[id(output)] = (weakref.ref(output), site, output._version)
        elif type(module) in _NORM_TYPES and args and isinstance(args[0], Tensor):
            ref, producer, version = linear_outputs.get(id(args[0]), (None, None, None))
            if ref is not None and ref() is args[0] and args[0]._version == version:
                site.producer = producer  # input = producer's unmodified output: recomputable

    return hook


def _mode(site: _Site, batch: int) -> str:
    """'unused' (no gradient), 'fast' (a rule), 'local' (vmap of this module) or 'global'."""
    if site.calls == 0 or (site.out_is_tensor and site.edge is None and site.calls == 1):
        return "unused"
    if site.calls > 1 or site.shared or not site.out_is_tensor or not site.out_shape:
        return "global"
    if site.out_shape[0] != batch or any(isinstance(v, Tensor) for v in site.kwargs.values()):
        return "global"
    tensors = [a for a in site.args if isinstance(a, Tensor)]
    if not tensors or any(t.ndim == 0 or t.shape[0] != batch for t in tensors):
        return "global"
    if site.rule is not None and len(site.args) == 1 and not site.kwargs:
        return "fast"
    return "local"


def _recompute_output(linear: _Site) -> Tensor:
    """A Linear site's output, recomputed from its saved input (parameters unchanged since the forward)."""
    module = linear.module
    return F.linear(linear.args[0].detach(), module.weight.detach(),
                    None if module.bias is None else module.bias.detach())


def _modified_in_place(site: _Site) -> bool:
    if site.args is None:  # input dropped for recomputation; autograd's own version check guards it
        return False
    return any(isinstance(a, Tensor) and a._version != v for a, v in zip(site.args, site.versions))


def _local_per_example_grads(site: _Site, b: Tensor) -> dict[str, Tensor]:
    """Fallback for one module: vmap over examples of the VJP of this module alone."""
    params = {n: p.detach() for n, p in site.params}
    # the module's other parameters (its children's) enter as detached constants
    consts = {n: p.detach() for n, p in site.module.named_parameters() if n not in params}
    args = [a.detach() if isinstance(a, Tensor) else a for a in site.args]
    pos = [i for i, a in enumerate(args) if isinstance(a, Tensor)]

    def grad_of_one(tensors_one, b_one):
        def out_of_params(p):
            full = list(args)
            for i, t in zip(pos, tensors_one):
                full[i] = t.unsqueeze(0)
            return functional_call(site.module, {**consts, **p}, tuple(full), site.kwargs)

        _, pullback = vjp(out_of_params, params)
        return pullback(b_one.unsqueeze(0))[0]

    return vmap(grad_of_one, randomness="different")(tuple(args[i] for i in pos), b)


def fast_norms_and_clipped_sum(model, loss_fn, inputs, targets, factors_fn=None, *, params=None, modules=None):
    r"""Per-example norms :math:`\|g_i\|` and, if ``factors_fn`` is given, :math:`\sum_i c_i g_i`.

    Args:
        model, loss_fn, inputs, targets: as in :func:`privlab.dpsgd.clipped_grad_sum`.
        factors_fn: maps norms ``(B,)`` to clip factors ``(B,)``; ``None`` for norms only.
        params, modules: the trainable parameters and ``list(model.named_modules())``,
            if the caller has them already.

    Returns:
        ``(grads or None, norms (B,), losses (B,))``; ``grads`` aligned with the
        trainable parameters in ``model.parameters()`` order.
    """
    xs = as_input_tuple(inputs)
    batch = xs[0].shape[0]
    modules = list(model.named_modules()) if modules is None else modules
    if params is None:
        params = [p for _, p in trainable_parameters(model, modules)]
    sites, linear_outputs = _sites(modules), {}
    handles = [s.module.register_forward_hook(_capture_hook(s, linear_outputs), with_kwargs=True) for s in sites]
    try:
        outputs = model(*xs)
    finally:
        for h in handles:
            h.remove()
    linear_outputs.clear()
    losses = per_example_losses(loss_fn(outputs, targets), batch)  # (B,), shape-checked
    modes = {s: _mode(s, batch) for s in sites}
    for s in sites:
        # Memory: a norm layer fed directly by a Linear need not keep its input alive through the
        # backward pass; it is recomputed afterwards as a W^T + beta from the Linear's saved input.
        if modes[s] == "fast" and s.producer is not None and modes.get(s.producer) == "fast":
            s.args, s.versions = None, ()
        else:
            s.producer = None
    backward_sites = [s for s in sites if modes[s] in ("fast", "local")]
    out_grads = [None] * len(backward_sites)
    total = losses.sum()
    if backward_sites and total.requires_grad:
        # only the output gradients b are asked for, so autograd skips the weight-gradient matmuls
        out_grads = torch.autograd.grad(total, [s.edge for s in backward_sites], allow_unused=True)
    dtype = next((p.dtype for s in sites for _, p in s.params), torch.float32)
    norm2 = torch.zeros(batch, device=losses.device, dtype=dtype)
    weighted: list[tuple[_Site, Callable]] = []
    for s, b in zip(backward_sites, out_grads):  # b = d(sum_j loss_j)/d(output of s) = per-example b_i rows
        if b is None:
            modes[s] = "unused"
        elif _modified_in_place(s) or (s.producer is not None and _modified_in_place(s.producer)):
            modes[s] = "global"
        elif modes[s] == "fast":
            x = s.args[0].detach() if s.producer is None else _recompute_output(s.producer)
            contribution = s.rule(s.module, x, b)
            x = None
            norm2 = norm2 + contribution.norm2
            weighted.append((s, contribution.weighted_sum))
        else:
            grads = _local_per_example_grads(s, b)
            norm2 = norm2 + sum(_row_sq_norms(g) for g in grads.values())
            weighted.append((s, lambda c, grads=grads: {k: weighted_rows(c, g) for k, g in grads.items()}))
        if modes[s] == "local":
            s.args = s.kwargs = None  # let activations no longer needed be freed now
    out_grads = b = None
    # global fallback: vmap(grad) of the whole model w.r.t. these parameters only
    global_params = {id(p): p for s in sites if modes[s] == "global" for _, p in s.params}
    global_grads: dict[int, Tensor] = {}
    if global_params:
        names = [n for n, p in model.named_parameters() if id(p) in global_params]
        per_ex, _ = _vmap_grads(model, loss_fn, xs, targets, names)
        by_name = dict(model.named_parameters())
        global_grads = {id(by_name[n]): g for n, g in zip(names, per_ex)}
        norm2 = norm2 + sum(_row_sq_norms(g) for g in per_ex)
    norms = norm2.clamp_min(0).sqrt()
    if factors_fn is None:
        return None, norms, losses.detach()
    c = factors_fn(norms)
    if c.shape != (batch,):
        raise ValueError(f"clip factors must have shape ({batch},), got {tuple(c.shape)}")
    result: dict[int, Tensor] = {pid: weighted_rows(c, g) for pid, g in global_grads.items()}
    for s, weighted_sum in weighted:
        for attr, g in weighted_sum(c).items():
            result[id(getattr(s.module, attr))] = g
    grads = [result[id(p)].reshape(p.shape).to(p.dtype) if id(p) in result else torch.zeros_like(p) for p in params]
    return grads, norms, losses.detach()
