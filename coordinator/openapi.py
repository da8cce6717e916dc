"""The OpenAPI 3.1 document of the REST API, built in code and served at
``/v1/openapi.json``.

It is the schema source of the REST API: the tests check that it lists exactly the
app's routes (admin operations exactly the ``admin`` blueprint's) and validate every
response they see against it with a JSON Schema 2020-12 validator.
"""

from __future__ import annotations

from typing import Any

from coordinator.openapi_schemas import INTEGER, STRING, build_schemas, ref

__all__ = ["ADMIN_SECURITY", "build_openapi"]

JSON = "application/json"
_ERRORS = {
    "400": ("BadRequest", "Malformed request: bad JSON, header, message or weights bytes."),
    "401": ("Unauthorized", "Missing, malformed or unknown token."),
    "403": ("Forbidden", "Authenticated but not allowed (admin only, not assigned)."),
    "404": ("NotFound", "No such round, model, task or file."),
    "409": ("Conflict", "The state forbids it: round closed, duplicate, key reused."),
    "413": ("PayloadTooLarge", "The body is over the configured limit."),
    "415": ("UnsupportedMediaType", "The body has the wrong Content-Type."),
    "422": ("Unprocessable", "Well-formed but refused: tensors, NaN/Inf, norm, counts."),
    "429": ("TooManyRequests", "Rate-limited; the Retry-After header says when to retry."),
}
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
"""The ``security`` of every admin operation (and of no other)."""


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref(schema)}}}


def _op(
    summary: str,
    op_id: str,
    responses: dict[str, Any],
    *,
    auth: str | None,
    errors: str = "",
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "operationId": op_id}
    if auth:
        # "scheme|" makes authentication optional (an empty requirement object).
        operation["security"] = [{scheme: []} if scheme else {} for scheme in auth.split("|")]
    if params:
        operation["parameters"] = params
    if body:
        operation["requestBody"] = body
    responses = dict(responses)
    # Every body has its route's limit, checked from the headers before it is read.
    for status in (*errors.split(), *(["413"] if body else [])):
        responses[status] = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
    operation["responses"] = responses
    return operation


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _header(name: str, description: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": STRING,
        "description": description,
    }


def _response_header(description: str, schema: dict[str, Any] = STRING) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema}


VERSION = _path_param("version", STRING, "vN, or `current` for production")
ROUND = _path_param("round_id", {**INTEGER, "minimum": 1}, "Round id")
FILE = _path_param("name", STRING, "A plain bundle file name")
_BINARY: dict[str, Any] = {"application/octet-stream": {}}
_DOWNLOAD: dict[str, Any] = {
    "200": {
        "description": "The file; ETag is its quoted sha256 (If-None-Match gives 304).",
        "headers": {
            "ETag": _response_header("The quoted sha256 of the file"),
            "X-Fedge-Sha256": _response_header("The sha256 of the file"),
            "X-Fedge-Model-Version": _response_header("The version served (`current` resolved)"),
        },
        "content": _BINARY,
    },
    "304": {"description": "Not modified (If-None-Match matched the sha256 ETag)."},
}


def _paths() -> dict[str, Any]:
    upload_headers = [
        _header("X-Fedge-Task-Id", "The train task being answered (at most 256 characters)"),
        _header("X-Fedge-Num-Examples", "Local examples trained on (1..max_examples)"),
        _header(
            "Idempotency-Key",
            "Client-chosen, 8-128 of [A-Za-z0-9._:-]; a retry with "
            "the same key and body is acknowledged again and counted once",
        ),
        _header("X-Fedge-Metrics", "JSON object of metric name to number", required=False),
        _header("X-Fedge-Delta-Sha256", "sha256 of the body, checked", required=False),
        _header(
            "X-Fedge-Codec",
            "With Content-Type application/x-fedge-compressed: the body's codec, q8 or topk "
            "(it must be the round's `compression`, else 400 codec_mismatch)",
            required=False,
        ),
    ]
    return {
        "/healthz": {
            "get": _op(
                "Health: the store answers, the artifact directory reads, writes and has room",
                "health",
                {
                    "200": _json("Health"),
                    "503": _json("Health", "A check failed; `checks` says which and why"),
                },
                auth=None,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text format 0.0.4)",
                "metrics",
                {
                    "200": {
                        "description": "Metrics",
                        "content": {"text/plain": {"schema": STRING}},
                    }
                },
                auth="adminToken",
                errors="401 403",
            )
        },
        "/v1/openapi.json": {
            "get": _op(
                "This document",
                "openapi",
                {
                    "200": {
                        "description": "OpenAPI 3.1 document",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
                auth=None,
            )
        },
        "/v1/keys": {
            "get": _op(
                "The manifest signing key (Ed25519) and the rotation statements that lead "
                "from earlier keys to it; no token needed (public keys only)",
                "signingKeys",
                {"200": _json("SigningKeys")},
                auth=None,
            )
        },
        "/v1/clients": {
            "post": _op(
                "Register a client; idempotent with an Idempotency-Key",
                "registerClient",
                {
                    "201": _json("Registration", "Registered"),
                    "200": _json(
                        "Registration", "A retry with the same key: the same client and token"
                    ),
                },
                auth="enrollmentToken|",
                errors="400 401 409 415 429",
                body={"required": False, "content": {JSON: {"schema": ref("RegisterRequest")}}},
                params=[
                    {
                        **_header(
                            "Idempotency-Key",
                            "the device's registration key, persisted before the first attempt: "
                            "every retry with it (and the same region and metadata) answers the "
                            "same client id and token, never a second client; a secret, since "
                            "it stands for the token",
                            required=False,
                        ),
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{32,128}$"},
                    }
                ],
            ),
            "get": _op(
                "List clients",
                "listClients",
                {"200": _json("ClientList")},
                auth="adminToken",
                errors="401 403",
            ),
        },
        "/v1/clients/{client_id}/revoke": {
            "post": _op(
                "Revoke a client: its token stops working at once, it is never selected "
                "again and its pending tasks expire (idempotent)",
                "revokeClient",
                {"200": _json("Client")},
                auth="adminToken",
                errors="401 403 404",
                params=[_path_param("client_id", STRING, "Client id")],
            )
        },
        "/v1/clients/me/token": {
            "post": _op(
                "Rotate the calling client's token: the answer holds a new token and the "
                "old one stops working at once",
                "rotateClientToken",
                {"200": _json("Registration", "The new token")},
                auth="clientToken",
                errors="400 401 403 409 415",
                body={
                    "required": False,
                    "content": {JSON: {"schema": ref("TokenRotationRequest")}},
                },
            )
        },
        "/v1/enrollment-tokens": {
            "post": _op(
                "Create a managed enrollment token (the token is shown only in this answer)",
                "createEnrollmentToken",
                {"201": _json("IssuedEnrollmentToken", "Created")},
                auth="adminToken",
                errors="400 401 403 415",
                body={
                    "required": False,
                    "content": {JSON: {"schema": ref("EnrollmentTokenRequest")}},
                },
            ),
            "get": _op(
                "List the managed enrollment tokens (never their values)",
                "listEnrollmentTokens",
                {"200": _json("EnrollmentTokenList")},
                auth="adminToken",
                errors="401 403",
            ),
        },
        "/v1/enrollment-tokens/{token_id}/revoke": {
            "post": _op(
                "Revoke a managed enrollment token: no client registers with it any more "
                "(idempotent)",
                "revokeEnrollmentToken",
                {"200": _json("EnrollmentToken")},
                auth="adminToken",
                errors="401 403 404",
                params=[_path_param("token_id", STRING, "Enrollment token id")],
            )
        },
        "/v1/tasks/next": {
            "get": _op(
                "Poll for work: 200 with a task, or 204 with Retry-After",
                "nextTask",
                {
                    "200": _json("Task"),
                    "204": {
                        "description": "No task now",
                        "headers": {
                            "Retry-After": _response_header("Seconds to wait", INTEGER),
                        },
                    },
                },
                auth="clientToken",
                errors="401 403",
            )
        },
        "/v1/tasks/{task_id}/decline": {
            "post": _op(
                "Decline a pending task the device will not do (its owner's policy refuses "
                "it): the task becomes declined, the client's later tasks are handed out and "
                "a round stops waiting for it; declining it again answers the same",
                "declineTask",
                {"200": _json("TaskDeclined", "Declined")},
                auth="clientToken",
                errors="400 401 403 404 409 415",
                params=[_path_param("task_id", STRING, "A task of the calling client")],
                body={"required": True, "content": {JSON: {"schema": ref("TaskDecline")}}},
            )
        },
        "/v1/tasks": {
            "post": _op(
                "Ask clients for an evaluation, statistics or embeddings",
                "createTasks",
                {
                    "201": _json("TaskList", "Created"),
                    "409": {
                        "description": "Nothing created. cohort_too_small: fewer clients than "
                        "the coordinator's minimum cohort (--min-cohort); cohort_window: a "
                        "client was given a task of this kind within the cohort window "
                        "(--cohort-window); client_revoked: a revoked client",
                        "content": {JSON: {"schema": ref("Error")}},
                    },
                },
                auth="adminToken",
                errors="400 401 403 404 415",
                body={"required": True, "content": {JSON: {"schema": ref("TaskRequest")}}},
            )
        },
        "/v1/rounds": {
            "post": _op(
                "Open a round now (on-demand mode)",
                "openRound",
                {"201": _json("Round", "Opened")},
                auth="adminToken",
                errors="400 401 403 409 415",
                body={"required": False, "content": {JSON: {"schema": ref("RoundConfig")}}},
            ),
            "get": _op(
                "List rounds",
                "listRounds",
                {"200": _json("RoundList")},
                auth="adminToken",
                errors="401 403",
            ),
        },
        "/v1/rounds/{round_id}": {
            "get": _op(
                "A round with its accepted updates",
                "getRound",
                {"200": _json("Round")},
                auth="adminToken",
                errors="401 403 404",
                params=[ROUND],
            )
        },
        "/v1/rounds/{round_id}/cancel": {
            "post": _op(
                "Cancel an active round: it fails with the reason 'cancelled by an "
                "operator', its pending tasks expire and the global model is unchanged",
                "cancelRound",
                {"200": _json("Round")},
                auth="adminToken",
                errors="401 403 404 409",
                params=[ROUND],
            )
        },
        "/v1/rounds/{round_id}/updates": {
            "post": _op(
                "Upload a model update: the weight delta encoded with the round's codec "
                "(`compression`): application/octet-stream is the safetensors delta (codec "
                "none); application/x-fedge-compressed is a fedge.compression payload (q8, "
                "topk) named by X-Fedge-Codec, decoded against the round's base weights at "
                "intake (a malformed payload: 400, nothing stored) and stored as received",
                "uploadUpdate",
                {
                    "201": _json("UpdateReceipt", "Accepted (durable)"),
                    "200": _json("UpdateReceipt", "Already accepted (a retry)"),
                },
                auth="clientToken",
                errors="400 401 403 404 409 413 415 422",
                params=[ROUND, *upload_headers],
                body={
                    "required": True,
                    "content": {**_BINARY, "application/x-fedge-compressed": {}},
                },
            )
        },
        **_secagg_paths(),
        "/v1/stats": {
            "post": _op(
                "Upload mergeable data statistics",
                "uploadStats",
                {"201": _json("ReportReceipt", "Stored")},
                auth="clientToken",
                errors="400 401 403 404 409 415 422",
                body={"required": True, "content": {JSON: {"schema": ref("StatsReport")}}},
            )
        },
        "/v1/evaluations": {
            "post": _op(
                "Upload an evaluation report",
                "uploadEvaluation",
                {"201": _json("ReportReceipt", "Stored")},
                auth="clientToken",
                errors="400 401 403 404 409 415 422",
                body={"required": True, "content": {JSON: {"schema": ref("EvalReport")}}},
            )
        },
        "/v1/features": {
            "post": _op(
                "Upload backbone embeddings and labels",
                "uploadFeatures",
                {"201": _json("ReportReceipt", "Stored")},
                auth="clientToken",
                errors="400 401 403 404 409 413 415",
                body={"required": True, "content": {JSON: {"schema": ref("FeatureBatch")}}},
            )
        },
        "/v1/models": {
            "get": _op(
                "List model versions",
                "listModels",
                {"200": _json("ModelList")},
                auth="adminToken",
                errors="401 403",
            )
        },
        "/v1/models/rollback": {
            "post": _op(
                "Make the previous production version production again, or (with before) "
                "the version that was production at that time; rounds on the superseded "
                "version fail",
                "rollbackModel",
                {
                    "200": _json("Model"),
                    "409": {
                        "description": "no_previous_version: production has no previous "
                        "version; no_version_before: no version was production before that "
                        "time",
                        "content": {JSON: {"schema": ref("Error")}},
                    },
                },
                auth="adminToken",
                errors="400 401 403 404 415",
                body={"required": False, "content": {JSON: {"schema": ref("RollbackRequest")}}},
            )
        },
        "/v1/models/{version}": {
            "get": _op(
                "A version with lineage, metrics, artifacts and events",
                "getModel",
                {"200": _json("Model")},
                auth="adminToken",
                errors="401 403 404",
                params=[VERSION],
            )
        },
        "/v1/models/{version}:predict": {
            "post": _op(
                "Predictions of a version in TensorFlow Serving's REST format",
                "predict",
                {
                    "200": _json("PredictResponse", "One prediction per row, in order"),
                    "404": {
                        "description": "model_not_found: no such version; table_not_found: "
                        "no prediction table for it (static mode); key_not_found: keys not "
                        "in its table (static mode), named in the detail",
                        "content": {JSON: {"schema": ref("Error")}},
                    },
                },
                auth="adminToken",
                errors="400 401 403 415",
                params=[VERSION],
                body={"required": True, "content": {JSON: {"schema": ref("PredictRequest")}}},
            )
        },
        "/v1/models/{version}/promote": {
            "post": _op(
                "Make a version production",
                "promoteModel",
                {"200": _json("Model")},
                auth="adminToken",
                errors="401 403 404",
                params=[VERSION],
            )
        },
        "/v1/models/{version}/manifest": {
            "get": _op(
                "The version's bundle manifest (sha256 ETag)",
                "getManifest",
                {
                    **_DOWNLOAD,
                    "200": {
                        **_DOWNLOAD["200"],
                        "headers": {
                            **_DOWNLOAD["200"]["headers"],
                            "X-Fedge-Signature": _response_header(
                                "<key id>:<base64 Ed25519 signature> over the exact manifest "
                                "bytes (GET /v1/keys lists the keys)"
                            ),
                        },
                        "content": {JSON: {"schema": ref("Manifest")}},
                    },
                },
                auth="clientToken|adminToken",
                errors="401 403 404",
                params=[VERSION],
            )
        },
        "/v1/models/{version}/weights": {
            "get": _op(
                "The version's weights.safetensors (sha256 ETag)",
                "getWeights",
                _DOWNLOAD,
                auth="clientToken|adminToken",
                errors="401 403 404",
                params=[VERSION],
            )
        },
        "/v1/models/{version}/files/{name}": {
            "get": _op(
                "A bundle file of the version (sha256 ETag)",
                "getBundleFile",
                _DOWNLOAD,
                auth="clientToken|adminToken",
                errors="400 401 403 404",
                params=[VERSION, FILE],
            )
        },
        "/v1/reports": {
            "get": _op(
                "Client reports, optionally by kind, task and model version",
                "listReports",
                {"200": _json("ReportList")},
                auth="adminToken",
                errors="400 401 403",
                params=[
                    _query("kind", {"type": "string", "enum": ["evaluate", "stats", "features"]}),
                    _query("task_id", {"type": "string"}),
                    _query("model_version", {"type": "string"}),
                ],
            )
        },
        "/v1/quarantine": {
            "get": _op(
                "The updates held in quarantine (kept, not aggregated), with their reasons; "
                "client_id: one client's (404 for an unknown client)",
                "listQuarantine",
                {"200": _json("QuarantineList")},
                auth="adminToken",
                errors="401 403 404",
                params=[_query("client_id", STRING)],
            )
        },
        "/v1/quarantine/{client_id}/release": {
            "post": _op(
                "Release a client's quarantined updates: they count again (in their round "
                "when it is still to be aggregated) and the client's later updates are judged "
                "by its next statistics",
                "releaseQuarantine",
                {"200": _json("QuarantineRelease")},
                auth="adminToken",
                errors="401 403 404",
                params=[_path_param("client_id", STRING, "The client")],
            )
        },
        "/v1/alerts": {
            "get": _op(
                "Alerts, optionally by kind and since a time",
                "listAlerts",
                {"200": _json("AlertList")},
                auth="adminToken",
                errors="400 401 403",
                params=[
                    _query("kind", STRING),
                    _query("since", {"type": "number", "description": "seconds since the epoch"}),
                ],
            )
        },
    }


_SECAGG_DOCUMENTS = {
    "advertise": ("SecAggAdvertiseKeys", None),
    "share": ("SecAggShareKeys", "SecAggKeyRoster"),
    "mask": (None, "SecAggShareDelivery"),
    "unmask": ("SecAggUnmaskResponse", "SecAggUnmaskRequest"),
}


def _secagg_paths() -> dict[str, Any]:
    """``/v1/rounds/{round_id}/secagg/{stage}`` of secure rounds (coordinator.secagg)."""
    stage_conflict = {
        "description": "secagg_stage: the round is not at this stage (not yet, or no "
        "longer), retry after Retry-After seconds; round_not_secure: a plain round",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait (secagg_stage only)",
                "required": False,
                "schema": INTEGER,
            }
        },
        "content": {JSON: {"schema": ref("Error")}},
    }
    post_conflict = {
        "description": "secagg_stage: the round is not at this stage (retry after "
        "Retry-After seconds); secagg_duplicate: the client answered this stage already "
        "(idempotency_conflict: with this Idempotency-Key and another body); task_closed; "
        "round_not_secure: a plain round",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait (secagg_stage only)",
                "required": False,
                "schema": INTEGER,
            }
        },
        "content": {JSON: {"schema": ref("Error")}},
    }
    headers = [
        _header("X-Fedge-Task-Id", "The task being answered (the train task for advertise)"),
        _header(
            "Idempotency-Key",
            "Client-chosen, 8-128 of [A-Za-z0-9._:-]; a retry with the same key and body is "
            "acknowledged again (200, duplicate) and stored once",
        ),
    ]
    paths: dict[str, Any] = {}
    for stage, (posted, served) in _SECAGG_DOCUMENTS.items():
        item: dict[str, Any] = {}
        if posted is None:
            body = {"required": True, "content": _BINARY}
            params = [
                *headers,
                _header("X-Fedge-Metrics", "JSON object of metric name to number", required=False),
            ]
            what = "the masked input (the packed vector, mod 2^b) as the binary body"
        else:
            body = {"required": True, "content": {JSON: {"schema": ref(posted)}}}
            params = headers
            what = f"the {posted} document"
        item["post"] = _op(
            f"Secure aggregation, stage {stage}: post {what}; validated by the protocol's own "
            "checks before anything is stored",
            f"secagg{stage.capitalize()}Post",
            {
                "201": _json("SecAggReceipt", "Stored"),
                "200": _json("SecAggReceipt", "Already stored (a retry)"),
                "409": post_conflict,
            },
            auth="clientToken",
            errors="400 401 403 404 415 422",
            params=[ROUND, *params],
            body=body,
        )
        if served is not None:
            item["get"] = _op(
                f"Secure aggregation, stage {stage}: the caller's {served} document",
                f"secagg{stage.capitalize()}Get",
                {"200": _json(served), "409": stage_conflict},
                auth="clientToken",
                errors="401 403 404",
                params=[ROUND],
            )
        paths[f"/v1/rounds/{{round_id}}/secagg/{stage}"] = item
    return paths


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the coordinator's REST API."""
    bearer = {"type": "http", "scheme": "bearer"}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "fedge coordinator",
            "version": "1",
            "description": "Federated rounds, model registry and monitoring. Errors are "
            "JSON {error, detail}; `error` names the check that failed.",
        },
        "paths": _paths(),
        "components": {
            "schemas": build_schemas(),
            "responses": {
                name: {"description": text, "content": {JSON: {"schema": ref("Error")}}}
                for name, text in _ERRORS.values()
            },
            "securitySchemes": {
                "clientToken": {**bearer, "description": "Token from POST /v1/clients"},
                "adminToken": {**bearer, "description": "The operator's admin token"},
                "enrollmentToken": {
                    **bearer,
                    "description": (
                        "The static enrollment token, or a managed one (POST "
                        "/v1/enrollment-tokens); required unless the coordinator runs with "
                        "--open-enrollment. A managed token that expired, was used up or was "
                        "revoked is a 401 enrollment_token_expired / enrollment_token_used_up "
                        "/ enrollment_token_revoked"
                    ),
                },
            },
        },
    }
