r"""The DP-SGD training loop every chapter uses, on CPU and CUDA alike.

Per epoch, :math:`T = \mathrm{round}(1/q)` steps of

.. math::
    S_t \sim \mathrm{Poisson}(q), \qquad
    \theta_{t+1} = \mathrm{opt}\Bigl(\theta_t,\;
    \tfrac{1}{qN}\bigl(\textstyle\sum_{i \in S_t} \mathrm{clip}_C(g_i) + \mathcal{N}(0, \sigma^2 C^2 I)\bigr)\Bigr),

after which the loop records the mean training loss, the privacy spent so far,
:math:`\varepsilon(\sigma, q, \text{steps}, \delta)` from
:func:`privlab.accounting.dpsgd_epsilon`, the wall-clock time and an optional
evaluation.

Engineering, as the house style asks:

* the data moves to the model's device once, if it fits (on CUDA: under half
  the free memory; otherwise it stays in pinned host memory and each batch is
  copied asynchronously);
* no host synchronisation inside a step: losses are summed as device tensors
  and read once per epoch, batches are indexed with host-drawn indices, the
  noise is drawn on the device;
* deterministic given ``generator``: it seeds the sampler, the noise generator
  and, inside ``torch.random.fork_rng`` (so the caller's global state is left
  untouched), the dropout masks. The guarantee assumes the noise is secret: whoever knows the
  seed knows the noise (and where the model's initial weights come from the same seed, as in the
  chapters, knowing them can reveal it). The book publishes its seeds so that every number can be
  reproduced; its trained models are demonstrations. Nor is a private seed enough for a
  deployment: torch's CPU generator is MT19937, seeded from 32 bits, and not cryptographically
  secure, so a released model needs its noise from a cryptographically secure generator (as
  Opacus's ``secure_mode``), which privlab does not provide;
* ``compile=True`` runs the model through ``torch.compile(dynamic=True)``
  (batch sizes vary under Poisson sampling);
* ``cuda_graph=True`` (CUDA only) replays each step from one CUDA graph, the
  batch padded to a fixed capacity with masked rows (:mod:`privlab.dpsgd.graphs`):
  the same clipped sum, noise and accounting, without the host's per-kernel work;
* a tqdm bar per run, off with ``progress=False``.

With ``noise_multiplier=0`` and ``max_grad_norm=None`` the same loop trains
non-privately (plain SGD/Adam on the batch mean), so chapters compare like
with like: the same model, data, sampler, epochs, seeds and optimizer. It is the model one
would train without privacy, not the private step with :math:`\sigma = 0` and :math:`C = \infty`:
it divides by the realised batch size :math:`|S_t|` where the private step divides by the
expected :math:`qN` (which does not depend on the data), and an empty batch is no step at all
(Opacus's non-private training does the same). The two updates differ in scale by
:math:`|S_t|/(qN)`, a relative spread of about :math:`1/\sqrt{qN}` per step (a red-team read
measured the gap in parameters as 2% of their norm at :math:`qN = 64` with SGD, larger at
:math:`qN \le 4`). Shuffled batches (``sampler="shuffle"``) train, warn, and report the
Poisson epsilon flagged ``accounting_valid=False`` (Chua et al. 2024,
arXiv:2403.17673). Variants of the step (for audits) come in through
``dp_optimizer_cls``, a subclass of :class:`privlab.dpsgd.DPOptimizer`.

Reference: Abadi et al. 2016 (arXiv:1607.00133), Algorithm 1.

Used in: chapters 6, 7, 8, 11, 12, 13.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validate import (
    check_delta,
    check_int,
    check_nonnegative,
    check_positive,
    check_probability,
    check_torch_generator,
)
from ..accounting import DPSGD_ACCOUNTANTS, dpsgd_epsilon
from .clipping import METHODS
from .graphs import CUDAGraphStep, graph_capacity
from .optimizer import DPOptimizer
from .per_sample import as_input_tuple, batch_size_of
from .sampling import SAMPLERS, make_sampler

__all__ = ["DEFAULT_DELTA_RULE", "DPSGDConfig", "RunSeeds", "TrainResult", "run_seeds", "train"]

#: The default delta when none is given: well below 1/N (see :meth:`DPSGDConfig.delta_for`).
DEFAULT_DELTA_RULE = "min(1e-5, 1/(10 N))"
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


@dataclass(frozen=True, kw_only=True)
class DPSGDConfig:
    r"""Everything a DP-SGD run needs besides model, data and randomness (validated on creation).

    Args:
        noise_multiplier: :math:`\sigma \ge 0`; noise std on the clipped sum is :math:`\sigma C`.
        max_grad_norm: :math:`C > 0`; ``None`` (with :math:`\sigma = 0`) trains non-privately.
        epochs: passes over the data; an epoch is :math:`\mathrm{round}(1/q)` steps.
        sample_rate: Poisson rate :math:`q`; give this or ``batch_size`` (then :math:`q = b/N`).
            Both read :math:`N` = ``len(X)`` (the update divides by :math:`qN`): the guarantee treats the data set's
            size as public, Opacus's convention (strict add/remove needs :math:`q` and :math:`qN` fixed in advance).
        batch_size: expected batch size :math:`b = qN`.
        expected_batch_size: the denominator :math:`qN` of every private update, a public constant
            fixed in advance, for strict add/remove (where :math:`N` differs between neighbours);
            default (``None``) :math:`q \cdot` ``len(X)``, the data set's size treated as public.
        lr: learning rate for the named optimizers.
        optimizer: ``"sgd"``, ``"adam"`` or a factory ``params -> torch.optim.Optimizer``.
        delta: :math:`\delta`, well below :math:`1/N`; default (``None``)
            :math:`\min(10^{-5}, 1/(10N))` (:data:`DEFAULT_DELTA_RULE`), reported in
            :attr:`TrainResult.delta` and ``delta_rule``. A given :math:`\delta \ge 1/N` warns: it
            allows releasing one random example in the clear.
        method: per-sample gradient method, ``"fast"``, ``"vmap"`` or ``"loop"``.
        sampler: ``"poisson"`` or ``"shuffle"`` (warns; accounting flagged invalid).
        accountant: ``"pld"``, ``"rdp"`` or ``None`` (skip accounting, epsilon NaN).
        compile: run the model through ``torch.compile``.
        cuda_graph: on CUDA, replay each step from a CUDA graph on padded Poisson batches
            (:class:`privlab.dpsgd.CUDAGraphStep`); needs ``method="fast"``, ``optimizer`` ``"sgd"`` or
            ``"adam"`` (then created with ``capturable=True``), ``compile=False`` and the data on the device.
        progress: show a tqdm bar.
        device: ``"cpu"``, ``"cuda"``, ... or ``None`` for the model's current device.
        record_grad_norms: keep every unclipped per-example norm (for profiling).

    Raises:
        ValueError: naming the bad value.

    >>> DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=64).private
    True
    >>> DPSGDConfig(noise_multiplier=1.0, max_grad_norm=-1.0, batch_size=64)
    Traceback (most recent call last):
    ...
    ValueError: max_grad_norm must be a finite number > 0, got -1.0
    """

    noise_multiplier: float
    max_grad_norm: float | None
    epochs: int = 1
    sample_rate: float | None = None
    batch_size: int | None = None
    expected_batch_size: float | None = None
    lr: float = 0.1
    optimizer: str | Callable = "sgd"
    delta: float | None = None
    method: str = "fast"
    sampler: str = "poisson"
    accountant: str | None = "pld"
    compile: bool = False
    cuda_graph: bool = False
    progress: bool = True
    device: str | None = None
    record_grad_norms: bool = False

    def __post_init__(self) -> None:
        check_nonnegative("noise_multiplier", self.noise_multiplier)
        if self.max_grad_norm is not None:
            check_positive("max_grad_norm", self.max_grad_norm)
        elif self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier = {self.noise_multiplier} needs a max_grad_norm, got None")
        if (self.sample_rate is None) == (self.batch_size is None):
            raise ValueError(
                f"give exactly one of sample_rate and batch_size, got {self.sample_rate!r} and {self.batch_size!r}"
            )
        if self.sample_rate is not None:
            check_probability("sample_rate", self.sample_rate)
        else:
            check_int("batch_size", self.batch_size, minimum=1)
        check_int("epochs", self.epochs, minimum=1)
        if self.expected_batch_size is not None:
            check_positive("expected_batch_size", self.expected_batch_size)
        check_positive("lr", self.lr)
        if not (callable(self.optimizer) or self.optimizer in OPTIMIZERS):
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)} or a factory, got {self.optimizer!r}")
        if self.delta is not None:
            check_delta(self.delta)
        for name, value, allowed in [("method", self.method, METHODS), ("sampler", self.sampler, SAMPLERS),
                                     ("accountant", self.accountant, (*DPSGD_ACCOUNTANTS, None))]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.cuda_graph:  # what a graph can replay
            if self.method != "fast":
                raise ValueError(f"cuda_graph=True needs method = 'fast', got {self.method!r}")
            if self.compile:
                raise ValueError(f"cuda_graph=True needs compile = False, got {self.compile!r}")
            if self.optimizer not in ("sgd", "adam"):
                raise ValueError(f"cuda_graph=True needs optimizer = ('sgd', 'adam'), got {self.optimizer!r}")

    @property
    def private(self) -> bool:
        """``False`` for the non-private baseline (``max_grad_norm=None``)."""
        return self.max_grad_norm is not None

    def sample_rate_for(self, n: int) -> float:
        """:math:`q` for a dataset of size :math:`N` (``batch_size / N`` when given a batch size)."""
        q = self.sample_rate if self.sample_rate is not None else self.batch_size / n
        return check_probability("sample_rate (batch_size / N)", q)

    def delta_for(self, n: int) -> float:
        r""":math:`\delta` for :math:`N` examples: the given one, else :math:`\min(10^{-5}, 1/(10N))`.

        Never the old default :math:`\min(10^{-5}, 1/N)`, which *is* :math:`1/N` for
        :math:`N > 10^5`: a mechanism that publishes one random example in the clear
        is :math:`(0, 1/N)`-DP, so :math:`\delta` must be well below :math:`1/N`.

        >>> DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=8).delta_for(1_000_000)
        1e-07
        >>> DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=8).delta_for(1_000)
        1e-05
        """
        if self.delta is not None:
            if self.delta >= 1.0 / n:
                warnings.warn(f"delta = {self.delta:g} >= 1/N = {1.0 / n:g}: a guarantee that allows publishing one "
                              "example in the clear; choose delta well below 1/N", RuntimeWarning, stacklevel=3)
            return self.delta
        return min(1e-5, 0.1 / n)

    def delta_rule(self) -> str:
        """How :meth:`delta_for` chose delta: ``"given"`` or the default rule."""
        return "given" if self.delta is not None else DEFAULT_DELTA_RULE

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if callable(self.optimizer):
            return self.optimizer(params)
        if self.cuda_graph and self.optimizer == "adam":  # its step counter on the device, as graphs need
            return torch.optim.Adam(params, lr=self.lr, capturable=True)
        return OPTIMIZERS[self.optimizer](params, lr=self.lr)


@dataclass(frozen=True)
class TrainResult:
    """Per-epoch history of a run; ``epsilon`` is the privacy spent by the end.

    ``epsilon`` covers the trained model only. ``losses``, ``grad_norms`` and ``evals`` are exact
    statistics of the private data, outside the guarantee: for the analyst, not for release.
    """

    config: DPSGDConfig
    losses: tuple[float, ...]  # mean per-example training loss over each epoch's batches
    epsilons: tuple[float, ...]  # cumulative epsilon after each epoch (inf if not private)
    epoch_seconds: tuple[float, ...]  # wall-clock training time per epoch (accounting excluded)
    evals: tuple = ()  # eval_fn(model) after each epoch
    steps: int = 0
    sample_rate: float = 0.0
    delta: float = 0.0  # the delta every epsilon above is stated at
    delta_rule: str = "given"  # "given", or the default rule that chose delta (DEFAULT_DELTA_RULE)
    accounting_valid: bool = True  # False for shuffled batches: the Poisson epsilon does not apply
    grad_norms: np.ndarray | None = field(default=None, repr=False)

    @property
    def epsilon(self) -> float:
        return self.epsilons[-1] if self.epsilons else math.nan

    def history(self) -> list[dict]:
        """One record per epoch (for ``pandas.DataFrame``)."""
        rows = []
        for k, (loss, eps, sec) in enumerate(zip(self.losses, self.epsilons, self.epoch_seconds)):
            row = {"epoch": k + 1, "loss": loss, "epsilon": eps, "seconds": sec}
            if self.evals:
                row["eval"] = self.evals[k]
            rows.append(row)
        return rows


@functools.lru_cache(maxsize=4096)
def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    return float(dpsgd_epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                               delta=delta, accountant=accountant))


def epsilon_spent(config: DPSGDConfig, *, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` steps: inf without noise, NaN with ``accountant=None``."""
    if config.noise_multiplier == 0 or not config.private:
        return math.inf
    if config.accountant is None:
        return math.nan
    return _epsilon(float(config.noise_multiplier), float(sample_rate), int(steps), float(delta), config.accountant)


class RunSeeds(NamedTuple):
    """The three seeds of a run: its batches, its noise, its dropout masks."""

    sampler: int
    noise: int
    dropout: int


def run_seeds(generator: torch.Generator) -> RunSeeds:
    """The seeds :func:`train` draws from its ``generator``, in its order: three integers in :math:`[0, 2^{62})`.

    A run is reproducible from its generator alone: the sampler (:func:`privlab.dpsgd.make_sampler`),
    the noise generator and the dropout masks are seeded from these. Code that replays
    :func:`train`'s random draws without calling it (the batched privacy-cliff sweep)
    derives them here too.

    Raises:
        ValueError: ``generator`` is not a ``torch.Generator``.

    >>> s = run_seeds(torch.Generator().manual_seed(0))
    >>> s == run_seeds(torch.Generator().manual_seed(0)), len(s), all(0 <= v < 2**62 for v in s)
    (True, 3, True)

    Used in: chapters 6, 7.
    """
    check_torch_generator(generator)
    return RunSeeds(*torch.randint(0, 2**62, (3,), generator=generator, device=generator.device).tolist())


def _place(t: Tensor, device: torch.device) -> Tensor:
    """Move data to ``device`` once if it fits; else keep it in pinned host memory."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        free, _ = torch.cuda.mem_get_info(device)
        if t.numel() * t.element_size() > 0.5 * free:
            return t.pin_memory()
    return t.to(device)


def _gather(t: Tensor, idx: Tensor, device: torch.device) -> Tensor:
    """Rows ``idx`` of ``t`` on ``device``, without a host synchronisation."""
    if t.device == device:
        if device.type != "cpu":
            idx = idx.pin_memory().to(device, non_blocking=True)
        return t.index_select(0, idx)
    return t.index_select(0, idx).pin_memory().to(device, non_blocking=True)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_device(device) -> torch.device:
    """``device`` with its index: ``"cuda"`` becomes ``cuda:0`` (the current one), as tensors report it.

    ``torch.device("cuda") != torch.device("cuda:0")``, so code comparing a tensor's device with an
    unindexed one takes the wrong branch; every comparison in the loop uses the resolved device.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    device = torch.device(device)
    if device.type != "cpu" and device.index is None:
        device = torch.empty(0, device=device).device
    return device


def _graphed_step(config, dp, net, loss_fn, xs_dev, y_dev, device, q) -> CUDAGraphStep | None:
    """The run's :class:`CUDAGraphStep`, or ``None`` (not asked for; or the data stayed in host memory)."""
    if not config.cuda_graph:
        return None
    if device.type != CUDAGraphStep.engine.device_type:  # "cuda" (tests substitute a CPU engine)
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {device}")
    if any(t.device != device for t in (*xs_dev, *(() if y_dev is None else (y_dev,)))):
        warnings.warn("cuda_graph=True: the data did not fit on the device; stepping eagerly", RuntimeWarning,
                      stacklevel=3)
        return None
    n = xs_dev[0].shape[0]
    return CUDAGraphStep(dp, net, loss_fn, xs_dev, y_dev, capacity=graph_capacity(n, q))


def train(
    model: nn.Module,
    X,
    y,
    *,
    loss_fn,
    config: DPSGDConfig,
    generator: torch.Generator,
    eval_fn: Callable[[nn.Module], object] | None = None,
    dp_optimizer_cls: type[DPOptimizer] = DPOptimizer,
) -> TrainResult:
    r"""Train ``model`` with DP-SGD (or without DP, per ``config``) and record the run.

    Args:
        model: the network, trained in place; moved to ``config.device`` if given.
        X: inputs, a tensor ``(N, ...)`` or a tuple of them (the model's positional inputs).
        y: targets ``(N, ...)`` or ``None``.
        loss_fn: per-example loss ``loss_fn(outputs, targets) -> (B, ...)``
            (all but the batch dimension is summed per example).
        config: a :class:`DPSGDConfig`.
        generator: ``torch.Generator``, the run's only source of randomness.
        eval_fn: called as ``eval_fn(model)`` after each epoch, in eval mode
            under ``torch.no_grad``; its results land in ``TrainResult.evals``.
        dp_optimizer_cls: the step implementation, :class:`DPOptimizer` or a subclass
            (:func:`privlab.dpsgd.distributed.train_distributed` passes one that steps on its
            process's part of each batch).

    Returns:
        :class:`TrainResult`. Its epsilons account for this call's steps only: a model trained
        further by a second call has spent the composition of both (compose them with
        :mod:`privlab.accounting`, or train in one call).

    Raises:
        ValueError: bad config, generator or data shapes; an accountant that refuses the run's
            settings (checked for the whole run before the first step).

    Reference: Abadi et al. 2016 (arXiv:1607.00133), Algorithm 1.

    >>> g = torch.Generator().manual_seed(0)
    >>> X, y = torch.randn(40, 3, generator=g), torch.randn(40, generator=g)
    >>> mse = lambda out, t: (out.squeeze(1) - t) ** 2
    >>> cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=8, epochs=2,
    ...                   accountant=None, progress=False)
    >>> result = train(nn.Linear(3, 1), X, y, loss_fn=mse, config=cfg, generator=torch.Generator().manual_seed(1))
    >>> result.steps, len(result.losses), result.accounting_valid   # 2 epochs of round(1 / q) = 5 steps
    (10, 2, True)

    Used in: chapters 6, 7, 8, 11, 12, 13.
    """
    if not isinstance(config, DPSGDConfig):
        raise ValueError(f"config must be a DPSGDConfig, got {type(config).__name__}")
    check_torch_generator(generator)
    xs = as_input_tuple(X)
    n = batch_size_of(xs)
    if n == 0:
        raise ValueError("X must contain at least one example, got N = 0")
    if y is not None and not isinstance(y, Tensor):
        raise ValueError(f"y must be a tensor (or None), got {type(y).__name__}")
    if y is not None and (y.ndim == 0 or y.shape[0] != n):
        raise ValueError(f"y must have leading dimension N = {n}, got shape {tuple(y.shape)}")
    device = resolve_device(config.device) if config.device is not None else _model_device(model)
    model.to(device)
    q, delta = config.sample_rate_for(n), config.delta_for(n)
    seeds = run_seeds(generator)
    noise_gen = torch.Generator(device=device).manual_seed(seeds.noise)
    sampler = make_sampler(config.sampler, n, sample_rate=q, seed=seeds.sampler)
    xs_dev = tuple(_place(x, device) for x in xs)
    y_dev = None if y is None else _place(y, device)
    params = [p for p in model.parameters() if p.requires_grad]
    dp = dp_optimizer_cls(
        config.make_optimizer(params),
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        expected_batch_size=(sampler.expected_batch_size if config.expected_batch_size is None
                             else config.expected_batch_size),
        generator=noise_gen,
        method=config.method,
        record_norms=config.record_grad_norms,
    )
    if config.private and config.accountant is not None:
        # the whole run's epsilon once before the first step: an accountant that refuses these
        # settings fails here, not after an epoch has changed the model
        epsilon_spent(config, sample_rate=q, steps=config.epochs * len(sampler), delta=delta)
    net = torch.compile(model, dynamic=True) if config.compile else model
    graphed = _graphed_step(config, dp, net, loss_fn, xs_dev, y_dev, device, q)
    losses, epsilons, seconds, evals, norms = [], [], [], [], []
    steps = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seeds.dropout)  # dropout masks; scoped by fork_rng, the caller's state is restored
        bar = tqdm(range(config.epochs), disable=not config.progress, unit="epoch",
                   desc="DP-SGD" if config.private else "SGD")
        for _ in bar:
            start = time.perf_counter()
            model.train()
            totals = torch.zeros(2, device=device, dtype=torch.float64)  # (loss sum, count)
            for idx in sampler:
                stats = None if graphed is None else graphed(idx)  # None: empty, or over the capacity
                if stats is None:
                    xb = tuple(_gather(x, idx, device) for x in xs_dev)
                    yb = None if y_dev is None else _gather(y_dev, idx, device)
                    stats = dp.step(net, loss_fn, xb if len(xb) > 1 else xb[0], yb)
                elif stats.norms is not None:
                    stats = stats._replace(norms=stats.norms.clone())  # the next replay overwrites them
                totals[0] += stats.loss_sum.to(torch.float64)
                totals[1] += idx.numel()
                steps += 1
                if config.record_grad_norms and stats.norms is not None:
                    norms.append(stats.norms.detach())
            loss_sum, count = totals.tolist()  # the epoch's one host sync
            losses.append(loss_sum / count if count else math.nan)
            seconds.append(time.perf_counter() - start)
            epsilons.append(epsilon_spent(config, sample_rate=q, steps=steps, delta=delta))
            if eval_fn is not None:
                model.eval()
                with torch.no_grad():
                    evals.append(eval_fn(model))
                model.train()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", eps=f"{epsilons[-1]:.3g}", delta=f"{delta:.1e}")
    grad_norms = torch.cat(norms).cpu().numpy() if norms else (np.empty(0) if config.record_grad_norms else None)
    return TrainResult(
        config=config, losses=tuple(losses), epsilons=tuple(epsilons), epoch_seconds=tuple(seconds),
        evals=tuple(evals), steps=steps, sample_rate=q, delta=delta, delta_rule=config.delta_rule(),
        accounting_valid=config.sampler == "poisson", grad_norms=grad_norms,
    )
