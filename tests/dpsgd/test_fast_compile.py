"""The fast path under ``torch.compile``: its forward hooks run eagerly there, and it stays exact.

The hooks read autograd's sequence numbers (the call windows of the gradient-flow check) and
record Python objects, so they must run when the model runs, never be traced into a graph: once
``torch._dynamo`` is imported they are the versions wrapped by ``torch.compiler.disable``, made
once per process (building them on every step cost host time, issue 18). The compiled models run
on dynamo's ``aot_eager`` backend: dynamo's tracing and AOT autograd's compiled backward nodes, as
with inductor, in about a second (inductor: about 20 s on this CPU; that run is in test_cuda.py).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from privlab.dpsgd import clipped_grad_sum, fast

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)).double()


def _ce(out, t):
    return nn.functional.cross_entropy(out, t, reduction="none")


def test_a_process_that_never_imported_dynamo_uses_the_plain_hooks_and_imports_nothing():
    code = ("import sys, torch; from privlab.dpsgd import fast; "
            "pre, post = fast._hooks(fast._Site('l', torch.nn.Linear(2, 2), [], None), None); "
            "print(pre.func is fast._pre_hook, post.func is fast._hook, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "False"]


def test_once_dynamo_is_imported_both_hooks_are_disabled_wrappers_made_once():
    import torch._dynamo  # noqa: F401  (as any torch.optim optimizer does on construction)

    site = fast._Site("l", nn.Linear(2, 2), [], None)
    pre, post = fast._hooks(site, None)
    for hook, plain in [(pre, fast._pre_hook), (post, fast._hook)]:
        assert getattr(hook.func, "_torchdynamo_disable", False) and hook.func.__wrapped__ is plain
    again = fast._hooks(site, {})
    assert again[0].func is pre.func and again[1].func is post.func  # not rebuilt per step


class _CompiledForward(nn.Module):
    """A class whose ``forward`` is compiled by decorator, around the model it wraps."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    @torch.compile(backend="aot_eager", dynamic=True)
    def forward(self, x):
        return self.body(x)


def _compiled(how, model):
    if how == "torch.compile(model)":
        return torch.compile(model, backend="aot_eager", dynamic=True)
    if how == "model.forward":  # the forward method alone: no OptimizedModule
        model.forward = torch.compile(model.forward, backend="aot_eager", dynamic=True)
    else:  # @torch.compile on a class's forward: the one-example probe must still see every layer
        return _CompiledForward(model)
    return model


class _UsesItsWeightOutside(nn.Module):
    """``lin(x + x @ lin.weight.T)``: the weight's gradient also flows around ``lin``'s call, so the
    Linear rule alone would miss a path; the gradient-flow check must send it to the exact fallback."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.head = nn.Linear(5, 5).double(), nn.Linear(5, 3).double()

    def forward(self, x):
        return self.head(self.lin(x + x @ self.lin.weight.T))


@pytest.mark.parametrize("warm_up", [False, True])
@pytest.mark.parametrize("how", ["torch.compile(model)", "model.forward", "@torch.compile"])
@pytest.mark.parametrize("model_fn, want_modes", [
    (_mlp, {"0": "fast", "1": "fast", "3": "fast"}),
    (_UsesItsWeightOutside, {"lin": "global", "head": "fast"}),
])
def test_a_compiled_model_gives_the_loops_clipped_sum(monkeypatch, how, model_fn, want_modes, warm_up):
    # (not nn.Module.compile(): in torch 2.13 it compiled no graph for these models, see the last assert)
    seen = {}
    monkeypatch.setattr(fast, "_report_modes", lambda modes, reasons: seen.update(modes))
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    reference, compiled = model_fn(), _compiled(how, model_fn())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    if warm_up:  # a pass without the fast path's hooks first: code compiled then ignores hooks added later
        for batch in (1, 8):
            compiled(x[:batch])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in (8, 6):  # a second batch size: the compiled graph is reused or recompiled, still exact
            want = clipped_grad_sum(reference, _ce, x[:batch], y[:batch], max_grad_norm=0.5, method="loop")
            got = clipped_grad_sum(compiled, _ce, x[:batch], y[:batch], max_grad_norm=0.5, method="fast")
            for a, b in zip(got, want):
                assert (a - b).norm() <= 1e-10 * b.norm()
            names = {k.removeprefix("_orig_mod.").removeprefix("body."): v for k, v in seen.items()}
            assert names == want_modes, seen  # on the rules (the weight used outside its call: exact fallback)
    eager = [w for w in caught if "ran without the per-layer hooks" in str(w.message)]
    assert len(eager) == (1 if warm_up else 0), [str(w.message) for w in caught]  # said once, and only then
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # dynamo did compile the model


def test_nn_module_compile_after_a_warm_up_is_noticed_once_and_exact(monkeypatch):
    seen = {}
    monkeypatch.setattr(fast, "_report_modes", lambda modes, reasons: seen.update(modes))
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    reference, model = _UsesItsWeightOutside(), _UsesItsWeightOutside()
    model.compile(backend="aot_eager", dynamic=True)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    model(x)  # warm-up without the hooks
    with pytest.warns(RuntimeWarning, match="ran without the per-layer hooks"):
        got = clipped_grad_sum(model, _ce, x, y, max_grad_norm=0.5, method="fast")
    want = clipped_grad_sum(reference, _ce, x, y, max_grad_norm=0.5, method="loop")
    assert all((a - b).norm() <= 1e-10 * b.norm() for a, b in zip(got, want))
    assert seen == {"lin": "global", "head": "fast"} and fast._RUN_EAGERLY[model] is True
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs


class _CallsNoLayer(nn.Module):
    """Owns a Linear but never calls it (``F.linear`` with its weights): every parameter takes the exact
    global path, and the check for skipped hooks must not mistake that for compiled code."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 3).double()

    def forward(self, x):
        return nn.functional.linear(x, self.lin.weight, self.lin.bias)


def test_a_model_that_calls_no_layer_is_checked_once_and_not_forced_eager():
    import torch._dynamo  # noqa: F401

    model = _CallsNoLayer()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "ran without the hooks" warning
        for _ in range(2):
            got = clipped_grad_sum(model, _ce, x, y, max_grad_norm=0.5, method="fast")
    want = clipped_grad_sum(model, _ce, x, y, max_grad_norm=0.5, method="loop")
    assert all((a - b).norm() <= 1e-10 * b.norm() for a, b in zip(got, want))
    assert fast._RUN_EAGERLY[model] is False


def test_the_fast_path_inside_a_compiled_function_is_exact():
    model = _mlp()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    torch._dynamo.reset()
    step = torch.compile(lambda: clipped_grad_sum(model, _ce, x, y, max_grad_norm=0.5, method="fast"),
                         backend="aot_eager")
    got = step()
    want = clipped_grad_sum(model, _ce, x, y, max_grad_norm=0.5, method="loop")
    assert all((a - b).norm() <= 1e-10 * b.norm() for a, b in zip(got, want))
