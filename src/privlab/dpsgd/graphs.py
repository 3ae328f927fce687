r"""DP-SGD steps replayed from one CUDA graph: Poisson batches padded to a fixed size.

On a GPU a small model's step is bound by the host: launching a few dozen small
kernels and running the Python around them takes longer than the kernels. A CUDA
graph records a step's kernels once and replays them with one call, but only at
fixed shapes, and a Poisson batch's size :math:`|S| \sim \mathrm{Binomial}(N, q)`
changes every step. So the step is captured at a fixed *capacity* :math:`K`, and
every batch is padded to it with rows whose ``keep`` flag is ``False``:

.. math::
    \bar g \;=\; \sum_{j=1}^{K} \mathbb{1}[\mathrm{keep}_j]\; c_j\, g_{i_j}
    \;=\; \sum_{i \in S} \min\bigl(1, \tfrac{C}{\|g_i\|}\bigr)\, g_i ,

the same clipped sum, so the same mechanism and the same accounting; the noise,
the scale :math:`1/(qN)` and the optimizer step are unchanged
(:meth:`privlab.dpsgd.DPOptimizer.step` with ``keep``). A batch larger than
:math:`K` (probability below :math:`10^{-9}` per step with the default
:func:`graph_capacity`) or an empty one is stepped eagerly, exactly, by the caller.
Padding rows repeat the batch's first index, so a padded row is a row the batch
already holds.

What the graph freezes: the batch capacity, the model's code path, the
optimizer's hyper-parameters and the noise generator (its draws stay fresh: the
graph advances the generator's offset at each replay). Every check of the fast
path runs once, at capture. At the first replay the noise generator's state must have
moved on (a graph that replayed the same noise every step would void the guarantee): if
not, the step raises. Before capture the step runs a few times eagerly
(warm-up, as CUDA graphs need); the parameters, optimizer state and random
generators are restored afterwards, so the run's first replay is its first step.

Status: everything but the graph itself is tested on the CPU (``tests/dpsgd/test_graphs.py``):
the padding (``keep``), and, with :class:`_EagerEngine` standing in for CUDA, the warm-up and its
undoing, the restored generators, the statistics handed back and :func:`~privlab.dpsgd.train`'s
use of it, each equal to eager stepping. The CUDA recording and replay are tested in
``tests/dpsgd/test_cuda.py`` (equal to the eager steps, noise included), which needs a GPU and
has not yet run on one (no device was lent when this was written; ``benchmarks/cuda_checks.sh``
runs it).

Used by :func:`privlab.dpsgd.train` with ``DPSGDConfig(cuda_graph=True)``;
measured in ``benchmarks/dpsgd.py --device cuda`` (rows "non-private graph", "privlab fast graph").

Reference: NVIDIA, *CUDA Graphs* (CUDA C++ Programming Guide); PyTorch, ``torch.cuda.graphs``
and the note "CUDA Graph-safe RNG states" in ``ATen/CUDAGeneratorImpl.h`` (each replay advances a
registered generator's offset by the graph's total). Nothing is truncated: a batch over the
capacity is stepped eagerly, so the sampling stays Poisson and the accountant's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._validate import check_int, check_nonnegative, check_probability
from .optimizer import DPOptimizer, StepStats

__all__ = ["CUDAGraphStep", "graph_capacity"]


def graph_capacity(n: int, sample_rate: float, *, sds: float = 6.0, multiple: int = 64) -> int:
    r"""A padded batch size :math:`K` a Poisson batch exceeds with tiny probability.

    .. math::  K = \min\Bigl(N,\ \bigl\lceil qN + s\sqrt{qN(1-q)}\,\bigr\rceil \text{ rounded up to a multiple of } m\Bigr)

    With :math:`s = 6` standard deviations the *normal* tail is :math:`10^{-9}`; the binomial's is a
    few times that (exactly :math:`4.3 \cdot 10^{-9}` at :math:`N = 1000`, :math:`qN = 128`, and
    :math:`1.1 \cdot 10^{-9}` at :math:`N = 10^7`, :math:`qN = 10^5`: a red-team computation). A batch
    that still exceeds :math:`K` is stepped eagerly, so :math:`K` changes the speed, never the result.

    Raises:
        ValueError: ``n`` not a positive integer, ``sample_rate`` not in :math:`(0, 1]`, ``sds`` not
            finite and >= 0, ``multiple`` not a positive integer.

    >>> graph_capacity(1_000_000, 4096 / 1_000_000)
    4480
    >>> graph_capacity(100, 0.5)
    100
    """
    n, multiple = check_int("n", n, minimum=1), check_int("multiple", multiple, minimum=1)
    sample_rate = check_probability("sample_rate", sample_rate)
    sds = check_nonnegative("sds", sds)
    mean = sample_rate * n
    k = math.ceil(mean + sds * math.sqrt(mean * (1.0 - sample_rate)))
    return int(min(n, multiple * math.ceil(max(k, 1) / multiple)))


class _CUDAEngine:
    """What :class:`CUDAGraphStep` asks of CUDA: a side stream for warm-up, the default generator's
    state, and recording the step as a graph (its outputs become the step's static tensors)."""

    device_type = "cuda"
    pinned = True  # host buffers in pinned memory (asynchronous copies)

    @staticmethod
    @contextlib.contextmanager
    def side_stream(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(device).wait_stream(side)

    @staticmethod
    def get_rng_state(device) -> Tensor:
        return torch.cuda.get_rng_state(device)

    @staticmethod
    def set_rng_state(state: Tensor, device) -> None:
        torch.cuda.set_rng_state(state, device)

    @staticmethod
    def record(step: CUDAGraphStep, generators) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        for g in generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph):
            step._stats = step._body()
        step._graph = graph  # keeps the graph (and its memory pool) alive
        return graph.replay


class _EagerEngine:
    """For tests on a machine without CUDA: the same protocol on the CPU, "recording" the step as a
    function that runs it again (no warm-up stream; the CPU generator's state). Everything of
    :class:`CUDAGraphStep` but the graph itself: padding, the warm-up and its undoing, the
    noise-generator check, the statistics it hands back."""

    device_type = "cpu"
    pinned = False

    @staticmethod
    def side_stream(device):
        return contextlib.nullcontext()

    @staticmethod
    def get_rng_state(device) -> Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: Tensor, device) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def record(step: CUDAGraphStep, generators) -> Callable[[], None]:
        def replay():
            step._stats = step._body()

        return replay


class CUDAGraphStep:
    r"""``dp.step`` on rows ``idx`` of device-resident data, replayed from a CUDA graph at a fixed capacity.

    Call it with a batch's host index tensor (a :class:`privlab.dpsgd.PoissonSampler` draw): it
    returns the step's :class:`~privlab.dpsgd.StepStats` (tensors the next replay overwrites:
    read or copy them before), or ``None`` when the batch is empty or larger than ``capacity``;
    the caller then steps eagerly. The graph is captured at the first call. Per replay the host
    does one pinned copy of :math:`K + 1` integers (the padded indices and :math:`|S|`) and
    one ``replay``.

    Args:
        dp: the :class:`~privlab.dpsgd.DPOptimizer` (its wrapped optimizer must be capturable:
            plain SGD, or Adam with ``capturable=True``).
        model: the network, on ``dp``'s CUDA device.
        loss_fn: per-example loss.
        xs: tuple of input tensors ``(N, ...)`` on the CUDA device.
        y: targets ``(N, ...)`` on the device, or ``None``.
        capacity: :math:`K`, the padded batch size (:func:`graph_capacity`).
        warmup: eager steps before capture (undone afterwards).

    Raises:
        ValueError: data not on one CUDA device, or a bad ``capacity``.
    """

    engine = _CUDAEngine  # tests on a CPU machine substitute _EagerEngine (tests/dpsgd/test_graphs.py)

    def __init__(self, dp: DPOptimizer, model: nn.Module, loss_fn, xs: tuple[Tensor, ...], y: Tensor | None, *,
                 capacity: int, warmup: int = 3):
        devices = {t.device for t in (*xs, *(() if y is None else (y,)))}
        if len(devices) != 1 or next(iter(devices)).type != self.engine.device_type:
            raise ValueError(f"CUDAGraphStep needs all data on one CUDA device, got {sorted(map(str, devices))}")
        self.device = next(iter(devices))
        self.n = xs[0].shape[0]
        self.capacity = check_int("capacity", capacity, minimum=1)  # may exceed N: padding repeats rows
        self.dp, self.model, self.loss_fn, self.xs, self.y = dp, model, loss_fn, xs, y
        self._graph = None
        self.warmup = check_int("warmup", warmup, minimum=1)
        self._slots = torch.zeros(self.capacity + 1, dtype=torch.int64, device=self.device)  # indices, then |S|
        self._positions = torch.arange(self.capacity, device=self.device)
        self._replay = None  # the recorded step, set at the first call
        self._stats: StepStats | None = None  # its outputs (static tensors a replay overwrites)
        self.replays = 0

    def _body(self) -> StepStats:
        idx, count = self._slots[:-1], self._slots[-1]
        keep = self._positions < count
        xb = tuple(x.index_select(0, idx) for x in self.xs)
        yb = None if self.y is None else self.y.index_select(0, idx)
        return self.dp.step(self.model, self.loss_fn, xb if len(xb) > 1 else xb[0], yb, keep=keep)

    def _load(self, idx: Tensor) -> None:
        m = idx.numel()
        host = torch.empty(self.capacity + 1, dtype=torch.int64, pin_memory=self.engine.pinned)
        host[:m] = idx
        host[m:-1] = idx[0]  # padding: a row the batch already holds
        host[-1] = m
        self._slots.copy_(host, non_blocking=True)  # the pinned block is not reused before the copy ran

    def _capture(self, idx: Tensor) -> None:
        engine = self.engine
        params = [p for group in self.dp.optimizer.param_groups for p in group["params"]]
        saved = [p.detach().clone() for p in params]
        state = {id(t): t.clone() for s in self.dp.optimizer.state.values() for t in s.values()
                 if isinstance(t, Tensor)}
        gens = [self.dp.generator] if self.dp.generator is not None else []
        gen_states = [g.get_state() for g in gens]
        default_rng = engine.get_rng_state(self.device)
        self._load(idx)
        with engine.side_stream(self.device):
            for _ in range(self.warmup):
                self._body()
        with torch.no_grad():  # undo the warm-up steps
            for p, v in zip(params, saved):
                p.copy_(v)
            for s in self.dp.optimizer.state.values():
                for t in s.values():
                    if isinstance(t, Tensor):
                        t.copy_(state[id(t)]) if id(t) in state else t.zero_()
        for g, st in zip(gens, gen_states):
            g.set_state(st)
        engine.set_rng_state(default_rng, self.device)
        self.dp.zero_grad()
        self._replay = engine.record(self, gens)

    def __call__(self, idx: Tensor) -> StepStats | None:
        m = idx.numel()
        if m == 0 or m > self.capacity:
            return None
        if self._replay is None:
            self._capture(idx)
        self._load(idx)
        noisy = self.dp.private and self.dp.noise_std() > 0 and self.dp.generator is not None
        before = self.dp.generator.get_state() if self.replays == 0 and noisy else None
        self._replay()
        if before is not None and torch.equal(before, self.dp.generator.get_state()):
            # a replay that did not advance the noise generator would add the same noise every step
            raise RuntimeError("CUDA graph replay left the noise generator's state unchanged: the noise would "
                               "repeat at every step; train without cuda_graph")
        self.replays += 1
        norms = self._stats.norms
        return StepStats(self._stats.loss_sum, None if norms is None else norms[:m])
