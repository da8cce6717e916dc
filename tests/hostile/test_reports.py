"""Evaluation reports against the real server: a report must answer its task (the task's
model version, a bounded example count, bounded metrics, accuracies in [0, 1]); anything
else is refused with a precise status and stored nowhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    EdgeClient,
    ServerProcess,
    bearer,
)

StartServer = Callable[..., ServerProcess]


def _evaluation_task(url: str, client: EdgeClient, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "evaluate", "client_ids": [client.client_id]}
    if config:
        body["config"] = config
    response = requests.post(
        f"{url}/v1/tasks", json=body, headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()["tasks"][0]
    return task


def _report(task: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "task_id": task["task_id"],
        "model_version": task["model_version"],
        "num_examples": 50,
        "metrics": {"accuracy": 0.8, "loss": 0.4},
        **changes,
    }


def _stored(url: str) -> list[dict[str, Any]]:
    response = requests.get(
        f"{url}/v1/reports", params={"kind": "evaluate"}, headers=bearer(ADMIN_TOKEN),
        timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    reports: list[dict[str, Any]] = response.json()["reports"]
    return reports


CASES: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("another model version", {"model_version": "v7"}, 409, "model_version_mismatch", "v7"),
    ("accuracy 1e308", {"metrics": {"accuracy": 1e308}}, 400, "invalid_report", "1e+09"),
    ("accuracy above 1", {"metrics": {"accuracy": 1.5}}, 400, "invalid_report", "[0, 1]"),
    ("negative accuracy", {"metrics": {"accuracy": -0.1}}, 400, "invalid_report", "[0, 1]"),
    ("loss 1e300", {"metrics": {"loss": 1e300}}, 400, "invalid_report", "1e+09"),
    (
        "personalized accuracy 2",
        {"personalized_metrics": {"accuracy": 2.0}},
        400,
        "invalid_report",
        "personalized_metrics",
    ),
    (
        "slice loss -1e20",
        {"slice_metrics": {"north": {"loss": -1e20}}},
        400,
        "invalid_report",
        "north",
    ),
    ("num_examples 1e30", {"num_examples": 10**30}, 400, "invalid_report", "at most"),
]


@pytest.mark.parametrize(
    ("name", "changes", "status", "code", "phrase"), CASES, ids=[c[0] for c in CASES]
)
def test_an_evaluation_that_does_not_answer_its_task_is_refused(
    serve: StartServer,
    name: str,
    changes: dict[str, Any],
    status: int,
    code: str,
    phrase: str,
) -> None:
    server = serve("--on-demand")
    client = EdgeClient(server.url, "north")
    task = _evaluation_task(server.url, client)
    response = client.session.post(
        f"{server.url}/v1/evaluations", json=_report(task, **changes), timeout=HTTP_TIMEOUT
    )
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert phrase in response.json()["detail"]
    assert _stored(server.url) == []
    # The task is still open: the honest report is accepted afterwards.
    honest = client.session.post(
        f"{server.url}/v1/evaluations", json=_report(task), timeout=HTTP_TIMEOUT
    )
    assert honest.status_code == 201, honest.text
    assert [r["task_id"] for r in _stored(server.url)] == [task["task_id"]]


def test_an_evaluation_over_its_task_example_limit_is_refused(serve: StartServer) -> None:
    server = serve("--on-demand")
    client = EdgeClient(server.url, "north")
    task = _evaluation_task(server.url, client, max_examples=100)
    response = client.session.post(
        f"{server.url}/v1/evaluations", json=_report(task, num_examples=101), timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_report"
    assert "allows at most 100" in response.json()["detail"]
    assert _stored(server.url) == []
    assert requests.get(f"{server.url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200


def _stats_task(url: str, client: EdgeClient) -> dict[str, Any]:
    response = requests.post(
        f"{url}/v1/tasks",
        json={"kind": "stats", "client_ids": [client.client_id]},
        headers=bearer(ADMIN_TOKEN),
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()["tasks"][0]
    return task


def _numeric(document: dict[str, Any]) -> dict[str, Any]:
    """The first numeric column's statistics in a statistics document."""
    for column in document["columns"]:
        if "m2" in column:
            numeric: dict[str, Any] = column
            return numeric
    raise AssertionError("the statistics have no numeric column")


STATS_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("mean 1e300", lambda d: _numeric(d).update(mean=1e300), "over the bound"),
    ("max 1e200", lambda d: _numeric(d).update(max=1e200), "over the bound"),
    ("m2 1e300", lambda d: _numeric(d).update(m2=1e300), "outside [0"),
]


@pytest.mark.parametrize(("name", "change", "phrase"), STATS_CASES, ids=[c[0] for c in STATS_CASES])
def test_statistics_with_unbounded_values_are_refused(
    serve: StartServer, name: str, change: Callable[[dict[str, Any]], None], phrase: str
) -> None:
    from tests.support.coordinator import training_stats

    server = serve("--on-demand")
    client = EdgeClient(server.url, "north")
    task = _stats_task(server.url, client)
    document = training_stats().to_dict()
    change(document)
    body = {"type": "stats_report", "version": 1, "task_id": task["task_id"], "stats": document}
    honest_body = {**body, "stats": training_stats().to_dict()}
    response = client.session.post(f"{server.url}/v1/stats", json=body, timeout=HTTP_TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_report"
    assert phrase in response.json()["detail"]
    stored = requests.get(
        f"{server.url}/v1/reports", params={"kind": "stats"}, headers=bearer(ADMIN_TOKEN),
        timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    assert stored.json()["reports"] == []
    honest = client.session.post(f"{server.url}/v1/stats", json=honest_body, timeout=HTTP_TIMEOUT)
    assert honest.status_code == 201, honest.text
