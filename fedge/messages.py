"""Typed messages between the coordinator and edge clients, and their one JSON codec.

The cloud sends a :class:`Task`; a client answers with one reply:

- :class:`ModelUpdate`: a weight delta, the example count and training metrics. The delta
  is a :class:`~fedge.weights.Weights` in Python; on the wire it travels as a separate
  safetensors body next to the JSON metadata (:func:`encode_message` returns both parts).
- :class:`EvalReport`: global, personalized and per-slice metrics of a model version.
- :class:`StatsReport`: mergeable :class:`~fedge.stats.DatasetStats` of the local data.
- :class:`FeatureBatch`: backbone *embeddings* (float32 activations of the frozen backbone)
  and their labels, for training a head in the cloud.

By design no message type can carry raw examples: there is no field for input columns,
images or text, only deltas, aggregates, statistics and embeddings. Keep it that way: a
new field that could hold raw data needs a privacy review, and ``test_messages`` fails.

Every message validates when it is built and raises :class:`~fedge.errors.ProtocolError`
(weights problems keep their :class:`~fedge.errors.WeightsError` subclass) saying what was
expected and what arrived. ``to_dict``/``from_dict`` are exact inverses; unknown keys are
refused so a typo never passes silently.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, cast, get_args

import numpy as np
import numpy.typing as npt

from fedge.errors import FeatureError, ProtocolError
from fedge.stats import DatasetStats
from fedge.validation import ErrorFactory, check_int, check_number, check_positive
from fedge.weights import Weights

__all__ = [
    "MAX_CLASSES",
    "MAX_FEATURE_VALUES",
    "MAX_METRICS",
    "MESSAGE_TYPES",
    "MESSAGE_VERSION",
    "EvalReport",
    "FeatureBatch",
    "Message",
    "ModelUpdate",
    "PrivacyNote",
    "Reply",
    "StatsReport",
    "Task",
    "TaskConfig",
    "TaskKind",
    "decode_message",
    "encode_message",
]

MESSAGE_VERSION = 1
MAX_METRICS = 256
"""Most entries one metrics mapping (or one slice) may hold."""
MAX_SLICES = 1024
MAX_FEATURE_VALUES = 1 << 24
"""Most float32 values one :class:`FeatureBatch` may hold (64 MiB)."""

TaskKind: TypeAlias = Literal[
    "train", "evaluate", "stats", "features", "secagg_share", "secagg_mask", "secagg_unmask"
]
"""``secagg_*``: the later stages of a secure-aggregation round (:mod:`fedge.secagg`)."""
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_Scalar: TypeAlias = str | int | float | bool


# Field checks ------------------------------------------------------------------------------


def _identifier(value: object, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ProtocolError(
            f"{what} must be 1-128 characters of letters, digits and '._:-' "
            f"starting with a letter or digit, got {value!r}",
            field=what,
        )
    return value


def _field_error(name: str) -> ErrorFactory:
    """What the validators raise for message field ``name``: a ProtocolError naming it."""
    return functools.partial(ProtocolError, field=name)


def _metrics(value: object, what: str) -> Mapping[str, float]:
    if not isinstance(value, Mapping):
        raise ProtocolError(
            f"{what} must be an object of name to number, got {value!r}", field=what
        )
    if len(value) > MAX_METRICS:
        raise ProtocolError(
            f"{what} holds {len(value)} entries, more than {MAX_METRICS}", field=what
        )
    out: dict[str, float] = {}
    for key, number in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            raise ProtocolError(f"{what}: names must be 1-128 characters, got {key!r}", field=what)
        out[key] = check_number(number, f"{what}[{key!r}]", error=_field_error(what))
    return MappingProxyType(out)


def _check_keys(data: Mapping[str, Any], kind: str, required: set[str], optional: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise ProtocolError(f"a {kind} message must be a JSON object, got {type(data).__name__}")
    if data.get("type") != kind:
        raise ProtocolError(f"expected a message of type {kind!r}, got {data.get('type')!r}")
    if data.get("version") != MESSAGE_VERSION:
        raise ProtocolError(
            f"unsupported {kind} message version {data.get('version')!r}; "
            f"this reader knows {MESSAGE_VERSION}"
        )
    keys = set(data) - {"type", "version"}
    missing = sorted(required - keys)
    if missing:
        raise ProtocolError(f"{kind} message lacks {missing}", field=missing[0])
    unknown = sorted(keys - required - optional)
    if unknown:
        raise ProtocolError(f"{kind} message has unknown keys {unknown}", field=unknown[0])


def _header(kind: str) -> dict[str, Any]:
    return {"type": kind, "version": MESSAGE_VERSION}


# Task ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskConfig:
    """Local training settings a task carries to the client.

    ``batch_size`` must be the bundle's static ``train_batch_size`` for on-device training;
    ``max_examples`` caps the examples a client uses (``None``: all); ``options`` holds extra
    scalar settings (e.g. a proximal term) that the client may ignore when unknown.
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    max_examples: int | None = None
    options: Mapping[str, _Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("epochs", "batch_size"):
            set_(self, name, check_int(getattr(self, name), name, low=1, error=_field_error(name)))
        rate = check_positive(
            self.learning_rate, "learning_rate", error=_field_error("learning_rate")
        )
        set_(self, "learning_rate", rate)
        if self.max_examples is not None:
            limit = check_int(
                self.max_examples, "max_examples", low=1, error=_field_error("max_examples")
            )
            set_(self, "max_examples", limit)
        if not isinstance(self.options, Mapping) or len(self.options) > MAX_METRICS:
            raise ProtocolError(f"options must be an object of scalars, got {self.options!r}")
        options: dict[str, _Scalar] = {}
        for key, value in self.options.items():
            _identifier(key, "an option name")
            if isinstance(value, float) and not math.isfinite(value):
                raise ProtocolError(f"option {key!r} must be finite, got {value}", field=key)
            if not isinstance(value, str | int | float | bool):
                raise ProtocolError(f"option {key!r} must be a scalar, got {value!r}", field=key)
            options[key] = value
        set_(self, "options", MappingProxyType(options))

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "max_examples": self.max_examples,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskConfig:
        if not isinstance(data, Mapping):
            raise ProtocolError(f"config must be an object, got {data!r}", field="config")
        names = {"epochs", "batch_size", "learning_rate", "max_examples", "options"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ProtocolError(f"task config has unknown keys {unknown}", field=unknown[0])
        return cls(**{key: data[key] for key in names if key in data})


@dataclass(frozen=True)
class Task:
    """Work for one client: train (in a round), evaluate, compute stats or embed features.

    ``deadline`` is in seconds since the epoch; a ``train`` task always names its round.
    """

    task_id: str
    kind: TaskKind
    round_id: int | None
    model_version: str
    config: TaskConfig
    deadline: float

    def __post_init__(self) -> None:
        _identifier(self.task_id, "task_id")
        if self.kind not in TASK_KINDS:
            raise ProtocolError(f"kind must be one of {list(TASK_KINDS)}, got {self.kind!r}")
        if self.round_id is not None:
            round_id = check_int(self.round_id, "round_id", low=1, error=_field_error("round_id"))
            object.__setattr__(self, "round_id", round_id)
        elif self.kind == "train":
            raise ProtocolError("a train task must name its round_id", field="round_id")
        _identifier(self.model_version, "model_version")
        if not isinstance(self.config, TaskConfig):
            raise ProtocolError(f"config must be a TaskConfig, got {self.config!r}")
        deadline = check_positive(self.deadline, "deadline", error=_field_error("deadline"))
        object.__setattr__(self, "deadline", deadline)

    def to_dict(self) -> dict[str, Any]:
        return {
            **_header("task"),
            "task_id": self.task_id,
            "kind": self.kind,
            "round_id": self.round_id,
            "model_version": self.model_version,
            "config": self.config.to_dict(),
            "deadline": self.deadline,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        required = {"task_id", "kind", "round_id", "model_version", "config", "deadline"}
        _check_keys(data, "task", required, set())
        return cls(
            task_id=data["task_id"],
            kind=data["kind"],
            round_id=data["round_id"],
            model_version=data["model_version"],
            config=TaskConfig.from_dict(data["config"]),
            deadline=data["deadline"],
        )


# Replies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelUpdate:
    """A client's training result for one round: ``delta`` = local weights - global weights.

    :meth:`to_dict` holds the metadata only, with the delta's sha256 and size so the receiver
    can check the body; :meth:`delta_bytes` is the safetensors body.
    """

    task_id: str
    round_id: int
    num_examples: int
    metrics: Mapping[str, float]
    delta: Weights

    def __post_init__(self) -> None:
        _identifier(self.task_id, "task_id")
        round_id = check_int(self.round_id, "round_id", low=1, error=_field_error("round_id"))
        object.__setattr__(self, "round_id", round_id)
        examples = check_int(
            self.num_examples, "num_examples", low=1, error=_field_error("num_examples")
        )
        object.__setattr__(self, "num_examples", examples)
        object.__setattr__(self, "metrics", _metrics(self.metrics, "metrics"))
        if not isinstance(self.delta, Weights):
            raise ProtocolError(f"delta must be Weights, got {type(self.delta).__name__}")

    def delta_bytes(self) -> bytes:
        return self.delta.to_bytes()

    def to_dict(self) -> dict[str, Any]:
        return self._document(self.delta_bytes())

    def _document(self, body: bytes) -> dict[str, Any]:
        """The document of this update whose delta encodes to ``body``."""
        return {
            **_header("model_update"),
            "task_id": self.task_id,
            "round_id": self.round_id,
            "num_examples": self.num_examples,
            "metrics": dict(self.metrics),
            "delta_sha256": hashlib.sha256(body).hexdigest(),
            "delta_size": len(body),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], body: bytes, *, max_bytes: int | None = None
    ) -> ModelUpdate:
        """Rebuild from metadata and the safetensors body (``delta_sha256/size`` optional)."""
        required = {"task_id", "round_id", "num_examples", "metrics"}
        _check_keys(data, "model_update", required, {"delta_sha256", "delta_size"})
        size, digest = data.get("delta_size"), data.get("delta_sha256")
        if size is not None and size != len(body):
            raise ProtocolError(f"delta_size says {size} bytes, the body has {len(body)}")
        if digest is not None and digest != hashlib.sha256(body).hexdigest():
            raise ProtocolError("the body does not match delta_sha256", field="delta_sha256")
        return cls(
            task_id=data["task_id"],
            round_id=data["round_id"],
            num_examples=data["num_examples"],
            metrics=data["metrics"],
            delta=Weights.from_bytes(body, max_bytes=max_bytes),
        )


@dataclass(frozen=True)
class EvalReport:
    """Metrics of ``model_version`` on a client's data: global model, personalized model,
    and per slice (e.g. per region: ``{"north": {"accuracy": 0.9}}``).

    ``prediction_counts`` and ``label_counts`` (optional) are the distribution of the global
    model's predicted classes and of the true labels over the evaluated rows: one count per
    class id, never a row. A device whose policy noises statistics noises them and says how
    in ``privacy``. Reports without them stay valid.
    """

    task_id: str
    model_version: str
    num_examples: int
    metrics: Mapping[str, float]
    personalized_metrics: Mapping[str, float] = field(default_factory=dict)
    slice_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    prediction_counts: tuple[int, ...] | None = None
    label_counts: tuple[int, ...] | None = None
    privacy: PrivacyNote | None = None
    """How the class counts were noised on the device; None: exact (or no counts)."""

    def __post_init__(self) -> None:
        _identifier(self.task_id, "task_id")
        _identifier(self.model_version, "model_version")
        examples = check_int(
            self.num_examples, "num_examples", low=0, error=_field_error("num_examples")
        )
        object.__setattr__(self, "num_examples", examples)
        object.__setattr__(self, "metrics", _metrics(self.metrics, "metrics"))
        object.__setattr__(
            self,
            "personalized_metrics",
            _metrics(self.personalized_metrics, "personalized_metrics"),
        )
        if not isinstance(self.slice_metrics, Mapping) or len(self.slice_metrics) > MAX_SLICES:
            raise ProtocolError(
                f"slice_metrics must be an object of at most {MAX_SLICES} slices",
                field="slice_metrics",
            )
        slices = {}
        for name, values in self.slice_metrics.items():
            if not isinstance(name, str) or not 0 < len(name) <= 128:
                raise ProtocolError(f"slice names must be 1-128 characters, got {name!r}")
            slices[name] = _metrics(values, f"slice_metrics[{name!r}]")
        object.__setattr__(self, "slice_metrics", MappingProxyType(slices))
        for name in ("prediction_counts", "label_counts"):
            object.__setattr__(self, name, _class_counts(getattr(self, name), name))
        counts = (self.prediction_counts, self.label_counts)
        if None not in counts and len(counts[0] or ()) != len(counts[1] or ()):
            raise ProtocolError(
                f"prediction_counts has {len(counts[0] or ())} classes, label_counts "
                f"{len(counts[1] or ())}: one count per class in both",
                field="label_counts",
            )
        _privacy(self.privacy)

    def to_dict(self) -> dict[str, Any]:
        doc = {
            **_header("eval_report"),
            "task_id": self.task_id,
            "model_version": self.model_version,
            "num_examples": self.num_examples,
            "metrics": dict(self.metrics),
            "personalized_metrics": dict(self.personalized_metrics),
            "slice_metrics": {k: dict(v) for k, v in self.slice_metrics.items()},
        }
        if self.prediction_counts is not None:
            doc["prediction_counts"] = list(self.prediction_counts)
        if self.label_counts is not None:
            doc["label_counts"] = list(self.label_counts)
        if self.privacy is not None:
            doc["privacy"] = self.privacy.to_dict()
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalReport:
        required = {"task_id", "model_version", "num_examples", "metrics"}
        optional = {"personalized_metrics", "slice_metrics", *_EVAL_DISTRIBUTION_KEYS}
        _check_keys(data, "eval_report", required, optional)
        privacy = data.get("privacy")
        return cls(
            task_id=data["task_id"],
            model_version=data["model_version"],
            num_examples=data["num_examples"],
            metrics=data["metrics"],
            personalized_metrics=data.get("personalized_metrics", {}),
            slice_metrics=data.get("slice_metrics", {}),
            prediction_counts=data.get("prediction_counts"),
            label_counts=data.get("label_counts"),
            privacy=None if privacy is None else PrivacyNote.from_dict(privacy),
        )


_EVAL_DISTRIBUTION_KEYS = ("prediction_counts", "label_counts", "privacy")
MAX_CLASSES = 1 << 16
"""Most classes one distribution of an :class:`EvalReport` may count."""


def _class_counts(value: object, what: str) -> tuple[int, ...] | None:
    """None, or 1..MAX_CLASSES non-negative integer counts (one per class id)."""
    if value is None:
        return None
    if not isinstance(value, tuple | list) or not 0 < len(value) <= MAX_CLASSES:
        raise ProtocolError(
            f"{what} must be a list of 1-{MAX_CLASSES} counts (one per class), got {value!r}",
            field=what,
        )
    return tuple(check_int(c, f"a count of {what}", low=0, error=_field_error(what)) for c in value)


PRIVACY_MODES: tuple[str, ...] = ("prototypes", "rows", "statistics")
"""What a reply's noise protects: per-class prototypes or single rows (a FeatureBatch),
or a statistics report."""


@dataclass(frozen=True)
class PrivacyNote:
    """How a reply was made differentially private on the device: the ``mechanism`` (e.g.
    ``gaussian``), the ``(epsilon, delta)`` the device charged to its budget for it, and
    the ``mode`` (one of :data:`PRIVACY_MODES`)."""

    mechanism: str
    epsilon: float
    delta: float
    mode: str

    def __post_init__(self) -> None:
        _identifier(self.mechanism, "privacy.mechanism")
        epsilon = check_number(
            self.epsilon, "privacy.epsilon", low=0, error=_field_error("privacy")
        )
        delta = check_number(self.delta, "privacy.delta", low=0, error=_field_error("privacy"))
        if delta >= 1:
            raise ProtocolError(f"privacy.delta must be < 1, got {delta}", field="privacy")
        if self.mode not in PRIVACY_MODES:
            raise ProtocolError(
                f"privacy.mode must be one of {list(PRIVACY_MODES)}, got {self.mode!r}",
                field="privacy",
            )
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "delta", delta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, data: object) -> PrivacyNote:
        keys = {"mechanism", "epsilon", "delta", "mode"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ProtocolError(
                f"privacy must be an object with keys {sorted(keys)}", field="privacy"
            )
        return cls(data["mechanism"], data["epsilon"], data["delta"], data["mode"])


def _privacy(value: object) -> PrivacyNote | None:
    if value is not None and not isinstance(value, PrivacyNote):
        raise ProtocolError(
            f"privacy must be a PrivacyNote or None, got {type(value).__name__}", field="privacy"
        )
    return value


@dataclass(frozen=True)
class StatsReport:
    """Mergeable statistics of a client's local raw columns (never the columns)."""

    task_id: str
    stats: DatasetStats
    privacy: PrivacyNote | None = None
    """How the statistics were noised on the device; None: exact statistics."""

    def __post_init__(self) -> None:
        _identifier(self.task_id, "task_id")
        if not isinstance(self.stats, DatasetStats):
            raise ProtocolError(f"stats must be DatasetStats, got {type(self.stats).__name__}")
        _privacy(self.privacy)

    def to_dict(self) -> dict[str, Any]:
        doc = {**_header("stats_report"), "task_id": self.task_id, "stats": self.stats.to_dict()}
        if self.privacy is not None:
            doc["privacy"] = self.privacy.to_dict()
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatsReport:
        _check_keys(data, "stats_report", {"task_id", "stats"}, {"privacy"})
        if not isinstance(data["stats"], Mapping):
            raise ProtocolError("stats must be a statistics document (an object)", field="stats")
        try:
            stats = DatasetStats.from_dict(data["stats"])
        except FeatureError as exc:
            raise ProtocolError(f"stats: {exc}", field="stats") from exc
        privacy = data.get("privacy")
        note = None if privacy is None else PrivacyNote.from_dict(privacy)
        return cls(task_id=data["task_id"], stats=stats, privacy=note)


@dataclass(frozen=True)
class FeatureBatch:
    """Backbone embeddings ``(n, d)`` float32 with int class ``labels`` ``(n,)``.

    Embeddings are activations of the frozen backbone, not inputs. On the wire they are
    base64 of little-endian float32, row-major, with their shape. A private batch says how
    it was noised (``privacy``); per-class prototypes carry their (noised) support in
    ``counts``, one non-negative integer per row.
    """

    task_id: str
    embeddings: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    privacy: PrivacyNote | None = None
    counts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _identifier(self.task_id, "task_id")
        emb = np.asarray(self.embeddings)
        if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
            raise ProtocolError(
                "embeddings must be a non-empty 2-D float32 array (n, d), "
                f"got dtype {emb.dtype} shape {emb.shape}",
                field="embeddings",
            )
        if emb.size > MAX_FEATURE_VALUES:
            raise ProtocolError(
                f"embeddings hold {emb.size} values, more than {MAX_FEATURE_VALUES}",
                field="embeddings",
            )
        if not np.isfinite(emb).all():
            raise ProtocolError("embeddings hold NaN or Inf values", field="embeddings")
        labels = np.asarray(self.labels)
        if labels.dtype.kind not in "iu" or labels.shape != (emb.shape[0],):
            raise ProtocolError(
                f"labels must be {emb.shape[0]} integer class ids (one per row), "
                f"got dtype {labels.dtype} shape {labels.shape}",
                field="labels",
            )
        if labels.size and labels.min() < 0:
            raise ProtocolError("labels must be >= 0", field="labels")
        _privacy(self.privacy)
        if self.counts is not None:
            if not isinstance(self.counts, tuple | list) or len(self.counts) != emb.shape[0]:
                raise ProtocolError(
                    f"counts must be {emb.shape[0]} integers (one per row)", field="counts"
                )
            counts = tuple(
                check_int(c, "a prototype count", low=0, error=_field_error("counts"))
                for c in self.counts
            )
            object.__setattr__(self, "counts", counts)
        frozen_emb = np.array(emb, dtype=np.float32, order="C", copy=True)
        frozen_labels = labels.astype(np.int64, copy=True)
        frozen_emb.flags.writeable = False
        frozen_labels.flags.writeable = False
        object.__setattr__(self, "embeddings", frozen_emb)
        object.__setattr__(self, "labels", frozen_labels)

    def to_dict(self) -> dict[str, Any]:
        data = self.embeddings.astype("<f4").tobytes()
        doc: dict[str, Any] = {
            **_header("feature_batch"),
            "task_id": self.task_id,
            "embeddings": {
                "dtype": "float32",
                "shape": list(self.embeddings.shape),
                "data": base64.b64encode(data).decode("ascii"),
            },
            "labels": [int(v) for v in self.labels],
        }
        if self.privacy is not None:
            doc["privacy"] = self.privacy.to_dict()
        if self.counts is not None:
            doc["counts"] = list(self.counts)
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureBatch:
        _check_keys(
            data, "feature_batch", {"task_id", "embeddings", "labels"}, {"privacy", "counts"}
        )
        doc = data["embeddings"]
        if not isinstance(doc, Mapping) or set(doc) != {"dtype", "shape", "data"}:
            raise ProtocolError("embeddings must be {dtype, shape, data}", field="embeddings")
        if doc["dtype"] != "float32":
            raise ProtocolError(f"embeddings dtype must be float32, got {doc['dtype']!r}")
        shape = doc["shape"]
        if not (isinstance(shape, list) and len(shape) == 2):
            raise ProtocolError(f"embeddings shape must be [n, d], got {shape!r}")
        rows, width = (
            check_int(v, "an embeddings dimension", low=1, error=_field_error("embeddings"))
            for v in shape
        )
        if rows * width > MAX_FEATURE_VALUES:
            raise ProtocolError(f"embeddings of shape {shape} exceed {MAX_FEATURE_VALUES} values")
        if not isinstance(doc["data"], str):
            raise ProtocolError("embeddings data must be a base64 string", field="embeddings")
        try:
            raw = base64.b64decode(doc["data"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"embeddings data is not base64: {exc}") from exc
        if len(raw) != rows * width * 4:
            raise ProtocolError(
                f"embeddings data has {len(raw)} bytes, shape {shape} needs {rows * width * 4}"
            )
        labels = data["labels"]
        if not isinstance(labels, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in labels
        ):
            raise ProtocolError("labels must be a list of integers", field="labels")
        privacy, counts = data.get("privacy"), data.get("counts")
        if counts is not None and not isinstance(counts, list):
            raise ProtocolError("counts must be a list of integers", field="counts")
        return cls(
            task_id=data["task_id"],
            embeddings=np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(rows, width),
            labels=np.array(labels, dtype=np.int64),
            privacy=None if privacy is None else PrivacyNote.from_dict(privacy),
            counts=None if counts is None else tuple(counts),
        )


# The one codec -------------------------------------------------------------------------------

Reply: TypeAlias = ModelUpdate | EvalReport | StatsReport | FeatureBatch
Message: TypeAlias = Task | Reply

MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType(
    {
        "task": Task,
        "model_update": ModelUpdate,
        "eval_report": EvalReport,
        "stats_report": StatsReport,
        "feature_batch": FeatureBatch,
    }
)
"""Wire ``type`` tag -> message class. Nothing here can carry raw examples."""


def encode_message(message: Message) -> tuple[dict[str, Any], bytes | None]:
    """The JSON-able document of ``message`` and its binary body (a ModelUpdate's delta)."""
    if isinstance(message, ModelUpdate):
        body = message.delta_bytes()
        if type(message).to_dict is ModelUpdate.to_dict:  # the delta encoded once, not twice
            return message._document(body), body
        return message.to_dict(), body  # a subclass's own document (a compressed update's)
    if isinstance(message, Task | EvalReport | StatsReport | FeatureBatch):
        return message.to_dict(), None
    raise ProtocolError(f"not a fedge message: {type(message).__name__}")


def decode_message(
    data: Mapping[str, Any], body: bytes | None = None, *, max_body_bytes: int | None = None
) -> Message:
    """The message a document (and, for a ModelUpdate, its body) describes."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"a message must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}; known: {sorted(MESSAGE_TYPES)}")
    if kind == "model_update":
        if body is None:
            raise ProtocolError("a model_update needs its safetensors body")
        return ModelUpdate.from_dict(data, body, max_bytes=max_body_bytes)
    if body is not None:
        raise ProtocolError(f"a {kind} message has no binary body")
    cls = cast(type[Task | EvalReport | StatsReport | FeatureBatch], MESSAGE_TYPES[kind])
    return cls.from_dict(data)
