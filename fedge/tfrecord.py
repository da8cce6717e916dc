"""TFRecord files and ``tf.train.Example`` messages without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian) | uint32 masked CRC32C of the length bytes
    data (length bytes)           | uint32 masked CRC32C of the data

A ``.gz`` file is the same stream gzip-compressed (TensorFlow's ``GZIP`` compression type).
Examples are encoded with ``fedge/protocol/example.proto``, wire-identical to TensorFlow's
``Example``/``Features``/``Feature`` messages, so files written by ``tf.io.TFRecordWriter``
read here and the reverse.

An example is held as a mapping of feature name to a :data:`FeatureValue`: a list of
``bytes`` (a ``bytes_list``), of ``float`` (a ``float_list``, 32-bit on the wire) or of
``int`` (an ``int64_list``).
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Literal, cast

from google.protobuf.message import DecodeError

from fedge.errors import DataError
from fedge.protocol import example_pb2

__all__ = [
    "FeatureValue",
    "crc32c",
    "decode_example",
    "encode_example",
    "iter_records",
    "masked_crc32c",
    "read_examples",
    "write_examples",
    "write_records",
]

FeatureValue = list[bytes] | list[float] | list[int]

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


def _crc_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC as TFRecord stores it: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _open(path: str, mode: Literal["rb", "wb"]) -> IO[bytes]:
    if path.endswith(".gz"):
        return cast(IO[bytes], gzip.GzipFile(path, mode))
    return open(path, mode)


def iter_records(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The records of a TFRecord file (``.gz``: gzip-compressed), checksums verified.

    Raises DataError for an unreadable file, a truncated record or a checksum mismatch.
    """
    target = os.fspath(path)
    try:
        with _open(target, "rb") as stream:
            index = 0
            while True:
                header = stream.read(_HEADER.size)
                if not header:
                    return
                if len(header) < _HEADER.size:
                    raise DataError(f"{target}: record {index} is truncated (header)")
                length, length_crc = _HEADER.unpack(header)
                if masked_crc32c(header[:8]) != length_crc:
                    raise DataError(f"{target}: record {index} has a corrupt length")
                data = stream.read(length)
                footer = stream.read(_FOOTER.size)
                if len(data) < length or len(footer) < _FOOTER.size:
                    raise DataError(f"{target}: record {index} is truncated")
                if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
                    raise DataError(f"{target}: record {index} fails its checksum")
                yield data
                index += 1
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {target}: {exc}") from exc


def write_records(path: str | os.PathLike[str], records: Iterable[bytes]) -> int:
    """Write ``records`` as a TFRecord file (gzip-compressed if ``path`` ends in ``.gz``);
    the count written. The file is replaced, not appended to."""
    target = os.fspath(path)
    count = 0
    try:
        with _open(target, "wb") as stream:
            for data in records:
                header = struct.pack("<Q", len(data))
                stream.write(header + struct.pack("<I", masked_crc32c(header)))
                stream.write(data + struct.pack("<I", masked_crc32c(data)))
                count += 1
    except OSError as exc:
        raise DataError(f"cannot write {target}: {exc}") from exc
    return count


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """A serialized ``tf.train.Example``: a list of ``bytes``/``str`` -> ``bytes_list``,
    of ``float`` -> ``float_list``, of ``int`` -> ``int64_list`` (an empty list: an empty
    ``float_list``; a mixed list is a DataError)."""
    example = example_pb2.Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        items: list[Any] = list(values)
        if all(isinstance(v, bytes | str) for v in items) and items:
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in items)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in items) and items:
            feature.int64_list.value.extend(items)
        elif all(isinstance(v, float | int) and not isinstance(v, bool) for v in items):
            feature.float_list.value.extend(float(v) for v in items)
        else:
            raise DataError(f"feature {name!r}: values must all be bytes, all int or all float")
    data: bytes = example.SerializeToString()
    return data


def decode_example(data: bytes) -> dict[str, FeatureValue]:
    """The features of a serialized ``tf.train.Example`` (see :func:`encode_example`)."""
    example = example_pb2.Example()
    try:
        example.ParseFromString(data)
    except DecodeError as exc:
        raise DataError(f"not a tf.train.Example: {exc}") from exc
    out: dict[str, FeatureValue] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            out[name] = list(feature.bytes_list.value)
        elif kind == "int64_list":
            out[name] = list(feature.int64_list.value)
        elif kind == "float_list":
            out[name] = list(feature.float_list.value)
        else:
            out[name] = []
    return out


def read_examples(path: str | os.PathLike[str]) -> Iterator[dict[str, FeatureValue]]:
    """The decoded examples of a TFRecord file of ``tf.train.Example`` records."""
    for index, data in enumerate(iter_records(path)):
        try:
            yield decode_example(data)
        except DataError as exc:
            raise DataError(f"{os.fspath(path)}: record {index}: {exc}") from exc


def write_examples(
    path: str | os.PathLike[str], examples: Iterable[Mapping[str, FeatureValue]]
) -> int:
    """Write ``examples`` as ``tf.train.Example`` records; the count written."""
    return write_records(path, (encode_example(e) for e in examples))
