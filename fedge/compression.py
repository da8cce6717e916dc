"""Compressed model updates: 8-bit stochastic quantization and top-k with error feedback.

Two codecs turn a delta (:class:`~fedge.weights.Weights`) into a compact payload:

- :class:`Quantizer8Bit`: per block of values, ``x ~ lo + q * step`` with ``q`` in 0..255
  drawn by unbiased stochastic rounding, so ``E[decode(encode(x))] == x`` and every value is
  off by less than one ``step`` (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD
  via Gradient Quantization and Encoding", NeurIPS).
- :class:`TopK`: the ``fraction`` largest-magnitude values of the whole update with their
  flat indices; :meth:`TopK.step` adds error feedback, a per-device residual of everything
  not yet sent (Stich et al. 2018, "Sparsified SGD with Memory", NeurIPS; Karimireddy et al.
  2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML).
  The residual is an explicit :class:`ErrorFeedback` value with ``to_bytes``/``from_bytes``
  for a device to keep between rounds.

Payload layout: the magic ``b"FDGZ"``, a 4-byte little-endian header length, a canonical
JSON header (codec, version, tensor names/shapes/dtypes, codec options), then raw
little-endian arrays. :func:`decode_into` checks every field against the round's reference
weights and decodes one payload in O(model size), ready for
:class:`fedge.aggregation.FedAvg`'s ``add``. Malformed payloads raise
:class:`~fedge.errors.WeightsFormatError` (a tensor or shape that differs from the reference
raises the matching :class:`~fedge.errors.WeightsError` subclass).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors
import safetensors.numpy

from fedge.errors import (
    ConfigError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownTensorError,
    WeightsFormatError,
)
from fedge.jsonlimits import loads_bounded
from fedge.validation import check_fraction, check_int
from fedge.weights import Weights

__all__ = [
    "CODEC_NAMES",
    "EncodedUpdate",
    "ErrorFeedback",
    "PayloadHeader",
    "Quantizer8Bit",
    "TopK",
    "decode_into",
    "read_header",
]

CODEC_NAMES = ("q8", "topk")
PAYLOAD_VERSION = 1
_MAGIC = b"FDGZ"
_STATE_KEY = "fedge.error_feedback"
_PREFIX_BYTES = len(_MAGIC) + 4
_MAX_HEADER_BYTES = 16 << 20
_LEVELS = 255  # uint8 codes 0..255
_INT8_MAX = 127  # symmetric int8 codes -127..127 for top-k values
_FLOAT32_MAX = float(np.finfo(np.float32).max)

Float64Array = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EncodedUpdate:
    """One compressed update: the payload bytes and what they cost against float32."""

    payload: bytes
    codec: str
    num_parameters: int

    @property
    def payload_bytes(self) -> int:
        return len(self.payload)

    @property
    def float32_bytes(self) -> int:
        """Bytes of the same update as raw float32 values (no header)."""
        return 4 * self.num_parameters

    @property
    def compression_ratio(self) -> float:
        """``float32_bytes / payload_bytes``: 4.0 means a quarter of the float32 size."""
        return self.float32_bytes / self.payload_bytes


@dataclass(frozen=True)
class PayloadHeader:
    """What a payload's header says: codec, tensors in payload order, codec options."""

    codec: str
    shapes: Mapping[str, tuple[int, ...]]
    options: Mapping[str, int]
    body_offset: int

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes.values())


# Quantization -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantizer8Bit:
    """Unbiased 8-bit stochastic quantization per block of ``block_size`` values.

    ``block_size=None`` uses one block per tensor. Each block stores its minimum ``lo`` and
    its ``step = (max - min) / 255`` as float32, then one uint8 code per value; a smaller
    block costs 8 more bytes per block and shrinks the step where values vary in scale.
    """

    block_size: int | None = None

    def __post_init__(self) -> None:
        if self.block_size is not None:
            check_int(self.block_size, "block_size", low=1)

    def encode(self, delta: Weights, *, rng: np.random.Generator) -> EncodedUpdate:
        """``delta`` as a ``q8`` payload; ``rng`` draws the stochastic rounding."""
        _check_inputs(delta)
        if not isinstance(rng, np.random.Generator):
            raise ConfigError(f"rng must be a numpy Generator, got {type(rng).__name__}")
        block = self.block_size or 0
        parts: list[bytes] = []
        for array in delta.values():
            lo, step, codes = _quantize(array.ravel(), block or max(array.size, 1), rng)
            parts += [lo.tobytes(), step.tobytes(), codes.tobytes()]
        payload = _pack("q8", delta, {"block_size": block}, parts)
        return EncodedUpdate(payload, "q8", delta.num_parameters)


def _quantize(
    flat: FloatArray, block: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.uint8]]:
    """Per-block float32 ``lo`` and ``step`` and the uint8 codes of one flat tensor."""
    num_blocks = -(-flat.size // block)
    padded = np.zeros(num_blocks * block, np.float64)
    padded[: flat.size] = flat
    blocks = padded.reshape(num_blocks, block)
    if num_blocks and flat.size % block:
        blocks[-1, flat.size % block :] = blocks[-1, 0]  # padding must not widen the range
    lo = blocks.min(axis=1).astype(np.float32)  # exact: the inputs are float32
    high = blocks.max(axis=1)
    step = ((high - lo) / _LEVELS).astype(np.float32)
    # float32 rounding may shorten the step; lengthen it by one ulp so lo + 255 * step >= max.
    short = lo.astype(np.float64) + _LEVELS * step.astype(np.float64) < high
    step[short] = np.nextafter(step[short], np.float32(np.inf))
    safe = np.where(step > 0, step, 1.0).astype(np.float64)
    scaled = (blocks - lo.astype(np.float64)[:, None]) / safe[:, None]
    codes = np.floor(scaled + rng.random(scaled.shape))
    codes = np.clip(codes, 0, _LEVELS).astype(np.uint8).ravel()[: flat.size]
    return lo, step, codes


def _dequantize(body: memoryview, offset: int, size: int, block: int) -> tuple[Float64Array, int]:
    num_blocks = -(-size // block) if size else 0
    lo = _read_array(body, offset, np.float32, num_blocks, "block minimum")
    step = _read_array(body, offset + 4 * num_blocks, np.float32, num_blocks, "block step")
    offset += 8 * num_blocks
    codes = _read_array(body, offset, np.uint8, size, "codes")
    if not (np.isfinite(lo).all() and np.isfinite(step).all()):
        raise WeightsFormatError("corrupt q8 payload: a block scale (minimum or step) is NaN/Inf")
    if (step < 0).any():
        raise WeightsFormatError("corrupt q8 payload: a block step is negative")
    index = np.arange(size) // block
    values = (
        lo.astype(np.float64)[index] + codes.astype(np.float64) * step.astype(np.float64)[index]
    )
    return values, offset + size


# Top-k ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorFeedback:
    """A device's error-feedback state: per tensor, the float64 residual not yet sent.

    Explicit state: :meth:`TopK.step` returns a new one and never changes its input.
    """

    residual: Mapping[str, Float64Array]

    def __post_init__(self) -> None:
        if not isinstance(self.residual, Mapping):
            raise ConfigError(f"residual must map names to arrays, got {self.residual!r}")
        frozen = {}
        for name, array in self.residual.items():
            copy = np.array(array, dtype=np.float64, copy=True)
            if not np.isfinite(copy).all():
                raise NonFiniteError(f"residual {name!r} holds NaN or Inf", tensor=name)
            copy.flags.writeable = False
            frozen[name] = copy
        object.__setattr__(self, "residual", MappingProxyType(frozen))

    @classmethod
    def zeros(cls, reference: Weights) -> ErrorFeedback:
        """An empty residual shaped like ``reference`` (a device's first round)."""
        return cls({n: np.zeros(a.shape, np.float64) for n, a in reference.items()})

    def as_weights(self) -> Weights:
        """The residual rounded to float32 (for inspection and norms)."""
        return Weights(dict(self.residual))

    def to_bytes(self) -> bytes:
        """The residual as safetensors (float64), for a device to keep between rounds."""
        order = json.dumps(list(self.residual), separators=(",", ":"), ensure_ascii=True)
        arrays = {name: np.ascontiguousarray(a) for name, a in self.residual.items()}
        return bytes(safetensors.numpy.save(arrays, metadata={_STATE_KEY: order}))

    @classmethod
    def from_bytes(cls, data: bytes) -> ErrorFeedback:
        """Decode :meth:`to_bytes` output; bad bytes raise :class:`WeightsFormatError`."""
        raw = bytes(data)
        try:
            arrays = safetensors.numpy.load(raw)
            length = int.from_bytes(raw[:8], "little")
            header = loads_bounded(raw[8 : 8 + length], max_bytes=max(length, 1))
            order = json.loads(header["__metadata__"][_STATE_KEY])
        except (safetensors.SafetensorError, KeyError, TypeError, ValueError) as exc:
            raise WeightsFormatError(f"not an error-feedback state: {exc}") from exc
        if not isinstance(order, list) or sorted(order) != sorted(arrays):
            raise WeightsFormatError("corrupt error-feedback state: the tensor order is wrong")
        for name, array in arrays.items():
            if array.dtype != np.float64 or not np.isfinite(array).all():
                raise WeightsFormatError(
                    f"corrupt error-feedback state: tensor {name!r} is not finite float64",
                    tensor=name,
                )
        return cls({name: arrays[name] for name in order})


@dataclass(frozen=True)
class TopK:
    """Keep the ``fraction`` largest-magnitude values of an update (at least one).

    Values travel as float32 (``value_bits=32``) or as symmetric int8 codes with one
    float32 max-abs scale (``value_bits=8``, rounded to nearest: error feedback carries the
    rounding error into the next round). Indices are uint32 positions in the update's
    tensors flattened in order.
    """

    fraction: float
    value_bits: int = 32

    def __post_init__(self) -> None:
        check_fraction(self.fraction, "fraction", zero_ok=False, one_ok=True)
        if self.value_bits not in (8, 32):
            raise ConfigError(f"value_bits must be 8 or 32, got {self.value_bits!r}")

    def encode(self, delta: Weights) -> EncodedUpdate:
        """``delta``'s top-k as a ``topk`` payload, without error feedback."""
        _check_inputs(delta)
        return self._encode(delta, _flatten(delta))[0]

    def step(self, state: ErrorFeedback, delta: Weights) -> tuple[EncodedUpdate, ErrorFeedback]:
        """Compress ``residual + delta``; the new state holds exactly what was not sent."""
        _check_inputs(delta)
        if not isinstance(state, ErrorFeedback):
            raise ConfigError(f"state must be ErrorFeedback, got {type(state).__name__}")
        for name, array in delta.items():
            if name not in state.residual:
                raise UnknownTensorError(f"tensor {name!r} has no error-feedback residual")
            if state.residual[name].shape != array.shape:
                raise ShapeMismatchError(
                    f"tensor {name!r}: residual has shape {state.residual[name].shape}, "
                    f"the update {array.shape}",
                    tensor=name,
                )
        if len(state.residual) != len(delta):
            extra = sorted(set(state.residual) - set(delta))
            raise MissingTensorError(f"the update lacks the residual's tensors {extra}")
        accumulated = _flatten(delta) + _flatten_map(state.residual, delta)
        encoded, sent = self._encode(delta, accumulated)
        left = accumulated - sent
        residual, start = {}, 0
        for name, array in delta.items():
            residual[name] = left[start : start + array.size].reshape(array.shape)
            start += array.size
        return encoded, ErrorFeedback(residual)

    def _encode(self, delta: Weights, flat: Float64Array) -> tuple[EncodedUpdate, Float64Array]:
        """The payload of ``flat``'s top-k and the dense float64 vector the server decodes."""
        n = flat.size
        if n >= 2**32:
            raise ConfigError(f"top-k indices are uint32; the update has {n} values")
        k = min(n, max(1, math.ceil(self.fraction * n))) if n else 0
        chosen = np.argpartition(np.abs(flat), n - k)[n - k :] if k else np.zeros(0, np.int64)
        indices = np.sort(chosen).astype(np.uint32)
        picked = flat[indices]
        if self.value_bits == 32:
            values = picked.astype(np.float32)
            parts = [indices.tobytes(), values.tobytes()]
            sent_values = values.astype(np.float64)
        else:
            scale = np.float32(np.abs(picked).max() / _INT8_MAX if k else 0.0)
            if k and float(scale) * _INT8_MAX < np.abs(picked).max():
                scale = np.nextafter(scale, np.float32(np.inf))
            codes = np.rint(picked / (float(scale) or 1.0)).clip(-_INT8_MAX, _INT8_MAX)
            codes8 = codes.astype(np.int8)
            parts = [indices.tobytes(), np.array([scale], np.float32).tobytes(), codes8.tobytes()]
            sent_values = _int8_values(codes8, float(scale))
        options = {"k": k, "value_bits": self.value_bits}
        payload = _pack("topk", delta, options, parts)
        sent = np.zeros(n, np.float64)
        # Round through float32 as the decoder does, so the residual is what the server lacks.
        sent[indices] = sent_values.astype(np.float32)
        return EncodedUpdate(payload, "topk", n), sent


def _int8_values(codes: npt.NDArray[np.int8], scale: float) -> Float64Array:
    values: Float64Array = codes.astype(np.float64) * scale
    return values


def _decode_topk(body: memoryview, offset: int, n: int, options: Mapping[str, int]) -> Float64Array:
    k, bits = options["k"], options["value_bits"]
    indices = _read_array(body, offset, np.uint32, k, "indices")
    offset += 4 * k
    if bits == 32:
        values = _read_array(body, offset, np.float32, k, "values").astype(np.float64)
        offset += 4 * k
    else:
        scale = _read_array(body, offset, np.float32, 1, "value scale")
        codes = _read_array(body, offset + 4, np.int8, k, "values")
        offset += 4 + k
        if not np.isfinite(scale).all() or scale[0] < 0:
            raise WeightsFormatError(
                f"corrupt topk payload: the value scale is {float(scale[0])}, "
                "expected a finite number >= 0"
            )
        values = _int8_values(codes, float(scale[0]))
    _check_end(body, offset)
    if k and int(indices.max()) >= n:
        raise WeightsFormatError(
            f"corrupt topk payload: index {int(indices.max())} is out of range "
            f"for an update of {n} values"
        )
    unique = np.unique(indices)
    if unique.size != k:
        counts = np.bincount(np.searchsorted(unique, indices))
        raise WeightsFormatError(
            f"corrupt topk payload: index {int(unique[counts.argmax()])} appears more than once"
        )
    if not np.isfinite(values).all():
        raise WeightsFormatError("corrupt topk payload: a value is NaN or Inf")
    dense = np.zeros(n, np.float64)
    dense[indices] = values
    return dense


# Decoding -----------------------------------------------------------------------------------


def read_header(payload: bytes) -> PayloadHeader:
    """Parse and check a payload's header (not its body)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ConfigError(f"payload must be bytes, got {type(payload).__name__}")
    data = memoryview(payload)
    if len(data) < _PREFIX_BYTES or bytes(data[:4]) != _MAGIC:
        raise WeightsFormatError(
            f"not a compressed update: {len(data)} bytes without the {_MAGIC!r} prefix"
        )
    length = int.from_bytes(data[4:_PREFIX_BYTES], "little")
    if length > len(data) - _PREFIX_BYTES:
        raise WeightsFormatError(
            f"truncated compressed update: the header claims {length} bytes, "
            f"only {len(data) - _PREFIX_BYTES} follow"
        )
    try:
        header = loads_bounded(
            bytes(data[_PREFIX_BYTES : _PREFIX_BYTES + length]),
            max_bytes=min(max(length, 1), _MAX_HEADER_BYTES),
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsFormatError(f"corrupt compressed update: bad header ({exc})") from exc
    if not isinstance(header, dict):
        raise WeightsFormatError("corrupt compressed update: the header is not a JSON object")
    codec, version = header.get("codec"), header.get("version")
    if codec not in CODEC_NAMES:
        raise WeightsFormatError(f"unknown codec {codec!r}; expected one of {list(CODEC_NAMES)}")
    if version != PAYLOAD_VERSION:
        raise WeightsFormatError(
            f"unsupported payload version {version!r}; this reader knows {PAYLOAD_VERSION}"
        )
    shapes = _read_tensors(header.get("tensors"))
    options = _read_options(codec, header, sum(math.prod(s) for s in shapes.values()))
    return PayloadHeader(
        codec, MappingProxyType(shapes), MappingProxyType(options), _PREFIX_BYTES + length
    )


def decode_into(payload: bytes, reference: Weights) -> Weights:
    """Decode a payload into dense weights laid out like ``reference``, the round's model.

    The payload's tensors must be exactly the reference's, with the same shapes. O(model
    size) time and memory: feed the result to ``FedAvg.add`` one payload at a time.
    """
    if not isinstance(reference, Weights):
        raise ConfigError(f"reference must be Weights, got {type(reference).__name__}")
    header = read_header(payload)
    _check_against(header, reference)
    body = memoryview(payload)
    n = header.num_parameters
    if header.codec == "q8":
        flat_parts, offset = {}, header.body_offset
        for name, shape in header.shapes.items():
            size = math.prod(shape)
            block = header.options["block_size"] or max(size, 1)
            flat_parts[name], offset = _dequantize(body, offset, size, block)
        _check_end(body, offset)
    else:
        dense = _decode_topk(body, header.body_offset, n, header.options)
        flat_parts, start = {}, 0
        for name, shape in header.shapes.items():
            size = math.prod(shape)
            flat_parts[name] = dense[start : start + size]
            start += size
    tensors: dict[str, FloatArray] = {}
    for name in reference.names:
        flat = flat_parts[name]
        if not (np.abs(flat) <= _FLOAT32_MAX).all():
            raise WeightsFormatError(
                f"corrupt {header.codec} payload: tensor {name!r} decodes to NaN/Inf", tensor=name
            )
        tensors[name] = flat.astype(np.float32).reshape(reference[name].shape)
    return Weights(tensors)


# Helpers ------------------------------------------------------------------------------------


def _check_inputs(delta: Weights) -> None:
    if not isinstance(delta, Weights):
        raise ConfigError(f"delta must be Weights, got {type(delta).__name__}")
    delta.check_finite()


def _flatten(weights: Weights) -> Float64Array:
    if not len(weights):
        return np.zeros(0, np.float64)
    return np.concatenate([a.ravel().astype(np.float64) for a in weights.values()])


def _flatten_map(arrays: Mapping[str, Float64Array], order: Weights) -> Float64Array:
    if not len(order):
        return np.zeros(0, np.float64)
    return np.concatenate([arrays[name].ravel() for name in order.names])


def _pack(codec: str, delta: Weights, options: Mapping[str, int], parts: list[bytes]) -> bytes:
    header = {
        "codec": codec,
        "version": PAYLOAD_VERSION,
        "tensors": [[name, list(a.shape), "F32"] for name, a in delta.items()],
        **options,
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return b"".join([_MAGIC, len(text).to_bytes(4, "little"), text, *parts])


def _read_tensors(entries: Any) -> dict[str, tuple[int, ...]]:
    if not isinstance(entries, list):
        raise WeightsFormatError("corrupt compressed update: 'tensors' is not a list")
    shapes: dict[str, tuple[int, ...]] = {}
    for entry in entries:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], list)
            and all(type(d) is int and d >= 0 for d in entry[1])
        ):
            raise WeightsFormatError(
                f"corrupt compressed update: tensor entry {entry!r} is not [name, shape, dtype]"
            )
        name, shape, dtype = entry
        if dtype != "F32":
            raise WeightsFormatError(
                f"tensor {name!r}: expected dtype 'F32' (float32), got {dtype!r}", tensor=name
            )
        if name in shapes:
            raise WeightsFormatError(f"tensor {name!r} is listed twice", tensor=name)
        shapes[name] = tuple(shape)
    return shapes


def _read_options(codec: str, header: Mapping[str, Any], n: int) -> dict[str, int]:
    def integer(key: str, low: int, high: int | None = None) -> int:
        value = header.get(key)
        if type(value) is not int or value < low or (high is not None and value > high):
            bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise WeightsFormatError(
                f"corrupt {codec} payload: {key} must be an integer {bounds}, got {value!r}"
            )
        return value

    if codec == "q8":
        return {"block_size": integer("block_size", 0)}
    bits = header.get("value_bits")
    if bits not in (8, 32):
        raise WeightsFormatError(f"corrupt topk payload: value_bits must be 8 or 32, got {bits!r}")
    return {"k": integer("k", 0, n), "value_bits": bits}


def _check_against(header: PayloadHeader, reference: Weights) -> None:
    unknown = [name for name in header.shapes if name not in reference]
    if unknown:
        raise UnknownTensorError(
            f"tensor {unknown[0]!r} is not in the reference (unknown: {unknown})", tensor=unknown[0]
        )
    missing = [name for name in reference.names if name not in header.shapes]
    if missing:
        raise MissingTensorError(
            f"tensor {missing[0]!r} of the reference is missing (missing: {missing})",
            tensor=missing[0],
        )
    for name, shape in header.shapes.items():
        if shape != reference[name].shape:
            raise ShapeMismatchError(
                f"tensor {name!r}: expected shape {reference[name].shape}, got {shape}",
                tensor=name,
            )


def _read_array(
    body: memoryview, offset: int, dtype: type[np.generic], count: int, what: str
) -> npt.NDArray[Any]:
    size = np.dtype(dtype).itemsize * count
    if offset + size > len(body):
        raise WeightsFormatError(
            f"truncated compressed update: {what} need bytes {offset}..{offset + size}, "
            f"the payload has {len(body)}"
        )
    return np.frombuffer(body, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset)


def _check_end(body: memoryview, offset: int) -> None:
    if offset != len(body):
        raise WeightsFormatError(
            f"corrupt compressed update: {len(body) - offset} unexpected bytes after the data"
        )
