"""Range validators shared by every config and message type.

Each checks one value, returns it normalized (``int`` or ``float``) and raises ``error``
with a message that says what was expected and what arrived. ``error`` is
:class:`~fedge.errors.ConfigError` unless the caller names another error class, or a
callable that builds one from the message (e.g. ``functools.partial(ProtocolError,
field=...)``). ``what`` names the value as the caller's user knows it (a config field, a
message field, a command-line flag). numpy scalars count as the numbers they hold; bools
never do.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

from fedge.errors import ConfigError

__all__ = ["ErrorFactory", "check_fraction", "check_int", "check_number", "check_positive"]

ErrorFactory = Callable[[str], Exception]
"""What a validator raises: an exception class, or any callable from message to exception."""


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def check_int(
    value: object,
    what: str,
    *,
    low: int | None = None,
    high: int | None = None,
    error: ErrorFactory = ConfigError,
) -> int:
    """An integer (not a bool, not a float) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{what} must be an integer, got {value!r}")
    number = int(value)
    if low is not None and number < low:
        raise error(f"{what} must be an integer >= {low}, got {number}")
    if high is not None and number > high:
        raise error(f"{what} must be an integer <= {high}, got {number}")
    return number


def check_number(
    value: object,
    what: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    error: ErrorFactory = ConfigError,
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


def check_positive(value: object, what: str, *, error: ErrorFactory = ConfigError) -> float:
    """A finite number > 0."""
    return check_number(value, what, low=0.0, low_inclusive=False, error=error)


def check_fraction(
    value: object,
    what: str,
    *,
    zero_ok: bool = True,
    one_ok: bool = False,
    error: ErrorFactory = ConfigError,
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
