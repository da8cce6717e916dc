"""The OpenAPI document is structurally valid OpenAPI 3.0 and lists exactly the routes the
app serves. There is no validator package installed, so a small checker lives here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from coordinator.openapi import build_openapi
from coordinator.rest import ApiConfig, create_app
from tests.support.coordinator import build_service

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """The node a local ``$ref`` points to; LookupError when it does not resolve."""
    if not ref.startswith("#/"):
        raise LookupError(f"only local refs are used, got {ref}")
    node: Any = document
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            raise LookupError(f"unresolved $ref {ref}")
        node = node[part]
    return node


def check_openapi(document: dict[str, Any]) -> list[str]:
    """Problems with an OpenAPI 3.0 document (empty when it is valid for our purposes)."""
    problems = []
    if not str(document.get("openapi", "")).startswith("3.0."):
        problems.append("openapi must be 3.0.x")
    info = document.get("info", {})
    if not (info.get("title") and info.get("version")):
        problems.append("info needs title and version")
    schemes = document.get("components", {}).get("securitySchemes", {})
    operation_ids = []
    for path, item in document.get("paths", {}).items():
        if not path.startswith("/"):
            problems.append(f"path {path} must start with /")
        templated = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            if method not in METHODS:
                problems.append(f"{where}: unknown method")
                continue
            operation_ids.append(operation.get("operationId"))
            responses = operation.get("responses")
            if not responses:
                problems.append(f"{where}: no responses")
            for status, response in (responses or {}).items():
                if not re.fullmatch(r"[1-5]\d\d|default", status):
                    problems.append(f"{where}: bad status {status}")
                resolved = response
                if "$ref" in response:
                    try:
                        resolved = _resolve(document, response["$ref"])
                    except LookupError:
                        continue  # reported with every other $ref below
                if not resolved.get("description"):
                    problems.append(f"{where} {status}: no description")
            params = operation.get("parameters", [])
            declared = {p["name"] for p in params if p.get("in") == "path"}
            if declared != templated:
                problems.append(f"{where}: path parameters {declared} != {templated}")
            for param in params:
                if param.get("in") == "path" and param.get("required") is not True:
                    problems.append(f"{where}: path parameter {param['name']} must be required")
                if "schema" not in param:
                    problems.append(f"{where}: parameter {param['name']} has no schema")
            for requirement in operation.get("security", []):
                unknown = set(requirement) - set(schemes)
                if unknown:
                    problems.append(f"{where}: unknown security schemes {unknown}")
    if len(operation_ids) != len(set(operation_ids)) or None in operation_ids:
        problems.append("operationIds must be present and unique")
    for ref in _refs(document):
        try:
            _resolve(document, ref)
        except LookupError as exc:
            problems.append(str(exc))
    return problems


def test_openapi_document_is_valid() -> None:
    document = build_openapi()
    assert check_openapi(document) == []
    json.dumps(document, allow_nan=False)


def test_checker_catches_broken_documents() -> None:
    document = build_openapi()
    document["paths"]["/v1/rounds/{round_id}"]["get"]["parameters"] = []
    document["paths"]["/healthz"]["get"]["responses"] = {}
    document["paths"]["/metrics"]["get"]["responses"]["200"] = {"$ref": "#/components/nope"}
    document["paths"]["/v1/alerts"]["get"]["responses"]["200"] = {"content": {}}
    problems = check_openapi(document)
    assert any("path parameters" in p for p in problems)
    assert any("no responses" in p for p in problems)
    assert any("unresolved $ref #/components/nope" in p for p in problems)
    assert "GET /v1/alerts 200: no description" in problems


@pytest.fixture(scope="module")
def served_routes(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    service = build_service(tmp_path_factory.mktemp("openapi"))
    app = create_app(service, ApiConfig())
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method.lower(), path))
    return routes


def test_every_served_route_is_documented(served_routes: set[tuple[str, str]]) -> None:
    documented = {(m, p) for p, item in build_openapi()["paths"].items() for m in item}
    assert served_routes - documented == set()
    assert documented - served_routes == set()
    assert len(served_routes) >= 20


def test_openapi_is_served_by_the_app(tmp_path: Path) -> None:
    app = create_app(build_service(tmp_path), ApiConfig())
    response = app.test_client().get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == build_openapi()
