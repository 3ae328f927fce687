r"""Time and peak memory of one training step, measured the same way in the chapters and the benchmarks.

Timing: :func:`timed` (mean wall-clock seconds of a callable after a warm-up) and
:func:`time_steps` (mean wall-clock *and* process CPU seconds per step of a step
closure; on CUDA the device is synchronised around the timed block). On a machine
shared with other work the CPU time is the steadier measure of the work done (with
several threads it is their sum, not a latency).

Peak memory of one step, :func:`step_peak_bytes`, honestly labelled:

* CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated
  when it began;
* CPU: the same quantity for torch's CPU allocator, from the allocation and free events
  of ``torch.profiler`` (``profile_memory=True``): the running sum of bytes allocated
  minus freed since the step began, maximised over the step
  (:func:`cpu_step_peak_bytes`). Not RSS: NumPy/Python allocations and allocator
  caching are not counted.

What was allocated before the step (model, optimizer state, the input batch) is excluded;
the step's ``release`` callable frees the gradients first.

The steps compared: :data:`STEPS` maps a name to a factory ``factory(model, *, batch, device)
-> (step, release)``, where ``step(x, y)`` is one full training step (binary cross-entropy
on one logit, SGD, :math:`\sigma = 1`, :math:`C = 1` for the private ones) and ``release()``
drops the gradients: a non-private step, privlab's :class:`~privlab.dpsgd.DPOptimizer`
with each per-sample method, and Opacus 1.6's ``grad_sample_mode`` ``hooks``, ``ew``,
``functorch`` and ``ghost`` (its logits squeezed to ``(B,)``, so the ``(B, 1)`` pitfall of
chapter 8 does not apply). The network is :func:`streamrec_mlp`. Beside them,
:func:`opacus_clipped_sum`: Opacus's clipped sum alone, noise off, for checking its sensitivity.

Used in: chapters 6, 8; ``benchmarks/dpsgd.py``, ``benchmarks/dpsgd_lm.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dpsgd import DPOptimizer
from .losses import bce_losses

__all__ = ["STEPS", "cpu_step_peak_bytes", "disable_heap_trimming", "nonprivate_step", "opacus_clipped_sum", "opacus_step",
           "privlab_step", "step_peak_bytes", "streamrec_mlp", "sync", "time_steps", "timed"]


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], reps: int, *, warmup: int = 1, device=None,
          statistic: str = "mean") -> float:
    """Wall-clock seconds of ``fn()`` over ``reps`` calls, after ``warmup`` untimed calls.

    Args:
        fn: the work, called without arguments.
        reps: timed calls, at least 1.
        warmup: untimed calls first (caches, lazy initialisation).
        device: a CUDA device to synchronise before and after the timed calls (``None``: none).
        statistic: ``"mean"`` (the total over ``reps``, divided: one clock reading pair) or
            ``"median"`` of the single calls (robust to a call pre-empted on a shared machine).

    Raises:
        ValueError: ``reps < 1``, ``warmup < 0`` or an unknown ``statistic``.

    >>> calls = []
    >>> seconds = timed(lambda: calls.append(1), 3)
    >>> len(calls), seconds >= 0   # one warm-up call, three timed ones
    (4, True)
    >>> timed(lambda: None, 5, statistic="median") >= 0
    True

    Used in: chapter 6.
    """
    if int(reps) != reps or reps < 1:
        raise ValueError(f"reps must be an integer >= 1, got {reps}")
    if int(warmup) != warmup or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup}")
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    for _ in range(warmup):
        fn()
    sync(device)
    if statistic == "median":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        return float(statistics.median(times))
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def time_steps(step, x, y, steps: int, device) -> tuple[float, float]:
    """Mean (wall-clock, process CPU) seconds per step over ``steps`` consecutive ``step(x, y)`` calls.

    >>> wall, cpu = time_steps(lambda x, y: x + y, torch.ones(2), torch.ones(2), 2, torch.device("cpu"))
    >>> wall >= 0 and cpu >= 0
    True

    Used in: chapter 8.
    """
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(x, y)
    sync(device)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def cpu_step_peak_bytes(step, x, y) -> int:
    """Peak of (bytes allocated - bytes freed) by torch's CPU allocator during one ``step(x, y)``.

    >>> cpu_step_peak_bytes(lambda x, y: torch.empty(1_000_000, dtype=torch.uint8), None, None) >= 1_000_000
    True
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(x, y)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        if e.device_type() == torch.autograd.DeviceType.CPU:
            live += e.nbytes()
            peak = max(peak, live)
    return peak


def step_peak_bytes(step, release, x, y, device) -> int:
    """Peak memory of one ``step(x, y)`` above what was live when it began (see the module docstring).

    ``release()`` is called first (it drops the previous step's gradients).

    Used in: chapter 8.
    """
    release()
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(x, y)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    return cpu_step_peak_bytes(step, x, y)


def disable_heap_trimming() -> bool:
    """glibc only: stop malloc returning freed heap memory to the OS between steps (``mallopt``).

    With the default settings every step that needs more memory than the heap
    kept re-faults those pages (minor page faults, counted as system time); a
    caching allocator such as jemalloc or tcmalloc avoids this. Applies to all
    methods alike. Returns whether both settings took effect.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 2**30)) and bool(libc.mallopt(m_mmap_threshold, 2**25))
    except (OSError, AttributeError):
        return False


def streamrec_mlp() -> nn.Sequential:
    """The StreamRec click MLP (40-128-64-32-1, Linear-LayerNorm-ReLU-Dropout(0.1) blocks) as one ``nn.Sequential``.

    The architecture of :class:`privlab.models.StreamRecClickPredictor`, flat and with
    ``(B, 1)`` logits, the layout every Opacus ``grad_sample_mode`` accepts.

    >>> sum(p.numel() for p in streamrec_mlp().parameters())
    16065
    """
    layers, width = [], 40
    for hidden in (128, 64, 32):
        layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(0.1)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))



# -- step factories: each returns (step(x, y), release()) -------------------------------------------


def nonprivate_step(model: nn.Module, *, batch: int, device) -> tuple[Callable, Callable]:
    """One plain SGD step on the batch-mean binary cross-entropy (the baseline every ratio divides by)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(x).squeeze(1), y).backward()
        opt.step()

    return step, lambda: opt.zero_grad(set_to_none=True)


def privlab_step(method: str) -> Callable:
    """A factory for privlab's DP-SGD step (:class:`~privlab.dpsgd.DPOptimizer`) with per-sample ``method``."""

    def factory(model: nn.Module, *, batch: int, device) -> tuple[Callable, Callable]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        dp = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=float(batch),
                         generator=torch.Generator(device=device).manual_seed(0), method=method)
        return (lambda x, y: dp.step(model, bce_losses, x, y)), lambda: opt.zero_grad(set_to_none=True)

    return factory


def opacus_step(mode: str) -> Callable:
    """A factory for Opacus 1.6's DP-SGD step with ``grad_sample_mode=mode`` (``ghost``: two backward passes)."""

    def factory(model: nn.Module, *, batch: int, device) -> tuple[Callable, Callable]:
        from opacus.grad_sample.utils import prepare_module  # Opacus is imported only when asked for
        from opacus.optimizers import get_optimizer_class
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        extra = {"max_grad_norm": 1.0} if mode == "ghost" else {}
        gsm = prepare_module(model, grad_sample_mode=mode, batch_first=True, loss_reduction="mean", **extra)
        opt = get_optimizer_class("flat", False, mode)(
            optimizer=torch.optim.SGD(gsm.parameters(), lr=0.01), noise_multiplier=1.0, max_grad_norm=1.0,
            expected_batch_size=batch, loss_reduction="mean",
            generator=torch.Generator(device=device).manual_seed(0))
        if mode == "ghost":
            criterion = DPLossFastGradientClipping(gsm, opt, nn.BCEWithLogitsLoss(), "mean")
        else:
            criterion = nn.BCEWithLogitsLoss()

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            criterion(gsm(x).squeeze(1), y).backward()  # ghost: both backward passes happen here
            opt.step()

        return step, lambda: opt.zero_grad(set_to_none=True)

    return factory


def opacus_clipped_sum(model: nn.Module, loss_fn, inputs, targets, *, max_grad_norm: float,
                       functorch: bool = False) -> Tensor:
    """Opacus 1.6's clipped sum of per-sample gradients, noise off, as one flat vector.

    ``GradSampleModule`` (its per-layer hooks, or with ``functorch`` vmap over each layer's saved rows)
    with sum reduction, then ``DPOptimizer.pre_step`` (clip each sample to ``max_grad_norm``, sum, add
    zero noise); the hooks are removed afterwards, so ``model`` can be wrapped again. ``inputs``: a
    tensor or a tuple of the model's positional inputs. For :func:`privlab.dpsgd.removal_gaps`.

    Used in: chapter 8.
    """
    from opacus import GradSampleModule  # Opacus is imported only when asked for
    from opacus.optimizers import DPOptimizer as OpacusDPOptimizer

    xs = inputs if isinstance(inputs, tuple) else (inputs,)
    gsm = GradSampleModule(model, loss_reduction="sum", force_functorch=functorch)
    try:
        opt = OpacusDPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0,
                                max_grad_norm=max_grad_norm, expected_batch_size=len(xs[0]), loss_reduction="sum")
        opt.zero_grad()
        loss_fn(gsm(*xs), targets).sum().backward()
        opt.pre_step()
        return torch.cat([p.grad.flatten() for p in gsm.parameters()])
    finally:
        gsm._close()


#: Step factories by name, ``factory(model, *, batch, device) -> (step, release)``.
STEPS: dict[str, Callable] = {
    "non-private": nonprivate_step,
    "privlab fast": privlab_step("fast"),
    "privlab vmap": privlab_step("vmap"),
    "privlab loop": privlab_step("loop"),
    "opacus hooks": opacus_step("hooks"),
    "opacus ew": opacus_step("ew"),
    "opacus functorch": opacus_step("functorch"),
    "opacus ghost": opacus_step("ghost"),
}
