"""The cohort rule of evaluate, stats and features tasks (ServiceConfig ``min_cohort``,
``cohort_window_seconds``; ``fedge-coordinator serve --min-cohort/--cohort-window``).

A request for fewer than ``min_cohort`` distinct clients, or one that names a client given
a task of the same kind within the window, is refused with 409 and creates nothing: what
the differencing attack needs (one device asked twice, before and after a row changed) is
refused at the coordinator. The attack itself runs in ``tests/hostile/
test_privacy_attacks.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from coordinator.auth import hash_token
from coordinator.cli import main
from coordinator.config import DEFAULT_COHORT_WINDOW_SECONDS, DEFAULT_MIN_COHORT, ServiceConfig
from coordinator.errors import ConflictError, CoordinatorError
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from fedge.errors import ConfigError
from tests.support.coordinator import ADMIN_TOKEN, FakeClock, bearer, build_service, make_bundle

KINDS = ("evaluate", "stats", "features")


def _service(
    tmp_path: Path, clients: int, *, clock: FakeClock | None = None, **cohort: float
) -> tuple[CoordinatorService, list[str]]:
    service = build_service(
        tmp_path,
        clock=clock,
        continuous=False,
        min_cohort=int(cohort.get("min_cohort", DEFAULT_MIN_COHORT)),
        cohort_window_seconds=cohort.get("window", DEFAULT_COHORT_WINDOW_SECONDS),
    )
    ids = [service.register_client(region="north").client_id for _ in range(clients)]
    return service, ids


def _task_count(service: CoordinatorService) -> int:
    return len(service.store.list_tasks())


def test_defaults_are_a_cohort_of_ten_and_a_window_of_an_hour() -> None:
    config = ServiceConfig(task="taxi")
    assert (config.min_cohort, config.cohort_window_seconds) == (10, 3600.0)


@pytest.mark.parametrize("kind", KINDS)
def test_fewer_clients_than_the_cohort_are_refused_and_nothing_is_created(
    tmp_path: Path, kind: str
) -> None:
    service, ids = _service(tmp_path, 12)
    for targets in ([ids[0]], ids[:9]):
        with pytest.raises(ConflictError, match="at least 10 clients") as refused:
            service.create_tasks(kind, client_ids=targets)
        assert refused.value.code == "cohort_too_small"
    assert _task_count(service) == 0
    created = service.create_tasks(kind, client_ids=ids[:10])
    assert sorted(t.client_id for t in created) == sorted(ids[:10])


def test_all_clients_by_default_are_refused_when_fewer_than_the_cohort(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, 9)
    with pytest.raises(ConflictError) as refused:
        service.create_tasks("stats")
    assert refused.value.code == "cohort_too_small"
    assert _task_count(service) == 0


def test_a_client_listed_twice_is_refused_not_counted_twice(tmp_path: Path) -> None:
    service, ids = _service(tmp_path, 10)
    padded = [ids[0]] * 10
    with pytest.raises(CoordinatorError, match="more than once") as refused:
        service.create_tasks("stats", client_ids=padded)
    assert refused.value.code == "duplicate_client"
    assert _task_count(service) == 0


def test_the_same_cohort_asked_again_within_the_window_is_refused(tmp_path: Path) -> None:
    """The differencing attack's second question: the same devices, the same kind."""
    clock = FakeClock()
    service, ids = _service(tmp_path, 11, clock=clock)
    service.create_tasks("stats", client_ids=ids[:10])
    clock.advance(DEFAULT_COHORT_WINDOW_SECONDS - 1)
    # One overlapping client is enough: a cohort of nine old devices and one new still
    # differs from the first answer by exactly what the nine may have changed.
    for targets in (ids[:10], ids[1:11]):
        with pytest.raises(ConflictError, match="cohort window") as refused:
            service.create_tasks("stats", client_ids=targets)
        assert refused.value.code == "cohort_window"
        overlap = sorted(set(targets) & set(ids[:10]))
        assert str(refused.value).startswith(f"clients {overlap[0]}, ")
        assert f" and {len(overlap) - 5} more were given a stats task" in str(refused.value)
    assert _task_count(service) == 10
    # Another kind has a window of its own.
    assert len(service.create_tasks("evaluate", client_ids=ids[:10])) == 10
    clock.advance(1)
    assert len(service.create_tasks("stats", client_ids=ids[:10])) == 10
    assert _task_count(service) == 30


def test_a_window_of_zero_keeps_the_minimum_cohort(tmp_path: Path) -> None:
    service, ids = _service(tmp_path, 10, window=0.0)
    service.create_tasks("features", client_ids=ids)
    assert len(service.create_tasks("features", client_ids=ids)) == 10
    with pytest.raises(ConflictError) as refused:
        service.create_tasks("features", client_ids=ids[:3])
    assert refused.value.code == "cohort_too_small"


def test_a_cohort_of_one_switches_the_rule_off(tmp_path: Path) -> None:
    service, ids = _service(tmp_path, 1, min_cohort=1)
    service.create_tasks("stats", client_ids=ids)
    assert len(service.create_tasks("stats", client_ids=ids)) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_cohort": 0}, "min_cohort must be an integer >= 1"),
        ({"min_cohort": 2.5}, "min_cohort must be an integer"),
        ({"cohort_window_seconds": -1.0}, "cohort_window_seconds must be >= 0"),
    ],
)
def test_invalid_cohort_settings_are_refused(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServiceConfig(task="taxi", **fields)  # type: ignore[arg-type]


# Through REST ---------------------------------------------------------------------------------


def _http(service: CoordinatorService) -> FlaskClient:
    return create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN))).test_client()


def test_rest_answers_409_cohort_too_small_and_409_cohort_window(tmp_path: Path) -> None:
    service, ids = _service(tmp_path, 10)
    http = _http(service)
    small = http.post(
        "/v1/tasks", json={"kind": "stats", "client_ids": ids[:1]}, headers=bearer(ADMIN_TOKEN)
    )
    assert small.status_code == 409
    assert small.get_json()["error"] == "cohort_too_small"
    assert "at least 10 clients" in small.get_json()["detail"]
    first = http.post("/v1/tasks", json={"kind": "stats"}, headers=bearer(ADMIN_TOKEN))
    assert first.status_code == 201
    assert len(first.get_json()["tasks"]) == 10
    again = http.post("/v1/tasks", json={"kind": "stats"}, headers=bearer(ADMIN_TOKEN))
    assert again.status_code == 409
    assert again.get_json()["error"] == "cohort_window"
    assert _task_count(service) == 10


def test_the_openapi_document_names_the_cohort_refusals(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, 0)
    document = _http(service).get("/v1/openapi.json").get_json()
    conflict = document["paths"]["/v1/tasks"]["post"]["responses"]["409"]
    assert "cohort_too_small" in conflict["description"]
    assert "cohort_window" in conflict["description"]


# The serve flags ------------------------------------------------------------------------------


def test_serve_documents_the_cohort_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--min-cohort N" in out
    assert "--cohort-window SECONDS" in out


def test_serve_refuses_a_cohort_of_zero_before_creating_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_bundle(tmp_path / "bundle")
    argv = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"), "--db",
            str(tmp_path / "db"), "--artifacts", str(tmp_path / "a"),
            "--min-cohort", "0"]  # fmt: skip
    assert main(argv) == 2
    assert "min_cohort must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()
