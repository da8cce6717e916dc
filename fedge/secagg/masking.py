"""Quantization to the ring Z_(2^b) and the masks that hide one client's vector.

A client's update cannot be masked as floats: masks cancel exactly only in modular integer
arithmetic (Bonawitz et al., CCS 2017; Bell et al., CCS 2020). So the update is

1. clipped to ``[-c, c]`` per coordinate and multiplied by the client's weight
   ``w = min(n_examples, example_cap) / example_cap`` (in ``[0, 1]``, so still in ``[-c, c]``);
2. mapped to ``[0, L]`` with ``L = 2^q - 1`` (``q = quantization_bits``) by
   ``y = (v + c) / (2c) * L`` and rounded stochastically: up with probability
   ``y - floor(y)``, so the integer's expectation is ``y`` (unbiased);
3. followed by one exact integer coordinate, the capped example count, so FedAvg's
   denominator is summed inside the same secure vector;
4. masked by adding, mod ``2^b``, the self mask ``PRG(b_i)`` and for each neighbour ``j``
   ``+PRG(s_ij)`` if ``i < j`` and ``-PRG(s_ij)`` if ``i > j``. The pairwise masks cancel in
   the sum over survivors; the server removes the rest once it has recovered the seeds.

The PRG is SHAKE-256 (an extendable-output function from the standard library) keyed by
the 32-byte seed. Arithmetic is in ``uint64`` with ``b <= 62`` so no addition overflows.
On the wire each value mod ``2^b`` takes ``ceil(b / 8)`` little-endian bytes
(:func:`pack_values`, :func:`unpack_values`, :func:`masked_input_bytes`).

Error bound. Stochastic rounding moves each client's coordinate by less than one step,
``|e_i| < 1``, i.e. less than ``2c / L`` after dequantization. For the sum over ``m``
clients, ``S = sum_i q_i * 2c / L - m c`` estimates ``sum_i w_i v_i`` with
``|error| < m * 2c / L`` per coordinate, as long as ``m * L < 2^b`` and
``m * example_cap < 2^b`` (no wrap-around; checked). The FedAvg mean
``example_cap * S / N`` (``N`` = summed counts) is then within
``example_cap * m * 2c / (L * N)`` of ``sum_i n_i v_i / N`` for the clipped ``v_i``
(plus float64 rounding, orders of magnitude smaller).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedge.errors import SecAggError

__all__ = [
    "MaskingConfig",
    "SecureSum",
    "decode_sum",
    "encode_input",
    "masked_input_bytes",
    "pack_values",
    "prg_mask",
    "unpack_values",
    "value_bytes",
]

U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class MaskingConfig:
    """How a float vector becomes an integer vector mod ``2^modulus_bits``."""

    dimension: int
    clip: float
    example_cap: int
    modulus_bits: int = 32
    quantization_bits: int = 16

    def __post_init__(self) -> None:
        if self.dimension < 1:
            raise SecAggError(f"dimension must be >= 1, got {self.dimension}")
        if not (self.clip > 0 and np.isfinite(self.clip)):
            raise SecAggError(f"clip must be a positive finite number, got {self.clip}")
        if not 8 <= self.modulus_bits <= 62:
            raise SecAggError(f"modulus_bits must be in [8, 62], got {self.modulus_bits}")
        if not 1 <= self.quantization_bits < self.modulus_bits:
            raise SecAggError(
                f"quantization_bits must be in [1, {self.modulus_bits - 1}], "
                f"got {self.quantization_bits}"
            )
        if not 1 <= self.example_cap < 2**self.modulus_bits:
            raise SecAggError(f"example_cap must be in [1, 2^modulus_bits), got {self.example_cap}")

    @property
    def levels(self) -> int:
        """``L = 2^q - 1``: the largest quantized value of one client's coordinate."""
        return (1 << self.quantization_bits) - 1

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits

    def max_clients(self) -> int:
        """How many clients can be summed before a coordinate wraps around the modulus."""
        return (self.modulus - 1) // max(self.levels, self.example_cap)

    def error_bound(self, num_clients: int) -> float:
        """The bound on each coordinate of the dequantized sum: ``m * 2c / L``."""
        return num_clients * 2.0 * self.clip / self.levels


@dataclass(frozen=True)
class SecureSum:
    """The unmasked, dequantized sum of a round's secure vectors."""

    weighted_sum: npt.NDArray[np.float64]
    """``sum_i min(n_i, cap) * clip(v_i)``, within ``example_cap * error_bound(m)``."""
    num_examples: int
    """``sum_i min(n_i, cap)``, exact."""
    num_clients: int

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        """The FedAvg (example-weighted) mean of the clipped vectors."""
        if self.num_examples == 0:
            raise SecAggError("the secure sum holds no examples: the mean is undefined")
        return self.weighted_sum / self.num_examples


def encode_input(
    vector: npt.ArrayLike, num_examples: int, config: MaskingConfig, *, rng: np.random.Generator
) -> U64:
    """The unmasked integer vector (length ``dimension + 1``) of one client's update."""
    values = np.asarray(vector, dtype=np.float64)
    if values.shape != (config.dimension,):
        raise SecAggError(f"the update must have shape ({config.dimension},), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise SecAggError("the update holds NaN or infinite values")
    if num_examples < 0:
        raise SecAggError(f"num_examples must be >= 0, got {num_examples}")
    count = min(num_examples, config.example_cap)
    weight = count / config.example_cap
    c = config.clip
    scaled = (np.clip(values, -c, c) * weight + c) / (2.0 * c) * config.levels
    scaled = np.clip(scaled, 0.0, float(config.levels))
    low = np.floor(scaled)
    rounded = low + (rng.random(scaled.shape) < (scaled - low))
    out = np.empty(config.dimension + 1, dtype=np.uint64)
    out[:-1] = rounded.astype(np.uint64)
    out[-1] = count
    return out


def decode_sum(total: U64, num_clients: int, config: MaskingConfig) -> SecureSum:
    """Dequantize the unmasked sum of ``num_clients`` encoded inputs."""
    if total.shape != (config.dimension + 1,):
        raise SecAggError(f"the sum must have shape ({config.dimension + 1},), got {total.shape}")
    if not 1 <= num_clients <= config.max_clients():
        raise SecAggError(
            f"a sum of {num_clients} clients is out of range: the modulus 2^{config.modulus_bits} "
            f"holds at most {config.max_clients()}"
        )
    c = config.clip
    step = 2.0 * c / config.levels
    mean_sum = total[:-1].astype(np.float64) * step - num_clients * c
    return SecureSum(
        weighted_sum=mean_sum * config.example_cap,
        num_examples=int(total[-1]),
        num_clients=num_clients,
    )


def prg_mask(seed: bytes, length: int, modulus_bits: int) -> U64:
    """``length`` pseudo-random integers mod ``2^modulus_bits`` expanded from ``seed``."""
    if len(seed) != 32:
        raise SecAggError(f"a mask seed is 32 bytes, got {len(seed)}")
    stream = hashlib.shake_256(b"fedge-secagg mask\x00" + seed).digest(8 * length)
    words = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    return words & np.uint64(2**modulus_bits - 1)


def add_mod(a: U64, b: U64, modulus_bits: int) -> U64:
    """``(a + b) mod 2^b`` for values already below ``2^b`` (``b <= 62``: no overflow)."""
    return (a + b) & np.uint64(2**modulus_bits - 1)


def sub_mod(a: U64, b: U64, modulus_bits: int) -> U64:
    """``(a - b) mod 2^b`` for values already below ``2^b``."""
    modulus = np.uint64(2**modulus_bits)
    return (a + (modulus - b)) & np.uint64(2**modulus_bits - 1)


def value_bytes(modulus_bits: int) -> int:
    """The bytes one value mod ``2^modulus_bits`` takes on the wire: ``ceil(b / 8)``."""
    return (modulus_bits + 7) // 8


def masked_input_bytes(config: MaskingConfig) -> int:
    """The exact size of one client's masked input: ``dimension + 1`` packed values."""
    return (config.dimension + 1) * value_bytes(config.modulus_bits)


def pack_values(values: U64, *, modulus_bits: int) -> bytes:
    """``values`` (each below ``2^modulus_bits``) as ``ceil(b / 8)`` little-endian bytes each."""
    flat = np.asarray(values)
    if flat.ndim != 1 or flat.dtype != np.uint64:
        raise SecAggError(f"pack a 1-d uint64 vector, got {flat.ndim}-d {flat.dtype}")
    if flat.size and int(flat.max()) >> modulus_bits:
        raise SecAggError(f"a value to pack is not reduced mod 2^{modulus_bits}")
    octets = np.ascontiguousarray(flat, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return octets[:, : value_bytes(modulus_bits)].tobytes()


def unpack_values(data: bytes, *, length: int, modulus_bits: int) -> U64:
    """The inverse of :func:`pack_values`; SecAggError unless ``data`` holds exactly
    ``length`` packed values, each below ``2^modulus_bits``."""
    width = value_bytes(modulus_bits)
    if len(data) != length * width:
        raise SecAggError(
            f"the packed vector is {len(data)} bytes, expected {length * width} "
            f"({length} values of {width} bytes)"
        )
    octets = np.zeros((length, 8), dtype=np.uint8)
    octets[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(length, width)
    values = octets.view("<u8").reshape(length).astype(np.uint64)
    if length and int(values.max()) >> modulus_bits:
        raise SecAggError(f"the packed vector holds a value not reduced mod 2^{modulus_bits}")
    return values
