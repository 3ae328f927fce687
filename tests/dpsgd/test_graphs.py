"""Padded batches for CUDA graphs: the ``keep`` mask of DPOptimizer.step and the graph step's checks.

The graph itself needs a GPU (tests/dpsgd/test_cuda.py); what it relies on is checked here on the
CPU: a step on a batch padded with ``keep=False`` rows is the step on the unpadded batch (private,
with a planted no-clipping bug too, and non-private), and the configuration refuses what a graph
cannot replay.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from privlab.audit import NoClipOptimizer
from privlab.dpsgd import CUDAGraphStep, DPOptimizer, DPSGDConfig, graph_capacity, train


def _ce(out, t):
    return nn.functional.cross_entropy(out, t, reduction="none")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data(n=10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _padded(x, y, pad):
    """The batch with ``pad`` copies of its first row appended, and the mask that marks them."""
    rows = torch.cat([torch.arange(x.shape[0]), torch.zeros(pad, dtype=torch.long)])
    keep = torch.arange(rows.numel()) < x.shape[0]
    return x[rows], y[rows], keep


@pytest.mark.parametrize("cls, sigma, clip", [(DPOptimizer, 1.0, 0.3), (NoClipOptimizer, 1.0, 0.3),
                                              (DPOptimizer, 0.0, None)],
                         ids=["private", "planted-no-clip", "non-private"])
def test_padded_step_equals_the_unpadded_step(cls, sigma, clip):
    x, y = _data()
    xp, yp, keep = _padded(x, y, pad=6)
    results = []
    for xb, yb, k in [(x, y, None), (xp, yp, keep)]:
        model = _model()
        dp = cls(torch.optim.SGD(model.parameters(), lr=0.5), noise_multiplier=sigma, max_grad_norm=clip,
                 expected_batch_size=10.0, generator=torch.Generator().manual_seed(3))
        stats = dp.step(model, _ce, xb, yb, keep=k)
        results.append(([p.detach().clone() for p in model.parameters()], stats.loss_sum))
    (plain, loss_plain), (padded, loss_padded) = results
    for a, b in zip(plain, padded):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_plain, loss_padded, rtol=1e-12, atol=1e-12)


def test_all_padding_moves_parameters_by_noise_only():
    x, y = _data()
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    dp = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=1.0,
                     expected_batch_size=10.0)
    stats = dp.step(model, _ce, x, y, keep=torch.zeros(10, dtype=torch.bool))
    assert stats.loss_sum.item() == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # sigma 0: nothing moves


@pytest.mark.parametrize("keep", [torch.ones(10), torch.ones(9, dtype=torch.bool), [True] * 10],
                         ids=["float", "short", "list"])
def test_keep_must_be_a_bool_mask_of_the_batch(keep):
    x, y = _data()
    dp = DPOptimizer(torch.optim.SGD(_model().parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=1.0,
                     expected_batch_size=10.0)
    with pytest.raises(ValueError, match=r"keep must be a bool tensor of shape \(10,\)"):
        dp.step(_model(), _ce, x, y, keep=keep)


def test_graph_capacity_covers_poisson_batches():
    n, q = 100_000, 0.01
    k = graph_capacity(n, q)
    assert k % 64 == 0 and k >= n * q + 6 * (n * q * (1 - q)) ** 0.5
    sizes = torch.distributions.Binomial(n, torch.tensor(q)).sample((10_000,))
    assert (sizes <= k).all()
    assert graph_capacity(50, 0.9) == 50  # never above N


def test_graph_step_needs_cuda_data():
    model = _model()
    dp = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=1.0,
                     expected_batch_size=4.0)
    x, y = _data()
    with pytest.raises(ValueError, match=r"CUDAGraphStep needs all data on one CUDA device, got \['cpu'\]"):
        CUDAGraphStep(dp, model, _ce, (x,), y, capacity=8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="vmap"), r"cuda_graph=True needs method = 'fast', got 'vmap'"),
    (dict(compile=True), r"cuda_graph=True needs compile = False, got True"),
    (dict(optimizer=lambda p: torch.optim.SGD(p, lr=0.1)), r"cuda_graph=True needs optimizer = \('sgd', 'adam'\)"),
])
def test_config_refuses_what_a_graph_cannot_replay(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=4, cuda_graph=True, **kwargs)


def test_train_with_cuda_graph_on_the_cpu_is_refused_naming_the_device():
    x, y = _data()
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=4, cuda_graph=True, progress=False,
                      accountant=None)
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device, got cpu"):
        train(copy.deepcopy(_model()), x, y, loss_fn=_ce, config=cfg, generator=torch.Generator().manual_seed(0))


def test_adam_under_cuda_graph_is_capturable():
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=4, cuda_graph=True, optimizer="adam")
    assert cfg.make_optimizer(_model().parameters()).defaults["capturable"] is True


# -- the graph step's logic on the CPU: _EagerEngine runs the recorded step again at each "replay" --


@pytest.fixture
def eager_engine(monkeypatch):
    from privlab.dpsgd import graphs

    monkeypatch.setattr(graphs.CUDAGraphStep, "engine", graphs._EagerEngine)


def test_graph_step_logic_replays_the_eager_step(eager_engine):
    """Padding, the warm-up (three real steps, momentum state included) and its undoing, the noise
    generator's restored state: after four padded "replays" the model is the eagerly stepped one."""
    pair = []
    for _ in range(2):
        model = _model()
        dp = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), noise_multiplier=1.0,
                         max_grad_norm=0.3, expected_batch_size=20.0, generator=torch.Generator().manual_seed(5))
        pair.append((model, dp))
    step = assert_graph_replays_eager(*pair, features=4, device=torch.device("cpu"))
    assert step(torch.arange(0)) is None and step(torch.arange(step.capacity + 1) % 200) is None


def assert_graph_replays_eager(eager, graphed, *, features: int, device) -> CUDAGraphStep:
    """Four Poisson batches of 200 rows at q = 0.1, stepped eagerly by ``eager = (model, dp)`` and
    replayed by a CUDAGraphStep over ``graphed``, models and noise generators alike at the start:
    the same losses, norms and parameters after each. Returns the graph step (test_cuda.py calls
    it on a GPU)."""
    from privlab.dpsgd import PoissonSampler

    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, features, generator=g, dtype=torch.float64).to(device)
    y = torch.randint(0, 3, (200,), generator=g).to(device)
    batches = list(PoissonSampler(200, sample_rate=0.1, generator=torch.Generator().manual_seed(1), steps=4))
    (m_eager, dp_eager), (m_graph, dp_graph) = eager, graphed
    step = CUDAGraphStep(dp_graph, m_graph, _ce, (X,), y, capacity=graph_capacity(200, 0.1))
    assert step.capacity > max(b.numel() for b in batches)  # every batch padded, none stepped eagerly
    for idx in batches:
        i = idx.to(device)
        stats_eager = dp_eager.step(m_eager, _ce, X[i], y[i])
        stats = step(idx)
        torch.testing.assert_close(stats.loss_sum, stats_eager.loss_sum, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(stats.norms, stats_eager.norms, rtol=1e-10, atol=1e-12)
    assert step.replays == len(batches)
    for a, b in zip(m_graph.parameters(), m_eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)  # the same noise draws, the same updates
    return step


def test_train_with_the_graph_step_logic_equals_eager_train(eager_engine):
    assert_graphed_train_equals_eager(_model, n=300, features=4, batch_size=30, lr=0.1)


def assert_graphed_train_equals_eager(make_model, *, n: int, features: int, **config):
    """train() with and without cuda_graph on the same data, seeds and config: the same run (losses,
    per-example norms, epsilons). tests/dpsgd/test_cuda.py calls it on a GPU."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    runs = []
    for graph in (False, True):
        cfg = DPSGDConfig(noise_multiplier=0.8, max_grad_norm=1.0, epochs=3, progress=False, cuda_graph=graph,
                          record_grad_norms=True, **config)
        runs.append(train(make_model(), X, y, loss_fn=_ce, config=cfg, generator=torch.Generator().manual_seed(1)))
    eager, graphed = runs
    assert graphed.epsilons == eager.epsilons and graphed.steps == eager.steps
    assert graphed.losses == pytest.approx(eager.losses, rel=1e-9)
    assert graphed.grad_norms.shape == eager.grad_norms.shape
    assert graphed.grad_norms == pytest.approx(eager.grad_norms, rel=1e-8)  # cloned before the next replay
    assert graphed.losses[-1] < graphed.losses[0]


# -- a non-finite example inside a captured graph (a red-team finding: it made the whole release NaN) --


class _SeqModel(nn.Module):
    """Embedding ids plus projected features over T = 3 positions, LayerNorm, a mean over time and a head:
    the 3-D Linear, LayerNorm, Embedding and 2-D Linear rules all meet the non-finite row."""

    def __init__(self):
        super().__init__()
        self.emb, self.proj = nn.Embedding(5, 6), nn.Linear(4, 6)
        self.norm, self.head = nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, ids, x):
        return self.head(self.norm(self.emb(ids) + self.proj(x)).mean(1))


@pytest.mark.parametrize("method", ["fast", "vmap", "loop"])
@pytest.mark.parametrize("kind", ["mlp", "sequence", "single"])
def test_a_non_finite_example_is_left_out_without_synchronising(monkeypatch, method, kind):
    """While a graph is captured the kernel cannot check the norms on the host and sum again; the rows
    of an example whose clip factor is 0 are zeroed in every weighted sum instead: the clipped sum is
    finite and equals the sum over the other examples (each clipped exactly as before)."""
    from privlab.dpsgd import clip_factors, clipped_grad_sum_with_stats, rules

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    if kind == "single":  # a batch of one takes its own path (a review found it still NaN there)
        model, xs = _model(), (torch.randn(1, 4, generator=g, dtype=torch.float64),)
        y = torch.randint(0, 3, (1,), generator=g)
        bad = (xs[0].clone(),)
        bad[0][0, 0] = float("inf")
        monkeypatch.setattr(rules, "capturing", lambda: True)
        out = clipped_grad_sum_with_stats(model, _ce, bad, y, factors_fn=lambda n: clip_factors(n, max_grad_norm=0.5),
                                          method=method)
        assert all(torch.equal(g, torch.zeros_like(g)) for g in out.grads)
        return
    if kind == "mlp":
        model, xs = _model(), (torch.randn(6, 4, generator=g, dtype=torch.float64),)
    else:
        model = _SeqModel().double()
        xs = (torch.randint(0, 5, (6, 3), generator=g), torch.randn(6, 3, 4, generator=g, dtype=torch.float64))
    y = torch.randint(0, 3, (6,), generator=g)
    bad = tuple(x.clone() for x in xs)
    bad[-1][2].view(-1)[0] = float("inf")  # example 2 has an infinite feature
    keep = torch.arange(6) != 2
    factors = lambda n: clip_factors(n, max_grad_norm=0.5)  # noqa: E731
    others = clipped_grad_sum_with_stats(model, _ce, tuple(x[keep] for x in xs), y[keep], factors_fn=factors,
                                         method=method).grads
    monkeypatch.setattr(rules, "capturing", lambda: True)  # what every kernel of a captured step sees
    out = clipped_grad_sum_with_stats(model, _ce, bad, y, factors_fn=factors, method=method)
    assert not torch.isfinite(out.norms[2]) and torch.isfinite(out.norms[keep]).all()
    for got, want in zip(out.grads, others, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_graphed_train_on_data_with_a_non_finite_row_stays_finite(eager_engine, monkeypatch):
    """The red team's reproducer: one record with an infinite feature made every replayed step NaN, so
    whether the model came out NaN said whether that record was in the data."""
    from privlab.dpsgd import rules

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(200, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (200,), generator=g)
    X[17, 0] = float("inf")
    monkeypatch.setattr(rules, "capturing", lambda: True)
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=20, epochs=2, accountant=None,
                      progress=False, cuda_graph=True)
    model = _model()
    train(model, X, y, loss_fn=_ce, config=cfg, generator=torch.Generator().manual_seed(1))
    assert all(torch.isfinite(p).all() for p in model.parameters())
