"""The one codec between the REST JSON documents and the gRPC messages of ``fleet.proto``.

Conversion is driven by the message descriptors, so a field added to ``fleet.proto`` needs no
code here. Field names are the REST names, and values map as follows:

- ``int64`` <-> int (never a string, as ``json_format`` would write it); ``double`` <-> float;
  ``bytes`` <-> base64 text; a ``map`` <-> an object; a ``repeated`` field <-> a list.
- ``optional`` scalars: unset <-> ``null`` (the REST schemas make them nullable), except the
  fields of :data:`OMITTED_WHEN_UNSET`, which the REST schemas make optional: unset <-> key
  absent. A message field: unset <-> key absent.
- ``google.protobuf.Struct`` <-> an object (a number that is integral with magnitude below
  2**53 comes back as an int: a Struct holds only doubles); ``Scalar`` <-> a string, number,
  integer or boolean; ``Metrics`` <-> ``{name: number}``; a ``oneof`` <-> the key of the
  member that is set.
- The REST documents' ``type``/``version`` header (:data:`HEADERS`) is not a proto field:
  :func:`to_proto` checks and drops it, :func:`to_document` writes it back.

Every problem with the input - an unknown key, a value of the wrong type, an int64 out of
range, text that is not base64 - raises :class:`~fedge.errors.ProtocolError` naming the key or
field (as a path such as ``config.options['lr']``); no protobuf exception leaks.
``to_document(to_proto(doc, T)) == doc`` for every document the coordinator and the devices
write.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeGuard

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from fedge.errors import ProtocolError
from fedge.messages import MESSAGE_VERSION

__all__ = ["HEADERS", "OMITTED_WHEN_UNSET", "to_document", "to_proto"]

HEADERS: Mapping[str, tuple[str, int | None]] = MappingProxyType(
    {
        "fedge.v1.Task": ("task", MESSAGE_VERSION),
        "fedge.v1.StatsReport": ("stats_report", MESSAGE_VERSION),
        "fedge.v1.EvalReport": ("eval_report", MESSAGE_VERSION),
        "fedge.v1.FeatureBatch": ("feature_batch", MESSAGE_VERSION),
        "fedge.v1.SecAggAdvertiseKeys": ("secagg_advertise_keys", None),
        "fedge.v1.SecAggKeyRoster": ("secagg_key_roster", None),
        "fedge.v1.SecAggShareKeys": ("secagg_share_keys", None),
        "fedge.v1.SecAggShareDelivery": ("secagg_share_delivery", None),
        "fedge.v1.SecAggUnmaskRequest": ("secagg_unmask_request", None),
        "fedge.v1.SecAggUnmaskResponse": ("secagg_unmask_response", None),
    }
)
"""Proto message name -> the REST document's ``type`` and ``version`` (None: the document
has no ``version``, as :mod:`fedge.secagg.codec` writes them)."""

OMITTED_WHEN_UNSET: frozenset[str] = frozenset(
    {
        "fedge.v1.FeatureBatch.counts",
        "fedge.v1.RotateTokenRequest.token",
        "fedge.v1.EvalReport.prediction_counts",
        "fedge.v1.EvalReport.label_counts",
    }
)
"""Fields whose REST key is absent (not null, not an empty list) when the proto holds no
value: an ``optional`` scalar or a ``repeated`` field the REST schema makes optional."""

_STRUCT = "google.protobuf.Struct"
_SCALAR = "fedge.v1.Scalar"
_METRICS = "fedge.v1.Metrics"
_INT64_TYPES = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64})
_INT64_LOW, _INT64_HIGH = -(1 << 63), (1 << 63) - 1
_EXACT_DOUBLE = 1 << 53
_JSON_NAMES = {
    FieldDescriptor.TYPE_STRING: "a string",
    FieldDescriptor.TYPE_BOOL: "a boolean",
    FieldDescriptor.TYPE_DOUBLE: "a number",
    FieldDescriptor.TYPE_BYTES: "base64 text",
}


# To proto -------------------------------------------------------------------------------------


def to_proto(document: Mapping[str, Any], message_type: type[Message]) -> Message:
    """The ``message_type`` message holding ``document`` (a REST JSON document)."""
    message = message_type()
    _fill(message, document, "")
    return message


def _fill(message: Message, document: object, path: str) -> None:
    descriptor: Descriptor = message.DESCRIPTOR
    name = descriptor.full_name
    if name == _STRUCT:
        _fill_struct(message, document, path)
        return
    if name == _METRICS:
        _fill_map(message, descriptor.fields_by_name["values"], document, path)
        return
    if name == _SCALAR:
        raise ProtocolError(f"{_where(path)}: a Scalar is a value, not a document")
    if not isinstance(document, Mapping):
        raise ProtocolError(
            f"{_where(path)} must be an object, got {_kind(document)}", field=path or None
        )
    keys = dict(document)
    header = HEADERS.get(name)
    if header is not None:
        _check_header(keys, header, path)
    members: dict[str, str] = {}
    for key, value in keys.items():
        field = descriptor.fields_by_name.get(key) if isinstance(key, str) else None
        if field is None:
            where = f" in {path}" if path else ""
            raise ProtocolError(
                f"unknown key {key!r}{where}; known: {sorted(descriptor.fields_by_name)}",
                field=_join(path, str(key)),
            )
        oneof = _real_oneof(field)
        if oneof is not None and value is not None:
            if oneof in members:
                raise ProtocolError(
                    f"{_where(path)} sets both {members[oneof]!r} and {key!r}; "
                    f"they are alternatives ({oneof})",
                    field=_join(path, key),
                )
            members[oneof] = key
        _set(message, field, value, _join(path, key))


def _check_header(keys: dict[Any, Any], header: tuple[str, int | None], path: str) -> None:
    tag, version = header
    if "type" in keys:
        got = keys.pop("type")
        if got != tag:
            raise ProtocolError(
                f"{_where(path)} must be a {tag!r} document, got type {got!r}",
                field=_join(path, "type"),
            )
    if version is not None and "version" in keys:
        got = keys.pop("version")
        if got != version or isinstance(got, bool):
            raise ProtocolError(
                f"{_where(path)}: unsupported {tag} version {got!r}; this reader knows {version}",
                field=_join(path, "version"),
            )


def _set(message: Message, field: FieldDescriptor, value: object, path: str) -> None:
    if _is_map(field):
        _fill_map(message, field, value, path)
    elif field.label == FieldDescriptor.LABEL_REPEATED:
        if not isinstance(value, list | tuple):
            raise ProtocolError(f"{path} must be a list, got {_kind(value)}", field=path)
        target = getattr(message, field.name)
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            if field.message_type is not None:
                _fill(target.add(), item, where)
            else:
                target.append(_scalar(field, item, where))
    elif value is None and field.has_presence:
        message.ClearField(field.name)
    elif field.message_type is not None:
        child = getattr(message, field.name)
        child.SetInParent()
        _fill(child, value, path)
    else:
        _assign(message, field.name, _scalar(field, value, path), path)


def _fill_map(message: Message, field: FieldDescriptor, value: object, path: str) -> None:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{path} must be an object, got {_kind(value)}", field=path)
    target = getattr(message, field.name)
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        if not isinstance(key, str):
            raise ProtocolError(f"{path}: keys must be strings, got {key!r}", field=path)
        where = f"{path}[{key!r}]"
        kind = value_field.message_type
        if kind is None:
            _assign_item(target, key, _scalar(value_field, item, where), where)
        elif kind.full_name == _SCALAR:
            _fill_scalar(target[key], item, where)
        else:
            _fill(target[key], item, where)


def _scalar(field: FieldDescriptor, value: object, path: str) -> object:
    """``value`` checked for ``field``'s type (a REST JSON value), as protobuf stores it."""
    kind = field.type
    if kind in _INT64_TYPES:
        return _int64(value, path)
    if kind == FieldDescriptor.TYPE_DOUBLE and _is_number(value):
        return float(value)
    if kind == FieldDescriptor.TYPE_BOOL and isinstance(value, bool):
        return value
    if kind == FieldDescriptor.TYPE_STRING and isinstance(value, str):
        return value
    if kind == FieldDescriptor.TYPE_BYTES and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"{path} is not base64: {exc}", field=path) from exc
    expected = _JSON_NAMES.get(kind, f"a value of protobuf type {kind}")
    raise ProtocolError(f"{path} must be {expected}, got {_kind(value)}", field=path)


def _int64(value: object, path: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{path} must be an integer, got {_kind(value)}", field=path)
    if not _INT64_LOW <= value <= _INT64_HIGH:
        raise ProtocolError(f"{path} must fit in 64 bits, got {value}", field=path)
    return value


def _fill_scalar(message: Message, value: object, path: str) -> None:
    if isinstance(value, bool):
        message.flag = value
    elif isinstance(value, int):
        message.integer = _int64(value, path)
    elif isinstance(value, float):
        message.number = value
    elif isinstance(value, str):
        _assign(message, "text", value, path)
    else:
        raise ProtocolError(
            f"{path} must be a string, number or boolean, got {_kind(value)}", field=path
        )


def _fill_struct(message: Message, value: object, path: str) -> None:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{_where(path)} must be an object, got {_kind(value)}", field=path)
    for key, item in value.items():
        if not isinstance(key, str):
            raise ProtocolError(f"{_where(path)}: keys must be strings, got {key!r}", field=path)
        _fill_value(message.fields[key], item, f"{path}[{key!r}]" if path else repr(key))


def _fill_value(target: Message, value: object, path: str) -> None:
    """A ``google.protobuf.Value`` holding a JSON value."""
    if value is None:
        target.null_value = 0
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if abs(value) > _EXACT_DOUBLE:
            raise ProtocolError(
                f"{path}: the integer {value} has no exact double (magnitude over 2**53)",
                field=path,
            )
        target.number_value = float(value)
    elif isinstance(value, float):
        target.number_value = value
    elif isinstance(value, str):
        _assign(target, "string_value", value, path)
    elif isinstance(value, Mapping):
        target.struct_value.SetInParent()
        _fill_struct(target.struct_value, value, path)
    elif isinstance(value, list | tuple):
        items = target.list_value
        items.SetInParent()
        for index, item in enumerate(value):
            _fill_value(items.values.add(), item, f"{path}[{index}]")
    else:
        raise ProtocolError(f"{path} is not a JSON value: {_kind(value)}", field=path)


def _assign(message: Message, name: str, value: object, path: str) -> None:
    try:
        setattr(message, name, value)
    except (TypeError, ValueError) as exc:  # e.g. text with lone surrogates
        raise ProtocolError(f"{path}: {exc}", field=path) from exc


def _assign_item(target: Any, key: str, value: object, path: str) -> None:
    try:
        target[key] = value
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{path}: {exc}", field=path) from exc


# To document ----------------------------------------------------------------------------------


def to_document(message: Message) -> dict[str, Any]:
    """The REST JSON document of ``message`` (the inverse of :func:`to_proto`)."""
    document = _value_of(message, "")
    if not isinstance(document, dict):
        raise ProtocolError(f"a {message.DESCRIPTOR.full_name} is a value, not a document")
    return document


def _value_of(message: Message, path: str) -> object:
    descriptor: Descriptor = message.DESCRIPTOR
    name = descriptor.full_name
    if name == _STRUCT:
        return _struct_document(message, path)
    if name == _METRICS:
        return dict(message.values)
    if name == _SCALAR:
        member = message.WhichOneof("value")
        if member is None:
            raise ProtocolError(f"{_where(path)} holds no value", field=path or None)
        return getattr(message, member)
    document: dict[str, Any] = {}
    header = HEADERS.get(name)
    if header is not None:
        document["type"] = header[0]
        if header[1] is not None:
            document["version"] = header[1]
    for field in descriptor.fields:
        key = field.name
        where = _join(path, key)
        oneof = _real_oneof(field)
        if oneof is not None:
            if message.WhichOneof(oneof) == key:
                document[key] = _field_value(message, field, where)
        elif _is_map(field) or field.label == FieldDescriptor.LABEL_REPEATED:
            value = _field_value(message, field, where)
            if value or field.full_name not in OMITTED_WHEN_UNSET:
                document[key] = value
        elif field.has_presence and not message.HasField(key):
            if field.message_type is None and field.full_name not in OMITTED_WHEN_UNSET:
                document[key] = None
        else:
            document[key] = _field_value(message, field, where)
    return document


def _field_value(message: Message, field: FieldDescriptor, path: str) -> object:
    value = getattr(message, field.name)
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        return {
            key: _single(value_field, item, f"{path}[{key!r}]")
            for key, item in sorted(value.items())
        }
    if field.label == FieldDescriptor.LABEL_REPEATED:
        return [_single(field, item, f"{path}[{index}]") for index, item in enumerate(value)]
    return _single(field, value, path)


def _single(field: FieldDescriptor, value: Any, path: str) -> object:
    if field.message_type is not None:
        return _value_of(value, path)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def _struct_document(message: Message, path: str) -> dict[str, Any]:
    return {
        key: _json_value(message.fields[key], f"{path}[{key!r}]" if path else repr(key))
        for key in message.fields
    }


def _json_value(value: Message, path: str) -> object:
    kind = value.WhichOneof("kind")
    if kind == "null_value":
        return None
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) < _EXACT_DOUBLE:
            return int(number)
        return number
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    if kind == "struct_value":
        return _struct_document(value.struct_value, path)
    if kind == "list_value":
        return [
            _json_value(item, f"{path}[{index}]")
            for index, item in enumerate(value.list_value.values)
        ]
    raise ProtocolError(f"{path} holds no value", field=path)


# Descriptor helpers ---------------------------------------------------------------------------


def _is_map(field: FieldDescriptor) -> bool:
    kind = field.message_type
    return (
        field.label == FieldDescriptor.LABEL_REPEATED
        and kind is not None
        and kind.GetOptions().map_entry
    )


def _real_oneof(field: FieldDescriptor) -> str | None:
    """The name of the ``oneof`` ``field`` belongs to; None for the synthetic one of a proto3
    ``optional`` field."""
    oneof = field.containing_oneof
    if oneof is None or (len(oneof.fields) == 1 and oneof.name == f"_{field.name}"):
        return None
    return str(oneof.name)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return path or "the document"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
