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

``--workloads`` runs instead issue 17's three workloads (digits, the 64-32-10 MLP with every
layer trained, from the files a user gives: ``.keras`` model, plain safetensors init,
partition, schedule and test data; :mod:`simulations.reference`): A 10 iid clients, E=1,
30 rounds; B 10 pathological clients (1-2 classes each), E=5, 30 rounds; C 100 clients,
10 per round, 20 rounds. Each runs ``--repeats`` times as the numpy floor
(``python -m simulations.reference``) and as ``fedge-simulate`` (its default workers),
after one untimed run that converts the model into the conversion cache; it prints the
medians (wall, per round, peak RSS of the process tree) and each ratio next to its goal
(whole process at most 1/10 of Flower's time in issue 17, at most 5x the floor per round,
peak RSS at most 200 MB), and in how many rounds fedge's test accuracy equals the floor's
(with the largest weight difference over the rounds). ``--workloads --quick``: 3 rounds on
400 client rows and 200 test rows, once each.

Every measured process writes and reads Python bytecode in a cache of this invocation
(``PYTHONPYCACHEPREFIX``, with ``PYTHONDONTWRITEBYTECODE`` unset), as an installed package
has its ``.pyc`` files; the untimed first run fills it.

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
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

if TYPE_CHECKING:
    from simulations.reference import WorkloadFiles

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


_PYCACHE = tempfile.TemporaryDirectory(prefix="fedge-bench-pycache-")
"""This invocation's bytecode cache (removed at exit)."""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {
        **env,
        "PYTHONPATH": str(REPO_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPYCACHEPREFIX": _PYCACHE.name,
    }


@dataclass(frozen=True)
class ProcessRun:
    """One finished process: its stdout, wall time and its tree's peak RSS."""

    stdout: str
    wall_seconds: float
    peak_rss: int
    peak_processes: int


def run_process(label: str, command: Sequence[str], *, timeout: float) -> ProcessRun:
    """``command`` in a fresh process from the repository root, its tree's RSS sampled;
    SystemExit with its stderr's tail when it fails."""
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
        raise SystemExit(f"{label}: {command[2]} exited with {code}:\n{stderr[-3000:]}")
    return ProcessRun(stdout, wall, sampler.peak, sampler.processes)


def run_measured(label: str, args: Sequence[str], *, timeout: float) -> Measurement:
    """One ``fedge-simulate --json`` run in a fresh process, its tree's RSS sampled."""
    command = [sys.executable, "-m", "simulations.cli", *args, "--json", "--quiet"]
    run = run_process(label, command, timeout=timeout)
    wall, stdout = run.wall_seconds, run.stdout
    document = json.loads(stdout)
    return Measurement(
        label=label,
        engine=document["engine"],
        rounds=len(document["rounds"]),
        wall_seconds=wall,
        engine_seconds=document["engine_seconds"],
        peak_rss=run.peak_rss,
        peak_processes=run.peak_processes,
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


# The workloads of issue 17 against the numpy floor ----------------------------------------

FLOWER_SECONDS = {"A": 14.9, "B": 15.4, "C": 11.5}
"""Flower 1.42 (Ray engine), whole process on two cores, as measured in issue 17."""
WALL_GOAL_SHARE = 0.1
PER_ROUND_GOAL = 5.0
RSS_GOAL = 200_000_000
MB = 1_000_000
QUICK_SIZES = {"rounds": 3, "train_rows": 400, "test_rows": 200}


@dataclass(frozen=True)
class WorkloadRun:
    """One process of a workload (the floor or fedge-simulate): wall time, peak RSS, and
    per round its seconds and test accuracy."""

    wall_seconds: float
    engine_seconds: float
    peak_rss: int
    round_seconds: tuple[float, ...]
    accuracy: tuple[float, ...]

    @property
    def per_round(self) -> float:
        """Median seconds of a round after the first (which loads what the rest reuse)."""
        later = self.round_seconds[1:] or self.round_seconds
        return statistics.median(later)


@dataclass(frozen=True)
class WorkloadResult:
    """A workload's medians over repeated runs of the floor and of fedge-simulate."""

    name: str
    title: str
    rounds: int
    floor: list[WorkloadRun]
    fedge: list[WorkloadRun]
    weights_diff: float | None

    def median(self, side: str, what: str) -> float:
        runs = self.floor if side == "floor" else self.fedge
        return statistics.median(float(getattr(run, what)) for run in runs)

    @property
    def equal_rounds(self) -> int:
        """Rounds whose test accuracy is the same in fedge (every run) and the floor."""
        floor = self.floor[0].accuracy
        return sum(
            all(len(run.accuracy) == len(floor) and run.accuracy[i] == a for run in self.fedge)
            for i, a in enumerate(floor)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "rounds": self.rounds,
            **{
                f"{side}_{what}": self.median(side, what)
                for side in ("floor", "fedge")
                for what in ("wall_seconds", "engine_seconds", "per_round", "peak_rss")
            },
            "floor_accuracy": list(self.floor[0].accuracy),
            "fedge_accuracy": list(self.fedge[0].accuracy),
            "equal_rounds": self.equal_rounds,
            "max_weights_diff": self.weights_diff,
            "wall_goal_seconds": FLOWER_SECONDS[self.name] * WALL_GOAL_SHARE,
        }


def _floor_run(directory: Path, *, timeout: float) -> WorkloadRun:
    command = [sys.executable, "-m", "simulations.reference", str(directory)]
    run = run_process("floor", command, timeout=timeout)
    document = json.loads(run.stdout)
    return WorkloadRun(
        run.wall_seconds,
        document["seconds"],
        run.peak_rss,
        tuple(document["round_seconds"]),
        tuple(document["accuracy"]),
    )


def _fedge_run(files: WorkloadFiles, out: Path, cache: Path, *, timeout: float) -> WorkloadRun:
    from simulations.reference import fedge_arguments

    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "simulations.cli",
        *fedge_arguments(files, out=out, cache=cache), "--json", "--quiet",
    ]  # fmt: skip
    run = run_process("fedge-simulate", command, timeout=timeout)
    document = json.loads(run.stdout)
    rounds = document["rounds"]
    return WorkloadRun(
        run.wall_seconds,
        document["engine_seconds"],
        run.peak_rss,
        tuple(float(r["seconds"]) for r in rounds),
        tuple(float(r["accuracy"]) for r in rounds),
    )


def _weights_diff(out: Path, directory: Path) -> float | None:
    """The largest difference between fedge's weights after each round (``--save-weights
    every-round``) and the floor's; None when the run saved none."""
    from safetensors.numpy import load_file

    from simulations.reference import load_inputs, run_reference

    saved = sorted((out / "weights").glob("round-*.safetensors"))
    if not saved:
        return None
    floor = run_reference(load_inputs(directory)).weights
    diff = 0.0
    for path, reference in zip(saved, floor, strict=True):
        tensors = load_file(str(path))
        for name, array in reference.items():
            diff = max(diff, float(np.max(np.abs(tensors[name] - array))))
    return diff


def run_workloads(
    names: Sequence[str], root: Path, *, quick: bool, repeats: int, timeout: float
) -> list[WorkloadResult]:
    """Each workload's files written once, then the floor and fedge-simulate ``repeats``
    times each, alternating, in fresh processes (after one untimed fedge-simulate run that
    fills the conversion cache)."""
    from simulations.reference import WORKLOADS, initial_weights, write_model, write_workload

    model = write_model(root / "model" / "model.keras", initial_weights())
    cache = root / "conversion-cache"
    workloads = []
    for name in names:
        spec = WORKLOADS[name]
        if quick:
            spec = spec.shortened(**QUICK_SIZES)
        workloads.append((spec, write_workload(spec, root / name, model=model)))
    first = _fedge_run(workloads[0][1], root / "warm-up", cache, timeout=timeout)
    print(
        f"first fedge-simulate run (converts the Keras model into the cache and compiles the "
        f"bytecode cache): {first.wall_seconds:.2f} s, not counted below"
    )
    results = []
    for spec, files in workloads:
        floor, fedge = [], []
        for _ in range(repeats):
            floor.append(_floor_run(files.directory, timeout=timeout))
            fedge.append(_fedge_run(files, root / f"{spec.name}-out", cache, timeout=timeout))
        diff = _weights_diff(root / f"{spec.name}-out", files.directory)
        results.append(WorkloadResult(spec.name, spec.title, spec.rounds, floor, fedge, diff))
    return results


def _mb(value: float) -> str:
    return f"{value / MB:.0f} MB"


def print_workloads(results: Sequence[WorkloadResult], repeats: int) -> None:
    """The measurements, then each ratio next to its goal and the accuracy equality."""
    print(
        f"workloads (digits 64-32-10 MLP, every layer trained; medians of {repeats}, each run "
        "a fresh process: wall = the whole process, RSS = peak of its process tree; floor "
        "rounds = the floor's own time for its rounds, fedge engine = the engine's time as "
        "fedge-simulate reports it; per round = median of the rounds after the first)"
    )
    head = ("workload", "rounds", "floor wall", "floor rounds", "floor/round", "floor RSS",
            "fedge wall", "fedge engine", "fedge/round", "fedge RSS")  # fmt: skip
    print(f"{head[0]:<10}{head[1]:>7}" + "".join(f"{h:>13}" for h in head[2:]))
    for r in results:
        cells = (
            f"{r.median('floor', 'wall_seconds'):.2f} s",
            f"{r.median('floor', 'engine_seconds'):.2f} s",
            f"{r.median('floor', 'per_round'):.4f} s",
            _mb(r.median("floor", "peak_rss")),
            f"{r.median('fedge', 'wall_seconds'):.2f} s",
            f"{r.median('fedge', 'engine_seconds'):.2f} s",
            f"{r.median('fedge', 'per_round'):.4f} s",
            _mb(r.median("fedge", "peak_rss")),
        )
        print(f"{r.name:<10}{r.rounds:>7}" + "".join(f"{c:>13}" for c in cells))
    print()
    print(
        f"{'workload':<10}{'wall (goal)':<24}{'per round / floor (goal)':<28}"
        f"{'peak RSS (goal)':<22}accuracy per round, fedge vs floor"
    )
    for r in results:
        goal = FLOWER_SECONDS[r.name] * WALL_GOAL_SHARE
        ratio = r.median("fedge", "per_round") / r.median("floor", "per_round")
        wall = f"{r.median('fedge', 'wall_seconds'):.2f} s (<= {goal:.2f} s)"
        per_round = f"{ratio:.1f}x (<= {PER_ROUND_GOAL:.0f}x)"
        rss = f"{_mb(r.median('fedge', 'peak_rss'))} (<= {_mb(RSS_GOAL)})"
        equal = f"equal in {r.equal_rounds}/{r.rounds} rounds"
        if r.weights_diff is not None:
            equal += f", weights within {r.weights_diff:.1e}"
        print(f"{r.name:<10}{wall:<24}{per_round:<28}{rss:<22}{equal}")
    print(
        "wall goal: 1/10 of Flower 1.42's whole-process time on the same workload as measured "
        "in issue 17 (A 14.9 s, B 15.4 s, C 11.5 s); Flower is not installed here and was "
        "not run"
    )


def _workloads_main(args: argparse.Namespace) -> int:
    from simulations.reference import WORKLOADS

    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown or not names:
        raise SystemExit(f"--workloads: unknown {unknown}; expected names of {sorted(WORKLOADS)}")
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        results = run_workloads(
            names, Path(tmp), quick=args.quick, repeats=repeats, timeout=args.timeout
        )
    print()
    print_workloads(results, repeats)
    if args.json is not None:
        document = {"workloads": {r.name: r.to_dict() for r in results}}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


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
    parser.add_argument(
        "--workloads",
        nargs="?",
        const="A,B,C",
        default=None,
        metavar="A,B,C",
        help="only issue 17's workloads (all three, or those named) against the numpy floor; "
        "with --quick, 3 rounds on fewer rows, once each",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, metavar="N", help="runs per workload and side (3)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="pretrained models")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.workloads is not None:
        return _workloads_main(args)
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
