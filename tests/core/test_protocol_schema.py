"""One wire schema: the checked-in fleet_pb2 is what fleet.proto generates, and the proto
messages agree field by field with the OpenAPI schemas of the REST documents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from coordinator.openapi import build_openapi
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import HEADERS, OMITTED_WHEN_UNSET

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ("fedge/protocol/fleet.proto", "fedge/protocol/example.proto")

PAIRS: dict[str, Any] = {
    "Task": pb.Task,
    "TaskConfig": pb.TaskConfig,
    "StatsReport": pb.StatsReport,
    "EvalReport": pb.EvalReport,
    "FeatureBatch": pb.FeatureBatch,
    "PrivacyNote": pb.PrivacyNote,
    "SecAggAdvertiseKeys": pb.SecAggAdvertiseKeys,
    "SecAggKeyRoster": pb.SecAggKeyRoster,
    "SecAggShareKeys": pb.SecAggShareKeys,
    "SecAggShareDelivery": pb.SecAggShareDelivery,
    "SecAggUnmaskRequest": pb.SecAggUnmaskRequest,
    "SecAggUnmaskResponse": pb.SecAggUnmaskResponse,
    "SecAggReceipt": pb.SecAggReceipt,
    "UpdateReceipt": pb.UpdateReceipt,
    "ReportReceipt": pb.ReportReceipt,
    "Registration": pb.Registration,
    "TaskDeclined": pb.DeclineResponse,
    "SigningKey": pb.SigningKey,
    "SigningKeys": pb.SigningKeys,
    "RotationStatement": pb.RotationStatement,
}
"""OpenAPI component -> proto message. The registration answer is ``Registration``, the
decline answer ``TaskDeclined``; the token rotation answer's route also answers with
``Registration`` (see :func:`test_token_rotation_answer_is_the_registration_schema`)."""

_SCALARS = {
    "string": FieldDescriptor.TYPE_STRING,
    "integer": FieldDescriptor.TYPE_INT64,
    "number": FieldDescriptor.TYPE_DOUBLE,
    "boolean": FieldDescriptor.TYPE_BOOL,
}


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    components: dict[str, Any] = build_openapi()["components"]["schemas"]
    return components


def test_checked_in_code_is_what_protoc_generates(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "grpc_tools.protoc", "-I", "."]
    command += [f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", *PROTOS]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for name in ("fleet_pb2.py", "fleet_pb2.pyi", "example_pb2.py", "example_pb2.pyi"):
        generated = (tmp_path / "fedge" / "protocol" / name).read_bytes()
        assert generated == (ROOT / "fedge" / "protocol" / name).read_bytes(), (
            f"{name} is stale: run make proto"
        )


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``schema`` with its ``$ref`` followed, and the component name it names."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return schemas[name], name
    return schema, None


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types ``schema`` allows (``const``/``enum`` of strings count as string)."""
    kind = schema.get("type")
    if kind is None:
        values = schema.get("enum", [schema.get("const")])
        return {"string"} if all(isinstance(v, str) for v in values) else {"unknown"}
    return {kind} if isinstance(kind, str) else set(kind)


def _nullable(schema: dict[str, Any]) -> bool:
    return "null" in _types(schema)


def _value_problems(
    where: str, schema: dict[str, Any], field: FieldDescriptor, schemas: dict[str, Any]
) -> list[str]:
    """How one value's schema disagrees with a field's value type (map values and list
    items included), as a list of sentences (empty: they agree)."""
    schema, ref = _resolve(schema, schemas)
    types = _types(schema) - {"null"}
    kind = field.message_type
    if kind is None:
        if field.type == FieldDescriptor.TYPE_BYTES:
            if types != {"string"} or schema.get("contentEncoding") != "base64":
                return [f"{where}: bytes need a base64 string, the schema says {schema}"]
            return []
        if types != {name for name, code in _SCALARS.items() if code == field.type}:
            return [f"{where}: proto type {field.type}, schema types {sorted(types)}"]
        return []
    name = kind.full_name
    if name == "google.protobuf.Struct":
        return [] if types == {"object"} else [f"{where}: a Struct needs an object schema"]
    if name == "fedge.v1.Scalar":
        wanted = {"string", "number", "boolean"}
        return [] if types == wanted else [f"{where}: a Scalar needs {sorted(wanted)}"]
    if name == "fedge.v1.Metrics":
        values = schema.get("additionalProperties")
        if types == {"object"} and isinstance(values, dict) and _types(values) == {"number"}:
            return []
        return [f"{where}: Metrics need an object of numbers, the schema says {schema}"]
    if ref is not None and PAIRS.get(ref) is not None and PAIRS[ref].DESCRIPTOR is not kind:
        return [f"{where}: $ref {ref} but the field holds {name}"]
    return _message_problems(where, schema, kind, schemas)


def _field_problems(
    where: str, schema: dict[str, Any], field: FieldDescriptor, schemas: dict[str, Any]
) -> list[str]:
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    if is_map:
        values = schema.get("additionalProperties")
        if _types(schema) != {"object"} or not isinstance(values, dict):
            return [f"{where}: a map needs an object with additionalProperties"]
        value_field = field.message_type.fields_by_name["value"]
        return _value_problems(f"{where}[*]", values, value_field, schemas)
    if field.label == FieldDescriptor.LABEL_REPEATED:
        resolved, _ = _resolve(schema, schemas)
        if _types(resolved) - {"null"} != {"array"}:
            return [f"{where}: a repeated field needs an array schema"]
        return _value_problems(f"{where}[]", resolved["items"], field, schemas)
    return _value_problems(where, schema, field, schemas)


def _message_problems(
    where: str, schema: dict[str, Any], descriptor: Descriptor, schemas: dict[str, Any]
) -> list[str]:
    properties: dict[str, Any] = dict(schema.get("properties", {}))
    if descriptor.full_name in HEADERS:
        properties.pop("type", None)
        properties.pop("version", None)
    names = set(descriptor.fields_by_name)
    if set(properties) != names:
        return [
            f"{where}: schema has {sorted(set(properties) - names)} beyond the proto, "
            f"the proto has {sorted(names - set(properties))} beyond the schema"
        ]
    problems: list[str] = []
    required = set(schema.get("required", ()))
    for key, field in descriptor.fields_by_name.items():
        spot = f"{where}.{key}"
        prop = properties[key]
        problems += _field_problems(spot, prop, field, schemas)
        codec_null = (
            field.message_type is None
            and field.has_presence
            and field.containing_oneof is not None
            and field.containing_oneof.name == f"_{key}"
            and field.full_name not in OMITTED_WHEN_UNSET
        )
        if _nullable(_resolve(prop, schemas)[0]) != codec_null:
            problems.append(f"{spot}: nullable in the schema iff optional in the proto")
        if field.full_name in OMITTED_WHEN_UNSET and key in required:
            problems.append(f"{spot}: the codec leaves it out, but the schema requires it")
    return problems


@pytest.mark.parametrize("component", sorted(PAIRS))
def test_proto_message_agrees_with_the_rest_schema(component: str, schemas: dict[str, Any]) -> None:
    descriptor = PAIRS[component].DESCRIPTOR
    assert _message_problems(component, schemas[component], descriptor, schemas) == []


def test_headers_are_the_rest_documents_type_and_version(schemas: dict[str, Any]) -> None:
    for component, message in PAIRS.items():
        header = HEADERS.get(message.DESCRIPTOR.full_name)
        properties = schemas[component]["properties"]
        if header is None:
            assert "type" not in properties, component
            continue
        assert properties["type"]["const"] == header[0]
        assert ("version" in properties) == (header[1] is not None), component


def test_token_rotation_answer_is_the_registration_schema(schemas: dict[str, Any]) -> None:
    route = build_openapi()["paths"]["/v1/clients/me/token"]["post"]
    answer = route["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/Registration"}
    registration = schemas["Registration"]
    assert "signing_key" not in registration["required"]
    rotation = {
        **registration,
        "properties": {k: v for k, v in registration["properties"].items() if k != "signing_key"},
    }
    assert _message_problems("TokenRotation", rotation, pb.TokenRotation.DESCRIPTOR, schemas) == []


def test_a_disagreement_is_reported(schemas: dict[str, Any]) -> None:
    """The comparison can fail: a schema with a renamed field or another type is caught."""
    task = schemas["Task"]
    renamed = {**task, "properties": {**task["properties"], "deadline_at": {"type": "number"}}}
    assert _message_problems("Task", renamed, pb.Task.DESCRIPTOR, schemas)
    retyped = {**task, "properties": {**task["properties"], "round_id": {"type": "string"}}}
    problems = _message_problems("Task", retyped, pb.Task.DESCRIPTOR, schemas)
    assert any("round_id" in p for p in problems)
