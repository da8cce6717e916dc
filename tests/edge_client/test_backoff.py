"""Exponential backoff with full jitter, driven by a seeded generator and a fake sleep."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.backoff import Backoff, BackoffPolicy
from fedge.errors import ConfigError


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_ceiling_doubles_from_base_up_to_the_cap() -> None:
    policy = BackoffPolicy(base=0.5, cap=5.0, multiplier=2.0)
    assert [policy.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.ceiling(10_000) == 5.0


def test_waits_are_uniform_below_the_ceiling_of_each_failure() -> None:
    policy = BackoffPolicy(base=1.0, cap=8.0)
    sleep = FakeSleep()
    backoff = Backoff(policy, rng=np.random.default_rng(7), sleep=sleep)
    delays = [backoff.failure() for _ in range(6)]
    expected_rng = np.random.default_rng(7)
    expected = [expected_rng.uniform(0, c) for c in (1.0, 2.0, 4.0, 8.0, 8.0, 8.0)]
    assert delays == pytest.approx(expected)
    assert sleep.calls == delays
    assert backoff.failures == 6


def test_full_jitter_spreads_a_fleet_over_the_whole_window() -> None:
    policy = BackoffPolicy(base=1.0, cap=60.0)
    draws = []
    for seed in range(400):
        backoff = Backoff(policy, rng=np.random.default_rng(seed), sleep=FakeSleep())
        for _ in range(3):
            delay = backoff.next_delay()
        draws.append(delay)
    assert min(draws) >= 0.0
    assert max(draws) <= 4.0
    assert np.mean(draws) == pytest.approx(2.0, abs=0.25)
    assert np.std(draws) > 0.9  # uniform(0, 4) has std 1.15; no jitter would give 0


def test_reset_starts_again_from_the_base() -> None:
    policy = BackoffPolicy(base=1.0, cap=100.0)
    backoff = Backoff(policy, rng=np.random.default_rng(0), sleep=FakeSleep())
    for _ in range(5):
        backoff.failure()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.failure() <= 1.0


def test_retry_after_is_stretched_by_at_most_its_jitter() -> None:
    sleep = FakeSleep()
    backoff = Backoff(
        BackoffPolicy(retry_after_jitter=0.25), rng=np.random.default_rng(3), sleep=sleep
    )
    waits = [backoff.wait_retry_after(10.0) for _ in range(50)]
    assert all(10.0 <= w <= 12.5 for w in waits)
    assert len(set(waits)) == 50
    assert backoff.failures == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"base": -1}, {"cap": float("inf")}, {"multiplier": 0.5}, {"base": 5, "cap": 1}],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BackoffPolicy(**kwargs)
