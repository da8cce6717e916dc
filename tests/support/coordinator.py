"""Test helpers for the bundle, messages and coordinator tests: a fake bundle, a fake clock,
a service builder and a real-server launcher. Imported explicitly (not a conftest)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from flask import Flask
from waitress.server import create_server

from coordinator.artifacts import ArtifactStore
from coordinator.client import AdminClient
from coordinator.config import AlertConfig, RoundConfig, ServiceConfig
from coordinator.intake import UpdateSubmission
from coordinator.launch import ClientTlsFiles, CoordinatorProcess, launch_coordinator
from coordinator.selection import ClientSelector
from coordinator.service import CoordinatorService
from coordinator.sqlite_store import SQLiteStore
from coordinator.store import Store
from coordinator.tls import TlsFiles
from fedge.bundle import BundleManifest, write_manifest
from fedge.errors import ProcessError
from fedge.features import CategoricalFeature, FeatureSpec, NumericFeature
from fedge.schema import Schema
from fedge.stats import DatasetStats, compute_stats
from fedge.weights import Weights

SCHEMA = Schema(
    numeric=("fare", "miles"),
    categorical=("company",),
    label="big_tipper",
    num_classes=3,
    region="area",
)
FEATURE_SPEC = FeatureSpec(
    numeric=(
        NumericFeature(name="fare", normalization="zscore", offset=10.0, scale=2.0, fill=10.0),
        NumericFeature(name="miles", normalization="zscore", offset=3.0, scale=1.0, fill=3.0),
    ),
    categorical=(CategoricalFeature(name="company", vocabulary=("a", "b")),),
)
HEAD_SHAPES: dict[str, tuple[int, ...]] = {"head/kernel": (5, 3), "head/bias": (3,)}
CREATED_AT = "2024-05-01T12:00:00+00:00"
from tests.support import REPO_ROOT  # noqa: E402


def head_weights(seed: int = 0, scale: float = 0.1) -> Weights:
    rng = np.random.default_rng(seed)
    return Weights.from_pairs(
        (name, (rng.standard_normal(shape) * scale).astype(np.float32))
        for name, shape in HEAD_SHAPES.items()
    )


def training_stats(seed: int = 0, n: int = 400, fare_mean: float = 10.0) -> DatasetStats:
    """Statistics of synthetic raw columns shaped like :data:`SCHEMA`."""
    rng = np.random.default_rng(seed)
    columns = {
        "fare": rng.normal(fare_mean, 2.0, n),
        "miles": rng.normal(3.0, 1.0, n),
        "company": rng.choice(np.array(["a", "b", "c"], dtype=object), n),
    }
    return compute_stats(columns, schema=SCHEMA, labels=rng.integers(0, 3, n))


def make_bundle(
    directory: Path,
    *,
    seed: int = 0,
    model_version: str = "taxi-20240501",
    metadata: Mapping[str, Any] | None = None,
) -> BundleManifest:
    """A small fake bundle: opaque .tflite bytes, random head weights, a real manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1000)
    (directory / "inference.tflite").write_bytes(b"TFL3" + rng.bytes(256))
    (directory / "trainable.tflite").write_bytes(b"TFL3" + rng.bytes(512))
    (directory / "weights.safetensors").write_bytes(head_weights(seed).to_bytes())
    if metadata is None:
        metadata = {
            "training_record": {
                "host": "trainer-7",
                "user": "alice",
                "training_job": "job-42",
                "data_fingerprint": "sha256:" + "ab" * 32,
                "metrics": {"accuracy": 0.8, "loss": 0.5},
                "slice_metrics": {"north": {"accuracy": 0.82}, "south": {"accuracy": 0.78}},
            },
            "training_stats": training_stats().to_dict(),
        }
    return write_manifest(
        directory,
        model_version=model_version,
        task="taxi",
        schema=SCHEMA,
        feature_spec=FEATURE_SPEC.to_dict(),
        train_batch_size=8,
        created_at=CREATED_AT,
        metadata=metadata,
    )


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.time = start

    def __call__(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds


# In-process services ------------------------------------------------------------------------


def build_service(
    workdir: Path,
    *,
    clock: FakeClock | None = None,
    store: Store | None = None,
    seed: int = 0,
    alerts: AlertConfig | None = None,
    retry_after_seconds: float = 10.0,
    selector: ClientSelector | None = None,
    min_cohort: int = 1,
    cohort_window_seconds: float = 3600.0,
    privacy_budget: float | None = None,
    **round_options: Any,
) -> CoordinatorService:
    """A service over ``workdir`` (SQLite unless ``store`` is given) with a fake bundle
    imported as v1. The cohort rule is off (``min_cohort`` 1) unless a test asks for it:
    most tests here serve one to three clients."""
    bundle = workdir / "bundle"
    if not (bundle / "manifest.json").exists():
        make_bundle(bundle)
    service = CoordinatorService(
        store=store if store is not None else SQLiteStore(workdir / "state.db"),
        artifacts=ArtifactStore(workdir / "artifacts"),
        config=ServiceConfig(
            task="taxi",
            rounds=RoundConfig(**round_options),
            alerts=alerts or AlertConfig(),
            retry_after_seconds=retry_after_seconds,
            seed=seed,
            min_cohort=min_cohort,
            cohort_window_seconds=cohort_window_seconds,
            privacy_budget=privacy_budget,
        ),
        now=clock or FakeClock(),
        selector=selector,
    )
    service.import_bundle(bundle)
    return service


def delta(seed: int, scale: float = 0.01) -> Weights:
    return head_weights(seed, scale=scale)


def submission(
    round_id: int,
    client_id: str,
    *,
    body: bytes | None = None,
    seed: int = 1,
    num_examples: int = 10,
    key: str | None = None,
    task_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> UpdateSubmission:
    return UpdateSubmission(
        round_id=round_id,
        task_id=task_id or f"r{round_id}-{client_id}",
        num_examples=num_examples,
        idempotency_key=key if key is not None else f"key-{round_id}-{client_id}-{seed}",
        body=delta(seed).to_bytes() if body is None else body,
        metrics=metrics if metrics is not None else {"loss": 0.5, "accuracy": 0.75},
    )


# Real server processes --------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A coordinator the tests started (:class:`coordinator.launch.CoordinatorProcess`)."""

    coordinator: CoordinatorProcess

    @property
    def url(self) -> str:
        return self.coordinator.url

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """Its ``Popen``, for tests that signal it themselves."""
        return self.coordinator.child.popen

    def log(self) -> str:
        return self.coordinator.log()


def serve_command(workdir: Path, bundle: Path, admin_token_file: Path, *extra: str) -> list[str]:
    """``fedge-coordinator serve`` arguments over ``workdir`` (the launcher adds the port
    file); DEBUG logs from the coordinator. Enrollment is open and its rate limit far above
    what a test registers from its one loopback address, and the cohort rule is off
    (``--min-cohort 1``: most tests run one to three devices), unless ``extra`` says
    otherwise (``--enrollment-token-file`` replaces ``--open-enrollment``; later flags win)."""
    enrollment = (
        [] if any(a.startswith("--enrollment-token-file") for a in extra) else ["--open-enrollment"]
    )
    return [
        "--task", "taxi", "--bundle", str(bundle),
        "--db", str(workdir / "state.db"), "--artifacts", str(workdir / "artifacts"),
        "--host", "127.0.0.1", "--port", "0",
        "--admin-token-file", str(admin_token_file),
        "--tick-seconds", "0.2", "-v",
        *enrollment,
        "--registration-rate", "10000", "--registration-burst", "10000",
        "--registration-rate-total", "10000", "--registration-burst-total", "10000",
        "--min-cohort", "1",
        *extra,
    ]  # fmt: skip


def start_server(
    command: list[str],
    workdir: Path,
    *,
    timeout: float = 20.0,
    tls: TlsFiles | None = None,
    client_tls: ClientTlsFiles | None = None,
    grpc: bool = False,
) -> ServerProcess:
    """Serve with ``command`` (:func:`serve_command`'s arguments) and wait, bounded, until
    ``/healthz`` answers; AssertionError with the log tail when it does not. ``tls``,
    ``client_tls`` and ``grpc``: as :func:`coordinator.launch.launch_coordinator`'s."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("FEDGE_ADMIN_TOKEN", None)
    try:
        coordinator = launch_coordinator(
            command,
            port_file=workdir / "port",
            log_path=workdir / f"server-{time.monotonic_ns()}.log",
            env=env,
            cwd=REPO_ROOT,
            timeout=timeout,
            tls=tls,
            client_tls=client_tls,
            grpc=grpc,
        )
    except ProcessError as exc:
        raise AssertionError(str(exc)) from exc
    return ServerProcess(coordinator)


def stop_server(server: ServerProcess, sig: int = signal.SIGTERM) -> int | None:
    """SIGTERM and a bounded wait (then SIGKILL), or SIGKILL at once; the exit code."""
    if sig == signal.SIGKILL:
        return server.coordinator.kill()
    if sig != signal.SIGTERM:
        raise ValueError(f"stop with SIGTERM or SIGKILL, not {signal.Signals(sig).name}")
    return server.coordinator.stop()


@contextlib.contextmanager
def running_server(command: list[str], workdir: Path) -> Iterator[ServerProcess]:
    server = start_server(command, workdir)
    try:
        yield server
    finally:
        stop_server(server)


@contextlib.contextmanager
def serving_in_thread(app: Flask) -> Iterator[str]:
    """``app`` served by waitress on a loopback port in this process; yields its URL.

    Faster than a subprocess for tests that need real HTTP but no process boundary. The
    server says ``Server: fedge-coordinator`` like the real one, so the session's OpenAPI
    check sees its responses.
    """
    server = create_server(app, host="127.0.0.1", port=0, ident="fedge-coordinator")
    thread = threading.Thread(target=server.run, name="test-waitress", daemon=True)
    thread.start()

    def close_everything() -> None:  # runs in the server's loop thread
        for dispatcher in list(server._map.values()):
            dispatcher.close()

    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        # The worker threads first: one still finishing an answer pulls the trigger, whose
        # pipe must then still be open (closed under it, the write fails with EBADF, or
        # lands in whatever file reused the descriptor).
        server.task_dispatcher.shutdown(timeout=10)
        server.trigger.pull_trigger(close_everything)
        thread.join(timeout=10)
        assert not thread.is_alive(), "the test server did not stop"


# HTTP helpers -------------------------------------------------------------------------------

ADMIN_TOKEN = "admin-" + "0123456789abcdef" * 2


def write_admin_token(workdir: Path) -> Path:
    path = workdir / "admin-token"
    path.write_text(ADMIN_TOKEN + "\n")
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload_headers(
    token: str,
    task_id: str,
    *,
    num_examples: int | str = 10,
    key: str = "idem-key-0001",
    metrics: str | None = '{"loss": 0.5, "accuracy": 0.75}',
) -> dict[str, str]:
    headers = {
        **bearer(token),
        "Content-Type": "application/octet-stream",
        "X-Fedge-Task-Id": task_id,
        "X-Fedge-Num-Examples": str(num_examples),
        "Idempotency-Key": key,
    }
    if metrics is not None:
        headers["X-Fedge-Metrics"] = metrics
    return headers


def wait_for(predicate: Any, *, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded); return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


HTTP_TIMEOUT = 10


class EdgeClient:
    """What a device does over HTTP: register, poll, download and verify, upload."""

    def __init__(self, url: str, region: str) -> None:
        self.url = url
        self.session = requests.Session()
        response = self.session.post(
            f"{url}/v1/clients", json={"region": region}, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 201, response.text
        self.client_id: str = response.json()["client_id"]
        self.token: str = response.json()["token"]
        self.session.headers.update(bearer(self.token))

    def poll(self) -> dict[str, Any] | None:
        response = self.session.get(f"{self.url}/v1/tasks/next", timeout=HTTP_TIMEOUT)
        if response.status_code == 204:
            assert int(response.headers["Retry-After"]) >= 1
            return None
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    def download(self, version: str) -> tuple[BundleManifest, Weights]:
        response = self.session.get(
            f"{self.url}/v1/models/{version}/manifest", timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 200, response.text
        manifest = BundleManifest.from_json(response.content)
        for name, entry in manifest.files.items():
            body = self.session.get(
                f"{self.url}/v1/models/{version}/files/{name}", timeout=HTTP_TIMEOUT
            )
            digest = hashlib.sha256(body.content).hexdigest()
            assert digest == entry.sha256 == body.headers["ETag"].strip('"')
            assert len(body.content) == entry.size
        weights = self.session.get(f"{self.url}/v1/models/{version}/weights", timeout=HTTP_TIMEOUT)
        return manifest, Weights.from_bytes(weights.content)

    def upload(self, task: dict[str, Any], delta: Weights, num_examples: int) -> requests.Response:
        headers = upload_headers(
            self.token, task["task_id"], num_examples=num_examples, key=str(uuid.uuid4())
        )
        return self.session.post(
            f"{self.url}/v1/rounds/{task['round_id']}/updates",
            data=delta.to_bytes(),
            headers=headers,
            timeout=HTTP_TIMEOUT,
        )


def admin_client(url: str) -> AdminClient:
    """The admin API of the coordinator at ``url`` with the tests' admin token."""
    return AdminClient(url, ADMIN_TOKEN, timeout=HTTP_TIMEOUT)


def admin_request(url: str, path: str, method: str = "GET") -> dict[str, Any]:
    """``method path`` of the admin API (a coordinator error when it is refused)."""
    with admin_client(url) as admin:
        document: dict[str, Any] = admin.call(method, path)
    return document


def admin_call(
    url: str, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
) -> requests.Response:
    """``method path`` with the admin token, the raw response (for tests of refusals)."""
    return requests.request(
        method,
        f"{url}{path}",
        headers={**bearer(ADMIN_TOKEN), **(headers or {})},
        timeout=HTTP_TIMEOUT,
        **kwargs,
    )


def production_digest(url: str) -> str:
    """sha256 of the production model's weights as the download route serves them (and
    as its ETag names them): what a hostile request must leave unchanged."""
    response = admin_call(url, "GET", "/v1/models/current/weights")
    assert response.status_code == 200, response.text
    digest = hashlib.sha256(response.content).hexdigest()
    assert response.headers["ETag"].strip('"') == digest
    return digest


def local_training(weights: Weights, seed: int) -> Weights:
    """Stand-in for on-device training: a small deterministic step away from the weights."""
    rng = np.random.default_rng(seed)
    return Weights({n: a + rng.normal(0, 0.01, a.shape) for n, a in weights.items()})
