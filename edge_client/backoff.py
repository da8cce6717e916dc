"""Exponential backoff with full jitter, for a device polling a coordinator that may be down.

Brooker, "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015): after the n-th
consecutive failure wait ``uniform(0, min(cap, base * multiplier**n))``. Full jitter spreads
a fleet that lost the coordinator at the same moment, so they do not all come back at once.
The random source and the sleep are injected: tests pass a seeded generator and a fake
sleep, the daemon a sleep that a SIGTERM interrupts.

A server's Retry-After is obeyed only within [RETRY_AFTER_MIN, RETRY_AFTER_MAX] (1 s, 1 h):
``Retry-After: 0`` must not turn a fleet into a tight polling loop, and ``1e12`` must not
put a device to sleep for ever (or overflow a timer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedge.errors import ConfigError
from fedge.validation import check_number, check_positive

__all__ = ["RETRY_AFTER_MAX", "RETRY_AFTER_MIN", "Backoff", "BackoffPolicy", "clamp_retry_after"]

Sleep = Callable[[float], object]

RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 3600.0


def clamp_retry_after(seconds: float) -> float:
    """``seconds`` within [RETRY_AFTER_MIN, RETRY_AFTER_MAX] (NaN counts as the minimum)."""
    value = float(seconds)
    if value != value:
        return RETRY_AFTER_MIN
    return min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, value))


@dataclass(frozen=True)
class BackoffPolicy:
    """``base`` seconds after the first failure, times ``multiplier`` per further failure,
    never more than ``cap``; ``retry_after_jitter`` stretches a server's Retry-After by up to
    that fraction so polls of many devices do not line up."""

    base: float = 1.0
    cap: float = 60.0
    multiplier: float = 2.0
    retry_after_jitter: float = 0.25

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            check_positive(getattr(self, name), f"backoff {name}")
        check_number(self.multiplier, "backoff multiplier", low=1)
        if self.cap < self.base:
            raise ConfigError(f"backoff cap ({self.cap}) must be >= base ({self.base})")
        check_number(self.retry_after_jitter, "retry_after_jitter", low=0, high=10)

    def ceiling(self, failures: int) -> float:
        """The largest wait after ``failures`` consecutive failures (>= 1)."""
        if failures < 1:
            raise ConfigError(f"failures must be >= 1, got {failures}")
        exponent = min(failures - 1, 1024)  # multiplier**1024 is already past any cap
        try:
            grown = self.base * self.multiplier**exponent
        except OverflowError:
            return self.cap
        return min(self.cap, grown)


class Backoff:
    """Counts consecutive failures and sleeps accordingly; :meth:`reset` after a success."""

    def __init__(self, policy: BackoffPolicy, *, rng: np.random.Generator, sleep: Sleep) -> None:
        self.policy = policy
        self._rng = rng
        self._sleep = sleep
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return the jittered wait, without sleeping."""
        self.failures += 1
        return float(self._rng.uniform(0.0, self.policy.ceiling(self.failures)))

    def failure(self, retry_after: float | None = None) -> float:
        """Count a failure, sleep the jittered wait (at least ``retry_after`` when the
        server asked for it, clamped), return it."""
        delay = self.failure_delay(retry_after)
        self._sleep(delay)
        return delay

    def failure_delay(self, retry_after: float | None = None) -> float:
        """Count a failure and return its wait without sleeping: the jittered backoff, or
        the server's Retry-After (clamped to [1 s, 1 h]) when that is longer."""
        delay = self.next_delay()
        if retry_after is not None:
            delay = max(delay, clamp_retry_after(retry_after))
        return delay

    def retry_after_delay(self, seconds: float) -> float:
        """What the server asked (Retry-After), clamped to [1 s, 1 h] and stretched by a
        little jitter (never past the hour)."""
        stretch = 1.0 + float(self._rng.uniform(0.0, self.policy.retry_after_jitter))
        return min(RETRY_AFTER_MAX, clamp_retry_after(seconds) * stretch)

    def wait_retry_after(self, seconds: float) -> float:
        """Sleep :meth:`retry_after_delay` of ``seconds``; returns the wait."""
        delay = self.retry_after_delay(seconds)
        self._sleep(delay)
        return delay

    def reset(self) -> None:
        self.failures = 0
