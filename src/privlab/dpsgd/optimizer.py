r"""The DP-SGD step, one named method per line of the algorithm, around any torch optimizer.

.. math::
    \tilde g \;=\; \frac{1}{qN}\Bigl(\underbrace{\sum_{i \in S} \min\bigl(1, \tfrac{C}{\|g_i\|}\bigr) g_i}_{\text{per-sample grads, clip, sum}}
    \;+\; \underbrace{\mathcal{N}(0, \sigma^2 C^2 I)}_{\text{add noise}}\Bigr),
    \qquad \theta \leftarrow \mathrm{optimizer}(\theta, \tilde g)

Symbols: :math:`S` the (Poisson) batch, :math:`g_i` example :math:`i`'s gradient,
:math:`C` ``max_grad_norm``, :math:`\sigma` ``noise_multiplier``, :math:`qN`
``expected_batch_size`` (dividing by the *expected* size, not :math:`|S|`,
keeps the sensitivity of the update fixed; Abadi et al. 2016 divide by the lot
size :math:`L = qN`). The noise is drawn from an explicit ``torch.Generator``
on the parameters' device.

:class:`DPOptimizer` exposes each stage as a method, in the order ``step`` calls them:

=====================  ==========================================================
``clipped_sum``        per-sample gradients, clip (``clip_factors``), sum
``reduce``             sum across workers (identity here; a DDP subclass
                       all-reduces, then every rank adds the *same* noise from
                       an identically seeded generator, so noise enters once)
``add_noise``          :math:`+\,\mathcal{N}(0, \mathrm{noise\_std}^2)`, ``noise_std`` = :math:`\sigma C`
``scale``              :math:`\times\, 1/(qN)`
``apply``              write ``p.grad`` and call the wrapped optimizer's ``step``
=====================  ==========================================================

so a variant is a subclass overriding one method. Privacy audits (chapter 12)
plant bugs this way, e.g. ``add_noise`` returning its input (no noise),
``clip_factors`` returning ones (no clipping), ``noise_std`` returning
:math:`C/(qN)` instead of :math:`\sigma C`.

With ``noise_multiplier == 0`` and ``max_grad_norm=None`` the step is plain,
non-private training (mean loss over the batch, one backward), the baseline
the chapters compare against.

Reference: Abadi et al., *Deep Learning with Differential Privacy*, CCS 2016
(arXiv:1607.00133), Algorithm 1.

Used in: chapters 6, 7, 8, 12, 13.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._validate import check_nonnegative, check_positive, check_torch_generator
from .clipping import METHODS, ClippedSum, clip_factors, clipped_grad_sum_with_stats
from .per_sample import as_input_tuple, batch_size_of, per_example_losses

__all__ = ["DPOptimizer", "StepStats"]


class StepStats(NamedTuple):
    """What one step reports, as tensors (no host synchronisation)."""

    loss_sum: Tensor  # () sum of per-example losses over the batch (before the update)
    norms: Tensor | None  # (B,) unclipped per-example gradient norms, when computed


class DPOptimizer:
    r"""Wrap a torch optimizer with the DP-SGD update, each stage a named, overridable method.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        noise_multiplier: :math:`\sigma \ge 0`.
        max_grad_norm: :math:`C > 0`, or ``None`` together with ``noise_multiplier=0``
            for non-private training.
        expected_batch_size: :math:`qN > 0`.
        generator: ``torch.Generator`` on the parameters' device (required when :math:`\sigma > 0`).
        method: per-sample gradient method, ``"fast"``, ``"vmap"`` or ``"loop"``.
        record_norms: in non-private mode, also compute per-example norms for profiling.

    Raises:
        ValueError: naming a bad ``noise_multiplier``, ``max_grad_norm``,
            ``expected_batch_size``, ``method`` or generator.

    Reference: Abadi et al. 2016 (arXiv:1607.00133), Algorithm 1.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(3, 1)
    >>> opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0,
    ...                   max_grad_norm=1.0, expected_batch_size=4.0, generator=torch.Generator().manual_seed(0))
    >>> mse = lambda out, t: (out.squeeze(1) - t) ** 2
    >>> stats = opt.step(model, mse, torch.randn(4, 3), torch.randn(4))
    >>> stats.norms.shape
    torch.Size([4])

    Used in: chapters 6, 7, 8, 12, 13.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float | None,
        expected_batch_size: float,
        generator: torch.Generator | None = None,
        method: str = "fast",
        record_norms: bool = False,
    ):
        self.optimizer = optimizer
        self.noise_multiplier = check_nonnegative("noise_multiplier", noise_multiplier)
        self.max_grad_norm = None if max_grad_norm is None else check_positive("max_grad_norm", max_grad_norm)
        if self.max_grad_norm is None and self.noise_multiplier > 0:
            raise ValueError(
                f"noise_multiplier = {noise_multiplier} needs a max_grad_norm (the noise std is sigma * C), got None"
            )
        self.expected_batch_size = check_positive("expected_batch_size", expected_batch_size)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if self.noise_multiplier > 0:
            check_torch_generator(generator, when="when noise_multiplier > 0")
        self.generator = generator
        self.method = method
        self.record_norms = bool(record_norms)
        self._keep: Tensor | None = None  # the step's padding mask, set by ``step(..., keep=)`` only

    @property
    def private(self) -> bool:
        """``False`` only for the non-private baseline (no clipping, no noise)."""
        return self.max_grad_norm is not None

    # -- step 1-3: per-sample gradients, clip, sum ------------------------------------------
    def clip_factors(self, norms: Tensor) -> Tensor:
        r""":math:`c_i = \min(1, C/\|g_i\|)`, shape ``(B,)``."""
        return clip_factors(norms, max_grad_norm=self.max_grad_norm)

    def clipped_sum(self, model: nn.Module, loss_fn, inputs, targets) -> ClippedSum:
        r""":math:`\sum_i c_i g_i`, with the unclipped norms and the per-example losses."""
        return clipped_grad_sum_with_stats(
            model, loss_fn, inputs, targets, factors_fn=self._masked_factors, method=self.method
        )

    def _masked_factors(self, norms: Tensor) -> Tensor:
        """``clip_factors``, then 0 on padding rows (``keep`` False): applied after any override of it."""
        return _zero_padding(self.clip_factors(norms), self._keep)

    def reduce(self, grads: list[Tensor]) -> list[Tensor]:
        """Combine the clipped sums of several workers (identity for one process)."""
        return grads

    # -- step 4: add noise ------------------------------------------------------------------
    def noise_std(self) -> float:
        r"""Standard deviation of the Gaussian noise on the sum: :math:`\sigma C`."""
        return self.noise_multiplier * self.max_grad_norm

    def add_noise(self, grads: list[Tensor]) -> list[Tensor]:
        r""":math:`\bar g + \mathcal{N}(0, \mathrm{noise\_std}^2 I)`, one draw for all parameters."""
        std = self.noise_std()
        if std == 0 or not grads:
            return grads
        ref = grads[0]
        gen = self.generator
        if gen is None or gen.device.type != ref.device.type or (
            ref.device.type == "cuda" and gen.device.index not in (None, ref.device.index)
        ):
            raise ValueError(
                f"the noise generator must live on the parameters' device {ref.device}, got "
                f"{None if gen is None else gen.device}"
            )
        sizes = [g.numel() for g in grads]
        # drawn in float32 or wider: a Gaussian drawn in bf16/fp16 is coarsely quantised (8 or 11 bits of
        # mantissa), so it is not the Gaussian the accountant assumes; the sum is cast back afterwards
        # (rounding the noisy sum is post-processing)
        noise_dtype = functools.reduce(torch.promote_types, (g.dtype for g in grads), torch.float32)
        z = torch.randn(sum(sizes), generator=gen, device=ref.device, dtype=noise_dtype)  # one draw
        noise = [n.view_as(g) for g, n in zip(grads, torch.split(z, sizes))]
        if all(g.dtype == noise_dtype for g in grads):
            # g + std * n written into the draw's own buffer: the same values as an out-of-place add, one
            # parameter-sized buffer fewer (85M parameters: 340 MB in float32); ``grads`` is left as it was
            return [torch.add(g, n, alpha=std, out=n) for g, n in zip(grads, noise)]
        return [(g.to(noise_dtype) + std * n).to(g.dtype) for g, n in zip(grads, noise)]

    # -- step 5: scale ----------------------------------------------------------------------
    def scale(self, grads: list[Tensor]) -> list[Tensor]:
        r""":math:`\tilde g = (\bar g + \text{noise}) / (qN)`."""
        return torch._foreach_div(grads, self.expected_batch_size)

    # -- step 6: optimizer step -------------------------------------------------------------
    def apply(self, params: list[nn.Parameter], grads: list[Tensor]) -> None:
        """Write the private gradients into ``p.grad`` and let the wrapped optimizer step.

        A 16-bit parameter's gradient arrives in float32 (the clipped sum, noise and scaling are
        formed there) and is cast to the parameter's type here, after the noise: post-processing.
        """
        for p, g in zip(params, grads, strict=True):
            p.grad = g if g.dtype == p.dtype else g.to(p.dtype)
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, model: nn.Module, loss_fn, inputs, targets, *, keep: Tensor | None = None) -> StepStats:
        r"""One DP-SGD step on a batch (possibly empty); returns tensors, never host numbers.

        Args:
            model: the network; its trainable parameters are updated.
            loss_fn: per-example loss, as in :func:`privlab.dpsgd.clipped_grad_sum`.
            inputs: tensor or tuple of tensors with leading batch dimension ``B``.
            targets: tensor ``(B, ...)`` or ``None``.
            keep: optional bool mask ``(B,)``; rows where it is ``False`` are padding and enter no
                sum: their clip factor is 0 (so the clipped sum is exactly that of the kept rows),
                their loss is not counted, and the non-private mean is over the kept rows. A batch
                padded to a fixed size this way is what :class:`privlab.dpsgd.CUDAGraphStep` replays.

        Raises:
            ValueError: ``keep`` is not a bool tensor of shape ``(B,)``.
        """
        if keep is not None:
            batch = batch_size_of(as_input_tuple(inputs))
            if not isinstance(keep, Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != (batch,):
                raise ValueError(f"keep must be a bool tensor of shape ({batch},), got "
                                 f"{getattr(keep, 'dtype', type(keep).__name__)} {tuple(getattr(keep, 'shape', ()))}")
        if not self.private:
            return self._nonprivate_step(model, loss_fn, inputs, targets, keep)
        self.zero_grad()  # the last step's gradients are not needed here: free them before this one's
        self._keep = keep
        try:
            result = self.clipped_sum(model, loss_fn, inputs, targets)  # 1-3: per-sample grads, clip, sum
        finally:
            self._keep = None
        params, losses, norms = result.params, _zero_padding(result.losses, keep), result.norms
        grads, result = self.reduce(result.grads), None  # each stage's input is freed once it returns
        grads = self.add_noise(grads)  # 4: + N(0, sigma^2 C^2)
        grads = self.scale(grads)  # 5: / (qN)
        self.apply(params, grads)  # 6: optimizer step
        return StepStats(losses.sum(), norms)

    def _nonprivate_step(self, model, loss_fn, inputs, targets, keep=None) -> StepStats:
        """The baseline: mean loss over the (kept rows of the) batch, one backward, optimizer step.

        The mean is over the realised batch, not :math:`qN`, and an empty batch takes no step: the
        non-private training one would run (see :mod:`privlab.dpsgd.train`), not this class's private
        step with the noise and the clipping switched off.
        """
        xs = as_input_tuple(inputs)
        batch = batch_size_of(xs)
        norms = None
        if self.record_norms:
            norms = clipped_grad_sum_with_stats(model, loss_fn, xs, targets, factors_fn=None, method=self.method).norms
        self.zero_grad()
        if batch == 0:
            device = next(model.parameters()).device
            return StepStats(torch.zeros((), device=device), norms)
        losses = _zero_padding(per_example_losses(loss_fn(model(*xs), targets), batch), keep)
        if keep is None:
            losses.mean().backward()
        else:  # the mean over the kept rows, their count a device number (no host sync)
            (losses.sum() / keep.sum().clamp(min=1)).backward()
        self.optimizer.step()
        return StepStats(losses.detach().sum(), norms)


def _zero_padding(t: Tensor, keep: Tensor | None) -> Tensor:
    """Per-example values ``(B,)`` (clip factors, losses) with the padding rows' set to 0."""
    return t if keep is None else torch.where(keep, t, torch.zeros_like(t))
