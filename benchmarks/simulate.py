"""Wall time, rounds per second and peak RSS of the native, TFF and Ray simulation engines.

Run ``.venv/bin/python benchmarks/simulate.py``. It pretrains the digits model once into
``--cache-dir`` (cached; reported apart), then runs ``fedge-simulate`` in a fresh process per
measurement and samples the resident memory of that process and all its descendants
(worker processes, TFF's ``worker_binary``) every 50 ms:

1. the same workload (default: digits, 100 IID clients, 20 per round, 10 rounds, E=1)
   on the native engine (coordinator service + edge clients, 2 worker processes) and on the
   TFF engine, printed side by side with their ratio (tff / native);
2. the scale run: 1,000 digits clients, 100 per round, 20 rounds on the native engine,
   with the centralized baseline and the final personalization pass, whose peak RSS must
   stay under 4 GiB (exit code 1 otherwise);
3. the Ray run: 10,000 taxi clients (digits has too few rows for that many), 100 per round,
   5 rounds, E=1, on the native engine (2 worker processes) and on the Ray engine (a local
   Ray with 2 CPUs and 2 client actors, started and stopped by the command), printed side by
   side with their ratio (ray / native). Needs Ray (``pip install 'fedge[ray]'``).

``--quick`` runs only a small Ray comparison (200 taxi clients, 20 per round, 2 rounds).

"wall" is the whole process (interpreter start and imports included); "engine" is the
engine's own time as the run reports it (set-up of the service and fleet included,
pretraining and baselines not); rounds/s = rounds / engine seconds. Both engines run on
the same machine in the same invocation; the numbers compare only within one invocation.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep this folder off the import path: it holds benchmarks/quantize.py, which would shadow
# the quantize package that the simulation imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402

REPO_ROOT = _HERE.parent
RSS_LIMIT = 4 << 30
_SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class Measurement:
    label: str
    engine: str
    rounds: int
    wall_seconds: float
    engine_seconds: float
    peak_rss: int
    peak_processes: int
    accuracy: float

    @property
    def rounds_per_second(self) -> float:
        return self.rounds / self.engine_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "engine": self.engine,
            "rounds": self.rounds,
            "wall_seconds": self.wall_seconds,
            "engine_seconds": self.engine_seconds,
            "rounds_per_second": self.rounds_per_second,
            "peak_rss_bytes": self.peak_rss,
            "peak_processes": self.peak_processes,
            "final_accuracy": self.accuracy,
        }


class _TreeSampler:
    """The largest total RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.peak = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total, count = 0, 0
            try:
                tree = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return
            for process in tree:
                try:
                    total += process.memory_info().rss
                    count += 1
                except psutil.Error:
                    continue
            if total > self.peak:
                self.peak, self.processes = total, count
            self._stop.wait(_SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_measured(label: str, args: Sequence[str], *, timeout: float) -> Measurement:
    """One ``fedge-simulate --json`` run in a fresh process, its tree's RSS sampled."""
    command = [sys.executable, "-m", "simulations.cli", *args, "--json", "--quiet"]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO_ROOT, env=_env())
        sampler = _TreeSampler(process.pid)
        try:
            code = process.wait(timeout=timeout)
        finally:
            sampler.stop()
            if process.poll() is None:
                process.kill()
                process.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if code != 0:
        raise SystemExit(f"{label}: fedge-simulate exited with {code}:\n{stderr[-3000:]}")
    document = json.loads(stdout)
    return Measurement(
        label=label,
        engine=document["engine"],
        rounds=len(document["rounds"]),
        wall_seconds=wall,
        engine_seconds=document["engine_seconds"],
        peak_rss=sampler.peak,
        peak_processes=sampler.processes,
        accuracy=document["federated"]["accuracy"],
    )


def _pretrain(cache: Path, task: str = "digits") -> float:
    started = time.perf_counter()
    code = (
        "from simulations.pretrain import PretrainConfig, pretrain; "
        f"pretrain(PretrainConfig(task={task!r}), {str(cache)!r})"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
    )
    return time.perf_counter() - started


def _mib(value: int) -> str:
    return f"{value / (1 << 20):,.0f} MiB"


def print_comparison(native: Measurement, tff: Measurement, other: str = "tff") -> None:
    """``native`` and ``tff`` (or the engine ``other`` names) side by side, with ratios."""
    rows = [
        ("wall time (s)", f"{native.wall_seconds:.1f}", f"{tff.wall_seconds:.1f}",
         tff.wall_seconds / native.wall_seconds),
        ("engine time (s)", f"{native.engine_seconds:.1f}", f"{tff.engine_seconds:.1f}",
         tff.engine_seconds / native.engine_seconds),
        ("rounds / s", f"{native.rounds_per_second:.2f}", f"{tff.rounds_per_second:.2f}",
         tff.rounds_per_second / native.rounds_per_second),
        ("peak RSS (tree)", _mib(native.peak_rss), _mib(tff.peak_rss),
         tff.peak_rss / native.peak_rss),
        ("processes at peak", str(native.peak_processes), str(tff.peak_processes),
         tff.peak_processes / native.peak_processes),
        ("final accuracy", f"{native.accuracy:.4f}", f"{tff.accuracy:.4f}",
         tff.accuracy / native.accuracy),
    ]  # fmt: skip
    print(f"{'':<20}{'native':>12}{other:>12}{other + '/native':>12}")
    for name, a, b, ratio in rows:
        print(f"{name:<20}{a:>12}{b:>12}{ratio:>12.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--scale-clients", type=int, default=1000)
    parser.add_argument("--scale-per-round", type=int, default=100)
    parser.add_argument("--scale-rounds", type=int, default=20)
    parser.add_argument("--skip-compare", action="store_true", help="no native/tff comparison")
    parser.add_argument("--skip-scale", action="store_true", help="no 1,000-client run")
    parser.add_argument("--ray-task", default="taxi")
    parser.add_argument("--ray-clients", type=int, default=10_000)
    parser.add_argument("--ray-per-round", type=int, default=100)
    parser.add_argument("--ray-rounds", type=int, default=5)
    parser.add_argument("--skip-ray", action="store_true", help="no native/ray comparison")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only a small native/ray comparison (200 clients, 20 per round, 2 rounds)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="pretrained models")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.skip_compare = args.skip_scale = True
        args.skip_ray = False
        args.ray_clients, args.ray_per_round, args.ray_rounds = 200, 20, 2

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        root = Path(tmp)
        cache = args.cache_dir or root / "cache"
        tasks = [] if args.skip_compare and args.skip_scale else ["digits"]
        if not args.skip_ray and args.ray_task not in tasks:
            tasks.append(args.ray_task)
        for task in tasks:
            seconds = _pretrain(cache, task)
            print(f"pretraining {task} on the proxy share (cached in {cache}): {seconds:.1f} s")
        print()
        common = ["--task", "digits", "--seed", "0", "--cache-dir", str(cache), "--epochs", "1"]
        ok = True
        if not args.skip_compare:
            workload = [
                *common, "--clients", str(args.clients), "--per-round", str(args.per_round),
                "--rounds", str(args.rounds), "--partition", args.partition,
                "--no-baseline", "--no-personalization",
            ]  # fmt: skip
            print(
                f"same workload: digits, {args.clients} clients ({args.partition}), "
                f"{args.per_round} per round, {args.rounds} rounds, E=1"
            )
            native = run_measured(
                "native",
                [*workload, "--engine", "native", "--workers", "2", "--out", str(root / "n")],
                timeout=args.timeout,
            )
            tff = run_measured(
                "tff",
                [*workload, "--engine", "tff", "--out", str(root / "t")],
                timeout=args.timeout,
            )
            print_comparison(native, tff)
            results["compare"] = {"native": native.to_dict(), "tff": tff.to_dict()}
            print()
        if not args.skip_scale:
            scale_args = [
                *common, "--clients", str(args.scale_clients),
                "--per-round", str(args.scale_per_round), "--rounds", str(args.scale_rounds),
                "--partition", "iid", "--engine", "native", "--workers", "2",
                "--out", str(root / "s"),
            ]  # fmt: skip
            scale = run_measured("scale", scale_args, timeout=args.timeout)
            ok = scale.peak_rss < RSS_LIMIT
            print(
                f"scale run: digits, {args.scale_clients} clients, {args.scale_per_round} per "
                f"round, {args.scale_rounds} rounds, native engine (baseline and "
                f"personalization included)\n"
                f"  wall {scale.wall_seconds:.1f} s, engine {scale.engine_seconds:.1f} s, "
                f"{scale.rounds_per_second:.2f} rounds/s, final accuracy {scale.accuracy:.4f}\n"
                f"  peak RSS {_mib(scale.peak_rss)} over {scale.peak_processes} processes "
                f"(limit {_mib(RSS_LIMIT)}): {'OK' if ok else 'OVER THE LIMIT'}"
            )
            results["scale"] = scale.to_dict()
            print()
        if not args.skip_ray:
            workload = [
                "--task", args.ray_task, "--seed", "0", "--cache-dir", str(cache),
                "--epochs", "1", "--clients", str(args.ray_clients),
                "--per-round", str(args.ray_per_round), "--rounds", str(args.ray_rounds),
                "--partition", "iid", "--workers", "2", "--no-baseline", "--no-personalization",
            ]  # fmt: skip
            print(
                f"ray run: {args.ray_task}, {args.ray_clients:,} clients (iid), "
                f"{args.ray_per_round} per round, {args.ray_rounds} rounds, E=1; native: 2 "
                "worker processes, ray: a local Ray with 2 CPUs and 2 client actors"
            )
            native = run_measured(
                "native",
                [*workload, "--engine", "native", "--out", str(root / "rn")],
                timeout=args.timeout,
            )
            ray = run_measured(
                "ray",
                [*workload, "--engine", "ray", "--out", str(root / "rr")],
                timeout=args.timeout,
            )
            print_comparison(native, ray, "ray")
            results["ray"] = {"native": native.to_dict(), "ray": ray.to_dict()}
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
