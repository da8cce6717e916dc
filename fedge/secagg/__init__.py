"""Secure aggregation (SecAgg+): the server learns the sum of the updates, not one of them.

Bell et al., CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
over the protocol of Bonawitz et al., CCS 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning". Pure primitives and in-memory step functions:
Shamir sharing (:mod:`~fedge.secagg.shamir`), X25519/HKDF/ChaCha20-Poly1305
(:mod:`~fedge.secagg.keys`, ``cryptography`` imported lazily), the k-regular graph
(:mod:`~fedge.secagg.graph`), quantization and masks (:mod:`~fedge.secagg.masking`),
the four stages (:mod:`~fedge.secagg.protocol`) and their JSON codec
(:mod:`~fedge.secagg.codec`).
"""

from fedge.secagg.codec import (
    SECAGG_MESSAGE_TYPES,
    SecAggMessage,
    decode_secagg,
    encode_secagg,
    server_state_from_dict,
    server_state_to_dict,
)
from fedge.secagg.graph import build_graph, default_degree, default_threshold
from fedge.secagg.masking import (
    MaskingConfig,
    SecureSum,
    decode_sum,
    encode_input,
    masked_input_bytes,
    pack_values,
    prg_mask,
    unpack_values,
    value_bytes,
)
from fedge.secagg.protocol import (
    AdvertiseKeys,
    ClientState,
    KeyRoster,
    MaskedInput,
    ServerState,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.secagg.shamir import combine_shares, split_secret

__all__ = [
    "SECAGG_MESSAGE_TYPES",
    "AdvertiseKeys",
    "ClientState",
    "KeyRoster",
    "MaskedInput",
    "MaskingConfig",
    "SecAggMessage",
    "SecureSum",
    "ServerState",
    "ShareDelivery",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "build_graph",
    "combine_shares",
    "decode_secagg",
    "decode_sum",
    "default_degree",
    "default_threshold",
    "encode_input",
    "encode_secagg",
    "masked_input_bytes",
    "pack_values",
    "prg_mask",
    "server_state_from_dict",
    "server_state_to_dict",
    "split_secret",
    "unpack_values",
    "value_bytes",
]
