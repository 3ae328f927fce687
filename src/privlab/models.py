r"""Models the chapters train: the StreamRec click predictor and a small MLP factory.

Both are plain ``torch.nn`` modules built only from layers DP-SGD handles
per example (Linear, LayerNorm, ReLU, Dropout): no BatchNorm, whose batch
statistics mix examples and break per-example gradients (Opacus's
``ModuleValidator`` refuses it; chapter 8).

>>> import torch
>>> model = StreamRecClickPredictor()
>>> model(torch.zeros(8, 40)).shape
torch.Size([8])
>>> sum(p.numel() for p in MLP(10, 64, 5).parameters())   # the privacy-cliff MLP
1029

References: Abadi et al. (2016), arXiv:1607.00133 (DP-SGD); Ba, Kiros and
Hinton (2016), arXiv:1607.06450 (LayerNorm); Yousefpour et al. (2021),
arXiv:2109.12298 (Opacus).

Used in: chapters 6, 7, 8, 11, 12, 13.
"""

from __future__ import annotations

from contextlib import contextmanager

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from privlab._validate import check_int, check_probability

__all__ = ["MLP", "BatchSortingMLP", "StreamRecClickPredictor", "count_parameters"]


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``.

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _hidden_sizes(hidden: int | Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(hidden) if isinstance(hidden, Sequence) else (hidden,)
    return tuple(check_int(f"hidden[{i}]", h, minimum=1) for i, h in enumerate(sizes))


class StreamRecClickPredictor(nn.Module):
    r"""The StreamRec click-prediction MLP: 40 features in, one click logit out.

    .. math::
        h_0 = x, \qquad
        h_\ell = \mathrm{Dropout}_p\bigl(\mathrm{ReLU}(\mathrm{LN}(W_\ell h_{\ell-1} + b_\ell))\bigr),
        \qquad z = w^\top h_L + c, \qquad \Pr[\text{click}] = \sigma(z),

    with hidden sizes 128, 64, 32 (the published architecture, BatchNorm
    replaced by LayerNorm: COURSE.md, "Recurring example"). With the defaults it
    has 16,065 parameters.

    Args:
        n_features: input width (20 user + 20 item features).
        hidden: hidden sizes of the Linear-LayerNorm-ReLU-Dropout blocks.
        dropout: :math:`p`, the dropout probability in each block (0 disables it).

    Raises:
        ValueError: non-positive sizes, ``dropout`` outside [0, 1).

    Shapes: ``forward(x)`` takes ``x`` of shape ``(B, n_features)`` and returns
    logits of shape ``(B,)``; train with
    ``nn.BCEWithLogitsLoss(reduction="none")(logits, y)`` for per-example losses.

    >>> model = StreamRecClickPredictor()
    >>> count_parameters(model)
    16065
    >>> model(torch.randn(3, 40)).shape
    torch.Size([3])

    Used in: chapters 8, 13.
    """

    def __init__(self, n_features: int = 40, hidden: int | Sequence[int] = (128, 64, 32), *,
                 dropout: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        n_features = check_int("n_features", n_features, minimum=1)
        sizes = _hidden_sizes(hidden)
        dropout = check_probability("dropout", dropout, open_low=False, open_high=True)
        blocks: list[nn.Module] = []
        width = n_features
        for h in sizes:
            blocks += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.n_features = n_features
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, n_features) -> features: (B, hidden[-1]) -> head: (B, 1) -> logits: (B,)
        # The trailing dimension is squeezed on purpose: with (B, 1) logits, a per-example
        # loss is (B, 1), and Opacus 1.6's ghost clipping multiplies it by (B,) clip factors,
        # which broadcasts to (B, B) and silently skips per-example clipping (chapter 8).
        # squeeze(-1), not squeeze(): a batch of one stays (1,), not a 0-d tensor.
        return self.head(self.features(x)).squeeze(-1)


class MLP(nn.Sequential):
    r"""A plain multilayer perceptron: Linear-ReLU blocks, then a Linear output layer.

    .. math:: f(x) = W_{L+1}\,\mathrm{ReLU}(\cdots \mathrm{ReLU}(W_1 x + b_1) \cdots) + b_{L+1}

    It has :math:`\sum_\ell (d_{\ell-1} + 1)\, d_\ell` parameters; the
    privacy-cliff reproduction's 10-64-5 network has
    :math:`(10+1)\cdot 64 + (64+1)\cdot 5 = 1{,}029` (COURSE.md, its chapter 6; chapter 7 here).

    Args:
        in_features: :math:`d_0`.
        hidden: one hidden width or a sequence of them.
        out_features: :math:`d_{L+1}` (class logits; the output keeps shape
            ``(B, out_features)``, use cross-entropy for classes).
        activation: the non-linearity class (default :class:`torch.nn.ReLU`).

    Raises:
        ValueError: non-positive sizes.

    >>> net = MLP(10, 64, 5)
    >>> count_parameters(net)
    1029
    >>> net(torch.zeros(4, 10)).shape
    torch.Size([4, 5])
    >>> count_parameters(MLP(10, [32, 16], 2))
    914

    Used in: chapters 6, 7, 11, 12.
    """

    def __init__(self, in_features: int, hidden: int | Sequence[int], out_features: int, *,
                 activation: type[nn.Module] = nn.ReLU) -> None:  # fmt: skip
        width = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        layers: list[nn.Module] = []
        for h in _hidden_sizes(hidden):
            layers += [nn.Linear(width, h), activation()]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


class BatchSortingMLP(nn.Module):
    r"""A two-layer network that sorts its batch by the first feature before the first layer and
    restores the order after it: :math:`f(x)_i = w_2^\top \tanh(W_1 x_i + b_1) + b_2`.

    Every example's output depends on that example alone (the sort is undone), so per-example
    gradients are well defined and the loop computes them. But inside, row :math:`i` of the first
    layer's input is *not* example :math:`i` (sorting sequences by length before packing them does
    the same). Per-layer hooks that read row :math:`i` of a layer as example :math:`i`'s, as
    Opacus's ``GradSampleModule`` does, attribute that layer's gradients to the wrong examples,
    silently (chapter 8); privlab's fast path checks rows by value and takes its exact path there.

    >>> net = BatchSortingMLP(3, 4)
    >>> x = torch.randn(5, 3)
    >>> bool(torch.allclose(net(x)[2:3], net(x[2:3])))   # each output is its example's alone
    True

    Used in: chapter 8.
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.first = nn.Linear(check_int("in_features", in_features, minimum=1), check_int("hidden", hidden, minimum=1))
        self.second = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        order = torch.argsort(x[:, 0])
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order), device=x.device)
        return self.second(torch.tanh(self.first(x[order]))[back]).squeeze(-1)


@contextmanager
def seeded(seed: int):
    """Build modules with reproducible initial weights without touching the global torch RNG.

    PyTorch layers draw their initial weights from the global generator; inside this block they
    draw from a forked one seeded with ``seed``, and the caller's state is restored afterwards.

    >>> with seeded(0):
    ...     a = nn.Linear(3, 1)
    >>> with seeded(0):
    ...     b = nn.Linear(3, 1)
    >>> bool(torch.equal(a.weight, b.weight))
    True

    Used in: chapters 6, 11, 12.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield
