r"""Per-example losses, the form every DP-SGD kernel in privlab takes: one loss per example.

DP-SGD clips each example's gradient, so the loss must not be reduced over the batch:
``loss_fn(outputs, targets)`` returns shape ``(B,)``. Reduce it (``.mean()``) only for a
non-private step.

* binary cross-entropy on one logit per example,
  :math:`\ell_i = \log(1 + e^{z_i}) - y_i z_i` (:func:`bce_losses`);
* cross-entropy on class logits, :math:`\ell_i = -z_{i, y_i} + \log\sum_k e^{z_{ik}}`
  (:func:`ce_losses`).

>>> import torch
>>> bce_losses(torch.zeros(3, 1), torch.tensor([0.0, 1.0, 1.0])).shape
torch.Size([3])
>>> round(float(bce_losses(torch.zeros(1, 1), torch.ones(1))), 4)   # log 2
0.6931

Used in: chapters 8, 9, 12 (through the federated, audit and DP-SGD modules).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["bce_losses", "ce_losses"]


def bce_losses(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example binary cross-entropy on one logit per example: shape ``(B,)``.

    ``outputs`` of shape ``(B,)`` or ``(B, 1)``; ``targets`` of shape ``(B,)``, in [0, 1].
    """
    return F.binary_cross_entropy_with_logits(outputs.reshape(targets.shape), targets, reduction="none")


def ce_losses(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy on class logits ``(B, C)``: shape ``(B,)``."""
    return F.cross_entropy(outputs, targets.long(), reduction="none")
