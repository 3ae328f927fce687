r"""The fast path: per-example gradient norms without per-example gradients, exact or refused.

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

**When a layer-local answer is exact.** The formulas above hold for a module's
parameters only if (i) their gradient reaches the loss *only through that
module's output* in *one* call, (ii) the leading dimension of its input and
output *is* the batch, and (iii) row :math:`i` of them is example :math:`i`'s.
None is assumed; the first two are checked on every step, the third once per
model and shapes, and the result against the per-example loop once too:

* *Gradient flow*, from the autograd graph of :math:`\sum_i \ell_i` (one walk
  over its nodes, before the backward). Autograd numbers nodes in creation
  order, so the nodes made during a module's call form a window of sequence
  numbers. Every node that uses one of the module's parameters must lie in its
  window, and the only edge entering the window from later nodes must be the
  output's. This catches a parameter used outside its module's forward
  (``F.linear(h, self.emb.weight)``, a parent reading ``child.bias``, or
  ``nn.MultiheadAttention`` passing ``out_proj.weight`` to
  ``F.multi_head_attention_forward`` without ever calling ``out_proj``), a
  module whose parameters are used but which is never called, and a tensor
  computed in the call that escapes by another route.
* *Batch dimension*, traced rather than guessed: the model is run once more on
  the first example alone (cached per model and input shape), and a module is
  batch-first only if every dimension of its inputs and output keeps its size
  except the leading one, which is :math:`B` in the real pass and 1 in the
  probe. A sequence-first ``(T, B, d)`` activation with :math:`B = T` (the
  default layout inside ``nn.MultiheadAttention`` and
  ``nn.TransformerEncoderLayer`` with ``batch_first=False``) fails the test
  and falls back, instead of clipping time steps.
* *Rows*, by value: a model that sorts its batch (by length, say) before a layer
  and restores the order after it keeps every shape, yet pairs row :math:`i` of
  that layer with another example's clip factor, mixing examples in the clipped
  sum: one example's effect on it is no longer bounded by C, silently. The first batch is run
  in its order and permuted (every layer's rows must follow the examples), and a few distinct
  examples of it alone, together and reversed (each row must be its example's alone), with dropout
  off when the forward is random; a layer that fails takes the exact global path, and if the
  per-example losses fail (a loss that reads the batch), every layer does (:func:`_row_check`).
* *The loop*, end to end, on those examples: the fast path's norms and clipped sum must equal the
  per-example loop's, or every layer takes the exact path (:func:`_loop_check`). It catches what the
  structural checks cannot see: autograd hooks on a layer's nodes or global module hooks that change
  what a rule assumes, examples coupled only in the backward pass, reordering only in training.

The last two are checked on the first batch a model, shapes, training flags and loss function see,
and cached: a model whose behaviour changes with the data or the batch size later (or, with
dropout, only in training) can still escape them. They are safeguards, not proofs. When a check
sends every layer to the exact path, a warning says why (once per model and reason).

The model's inputs are batch first by the contract of the per-example API
(example :math:`i` is ``x[i]``, as for ``method="loop"``); a model that permutes
its input internally is handled, through the fallbacks.

**What is covered, what falls back.** Modules covered by a rule
(:mod:`privlab.dpsgd.rules`; exact type match, so a subclass with its own
forward, or an instance with a replaced ``forward`` or extra parameters, is
never mistaken for its parent): ``Linear`` (any rank), ``LayerNorm``,
``RMSNorm``, ``GroupNorm``, ``Embedding``, and ``transformers``' GPT-2
``Conv1D`` and ``LlamaRMSNorm`` (each verified once against its own forward).
Two patterns of language models stay on the rules too:

* an ``Embedding`` whose weight is tied to a ``Linear`` output layer (GPT-2's
  ``wte``/``lm_head``): :math:`\|G^{emb}_i + G^{lin}_i\|^2` gets the cross term
  :math:`2\langle G^{emb}_i, G^{lin}_i\rangle = 2\sum_{s,t} b^{lin}_{i,s,\mathrm{id}_{i,t}}
  \langle a_{i,s}, b^{emb}_{i,t}\rangle`, about :math:`B T^2 d` flops; any other
  sharing falls back;
* a batch-independent call (a learned position embedding looked up with
  ``(1, T)`` ids, GPT-2's ``wpe``) whose output is only *added* to the output of
  a module verified batch first: the sum's gradient has one row per example,
  which is that call's per-example output gradient.

Every other module owning trainable parameters gets its per-example gradients
from ``torch.func``:

* *local* (e.g. ``Conv1d``, ``Conv2d``, a custom module):
  ``vmap`` over the examples of the vector-Jacobian product of that module
  alone, at its saved input and output gradient, when the two checks pass;
* *global*: per-example gradients of the whole model's loss w.r.t. those
  parameters only, by ``vmap(grad)`` (or, where ``vmap`` cannot batch an op,
  the per-example loop, with a warning): for a module called more than once per
  forward, parameters shared between modules (other than the tied pair above),
  a module taking keyword tensors or returning a non-tensor
  (``nn.MultiheadAttention``, ``nn.GRU``), a failed gradient-flow or
  batch-dimension check, or a saved input modified in place afterwards. A covered layer in one of these cases falls back the same
  way. Exact, but it costs about one more forward and backward per step and
  materialises :math:`B \times` those parameters.
* a batch of one example needs no per-example machinery: its gradient *is*
  the per-example gradient (one ordinary backward pass).

Only the fallback layers' gradients are materialised; their squared norms join
the others. (With dropout inside a fallback module, the fallback re-runs it with
fresh masks: still one bounded, clipped contribution per example, so privacy
holds, but not the exact gradient of the batched forward.)

Memory: the output gradients :math:`b` are kept until the clip factors are
known, so the fast path holds about one more activation-sized tensor per layer
than a plain backward pass. With ``recompute_norm_inputs=True`` (default
:data:`RECOMPUTE_NORM_INPUTS`, off) a normalisation layer fed directly by a
``Linear`` does not keep its input alive: it is recomputed afterwards as
:math:`a W^\top + \beta` from the Linear's saved input (one more matmul per
such layer). Without it, a normalisation layer's rule runs during the backward
pass, in a pre-hook of the node that made its output, and drops the input there,
so autograd frees it when done with it; a ``LayerNorm``'s rule there reads the mean
and :math:`1/\sigma` that its forward saved for the backward (only when they are
provably that call's: the node's type and normalised shape, and the very input
tensor, else it normalises again). Measured on the StreamRec MLP at
:math:`B = 4096`, one CPU thread, side by side (benchmarks/dpsgd.py, issue 18):
peak memory 1.24x a non-private step without recomputation, 1.13x with it, at
about 0.1-0.25x of a step more CPU time; off by default.

Not compiled: ``torch.compile`` of the LayerNorm rule (one fused pass for
:math:`\hat x \odot b` and both row norms) was measured on CPU, one thread, B = 4096:
the kernel about 3% faster per step, after about 15 s of compilation per process
(dynamic shapes, so one compilation covers Poisson batch sizes), repaid only after
roughly 15,000 such steps (less saved per step at smaller B). The whole model through
``torch.compile`` (``DPSGDConfig(compile=True)``; the fast path's hooks run eagerly inside it)
was measured too, against the eager non-private step (data/results/dpsgd_cost_20261204): on CPU,
one thread, the non-private step 1.02x and the fast path 1.29x (eager 1.27x); on an H200, 1.00x
and 2.29x (eager 2.16x). Eager is the default on both (issue 18). Code that ``torch.compile`` made
before the hooks were registered (an evaluation pass first, say) does not run hooks added since; the
fast path notices (no layer recorded its call), runs that model eagerly from then on, and warns.

On a GPU the cost depends on whether the step is bound by the GPU or by the host issuing small
kernels. Measured on an H200 (data/results/dpsgd_cost_20261204): GPT-2 small's shape at batch 256,
:math:`T = 128` (the language-model chapter's paper scale), the fast path costs 1.09x a
non-private step in time and 1.02x in peak memory (float32, a 96-character vocabulary). With LoRA:
1.02x and 1.01x, against Opacus ghost clipping's 1.63x and 1.05x on the same adapters (on the full
model Opacus has no ghost-norm rule for ``transformers``' ``Conv1D`` and computes those layers'
per-sample gradients with functorch); the StreamRec MLP at :math:`B = 4096` is bound by the host (the non-private
step takes 2.1 ms at :math:`B = 4096` and 2.3 ms at 65,536), and there the fast path's extra
kernel launches and bookkeeping cost 2.16x (Opacus ghost 4.53x). Replayed as CUDA graphs, which
take the host out (benchmarks/cuda_graphs.py), the non-private step takes 0.22 ms, the fast
path's 1.48x that and the hand-written clipped sum's 1.45x (eagerly 2.50x and 1.65x: more than
half of the fast path's extra host time is its machinery, the checks, hooks and per-layer
dispatch that the hand-written sum does without; those runs predate the change to the hooks
below). At 0.22 ms for a few dozen kernels even the graphed steps are bound by per-kernel latency
more than arithmetic: fewer kernels (fused or multi-tensor) or a larger batch would lower the ratio.

Host time of the hooks: every ``torch.optim`` optimizer imports ``torch._dynamo``, and once it is
imported the forward hooks run wrapped in ``torch.compiler.disable`` (so a compiled model never
traces them). Those wrappers used to be built afresh for every hook on every step; they are now
built once per process. Measured side by side on the StreamRec MLP at B = 64 (host-bound; CPU, one
thread; data/results/dpsgd_cost_20261204, ``mlp_cpu_b64_*``): in two runs of each, the kernel
1.35-1.36 -> 1.27-1.28 ms, the DP step 1.68-1.74 -> 1.60-1.61 ms (the non-private step 0.69-0.71
ms). The GPU figures above were measured before.

References: Goodfellow, *Efficient per-example gradient computations*, 2015
(arXiv:1510.01799); Lee and Kifer, *Scaling up differentially private deep
learning with fast per-example gradient clipping*, PETS 2021 (arXiv:2009.03106);
Li, Tramèr, Liang, Hashimoto, *Large language models can be strong
differentially private learners*, ICLR 2022 (arXiv:2110.05679), ghost clipping;
Bu, Wang, Zha, Karypis, *Differentially private optimization on large model at
small cost*, ICML 2023 (arXiv:2210.00038), book-keeping.

Used in: chapters 6, 8, 13.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import functools
import sys
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call, vjp, vmap

from .per_sample import (
    as_input_tuple,
    loop_grads_and_losses,
    per_example_losses,
    trainable_parameters,
    vmap_grads_and_losses,
)
from . import rules
from .rules import Rule, embedding_padding_row, layer_norm_from_stats, row_sq_norms, rule_for, weighted_rows

__all__ = ["MODES", "RECOMPUTE_NORM_INPUTS", "fast_norms_and_clipped_sum"]

#: Default of ``recompute_norm_inputs`` in :func:`fast_norms_and_clipped_sum` (a memory option).
RECOMPUTE_NORM_INPUTS = False

#: How a module's per-example gradients are obtained (see the module docstring).
MODES = ("fast", "local", "global", "unused")

_RULE_ATTRS = frozenset({"weight", "bias"})  # the parameters every rule knows about
_AccumulateGrad = torch._C._functions.AccumulateGrad


def _next_sequence_nr() -> int:
    """The sequence number autograd gives the next node it creates (nodes are numbered in creation order)."""
    peek = getattr(torch._C._autograd, "_get_sequence_nr", None)
    if peek is not None:
        return peek()
    # without the private accessor: create one throwaway node and read its number (one past it is next)
    return torch.zeros((), requires_grad=True).view(()).grad_fn._sequence_nr() + 1


# ---------------------------------------------------------------------------------------------
# Capturing activations, output-gradient edges and call windows during one forward pass.


@dataclass(eq=False)
class _Site:
    """A module owning trainable parameters, and what one forward pass saw of it."""

    name: str
    module: nn.Module
    params: list[tuple[str, nn.Parameter]]  # (attribute, parameter), direct and trainable
    rule: Rule | None
    shared: bool = False
    calls: int = 0
    window: tuple[int, int] = (0, 0)  # autograd sequence numbers [start, end) of nodes made during the call
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    versions: tuple = ()
    shapes: tuple = ()  # shapes of the tensor arguments, then of the output (None if not a tensor)
    edge: object = None  # GradientEdge of the output, taken before any in-place change
    out_is_tensor: bool = True
    producer: _Site | None = None  # the Linear whose output is this norm layer's input
    broadcast: object = None  # for a batch-independent output added to a batch-first tensor: the sum's edge
    saved_hooks: bool = False  # saved-tensor hooks (activation checkpointing) were active during the call
    reason: str = ""  # why the site is not on the fast path (for tests and debugging)


def _sites(modules) -> list[_Site]:
    sites, owners = [], defaultdict(int)
    for name, m in modules:
        ps = [(n, p) for n, p in m._parameters.items() if p is not None and p.requires_grad]
        if ps:
            for _, p in ps:
                owners[id(p)] += 1
            rule = rule_for(m)
            if rule is not None and ("forward" in m.__dict__ or not {n for n, _ in ps} <= _RULE_ATTRS):
                rule = None  # an instance with its own forward, or parameters the rule does not know
            sites.append(_Site(name, m, ps, rule))
    for s in sites:
        s.shared = any(owners[id(p)] > 1 for _, p in s.params)
    return sites


_NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)


def _tensor_shapes(args, output) -> tuple:
    shapes = tuple(tuple(a.shape) for a in args if isinstance(a, Tensor))
    return shapes + ((tuple(output.shape) if isinstance(output, Tensor) else None),)


def _SAVED_TENSOR_HOOKS():
    """The innermost saved-tensor hooks in force (``torch.utils.checkpoint`` installs some), or ``None``."""
    return torch._C._autograd._top_saved_tensors_default_hooks(False)


def _pre_hook(site: _Site, module, args, kwargs):
    site.calls += 1
    if site.calls == 1:
        site.window = (_next_sequence_nr(), 0)


def _hook(site: _Site, linear_outputs: dict | None, module, args, kwargs, output):
    if site.calls > 1:
        return
    site.window = (site.window[0], _next_sequence_nr())
    site.args, site.kwargs = args, kwargs
    site.saved_hooks = _SAVED_TENSOR_HOOKS() is not None
    site.versions = tuple(a._version if isinstance(a, Tensor) else None for a in args)
    site.shapes = _tensor_shapes(args, output)
    site.out_is_tensor = isinstance(output, Tensor)
    if site.out_is_tensor and output.requires_grad:
        site.edge = get_gradient_edge(output)
    if linear_outputs is None:  # recompute_norm_inputs off: no producer to record
        return
    if type(module) is nn.Linear and site.out_is_tensor:  # a Linear output may feed a norm layer next
        linear_outputs[id(output)] = (weakref.ref(output), site, output._version)
    elif type(module) in _NORM_TYPES and args and isinstance(args[0], Tensor):
        ref, producer, version = linear_outputs.get(id(args[0]), (None, None, None))
        if ref is not None and ref() is args[0] and args[0]._version == version:
            site.producer = producer  # input = producer's unmodified output: recomputable


@functools.cache
def _kept_out_of_compile(fn):
    """``fn`` wrapped by ``torch.compiler.disable``, made once per process (not on every step)."""
    return torch.compiler.disable(fn)


def _hooks(site: _Site, linear_outputs: dict | None):
    """The forward pre-hook and hook that record ``site``'s call, bound to it.

    Once ``torch._dynamo`` is imported (every ``torch.optim`` optimizer imports it), a compiled model
    could trace them, so they are then the versions wrapped by ``torch.compiler.disable``: bookkeeping
    on Python objects, and autograd's sequence numbers must be read at run time, never baked into a
    graph. The wrappers are made once per process, not on every step (building 14 of them per step
    cost about 0.1 ms of host time on the StreamRec MLP, issue 18)."""
    pre, post = _pre_hook, _hook
    if "torch._dynamo" in sys.modules:
        pre, post = _kept_out_of_compile(_pre_hook), _kept_out_of_compile(_hook)
    return functools.partial(pre, site), functools.partial(post, site, linear_outputs)


#: Per model checked by :func:`_run_with_hooks`: ``True`` if its compiled code ran without the fast
#: path's hooks (it then runs eagerly under the fast path), ``False`` if it was checked and need not.
_RUN_EAGERLY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _call_eagerly_impl(model: nn.Module, xs: tuple):
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    with stance("force_eager") if stance is not None else contextlib.nullcontext():
        return model(*xs)


def _call_eagerly(model: nn.Module, xs: tuple):
    """``model(*xs)`` with compiled code run eagerly (``torch.compiler.set_stance("force_eager")``).

    Kept out of any compiled region around the fast path (dynamo refuses to trace ``set_stance``).
    The stance is process-wide while the call lasts: not for models compiled and run in other
    threads at the same time (privlab trains in one thread)."""
    if "torch._dynamo" not in sys.modules:  # nothing was compiled
        return model(*xs)
    return _kept_out_of_compile(_call_eagerly_impl)(model, xs)


def _run_with_hooks(model: nn.Module, xs: tuple, sites: list[_Site]):
    """``model(*xs)`` with the sites' hooks registered, and seen to run.

    Code that ``torch.compile`` made before the hooks were registered (say, in an evaluation pass)
    does not check for hooks added since (dynamo skips those guards), so it can run without them:
    no site records its call, and every layer falls back to the exact but slow global path. When
    no site recorded a call, the forward runs once more eagerly; if the hooks ran then, the model
    runs eagerly under the fast path from then on, with a warning (measured: a compiled forward was
    no faster under the fast path, issue 18). Each model is checked once. (Hooks skipped in a
    compiled part of a model while others ran are not caught here: those layers take the exact
    global path.)
    """
    flag = _RUN_EAGERLY.get(model)
    if flag:
        return _call_eagerly(model, xs)
    outputs = model(*xs)
    if flag is None and sites and "torch._dynamo" in sys.modules and not any(s.calls for s in sites):
        outputs = None  # the hook-less forward's graph is freed before the eager one is built
        outputs = _call_eagerly(model, xs)
        _RUN_EAGERLY[model] = any(s.calls for s in sites)  # False: a model that does not call its layers
        if _RUN_EAGERLY[model]:
            warnings.warn(f"fast path: the compiled {type(model).__name__} ran without the per-layer hooks (code "
                          "compiled before they were registered); it runs eagerly under the fast path from now on",
                          RuntimeWarning, stacklevel=4)
    return outputs


# ---------------------------------------------------------------------------------------------
# Where each parameter's gradient flows: one walk over the autograd graph of the summed loss.


@dataclass
class _Graph:
    consumers: dict  # id(parameter) -> sequence numbers of the nodes that use it
    edges: list  # (sequence nr of producer v, sequence nr of consumer u, v, output nr of v, u), sorted by the first
    keys: list  # the first entries of ``edges``, for bisection


def _walk(root) -> _Graph:
    consumers: dict[int, list[int]] = defaultdict(list)
    edges = []
    seen, stack = {root}, [root]
    while stack:
        u = stack.pop()
        su = u._sequence_nr()
        for v, nr in u.next_functions:
            if v is None:
                continue
            if type(v) is _AccumulateGrad:
                consumers[id(v.variable)].append(su)
                continue
            edges.append((v._sequence_nr(), su, v, nr, u))
            if v not in seen:
                seen.add(v)
                stack.append(v)
    edges.sort(key=lambda e: e[0])
    return _Graph(consumers, edges, [e[0] for e in edges])


def _flows_only_through_output(site: _Site, graph: _Graph, windows: dict[int, list] | None = None) -> str:
    """'' if every gradient path to the site's parameters passes through its output; else why not.

    Autograd numbers its nodes in creation order, so the nodes created during the
    module's call are those numbered in ``site.window``. (a) Every node using a
    parameter must lie in that window: else the parameter is used outside the
    module's forward (``F.linear(h, emb.weight)``, a parent reading ``child.bias``,
    ``F.multi_head_attention_forward`` reading ``out_proj.weight``). (b) The only
    edge entering the window from a later node must be the output's edge: else a
    tensor computed in the call escapes by another route (an attribute, a side
    output) and the local answer would miss that route. Together, the output's
    edge dominates every parameter, so the gradient is exactly the vector-Jacobian
    product of this call at its saved inputs. A tied parameter may be used in the
    windows of all its owners (``windows``: parameter id -> their windows).
    """
    start, end = site.window
    for attr, p in site.params:
        allowed = (windows or {}).get(id(p), [site.window])
        if any(not any(lo <= seq < hi for lo, hi in allowed) for seq in graph.consumers.get(id(p), ())):
            return f"parameter {attr!r} is used outside the module's own forward call"
    node, nr = (site.edge.node, site.edge.output_nr) if site.edge is not None else (None, None)
    lo, hi = bisect.bisect_left(graph.keys, start), bisect.bisect_left(graph.keys, end)
    for _, su, v, vnr, _ in graph.edges[lo:hi]:
        if not start <= su < end and not (v is node and vnr == nr):
            return "a tensor computed in the module's forward reaches the loss other than through its output"
    return ""


# ---------------------------------------------------------------------------------------------
# Where the batch dimension is: traced with a one-example forward pass, never guessed from shapes.

_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _buffers_kept(model: nn.Module):
    """Leave the buffers as they were: the probe's and the checks' extra forward passes must not change
    the model's state (a running mean, a step counter), so that training is the same with or without
    them. A buffer reassigned meanwhile is put back; one changed in place is copied back, and only
    then (an unchanged buffer keeps its version, which the live graph's backward may check)."""
    saved = [(m, name, b, b.detach().clone()) for m in model.modules() for name, b in m._buffers.items()
             if b is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, name, b, value in saved:
                if m._buffers.get(name) is not b:
                    m._buffers[name] = b
                if not torch.equal(b, value):
                    b.copy_(value)


def _probe_shapes(model: nn.Module, xs: tuple, sites: list[_Site]) -> dict[str, tuple]:
    """Per site, the tensor shapes of its first call when the model runs on the first example alone.

    A dimension that is the batch dimension has size ``B`` in the real pass and
    ``1`` here; every other dimension keeps its size. Cached per model, training
    mode, input shapes (without the batch) and site set.
    """
    key = (model.training, tuple((tuple(x.shape[1:]), x.dtype, x.device) for x in xs),
           tuple((s.name, id(s.module)) for s in sites))
    cache = _PROBES.setdefault(model, {})
    if key in cache:
        return cache[key]
    seen: dict[str, tuple] = {}

    def recorder(site):
        def hook(module, args, kwargs, output):
            seen[site.name] = None if site.name in seen else _tensor_shapes(args, output)  # None: called again
        return hook

    handles = [s.module.register_forward_hook(recorder(s), with_kwargs=True, prepend=True) for s in sites]
    devices = sorted({x.device.index or 0 for x in xs if x.device.type == "cuda"})
    # eagerly: code that dynamo compiled earlier does not check for hooks added since (a compiled
    # forward could run without the recorders, and every site would fall back, exactly but slowly)
    try:
        with torch.random.fork_rng(devices=devices), _buffers_kept(model):  # nor shift the caller's masks
            _call_eagerly(model, tuple(x[:1] for x in xs))
    finally:
        for h in handles:
            h.remove()
    if len(cache) > 64:
        cache.clear()
    cache[key] = seen
    return seen


def _batch_independent(site: _Site, probe: dict) -> bool:
    """Leading dim 1 everywhere, and the same shapes in the one-example probe: the call ignores the batch."""
    single = probe.get(site.name)
    return (single is not None and tuple(single) == tuple(site.shapes)
            and all(shape is not None and shape and shape[0] == 1 for shape in site.shapes))


def _broadcast_edge(site: _Site, sites: list[_Site], graph: _Graph, probe: dict, batch: int):
    """For a batch-independent output (a learned position embedding, ``(1, T, d)``) whose only use is
    ``batch_first_tensor + output``: the sum's gradient edge, whose rows are the per-example output
    gradients of this site; else ``None``.

    The other summand must be the output of a module verified batch first, of shape ``(B, *rest)``,
    so row ``i`` of the sum is example ``i``'s; the sum's gradient w.r.t. the broadcast summand is
    the sum over rows, so its per-example part is row ``i``.
    """
    node, nr = site.edge.node, site.edge.output_nr
    lo, hi = bisect.bisect_left(graph.keys, node._sequence_nr()), bisect.bisect_right(graph.keys, node._sequence_nr())
    users = [u for _, _, v, vnr, u in graph.edges[lo:hi] if v is node and vnr == nr]
    if len(users) != 1 or type(users[0]).__name__ != "AddBackward0" or getattr(users[0], "_saved_alpha", None) != 1:
        return None
    add = users[0]
    others = [(v, vnr) for v, vnr in add.next_functions if not (v is node and vnr == nr)]
    if len(add.next_functions) != 2 or len(others) != 1 or others[0][0] is None:
        return None
    want = (batch, *site.shapes[-1][1:])
    for t in sites:
        if (t.edge is not None and t.edge.node is others[0][0] and t.edge.output_nr == others[0][1]
                and t.calls == 1 and t.shapes and t.shapes[-1] == want and _batch_first(t, probe, batch)):
            return GradientEdge(add, 0)
    return None


def _batch_first(site: _Site, probe: dict, batch: int) -> bool:
    """Dim 0 of every tensor argument and of the output is the batch, and no other dim depends on it."""
    single = probe.get(site.name)
    if single is None or len(single) != len(site.shapes):
        return False
    for real, one in zip(site.shapes, single):
        if real is None or one is None or not real or real[0] != batch or one != (1, *real[1:]):
            return False
    return True



# ---------------------------------------------------------------------------------------------
# Whether row i of a layer's input and output is example i's: checked by value on a few examples.

_ROW_CHECKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: How many examples the row check and the check against the loop run (alone, together, reversed).
ROW_CHECK_EXAMPLES = 8


def _check_key(model: nn.Module, loss_fn, xs: tuple, targets) -> tuple:
    """What the checks' verdicts are cached by: input and target shapes without the batch, every
    module's training flag, and the loss function's code (a lambda made afresh each step is the same
    loss: keying on the object would repeat the checks on every step)."""
    return (tuple((tuple(x.shape[1:]), x.dtype, x.device) for x in xs),
            None if not isinstance(targets, Tensor) else (tuple(targets.shape[1:]), targets.dtype),
            tuple(m.training for m in model.modules()), _loss_key(loss_fn))


def _loss_key(loss_fn):
    """A function made afresh each step is the same loss if its code and what it closes over are the
    same objects: key on those (a bound method: its function and instance; a ``functools.partial``:
    its function and arguments), so the checks run once, and two closures of one factory over
    different values (a centred loss and a plain one) are told apart. (Ids: the objects are alive
    while the caller's loss is.)"""
    if isinstance(loss_fn, functools.partial):
        return ("partial", _loss_key(loss_fn.func), tuple(id(a) for a in loss_fn.args),
                tuple((k, id(v)) for k, v in sorted(loss_fn.keywords.items())))
    if hasattr(loss_fn, "__self__") and hasattr(loss_fn, "__func__"):
        return ("method", _loss_key(loss_fn.__func__), id(loss_fn.__self__))
    code = getattr(loss_fn, "__code__", None)
    if code is None:
        return loss_fn
    cells = tuple(id(c.cell_contents) for c in (loss_fn.__closure__ or ()))
    return (code, cells, tuple(id(d) for d in (loss_fn.__defaults__ or ())),
            tuple((k, id(v)) for k, v in sorted((loss_fn.__kwdefaults__ or {}).items())))


def _distinct_examples(xs: tuple, targets, k: int) -> list[int]:
    """Up to ``k`` examples whose inputs (with targets) differ pairwise, spread over the batch:
    evenly spaced positions first, then the first 64 in order."""
    batch = xs[0].shape[0]
    spread = [round(j * (batch - 1) / max(1, k - 1)) for j in range(k)]
    keys, chosen = [], []
    for i in dict.fromkeys(spread + list(range(min(batch, 64)))):
        key = [x[i] for x in xs] + ([targets[i]] if isinstance(targets, Tensor) else [])
        if not any(all(torch.equal(a, b) for a, b in zip(key, other)) for other in keys):
            keys.append(key)
            chosen.append(i)
            if len(chosen) == k:
                break
    return chosen


def _record_calls(model: nn.Module, sites: list[_Site], xs: tuple, keep=lambda t: t):
    """``model(*xs)`` (eagerly) and, per site, ``keep`` of each tensor argument and of the output of its
    first call (``None`` for an output that is not a tensor)."""
    seen: dict[str, list] = {}

    def recorder(site):
        def hook(module, args, kwargs, output):
            if site.name not in seen:
                seen[site.name] = [keep(a) for a in args if isinstance(a, Tensor)] + [
                    keep(output) if isinstance(output, Tensor) else None]
        return hook

    handles = [s.module.register_forward_hook(recorder(s), with_kwargs=True, prepend=True) for s in sites]
    try:
        return _call_eagerly(model, xs), seen
    finally:
        for h in handles:
            h.remove()


def _fingerprint(t: Tensor) -> tuple[Tensor, torch.dtype]:
    """Every row of ``t`` projected on 4 fixed random directions, ``(rows, 4)`` in float64 (summed in
    float32 chunks: a language model's logits are large), and the dtype it was computed in: a whole
    batch's rows compared without keeping its activations."""
    rows = t.detach().reshape(t.shape[0], -1) if t.ndim else t.detach().reshape(1, 1)
    gen = torch.Generator(device=rows.device).manual_seed(rows.shape[1])
    out = torch.zeros(rows.shape[0], 4, dtype=torch.float64, device=rows.device)
    for a in range(0, rows.shape[1], 1 << 16):
        chunk = rows[:, a:a + (1 << 16)].to(torch.float32)
        out += (chunk @ torch.randn(chunk.shape[1], 4, generator=gen, device=rows.device)).double()
    return out, t.dtype


def _same_values(a: Tensor, b: Tensor, dtype: torch.dtype | None = None) -> bool:
    """Equal integers; floats equal up to float error: relative to each entry, with a floor of 1% of
    the larger tensor's largest entry (so one large feature cannot hide differences in small ones);
    ``dtype``: the precision the values were computed in, if not theirs (fingerprints)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    dtype = dtype or a.dtype
    if not (dtype.is_floating_point or dtype.is_complex):
        return torch.equal(a, b) if not (a.is_floating_point() or a.is_complex()) else bool(
            ((a - b).abs() <= 1e-6 * (a.abs() + b.abs()).max().clamp_min(1)).all())
    rtol = max(1e-3, 8 * torch.finfo(dtype).eps)
    wide = torch.complex128 if a.is_complex() else torch.float64
    a, b = a.to(wide), b.to(wide)
    entry = torch.maximum(a.abs(), b.abs()).nan_to_num(0)
    floor = max(float(entry.max()) if entry.numel() else 0.0, 1e-30) * 1e-2
    return bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).logical_or(
        (a - b).abs() <= rtol * (entry + floor)).all())


def _calls_agree(first: list | None, second: list | None, same) -> bool:
    """Two recordings of one site's call agree: the same tensors present, each pair passing ``same``."""
    if first is None or second is None or len(first) != len(second):
        return False
    return all(t is None and u is None if t is None or u is None else same(t, u) for t, u in zip(first, second))


def _row_check(model: nn.Module, loss_fn, xs: tuple, targets, sites: list[_Site]) -> tuple[frozenset, str]:
    """Sites whose rows are not the examples', and why the losses are not per example ("" if they are).

    The rules and the local path pair row :math:`i` of a layer's input with row :math:`i` of its
    output gradient and weight both by example :math:`i`'s clip factor. Shapes cannot show that
    row :math:`i` *is* example :math:`i`: a model that sorts its batch (say, by length) before a
    layer and restores the order after it keeps every shape, and the clipped sum would then mix
    one example's gradient in one layer with another's in the next: each layer's part of one
    example's contribution is scaled by another example's clip factor, and removing an example
    changes other rows' factors, so its effect on the sum is no longer bounded by :math:`C`
    (silently). So, without gradients (with every module's ``training`` attribute False when the
    forward is random: :func:`_without_sampling`): the whole batch runs in its order and in a fixed
    random permutation, and every site's tensor arguments and output (as fingerprints, four random
    projections per row) must permute with it; and :data:`ROW_CHECK_EXAMPLES` distinct examples run
    each alone, together, and together in reverse order, and must give example :math:`i`'s values
    in its row whatever its position (up to float error), which also catches rows that depend on
    other examples. The per-example losses must pass both. A site that fails takes the exact global
    path; if the losses fail, every site does. Cached per :func:`_check_key` and site set: a model
    whose row order depends on the data is checked on the first batch it sees. Examples with
    identical inputs and targets cannot be told apart (nor need to be, on that batch).
    """
    key = (_check_key(model, loss_fn, xs, targets), tuple((s.name, id(s.module)) for s in sites))
    cache = _ROW_CHECKS.setdefault(model, {})
    if key in cache:
        return cache[key]
    idx = _distinct_examples(xs, targets, ROW_CHECK_EXAMPLES)
    if len(idx) < 2:  # every example of this batch is the same: any pairing of rows is the right one
        return frozenset(), ""
    orders = [idx, idx[::-1], *([i] for i in idx)]
    devices = sorted({x.device.index or 0 for x in xs if x.device.type == "cuda"})
    runs, whole = [], []
    # and the whole batch, in its order and permuted: a layer's rows must follow the examples (a sort by
    # a key the few examples above share leaves them in place; over the whole batch it shows)
    perm = torch.randperm(xs[0].shape[0], generator=torch.Generator().manual_seed(0)).to(xs[0].device)
    try:
        with torch.random.fork_rng(devices=devices), _without_sampling(model, tuple(x[:2] for x in xs)), \
                torch.no_grad():
            for order in orders:
                sel = torch.tensor(order, device=xs[0].device)
                out, seen = _record_calls(model, sites, tuple(x[sel] for x in xs))
                sub = targets[sel] if isinstance(targets, Tensor) else targets
                runs.append((order, seen, per_example_losses(loss_fn(out, sub), len(order))))
            for order in (torch.arange(len(perm), device=perm.device), perm):
                out, fp = _record_calls(model, sites, tuple(x[order] for x in xs), keep=_fingerprint)
                sub = targets[order] if isinstance(targets, Tensor) else targets
                whole.append((fp, per_example_losses(loss_fn(out, sub), len(order))))
                out = None  # (a language model's logits: not two batches of them at once)
    except Exception as err:  # noqa: BLE001  (any failure: nothing is verified, every site is exact)
        result = frozenset(s.name for s in sites), f"the row check could not run ({str(err).splitlines()[0][:120]})"
        cache[key] = result
        return result
    alone = {order[0]: (seen, losses) for order, seen, losses in runs[2:]}
    bad, loss_reason = set(), ""
    (fp_a, loss_a), (fp_b, loss_b) = whole
    if not _same_values(loss_b, loss_a[perm]):
        loss_reason = "a batch's per-example losses do not follow its examples when it is permuted (row check)"
    def permuted_alike(t, u):  # fingerprints (rows, 4) and dtypes: u's rows are t's, permuted
        (t, dtype), (u, _) = t, u
        return _same_values(u, t[perm] if t.shape[0] == len(perm) else t, dtype=dtype)

    bad |= {s.name for s in sites if not _calls_agree(fp_a.get(s.name), fp_b.get(s.name), permuted_alike)}
    for order, seen, losses in runs[:2]:
        # the losses as whole vectors: a tolerance floor from the largest, so a near-zero loss's float
        # error does not count as a difference
        if not _same_values(losses, torch.cat([alone[i][1] for i in order])):
            loss_reason = "a batch's per-example losses differ from its examples' losses alone (row check)"
        for pos, i in enumerate(order):
            def own_row(t, u, pos=pos, size=len(order)):  # row pos of the batch is this example's alone
                if t.shape == u.shape and t.shape[:1] == (1,):  # a batch-independent call: (1, ...) alike
                    return _same_values(t, u)
                return t.shape[:1] == (size,) and _same_values(t[pos:pos + 1], u)

            bad |= {s.name for s in sites if not _calls_agree(seen.get(s.name), alone[i][0].get(s.name), own_row)}
    if len(cache) > 64:
        cache.clear()
    cache[key] = result = (frozenset(bad), loss_reason)
    return result


_LOOP_CHECKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _warn_once(model: nn.Module, reason: str) -> None:
    """Say once per model and reason that a check sent every layer to the exact (slow) path."""
    seen = _WARNED.setdefault(model, set())
    if reason not in seen:
        seen.add(reason)
        warnings.warn(f"fast path: every layer of {type(model).__name__} takes the exact per-example path "
                      f"(about one more forward and backward pass per step): {reason}", RuntimeWarning,
                      stacklevel=4)


def _output_tensors(out) -> list[Tensor]:
    """Every tensor of a model's output: a tensor, a tuple/list/dict of them, a ``transformers`` output."""
    if isinstance(out, Tensor):
        return [out]
    if hasattr(out, "to_tuple"):  # transformers' ModelOutput
        out = out.to_tuple()
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, Tensor)]


def _deterministic(model: nn.Module, xs: tuple) -> bool:
    """Does the model give the same outputs twice on the same inputs (no dropout or other sampling)?"""
    with torch.no_grad():
        first, second = (_output_tensors(_call_eagerly(model, xs)) for _ in range(2))
    return bool(first) and len(first) == len(second) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second))


@contextlib.contextmanager
def _without_sampling(model: nn.Module, xs: tuple):
    """The model as it is if its forward is deterministic on ``xs``; else with every module's ``training``
    attribute False (dropout off) until the block ends. Set and restored as attributes, never through
    ``train()``/``eval()``: a library's ``train(False)`` may do more (loralib merges LoRA weights into
    the base weight there, and unmerges only in ``train(True)``), and a check must leave the model as
    it found it."""
    flags = {m: m.training for m in model.modules()}
    try:
        with _buffers_kept(model):
            if any(flags.values()) and not _deterministic(model, xs):
                for m in flags:
                    m.training = False
            yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _loop_check(model: nn.Module, loss_fn, xs: tuple, targets, params: list, modules, recompute) -> str:
    r""""" if the fast path gives the loop's per-example norms and clipped sum on a few examples of
    this batch; else why not (then every layer takes the exact global path).

    The structural checks (gradient flow, batch dimension, rows) cover the ways a layer-local answer
    is known to go wrong; this check covers the rest end to end: autograd hooks on a layer's nodes
    or global module hooks that change what a rule assumes, examples coupled only in the backward
    pass (a custom ``autograd.Function``), module attributes that disagree with the parameters. On
    :data:`ROW_CHECK_EXAMPLES` distinct examples spread over the batch, in the model's training mode
    if its forward is deterministic there (else with dropout off, :func:`_without_sampling`, as two
    random passes differ), with gradients: the fast path's norms and clipped sum (at :math:`C` the median norm)
    against :func:`~privlab.dpsgd.per_sample.loop_grads_and_losses`, each within a relative 1e-3
    (per example, per parameter). Cached per model, shapes, parameters and loss function: like the
    other checks, it sees the first batch, so a model whose behaviour changes with the data, the batch
    size beyond these examples, or (with dropout) the training mode can still escape it.
    """
    key = (_check_key(model, loss_fn, xs, targets), tuple(id(p) for p in params), recompute)
    cache = _LOOP_CHECKS.setdefault(model, {})
    if key in cache:
        return cache[key]
    idx = _distinct_examples(xs, targets, ROW_CHECK_EXAMPLES)
    if len(idx) < 2:  # every example of this batch is the same: nothing to compare per example
        return ""
    sel = torch.tensor(idx, device=xs[0].device)
    sub_x = tuple(x[sel] for x in xs)
    sub_t = targets[sel] if isinstance(targets, Tensor) else targets
    devices = sorted({x.device.index or 0 for x in xs if x.device.type == "cuda"})
    why = ""
    try:
        with torch.random.fork_rng(devices=devices), _without_sampling(model, sub_x):
            loop_grads, _ = loop_grads_and_losses(model, loss_fn, sub_x, sub_t, params)
            loop_norms = sum(row_sq_norms(g).double() for g in loop_grads).sqrt()
            finite = torch.isfinite(loop_norms)  # an example with a NaN/inf gradient is left out of sums
            if not bool(finite.all()):
                if int(finite.sum()) < 2:
                    return ""  # nothing to compare on this batch (not cached: the next batch is checked)
                sub_x, loop_norms = tuple(x[finite] for x in sub_x), loop_norms[finite]
                sub_t = sub_t[finite] if isinstance(sub_t, Tensor) else sub_t
                loop_grads = [g[finite] for g in loop_grads]
            clip = float(loop_norms.median()) or 1.0

            def factors(n):
                return clip / n.double().clamp_min(clip)

            grads, norms, _ = fast_norms_and_clipped_sum(model, loss_fn, sub_x, sub_t, factors, params=params,
                                                         modules=modules, recompute_norm_inputs=recompute,
                                                         _check=False)
            want = [weighted_rows(factors(loop_norms), g) for g in loop_grads]  # cast as the fast path casts
    except Exception as err:  # noqa: BLE001  (nothing verified: every layer takes the exact path)
        why = f"the check against the loop could not run ({str(err).splitlines()[0][:120]})"
    if not why:
        rtol = max(1e-3, max(8 * torch.finfo(p.dtype).eps for p in params) if params else 1e-3)
        norms = norms.double()
        if not bool(((norms - loop_norms).abs() <= rtol * (loop_norms + 1e-2 * loop_norms.max() + 1e-30)).all()):
            why = "its per-example norms differ from the loop's on a few examples of this batch (loop check)"
        else:
            total = math.sqrt(sum(float(w.double().square().sum()) for w in want))
            for g, w in zip(grads, want):
                err = float((g.double() - w.double()).norm())
                if err > rtol * (float(w.double().norm()) + 1e-2 * total + 1e-30):
                    why = "its clipped sum differs from the loop's on a few examples of this batch (loop check)"
                    break
    if len(cache) > 64:
        cache.clear()
    cache[key] = why
    return why


# ---------------------------------------------------------------------------------------------
# The decision per module.


def _mode(site: _Site, batch: int, graph: _Graph, probe, windows: dict[int, list], sites: list[_Site]) -> str:
    """'unused' (no gradient), 'fast' (a rule), 'local' (vmap of this module) or 'global'; why in ``site.reason``."""
    used = [attr for attr, p in site.params if id(p) in graph.consumers]
    reason = ""
    if not used:
        return "unused"
    if site.calls != 1:
        reason = f"the module is called {site.calls} times per forward" if site.calls else \
            "its parameters are used, but the module itself is never called"
    elif not site.out_is_tensor or site.edge is None:
        reason = "the module's output is not one tensor carrying the gradient"
    elif any(isinstance(v, Tensor) for v in site.kwargs.values()):
        reason = "the module takes keyword tensors"
    else:
        reason = _flows_only_through_output(site, graph, windows)
        if not reason and not _batch_first(site, probe(), batch):
            reason = "the batch is not (only) the leading dimension of its input and output"
            if (site.rule is not None and len(site.args) == 1 and not site.kwargs
                    and _batch_independent(site, probe())):
                site.broadcast = _broadcast_edge(site, sites, graph, probe(), batch)
                if site.broadcast is not None:
                    reason = ""
    site.reason = reason
    if reason:
        return "global"
    if site.rule is not None and len(site.args) == 1 and not site.kwargs:
        return "fast"
    return "local"


def _tied_pairs(sites: list[_Site], modes: dict) -> list[tuple[_Site, _Site]]:
    """Resolve shared parameters: an ``Embedding`` weight tied to a ``Linear`` weight, both on their
    rules, stays fast (the cross term is added by :func:`_tied_cross_term`); every other sharing
    sends all owners to the global fallback."""
    owners: dict[int, list[_Site]] = defaultdict(list)
    for s in sites:
        for _, p in s.params:
            owners[id(p)].append(s)
    pairs, bad = [], set()
    for s in sites:
        if not s.shared or modes[s] == "unused":
            continue
        tied = [(attr, owners[id(p)]) for attr, p in s.params if len(owners[id(p)]) > 1]
        ok = len(tied) == 1 and tied[0][0] == "weight" and len(tied[0][1]) == 2
        if ok:
            emb, lin = sorted(tied[0][1], key=lambda t: type(t.module) is not nn.Embedding)
            ok = (type(emb.module) is nn.Embedding and type(lin.module) is nn.Linear and modes[emb] == "fast"
                  and modes[lin] == "fast" and lin.module.weight is emb.module.weight and emb.rule is not None
                  and lin.rule is not None and lin.args is not None and len(lin.args) == 1
                  and emb.broadcast is None and lin.broadcast is None)
        if ok:
            if (emb, lin) not in pairs:
                pairs.append((emb, lin))
        else:
            bad.update(o for _, os in tied for o in os)
    for s in bad:
        if modes[s] != "unused":
            modes[s], s.reason = "global", s.reason or "a parameter is shared with another module"
    return [(e, l) for e, l in pairs if e not in bad and l not in bad]


def _tied_cross_term(emb: _Site, b_emb: Tensor, lin: _Site, b_lin: Tensor) -> Tensor:
    r""":math:`2\langle G^{emb}_i, G^{lin}_i\rangle` for an embedding tied to an output layer, per example.

    :math:`G^{emb}_i[v] = \sum_{t: id_{i,t} = v} b^{emb}_{i,t}` and :math:`G^{lin}_i = (b^{lin}_i)^\top a_i`,
    so :math:`\langle G^{emb}_i, G^{lin}_i\rangle = \sum_{s,t} b^{lin}_{i,s,id_{i,t}}\,\langle a_{i,s}, b^{emb}_{i,t}\rangle`:
    about :math:`B T_{lin} T_{emb} d` flops, no :math:`V \times d` tensor per example.
    """
    batch, dim, pad = b_emb.shape[0], emb.module.weight.shape[1], embedding_padding_row(emb.module)
    ids = emb.args[0].reshape(batch, -1)
    be = b_emb.reshape(batch, -1, dim)
    if pad is not None:  # the padding row gets no gradient through the embedding
        be = be * (ids != pad).unsqueeze(-1).to(be.dtype)
    a = rules.wide(lin.args[0].detach().reshape(batch, -1, dim))
    bl = rules.wide(b_lin.reshape(batch, a.shape[1], -1))
    inner = a @ rules.wide(be).transpose(1, 2)  # (B, S, T): <a_{i,s}, b_emb_{i,t}>, in float32 or wider
    picked = torch.gather(bl, 2, ids.unsqueeze(1).expand(-1, bl.shape[1], -1))  # (B, S, T): b_lin[i, s, id_{i,t}]
    return 2 * (inner * picked).sum((1, 2))


def _report_modes(modes: dict[str, str], reasons: dict[str, str]) -> None:
    """Called with each step's final modes (module name -> mode) and reasons; a hook for tests."""


def _recompute_output(linear: _Site) -> Tensor:
    """A Linear site's output, recomputed from its saved input (parameters unchanged since the forward)."""
    module = linear.module
    return F.linear(linear.args[0].detach(), module.weight.detach(),
                    None if module.bias is None else module.bias.detach())


def _modified_in_place(site: _Site) -> bool:
    if site.args is None:  # input dropped for recomputation; autograd's own version check guards it
        return False
    return any(isinstance(a, Tensor) and a._version != v for a, v in zip(site.args, site.versions))


def _early_rule(site: _Site, early: dict):
    """A pre-hook for the node that made ``site``'s output: apply the rule when its output gradient arrives.

    Autograd captures the gradient asked for by ``torch.autograd.grad`` before it runs the node's
    pre-hooks, so the hook sees the same tensor the caller gets back, and only reads it. If the node
    never runs (nothing before it needs a gradient) the rule is applied after the backward instead.
    """
    def prehook(grad_outputs):
        b = grad_outputs[site.edge.output_nr]
        if b is not None and site.args is not None and not _modified_in_place(site):
            x = site.args[0].detach()
            stats = _saved_layer_norm_stats(site, x)
            early[site] = site.rule(site.module, x, b) if stats is None else layer_norm_from_stats(
                site.module, x, b, *stats)
            site.args = None  # the input is no longer needed here
        return None

    return prehook


def _saved_layer_norm_stats(site: _Site, x: Tensor):
    """``(mean, rstd)`` that the node which made a ``LayerNorm`` site's output saved for its backward, if
    they are provably those of ``x`` (the site's unmodified input); else ``None`` (then the rule recomputes).

    Called from the node's pre-hook, before the node runs, so its saved tensors are still there. The
    node must be ``native_layer_norm``'s, over this module's shape, and have saved ``x`` itself (same
    storage, shape and strides; under autocast it saved a cast copy instead and this returns ``None``).
    """
    node = site.edge.node
    if type(site.module) is not nn.LayerNorm or type(node).__name__ != "NativeLayerNormBackward0" or \
            x.dtype not in (torch.float32, torch.float64):
        return None
    if site.saved_hooks:  # checkpointed: reading the node's saved tensors would unpack them a second time
        return None       # (the backward then fails); the rule normalises again
    try:
        saved_x, mean, rstd = node._saved_input, node._saved_result1, node._saved_result2
        shape = tuple(node._saved_normalized_shape)
    except (AttributeError, RuntimeError):  # an older/newer autograd node, or a saved tensor modified in place
        return None
    dims = len(shape)
    want = (*x.shape[:x.ndim - dims], *([1] * dims))
    if (shape != tuple(site.module.normalized_shape) or saved_x.data_ptr() != x.data_ptr()
            or saved_x.shape != x.shape or saved_x.stride() != x.stride() or saved_x.dtype != x.dtype
            or tuple(mean.shape) != want or tuple(rstd.shape) != want or mean.dtype != x.dtype
            or rstd.dtype != x.dtype):
        return None
    return mean, rstd


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


def _global_per_example_grads(model, loss_fn, xs, targets, names: list[str]) -> list[Tensor]:
    """Per-example gradients of the whole model's loss w.r.t. ``names``: vmap, else the loop (both exact)."""
    try:
        return vmap_grads_and_losses(model, loss_fn, xs, targets, names)[0]
    except (RuntimeError, NotImplementedError) as err:  # an op vmap cannot batch (e.g. data-dependent control flow)
        warnings.warn(f"fast path: vmap failed ({str(err).splitlines()[0][:200]}); using the per-example loop "
                      f"for {len(names)} parameter(s)", RuntimeWarning, stacklevel=5)
        by_name = dict(model.named_parameters())
        return loop_grads_and_losses(model, loss_fn, xs, targets, [by_name[n] for n in names])[0]


def _single_example(model, loss_fn, xs, targets, factors_fn, params):
    """B = 1: the per-example gradient is the gradient; one ordinary backward pass, exact."""
    losses = per_example_losses(loss_fn(model(*xs), targets), 1)
    total = losses.sum()
    if total.requires_grad and params:
        gs = torch.autograd.grad(total, params, allow_unused=True)
    else:
        gs = [None] * len(params)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]
    dtype = torch.promote_types(params[0].dtype if params else torch.float32, torch.float32)
    norm2 = sum((g.detach().to(dtype).pow(2).sum() for g in grads), torch.zeros((), dtype=dtype, device=total.device))
    norms = norm2.sqrt().reshape(1)
    if factors_fn is None:
        return None, norms, losses.detach()
    c = factors_fn(norms)
    if c.shape != (1,):
        raise ValueError(f"clip factors must have shape (1,), got {tuple(c.shape)}")
    # in float32 or wider, the row zeroed inside a graph capture if its factor is 0 (rules.summand)
    sums = [rules.summand(g.detach().unsqueeze(0), c)[0] for g in grads]
    return [g * c.to(g.dtype) for g in sums], norms, losses.detach()


def fast_norms_and_clipped_sum(model, loss_fn, inputs, targets, factors_fn=None, *, params=None, modules=None,
                               recompute_norm_inputs: bool | None = None, _check: bool = True):
    r"""Per-example norms :math:`\|g_i\|` and, if ``factors_fn`` is given, :math:`\sum_i c_i g_i`.

    Args:
        model, loss_fn, inputs, targets: as in :func:`privlab.dpsgd.clipped_grad_sum`
            (inputs batch first: example ``i`` is ``x[i]`` of every input tensor).
        factors_fn: maps norms ``(B,)`` to clip factors ``(B,)``; ``None`` for norms only.
        params, modules: the trainable parameters and ``list(model.named_modules())``,
            if the caller has them already.
        recompute_norm_inputs: drop the input of a normalisation layer fed directly by a ``Linear``
            and recompute it after the backward pass (memory for one matmul per such layer);
            ``None``: :data:`RECOMPUTE_NORM_INPUTS`.

    Returns:
        ``(grads or None, norms (B,), losses (B,))``; ``grads`` aligned with the
        trainable parameters in ``model.parameters()`` order.
    """
    xs = as_input_tuple(inputs)
    batch = xs[0].shape[0]
    modules = list(model.named_modules()) if modules is None else modules
    if params is None:
        params = [p for _, p in trainable_parameters(model, modules)]
    if batch == 1:
        return _single_example(model, loss_fn, xs, targets, factors_fn, params)
    recompute = RECOMPUTE_NORM_INPUTS if recompute_norm_inputs is None else recompute_norm_inputs
    sites, linear_outputs = _sites(modules), ({} if recompute else None)
    handles = []
    for s in sites:
        pre_hook, hook = _hooks(s, linear_outputs)
        handles.append(s.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(s.module.register_forward_hook(hook, with_kwargs=True, prepend=True))  # before user hooks
    try:
        outputs = _run_with_hooks(model, xs, sites)
    finally:
        for h in handles:
            h.remove()
    linear_outputs = None
    losses = per_example_losses(loss_fn(outputs, targets), batch)  # (B,), shape-checked
    outputs = None
    total = losses.sum()
    graph = _walk(total.grad_fn) if total.grad_fn is not None else _Graph({}, [], [])
    probed = []

    def probe():  # run lazily: only when some module reaches the batch-dimension check
        if not probed:
            probed.append(_probe_shapes(model, xs, sites))
        return probed[0]

    windows: dict[int, list] = defaultdict(list)
    for s in sites:
        if s.shared:
            for _, p in s.params:
                windows[id(p)].append(s.window)
    modes = {s: _mode(s, batch, graph, probe, windows, sites) for s in sites}
    # row i must be example i's in every layer the rules or the local path handle; never checked while
    # a CUDA graph is captured (the checks synchronise; CUDAGraphStep's warm-up steps, on the same
    # shapes, ran and cached them)
    checked = [s for s in sites if modes[s] in ("fast", "local")]
    if checked and not rules.capturing():
        misaligned, loss_reason = _row_check(model, loss_fn, xs, targets, sites)
        # end to end, once per model and shapes: the fast path against the loop on a few of these
        # examples (``_check=False`` is that check's own call)
        unverified = _loop_check(model, loss_fn, xs, targets, params, modules, recompute) if _check else ""
        global_hooks = "a global module forward hook is registered (it can change a layer's output)" \
            if nn.modules.module._global_forward_hooks else ""
        if unverified or global_hooks or loss_reason:
            _warn_once(model, unverified or global_hooks or loss_reason)
        for s in checked:
            if unverified or global_hooks or loss_reason or s.name in misaligned:
                modes[s] = "global"
                s.reason = (unverified or global_hooks or loss_reason
                            or "row i of its input or output is not example i's (row check)")
    tied = _tied_pairs(sites, modes)
    for s in sites:
        # Memory option: a norm layer fed directly by a Linear need not keep its input alive through the
        # backward pass; it is recomputed afterwards as a W^T + beta from the Linear's saved input.
        if (recompute and modes[s] == "fast" and s.producer is not None and modes.get(s.producer) == "fast"
                and s.broadcast is None):
            s.args, s.versions = None, ()
        else:
            s.producer = None
    backward_sites = [s for s in sites if modes[s] in ("fast", "local")]
    out_grads = [None] * len(backward_sites)
    # A normalisation layer's rule needs its input only to form the (B, *param) per-example gradients; run it
    # in the backward pass, as soon as its output gradient exists, and drop the input there, so it is freed
    # when autograd is done with it (as in a plain backward) instead of being held to the end.
    early: dict[_Site, object] = {}
    paired = {t for pair in tied for t in pair}
    prehooks = [s.edge.node.register_prehook(_early_rule(s, early)) for s in backward_sites
                if modes[s] == "fast" and type(s.module) in _NORM_TYPES and s.producer is None
                and s.broadcast is None and s not in paired and s.edge is not None]
    try:
        if backward_sites:
            # only the output gradients b are asked for, so autograd skips the weight-gradient matmuls
            out_grads = torch.autograd.grad(
                total, [s.edge if s.broadcast is None else s.broadcast for s in backward_sites], allow_unused=True)
    finally:
        for h in prehooks:
            h.remove()
    graph = None
    # norms accumulate in float32 or wider: a bf16/fp16 norm would misstate the clip factor by up to 2^-8
    dtype = torch.promote_types(next((p.dtype for s in sites for _, p in s.params), torch.float32), torch.float32)
    norm2_of: dict[_Site, Tensor] = {}  # per site: sum over its parameters of ||grad_i||^2, (B,)
    weighted: dict[_Site, Callable] = {}  # per site: c -> {attr: sum_i c_i grad_i}
    tied_grads = {s: None for pair in tied for s in pair}
    out_grads = list(out_grads)
    producers = {t.producer for t in sites if t.producer is not None}
    for i, s in enumerate(backward_sites):  # b = d(sum_j loss_j)/d(output of s) = per-example b_i rows
        b, out_grads[i] = out_grads[i], None  # held from here on only by what the rule keeps
        if s in tied_grads:
            tied_grads[s] = b
        if b is None:  # cannot happen when a parameter is used (the output's edge dominates it); be exact anyway
            modes[s], s.reason = "global", "no gradient reached the module's output"
        elif _modified_in_place(s) or (s.producer is not None and _modified_in_place(s.producer)):
            modes[s], s.reason = "global", "its saved input was modified in place after the call"
        elif s.broadcast is not None and tuple(b.shape) != (batch, *s.shapes[-1][1:]):
            modes[s], s.reason = "global", "the broadcast sum did not have the expected shape"
        elif modes[s] == "fast":
            if s in early:
                contribution = early.pop(s)
            else:
                x = s.args[0].detach() if s.producer is None else _recompute_output(s.producer)
                if s.broadcast is not None:  # the same input for every example, each with its own output gradient
                    x = x.expand(batch, *x.shape[1:])
                contribution = s.rule(s.module, x, b)
                x = None
            norm2_of[s], weighted[s] = contribution.norm2.to(dtype), contribution.weighted_sum
        else:
            try:
                grads = _local_per_example_grads(s, b)
            except (RuntimeError, NotImplementedError) as err:  # an op vmap cannot batch: the exact global path
                modes[s], s.reason = "global", f"vmap of the module failed ({str(err).splitlines()[0][:120]})"
            else:
                norm2_of[s] = sum(row_sq_norms(g).to(dtype) for g in grads.values())
                weighted[s] = lambda c, grads=grads: {k: weighted_rows(c, g) for k, g in grads.items()}
        if modes[s] == "local" or (modes[s] == "fast" and s not in tied_grads and s not in producers):
            s.args = s.kwargs = None  # let activations no longer needed be freed now
    cross = []
    for emb, lin in tied:
        if modes[emb] == modes[lin] == "fast":
            cross.append(_tied_cross_term(emb, tied_grads[emb], lin, tied_grads[lin]).to(dtype))
        else:  # one of the two left the fast path after the backward: the other follows, exactly
            for t in (emb, lin):
                modes[t], t.reason = "global", t.reason or "its tied partner fell back"
                norm2_of.pop(t, None), weighted.pop(t, None)
    out_grads = b = tied_grads = None
    parts = [*norm2_of.values(), *cross]
    norm2 = torch.stack(parts).sum(0) if parts else torch.zeros(batch, device=losses.device, dtype=dtype)
    _report_modes({s.name: modes[s] for s in sites}, {s.name: s.reason for s in sites if s.reason})
    # global fallback: vmap(grad) of the whole model w.r.t. these parameters only
    global_params = {id(p): p for s in sites if modes[s] == "global" for _, p in s.params}
    global_grads: dict[int, Tensor] = {}
    if global_params:
        names = [n for n, p in model.named_parameters() if id(p) in global_params]
        per_ex = _global_per_example_grads(model, loss_fn, xs, targets, names)
        by_name = dict(model.named_parameters())
        global_grads = {id(by_name[n]): g for n, g in zip(names, per_ex)}
        norm2 = norm2 + sum(row_sq_norms(g).to(dtype) for g in per_ex)
    norms = norm2.clamp_min(0).sqrt()
    if factors_fn is None:
        return None, norms, losses.detach()
    c = factors_fn(norms)
    if c.shape != (batch,):
        raise ValueError(f"clip factors must have shape ({batch},), got {tuple(c.shape)}")
    result: dict[int, Tensor] = {pid: weighted_rows(c, g) for pid, g in global_grads.items()}
    while weighted:  # popped: each layer's saved tensors are freed as soon as its sum is formed
        s, weighted_sum = weighted.popitem()
        for attr, g in weighted_sum(c).items():
            pid = id(getattr(s.module, attr))
            result[pid] = g if pid not in result else result[pid] + g  # a tied weight: both uses add
        weighted_sum = None
    grads = [_as_param(result[id(p)], p) if id(p) in result else rules.zero_sums([p])[0] for p in params]
    return grads, norms, losses.detach()


def _as_param(g: Tensor, p: Tensor) -> Tensor:
    """``g`` with the shape of parameter ``p``; its dtype is kept: a 16-bit parameter's clipped sum stays
    in float32 until the noise is added (:func:`privlab.dpsgd.rules.summand`)."""
    return g if g.shape == p.shape else g.reshape(p.shape)
