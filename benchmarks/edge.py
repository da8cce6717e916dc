"""The edge client's footprint: installed size, daemon peak memory, inference latency.

Run ``.venv/bin/python benchmarks/edge.py`` (trains a small model and bundles it first,
~15 s; ``--work DIR`` keeps and reuses them). It prints:

1. Installed size of the edge extra: the bytes on disk of every distribution pinned in
   ``requirements/edge.lock`` plus fedge's own sources. With ``--edge-venv DIR`` they are
   measured in that venv (built there first, if DIR does not exist, with
   ``pip install --no-deps -r requirements/edge.lock`` and the project); otherwise the
   same distributions are measured where the current venv has them (``importlib.metadata``
   file lists). TensorFlow's installed size is shown beside it for scale.
2. Daemon peak RSS: a real coordinator on loopback and ``fedge-edge run`` in its own
   process, answering ``--rounds`` train rounds and then an evaluate, a stats and a
   features task on local CSV files; the peak is the daemon's ``VmHWM`` (Linux), read
   once every reply is delivered.
3. Inference latency per example on the held-out split, all in this run on the same
   inputs: the bundle's int8 model through ``edge_client.runtime.InferenceModel`` (the
   device's code path, one thread), the float32 trainable model's ``infer``, and the
   Keras float model (TensorFlow's default threads). One example per call (median) and
   batches of 256.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the package it measures: keep its folder off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = _HERE.parent
EDGE_LOCK = REPO / "requirements" / "edge.lock"
PACKAGES = ("fedge", "edge_client", "coordinator", "quantize", "cloud_trainer", "simulations")
EPOCHS = 2
BATCH = 256
ADMIN_TOKEN = "bench-admin-" + "0" * 24

Log = Callable[[str], None]


# 1. Installed size -------------------------------------------------------------------------


def _lock_names(lock: Path) -> list[str]:
    names = []
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0])
    return names


def _distribution_bytes(name: str) -> tuple[str, int] | None:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return dist.version, total


def _tree_bytes(path: Path) -> int:
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def _build_edge_venv(venv: Path, log: Log) -> None:
    log(f"building {venv} from {EDGE_LOCK.name} (pip, --no-deps)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "-r", str(EDGE_LOCK)], check=True)
    with tempfile.TemporaryDirectory() as scratch:  # the build writes egg-info beside it
        project = Path(scratch)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, project / name)
        for package in PACKAGES:
            if (REPO / package).is_dir():
                shutil.copytree(
                    REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__")
                )
        subprocess.run([*pip, "install", "--no-deps", str(project)], check=True)


def installed_size(edge_venv: Path | None, log: Log) -> dict[str, Any]:
    if edge_venv is not None:
        if not edge_venv.exists():
            _build_edge_venv(edge_venv, log)
        site = next(edge_venv.glob("lib/python*/site-packages"))
        pip_like = {"pip", "setuptools", "_distutils_hack", "pkg_resources"}
        parts = {
            p.name: (_tree_bytes(p) if p.is_dir() else p.stat().st_size)
            for p in site.iterdir()
            if p.name.split("-")[0] not in pip_like
        }
        has_tf = any(name.startswith("tensorflow") for name in parts)
        return {"source": f"venv {edge_venv}", "total_bytes": sum(parts.values()),
                "tensorflow_in_venv": has_tf}  # fmt: skip
    rows = {}
    for name in _lock_names(EDGE_LOCK):
        found = _distribution_bytes(name)
        rows[name] = None if found is None else {"version": found[0], "bytes": found[1]}
    own = sum(_tree_bytes(REPO / p) for p in PACKAGES if (REPO / p).is_dir())
    total = sum(r["bytes"] for r in rows.values() if r) + own
    tensorflow = _distribution_bytes("tensorflow")
    return {
        "source": "current venv (importlib.metadata)",
        "distributions": rows,
        "fedge_sources_bytes": own,
        "total_bytes": total,
        "missing": sorted(n for n, r in rows.items() if r is None),
        "tensorflow_bytes_for_scale": None if tensorflow is None else tensorflow[1],
    }


# 3. Latency -------------------------------------------------------------------------------


def _per_example_us(fn: Callable[[Any], Any], x: np.ndarray, *, examples: int) -> dict[str, float]:
    for i in range(3):
        fn(x[i : i + 1])  # warm-up (first calls allocate)
    single = []
    for i in range(examples):
        row = x[i % len(x) : i % len(x) + 1]
        start = time.perf_counter()
        fn(row)
        single.append(time.perf_counter() - start)
    batch = x[:BATCH]
    fn(batch)
    batched = []
    for _ in range(5):
        start = time.perf_counter()
        fn(batch)
        batched.append(time.perf_counter() - start)
    return {
        "single_us": 1e6 * statistics.median(single),
        "batched_us": 1e6 * min(batched) / len(batch),
    }


def latency(export: Path, bundle: Path, *, examples: int, log: Log) -> dict[str, Any]:
    from edge_client.runtime import InferenceModel, TrainableModel
    from quantize.inputs import load_keras_model, load_task_arrays, resolve_model

    source = resolve_model(export)
    arrays = load_task_arrays(source)
    x = np.ascontiguousarray(arrays.x_test, dtype=np.float32)
    keras = load_keras_model(source, input_shape=arrays.input_shape)
    int8 = InferenceModel(bundle / "inference.tflite", num_threads=1)
    trainable = TrainableModel(bundle / "trainable.tflite", num_threads=1)
    log("timing int8 TFLite, float32 TFLite and Keras")
    rows = {
        "tflite int8 (edge InferenceModel)": _per_example_us(int8.logits, x, examples=examples),
        "tflite float32 (trainable infer)": _per_example_us(trainable.logits, x, examples=examples),
        "keras float32 (model call)": _per_example_us(
            lambda b: keras(b, training=False), x, examples=examples
        ),
    }
    y = arrays.y_test
    accuracy = {
        "tflite int8 (edge InferenceModel)": float((int8.logits(x).argmax(1) == y).mean()),
        "tflite float32 (trainable infer)": float((trainable.logits(x).argmax(1) == y).mean()),
        "keras float32 (model call)": float(
            (np.asarray(keras(x, training=False)).argmax(1) == y).mean()
        ),
    }
    return {name: {**row, "accuracy": accuracy[name]} for name, row in rows.items()}


# 2. Daemon peak RSS -------------------------------------------------------------------------


def _write_csv(path: Path, dataset: Any) -> None:
    from fedge.data import flat_field_names

    schema = dataset.schema
    names = [c for c in dataset.columns]
    header: list[str] = []
    for name in names:
        header += list(flat_field_names(name, tuple(dataset.columns[name].shape[1:])))
    header.append(schema.label)
    lines = [",".join(header)]
    for i in range(len(dataset)):
        fields: list[str] = []
        for name in names:
            value = dataset.columns[name][i]
            if isinstance(value, np.ndarray):
                fields += [f"{v:g}" for v in value.reshape(-1)]
            elif value is None or (isinstance(value, float) and np.isnan(value)):
                fields.append("")
            elif isinstance(value, str):
                fields.append('"' + value.replace('"', '""') + '"')
            else:
                fields.append(f"{value:.10g}")
        fields.append(str(int(dataset.labels[i])))
        lines.append(",".join(fields))
    path.write_text("\n".join(lines) + "\n")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "FEDGE_ADMIN_TOKEN": ADMIN_TOKEN}


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def daemon_peak_rss(
    task: str, bundle: Path, work: Path, *, rounds: int, log: Log
) -> dict[str, Any]:
    from coordinator.client import AdminClient
    from coordinator.launch import launch_coordinator
    from fedge.data import load_task

    work.mkdir(parents=True, exist_ok=True)
    data, state = work / "data", work / "state"
    data.mkdir(exist_ok=True)
    dataset = load_task(task)
    rows = min(len(dataset), 2000)
    _write_csv(data / "local.csv", dataset.take(np.arange(rows)))
    enrollment = work / "enrollment-token"
    enrollment.write_text(secrets.token_urlsafe(32) + "\n")
    serve = ["--task", task, "--bundle", str(bundle), "--db", str(work / "state.db"),
             "--artifacts", str(work / "artifacts"), "--on-demand", "--auto-promote",
             "--enrollment-token-file", str(enrollment),
             "--clients-per-round", "1", "--min-clients", "1", "--retry-after", "1",
             "--tick-seconds", "0.2", "--quiet",
             # One device answers the evaluate, stats and features tasks: no cohort rule.
             "--min-cohort", "1"]  # fmt: skip
    coordinator = launch_coordinator(
        serve, port_file=work / "port", log_path=work / "coordinator.log", env=_env(), cwd=REPO
    )
    url = coordinator.url
    admin = AdminClient(url, ADMIN_TOKEN, timeout=10)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        edge = [sys.executable, "-m", "edge_client.cli"]
        token = work / "token"
        subprocess.run([*edge, "register", "--coordinator", url, "--token-file", str(token),
                        "--state", str(state), "--enrollment-token-file", str(enrollment),
                        "--json"], cwd=REPO, env=_env(), check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        client_id = json.loads((state / "client.json").read_text())["client_id"]
        daemon = subprocess.Popen(
            [*edge, "run", "--coordinator", url, "--token-file", str(token), "--data", str(data),
             "--state", str(state), "--settle-seconds", "0", "--threads", "1",
             "--quiet"],
            cwd=REPO, env=_env(), stderr=subprocess.DEVNULL,
        )  # fmt: skip
        started = time.monotonic()
        for round_id in range(1, rounds + 1):
            log(f"round {round_id}/{rounds}")
            admin.open_round()
            _wait(lambda r=round_id: admin.show_round(r)["state"] in ("committed", "failed"),
                  120, f"round {round_id}")  # fmt: skip
        for kind in ("evaluate", "stats", "features"):
            admin.create_tasks(kind, client_ids=[client_id])

        def finished() -> bool:
            try:
                status = json.loads((state / "status.json").read_text())
            except (OSError, ValueError):
                return False
            return sum(status.get("tasks", {}).values()) >= rounds + 3 and not status.get(
                "outbox_pending"
            )

        _wait(finished, 120, "the daemon's tasks")
        elapsed = time.monotonic() - started
        peak_kib = _vm_hwm_kib(daemon.pid)
        if peak_kib is None:
            import psutil

            peak_kib = psutil.Process(daemon.pid).memory_info().rss // 1024
        return {"tasks": rounds + 3, "rows": rows, "seconds": elapsed, "peak_rss_kib": peak_kib}
    finally:
        admin.close()
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        coordinator.stop(timeout=20)


# Main -----------------------------------------------------------------------------------------


def _prepare(task: str, work: Path, log: Log) -> tuple[Path, Path]:
    from quantize.cli import quantize_cli

    export, bundle = work / f"{task}-export", work / f"{task}-bundle"
    if not (export / "training_record.json").is_file():
        from cloud_trainer.config import TrainConfig
        from cloud_trainer.train import train

        log(f"{task}: training {EPOCHS} epochs into {export}")
        train(TrainConfig(task=task, out_dir=str(export), epochs=EPOCHS, learning_rate=3e-3,
                          progress=False))  # fmt: skip
    if not (bundle / "manifest.json").is_file():
        log(f"{task}: bundling into {bundle}")
        batch = "16" if task == "taxi" else "32"
        code = quantize_cli(["bundle", str(export), "--out", str(bundle), "--quiet", "--batch-size",
                             batch, "--model-version", f"{task}-bench"])  # fmt: skip
        if code != 0:
            raise RuntimeError(f"fedge-quantize bundle failed with {code}")
    return export, bundle


def _report(size: dict[str, Any], rss: dict[str, Any], timing: dict[str, Any], task: str) -> str:
    lines = [f"edge client benchmark ({task})", ""]
    lines.append(f"installed size of the edge extra: {size['total_bytes'] / 2**20:,.1f} MiB "
                 f"({size['source']})")  # fmt: skip
    for name, row in (size.get("distributions") or {}).items():
        shown = "not installed here" if row is None else (
            f"{row['version']:<22} {row['bytes'] / 2**20:>8.2f} MiB")  # fmt: skip
        lines.append(f"  {name:<20} {shown}")
    if "fedge_sources_bytes" in size:
        lines.append(
            f"  {'fedge (sources)':<20} {'':<22} {size['fedge_sources_bytes'] / 2**20:>8.2f} MiB"
        )
    if size.get("tensorflow_bytes_for_scale"):
        scale = size["tensorflow_bytes_for_scale"] / 2**20
        lines.append(f"  for scale: tensorflow alone is {scale:,.0f} MiB")
    peak = rss["peak_rss_kib"] / 1024
    run = f"{rss['tasks']} tasks on {rss['rows']} local rows ({rss['seconds']:.1f} s)"
    lines += ["", f"daemon peak RSS (VmHWM): {peak:,.1f} MiB over {run}", ""]
    header = f"{'model':<36} {'us/ex b=1':>10} {'us/ex b=256':>12} {'accuracy':>9}"
    lines += [header, "-" * len(header)]
    for name, row in timing.items():
        lines.append(f"{name:<36} {row['single_us']:>10.1f} {row['batched_us']:>12.2f} "
                     f"{row['accuracy']:>9.4f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", choices=("taxi", "digits"), default="taxi")
    parser.add_argument("--rounds", type=int, default=3, help="train rounds for the RSS run")
    parser.add_argument("--examples", type=int, default=200, help="one-example calls timed")
    parser.add_argument("--work", type=Path, help="keep (and reuse) the model and runs here")
    parser.add_argument("--edge-venv", type=Path, help="measure (or build) this edge venv")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        export, bundle = _prepare(args.task, work, log)
        size = installed_size(args.edge_venv, log)
        log("daemon run")
        run_dir = work / f"daemon-{int(time.time())}"
        rss = daemon_peak_rss(args.task, bundle, run_dir, rounds=args.rounds, log=log)
        timing = latency(export, bundle, examples=args.examples, log=log)
    print(_report(size, rss, timing, args.task))
    if args.json:
        print(json.dumps({"installed_size": size, "daemon": rss, "latency": timing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
