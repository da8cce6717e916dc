"""The daemon against a hostile or broken coordinator: a scripted HTTP server on loopback
(:mod:`tests.support.hostile_server`) that sends absurd Retry-After values, tampered
manifests and answers trickled one byte at a time.

In-process tests drive the real :class:`~edge_client.daemon.Daemon` over the real HTTP
transport; the SIGTERM tests run ``fedge-edge run`` as a subprocess (TensorFlow blocked)
and time its exit.
"""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from edge_client.backoff import RETRY_AFTER_MAX, BackoffPolicy
from edge_client.cli import main
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.outbox import Outbox
from edge_client.state import write_token
from edge_client.transport import parse_retry_after
from fedge.messages import ModelUpdate, Task, TaskConfig
from fedge.weights import Weights
from tests.support.coordinator import REPO_ROOT
from tests.support.edge import (
    DaemonProcess,
    launcher_command,
    start_daemon,
    stop_daemon,
    taxi_rows,
    wait_for,
    write_csv,
)
from tests.support.hostile_server import (
    Answer,
    Request,
    bundle_answers,
    hostile_server,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

POLL = "/v1/tasks/next"
STOP_BOUND = 2.0  # seconds from SIGTERM to exit, before the interpreter's own margin


def _task(version: str, *, kind: str = "evaluate", task_id: str = "t-1", **config: int) -> Answer:
    task = Task(
        task_id=task_id,
        kind=kind,  # type: ignore[arg-type]
        round_id=1 if kind == "train" else None,
        model_version=version,
        config=TaskConfig(**config),  # type: ignore[arg-type]
        deadline=time.time() + 3600,
    )
    body = json.dumps(task.to_dict()).encode()
    return Answer(200, {"Content-Type": "application/json"}, body)


def _config(tmp_path: Path, url: str, **extra: object) -> DaemonConfig:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_token(tmp_path / "token", "device-token")
    options: dict[str, object] = {
        "backoff": BackoffPolicy(base=0.05, cap=0.2),
        "settle_seconds": 0,
        "request_timeout": 5.0,
        **extra,
    }
    return DaemonConfig(
        coordinator=url,
        token_file=tmp_path / "token",
        data_dir=data,
        state_dir=tmp_path / "state",
        **options,  # type: ignore[arg-type]
    )


def _status(tmp_path: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((tmp_path / "state" / "status.json").read_text())
    return document


@pytest.fixture
def running() -> Iterator[list[tuple[Daemon, threading.Thread]]]:
    """Daemons run in background threads by a test; each is stopped and joined at the end."""
    started: list[tuple[Daemon, threading.Thread]] = []
    yield started
    for daemon, thread in started:
        daemon.request_stop()
        thread.join(timeout=10)


def _run_in_thread(
    daemon: Daemon, started: list[tuple[Daemon, threading.Thread]]
) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    started.append((daemon, thread))
    thread.start()
    return thread


# Finding 1: Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(204, "1e12"), (429, "1e12"), (204, "inf"), (503, "99999999999999999999")],
)
def test_an_absurd_retry_after_neither_kills_the_daemon_nor_sleeps_past_an_hour(
    tmp_path: Path,
    status: int,
    retry_after: str,
    running: list[tuple[Daemon, threading.Thread]],
) -> None:
    with hostile_server(lambda r: Answer(status, {"Retry-After": retry_after})) as server:
        daemon = Daemon(_config(tmp_path, server.url), rng=np.random.default_rng(0))
        thread = _run_in_thread(daemon, running)
        wait_for(lambda: server.count("GET", POLL) >= 1, timeout=10, interval=0.02)
        wait_for(lambda: daemon.next_delay is not None, timeout=5, interval=0.02)
        time.sleep(0.5)
        assert thread.is_alive(), "the daemon died on the Retry-After"
        assert daemon.next_delay is not None
        assert 1.0 <= daemon.next_delay <= RETRY_AFTER_MAX
        assert daemon.next_delay >= RETRY_AFTER_MAX / 2  # the server's wish, clamped, obeyed
        recorded = _status(tmp_path)["next_poll_in"]
        assert isinstance(recorded, float)
        assert recorded <= RETRY_AFTER_MAX
        assert server.count("GET", POLL) == 1
        stop_asked = time.monotonic()
        daemon.request_stop()
        thread.join(timeout=STOP_BOUND)
        assert not thread.is_alive()
        assert time.monotonic() - stop_asked < STOP_BOUND
    assert _status(tmp_path)["state"] == "stopped"


@pytest.mark.parametrize(
    "retry_after", ["0", "-5", "0.0001", "nan", "soon", "Thu, 01 Jan 1970 00:00:00 GMT"]
)
def test_a_tiny_or_junk_retry_after_does_not_make_a_tight_polling_loop(
    tmp_path: Path, retry_after: str, running: list[tuple[Daemon, threading.Thread]]
) -> None:
    window = 2.5
    with hostile_server(lambda r: Answer(204, {"Retry-After": retry_after})) as server:
        daemon = Daemon(_config(tmp_path, server.url), rng=np.random.default_rng(0))
        _run_in_thread(daemon, running)
        wait_for(lambda: server.count("GET", POLL) >= 1, timeout=10, interval=0.02)
        first = server.matching("GET", POLL)[0].at
        time.sleep(window)
        polls = [r for r in server.matching("GET", POLL) if r.at - first <= window]
    # At most one poll a second (the clamp's floor), so at most 1 + window of them.
    assert len(polls) <= 1 + int(window)
    gaps = [b.at - a.at for a, b in itertools.pairwise(polls)]
    assert all(gap >= 0.95 for gap in gaps), gaps


def test_retry_after_reads_seconds_and_http_dates_and_clamps_them() -> None:
    now = 1_700_000_000.0
    in_90s = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(in_90s, now=now) == pytest.approx(90.0)
    assert parse_retry_after("0") == 1.0
    assert parse_retry_after("1e12") == RETRY_AFTER_MAX
    assert parse_retry_after(email.utils.formatdate(now + 1e7, usegmt=True), now=now) == 3600.0
    assert parse_retry_after(email.utils.formatdate(now - 50, usegmt=True), now=now) == 1.0
    for junk in ("soon", "nan", "", "12 monkeys", None):
        assert parse_retry_after(junk) is None


# Finding 2: a rejected model, and backoff on every failure ---------------------------------


def test_a_rejected_model_is_not_downloaded_again_until_a_new_version_is_announced(
    tmp_path: Path, running: list[tuple[Daemon, threading.Thread]]
) -> None:
    manifest = b'{"model_version": "v2"}'
    announced = {"version": "v2"}

    def script(request: Request) -> Answer:
        if request.path == POLL:
            return _task(announced["version"], task_id=f"t-{announced['version']}")
        if request.path.endswith("/manifest"):
            # The manifest does not match the digest the server claims for it.
            return Answer(200, {"X-Fedge-Sha256": "0" * 64}, manifest)
        return Answer(404, {}, b'{"error": "not_found", "detail": ""}')

    window = 3.0
    with hostile_server(script) as server:
        daemon = Daemon(_config(tmp_path, server.url), rng=np.random.default_rng(1))
        _run_in_thread(daemon, running)
        wait_for(lambda: server.count("GET", POLL) >= 1, timeout=10, interval=0.02)
        time.sleep(window)
        v2_downloads = server.count("GET", "/v1/models/v2/manifest")
        polls = server.count("GET", POLL)
        status = _status(tmp_path)
        failures = daemon.backoff.failures

        announced["version"] = "v3"  # a new version: downloaded (and rejected) once
        wait_for(lambda: server.count("GET", "/v1/models/v3/manifest") >= 1, timeout=10)
        time.sleep(0.5)
        v3_downloads = server.count("GET", "/v1/models/v3/manifest")
        v2_after = server.count("GET", "/v1/models/v2/manifest")

    assert v2_downloads == 1
    assert v2_after == 1
    assert v3_downloads == 1
    assert polls >= 3  # it kept polling (and was refused the same version)...
    assert failures == polls  # ...every refusal counted as a failure, none reset the count
    rejected = status["rejected_models"]
    assert isinstance(rejected, dict)
    assert rejected["v2"]["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert "sha256" in rejected["v2"]["reason"]
    assert status["model_version"] is None


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (Answer(500, {}, b'{"error": "internal", "detail": "boom"}'), "unreachable"),
        (Answer(503, {}, b"<html>down</html>"), "unreachable"),
        (Answer(429, {}, b'{"error": "rate_limited", "detail": ""}'), "unreachable"),
        (Answer(200, {}, b"{not json"), "refused"),
        (Answer(401, {}, b'{"error": "unauthorized", "detail": ""}'), "refused"),
    ],
)
def test_every_failure_backs_off_exponentially_until_a_clean_poll(
    tmp_path: Path, answer: Answer, outcome: str
) -> None:
    script = {"answer": answer}
    with hostile_server(lambda r: script["answer"]) as server:
        policy = BackoffPolicy(base=0.01, cap=0.05)
        daemon = Daemon(_config(tmp_path, server.url, backoff=policy), rng=np.random.default_rng(2))
        outcomes = [daemon.step() for _ in range(4)]
        failures = daemon.backoff.failures
        delay = daemon.next_delay
        script["answer"] = Answer(204, {"Retry-After": "1"})
        daemon.stop_event.set()  # the 204's one-second wait ends at once
        assert daemon.step() == "idle"
        daemon.client.close()
    assert outcomes == [outcome] * 4
    assert failures == 4
    assert delay is not None
    assert 0 <= delay <= policy.ceiling(4)
    assert daemon.backoff.failures == 0


def test_an_upload_the_coordinator_refuses_backs_off(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "state" / "outbox")
    update = ModelUpdate(
        task_id="t-1",
        round_id=1,
        delta=Weights({"w": np.ones(3, np.float32)}),
        num_examples=10,
        metrics={"loss": 0.5},
    )
    outbox.put(update)

    def script(request: Request) -> Answer:
        if request.method == "POST":
            return Answer(400, {}, b'{"error": "bad_update", "detail": "no"}')
        return Answer(204, {"Retry-After": "1"})

    with hostile_server(script) as server:
        daemon = Daemon(_config(tmp_path, server.url), rng=np.random.default_rng(3))
        outcome = daemon.step()
        daemon.client.close()
    assert outcome == "refused"
    assert daemon.backoff.failures == 1
    assert server.count("GET", POLL) == 0
    failed = list((tmp_path / "state" / "outbox" / "failed").glob("*.reply"))
    assert len(failed) == 1
    assert f"the coordinator refused replies: {failed[0].name}" in str(
        _status(tmp_path)["last_error"]
    )


# Finding 3: trickled answers and SIGTERM -----------------------------------------------------


@pytest.mark.parametrize("trickle_from", ["head", "body"])
def test_a_trickled_answer_is_cut_off_at_the_request_deadline(
    tmp_path: Path, trickle_from: Literal["head", "body"]
) -> None:
    timeout = 2.0
    task = _task("v2")
    slow = Answer(200, {**task.headers, "X-Padding": "p" * 64}, task.body,
                  trickle=0.05, trickle_from=trickle_from)  # fmt: skip
    with hostile_server(lambda r: slow) as server:
        daemon = Daemon(
            _config(tmp_path, server.url, request_timeout=timeout), rng=np.random.default_rng(4)
        )
        started = time.monotonic()
        outcome = daemon.step()
        elapsed = time.monotonic() - started
        wait_for(lambda: server.gave_up_at, timeout=5, interval=0.05)
        gave_up = server.gave_up_at[0] - server.matching("GET", POLL)[0].at
        daemon.client.close()
    assert outcome == "unreachable"
    backoff = daemon.next_delay or 0.0
    assert elapsed <= timeout + 2.0 + backoff
    assert gave_up <= timeout + 2.0
    assert "deadline" in str(_status(tmp_path)["last_error"])


def _interpreter_margin() -> float:
    """How long a bare ``fedge-edge --version`` takes here (start-up and exit of the same
    interpreter and imports): the slack allowed on top of the stop bound."""
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(launcher_command(["--version"]), capture_output=True, timeout=60,
                   check=True, cwd=REPO_ROOT, env=env)  # fmt: skip
    return time.monotonic() - started


def _sigterm_and_time(daemon: DaemonProcess) -> tuple[int, float]:
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    try:
        code = daemon.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait(timeout=10)
        return daemon.process.returncode, float("inf")
    return code, time.monotonic() - started


def _leftovers(state: Path) -> list[str]:
    return sorted(
        str(p.relative_to(state))
        for p in state.rglob("*")
        if p.name.endswith((".tmp", ".partial")) or (p.is_dir() and p.name.endswith(".partial"))
    )


@pytest.mark.parametrize("phase", ["poll", "download", "upload"])
def test_sigterm_stops_the_daemon_within_two_seconds_while_the_server_trickles(
    tmp_path: Path, phase: str
) -> None:
    state = tmp_path / "state"
    queued: list[str] = []
    if phase == "upload":
        update = ModelUpdate(task_id="t-1", round_id=1,
                             delta=Weights({"w": np.ones(3, np.float32)}), num_examples=10,
                             metrics={"loss": 0.5})  # fmt: skip
        queued = [Outbox(state / "outbox").put(update).name]
    trickle = Answer(200, {"Content-Type": "application/json"}, b"{}" * 200, trickle=0.5)
    watched = {"poll": ("GET", POLL), "download": ("GET", "/v1/models/v2/manifest"),
               "upload": ("POST", "/v1/rounds/1/updates")}[phase]  # fmt: skip

    def script(request: Request) -> Answer:
        if (request.method, request.path) == watched:
            return trickle
        if request.path == POLL:
            return _task("v2")
        return Answer(404, {}, b'{"error": "not_found", "detail": ""}')

    margin = _interpreter_margin()
    write_token(tmp_path / "token", "device-token")
    (tmp_path / "data").mkdir()
    daemon: DaemonProcess | None = None
    with hostile_server(script) as server:
        try:
            daemon = start_daemon(server.url, tmp_path / "token", tmp_path / "data", state,
                                  "--timeout", "60")  # fmt: skip
            wait_for(lambda: server.count(*watched) >= 1, timeout=30, interval=0.02)
            time.sleep(1.0)  # well inside the trickle (and its 60 s deadline)
            assert daemon.process.poll() is None
            code, elapsed = _sigterm_and_time(daemon)
        finally:
            if daemon is not None:
                stop_daemon(daemon)
    assert code == 0, daemon.log()
    assert elapsed <= STOP_BOUND + margin, (elapsed, margin, daemon.log())
    status = json.loads((state / "status.json").read_text())
    assert status["state"] == "stopped"
    assert status["stopped_by"] == "SIGTERM"
    assert _leftovers(state) == []
    # An upload that was not acknowledged stays queued, whole, to be sent again.
    assert sorted(p.name for p in (state / "outbox").glob("*.reply")) == queued
    if queued:
        assert Outbox(state / "outbox").entries()[0].request.task_id == "t-1"


def test_sigterm_interrupts_on_device_training_within_two_seconds(
    edge_taxi_bundle: Path, tmp_path: Path
) -> None:
    state, data = tmp_path / "state", tmp_path / "data"
    data.mkdir()
    write_csv(data / "trips.csv", taxi_rows(0, 1200))
    write_token(tmp_path / "token", "device-token")
    files = bundle_answers(edge_taxi_bundle, "taxi-v1")
    train = _task("taxi-v1", kind="train", epochs=2000, batch_size=16)

    def script(request: Request) -> Answer:
        if request.path == POLL:
            return train
        return files.get(request.path, Answer(404, {}, b'{"error": "not_found", "detail": ""}'))

    margin = _interpreter_margin()
    daemon: DaemonProcess | None = None
    with hostile_server(script) as server:
        try:
            daemon = start_daemon(server.url, tmp_path / "token", data, state)
            wait_for(lambda: "data span trips.csv" in daemon.log(), timeout=60, interval=0.02)
            time.sleep(1.0)  # training is under way
            assert daemon.process.poll() is None
            assert "queued train reply" not in daemon.log()
            code, elapsed = _sigterm_and_time(daemon)
        finally:
            if daemon is not None:
                stop_daemon(daemon)
    assert code == 0, daemon.log()
    assert elapsed <= STOP_BOUND + margin, (elapsed, margin, daemon.log())
    status = json.loads((state / "status.json").read_text())
    assert status["state"] == "stopped"
    assert status["model_version"] == "taxi-v1"
    # The interrupted task left no reply (whole or half) behind, nor any temporary file.
    assert list((state / "outbox").iterdir()) == []
    assert _leftovers(state) == []


def test_run_help_documents_how_the_daemon_treats_a_misbehaving_coordinator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Retry-After (on 204, 429 or 503; seconds or an HTTP-date)" in out
    assert "is obeyed within [1 s, 1 h]" in out
    assert "is not downloaded again until the coordinator announces another version" in out
    assert "--timeout bounds each whole request (headers and body)" in out
    assert "SIGTERM/SIGINT stop it within about a second at any point" in out


def test_a_body_cut_short_of_its_content_length_is_a_transport_failure(tmp_path: Path) -> None:
    task = _task("v2")
    short = Answer(200, {**task.headers, "Content-Length": str(len(task.body) + 100)}, task.body)
    with hostile_server(lambda r: short) as server:
        daemon = Daemon(_config(tmp_path, server.url), rng=np.random.default_rng(5))
        outcome = daemon.step()
        daemon.client.close()
    assert outcome == "unreachable"
    assert f"the body ended after {len(task.body)} of {len(task.body) + 100} bytes" in str(
        _status(tmp_path)["last_error"]
    )
