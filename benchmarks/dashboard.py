"""The dashboard's pages over a big store: 10,000 clients and 1,000 rounds.

Run ``.venv/bin/python benchmarks/dashboard.py`` (``--quick``: 300 clients, 30 rounds, for
the smoke test). It seeds a SQLite store, serves it with a real ``fedge-coordinator serve``
(pinned to two cores where the machine has more), logs in to ``/ui/login`` with the admin
token and times every page, fragment and chart: one warm-up request, then the median (and
the slowest) of ``--repeats`` requests (5), next to the 300 ms goal.

The store: ``--clients`` clients registered by the service (eight regions, two transports
in their metadata, one in a hundred revoked); ``--rounds`` rounds, of which all but the last
``--live-rounds`` (3) are history rows written through the store interface exactly as the
service writes them (each round's selected clients, their completed train tasks and updates
with accuracy/loss, the committed version with per-region metrics, its ``registered`` and
``promoted`` events; one round in fifty failed, with its ``round_failed`` alert). The live
rounds, one more round left collecting, the evaluation reports (one region well below its
reference: ``accuracy_drop`` alerts) and the statistics reports (a quarter of them shifted:
``data_drift`` alerts) go through the service itself. The history versions reuse the first
version's artifacts (the pages read rows, not bundles).

The last line says whether every page answered 200 within the goal; the exit status is 0
when it did, 1 otherwise.
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
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

import numpy as np  # noqa: E402
import requests  # noqa: E402

from coordinator.config import RoundConfig  # noqa: E402
from coordinator.records import (  # noqa: E402
    AlertRecord,
    ModelEvent,
    RoundRecord,
    TaskRecord,
    UpdateRecord,
)
from coordinator.service import CoordinatorService  # noqa: E402
from fedge.messages import EvalReport, StatsReport, TaskConfig  # noqa: E402
from tests.support.coordinator import (  # noqa: E402
    FakeClock,
    ServerProcess,
    build_service,
    serve_command,
    start_server,
    stop_server,
    submission,
    training_stats,
    write_admin_token,
)

GOAL_MS = 300.0
VIEWER_TOKEN = "bench-viewer-" + "2" * 24
REGIONS = ("north", "south", "east", "west", "central", "coast", "hills", "lakes")
LOW_REGION = "hills"  # its evaluation reports fall well below the reference
ROUND_SECONDS = 60.0
PAGES = (
    "/ui/",
    "/ui/rounds",
    "/ui/rounds?page=10",
    "/ui/models",
    "/ui/models?page=10",
    "/ui/clients",
    "/ui/clients?page=100&per_page=100",
    "/ui/data",
    "/ui/alerts",
    "/ui/fragments/overview",
    "/ui/fragments/rounds-table",
    "/ui/fragments/accuracy-chart",
    "/ui/charts/accuracy.svg",
    "/ui/charts/regions.svg",
    "/ui/charts/drift.svg",
)


def _log(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class Seeded:
    """What the seeded store holds."""

    clients: int
    rounds: int
    models: int
    updates: int
    reports: int
    alerts: int
    seconds: float


def _accuracy(round_id: int, rng: np.random.Generator) -> float:
    """A learning curve: from 0.55 towards 0.9, with a little noise."""
    return float(0.55 + 0.35 * (1 - math.exp(-round_id / 250)) + rng.normal(0, 0.01))


def _register(service: CoordinatorService, count: int) -> list[str]:
    ids = []
    with service.store.transaction():
        for i in range(count):
            registration = service.register_client(
                region=REGIONS[i % len(REGIONS)],
                metadata={"transport": "grpc" if i % 3 == 0 else "rest"},
            )
            ids.append(registration.client_id)
        for client_id in ids[::100]:
            service.revoke_client(client_id)
    return ids


def _history(
    service: CoordinatorService,
    client_ids: list[str],
    rounds: int,
    per_round: int,
    start: float,
    rng: np.random.Generator,
) -> None:
    """Rounds 1..``rounds`` committed (one in fifty failed), written as the service does."""
    store = service.store
    first = store.get_model("v1")
    assert first is not None
    regions = {c.client_id: c.region for c in store.list_clients()}
    config = RoundConfig(clients_per_round=per_round, min_clients=per_round, continuous=False)
    task_config = TaskConfig(epochs=1, batch_size=8, learning_rate=0.01)
    weights_sha = first.artifacts["weights.safetensors"]
    production = first
    seq = first.seq
    with store.transaction():
        for round_id in range(1, rounds + 1):
            opened = start + round_id * ROUND_SECONDS
            closed = opened + ROUND_SECONDS / 2
            selected = tuple(str(c) for c in rng.choice(client_ids, per_round, replace=False))
            failed = round_id % 50 == 0
            reporting = selected[: per_round // 3] if failed else selected
            accuracy = _accuracy(round_id, rng)
            for client_id in selected:
                task_id = f"r{round_id}-{client_id}"
                done = client_id in reporting
                store.add_task(
                    TaskRecord(
                        task_id=task_id,
                        kind="train",
                        client_id=client_id,
                        model_version=production.version,
                        config=task_config,
                        created_at=opened,
                        deadline=opened + 600,
                        round_id=round_id,
                        status="completed" if done else "expired",
                        completed_at=closed if done else None,
                    )
                )
                if done:
                    store.add_update(
                        UpdateRecord(
                            round_id=round_id,
                            client_id=client_id,
                            task_id=task_id,
                            idempotency_key=secrets.token_hex(8),
                            sha256=weights_sha,
                            size=344,
                            num_examples=int(rng.integers(20, 200)),
                            l2_norm=float(rng.uniform(0.01, 0.05)),
                            received_at=closed - float(rng.uniform(0, 20)),
                            metrics={
                                "accuracy": accuracy + float(rng.normal(0, 0.03)),
                                "loss": 1.2 - accuracy,
                            },
                        )
                    )
            record = RoundRecord(
                round_id=0,
                state="failed" if failed else "committed",
                config=config,
                opened_at=opened,
                base_version=production.version,
                collecting_at=opened,
                deadline=opened + 600,
                closed_at=closed,
                selected=selected,
                result_version=None if failed else f"v{seq + 1}",
                failure_reason=f"too few updates: {len(reporting)} of {per_round}"
                if failed
                else None,
                bytes_up=344 * len(reporting),
                bytes_down=672 * per_round,
                measurements={}
                if failed
                else {
                    "count": float(per_round),
                    "total_weight": float(per_round * 100),
                    "mean_update_norm": 0.03,
                    "max_update_norm": 0.05,
                    "aggregate_norm": 0.025,
                    "quarantined_updates": 0.0,
                },
            )
            stored = store.add_round(record)
            assert stored.round_id == round_id, (stored.round_id, round_id)
            if failed:
                store.add_alert(
                    AlertRecord(
                        alert_id=0,
                        kind="round_failed",
                        severity="warning",
                        message=f"round {round_id} failed: {record.failure_reason}",
                        created_at=closed,
                        round_id=round_id,
                        model_version=production.version,
                    )
                )
                continue
            seq += 1
            version = f"v{seq}"
            slices = {
                region: {
                    "accuracy": accuracy + float(rng.normal(0, 0.02)),
                    "loss": 1.2 - accuracy,
                }
                for region in sorted({regions[c] or "" for c in selected} - {""})
            }
            store.save_model(replace(production, stage="archived"))
            model = replace(
                first,
                version=version,
                seq=seq,
                stage="production",
                created_at=closed,
                parent=production.version,
                round_id=round_id,
                participants=per_round,
                data_fingerprint="sha256:" + secrets.token_hex(32),
                metrics={"accuracy": accuracy, "loss": 1.2 - accuracy},
                slice_metrics=slices,
                promoted_at=closed,
                deployed_at=closed,
            )
            store.add_model(model)
            store.add_model_event(ModelEvent(seq=0, version=version, kind="registered", at=closed))
            store.add_model_event(
                ModelEvent(
                    seq=0,
                    version=version,
                    kind="promoted",
                    at=closed,
                    previous=production.version,
                    detail=f"auto-promoted by round {round_id}",
                )
            )
            production = model


def _live_rounds(
    service: CoordinatorService, clock: FakeClock, count: int, rng: np.random.Generator
) -> None:
    """``count`` rounds through the service (select, poll, upload, commit), then one more
    opened and left collecting."""
    for _ in range(count):
        round_ = service.open_round()
        for client_id in round_.selected:
            client = service.store.get_client(client_id)
            assert client is not None
            task = service.next_task(client)
            assert task is not None
            assert task.round_id == round_.round_id
            accuracy = _accuracy(round_.round_id, rng)
            service.submit_update(
                client,
                submission(
                    round_.round_id,
                    client_id,
                    task_id=task.task_id,
                    seed=int(rng.integers(1 << 30)),
                    metrics={"accuracy": accuracy, "loss": 1.2 - accuracy},
                ),
            )
        clock.advance(ROUND_SECONDS / 2)
        service.tick()
        assert service.get_round(round_.round_id).state == "committed"
        clock.advance(ROUND_SECONDS / 2)
    service.open_round()


def _reports(
    service: CoordinatorService,
    client_ids: list[str],
    evaluations: int,
    stats: int,
    rng: np.random.Generator,
) -> None:
    """Evaluation reports of the production version from every region (one region low)
    and statistics reports (a quarter of them shifted), through the service."""
    live = [c for c in client_ids if not service.store.get_client(c).revoked]  # type: ignore[union-attr]
    production = service.store.list_models(stage="production")[0].version
    chosen = rng.choice(live, evaluations + stats, replace=False)
    eval_tasks = service.create_tasks("evaluate", client_ids=[str(c) for c in chosen[:evaluations]])
    for task in eval_tasks:
        client = service.store.get_client(task.client_id)
        assert client is not None
        accuracy = 0.2 if client.region == LOW_REGION else 0.86 + float(rng.normal(0, 0.02))
        service.submit_evaluation(
            client,
            EvalReport(task.task_id, production, 200, {"accuracy": accuracy, "loss": 0.4}),
        )
    stats_tasks = service.create_tasks("stats", client_ids=[str(c) for c in chosen[evaluations:]])
    for i, task in enumerate(stats_tasks):
        client = service.store.get_client(task.client_id)
        assert client is not None
        shifted = 25.0 if i % 4 == 0 else 10.0
        service.submit_stats(
            client, StatsReport(task.task_id, training_stats(i, fare_mean=shifted))
        )


def seed_store(
    workdir: Path,
    *,
    clients: int,
    rounds: int,
    live_rounds: int,
    per_round: int,
    evaluations: int,
    stats: int,
    seed: int = 0,
) -> Seeded:
    """The store of the benchmark in ``workdir`` (``state.db``, ``artifacts/``, ``bundle/``),
    its last round collecting."""
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    history = rounds - live_rounds
    clock = FakeClock(time.time() - (rounds + 2) * ROUND_SECONDS)
    service = build_service(
        workdir,
        clock=clock,
        clients_per_round=per_round,
        min_clients=per_round,
        continuous=False,
        seed=seed,
    )
    client_ids = _register(service, clients)
    _history(service, client_ids, history, per_round, clock.time - ROUND_SECONDS, rng)
    clock.advance((history + 1) * ROUND_SECONDS)
    _live_rounds(service, clock, live_rounds, rng)
    _reports(service, client_ids, evaluations, stats, rng)
    store = service.store
    seeded = Seeded(
        clients=store.count_clients(),
        rounds=len(store.list_rounds()),
        models=len(store.list_models()),
        updates=store.count_updates(),
        reports=len(store.list_reports()),
        alerts=len(store.list_alerts()),
        seconds=time.perf_counter() - began,
    )
    store.close()
    return seeded


def _serve(workdir: Path, per_round: int) -> ServerProcess:
    viewer = workdir / "viewer-token"
    viewer.write_text(VIEWER_TOKEN + "\n")
    command = serve_command(
        workdir,
        workdir / "bundle",
        write_admin_token(workdir),
        "--viewer-token-file",
        str(viewer),
        "--clients-per-round",
        str(per_round),
        "--min-clients",
        str(per_round),
        "--tick-seconds",
        "1",
    )
    command.remove("-v")
    return start_server(command, workdir, timeout=60)


def _pin_two_cores(pid: int) -> str:
    cpus = sorted(os.sched_getaffinity(pid))
    if len(cpus) > 2:
        os.sched_setaffinity(pid, cpus[:2])
        return f"server pinned to cores {cpus[:2]}"
    return f"server on {len(cpus)} core(s)"


def _login(url: str) -> requests.Session:
    from tests.support.coordinator import ADMIN_TOKEN

    session = requests.Session()
    form = session.get(f"{url}/ui/login", timeout=30).text
    found = re.search(r'name="csrf_token" value="([^"]+)"', form)
    csrf = found.group(1) if found else ""
    answer = session.post(
        f"{url}/ui/login",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 303 or "fedge_session" not in session.cookies:
        raise SystemExit(f"login failed: {answer.status_code} {answer.text[:200]}")
    return session


def time_pages(url: str, repeats: int) -> list[tuple[str, int, int, float, float, float]]:
    """``(path, status, bytes, first ms, median ms, slowest ms)`` of every page."""
    session = _login(url)
    rows = []
    for path in PAGES:
        began = time.perf_counter()
        first = session.get(url + path, timeout=60, allow_redirects=False)
        first_ms = (time.perf_counter() - began) * 1000
        times = []
        status = first.status_code
        for _ in range(repeats):
            began = time.perf_counter()
            answer = session.get(url + path, timeout=60, allow_redirects=False)
            times.append((time.perf_counter() - began) * 1000)
            if answer.status_code != 200:
                status = answer.status_code
        rows.append(
            (path, status, len(first.content), first_ms, statistics.median(times), max(times))
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dashboard.py", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="300 clients, 30 rounds")
    parser.add_argument("--clients", type=int, default=None, help="default 10000")
    parser.add_argument("--rounds", type=int, default=None, help="default 1000")
    parser.add_argument("--live-rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=10, help="clients per round")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    clients = args.clients or (300 if args.quick else 10_000)
    rounds = args.rounds or (30 if args.quick else 1_000)
    evaluations, stats = (40, 16) if args.quick else (800, 200)
    if rounds <= args.live_rounds:
        parser.error(f"--rounds must exceed --live-rounds ({args.live_rounds})")
    logging.getLogger("coordinator").setLevel(logging.ERROR)  # else a line per alert raised
    with tempfile.TemporaryDirectory(prefix="fedge-dashboard-bench-") as tmp:
        workdir = Path(tmp)
        _log(f"seeding: {clients} clients, {rounds} rounds ({args.live_rounds} live) ...")
        seeded = seed_store(
            workdir,
            clients=clients,
            rounds=rounds,
            live_rounds=args.live_rounds,
            per_round=args.per_round,
            evaluations=evaluations,
            stats=stats,
        )
        _log(
            f"store: {seeded.clients} clients, {seeded.rounds} rounds, {seeded.models} models, "
            f"{seeded.updates} updates, {seeded.reports} reports, {seeded.alerts} alerts "
            f"(seeded in {seeded.seconds:.1f} s)"
        )
        server = _serve(workdir, args.per_round)
        try:
            _log(_pin_two_cores(server.process.pid))
            rows = time_pages(server.url, args.repeats)
        finally:
            stop_server(server)
    _log("")
    _log(f"{'page':<36} {'status':>6} {'KiB':>7} {'first':>8} {'median':>8} {'max':>8}  goal")
    held = True
    for path, status, size, first_ms, median_ms, max_ms in rows:
        ok = status == 200 and median_ms < GOAL_MS
        held = held and ok
        _log(
            f"{path:<36} {status:>6} {size / 1024:>7.1f} {first_ms:>6.0f}ms {median_ms:>6.0f}ms "
            f"{max_ms:>6.0f}ms  <{GOAL_MS:.0f}ms {'ok' if ok else 'MISSED'}"
        )
    _log("")
    _log(
        "first: the first request of each page since the server started (a chart's is its "
        "matplotlib draw; charts are then cached until the store changes)"
    )
    _log(
        f"median of {args.repeats} per page; every page 200 under {GOAL_MS:.0f} ms: "
        f"{'yes' if held else 'no'}"
    )
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
