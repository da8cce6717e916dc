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
"""

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
