"""Exponential backoff with full jitter, for a device polling a coordinator that may be down.

Brooker, "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015): after the n-th
consecutive failure wait ``uniform(0, min(cap, base * multiplier**n))``. Full jitter spreads
a fleet that lost the coordinator at the same moment, so they do not all come back at once.
The random source and the sleep are injected: tests pass a seeded generator and a fake
sleep, the daemon a sleep that a SIGTERM interrupts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedge.errors import ConfigError
from fedge.validation import check_number, check_positive

__all__ = ["Backoff", "BackoffPolicy"]

Sleep = Callable[[float], object]


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

    def failure(self) -> float:
        """Count a failure, sleep the jittered wait, return it."""
        delay = self.next_delay()
        self._sleep(delay)
        return delay

    def wait_retry_after(self, seconds: float) -> float:
        """Sleep what the server asked (Retry-After), stretched by a little jitter."""
        stretch = 1.0 + float(self._rng.uniform(0.0, self.policy.retry_after_jitter))
        delay = max(0.0, float(seconds)) * stretch
        self._sleep(delay)
        return delay

    def reset(self) -> None:
        self.failures = 0
