"""Cloud serving on a real server: ``POST /v1/models/<version>:predict`` answers in
TensorFlow Serving's format with what the edge runtime computes on the same rows (a round
version and v1), the static and hybrid modes answer from a ``predict-batch`` table and
hybrid falls back to the model behind its cache, and bad requests are refused whole."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from numpy.typing import NDArray

from coordinator.artifacts import ArtifactStore
from coordinator.auth import hash_token
from coordinator.cli import main as coordinator_main
from coordinator.config import RoundConfig, ServiceConfig
from coordinator.intake import UpdateSubmission
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from coordinator.serving import ServedModel, ServingConfig, TableStore
from coordinator.serving.cli import build_table, predict_batch, read_keys
from coordinator.sqlite_store import SQLiteStore
from edge_client import ClientContext, MemoryData, ModelCache, handle
from edge_client.model import EdgeModel
from fedge.data.digits import load_digits
from fedge.data.tables import flat_field_names
from fedge.errors import ConfigError
from fedge.messages import ModelUpdate, encode_message
from fedge.tfrecord import write_examples
from fedge.weights import Weights
from tests.support import REPO_ROOT
from tests.support.bundles import build_bundle
from tests.support.coordinator import (
    ADMIN_TOKEN,
    bearer,
    make_bundle,
    running_server,
    serve_command,
    serving_in_thread,
    write_admin_token,
)

ROWS = 40


@dataclass(frozen=True)
class Served:
    workdir: Path
    service: CoordinatorService
    edge: dict[str, EdgeModel]  # version -> the device's model of that version
    pixels: NDArray[np.float64]  # digits rows, float64 (n, 8, 8)
    keys_csv: Path  # id + pixels of the first ROWS rows


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """v1 (the bundle) and v2, production: the version a federated round committed, two
    clients training on their digits with the edge client's ``handle``."""
    workdir = tmp_path_factory.mktemp("serving")
    bundle = build_bundle("digits", workdir, batch_size=32, version="digits-v1")
    rounds = RoundConfig(continuous=False, clients_per_round=2, min_clients=2, auto_promote=True)
    service = CoordinatorService(
        store=SQLiteStore(workdir / "state.db"),
        artifacts=ArtifactStore(workdir / "artifacts"),
        config=ServiceConfig(task="digits", rounds=rounds, min_cohort=1),
    )
    service.import_bundle(bundle)

    def device_bundle(version: str) -> Path:
        record, directory = service.registry.get(version), workdir / "device" / version
        if not directory.exists():
            directory.mkdir(parents=True)
            for name in service.registry.file_names(record):
                shutil.copy(service.registry.file(record, name)[1], directory / name)
        return directory

    digits = load_digits()
    models = ModelCache(device_bundle)
    clients = [service.authenticate(service.register_client(region="r").token) for _ in "ab"]
    round_id = service.open_round().round_id
    for i, client in enumerate(clients):
        rows = MemoryData(digits.take(np.arange(300 * i, 300 * (i + 1))))
        context = ClientContext(data=rows, models=models, client_id=client.client_id)
        task = service.next_task(client)
        assert task is not None
        update = handle(task, context)
        assert isinstance(update, ModelUpdate)
        _, body = encode_message(update)
        submission = UpdateSubmission(
            round_id=round_id,
            task_id=update.task_id,
            num_examples=update.num_examples,
            idempotency_key=f"update-{i}",
            body=body or b"",
            metrics=dict(update.metrics),
        )
        service.submit_update(client, submission)
    service.tick()
    production = service.registry.production()
    assert (production.version, production.round_id) == ("v2", round_id)
    edge = {version: EdgeModel.load(device_bundle(version)) for version in ("v1", "v2")}
    pixels = np.asarray(digits.columns["pixels"], dtype=np.float64)[1000:1200]
    keys_csv = workdir / "keys.csv"
    with keys_csv.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", *flat_field_names("pixels", (8, 8))])
        for i in range(ROWS):
            writer.writerow([f"k{i}", *(int(v) for v in pixels[i].ravel())])
    return Served(workdir, service, edge, pixels, keys_csv)


@pytest.fixture
def serve(served: Served) -> Iterator[Any]:
    """``serve(mode, cache=...)``: the URL of a real loopback server in that mode."""
    stack: list[Any] = []

    def start(mode: str, *, cache: int = 100, max_instances: int = 100) -> str:
        app = create_app(
            served.service,
            ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)),
            serving=ServingConfig(mode=mode, cache_rows=cache, max_instances=max_instances),
        )
        context = serving_in_thread(app)
        url = context.__enter__()
        stack.append(context)
        return url

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


def _predict(url: str, version: str, body: Any) -> requests.Response:
    return requests.post(
        f"{url}/v1/models/{version}:predict", json=body, headers=bearer(ADMIN_TOKEN), timeout=30
    )


def _rows(pixels: NDArray[np.float64]) -> list[dict[str, Any]]:
    return [{"pixels": p.tolist()} for p in pixels]


def _metric(url: str, name: str, **labels: str) -> float:
    text = requests.get(f"{url}/metrics", headers=bearer(ADMIN_TOKEN), timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _edge_scores(served: Served, version: str, pixels: NDArray[np.float64]) -> NDArray[np.float32]:
    edge = served.edge[version]
    return edge.predict_scores(edge.transform({"pixels": pixels}))


# Dynamic: the edge runtime's outputs --------------------------------------------------------


def test_predict_answers_what_the_edge_runtime_computes_for_a_round_version(
    served: Served, serve: Any
) -> None:
    url = serve("dynamic")
    pixels = served.pixels[:ROWS]
    response = _predict(url, "production", {"instances": _rows(pixels)})
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["model_version"] == "v2"
    predictions = document["predictions"]
    logits = np.array([p["logits"] for p in predictions], dtype=np.float32)
    expected = _edge_scores(served, "v2", pixels)
    assert np.array_equal(logits, expected)
    assert [p["class_id"] for p in predictions] == expected.argmax(axis=1).tolist()
    assert [p["label"] for p in predictions] == [str(k) for k in expected.argmax(axis=1)]
    probabilities = np.array([p["probabilities"] for p in predictions])
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    model = ServedModel.load(served.service.registry, "v2")
    assert model.path == served.edge["v2"].serving_path()
    assert model.path == "int8-backbone+float-head"


def test_v1_answers_on_the_int8_path_in_both_request_formats(served: Served, serve: Any) -> None:
    url = serve("dynamic")
    pixels = served.pixels[ROWS : ROWS + 25]
    expected = _edge_scores(served, "v1", pixels)
    bare = _predict(url, "v1", {"instances": [p.tolist() for p in pixels]})
    columnar = _predict(url, "v1", {"inputs": {"pixels": [p.tolist() for p in pixels]}})
    for response in (bare, columnar):
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "v1"
        logits = np.array([p["logits"] for p in response.json()["predictions"]], np.float32)
        assert np.array_equal(logits, expected)
    assert ServedModel.load(served.service.registry, "v1").path == "int8"


# Bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "body", "status", "code"),
    [
        ("production", {"instances": {"pixels": 1}}, 400, "invalid_instances"),
        ("production", {"instances": []}, 400, "invalid_instances"),
        ("production", {"rows": [1]}, 400, "invalid_instances"),
        ("production", {"instances": [{"pixels": [[1.0] * 8] * 8}], "inputs": {}}, 400,
         "invalid_instances"),
        ("production", {"instances": [{"pixels": "white"}]}, 400, "invalid_instances"),
        ("production", {"instances": [{"pixels": [["a"] * 8] * 8}]}, 400, "invalid_instances"),
        ("production", {"instances": [{"pixels": [1.0] * 63}]}, 400, "invalid_instances"),
        ("production", {"instances": [{"pix": [[1.0] * 8] * 8}]}, 400, "invalid_instances"),
        ("production", {"inputs": {"pixels": [[[1.0] * 8] * 8], "x": []}}, 400,
         "invalid_instances"),
        ("production", {"instances": [[[0.0] * 8] * 8] * 6}, 413, "too_many_instances"),
        ("v9", {"instances": [[[0.0] * 8] * 8]}, 404, "model_not_found"),
    ],
)  # fmt: skip
def test_a_bad_request_is_refused_whole_and_changes_nothing(
    served: Served, serve: Any, version: str, body: Any, status: int, code: str
) -> None:
    url = serve("hybrid", max_instances=5)
    response = _predict(url, version, body)
    assert (response.status_code, response.json()["error"]) == (status, code)
    assert response.json()["detail"]
    assert _metric(url, "fedge_serving_requests_total", mode="hybrid") == 0
    assert _metric(url, "fedge_serving_refused_total", mode="hybrid", error=code) == 1
    good = _predict(url, "production", {"instances": _rows(served.pixels[:2])})
    assert good.status_code == 200
    assert _metric(url, "fedge_serving_rows_total", mode="hybrid", source="model") == 2


def test_a_body_that_is_not_json_or_has_no_token_is_refused(served: Served, serve: Any) -> None:
    url = serve("dynamic")
    target = f"{url}/v1/models/production:predict"
    garbled = requests.post(
        target,
        data=b"{not json",
        headers={**bearer(ADMIN_TOKEN), "Content-Type": "application/json"},
        timeout=10,
    )
    assert (garbled.status_code, garbled.json()["error"]) == (400, "invalid_json")
    text = requests.post(target, data=b"1,2", headers=bearer(ADMIN_TOKEN), timeout=10)
    assert text.status_code == 415
    anonymous = requests.post(target, json={"instances": [[[0.0] * 8] * 8]}, timeout=10)
    assert anonymous.status_code == 401


# Static and hybrid: the table ----------------------------------------------------------------


def _table(served: Served, version: str = "production") -> dict[str, Any]:
    registry = served.service.registry
    tables = TableStore(served.service.artifacts)
    return predict_batch(registry, tables, served.keys_csv, key_column="id", version=version)


def test_static_mode_answers_from_the_table_and_refuses_keys_it_lacks(
    served: Served, serve: Any
) -> None:
    entry = _table(served)
    assert (entry["model_version"], entry["rows"], entry["key_column"]) == ("v2", ROWS, "id")
    url = serve("static")
    # Rows carry only their key (or are the bare key): the answer can come from nowhere else.
    response = _predict(url, "production", {"instances": [{"id": "k3"}, "k5"]})
    assert response.status_code == 200, response.text
    logits = np.array([p["logits"] for p in response.json()["predictions"]], np.float32)
    assert np.array_equal(logits, _edge_scores(served, "v2", served.pixels[[3, 5]]))
    missing = _predict(url, "production", {"instances": ["k1", "nope", "gone"]})
    assert (missing.status_code, missing.json()["error"]) == (404, "key_not_found")
    assert "'nope', 'gone'" in missing.json()["detail"]
    no_table = _predict(url, "v1", {"instances": ["k1"]})
    assert (no_table.status_code, no_table.json()["error"]) == (404, "table_not_found")
    assert _metric(url, "fedge_serving_rows_total", mode="static", source="table") == 2
    assert _metric(url, "fedge_serving_rows_total", mode="static", source="model") == 0


def test_hybrid_mode_uses_the_table_then_the_model_behind_its_cache(
    served: Served, serve: Any
) -> None:
    _table(served)
    url = serve("hybrid")
    unknown = served.pixels[150:152]
    body = {"instances": [{"id": "k7"}, *({"id": "new", "pixels": p.tolist()} for p in unknown)]}
    first = _predict(url, "production", body)
    second = _predict(url, "production", body)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    logits = np.array([p["logits"] for p in first.json()["predictions"]], np.float32)
    expected = _edge_scores(served, "v2", served.pixels[[7, 150, 151]])
    assert np.array_equal(logits, expected)
    counts = {
        source: _metric(url, "fedge_serving_rows_total", mode="hybrid", source=source)
        for source in ("table", "cache", "model")
    }
    assert counts == {"table": 2, "cache": 2, "model": 2}
    assert _metric(url, "fedge_serving_hit_rate", mode="hybrid", source="table") == pytest.approx(
        2 / 6
    )
    assert _metric(url, "fedge_serving_latency_seconds_count", mode="hybrid") == 2


def test_predict_batch_reads_a_tfrecord_key_table_like_the_csv(
    served: Served, tmp_path: Path
) -> None:
    records = tmp_path / "keys.tfrecord"
    write_examples(
        records,
        (
            {"id": [f"k{i}".encode()], "pixels": [float(v) for v in served.pixels[i].ravel()]}
            for i in range(5)
        ),
    )
    model = ServedModel.load(served.service.registry, "production")
    keys, columns = read_keys(records, model, "id")
    assert keys == [f"k{i}" for i in range(5)]
    table = build_table(model, keys, columns, key_column="id", now=0.0)
    expected = _edge_scores(served, "v2", served.pixels[:5])
    for i in range(5):
        assert np.array_equal(np.float32(table.predictions[f"k{i}"]["logits"]), expected[i])


# predict-batch and serve's flags on a real coordinator process ------------------------------


def test_predict_batch_cli_writes_a_table_that_a_running_static_server_answers_from(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "server"
    workdir.mkdir()
    bundle = served.edge["v1"].directory
    token = write_admin_token(workdir)
    command = serve_command(workdir, bundle, token, "--task", "digits", "--serving-mode", "static")
    with running_server(command, workdir) as server:
        before = _predict(server.url, "production", {"instances": ["k2"]})
        assert (before.status_code, before.json()["error"]) == (404, "table_not_found")
        args = ["predict-batch", "--db", str(workdir / "state.db")]
        args += ["--artifacts", str(workdir / "artifacts"), "--keys", str(served.keys_csv)]
        assert coordinator_main([*args, "--key-column", "id", "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert (printed["model_version"], printed["rows"], printed["path"]) == ("v1", ROWS, "int8")
        after = _predict(server.url, "production", {"instances": ["k2"]})
        assert after.status_code == 200, after.text
        logits = np.array(after.json()["predictions"][0]["logits"], np.float32)
        assert np.array_equal(logits, _edge_scores(served, "v1", served.pixels[2:3])[0])
        assert coordinator_main([*args, "--key-column", "no_such_column"]) == 2
        assert "no_such_column" in capsys.readouterr().err


def test_predict_batch_every_rescores_and_picks_up_a_new_production_version(
    served: Served, tmp_path: Path, no_leftover_children: None
) -> None:
    service = CoordinatorService(
        store=SQLiteStore(tmp_path / "state.db"),
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        config=ServiceConfig(task="digits", rounds=RoundConfig(continuous=False)),
    )
    v1 = service.import_bundle(served.edge["v1"].directory)
    command = [sys.executable, "-m", "coordinator.cli", "predict-batch"]
    command += ["--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts")]
    command += ["--keys", str(served.keys_csv), "--key-column", "id", "--every", "0.2"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(f"v1: {ROWS} keys (id, int8 path)")
        head = service.registry.weights(v1)
        v2 = service.registry.register_round_version(
            v1, Weights({n: head[n] * 0.5 for n in head.names}), b"state", round_id=1
        )
        service.registry.promote(v2.version)
        lines: list[str] = []
        while len(lines) < 100 and not (lines and lines[-1].startswith("v2: ")):
            lines.append(process.stdout.readline())
        assert lines[-1].startswith(f"v2: {ROWS} keys (id, int8-backbone+float-head path)")
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert process.returncode == 130
    assert set(TableStore(service.artifacts).entries()) == {"v1", "v2"}


def test_predict_batch_refuses_a_missing_database_and_a_bad_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.csv"
    keys.write_text("id\n1\n")
    (tmp_path / "artifacts").mkdir()
    base = ["predict-batch", "--keys", str(keys), "--key-column", "id"]
    base += ["--artifacts", str(tmp_path / "artifacts")]
    assert coordinator_main([*base, "--db", str(tmp_path / "none.db")]) == 2
    assert "no such database file" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    assert coordinator_main([*base, "--db", str(tmp_path / "none.db"), "--every", "0"]) == 2
    assert "--every" in capsys.readouterr().err


def test_serving_config_refuses_an_unknown_mode_and_a_negative_cache() -> None:
    with pytest.raises(ConfigError, match="serving mode must be one of"):
        ServingConfig(mode="sometimes")
    with pytest.raises(ConfigError, match="cache_rows"):
        ServingConfig(mode="hybrid", cache_rows=-1)


def test_serve_refuses_a_negative_serving_cache_before_creating_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    make_bundle(bundle)
    args = ["serve", "--task", "taxi", "--bundle", str(bundle), "--db", str(tmp_path / "s.db")]
    args += ["--artifacts", str(tmp_path / "artifacts"), "--open-enrollment"]
    assert coordinator_main([*args, "--serving-cache", "-1"]) == 2
    assert "--serving-cache must be" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()
