from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scalar(_message.Message):
    __slots__ = ("text", "number", "integer", "flag")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    text: str
    number: float
    integer: int
    flag: bool
    def __init__(self, text: _Optional[str] = ..., number: _Optional[float] = ..., integer: _Optional[int] = ..., flag: bool = ...) -> None: ...

class TaskConfig(_message.Message):
    __slots__ = ("epochs", "batch_size", "learning_rate", "max_examples", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    learning_rate: float
    max_examples: int
    options: _containers.MessageMap[str, Scalar]
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., max_examples: _Optional[int] = ..., options: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "kind", "round_id", "model_version", "config", "deadline")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: str
    round_id: int
    model_version: str
    config: TaskConfig
    deadline: float
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[str] = ..., round_id: _Optional[int] = ..., model_version: _Optional[str] = ..., config: _Optional[_Union[TaskConfig, _Mapping]] = ..., deadline: _Optional[float] = ...) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("key_id", "public_key", "algorithm")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: str
    algorithm: str
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[str] = ..., algorithm: _Optional[str] = ...) -> None: ...

class RotationStatement(_message.Message):
    __slots__ = ("key_id", "public_key", "previous_key_id", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: str
    previous_key_id: str
    signature: str
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[str] = ..., previous_key_id: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class SigningKeys(_message.Message):
    __slots__ = ("current", "rotations")
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    current: SigningKey
    rotations: _containers.RepeatedCompositeFieldContainer[RotationStatement]
    def __init__(self, current: _Optional[_Union[SigningKey, _Mapping]] = ..., rotations: _Optional[_Iterable[_Union[RotationStatement, _Mapping]]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("region", "metadata", "registration_key")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REGION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_KEY_FIELD_NUMBER: _ClassVar[int]
    region: str
    metadata: _containers.ScalarMap[str, str]
    registration_key: str
    def __init__(self, region: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., registration_key: _Optional[str] = ...) -> None: ...

class Registration(_message.Message):
    __slots__ = ("client_id", "token", "token_type", "signing_key")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    token: str
    token_type: str
    signing_key: SigningKey
    def __init__(self, client_id: _Optional[str] = ..., token: _Optional[str] = ..., token_type: _Optional[str] = ..., signing_key: _Optional[_Union[SigningKey, _Mapping]] = ...) -> None: ...

class RotateTokenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class TokenRotation(_message.Message):
    __slots__ = ("client_id", "token", "token_type")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    token: str
    token_type: str
    def __init__(self, client_id: _Optional[str] = ..., token: _Optional[str] = ..., token_type: _Optional[str] = ...) -> None: ...

class SigningKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NextTaskRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NextTaskResponse(_message.Message):
    __slots__ = ("task", "retry_after")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    task: Task
    retry_after: float
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., retry_after: _Optional[float] = ...) -> None: ...

class DeclineRequest(_message.Message):
    __slots__ = ("task_id", "reason", "idempotency_key")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    idempotency_key: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class DeclineResponse(_message.Message):
    __slots__ = ("task_id", "status")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: str
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("version", "name", "if_none_match")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IF_NONE_MATCH_FIELD_NUMBER: _ClassVar[int]
    version: str
    name: str
    if_none_match: str
    def __init__(self, version: _Optional[str] = ..., name: _Optional[str] = ..., if_none_match: _Optional[str] = ...) -> None: ...

class FileHeader(_message.Message):
    __slots__ = ("name", "model_version", "sha256", "size", "signature", "not_modified")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NOT_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_version: str
    sha256: str
    size: int
    signature: str
    not_modified: bool
    def __init__(self, name: _Optional[str] = ..., model_version: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., signature: _Optional[str] = ..., not_modified: bool = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: FileHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[FileHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("round_id", "task_id", "num_examples", "metrics", "delta_sha256", "codec", "size", "idempotency_key")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DELTA_SHA256_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    task_id: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    delta_sha256: str
    codec: str
    size: int
    idempotency_key: str
    def __init__(self, round_id: _Optional[int] = ..., task_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., delta_sha256: _Optional[str] = ..., codec: _Optional[str] = ..., size: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UpdateReceipt(_message.Message):
    __slots__ = ("round_id", "client_id", "task_id", "sha256", "num_examples", "received_at", "duplicate")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    client_id: str
    task_id: str
    sha256: str
    num_examples: int
    received_at: str
    duplicate: bool
    def __init__(self, round_id: _Optional[int] = ..., client_id: _Optional[str] = ..., task_id: _Optional[str] = ..., sha256: _Optional[str] = ..., num_examples: _Optional[int] = ..., received_at: _Optional[str] = ..., duplicate: bool = ...) -> None: ...

class PrivacyNote(_message.Message):
    __slots__ = ("mechanism", "epsilon", "delta", "mode")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    mechanism: str
    epsilon: float
    delta: float
    mode: str
    def __init__(self, mechanism: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., mode: _Optional[str] = ...) -> None: ...

class StatsReport(_message.Message):
    __slots__ = ("task_id", "stats", "privacy")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    stats: _struct_pb2.Struct
    privacy: PrivacyNote
    def __init__(self, task_id: _Optional[str] = ..., stats: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., privacy: _Optional[_Union[PrivacyNote, _Mapping]] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvalReport(_message.Message):
    __slots__ = ("task_id", "model_version", "num_examples", "metrics", "personalized_metrics", "slice_metrics", "prediction_counts", "label_counts", "privacy")
    class SliceMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Metrics
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZED_METRICS_FIELD_NUMBER: _ClassVar[int]
    SLICE_METRICS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    model_version: str
    num_examples: int
    metrics: Metrics
    personalized_metrics: Metrics
    slice_metrics: _containers.MessageMap[str, Metrics]
    prediction_counts: _containers.RepeatedScalarFieldContainer[int]
    label_counts: _containers.RepeatedScalarFieldContainer[int]
    privacy: PrivacyNote
    def __init__(self, task_id: _Optional[str] = ..., model_version: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., personalized_metrics: _Optional[_Union[Metrics, _Mapping]] = ..., slice_metrics: _Optional[_Mapping[str, Metrics]] = ..., prediction_counts: _Optional[_Iterable[int]] = ..., label_counts: _Optional[_Iterable[int]] = ..., privacy: _Optional[_Union[PrivacyNote, _Mapping]] = ...) -> None: ...

class Embeddings(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class FeatureBatch(_message.Message):
    __slots__ = ("task_id", "embeddings", "labels", "privacy", "counts")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    embeddings: Embeddings
    labels: _containers.RepeatedScalarFieldContainer[int]
    privacy: PrivacyNote
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, task_id: _Optional[str] = ..., embeddings: _Optional[_Union[Embeddings, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ..., privacy: _Optional[_Union[PrivacyNote, _Mapping]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("idempotency_key", "stats", "evaluation", "features")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    stats: StatsReport
    evaluation: EvalReport
    features: FeatureBatch
    def __init__(self, idempotency_key: _Optional[str] = ..., stats: _Optional[_Union[StatsReport, _Mapping]] = ..., evaluation: _Optional[_Union[EvalReport, _Mapping]] = ..., features: _Optional[_Union[FeatureBatch, _Mapping]] = ...) -> None: ...

class ReportReceipt(_message.Message):
    __slots__ = ("report_id", "kind", "client_id", "task_id", "model_version", "received_at")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    report_id: int
    kind: str
    client_id: str
    task_id: str
    model_version: str
    received_at: str
    def __init__(self, report_id: _Optional[int] = ..., kind: _Optional[str] = ..., client_id: _Optional[str] = ..., task_id: _Optional[str] = ..., model_version: _Optional[str] = ..., received_at: _Optional[str] = ...) -> None: ...

class SecAggAdvertiseKeys(_message.Message):
    __slots__ = ("client_id", "encryption_key", "mask_key")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    encryption_key: str
    mask_key: str
    def __init__(self, client_id: _Optional[int] = ..., encryption_key: _Optional[str] = ..., mask_key: _Optional[str] = ...) -> None: ...

class SecAggKeyRoster(_message.Message):
    __slots__ = ("client_id", "threshold", "neighbours")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    threshold: int
    neighbours: _containers.RepeatedCompositeFieldContainer[SecAggAdvertiseKeys]
    def __init__(self, client_id: _Optional[int] = ..., threshold: _Optional[int] = ..., neighbours: _Optional[_Iterable[_Union[SecAggAdvertiseKeys, _Mapping]]] = ...) -> None: ...

class SecAggShareKeys(_message.Message):
    __slots__ = ("client_id", "bundles")
    class BundlesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    bundles: _containers.ScalarMap[str, str]
    def __init__(self, client_id: _Optional[int] = ..., bundles: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SecAggShareDelivery(_message.Message):
    __slots__ = ("client_id", "bundles")
    class BundlesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    bundles: _containers.ScalarMap[str, str]
    def __init__(self, client_id: _Optional[int] = ..., bundles: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("client_id", "survivors", "dropped")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, client_id: _Optional[int] = ..., survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggUnmaskResponse(_message.Message):
    __slots__ = ("client_id", "seed_shares", "key_shares")
    class SeedSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class KeySharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seed_shares: _containers.ScalarMap[str, str]
    key_shares: _containers.ScalarMap[str, str]
    def __init__(self, client_id: _Optional[int] = ..., seed_shares: _Optional[_Mapping[str, str]] = ..., key_shares: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SecAggPayloadRequest(_message.Message):
    __slots__ = ("round_id", "stage")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    stage: str
    def __init__(self, round_id: _Optional[int] = ..., stage: _Optional[str] = ...) -> None: ...

class SecAggPayload(_message.Message):
    __slots__ = ("roster", "delivery", "unmask")
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    roster: SecAggKeyRoster
    delivery: SecAggShareDelivery
    unmask: SecAggUnmaskRequest
    def __init__(self, roster: _Optional[_Union[SecAggKeyRoster, _Mapping]] = ..., delivery: _Optional[_Union[SecAggShareDelivery, _Mapping]] = ..., unmask: _Optional[_Union[SecAggUnmaskRequest, _Mapping]] = ...) -> None: ...

class SecAggSubmission(_message.Message):
    __slots__ = ("round_id", "stage", "task_id", "idempotency_key", "advertise", "share", "masked", "unmask", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    stage: str
    task_id: str
    idempotency_key: str
    advertise: SecAggAdvertiseKeys
    share: SecAggShareKeys
    masked: bytes
    unmask: SecAggUnmaskResponse
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, round_id: _Optional[int] = ..., stage: _Optional[str] = ..., task_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., advertise: _Optional[_Union[SecAggAdvertiseKeys, _Mapping]] = ..., share: _Optional[_Union[SecAggShareKeys, _Mapping]] = ..., masked: _Optional[bytes] = ..., unmask: _Optional[_Union[SecAggUnmaskResponse, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SecAggReceipt(_message.Message):
    __slots__ = ("round_id", "stage", "client_id", "duplicate")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    stage: str
    client_id: str
    duplicate: bool
    def __init__(self, round_id: _Optional[int] = ..., stage: _Optional[str] = ..., client_id: _Optional[str] = ..., duplicate: bool = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("id", "body", "query")
    class QueryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    id: str
    body: _struct_pb2.Struct
    query: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., query: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("document",)
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    document: _struct_pb2.Struct
    def __init__(self, document: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
