"""The fast path equals the per-example loop on a zoo of models, or falls back: never a silent wrong answer.

Every model runs in float64 at batch sizes 1, 2 and equal to its sequence
length; the per-example norms and the clipped sum (C = the median norm, so
some examples are clipped and some are not) of ``method="fast"`` must equal
those of ``method="loop"`` to 1e-6 relative. The first tests are the
regressions for the two defects of the old fast path (issue 13, defects 1 and
2): parameters used outside their module's forward call got no gradient, and
the batch dimension was guessed from shapes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from privlab.dpsgd import DPOptimizer, clip_factors, clipped_grad_sum, clipped_grad_sum_with_stats, fast, lm_loss

# torch's GRU/LSTM cannot be vmapped: their global fallback is the per-example loop, with this warning
pytestmark = pytest.mark.filterwarnings("ignore:fast path. vmap failed:RuntimeWarning")

T = 5  # sequence length of the sequence models; batch size T is the case the old path mixed up
RTOL = 1e-6


@pytest.fixture
def modes(monkeypatch):
    """Per module name, the path ('fast', 'local', 'global') each used module took in the last call."""
    seen = {}

    def spy(modes, reasons):
        seen.clear()
        seen.update({name: mode for name, mode in modes.items() if mode != "unused"})

    monkeypatch.setattr(fast, "_report_modes", spy)
    return seen


def _run(model, loss_fn, inputs, targets, method, scale=None):
    """Norms and clipped sum, with C = the median norm (half the norm for a single example)."""
    def factors(norms):
        c = float(norms.median()) * (0.5 if norms.numel() == 1 else 1.0) if scale is None else scale
        return clip_factors(norms, max_grad_norm=c)

    out = clipped_grad_sum_with_stats(model, loss_fn, inputs, targets, factors_fn=factors, method=method)
    return out.norms, out.grads, [n for n, p in model.named_parameters() if p.requires_grad]


def check_matches_loop(model, loss_fn, inputs, targets, rtol=RTOL):
    norms_f, sums_f, names = _run(model, loss_fn, inputs, targets, "fast")
    norms_l, sums_l, _ = _run(model, loss_fn, inputs, targets, "loop")
    assert ((norms_f - norms_l).abs() <= rtol * norms_l + 1e-12).all(), (norms_f, norms_l)
    for name, a, b in zip(names, sums_f, sums_l):
        assert (a - b).norm() <= rtol * b.norm() + 1e-12, f"{name}: relative error {(a - b).norm() / b.norm():.2e}"


def mse(out, t):
    return ((out - t) ** 2).reshape(out.shape[0], -1).sum(1)


def ce_seq(out, t):  # (B, T, V) logits, (B, T) ids
    return F.cross_entropy(out.transpose(1, 2), t, reduction="none").sum(1)


# --- regressions for defects 1 and 2 ----------------------------------------------------------


def test_transformer_layer_out_proj_gets_its_gradient(modes):
    """Defect 1: nn.MultiheadAttention uses out_proj.weight without calling out_proj: it got zero."""
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0).double()
    x, y = torch.randn(4, T, 8, dtype=torch.float64), torch.randn(4, T, 8, dtype=torch.float64)
    check_matches_loop(model, mse, x, y)
    assert modes["self_attn.out_proj"] == "global" and modes["linear1"] == "fast"


class FunctionalUse(nn.Module):
    """Parameters used outside their own module's forward: an output layer tied functionally, a parent
    reading a child's bias, and a child whose parameters are only ever read by its parent."""

    def __init__(self, vocab=7, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lin = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, 1)  # never called: its weight is read directly
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids):
        h = torch.tanh(self.norm(self.lin(self.emb(ids))))
        h = h * torch.sigmoid(h @ self.gate.weight.t()) + self.lin.bias
        return F.linear(h, self.emb.weight)


@pytest.mark.parametrize("batch", [1, 2, T])
def test_parameters_used_functionally_by_a_parent(modes, batch):
    torch.manual_seed(1)
    model = FunctionalUse().double()
    ids, t = torch.randint(0, 7, (batch, T)), torch.randint(0, 7, (batch, T))
    check_matches_loop(model, ce_seq, ids, t)
    if batch > 1:
        assert modes == {"emb": "global", "lin": "global", "gate": "global", "norm": "fast"}


class Escape(nn.Module):
    """A tensor computed from the layer's parameters leaves the call by an attribute, not the output."""

    def __init__(self):
        super().__init__()
        self.inner = Scaled(4)
        self.out = nn.Linear(4, 1)

    def forward(self, x):
        h = self.inner(x)
        return self.out(h * self.inner.side)


class Scaled(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x):
        self.side = torch.exp(self.w)  # used by the parent after the call
        return torch.tanh(x * self.w)


def test_tensor_escaping_a_call_falls_back(modes):
    torch.manual_seed(2)
    model = Escape().double()
    check_matches_loop(model, mse, torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64))
    assert modes == {"inner": "global", "out": "fast"}


class SeqFirst(nn.Module):
    """Batch-first inputs, a sequence-first (T, B, d) layer inside (the default layout of torch's attention)."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.head = layer, nn.Linear(8, 1)

    def forward(self, x):
        h = x.transpose(0, 1)
        h = self.layer(h, h, h) if isinstance(self.layer, nn.MultiheadAttention) else self.layer(h)
        h = h[0] if isinstance(h, tuple) else h
        return self.head(h.transpose(0, 1)).squeeze(-1).mean(1)


def test_sequence_first_batch_equal_to_length_clips_examples_not_time_steps(modes):
    """Defect 2: with B == T, the (T, B, d) activations passed the shape test and time steps were clipped."""
    torch.manual_seed(3)
    model = SeqFirst(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)).double()
    x, y = torch.randn(T, T, 8, dtype=torch.float64), torch.randn(T, dtype=torch.float64)
    check_matches_loop(model, lambda o, t: (o - t) ** 2, x, y)
    assert modes["layer.linear1"] == "global" and modes["head"] == "fast"
    # the sensitivity: removing one example moves the clipped sum by at most C
    c = 0.1
    full = clipped_grad_sum(model, lambda o, t: (o - t) ** 2, x, y, max_grad_norm=c)
    for i in range(T):
        keep = [j for j in range(T) if j != i]
        sub = clipped_grad_sum(model, lambda o, t: (o - t) ** 2, x[keep], y[keep], max_grad_norm=c)
        move = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(full, sub)))
        assert move <= c * (1 + 1e-9)


class PositionEmbedding(nn.Module):
    """A learned position embedding looked up with (1, T) ids and broadcast over the batch, as in GPT-2."""

    def __init__(self, combine="add"):
        super().__init__()
        self.tok, self.pos, self.head, self.combine = nn.Embedding(7, 4), nn.Embedding(T, 4), nn.Linear(4, 7), combine

    def forward(self, ids):
        pos = self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        h = self.tok(ids) + pos if self.combine == "add" else self.tok(ids) * pos
        return self.head(torch.tanh(h))


@pytest.mark.parametrize("combine,expected", [("add", "fast"), ("mul", "global")])
def test_position_embedding_broadcast_over_the_batch(modes, combine, expected):
    torch.manual_seed(5)
    model = PositionEmbedding(combine).double()
    check_matches_loop(model, ce_seq, *_ids(T))
    assert modes == {"tok": "fast", "pos": expected, "head": "fast"}


# --- the zoo -------------------------------------------------------------------------------------


class Pick(nn.Module):
    """The first output of a module returning a tuple (attention, recurrent layers)."""

    def __init__(self, layer, head_dim):
        super().__init__()
        self.layer, self.head = layer, nn.Linear(head_dim, 2)

    def forward(self, x):
        out = self.layer(x, x, x) if isinstance(self.layer, nn.MultiheadAttention) else self.layer(x)
        return self.head(out[0])


class Tied(nn.Module):
    def __init__(self, vocab=7, dim=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))


def _seq(batch, d=8):
    return torch.randn(batch, T, d, dtype=torch.float64), torch.randn(batch, T, 2, dtype=torch.float64)


def _ids(batch, vocab=7):
    ids = torch.randint(0, vocab, (batch, T))
    ids[:, 1] = ids[:, 0]  # a repeated id in every example
    return ids, torch.randint(0, vocab, (batch, T))


ZOO = {
    "mlp": lambda: (nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)),
                    lambda b: (torch.randn(b, 3, dtype=torch.float64), torch.randn(b, 2, dtype=torch.float64)), mse),
    "norms": lambda: (nn.Sequential(nn.Conv1d(2, 4, 1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * T, 6),
                                    nn.LayerNorm(6), nn.Linear(6, 6), nn.RMSNorm(6), nn.Linear(6, 2)),
                      lambda b: (torch.randn(b, 2, T, dtype=torch.float64), torch.randn(b, 2, dtype=torch.float64)),
                      mse),
    "embedding": lambda: (nn.Sequential(nn.Embedding(7, 4, padding_idx=2), nn.Linear(4, 7)), _ids, ce_seq),
    "tied": lambda: (Tied(), _ids, ce_seq),
    "conv1d": lambda: (nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * T, 2)),
                       lambda b: (torch.randn(b, 2, T, dtype=torch.float64), torch.randn(b, 2, dtype=torch.float64)),
                       mse),
    "conv2d": lambda: (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * T * T, 2)),
                       lambda b: (torch.randn(b, 1, T, T, dtype=torch.float64), torch.randn(b, 2, dtype=torch.float64)),
                       mse),
    "mha_batch_first": lambda: (Pick(nn.MultiheadAttention(8, 2, batch_first=True), 8), _seq, mse),
    "mha_seq_first": lambda: (SeqFirst(nn.MultiheadAttention(8, 2)),
                              lambda b: (torch.randn(b, T, 8, dtype=torch.float64), torch.randn(b, dtype=torch.float64)),
                              lambda o, t: (o - t) ** 2),
    "encoder_batch_first": lambda: (nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                                                  nn.Linear(8, 2)), _seq, mse),
    "encoder_seq_first": lambda: (SeqFirst(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)),
                                  lambda b: (torch.randn(b, T, 8, dtype=torch.float64),
                                             torch.randn(b, dtype=torch.float64)),
                                  lambda o, t: (o - t) ** 2),
    "gru": lambda: (Pick(nn.GRU(8, 3, batch_first=True), 3), _seq, mse),
    "lstm_seq_first": lambda: (SeqFirst(nn.Sequential(nn.LSTM(8, 8))),
                               lambda b: (torch.randn(b, T, 8, dtype=torch.float64),
                                          torch.randn(b, dtype=torch.float64)),
                               lambda o, t: (o - t) ** 2),
    "functional_parent": lambda: (FunctionalUse(), _ids, ce_seq),
}


@pytest.mark.parametrize("batch", [1, 2, T])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_fast_equals_loop(name, batch):
    torch.manual_seed(10 + batch)
    model, data, loss_fn = ZOO[name]()
    model = model.double()
    x, y = data(batch)
    check_matches_loop(model, loss_fn, x, y)


# --- transformers models, built from configurations (nothing downloaded) ------------------------


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).double()


def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config).double()


def _tokens(batch, seq=T, vocab=50):
    ids = torch.randint(0, vocab, (batch, seq))
    return ids, ids.clone()


@pytest.mark.parametrize("batch", [1, 2, T])
@pytest.mark.parametrize("make", [_tiny_gpt2, _tiny_llama], ids=["gpt2", "llama"])
def test_tiny_language_models(modes, make, batch):
    torch.manual_seed(20 + batch)
    model = make()
    check_matches_loop(model, lm_loss, *_tokens(batch))
    if batch == 1:
        return
    if make is _tiny_llama:  # every layer on a rule, LlamaRMSNorm included
        assert set(modes.values()) == {"fast"}, modes
    else:  # Conv1D on its rule, wte tied to lm_head, the (1, T) position embedding broadcast over the batch
        assert set(modes.values()) == {"fast"}, modes


class FakeConv1D(nn.Module):
    """Named like transformers' Conv1D, but computing something else: its rule must not be trusted."""

    def __init__(self, nx, nf):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x):
        return x @ self.weight + 2 * self.bias


FakeConv1D.__module__, FakeConv1D.__qualname__ = "transformers.pytorch_utils", "Conv1D"


def test_library_rule_is_verified_against_the_forward(modes):
    torch.manual_seed(40)
    model = nn.Sequential(FakeConv1D(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x, y = _seq(T, d=4)
    check_matches_loop(model, mse, x, y)
    assert modes == {"0": "local", "2": "fast"}


def test_lora_gpt2_adapters_only():
    peft = pytest.importorskip("peft")
    torch.manual_seed(30)
    base = _tiny_gpt2()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                             lora_dropout=0.0)
    model = peft.get_peft_model(base, config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # lora_B starts at zero; give it a value so lora_A gets a gradient too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids, labels = _tokens(T)
    check_matches_loop(model, lm_loss, ids, labels)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = DPOptimizer(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1),
                      noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=T,
                      generator=torch.Generator().manual_seed(0))
    opt.step(model, lm_loss, ids, labels)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, lora[n]), n
        else:
            assert p.grad is None and torch.equal(p, frozen[n]), n
