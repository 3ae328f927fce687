r"""Synthetic data: SDV generators, a DP marginal synthesizer, reference generators, and an evaluation.

Every generator has the same two methods, ``fit(df) -> self`` and
``sample(n, *, rng=None) -> DataFrame`` (``rng`` a numpy Generator or an int
seed; ``None`` continues the generator's own stream, seeded at construction):

============================  ==============================================  ===========
name                          what                                            guarantee
============================  ==============================================  ===========
``"gaussian_copula"``         SDV GaussianCopulaSynthesizer                   none
``"ctgan"``, ``"tvae"``       SDV CTGAN / TVAE (Xu et al. 2019)               none
``"marginal"``                :class:`MarginalSynthesizer` (MST style)        (eps, delta)-DP
``"independent"``             columns resampled independently                 none
``"copy"``                    training rows, optionally jittered              none
============================  ==============================================  ===========

>>> from privlab.datasets import load_cps1988
>>> from privlab.synthetic import cps1988_domain
>>> df = load_cps1988()
>>> mst = make_synthesizer("marginal", seed=0, epsilon=1.0, delta=1e-6, domain=cps1988_domain())
>>> out = mst.fit(df).sample()  # as many records as a DP estimate of len(df)
>>> out.shape[1], abs(len(out) - len(df)) < 200
(7, True)

Used in: chapter 10.
"""

from __future__ import annotations

from collections.abc import Callable

from privlab.synthetic.baselines import CopySynthesizer, IndependentSynthesizer
from privlab.synthetic.domain import CategoricalDomain, NumericDomain, cps1988_domain, dp_numeric_domain
from privlab.synthetic.evaluate import SyntheticEvaluation, evaluate_synthetic
from privlab.synthetic.marginal import MarginalSynthesizer, Measurement, PrivacyReport
from privlab.synthetic.metrics import association_matrix, correlation_distance, correlation_ratio, cramers_v
from privlab.synthetic.sdv_models import SDV_MODELS, SdvConfig, SdvSynthesizer, sdv_config, sdv_metadata

__all__ = [
    "make_synthesizer", "SYNTHESIZERS",
    "SdvSynthesizer", "SdvConfig", "sdv_config", "sdv_metadata", "SDV_MODELS",
    "MarginalSynthesizer", "PrivacyReport", "Measurement",
    "IndependentSynthesizer", "CopySynthesizer",
    "CategoricalDomain", "NumericDomain", "cps1988_domain", "dp_numeric_domain",
    "evaluate_synthetic", "SyntheticEvaluation",
    "association_matrix", "correlation_distance", "cramers_v", "correlation_ratio",
]  # fmt: skip


def _sdv_synthesizer(name: str, *, seed: int | None, scale=None, **kwargs) -> SdvSynthesizer:
    if seed is None:
        raise ValueError(f"{name} needs an int seed, got None")
    return SdvSynthesizer(name, seed=seed, scale=scale, **kwargs)


def _scale_free(cls: type) -> Callable:
    """A factory for a generator whose size does not depend on the scale profile."""
    return lambda name, *, seed, scale=None, **kwargs: cls(seed=seed, **kwargs)


#: Every generator :func:`make_synthesizer` knows: name -> ``factory(name, *, seed, scale, **kwargs)``.
SYNTHESIZERS: dict[str, Callable] = {
    **dict.fromkeys(SDV_MODELS, _sdv_synthesizer),
    "marginal": _scale_free(MarginalSynthesizer),
    "independent": _scale_free(IndependentSynthesizer),
    "copy": _scale_free(CopySynthesizer),
}


def make_synthesizer(name: str, *, seed: int | None, scale=None, **kwargs):
    """A generator by name, seeded, sized from the scale profile.

    Args:
        name: one of :data:`SYNTHESIZERS`.
        seed: seeds everything the generator draws (``None``: fresh entropy; the
            SDV models need an int).
        scale: the scale profile for the SDV models (epochs, batch size, rows).
        **kwargs: passed on: ``epsilon``, ``delta``, ``bins``, ``domain`` for
            ``"marginal"``; ``epochs``, ``batch_size``, ``max_rows``, ``device``
            and SDV's own arguments for the SDV models; ``noise`` for ``"copy"``.

    Raises:
        ValueError: an unknown name, or invalid arguments for the generator.

    >>> type(make_synthesizer("tvae", seed=0, scale="smoke")).__name__
    'SdvSynthesizer'
    >>> make_synthesizer("gan", seed=0)
    Traceback (most recent call last):
    ...
    ValueError: name must be one of ('gaussian_copula', 'ctgan', 'tvae', 'marginal', 'independent', 'copy'), got 'gan'

    Used in: chapter 10.
    """
    if name not in SYNTHESIZERS:
        raise ValueError(f"name must be one of {tuple(SYNTHESIZERS)}, got {name!r}")
    return SYNTHESIZERS[name](name, seed=seed, scale=scale, **kwargs)
