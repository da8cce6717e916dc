"""Compressing a model update on the device, as the round's train task asks.

A compressed round's train task carries ``compression`` in ``config.options``: ``q8``
(with ``compression_block``, values per quantization block, when set) or ``topk`` (with
``compression_fraction``). :func:`compress_update` turns the handler's
:class:`~fedge.messages.ModelUpdate` into a :class:`CompressedUpdate` whose body is the
:mod:`fedge.compression` payload; a task without the option keeps the plain update.

- ``q8``: :class:`~fedge.compression.Quantizer8Bit`, unbiased stochastic rounding drawn
  from the client's generator.
- ``topk``: :meth:`fedge.compression.TopK.step` with error feedback: what a round does not
  send stays in a per-device residual (a :class:`FeedbackStore`) and is added to the next
  round's delta. The daemon keeps it in its state directory (:class:`FileFeedbackStore`,
  written atomically, mode 0600), so it survives a restart. A residual whose tensors or
  shapes differ from the new delta (another model lineage) starts afresh at zero.

The residual is saved before the reply is queued: a crash between the two loses that
round's top-k values (they left the residual and never reached the outbox), which error
feedback absorbs like any update that does not arrive.

On the wire (:func:`~edge_client.transport.reply_request`) a compressed update is
``Content-Type: application/x-fedge-compressed`` with ``X-Fedge-Codec`` naming the codec.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedge.compression import (
    CODEC_NAMES,
    EncodedUpdate,
    ErrorFeedback,
    Quantizer8Bit,
    TopK,
    decode_into,
)
from fedge.errors import ConfigError, ProtocolError, WeightsError
from fedge.fileio import atomic_write_bytes
from fedge.messages import ModelUpdate, Task
from fedge.validation import check_fraction, check_int
from fedge.weights import Weights

__all__ = [
    "CODEC_HEADER",
    "COMPRESSED_MEDIA_TYPE",
    "DEFAULT_TOPK_FRACTION",
    "CompressedUpdate",
    "FeedbackStore",
    "FileFeedbackStore",
    "MemoryFeedbackStore",
    "compress_update",
]

logger = logging.getLogger(__name__)

COMPRESSED_MEDIA_TYPE = "application/x-fedge-compressed"
"""The Content-Type of a compressed update upload."""
CODEC_HEADER = "X-Fedge-Codec"
"""The upload header that names a compressed body's codec."""
DEFAULT_TOPK_FRACTION = 0.01
"""The top-k fraction when a ``topk`` task names none (the coordinator always does)."""
_FEEDBACK_FILE = "error_feedback.safetensors"


@dataclass(frozen=True)
class CompressedUpdate(ModelUpdate):
    """A :class:`~fedge.messages.ModelUpdate` whose body is a compressed ``payload``.

    ``delta`` is what the coordinator decodes from ``payload`` (not the trained delta), so
    everything that reads a ModelUpdate sees what was sent; :meth:`delta_bytes` is the
    payload and :meth:`to_dict` adds ``codec``.
    """

    codec: str
    payload: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.codec not in CODEC_NAMES:
            raise ProtocolError(
                f"codec must be one of {list(CODEC_NAMES)}, got {self.codec!r}", field="codec"
            )
        if not isinstance(self.payload, bytes):
            raise ProtocolError("payload must be bytes", field="payload")

    def delta_bytes(self) -> bytes:
        return self.payload

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "codec": self.codec}


class FeedbackStore(Protocol):
    """Where a device keeps its top-k error-feedback residual between rounds."""

    def load(self) -> ErrorFeedback | None: ...

    def save(self, state: ErrorFeedback) -> None: ...


class MemoryFeedbackStore:
    """A residual kept in memory (one client context, e.g. in the simulation)."""

    def __init__(self) -> None:
        self._state: ErrorFeedback | None = None

    def load(self) -> ErrorFeedback | None:
        return self._state

    def save(self, state: ErrorFeedback) -> None:
        self._state = state


class FileFeedbackStore:
    """The residual as one safetensors file in ``directory`` (created on first save),
    replaced atomically and readable by its owner only; an unreadable file is logged and
    treated as no residual."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        return self.directory / _FEEDBACK_FILE

    def load(self) -> ErrorFeedback | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("ignoring the unreadable error-feedback state %s: %s", self.path, exc)
            return None
        try:
            return ErrorFeedback.from_bytes(data)
        except WeightsError as exc:
            logger.warning("ignoring the corrupt error-feedback state %s: %s", self.path, exc)
            return None

    def save(self, state: ErrorFeedback) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, state.to_bytes(), mode=0o600)


def compress_update(
    task: Task, update: ModelUpdate, feedback: FeedbackStore, rng: np.random.Generator
) -> ModelUpdate:
    """``update`` encoded with the codec ``task`` asks for (the update itself when none,
    and in a secure round).

    ``rng`` draws q8's stochastic rounding; ``feedback`` holds the top-k residual, read
    and replaced here. An unknown codec or a bad option raises ConfigError.
    """
    options = task.config.options
    codec = options.get("compression", "none")
    if codec == "none" or options.get("secagg") is True:
        return update  # a secure round's field quantization is its only codec
    if codec == "q8":
        block = options.get("compression_block")
        if block is not None:
            block = check_int(block, "option compression_block", low=1)
        encoded = Quantizer8Bit(block_size=block).encode(update.delta, rng=rng)
    elif codec == "topk":
        fraction = check_fraction(
            options.get("compression_fraction", DEFAULT_TOPK_FRACTION),
            "option compression_fraction",
            zero_ok=False,
            one_ok=True,
        )
        encoded = _topk(TopK(fraction), update.delta, feedback)
    else:
        raise ConfigError(
            f"task {task.task_id} asks for the update codec {codec!r}; this device knows "
            f"{['none', *CODEC_NAMES]}"
        )
    logger.debug(
        "task %s: %s update of %d bytes (%.1fx smaller than float32)",
        task.task_id,
        encoded.codec,
        encoded.payload_bytes,
        encoded.compression_ratio,
    )
    return CompressedUpdate(
        task_id=update.task_id,
        round_id=update.round_id,
        num_examples=update.num_examples,
        metrics=update.metrics,
        delta=decode_into(encoded.payload, update.delta),
        codec=encoded.codec,
        payload=encoded.payload,
    )


def _topk(topk: TopK, delta: Weights, feedback: FeedbackStore) -> EncodedUpdate:
    state = feedback.load()
    if state is None or not _fits(state.residual, delta):
        if state is not None:
            logger.info("the model's tensors changed: the error-feedback residual starts afresh")
        state = ErrorFeedback.zeros(delta)
    encoded, new_state = topk.step(state, delta)
    feedback.save(new_state)
    return encoded


def _fits(residual: Mapping[str, Any], delta: Weights) -> bool:
    return list(residual) == list(delta.names) and all(
        residual[name].shape == delta[name].shape for name in delta.names
    )
