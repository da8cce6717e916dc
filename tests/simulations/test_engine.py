"""The native engine: the real service drives real edge clients in worker processes.

Selection follows the schedule, traffic is counted as devices would download and upload,
the service's own rejections fail a round, personalization is measured per client, jobs
stream through a bounded window, the workers are gone afterwards, and a warm cache runs
without TensorFlow. Everything runs on the session's pretrained digits bundle.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import pytest

from edge_client.personalize import PersonalizationConfig
from fedge.messages import Task, TaskConfig
from fedge.weights import Weights
from simulations.errors import FleetError, SimulationError
from simulations.fleet import ProcessFleet
from simulations.fleet_wire import (
    FleetData,
    Job,
    Outcome,
    read_frame,
    receive_message,
    send_message,
    write_frame,
)
from simulations.native_engine import NativeOptions, PlannedSelector, run_native
from simulations.preparation import prepare_scenario
from simulations.pretrain import Pretrained
from simulations.report import CSV_COLUMNS, RoundStats
from simulations.scenario import Scenario
from simulations.settings import check_settings
from tests.support.background import started_by_a_job
from tests.support.blocker import TENSORFLOW, prelude

if TYPE_CHECKING:
    from tests.support.simulation import CliRunner, SettingsFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _scenario(sim_settings: SettingsFactory, **changes: object) -> Scenario:
    settings = sim_settings(**changes)
    return prepare_scenario(settings, check_settings(settings))


def _fleet_workers() -> list[psutil.Process]:
    """Simulation worker processes among this process's descendants (not the session's
    background jobs')."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("simulations.fleet" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return [worker for worker in found if not started_by_a_job(worker)]


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class _Watch:
    """A progress sink that notes the worker processes alive while rounds run."""

    def __init__(self) -> None:
        self.workers: set[int] = set()
        self.finished: list[RoundStats] = []
        self.clients_done = 0

    def round_started(self, round_number: int, rounds: int, clients: int) -> None:
        self.workers.update(p.pid for p in _fleet_workers())

    def client_done(self) -> None:
        self.clients_done += 1

    def round_finished(self, stats: RoundStats) -> None:
        self.finished.append(stats)


def test_rounds_follow_the_schedule_and_count_device_traffic(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory, tmp_path: Path
) -> None:
    schedule = {
        "rounds": [["client_000", "client_001", "client_002"], ["client_003", "client_004"]]
    }
    schedule["rounds"].append(schedule["rounds"][0])
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(schedule))
    scenario = _scenario(
        sim_settings, clients=6, rounds=None, schedule_file=path, partition="iid", epochs=1
    )
    watch = _Watch()
    result = run_native(scenario, NativeOptions(workers=2, personalization=False), progress=watch)

    rounds = result.rounds
    assert [sorted(r.clients) for r in rounds] == [sorted(r) for r in schedule["rounds"]]
    assert all(r.committed for r in rounds)
    assert [r.version for r in rounds] == ["v2", "v3", "v4"]
    assert watch.finished == list(rounds)
    assert watch.clients_done == 8
    # Round 3's clients hold round 1's .tflite files: they fetch task, manifest and weights.
    first, third = rounds[0].bytes_down, rounds[2].bytes_down
    assert first is not None
    assert third is not None
    assert third < first / 5
    weights = (digits_pretrained.bundle_dir / "weights.safetensors").stat().st_size
    assert third > 3 * weights
    ups = [r.bytes_up for r in rounds]
    assert all(u is not None and u > weights for u in ups)  # one delta (+ metadata) each
    # Two worker processes ran the clients, and they are gone now.
    assert len(watch.workers) == 2
    assert not _fleet_workers()
    assert not any(_alive(pid) for pid in watch.workers)


def test_rejected_updates_fail_the_round_and_keep_the_model(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory
) -> None:
    scenario = _scenario(sim_settings, clients=3, rounds=2, partition="iid")
    options = NativeOptions(workers=1, norm_bound=1e-9, personalization=False)
    result = run_native(scenario, options)
    assert [r.committed for r in result.rounds] == [False, False]
    assert [r.version for r in result.rounds] == ["v1", "v1"]
    assert result.details["rejected_updates"] == 6
    assert result.rounds[0].accuracy == result.rounds[1].accuracy
    start = Weights.from_bytes((digits_pretrained.bundle_dir / "weights.safetensors").read_bytes())
    assert result.final_head.equal(start)


def test_personalization_reports_each_client_with_a_holdout(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory
) -> None:
    scenario = _scenario(sim_settings, clients=4, rounds=1, partition="dirichlet:0.5")
    result = run_native(scenario, NativeOptions(workers=1))
    gains = result.personalization
    assert [g.client_id for g in gains] == list(scenario.client_ids)
    for gain in gains:
        assert gain.examples == scenario.partition[gain.client_id].holdout.size
        assert 0.0 <= gain.global_accuracy <= 1.0
        assert 0.0 <= gain.personalized_accuracy <= 1.0
        assert gain.gain == pytest.approx(gain.personalized_accuracy - gain.global_accuracy)


def test_fleet_streams_outcomes_with_a_bounded_window(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory, tmp_path: Path
) -> None:
    scenario = _scenario(sim_settings, clients=8, rounds=1, partition="iid")
    version = digits_pretrained.manifest.model_version
    shutil.copytree(digits_pretrained.bundle_dir, tmp_path / version)
    data = FleetData.build(scenario.pool, scenario.partition, tmp_path, seed=0)
    config = TaskConfig(epochs=1, batch_size=32, learning_rate=0.02)
    jobs = [
        Job(c, Task(f"r1-{c}", "train", 1, version, config, 2e9).to_dict())
        for c in scenario.client_ids
    ]
    seen = []
    with ProcessFleet(data, workers=2, window=1) as fleet:
        pids = fleet.pids
        for outcome in fleet.run(jobs):
            assert fleet.in_flight <= 2  # never more than workers x window outstanding
            seen.append(outcome)
    assert sorted(o.client_id for o in seen) == sorted(scenario.client_ids)
    assert all(o.error is None and o.body for o in seen)
    assert not any(_alive(pid) for pid in pids)


def _round_trip(kind: str, value: object) -> object:
    stream = io.BytesIO()
    send_message(stream, kind, value)
    stream.seek(0)
    got_kind, got = receive_message(stream)
    assert got_kind == kind
    with pytest.raises(EOFError):
        receive_message(stream)  # exactly one frame, then a clean end
    return got


def test_worker_frames_round_trip_data_jobs_and_outcomes() -> None:
    categories = np.empty(3, dtype=object)
    categories[:] = ["a", None, "ünï"]
    data = FleetData(
        name="pool",
        schema={"label": "y", "numeric": ["x"], "num_classes": 3},
        columns={
            "x": np.array([1.5, np.nan, -0.0]),
            "image": np.arange(12, dtype=np.float64).reshape(3, 2, 2)[:, ::-1],  # not contiguous
            "city": categories,
        },
        labels=np.array([0, 2, 1], dtype=np.int64),
        partition={"clients": {"c0": {"train": [0, 1], "holdout": [2]}}, "unassigned": []},
        bundles_root="/bundles",
        seed=7,
        personalization=PersonalizationConfig(enabled=False, epochs=2, learning_rate=0.1),
    )
    got = _round_trip("init", data)
    assert isinstance(got, FleetData)
    assert (got.name, got.schema, got.partition) == (data.name, data.schema, data.partition)
    assert (got.bundles_root, got.seed) == (data.bundles_root, data.seed)
    assert got.personalization == data.personalization
    assert list(got.columns) == list(data.columns)
    for name, column in data.columns.items():
        assert got.columns[name].dtype == column.dtype
        assert got.columns[name].shape == column.shape
    np.testing.assert_array_equal(got.columns["x"], data.columns["x"])  # NaN included
    assert np.signbit(got.columns["x"][2])
    np.testing.assert_array_equal(got.columns["image"], data.columns["image"])
    assert got.columns["city"].tolist() == ["a", None, "ünï"]
    assert got.labels.dtype == np.int64
    np.testing.assert_array_equal(got.labels, data.labels)
    assert got.columns["x"].flags.writeable
    assert got.labels.flags.writeable

    task = Task("r1-c0", "train", 1, "v1", TaskConfig(epochs=1), 2e9).to_dict()
    job = _round_trip("job", Job("c0", task))
    assert job == Job("c0", task)

    for body in (None, b"", b"\x00safetensors\xff"):
        outcome = Outcome("c0", "r1-c0", {"type": "model_update", "n": 3}, body, None, 0.25)
        assert _round_trip("done", outcome) == outcome
    failed = Outcome("c0", "r1-c0", None, None, "ValueError: boom", 1.0)
    assert _round_trip("done", failed) == failed
    assert _round_trip("ready", 1234) == 1234
    assert _round_trip("failed", "Traceback ...") == "Traceback ..."
    assert _round_trip("stop", None) is None


def _frame(header: bytes, payload: bytes = b"") -> io.BytesIO:
    return io.BytesIO(
        len(header).to_bytes(4, "big") + header + len(payload).to_bytes(8, "big") + payload
    )


def test_malformed_worker_frames_raise_fleet_errors() -> None:
    good = io.BytesIO()
    write_frame(good, "ready", {"pid": 1}, b"xyz")
    good.seek(0)
    assert read_frame(good) == ("ready", {"pid": 1}, bytearray(b"xyz"))
    with pytest.raises(EOFError):
        read_frame(good)
    raw = good.getvalue()
    bad_frames = [
        io.BytesIO(raw[:2]),  # the header length itself is cut short
        io.BytesIO(raw[:-1]),  # the payload is cut short
        io.BytesIO(b"\x00\x00\x00\x00" + raw[4:]),  # a zero header length
        io.BytesIO(b"\xff\xff\xff\xff" + raw[4:]),  # a header longer than allowed
        _frame(b"{not json"),
        _frame(b"\xff\xfe"),  # not UTF-8
        _frame(b'{"kind": "ready", "pid": NaN}'),
        _frame(b'["ready"]'),  # not an object
        _frame(b'{"pid": 1}'),  # no kind
        io.BytesIO(raw[: len(raw) - 11] + b"\xff" * 8),  # a payload longer than allowed
    ]
    for stream in bad_frames:
        with pytest.raises(FleetError):
            read_frame(stream)
    with pytest.raises(FleetError):
        receive_message(_frame(b'{"kind": "ready"}'))  # no pid
    with pytest.raises(FleetError):
        receive_message(_frame(b'{"kind": "pickle"}'))  # no such message
    with pytest.raises(FleetError):
        receive_message(
            _frame(
                b'{"kind": "init", "name": "p", "schema": {}, "partition": {}, "bundles_root": "",'
                b' "seed": 0, "personalization": {}, "columns": [], "labels":'
                b' {"dtype": "<i8", "shape": [4], "offset": 0, "nbytes": 32}}',
                b"\x00" * 8,  # 4 labels need 32 bytes
            )
        )
    with pytest.raises(FleetError):  # NaN never enters a header
        send_message(
            io.BytesIO(), "done", Outcome("c", "t", {"loss": float("nan")}, None, None, 0.0)
        )


def test_planned_selector_returns_the_plan_once_and_never_draws() -> None:
    selector = PlannedSelector()
    registered = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    selector.plan(["c", "a"])
    assert list(selector.select(1, registered, 2, rng)) == ["c", "a"]
    with pytest.raises(SimulationError, match="round 2 started without planned participants"):
        selector.select(2, registered, 2, rng)  # the plan was used up


BLOCKER = prelude(TENSORFLOW)


def test_a_warm_cache_runs_the_native_engine_without_tensorflow(
    digits_pretrained: Pretrained, sim_cache: Path, tmp_path: Path
) -> None:
    code = BLOCKER + textwrap.dedent(
        f"""
        from pathlib import Path
        from simulations.runner import Settings, simulate
        report = simulate(Settings(task="digits", clients=3, rounds=2, workers=2,
                                   cache_dir=Path({str(sim_cache)!r})))
        print("rounds", len(report.result.rounds), "accuracy", report.final.accuracy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("rounds 2 accuracy")


def test_cli_writes_metrics_plots_and_summary(
    digits_pretrained: Pretrained, sim_cache: Path, fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["--task", "digits", "--clients", "4", "--rounds", "2", "--partition", "dirichlet:1"]
    result = fedge_simulate([*args, "--cache-dir", str(sim_cache), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "metrics.json",
        "metrics.csv",
        "accuracy.png",
        "personalization.png",
        "summary.txt",
        "final_head.safetensors",
    ):
        assert (out / name).is_file(), name
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    with open(out / "metrics.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row[0] for row in rows[1:]] == ["1", "2"]
    assert all(int(row[3]) == 4 and int(row[4]) > 0 and int(row[5]) > 0 for row in rows[1:])
    document = json.loads((out / "metrics.json").read_text())
    assert document["engine"] == "native"
    assert len(document["personalization"]["clients"]) == 4
    assert document["centralized"]["accuracy"] > 0
    # The table: each figure beside its baselines, on stdout; a bar per round on stderr.
    assert "pretrained (proxy share)" in result.stdout
    assert "centralized" in result.stdout
    assert result.stdout.strip() == (out / "summary.txt").read_text().strip()
    assert "round 1/2" in result.stderr
    assert "round 2/2" in result.stderr


def test_worker_processes_compute_what_one_process_does(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory
) -> None:
    scenario = _scenario(sim_settings, clients=5, rounds=2, partition="dirichlet:0.5")
    alone = run_native(scenario, NativeOptions(workers=1, personalization=False))
    fleet = run_native(scenario, NativeOptions(workers=2, personalization=False))
    # Same updates; only the order they reach the aggregator (float sums) may differ.
    assert fleet.final_head.allclose(alone.final_head, rtol=0, atol=1e-6)
    assert [r.bytes_up for r in fleet.rounds] == [r.bytes_up for r in alone.rounds]
    assert [r.bytes_down for r in fleet.rounds] == [r.bytes_down for r in alone.rounds]
