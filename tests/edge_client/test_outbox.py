"""The on-disk outbox against a fake coordinator (a plain function behind FunctionTransport)
that, like the real one, acknowledges a repeated Idempotency-Key without counting it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from edge_client.errors import RequestRejected, TransportError
from edge_client.outbox import Outbox
from edge_client.transport import CoordinatorClient, FunctionTransport, HttpResponse
from fedge.messages import EvalReport, ModelUpdate
from fedge.weights import Weights

URL = "http://coordinator.test"


class FakeCoordinator:
    """Counts accepted uploads by idempotency key; can be down or refuse with a status."""

    def __init__(self) -> None:
        self.down = False
        self.refuse: tuple[int, str] | None = None
        self.accepted: dict[str, bytes] = {}
        self.posts = 0

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        if self.down:
            raise TransportError("connection refused")
        self.posts += 1
        assert headers["Authorization"] == "Bearer tok"
        if self.refuse is not None:
            status, code = self.refuse
            return HttpResponse(status, {}, json.dumps({"error": code, "detail": "no"}).encode())
        key = headers["Idempotency-Key"]
        duplicate = key in self.accepted
        self.accepted.setdefault(key, body or b"")
        return HttpResponse(200 if duplicate else 201, {}, b"{}")


def _update(task: str = "r1-c1") -> ModelUpdate:
    delta = Weights({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3)})
    return ModelUpdate(task, 1, 12, {"loss": 0.5, "accuracy": 0.75}, delta)


def _client(server: FakeCoordinator) -> CoordinatorClient:
    return CoordinatorClient(URL, FunctionTransport(server), token="tok")


def test_entry_is_on_disk_before_anything_is_sent(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    entry = outbox.put(_update())
    assert entry.path.is_file()
    assert [e.request for e in Outbox(tmp_path).entries()] == [entry.request]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    header, _, body = entry.path.read_bytes().partition(b"\n")
    assert json.loads(header)["headers"]["Idempotency-Key"] == entry.request.idempotency_key
    assert Weights.from_bytes(body) == _update().delta


def test_crash_between_write_and_send_is_resent_exactly_once(tmp_path: Path) -> None:
    Outbox(tmp_path).put(_update())  # the process dies here, before sending
    server = FakeCoordinator()
    restarted = Outbox(tmp_path)
    report = restarted.deliver(_client(server))
    assert len(report.delivered) == 1
    assert server.posts == 1
    assert len(server.accepted) == 1
    assert restarted.deliver(_client(server)).delivered == ()
    assert server.posts == 1


def test_outage_keeps_entries_in_order_until_delivered_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    first = outbox.put(_update("r1-c1"))
    second = outbox.put(EvalReport("evaluate-1", "v1", 10, {"accuracy": 0.9}))
    server = FakeCoordinator()
    server.down = True
    for _ in range(3):
        with pytest.raises(TransportError):
            outbox.deliver(_client(server))
    assert len(outbox) == 2
    server.down = False
    report = outbox.deliver(_client(server))
    assert report.delivered == (first.name, second.name)
    assert list(server.accepted) == [
        first.request.idempotency_key,
        second.request.idempotency_key,
    ]
    assert len(outbox) == 0


def test_lost_response_is_retried_with_the_same_key_and_counted_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    entry = outbox.put(_update())
    server = FakeCoordinator()

    def lose_first_answer(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        answer = server(method, url, headers, body)
        if server.posts == 1:
            raise TransportError("connection reset")
        return answer

    client = CoordinatorClient(URL, FunctionTransport(lose_first_answer), token="tok")
    with pytest.raises(TransportError):
        outbox.deliver(client)
    assert outbox.deliver(client).delivered == (entry.name,)
    assert server.posts == 2
    assert list(server.accepted) == [entry.request.idempotency_key]


def test_conflict_for_a_closed_round_drops_the_entry_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path)
    entry = outbox.put(_update())
    server = FakeCoordinator()
    server.refuse = (409, "round_closed")
    report = outbox.deliver(_client(server))
    assert report.dropped == (entry.name,)
    assert len(outbox) == 0
    assert "round_closed" in caplog.text


def test_other_refusals_are_moved_aside_not_retried(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    entry = outbox.put(_update())
    server = FakeCoordinator()
    server.refuse = (422, "norm_exceeded")
    assert outbox.deliver(_client(server)).failed == (entry.name,)
    assert (tmp_path / "failed" / entry.name).is_file()
    assert outbox.deliver(_client(server)).failed == ()
    assert server.posts == 1


def test_unknown_token_stops_delivery_and_keeps_the_entry(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(_update())
    server = FakeCoordinator()
    server.refuse = (401, "invalid_token")
    with pytest.raises(RequestRejected) as error:
        outbox.deliver(_client(server))
    assert error.value.status == 401
    assert len(outbox) == 1


def test_a_truncated_entry_is_moved_aside(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    entry = outbox.put(_update())
    entry.path.write_bytes(entry.path.read_bytes()[:-10])
    assert outbox.entries() == []
    assert (tmp_path / "failed" / entry.name).is_file()
