"""The fast path on layers it has no rule for, and on the cases where a layer-local answer would be wrong.

Each model is checked against the loop and vmap: the fast path must fall back
(to vmap for those layers only), never return a silently wrong clipped sum.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from privlab.dpsgd import clipped_grad_sum, fast, per_example_grad_norms, removal_gaps
from privlab.models import BatchSortingMLP
from privlab.profiling import opacus_clipped_sum



@pytest.fixture
def modes(monkeypatch):
    """Record, per module name, which path ('fast', 'local', 'global', 'unused') each module took."""
    seen = {}

    def spy(modes, reasons):
        seen.update({name: mode for name, mode in modes.items() if mode != "unused"})  # "" is the root module

    monkeypatch.setattr(fast, "_report_modes", spy)
    return seen


def check_fast_matches(model, loss_fn, inputs, targets, rtol=1e-5):
    model = model.double()
    inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    norms = {m: per_example_grad_norms(model, loss_fn, inputs, targets, method=m) for m in ("loop", "vmap", "fast")}
    torch.testing.assert_close(norms["vmap"], norms["loop"], rtol=rtol, atol=1e-12)
    torch.testing.assert_close(norms["fast"], norms["loop"], rtol=rtol, atol=1e-12)
    c = float(norms["loop"].median())
    sums = {m: clipped_grad_sum(model, loss_fn, inputs, targets, max_grad_norm=c, method=m) for m in ("loop", "fast")}
    for a, b in zip(sums["fast"], sums["loop"]):
        assert (a - b).norm() <= rtol * b.norm() + 1e-12


def mse(out, t):
    return (out - t) ** 2


class Affine(nn.Module):
    """A custom module with parameters: no rule covers it."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))
        self.b = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * self.w + torch.sin(self.b)


def test_conv1d_falls_back_locally(modes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(15, 2))
    check_fast_matches(model, mse, (torch.randn(7, 2, 5),), torch.randn(7, 2, dtype=torch.float64))
    assert modes == {"0": "local", "3": "fast"}


def test_custom_module_with_parameter_falls_back(modes):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), Affine(5), nn.Tanh(), nn.Linear(5, 1))
    check_fast_matches(model, mse, (torch.randn(9, 4),), torch.randn(9, 1, dtype=torch.float64))
    assert modes == {"0": "fast", "1": "local", "3": "fast"}


class RootParam(nn.Module):
    """Parameters owned by the root module, used directly in forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.temperature = nn.Parameter(torch.tensor([1.5, 0.5]))

    def forward(self, x):
        return self.fc(x) * self.temperature


def test_root_parameters_fall_back(modes):
    torch.manual_seed(2)
    check_fast_matches(RootParam(), mse, (torch.randn(5, 3),), torch.randn(5, 2, dtype=torch.float64))
    assert modes == {"": "local", "fc": "fast"}


class Reused(nn.Module):
    """The same Linear called twice: its per-example gradient is a sum of two terms."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


def test_module_called_twice_falls_back_globally(modes):
    torch.manual_seed(3)
    check_fast_matches(Reused(), mse, (torch.randn(6, 4),), torch.randn(6, 1, dtype=torch.float64))
    assert modes == {"fc": "global", "out": "fast"}


class Tied(nn.Module):
    """Embedding and output layer share one weight."""

    def __init__(self, vocab=7, dim=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.emb(ids).mean(1))


def test_tied_embedding_and_output_layer_stay_fast(modes):
    torch.manual_seed(4)
    ids = torch.randint(0, 7, (5, 3))
    loss = lambda o, t: F.cross_entropy(o, t, reduction="none")
    check_fast_matches(Tied(), loss, (ids,), torch.randint(0, 7, (5,)))
    assert modes == {"emb": "fast", "out": "fast"}  # the cross term <G_emb, G_out> is added per example


class TiedTwoLinears(nn.Module):
    """One weight shared by two Linear layers: no rule for the pair, so both fall back."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_other_shared_weights_fall_back_globally(modes):
    torch.manual_seed(4)
    check_fast_matches(TiedTwoLinears(), mse, (torch.randn(5, 4),), torch.randn(5, 4, dtype=torch.float64))
    assert modes == {"a": "global", "b": "global"}


def test_inplace_activation_after_linear(modes):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 6), nn.LeakyReLU(0.1, inplace=True),
                          nn.Linear(6, 1))
    check_fast_matches(model, mse, (torch.randn(8, 4),), torch.randn(8, 1, dtype=torch.float64))
    assert modes == {"0": "fast", "2": "fast", "4": "fast"}


@pytest.mark.parametrize("d_in,d_out,steps", [(8, 8, 3), (2, 3, 6)])  # ghost norm, then materialised
def test_linear_on_sequences(d_in, d_out, steps):
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.GELU(), nn.Linear(d_out, 2))
    check_fast_matches(model, mse, (torch.randn(5, steps, d_in),), torch.randn(5, steps, 2, dtype=torch.float64))


@pytest.mark.parametrize("steps", [1, 5, 300])  # single id, ghost form, long-sequence path
def test_embedding_sequences_with_repeats_and_padding(steps):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Embedding(6, 3, padding_idx=2), nn.Flatten(), nn.Linear(3 * steps, 1))
    ids = torch.randint(0, 6, (4, steps))  # repeats within an example are certain for steps > 6
    check_fast_matches(model, mse, (ids,), torch.randn(4, 1, dtype=torch.float64))


def test_norm_layers():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv1d(2, 4, 1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(12, 5), nn.RMSNorm(5),
                          nn.Linear(5, 1))
    check_fast_matches(model, mse, (torch.randn(6, 2, 3),), torch.randn(6, 1, dtype=torch.float64))


def test_layer_norm_over_two_dims():
    torch.manual_seed(9)
    model = nn.Sequential(nn.LayerNorm((3, 4)), nn.Flatten(), nn.Linear(12, 1))
    check_fast_matches(model, mse, (torch.randn(5, 3, 4),), torch.randn(5, 1, dtype=torch.float64))


def test_unused_module_gets_zero_gradient():
    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x):
            return self.used(x)

    model = Partly().double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    fast = clipped_grad_sum(model, mse, x, y, max_grad_norm=1.0)
    loop = clipped_grad_sum(model, mse, x, y, max_grad_norm=1.0, method="loop")
    for a, b in zip(fast, loop):
        torch.testing.assert_close(a, b)
    assert torch.count_nonzero(fast[2]) == 0


class NoVmap(nn.Module):
    """A custom module vmap cannot batch (data-dependent control flow): the local fallback must give way."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return x * self.w if bool((x.sum() > -1e9).item()) else x


def test_module_vmap_cannot_batch_falls_back_to_the_loop(modes):
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(3, 3), NoVmap(), nn.Linear(3, 1)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    loop = clipped_grad_sum(model, mse, x, y, max_grad_norm=0.5, method="loop")
    with pytest.warns(RuntimeWarning, match="vmap failed"):
        fast_sum = clipped_grad_sum(model, mse, x, y, max_grad_norm=0.5)
    for a, b in zip(fast_sum, loop):
        assert (a - b).norm() <= 1e-10 * b.norm() + 1e-12
    assert modes["1"] == "global" and modes["0"] == "fast"


def test_windows_without_the_private_sequence_accessor(monkeypatch, modes):
    """The call windows fall back to reading a throwaway node's number if torch drops its private accessor."""
    monkeypatch.delattr(torch._C._autograd, "_get_sequence_nr", raising=False)
    test_root_parameters_fall_back(modes)
    modes.clear()
    test_tied_embedding_and_output_layer_stay_fast(modes)


@pytest.mark.parametrize("recompute", [False, True])
def test_norm_inputs_kept_or_recomputed(monkeypatch, modes, recompute):
    """Both settings of the memory option agree with the loop; the norm layers stay on their rules
    (kept: the rule runs in a pre-hook during the backward; recomputed: from the Linear's saved input)."""
    monkeypatch.setattr(fast, "RECOMPUTE_NORM_INPUTS", recompute)
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 5), nn.RMSNorm(5), nn.Tanh(),
                          nn.LayerNorm(5), nn.Linear(5, 1))  # the second LayerNorm is not fed by a Linear
    check_fast_matches(model, mse, (torch.randn(7, 4),), torch.randn(7, 1, dtype=torch.float64))
    assert set(modes.values()) == {"fast"}


def test_norm_layer_first_gets_its_rule_after_the_backward(modes):
    """A LayerNorm on the raw input: no gradient flows past it, so its pre-hook never runs; the rule is
    applied after the backward instead."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    check_fast_matches(model, mse, (torch.randn(6, 4),), torch.randn(6, 1, dtype=torch.float64))
    assert modes["0"] == "fast"


# ----------------------------------------------------------------------- rows that are not the examples


def sorting_net():
    """Sorts the batch by its first feature before its first layer and restores the order after it
    (privlab.models.BatchSortingMLP): every shape is batch first, but row i of that layer is not
    example i."""
    return BatchSortingMLP(5, 4)


def test_a_layer_whose_rows_are_permuted_falls_back(modes):
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randn(8)
    check_fast_matches(sorting_net(), mse, (x,), y)
    assert modes == {"first": "global", "second": "fast"}  # second's rows are the examples' again


def test_without_the_checks_the_clipped_sum_mixes_examples(monkeypatch):
    """What the row check (and the loop check) prevent: the permuted layer's rows clipped with other
    examples' factors."""
    torch.manual_seed(0)
    model, x, y = sorting_net().double(), torch.randn(8, 5).double(), torch.randn(8).double()
    monkeypatch.setattr(fast, "_row_check", lambda *args: (frozenset(), ""))
    monkeypatch.setattr(fast, "_loop_check", lambda *args: "")
    wrong = clipped_grad_sum(model, mse, x, y, max_grad_norm=0.1, method="fast")
    right = clipped_grad_sum(model, mse, x, y, max_grad_norm=0.1, method="loop")
    assert max(float((a - b).abs().max()) for a, b in zip(wrong, right)) > 1e-3


def test_a_loss_that_mixes_examples_sends_every_layer_to_the_exact_path(modes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0))
    x, y = torch.randn(6, 3), torch.randn(6)

    def centred(out, t):  # each loss reads the batch's mean output: not one loss per example
        return (out - out.mean() - t) ** 2

    fast.fast_norms_and_clipped_sum(model, centred, (x,), y)
    assert set(modes.values()) == {"global"}


def test_row_check_keeps_dropout_models_fast_and_restores_training_flags(modes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2), nn.Dropout(0.5), nn.Linear(2, 1))
    model[3].eval()  # a submodule left in evaluation mode on purpose stays so
    calls = []
    model[0].register_forward_hook(lambda *args: calls.append(1))
    x, y = torch.randn(7, 3), torch.randn(7, 1)
    for _ in range(3):
        fast.fast_norms_and_clipped_sum(model, mse, (x,), y)
    assert set(modes.values()) == {"fast"}
    assert [m.training for m in model] == [True, True, True, False, True] and model.training
    # three steps, one shape probe, one row check (a determinism test: 2; 7 examples alone and 2
    # together; the whole batch in order and permuted: 2) and one loop check (a determinism test: 2;
    # the loop over the 7: 7; the fast path on them: 1, its shape probe with dropout off: 1, and its
    # own row check with dropout off, a new key: 9 + 2)
    assert len(calls) == 3 + 1 + (2 + 9 + 2) + (2 + 7 + 1 + 1 + 9 + 2)


def test_identical_examples_need_no_row_check(modes):
    model = sorting_net()
    x, y = torch.ones(4, 5), torch.zeros(4)
    fast.fast_norms_and_clipped_sum(model, mse, (x,), y)
    assert modes == {"first": "fast", "second": "fast"}  # all rows alike: any pairing is the right one
    check_fast_matches(model, mse, (torch.randn(4, 5),), y)  # checked on the next batch with distinct rows


def _flat_sum(model, method, clip):
    def flat(x, y):
        return torch.cat([g.flatten() for g in clipped_grad_sum(model, mse, x, y, max_grad_norm=clip, method=method)])
    return flat


def test_removing_an_example_moves_the_fast_sum_by_at_most_c_on_the_sorting_net():
    torch.manual_seed(0)
    model, x, y = sorting_net().double(), 2 * torch.randn(16, 5).double(), 3 * torch.randn(16).double()
    for method in ("fast", "loop"):
        assert float(removal_gaps(_flat_sum(model, method, 0.1), x, y).max()) <= 0.1 * (1 + 1e-9), method


def test_opacus_hooks_on_the_sorting_net_move_the_sum_by_more_than_c():
    """Opacus 1.6's hooks read row i of every layer as example i's (chapter 8 shows it): if a release
    fixes this, the chapter's claim must change."""
    pytest.importorskip("opacus")
    torch.manual_seed(0)
    model, x, y = sorting_net().double(), 2 * torch.randn(16, 5).double(), 3 * torch.randn(16).double()

    def opacus_sum(xs, ys):
        return opacus_clipped_sum(model, mse, xs, ys, max_grad_norm=0.1)

    assert float(removal_gaps(opacus_sum, x, y).max()) > 1.5 * 0.1



# ------------------------------------------- what only the check against the loop sees (a red-team read)


class _TwoLayers(nn.Module):
    def __init__(self, hook=None):
        super().__init__()
        self.l1, self.l2, self.hook = nn.Linear(4, 5), nn.Linear(5, 2), hook

    def forward(self, x):
        h = self.l1(x)
        if self.hook is not None and h.requires_grad:
            self.hook(h)
        return self.l2(torch.tanh(h))


class _BatchNormalisedGrad(torch.autograd.Function):
    """Identity forward; the backward divides by the norm of the whole batch's gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(h):
        return h.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):  # functorch-ready, so the exact path can vmap it
        pass

    @staticmethod
    def backward(ctx, g):
        return g / g.norm()


class _CoupledInBackward(_TwoLayers):
    def forward(self, x):
        return self.l2(_BatchNormalisedGrad.apply(torch.tanh(self.l1(x))))


class _SortsWhenTraining(_TwoLayers):
    def forward(self, x):
        h = torch.tanh(self.l1(x))
        if not self.training:
            return self.l2(h)
        order = torch.argsort(x[:, 0])
        return self.l2(h[order])[torch.argsort(order)]


def _sum_loss(out, t):
    return ((out - t) ** 2).sum(1)


@pytest.mark.parametrize("case", ["node pre-hook", "node hook", "backward coupling"])
def test_what_the_structural_checks_miss_the_loop_check_catches(case, modes):
    torch.manual_seed(0)
    model = {"node pre-hook": lambda: _TwoLayers(lambda h: h.grad_fn.register_prehook(lambda go: (3 * go[0],))),
             "node hook": lambda: _TwoLayers(lambda h: h.grad_fn.register_hook(
                 lambda gi, go: tuple(None if g is None else 3 * g for g in gi))),
             "backward coupling": _CoupledInBackward}[case]()
    check_fast_matches(model, _sum_loss, (torch.randn(6, 4),), torch.randn(6, 2))
    assert set(modes.values()) == {"global"}


def test_checks_run_in_training_mode_when_the_forward_is_deterministic(modes):
    """A model that reorders its batch only in training: the row check, run in training mode (no
    dropout to switch off), finds the reordered layer; the other stays fast."""
    torch.manual_seed(0)
    check_fast_matches(_SortsWhenTraining(), _sum_loss, (torch.randn(6, 4),), torch.randn(6, 2))
    assert modes == {"l1": "fast", "l2": "global"}


class _MergesInEval(nn.Module):
    """As loralib's layers: train(False) merges the adapter into the weight, train(True) unmerges it."""

    def __init__(self):
        super().__init__()
        self.base = nn.Linear(4, 3)
        self.base.weight.requires_grad_(False)
        self.a, self.b = nn.Parameter(torch.randn(2, 4)), nn.Parameter(torch.randn(3, 2))
        self.dropout, self.merged = nn.Dropout(0.1), False

    def train(self, mode=True):
        super().train(mode)
        with torch.no_grad():
            if not mode and not self.merged:
                self.base.weight += self.b @ self.a
            elif mode and self.merged:
                self.base.weight -= self.b @ self.a
        self.merged = not mode
        return self

    def forward(self, x):
        out = self.base(x)
        return out if self.merged else out + self.dropout(x) @ self.a.t() @ self.b.t()


def test_the_checks_leave_a_model_that_merges_in_eval_unmerged():
    torch.manual_seed(0)
    model = _MergesInEval()
    weight = model.base.weight.clone()
    grads = clipped_grad_sum(model, _sum_loss, torch.randn(6, 4), torch.randn(6, 3), max_grad_norm=1.0)
    assert not model.merged and model.training and torch.equal(model.base.weight, weight)
    assert all(float(g.norm()) > 0 for g in grads)  # the adapters still learn


def test_a_global_forward_hook_sends_every_layer_to_the_exact_path(modes):
    torch.manual_seed(0)
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: o * 3 if isinstance(m, nn.Linear) else None)
    try:
        check_fast_matches(_TwoLayers(), _sum_loss, (torch.randn(6, 4),), torch.randn(6, 2))
    finally:
        handle.remove()
    assert set(modes.values()) == {"global"}


def test_rules_read_the_weights_not_stale_attributes(modes):
    """A weight replaced after construction: the rules read its shape, and a negative padding_idx set
    later counts from the end, as F.linear and F.embedding do (the layers stay on their rules)."""
    torch.manual_seed(0)
    lin = nn.Linear(12, 2)
    lin.weight = nn.Parameter(torch.randn(2, 4))
    check_fast_matches(lin, lambda o, t: ((o - t) ** 2).sum((1, 2)), (torch.randn(3, 3, 4),), torch.randn(3, 3, 2))
    assert modes == {"": "fast"}

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(10, 3), nn.Linear(3, 1)

        def forward(self, ids):
            return self.head(self.emb(ids)).squeeze(-1)

    modes.clear()
    model = Emb()
    model.emb.weight = nn.Parameter(torch.cat([model.emb.weight.data, torch.randn(5, 3)]))  # 15 rows
    model.emb.padding_idx = -1
    ids = torch.randint(0, 15, (3, 300))
    ids[:, -3:] = 14  # the padding row
    check_fast_matches(model, lambda o, t: ((o - t) ** 2).sum(1), (ids,), torch.randn(3, 300))
    assert modes == {"emb": "fast", "head": "fast"}



# ------------------------------------------------------------- from a second review of the checks


def test_a_sort_key_the_checked_examples_share_is_caught_on_the_whole_batch(modes):
    """The few examples the row check runs alone all share the sort key (0): among them the sort
    changes nothing, but the whole batch, permuted, shows the sorted layer's rows stay put."""
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    x[:, 0] = 0.0
    x[[5, 12, 30, 41, 50], 0] = 1.0  # none of the evenly spread examples the check picks first
    check_fast_matches(sorting_net(), mse, (x,), torch.randn(64))
    assert modes == {"first": "global", "second": "fast"}


class _SortsWhenTrainingTuple(_SortsWhenTraining):
    def forward(self, x):
        return super().forward(x), x.sum(1)  # a tuple: still a deterministic forward


def test_a_tuple_output_is_checked_in_training_mode(modes):
    torch.manual_seed(0)
    check_fast_matches(_SortsWhenTrainingTuple(), lambda o, t: _sum_loss(o[0], t), (torch.randn(6, 4),),
                       torch.randn(6, 2))
    assert modes == {"l1": "fast", "l2": "global"}


def test_the_checks_are_cached_per_training_mode(modes):
    torch.manual_seed(0)
    model, x, y = _SortsWhenTraining().double(), torch.randn(6, 4).double(), torch.randn(6, 2).double()
    model.eval()
    per_example_grad_norms(model, _sum_loss, x, y)  # checked in evaluation mode: no reordering there
    model.train()
    check_fast_matches(model, _sum_loss, (x,), y)
    assert modes == {"l1": "fast", "l2": "global"}


class _Counts(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls += 1
        return self.lin(x).squeeze(-1)


def test_the_checks_leave_buffers_and_run_once_for_a_fresh_lambda_each_step(modes):
    torch.manual_seed(0)
    model, x, y = _Counts(), torch.randn(6, 3), torch.randn(6)
    seen = []
    model.lin.register_forward_hook(lambda *args: seen.append(1))
    for _ in range(3):
        fast.fast_norms_and_clipped_sum(model, lambda o, t: (o - t) ** 2, (x,), y)
    assert int(model.calls) == 3  # only the steps' own forward passes count
    assert len(seen) == 3 + 1 + (2 + 6 + 2 + 2) + (2 + 6 + 1)  # checked once, not on every step


def test_a_check_that_sends_every_layer_to_the_exact_path_says_so_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0))
    x, y = torch.randn(6, 3), torch.randn(6)

    def centred(out, t):
        return (out - out.mean() - t) ** 2

    with pytest.warns(RuntimeWarning, match="every layer of Sequential takes the exact") as caught:
        for _ in range(2):
            fast.fast_norms_and_clipped_sum(model, centred, (x,), y)
    assert len([w for w in caught if "every layer" in str(w.message)]) == 1


@pytest.mark.parametrize("method", ["fast", "vmap", "loop"])
def test_an_example_with_a_nan_gradient_is_left_out_not_spread(method):
    """sqrt of a squared residual has an infinite slope at 0: that example's gradient is NaN. Its clip
    factor is 0 and the sum is the others' (else one example could switch the release to NaN)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.bias.zero_()
    x, y = torch.randn(8, 3).double(), torch.randn(8).double()
    x[2], y[2] = 0.0, 0.0

    def loss(out, t):
        return ((out.squeeze(1) - t) ** 2).sqrt()

    keep = torch.arange(8) != 2
    got = clipped_grad_sum(model, loss, x, y, max_grad_norm=1.0, method=method)
    want = clipped_grad_sum(model, loss, x[keep], y[keep], max_grad_norm=1.0, method="loop")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_nan_example_under_a_padding_mask_is_left_out_too():
    """DPOptimizer.step(keep=...) reads the whole batch's mask in its clip rule: the recomputed sum
    must take the factors of the full batch, not of the finite rows alone."""
    from privlab.dpsgd import DPOptimizer

    torch.manual_seed(0)
    x, y = torch.randn(8, 3).double(), torch.randn(8).double()
    x[2], y[2] = 0.0, 0.0
    keep = torch.ones(8, dtype=torch.bool)
    keep[-1] = False  # a padding row

    def loss(out, t):
        return ((out.squeeze(1) - t) ** 2).sqrt()

    sums = []
    for rows, mask in ((torch.arange(8), keep), (torch.tensor([0, 1, 3, 4, 5, 6]), None)):
        model = nn.Linear(3, 1).double()
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[0.3, -0.2, 0.5]]))
            model.bias.zero_()
        dp = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=1.0,
                         expected_batch_size=6)
        dp.step(model, loss, x[rows], y[rows], **({} if mask is None else {"keep": mask}))
        sums.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-9, atol=1e-12)


def test_loss_keys_tell_closures_apart_and_match_fresh_lambdas():
    def per_example(fn):
        return lambda o, t: fn(o, t)

    def plain(o, t):
        return (o - t) ** 2

    def centred(o, t):
        return (o - o.mean() - t) ** 2

    assert fast._loss_key(per_example(plain)) != fast._loss_key(per_example(centred))
    assert fast._loss_key(per_example(plain)) == fast._loss_key(per_example(plain))


class _ScaledByBuffer(nn.Module):
    """A buffer the backward needs (saved by the multiplication) and a frozen BatchNorm in eval mode."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(4, 1)
        self.norm = nn.BatchNorm1d(4).eval()
        self.register_buffer("scale", torch.tensor(2.0))

    def train(self, mode=True):
        super().train(mode)
        self.norm.eval()  # frozen statistics
        return self

    def forward(self, x):
        return self.l2(self.norm(torch.tanh(self.l1(x)) * self.scale)).squeeze(-1)


def test_the_checks_leave_buffers_the_backward_needs_untouched():
    torch.manual_seed(0)
    model = _ScaledByBuffer()
    model.norm.weight.requires_grad_(False)
    model.norm.bias.requires_grad_(False)
    check_fast_matches(model, mse, (torch.randn(6, 3),), torch.randn(6))
