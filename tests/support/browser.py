"""The dashboard's browser tests' helpers (fixtures in ``tests/ui_browser/conftest.py``): a
headless Chromium session driven by Selenium through Debian's ``chromium`` and
``chromium-driver`` (:class:`Browser`: pages opened with their console log checked, 1366x768
screenshots into ``test-artifacts/ui/``), and a fleet of devices on the edge client's own
transport (:class:`Device`, :class:`Fleet`) answering a served coordinator's train, evaluate
and stats tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from edge_client.bundles import BundleStore
from edge_client.errors import RequestRejected
from edge_client.transport import CoordinatorClient, HttpTransport, reply_request
from fedge.messages import EvalReport, ModelUpdate, StatsReport, Task
from fedge.weights import Weights
from tests.support import REPO_ROOT
from tests.support.coordinator import ServerProcess, training_stats

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE_ENV = "FEDGE_REQUIRE_BROWSER"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
WIDTH, HEIGHT = 1366, 768
VIEWER_TOKEN = "viewer-" + "fedcba9876543210" * 2
REGIONS = ("north", "south", "east", "west")
LOW_REGION = "south"
"""Its devices answer an evaluation far below the model's accuracy: an ``accuracy_drop``."""
WAIT = 20.0


def browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return None
    return (
        f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver); "
        f"{REQUIRE_ENV}=1 makes this a failure"
    )


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


class Browser:
    """One headless Chromium session at a 1366x768 viewport, and what the tests ask of it:
    open a page (its console checked), find elements, wait, take screenshots."""

    def __init__(self, driver: webdriver.Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.console: list[dict[str, Any]] = []
        self.token: str | None = None  # the one it last logged in with

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        self.wait_loaded()
        self.check_console(path)

    def wait_loaded(self) -> None:
        WebDriverWait(self.driver, WAIT).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )

    def check_console(self, where: str, *, expected: str | None = None) -> None:
        """Fail on any SEVERE entry the browser logged since the last check, but one that
        contains ``expected`` (a test's deliberate refusal of a resource)."""
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        severe = [
            e["message"]
            for e in entries
            if e.get("level") == "SEVERE" and (expected is None or expected not in e["message"])
        ]
        assert not severe, f"console errors on {where}: {severe}"

    @property
    def path(self) -> str:
        url = str(self.driver.current_url)
        assert url.startswith(self.base_url), url
        return url[len(self.base_url) :]

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def until(self, condition: Any, what: str, timeout: float = WAIT) -> Any:
        """Wait (bounded) until ``condition(browser)`` returns something truthy."""
        return WebDriverWait(
            self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
        ).until(lambda _driver: condition(self), message=f"waited {timeout:.0f}s for {what}")

    def attribute(self, css: str, name: str) -> str | None:
        """An attribute of the first element ``css`` selects, read in one step (live.js
        may swap the element between a find and a read)."""
        value = self.driver.execute_script(
            "var e = document.querySelector(arguments[0]);"
            "return e === null ? null : e.getAttribute(arguments[1]);",
            css,
            name,
        )
        return None if value is None else str(value)

    def rows(self, css: str, name: str) -> list[tuple[str, list[str]]]:
        """``(attribute name, cell texts)`` of every row ``css`` selects, read in one step."""
        found = self.driver.execute_script(
            "var name = arguments[1];"
            "return Array.from(document.querySelectorAll(arguments[0])).map(function (r) {"
            "  return [r.getAttribute(name),"
            "          Array.from(r.cells).map(function (c) { return c.textContent.trim(); })];"
            "});",
            css,
            name,
        )
        return [(str(key), [str(c) for c in cells]) for key, cells in found]

    def login(self, token: str) -> None:
        """Log in afresh with ``token`` (a new session cookie)."""
        self.driver.delete_all_cookies()
        self.token = None
        self.open("/ui/login")
        self.find("input[name=token]").send_keys(token)
        self.find("form button[type=submit], form input[type=submit]").click()
        self.until(lambda b: b.path == "/ui/", "the overview after logging in")
        self.wait_loaded()
        self.check_console("/ui/ after login")
        self.token = token

    def logged_in(self, token: str) -> Browser:
        """Logged in with ``token``: as it is, or after a login."""
        if self.token != token or self.driver.get_cookie("fedge_session") is None:
            self.login(token)
        return self

    def save_console(self) -> Path:
        """Every console entry read so far, as ``test-artifacts/ui/console.json``."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / "console.json"
        path.write_text(json.dumps(self.console, indent=1) + "\n")
        return path

    def screenshot(self, name: str) -> Path:
        """The viewport as ``test-artifacts/ui/<name>.png`` (1366x768)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot of {name}"
        assert _png_size(path) == (WIDTH, HEIGHT), (path, _png_size(path))
        return path

    def mark(self) -> str:
        """Leave a value in the page's window: it survives script updates, not a reload."""
        marker = uuid.uuid4().hex
        self.driver.execute_script("window.fedgeTestMarker = arguments[0];", marker)
        return marker

    def marked(self) -> str | None:
        value = self.driver.execute_script("return window.fedgeTestMarker || null;")
        return None if value is None else str(value)


def start_driver() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={WIDTH},{HEIGHT}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # The window's size includes the browser's own bars: grow it until the viewport (what a
    # screenshot shows) is exactly 1366x768.
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    driver.set_window_size(WIDTH + WIDTH - int(inner[0]), HEIGHT + HEIGHT - int(inner[1]))
    return driver


# The coordinator and its fleet ----------------------------------------------------------------


def accuracy_of_round(round_id: int) -> float:
    """What the devices report for a round's training: rises by 0.03 a round to 0.95."""
    return min(0.95, 0.5 + 0.03 * round_id)


@dataclass
class Device:
    """A device on the edge client's transport: registers, polls, downloads and verifies
    bundles (:class:`edge_client.bundles.BundleStore`) and answers train, evaluate and
    stats tasks."""

    url: str
    region: str
    root: Path
    client: CoordinatorClient = field(init=False)
    client_id: str = field(init=False)
    bundles: BundleStore = field(init=False)
    versions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = CoordinatorClient(self.url, HttpTransport(), timeout=10.0)
        registration = self.client.register(region=self.region)
        self.client.token = registration.token
        self.client_id = registration.client_id
        self.bundles = BundleStore(self.root)

    def poll(self) -> Task | None:
        return self.client.next_task().task

    def fetch(self, version: str) -> Path:
        """The verified bundle of ``version`` (downloaded once)."""
        path = self.bundles.fetch(self.client, version)
        self.versions.append(version)
        return path

    def answer(self, task: Task) -> None:
        if task.kind == "train":
            assert task.round_id is not None
            bundle = self.fetch(task.model_version)
            weights = Weights.from_bytes((bundle / "weights.safetensors").read_bytes())
            rng = np.random.default_rng(task.round_id * 100 + len(self.versions))
            delta = Weights(
                {
                    n: (rng.standard_normal(a.shape) * 0.01).astype(a.dtype)
                    for n, a in weights.items()
                }
            )
            accuracy = accuracy_of_round(task.round_id)
            reply: Any = ModelUpdate(
                task.task_id,
                task.round_id,
                20,
                {"accuracy": accuracy, "loss": 1.0 - accuracy},
                delta,
            )
        elif task.kind == "evaluate":
            accuracy = 0.2 if self.region == LOW_REGION else 0.9
            reply = EvalReport(task.task_id, task.model_version, 50, {"accuracy": accuracy})
        elif task.kind == "stats":
            shift = 25.0 if self.region == LOW_REGION else 10.0
            reply = StatsReport(task.task_id, training_stats(len(self.root.name), fare_mean=shift))
        else:
            raise AssertionError(f"a {task.kind} task was not expected")
        self.client.send(reply_request(reply, uuid.uuid4().hex))


class Fleet:
    """The devices, answering their tasks from one background thread until stopped."""

    def __init__(self, devices: list[Device]) -> None:
        self.devices = devices
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ui-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "the fleet did not stop"
            self._thread = None

    def step(self) -> list[tuple[Device, Task]]:
        """Every device polls once and answers what it got."""
        answered = []
        for device in self.devices:
            task = device.poll()
            if task is None:
                continue
            try:
                device.answer(task)
            except RequestRejected as exc:
                if exc.status != 409:  # a round that closed meanwhile refuses late replies
                    raise
            answered.append((device, task))
        return answered

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # reported by the tests (conftest's _console_clean)
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            self._stop.wait(0.1)


@dataclass
class Dashboard:
    """The served coordinator (dashboard on), its fleet and its files."""

    server: ServerProcess
    fleet: Fleet
    workdir: Path

    @property
    def url(self) -> str:
        return self.server.url


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_until(predicate: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:.0f}s for {what}")
