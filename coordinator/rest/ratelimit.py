"""Token buckets for registrations (and the dashboard's failed logins): one per source
address and one for the whole server.

A bucket holds at most ``burst`` tokens and gains ``rate`` a second; a registration takes
one token from its address's bucket and one from the server's, or is refused with the
seconds until both have one (a 429 with ``Retry-After``). Addresses whose buckets are full
again are forgotten, and at most ``max_addresses`` are tracked (the oldest go first), so
the table cannot grow without bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from coordinator.limits import RateLimit

__all__ = ["RegistrationLimiter"]


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now

    def refill(self, now: float, rate: float, burst: int) -> None:
        self.tokens = min(float(burst), self.tokens + (now - self.updated) * rate)
        self.updated = now


class RegistrationLimiter:
    """Thread-safe buckets per address and overall; :meth:`acquire` takes one of each."""

    def __init__(self, limit: RateLimit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._total = _Bucket(float(limit.total_burst), clock())
        self._addresses: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, address: str) -> float:
        """0.0 when ``address`` may register now (a token of each bucket taken), else the
        seconds until it may (nothing taken)."""
        limit = self.limit
        with self._lock:
            now = self._clock()
            self._total.refill(now, limit.total, limit.total_burst)
            bucket = self._addresses.get(address)
            if bucket is None:
                bucket = _Bucket(float(limit.per_address_burst), now)
            else:
                bucket.refill(now, limit.per_address, limit.per_address_burst)
            wait = max(
                (1.0 - bucket.tokens) / limit.per_address,
                (1.0 - self._total.tokens) / limit.total,
                0.0,
            )
            if wait == 0.0:
                bucket.tokens -= 1.0
                self._total.tokens -= 1.0
            self._remember(address, bucket, now)
            return wait

    def wait(self, address: str) -> float:
        """The seconds until :meth:`acquire` for ``address`` would succeed (0.0: now);
        takes nothing. For limits that count only some calls (failed logins): ask
        :meth:`wait` first, :meth:`acquire` when the call counts."""
        limit = self.limit
        with self._lock:
            now = self._clock()
            total = min(
                float(limit.total_burst),
                self._total.tokens + (now - self._total.updated) * limit.total,
            )
            bucket = self._addresses.get(address)
            tokens = float(limit.per_address_burst)
            if bucket is not None:
                tokens = min(tokens, bucket.tokens + (now - bucket.updated) * limit.per_address)
            return max((1.0 - tokens) / limit.per_address, (1.0 - total) / limit.total, 0.0)

    def _remember(self, address: str, bucket: _Bucket, now: float) -> None:
        self._addresses[address] = bucket
        self._addresses.move_to_end(address)
        while len(self._addresses) > self.limit.max_addresses:
            self._addresses.popitem(last=False)
        # Forget the least recent address once its bucket is full again: it holds no state.
        oldest, first = next(iter(self._addresses.items()))
        first.refill(now, self.limit.per_address, self.limit.per_address_burst)
        if first.tokens >= self.limit.per_address_burst and oldest != address:
            del self._addresses[oldest]

    @staticmethod
    def retry_after(wait: float) -> int:
        """``wait`` seconds as a Retry-After value: whole seconds, at least 1."""
        return max(1, math.ceil(wait))
