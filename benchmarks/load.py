"""The coordinator under a fleet: N concurrent devices through a full round, then slowloris.

Run ``.venv/bin/python benchmarks/load.py`` (``--devices 1000 --slow-sockets 500`` by
default; loopback only; stops by itself within ``--time-limit`` seconds). It starts a real
``fedge-coordinator serve`` (``coordinator.launch``) on a tiny bundle, and prints:

1. The round: N simulated devices (``tests.support.fleet``, one thread each) register,
   poll, download the model (manifest, files, weights) and upload a delta; the round asks
   for all N (``clients_per_round`` = ``min_clients`` = N). p50/p99 latency per call type,
   error counts, acknowledged updates against the committed round's updates (every
   acknowledged update must be among them), peak server RSS (``VmHWM``). Registrations
   over the coordinator's overall rate limit are answered 429 and retried after
   Retry-After: they count as throttled, not as errors.
2. Slowloris: S sockets each send a partial request and then one header line every
   ``--trickle-seconds``; meanwhile a new ``GET /healthz`` is timed several times (target:
   under 1 s).

The last line says whether the targets held (0 errors, every acknowledged update counted,
``/healthz`` under 1 s); the exit status is 0 when they did, 1 otherwise.
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
import os  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402
import requests  # noqa: E402

from coordinator.client import AdminClient  # noqa: E402
from coordinator.errors import CoordinatorUnavailableError  # noqa: E402
from coordinator.launch import CoordinatorProcess, launch_coordinator  # noqa: E402
from tests.support.coordinator import make_bundle  # noqa: E402
from tests.support.fleet import Ack, CallStats, SimulatedDevice, percentile, run_fleet  # noqa: E402

ADMIN_TOKEN = "bench-admin-" + "0" * 24
ENROLLMENT_TOKEN = "bench-enroll-" + "1" * 24
HEALTHZ_TARGET = 1.0
_DONE = ("committed", "failed")


def _log(message: str) -> None:
    print(message, flush=True)


class _PeakRss:
    """Samples a process's RSS every ``interval`` s (and reads VmHWM at the end)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def sample(self) -> None:
        try:
            self.peak = max(self.peak, self.process.memory_info().rss)
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
        except (psutil.Error, OSError):
            pass

    def stop(self) -> int:
        self.sample()
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


def _start(work: Path, devices: int, deadline: float, extra: list[str]) -> CoordinatorProcess:
    bundle = work / "bundle"
    make_bundle(bundle)
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
        # Every simulated device registers from the loopback address: it gets the overall
        # registration limits (the defaults), not one address's.
        "--registration-rate", "50", "--registration-burst", "500",
        "-q", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDGE_ADMIN_TOKEN", None)
    return launch_coordinator(
        args, port_file=work / "port", log_path=work / "coordinator.log", env=env, cwd=REPO
    )


def _wait(predicate: Any, timeout: float, interval: float = 0.5) -> Any:
    """Poll ``predicate`` until it is true or ``timeout`` passes. An admin call that times out
    while the fleet saturates the server's threads is asked again, not a failed run."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            result = predicate()
        except CoordinatorUnavailableError as exc:
            _log(f"admin call not answered yet ({exc}); asking again")
            result = None
        if result:
            return result
        time.sleep(interval)
    return None


def finished_document(admin: AdminClient, round_id: int) -> dict[str, Any] | None:
    """The ended round's document, asked again while the server is too busy to answer."""
    document: dict[str, Any] | None = _wait(lambda: admin.show_round(round_id), 120.0)
    return document


def round_phase(
    url: str, admin: AdminClient, n: int, time_limit: float, rss: _PeakRss
) -> dict[str, Any]:
    stats = CallStats()
    acks: list[Ack] = []
    stop = threading.Event()
    devices = [
        SimulatedDevice(url, i, stats, registration_token=ENROLLMENT_TOKEN, timeout=60.0)
        for i in range(n)
    ]
    started = time.monotonic()
    threads = run_fleet(devices, stop, acks, rounds=1)
    registered = _wait(lambda: sum(d.token is not None for d in devices) == n, time_limit / 2)
    _log(
        f"registered {sum(d.token is not None for d in devices)}/{n} devices in "
        f"{time.monotonic() - started:.1f} s"
    )
    outcome: dict[str, Any] = {"round": None}
    if registered:
        round_id = int(admin.open_round()["round_id"])
        remaining = max(1.0, time_limit - (time.monotonic() - started))
        finished = _wait(lambda: admin.show_round(round_id)["state"] in _DONE, remaining)
        outcome["round"] = finished_document(admin, round_id) if finished else None
        if not finished:
            _log(f"round {round_id} did not end within the time limit")
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    elapsed = time.monotonic() - started
    rss.sample()
    for line in stats.lines():
        _log("  " + line)
    document = outcome["round"]
    counted: set[tuple[str, str, str]] = set()
    if document is not None:
        counted = {(u["client_id"], u["task_id"], u["sha256"]) for u in document.get("updates", [])}
        _log(
            f"round {document['round_id']}: {document['state']}"
            f" (reason: {document.get('failure_reason')}), {document['num_updates']} updates,"
            f" model {document.get('result_version')}, in {elapsed:.1f} s"
        )
    lost = [a for a in acks if (a.client_id, a.task_id, a.sha256) not in counted]
    _log(
        f"acknowledged updates: {len(acks)}; counted in the round: {len(acks) - len(lost)};"
        f" lost: {len(lost)}"
    )
    return {
        "errors": stats.error_count(),
        "acks": len(acks),
        "lost": len(lost),
        "committed": document is not None and document["state"] == "committed",
        "all_counted": document is not None and len(acks) == n and not lost,
    }


def _slow_socket(port: int) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.setblocking(False)
    except OSError:
        return None
    return sock


def _trickle(sock: socket.socket, line: str) -> bool:
    """Send one more header line; False (and the socket closed) once the server answered
    or closed the connection (its header timeout)."""
    try:
        sock.recv(4096, socket.MSG_PEEK)  # returns: an answer, or b"" at EOF
    except BlockingIOError:  # nothing from the server: it still waits for the headers
        try:
            sock.send(line.encode())
        except OSError:
            pass
        else:
            return True
    except OSError:
        pass
    sock.close()
    return False


def _timed_healthz(url: str, timeout: float) -> float | None:
    start = time.perf_counter()
    try:
        response = requests.get(f"{url}/healthz", timeout=timeout)
    except requests.RequestException:
        return None
    return time.perf_counter() - start if response.status_code == 200 else None


def slowloris_phase(
    url: str, port: int, sockets: int, trickle: float, duration: float
) -> dict[str, Any]:
    opened = [s for s in (_slow_socket(port) for _ in range(sockets)) if s is not None]
    _log(f"slowloris: {len(opened)}/{sockets} slow sockets open")
    alive = list(opened)
    timings: list[float | None] = []
    open_at_probe: list[int] = []
    end = time.monotonic() + duration
    next_trickle = time.monotonic()
    next_probe = time.monotonic() + min(2.0, trickle)
    counter = 0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_trickle:
            counter += 1
            alive = [s for s in alive if _trickle(s, f"X-Slow-{counter}: {counter}\r\n")]
            next_trickle = now + trickle
        if now >= next_probe:
            open_at_probe.append(len(alive))
            timings.append(_timed_healthz(url, timeout=5.0))
            next_probe = time.monotonic() + 1.0
        time.sleep(0.05)
    for sock in alive:
        sock.close()
    answered = [t for t in timings if t is not None]
    worst = max(answered) if answered else float("nan")
    _log(
        f"slowloris: {len(alive)}/{len(opened)} slow sockets not yet closed by the server after"
        f" {duration:.0f} s;"
        f" new /healthz: {len(answered)}/{len(timings)} answered,"
        f" p50={percentile(answered, 50) * 1e3:.1f} ms, max={worst * 1e3:.1f} ms"
        f" (slow sockets open at the probes: {max(open_at_probe, default=0)} at most,"
        f" {min(open_at_probe, default=0)} at least)"
    )
    return {
        "ok": bool(timings)
        and len(answered) == len(timings)
        and worst < HEALTHZ_TARGET
        and max(open_at_probe, default=0) == len(opened) == sockets,
        "probes": len(timings),
        "answered": len(answered),
        "max_seconds": worst,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--slow-sockets", type=int, default=500)
    parser.add_argument("--trickle-seconds", type=float, default=5.0)
    parser.add_argument("--slowloris-seconds", type=float, default=15.0)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds, overall")
    parser.add_argument("--work", type=Path, help="keep the coordinator's files here")
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra fedge-coordinator serve argument (repeatable), e.g. --serve-arg=--threads=4",
    )
    args = parser.parse_args(argv)
    if args.devices < 1 or args.slow_sockets < 0 or args.time_limit <= 30:
        parser.error("--devices must be >= 1, --slow-sockets >= 0, --time-limit > 30")
    with tempfile.TemporaryDirectory(prefix="fedge-load-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        round_limit = args.time_limit - args.slowloris_seconds - 20
        with _start(work, args.devices, round_limit, args.serve_arg) as server:
            _log(f"coordinator {server.url} (pid {server.child.pid}, log {server.log_path})")
            rss = _PeakRss(server.child.pid)
            with AdminClient(server.url, ADMIN_TOKEN, timeout=60) as admin:
                result = round_phase(server.url, admin, args.devices, round_limit, rss)
            slow = slowloris_phase(
                server.url,
                server.port,
                args.slow_sockets,
                args.trickle_seconds,
                args.slowloris_seconds,
            )
            peak = rss.stop()
            _log(f"peak server RSS: {peak / 2**20:.1f} MiB")
    ok = result["errors"] == 0 and result["committed"] and result["all_counted"] and slow["ok"]
    _log(
        f"targets: {'held' if ok else 'MISSED'} (errors={result['errors']},"
        f" committed={result['committed']}, every acknowledged update counted="
        f"{result['all_counted']}, /healthz under {HEALTHZ_TARGET:g} s={slow['ok']})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
