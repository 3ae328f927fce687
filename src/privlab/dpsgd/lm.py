r"""Per-example losses for causal language models, in the form the DP-SGD kernel takes.

The kernel (:func:`privlab.dpsgd.clipped_grad_sum`) calls ``loss_fn(outputs,
targets)`` and needs one loss per example, shape ``(B,)``. A causal language
model predicts token :math:`t+1` from tokens :math:`\le t`, so example
:math:`i`'s loss is its next-token cross-entropy averaged over its own
predicted tokens (``reduction="mean"``) or summed (``"sum"``):

.. math::
    \ell_i = \frac{1}{|M_i|} \sum_{t \in M_i} -\log p_\theta(y_{i,t+1} \mid y_{i,\le t}),
    \qquad M_i = \{t : y_{i,t+1} \ne \text{ignore\_index}\}.

The average is per example (over :math:`|M_i|`, which depends on example
:math:`i` alone), never over the batch, so each example's gradient, and hence
its clipped contribution, depends on that example only. The targets follow the
``transformers`` convention: ``labels`` aligned with ``input_ids`` (usually the
ids themselves, with padding set to ``-100``); the shift happens here.

Used in: the language-model chapter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["lm_loss"]


def lm_loss(outputs, targets: Tensor, *, reduction: str = "mean", ignore_index: int = -100) -> Tensor:
    r"""Per-example next-token cross-entropy, shape ``(B,)``, for :func:`privlab.dpsgd.clipped_grad_sum`.

    Args:
        outputs: logits ``(B, T, V)``, or a ``transformers`` output with a ``logits`` field.
        targets: token ids ``(B, T)`` aligned with the inputs (``labels`` in ``transformers``);
            positions equal to ``ignore_index`` are not predicted.
        reduction: ``"mean"`` over each example's predicted tokens (0 for an example with none)
            or ``"sum"``.
        ignore_index: the label that marks a position to skip.

    Returns:
        Tensor ``(B,)``.

    >>> logits = torch.zeros(2, 3, 4)                 # uniform over 4 tokens
    >>> labels = torch.tensor([[1, 2, 3], [1, 2, -100]])
    >>> lm_loss(logits, labels)                       # log 4 per predicted token
    tensor([1.3863, 1.3863])
    >>> lm_loss(logits, labels, reduction="sum")      # two predictions, then one
    tensor([2.7726, 1.3863])
    """
    logits = getattr(outputs, "logits", outputs)
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        raise ValueError(f"outputs must be logits of shape (B, T, V) or carry them in .logits, got {type(outputs)}")
    if targets is None or targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must have shape {tuple(logits.shape[:2])}, got "
                         f"{None if targets is None else tuple(targets.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    pred, gold = logits[:, :-1], targets[:, 1:]
    per_token = F.cross_entropy(pred.transpose(1, 2), gold, ignore_index=ignore_index, reduction="none")  # (B, T-1)
    total = per_token.sum(1)
    if reduction == "sum":
        return total
    count = (gold != ignore_index).sum(1)
    return total / count.clamp_min(1).to(total.dtype)
