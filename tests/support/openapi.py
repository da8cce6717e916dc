"""Checks HTTP responses against the coordinator's OpenAPI document (3.1: its schemas are
JSON Schema 2020-12, validated with ``jsonschema``).

:class:`ResponseChecker` finds the operation of a response (path template + method),
checks that its status is documented, that its content type is one the document lists,
that a JSON body validates against the documented schema and that documented required
headers are there. Paths the document does not list and methods a path does not have are
routing answers: they must be a JSON error (404, or 405 with ``Allow``).

:func:`install` wraps ``flask.testing.FlaskClient.open`` (apps built by
``coordinator.rest.create_app``) and ``requests.Session.send`` (responses from a real
coordinator: ``Server: fedge-coordinator``) so every response a test sees is checked; the
problems are recorded and ``tests/conftest.py`` fails the test that saw them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from coordinator.openapi import build_openapi

__all__ = [
    "Observed",
    "Recorder",
    "ResponseChecker",
    "install",
    "iter_documented",
    "observe_flask",
    "observe_requests",
    "operation_of",
]

DOCUMENT_URI = "urn:fedge:coordinator-openapi"
SERVER_HEADER = "fedge-coordinator"
_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Observed:
    """One HTTP exchange as the checker needs it."""

    method: str
    path: str  # as sent on the wire (percent-encoded), without the query
    status: int
    content_type: str | None
    body: bytes | None  # None: not read (a streamed download)
    headers: Mapping[str, str]  # names in lower case

    def describe(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/")


def _mixed_segment(part: str) -> re.Pattern[str]:
    """A segment template such as ``{version}:predict`` as a regular expression."""
    pieces = re.split(r"(\{\w+\})", part)
    return re.compile("".join(".+" if p.startswith("{") else re.escape(p) for p in pieces))


def operation_of(
    document: Mapping[str, Any], method: str, path: str
) -> tuple[str, dict[str, Any] | None] | None:
    """The template matching ``path`` and its ``method`` operation (None when the path
    has no such method); None when no template matches. Literal segments win over
    parameters, as in the server's router."""
    segments = _segments(path)
    candidates = []
    for template, item in document["paths"].items():
        parts = _segments(template)
        if len(parts) != len(segments):
            continue
        literal = 0
        for part, segment in zip(parts, segments, strict=True):
            if re.fullmatch(r"\{\w+\}", part):
                if not segment:
                    break
            elif part == segment:
                literal += 1
            elif "{" in part and _mixed_segment(part).fullmatch(segment):
                literal += 1  # a parameter with literal text, e.g. {version}:predict
            else:
                break
        else:
            candidates.append((literal, template, item))
    if not candidates:
        return None
    candidates.sort(key=lambda c: -c[0])
    for _, template, item in candidates:
        if method in item:
            return template, item[method]
    return candidates[0][1], None


class ResponseChecker:
    """Problems of observed responses against one OpenAPI 3.1 document."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        if not str(document.get("openapi", "")).startswith("3.1."):
            raise ValueError("the checker reads OpenAPI 3.1 documents (JSON Schema 2020-12)")
        self.document = document
        resource = Resource.from_contents(dict(document), default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    def applies_to(self, path: str) -> bool:
        return path.startswith("/v1/") or path in self.document["paths"]

    def _validator(self, pointer: str) -> Draft202012Validator:
        if pointer not in self._validators:
            self._validators[pointer] = Draft202012Validator(
                {"$ref": f"{DOCUMENT_URI}#{pointer}"},
                registry=self._registry,
                format_checker=Draft202012Validator.FORMAT_CHECKER,
            )
        return self._validators[pointer]

    def _resolve(self, node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return node, pointer
        target: Any = self.document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return target, ref.removeprefix("#")

    def _error_problems(self, seen: Observed) -> list[str]:
        """A routing answer must be the documented error document."""
        if seen.content_type != "application/json":
            return [f"{seen.describe()}: an error must be application/json"]
        return self._body_problems(seen, _pointer("components", "schemas", "Error"))

    def _body_problems(self, seen: Observed, pointer: str) -> list[str]:
        if seen.body is None:
            return []
        try:
            document = json.loads(seen.body)
        except ValueError as exc:
            return [f"{seen.describe()}: the body is not JSON ({exc})"]
        errors = sorted(self._validator(pointer).iter_errors(document), key=lambda e: e.path)
        return [
            f"{seen.describe()}: body at /{'/'.join(map(str, e.path))}: {e.message}"
            for e in errors[:10]
        ]

    def problems(self, seen: Observed) -> list[str]:
        method = seen.method.lower()
        if not self.applies_to(seen.path):
            return []
        head = method == "head"
        found = operation_of(self.document, "get" if head else method, seen.path)
        if found is None:
            if seen.status != 404:
                return [f"{seen.describe()}: the path is not documented"]
            return [] if head else self._error_problems(seen)
        template, operation = found
        if operation is None:
            if seen.status != 405 or "allow" not in seen.headers:
                return [f"{seen.describe()}: {seen.method} is not documented for {template}"]
            return [] if head else self._error_problems(seen)
        responses = operation["responses"]
        status = str(seen.status)
        if status not in responses:
            return [
                f"{seen.describe()}: status {status} is not documented for "
                f"{method.upper()} {template} (documented: {sorted(responses)})"
            ]
        base = _pointer("paths", template, "get" if head else method, "responses", status)
        response, base = self._resolve(responses[status], base)
        problems = [
            f"{seen.describe()}: the documented header {name} is missing"
            for name, header in response.get("headers", {}).items()
            if header.get("required") and name.lower() not in seen.headers
        ]
        content = response.get("content")
        if not content:
            if seen.body:
                problems.append(f"{seen.describe()}: a body where none is documented")
            return problems
        if seen.content_type not in content:
            return [
                *problems,
                f"{seen.describe()}: content type {seen.content_type!r} is not one of "
                f"{sorted(content)}",
            ]
        media = content[seen.content_type]
        if head or seen.body is None or seen.content_type != "application/json":
            return problems
        if "schema" not in media:
            return problems
        pointer = base + _pointer("content", seen.content_type, "schema")
        return problems + self._body_problems(seen, pointer)


def _mimetype(value: str | None) -> str | None:
    return value.split(";", 1)[0].strip().lower() if value else None


@dataclass
class Recorder:
    """Problems seen since the last :meth:`take`."""

    checker: ResponseChecker
    problems: list[str] = field(default_factory=list)

    def check(self, seen: Observed) -> None:
        self.problems.extend(self.checker.problems(seen))

    def take(self) -> list[str]:
        taken, self.problems = self.problems, []
        return taken


def observe_flask(response: Any) -> Observed:
    """A Flask test client's response as the checker sees it."""
    environ = response.request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    return Observed(
        method=str(response.request.method).upper(),
        path=urlsplit(raw).path,
        status=response.status_code,
        content_type=_mimetype(response.headers.get("Content-Type")),
        body=response.get_data(),
        headers={k.lower(): v for k, v in response.headers.items()},
    )


def observe_requests(response: Any, *, streamed: bool = False) -> Observed:
    """A ``requests`` response as the checker sees it (``streamed``: body not read)."""
    return Observed(
        method=str(response.request.method).upper(),
        path=urlsplit(response.request.url).path,
        status=response.status_code,
        content_type=_mimetype(response.headers.get("Content-Type")),
        body=None if streamed else response.content,
        headers={k.lower(): v for k, v in response.headers.items()},
    )


def install(patch: Callable[[object, str, Any], None]) -> Recorder:
    """Wrap the two HTTP clients the tests use (``patch`` is ``MonkeyPatch.setattr``)."""
    import requests
    from flask.testing import FlaskClient

    recorder = Recorder(ResponseChecker(build_openapi()))
    flask_open = FlaskClient.open
    session_send = requests.Session.send

    def open_checked(self: FlaskClient, *args: Any, **kwargs: Any) -> Any:
        response = flask_open(self, *args, **kwargs)
        if "fedge" in self.application.extensions:
            recorder.check(observe_flask(response))
        return response

    def send_checked(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        response = session_send(self, request, **kwargs)
        if response.headers.get("Server") == SERVER_HEADER:
            streamed = bool(kwargs.get("stream"))
            recorder.check(observe_requests(response, streamed=streamed))
        return response

    patch(FlaskClient, "open", open_checked)
    patch(requests.Session, "send", send_checked)
    return recorder


def iter_documented(document: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) of every documented operation."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in _METHODS:
                yield method, path, operation
