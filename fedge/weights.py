"""Model weights: an immutable, ordered set of named float32 tensors, and their byte format.

The byte format is `safetensors <https://github.com/huggingface/safetensors>`_ (no pickle):
an 8-byte little-endian header length, a JSON header, then raw little-endian tensor data.
safetensors sorts tensors in the file, so the order is kept in the header's
``__metadata__``, under the one key ``fedge``, as canonical JSON
``{"format": "fedge.weights", "metadata": {...}, "order": [names], "version": 1}``.
One key, because safetensors writes several metadata keys in hash-map (random) order,
and the bytes must be deterministic so that :meth:`Weights.digest` is a content address.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import mmap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors
import safetensors.numpy

from fedge.errors import (
    ConfigError,
    DtypeMismatchError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownTensorError,
    WeightsError,
    WeightsFormatError,
)
from fedge.jsonlimits import loads_bounded
from fedge.summation import sum_of_squares
from fedge.validation import check_number

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Weights", "decode_weights", "encode_weights"]

FORMAT_NAME = "fedge.weights"
FORMAT_VERSION = 1
_METADATA_KEY = "fedge"
_HEADER_LENGTH_BYTES = 8
_MAX_METADATA_BYTES = 64 << 20
_SAFETENSORS_MAX_HEADER = 100_000_000
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_USIZE_LIMIT = 1 << 59  # a shape whose size * 32 bits overflows a u64 is the reader's to refuse
_SAFETENSORS_MAX_DATA = 1 << 62
_CACHED_HEADER_BYTES = 1 << 16

FloatArray = npt.NDArray[np.float32]


def _as_float32(name: object, value: npt.ArrayLike) -> FloatArray:
    """A private, read-only, C-ordered float32 copy of ``value``, refusing non-real input."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"tensor names must be non-empty strings, got {name!r}")
    if name == "__metadata__":
        raise ConfigError("'__metadata__' is reserved by the safetensors format")
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"tensor {name!r} is not an array: {exc}", tensor=name) from exc
    if raw.dtype.kind not in "iuf":
        raise DtypeMismatchError(
            f"tensor {name!r} has dtype {raw.dtype}; expected real numbers (stored as float32)",
            tensor=name,
        )
    array = np.array(raw, dtype=np.float32, order="C", copy=True)
    array.flags.writeable = False
    return array


class Weights(Mapping[str, FloatArray]):
    """An immutable, ordered mapping of tensor name to a read-only float32 array.

    Build it from a mapping (``Weights({"w": w, "b": b})``) or from pairs
    (``Weights.from_pairs([("w", w), ("b", b)])``). Arrays are copied and cast to float32.
    Equality (``==``) is bit-exact: same names in the same order, same shapes, same bits.
    """

    __slots__ = ("_tensors",)
    _tensors: dict[str, FloatArray]

    def __init__(self, tensors: Mapping[str, npt.ArrayLike]) -> None:
        if not isinstance(tensors, Mapping):
            raise ConfigError(
                f"Weights() takes a mapping of name to array, got {type(tensors).__name__}; "
                "use Weights.from_pairs for (name, array) pairs"
            )
        self._tensors = {name: _as_float32(name, value) for name, value in tensors.items()}

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, npt.ArrayLike]]) -> Weights:
        """Weights from ``(name, array)`` pairs, in their order; a repeated name is an error."""
        tensors: dict[str, npt.ArrayLike] = {}
        for name, value in pairs:
            if name in tensors:
                raise ConfigError(f"tensor {name!r} given twice")
            tensors[name] = value
        return cls(tensors)

    @classmethod
    def _wrap(cls, tensors: dict[str, FloatArray]) -> Weights:
        """Adopt float32 arrays that nobody else holds, without copying them again."""
        weights = cls.__new__(cls)
        # numpy turns 0-d results into scalars; asarray makes them arrays again.
        weights._tensors = {n: np.asarray(a, dtype=np.float32) for n, a in tensors.items()}
        for array in weights._tensors.values():
            array.flags.writeable = False
        return weights

    # Mapping protocol ---------------------------------------------------------------------

    def __getitem__(self, name: str) -> FloatArray:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Weights):
            return NotImplemented
        return self.equal(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Weights({len(self)} tensors, {self.num_parameters} parameters)"

    # Description --------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tensors)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: array.shape for name, array in self._tensors.items()}

    @property
    def num_parameters(self) -> int:
        return sum(array.size for array in self._tensors.values())

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (not of the serialized form)."""
        return sum(array.nbytes for array in self._tensors.values())

    # Bytes --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The safetensors encoding; the same weights always give the same bytes."""
        return encode_weights(self)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int | None = None) -> Weights:
        """Decode :meth:`to_bytes` output; raises :class:`WeightsFormatError` on bad bytes."""
        return decode_weights(data, max_bytes=max_bytes)[0]

    def digest(self) -> str:
        """SHA-256 hex digest of :meth:`to_bytes`: a content address for these weights."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    # Validation ---------------------------------------------------------------------------

    def validate_against(self, reference: Weights, *, check_finite: bool = True) -> None:
        """Raise unless these weights have exactly the reference's tensors, dtypes and shapes.

        Checks, in order: unknown names, missing names, dtypes, shapes, then (when
        ``check_finite``) NaN/Inf values. Order of names is not compared.
        """
        unknown = [name for name in self._tensors if name not in reference]
        if unknown:
            raise UnknownTensorError(
                f"tensor {unknown[0]!r} is not in the reference (unknown: {unknown})",
                tensor=unknown[0],
            )
        missing = [name for name in reference.names if name not in self._tensors]
        if missing:
            raise MissingTensorError(
                f"tensor {missing[0]!r} of the reference is missing (missing: {missing})",
                tensor=missing[0],
            )
        for name in reference.names:
            got, expected = self._tensors[name].dtype, reference[name].dtype
            if got != expected:
                raise DtypeMismatchError(
                    f"tensor {name!r}: expected dtype {expected}, got {got}", tensor=name
                )
        for name in reference.names:
            got_shape, expected_shape = self._tensors[name].shape, reference[name].shape
            if got_shape != expected_shape:
                raise ShapeMismatchError(
                    f"tensor {name!r}: expected shape {expected_shape}, got {got_shape}",
                    tensor=name,
                )
        if check_finite:
            self.check_finite()

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` naming the first tensor that holds NaN or Inf."""
        for name, array in self._tensors.items():
            if not np.isfinite(array).all():
                nans = int(np.isnan(array).sum())
                infs = int(np.isinf(array).sum())
                raise NonFiniteError(
                    f"tensor {name!r} holds {nans} NaN and {infs} Inf values out of {array.size}",
                    tensor=name,
                )

    # Arithmetic ---------------------------------------------------------------------------

    def delta(self, base: Weights) -> Weights:
        """``self - base``: the update that takes ``base`` to these weights."""
        base.validate_against(self, check_finite=False)
        return Weights._wrap({name: a - base[name] for name, a in self._tensors.items()})

    def apply(self, delta: Weights, *, scale: float = 1.0) -> Weights:
        """``self + scale * delta``, computed in float64 and rounded once to float32."""
        factor = check_number(scale, "scale")
        delta.validate_against(self, check_finite=False)
        return Weights._wrap(
            {
                name: (a.astype(np.float64) + factor * delta[name].astype(np.float64)).astype(
                    np.float32
                )
                for name, a in self._tensors.items()
            }
        )

    def scale(self, factor: float) -> Weights:
        """``factor * self``, computed in float64 and rounded once to float32."""
        f = check_number(factor, "factor")
        return Weights._wrap(
            {n: (f * a.astype(np.float64)).astype(np.float32) for n, a in self._tensors.items()}
        )

    def zeros_like(self) -> Weights:
        return Weights._wrap({n: np.zeros(a.shape, np.float32) for n, a in self._tensors.items()})

    def l2_norm(self) -> float:
        """Global L2 norm over every tensor, accumulated in float64 (exact squares, pairwise
        sums, no BLAS: the same bits whatever the thread settings)."""
        return math.sqrt(sum(sum_of_squares(a.reshape(-1)) for a in self._tensors.values()))

    def flatten(self) -> npt.NDArray[np.float64]:
        """The tensors as one float64 vector, in name order, each C-ordered (the inverse of
        :meth:`unflatten`)."""
        if not self._tensors:
            return np.zeros(0, np.float64)
        return np.concatenate([a.ravel().astype(np.float64) for a in self._tensors.values()])

    def unflatten(self, vector: npt.ArrayLike) -> Weights:
        """Weights shaped like ``self`` from a 1-D vector holding the tensors in ``self``'s
        name order, each C-ordered."""
        flat = _as_float32("vector", vector)
        if flat.ndim != 1 or flat.size != self.num_parameters:
            raise ShapeMismatchError(
                f"expected a vector of shape ({self.num_parameters},), got {flat.shape}"
            )
        tensors: dict[str, FloatArray] = {}
        start = 0
        for name, array in self._tensors.items():
            tensors[name] = flat[start : start + array.size].reshape(array.shape).copy()
            start += array.size
        return Weights._wrap(tensors)

    def equal(self, other: Weights) -> bool:
        """Bit-exact equality: names in the same order, shapes, and the bits of every value."""
        return self.names == other.names and all(
            a.shape == other[n].shape and a.tobytes() == other[n].tobytes()
            for n, a in self._tensors.items()
        )

    def allclose(self, other: Weights, *, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Same names and shapes (any order) and values equal within ``numpy.allclose``."""
        return set(self.names) == set(other.names) and all(
            a.shape == other[n].shape and bool(np.allclose(a, other[n], rtol=rtol, atol=atol))
            for n, a in self._tensors.items()
        )


def encode_weights(weights: Weights, *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Weights as safetensors bytes, with optional extra string ``metadata`` in the header.

    The same weights and metadata always give the same bytes.
    """
    extra = dict(metadata or {})
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"metadata must map str to str, got {key!r}: {value!r}")
    header = {
        "format": FORMAT_NAME,
        "metadata": extra,
        "order": list(weights.names),
        "version": FORMAT_VERSION,
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return bytes(safetensors.numpy.save(dict(weights.items()), metadata={_METADATA_KEY: text}))


def decode_weights(data: bytes, *, max_bytes: int | None = None) -> tuple[Weights, dict[str, str]]:
    """Decode :func:`encode_weights` output: the weights and the extra metadata.

    The tensors of a well-formed file are read-only views over ``data`` (no copy): ``bytes``
    and read-only memoryviews of a whole ``bytes`` or read-only ``mmap`` are immutable, so the
    views are too; any other buffer is copied first. Anything unusual in the layout is left
    to the safetensors reader, which copies and names what is wrong.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ConfigError(f"expected bytes, got {type(data).__name__}")
    if not _immutable(data):
        data = bytes(data)
    if max_bytes is not None:
        if max_bytes < 0:
            raise ConfigError(f"max_bytes must be >= 0, got {max_bytes}")
        if len(data) > max_bytes:
            raise WeightsFormatError(f"weights are {len(data)} bytes, over the {max_bytes} limit")
    layout = _known_layout(data)
    if layout is not None:
        return layout.weights(data), dict(layout.extra)
    header, header_length = _read_header(data)
    order, extra = _read_metadata(header)
    _check_entries(header, order, available=len(data) - _HEADER_LENGTH_BYTES - header_length)
    try:
        arrays = safetensors.numpy.load(bytes(data))
    except safetensors.SafetensorError as exc:
        raise WeightsFormatError(f"not a valid safetensors file: {exc}") from exc
    tensors = {name: np.asarray(arrays[name], dtype=np.float32, order="C") for name in order}
    return Weights._wrap(tensors), extra


def _check_entries(header: dict[str, Any], order: list[str], *, available: int) -> None:
    """Every tensor entry float32, in the order list and within ``available`` data bytes."""
    for name, entry in header.items():
        if name not in order:
            raise WeightsFormatError(f"tensor {name!r} is not in the order list", tensor=name)
        if not isinstance(entry, dict):
            raise WeightsFormatError(f"corrupt header entry for tensor {name!r}", tensor=name)
        if entry.get("dtype") != "F32":
            raise DtypeMismatchError(
                f"tensor {name!r}: expected dtype F32 (float32), got {entry.get('dtype')!r}",
                tensor=name,
            )
    _check_data_offsets(header, available=available)
    for name in order:
        if name not in header:
            raise WeightsFormatError(
                f"tensor {name!r} is in the order list but not in the file", tensor=name
            )


def _immutable(data: bytes | bytearray | memoryview) -> bool:
    """Whether nothing can change ``data``'s bytes while views over them live."""
    if isinstance(data, bytes):
        return True
    # A view of part of a larger buffer is copied: views over it would keep all of it alive.
    return (
        isinstance(data, memoryview)
        and data.readonly
        and data.c_contiguous
        and isinstance(data.obj, bytes | mmap.mmap)
        and data.nbytes == len(data.obj)
    )


@dataclass(frozen=True)
class _Layout:
    """A checked header: where each tensor's float32 data lies after it."""

    start: int  # the first data byte: 8 + the header's length
    tensors: tuple[tuple[str, int, int, tuple[int, ...]], ...]  # name, offset, count, shape
    data_bytes: int
    extra: tuple[tuple[str, str], ...]

    def weights(self, data: bytes | memoryview) -> Weights:
        return Weights._wrap(
            {
                name: np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(shape)
                for name, offset, count, shape in self.tensors
            }
        )


def _known_layout(data: bytes | memoryview) -> _Layout | None:
    """The layout of ``data`` when it is a well-formed fedge weights file the safetensors
    reader accepts as is; None for anything else (the checked path then judges it)."""
    if len(data) < _HEADER_LENGTH_BYTES:
        return None
    length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    if length > min(len(data) - _HEADER_LENGTH_BYTES, _SAFETENSORS_MAX_HEADER):
        return None
    head = bytes(data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + length])
    # A round's updates share one header: parse and check it once.
    layout = _cached_layout(head) if length <= _CACHED_HEADER_BYTES else _layout(head)
    if layout is None or layout.start + layout.data_bytes != len(data):
        return None
    return layout


def _layout(head: bytes) -> _Layout | None:
    """Every check of :func:`decode_weights` that depends on the header alone, and the
    safetensors reader's own (header starts with '{', known keys only, no key twice, UTF-8
    names and metadata, the tensors' data contiguous from byte 0, each exactly its shape's
    size, 4-byte aligned): the layout, or None if anything differs."""
    start = _HEADER_LENGTH_BYTES + len(head)
    if not head.startswith(b"{") or start % 4:
        return None
    try:
        header, _ = _read_header(len(head).to_bytes(_HEADER_LENGTH_BYTES, "little") + head)
        metadata = header.get("__metadata__")
        order, extra = _read_metadata(header)
        _check_entries(header, order, available=_SAFETENSORS_MAX_DATA)
    except WeightsError:
        return None
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) and _encodable(k) and _encodable(v) for k, v in metadata.items()
    ):
        return None
    # json keeps one of a key given twice, the reader may not: leave such a header to it.
    if not head.count(b'"data_offsets"') == head.count(b'"shape"') == len(header):
        return None
    if head.count(b'"dtype"') != len(header) or head.count(b'"__metadata__"') != 1:
        return None
    spans = []
    for name, entry in header.items():
        if entry.keys() != _ENTRY_KEYS or not _encodable(name):
            return None
        shape, (begin, end) = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list):
            return None
        count = 1
        for dim in shape:
            if not (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0):
                return None
            count *= dim
            if count >= _USIZE_LIMIT:
                return None
        if isinstance(begin, bool) or isinstance(end, bool) or end - begin != 4 * count:
            return None
        spans.append((begin, end, name, tuple(shape), count))
    spans.sort()
    position = 0
    where: dict[str, tuple[int, int, tuple[int, ...]]] = {}
    for begin, end, name, shape, count in spans:
        if begin != position:
            return None
        position = end
        where[name] = (start + begin, count, shape)
    return _Layout(
        start=start,
        tensors=tuple((name, *where[name]) for name in order),
        data_bytes=position,
        extra=tuple(extra.items()),
    )


_cached_layout = functools.lru_cache(maxsize=64)(_layout)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_header(data: bytes) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and its length in bytes."""
    if len(data) < _HEADER_LENGTH_BYTES:
        raise WeightsFormatError(
            f"truncated weights: {len(data)} bytes, shorter than the 8-byte header length"
        )
    length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    if length > len(data) - _HEADER_LENGTH_BYTES:
        raise WeightsFormatError(
            f"truncated or corrupt weights: the header claims {length} bytes, "
            f"only {len(data) - _HEADER_LENGTH_BYTES} follow"
        )
    try:
        header = loads_bounded(
            data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + length], max_bytes=max(length, 1)
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsFormatError(f"corrupt weights: the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise WeightsFormatError("corrupt weights: the header is not a JSON object")
    return header, length


def _check_data_offsets(header: dict[str, Any], *, available: int) -> None:
    """Name the first tensor whose data lies past the end of ``available`` data bytes."""
    cut = []
    for name, entry in header.items():
        offsets = entry.get("data_offsets")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            raise WeightsFormatError(f"corrupt data offsets for tensor {name!r}", tensor=name)
        if offsets[1] > available:
            cut.append((offsets[0], name))
    if cut:
        begin, name = min(cut)
        raise WeightsFormatError(
            f"truncated weights: tensor {name!r} starts at data byte {begin}, "
            f"its data runs past the {available} bytes present",
            tensor=name,
        )


def _read_metadata(header: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Pop and check ``__metadata__``; return the tensor order and the extra metadata."""
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or _METADATA_KEY not in metadata:
        raise WeightsFormatError(
            f"not a fedge weights file: the safetensors metadata lacks the {_METADATA_KEY!r} key"
        )
    try:
        ours = loads_bounded(metadata[_METADATA_KEY], max_bytes=_MAX_METADATA_BYTES)
    except (TypeError, ValueError) as exc:
        raise WeightsFormatError(
            f"corrupt weights: the fedge metadata is not JSON ({exc})"
        ) from exc
    if not isinstance(ours, dict) or ours.get("format") != FORMAT_NAME:
        raise WeightsFormatError(f"not a fedge weights file: format is not {FORMAT_NAME!r}")
    if ours.get("version") != FORMAT_VERSION:
        raise WeightsFormatError(
            f"unsupported weights format version {ours.get('version')!r}; "
            f"this reader knows {FORMAT_VERSION}"
        )
    order, extra = ours.get("order"), ours.get("metadata")
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise WeightsFormatError("corrupt weights: the tensor order is not a list of names")
    if len(set(order)) != len(order):
        raise WeightsFormatError("corrupt weights: the tensor order lists a name twice")
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise WeightsFormatError("corrupt weights: the extra metadata is not a str-to-str map")
    return order, extra
