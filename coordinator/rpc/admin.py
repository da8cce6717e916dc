"""The gRPC Admin service (``fedge.v1.Admin`` in fleet.proto): the REST admin routes over
gRPC. Each RPC checks the admin token from the ``authorization`` metadata
(:func:`coordinator.access.require_admin`), calls the same function of
:mod:`coordinator.admin_api` as its REST route, and answers ``Document{document}`` with the
REST answer's JSON document.

An :class:`AdminRequest` carries what the REST request does: ``id`` the object its path
names (a client id, a token id, a round id, a model version), ``body`` its JSON body,
``query`` its query parameters. A field the RPC does not take is refused (400
``invalid_request``, INVALID_ARGUMENT), as is a request larger than the REST admin body
limit (``ApiConfig.max_json_bytes``; RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from coordinator import admin_api
from coordinator.access import require_admin
from coordinator.auth import actor_id, bearer_token
from coordinator.errors import CoordinatorError, PayloadTooLargeError
from coordinator.rpc.errors import metadata_value, unary_errors
from coordinator.service import CoordinatorService
from fedge.errors import ProtocolError
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto

if TYPE_CHECKING:
    from coordinator.rest.state import RestState

__all__ = ["ADMIN_METHODS", "ADMIN_SERVICE", "AdminCall", "admin_handler"]

ADMIN_SERVICE = "fedge.v1.Admin"


@dataclass(frozen=True)
class AdminCall:
    """A decoded :class:`AdminRequest`: the path id, the JSON body, the query parameters,
    and the admin token's id (``actor``, recorded by promotions, rollbacks, revocations and
    quarantine releases)."""

    id: str
    body: Mapping[str, Any]
    query: Mapping[str, str]
    actor: str | None = None


_Operation = Callable[[CoordinatorService, AdminCall], dict[str, Any]]


@dataclass(frozen=True)
class _Method:
    """One RPC: what its request may carry, and the operation it runs."""

    run: _Operation
    id: str | None = None  # what the id names; None: the RPC takes no id
    body: bool = False
    query: frozenset[str] = frozenset()


def _round_id(call: AdminCall) -> int:
    return admin_api.round_id_from_text(call.id)


ADMIN_METHODS: Mapping[str, _Method] = {
    "ListClients": _Method(lambda s, c: admin_api.list_clients(s)),
    "RevokeClient": _Method(
        lambda s, c: admin_api.revoke_client(s, c.id, actor=c.actor), id="a client id"
    ),
    "CreateEnrollmentToken": _Method(
        lambda s, c: admin_api.create_enrollment_token(s, c.body), body=True
    ),
    "ListEnrollmentTokens": _Method(lambda s, c: admin_api.list_enrollment_tokens(s)),
    "RevokeEnrollmentToken": _Method(
        lambda s, c: admin_api.revoke_enrollment_token(s, c.id), id="an enrollment token id"
    ),
    "CreateTasks": _Method(lambda s, c: admin_api.create_tasks(s, c.body), body=True),
    "StartRound": _Method(lambda s, c: admin_api.open_round(s, c.body), body=True),
    "ListRounds": _Method(lambda s, c: admin_api.list_rounds(s)),
    "GetRound": _Method(lambda s, c: admin_api.show_round(s, _round_id(c)), id="a round id"),
    "CancelRound": _Method(lambda s, c: admin_api.cancel_round(s, _round_id(c)), id="a round id"),
    "ListModels": _Method(lambda s, c: admin_api.list_models(s)),
    "GetModel": _Method(lambda s, c: admin_api.show_model(s, c.id), id="a model version"),
    "PromoteModel": _Method(
        lambda s, c: admin_api.promote(s, c.id, actor=c.actor), id="a model version"
    ),
    "Rollback": _Method(lambda s, c: admin_api.rollback(s, c.body, actor=c.actor), body=True),
    "ListQuarantine": _Method(
        lambda s, c: admin_api.list_quarantine(s, c.query), query=frozenset({"client_id"})
    ),
    "ReleaseQuarantine": _Method(
        lambda s, c: admin_api.release_quarantine(s, c.id, actor=c.actor), id="a client id"
    ),
    "ListAlerts": _Method(
        lambda s, c: admin_api.list_alerts(s, c.query), query=frozenset({"kind", "since"})
    ),
    "ListReports": _Method(
        lambda s, c: admin_api.list_reports(s, c.query),
        query=frozenset({"kind", "task_id", "model_version"}),
    ),
}
"""RPC name (as in fleet.proto) -> how it is served."""


def _decode(name: str, method: _Method, raw: bytes, limit: int) -> AdminCall:
    if len(raw) > limit:
        raise PayloadTooLargeError(f"the request is {len(raw)} bytes, over the {limit}-byte limit")
    try:
        request = pb.AdminRequest.FromString(raw)
    except DecodeError as exc:
        raise ProtocolError(f"the request is not an AdminRequest: {exc}") from exc
    document = to_document(request)
    call = AdminCall(id=document["id"], body=document.get("body", {}), query=document["query"])
    if method.id is None and call.id:
        raise CoordinatorError(f"{name} takes no id", code="invalid_request")
    if method.id is not None and not call.id:
        raise CoordinatorError(f"{name} needs id: {method.id}", code="invalid_request")
    if not method.body and "body" in document:
        raise CoordinatorError(f"{name} takes no body", code="invalid_request")
    unknown = sorted(set(call.query) - method.query)
    if unknown:
        raise CoordinatorError(
            f"unknown query parameters {unknown} for {name}; known: {sorted(method.query)}",
            code="invalid_request",
        )
    return call


def _handler(state: RestState, name: str, method: _Method) -> grpc.RpcMethodHandler:
    def handle(raw: bytes, context: grpc.ServicerContext) -> Any:
        authorization = metadata_value(context, "authorization")
        require_admin(state, authorization)
        call = dataclasses.replace(
            _decode(name, method, raw, state.config.max_json_bytes),
            actor=actor_id("admin", bearer_token(authorization)),
        )
        return to_proto({"document": method.run(state.service, call)}, pb.Document)

    handle.__name__ = name
    # The request is parsed in the handler, so that bytes that are no AdminRequest are an
    # INVALID_ARGUMENT with fedge-error metadata rather than grpc's bare INTERNAL.
    return grpc.unary_unary_rpc_method_handler(
        unary_errors(handle), response_serializer=pb.Document.SerializeToString
    )


def admin_handler(state: RestState) -> grpc.GenericRpcHandler:
    """The Admin service over ``state`` (the REST app's own, so both share it)."""
    handlers = {name: _handler(state, name, method) for name, method in ADMIN_METHODS.items()}
    return grpc.method_handlers_generic_handler(ADMIN_SERVICE, handlers)
