"""Summation kernels of the aggregation hot path: no BLAS, a fixed order, stated error bounds.

Every kernel here walks its input in chunks of :data:`CHUNK` elements with numpy ufuncs and
``np.einsum`` only (no ``np.dot``, no BLAS), so the result and its time do not depend on BLAS
or OpenMP thread settings, and the same inputs always give the same bits.

- :func:`sum_of_squares` is the exact-path norm: each square is exact in float64 (a float32
  has 24 significand bits, its square fits in 53) and numpy sums each chunk pairwise, so the
  relative error is at most about ``(log2(n) + 16) * 2**-53``.
- :func:`scale_with_squares` is the aggregation's one pass: the weighted term and the sum of
  squares (``np.einsum`` in float32; relative error at most ``2**-13``) of each chunk while
  it is in cache. Its sum is trusted only when :func:`trustworthy` (no square overflowed,
  none that underflowed matters); otherwise the caller takes the exact path.
- :class:`PairwiseSum` sums a stream of float32 vectors pairwise (Higham, "The accuracy of
  floating point summation", SIAM J. Sci. Comput. 14(4), 1993): a binary counter of partial
  sums, blocks of ``2**depth`` vectors flushed into one float64 vector. Each coordinate's
  computed sum ``S`` of the pushed terms ``t_i`` satisfies
  ``|S - sum(t_i)| <= depth * 2**-24 * sum(|t_i|)`` (to first order; the float64 flushes add
  at most ``n * 2**-53 * sum(|t_i|)``). Memory: ``depth + 1`` float32 vectors and one float64
  vector, whatever the number of terms.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHUNK",
    "FLOAT32_UNIT_ROUNDOFF",
    "PairwiseSum",
    "scale_with_squares",
    "sum_of_squares",
    "trustworthy",
]

CHUNK = 1 << 16
"""Elements per chunk: 256 KiB of float32, so a chunk's passes run in the L2 cache."""
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
"""The unit roundoff ``u`` of float32 (half its machine epsilon)."""

# Below this a float32 sum of squares may have lost squares to underflow (a square under
# 2**-126 is subnormal): take the exact path. Above it, what underflowed is under
# n * 2**-126, negligible (relative 2**-66 per element) next to the sum.
_FAST_SQUARES_FLOOR = 2.0**-60

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]


def sum_of_squares(vector: Float32Array) -> float:
    """``sum(x**2)`` of a 1-D float32 vector in float64: exact squares, pairwise sums."""
    total = 0.0
    if vector.size == 0:
        return total
    buffer = np.empty(min(vector.size, CHUNK), np.float64)
    for start in range(0, vector.size, CHUNK):
        piece = vector[start : start + CHUNK]
        squares = buffer[: piece.size]
        np.multiply(piece, piece, out=squares, dtype=np.float64)
        total += float(np.add.reduce(squares))
    return total


def scale_with_squares(
    vector: Float32Array, factor: np.float32, out: Float32Array, *, max_squares: float
) -> float:
    """``out[:] = factor * vector`` and the sum of squares of ``vector``, chunk by chunk, both
    passes over a chunk while it is in cache. The squares are summed in float32 per chunk
    (``np.einsum``, not BLAS) and across chunks in float64.

    Stops early and returns ``inf`` once the sum would pass ``max_squares`` or is not finite
    (NaN, Inf, an overflowed square), before scaling a chunk that could overflow: ``out`` is
    then incomplete. Otherwise the relative error of the sum is at most
    ``(CHUNK - 1) * 2**-24`` whatever the order of the float32 additions (positive terms),
    and with numpy 1.25's einsum (4-lane accumulators over blocks of 8192) at most about
    ``2**-13``, which :func:`trustworthy` sums hold."""
    if vector.size <= CHUNK:  # most tensors: one chunk, no slicing
        total = float(np.einsum("i,i->", vector, vector))
        if not total <= max_squares:
            return math.inf
        np.multiply(vector, factor, out=out)
        return total
    total = 0.0
    for start in range(0, vector.size, CHUNK):
        piece = vector[start : start + CHUNK]
        total += float(np.einsum("i,i->", piece, piece))
        if not total <= max_squares:
            return math.inf
        np.multiply(piece, factor, out=out[start : start + piece.size])
    return total


def trustworthy(squares: float) -> bool:
    """Whether a sum of :func:`scale_with_squares` holds its stated error bound: finite (no
    NaN, Inf or overflowed square) and large enough that no underflowed square matters."""
    return math.isfinite(squares) and squares >= _FAST_SQUARES_FLOOR


class PairwiseSum:
    """The pairwise sum of float32 vectors of ``size`` elements, pushed one at a time.

    :meth:`scratch` lends a vector to write the next term into; :meth:`push` adopts it (or
    :meth:`give_back` returns it unused); :meth:`total` is the sum so far in float64. Blocks
    of ``2**depth`` terms are summed in float32 and flushed into the float64 total, which
    bounds both the memory (``depth + 1`` float32 vectors) and the error (see the module).
    """

    def __init__(self, size: int, *, depth: int = 4) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.size = size
        self.depth = depth
        self._levels: list[tuple[int, Float32Array]] = []  # (terms, partial), terms decreasing
        self._spare: list[Float32Array] = []
        self._flushed = np.zeros(size, np.float64)
        self._count = 0

    @property
    def count(self) -> int:
        """Terms pushed so far."""
        return self._count

    def scratch(self) -> Float32Array:
        """A float32 vector of ``size`` elements to write the next term into."""
        return self._spare.pop() if self._spare else np.empty(self.size, np.float32)

    def give_back(self, vector: Float32Array) -> None:
        """Return a vector from :meth:`scratch` that was not pushed."""
        self._spare.append(vector)

    def push(self, term: Float32Array) -> None:
        """Add ``term`` (a vector from :meth:`scratch`, now owned by this sum)."""
        terms = 1
        while self._levels and self._levels[-1][0] == terms:
            _, partial = self._levels.pop()
            np.add(partial, term, out=partial)
            self._spare.append(term)
            term, terms = partial, 2 * terms
        if terms == 1 << self.depth:
            np.add(self._flushed, term, out=self._flushed)
            self._spare.append(term)
        else:
            self._levels.append((terms, term))
        self._count += 1

    def total(self) -> Float64Array:
        """The sum of every pushed term, in float64 (a new array)."""
        total = self._flushed.copy()
        for _, partial in self._levels:
            np.add(total, partial, out=total)
        return total
