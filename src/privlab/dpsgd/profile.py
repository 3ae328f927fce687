r"""Gradient-norm profiling: look at :math:`\|g_i\|` before choosing the clipping norm :math:`C`.

Over a training run, collect every example's unclipped gradient norm
:math:`\|g_i\|` at the step it was sampled in, then summarise: the median,
percentiles, and for candidate clipping norms the fraction clipped,

.. math::  \hat p(C) = \frac{1}{n}\sum_{k=1}^{n} \mathbf{1}\{\|g_{(k)}\| > C\},

(an example with :math:`\|g_i\| \le C` passes unchanged). A :math:`C` far below
the typical norm turns DP-SGD into normalised SGD and throws away magnitude
information; far above it, the noise :math:`\sigma C` swamps the signal. A
common heuristic is to start near the median (Andrew et al., *Differentially
private learning with adaptive clipping*, NeurIPS 2021, arXiv:1905.03871, adapt
:math:`C` to a target quantile).

Note the profile itself looks at private data: the norms it reports are not
differentially private. Profile on public or proxy data, or account for it.

Used in: chapters 6, 13.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._validate import check_positive
from .train import DPSGDConfig, train

__all__ = ["GradNormProfile", "profile_grad_norms", "summarize_grad_norms"]

DEFAULT_PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0, 99.0)


@dataclass(frozen=True)
class GradNormProfile:
    """Summary of per-example gradient norms collected over a run."""

    count: int
    median: float
    mean: float
    max: float
    percentiles: dict[float, float]  # percentile (0-100) -> norm
    fraction_clipped: dict[float, float]  # C -> fraction of norms above C
    norms: np.ndarray = field(repr=False)

    def fraction_clipped_at(self, max_grad_norm: float) -> float:
        """Fraction of the collected norms strictly above ``max_grad_norm``."""
        c = check_positive("max_grad_norm", max_grad_norm)
        return float(np.mean(self.norms > c)) if self.count else float("nan")


def summarize_grad_norms(
    norms, *, clip_norms: Sequence[float] = (), percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> GradNormProfile:
    r"""Median, mean, max, percentiles of ``norms`` and the fraction above each clipping norm.

    Args:
        norms: per-example gradient norms (array-like or tensor), any shape.
        clip_norms: candidate clipping norms :math:`C`.
        percentiles: in [0, 100].

    Raises:
        ValueError: for NaN or negative norms, a non-positive ``C`` or a percentile outside [0, 100].

    >>> p = summarize_grad_norms([0.5, 1.0, 1.5, 2.0], clip_norms=[1.0])
    >>> p.median, p.fraction_clipped[1.0]
    (1.25, 0.5)
    """
    if isinstance(norms, torch.Tensor):
        norms = norms.detach().cpu().numpy()
    arr = np.asarray(norms, dtype=float).ravel()
    if np.isnan(arr).any() or (arr < 0).any():
        raise ValueError("norms must be non-negative numbers, got NaN or a negative value")
    cs = [check_positive("max_grad_norm", c) for c in clip_norms]
    ps = [float(p) for p in percentiles]
    if any(not 0 <= p <= 100 for p in ps):
        raise ValueError(f"percentiles must lie in [0, 100], got {ps}")
    if arr.size == 0:
        nan = float("nan")
        return GradNormProfile(0, nan, nan, nan, {p: nan for p in ps}, {c: nan for c in cs}, arr)
    return GradNormProfile(
        count=int(arr.size),
        median=float(np.median(arr)),
        mean=float(arr.mean()),
        max=float(arr.max()),
        percentiles={p: float(v) for p, v in zip(ps, np.percentile(arr, ps))},
        fraction_clipped={c: float(np.mean(arr > c)) for c in cs},
        norms=arr,
    )


def profile_grad_norms(
    model: nn.Module,
    X,
    y,
    *,
    loss_fn,
    config: DPSGDConfig,
    generator: torch.Generator,
    clip_norms: Sequence[float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> GradNormProfile:
    r"""Train as ``config`` says and profile the per-example gradient norms seen along the way.

    Every step's unclipped :math:`\|g_i\|` (from the fast path, computed anyway
    in private mode) is kept; in non-private mode they are computed in
    addition. The model is trained in place.

    Args:
        model, X, y, loss_fn, config, generator: as in :func:`privlab.dpsgd.train`.
        clip_norms: candidate :math:`C` values for ``fraction_clipped``
            (default: ``config.max_grad_norm`` if set).
        percentiles: in [0, 100].

    Returns:
        :class:`GradNormProfile` over all examples of all steps.

    Used in: chapters 6, 13.
    """
    if clip_norms is None:
        clip_norms = () if config.max_grad_norm is None else (config.max_grad_norm,)
    result = train(model, X, y, loss_fn=loss_fn, config=dataclasses.replace(config, record_grad_norms=True),
                   generator=generator)
    return summarize_grad_norms(result.grad_norms, clip_norms=clip_norms, percentiles=percentiles)
