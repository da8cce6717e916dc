"""Range validators shared by every config and message type.

Each checks one value, returns it normalized (``int`` or ``float``) and raises ``error``
(:class:`~fedge.errors.ConfigError` unless the caller names another ``FedgeError``) with a
message that says what was expected and what arrived. ``what`` names the value as the
library knows it (a config field, a message field), never a command-line flag.
"""

from __future__ import annotations

import math

from fedge.errors import ConfigError

__all__ = ["check_fraction", "check_int", "check_number", "check_positive"]


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def check_int(
    value: object,
    what: str,
    *,
    low: int | None = None,
    high: int | None = None,
    error: type[Exception] = ConfigError,
) -> int:
    """An integer (not a bool, not a float) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise error(f"{what} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise error(f"{what} must be an integer <= {high}, got {value!r}")
    return value


def check_number(
    value: object,
    what: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    error: type[Exception] = ConfigError,
) -> float:
    """A finite real number (not a bool) within the given bounds."""
    if not _is_number(value):
        raise error(f"{what} must be a number, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise error(f"{what} must be finite, got {value!r}")
    if low is not None and (number < low or (not low_inclusive and number == low)):
        bound = ">=" if low_inclusive else ">"
        raise error(f"{what} must be {bound} {low:g}, got {value!r}")
    if high is not None and (number > high or (not high_inclusive and number == high)):
        bound = "<=" if high_inclusive else "<"
        raise error(f"{what} must be {bound} {high:g}, got {value!r}")
    return number


def check_positive(value: object, what: str, *, error: type[Exception] = ConfigError) -> float:
    """A finite number > 0."""
    return check_number(value, what, low=0.0, low_inclusive=False, error=error)


def check_fraction(
    value: object,
    what: str,
    *,
    zero_ok: bool = True,
    one_ok: bool = False,
    error: type[Exception] = ConfigError,
) -> float:
    """A number in [0, 1) by default; ``zero_ok``/``one_ok`` open or close either end."""
    return check_number(
        value,
        what,
        low=0.0,
        high=1.0,
        low_inclusive=zero_ok,
        high_inclusive=one_ok,
        error=error,
    )
