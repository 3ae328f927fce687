"""Argument checks shared by every module: each raises ValueError naming the bad value.

>>> check_epsilon(0.5)
0.5
>>> check_epsilon(float("nan"))
Traceback (most recent call last):
...
ValueError: epsilon must be a finite number > 0, got nan
>>> check_delta(1.0)
Traceback (most recent call last):
...
ValueError: delta must be in (0, 1), got 1.0
"""

from __future__ import annotations

import math
import sys
from numbers import Real

import numpy as np


def _as_float(name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float range (10**400): a ValueError naming it, not a traceback
        raise ValueError(f"{name} must be {what}, got an integer of {int(value).bit_length()} bits") from None


def check_positive(name: str, value, *, allow_inf: bool = False) -> float:
    """Return ``float(value)`` if it is > 0 (and finite unless ``allow_inf``)."""
    what = "a number > 0" if allow_inf else "a finite number > 0"
    v = _as_float(name, value, what)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def check_real(name: str, value) -> float:
    """Return ``float(value)`` if it is a finite real number (bools and strings refused)."""
    v = _as_float(name, value, "a finite real number")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return v


def check_nonnegative(name: str, value) -> float:
    """Return ``float(value)`` if it is finite and >= 0."""
    v = _as_float(name, value, "a finite number >= 0")
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_epsilon(epsilon, *, name: str = "epsilon", allow_inf: bool = False) -> float:
    """Privacy parameter epsilon: finite and > 0."""
    return check_positive(name, epsilon, allow_inf=allow_inf)


def check_delta(delta, *, name: str = "delta", allow_zero: bool = False) -> float:
    """Privacy parameter delta: in (0, 1), or [0, 1) with ``allow_zero``."""
    interval = "[0, 1)" if allow_zero else "(0, 1)"
    v = _as_float(name, delta, f"in {interval}")
    lo_ok = v >= 0 if allow_zero else v > 0
    if math.isnan(v) or not lo_ok or v >= 1:
        raise ValueError(f"{name} must be in {interval}, got {delta!r}")
    return v


def check_probability(name: str, value, *, open_low: bool = True, open_high: bool = False) -> float:
    """A probability in (0, 1] by default; the ends are configurable."""
    lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
    v = _as_float(name, value, f"in {lo}0, 1{hi}")
    bad = math.isnan(v) or (v <= 0 if open_low else v < 0) or (v >= 1 if open_high else v > 1)
    if bad:
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {value!r}")
    return v


def check_int(name: str, value, *, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (bools and non-integral floats refused); the message shows the value as given.

    >>> check_int("epochs", 3.0)
    3
    >>> check_int("epochs", -1.0)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an integer >= 1, got -1.0
    """
    given = value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {given!r}")
    return int(value)


def check_array(name: str, values, *, ndim: int | None = None, allow_empty: bool = False) -> np.ndarray:
    """A finite float array (no NaN or inf), optionally of a given rank, non-empty by default.

    Strings and complex numbers are refused (``float("12")`` and dropping an imaginary part would
    turn them into numbers silently).
    """
    try:
        raw = np.asarray(values)
        if raw.dtype.kind in "cUS" or (raw.dtype.kind == "O" and any(
                isinstance(v, (str, bytes, complex, np.complexfloating)) for v in raw.ravel())):
            raise ValueError(f"{name} must be real numbers, got {values!r}")
        arr = raw.astype(float)
    except (TypeError, ValueError) as exc:
        if "must be real numbers" in str(exc):
            raise
        raise ValueError(f"{name} must be numeric, got {values!r}") from exc
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(f"{name} must be finite, got a {bad} value")
    return arr


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False (a string such as ``"False"`` is truthy: refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_torch_generator(generator, *, name: str = "generator", when: str = ""):
    """Randomness must be explicit: a ``torch.Generator`` (``when``: the condition, for the message).

    >>> import torch
    >>> isinstance(check_torch_generator(torch.Generator()), torch.Generator)
    True
    >>> check_torch_generator(0)
    Traceback (most recent call last):
    ...
    ValueError: generator must be a torch.Generator, got 0
    """
    # no torch.Generator can exist before torch is imported, so this module need not import torch
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(generator, torch.Generator):
        condition = f" {when}" if when else ""
        raise ValueError(f"{name} must be a torch.Generator{condition}, got {generator!r}")
    return generator


def check_rng(rng) -> np.random.Generator:
    """Randomness must be explicit: a numpy Generator, never None or a global seed."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator (use privlab.config.make_rng(seed)), got {rng!r}"
        )
    return rng
