"""The canary cycle over every transport and trust mode: REST and gRPC, TLS and mutual TLS.

One coordinator per trust mode on loopback (``fedge-coordinator serve`` with certificates
from :func:`coordinator.certs.init_certs`, gRPC beside REST) serves two devices at once:
one daemon reaches it over ``https://``, the other over ``grpcs://``, each in a process
where TensorFlow cannot be imported, each presenting its own device certificate under
mutual TLS. One train round takes both updates; then each is asked for an evaluation,
statistics and features. Every request each device sends is captured before encryption
(the HTTP transport, or an interceptor on the gRPC channel), and the canary search of
``test_daemon`` runs over both captures: the planted markers, the raw rows, the feature
vectors and the row embeddings never leave either device.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.certs import init_certs
from coordinator.launch import ClientTlsFiles
from coordinator.tls import TlsFiles
from edge_client.model import EdgeModel
from fedge.bundle import read_manifest
from fedge.data import read_csv_columns
from fedge.features import FeatureSpec
from fedge.messages import FeatureBatch, StatsReport
from fedge.protocol import fleet_pb2
from tests.support.canary import (
    NUMBER_MARKERS,
    TEXT_MARKERS,
    is_grpc,
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
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

TRANSPORTS = ("rest", "grpc")
BLOCKED = {"tensorflow", "keras", "tf_keras", "tensorflow_federated", "flask", "coordinator",
           "cloud_trainer", "quantize", "simulations"}  # fmt: skip


@dataclass
class Device:
    transport: str
    url: str
    data: Path
    state: Path
    client_id: str
    exit_code: int
    log: str
    report: dict[str, Any]
    capture: list[dict[str, Any]]
    status: dict[str, Any]


@dataclass
class Cycle:
    mode: str
    bundle: Path
    round: dict[str, Any]
    counts: dict[str, int]
    devices: dict[str, Device]


def _device_files(root: Path, first: int) -> tuple[Path, Path]:
    data, state = root / "data", root / "state"
    data.mkdir(parents=True)
    rows = taxi_rows(first, 150)
    plant_markers(rows)
    write_csv(data / "a.csv", rows)
    write_csv(data / "b.csv", taxi_rows(first + 150, 150))
    return data, state


@pytest.fixture(scope="module", params=["tls", "mtls"])
def cycle(
    request: pytest.FixtureRequest, edge_taxi_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Cycle:
    mode: str = request.param
    workdir = tmp_path_factory.mktemp(f"daemon-{mode}")
    certs = init_certs(workdir / "certs", devices=["operator", *TRANSPORTS])
    mutual = mode == "mtls"
    tls = TlsFiles(certs.server_cert, certs.server_key, certs.ca_cert if mutual else None)
    operator: ClientTlsFiles = (certs.ca_cert, *certs.devices["operator"])
    if not mutual:
        operator = (certs.ca_cert, None, None)
    daemons: dict[str, DaemonProcess] = {}
    # Two devices, one per transport; the cohort rule (ten clients) is off for them.
    with coordinator(
        workdir, edge_taxi_bundle, "taxi", "--min-cohort", "1", "--clients-per-round", "2",
        "--min-clients", "2", tls=tls, client_tls=operator, grpc=True,
    ) as server:  # fmt: skip
        urls = {"rest": server.url, "grpc": server.coordinator.grpc_url}
        assert urls["rest"].startswith("https://")
        assert str(urls["grpc"]).startswith("grpcs://")
        files = {}
        try:
            for index, transport in enumerate(TRANSPORTS):
                root = workdir / transport
                data, state = _device_files(root, 300 * index)
                flags = ["--ca-file", str(certs.ca_cert)]
                if mutual:
                    cert, key = certs.devices[transport]
                    flags += ["--cert", str(cert), "--key", str(key)]
                capture, report = root / "capture.jsonl", root / "report.json"
                url = str(urls[transport])
                client_id = register(url, root / "token", state, *flags, capture=capture)
                daemons[transport] = start_daemon(
                    url, root / "token", data, state, *flags, capture=capture, report=report
                )
                files[transport] = (url, data, state, client_id, capture, report)
            admin(server.url, "POST", "/v1/rounds", {}, tls=operator)
            round_ = wait_committed(server.url, 1, tls=operator)
            clients = [f[3] for f in files.values()]
            for kind in ("evaluate", "stats", "features"):
                admin(server.url, "POST", "/v1/tasks", {"kind": kind, "client_ids": clients},
                      tls=operator)  # fmt: skip
            counts = wait_for(
                lambda: (c := store_counts(workdir))["features"] == 2 and c["stats"] == 2
                and c["evaluation"] == 2 and c,
                timeout=60,
            )  # fmt: skip
            exits = {t: stop_daemon(d) for t, d in daemons.items()}
        finally:
            for daemon in daemons.values():
                stop_daemon(daemon)
    devices = {}
    for transport, (url, data, state, client_id, capture, report) in files.items():
        devices[transport] = Device(
            transport=transport,
            url=url,
            data=data,
            state=state,
            client_id=client_id,
            exit_code=exits[transport],
            log=daemons[transport].log(),
            report=json.loads(report.read_text()),
            capture=read_capture(capture),
            status=json.loads((state / "status.json").read_text()),
        )
    return Cycle(mode, edge_taxi_bundle, round_, counts, devices)


def test_a_device_on_each_transport_completes_every_task_kind(cycle: Cycle) -> None:
    assert cycle.round["num_updates"] == 2
    assert cycle.counts == {"updates": 2, "stats": 2, "evaluation": 2, "features": 2}
    for device in cycle.devices.values():
        assert device.report["tensorflow_import_fails"] is True
        assert BLOCKED.isdisjoint(device.report["modules"]), device.report["modules"]
        assert device.status["tasks"] == {"train": 1, "evaluate": 1, "stats": 1, "features": 1}
        assert device.status["model_version"] == "v2"
        assert device.status["outbox_pending"] == 0
        assert device.exit_code == 0
        assert "Traceback" not in device.log


def test_each_device_spoke_only_its_own_protocol(cycle: Cycle) -> None:
    rest, grpc = cycle.devices["rest"].capture, cycle.devices["grpc"].capture
    assert rest
    assert grpc
    assert all(r["url"].startswith("https://127.0.0.1:") and not is_grpc(r) for r in rest)
    assert all(r["url"].startswith("grpcs://127.0.0.1:") and is_grpc(r) for r in grpc)
    paths = {r["url"].split("/v1/", 1)[1].split("/")[0] for r in rest}
    assert {"clients", "tasks", "models", "rounds", "stats", "evaluations", "features"} <= paths
    methods = {r["method"].rsplit("/", 1)[1] for r in grpc}
    assert {"Register", "NextTask", "DownloadFile", "UploadUpdate", "SubmitReport"} <= methods
    assert {r["message"] for r in grpc if r["method"].endswith("/UploadUpdate")} == {"UpdateChunk"}


def _row_embeddings(device: Device, bundle: Path) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    model = EdgeModel.load(bundle)
    out = []
    for path in sorted(device.data.glob("*.csv")):
        columns = read_csv_columns(path, schema=model.schema, label="required")
        out.append(model.embed(model.transform(columns)))
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_marker_raw_row_feature_vector_or_embedding_leaves_the_device(
    cycle: Cycle, transport: str
) -> None:
    device = cycle.devices[transport]
    sent = sent_bytes(device.capture)
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
    for path in sorted(device.data.glob("*.csv")):
        for line in csv_lines(path):
            assert line.encode() not in sent, f"a raw row of {path.name} was sent"
        columns = read_csv_columns(path, schema=manifest.schema, label="required")
        for row in spec.transform(columns):
            assert row.astype("<f4").tobytes() not in sent, f"a feature vector of {path.name}"
            assert row.astype("<f8").tobytes() not in sent
    for rows in _row_embeddings(device, cycle.bundle):
        for row in rows:
            assert row.astype("<f4").tobytes() not in sent
            assert row.astype("<f8").tobytes() not in sent


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reports_sent_are_noised_on_every_transport(cycle: Cycle, transport: str) -> None:
    device = cycle.devices[transport]
    every_row = np.concatenate(_row_embeddings(device, cycle.bundle))
    batches = sent_reports(device.capture, "features")
    assert batches
    for batch in batches:
        assert isinstance(batch, FeatureBatch)
        assert batch.privacy is not None
        assert batch.privacy.mode == "prototypes"
        for vector in batch.embeddings:
            nearest = float(np.min(np.max(np.abs(every_row - vector), axis=1)))
            assert nearest > 1e-4, nearest
    reports = sent_reports(device.capture, "stats")
    assert reports
    for report in reports:
        assert isinstance(report, StatsReport)
        assert report.privacy is not None
        assert report.privacy.epsilon == pytest.approx(1.0)
        for column in report.stats.columns.values():
            assert getattr(column, "min", None) is None
            assert getattr(column, "max", None) is None


def test_the_search_finds_an_embedding_in_a_grpc_message(cycle: Cycle) -> None:
    """A row's embedding in a gRPC features message would be found in the capture."""
    row = _row_embeddings(cycle.devices["grpc"], cycle.bundle)[0][3]
    embeddings = fleet_pb2.Embeddings(
        dtype="float32", shape=[1, row.size], data=row.astype("<f4").tobytes()
    )
    message = fleet_pb2.ReportRequest(features=fleet_pb2.FeatureBatch(embeddings=embeddings))
    body = base64.b64encode(message.SerializeToString()).decode()
    fake = [{"method": "/fedge.v1.Fleet/SubmitReport", "url": "grpcs://h/fedge.v1.Fleet/x",
             "headers": {}, "body": body}]  # fmt: skip
    assert row.astype("<f4").tobytes() in sent_bytes(fake)
