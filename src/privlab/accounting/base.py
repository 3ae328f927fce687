r"""One accountant interface, and the bookkeeping every accountant shares.

An accountant consumes :mod:`privacy events <privlab.accounting.events>` and
answers two questions about their composition:

* ``get_epsilon(delta)``: the smallest :math:`\varepsilon` it can certify such
  that the composition is :math:`(\varepsilon, \delta)`-DP;
* ``get_delta(epsilon)``: the smallest :math:`\delta` it can certify for a given
  :math:`\varepsilon` (where the method allows; otherwise ``NotImplementedError``).

The base class does the work that is the same for all of them, once:
unwrapping :class:`~privlab.accounting.events.ComposedEvent` and
:class:`~privlab.accounting.events.SelfComposedEvent`, multiplying counts,
treating Poisson sampling with rate 1 as no sampling, checking that every event
is supported *before* anything is composed (a failed ``compose`` leaves the
accountant unchanged), and keeping the history as ``(event, count)`` pairs with
repeats merged. Subclasses only say how one leaf event changes their state.

Dispatch is by a type registry, not an if/elif chain: a subclass marks its
handlers with :func:`handles`, keyed by the event type, or by
``(PoissonSampledEvent, inner type)`` for subsampled mechanisms::

    class MyAccountant(Accountant):
        @handles(GaussianEvent)
        def _gaussian(self, event, count): ...

>>> from privlab.accounting import RdpAccountant, GaussianEvent, SelfComposedEvent
>>> a = RdpAccountant().compose(GaussianEvent(2.0), count=3)
>>> b = RdpAccountant().compose(SelfComposedEvent(GaussianEvent(2.0), 3))
>>> a.get_epsilon(1e-5) == b.get_epsilon(1e-5)
True
>>> RdpAccountant.supports(PoissonSampledEvent(0.1, LaplaceEvent(1.0)))
False

Used in: chapters 3, 4, 13.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

from privlab._validate import check_delta, check_int, check_nonnegative

from .events import (  # noqa: F401  (LaplaceEvent is used by the doctest)
    ComposedEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
)

__all__ = ["Accountant", "UnsupportedEventError", "handles"]


class UnsupportedEventError(ValueError):
    """The accountant has no analysis for this kind of event."""


def handles(*keys, when: Callable | None = None, note: str = "") -> Callable:
    """Mark a method as the handler of the given event types (or ``(PoissonSampledEvent, T)`` pairs).

    ``when`` optionally restricts the handler to events for which ``when(event)``
    is true (e.g. only pure (epsilon, 0) events); ``note`` says so in messages.
    """

    def mark(method: Callable) -> Callable:
        method._handles = tuple((k, when, note) for k in keys)  # type: ignore[attr-defined]
        return method

    return mark


def _registry_key(event: PrivacyEvent):
    if isinstance(event, PoissonSampledEvent):
        return (PoissonSampledEvent, type(event.event))
    return type(event)


def _key_name(key) -> str:
    if isinstance(key, tuple):
        return f"PoissonSampledEvent({key[1].__name__})"
    return key.__name__


class Accountant(ABC):
    """Abstract base class of all accountants: ``compose``, ``get_epsilon``, ``get_delta``."""

    #: short name used by :func:`privlab.accounting.make_accountant` and reports
    name: ClassVar[str] = "abstract"
    #: event type (or (PoissonSampledEvent, inner type)) -> (handler method name, predicate)
    _registry: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        registry: dict = {}
        for base in reversed(cls.__mro__[1:]):
            registry.update(getattr(base, "_registry", {}))
        for attr_name, attr in vars(cls).items():
            for key, when, note in getattr(attr, "_handles", ()):
                registry[key] = (attr_name, when, note)
        cls._registry = registry

    def __init__(self) -> None:
        self._history: list[list] = []  # [[leaf event, count], ...], consecutive repeats merged

    # ----- the shared bookkeeping -------------------------------------------------
    @classmethod
    def supports(cls, event: PrivacyEvent) -> bool:
        """Whether every leaf of ``event`` has a handler in this accountant."""
        try:
            cls._leaves(event, 1, [])
        except UnsupportedEventError:
            return False
        return True

    @classmethod
    def supported_events(cls) -> list[str]:
        """Names of the leaf event types this accountant analyses."""
        return sorted(
            _key_name(k) + (f" ({note})" if note else "") for k, (_, _, note) in cls._registry.items()
        )

    @classmethod
    def _leaves(cls, event: PrivacyEvent, count: int, out: list) -> list:
        """Flatten composed / self-composed events into ``(leaf, count)`` pairs, checking support."""
        if isinstance(event, ComposedEvent):
            for e in event.events:
                cls._leaves(e, count, out)
        elif isinstance(event, SelfComposedEvent):
            cls._leaves(event.event, count * event.count, out)
        elif isinstance(event, PoissonSampledEvent) and event.sample_rate == 1.0:
            cls._leaves(event.event, count, out)  # sampling with q = 1 keeps everyone
        elif isinstance(event, PrivacyEvent):
            method, when, _ = cls._registry.get(_registry_key(event), (None, None, ""))
            if method is None or (when is not None and not when(event)):
                raise UnsupportedEventError(
                    f"{cls.__name__} cannot account for {event!r}; it supports "
                    f"{', '.join(cls.supported_events())}"
                )
            out.append((event, count))
        else:
            raise ValueError(f"event must be a PrivacyEvent, got {event!r}")
        return out

    def compose(self, event: PrivacyEvent, count: int = 1) -> "Accountant":
        """Add ``event`` run ``count`` times to the history; returns ``self`` for chaining.

        Raises:
            ValueError: ``count`` is not an integer >= 1, or ``event`` is not an event.
            UnsupportedEventError: some leaf of ``event`` has no analysis here
                (a subclass of ``ValueError``); nothing is composed then.
        """
        count = check_int("count", count)
        for leaf, c in self._leaves(event, count, []):
            getattr(self, self._registry[_registry_key(leaf)][0])(leaf, c)
            if self._history and self._history[-1][0] == leaf:
                self._history[-1][1] += c
            else:
                self._history.append([leaf, c])
        return self

    @property
    def history(self) -> tuple:
        """The composed leaf events as ``((event, count), ...)``."""
        return tuple((e, c) for e, c in self._history)

    @property
    def num_events(self) -> int:
        """Total number of leaf mechanisms composed (counts included)."""
        return sum(c for _, c in self._history)

    def get_epsilon(self, delta: float) -> float:
        r"""The :math:`\varepsilon` of the composition at ``delta`` (``math.inf`` if none can be certified).

        Raises:
            ValueError: ``delta`` outside (0, 1).
        """
        delta = check_delta(delta)
        if not self._history:
            return 0.0
        return float(self._epsilon(delta))

    def get_delta(self, epsilon: float) -> float:
        r"""The :math:`\delta` of the composition at ``epsilon``.

        Raises:
            ValueError: ``epsilon`` negative, infinite or NaN.
            NotImplementedError: the method has no (epsilon -> delta) form.
        """
        epsilon = check_nonnegative("epsilon", epsilon)
        if not self._history:
            return 0.0
        return float(min(1.0, self._delta(epsilon)))

    # ----- what a subclass provides -----------------------------------------------
    @abstractmethod
    def _epsilon(self, delta: float) -> float:
        """Epsilon for a validated delta and a non-empty history."""

    def _delta(self, epsilon: float) -> float:
        raise NotImplementedError(
            f"{type(self).__name__} does not compute delta for a given epsilon; "
            "use get_epsilon(delta) instead"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_events={self.num_events}, distinct={len(self._history)})"
