"""FedAvg's one-pass float32 path: its stated error bound against exact sums, the float64
fallback where float32 could overflow, refusals that change nothing, O(model) memory, and
the same bits whatever the BLAS thread settings."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tracemalloc
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest

from fedge.aggregation import FedAvg
from fedge.errors import AggregationError
from fedge.summation import CHUNK, FLOAT32_UNIT_ROUNDOFF, PairwiseSum, sum_of_squares
from fedge.weights import Weights

U = FLOAT32_UNIT_ROUNDOFF


Vector = npt.NDArray[np.float32]


def _adversarial_round(n: int, p: int, seed: int) -> tuple[list[Vector], list[float]]:
    """Updates that cancel (huge values of both signs beside tiny ones), span 40 binary
    orders of magnitude, with weights that float32 cannot hold exactly."""
    rng = np.random.default_rng(seed)
    updates: list[Vector] = []
    for i in range(n):
        magnitude = 2.0 ** rng.integers(-20, 20, p)
        sign = np.where(rng.random(p) < 0.5, -1.0, 1.0)
        values = sign * magnitude * (1 + rng.random(p))
        if i % 2:  # every other update nearly cancels the one before
            values = -updates[-1].astype(np.float64) * (1 + 1e-7 * rng.standard_normal(p))
        updates.append(values.astype(np.float32))
    weights = [float(rng.integers(1, 5000)) + (0.1 if i % 3 == 0 else 0.0) for i in range(n)]
    return updates, weights


def _exact_mean(updates: list[Vector], weights: list[float]) -> list[Fraction]:
    total = sum((Fraction(w) for w in weights), Fraction(0))
    return [
        sum(
            (Fraction(w) * Fraction(float(u[j])) for u, w in zip(updates, weights, strict=True)),
            Fraction(0),
        )
        / total
        for j in range(updates[0].size)
    ]


def test_fedavg_stays_within_its_stated_error_bound_on_adversarial_updates() -> None:
    updates, weights = _adversarial_round(n=133, p=24, seed=3)  # 8 flushed blocks + 5 left
    aggregator = FedAvg(Weights({"w": np.zeros(24, np.float32)}))
    for update, weight in zip(updates, weights, strict=True):
        aggregator.add(Weights({"w": update}), weight)
    result = aggregator.result().delta["w"]
    exact = _exact_mean(updates, weights)
    total = sum(weights)
    magnitude = [
        math.fsum(w * abs(float(u[j])) for u, w in zip(updates, weights, strict=True)) / total
        for j in range(24)
    ]
    errors = [abs(Fraction(float(result[j])) - exact[j]) for j in range(24)]
    bounds = [6 * U * magnitude[j] + U * abs(float(exact[j])) for j in range(24)]
    assert all(e <= b for e, b in zip(errors, bounds, strict=True)), [
        (float(e), b) for e, b in zip(errors, bounds, strict=True)
    ]
    # the cancellation makes the bound bite: a plain float32 running sum misses it
    naive = np.zeros(24, np.float32)
    for update, weight in zip(updates, weights, strict=True):
        naive += np.float32(weight) * update
    naive_mean = naive / np.float32(total)
    naive_errors = [abs(Fraction(float(naive_mean[j])) - exact[j]) for j in range(24)]
    assert max(naive_errors) > max(errors)


def test_fedavg_matches_a_float64_mean_within_a_few_ulps_on_ordinary_updates() -> None:
    rng = np.random.default_rng(0)
    updates = [(rng.standard_normal(1000) * 0.02).astype(np.float32) for _ in range(300)]
    weights = [float(w) for w in rng.integers(10, 201, 300)]
    aggregator = FedAvg(Weights({"w": np.zeros(1000, np.float32)}))
    for update, weight in zip(updates, weights, strict=True):
        aggregator.add(Weights({"w": update}), weight)
    stacked = np.stack(updates).astype(np.float64) * np.array(weights)[:, None]
    exact = stacked.sum(axis=0) / sum(weights)
    bound = 6 * U * np.abs(stacked).sum(axis=0) / sum(weights) + U * np.abs(exact)
    error = np.abs(aggregator.result().delta["w"].astype(np.float64) - exact)
    assert (error <= bound).all()


def test_update_norms_are_within_their_bound_of_exact_norms_across_chunks() -> None:
    # Equal values are the worst case for a float32 running sum of squares.
    constant = np.full(3 * CHUNK + 17, 0.1, np.float32)
    rng = np.random.default_rng(1)
    spread = (rng.standard_normal(2 * CHUNK + 5) * 2.0 ** rng.integers(-30, 30)).astype(np.float32)
    for values in (constant, spread):
        aggregator = FedAvg(Weights({"w": np.zeros(values.size, np.float32)}))
        aggregator.add(Weights({"w": values}), 3.0)
        exact = math.sqrt(math.fsum(float(x) * float(x) for x in values))
        measured = aggregator.result().measurements["max_update_norm"]
        assert abs(measured - exact) <= 2.0**-13 * exact, (measured, exact)
        assert abs(Weights({"w": values}).l2_norm() - exact) <= 1e-12 * exact


def test_tiny_and_overflowing_squares_take_the_exact_norm() -> None:
    tiny = np.full(10, 1e-30, np.float32)  # float32 squares underflow to zero
    large = np.array([3e20, 4e20], np.float32)  # float32 squares overflow
    for values in (tiny, large):
        aggregator = FedAvg(Weights({"w": np.zeros(values.size, np.float32)}))
        aggregator.add(Weights({"w": values}), 2.0)
        result = aggregator.result()
        exact = math.sqrt(math.fsum(float(x) ** 2 for x in values))
        assert result.measurements["max_update_norm"] == pytest.approx(exact, rel=1e-12)
        np.testing.assert_array_equal(result.delta["w"], values)


def test_fedavg_moves_to_float64_where_float32_sums_could_overflow() -> None:
    reference = Weights({"w": np.zeros(3, np.float32)})
    big = np.array([3e38, -3e38, 1.0], np.float32)
    aggregator = FedAvg(reference)
    aggregator.add(Weights({"w": [1.0, 2.0, 3.0]}), 1.0)
    aggregator.add(Weights({"w": big}), 1e6)  # float32(1e6 * 3e38) is inf
    aggregator.add(Weights({"w": big}), 1e40)  # the weight itself is past float32
    result = aggregator.result().delta["w"]
    total = 1.0 + 1e6 + 1e40
    expected = (np.array([1.0, 2.0, 3.0]) + big.astype(np.float64) * (1e6 + 1e40)) / total
    np.testing.assert_array_equal(result, expected.astype(np.float32))
    assert np.isfinite(result).all()


def test_a_refused_update_changes_nothing_and_keeps_its_message() -> None:
    reference = Weights({"w": np.zeros(3, np.float32)})
    aggregator = FedAvg(reference)
    aggregator.add(Weights({"w": [1.0, 2.0, 3.0]}), 2.0)
    before = aggregator.result()
    for bad, message in (
        ([1.0, np.nan, 1.0], "update 1 rejected: tensor 'w' holds 1 NaN and 0 Inf values out of 3"),
        ([np.inf, 1.0, -np.inf], "update 1 rejected: tensor 'w' holds 0 NaN and 2 Inf values"),
    ):
        with pytest.raises(AggregationError, match=message.replace("(", r"\(")):
            aggregator.add(Weights({"w": bad}), 5.0)
    with pytest.raises(AggregationError, match=r"update 1 rejected: tensor 'w': expected shape"):
        aggregator.add(Weights({"w": [1.0]}), 5.0)
    after = aggregator.result()
    assert (after.count, after.total_weight) == (1, 2.0)
    assert after.delta == before.delta
    assert dict(after.measurements) == dict(before.measurements)


def test_fedavg_takes_updates_whose_tensors_come_in_another_order() -> None:
    reference = Weights.from_pairs([("a", [0.0, 0.0]), ("b", [0.0])])
    aggregator = FedAvg(reference)
    aggregator.add(Weights.from_pairs([("b", [4.0]), ("a", [1.0, 2.0])]), 1.0)
    aggregator.add(Weights.from_pairs([("a", [3.0, 4.0]), ("b", [0.0])]), 1.0)
    result = aggregator.result().delta
    assert result.names == ("a", "b")
    assert result["a"].tolist() == [2.0, 3.0]
    assert result["b"].tolist() == [2.0]


def test_fedavg_memory_stays_o_model_size_however_many_updates() -> None:
    params, count = 50_000, 200
    rng = np.random.default_rng(2)
    update = Weights({"w": (rng.standard_normal(params) * 0.02).astype(np.float32)})
    aggregator = FedAvg(Weights({"w": np.zeros(params, np.float32)}))
    tracemalloc.start()
    try:
        for _ in range(count):
            aggregator.add(update, 7.0)
        aggregator.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # live: five float32 and one float64 vector; result() adds a float64 total and the
    # float32 result
    assert peak < 12 * params * 4 < count * params * 4 / 10, peak


def test_pairwise_sum_equals_a_balanced_tree_and_bounds_its_buffers() -> None:
    terms = [np.full(4, float(i), np.float32) + np.float32(0.1) for i in range(37)]
    pairwise = PairwiseSum(4, depth=3)
    lent = []
    for term in terms:
        scratch = pairwise.scratch()
        lent.append(id(scratch))
        scratch[:] = term
        pairwise.push(scratch)
    exact = math.fsum(float(t[0]) for t in terms)
    assert pairwise.count == 37
    assert abs(float(pairwise.total()[0]) - exact) <= 3 * U * exact
    assert len(set(lent)) <= pairwise.depth + 1  # buffers are reused, never more


def test_sum_of_squares_is_exact_in_float64_and_chunked() -> None:
    values = np.arange(1, 2 * CHUNK + 3, dtype=np.float32)
    n = values.size
    assert sum_of_squares(values) == n * (n + 1) * (2 * n + 1) // 6


_SAME_BITS = """
import hashlib, numpy as np
from fedge.aggregation import FedAvg
from fedge.weights import Weights
rng = np.random.default_rng(5)
reference = Weights({"w": np.zeros(300_000, np.float32), "b": np.zeros(7, np.float32)})
aggregator = FedAvg(reference)
for i in range(12):
    aggregator.add(Weights({
        "w": (rng.standard_normal(300_000) * 0.02).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float32),
    }), float(i + 1))
result = aggregator.result()
print(hashlib.sha256(result.delta.to_bytes()).hexdigest())
print(sorted((k, v.hex()) for k, v in result.measurements.items()))
print(Weights({"w": (rng.standard_normal(500_000)).astype(np.float32)}).l2_norm().hex())
"""


def test_results_and_norms_have_the_same_bits_under_any_blas_thread_setting() -> None:
    outputs = []
    for threads in ("1", "4"):
        env = {
            **os.environ,
            "OPENBLAS_NUM_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        done = subprocess.run(
            [sys.executable, "-c", _SAME_BITS],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0].count("\n") == 3
    assert outputs[0] == outputs[1]
