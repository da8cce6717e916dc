"""Decoding weights without copies: read-only views over immutable bytes, copies of mutable
buffers, and nothing the safetensors reader would refuse ever reaching the model."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from fedge.errors import ConfigError, WeightsError
from fedge.weights import Weights, decode_weights, encode_weights


def _model() -> Weights:
    rng = np.random.default_rng(0)
    return Weights.from_pairs(
        [
            ("dense/kernel", rng.standard_normal((4, 3))),
            ("dense/bias", rng.standard_normal(3)),
            ("scale", np.float32(2.5)),
            ("empty", np.zeros((0, 2))),
        ]
    )


def test_decoded_tensors_are_read_only_views_over_the_bytes() -> None:
    data = _model().to_bytes()
    weights = Weights.from_bytes(data)
    assert weights == _model()
    whole = np.frombuffer(data, np.uint8)
    for name in ("dense/kernel", "dense/bias", "scale"):
        assert np.shares_memory(weights[name], whole), name
        assert not weights[name].flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            weights[name][...] = 0


def test_a_mutable_buffer_is_copied_so_later_writes_do_not_reach_the_weights() -> None:
    data = bytearray(_model().to_bytes())
    weights = Weights.from_bytes(data)
    data[-40:] = b"\x00" * 40
    assert weights == _model()
    writable = memoryview(bytearray(_model().to_bytes()))
    from_view = Weights.from_bytes(writable)
    writable[-8:] = b"\xff" * 8
    assert from_view == _model()


def test_a_read_only_memory_map_is_decoded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(_model().to_bytes())
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    weights = Weights.from_bytes(memoryview(mapped))
    assert weights == _model()
    assert not weights["dense/kernel"].flags.writeable


def test_updates_sharing_a_header_decode_to_their_own_values() -> None:
    first = Weights({"w": [1.0, 2.0]})
    second = Weights({"w": [3.0, -4.0]})
    assert first.to_bytes()[:100] == second.to_bytes()[:100]  # one header for the round
    assert Weights.from_bytes(first.to_bytes())["w"].tolist() == [1.0, 2.0]
    assert Weights.from_bytes(second.to_bytes())["w"].tolist() == [3.0, -4.0]
    with pytest.raises(WeightsError, match="truncated"):
        Weights.from_bytes(second.to_bytes()[:-4])  # the same header, data cut short


def test_metadata_is_a_fresh_dict_on_every_decode() -> None:
    data = encode_weights(Weights({"w": [1.0]}), metadata={"round": "3"})
    _, extra = decode_weights(data)
    extra["round"] = "changed"
    assert decode_weights(data)[1] == {"round": "3"}


def test_a_non_buffer_is_still_refused() -> None:
    with pytest.raises(ConfigError, match="expected bytes, got str"):
        decode_weights("not bytes")  # type: ignore[arg-type]


def _mutations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    """Flips, insertions and cuts around the header and the data boundary."""
    header_end = 8 + int.from_bytes(data[:8], "little")
    out = []
    for _ in range(count):
        raw = bytearray(data)
        kind = rng.integers(4)
        if kind == 0:  # a byte of the header changed
            at = int(rng.integers(0, header_end))
            raw[at] = int(rng.integers(0, 256))
        elif kind == 1:  # a printable character of the header swapped for another
            at = int(rng.integers(8, header_end))
            raw[at] = ord(rng.choice(list('0123456789{}[],:" ')))
        elif kind == 2:  # bytes added or removed at the end
            raw = raw[: int(rng.integers(header_end, len(raw)))] if rng.random() < 0.5 else raw
            raw += bytes(int(rng.integers(0, 9)))
        else:  # the header's length field off by a little
            length = int.from_bytes(raw[:8], "little") + int(rng.integers(-9, 10))
            raw[:8] = max(length, 0).to_bytes(8, "little")
        out.append(bytes(raw))
    return out


def test_nothing_the_safetensors_reader_refuses_reaches_the_model() -> None:
    data = _model().to_bytes()
    decoded = refused = 0
    for mutated in _mutations(data, np.random.default_rng(7), 600):
        try:
            weights = Weights.from_bytes(mutated)
        except WeightsError:
            refused += 1
            continue
        decoded += 1
        arrays = safetensors.numpy.load(mutated)  # raises if the reader refuses it
        for name in weights.names:
            np.testing.assert_array_equal(weights[name], arrays[name])
    assert refused > 300
    assert decoded > 0  # some changes are harmless (a digit in a padding space, ...)


@pytest.mark.parametrize(
    "header",
    [
        # a key given twice: json keeps the last one, the views must not trust it
        b'{"__metadata__":{"fedge":"{\\"format\\":\\"fedge.weights\\",\\"metadata\\":{},'
        b'\\"order\\":[\\"w\\"],\\"version\\":1}"},'
        b'"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        # an unknown key in a tensor entry
        b'{"__metadata__":{"fedge":"{\\"format\\":\\"fedge.weights\\",\\"metadata\\":{},'
        b'\\"order\\":[\\"w\\"],\\"version\\":1}"},'
        b'"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}',
        # leading white space before the object
        b' {"__metadata__":{"fedge":"{\\"format\\":\\"fedge.weights\\",\\"metadata\\":{},'
        b'\\"order\\":[\\"w\\"],\\"version\\":1}"},'
        b'"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    ],
)
def test_unusual_headers_are_judged_by_the_safetensors_reader(header: bytes) -> None:
    header += b" " * (-len(header) % 8)
    data = len(header).to_bytes(8, "little") + header + np.ones(2, np.float32).tobytes()
    try:
        expected = safetensors.numpy.load(data)
    except safetensors.SafetensorError:
        with pytest.raises(WeightsError):
            Weights.from_bytes(data)
        return
    weights = Weights.from_bytes(data)
    assert not np.shares_memory(weights["w"], np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(weights["w"], expected["w"])


def test_a_view_of_part_of_a_larger_buffer_is_copied_so_it_is_not_kept_alive() -> None:
    data = _model().to_bytes()
    larger = b"prefix--" + data
    weights = Weights.from_bytes(memoryview(larger)[8:])
    assert weights == _model()
    assert not np.shares_memory(weights["dense/kernel"], np.frombuffer(larger, np.uint8))
