"""Data-triggered retraining: candidates registered from bundles, and the watched location
(``fedge-coordinator data watch``): valid spans become candidate versions, corrupted ones
are quarantined with their anomalies and an alert; the state survives a restart."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2

from coordinator.admin import DirectAdmin
from coordinator.cli import main
from coordinator.dataval.schema import infer_schema, load_schema, save_schema
from coordinator.dataval.statistics import dataset_statistics
from coordinator.dataval.watch import WatchConfig, Watcher
from coordinator.dataval.workflow import check_span
from coordinator.sqlite_store import SQLiteStore
from fedge.data.user_table import infer_table
from fedge.errors import ConfigError
from tests.support.coordinator import build_service, make_bundle

LABEL = "tipped"


# Registering a candidate -----------------------------------------------------------------


def test_a_candidate_on_an_empty_registry_is_not_promoted(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    SQLiteStore(tmp_path / "state.db").close()
    (tmp_path / "artifacts").mkdir()
    admin = DirectAdmin(str(tmp_path / "state.db"), tmp_path / "artifacts")
    try:
        model = admin.register_candidate(tmp_path / "bundle")
        assert (model["version"], model["stage"], model["parent"]) == ("v1", "candidate", None)
        again = admin.register_candidate(tmp_path / "bundle")
        assert again["version"] == "v1"
        assert [m["stage"] for m in admin.list_models()] == ["candidate"]
    finally:
        admin.close()


def test_a_candidate_keeps_production_and_must_match_its_task(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    make_bundle(tmp_path / "retrained", seed=5, model_version="taxi-20240601")
    model = service.registry.register_candidate(tmp_path / "retrained")
    assert (model.version, model.stage, model.parent) == ("v2", "candidate", "v1")
    assert service.get_model("current").version == "v1"
    other = tmp_path / "other"
    make_bundle(other, seed=6, model_version="digits-1")
    manifest = json.loads((other / "manifest.json").read_text(encoding="utf-8"))
    (other / "manifest.json").write_text(json.dumps({**manifest, "task": "digits"}))
    with pytest.raises(ConfigError, match="for task 'digits', but production v1 is for 'taxi'"):
        service.registry.register_candidate(other)
    assert [m.version for m in service.store.list_models()] == ["v1", "v2"]


# The watched location --------------------------------------------------------------------


def _write_span(
    path: Path, *, seed: int, rows: int = 240, corrupt: bool = False, fare_scale: float = 1.0
) -> None:
    """A span of a small tipping table; ``corrupt``: fares turned into text and the
    payment column gone (what a broken export looks like)."""
    rng = np.random.default_rng(seed)
    payments, companies = ["Cash", "Credit Card"], ["Flash Cab", "Sun Taxi", "Taxi Affiliation"]
    header = ["fare", "trip_miles", "company", LABEL] + ([] if corrupt else ["payment_type"])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(rows):
            miles = float(rng.gamma(2.0, 1.5))
            fare = "n/a" if corrupt and i % 3 == 0 else f"{(3.25 + 2.1 * miles) * fare_scale:.2f}"
            payment = payments[int(rng.integers(0, 2))]
            tipped = "yes" if payment == "Credit Card" and rng.random() < 0.8 else "no"
            row = [fare, f"{miles:.2f}", companies[i % 3], tipped]
            writer.writerow(row if corrupt else [*row, payment])


@pytest.fixture
def watched(tmp_path: Path) -> dict[str, Path]:
    """A watched folder, a schema inferred from a first training table, and a coordinator
    database with its artifact directory."""
    paths = {
        "dir": tmp_path / "incoming",
        "schema": tmp_path / "schema.pbtxt",
        "workdir": tmp_path / "work",
        "db": tmp_path / "state.db",
        "artifacts": tmp_path / "artifacts",
    }
    paths["dir"].mkdir()
    paths["artifacts"].mkdir()
    SQLiteStore(paths["db"]).close()
    _write_span(tmp_path / "train.csv", seed=0)
    table = infer_table(tmp_path / "train.csv", label_column=LABEL)
    stats = dataset_statistics(table.dataset, label=LABEL, label_names=table.label_names)
    save_schema(infer_schema(stats), paths["schema"])
    return paths


def _watch(paths: dict[str, Path], *extra: str) -> int:
    return main(
        [
            "data", "watch", "--dir", str(paths["dir"]), "--schema", str(paths["schema"]),
            "--label-column", LABEL, "--workdir", str(paths["workdir"]),
            "--db", str(paths["db"]), "--artifacts", str(paths["artifacts"]),
            "--once", "--interval", "0.2", "--epochs", "1", "--representative", "16", *extra,
        ]
    )  # fmt: skip


def _state(paths: dict[str, Path]) -> dict[str, dict[str, object]]:
    state = json.loads((paths["workdir"] / "state.json").read_text(encoding="utf-8"))
    spans: dict[str, dict[str, object]] = state["spans"]
    return spans


def _store_view(paths: dict[str, Path]) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    store = SQLiteStore(paths["db"])
    try:
        models: list[tuple[str, str]] = [(m.version, m.stage) for m in store.list_models()]
        alerts = [
            {"message": a.message, **a.details} for a in store.list_alerts(kind="data_quarantined")
        ]
        return models, alerts
    finally:
        store.close()


def test_a_corrupted_span_is_quarantined_with_its_anomalies_and_an_alert(
    watched: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    span = watched["dir"] / "span-002.csv"
    _write_span(span, seed=2, corrupt=True)  # no .done marker: ready once it is stable
    assert _watch(watched) == 0
    out = capsys.readouterr().out
    assert "span-002.csv: quarantined" in out
    assert not span.exists()
    [folder] = (watched["dir"] / "quarantine").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["anomalies.pbtxt", "span-002.csv"]
    anomalies = text_format.Parse(
        (folder / "anomalies.pbtxt").read_text(encoding="utf-8"), anomalies_pb2.Anomalies()
    )
    reasons = {n: [r.type for r in i.reason] for n, i in anomalies.anomaly_info.items()}
    assert reasons["payment_type"] == [anomalies_pb2.AnomalyInfo.SCHEMA_MISSING_COLUMN]
    assert anomalies_pb2.AnomalyInfo.UNEXPECTED_DATA_TYPE in reasons["fare"]
    models, alerts = _store_view(watched)
    assert models == []  # no candidate
    assert len(alerts) == 1
    assert "span-002.csv quarantined" in str(alerts[0]["message"])
    assert alerts[0]["file"] == str(folder / "span-002.csv")
    assert set(alerts[0]["anomalies"]) >= {"fare", "payment_type"}
    [entry] = _state(watched).values()
    assert entry["status"] == "quarantined"


def test_an_unreadable_span_is_quarantined(watched: dict[str, Path]) -> None:
    span = watched["dir"] / "span-003.tfrecord.gz"
    span.write_bytes(b"\x1f\x8b\x08\x00 certainly not a gzip stream")
    (watched["dir"] / "span-003.tfrecord.gz.done").write_text("")
    assert _watch(watched) == 0
    [folder] = (watched["dir"] / "quarantine").iterdir()
    anomalies = text_format.Parse(
        (folder / "anomalies.pbtxt").read_text(encoding="utf-8"), anomalies_pb2.Anomalies()
    )
    assert anomalies.dataset_anomaly_info.short_description == "Unreadable span"
    assert not (watched["dir"] / "span-003.tfrecord.gz.done").exists()
    assert len(_store_view(watched)[1]) == 1


def _watcher(paths: dict[str, Path], *, db: Path | None = None) -> Watcher:
    config = WatchConfig(
        directory=paths["dir"], schema=paths["schema"], label_column=LABEL,
        workdir=paths["workdir"], db=str(db or paths["db"]), artifacts=paths["artifacts"],
    )  # fmt: skip
    return Watcher(
        config,
        validator=lambda p, s, prev: check_span(p, s, prev, label_column=LABEL),
        load_schema=load_schema,
    )


def test_a_file_still_growing_waits_until_it_is_stable(watched: dict[str, Path]) -> None:
    span = watched["dir"] / "span-004.csv"
    _write_span(span, seed=4, corrupt=True)
    watcher = _watcher(watched)
    assert watcher.scan() == []  # first sight of an unmarked file: not stable yet
    assert not (watched["workdir"] / "state.json").exists()
    with span.open("a", encoding="utf-8") as handle:  # still being written
        handle.write("9.10,2.00,Sun Taxi,no\n")
    assert watcher.scan() == []
    assert span.exists()
    [handled] = watcher.scan()
    assert handled["status"] == "quarantined"
    assert _state(watched)[handled["key"]]["status"] == "quarantined"
    # A restarted watcher does not handle it again, and raises no second alert.
    assert _watch(watched) == 0
    assert len(_store_view(watched)[1]) == 1


def test_a_quarantine_cut_short_is_finished_by_the_next_run(watched: dict[str, Path]) -> None:
    span = watched["dir"] / "span-005.csv"
    _write_span(span, seed=5, corrupt=True)
    (watched["dir"] / "span-005.csv.done").write_text("")
    unreachable = watched["artifacts"]  # a directory: the alert cannot be stored
    with pytest.raises(Exception, match="unable to open database"):
        _watcher(watched, db=unreachable).scan()
    [entry] = _state(watched).values()
    assert entry["status"] == "quarantining"
    assert _store_view(watched)[1] == []
    assert _watch(watched) == 0
    [entry] = _state(watched).values()
    assert entry["status"] == "quarantined"
    assert len(_store_view(watched)[1]) == 1
    [folder] = (watched["dir"] / "quarantine").iterdir()
    assert (folder / "span-005.csv").exists()
    assert (folder / "anomalies.pbtxt").exists()


def test_a_valid_span_becomes_a_candidate_and_a_corrupted_one_is_quarantined(
    watched: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Acceptance: a valid span -> fedge-train --data + fedge-quantize bundle + a registered
    candidate (not promoted); a corrupted span -> quarantined + alert + no candidate."""
    valid = watched["dir"] / "span-001.csv"
    _write_span(valid, seed=1)
    (watched["dir"] / "span-001.csv.done").write_text("")
    assert _watch(watched, "--seed", "3") == 0
    assert "span-001.csv: candidate v1" in capsys.readouterr().out
    models, alerts = _store_view(watched)
    assert models == [("v1", "candidate")]
    assert alerts == []
    [entry] = _state(watched).values()
    assert entry["status"] == "candidate"
    assert entry["version"] == "v1"
    bundle = Path(str(entry["bundle"]))
    assert (bundle / "manifest.json").exists()
    assert (bundle / "inference.tflite").exists()
    assert valid.exists()  # an accepted span stays where it was dropped

    _write_span(watched["dir"] / "span-002.csv", seed=2, corrupt=True)
    (watched["dir"] / "span-002.csv.done").write_text("")
    assert _watch(watched, "--seed", "3") == 0
    assert "span-002.csv: quarantined" in capsys.readouterr().out
    models, alerts = _store_view(watched)
    assert models == [("v1", "candidate")]  # no second candidate
    assert len(alerts) == 1
    assert "span-002.csv" in str(alerts[0]["file"])
    assert (watched["dir"] / "quarantine").is_dir()
    assert not (watched["dir"] / "span-002.csv").exists()
    statuses = sorted(str(e["status"]) for e in _state(watched).values())
    assert statuses == ["candidate", "quarantined"]

    # Drift is measured against the last accepted span (span-001), once the schema has a
    # comparator: fares x3 are quarantined for it.
    schema = str(watched["schema"])
    assert main(["data", "schema", schema, "set-drift", "fare", "0.05"]) == 0
    _write_span(watched["dir"] / "span-003.csv", seed=3, fare_scale=3.0)
    (watched["dir"] / "span-003.csv.done").write_text("")
    assert _watch(watched, "--seed", "3") == 0
    drifted = next(e for e in _state(watched).values() if e["file"] == "span-003.csv")
    assert drifted["status"] == "quarantined"
    assert drifted["anomalies"] == {
        "fare": ["High approximate Jensen-Shannon divergence between current and previous"]
    }
    assert _store_view(watched)[0] == [("v1", "candidate")]


def test_a_span_whose_retraining_fails_is_recorded_and_not_retried(
    watched: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _write_span(watched["dir"] / "span-006.csv", seed=6)
    (watched["dir"] / "span-006.csv.done").write_text("")
    assert _watch(watched, "--epochs", "0") == 1
    out = capsys.readouterr().out
    assert out.startswith("span-006.csv: failed cloud_trainer.cli exited with 2")
    [entry] = _state(watched).values()
    assert entry["status"] == "failed"
    assert "epochs" in str(entry["error"])
    assert _store_view(watched) == ([], [])
    assert _watch(watched) == 0  # not retried: nothing handled
    assert capsys.readouterr().out == ""
    assert [e["status"] for e in _state(watched).values()] == ["failed"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"db": "missing.db"}, "no such database file"),
        ({"artifacts": "missing-dir"}, "is not a directory"),
        ({"interval": "0"}, "scan interval must be > 0"),
    ],
)
def test_watch_usage_errors_create_nothing(
    watched: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    message: str,
) -> None:
    paths = {k: str(v) for k, v in watched.items()}
    paths.update({k: str(watched["dir"].parent / v) for k, v in change.items() if k != "interval"})
    argv = [
        "data", "watch", "--dir", paths["dir"], "--schema", paths["schema"],
        "--label-column", LABEL, "--workdir", paths["workdir"], "--db", paths["db"],
        "--artifacts", paths["artifacts"], "--once", "--interval", change.get("interval", "1"),
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedge-coordinator: error:")
    assert message in err
    assert not watched["workdir"].exists()
