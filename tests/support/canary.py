"""The canary search over what a device sent, whichever transport carried it.

A capture is the JSON-lines file :mod:`tests.support.edge_launcher` writes: HTTP requests
(method, URL, headers, base64 body) or gRPC request messages (``method`` the RPC's path,
``headers`` its metadata, ``body`` the serialized protobuf message). :func:`sent_bytes`
joins everything sent, plus the decoded base64 strings of JSON bodies (REST carries
embeddings as base64; gRPC carries them as raw bytes, already in the message bytes).
:func:`sent_reports` decodes the reports of one kind back to fedge messages, from either
transport, so a test judges what the coordinator received.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from fedge.messages import decode_message
from fedge.protocol import fleet_pb2
from fedge.protocol.codec import to_document

__all__ = [
    "NUMBER_MARKERS",
    "TEXT_MARKERS",
    "is_grpc",
    "plant_markers",
    "read_capture",
    "sent_bytes",
    "sent_reports",
]

TEXT_MARKERS = {
    "company": "CANARY-CO-5f1e9b2d",
    "payment_type": "CANARY-PAY-a8c3e1",
    "pickup_community_area": "CANARY-AREA-77b1",
}
NUMBER_MARKERS = {"fare": 98765.4321, "trip_miles": 4321.98765, "trip_seconds": 7654321.0}

# The REST route of each report kind and the ReportRequest field that carries it over gRPC.
_REPORTS = {"stats": ("/v1/stats", "stats"), "evaluation": ("/v1/evaluations", "evaluation"),
            "features": ("/v1/features", "features")}  # fmt: skip


def plant_markers(rows: list[dict[str, str]]) -> None:
    """Put every marker into the fourth row."""
    marked = rows[3]
    marked.update(TEXT_MARKERS)
    marked.update({name: repr(value) for name, value in NUMBER_MARKERS.items()})


def read_capture(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def is_grpc(record: dict[str, Any]) -> bool:
    return str(record["method"]).startswith("/fedge.v1.")


def sent_bytes(capture: list[dict[str, Any]]) -> bytes:
    """Everything sent (methods, URLs, headers or metadata, bodies), plus the decoded base64
    strings inside JSON bodies."""
    parts: list[bytes] = []
    for record in capture:
        body = base64.b64decode(record["body"])
        parts += [record["method"].encode(), record["url"].encode(), body]
        parts += [f"{k}: {v}".encode() for k, v in record["headers"].items()]
        if record["headers"].get("Content-Type") == "application/json" and body:
            parts += _decoded_strings(json.loads(body))
    return b"\n".join(parts)


def _decoded_strings(document: Any) -> list[bytes]:
    if isinstance(document, dict):
        return [b for value in document.values() for b in _decoded_strings(value)]
    if isinstance(document, list):
        return [b for value in document for b in _decoded_strings(value)]
    if isinstance(document, str) and len(document) >= 8:
        try:
            return [base64.b64decode(document, validate=True)]
        except ValueError:
            return []
    return []


def sent_reports(capture: list[dict[str, Any]], kind: str) -> list[Any]:
    """The ``kind`` reports (stats, evaluation, features) the device sent, as fedge messages
    (a retry sends the same report again)."""
    route, field = _REPORTS[kind]
    found = []
    for record in capture:
        body = base64.b64decode(record["body"])
        if is_grpc(record):
            if not record["method"].endswith("/SubmitReport"):
                continue
            request = fleet_pb2.ReportRequest.FromString(body)
            if request.WhichOneof("report") == field:
                found.append(decode_message(to_document(getattr(request, field))))
        elif record["method"] == "POST" and record["url"].endswith(route):
            found.append(decode_message(json.loads(body)))
    return found
