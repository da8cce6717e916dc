"""Simulated devices over HTTP, shared by ``benchmarks/load.py`` and the crash-recovery
test: each registers, polls for a train task, downloads the model (manifest, every bundle
file and the weights, sha256 checked) and uploads a small delta, timing every call.

Every call uses a connection of its own (``Connection: close``), as a device that polls
every few seconds does. An upload whose answer never came (a timeout, a server killed
mid-request) is sent again with the same ``Idempotency-Key`` until the coordinator answers,
so an update acknowledged twice is counted once. :class:`Ack` is what a 2xx upload
acknowledged; :class:`CallStats` holds latencies and failures per call type.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from fedge.bundle import BundleManifest
from fedge.weights import Weights

__all__ = ["CALLS", "Ack", "CallStats", "SimulatedDevice", "percentile", "run_fleet"]

CALLS = ("register", "poll", "download", "upload")
_EXPECTED = {
    "register": (200, 201),
    "poll": (200, 204),
    "download": (200,),
    "upload": (200, 201),
}


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``; NaN when there are none."""
    array = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(array, q)) if array.size else float("nan")


@dataclass(frozen=True)
class Ack:
    """An update the coordinator acknowledged (2xx)."""

    round_id: int
    task_id: str
    client_id: str
    sha256: str


@dataclass
class CallStats:
    """Latencies (seconds) of answered calls and failures per call type; thread-safe.

    A failure is a call that raised (timeout, refused connection) or got a status the call
    does not expect (``register: 503``); ``throttled`` counts 429 answers apart.
    """

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in CALLS})
    failures: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def answered(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.latencies[kind].append(seconds)

    def failed(self, kind: str, what: str) -> None:
        with self._lock:
            self.failures[f"{kind}: {what}"] += 1

    def throttle(self, kind: str) -> None:
        with self._lock:
            self.throttled[kind] += 1

    def error_count(self) -> int:
        with self._lock:
            return sum(self.failures.values())

    def lines(self) -> list[str]:
        """One line per call type (count, p50, p99 in ms), then one per kind of failure."""
        with self._lock:
            out = []
            for kind in CALLS:
                values = self.latencies[kind]
                out.append(
                    f"{kind:<9} n={len(values):<6} p50={percentile(values, 50) * 1e3:8.1f} ms"
                    f"  p99={percentile(values, 99) * 1e3:8.1f} ms"
                    f"  throttled={self.throttled[kind]}"
                )
            out += [f"error {what}: {count}" for what, count in sorted(self.failures.items())]
            return out


class _NoAnswer(Exception):
    """The call got no usable answer (recorded already)."""


class SimulatedDevice:
    """One device of the fleet. ``registration_token``: the bearer token of
    ``POST /v1/clients`` (an enrollment token), when the coordinator needs one."""

    def __init__(
        self,
        url: str,
        index: int,
        stats: CallStats,
        *,
        registration_token: str | None = None,
        timeout: float = 30.0,
        max_wait: float = 2.0,
        seed: int = 0,
    ) -> None:
        self.url = url
        self.index = index
        self.stats = stats
        self.timeout = timeout
        self.max_wait = max_wait
        self.registration_token = registration_token
        self.rng = random.Random(seed * 1_000_003 + index)
        self.client_id: str | None = None
        self.token: str | None = None
        self._models: dict[str, Weights] = {}

    # One HTTP call --------------------------------------------------------------------------

    def _call(
        self, kind: str, method: str, path: str, *, token: str | None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Connection": "close", **kwargs.pop("headers", {})}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        start = time.perf_counter()
        try:
            response = requests.request(
                method, self.url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            self.stats.failed(kind, type(exc).__name__)
            raise _NoAnswer from exc
        if response.status_code == 429:
            self.stats.throttle(kind)
        elif response.status_code in _EXPECTED[kind]:
            self.stats.answered(kind, time.perf_counter() - start)
        else:
            self.stats.failed(kind, str(response.status_code))
        return response

    def _pause(self, response: requests.Response | None, stop: threading.Event) -> None:
        """Wait as the coordinator asked (Retry-After), at most ``max_wait`` s, with jitter."""
        wait = self.max_wait
        if response is not None:
            with contextlib.suppress(ValueError):
                wait = min(float(response.headers.get("Retry-After", wait)), self.max_wait)
        stop.wait(max(0.05, wait) * self.rng.uniform(0.5, 1.0))

    # The device's steps --------------------------------------------------------------------

    def register(self, stop: threading.Event) -> bool:
        """Register (retrying until answered or ``stop``); False when stopped first."""
        body = {"region": ("north", "south", "east", "west")[self.index % 4]}
        while not stop.is_set():
            response = None
            with contextlib.suppress(_NoAnswer):
                response = self._call(
                    "register", "POST", "/v1/clients", token=self.registration_token, json=body
                )
            if response is not None and response.status_code in _EXPECTED["register"]:
                document = response.json()
                self.client_id, self.token = document["client_id"], document["token"]
                return True
            self._pause(response, stop)
        return False

    def poll(self, stop: threading.Event) -> dict[str, Any] | None:
        """One poll: a train task, or None after waiting as told."""
        response = None
        with contextlib.suppress(_NoAnswer):
            response = self._call("poll", "GET", "/v1/tasks/next", token=self.token)
        if response is not None and response.status_code == 200:
            task: dict[str, Any] = response.json()
            if task.get("kind") == "train" and task.get("round_id") is not None:
                return task
        self._pause(response, stop)
        return None

    def download(self, version: str) -> Weights:
        """The model ``version``: manifest, every file (sha256 checked), weights."""
        if version in self._models:
            return self._models[version]
        base = f"/v1/models/{version}"
        manifest = BundleManifest.from_json(self._get(f"{base}/manifest").content)
        for name, entry in manifest.files.items():
            body = self._get(f"{base}/files/{name}").content
            if hashlib.sha256(body).hexdigest() != entry.sha256:
                self.stats.failed("download", "sha256 mismatch")
                raise _NoAnswer
        weights = Weights.from_bytes(self._get(f"{base}/weights").content)
        self._models = {version: weights}
        return weights

    def _get(self, path: str) -> requests.Response:
        response = self._call("download", "GET", path, token=self.token)
        if response.status_code != 200:
            raise _NoAnswer
        return response

    def upload(self, task: dict[str, Any], weights: Weights, stop: threading.Event) -> Ack | None:
        """Upload a small delta for ``task``; retried with the same key until answered.
        The :class:`Ack` when the coordinator acknowledged it, else None."""
        seed = self.rng.randrange(1 << 30)
        rng = np.random.default_rng(seed)
        delta = Weights(
            {n: (rng.standard_normal(a.shape) * 0.01).astype(a.dtype) for n, a in weights.items()}
        )
        body = delta.to_bytes()
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Fedge-Task-Id": str(task["task_id"]),
            "X-Fedge-Num-Examples": str(self.rng.randint(5, 50)),
            "Idempotency-Key": uuid.uuid4().hex,
            "X-Fedge-Metrics": json.dumps({"loss": 0.5, "accuracy": 0.75}),
        }
        path = f"/v1/rounds/{task['round_id']}/updates"
        while not stop.is_set():
            try:
                response = self._call(
                    "upload", "POST", path, token=self.token, data=body, headers=headers
                )
            except _NoAnswer:
                self._pause(None, stop)
                continue
            if response.status_code in _EXPECTED["upload"]:
                assert self.client_id is not None
                return Ack(
                    int(task["round_id"]),
                    str(task["task_id"]),
                    self.client_id,
                    hashlib.sha256(body).hexdigest(),
                )
            if response.status_code in (429, 500, 502, 503, 504):
                self._pause(response, stop)
                continue
            return None  # refused (round closed, ...): the update is not the server's
        return None

    def run(self, stop: threading.Event, acks: list[Ack], *, rounds: int | None = None) -> None:
        """Register, then answer train tasks until ``stop`` (or after ``rounds`` acks)."""
        if self.token is None and not self.register(stop):
            return
        answered: set[str] = set()
        done = 0
        while not stop.is_set() and (rounds is None or done < rounds):
            task = self.poll(stop)
            if task is None or task["task_id"] in answered:
                continue
            try:
                weights = self.download(str(task["model_version"]))
            except _NoAnswer:
                self._pause(None, stop)
                continue
            ack = self.upload(task, weights, stop)
            answered.add(str(task["task_id"]))
            if ack is not None:
                acks.append(ack)  # list.append is atomic
                done += 1


def run_fleet(
    devices: list[SimulatedDevice],
    stop: threading.Event,
    acks: list[Ack],
    *,
    rounds: int | None = None,
    stack_size: int = 512 * 1024,
) -> list[threading.Thread]:
    """Start one daemon thread per device (``SimulatedDevice.run``); returns the threads."""
    previous = threading.stack_size(stack_size)
    try:
        threads = [
            threading.Thread(
                target=device.run,
                args=(stop, acks),
                kwargs={"rounds": rounds},
                name=f"device-{device.index}",
                daemon=True,
            )
            for device in devices
        ]
        for thread in threads:
            thread.start()
    finally:
        threading.stack_size(previous)
    return threads
