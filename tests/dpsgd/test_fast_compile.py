"""The fast path under ``torch.compile``: its forward hooks run eagerly there, and only there.

The hooks read autograd's sequence numbers and record Python objects, so they are kept out of a
compiled model's graph (``torch.compiler.disable``); that wrapper costs host time on every call,
so they are wrapped only when compilation can reach them. (Without the wrapper dynamo breaks the
graph at the hooks and the result is still exact, measured here with the eager backend; the wrapper
is a precaution for backends and versions not measured.) Dynamo's ``eager`` backend traces the model
exactly as inductor would and compiles in about a second (inductor: about 20 s on this CPU;
the inductor run is in test_cuda.py).
"""

from __future__ import annotations

import subprocess
import sys

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


def test_a_process_that_never_imported_dynamo_wraps_nothing_and_imports_nothing():
    code = ("import sys, torch; from privlab.dpsgd import fast; "
            "m = torch.nn.Linear(2, 2); print(fast._dynamo_involved(list(m.named_modules())), "
            "'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_compiled_models_are_detected_plain_ones_not():
    import torch._dynamo  # noqa: F401  (as any torch.optim optimizer does on construction)

    plain = _mlp()
    assert not fast._dynamo_involved(list(plain.named_modules()))
    assert fast._dynamo_involved(list(torch.compile(plain, backend="eager").named_modules()))
    inner = _mlp()
    inner[0] = torch.compile(inner[0], backend="eager")  # one compiled submodule is enough
    assert fast._dynamo_involved(list(inner.named_modules()))
    in_place = _mlp()
    in_place.compile(backend="eager")  # nn.Module.compile
    assert fast._dynamo_involved(list(in_place.named_modules()))


def test_the_hooks_are_wrapped_only_when_compiled():
    site = fast._Site("l", nn.Linear(2, 2), [], None)
    plain_pre, plain_post = fast._hooks(site, None, compiled=False)
    wrapped_pre, wrapped_post = fast._hooks(site, None, compiled=True)
    assert plain_pre.func is fast._pre_hook and plain_post.func is fast._hook
    assert wrapped_pre.func is not fast._pre_hook and wrapped_pre.func is fast._hooks(site, None, True)[0].func


@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_a_compiled_model_gives_the_loops_clipped_sum_on_the_rules(monkeypatch, how):
    seen = {}
    monkeypatch.setattr(fast, "_report_modes", lambda modes, reasons: seen.update(modes))
    torch._dynamo.reset()
    model = _mlp()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    want = clipped_grad_sum(model, _ce, x, y, max_grad_norm=0.5, method="loop")
    if how == "torch.compile":
        compiled = torch.compile(model, backend="eager", dynamic=True)
    else:
        compiled = _mlp()
        compiled.compile(backend="eager", dynamic=True)
    for batch in (8, 6):  # a second batch size: the compiled graph is reused or recompiled, still exact
        want = clipped_grad_sum(model, _ce, x[:batch], y[:batch], max_grad_norm=0.5, method="loop")
        got = clipped_grad_sum(compiled, _ce, x[:batch], y[:batch], max_grad_norm=0.5, method="fast")
        for a, b in zip(got, want):
            assert (a - b).norm() <= 1e-10 * b.norm()
        assert set(seen.values()) == {"fast"}, seen  # every layer on its rule, none fell back
