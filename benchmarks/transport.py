"""REST against gRPC, both over TLS: one round of N concurrent devices through each.

Run ``.venv/bin/python benchmarks/transport.py`` (``--devices 100 --parameters 100000`` by
default; loopback only; stops by itself within ``--time-limit`` seconds per transport). A
development CA and server certificate come from ``fedge-coordinator certs init``. For each
transport a fresh ``fedge-coordinator serve`` starts with TLS on and gRPC beside REST, on a
fake bundle whose head has ``--parameters`` float32 weights, and a counting TCP relay sits
in front of the port the devices use. N devices - the edge client's own client from
``edge_client.api.connect`` (``https://`` or ``grpcs://``), one thread each - register,
poll until a train task comes, download the manifest and every bundle file (sha256
checked), and upload a delta; the round asks for all N (``clients_per_round`` =
``min_clients`` = N). It prints, side by side:

- p50/p99 latency per call (register, next task, download, upload) in ms;
- the bytes the relay carried device -> server and server -> device: TLS records, what the
  network sees (REST opens a connection per call, gRPC keeps one channel per device);
- the server's CPU seconds (user + system, psutil on the child) from the first device
  call to the round's end;
- failed calls, throttled registrations (429 / RESOURCE_EXHAUSTED, retried after
  Retry-After), and each round's outcome with its updates against the acknowledged ones.

The exit status is 0 when both rounds committed with every acknowledged update counted
and no call failed, 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from coordinator.client import AdminClient  # noqa: E402
from coordinator.errors import CoordinatorUnavailableError  # noqa: E402
from coordinator.launch import CoordinatorProcess, launch_coordinator  # noqa: E402
from coordinator.tls import TlsFiles  # noqa: E402
from edge_client.api import CoordinatorApi, connect  # noqa: E402
from edge_client.errors import RequestRejected, TransportError  # noqa: E402
from edge_client.tls import ClientTls  # noqa: E402
from edge_client.transport import reply_request  # noqa: E402
from fedge.bundle import BundleManifest  # noqa: E402
from fedge.messages import ModelUpdate  # noqa: E402
from fedge.weights import Weights  # noqa: E402
from tests.support.fleet import CallStats, percentile  # noqa: E402
from tests.support.secagg_client import make_wide_bundle  # noqa: E402

ADMIN_TOKEN = "bench-admin-" + "0" * 24
ENROLLMENT_TOKEN = "bench-enroll-" + "1" * 24
TRANSPORTS = ("rest", "grpc")
CALL_LABELS = {"register": "register", "poll": "next_task", "download": "download",
               "upload": "upload"}  # fmt: skip
_DONE = ("committed", "failed")
_OUTPUTS = 8  # the head's width: --parameters = rows x 8 + 8


def _log(message: str) -> None:
    print(message, flush=True)


# The relay ------------------------------------------------------------------------------


class CountingRelay:
    """A loopback TCP relay to ``127.0.0.1:target_port`` that counts the bytes it carries
    each way (``up``: client -> server)."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.up = 0
        self.down = 0
        self.connections = 0
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def counts(self) -> tuple[int, int, int]:
        with self._lock:
            return self.up, self.down, self.connections

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self.connections += 1
            done = threading.Barrier(2, action=functools.partial(_close, downstream, upstream))
            for source, sink, up in ((downstream, upstream, True), (upstream, downstream, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, up, done), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, up: bool, done: threading.Barrier
    ) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait(timeout=600)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()


# The devices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    client_id: str
    task_id: str
    sha256: str


class Device:
    """One device: the edge client's coordinator client for ``url``, timing every call."""

    def __init__(
        self, url: str, index: int, tls: ClientTls, stats: CallStats, *, timeout: float
    ) -> None:
        self.index = index
        self.stats = stats
        self.client: CoordinatorApi = connect(url, tls=tls, timeout=timeout)
        self.rng = random.Random(index)
        self.client_id: str | None = None

    def _timed(self, kind: str, call: Any) -> Any:
        started = time.perf_counter()
        try:
            result = call()
        except TransportError as exc:
            if "429" in str(exc) or "rate_limited" in str(exc):
                self.stats.throttle(kind)
            else:
                self.stats.failed(kind, type(exc).__name__)
            raise
        except RequestRejected as exc:
            self.stats.failed(kind, f"{exc.status} {exc.code}")
            raise
        self.stats.answered(kind, time.perf_counter() - started)
        return result

    def _pause(self, seconds: float | None, stop: threading.Event) -> None:
        wait = min(seconds if seconds is not None else 1.0, 1.0)
        stop.wait(max(0.05, wait) * self.rng.uniform(0.5, 1.0))

    def register(self, stop: threading.Event) -> bool:
        key = uuid.uuid4().hex
        region = ("north", "south", "east", "west")[self.index % 4]
        while not stop.is_set():
            try:
                registration = self._timed(
                    "register",
                    lambda: self.client.register(
                        region=region, enrollment_token=ENROLLMENT_TOKEN, registration_key=key
                    ),
                )
            except TransportError as exc:
                self._pause(exc.retry_after, stop)
                continue
            except RequestRejected:
                return False
            self.client.token = registration.token
            self.client_id = registration.client_id
            return True
        return False

    def task(self, stop: threading.Event) -> Any:
        while not stop.is_set():
            try:
                answer = self._timed("poll", self.client.next_task)
            except (TransportError, RequestRejected):
                self._pause(None, stop)
                continue
            if answer.task is not None and answer.task.kind == "train":
                return answer.task
            self._pause(answer.retry_after, stop)
        return None

    def download(self, version: str) -> Weights:
        manifest_body = self._timed(
            "download", lambda: self.client.download(version, "manifest.json")
        ).body
        manifest = BundleManifest.from_json(manifest_body)
        weights: Weights | None = None
        for name, entry in manifest.files.items():
            body = self._timed("download", lambda n=name: self.client.download(version, n)).body
            if hashlib.sha256(body).hexdigest() != entry.sha256:
                self.stats.failed("download", "sha256 mismatch")
                raise TransportError(f"{name}: sha256 mismatch")
            if name == "weights.safetensors":
                weights = Weights.from_bytes(body)
        if weights is None:
            raise TransportError("the bundle has no weights.safetensors")
        return weights

    def upload(self, task: Any, weights: Weights, stop: threading.Event) -> Ack | None:
        rng = np.random.default_rng(self.index)
        delta = Weights(
            {n: (rng.standard_normal(a.shape) * 0.01).astype(a.dtype) for n, a in weights.items()}
        )
        update = ModelUpdate(
            task_id=task.task_id,
            round_id=int(task.round_id),
            num_examples=self.rng.randint(5, 50),
            metrics={"loss": 0.5, "accuracy": 0.75},
            delta=delta,
        )
        outgoing = reply_request(update, uuid.uuid4().hex)
        while not stop.is_set():
            try:
                self._timed("upload", lambda: self.client.send(outgoing))
            except TransportError as exc:
                self._pause(exc.retry_after, stop)
                continue
            except RequestRejected:
                return None
            assert self.client_id is not None
            return Ack(self.client_id, task.task_id, hashlib.sha256(outgoing.body).hexdigest())
        return None

    def run(self, registered: threading.Barrier, stop: threading.Event, acks: list[Ack]) -> None:
        try:
            ok = self.register(stop)
            with contextlib.suppress(threading.BrokenBarrierError):
                registered.wait()
            if not ok:
                return
            while not stop.is_set():
                task = self.task(stop)
                if task is None:
                    return
                try:
                    weights = self.download(task.model_version)
                except (TransportError, RequestRejected):
                    self._pause(None, stop)
                    continue
                ack = self.upload(task, weights, stop)
                if ack is not None:
                    acks.append(ack)
                return
        finally:
            self.client.close()


# One transport --------------------------------------------------------------------------


def _certificates(work: Path) -> Path:
    """``fedge-coordinator certs init --out DIR``: the CA and the server certificate."""
    out = work / "certs"
    subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "certs", "init", "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return out


def _start(
    work: Path, certs: Path, devices: int, parameters: int, deadline: float
) -> CoordinatorProcess:
    bundle = work / "bundle"
    rows = max(1, (parameters - _OUTPUTS) // _OUTPUTS)
    make_wide_bundle(bundle, {"head/kernel": (rows, _OUTPUTS), "head/bias": (_OUTPUTS,)})
    (work / "admin-token").write_text(ADMIN_TOKEN + "\n")
    (work / "enrollment-token").write_text(ENROLLMENT_TOKEN + "\n")
    args = [
        "--task", "taxi", "--bundle", str(bundle),
        "--db", str(work / "state.db"), "--artifacts", str(work / "artifacts"),
        "--host", "127.0.0.1",
        "--admin-token-file", str(work / "admin-token"),
        "--enrollment-token-file", str(work / "enrollment-token"),
        "--on-demand", "--retry-after", "1",
        "--clients-per-round", str(devices), "--min-clients", str(devices),
        "--deadline-seconds", str(deadline),
        "--registration-rate", "50", "--registration-burst", "500",
        "-q",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDGE_ADMIN_TOKEN", None)
    return launch_coordinator(
        args,
        port_file=work / "port",
        log_path=work / "coordinator.log",
        env=env,
        cwd=REPO,
        tls=TlsFiles(cert=certs / "server.pem", key=certs / "server.key"),
        client_tls=(certs / "ca.pem", None, None),
        grpc=True,
    )


def _wait(predicate: Any, timeout: float) -> Any:
    """Poll ``predicate`` until it is true or ``timeout`` passes; an admin call the busy
    server did not answer in time is asked again."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(CoordinatorUnavailableError):
            result = predicate()
            if result:
                return result
        time.sleep(0.5)
    return None


@contextlib.contextmanager
def _small_stacks() -> Iterator[None]:
    previous = threading.stack_size(512 * 1024)
    try:
        yield
    finally:
        threading.stack_size(previous)


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run_transport(
    transport: str, work: Path, certs: Path, devices: int, parameters: int, time_limit: float
) -> dict[str, Any]:
    """One round of ``devices`` devices over ``transport``: the figures of one column."""
    work.mkdir(parents=True, exist_ok=True)
    with _start(work, certs, devices, parameters, time_limit) as server:
        if transport == "rest":
            relay = CountingRelay(server.port)
            url = f"https://127.0.0.1:{relay.port}"
        else:
            assert server.grpc_url is not None
            relay = CountingRelay(int(server.grpc_url.rsplit(":", 1)[1]))
            url = f"grpcs://127.0.0.1:{relay.port}"
        _log(f"{transport}: coordinator {server.url} (pid {server.child.pid}); devices use {url}")
        admin = AdminClient(server.url, ADMIN_TOKEN, timeout=60, ca_file=certs / "ca.pem")
        stats = CallStats()
        acks: list[Ack] = []
        stop = threading.Event()
        registered = threading.Barrier(devices + 1)
        tls = ClientTls(ca_file=certs / "ca.pem")
        fleet = [Device(url, i, tls, stats, timeout=60.0) for i in range(devices)]
        cpu_before = _cpu_seconds(server.child.pid)
        started = time.monotonic()
        with _small_stacks():
            threads = [
                threading.Thread(
                    target=d.run,
                    args=(registered, stop, acks),
                    name=f"device-{d.index}",
                    daemon=True,
                )
                for d in fleet
            ]
            for thread in threads:
                thread.start()
        document: dict[str, Any] | None = None
        try:
            registered.wait(timeout=time_limit / 2)
        except threading.BrokenBarrierError:
            _log(f"{transport}: not every device registered within {time_limit / 2:.0f} s")
        else:
            round_id = int(admin.open_round()["round_id"])
            remaining = max(1.0, time_limit - (time.monotonic() - started))
            if _wait(lambda: admin.show_round(round_id)["state"] in _DONE, remaining):
                document = _wait(lambda: admin.show_round(round_id), 60.0)
        elapsed = time.monotonic() - started
        cpu = _cpu_seconds(server.child.pid) - cpu_before
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        relay.close()
        admin.close()
        up, down, connections = relay.counts()
    counted = {
        (u["client_id"], u["task_id"], u["sha256"]) for u in (document or {}).get("updates", [])
    }
    lost = [a for a in acks if (a.client_id, a.task_id, a.sha256) not in counted]
    for line in stats.lines():
        _log(f"  {transport}: {line}")
    return {
        "stats": stats,
        "bytes_up": up,
        "bytes_down": down,
        "connections": connections,
        "cpu": cpu,
        "seconds": elapsed,
        "state": document["state"] if document else "unfinished",
        "updates": len(document.get("updates", [])) if document else 0,
        "acks": len(acks),
        "lost": len(lost),
        "ok": document is not None
        and document["state"] == "committed"
        and len(acks) == devices
        and not lost
        and stats.error_count() == 0,
    }


# The table ------------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.1f}"


def table(results: dict[str, dict[str, Any]], devices: int) -> list[str]:
    """The rows ``metric rest grpc``, one figure per cell."""
    rows: list[tuple[str, ...]] = [("metric", *TRANSPORTS)]
    for kind, label in CALL_LABELS.items():
        for q in (50, 99):
            rows.append(
                (
                    f"{label}_p{q}_ms",
                    *(_ms(results[t]["stats"].latencies[kind], q) for t in TRANSPORTS),
                )
            )
    for kind, label in CALL_LABELS.items():
        rows.append(
            (f"{label}_calls", *(str(len(results[t]["stats"].latencies[kind])) for t in TRANSPORTS))
        )
    rows += [
        ("bytes_up", *(str(results[t]["bytes_up"]) for t in TRANSPORTS)),
        ("bytes_down", *(str(results[t]["bytes_down"]) for t in TRANSPORTS)),
        ("bytes_per_device", *(
            str((results[t]["bytes_up"] + results[t]["bytes_down"]) // devices) for t in TRANSPORTS
        )),
        ("tcp_connections", *(str(results[t]["connections"]) for t in TRANSPORTS)),
        ("server_cpu_s", *(f"{results[t]['cpu']:.2f}" for t in TRANSPORTS)),
        ("round_seconds", *(f"{results[t]['seconds']:.1f}" for t in TRANSPORTS)),
        ("round", *(results[t]["state"] for t in TRANSPORTS)),
        ("updates", *(f"{results[t]['updates']}/{devices}" for t in TRANSPORTS)),
        ("acks_lost", *(str(results[t]["lost"]) for t in TRANSPORTS)),
        ("errors", *(str(results[t]["stats"].error_count()) for t in TRANSPORTS)),
        ("throttled", *(str(sum(results[t]["stats"].throttled.values())) for t in TRANSPORTS)),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows) + 2
    return [f"{r[0]:<{width}}" + "".join(f"{c:>14}" for c in r[1:]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--parameters", type=int, default=100_000, help="weights in the model")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per transport")
    parser.add_argument("--work", type=Path, help="keep the coordinators' files here")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.parameters < 2 * _OUTPUTS or args.time_limit < 10:
        parser.error(f"--devices must be >= 1, --parameters >= {2 * _OUTPUTS}, --time-limit >= 10")
    with tempfile.TemporaryDirectory(prefix="fedge-transport-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        certs = _certificates(work)
        rows = max(1, (args.parameters - _OUTPUTS) // _OUTPUTS)
        _log(
            f"{args.devices} devices, {rows * _OUTPUTS + _OUTPUTS} parameters, TLS on both"
            " transports (certificates from fedge-coordinator certs init)"
        )
        results = {
            t: run_transport(t, work / t, certs, args.devices, args.parameters, args.time_limit)
            for t in TRANSPORTS
        }
    for line in table(results, args.devices):
        _log(line)
    ok = all(results[t]["ok"] for t in TRANSPORTS)
    _log(f"both rounds committed with every acknowledged update and no error: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
