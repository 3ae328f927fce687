r"""Privacy events: plain, frozen descriptions of what a computation did.

An *event* says which mechanism touched the data and how; an *accountant*
(see :mod:`privlab.accounting.base`) turns a sequence of events into a privacy
guarantee. Events carry no behaviour beyond validating their own fields, which
is what lets every accountant read the same description (the design of Google's
``dp_accounting.dp_event``).

Conventions (used by every accountant):

* neighbouring datasets differ by adding or removing one record;
* mechanisms are stated for a query of **sensitivity 1**, so the noise is given
  as a *noise multiplier* (noise scale / sensitivity);
* :class:`LaplaceEvent` is parameterised by its **scale** :math:`b`
  (noise :math:`\mathrm{Lap}(b)`, density :math:`\propto e^{-|x|/b}`), so it is
  :math:`\varepsilon = 1/b` pure DP; build it from an epsilon with
  :meth:`LaplaceEvent.from_epsilon`;
* :class:`GaussianEvent` adds :math:`\mathcal N(0, \sigma^2)` with
  :math:`\sigma` the noise multiplier.

>>> step = PoissonSampledEvent(sample_rate=0.01, event=GaussianEvent(noise_multiplier=1.0))
>>> SelfComposedEvent(step, 1000).count
1000
>>> LaplaceEvent.from_epsilon(0.5).scale
2.0
>>> GaussianEvent(noise_multiplier=0.0)
Traceback (most recent call last):
...
ValueError: noise_multiplier must be a finite number > 0, got 0.0
>>> event_from_dict(event_to_dict(step)) == step
True

Used in: chapters 3, 4, 6, 8, 9, 10, 12, 13.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from privlab._validate import (
    check_delta,
    check_int,
    check_nonnegative,
    check_positive,
    check_probability,
)

__all__ = [
    "PrivacyEvent",
    "LaplaceEvent",
    "GaussianEvent",
    "EpsilonDeltaEvent",
    "PoissonSampledEvent",
    "ComposedEvent",
    "SelfComposedEvent",
    "dpsgd_event",
    "event_to_dict",
    "event_from_dict",
]


class PrivacyEvent:
    """Base class of all events (a marker: events are data, not behaviour)."""

    __slots__ = ()


@dataclass(frozen=True)
class LaplaceEvent(PrivacyEvent):
    r"""The Laplace mechanism on a sensitivity-1 query: :math:`f(D) + \mathrm{Lap}(b)`.

    It is :math:`\varepsilon`-DP with :math:`\varepsilon = \Delta_1 / b = 1/b`
    (Dwork, McSherry, Nissim, Smith 2006).

    Args:
        scale: the Laplace scale :math:`b > 0` (noise multiplier).
    """

    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_positive("scale", self.scale))

    @property
    def epsilon(self) -> float:
        """The pure-DP epsilon :math:`1/b`."""
        return 1.0 / self.scale

    @classmethod
    def from_epsilon(cls, epsilon: float) -> "LaplaceEvent":
        """The Laplace mechanism that is ``epsilon``-DP (scale ``1/epsilon``)."""
        return cls(scale=1.0 / check_positive("epsilon", epsilon))


@dataclass(frozen=True)
class GaussianEvent(PrivacyEvent):
    r"""The Gaussian mechanism on an L2-sensitivity-1 query: :math:`f(D) + \mathcal N(0, \sigma^2)`.

    Args:
        noise_multiplier: :math:`\sigma > 0`, the noise standard deviation over
            the L2 sensitivity.
    """

    noise_multiplier: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", check_positive("noise_multiplier", self.noise_multiplier)
        )


@dataclass(frozen=True)
class EpsilonDeltaEvent(PrivacyEvent):
    r"""Any mechanism known only to be :math:`(\varepsilon, \delta)`-DP.

    Accountants use the worst case consistent with that guarantee (its privacy
    region, Kairouz, Oh, Viswanath 2015). ``delta = 0`` is pure DP.

    Args:
        epsilon: :math:`\varepsilon \ge 0`, finite.
        delta: :math:`\delta \in [0, 1)`.
    """

    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_nonnegative("epsilon", self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta, allow_zero=True))


@dataclass(frozen=True)
class PoissonSampledEvent(PrivacyEvent):
    r"""Run ``event`` on a Poisson subsample: each record kept independently with probability :math:`q`.

    Args:
        sample_rate: :math:`q \in (0, 1]`.
        event: the mechanism applied to the subsample.
    """

    sample_rate: float
    event: PrivacyEvent

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_rate", check_probability("sample_rate", self.sample_rate))
        if not isinstance(self.event, PrivacyEvent):
            raise ValueError(f"event must be a PrivacyEvent, got {self.event!r}")


@dataclass(frozen=True)
class ComposedEvent(PrivacyEvent):
    """The events run one after the other (adaptively), in order.

    Args:
        events: a sequence of events (stored as a tuple).
    """

    events: tuple

    def __post_init__(self) -> None:
        events = tuple(self.events)
        for e in events:
            if not isinstance(e, PrivacyEvent):
                raise ValueError(f"events must all be PrivacyEvents, got {e!r}")
        object.__setattr__(self, "events", events)


@dataclass(frozen=True)
class SelfComposedEvent(PrivacyEvent):
    """``event`` run ``count`` times (adaptively).

    Args:
        event: the repeated event.
        count: the number of repetitions, an integer >= 1.
    """

    event: PrivacyEvent
    count: int

    def __post_init__(self) -> None:
        if not isinstance(self.event, PrivacyEvent):
            raise ValueError(f"event must be a PrivacyEvent, got {self.event!r}")
        object.__setattr__(self, "count", check_int("count", self.count))


def dpsgd_event(*, noise_multiplier: float, sample_rate: float, steps: int) -> PrivacyEvent:
    r"""The event of DP-SGD: ``steps`` Poisson-sampled Gaussian steps.

    Each step adds :math:`\mathcal N(0, \sigma^2 C^2)` to the sum of clipped
    gradients of a Poisson sample with rate :math:`q` (Abadi et al. 2016,
    arXiv:1607.00133). With ``sample_rate == 1`` (full batch) there is no
    subsampling and the step is a plain :class:`GaussianEvent`.

    Args:
        noise_multiplier: :math:`\sigma > 0`.
        sample_rate: :math:`q \in (0, 1]`.
        steps: number of steps, an integer >= 1.

    Returns:
        ``SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(sigma)), steps)``.

    Raises:
        ValueError: for a bad noise multiplier, sample rate or step count.

    >>> dpsgd_event(noise_multiplier=1.0, sample_rate=1.0, steps=3)
    SelfComposedEvent(event=GaussianEvent(noise_multiplier=1.0), count=3)

    Used in: chapters 4, 6, 13.
    """
    gaussian = GaussianEvent(noise_multiplier=noise_multiplier)
    q = check_probability("sample_rate", sample_rate)
    step = gaussian if q == 1.0 else PoissonSampledEvent(sample_rate=q, event=gaussian)
    return SelfComposedEvent(event=step, count=check_int("steps", steps))


_EVENT_TYPES = {
    cls.__name__: cls
    for cls in (
        LaplaceEvent,
        GaussianEvent,
        EpsilonDeltaEvent,
        PoissonSampledEvent,
        ComposedEvent,
        SelfComposedEvent,
    )
}


def event_to_dict(event: PrivacyEvent) -> dict:
    """A JSON-serialisable description of ``event`` (used by the budget ledger)."""
    if not isinstance(event, PrivacyEvent):
        raise ValueError(f"event must be a PrivacyEvent, got {event!r}")
    out: dict = {"type": type(event).__name__}
    for f in fields(event):
        value = getattr(event, f.name)
        if isinstance(value, PrivacyEvent):
            value = event_to_dict(value)
        elif isinstance(value, tuple):
            value = [event_to_dict(v) for v in value]
        out[f.name] = value
    return out


def event_from_dict(data: dict) -> PrivacyEvent:
    """Inverse of :func:`event_to_dict`."""
    if not isinstance(data, dict) or data.get("type") not in _EVENT_TYPES:
        raise ValueError(f"not a serialised privacy event: {data!r}")
    cls = _EVENT_TYPES[data["type"]]
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(value, dict):
            value = event_from_dict(value)
        elif isinstance(value, list):
            value = tuple(event_from_dict(v) for v in value)
        kwargs[f.name] = value
    return cls(**kwargs)
