"""A malicious coordinator tries to unmask one device's update in a secure round.

The server learns a client's plain update if it gets ``t`` shares of BOTH its self-mask
seed and its mask key: it then strips every mask from that client's masked input. SecAgg+
stops it because an honest client reveals one kind of share per peer only. Here a real
HTTP server on loopback plays the malicious coordinator at the unmask stage of a round of
five devices (stages 1-3 ran honestly through :mod:`edge_client.secure`; the server holds
their masked inputs). The devices are the real edge client: the daemon (in process, real
HTTP transport) and the secure module over :class:`~edge_client.transport.
CoordinatorClient` and the outbox.

Proof by attack: with the protection off (the attacker handed both shares straight from
what the neighbours hold) the victim's clipped update comes back within the quantization
step; against the real clients the server gets refusals and no share it could combine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_client.backoff import BackoffPolicy
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.errors import RequestRejected
from edge_client.outbox import Outbox
from edge_client.secure import FileSecretStore, begin, masking_config, step
from edge_client.state import write_token
from edge_client.transport import CoordinatorClient, HttpTransport
from fedge.errors import SecAggError
from fedge.messages import ModelUpdate, Task, TaskConfig
from fedge.secagg import (
    AdvertiseKeys,
    MaskedInput,
    MaskingConfig,
    ServerState,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    combine_shares,
    decode_secagg,
    decode_sum,
    encode_secagg,
    prg_mask,
)
from fedge.secagg.keys import agree
from fedge.secagg.masking import add_mod, sub_mod, unpack_values
from fedge.weights import Weights
from tests.support.hostile_server import Answer, HostileServer, Request, hostile_server

ROUND = 7
CLIENTS = 5  # degree 4: every device neighbours every other; threshold 3
VICTIM = 1
DAEMON = 0  # the device run by the real daemon; 2, 3 and 4 by the secure module
MASK_PURPOSE = b"fedge-secagg pairwise mask"  # the label fedge.secagg derives mask seeds with
UNMASK = f"/v1/rounds/{ROUND}/secagg/unmask"
OPTIONS: dict[str, Any] = {
    "secagg": True,
    "secagg_clip": 1.0,
    "secagg_quantization_bits": 16,
    "secagg_modulus_bits": 32,
    "secagg_example_cap": 1000,
    "secagg_dimension": 40,
}


def _task(kind: str, cid: int, suffix: str = "") -> Task:
    return Task(
        task_id=f"r{ROUND}-{cid}-{kind}{suffix}",
        kind=kind,  # type: ignore[arg-type]
        round_id=ROUND,
        model_version="v1",
        config=TaskConfig(options={**OPTIONS, "secagg_id": cid}),
        deadline=2e9,
    )


def _update(cid: int) -> ModelUpdate:
    rng = np.random.default_rng(50 + cid)
    delta = Weights.from_pairs(
        [("head/kernel", (rng.standard_normal((8, 5)) * 0.3).astype(np.float32))]
    )
    return ModelUpdate(_task("train", cid).task_id, ROUND, 30 + cid, {"loss": 0.4}, delta)


@dataclass
class Round:
    """What the malicious server holds after stage 3, and each device's secret store."""

    config: MaskingConfig
    server: ServerState
    keys: dict[int, AdvertiseKeys]
    masked: dict[int, bytes]
    stores: dict[int, FileSecretStore]
    honest_requests: dict[int, UnmaskRequest]
    state_dirs: dict[int, Path] = field(default_factory=dict)


def _run_to_masked(tmp_path: Path) -> Round:
    rng = np.random.default_rng(3)
    state_dirs = {cid: tmp_path / f"device-{cid}" / "state" for cid in range(CLIENTS)}
    stores = {cid: FileSecretStore(d / "secagg") for cid, d in state_dirs.items()}
    config = masking_config(_task("train", 0))
    adverts = []
    for cid, store in stores.items():
        advert = decode_secagg(begin(_task("train", cid), _update(cid), store).document or {})
        assert isinstance(advert, AdvertiseKeys)
        adverts.append(advert)
    server, rosters = ServerState(config).collect_keys(adverts, rng=rng)
    shares = []
    for cid, roster in rosters.items():
        reply = step(_task("secagg_share", cid), encode_secagg(roster)[0], stores[cid])
        message = decode_secagg(reply.document or {})
        assert isinstance(message, ShareKeys)
        shares.append(message)
    server, deliveries = server.collect_shares(shares)
    masked = {}
    for cid, delivery in deliveries.items():
        reply = step(_task("secagg_mask", cid), encode_secagg(delivery)[0], stores[cid], rng=rng)
        assert reply.body is not None
        masked[cid] = reply.body
        server = server.accept_masked(MaskedInput(cid, reply.body))
    server, requests = server.unmask_requests()
    return Round(
        config, server, {a.client_id: a for a in adverts}, masked, stores, requests, state_dirs
    )


def _unmask_victim(
    setup: Round, seed_shares: Mapping[int, bytes], key_shares: Mapping[int, bytes]
) -> npt.NDArray[np.float64]:
    """The attack: recover the victim's self seed and mask key, strip its masks, decode.
    SecAggError when fewer than ``t`` shares of either were obtained."""
    threshold = setup.server.threshold
    assert threshold is not None
    seed = combine_shares(seed_shares, threshold=threshold)
    private = combine_shares(key_shares, threshold=threshold)
    bits, length = setup.config.modulus_bits, setup.config.dimension + 1
    values = unpack_values(setup.masked[VICTIM], length=length, modulus_bits=bits)
    values = sub_mod(values, prg_mask(seed, length, bits), bits)
    for peer in sorted(setup.server.graph[VICTIM]):
        pairwise = prg_mask(
            agree(private, setup.keys[peer].mask_key, purpose=MASK_PURPOSE), length, bits
        )
        values = (
            sub_mod(values, pairwise, bits) if peer > VICTIM else add_mod(values, pairwise, bits)
        )
    return decode_sum(values, 1, setup.config).mean


def _victim_error(setup: Round, recovered: npt.NDArray[np.float64]) -> tuple[float, float]:
    plain = np.clip(_update(VICTIM).delta.flatten(), -1.0, 1.0)
    count = _update(VICTIM).num_examples
    bound = setup.config.example_cap * setup.config.error_bound(1) / count
    return float(np.abs(recovered - plain).max()), bound


def _request_doc(cid: int, survivors: set[int], dropped: set[int]) -> dict[str, Any]:
    return encode_secagg(UnmaskRequest(cid, frozenset(survivors), frozenset(dropped)))[0]


@dataclass
class Malicious:
    """The script of the malicious coordinator: per device, the unmask request it serves
    and the daemon's queued tasks; every unmask response it is sent is kept."""

    payloads: dict[int, dict[str, Any]] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    responses: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, request: Request) -> Answer:
        cid = int(request.headers.get("Authorization", "Bearer tok--1").rsplit("-", 1)[1])
        if request.path == "/v1/tasks/next":
            if cid == DAEMON and self.tasks:
                return _json(200, self.tasks.pop(0).to_dict())
            return Answer(204, {"Retry-After": "1"})
        if request.path == UNMASK and request.method == "GET":
            return _json(200, self.payloads[cid])
        if request.path == UNMASK and request.method == "POST":
            self.responses.append((cid, json.loads(request.body)))
            receipt = {"round_id": ROUND, "stage": "unmask", "client_id": cid, "duplicate": False}
            return _json(201, receipt)
        return _json(404, {"error": "not_found", "detail": request.path})

    def shares(self, kind: str) -> dict[int, bytes]:
        """The victim's shares of ``kind`` (seed_shares or key_shares) the server got."""
        got = {}
        for responder, document in self.responses:
            message = decode_secagg(document)
            table = getattr(message, kind)
            if VICTIM in table:
                got[responder + 1] = table[VICTIM]
        return got


def _json(status: int, document: Mapping[str, Any]) -> Answer:
    return Answer(status, {"Content-Type": "application/json"}, json.dumps(document).encode())


@pytest.fixture
def attack(tmp_path: Path) -> Iterator[tuple[Round, Malicious, HostileServer]]:
    setup = _run_to_masked(tmp_path)
    script = Malicious()
    with hostile_server(script) as server:
        yield setup, script, server


def _daemon(setup: Round, url: str) -> Daemon:
    state = setup.state_dirs[DAEMON]
    token = state.parent / "token"
    write_token(token, f"tok-{DAEMON}")
    (state.parent / "data").mkdir(exist_ok=True)
    config = DaemonConfig(
        coordinator=url,
        token_file=token,
        data_dir=state.parent / "data",
        state_dir=state,
        backoff=BackoffPolicy(base=0.01, cap=0.01),
        request_timeout=5,
    )
    return Daemon(config, sleep=lambda seconds: None)


def _module_device(setup: Round, url: str, cid: int, task: Task, *, restarted: bool) -> None:
    """One device answering over the real transport with the secure module and its outbox
    (``restarted``: a fresh secret store object over the same directory, as after a reboot)."""
    client = CoordinatorClient(url, HttpTransport(), token=f"tok-{cid}", timeout=5)
    store = FileSecretStore(setup.stores[cid].directory) if restarted else setup.stores[cid]
    payload = client.secagg_payload(ROUND, "unmask")
    reply = step(task, payload, store)
    outbox = Outbox(setup.state_dirs[cid] / "outbox")
    outbox.put(reply)
    report = outbox.deliver(client)
    assert report.delivered


def test_with_the_protection_off_the_attacker_recovers_the_victims_update(
    tmp_path: Path,
) -> None:
    setup = _run_to_masked(tmp_path)
    holders = sorted(setup.server.graph[VICTIM])
    # What the neighbours hold for the victim, handed over whole: both kinds of share.
    held = {cid: setup.stores[cid].load(ROUND) for cid in holders}
    seeds = {cid + 1: s.state.held_shares[VICTIM][0] for cid, s in held.items() if s}
    keys = {cid + 1: s.state.held_shares[VICTIM][1] for cid, s in held.items() if s}
    error, bound = _victim_error(setup, _unmask_victim(setup, seeds, keys))
    assert error <= bound
    assert bound < 0.01  # the victim's plain update, to a hundredth


def test_asking_for_both_shares_of_one_peer_in_one_request_is_refused(
    attack: tuple[Round, Malicious, HostileServer],
) -> None:
    setup, script, server = attack
    for cid in (0, 2, 3, 4):
        honest = setup.honest_requests[cid]
        script.payloads[cid] = _request_doc(cid, set(honest.survivors), {VICTIM})
    script.tasks.append(_task("secagg_unmask", DAEMON))
    daemon = _daemon(setup, server.url)
    assert daemon.step() == "secagg_refused"
    assert daemon.last_error is not None
    assert (
        f"both the self-seed and the mask-key shares of [{VICTIM}]" in daemon.last_error["message"]
    )
    status = json.loads((setup.state_dirs[DAEMON] / "status.json").read_text())
    assert "secure aggregation refused" in status["last_error"]["message"]
    for cid in (2, 3, 4):
        with pytest.raises(SecAggError, match="refusing to reveal both"):
            _module_device(setup, server.url, cid, _task("secagg_unmask", cid), restarted=False)
    assert server.matching("GET", UNMASK)  # every device asked ...
    assert server.count("POST", UNMASK) == 0  # ... and none answered
    with pytest.raises(SecAggError, match="cannot recover"):
        _unmask_victim(setup, script.shares("seed_shares"), script.shares("key_shares"))


def test_a_second_request_contradicting_the_first_is_refused(
    attack: tuple[Round, Malicious, HostileServer],
) -> None:
    setup, script, server = attack
    # First the honest request: everyone survived, the self-seed shares are revealed.
    for cid in (0, 2, 3, 4):
        script.payloads[cid] = encode_secagg(setup.honest_requests[cid])[0]
    script.tasks.append(_task("secagg_unmask", DAEMON))
    daemon = _daemon(setup, server.url)
    assert daemon.step() == "handled"
    for cid in (2, 3, 4):
        _module_device(setup, server.url, cid, _task("secagg_unmask", cid), restarted=False)
    # Then the same devices are told the victim dropped: its mask-key shares, please.
    for cid in (0, 2, 3, 4):
        survivors = set(setup.honest_requests[cid].survivors) - {VICTIM}
        script.payloads[cid] = _request_doc(cid, survivors, {VICTIM})
    script.tasks.append(_task("secagg_unmask", DAEMON, "-again"))
    assert daemon.step() == "secagg_refused"  # delivers the first answer, refuses the second
    assert daemon.last_error is not None
    assert "no secure-aggregation secrets for round 7" in daemon.last_error["message"]
    assert not (setup.state_dirs[DAEMON] / "secagg" / f"round-{ROUND}.json").exists()
    for cid in (2, 3, 4):
        task = _task("secagg_unmask", cid, "-again")
        with pytest.raises(SecAggError, match=rf"the other kind of share of \[{VICTIM}\]"):
            _module_device(setup, server.url, cid, task, restarted=True)
    assert server.count("POST", UNMASK) == 4  # the four first answers, nothing more
    seeds, keys = script.shares("seed_shares"), script.shares("key_shares")
    assert len(seeds) == 4
    assert keys == {}
    with pytest.raises(SecAggError, match="cannot recover"):
        _unmask_victim(setup, seeds, keys)
    # The honest answers were enough for what the server is entitled to: the sum.
    responses = [decode_secagg(document) for _, document in script.responses]
    total = setup.server.unmask(r for r in responses if isinstance(r, UnmaskResponse))
    assert total.num_clients == CLIENTS


def test_the_device_refuses_a_payload_that_is_not_an_unmask_request(
    attack: tuple[Round, Malicious, HostileServer],
) -> None:
    setup, script, server = attack
    script.payloads[2] = {"type": "secagg_unmask_request", "client_id": 2, "survivors": "all"}
    with pytest.raises(SecAggError, match="payload is malformed"):
        _module_device(setup, server.url, 2, _task("secagg_unmask", 2), restarted=False)
    client = CoordinatorClient(server.url, HttpTransport(), token="tok-2", timeout=5)
    with pytest.raises(RequestRejected, match="404"):
        client.secagg_payload(ROUND + 1, "unmask")
    assert server.count("POST", UNMASK) == 0
