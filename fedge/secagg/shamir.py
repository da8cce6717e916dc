"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

SecAgg (Bonawitz et al., CCS 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning") and SecAgg+ (Bell et al., CCS 2020, "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead") share each client's self-mask seed and pairwise mask key
among its neighbours so that the server can remove the masks of the sum, and only of the
sum. A secret is the constant term of a random polynomial of degree ``threshold - 1``; the
share of the holder at ``x`` is the polynomial's value there. Any ``threshold`` shares
give the secret back by Lagrange interpolation at 0; fewer say nothing about it.

2^521 - 1 is a Mersenne prime, so every 256-bit secret is a field element. The random
coefficients come from the operating system's generator (:mod:`secrets`): a seeded
``numpy`` generator would make the shares predictable.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from fedge.errors import SecAggError

__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "combine_shares", "split_secret"]

PRIME = 2**521 - 1
"""The field's modulus (a Mersenne prime larger than any 32-byte secret)."""

SECRET_BYTES = 32
"""The length of a secret: an X25519 private key or a mask seed."""

SHARE_BYTES = 66
"""The length of one encoded share: a field element, big-endian (521 bits fit in 66 bytes)."""


def split_secret(secret: bytes, *, threshold: int, holders: Iterable[int]) -> dict[int, bytes]:
    """Split ``secret`` into one share per holder; any ``threshold`` of them recover it.

    ``holders`` are the share indices (the x coordinates): distinct integers >= 1.
    """
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    xs = list(holders)
    if len(set(xs)) != len(xs) or any(x < 1 or x >= PRIME for x in xs):
        raise SecAggError(f"share holders must be distinct integers >= 1, got {xs}")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(
            f"threshold must be in [1, {len(xs)}] for {len(xs)} holders, got {threshold}"
        )
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in xs}


def combine_shares(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret behind ``shares`` (holder index -> encoded share).

    Raises :class:`~fedge.errors.SecAggError` with fewer than ``threshold`` shares, a
    malformed share, or shares beyond the first ``threshold`` that do not lie on the same
    polynomial (a tampered or mixed-up share).
    """
    if threshold < 1:
        raise SecAggError(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise SecAggError(
            f"{len(shares)} shares cannot recover a secret shared with threshold {threshold}"
        )
    points: list[tuple[int, int]] = []
    for x, encoded in sorted(shares.items()):
        if len(encoded) != SHARE_BYTES:
            raise SecAggError(f"share {x} must be {SHARE_BYTES} bytes, got {len(encoded)}")
        y = int.from_bytes(encoded, "big")
        if not 1 <= x < PRIME or y >= PRIME:
            raise SecAggError(f"share {x} is not a point of the field")
        points.append((x, y))
    base, extra = points[:threshold], points[threshold:]
    for x, y in extra:
        if _interpolate(base, x) != y:
            raise SecAggError(f"share {x} is inconsistent with the others")
    value = _interpolate(base, 0)
    if value >= 1 << (8 * SECRET_BYTES):
        raise SecAggError("the shares are inconsistent: they do not recover a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result


def _interpolate(points: list[tuple[int, int]], at: int) -> int:
    """The value at ``at`` of the polynomial of degree len(points) - 1 through ``points``."""
    total = 0
    for j, (xj, yj) in enumerate(points):
        numerator, denominator = 1, 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                numerator = numerator * (at - xm) % PRIME
                denominator = denominator * (xj - xm) % PRIME
        total = (total + yj * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total
