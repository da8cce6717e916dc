"""Compressed updates: 8-bit stochastic quantization, top-k with error feedback, decoding."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest

from fedge.aggregation import FedAvg
from fedge.compression import (
    EncodedUpdate,
    ErrorFeedback,
    Quantizer8Bit,
    TopK,
    decode_into,
    read_header,
)
from fedge.errors import (
    ConfigError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownTensorError,
    WeightsFormatError,
)
from fedge.weights import Weights


def _weights(seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    return Weights.from_pairs(
        [("kernel", rng.normal(size=(8, 5))), ("bias", rng.normal(size=5) * 0.01)]
    )


def _with_body(encoded: EncodedUpdate, patch: dict[int, bytes]) -> bytes:
    """The payload with the bytes at body offsets replaced."""
    data = bytearray(encoded.payload)
    start = read_header(encoded.payload).body_offset
    for offset, raw in patch.items():
        data[start + offset : start + offset + len(raw)] = raw
    return bytes(data)


def _with_header(encoded: EncodedUpdate, **changes: object) -> bytes:
    """The payload with header fields replaced (the body unchanged)."""
    payload = encoded.payload
    length = int.from_bytes(payload[4:8], "little")
    header = json.loads(payload[8 : 8 + length])
    header.update(changes)
    text = json.dumps(header).encode()
    return payload[:4] + len(text).to_bytes(4, "little") + text + payload[8 + length :]


# 8-bit quantization -------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [None, 7])
def test_q8_error_per_value_is_below_one_step(block_size: int | None) -> None:
    delta = _weights()
    encoded = Quantizer8Bit(block_size=block_size).encode(delta, rng=np.random.default_rng(1))
    decoded = decode_into(encoded.payload, delta)
    for name, x in delta.items():
        flat = x.ravel().astype(np.float64)
        block = block_size or flat.size
        for start in range(0, flat.size, block):
            values = flat[start : start + block]
            step = (values.max() - values.min()) / 255
            error = np.abs(decoded[name].ravel()[start : start + block] - values)
            # one step (lengthened by at most a float32 ulp) plus the final float32 rounding
            assert (error <= step * (1 + 1e-6) + np.spacing(np.float32(np.abs(values)))).all()
            assert error.max() > 0  # really quantized, not passed through


def test_q8_is_unbiased_within_the_hoeffding_bound() -> None:
    step = 2.0 / 255
    # Values 0.3 steps above a grid point: rounding down or to nearest is off by 0.3 steps.
    inner = -1.0 + (np.arange(1, 200) % 254 + 0.3) * step
    x = np.concatenate([[-1.0, 1.0], inner]).astype(np.float32)
    delta = Weights({"x": x})
    rng = np.random.default_rng(2026)
    draws = 400
    total = np.zeros(x.size, np.float64)
    for _ in range(draws):
        total += decode_into(Quantizer8Bit().encode(delta, rng=rng).payload, delta)["x"]
    mean_error = np.abs(total / draws - x.astype(np.float64))
    # Each decoded value lies in an interval of one step around x; Hoeffding gives
    # P(|mean - x| >= c * step / sqrt(N)) <= 2 exp(-2 c^2) = 3e-8 per value for c = 3.
    tolerance = 3 * step / math.sqrt(draws) + 1e-6
    assert tolerance < 0.3 * step  # a biased rounding would fail this test
    assert mean_error.max() <= tolerance


def test_q8_same_generator_state_gives_same_bytes() -> None:
    delta = _weights()
    first = Quantizer8Bit().encode(delta, rng=np.random.default_rng(5)).payload
    again = Quantizer8Bit().encode(delta, rng=np.random.default_rng(5)).payload
    other = Quantizer8Bit().encode(delta, rng=np.random.default_rng(6)).payload
    assert first == again
    assert first != other


def test_q8_byte_accounting() -> None:
    delta = Weights({"w": np.linspace(-1, 1, 10_000)})
    per_tensor = Quantizer8Bit().encode(delta, rng=np.random.default_rng(0))
    blocked = Quantizer8Bit(block_size=1000).encode(delta, rng=np.random.default_rng(0))
    header = read_header(per_tensor.payload)
    assert per_tensor.payload_bytes == len(per_tensor.payload)
    assert per_tensor.payload_bytes == header.body_offset + 10_000 + 8
    assert blocked.payload_bytes - per_tensor.payload_bytes == 8 * 9 + 3  # 9 more blocks
    assert per_tensor.float32_bytes == 40_000
    assert 3.9 < per_tensor.compression_ratio < 4.0


def test_q8_constant_and_empty_tensors_decode_exactly() -> None:
    delta = Weights({"c": np.full((3, 2), 0.25), "empty": np.zeros((0, 4))})
    decoded = decode_into(
        Quantizer8Bit().encode(delta, rng=np.random.default_rng(0)).payload, delta
    )
    assert decoded == delta


def test_q8_refuses_non_finite_updates_and_bad_options() -> None:
    with pytest.raises(NonFiniteError, match="'w'"):
        Quantizer8Bit().encode(Weights({"w": [1.0, np.nan]}), rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="block_size"):
        Quantizer8Bit(block_size=0)
    with pytest.raises(ConfigError, match="Generator"):
        Quantizer8Bit().encode(_weights(), rng=np.random.RandomState(0))  # type: ignore[arg-type]


# Top-k --------------------------------------------------------------------------------------


def test_topk_keeps_the_largest_magnitudes() -> None:
    delta = Weights.from_pairs([("a", [0.1, -5.0, 0.2]), ("b", [[3.0, -0.3], [0.0, 4.0]])])
    encoded = TopK(0.4).encode(delta)  # ceil(0.4 * 7) = 3 values
    decoded = decode_into(encoded.payload, delta)
    assert read_header(encoded.payload).options["k"] == 3
    np.testing.assert_array_equal(decoded["a"], [0.0, -5.0, 0.0])
    np.testing.assert_array_equal(decoded["b"], [[3.0, 0.0], [0.0, 4.0]])
    assert encoded.payload_bytes == read_header(encoded.payload).body_offset + 3 * 8


def test_topk_int8_values_are_within_half_a_step() -> None:
    delta = _weights(3)
    encoded = TopK(0.5, value_bits=8).encode(delta)
    exact = decode_into(TopK(0.5).encode(delta).payload, delta)
    decoded = decode_into(encoded.payload, delta)
    scale = max(float(np.abs(a).max()) for a in exact.values()) / 127
    for name in delta.names:
        kept = exact[name] != 0
        np.testing.assert_array_equal(decoded[name] != 0, kept)
        assert np.abs(decoded[name] - exact[name]).max() <= scale / 2 * (1 + 1e-5)
    assert encoded.payload_bytes < TopK(0.5).encode(delta).payload_bytes


def test_error_feedback_residual_is_exactly_what_was_not_sent() -> None:
    delta = _weights(4)
    state = ErrorFeedback.zeros(delta)
    encoded, new_state = TopK(0.2).step(state, delta)
    sent = decode_into(encoded.payload, delta)
    for name, x in delta.items():
        np.testing.assert_array_equal(
            new_state.residual[name] + sent[name].astype(np.float64), x.astype(np.float64)
        )
    assert all(not r.any() for r in state.residual.values())  # the input state is unchanged


@pytest.mark.parametrize("value_bits", [32, 8])
def test_error_feedback_sent_plus_residual_equals_the_sum_of_deltas(value_bits: int) -> None:
    rng = np.random.default_rng(7)
    # On a dyadic grid every float64 sum here is exact, so any lost value would show.
    deltas = [
        Weights({"w": rng.integers(-512, 512, size=(6, 7)) / 1024, "b": rng.integers(-9, 9, 3) / 8})
        for _ in range(25)
    ]
    topk = TopK(0.15, value_bits=value_bits)
    state = ErrorFeedback.zeros(deltas[0])
    sent = {n: np.zeros(a.shape, np.float64) for n, a in deltas[0].items()}
    truth = {n: np.zeros(a.shape, np.float64) for n, a in deltas[0].items()}
    for delta in deltas:
        encoded, state = topk.step(state, delta)
        for name, value in decode_into(encoded.payload, delta).items():
            sent[name] += value
            truth[name] += delta[name]
    assert any(r.any() for r in state.residual.values())  # something is still held back
    for name in truth:
        total = sent[name] + state.residual[name]
        if value_bits == 32:
            np.testing.assert_array_equal(total, truth[name])
        else:  # int8 scales are not dyadic: equal up to float64 rounding
            np.testing.assert_allclose(total, truth[name], rtol=0, atol=1e-12)


def test_error_feedback_state_round_trips_through_bytes() -> None:
    delta = _weights(8)
    _, state = TopK(0.1).step(ErrorFeedback.zeros(delta), delta)
    data = state.to_bytes()
    again = ErrorFeedback.from_bytes(data)
    assert list(again.residual) == list(state.residual) == ["kernel", "bias"]
    for name, array in state.residual.items():
        np.testing.assert_array_equal(again.residual[name], array)
    assert again.to_bytes() == data
    for bad in (data[:-3], b"", b"\x08" + b"\0" * 7 + b"{}      "):
        with pytest.raises(WeightsFormatError, match="error-feedback state"):
            ErrorFeedback.from_bytes(bad)
    with pytest.raises(NonFiniteError, match="'w'"):
        ErrorFeedback({"w": np.array([0.0, np.inf])})


def test_error_feedback_refuses_a_mismatched_update() -> None:
    state = ErrorFeedback.zeros(_weights())
    with pytest.raises(ShapeMismatchError, match="'bias'"):
        TopK(0.5).step(state, Weights.from_pairs([("kernel", np.ones((8, 5))), ("bias", [1.0])]))
    with pytest.raises(UnknownTensorError, match="'other'"):
        TopK(0.5).step(state, Weights({"other": [1.0]}))
    with pytest.raises(MissingTensorError, match="bias"):
        TopK(0.5).step(state, Weights({"kernel": np.ones((8, 5))}))


def test_topk_refuses_bad_options() -> None:
    for fraction in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="fraction"):
            TopK(fraction)
    with pytest.raises(ConfigError, match="value_bits"):
        TopK(0.1, value_bits=16)


def _federated_least_squares(mode: str, rounds: int = 200) -> npt.NDArray[np.float64]:
    """FedAvg on six heterogeneous least-squares clients; the final global model."""
    rng = np.random.default_rng(0)
    dim, clients, rows = 20, 6, 200
    common = rng.normal(size=dim)
    inputs = [rng.normal(size=(rows, dim)) for _ in range(clients)]
    targets = [
        x @ (common + 0.5 * rng.normal(size=dim)) + 0.1 * rng.normal(size=rows) for x in inputs
    ]
    model = Weights({"w": np.zeros(dim)})
    topk = TopK(0.2)
    states = [ErrorFeedback.zeros(model)] * clients
    for round_number in range(rounds):
        learning_rate = 0.1 / (1 + round_number / 10)
        aggregator = FedAvg(model)
        for i in range(clients):
            start = model["w"].astype(np.float64)
            local = start.copy()
            for _ in range(5):
                local -= learning_rate * inputs[i].T @ (inputs[i] @ local - targets[i]) / rows
            delta = Weights({"w": local - start})
            if mode == "plain":
                update = delta
            elif mode == "topk":
                update = decode_into(topk.encode(delta).payload, model)
            else:
                encoded, states[i] = topk.step(states[i], delta)
                update = decode_into(encoded.payload, model)
            aggregator.add(update, rows)
        model = model.apply(aggregator.result().delta)
    return model["w"].astype(np.float64)


def test_topk_with_error_feedback_converges_where_plain_topk_does_not() -> None:
    plain = _federated_least_squares("plain")
    with_feedback = _federated_least_squares("topk+ef")
    without = _federated_least_squares("topk")

    def gap(w: npt.NDArray[np.float64]) -> float:
        return float(np.linalg.norm(w - plain) / np.linalg.norm(plain))

    assert gap(with_feedback) < 0.02
    assert gap(without) > 0.05
    assert gap(without) > 5 * gap(with_feedback)


# Decoding into the streaming aggregator ------------------------------------------------------


def test_decoded_payloads_stream_into_fedavg() -> None:
    reference = _weights()
    rng = np.random.default_rng(9)
    updates = [(_weights(seed), float(seed)) for seed in range(1, 5)]
    payloads = [
        Quantizer8Bit(block_size=16).encode(d, rng=rng).payload
        if i % 2
        else TopK(0.3).encode(d).payload
        for i, (d, _) in enumerate(updates)
    ]
    aggregator = FedAvg(reference)
    decoded = []
    for payload, (_, weight) in zip(payloads, updates, strict=True):
        decoded.append(decode_into(payload, reference))
        aggregator.add(decoded[-1], weight)
    total = sum(w for _, w in updates)
    for name in reference.names:
        expected = (
            sum(d[name].astype(np.float64) * w for d, (_, w) in zip(decoded, updates, strict=True))
            / total
        )
        np.testing.assert_allclose(aggregator.result().delta[name], expected, rtol=1e-6)


def test_decode_lays_tensors_out_in_the_reference_order() -> None:
    delta = _weights()
    reordered = Weights.from_pairs([("bias", delta["bias"]), ("kernel", delta["kernel"])])
    decoded = decode_into(TopK(1.0).encode(delta).payload, reordered)
    assert decoded.names == ("bias", "kernel")
    assert decoded.allclose(delta, rtol=0, atol=0)


# Malformed payloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["q8", "topk"])
def test_truncated_payloads_are_refused(codec: str) -> None:
    delta = _weights()
    payload = (
        Quantizer8Bit().encode(delta, rng=np.random.default_rng(0)).payload
        if codec == "q8"
        else TopK(0.5, value_bits=8).encode(delta).payload
    )
    body = read_header(payload).body_offset
    for cut in (0, 3, 7, 20, body, body + 5, len(payload) - 1):
        with pytest.raises(WeightsFormatError, match=r"truncated|not a compressed update"):
            decode_into(payload[:cut], delta)
    with pytest.raises(WeightsFormatError, match="unexpected bytes"):
        decode_into(payload + b"\0", delta)


def test_payload_not_matching_the_reference_is_refused() -> None:
    delta = _weights()
    payload = TopK(0.5).encode(delta).payload
    with pytest.raises(MissingTensorError, match="'extra'"):
        decode_into(payload, Weights({**delta, "extra": [0.0]}))
    with pytest.raises(UnknownTensorError, match="'bias'"):
        decode_into(payload, Weights({"kernel": delta["kernel"]}))
    with pytest.raises(ShapeMismatchError, match=r"'kernel': expected shape \(5, 8\)"):
        decode_into(payload, Weights({"kernel": np.zeros((5, 8)), "bias": delta["bias"]}))


def test_q8_non_finite_or_negative_scales_are_refused() -> None:
    delta = Weights({"w": np.linspace(-1, 1, 50)})
    encoded = Quantizer8Bit().encode(delta, rng=np.random.default_rng(0))
    nan = np.array([np.nan], np.float32).tobytes()
    for offset in (0, 4):  # the block minimum, then the block step
        with pytest.raises(WeightsFormatError, match="NaN/Inf"):
            decode_into(_with_body(encoded, {offset: nan}), delta)
    negative = np.array([-0.5], np.float32).tobytes()
    with pytest.raises(WeightsFormatError, match="step is negative"):
        decode_into(_with_body(encoded, {4: negative}), delta)
    huge = np.array([3e38], np.float32).tobytes()
    with pytest.raises(WeightsFormatError, match="decodes to NaN/Inf"):
        decode_into(_with_body(encoded, {4: huge}), delta)


def test_topk_bad_indices_and_values_are_refused() -> None:
    delta = Weights({"w": np.arange(10.0)})
    encoded = TopK(0.3).encode(delta)  # indices [7, 8, 9], then float32 values
    u32 = np.array([10], np.uint32).tobytes()
    with pytest.raises(WeightsFormatError, match="index 10 is out of range for an update of 10"):
        decode_into(_with_body(encoded, {0: u32}), delta)
    with pytest.raises(WeightsFormatError, match="index 9 appears more than once"):
        decode_into(_with_body(encoded, {4: np.array([9], np.uint32).tobytes()}), delta)
    with pytest.raises(WeightsFormatError, match="value is NaN"):
        decode_into(_with_body(encoded, {12: np.array([np.inf], np.float32).tobytes()}), delta)
    scaled = TopK(0.3, value_bits=8).encode(delta)
    with pytest.raises(WeightsFormatError, match="value scale is nan"):
        decode_into(_with_body(scaled, {12: np.array([np.nan], np.float32).tobytes()}), delta)


def test_corrupt_headers_are_refused() -> None:
    delta = Weights({"w": np.arange(10.0)})
    encoded = TopK(0.3).encode(delta)
    cases = [
        (_with_header(encoded, codec="gzip"), "unknown codec 'gzip'"),
        (_with_header(encoded, version=2), "unsupported payload version 2"),
        (_with_header(encoded, k=11), r"k must be an integer \[0, 10\], got 11"),
        (_with_header(encoded, value_bits=16), "value_bits must be 8 or 32"),
        (_with_header(encoded, tensors=[["w", [10], "F16"]]), "expected dtype 'F32'"),
        (_with_header(encoded, tensors=[["w", [-1]]]), "is not \\[name, shape, dtype\\]"),
        (_with_header(encoded, tensors=[["w", [10], "F32"]] * 2), "listed twice"),
        (b"FDGZ\x03\x00\x00\x00{{{", "bad header"),
        (b"PK\x03\x04" + encoded.payload[4:], "without the b'FDGZ' prefix"),
    ]
    for payload, message in cases:
        with pytest.raises(WeightsFormatError, match=message):
            decode_into(payload, delta)
    with pytest.raises(ConfigError, match="payload must be bytes"):
        read_header("FDGZ")  # type: ignore[arg-type]
