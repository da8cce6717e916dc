"""Attacks on what real edge clients send, made through the real coordinator as its
operator would (the admin API, its own artifact store), each run twice: with the
protection off, where it must succeed, and under the defaults, where it must fail.

Every device is the real daemon (:class:`edge_client.daemon.Daemon`, stepped in this
process) over its own CSV files of the bundled taxi table, with its owner's policy in
``STATE/policy.json``; the coordinator is ``fedge-coordinator serve`` on loopback. Two
fleets, one server each:

- **unprotected**: policy ``{"privacy": "off"}`` and ``--min-cohort 1`` (the rule off):
  today's behaviour before the protections, the baseline a broken system hits;
- **protected**: the defaults (``min_rows`` 20, ``stats_epsilon`` and ``features_epsilon``
  1, ``epsilon_budget`` 10, ``min_class_rows`` 20, ``min_cohort`` 10) with two stated
  exceptions that only let the attack *try*: the devices' minimum interval between two
  stats answers is 0 instead of an hour and the coordinator's cohort window 2 s instead of
  an hour, so that the differencing attack can ask again in seconds, as an attacker who
  waits an hour would. That both intervals refuse the second question on their own is
  checked apart (the window here; the device's interval in ``tests/edge_client``).

The thresholds are stated against what a broken system gives: the exact row (error 0)
for differencing, the majority-class guess for re-identification, a reply for a device
with too few rows.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from coordinator.artifacts import ArtifactStore
from coordinator.config import DEFAULT_MIN_COHORT
from coordinator.sqlite_store import SQLiteStore
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.local_data import DirectoryData
from edge_client.model import EdgeModel
from edge_client.policy import DevicePolicy, load_policy
from edge_client.privacy import clip_rows, stats_noise_unit
from edge_client.state import write_token
from fedge.data import load_taxi
from fedge.features import CategoricalFeature, FeatureSpec, NumericFeature
from fedge.messages import StatsReport, decode_message
from tests.support.coordinator import (
    HTTP_TIMEOUT,
    ServerProcess,
    admin_call,
    admin_client,
    serve_command,
    start_server,
    stop_server,
    write_admin_token,
)
from tests.support.edge import taxi_rows, write_csv

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

ROWS = 120
"""Rows per device: 96 train and 24 holdout rows, enough for every reply under the
defaults (min_rows 20; big tippers, 22% of the table, reach min_class_rows 20 about half
the time, the other class always)."""
SMALL_ROWS = 12
"""A device under the default min_rows of 20."""
NUMERIC = (
    "fare",
    "trip_miles",
    "trip_seconds",
    "pickup_latitude",
    "pickup_longitude",
    "dropoff_latitude",
    "dropoff_longitude",
)
PUBLIC = slice(4000, 9000)
"""The attacker's public rows: 5,000 rows of the taxi table that no device holds."""
NEIGHBOURS = 5
WINDOW = 2.0
"""The protected coordinator's cohort window (the default is an hour), in seconds."""
TASK_DEADLINE = 60.0


# Devices ----------------------------------------------------------------------------------------


@dataclass
class Device:
    """One real daemon over its own data directory, stepped by the test."""

    name: str
    client_id: str
    data: Path
    state: Path
    daemon: Daemon
    rows: list[dict[str, str]]
    outcomes: list[str] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    """The status's ``policy.last_refusal`` after each step the policy refused."""

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        return document

    def add_row(self, row: dict[str, str], name: str) -> None:
        write_csv(self.data / f"{name}.csv", [row])
        self.rows.append(row)

    def train_rows(self, bundle: Path) -> Any:
        """The rows a features reply stands for, in the order the device reads them."""
        schema = EdgeModel.load(bundle).schema
        local = DirectoryData(self.data, schema, settle_seconds=0)
        local.refresh()
        return local.train()


def _register(url: str) -> tuple[str, str]:
    response = requests.post(f"{url}/v1/clients", json={"region": "north"}, timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()["client_id"], response.json()["token"]


def _device(
    url: str, root: Path, name: str, rows: list[dict[str, str]], policy: dict[str, Any]
) -> Device:
    data, state = root / name / "data", root / name / "state"
    data.mkdir(parents=True)
    state.mkdir(parents=True)
    write_csv(data / "rows.csv", rows)
    (state / "policy.json").write_text(json.dumps(policy))
    client_id, token = _register(url)
    token_file = root / name / "token"
    write_token(token_file, token)
    config = DaemonConfig(
        coordinator=url,
        token_file=token_file,
        data_dir=data,
        state_dir=state,
        settle_seconds=0,
        request_timeout=HTTP_TIMEOUT,
        policy=load_policy(state / "policy.json"),  # as fedge-edge run reads it
    )
    daemon = Daemon(config, sleep=lambda seconds: None)
    return Device(name, client_id, data, state, daemon, list(rows))


def _quiet(device: Device, *, limit: int = 40) -> None:
    """Step ``device`` until it has nothing left to do: its replies (and declines)
    delivered and an idle poll."""
    for _ in range(limit):
        outcome = device.daemon.step()
        device.outcomes.append(outcome)
        if outcome == "policy_refused":
            device.refusals.append(device.status()["policy"]["last_refusal"])
        if outcome == "idle":
            return
    raise AssertionError(f"{device.name} did not settle: {device.outcomes[-10:]}")


@dataclass
class Fleet:
    server: ServerProcess
    workdir: Path
    bundle: Path
    devices: list[Device]

    @property
    def url(self) -> str:
        return self.server.url

    def ask(
        self, kind: str, devices: Sequence[Device], *, deadline: float = TASK_DEADLINE
    ) -> set[str]:
        """Create ``kind`` tasks for ``devices`` (201 expected) and let them answer."""
        with admin_client(self.url) as admin:
            tasks = admin.create_tasks(
                kind, client_ids=[d.client_id for d in devices], deadline_seconds=deadline
            )
        for device in devices:
            _quiet(device)
        return {t["task_id"] for t in tasks}

    def reports(self, kind: str, task_ids: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """The reports of ``kind`` the coordinator holds, by client id."""
        with admin_client(self.url) as admin:
            listed = admin.list_reports(kind)
        return {
            r["client_id"]: r["document"]
            for r in listed
            if task_ids is None or r["task_id"] in task_ids
        }

    def stats(self, task_ids: set[str]) -> dict[str, StatsReport]:
        reports = {}
        for client_id, document in self.reports("stats", task_ids).items():
            report = decode_message(document)
            assert isinstance(report, StatsReport)
            reports[client_id] = report
        return reports

    def features(self, task_ids: set[str]) -> dict[str, dict[str, Any]]:
        """Each client's sent embeddings, labels and counts, read back from the
        coordinator's artifact store by the digest its report names."""
        store = ArtifactStore(self.workdir / "artifacts")
        sent = {}
        for client_id, document in self.reports("features", task_ids).items():
            rows, dim = document["num_rows"], document["dim"]
            blob = store.get_bytes(document["sha256"])
            embeddings = np.frombuffer(blob[: rows * dim * 4], dtype="<f4").reshape(rows, dim)
            labels = np.frombuffer(blob[rows * dim * 4 :], dtype="<i8")
            sent[client_id] = {
                "embeddings": embeddings,
                "labels": labels,
                "counts": document.get("counts"),
                "privacy": document.get("privacy"),
            }
        return sent


def _fleet(
    workdir: Path,
    bundle: Path,
    flags: Sequence[str],
    layout: Sequence[tuple[str, list[dict[str, str]], dict[str, Any]]],
) -> Iterator[Fleet]:
    token = write_admin_token(workdir)
    command = serve_command(workdir, bundle, token, "--on-demand", "--retry-after", "1", *flags)
    command[command.index("--task") + 1] = "taxi"
    server = start_server(command, workdir)
    try:
        devices = [_device(server.url, workdir, n, rows, p) for n, rows, p in layout]
        yield Fleet(server, workdir, bundle, devices)
    finally:
        stop_server(server)


def _rows(index: int, count: int = ROWS) -> list[dict[str, str]]:
    return taxi_rows(index * ROWS, count)


OFF = {"privacy": "off"}
ON = {"min_interval_seconds": {"stats": 0}}  # every other field: the defaults


@pytest.fixture(scope="module")
def unprotected(
    hostile_taxi_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """Three devices with the protection off and one under min_rows, on a coordinator
    whose cohort rule is off."""
    layout = [(f"open-{i}", _rows(i), OFF) for i in range(3)]
    layout.append(("open-small", _rows(3, SMALL_ROWS), OFF))
    yield from _fleet(
        tmp_path_factory.mktemp("unprotected"), hostile_taxi_bundle, ["--min-cohort", "1"], layout
    )


@dataclass
class FirstAnswers:
    """What the protected fleet's first round and stats/features/evaluate tasks left."""

    round_: dict[str, Any]
    tasks: dict[str, set[str]]
    truth: dict[str, list[str]]
    """Each device's training rows' payment types when the features task was answered."""


@pytest.fixture(scope="module")
def protected(
    hostile_taxi_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """Ten devices under the defaults (two of them with the same rows) and one under
    min_rows, on a coordinator with the default cohort of ten."""
    layout = [(f"guarded-{i}", _rows(4 + i), ON) for i in range(9)]
    layout.insert(1, ("guarded-twin", _rows(4), ON))  # guarded-0's rows, for the noise test
    layout.append(("guarded-small", _rows(13, SMALL_ROWS), ON))
    flags = ["--min-cohort", str(DEFAULT_MIN_COHORT), "--cohort-window", str(WINDOW)]
    yield from _fleet(tmp_path_factory.mktemp("protected"), hostile_taxi_bundle, flags, layout)


def _everything_once(fleet: Fleet) -> FirstAnswers:
    """One train round over every device, then a stats, a features and an evaluate task
    for every device, each device stepped until it has nothing left to do (a protected
    small device declines each task in turn)."""
    small = [d for d in fleet.devices if d.name.endswith("small")]
    big = [d for d in fleet.devices if d not in small]
    everyone = [d.client_id for d in fleet.devices]
    with admin_client(fleet.url) as admin:
        opened = admin.open_round(
            {
                "clients_per_round": len(everyone),
                "min_clients": len(big),
                "deadline_seconds": TASK_DEADLINE,
            }
        )
        tasks = {}
        for kind in ("stats", "features", "evaluate"):
            created = admin.create_tasks(kind, client_ids=everyone, deadline_seconds=TASK_DEADLINE)
            tasks[kind] = {t["task_id"] for t in created}
    for device in fleet.devices:
        _quiet(device)
    with admin_client(fleet.url) as admin:
        round_ = admin.show_round(opened["round_id"])
    truth = {
        d.client_id: [str(v) for v in d.train_rows(fleet.bundle).columns["payment_type"]]
        for d in big
    }
    return FirstAnswers(round_=round_, tasks=tasks, truth=truth)


@pytest.fixture(scope="module")
def protected_first(protected: Fleet) -> FirstAnswers:
    return _everything_once(protected)


@pytest.fixture(scope="module")
def unprotected_first(unprotected: Fleet) -> FirstAnswers:
    return _everything_once(unprotected)


# Differencing ---------------------------------------------------------------------------------

NEW_ROWS = 2000
"""Where the rows added to devices come from (every numeric column present and non-zero,
so that an estimate of 0 is no lucky hit)."""


def _new_rows(count: int) -> list[dict[str, str]]:
    rows = [r for r in taxi_rows(NEW_ROWS, 600) if all(r[c] and float(r[c]) for c in NUMERIC)]
    assert len(rows) >= count
    return rows[:count]


def _sums(report: StatsReport) -> dict[str, float]:
    """What the attacker reads as each column's sum: mean x count."""
    return {c: report.stats.numeric(c).mean * report.stats.numeric(c).count for c in NUMERIC}


def _difference(before: StatsReport, after: StatsReport) -> dict[str, float]:
    first, second = _sums(before), _sums(after)
    return {c: second[c] - first[c] for c in NUMERIC}


def _labels(report: StatsReport) -> np.ndarray[Any, np.dtype[np.int64]]:
    assert report.stats.label_counts is not None
    return np.asarray(report.stats.label_counts, dtype=np.int64)


def test_differencing_recovers_the_added_row_exactly_without_protection(
    unprotected: Fleet, unprotected_first: FirstAnswers
) -> None:
    """A broken system: two stats tasks to one client, a row added in between; mean x
    count differenced gives the row back to float precision, and the label counts its
    label."""
    target = unprotected.devices[0]
    (row,) = _new_rows(1)
    before = unprotected.stats(unprotected.ask("stats", [target]))[target.client_id]
    target.add_row(row, "added")
    after = unprotected.stats(unprotected.ask("stats", [target]))[target.client_id]
    recovered = _difference(before, after)
    for column in NUMERIC:
        assert recovered[column] == pytest.approx(float(row[column]), rel=1e-9, abs=1e-6), column
    label = int(row["big_tipper"])
    assert (_labels(after) - _labels(before)).tolist() == [int(c == label) for c in (0, 1)]


def test_differencing_one_client_is_refused_by_the_cohort_rule(
    protected: Fleet, protected_first: FirstAnswers
) -> None:
    target = protected.devices[0]
    for targets in ([target.client_id], [d.client_id for d in protected.devices[:9]]):
        refused = admin_call(
            protected.url, "POST", "/v1/tasks", json={"kind": "stats", "client_ids": targets}
        )
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "cohort_too_small"


def _numeric_features(spec: FeatureSpec) -> dict[str, NumericFeature]:
    return {f.name: f for f in spec.numeric if isinstance(f, NumericFeature)}


def _half_width(feature: NumericFeature) -> float:
    """Half the raw range a numeric feature is clipped to before it is summed
    (edge_client.privacy: offset + scale x clip; without a clip x [0, 1] for min-max
    scaling, x [-4, 4] for z-scores, the taxi features' case)."""
    if feature.clip is not None:
        low, high = feature.clip
    elif feature.normalization == "minmax":
        low, high = 0.0, 1.0
    else:
        low, high = -4.0, 4.0
    return abs(feature.scale) * (high - low) / 2


def _sum_noise(bundle: Path, policy: DevicePolicy) -> dict[str, float]:
    """sigma_j: the stddev of the noise on the difference of two noised sums of numeric
    column j, sqrt(2) x (half-width h of its clip range) x s, where s =
    gaussian_sigma(stats_epsilon, delta, sqrt(J)) for the J blocks of one report (the
    label counts; per numeric column a histogram, a sum and a sum of squares; one block per
    categorical column): edge_client.privacy's mechanism."""
    model = EdgeModel.load(bundle)
    numeric = _numeric_features(model.spec)
    categorical = [f for f in model.spec.categorical if isinstance(f, CategoricalFeature)]
    blocks = 1 + 3 * len(numeric) + len(categorical)
    unit = stats_noise_unit(policy.stats_epsilon, policy.delta, blocks)
    return {c: math.sqrt(2) * _half_width(numeric[c]) * unit for c in NUMERIC}


def test_differencing_a_full_cohort_misses_every_added_row_by_the_noise_scale(
    protected: Fleet, protected_first: FirstAnswers
) -> None:
    """Under the defaults the attacker must ask ten devices; it asks them all, adds a row
    to each, and asks again (the coordinator refuses the second question within the
    window), twice over: 20 differenced rows. Each device's report is its own, so each
    difference is one device's two noised answers.

    The noise scale, per numeric column j: s_j = min(sigma_j, a_j), where sigma_j
    (:func:`_sum_noise`: about 1,500 for fare, 5 for a latitude) is the stddev of the noise
    on two released sums' difference, and a_j the mean absolute value of the added rows:
    a report whose histogram for the column falls under k after noise releases mean and
    count 0, so its difference is 0, off by the whole value. A broken system is off by 0
    (the first test). Here, for every numeric column, the root-mean-square error over the
    20 rows must be at least s_j / 2; no recovered value may equal the truth to the
    precision the broken system reaches (a broken system: all 140); the differenced label
    counts may be the exact one-hot label at most once in 20 (a broken system: 20 times)."""
    cohort = [d for d in protected.devices if not d.name.endswith("small")]
    assert len(cohort) == DEFAULT_MIN_COHORT
    sigma = _sum_noise(protected.bundle, DevicePolicy.from_dict(ON))
    added = _new_rows(2 * len(cohort))
    errors: dict[str, list[float]] = {c: [] for c in NUMERIC}
    exact_labels = exact_values = 0
    for trial in range(2):
        time.sleep(WINDOW)
        before = protected.stats(protected.ask("stats", cohort))
        again = admin_call(
            protected.url,
            "POST",
            "/v1/tasks",
            json={"kind": "stats", "client_ids": [d.client_id for d in cohort]},
        )
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "cohort_window"
        rows = added[trial * len(cohort) : (trial + 1) * len(cohort)]
        for device, row in zip(cohort, rows, strict=True):
            device.add_row(row, f"added-{trial}")
        time.sleep(WINDOW)
        after = protected.stats(protected.ask("stats", cohort))
        assert set(before) == set(after) == {d.client_id for d in cohort}
        for device, row in zip(cohort, rows, strict=True):
            recovered = _difference(before[device.client_id], after[device.client_id])
            for column in NUMERIC:
                error = recovered[column] - float(row[column])
                errors[column].append(error)
                exact_values += abs(error) <= 1e-6 + 1e-9 * abs(float(row[column]))
            label = int(row["big_tipper"])
            delta = _labels(after[device.client_id]) - _labels(before[device.client_id])
            exact_labels += delta.tolist() == [int(c == label) for c in (0, 1)]
    for column in NUMERIC:
        scale = min(sigma[column], float(np.mean([abs(float(r[column])) for r in added])))
        rms = math.sqrt(float(np.mean(np.square(errors[column]))))
        assert rms >= scale / 2, (column, rms, scale)
    assert exact_values == 0
    assert exact_labels <= 1


def test_two_devices_with_the_same_rows_do_not_send_the_same_noise(
    protected: Fleet, protected_first: FirstAnswers
) -> None:
    """Noise an attacker can replay (a generator seeded the same on every device) is no
    noise: the twin devices' first noised reports must differ."""
    first = protected.stats(protected_first.tasks["stats"])
    one, twin = protected.devices[0], protected.devices[1]
    assert twin.name == "guarded-twin"
    assert one.rows[:ROWS] == twin.rows[:ROWS]
    assert _sums(first[one.client_id]) != _sums(first[twin.client_id])


# Re-identification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guesser:
    """A 5-nearest-neighbour guesser of payment_type from embeddings of public rows."""

    embeddings: np.ndarray[Any, np.dtype[np.float32]]
    payment: np.ndarray[Any, np.dtype[Any]]
    majority: str

    def clipped(self, bound: float) -> Guesser:
        """The same guesser over public embeddings clipped to L2 ``bound``."""
        return Guesser(
            clip_rows(self.embeddings, bound).astype(np.float32), self.payment, self.majority
        )

    def guess(self, queries: np.ndarray[Any, np.dtype[Any]]) -> list[str]:
        out = []
        for query in np.asarray(queries, dtype=np.float32):
            distance = np.sum(np.square(self.embeddings - query), axis=1)
            nearest = np.argpartition(distance, NEIGHBOURS)[:NEIGHBOURS]
            values, counts = np.unique(self.payment[nearest], return_counts=True)
            out.append(str(values[np.argmax(counts)]))
        return out


@pytest.fixture(scope="module")
def guesser(hostile_taxi_bundle: Path) -> Guesser:
    model = EdgeModel.load(hostile_taxi_bundle)
    table = load_taxi()
    public = table.take(np.arange(len(table))[PUBLIC])
    embeddings = model.embed(model.transform(public.columns))
    payment = np.array([str(v) for v in public.columns["payment_type"]], dtype=object)
    values, counts = np.unique(payment, return_counts=True)
    return Guesser(embeddings, payment, str(values[np.argmax(counts)]))


def _majority_rate(guesser: Guesser, truths: Sequence[list[str]]) -> float:
    everyone = [t for truth in truths for t in truth]
    return sum(t == guesser.majority for t in everyone) / len(everyone)


def test_reidentification_recovers_payment_type_without_protection(
    unprotected: Fleet, unprotected_first: FirstAnswers, guesser: Guesser
) -> None:
    """A broken system sends one embedding per training row, in file order: the guesser
    names each row's payment type far above the majority-class guess (>= 25 points above
    it and >= 90%)."""
    sent = unprotected.features(unprotected_first.tasks["features"])
    correct = total = 0
    truths = []
    for device in unprotected.devices[:3]:
        reply = sent[device.client_id]
        truth = unprotected_first.truth[device.client_id]
        truths.append(truth)
        assert len(reply["embeddings"]) == len(truth)  # one embedding per row
        guesses = guesser.guess(reply["embeddings"])
        correct += sum(g == t for g, t in zip(guesses, truth, strict=True))
        total += len(truth)
    rate, majority = correct / total, _majority_rate(guesser, truths)
    assert rate >= 0.9, (rate, majority)
    assert rate >= majority + 0.25, (rate, majority)


def test_reidentification_from_noised_prototypes_is_no_better_than_the_majority_guess(
    protected: Fleet, protected_first: FirstAnswers, guesser: Guesser
) -> None:
    """Under the defaults a features reply is noised per-class prototypes with no row
    order, so the attacker's guess for a device's rows can only depend on the reply: it
    names, for every training row of the device, the guesser's answer for the prototype
    of largest reported support (clipped to features_clip like the device does). Over the
    ten devices it must stay within 5 points of the majority-class guess."""
    sent = protected.features(protected_first.tasks["features"])
    cohort = [d for d in protected.devices if not d.name.endswith("small")]
    assert {d.client_id for d in cohort} <= set(sent)
    clipped = guesser.clipped(DevicePolicy().features_clip)
    correct = total = 0
    truths = []
    for device in cohort:
        reply = sent[device.client_id]
        assert reply["privacy"] is not None
        assert reply["privacy"]["mode"] == "prototypes"
        assert reply["counts"] is not None
        assert len(reply["embeddings"]) <= 2  # one per class at most
        truth = protected_first.truth[device.client_id]
        truths.append(truth)
        prototype = reply["embeddings"][int(np.argmax(reply["counts"]))]
        (guess,) = clipped.guess(prototype[None, :])
        correct += sum(guess == t for t in truth)
        total += len(truth)
    rate, majority = correct / total, _majority_rate(guesser, truths)
    assert rate <= majority + 0.05, (rate, majority)


# Too few rows -----------------------------------------------------------------------------------


def _received_from(fleet: Fleet, first: FirstAnswers, device: Device) -> dict[str, int]:
    updates = [u for u in first.round_["updates"] if u["client_id"] == device.client_id]
    counts = {"update": len(updates)}
    for kind in ("stats", "features", "evaluate"):
        counts[kind] = int(device.client_id in fleet.reports(kind, first.tasks[kind]))
    return counts


def test_a_device_under_min_rows_answers_everything_without_protection(
    unprotected: Fleet, unprotected_first: FirstAnswers
) -> None:
    """The broken baseline: 12 rows are enough for an update, statistics and features."""
    small = unprotected.devices[-1]
    received = _received_from(unprotected, unprotected_first, small)
    assert received == {"update": 1, "stats": 1, "features": 1, "evaluate": 1}


def test_a_device_under_min_rows_sends_nothing_and_its_status_says_why(
    protected: Fleet, protected_first: FirstAnswers
) -> None:
    small = protected.devices[-1]
    assert small.name.endswith("small")
    assert _received_from(protected, protected_first, small) == {
        "update": 0,
        "stats": 0,
        "features": 0,
        "evaluate": 0,
    }
    for device in protected.devices[:-1]:  # the others answered: the check can see a reply
        assert _received_from(protected, protected_first, device) == {
            "update": 1,
            "stats": 1,
            "features": 1,
            "evaluate": 1,
        }, device.name
    assert {r["kind"] for r in small.refusals} == {"train", "stats", "features", "evaluate"}
    for refusal in small.refusals:
        assert refusal["reason"] == "min_rows", refusal
        assert "20" in refusal["message"], refusal
    status = small.status()
    assert status["policy"]["last_refusal"]["reason"] == "min_rows"
    assert status["policy"]["epsilon_spent"] == 0
    # All the coordinator learnt is that the device declined its four tasks (the other
    # devices answered all of theirs: every decline is the small device's).
    store = SQLiteStore(protected.workdir / "state.db")
    try:
        mine = store.list_tasks(client_id=small.client_id)
        declines = store.rejection_counts().get("task_declined")
    finally:
        store.close()
    assert sorted(t.kind for t in mine) == ["evaluate", "features", "stats", "train"]
    assert {t.status for t in mine} == {"declined"}
    assert declines == 4
