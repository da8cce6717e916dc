"""SecAgg+ as pure step functions: the server learns the sum of the updates, not one of them.

The four stages of Bonawitz et al. (CCS 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning") over the sparse graph of Bell et al. (CCS 2020,
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"):

1. advertise keys   client -> :class:`AdvertiseKeys` (two X25519 public keys);
                    server -> one :class:`KeyRoster` per client (its neighbours' keys);
2. share keys       client -> :class:`ShareKeys` (per neighbour, a sealed bundle holding a
                    Shamir share of its self-mask seed and of its mask private key);
                    server -> one :class:`ShareDelivery` per client (the bundles sent to it);
3. masked input     client -> :class:`MaskedInput` (its encoded update plus self and
                    pairwise masks, mod 2^b), added to a running sum as it arrives
                    (``accept_masked``); server -> one :class:`UnmaskRequest` per
                    survivor (which neighbours survived, which dropped);
4. unmasking        client -> :class:`UnmaskResponse` (self-seed shares of surviving
                    neighbours, mask-key shares of dropped ones); server -> the
                    :class:`~fedge.secagg.masking.SecureSum`.

An honest client refuses (:class:`~fedge.errors.SecAggError`) a roster whose threshold is
not a strict majority of its neighbourhood, a request naming a peer both survived and
dropped (or contradicting an earlier request), and a request with fewer than ``threshold``
surviving neighbours. Every step takes a state and inputs and returns a new state and
outputs; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedge.errors import SecAggError
from fedge.secagg.graph import build_graph, default_degree, default_threshold
from fedge.secagg.keys import KeyPair, agree, generate_key_pair, open_sealed, public_key_of, seal
from fedge.secagg.masking import (
    MaskingConfig,
    SecureSum,
    add_mod,
    decode_sum,
    encode_input,
    pack_values,
    prg_mask,
    sub_mod,
    unpack_values,
)
from fedge.secagg.shamir import SHARE_BYTES, combine_shares, split_secret
from fedge.validation import check_int

__all__ = [
    "AdvertiseKeys",
    "ClientState",
    "KeyRoster",
    "MaskedInput",
    "ServerState",
    "ShareDelivery",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
]

_SHARE_PURPOSE = b"fedge-secagg share encryption"
_MASK_PURPOSE = b"fedge-secagg pairwise mask"
_IDS = struct.Struct(">II")
_MAX_ID = 2**32 - 2


# ---- messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseKeys:
    """A client's two X25519 public keys: one for share encryption, one for masking."""

    client_id: int
    encryption_key: bytes
    mask_key: bytes


@dataclass(frozen=True)
class KeyRoster:
    """What the server tells a client after stage 1: its neighbours and the threshold."""

    client_id: int
    threshold: int
    neighbours: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True)
class ShareKeys:
    """A client's sealed share bundles, by receiving neighbour."""

    client_id: int
    bundles: Mapping[int, bytes]


@dataclass(frozen=True)
class ShareDelivery:
    """The sealed bundles addressed to one client, by sender."""

    client_id: int
    bundles: Mapping[int, bytes]


@dataclass(frozen=True)
class MaskedInput:
    """A client's masked vector: ``dimension + 1`` values mod ``2^b``, each packed in
    ``ceil(b / 8)`` little-endian bytes (:func:`~fedge.secagg.masking.pack_values`)."""

    client_id: int
    data: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Which of a client's neighbours survived (send their self-seed shares) or dropped
    (send their mask-key shares)."""

    client_id: int
    survivors: frozenset[int]
    dropped: frozenset[int]


@dataclass(frozen=True)
class UnmaskResponse:
    """Shares a client reveals: self-seed shares and mask-key shares, by peer."""

    client_id: int
    seed_shares: Mapping[int, bytes]
    key_shares: Mapping[int, bytes]


# ---- client ----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ClientState:
    """One client's protocol state. Holds secrets: the repr shows only the id and stage."""

    client_id: int
    config: MaskingConfig
    encryption_keys: KeyPair
    mask_keys: KeyPair
    self_seed: bytes
    stage: str = "advertise"
    threshold: int = 0
    neighbours: Mapping[int, AdvertiseKeys] = field(default_factory=dict)
    held_shares: Mapping[int, tuple[bytes, bytes]] = field(default_factory=dict)
    revealed_seeds: frozenset[int] = frozenset()
    revealed_keys: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        return f"ClientState(client_id={self.client_id}, stage={self.stage!r})"

    @classmethod
    def create(cls, client_id: int, config: MaskingConfig) -> ClientState:
        """A client with fresh key pairs and a fresh self-mask seed."""
        _check_id(client_id)
        return cls(
            client_id=client_id,
            config=config,
            encryption_keys=generate_key_pair(),
            mask_keys=generate_key_pair(),
            self_seed=os.urandom(32),
        )

    def advertise(self) -> AdvertiseKeys:
        """Stage 1: the public keys to send."""
        return AdvertiseKeys(self.client_id, self.encryption_keys.public, self.mask_keys.public)

    def share_keys(self, roster: KeyRoster) -> tuple[ClientState, ShareKeys]:
        """Stage 2: split the self seed and the mask private key among the neighbours."""
        self._expect("advertise")
        if roster.client_id != self.client_id:
            raise SecAggError(f"roster for client {roster.client_id} sent to {self.client_id}")
        neighbours = {n.client_id: n for n in roster.neighbours}
        if len(neighbours) != len(roster.neighbours) or self.client_id in neighbours:
            raise SecAggError("the roster repeats a neighbour or lists the client itself")
        k, t = len(neighbours), roster.threshold
        if not k // 2 < t <= k:
            raise SecAggError(
                f"refusing threshold {t} for {k} neighbours: it must be a strict majority"
            )
        for peer in neighbours:
            _check_id(peer)
        holders = [peer + 1 for peer in neighbours]
        seed_shares = split_secret(self.self_seed, threshold=t, holders=holders)
        key_shares = split_secret(self.mask_keys.private, threshold=t, holders=holders)
        bundles = {}
        for peer, keys in neighbours.items():
            key = agree(self.encryption_keys.private, keys.encryption_key, purpose=_SHARE_PURPOSE)
            ids = _IDS.pack(self.client_id, peer)
            plaintext = ids + seed_shares[peer + 1] + key_shares[peer + 1]
            bundles[peer] = seal(key, plaintext, associated_data=_SHARE_PURPOSE + ids)
        state = dataclasses.replace(self, stage="share", threshold=t, neighbours=neighbours)
        return state, ShareKeys(self.client_id, bundles)

    def mask(
        self,
        delivery: ShareDelivery,
        vector: npt.ArrayLike,
        num_examples: int,
        *,
        rng: np.random.Generator,
    ) -> tuple[ClientState, MaskedInput]:
        """Stage 3: open the received bundles, then send the masked, encoded update."""
        self._expect("share")
        if delivery.client_id != self.client_id:
            raise SecAggError(f"delivery for client {delivery.client_id} sent to {self.client_id}")
        held: dict[int, tuple[bytes, bytes]] = {}
        for sender, sealed in delivery.bundles.items():
            if sender not in self.neighbours:
                raise SecAggError(f"a bundle from client {sender}, who is not a neighbour")
            key = agree(
                self.encryption_keys.private,
                self.neighbours[sender].encryption_key,
                purpose=_SHARE_PURPOSE,
            )
            ids = _IDS.pack(sender, self.client_id)
            plaintext = open_sealed(key, sealed, associated_data=_SHARE_PURPOSE + ids)
            if len(plaintext) != _IDS.size + 2 * SHARE_BYTES or plaintext[: _IDS.size] != ids:
                raise SecAggError(f"the bundle from client {sender} is malformed")
            body = plaintext[_IDS.size :]
            held[sender] = (body[:SHARE_BYTES], body[SHARE_BYTES:])
        if len(held) < self.threshold:
            raise SecAggError(
                f"only {len(held)} neighbours shared keys, "
                f"fewer than the threshold {self.threshold}"
            )
        bits = self.config.modulus_bits
        length = self.config.dimension + 1
        values = encode_input(vector, num_examples, self.config, rng=rng)
        values = add_mod(values, prg_mask(self.self_seed, length, bits), bits)
        for peer in held:
            seed = agree(
                self.mask_keys.private, self.neighbours[peer].mask_key, purpose=_MASK_PURPOSE
            )
            pairwise = prg_mask(seed, length, bits)
            values = (
                add_mod(values, pairwise, bits)
                if self.client_id < peer
                else sub_mod(values, pairwise, bits)
            )
        state = dataclasses.replace(self, stage="masked", held_shares=held)
        return state, MaskedInput(self.client_id, pack_values(values, modulus_bits=bits))

    def unmask(self, request: UnmaskRequest) -> tuple[ClientState, UnmaskResponse]:
        """Stage 4: reveal one kind of share per peer, never both."""
        self._expect("masked")
        if request.client_id != self.client_id:
            raise SecAggError(f"request for client {request.client_id} sent to {self.client_id}")
        both = request.survivors & request.dropped
        if both:
            raise SecAggError(
                f"refusing to reveal both the self-seed and the mask-key shares of {sorted(both)}"
            )
        contradicting = (request.survivors & self.revealed_keys) | (
            request.dropped & self.revealed_seeds
        )
        if contradicting:
            raise SecAggError(
                f"refusing: the other kind of share of {sorted(contradicting)} was already revealed"
            )
        unknown = (request.survivors | request.dropped) - set(self.held_shares)
        if unknown:
            raise SecAggError(f"no shares held for clients {sorted(unknown)}")
        if len(request.survivors) < self.threshold:
            raise SecAggError(
                f"refusing to unmask: {len(request.survivors)} neighbours survived, "
                f"fewer than the threshold {self.threshold}"
            )
        response = UnmaskResponse(
            self.client_id,
            seed_shares={p: self.held_shares[p][0] for p in sorted(request.survivors)},
            key_shares={p: self.held_shares[p][1] for p in sorted(request.dropped)},
        )
        state = dataclasses.replace(
            self,
            revealed_seeds=self.revealed_seeds | request.survivors,
            revealed_keys=self.revealed_keys | request.dropped,
        )
        return state, response

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"client {self.client_id} is at stage {self.stage!r}, not {stage!r}")


# ---- server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerState:
    """The server's protocol state: public keys, graph, who reached which stage, the sum."""

    config: MaskingConfig
    degree: int | None = None
    threshold: int | None = None
    stage: str = "advertise"
    keys: Mapping[int, AdvertiseKeys] = field(default_factory=dict)
    graph: Mapping[int, frozenset[int]] = field(default_factory=dict)
    shared: frozenset[int] = frozenset()
    survivors: frozenset[int] = frozenset()
    masked_sum: npt.NDArray[np.uint64] | None = None

    def collect_keys(
        self, adverts: Iterable[AdvertiseKeys], *, rng: np.random.Generator
    ) -> tuple[ServerState, dict[int, KeyRoster]]:
        """Stage 1: build the k-regular graph over the advertisers; one roster each."""
        self._expect("advertise")
        keys: dict[int, AdvertiseKeys] = {}
        for advert in adverts:
            _check_id(advert.client_id)
            if advert.client_id in keys:
                raise SecAggError(f"client {advert.client_id} advertised keys twice")
            if advert.encryption_key == advert.mask_key:
                raise SecAggError(f"client {advert.client_id} reused one key for both purposes")
            keys[advert.client_id] = advert
        degree = self.degree if self.degree is not None else default_degree(len(keys))
        threshold = self.threshold if self.threshold is not None else default_threshold(degree)
        if not degree // 2 < threshold <= degree:
            raise SecAggError(f"threshold {threshold} is not a strict majority of {degree}")
        graph = build_graph(sorted(keys), degree=degree, rng=rng)
        rosters = {
            cid: KeyRoster(cid, threshold, tuple(keys[p] for p in sorted(graph[cid])))
            for cid in keys
        }
        state = dataclasses.replace(
            self, stage="share", degree=degree, threshold=threshold, keys=keys, graph=graph
        )
        return state, rosters

    def collect_shares(
        self, shares: Iterable[ShareKeys]
    ) -> tuple[ServerState, dict[int, ShareDelivery]]:
        """Stage 2: forward each sealed bundle to its receiver (senders who dropped: none)."""
        self._expect("share")
        by_sender: dict[int, Mapping[int, bytes]] = {}
        for message in shares:
            neighbours = self.graph.get(message.client_id)
            if neighbours is None or message.client_id in by_sender:
                raise SecAggError(f"unexpected or repeated shares from client {message.client_id}")
            if set(message.bundles) != neighbours:
                raise SecAggError(
                    f"client {message.client_id} did not send one bundle per neighbour"
                )
            by_sender[message.client_id] = message.bundles
        deliveries = {
            receiver: ShareDelivery(
                receiver,
                {s: by_sender[s][receiver] for s in sorted(self.graph[receiver]) if s in by_sender},
            )
            for receiver in by_sender
        }
        return dataclasses.replace(self, stage="masked", shared=frozenset(by_sender)), deliveries

    def collect_masked(
        self, inputs: Iterable[MaskedInput]
    ) -> tuple[ServerState, dict[int, UnmaskRequest]]:
        """Stage 3: add the masked vectors; ask each survivor about its neighbours."""
        state = self
        for message in inputs:
            state = state.accept_masked(message)
        return state.unmask_requests()

    def accept_masked(self, message: MaskedInput) -> ServerState:
        """Stage 3, one input at a time: check its length and range (the one check of a
        masked input), then add it to the running masked sum (O(dimension))."""
        self._expect("masked")
        bits, length = self.config.modulus_bits, self.config.dimension + 1
        if message.client_id not in self.shared or message.client_id in self.survivors:
            raise SecAggError(f"unexpected or repeated input from client {message.client_id}")
        try:
            values = unpack_values(message.data, length=length, modulus_bits=bits)
        except SecAggError as exc:
            raise SecAggError(
                f"client {message.client_id}'s masked input is refused: {exc}"
            ) from exc
        total = np.zeros(length, dtype=np.uint64) if self.masked_sum is None else self.masked_sum
        return dataclasses.replace(
            self,
            survivors=self.survivors | {message.client_id},
            masked_sum=add_mod(total, values, bits),
        )

    def unmask_requests(self) -> tuple[ServerState, dict[int, UnmaskRequest]]:
        """Close stage 3: the clients whose inputs arrived survived; ask each of them for
        self-seed shares of surviving neighbours and mask-key shares of dropped ones."""
        self._expect("masked")
        if not self.survivors:
            raise SecAggError("no masked input arrived: there is no sum to unmask")
        survivors = self.survivors
        requests = {
            cid: UnmaskRequest(
                cid,
                survivors=frozenset(self.graph[cid] & survivors),
                dropped=frozenset((self.graph[cid] & self.shared) - survivors),
            )
            for cid in sorted(survivors)
        }
        return dataclasses.replace(self, stage="unmask"), requests

    def unmask(self, responses: Iterable[UnmaskResponse]) -> SecureSum:
        """Stage 4: recover survivors' self seeds and dropped clients' mask keys; remove
        their masks from the sum; dequantize. Only the sum is ever unmasked."""
        self._expect("unmask")
        assert self.masked_sum is not None
        seed_shares: dict[int, dict[int, bytes]] = {}
        key_shares: dict[int, dict[int, bytes]] = {}
        for response in responses:
            responder = response.client_id
            if responder not in self.survivors:
                raise SecAggError(f"unmasking response from non-survivor {responder}")
            for peer, share in response.seed_shares.items():
                seed_shares.setdefault(peer, {})[responder + 1] = share
            for peer, share in response.key_shares.items():
                key_shares.setdefault(peer, {})[responder + 1] = share
        bits, length = self.config.modulus_bits, self.config.dimension + 1
        total = self.masked_sum
        for cid in sorted(self.survivors):
            seed = self._recover(cid, seed_shares, "self-mask seed")
            total = sub_mod(total, prg_mask(seed, length, bits), bits)
        for cid in sorted(self.shared - self.survivors):
            private = self._recover(cid, key_shares, "mask key")
            if public_key_of(private) != self.keys[cid].mask_key:
                raise SecAggError(
                    f"the recovered mask key of client {cid} does not match its advert"
                )
            for peer in sorted(self.graph[cid] & self.survivors):
                seed = agree(private, self.keys[peer].mask_key, purpose=_MASK_PURPOSE)
                pairwise = prg_mask(seed, length, bits)
                # the survivor added +mask if it had the smaller id, -mask otherwise
                total = (
                    sub_mod(total, pairwise, bits) if peer < cid else add_mod(total, pairwise, bits)
                )
        return decode_sum(total, len(self.survivors), self.config)

    def _recover(self, cid: int, shares: Mapping[int, Mapping[int, bytes]], what: str) -> bytes:
        assert self.threshold is not None
        got = shares.get(cid, {})
        if len(got) < self.threshold:
            raise SecAggError(
                f"cannot recover the {what} of client {cid}: {len(got)} shares, "
                f"threshold {self.threshold}"
            )
        return combine_shares(got, threshold=self.threshold)

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"the server is at stage {self.stage!r}, not {stage!r}")


def _check_id(client_id: int) -> None:
    check_int(client_id, "a client id", low=0, high=_MAX_ID, error=SecAggError)
