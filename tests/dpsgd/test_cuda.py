"""The DP-SGD fast path on a CUDA device: the same answers as the per-example loop, the noise drawn there.

Skipped without a CUDA GPU (CI has none); run where one is lent::

    pytest tests/dpsgd/test_cuda.py

Every check runs in float64 on the GPU, so the tolerance is the zoo's (1e-6 relative): the
fast path's rules, fallbacks and graph checks must give what the loop gives on the same device.
The training loop, the noise generator's device check and ``compile=True`` (``torch.compile`` of
the model under the fast path, which CPU tests never run because inductor takes about 20 s to
compile there) are checked too.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
from torch import nn

from privlab.dpsgd import DPOptimizer, DPSGDConfig, clipped_grad_sum, lm_loss, per_example_grad_norms, train

# the zoo's models and checker, loaded from the file beside this one (tests/ is not a package)
_spec = importlib.util.spec_from_file_location("privlab_tests_zoo", pathlib.Path(__file__).with_name("test_zoo.py"))
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)
ZOO, check_matches_loop = zoo.ZOO, zoo.check_matches_loop
_spec = importlib.util.spec_from_file_location("privlab_tests_graphs", pathlib.Path(__file__).with_name("test_graphs.py"))
graphs_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(graphs_tests)

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("ignore:fast path. vmap failed:RuntimeWarning"),
]

CUDA = torch.device("cuda")


def _to(x):
    return x.to(CUDA) if isinstance(x, torch.Tensor) else x


modes = zoo.modes  # the fixture: per module name, the path it took in the last fast-path call


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_fast_equals_loop_on_cuda_by_the_same_paths_as_on_cpu(name, modes):
    torch.manual_seed(11)
    model, data, loss_fn = ZOO[name]()
    model = model.double()
    x, y = data(5)
    per_example_grad_norms(model, loss_fn, x, y)  # on the CPU first: the paths taken there
    on_cpu = dict(modes)
    check_matches_loop(model.to(CUDA), loss_fn, _to(x), _to(y))
    assert modes == on_cpu  # the rules, local and global fallbacks chosen alike on the GPU


@pytest.mark.parametrize("make", [zoo._tiny_gpt2, zoo._tiny_llama], ids=["gpt2", "llama"])
def test_tiny_language_models_on_cuda(make, modes):
    torch.manual_seed(21)
    ids, labels = zoo._tokens(4)
    check_matches_loop(make().to(CUDA), lm_loss, ids.to(CUDA), labels.to(CUDA))
    assert modes and set(modes.values()) == {"fast"}, modes  # every layer on a rule


def test_lora_adapters_on_cuda(modes):
    peft = pytest.importorskip("peft")
    torch.manual_seed(31)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                             lora_dropout=0.0)
    model = peft.get_peft_model(zoo._tiny_gpt2(), config).to(CUDA)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids, labels = zoo._tokens(4)
    check_matches_loop(model, lm_loss, ids.to(CUDA), labels.to(CUDA))
    assert modes and set(modes.values()) == {"fast"}, modes


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)).double()


def _ce(out, t):
    return nn.functional.cross_entropy(out, t, reduction="none")


def test_noise_is_drawn_on_the_device_with_its_scale_and_a_cpu_generator_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 100), nn.ReLU(), nn.Linear(100, 40)).double().to(CUDA)  # 9,140 params
    x, y = torch.randn(6, 50, dtype=torch.float64, device=CUDA), torch.randint(0, 40, (6,), device=CUDA)
    sigma, clip, batch = 2.0, 0.5, 6.0
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=sigma, max_grad_norm=clip,
                      expected_batch_size=batch, generator=torch.Generator(device=CUDA).manual_seed(0))
    clipped = clipped_grad_sum(model, _ce, x, y, max_grad_norm=clip, method="loop")
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(model, _ce, x, y)
    # lr 1: the update is (clipped sum + N(0, sigma^2 C^2)) / B, so the noise is B (before - after) - sum
    noise = torch.cat([(batch * (b - p.detach()) - g).reshape(-1)
                       for p, b, g in zip(model.parameters(), before, clipped)])
    assert all(p.device.type == "cuda" for p in model.parameters())
    n = noise.numel()
    assert abs(noise.std().item() / (sigma * clip) - 1) < 5 / (2 * n) ** 0.5  # 5 se of a sample sd
    assert abs(noise.mean().item()) < 5 * sigma * clip / n ** 0.5
    cpu = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0,
                      expected_batch_size=6.0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="noise generator must live on the parameters' device"):
        cpu.step(model, _ce, x, y)


def test_train_on_cuda_is_deterministic_and_trains():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # learnable labels
    cfg = DPSGDConfig(noise_multiplier=0.5, max_grad_norm=1.0, batch_size=50, epochs=8, lr=0.5,
                      device="cuda", progress=False)
    runs = [train(_mlp(), X, y, loss_fn=_ce, config=cfg, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    assert runs[0].losses[-1] < runs[0].losses[0]


def test_compiled_model_gives_the_fast_path_the_same_clipped_sum(modes):
    model = _mlp().to(CUDA)
    x, y = torch.randn(8, 5, dtype=torch.float64, device=CUDA), torch.randint(0, 3, (8,), device=CUDA)
    eager = clipped_grad_sum(model, _ce, x, y, max_grad_norm=0.5, method="loop")
    compiled = clipped_grad_sum(torch.compile(model, dynamic=True), _ce, x, y, max_grad_norm=0.5, method="fast")
    for a, b in zip(compiled, eager):
        assert (a - b).norm() <= 1e-6 * b.norm()
    assert modes and set(modes.values()) == {"fast"}, modes  # the rules ran under compile too


# -- CUDA graphs: padded Poisson batches replayed (privlab.dpsgd.graphs) ----------------------------


def _graph_pair(sigma):
    """An eager and a graphed DP optimizer on identical models, noise generators seeded alike."""
    pair = []
    for _ in range(2):
        model = _mlp().to(CUDA)
        dp = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), noise_multiplier=sigma, max_grad_norm=0.5,
                         expected_batch_size=20.0, generator=torch.Generator(device=CUDA).manual_seed(5))
        pair.append((model, dp))
    return pair


@pytest.mark.parametrize("sigma", [0.0, 1.0], ids=["clipped-sum", "with-noise"])
def test_graph_replays_the_eager_step_on_padded_batches(sigma):
    graphs_tests.assert_graph_replays_eager(*_graph_pair(sigma), features=5, device=CUDA)


def test_graph_hands_empty_and_oversized_batches_back_without_capturing():
    from privlab.dpsgd import CUDAGraphStep

    X, y = torch.randn(50, 5, dtype=torch.float64, device=CUDA), torch.randint(0, 3, (50,), device=CUDA)
    (model, dp), _ = _graph_pair(1.0)
    graphed = CUDAGraphStep(dp, model, _ce, (X,), y, capacity=8)
    assert graphed(torch.arange(9)) is None and graphed(torch.arange(0)) is None
    assert graphed.replays == 0 and graphed._graph is None


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_with_cuda_graph_equals_eager_train(optimizer):
    graphs_tests.assert_graphed_train_equals_eager(_mlp, n=400, features=5, batch_size=40, lr=0.05,
                                                   optimizer=optimizer, device="cuda")


def test_train_with_cuda_graph_and_dropout_is_deterministic_and_trains():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 5, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    cfg = DPSGDConfig(noise_multiplier=0.8, max_grad_norm=1.0, batch_size=40, epochs=4, lr=0.3,
                      device="cuda", progress=False, cuda_graph=True)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))

    runs = [train(model(), X, y, loss_fn=_ce, config=cfg, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    assert runs[0].losses[-1] < runs[0].losses[0]
