r"""DP-FTRL: private training with tree-aggregated noise, without sampling or shuffling.

Follow-the-regularised-leader on linearised losses with the regulariser
:math:`\frac{1}{2\eta}\|\theta - \theta_0\|^2` plays

.. math::
    \theta_{t+1} = \theta_0 - \frac{\eta}{B}\Bigl(\sum_{s \le t} \bar g_s + n_t\Bigr),
    \qquad \bar g_s = \sum_{i \in B_s} \min\Bigl(1, \frac{C}{\|g_i(\theta_s)\|}\Bigr) g_i(\theta_s),

where the batches :math:`B_1, B_2, \dots` are consecutive slices of the data in a
fixed order (no random sampling, no shuffling) and :math:`n_t` is the noise of
the binary-tree mechanism for the prefix sum up to step :math:`t`
(:func:`privlab.continual.tree_prefix_noise`): every dyadic node of the tree
draws :math:`\mathcal N(0, z^2 C^2 I)` once, and a prefix is the sum of at most
one node per level. Without noise it is SGD with learning rate :math:`\eta`
(Kairouz et al. 2021, Algorithm 1, without momentum). With several epochs the
tree *restarts* every epoch and the model continues from the epoch's last
iterate (their Appendix D).

**Privacy** (privacy unit: one training example; *zero-out* neighbours: the example's
slot in the fixed order stays and its gradient becomes zero, so every other example keeps
its batch and :math:`T` is unchanged. Deleting a row from ``X`` is not that relation:
:func:`train_ftrl` slices batches by position, so every later batch shifts and
:math:`T = \lceil N/B \rceil` can change; the guarantee below does not cover it.)
Over an epoch of :math:`T`
steps an example sits in one leaf, so it enters the
:math:`L = \lceil \log_2(T+1) \rceil` nodes above it that can enter a prefix sum
(:func:`tree_nodes_per_example`), each by at most :math:`C`: the tree is the
Gaussian mechanism with L2 sensitivity :math:`C\sqrt L` and noise :math:`zC`,
:math:`\rho = L/(2z^2)`-zCDP, i.e. :math:`(\alpha, \alpha\rho)`-RDP for every
:math:`\alpha > 1`. With :math:`E` epochs (restarts) the trees compose:

.. math::
    \rho = \frac{E\, L}{2 z^2}, \qquad
    \varepsilon(\delta) = \min_\alpha\ \alpha\rho + \ln(1 - 1/\alpha) - \frac{\ln\delta + \ln\alpha}{\alpha - 1}

The adaptive releases of the nodes compose as Gaussian mechanisms do, exactly: together they
are :math:`\mu`-GDP with :math:`\mu = \sqrt{E L}/z = \sqrt{2\rho}` (Dong, Roth, Su 2019), so
:func:`ftrl_epsilon` reports the Gaussian mechanism's exact :math:`\varepsilon(\delta)`
(Balle and Wang 2018) at noise multiplier :math:`z/\sqrt{EL}`, which is below the conversion
of the RDP curve above (that formula is an upper bound).
Under replace-one each node moves by up to :math:`2C`: :math:`\rho = 2EL/z^2`.
No amplification is used, so the guarantee does not depend on how the batches
were formed, which is why Google could use DP-FTRL to train Gboard's production
language models in federated learning, where devices check in when they can
(Xu et al. 2023).

>>> tree_nodes_per_example(8), tree_nodes_per_example(9)
(4, 4)
>>> round(ftrl_rho(noise_multiplier=2.0, steps_per_epoch=8, epochs=1), 4)
0.5

References: Kairouz, McMahan, Song, Thakkar, Thakurta, Xu (2021), "Practical and
private (deep) learning without sampling or shuffling", ICML, arXiv:2103.00039
(Algorithm 1; the tree's privacy in section 4, restarts in Appendix D); Xu et al. (2023), "Federated learning
of Gboard language models with differential privacy", arXiv:2305.18465; Chan,
Shi, Song (2011) and Dwork et al. (2010) for the tree.

Used in: the chapter "Selection, the sparse vector and local DP".
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from privlab._validate import check_delta, check_epsilon, check_int, check_positive, check_rng
from privlab.accounting import calibrate, gaussian_epsilon
from privlab.continual import tree_prefix_noise
from privlab.dpsgd import clip_factors, clipped_grad_sum_with_stats

__all__ = ["tree_nodes_per_example", "ftrl_rho", "ftrl_epsilon", "calibrate_ftrl_noise", "TreePrefixSum",
           "FTRLConfig", "FTRLResult", "train_ftrl"]


def tree_nodes_per_example(steps: int) -> int:
    r""":math:`L = \lceil \log_2(T+1) \rceil`: the tree nodes over :math:`T` leaves that hold one leaf
    and can enter a prefix sum (full dyadic blocks :math:`[k 2^\ell, (k+1) 2^\ell) \subseteq [0, T)`,
    one per level :math:`\ell \le \lfloor \log_2 T \rfloor`)."""
    return check_int("steps", steps).bit_length()


def ftrl_rho(*, noise_multiplier: float, steps_per_epoch: int, epochs: int = 1) -> float:
    r"""zCDP of DP-FTRL under zero-out neighbours: :math:`\rho = E L / (2 z^2)` (module docstring)."""
    z = check_positive("noise_multiplier", noise_multiplier)
    return check_int("epochs", epochs) * tree_nodes_per_example(steps_per_epoch) / (2 * z * z)


def ftrl_epsilon(*, noise_multiplier: float, steps_per_epoch: int, epochs: int = 1, delta: float) -> float:
    r"""Epsilon of DP-FTRL (zero-out neighbours) at ``delta``: exactly that of the Gaussian mechanism
    with noise multiplier :math:`z / \sqrt{E L} = 1/\sqrt{2\rho}`
    (:func:`privlab.accounting.gaussian_epsilon`; module docstring).

    It is below the conversion of the RDP curve :math:`\alpha\rho`, which is an upper bound (and,
    over a finite grid of orders, stalls for a small :math:`\rho`: 0.148 against the exact 0.055 at
    :math:`z = 200`, :math:`T = 1000`, :math:`\delta = 10^{-6}`, found in a review).

    >>> round(ftrl_epsilon(noise_multiplier=10.0, steps_per_epoch=63, epochs=4, delta=1e-6), 3)
    2.204
    """
    rho = ftrl_rho(noise_multiplier=noise_multiplier, steps_per_epoch=steps_per_epoch, epochs=epochs)
    return gaussian_epsilon(noise_multiplier=1.0 / math.sqrt(2.0 * rho), delta=check_delta(delta))


def calibrate_ftrl_noise(*, target_epsilon: float, delta: float, steps_per_epoch: int, epochs: int = 1) -> float:
    """The smallest noise multiplier :math:`z` (0.1% relative) whose :func:`ftrl_epsilon` is at most the target."""
    check_epsilon(target_epsilon, name="target_epsilon")

    def epsilon_at(z: float) -> float:
        return ftrl_epsilon(noise_multiplier=z, steps_per_epoch=steps_per_epoch, epochs=epochs, delta=delta)

    return calibrate(epsilon_at, target=target_epsilon)


class TreePrefixSum:
    r"""Online noisy prefix sums :math:`\sum_{s \le t} v_s + n_t` of a stream of :math:`T` vectors.

    :math:`n_t` is the binary tree's noise for the prefix :math:`[1, t]` (drawn at
    construction by :func:`privlab.continual.tree_prefix_noise`: every node
    :math:`\mathcal N(0, \sigma^2 I)` once), with variance :math:`\mathrm{popcount}(t)\,\sigma^2`
    per coordinate. The caller bounds each :math:`v_s` (DP-FTRL: a sum of clipped
    gradients); with every example in one :math:`v_s` and :math:`\|v_s - v'_s\| \le C`,
    :math:`\sigma = zC` gives :func:`ftrl_rho`.

    >>> from privlab.config import make_rng
    >>> tree = TreePrefixSum(4, dim=2, std=1e-9, rng=make_rng(0))
    >>> [tree.add(np.ones(2)).round(6).tolist() for _ in range(2)]
    [[1.0, 1.0], [2.0, 2.0]]
    """

    def __init__(self, steps: int, *, dim: int, std: float, rng: np.random.Generator):
        self.steps = check_int("steps", steps)
        self.noise = tree_prefix_noise(self.steps, std=std, rng=check_rng(rng), dim=check_int("dim", dim))
        self.total = np.zeros(self.noise.shape[1])
        self.t = 0

    def add(self, v) -> np.ndarray:
        """Add :math:`v_t`; return the noisy prefix sum up to it."""
        if self.t >= self.steps:
            raise ValueError(f"the tree holds {self.steps} steps; restart with a new one")
        v = np.asarray(v, dtype=float)
        if v.shape != self.total.shape or not np.all(np.isfinite(v)):  # a scalar would broadcast
            raise ValueError(f"v must be a finite vector of shape {self.total.shape}, got shape "
                             f"{v.shape}" + ("" if v.shape != self.total.shape else " with non-finite values"))
        self.total = self.total + v
        self.t += 1
        return self.total + self.noise[self.t - 1]


@dataclass(frozen=True, kw_only=True)
class FTRLConfig:
    r"""A DP-FTRL run (validated on creation).

    Args:
        noise_multiplier: :math:`z > 0`; every tree node draws :math:`\mathcal N(0, z^2C^2 I)`.
        max_grad_norm: :math:`C > 0`.
        batch_size: :math:`B`, consecutive examples per step (the last batch of an epoch may be smaller).
        epochs: :math:`E`, passes over the data, one tree each (restarts).
        lr: :math:`\eta`.
        delta: :math:`\delta` for the reported epsilon.
        method: per-example gradient method of :mod:`privlab.dpsgd` (``"fast"``, ``"vmap"``, ``"loop"``).
    """

    noise_multiplier: float
    max_grad_norm: float
    batch_size: int
    epochs: int = 1
    lr: float = 0.1
    delta: float = 1e-6
    method: str = "fast"

    def __post_init__(self) -> None:
        check_positive("noise_multiplier", self.noise_multiplier)
        check_positive("max_grad_norm", self.max_grad_norm)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("epochs", self.epochs, minimum=1)
        check_positive("lr", self.lr)
        check_delta(self.delta)

    def steps_per_epoch(self, n: int) -> int:
        """:math:`T = \\lceil N / B \\rceil`."""
        return -(-check_int("n", n, minimum=1) // self.batch_size)

    def epsilon(self, n: int) -> float:
        """:func:`ftrl_epsilon` of this run on :math:`N` examples."""
        return ftrl_epsilon(noise_multiplier=self.noise_multiplier, steps_per_epoch=self.steps_per_epoch(n),
                            epochs=self.epochs, delta=self.delta)


@dataclass(frozen=True)
class FTRLResult:
    """A DP-FTRL run: per-epoch mean training loss, the privacy spent, and how much was clipped.

    ``epsilon`` covers the trained model only; ``losses``, ``fraction_clipped`` and ``evals`` are
    exact statistics of the private data, outside the guarantee (for the analyst, not for release).
    """

    losses: tuple[float, ...]
    epsilon: float
    delta: float
    rho: float
    steps: int
    steps_per_epoch: int
    nodes_per_example: int
    fraction_clipped: float
    evals: tuple = ()


def train_ftrl(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, loss_fn, config: FTRLConfig,
               rng: np.random.Generator, eval_fn=None) -> FTRLResult:
    r"""Train ``model`` in place with DP-FTRL (tree noise, fixed batch order, restarts per epoch).

    Args:
        model: the network; its parameters at the call are :math:`\theta_0`.
        X, y: the training data ``(N, ...)``, visited in this order every epoch.
        loss_fn: per-example loss ``loss_fn(outputs, targets) -> (B,)`` (``reduction="none"``).
        config: an :class:`FTRLConfig`.
        rng: ``np.random.Generator`` for the tree noise (the only randomness).
        eval_fn: called as ``eval_fn(model)`` after each epoch (eval mode, no grad).

    Returns:
        :class:`FTRLResult`.

    >>> g = torch.Generator().manual_seed(0)
    >>> X, y = torch.randn(64, 3, generator=g), torch.randint(0, 2, (64,), generator=g)
    >>> cfg = FTRLConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=16, epochs=2)
    >>> from privlab.config import make_rng
    >>> res = train_ftrl(nn.Linear(3, 2), X, y, loss_fn=nn.CrossEntropyLoss(reduction="none"),
    ...                  config=cfg, rng=make_rng(0))
    >>> res.steps, res.steps_per_epoch, res.nodes_per_example   # T = 4 leaves: levels 1, 2, 4
    (8, 4, 3)
    """
    if not isinstance(config, FTRLConfig):
        raise ValueError(f"config must be an FTRLConfig, got {type(config).__name__}")
    rng = check_rng(rng)
    n = int(X.shape[0])
    if y.shape[0] != n:
        raise ValueError(f"y must have leading dimension N = {n}, got shape {tuple(y.shape)}")
    T = config.steps_per_epoch(n)
    C, B = float(config.max_grad_norm), config.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    factors = functools.partial(clip_factors, max_grad_norm=C)
    losses, evals, clipped, seen = [], [], 0, 0
    for _ in range(config.epochs):
        start = torch.nn.utils.parameters_to_vector(params).detach().clone()   # theta at the restart
        tree = TreePrefixSum(T, dim=dim, std=config.noise_multiplier * C, rng=rng)   # a new tree per epoch
        loss_sum = 0.0
        model.train()
        for t in range(T):
            xb, yb = X[t * B:(t + 1) * B], y[t * B:(t + 1) * B]
            out = clipped_grad_sum_with_stats(model, loss_fn, xb, yb, factors_fn=factors, method=config.method)
            noisy_sum = tree.add(torch.cat([g.reshape(-1) for g in out.grads]).detach().cpu().numpy())
            with torch.no_grad():                                                # theta_{t+1} = theta_0 - eta/B (S_t + n_t)
                step = torch.as_tensor(noisy_sum, dtype=start.dtype, device=start.device)
                torch.nn.utils.vector_to_parameters(start - config.lr / B * step, params)
            loss_sum += float(out.losses.sum())
            clipped += int((out.norms > C).sum())
            seen += int(xb.shape[0])
        losses.append(loss_sum / n)
        if eval_fn is not None:
            model.eval()
            with torch.no_grad():
                evals.append(eval_fn(model))
            model.train()
    return FTRLResult(losses=tuple(losses), epsilon=config.epsilon(n), delta=config.delta,
                      rho=ftrl_rho(noise_multiplier=config.noise_multiplier, steps_per_epoch=T,
                                   epochs=config.epochs),
                      steps=T * config.epochs, steps_per_epoch=T, nodes_per_example=tree_nodes_per_example(T),
                      fraction_clipped=clipped / max(seen, 1), evals=tuple(evals))
