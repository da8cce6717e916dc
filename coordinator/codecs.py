"""Update bodies as the coordinator receives and stores them: one place that turns a body
into the dense delta, whatever the round's codec.

A round's ``compression`` (:class:`~coordinator.config.RoundConfig`) names the codec of
every update it accepts: ``none`` is the safetensors delta, ``q8`` and ``topk`` are
:mod:`fedge.compression` payloads. Intake decodes each body against the round's base
weights before it stores it (so a malformed payload is refused and nothing is kept), and
the round's aggregation decodes each stored body again, one at a time, in its streaming
pass. The stored artifact is the body as received: its sha256 is what the receipt names.
"""

from __future__ import annotations

from coordinator.config import COMPRESSIONS
from coordinator.errors import CoordinatorError
from fedge.compression import decode_into, read_header
from fedge.weights import Weights

__all__ = ["CODEC_HEADER", "COMPRESSED_MEDIA_TYPE", "check_codec", "decode_update"]

COMPRESSED_MEDIA_TYPE = "application/x-fedge-compressed"
"""The Content-Type of a compressed update upload (a plain one is application/octet-stream)."""
CODEC_HEADER = "X-Fedge-Codec"
"""The upload header naming a compressed body's codec (``q8`` or ``topk``)."""


def check_codec(codec: object, expected: str) -> str:
    """``codec`` when it is the round's ``expected`` one; otherwise a 400 that says both
    (``unknown_codec``, ``codec_mismatch``)."""
    if codec not in COMPRESSIONS:
        raise CoordinatorError(
            f"unknown update codec {codec!r}; expected one of {list(COMPRESSIONS)}",
            code="unknown_codec",
        )
    if codec != expected:
        raise CoordinatorError(
            f"this round takes {expected!r} updates, the upload is {codec!r}",
            code="codec_mismatch",
        )
    return str(codec)


def decode_update(body: bytes, codec: str, reference: Weights, *, max_bytes: int) -> Weights:
    """The dense float32 delta that ``body`` (encoded with ``codec``) carries, checked
    against ``reference`` (names, shapes, dtype, finiteness). O(model size).

    A body that does not decode raises :class:`~fedge.errors.WeightsFormatError` (400); a
    tensor that differs from the reference, the matching
    :class:`~fedge.errors.WeightsError` (422); a compressed payload whose own header names
    another codec, a 400 ``codec_mismatch``.
    """
    if codec == "none":
        delta = Weights.from_bytes(body, max_bytes=max_bytes)
    else:
        inside = read_header(body).codec
        if inside != codec:
            raise CoordinatorError(
                f"the upload says codec {codec!r} but its payload is {inside!r}",
                code="codec_mismatch",
            )
        delta = decode_into(body, reference)
    delta.validate_against(reference)
    return delta
