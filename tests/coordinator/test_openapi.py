"""The OpenAPI document: structurally valid OpenAPI 3.1 with JSON Schema 2020-12 schemas,
lists exactly the routes the app serves with the access rule of each route's blueprint,
and the response checker the test session runs (tests/support/openapi.py) refuses
responses that disagree with it."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator

from coordinator.auth import hash_token
from coordinator.openapi import ADMIN_SECURITY, build_openapi
from coordinator.rest import ApiConfig, create_app
from tests.support import REPO_ROOT
from tests.support.coordinator import ADMIN_TOKEN, bearer, build_service
from tests.support.openapi import ResponseChecker, iter_documented, observe_flask

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
    """Problems with an OpenAPI 3.1 document (empty when it is valid for our purposes)."""
    problems = []
    if not str(document.get("openapi", "")).startswith("3.1."):
        problems.append("openapi must be 3.1.x")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        errors = list(Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema))
        if errors:
            problems.append(f"schema {name} is not JSON Schema 2020-12: {errors[0].message}")
        if "nullable" in json.dumps(schema):
            problems.append(f"schema {name}: nullable is OpenAPI 3.0; use a null type")
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
    document["components"]["schemas"]["Health"]["properties"]["status"] = {"type": "text"}
    problems = check_openapi(document)
    assert any("path parameters" in p for p in problems)
    assert any("no responses" in p for p in problems)
    assert any("unresolved $ref #/components/nope" in p for p in problems)
    assert "GET /v1/alerts 200: no description" in problems
    assert any(p.startswith("schema Health is not JSON Schema 2020-12") for p in problems)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    service = build_service(tmp_path_factory.mktemp("openapi"))
    return create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)))


def _routes(app: Flask) -> dict[tuple[str, str], str]:
    """(method, OpenAPI path) -> the blueprint serving it."""
    routes = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes[(method.lower(), path)] = rule.endpoint.partition(".")[0]
    return routes


@pytest.fixture(scope="module")
def served_routes(app: Flask) -> set[tuple[str, str]]:
    return set(_routes(app))


def test_every_served_route_is_documented(served_routes: set[tuple[str, str]]) -> None:
    documented = {(m, p) for p, item in build_openapi()["paths"].items() for m in item}
    assert served_routes - documented == set()
    assert documented - served_routes == set()
    assert len(served_routes) >= 20


def test_openapi_is_served_by_the_app(app: Flask) -> None:
    response = app.test_client().get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == build_openapi()


def test_admin_blueprint_is_exactly_the_operations_documented_as_admin(app: Flask) -> None:
    admin_routes = {
        route for route, blueprint in _routes(app).items() if blueprint in ("admin", "monitoring")
    }
    documented_admin = {
        (method, path)
        for method, path, operation in iter_documented(build_openapi())
        if operation.get("security") == ADMIN_SECURITY
    }
    assert admin_routes == documented_admin
    assert len(admin_routes) >= 11


# What each blueprint's before_request demands, as the document's security requirements.
BLUEPRINT_SECURITY: dict[str, Any] = {
    "public": None,
    "monitoring": ADMIN_SECURITY,
    "enrollment": [{"enrollmentToken": []}, {}],
    "devices": [{"clientToken": []}],
    "downloads": [{"clientToken": []}, {"adminToken": []}],
    "admin": ADMIN_SECURITY,
}


def test_every_route_is_documented_with_its_blueprints_access_rule(app: Flask) -> None:
    operations = {(m, p): op for m, p, op in iter_documented(build_openapi())}
    routes = _routes(app)
    assert set(routes.values()) == set(BLUEPRINT_SECURITY)
    wrong = {
        f"{method.upper()} {path} ({blueprint})": operations[(method, path)].get("security")
        for (method, path), blueprint in routes.items()
        if operations[(method, path)].get("security") != BLUEPRINT_SECURITY[blueprint]
    }
    assert wrong == {}


# The response checker bites --------------------------------------------------------------


def test_checker_refuses_a_body_with_an_undocumented_field(app: Flask) -> None:
    response = app.test_client().get("/v1/models/v1", headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200
    assert ResponseChecker(build_openapi()).problems(observe_flask(response)) == []
    document = copy.deepcopy(build_openapi())
    del document["components"]["schemas"]["Model"]["properties"]["trainer_host"]
    problems = ResponseChecker(document).problems(observe_flask(response))
    assert any("'trainer_host' was unexpected" in p for p in problems), problems


def test_checker_refuses_a_body_that_lacks_a_required_field(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    document = copy.deepcopy(build_openapi())
    health = document["components"]["schemas"]["Health"]
    health["properties"]["uptime"] = {"type": "number"}
    health["required"].append("uptime")
    problems = ResponseChecker(document).problems(observe_flask(response))
    assert problems == ["GET /healthz -> 200: body at /: 'uptime' is a required property"]


def test_checker_refuses_an_undocumented_status_and_content_type(app: Flask) -> None:
    http = app.test_client()
    refused = http.get("/v1/models")
    document = copy.deepcopy(build_openapi())
    del document["paths"]["/v1/models"]["get"]["responses"]["401"]
    document["paths"]["/healthz"]["get"]["responses"]["200"]["content"] = {
        "text/plain": {"schema": {"type": "string"}}
    }
    checker = ResponseChecker(document)
    (status_problem,) = checker.problems(observe_flask(refused))
    assert "status 401 is not documented for GET /v1/models" in status_problem
    (type_problem,) = checker.problems(observe_flask(http.get("/healthz")))
    assert "content type 'application/json' is not one of ['text/plain']" in type_problem


def test_checker_refuses_a_route_the_document_does_not_list() -> None:
    extra = Flask("not-the-coordinator")  # the session hook checks coordinator apps only
    extra.add_url_rule("/v1/secret", "secret", lambda: {"leak": True})
    response = extra.test_client().get("/v1/secret")
    assert response.status_code == 200
    problems = ResponseChecker(build_openapi()).problems(observe_flask(response))
    assert problems == ["GET /v1/secret -> 200: the path is not documented"]


INNER_TESTS = """
from flask import Flask

from coordinator.rest import ApiConfig, create_app
from tests.support.coordinator import build_service


def _app(tmp_path) -> Flask:
    app = create_app(build_service(tmp_path), ApiConfig())
    app.add_url_rule("/v1/undocumented", "undocumented", lambda: {"status": "ok"})
    return app


def test_sees_only_documented_responses(tmp_path) -> None:
    assert _app(tmp_path).test_client().get("/healthz").status_code == 200


def test_sees_an_undocumented_response(tmp_path) -> None:
    assert _app(tmp_path).test_client().get("/v1/undocumented").status_code == 200
"""


def test_the_session_hook_fails_the_test_that_saw_an_undocumented_response(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path / "test_inner.py")],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    assert re.search(r"FAILED \S*test_inner.py::test_sees_an_undocumented_response", result.stdout)
    assert "GET /v1/undocumented -> 200: the path is not documented" in result.stdout
