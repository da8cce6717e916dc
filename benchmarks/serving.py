"""Cloud predictions by serving mode: dynamic (the model), static (a table) and hybrid.

Run ``.venv/bin/python benchmarks/serving.py`` (``--quick`` for a smoke run; loopback
only). It trains a small taxi model and bundles it (or takes ``--bundle DIR``), writes a
key table of ``--keys`` taxi trips (a ``trip_id`` column added), and for each mode starts a
real ``fedge-coordinator serve --serving-mode MODE`` (``coordinator.launch``) on one
database; ``fedge-coordinator predict-batch`` scores the first ``--table-share`` of the
keys into the version's table before the static and hybrid servers start. Then
``--concurrency`` threads send ``--requests`` predict requests of ``--batch`` rows each,
keys drawn from a Zipf law of exponent ``--zipf`` (peakedness: a larger exponent puts more
requests on the few most popular keys; static draws only keys its table holds).

It prints one row per mode, side by side: latency p50 and p99 (milliseconds, client
side), requests per second, and the rows the server answered from the table, the cache
and the model (its ``/metrics``). Exit status 0 when every request was answered 200.
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
import csv  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import requests  # noqa: E402

from coordinator.launch import CoordinatorProcess, launch_coordinator  # noqa: E402
from fedge.bundle import read_manifest  # noqa: E402
from fedge.data.tables import canonical_category  # noqa: E402

ADMIN_TOKEN = "bench-admin-" + "0" * 24
MODES = ("dynamic", "static", "hybrid")
_TAXI = REPO / "fedge" / "datasets" / "taxi.csv"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _bundle(work: Path) -> Path:
    from tests.support.bundles import build_bundle

    _log("training and bundling a small taxi model...")
    return build_bundle("taxi", work, batch_size=16, version="bench-v1")


def _key_rows(bundle: Path, out: Path, count: int) -> list[dict[str, Any]]:
    """Write ``count`` taxi trips with a ``trip_id`` to ``out``; their JSON instances."""
    schema = read_manifest(bundle).schema
    rows: list[dict[str, Any]] = []
    with _TAXI.open(newline="") as source, out.open("w", newline="") as sink:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(sink, fieldnames=["trip_id", *(reader.fieldnames or [])])
        writer.writeheader()
        for i, record in enumerate(reader):
            if i == count:
                break
            key = f"t{i}"
            writer.writerow({"trip_id": key, **record})
            row: dict[str, Any] = {"trip_id": key}
            for name in schema.numeric:
                text = (record.get(name) or "").strip()
                row[name] = float(text) if text else None
            for name in schema.categorical:
                row[name] = canonical_category(record.get(name) or "")
            rows.append(row)
    return rows


def _serve(work: Path, bundle: Path, mode: str, cache: int) -> CoordinatorProcess:
    args = [
        "--task", "taxi", "--bundle", str(bundle),
        "--db", str(work / "state.db"), "--artifacts", str(work / "artifacts"),
        "--host", "127.0.0.1", "--admin-token-file", str(work / "admin-token"),
        "--open-enrollment", "--on-demand", "-q",
        "--serving-mode", mode, "--serving-cache", str(cache),
        "--max-json-bytes", str(4 << 20),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDGE_ADMIN_TOKEN", None)
    return launch_coordinator(
        args, port_file=work / f"port-{mode}", log_path=work / f"{mode}.log", env=env, cwd=REPO
    )


def _predict_batch(work: Path, keys_csv: Path) -> None:
    from coordinator.cli import main as coordinator_main

    where = ["--db", str(work / "state.db"), "--artifacts", str(work / "artifacts")]
    code = coordinator_main(
        ["predict-batch", *where, "--keys", str(keys_csv), "--key-column", "trip_id", "-q"]
    )
    if code != 0:
        raise SystemExit(f"predict-batch failed with exit code {code}")


@dataclass(frozen=True)
class Result:
    mode: str
    latencies: list[float]
    seconds: float
    failures: int
    sources: dict[str, float]

    def line(self) -> str:
        p50, p99 = (float(np.percentile(self.latencies, q)) * 1000 for q in (50, 99))
        rate = len(self.latencies) / self.seconds
        counts = "".join(f"{self.sources.get(s, 0):>9.0f}" for s in ("table", "cache", "model"))
        return (
            f"{self.mode:<9}{len(self.latencies):>9}{p50:>9.2f}{p99:>9.2f}{rate:>11.1f}"
            f"{self.failures:>7}{counts}"
        )


HEADER = (
    f"{'mode':<9}{'requests':>9}{'p50_ms':>9}{'p99_ms':>9}{'req_per_s':>11}{'fails':>7}"
    f"{'table':>9}{'cache':>9}{'model':>9}"
)


def _sources(url: str, mode: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", headers=_auth(), timeout=30).text
    found = {}
    for source in ("table", "cache", "model"):
        prefix = f'fedge_serving_rows_total{{mode="{mode}",source="{source}"}} '
        found[source] = next(
            (float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)),
            0.0,
        )
    return found


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _drive(url: str, mode: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> Result:
    rng = np.random.default_rng(0)
    ranks = np.arange(1, len(rows) + 1, dtype=np.float64)
    weights = ranks**-args.zipf
    picks = rng.choice(len(rows), size=(args.requests, args.batch), p=weights / weights.sum())
    bodies = [{"instances": [rows[i] for i in pick]} for pick in picks]
    target = f"{url}/v1/models/production:predict"
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    cursor = iter(bodies)

    def work() -> None:
        nonlocal failures
        session = requests.Session()
        while True:
            with lock:
                body = next(cursor, None)
            if body is None:
                return
            started = time.perf_counter()
            response = session.post(target, json=body, headers=_auth(), timeout=60)
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                failures += response.status_code != 200

    for warm in bodies[:3]:
        requests.post(target, json=warm, headers=_auth(), timeout=60)
    threads = [threading.Thread(target=work) for _ in range(args.concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return Result(mode, latencies, seconds, failures, _sources(url, mode))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    parser.add_argument("--bundle", type=Path, help="a taxi bundle (default: train one)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1, help="rows per request")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keys", type=int, default=5000, help="distinct keys")
    parser.add_argument("--table-share", type=float, default=0.8, help="keys in the table")
    parser.add_argument("--zipf", type=float, default=1.1, help="peakedness of the keys")
    parser.add_argument("--cache", type=int, default=1000, help="hybrid LRU cache rows")
    parser.add_argument("--work", type=Path, help="keep the files here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.keys, args.concurrency = 60, 200, 2
    with tempfile.TemporaryDirectory(prefix="fedge-serving-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        (work / "admin-token").write_text(ADMIN_TOKEN + "\n")
        bundle = args.bundle or _bundle(work)
        rows = _key_rows(bundle, work / "keys.csv", args.keys)
        tabled = max(1, int(len(rows) * args.table_share))
        table_csv = work / "table-keys.csv"
        with (work / "keys.csv").open() as source, table_csv.open("w") as sink:
            sink.writelines(line for i, line in enumerate(source) if i <= tabled)
        results = []
        for mode in MODES:
            with _serve(work, bundle, mode, args.cache) as server:
                if mode == "dynamic":
                    _predict_batch(work, table_csv)  # the database holds v1 now
                chosen = rows[:tabled] if mode == "static" else rows
                _log(f"{mode}: {args.requests} requests of {args.batch} row(s)...")
                results.append(_drive(server.url, mode, chosen, args))
        print(
            f"{args.requests} requests x {args.batch} row(s), {args.concurrency} threads, "
            f"{len(rows)} keys ({tabled} in the table), zipf {args.zipf}, cache {args.cache}"
        )
        print(HEADER)
        for result in results:
            print(result.line())
    return 0 if all(r.failures == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
