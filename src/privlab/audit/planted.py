r"""Planted bugs: broken DP-SGD optimizers that the audits must catch.

Each bug subclasses :class:`privlab.dpsgd.DPOptimizer` and overrides one named
stage, so it trains (and is audited) exactly as the honest optimizer would,
with the accountant still claiming the honest epsilon: noise off, clipping off,
noise std :math:`C/(qN)` instead of :math:`\sigma C`, and shuffled batches
accounted as Poisson (Chua et al. 2024, arXiv:2403.17673).

Used in: chapter 11.
"""

from __future__ import annotations

import torch

from privlab.dpsgd import DPOptimizer

__all__ = ["PLANTED_BUGS", "NoClipOptimizer", "NoNoiseOptimizer", "WrongNoiseScaleOptimizer"]


class NoNoiseOptimizer(DPOptimizer):
    """Planted bug: ``add_noise`` returns its input (the accountant still claims sigma)."""

    def add_noise(self, grads):
        return grads


class NoClipOptimizer(DPOptimizer):
    """Planted bug: ``clip_factors`` returns ones (no clipping)."""

    def clip_factors(self, norms):
        return torch.ones_like(norms)


class WrongNoiseScaleOptimizer(DPOptimizer):
    r"""Planted bug: noise std :math:`C/(qN)` (the scale of the *averaged* gradient) instead of :math:`\sigma C`."""

    def noise_std(self):
        return self.max_grad_norm / self.expected_batch_size


#: name -> (optimizer class, sampler) of each planted bug; ``"honest"`` is the reference.
PLANTED_BUGS = {
    "honest": (DPOptimizer, "poisson"),
    "no noise": (NoNoiseOptimizer, "poisson"),
    "no clipping": (NoClipOptimizer, "poisson"),
    "noise C/B": (WrongNoiseScaleOptimizer, "poisson"),
    "shuffle as Poisson": (DPOptimizer, "shuffle"),
}
