"""The LayerNorm rule reads the forward's own mean and rstd only when they provably belong to the call.

The fast path takes ``mean``/``rstd`` from the ``native_layer_norm`` node that made a LayerNorm's output
(issue 18: no second normalisation pass). Each case checks against the per-example loop in float64, and
that the saved statistics are used where they should be and refused where they are not this call's.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from privlab.dpsgd import clip_factors, clipped_grad_sum_with_stats, fast


def _sums(model, x, y, method):
    torch.manual_seed(3)  # the same dropout masks for both methods
    out = clipped_grad_sum_with_stats(model, lambda o, t: ((o - t) ** 2).reshape(o.shape[0], -1).sum(1), x, y,
                                      factors_fn=lambda n: clip_factors(n, max_grad_norm=float(n.median())),
                                      method=method)
    return out.norms, out.grads


@pytest.fixture
def used(monkeypatch):
    """How many times the saved-statistics rule ran, and how many times it was refused."""
    counts = {"stats": 0, "refused": 0}
    rule, lookup = fast.layer_norm_from_stats, fast._saved_layer_norm_stats

    def spy_rule(*args):
        counts["stats"] += 1
        return rule(*args)

    def spy_lookup(site, x):
        got = lookup(site, x)
        counts["refused"] += got is None
        return got

    monkeypatch.setattr(fast, "layer_norm_from_stats", spy_rule)
    monkeypatch.setattr(fast, "_saved_layer_norm_stats", spy_lookup)
    # the check against the loop runs the rule once more on its own examples (test_fallback.py tests it)
    monkeypatch.setattr(fast, "_loop_check", lambda *args: "")
    return counts


def _check(model, x, y):
    norms_f, sums_f = _sums(model, x, y, "fast")
    norms_l, sums_l = _sums(model, x, y, "loop")
    assert torch.allclose(norms_f, norms_l, rtol=1e-9, atol=1e-12)
    for a, b in zip(sums_f, sums_l):
        assert (a - b).norm() <= 1e-9 * b.norm() + 1e-12


@pytest.mark.parametrize("shape", [(6,), (3, 6)])
def test_layer_norm_uses_the_saved_statistics(used, shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(shape[-1:] if len(shape) == 1 else shape), nn.Tanh(),
                          nn.Dropout(0.2), nn.Linear(6, 2)).double()
    x = torch.randn(5, *shape[:-1], 6, dtype=torch.float64)
    y = torch.randn(5, *shape[:-1], 2, dtype=torch.float64)
    _check(model, x, y)
    assert used["stats"] == 1 and used["refused"] == 0


def test_statistics_of_another_tensor_are_refused(monkeypatch):
    """The lookup answers only for the call's own input: a copy (other storage) or a cast is refused."""
    lookup, seen = fast._saved_layer_norm_stats, []

    def spy(site, x):
        seen.append((lookup(site, x.clone()), lookup(site, x.float()), lookup(site, x[:, :-1])))
        return lookup(site, x)

    monkeypatch.setattr(fast, "_saved_layer_norm_stats", spy)
    monkeypatch.setattr(fast, "_loop_check", lambda *args: "")  # its own call would add a second entry
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 1)).double()
    _check(model, torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64))
    assert seen == [(None, None, None)]


def test_recomputed_when_refused(monkeypatch):
    """With the lookup refusing every node, the rule recomputes the normalisation: same answer."""
    monkeypatch.setattr(fast, "_saved_layer_norm_stats", lambda site, x: None)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 1)).double()
    _check(model, torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64))


def test_activation_checkpointing_keeps_the_rules(monkeypatch):
    """Under torch.utils.checkpoint (non-reentrant) the LayerNorm rule does not read the node's saved
    statistics (that unpacked the recomputed tensors twice and failed the backward): it normalises
    again, and every layer stays on its rule."""
    from torch.utils.checkpoint import checkpoint

    seen = {}
    monkeypatch.setattr(fast, "_report_modes", lambda modes, reasons: seen.update(modes))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh())
            self.head = nn.Linear(6, 1)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=False))

    torch.manual_seed(4)
    _check(Net().double(), torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64))
    assert set(seen.values()) == {"fast"}, seen
