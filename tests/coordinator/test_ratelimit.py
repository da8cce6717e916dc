"""Registration token buckets with a fake clock: bursts, refill, per address and overall."""

from __future__ import annotations

import pytest

from coordinator.limits import RateLimit
from coordinator.logsafe import printable
from coordinator.rest.ratelimit import RegistrationLimiter
from fedge.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_address_gets_its_burst_then_waits_for_the_refill() -> None:
    clock = Clock()
    limiter = RegistrationLimiter(RateLimit(per_address=2.0, per_address_burst=3), clock=clock)
    assert [limiter.acquire("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("10.0.0.1") == pytest.approx(0.5)
    assert limiter.acquire("10.0.0.2") == 0.0  # another address has its own bucket
    clock.now += 0.5
    assert limiter.acquire("10.0.0.1") == 0.0


def test_the_overall_bucket_limits_every_address_together() -> None:
    clock = Clock()
    limit = RateLimit(per_address=100.0, per_address_burst=100, total=1.0, total_burst=2)
    limiter = RegistrationLimiter(limit, clock=clock)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("b") == 0.0
    assert limiter.acquire("c") == pytest.approx(1.0)
    assert RegistrationLimiter.retry_after(0.01) == 1
    assert RegistrationLimiter.retry_after(1.2) == 2


def test_the_address_table_stays_bounded() -> None:
    clock = Clock()
    limiter = RegistrationLimiter(RateLimit(max_addresses=10), clock=clock)
    for i in range(1000):
        limiter.acquire(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._addresses) <= 10


def test_rate_limits_refuse_values_below_their_minimum() -> None:
    with pytest.raises(ConfigError, match="per_address must be > 0"):
        RateLimit(per_address=0)
    with pytest.raises(ConfigError, match="total_burst must be an integer >= 1"):
        RateLimit(total_burst=0)


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("/v1/x\n2026-01-01 INFO forged", "/v1/x\\n2026-01-01 INFO forged"),
        ("a\rb\tc\x1b[31m", "a\\rb\\tc\\x1b[31m"),
        ("\u2028\x85", "\\u2028\\x85"),
    ],
)
def test_printable_escapes_control_characters(raw: str, logged: str) -> None:
    assert printable(raw) == logged
    assert "\n" not in printable(raw)


def test_printable_bounds_its_length() -> None:
    assert printable("x" * 5000, limit=10) == "x" * 10 + "..."


def test_wait_says_what_acquire_would_and_takes_nothing() -> None:
    clock = Clock()
    limit = RateLimit(per_address=0.5, per_address_burst=2, total=10.0, total_burst=3)
    limiter = RegistrationLimiter(limit, clock=clock)
    assert [limiter.wait("a") for _ in range(5)] == [0.0] * 5  # asking takes no token
    assert limiter.acquire("a") == limiter.acquire("a") == 0.0
    assert limiter.wait("a") == pytest.approx(2.0) == limiter.acquire("a")
    assert limiter.acquire("b") == 0.0
    assert limiter.wait("c") == pytest.approx(0.1)  # the overall bucket is empty
    clock.now += 2.0
    assert limiter.wait("a") == 0.0
