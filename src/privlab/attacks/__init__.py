r"""Attacks that the defences of the course stop, each measured beside its defence.

=============================  ==================================================
membership inference (LiRA)    :mod:`privlab.attacks.lira` (chapter 12)
gradient inversion             :mod:`privlab.attacks.inversion` (chapter 9)
=============================  ==================================================
"""

from .inversion import (
    client_update,
    infer_labels,
    invert_update,
    matched_mse,
    privatize_update,
)
from .lira import (
    MLPEnsemble,
    bootstrap_tpr,
    dp_tpr_bound,
    lira_scores,
    logit_confidence,
    roc_curve,
    tpr_at_fpr,
    train_mlps,
)

__all__ = [
    "client_update",
    "infer_labels",
    "invert_update",
    "matched_mse",
    "privatize_update",
    "MLPEnsemble",
    "bootstrap_tpr",
    "dp_tpr_bound",
    "lira_scores",
    "logit_confidence",
    "roc_curve",
    "tpr_at_fpr",
    "train_mlps",
]
