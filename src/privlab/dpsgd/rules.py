r"""Per-layer rules of the fast path: squared per-example gradient norms and the weighted sum.

Each rule sees one layer's input :math:`a` (batch first) and the gradient
:math:`b` of the summed loss w.r.t. the layer's output, and returns the
per-example squared gradient norms of the layer's trainable parameters
(shape ``(B,)``) with a function that forms :math:`\sum_i c_i \nabla_\theta \ell_i`
for given clip factors :math:`c`:

* ``Linear`` on :math:`a_i \in \mathbb{R}^{d}`: :math:`\|\nabla_W \ell_i\|^2 = \|a_i\|^2\|b_i\|^2`,
  bias :math:`\|b_i\|^2`; weighted sum :math:`b^\top \mathrm{diag}(c)\, a`.
  On sequences :math:`a_i \in \mathbb{R}^{T \times d}`: the ghost norm
  :math:`\langle a_i a_i^\top, b_i b_i^\top\rangle` when :math:`T^2 \le d_{in} d_{out}`,
  else the per-example :math:`b_i^\top a_i` (Li et al. 2022, arXiv:2110.05679, section 4).
* ``LayerNorm``, ``RMSNorm``, ``GroupNorm``: :math:`\nabla_w \ell_i = \sum_t \hat x_{i,t} \odot b_{i,t}`,
  :math:`\nabla_\beta \ell_i = \sum_t b_{i,t}`, with :math:`\hat x` the normalised input;
  as small as the parameters, so formed directly.
* ``Embedding``: :math:`\|\nabla_E \ell_i\|^2 = \sum_{t,t'} [\mathrm{id}_{i,t} = \mathrm{id}_{i,t'}]
  \langle b_{i,t}, b_{i,t'} \rangle` (padding row excluded); weighted sum by ``index_add``.

New layer types are added with :func:`register_rule`; the match is on the exact
type, so a subclass with its own ``forward`` falls back to vmap instead.

Used in: chapters 5, 7.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerContribution", "covered_types", "register_rule", "scale_rows", "weighted_rows"]


class LayerContribution(NamedTuple):
    """What a rule returns for one layer: squared norms ``(B,)`` and the weighted sum."""

    norm2: Tensor  # (B,): sum over this layer's trainable parameters of ||grad_i||^2
    weighted_sum: Callable[[Tensor], dict[str, Tensor]]  # c (B,) -> {attr: sum_i c_i grad_i}


Rule = Callable[[nn.Module, Tensor, Tensor], LayerContribution]
_RULES: dict[type, Rule] = {}


def register_rule(*types: type) -> Callable[[Rule], Rule]:
    """Register ``rule(module, activation, output_grad) -> LayerContribution`` for exact ``types``.

    ``activation`` is the layer's (detached) input, ``output_grad`` the gradient of
    the summed loss w.r.t. its output, both with the batch as leading dimension.
    """

    def deco(rule: Rule) -> Rule:
        for t in types:
            _RULES[t] = rule
        return rule

    return deco


def covered_types() -> tuple[type, ...]:
    """The module types the fast path computes with a rule (the rest fall back to vmap)."""
    return tuple(_RULES)


def scale_rows(t: Tensor, c: Tensor) -> Tensor:
    """``t[i] * c[i]`` with ``c`` of shape exactly ``(B,)``, broadcast explicitly over ``t``'s other dims."""
    if c.ndim != 1 or t.shape[0] != c.shape[0]:
        raise ValueError(f"clip factors of shape {tuple(c.shape)} do not match a batch of shape {tuple(t.shape)}")
    return t * c.reshape(-1, *([1] * (t.ndim - 1))).to(t.dtype, copy=False)


def _trainable(module: nn.Module, attr: str) -> bool:
    p = getattr(module, attr, None)
    return isinstance(p, nn.Parameter) and p.requires_grad


def _row_sq_norms(t: Tensor) -> Tensor:
    """||t_i||^2 for each example i, as one fused reduction (no (B, ...) temporary)."""
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).square()


def weighted_rows(c: Tensor, g: Tensor) -> Tensor:
    """sum_i c_i g_i for per-example rows g of shape (B, ...): one vector-matrix product."""
    if c.dtype != g.dtype:
        c = c.to(g.dtype)
    return (c @ g.reshape(g.shape[0], -1)).reshape(g.shape[1:])


@register_rule(nn.Linear)
def _linear(module: nn.Linear, a: Tensor, b: Tensor) -> LayerContribution:
    want_w, want_b = _trainable(module, "weight"), _trainable(module, "bias")
    batch, d_in, d_out = a.shape[0], module.in_features, module.out_features
    norm2 = a.new_zeros(batch)
    if a.ndim == 2:  # (B, d_in), (B, d_out): ||b_i a_i^T||^2 = ||a_i||^2 ||b_i||^2
        b_sq = _row_sq_norms(b)
        if want_w:
            norm2 = norm2 + _row_sq_norms(a) * b_sq
        if want_b:
            norm2 = norm2 + b_sq
    else:  # (B, T, d): ghost norm <a a^T, b b^T> when T^2 is smaller than d_in d_out, else materialise
        a3, b3 = a.reshape(batch, -1, d_in), b.reshape(batch, -1, d_out)
        steps = a3.shape[1]
        if want_w and steps * steps <= d_in * d_out:
            norm2 = norm2 + (a3 @ a3.transpose(1, 2) * (b3 @ b3.transpose(1, 2))).sum((1, 2))
        elif want_w:
            norm2 = norm2 + _row_sq_norms(b3.transpose(1, 2) @ a3)
        if want_b:
            norm2 = norm2 + _row_sq_norms(b3.sum(1))

    def weighted_sum(c: Tensor) -> dict[str, Tensor]:
        out = {}
        if want_w:  # sum_i c_i b_i^T a_i = b^T diag(c) a; scale whichever side is narrower
            if d_in <= d_out:
                out["weight"] = b.reshape(-1, d_out).t() @ scale_rows(a, c).reshape(-1, d_in)
            else:
                out["weight"] = scale_rows(b, c).reshape(-1, d_out).t() @ a.reshape(-1, d_in)
        if want_b:
            out["bias"] = weighted_rows(c, b.reshape(batch, -1, d_out).sum(1) if b.ndim > 2 else b)
        return out

    return LayerContribution(norm2, weighted_sum)


def _norm_layer_contribution(module: nn.Module, x_hat: Tensor, b: Tensor, param_dims: int) -> LayerContribution:
    """Shared by the normalisation layers: y = x_hat * w + beta over the last ``param_dims`` dims.

    ``x_hat`` is a fresh tensor owned here: it is overwritten with ``x_hat * b``.
    """
    batch = b.shape[0]
    middle = tuple(range(1, b.ndim - param_dims))  # dims summed within one example (e.g. time)
    per_ex = {}
    if _trainable(module, "weight"):
        gw = x_hat.mul_(b)  # in place: no second (B, ...) buffer
        per_ex["weight"] = gw.sum(middle) if middle else gw  # (B, *param.shape)
    if _trainable(module, "bias"):
        per_ex["bias"] = b.sum(middle) if middle else b
    norm2 = b.new_zeros(batch)
    for g in per_ex.values():
        norm2 = norm2 + _row_sq_norms(g)
    return LayerContribution(norm2, lambda c: {k: weighted_rows(c, g) for k, g in per_ex.items()})


@register_rule(nn.LayerNorm)
def _layer_norm(module: nn.LayerNorm, x: Tensor, b: Tensor) -> LayerContribution:
    x_hat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    return _norm_layer_contribution(module, x_hat, b, len(module.normalized_shape))


@register_rule(nn.RMSNorm)
def _rms_norm(module: nn.RMSNorm, x: Tensor, b: Tensor) -> LayerContribution:
    x_hat = F.rms_norm(x, module.normalized_shape, None, module.eps)
    return _norm_layer_contribution(module, x_hat, b, len(module.normalized_shape))


@register_rule(nn.GroupNorm)
def _group_norm(module: nn.GroupNorm, x: Tensor, b: Tensor) -> LayerContribution:
    # parameters live on the channel dim 1; move it last so the shared helper applies
    x_hat = F.group_norm(x, module.num_groups, None, None, module.eps)
    return _norm_layer_contribution(module, x_hat.movedim(1, -1), b.movedim(1, -1), 1)


@register_rule(nn.Embedding)
def _embedding(module: nn.Embedding, ids: Tensor, b: Tensor) -> LayerContribution:
    # grad_i[v] = sum_{t: id_{i,t} = v} b_{i,t}, so ||grad_i||^2 = sum_{t,t'} [id_it = id_it'] <b_it, b_it'>
    batch, dim = ids.shape[0], module.embedding_dim
    ids2, g = ids.reshape(batch, -1), b.reshape(batch, -1, dim)
    if module.padding_idx is not None:  # the padding row never receives a gradient
        g = g * (ids2 != module.padding_idx).unsqueeze(-1).to(g.dtype)
    steps = ids2.shape[1]
    if steps == 1:
        norm2 = _row_sq_norms(g)
    elif steps <= 256:  # (B, T, T) ghost form: no host synchronisation
        same = (ids2.unsqueeze(2) == ids2.unsqueeze(1)).to(g.dtype)
        norm2 = (same * (g @ g.transpose(1, 2))).sum((1, 2))
    else:  # long sequences: sum rows per (example, id) pair; torch.unique synchronises on CUDA
        keys = torch.arange(batch, device=ids.device).unsqueeze(1) * module.num_embeddings + ids2
        uniq, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
        rows = g.new_zeros(uniq.shape[0], dim).index_add_(0, inverse, g.reshape(-1, dim))
        norm2 = g.new_zeros(batch).index_add_(0, uniq // module.num_embeddings, _row_sq_norms(rows))

    def weighted_sum(c: Tensor) -> dict[str, Tensor]:
        rows = scale_rows(g, c).reshape(-1, dim)
        weight = module.weight
        return {"weight": weight.new_zeros(weight.shape).index_add_(0, ids2.reshape(-1), rows)}

    return LayerContribution(norm2 if _trainable(module, "weight") else g.new_zeros(batch), weighted_sum)
