"""The daemon against a real coordinator on loopback, in a process where TensorFlow cannot
be imported, with every byte it sends captured at the transport.

One module fixture runs the cycle once: register; two train rounds (a data file dropped
into the data directory between them); then evaluate, stats and features tasks; then
SIGTERM. The tests judge the coordinator's records, the daemon's files and the capture.
The local CSV files carry planted canary markers (text and numbers). The daemon runs under
its default privacy policy (no policy file); the fixture has one device, so its
coordinator runs with ``--min-cohort 1`` (the cohort rule off) to let that one device be
asked for statistics, features and an evaluation at all.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_client.local_data import DirectoryData
from edge_client.model import EdgeModel
from fedge.bundle import read_manifest
from fedge.data import read_csv_columns
from fedge.features import FeatureSpec
from fedge.messages import FeatureBatch, StatsReport
from tests.support.canary import (
    NUMBER_MARKERS,
    TEXT_MARKERS,
    plant_markers,
    read_capture,
    sent_bytes,
    sent_reports,
)
from tests.support.edge import (
    DaemonProcess,
    admin,
    coordinator,
    csv_lines,
    float_encodings,
    register,
    start_daemon,
    stop_daemon,
    store_counts,
    taxi_rows,
    wait_committed,
    wait_for,
    write_csv,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

BLOCKED = {"tensorflow", "keras", "tf_keras", "tensorflow_federated", "flask", "coordinator",
           "cloud_trainer", "quantize", "simulations"}  # fmt: skip


@dataclass
class Cycle:
    workdir: Path
    data: Path
    state: Path
    bundle: Path
    client_id: str
    rounds: list[dict[str, Any]]
    expected_train_rows: list[int]
    counts: dict[str, int]
    exit_code: int
    daemon_log: str
    report: dict[str, Any]
    capture: list[dict[str, Any]]
    status: dict[str, Any]


def _local_data(data: Path, bundle: Path) -> DirectoryData:
    """The daemon's view of ``data``: the same files, split into train and holdout alike."""
    local = DirectoryData(data, read_manifest(bundle).schema, settle_seconds=0)
    local.refresh()
    return local


def _expected_train_rows(data: Path, bundle: Path) -> int:
    return len(_local_data(data, bundle).train())


@pytest.fixture(scope="module")
def cycle(edge_taxi_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Cycle:
    workdir = tmp_path_factory.mktemp("edge-daemon")
    data, state = workdir / "data", workdir / "state"
    data.mkdir()
    first = taxi_rows(0, 150)
    plant_markers(first)
    write_csv(data / "a.csv", first)
    write_csv(data / "b.csv", taxi_rows(150, 150))
    token_file, capture, report = workdir / "token", workdir / "capture.jsonl", workdir / "report"
    expected = [_expected_train_rows(data, edge_taxi_bundle)]
    daemon: DaemonProcess | None = None
    # One device is all this fixture has: the cohort rule (ten clients by default) is off.
    with coordinator(workdir, edge_taxi_bundle, "taxi", "--min-cohort", "1") as server:
        try:
            client_id = register(server.url, token_file, state, capture=capture)
            daemon = start_daemon(
                server.url, token_file, data, state, capture=capture, report=report
            )
            admin(server.url, "POST", "/v1/rounds", {})
            rounds = [wait_committed(server.url, 1)]
            # Acceptance 6: a file dropped in while the daemon runs feeds the next round.
            write_csv(data / "c.csv", taxi_rows(300, 100))
            expected.append(_expected_train_rows(data, edge_taxi_bundle))
            admin(server.url, "POST", "/v1/rounds", {})
            rounds.append(wait_committed(server.url, 2))
            for kind in ("evaluate", "stats", "features"):
                admin(server.url, "POST", "/v1/tasks", {"kind": kind, "client_ids": [client_id]})
            counts = wait_for(
                lambda: (c := store_counts(workdir))["features"] and c["stats"] and c["evaluation"]
                and c,
                timeout=60,
            )  # fmt: skip
            exit_code = stop_daemon(daemon)
        finally:
            if daemon is not None:
                stop_daemon(daemon)
    return Cycle(
        workdir=workdir,
        data=data,
        state=state,
        bundle=edge_taxi_bundle,
        client_id=client_id,
        rounds=rounds,
        expected_train_rows=expected,
        counts=counts,
        exit_code=exit_code,
        daemon_log=daemon.log(),
        report=json.loads(report.read_text()),
        capture=read_capture(capture),
        status=json.loads((state / "status.json").read_text()),
    )


# Acceptance 1 ---------------------------------------------------------------------------------


def test_daemon_without_tensorflow_completes_every_task_kind(cycle: Cycle) -> None:
    assert cycle.report["tensorflow_import_fails"] is True
    assert BLOCKED.isdisjoint(cycle.report["modules"]), cycle.report["modules"]
    assert {"tflite_runtime", "edge_client", "fedge"} <= set(cycle.report["modules"])
    assert [r["num_updates"] for r in cycle.rounds] == [1, 1]
    assert cycle.counts == {"updates": 2, "stats": 1, "evaluation": 1, "features": 1}
    assert cycle.status["tasks"] == {"train": 2, "evaluate": 1, "stats": 1, "features": 1}
    assert "Traceback" not in cycle.daemon_log


def test_evaluation_reports_global_personalized_and_slices(cycle: Cycle) -> None:
    from coordinator.sqlite_store import SQLiteStore

    store = SQLiteStore(cycle.workdir / "state.db")
    try:
        (evaluation,) = store.list_reports(kind="evaluation")
        (features,) = store.list_reports(kind="features")
    finally:
        store.close()
    document = evaluation.document
    assert document["model_version"] == "v3"
    holdout = _local_data(cycle.data, cycle.bundle).holdout().labels
    assert document["num_examples"] == len(holdout)
    majority = np.bincount(holdout).max() / len(holdout)  # always answering the commonest class
    assert majority < document["metrics"]["accuracy"] <= 1.0
    assert set(document["personalized_metrics"]) == {"accuracy", "loss"}
    assert document["slice_metrics"], "the taxi schema has a region column"
    assert all(v["count"] >= 5 for v in document["slice_metrics"].values())
    assert features.document["width"] == 32  # the taxi backbone's embedding
    assert cycle.status["personal_head"]["base_version"] == "v3"


# Acceptance 6 ---------------------------------------------------------------------------------


def test_file_dropped_while_running_is_used_in_the_next_train_task(cycle: Cycle) -> None:
    examples = [r["updates"][0]["num_examples"] for r in cycle.rounds]
    assert examples == cycle.expected_train_rows
    assert examples[1] > examples[0]
    assert cycle.status["data"]["spans"] == ["a.csv", "b.csv", "c.csv"]


def test_sigterm_stops_the_daemon_cleanly_with_state_flushed(cycle: Cycle) -> None:
    assert cycle.exit_code == 0
    assert "fedge edge daemon stopped" in cycle.daemon_log
    assert cycle.status["state"] == "stopped"
    assert cycle.status["outbox_pending"] == 0
    assert not list((cycle.state / "outbox").glob("*.reply"))
    assert cycle.status["model_version"] == "v3"
    assert (cycle.state / "personal" / "personal_head.safetensors").is_file()


# Acceptance 2: the canary --------------------------------------------------------------------


def test_capture_saw_every_kind_of_request(cycle: Cycle) -> None:
    paths = {r["url"].split("/v1/", 1)[1].split("/")[0] for r in cycle.capture}
    assert {"clients", "tasks", "models", "rounds", "stats", "evaluations", "features"} <= paths
    assert sum(r["method"] == "POST" for r in cycle.capture) >= 6


def test_no_marker_raw_row_or_feature_vector_leaves_the_device(cycle: Cycle) -> None:
    sent = sent_bytes(cycle.capture)
    assert len(sent) > 10_000
    for marker in TEXT_MARKERS.values():
        assert marker.encode() not in sent, marker
        assert marker.encode("utf-16-le") not in sent, marker
    for name, value in NUMBER_MARKERS.items():
        assert repr(value).encode() not in sent, name
        assert f"{value:g}".encode() not in sent, name
        for encoded in float_encodings(value):
            assert encoded not in sent, (name, encoded)
    manifest = read_manifest(cycle.bundle)
    spec = FeatureSpec.from_dict(manifest.feature_spec)
    for path in sorted(cycle.data.glob("*.csv")):
        for line in csv_lines(path):
            assert line.encode() not in sent, f"a raw row of {path.name} was sent"
        columns = read_csv_columns(path, schema=manifest.schema, label="required")
        vectors = spec.transform(columns)
        for row in vectors:
            assert row.astype("<f4").tobytes() not in sent, f"a feature vector of {path.name}"
            assert row.astype("<f8").tobytes() not in sent


def test_the_leak_search_finds_what_it_looks_for(cycle: Cycle) -> None:
    manifest = read_manifest(cycle.bundle)
    columns = read_csv_columns(cycle.data / "a.csv", schema=manifest.schema, label="required")
    vector = FeatureSpec.from_dict(manifest.feature_spec).transform(columns)[3]
    line = csv_lines(cycle.data / "a.csv")[3]
    leak = {"data": base64.b64encode(vector.astype("<f4").tobytes()).decode(), "row": line}
    body = base64.b64encode(json.dumps(leak).encode()).decode()
    fake = [{"method": "POST", "url": "http://h/v1/x", "body": body,
             "headers": {"Content-Type": "application/json"}}]  # fmt: skip
    sent = sent_bytes(fake)
    assert vector.astype("<f4").tobytes() in sent
    assert TEXT_MARKERS["company"].encode() in sent
    assert float_encodings(NUMBER_MARKERS["fare"])[0] not in sent  # floats travel as text here


def _row_embeddings(cycle: Cycle) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    """Every local row's int8-backbone embedding, as the device computes it."""
    model = EdgeModel.load(cycle.bundle)
    out = []
    for path in sorted(cycle.data.glob("*.csv")):
        columns = read_csv_columns(path, schema=model.schema, label="required")
        out.append(model.embed(model.transform(columns)))
    return out


def test_no_row_embedding_leaves_the_device(cycle: Cycle) -> None:
    """Under the default policy a features task sends noised per-class prototypes: no
    row's embedding travels, as bytes or as a vector within 1e-4 of it."""
    sent = sent_bytes(cycle.capture)
    embeddings = _row_embeddings(cycle)
    for rows in embeddings:
        for row in rows:
            assert row.astype("<f4").tobytes() not in sent
            assert row.astype("<f8").tobytes() not in sent
    batches = sent_reports(cycle.capture, "features")  # a retry sends the same reply again
    assert batches
    every_row = np.concatenate(embeddings)
    for batch in batches:
        assert isinstance(batch, FeatureBatch)
        assert batch.privacy is not None
        assert batch.privacy.mode == "prototypes"
        assert len(batch.embeddings) <= 2  # at most one per class of the taxi label
        for vector in batch.embeddings:
            nearest = float(np.min(np.max(np.abs(every_row - vector), axis=1)))
            assert nearest > 1e-4, nearest


def test_statistics_sent_are_noised_with_the_default_epsilon(cycle: Cycle) -> None:
    reports = sent_reports(cycle.capture, "stats")
    assert reports
    for report in reports:
        assert isinstance(report, StatsReport)
        assert report.privacy is not None
        assert report.privacy.epsilon == pytest.approx(1.0)  # the policy's stats_epsilon
        for column in report.stats.columns.values():
            assert getattr(column, "min", None) is None  # no extreme value is ever sent
            assert getattr(column, "max", None) is None


def test_the_embedding_search_finds_a_row_embedding(cycle: Cycle) -> None:
    """What a row-level features reply would look like in the capture is found."""
    row = _row_embeddings(cycle)[0][3]
    data = base64.b64encode(row.astype("<f4").tobytes()).decode()
    body = base64.b64encode(json.dumps({"embeddings": {"data": data}}).encode()).decode()
    fake = [{"method": "POST", "url": "http://h/v1/features", "body": body,
             "headers": {"Content-Type": "application/json"}}]  # fmt: skip
    assert row.astype("<f4").tobytes() in sent_bytes(fake)
