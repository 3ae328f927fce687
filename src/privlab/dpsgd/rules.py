r"""Per-layer rules of the fast path: squared per-example gradient norms and the weighted sum.

Each rule sees one layer's input :math:`a` (batch first) and the gradient
:math:`b` of the summed loss w.r.t. the layer's output, and returns the
per-example squared gradient norms of the layer's trainable parameters
(shape ``(B,)``) with a function that forms :math:`\sum_i c_i \nabla_\theta \ell_i`
for given clip factors :math:`c`:

* ``Linear`` on :math:`a_i \in \mathbb{R}^{d}`: :math:`\|\nabla_W \ell_i\|^2 = \|a_i\|^2\|b_i\|^2`,
  bias :math:`\|b_i\|^2`; weighted sum :math:`b^\top \mathrm{diag}(c)\, a`.
  On sequences :math:`a_i \in \mathbb{R}^{T \times d}`, per layer the cheaper of the ghost norm
  :math:`\langle a_i a_i^\top, b_i b_i^\top\rangle` (about :math:`B T^2 (d_{in} + d_{out})` flops)
  and the per-example :math:`b_i^\top a_i` (about :math:`B T d_{in} d_{out}`): mixed ghost clipping
  (Bu, Mao, Xu 2022, arXiv:2205.10683; the ghost norm is Li et al. 2022, arXiv:2110.05679, section 4).
  On the instantiated branch the per-example gradients are smaller than :math:`(a, b)`, so they are
  kept instead and the clipped sum is :math:`\sum_i c_i G_i`, with no second matmul over the sequence.
* ``transformers``' GPT-2 ``Conv1D`` (:math:`s = a W + \beta`, ``W`` stored ``(d_in, d_out)``): the
  same rule, transposed.
* ``LayerNorm``, ``RMSNorm``, ``GroupNorm``: :math:`\nabla_w \ell_i = \sum_t \hat x_{i,t} \odot b_{i,t}`,
  :math:`\nabla_\beta \ell_i = \sum_t b_{i,t}`, with :math:`\hat x` the normalised input;
  as small as the parameters, so formed directly.
* ``Embedding``: :math:`\|\nabla_E \ell_i\|^2 = \sum_{t,t'} [\mathrm{id}_{i,t} = \mathrm{id}_{i,t'}]
  \langle b_{i,t}, b_{i,t'} \rangle` (padding row excluded); weighted sum by ``index_add``.
* Llama's ``LlamaRMSNorm`` (:math:`y = w \odot \hat x`, :math:`\hat x` computed in float32 as the
  module does): the normalisation-layer rule.

New layer types are added with :func:`register_rule`; the match is on the exact
type, so a subclass with its own ``forward`` falls back to vmap instead. Rules
for classes of other libraries (``transformers``) are registered by qualified
name, so privlab never imports those libraries itself, and each is checked
once per class against the module's own forward on random parameters and
inputs before it is trusted: a later version of the library that changes the
formula makes the module fall back to vmap, never silently wrong.

Used in: chapters 6, 8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["LayerContribution", "capturing", "covered_types", "layer_norm_from_stats", "register_rule", "row_sq_norms",
           "rule_for", "scale_factors", "scale_rows", "summand", "weighted_rows", "wide", "zero_dropped_rows",
           "zero_sums"]


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


def capturing() -> bool:
    """Is a CUDA graph being captured on the current stream (so nothing may synchronise with the host)?"""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def zero_dropped_rows(t: Tensor, c: Tensor) -> Tensor:
    """``t`` with the rows of examples whose clip factor is 0 set to 0, while a CUDA graph is captured.

    An example with a NaN or infinite gradient gets clip factor 0 (:func:`privlab.dpsgd.clip_factors`),
    but ``0 * inf`` is NaN, so multiplying its rows by 0 would still turn the clipped sum into NaN,
    and whether the release is NaN would then say whether that example was sampled. Eagerly the
    kernel sums the other examples again (one host synchronisation); a step replayed from a CUDA
    graph cannot synchronise, so there every tensor entering a weighted sum passes through here and
    those rows are replaced by zeros (``torch.where``, no synchronisation). Outside a capture it
    returns ``t`` itself (no cost).
    """
    if not capturing():
        return t
    keep = (c != 0).reshape(-1, *([1] * (t.ndim - 1)))
    return torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))


def summand(t: Tensor, c: Tensor) -> Tensor:
    """``t`` as it enters a weighted sum: in float32 or wider (:func:`wide`), and with the rows of
    examples whose clip factor is 0 zeroed inside a CUDA graph capture (:func:`zero_dropped_rows`).

    In a 16-bit float type the clipped sum itself would be rounded to that type, by up to half an
    ulp of the *whole* sum: one example then moved a bfloat16 sum of 256 by up to 1.26 C (a review
    of the first fix, which only shrank the factors). The sums of a 16-bit model are therefore
    formed and returned in float32; :class:`privlab.dpsgd.DPOptimizer` adds the noise in float32 and
    casts to the parameter's type only after it (rounding the noisy sum is post-processing).
    """
    return wide(zero_dropped_rows(t, c))


def zero_sums(params) -> list[Tensor]:
    """Zero clipped sums, one per parameter, in the dtype sums are formed in (:func:`summand`)."""
    return [p.new_zeros(p.shape, dtype=wide(p).dtype) for p in params]


def scale_rows(t: Tensor, c: Tensor) -> Tensor:
    """``t[i] * c[i]`` with ``c`` of shape exactly ``(B,)``, broadcast explicitly over ``t``'s other dims;
    in float32 or wider, dropped rows zeroed inside a graph capture (:func:`summand`)."""
    if c.ndim != 1 or t.shape[0] != c.shape[0]:
        raise ValueError(f"clip factors of shape {tuple(c.shape)} do not match a batch of shape {tuple(t.shape)}")
    t = summand(t, c)
    return t * c.to(t.dtype).reshape(-1, *([1] * (t.ndim - 1)))


def scale_factors(c: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
    """The clip factors as a ``(B, 1)`` column of ``dtype``, to scale the rows of a ``(B, d)`` matrix."""
    if c.shape != (batch,):
        raise ValueError(f"clip factors of shape {tuple(c.shape)} do not match a batch of {batch}")
    return c.to(dtype).unsqueeze(1)


def _trainable(module: nn.Module, attr: str) -> bool:
    p = getattr(module, attr, None)
    return isinstance(p, nn.Parameter) and p.requires_grad


def wide(t: Tensor) -> Tensor:
    """``t`` in float32 if it is a 16-bit float tensor, else ``t`` itself: what squared norms are summed in.

    float16 overflows at 65504, so a squared norm of a large but finite gradient became ``inf``, and
    its clip factor 0: the example was silently dropped instead of clipped (found while testing the
    clip in 16-bit floats); bfloat16 keeps 8 bits of mantissa.
    """
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def row_sq_norms(t: Tensor) -> Tensor:
    r"""Squared norm of each example's row, :math:`\lVert t_i \rVert_2^2` for ``t`` of shape ``(B, ...)``.

    One fused reduction over everything but the batch dimension (no ``(B, ...)`` temporary of
    squares), in float32 or wider (:func:`wide`). Used by the ghost-norm rules and the fast path to
    add up per-example squared norms.

    >>> row_sq_norms(torch.tensor([[3.0, 4.0], [1.0, 0.0]])).tolist()
    [25.0, 1.0]
    """
    t = wide(t)
    if t.ndim == 2:  # the common case: no reshape call
        return torch.linalg.vector_norm(t, dim=1).square()
    if t.ndim > 2:  # reduce over the trailing dims in place of a reshape (which copies a strided tensor)
        return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim))).square()
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).square()


def weighted_rows(c: Tensor, g: Tensor) -> Tensor:
    """sum_i c_i g_i for per-example rows g of shape (B, ...): one matrix-vector product, g^T c.

    >>> weighted_rows(torch.tensor([1.0, 0.5]), torch.tensor([[2.0, 4.0], [2.0, 2.0]])).tolist()
    [3.0, 5.0]
    """
    g = summand(g, c)
    c = c.to(g.dtype)
    if g.ndim == 2:  # torch.mv on the transposed view: measured faster than c @ g on CPU (issue 18)
        return torch.mv(g.t(), c)
    return torch.mv(g.reshape(g.shape[0], -1).t(), c).reshape(g.shape[1:])


def _affine(a: Tensor, b: Tensor, d_in: int, d_out: int, want_w: bool, want_b: bool,
            weight_in_out: bool = False) -> LayerContribution:
    """Rule for ``s = a W^T + beta`` (``W`` stored ``(d_out, d_in)``, or ``(d_in, d_out)`` if ``weight_in_out``)."""
    batch = a.shape[0]
    per_example = b_sum = None
    if a.ndim == 2:  # (B, d_in), (B, d_out): ||b_i a_i^T||^2 + ||b_i||^2 = (||a_i||^2 + 1) ||b_i||^2
        norm2 = b_sq = row_sq_norms(b)
        if want_w:
            a_sq = row_sq_norms(a)
            norm2 = (a_sq.add_(1) if want_b else a_sq).mul_(b_sq)
        elif not want_b:
            norm2 = a.new_zeros(batch)
    else:
        norm2 = wide(a.new_zeros(batch))  # (B, T, d): ghost norm <a a^T, b b^T> or the per-example b_i^T a_i, whichever costs less
        a3, b3 = a.reshape(batch, -1, d_in), b.reshape(batch, -1, d_out)
        steps = a3.shape[1]
        # ghost: two (T x T) Gram matrices, ~ B T^2 (d_in + d_out) flops; instantiated: ~ B T d_in d_out
        # (mixed ghost clipping, Bu et al. 2022, arXiv:2205.10683)
        if want_w and steps * (d_in + d_out) <= d_in * d_out:
            a3w, b3w = wide(a3), wide(b3)
            norm2 = norm2 + (a3w @ a3w.transpose(1, 2) * (b3w @ b3w.transpose(1, 2))).sum((1, 2))
            a3w = b3w = None
        elif want_w:
            # Instantiated, exactly when T (d_in + d_out) > d_in d_out: the per-example gradients are then
            # smaller than the activation and output gradient they come from, so they are kept instead of
            # (a, b) and the clipped sum is one weighted sum over them (c @ G), not a second matmul over
            # the sequence (book-keeping with the mixed choice: Bu et al. 2023, arXiv:2210.00038).
            per_example = b3.transpose(1, 2) @ a3  # (B, d_out, d_in)
            norm2 = norm2 + row_sq_norms(per_example)
            a = b = a3 = None
        b_sum = b3.sum(1) if want_b else None  # (B, d_out): the per-example bias gradients
        b3 = None
        if want_b:
            norm2 = norm2 + row_sq_norms(b_sum)

    def weighted_sum(c: Tensor) -> dict[str, Tensor]:
        out = {}
        if want_w and a is None:  # instantiated per-example gradients
            w = weighted_rows(c, per_example)
            out["weight"] = w.t() if weight_in_out else w
        elif want_w and a.ndim == 2:  # sum_i c_i b_i^T a_i = b^T diag(c) a; scale the narrower side
            a_, b_ = summand(a, c), summand(b, c)  # a and b themselves unless 16-bit or capturing
            cc = scale_factors(c, batch, a_.dtype)  # (B, 1)
            w = b_.t() @ (a_ * cc) if d_in <= d_out else (b_ * cc).t() @ a_
            out["weight"] = w.t() if weight_in_out else w
        elif want_w:
            if d_in <= d_out:
                w = summand(b, c).reshape(-1, d_out).t() @ scale_rows(a, c).reshape(-1, d_in)
            else:
                w = scale_rows(b, c).reshape(-1, d_out).t() @ summand(a, c).reshape(-1, d_in)
            out["weight"] = w.t() if weight_in_out else w
        if want_b:
            out["bias"] = weighted_rows(c, b_sum if b_sum is not None else b)
        return out

    return LayerContribution(norm2, weighted_sum)


@register_rule(nn.Linear)
def _linear(module: nn.Linear, a: Tensor, b: Tensor) -> LayerContribution:
    d_out, d_in = module.weight.shape  # what F.linear reads, not in_features/out_features (which can be stale)
    return _affine(a, b, d_in, d_out, _trainable(module, "weight"), _trainable(module, "bias"))


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
    norm2 = None
    for g in per_ex.values():
        norm2 = row_sq_norms(g) if norm2 is None else norm2.add_(row_sq_norms(g))
    return LayerContribution(b.new_zeros(batch) if norm2 is None else norm2,
                             lambda c: {k: weighted_rows(c, g) for k, g in per_ex.items()})


def _unit_affine(x: Tensor, shape) -> tuple[Tensor, Tensor]:
    """Weight ones and bias zeros: torch's CPU layer_norm with an affine is faster than without one
    (measured, issue 18) and multiplying by one and adding zero is exact."""
    return x.new_ones(shape), x.new_zeros(shape)


@register_rule(nn.LayerNorm)
def _layer_norm(module: nn.LayerNorm, x: Tensor, b: Tensor) -> LayerContribution:
    x_hat = F.layer_norm(x, module.normalized_shape, *_unit_affine(x, module.normalized_shape), module.eps)
    return _norm_layer_contribution(module, x_hat, b, len(module.normalized_shape))


def layer_norm_from_stats(module: nn.LayerNorm, x: Tensor, b: Tensor, mean: Tensor, rstd: Tensor
                          ) -> LayerContribution:
    r"""The ``LayerNorm`` rule with the forward pass's own statistics, :math:`\hat x = (x - \mu)\,\mathrm{rstd}`.

    ``mean`` and ``rstd`` are the tensors ``torch.native_layer_norm`` returned in the forward pass and
    saved for its backward (the shape of ``x`` with the normalised dims of size 1, the dtype of ``x``):
    one subtraction and one product in place of a second normalisation pass (measured about 40% cheaper
    on CPU, issue 18). The caller checks that they belong to this call.

    >>> ln = nn.LayerNorm(3)
    >>> x, b = torch.randn(2, 3), torch.randn(2, 3)
    >>> y, mean, rstd = torch.native_layer_norm(x, (3,), ln.weight, ln.bias, ln.eps)
    >>> saved, again = layer_norm_from_stats(ln, x, b, mean, rstd), _layer_norm(ln, x, b)
    >>> torch.allclose(saved.norm2, again.norm2)
    True
    """
    x_hat = torch.sub(x, mean).mul_(rstd)
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


def embedding_padding_row(module: nn.Embedding) -> int | None:
    """The row ``F.embedding`` keeps at zero gradient: ``padding_idx``, a negative one counted from the
    end of the weight (an attribute set after construction is neither checked nor normalised by torch)."""
    pad = module.padding_idx
    return pad + module.weight.shape[0] if pad is not None and pad < 0 else pad


@register_rule(nn.Embedding)
def _embedding(module: nn.Embedding, ids: Tensor, b: Tensor) -> LayerContribution:
    # grad_i[v] = sum_{t: id_{i,t} = v} b_{i,t}, so ||grad_i||^2 = sum_{t,t'} [id_it = id_it'] <b_it, b_it'>
    vocab, dim = module.weight.shape  # what F.embedding reads, not num_embeddings (which can be stale)
    batch, pad = ids.shape[0], embedding_padding_row(module)
    ids2, g = ids.reshape(batch, -1), b.reshape(batch, -1, dim)
    if pad is not None:  # the padding row never receives a gradient
        g = g * (ids2 != pad).unsqueeze(-1).to(g.dtype)
    steps = ids2.shape[1]
    if steps == 1:
        norm2 = row_sq_norms(g)
    elif steps <= 256:  # (B, T, T) ghost form: no host synchronisation
        gw = wide(g)
        same = (ids2.unsqueeze(2) == ids2.unsqueeze(1)).to(gw.dtype)
        norm2 = (same * (gw @ gw.transpose(1, 2))).sum((1, 2))
        gw = None
    else:  # long sequences: sum rows per (example, id) pair; torch.unique synchronises on CUDA
        keys = torch.arange(batch, device=ids.device).unsqueeze(1) * vocab + ids2
        uniq, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
        gw = wide(g)
        rows = gw.new_zeros(uniq.shape[0], dim).index_add_(0, inverse, gw.reshape(-1, dim))
        norm2 = gw.new_zeros(batch).index_add_(0, uniq // vocab, row_sq_norms(rows))
        gw = rows = None

    def weighted_sum(c: Tensor) -> dict[str, Tensor]:
        rows = scale_rows(g, c).reshape(-1, dim)
        return {"weight": rows.new_zeros(module.weight.shape).index_add_(0, ids2.reshape(-1), rows)}

    return LayerContribution(norm2 if _trainable(module, "weight") else g.new_zeros(batch), weighted_sum)



# --- rules for other libraries' classes, by qualified name, each verified once against its forward ----------

_NAMED_RULES: dict[str, tuple[Rule, Callable]] = {}
_VERIFIED: dict[type, bool] = {}


def _qualified_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _register_named_rule(qualified_name: str, reference: Callable) -> Callable[[Rule], Rule]:
    """Register a rule for a class of another library, with ``reference(module, params, x)``: the
    formula the rule assumes for the module's output, checked against the real forward before use."""

    def deco(rule: Rule) -> Rule:
        _NAMED_RULES[qualified_name] = (rule, reference)
        return rule

    return deco


def _verify(module: nn.Module, reference: Callable) -> bool:
    """Does the module's own forward compute ``reference`` (random parameters and input, float64)?"""
    try:
        gen = torch.Generator().manual_seed(0)
        params = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in module.named_parameters()}
        d_in = module.weight.shape[0]
        x = torch.randn(2, 3, d_in, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            got = functional_call(module, params, (x,))
            want = reference(module, params, x)
        return isinstance(got, Tensor) and got.shape == want.shape and bool(
            torch.allclose(got, want, rtol=1e-4, atol=1e-6))
    except Exception:  # any mismatch in the assumed structure: not covered, fall back
        return False


def rule_for(module: nn.Module) -> Rule | None:
    """The rule that covers ``module``'s exact type, or ``None`` (then the fast path falls back to vmap)."""
    t = type(module)
    rule = _RULES.get(t)
    if rule is not None:
        return rule
    named = _NAMED_RULES.get(_qualified_name(t))
    if named is None:
        return None
    if t not in _VERIFIED:
        _VERIFIED[t] = _verify(module, named[1])
    return named[0] if _VERIFIED[t] else None


@_register_named_rule("transformers.pytorch_utils.Conv1D",
                      lambda m, p, x: x @ p["weight"] + p["bias"])
def _gpt2_conv1d(module: nn.Module, a: Tensor, b: Tensor) -> LayerContribution:
    d_in, d_out = module.weight.shape
    return _affine(a, b, d_in, d_out, _trainable(module, "weight"), _trainable(module, "bias"), weight_in_out=True)


def _llama_x_hat(x: Tensor, eps: float) -> Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return h.to(x.dtype)


@_register_named_rule("transformers.models.llama.modeling_llama.LlamaRMSNorm",
                      lambda m, p, x: p["weight"] * _llama_x_hat(x, m.variance_epsilon))
def _llama_rms_norm(module: nn.Module, x: Tensor, b: Tensor) -> LayerContribution:
    x_hat = _llama_x_hat(x, module.variance_epsilon)
    if x_hat is x:  # never overwrite the saved activation in place
        x_hat = x_hat.clone()
    return _norm_layer_contribution(module, x_hat, b, 1)
