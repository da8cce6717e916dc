"""The commit of a round streams its updates from the artifact store one at a time: memory
of the order of one model, whatever the number of updates, and the in-memory result."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from fedge.strategy import build_strategy
from fedge.weights import Weights
from tests.support.coordinator import HEAD_SHAPES, build_service, delta, submission

UPDATES = 64


def test_a_round_of_many_updates_commits_in_model_sized_memory_with_the_in_memory_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A head of 40,100 float32 (160 KB) makes each update far larger than the bookkeeping.
    monkeypatch.setitem(HEAD_SHAPES, "head/kernel", (400, 100))
    monkeypatch.setitem(HEAD_SHAPES, "head/bias", (100,))
    params = 400 * 100 + 100
    service = build_service(tmp_path, clients_per_round=UPDATES, min_clients=UPDATES)
    clients = [service.authenticate(service.register_client().token) for _ in range(UPDATES)]
    base_model = service.get_model("v1")
    base = service.registry.weights(base_model)
    assert base.num_parameters == params
    sent: list[tuple[Weights, int]] = []
    for i, client in enumerate(clients):
        sent.append((delta(100 + i), 10 + i))
        update = submission(1, client.client_id, seed=100 + i, num_examples=10 + i)
        if i < UPDATES - 1:
            service.submit_update(client, update)
            continue
        tracemalloc.start()
        try:
            service.submit_update(client, update)  # the last update: intake, then the commit
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    round_ = service.get_round(1)
    assert round_.state == "committed", round_.failure_reason
    assert round_.measurements["count"] == UPDATES
    # Holding the round's updates would take UPDATES x P x 4 bytes (10 MB); the last
    # intake and the commit hold a few model-sized vectors (the aggregator's, one stored
    # update, the server step's, the new model and its bytes): about 14 of them.
    assert peak < 16 * params * 4 <= UPDATES * params * 4 / 4, peak

    strategy = build_strategy("fedavg")
    aggregator = strategy.new_aggregator(base)
    for update_delta, count in sent:
        aggregator.add(update_delta, count)
    result = strategy.aggregate(aggregator)
    expected, _ = strategy.server_step(strategy.init_server_state(base), base, result)
    committed = service.registry.weights(service.get_model(str(round_.result_version)))
    assert committed == expected  # bit for bit
