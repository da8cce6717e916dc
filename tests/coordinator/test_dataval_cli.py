"""``fedge-coordinator data stats|infer-schema|anomalies``: files tensorflow_metadata parses,
values equal to numpy, drift reported with exit 1, one-line errors."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from coordinator.auth import hash_token
from coordinator.cli import main
from coordinator.records import ReportRecord
from coordinator.rest import ApiConfig, create_app
from coordinator.store import open_store
from fedge.data.taxi import TAXI_SCHEMA, load_taxi
from fedge.messages import StatsReport
from fedge.stats import DatasetStats, compute_stats
from tests.support.coordinator import (
    ADMIN_TOKEN,
    build_service,
    serving_in_thread,
    training_stats,
    write_admin_token,
)

TAXI_CSV = Path(__file__).parents[2] / "fedge" / "datasets" / "taxi.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _features(path: Path) -> dict[str, statistics_pb2.FeatureNameStatistics]:
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    if path.suffix == ".pbtxt":
        text_format.Parse(path.read_text(), stats)
    else:
        stats.ParseFromString(path.read_bytes())
    return {f.path.step[0]: f for f in stats.datasets[0].features}


def _shifted_taxi(path: Path) -> None:
    """The taxi CSV with fares x1.5 and the Cash trips removed."""
    with TAXI_CSV.open(newline="") as source, path.open("w", newline="") as target:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(target, fieldnames=list(reader.fieldnames or ()))
        writer.writeheader()
        for row in reader:
            if row["payment_type"] == "Cash":
                continue
            row["fare"] = repr(float(row["fare"]) * 1.5)
            writer.writerow(row)


def _with_comparators(path: Path) -> None:
    schema = text_format.Parse(path.read_text(), schema_pb2.Schema())
    for feature in schema.feature:
        if feature.name == TAXI_SCHEMA.label:
            continue
        if feature.type == schema_pb2.FLOAT:
            feature.drift_comparator.jensen_shannon_divergence.threshold = 0.05
        else:
            feature.drift_comparator.infinity_norm.threshold = 0.1
    path.write_text(text_format.MessageToString(schema))


def test_stats_infer_schema_and_anomalies_report_drift_by_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, shifted_csv = tmp_path / "base.pbtxt", tmp_path / "shifted.csv"
    assert main(["data", "stats", "--task", "taxi", "--out", str(base)]) == 0
    assert "15002 examples" in capsys.readouterr().out
    taxi = load_taxi()
    features = _features(base)
    fare = np.asarray(taxi.columns["fare"])
    assert features["fare"].num_stats.mean == pytest.approx(fare.mean(), rel=1e-12)
    assert features["fare"].num_stats.max == fare.max()
    _shifted_taxi(shifted_csv)
    current = tmp_path / "shifted.pb"
    argv = ["data", "stats", "--task", "taxi", "--data", str(shifted_csv), "--out", str(current)]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cash = Counter(taxi.columns["payment_type"])["Cash"]
    assert summary["num_examples"] == len(taxi.labels) - cash
    assert _features(current)["fare"].num_stats.mean == pytest.approx(
        fare[np.asarray(taxi.columns["payment_type"]) != "Cash"].mean() * 1.5, rel=1e-12
    )

    schema = tmp_path / "new" / "schema.pbtxt"  # --out's folder is created
    assert main(["data", "infer-schema", "--stats", str(base), "--out", str(schema)]) == 0
    assert "15 features" in capsys.readouterr().out
    _with_comparators(schema)
    assert main(["data", "anomalies", "--stats", str(base), "--schema", str(schema),
                 "--previous", str(base)]) == 0  # fmt: skip
    assert "no anomalies" in capsys.readouterr().out

    out, plots = tmp_path / "anomalies.pbtxt", tmp_path / "plots"
    code = main(["data", "anomalies", "--stats", str(current), "--schema", str(schema),
                 "--previous", str(base), "--out", str(out), "--plots", str(plots)])  # fmt: skip
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if ": " in line] == ["fare", "payment_type"]
    anomalies = text_format.Parse(out.read_text(), anomalies_pb2.Anomalies())
    assert set(anomalies.anomaly_info) == {"fare", "payment_type"}
    assert anomalies.anomaly_info["payment_type"].reason[0].type == (
        anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH
    )
    pngs = sorted(p.name for p in plots.iterdir())
    assert "drift_skew.png" in pngs
    assert "feature-fare.png" in pngs
    assert all((plots / name).read_bytes().startswith(PNG_MAGIC) for name in pngs)

    assert main(["data", "anomalies", "--stats", str(current), "--schema", str(schema),
                 "--previous", str(base), "--json"]) == 1  # fmt: skip
    document = json.loads(capsys.readouterr().out)
    assert [a["feature"] for a in document["anomalies"]] == ["fare", "payment_type"]
    assert document["anomalies"][0]["types"] == ["COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"]


def test_stats_of_a_user_csv_equal_numpy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    size = [float(v) for v in rng.normal(10, 3, 60)]
    color = [str(rng.choice(["red", "green", "blue"])) for _ in range(60)]
    path = tmp_path / "table.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["size", "color", "kind"])
        for i in range(60):
            writer.writerow(["" if i % 10 == 0 else size[i], color[i], "ab"[i % 2]])
    out = tmp_path / "stats.pb"
    argv = ["data", "stats", "--data", str(path), "--label-column", "kind", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    features = _features(out)
    present = np.array([v for i, v in enumerate(size) if i % 10])
    num = features["size"].num_stats
    assert num.common_stats.num_missing == 6
    assert num.mean == pytest.approx(present.mean(), rel=1e-12)
    assert num.std_dev == pytest.approx(present.std(), rel=1e-9)
    assert (num.min, num.max) == (present.min(), present.max())
    colors = {t.value: t.frequency for t in features["color"].string_stats.top_values}
    assert colors == Counter(color)
    labels = {t.value: t.frequency for t in features["kind"].string_stats.top_values}
    assert labels == {"a": 30, "b": 30}


def test_stats_merge_the_device_reports_of_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taxi = load_taxi()
    store = open_store(str(tmp_path / "state.db"))
    halves = np.array_split(np.arange(len(taxi.labels)), 2)
    for i, rows in enumerate(halves):
        columns = {name: column[rows] for name, column in taxi.columns.items()}
        stats = compute_stats(columns, schema=TAXI_SCHEMA)
        store.add_report(ReportRecord(0, "stats", f"c{i}", f"t{i}", 1.0, "v1", stats.to_dict()))
    store.close()
    out = tmp_path / "devices.pbtxt"
    assert main(["data", "stats", "--db", str(tmp_path / "state.db"), "--out", str(out)]) == 0
    assert "15002 examples" in capsys.readouterr().out
    merged = _features(out)
    fare = np.asarray(taxi.columns["fare"])
    assert merged["fare"].num_stats.mean == pytest.approx(fare.mean(), rel=1e-12)
    assert merged["payment_type"].string_stats.unique == len(set(taxi.columns["payment_type"]))
    argv = ["data", "stats", "--db", str(tmp_path / "state.db"), "--model-version", "v9"]
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fedge-coordinator: error: --db {tmp_path / 'state.db'}: "
        "there are no device statistics reports to merge"
    )


def test_stats_merge_the_device_reports_of_a_running_coordinator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = build_service(tmp_path, clients_per_round=5, min_clients=5)
    sent: list[DatasetStats] = []
    for seed in (1, 2):
        client = service.authenticate(service.register_client(region="north").token)
        (task,) = service.create_tasks("stats", client_ids=[client.client_id])
        assert service.next_task(client) is not None
        sent.append(training_stats(seed, fare_mean=10.0 + seed))
        service.submit_stats(client, StatsReport(task.task_id, sent[-1]))
    token_file = write_admin_token(tmp_path)
    out = tmp_path / "devices.pb"
    app = create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)))
    with serving_in_thread(app) as url:
        argv = ["data", "stats", "--coordinator", url, "--admin-token-file", str(token_file)]
        assert main([*argv, "--out", str(out), "--json"]) == 0
        assert main([*argv, "--model-version", "v9", "--out", str(tmp_path / "none.pb")]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_examples"] == 800
    assert captured.err.strip().splitlines()[-1] == (  # after the server's access log
        f"fedge-coordinator: error: --coordinator {url}: "
        "there are no device statistics reports to merge"
    )
    merged = sent[0].merge(sent[1])
    fare = _features(out)["fare"].num_stats
    assert fare.mean == pytest.approx(merged.numeric("fare").mean, rel=1e-12)
    assert fare.common_stats.num_non_missing == merged.numeric("fare").count
    assert not (tmp_path / "none.pb").exists()


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["data", "stats", "--out", "x.pb"], "give --data FILE with --label-column C"),
        (["data", "stats", "--db", "nowhere.db", "--out", "x.pb"], "no such database file"),
        (["data", "infer-schema", "--stats", "missing.pb", "--out", "s"], "cannot read"),
        (["data", "anomalies", "--stats", "missing.pb", "--schema", "s"], "cannot read"),
        (["data", "frobnicate"], "invalid choice"),
    ],
)
def test_data_usage_errors_exit_2_with_one_line(
    argv: list[str], phrase: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert phrase in err[0]
    assert list(tmp_path.iterdir()) == []
