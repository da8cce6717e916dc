"""Update intake checks that need no state: the body, the tensors, the norm, the counts.

The stateful checks (round open, client assigned, task, duplicates, idempotency) live in
:class:`~coordinator.service.CoordinatorService`, which calls :func:`validate_update` and
records every failure with its code. Each check raises an error whose ``code`` names it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from coordinator.codecs import check_codec, decode_update
from coordinator.config import ROUND_LIMITS, RoundConfig
from coordinator.errors import CoordinatorError, PayloadTooLargeError, UpdateRejectedError
from fedge.errors import WeightsFormatError
from fedge.messages import ModelUpdate
from fedge.weights import Weights

__all__ = [
    "MAX_EXAMPLES",
    "METRIC_BOUND",
    "UpdateReceipt",
    "UpdateSubmission",
    "check_idempotency_key",
    "check_metric_bounds",
    "validate_update",
]

METRIC_BOUND = 1e9
"""The largest magnitude a client-sent metric may have: weighted by at most
:data:`MAX_EXAMPLES` examples and summed over every client of a round it stays far from
float64's overflow."""
MAX_EXAMPLES = int(ROUND_LIMITS["max_examples"])
"""The largest example count any client message may carry (a round's ``max_examples`` is
at most this; an evaluation without a task limit is held to it)."""

_KEY = re.compile(r"[A-Za-z0-9._:-]{8,128}")


@dataclass(frozen=True)
class UpdateSubmission:
    """What a client sends with an update, transport-independent. ``body`` is the delta
    encoded with ``codec``: ``none`` safetensors, ``q8``/``topk`` a
    :mod:`fedge.compression` payload (the round's ``compression`` decides which)."""

    round_id: int
    task_id: str
    num_examples: int
    idempotency_key: str
    body: bytes
    metrics: Mapping[str, float] = field(default_factory=dict)
    codec: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))


@dataclass(frozen=True)
class UpdateReceipt:
    """The acknowledgement of an accepted (or, ``duplicate``, already accepted) update."""

    round_id: int
    client_id: str
    task_id: str
    sha256: str
    num_examples: int
    received_at: float
    duplicate: bool = False


def check_idempotency_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise CoordinatorError(
            "missing Idempotency-Key: every upload needs a client-chosen key so that a retry "
            "is counted once",
            code="missing_idempotency_key",
        )
    if not _KEY.fullmatch(key):
        raise CoordinatorError(
            "Idempotency-Key must be 8-128 characters of letters, digits and '._:-'",
            code="invalid_idempotency_key",
        )
    return key


def _fraction_metric(name: str) -> bool:
    return name.lower().endswith("accuracy")


def check_metric_bounds(
    metrics: Mapping[str, object], what: str, error: Callable[[str], Exception]
) -> None:
    """Each finite number in ``metrics`` has magnitude at most :data:`METRIC_BOUND`, and an
    accuracy (a name ending in ``accuracy``) lies in [0, 1]; raises ``error(message)``.
    Values that are not finite numbers are left to the message's own checks."""
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        number = float(value)
        if not math.isfinite(number):
            continue  # not a number JSON can carry: the message's own check names it
        if abs(number) > METRIC_BOUND:
            raise error(
                f"{what}[{name!r}] must be a finite number of magnitude at most "
                f"{METRIC_BOUND:g}, got {value!r}"
            )
        if _fraction_metric(str(name)) and not 0.0 <= number <= 1.0:
            raise error(f"{what}[{name!r}] is an accuracy and must be in [0, 1], got {value!r}")


def _metrics_error(message: str) -> Exception:
    return UpdateRejectedError(message, code="invalid_metrics")


def validate_update(
    submission: UpdateSubmission,
    *,
    reference: Weights,
    config: RoundConfig,
    max_bytes: int,
) -> ModelUpdate:
    """The typed update if every stateless check passes; raises the first failure.

    Order: example count, metric bounds, the codec (the round's ``compression``), body
    size, decoding (:func:`coordinator.codecs.decode_update`: safetensors float32 only, or
    a compressed payload decoded against ``reference``), tensor names/dtypes/shapes against
    ``reference``, finiteness, then the L2 norm bound of the decoded delta.
    """
    count = submission.num_examples
    if (
        isinstance(count, bool)
        or not isinstance(count, int)
        or not 1 <= count <= config.max_examples
    ):
        raise UpdateRejectedError(
            f"num_examples must be an integer in 1..{config.max_examples}, got {count!r}",
            code="invalid_num_examples",
        )
    if isinstance(submission.metrics, Mapping):
        check_metric_bounds(submission.metrics, "metrics", _metrics_error)
    codec = check_codec(submission.codec, config.compression)
    size = len(submission.body)
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"the update body is {size} bytes, over the {max_bytes}-byte limit"
        )
    if size == 0:
        raise WeightsFormatError("the update body is empty; send the encoded delta")
    delta = decode_update(submission.body, codec, reference, max_bytes=max_bytes)
    norm = delta.l2_norm()
    if norm > config.norm_bound:
        raise UpdateRejectedError(
            f"the update's L2 norm {norm:.6g} exceeds the bound {config.norm_bound:g}",
            code="norm_exceeded",
        )
    return ModelUpdate(
        task_id=submission.task_id,
        round_id=submission.round_id,
        num_examples=count,
        metrics=submission.metrics,
        delta=delta,
    )
