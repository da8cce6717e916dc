"""The edge client: TFLite-only runtime, on-device training, local data, the daemon.

The public API is what ``__all__`` lists. The client's work is one callable,
:func:`handle` ``(task, context) -> reply``; a :class:`ModelCache` loads each bundle's
interpreters once and is shared by any number of :class:`ClientContext` s::

    from edge_client import ClientContext, MemoryData, ModelCache, handle

    models = ModelCache({"v1": "bundles/v1"})
    context = ClientContext(data=MemoryData(train, holdout), models=models)
    reply = handle(task, context)

A train task of a compressed round gets a :class:`CompressedUpdate` (q8, or top-k with
its error-feedback residual in the context's :class:`FeedbackStore`;
:mod:`edge_client.compress`).

Secure aggregation's device side is :mod:`edge_client.secure` (``begin`` after training,
``step`` for each later stage, over a :class:`SecretStore`).

A device reaches its coordinator with :func:`connect`: REST for ``http(s)://`` URLs, gRPC for
``grpc(s)://`` ones, both behind the :class:`CoordinatorApi` methods, with TLS (and a
client certificate for mutual TLS) from a :class:`ClientTls`.

Nothing here imports TensorFlow: a TFLite runtime (tflite-runtime or ai-edge-litert) and
numpy are all the device needs.

The public names are imported on first use (PEP 562): ``from edge_client import handle``
loads the handler, not the transports (gRPC, HTTP) that only a daemon needs.
"""

import typing as _typing

from fedge.lazy import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from edge_client.api import CoordinatorApi, connect
    from edge_client.backoff import Backoff, BackoffPolicy
    from edge_client.bundles import BundleStore
    from edge_client.compress import (
        CompressedUpdate,
        FeedbackStore,
        FileFeedbackStore,
        MemoryFeedbackStore,
        compress_update,
    )
    from edge_client.daemon import Daemon, DaemonConfig
    from edge_client.errors import (
        DaemonStopped,
        EdgeError,
        ModelRejected,
        RequestCancelled,
        RequestRejected,
        TransportError,
    )
    from edge_client.grpc_client import GrpcCoordinatorClient
    from edge_client.handler import (
        ClientConfig,
        ClientContext,
        batch_rng,
        client_key,
        handle,
        personal_head,
    )
    from edge_client.local_data import DirectoryData, LocalData, MemoryData, Span
    from edge_client.model import BundleRuntime, EdgeModel, ModelCache, ModelProvider
    from edge_client.outbox import DeliveryReport, Outbox, OutboxEntry
    from edge_client.personalize import (
        FileHeadStore,
        HeadStore,
        MemoryHeadStore,
        PersonalHead,
        PersonalizationConfig,
        fine_tune,
    )
    from edge_client.privacy import private_stats, slice_groups
    from edge_client.runtime import InferenceModel, TrainableModel, TrainResult, load_interpreter
    from edge_client.secure import (
        FileSecretStore,
        MemorySecretStore,
        RoundSecrets,
        SecretStore,
        SecureReply,
    )
    from edge_client.state import ClientState
    from edge_client.tls import ClientTls
    from edge_client.transport import (
        Cancellable,
        CoordinatorClient,
        FunctionTransport,
        HttpResponse,
        HttpTransport,
        OutgoingRequest,
        Transport,
        parse_retry_after,
        reply_request,
        secure_request,
    )

# Each public name and the module that defines it.
_SOURCES = {
    "Backoff": "edge_client.backoff",
    "BackoffPolicy": "edge_client.backoff",
    "BundleRuntime": "edge_client.model",
    "BundleStore": "edge_client.bundles",
    "Cancellable": "edge_client.transport",
    "ClientConfig": "edge_client.handler",
    "ClientContext": "edge_client.handler",
    "ClientState": "edge_client.state",
    "ClientTls": "edge_client.tls",
    "CompressedUpdate": "edge_client.compress",
    "CoordinatorApi": "edge_client.api",
    "CoordinatorClient": "edge_client.transport",
    "Daemon": "edge_client.daemon",
    "DaemonConfig": "edge_client.daemon",
    "DaemonStopped": "edge_client.errors",
    "DeliveryReport": "edge_client.outbox",
    "DirectoryData": "edge_client.local_data",
    "EdgeError": "edge_client.errors",
    "EdgeModel": "edge_client.model",
    "FeedbackStore": "edge_client.compress",
    "FileFeedbackStore": "edge_client.compress",
    "FileHeadStore": "edge_client.personalize",
    "FileSecretStore": "edge_client.secure",
    "FunctionTransport": "edge_client.transport",
    "GrpcCoordinatorClient": "edge_client.grpc_client",
    "HeadStore": "edge_client.personalize",
    "HttpResponse": "edge_client.transport",
    "HttpTransport": "edge_client.transport",
    "InferenceModel": "edge_client.runtime",
    "LocalData": "edge_client.local_data",
    "MemoryData": "edge_client.local_data",
    "MemoryFeedbackStore": "edge_client.compress",
    "MemoryHeadStore": "edge_client.personalize",
    "MemorySecretStore": "edge_client.secure",
    "ModelCache": "edge_client.model",
    "ModelProvider": "edge_client.model",
    "ModelRejected": "edge_client.errors",
    "Outbox": "edge_client.outbox",
    "OutboxEntry": "edge_client.outbox",
    "OutgoingRequest": "edge_client.transport",
    "PersonalHead": "edge_client.personalize",
    "PersonalizationConfig": "edge_client.personalize",
    "RequestCancelled": "edge_client.errors",
    "RequestRejected": "edge_client.errors",
    "RoundSecrets": "edge_client.secure",
    "SecretStore": "edge_client.secure",
    "SecureReply": "edge_client.secure",
    "Span": "edge_client.local_data",
    "TrainResult": "edge_client.runtime",
    "TrainableModel": "edge_client.runtime",
    "Transport": "edge_client.transport",
    "TransportError": "edge_client.errors",
    "batch_rng": "edge_client.handler",
    "client_key": "edge_client.handler",
    "compress_update": "edge_client.compress",
    "connect": "edge_client.api",
    "fine_tune": "edge_client.personalize",
    "handle": "edge_client.handler",
    "load_interpreter": "edge_client.runtime",
    "parse_retry_after": "edge_client.transport",
    "personal_head": "edge_client.handler",
    "private_stats": "edge_client.privacy",
    "reply_request": "edge_client.transport",
    "secure_request": "edge_client.transport",
    "slice_groups": "edge_client.privacy",
}

__all__ = [
    "Backoff",
    "BackoffPolicy",
    "BundleRuntime",
    "BundleStore",
    "Cancellable",
    "ClientConfig",
    "ClientContext",
    "ClientState",
    "ClientTls",
    "CompressedUpdate",
    "CoordinatorApi",
    "CoordinatorClient",
    "Daemon",
    "DaemonConfig",
    "DaemonStopped",
    "DeliveryReport",
    "DirectoryData",
    "EdgeError",
    "EdgeModel",
    "FeedbackStore",
    "FileFeedbackStore",
    "FileHeadStore",
    "FileSecretStore",
    "FunctionTransport",
    "GrpcCoordinatorClient",
    "HeadStore",
    "HttpResponse",
    "HttpTransport",
    "InferenceModel",
    "LocalData",
    "MemoryData",
    "MemoryFeedbackStore",
    "MemoryHeadStore",
    "MemorySecretStore",
    "ModelCache",
    "ModelProvider",
    "ModelRejected",
    "Outbox",
    "OutboxEntry",
    "OutgoingRequest",
    "PersonalHead",
    "PersonalizationConfig",
    "RequestCancelled",
    "RequestRejected",
    "RoundSecrets",
    "SecretStore",
    "SecureReply",
    "Span",
    "TrainResult",
    "TrainableModel",
    "Transport",
    "TransportError",
    "batch_rng",
    "client_key",
    "compress_update",
    "connect",
    "fine_tune",
    "handle",
    "load_interpreter",
    "parse_retry_after",
    "personal_head",
    "private_stats",
    "reply_request",
    "secure_request",
    "slice_groups",
]


__getattr__, __dir__ = _lazy_exports(__name__, globals(), _SOURCES)
