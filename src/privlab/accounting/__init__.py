r"""Privacy accounting: events, one accountant interface, five accountants, calibration.

The two functions the chapters and the CLI use:

>>> from privlab.accounting import dpsgd_epsilon, calibrate_noise
>>> eps = dpsgd_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=10_000, delta=1e-5)   # PLD
>>> 6.18 < eps < 6.20
True
>>> sigma = calibrate_noise(target_epsilon=eps, delta=1e-5, sample_rate=0.01, steps=10_000)
>>> 0.999 < sigma <= 1.001
True

The object interface (every accountant: ``compose(event, count=1)`` returning
the accountant, ``get_epsilon(delta)``, ``get_delta(epsilon)`` where the method
allows):

>>> from privlab.accounting import RdpAccountant, PoissonSampledEvent, GaussianEvent
>>> step = PoissonSampledEvent(sample_rate=0.01, event=GaussianEvent(noise_multiplier=1.0))
>>> round(RdpAccountant().compose(step, count=10_000).get_epsilon(1e-5), 3)
6.713

==========================================  ============================================
accountant                                  events it analyses
==========================================  ============================================
:class:`BasicCompositionAccountant`         (eps, delta), Laplace, Gaussian*, subsampled*
:class:`AdvancedCompositionAccountant`      same, Dwork-Rothblum-Vadhan 2010
:class:`RdpAccountant`                      Gaussian, subsampled Gaussian, Laplace, pure eps
:class:`ZcdpAccountant`                     Gaussian, Laplace, pure eps (no subsampling)
:class:`PldAccountant`                      Gaussian, Laplace, (eps, delta), all subsampled
==========================================  ============================================

(*) via a share of delta per step and the analytic Gaussian epsilon.

Used in: chapters 3, 4, 6, 7, 8, 9, 10, 12, 13.
"""

from .base import Accountant, UnsupportedEventError, handles
from .calibration import ACCOUNTANTS, DPSGD_ACCOUNTANTS, calibrate, calibrate_noise, dpsgd_epsilon, make_accountant
from .composition import (
    AdvancedCompositionAccountant,
    BasicCompositionAccountant,
    advanced_composition,
    advanced_crossover,
    advanced_is_worse,
    basic_composition,
    gaussian_epsilon,
)
from .events import (
    ComposedEvent,
    EpsilonDeltaEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    dpsgd_event,
    event_from_dict,
    event_to_dict,
)
from .pld import PldAccountant
from .rdp import (
    DEFAULT_ORDERS,
    RdpAccountant,
    gaussian_rdp,
    laplace_rdp,
    rdp_to_delta,
    rdp_to_epsilon,
    subsampled_gaussian_rdp,
)
from .zcdp import ZcdpAccountant, epsilon_from_rho, rho_from_epsilon, zcdp_to_delta, zcdp_to_epsilon

__all__ = [
    "Accountant", "UnsupportedEventError", "handles",
    "ACCOUNTANTS", "DPSGD_ACCOUNTANTS", "make_accountant", "dpsgd_epsilon", "calibrate_noise", "calibrate",
    "BasicCompositionAccountant", "AdvancedCompositionAccountant", "RdpAccountant", "ZcdpAccountant",
    "PldAccountant",
    "PrivacyEvent", "LaplaceEvent", "GaussianEvent", "EpsilonDeltaEvent", "PoissonSampledEvent",
    "ComposedEvent", "SelfComposedEvent", "dpsgd_event", "event_to_dict", "event_from_dict",
    "basic_composition", "advanced_composition", "advanced_is_worse", "advanced_crossover",
    "gaussian_epsilon",
    "DEFAULT_ORDERS", "gaussian_rdp", "laplace_rdp", "subsampled_gaussian_rdp", "rdp_to_epsilon",
    "rdp_to_delta", "zcdp_to_epsilon", "zcdp_to_delta", "rho_from_epsilon", "epsilon_from_rho",
]
