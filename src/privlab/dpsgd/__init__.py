r"""DP-SGD from scratch, made fast: per-sample gradients, clipping, noise, Poisson sampling, training.

One step of DP-SGD (Abadi et al. 2016, arXiv:1607.00133, Algorithm 1), each
line a named piece of this package:

.. math::
    \tilde g = \frac{1}{qN}\Bigl(\sum_{i \in S} \min\bigl(1, \tfrac{C}{\|g_i\|}\bigr) g_i
    + \mathcal{N}(0, \sigma^2 C^2 I)\Bigr), \qquad S \sim \mathrm{Poisson}(q)

=============================  ==================================================
per-sample gradients           :func:`per_sample_grads` (``"loop"``, ``"vmap"``);
                               the ``"fast"`` path never forms them
                               (:mod:`privlab.dpsgd.fast`)
clip and sum (the kernel)      :func:`clipped_grad_sum`, :func:`clip_factors`,
                               :func:`per_example_grad_norms`; :func:`removal_gaps`
                               (its sensitivity, measured on one batch)
noise, scale, optimizer step   :class:`DPOptimizer`
Poisson sampling / shuffling   :class:`PoissonSampler`, :class:`ShuffleSampler`,
                               :func:`make_sampler`
training loop                  :func:`train`, :class:`DPSGDConfig`, :class:`TrainResult`,
                               :func:`run_seeds` (its random streams)
many small MLPs at once        :mod:`privlab.dpsgd.batched` (backpropagation by
                               hand, per-example norms, clipped sums)
several processes              :mod:`privlab.dpsgd.distributed`
CUDA graphs                    :class:`CUDAGraphStep`, :func:`graph_capacity`
                               (:mod:`privlab.dpsgd.graphs`: padded Poisson batches)
choosing C                     :func:`profile_grad_norms`, :func:`summarize_grad_norms`
language-model loss            :func:`lm_loss` (per-example next-token cross-entropy)
=============================  ==================================================

Used in: chapters 6, 7, 8, 11, 12, 13.
"""

from .clipping import (
    METHODS,
    ClippedSum,
    clip_factors,
    clipped_grad_sum,
    clipped_grad_sum_with_stats,
    per_example_grad_norms,
    removal_gaps,
)
from .graphs import CUDAGraphStep, graph_capacity
from .lm import lm_loss
from .optimizer import DPOptimizer, StepStats
from .per_sample import per_example_losses, per_sample_grads
from .profile import GradNormProfile, profile_grad_norms, summarize_grad_norms
from .rules import covered_types, register_rule
from .sampling import (
    SAMPLERS,
    PoissonAccountingWarning,
    PoissonSampler,
    ShuffleSampler,
    make_sampler,
    steps_per_epoch,
    uniform_subset,
)
from .train import DPSGDConfig, RunSeeds, TrainResult, epsilon_spent, run_seeds, train

__all__ = [
    "METHODS",
    "SAMPLERS",
    "CUDAGraphStep",
    "ClippedSum",
    "DPOptimizer",
    "DPSGDConfig",
    "GradNormProfile",
    "PoissonAccountingWarning",
    "PoissonSampler",
    "RunSeeds",
    "ShuffleSampler",
    "StepStats",
    "TrainResult",
    "clip_factors",
    "clipped_grad_sum",
    "clipped_grad_sum_with_stats",
    "covered_types",
    "epsilon_spent",
    "graph_capacity",
    "lm_loss",
    "make_sampler",
    "per_example_grad_norms",
    "per_example_losses",
    "per_sample_grads",
    "profile_grad_norms",
    "register_rule",
    "removal_gaps",
    "run_seeds",
    "steps_per_epoch",
    "summarize_grad_norms",
    "train",
    "uniform_subset",
]
